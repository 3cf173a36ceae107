//! The Batch API's durable half: every batch, and every item's request and
//! result, in the SQLite state file (schema 6), on a connection of its own.
//!
//! A batch is written whole before it is acknowledged, and an item's result
//! before the item counts as answered, so a crash loses nothing answered:
//! after a restart every item without a result runs, again if it was in
//! flight (at least once). The queue in memory (`api::batch_queue`) keeps
//! only indexes and counts; requests and results are read from here when
//! they are needed, so a queued item costs memory for its number, not its
//! body.
//!
//! The ledger's writer batches many small records; a batch's writes are few
//! and each is waited for, so they go on their own connection (the file is
//! in WAL mode; SQLite serialises the two writers, each waiting up to 5 s).

use super::StoreError;
use crate::clock::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A batch's state as stored (the API spells it `BATCH_STATE_…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchState {
    /// Accepted; no item sent yet.
    Pending,
    Running,
    /// Every item answered, with its response or its error.
    Succeeded,
    /// Cancelled by its owner: items not sent by then never run.
    Cancelled,
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Pending => "pending",
            BatchState::Running => "running",
            BatchState::Succeeded => "succeeded",
            BatchState::Cancelled => "cancelled",
        }
    }

    fn parse(text: &str) -> Option<BatchState> {
        [
            BatchState::Pending,
            BatchState::Running,
            BatchState::Succeeded,
            BatchState::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Whether items may still be sent.
    pub fn active(self) -> bool {
        matches!(self, BatchState::Pending | BatchState::Running)
    }
}

/// What an answered item holds: Gemini's response, or the error it ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    Response,
    Error,
}

impl ItemOutcome {
    fn as_str(self) -> &'static str {
        match self {
            ItemOutcome::Response => "response",
            ItemOutcome::Error => "error",
        }
    }

    fn parse(text: &str) -> Option<ItemOutcome> {
        [ItemOutcome::Response, ItemOutcome::Error]
            .into_iter()
            .find(|o| o.as_str() == text)
    }
}

/// A batch's row: who sent it, what it runs on, where it stands.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchRow {
    pub id: String,
    /// The stable id of the API token that submitted it (`None` when the
    /// service is open): only that token sees it.
    pub owner: Option<String>,
    pub model: String,
    /// May fall down the chain from `model` (`x-flux-fallback: true`).
    pub fallback: bool,
    pub display_name: String,
    pub state: BatchState,
    pub items: u32,
    pub created: Timestamp,
    pub updated: Timestamp,
    pub ended: Option<Timestamp>,
}

/// One item as submitted: its `GenerateContentRequest` and its metadata, as JSON text.
#[derive(Clone, Debug, PartialEq)]
pub struct NewItem {
    pub request: String,
    pub metadata: Option<String>,
}

/// A batch as found at start: its row and which items have a result.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredBatch {
    pub row: BatchRow,
    /// Answered items by index; the others run.
    pub answered: Vec<(u32, ItemOutcome)>,
}

/// An item's metadata and, once answered, its result (JSON text).
#[derive(Clone, Debug, PartialEq)]
pub struct ItemResult {
    pub metadata: Option<String>,
    pub result: Option<(ItemOutcome, String)>,
}

/// The batch tables; cheap to clone.
#[derive(Clone)]
pub struct BatchStore {
    conn: Arc<Mutex<Connection>>,
}

fn write_error(e: rusqlite::Error) -> StoreError {
    StoreError::Write(e.to_string())
}

impl BatchStore {
    /// Opens `path`, which `SqliteStore::open` has already checked and
    /// migrated.
    pub fn open(path: &Path) -> Result<BatchStore, StoreError> {
        let unusable = |e: rusqlite::Error| StoreError::Unusable {
            path: path.display().to_string(),
            problem: format!("cannot open it for batches ({e})"),
            remedy: "Set FLUX_STATE_PATH to a writable place.".into(),
        };
        let conn = Connection::open(path).map_err(unusable)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .and_then(|_| conn.busy_timeout(std::time::Duration::from_secs(5)))
            .map_err(unusable)?;
        Ok(BatchStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `work` on the connection, on tokio's blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            work(&mut conn).map_err(write_error)
        })
        .await
        .map_err(|e| StoreError::Write(e.to_string()))?
    }

    /// Writes a new batch and all its items in one transaction.
    pub async fn create(&self, row: BatchRow, items: Vec<NewItem>) -> Result<(), StoreError> {
        self.with(move |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO batches (id, owner, model, fallback, display_name, state, items, created_ms, updated_ms, ended_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    row.id,
                    row.owner,
                    row.model,
                    row.fallback,
                    row.display_name,
                    row.state.as_str(),
                    row.items,
                    row.created.millis(),
                    row.updated.millis(),
                    row.ended.map(Timestamp::millis)
                ],
            )?;
            {
                let mut insert = tx.prepare(
                    "INSERT INTO batch_items (batch_id, idx, request, metadata) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (index, item) in items.iter().enumerate() {
                    insert.execute(params![row.id, index as i64, item.request, item.metadata])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// An item's request (JSON text), or `None` if its batch is gone.
    pub async fn request(&self, id: &str, index: u32) -> Result<Option<String>, StoreError> {
        let id = id.to_string();
        self.with(move |conn| {
            conn.query_row(
                "SELECT request FROM batch_items WHERE batch_id = ?1 AND idx = ?2",
                params![id, index],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// Records an item's result (JSON text).
    pub async fn answer(
        &self,
        id: &str,
        index: u32,
        outcome: ItemOutcome,
        result: String,
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        self.with(move |conn| {
            conn.execute(
                "UPDATE batch_items SET outcome = ?3, result = ?4 WHERE batch_id = ?1 AND idx = ?2",
                params![id, index, outcome.as_str(), result],
            )
            .map(drop)
        })
        .await
    }

    /// Records a batch's new state.
    pub async fn set_state(
        &self,
        id: &str,
        state: BatchState,
        updated: Timestamp,
        ended: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        self.with(move |conn| {
            conn.execute(
                "UPDATE batches SET state = ?2, updated_ms = ?3, ended_ms = ?4 WHERE id = ?1",
                params![
                    id,
                    state.as_str(),
                    updated.millis(),
                    ended.map(Timestamp::millis)
                ],
            )
            .map(drop)
        })
        .await
    }

    /// Forgets a batch and its items.
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            tx.execute("DELETE FROM batch_items WHERE batch_id = ?1", params![id])?;
            tx.execute("DELETE FROM batches WHERE id = ?1", params![id])?;
            tx.commit()
        })
        .await
    }

    /// Every item's metadata and result, in input order.
    pub async fn results(&self, id: &str) -> Result<Vec<ItemResult>, StoreError> {
        let id = id.to_string();
        self.with(move |conn| {
            let mut query = conn.prepare(
                "SELECT metadata, outcome, result FROM batch_items WHERE batch_id = ?1 ORDER BY idx",
            )?;
            query
                .query_map(params![id], |r| {
                    let outcome: Option<String> = r.get(1)?;
                    let result: Option<String> = r.get(2)?;
                    Ok(ItemResult {
                        metadata: r.get(0)?,
                        result: outcome
                            .as_deref()
                            .and_then(ItemOutcome::parse)
                            .zip(result),
                    })
                })?
                .collect()
        })
        .await
    }

    /// Every batch kept, oldest first, with its answered items.
    pub async fn load(&self) -> Result<Vec<StoredBatch>, StoreError> {
        self.with(|conn| {
            let mut rows = conn.prepare(
                "SELECT id, owner, model, fallback, display_name, state, items, created_ms, updated_ms, ended_ms
                 FROM batches ORDER BY created_ms, id",
            )?;
            let rows: Vec<BatchRow> = rows
                .query_map([], |r| {
                    let state: String = r.get(5)?;
                    Ok(BatchRow {
                        id: r.get(0)?,
                        owner: r.get(1)?,
                        model: r.get(2)?,
                        fallback: r.get(3)?,
                        display_name: r.get(4)?,
                        // A state this version does not know runs again.
                        state: BatchState::parse(&state).unwrap_or(BatchState::Running),
                        items: r.get(6)?,
                        created: Timestamp(r.get(7)?),
                        updated: Timestamp(r.get(8)?),
                        ended: r.get::<_, Option<i64>>(9)?.map(Timestamp),
                    })
                })?
                .collect::<Result<_, _>>()?;
            let mut answered = conn.prepare(
                "SELECT idx, outcome FROM batch_items WHERE batch_id = ?1 AND outcome IS NOT NULL ORDER BY idx",
            )?;
            rows.into_iter()
                .map(|row| {
                    let done = answered
                        .query_map(params![row.id], |r| {
                            Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?))
                        })?
                        .filter_map(|item| match item {
                            Ok((index, outcome)) => {
                                ItemOutcome::parse(&outcome).map(|o| Ok((index, o)))
                            }
                            Err(e) => Some(Err(e)),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(StoredBatch {
                        row,
                        answered: done,
                    })
                })
                .collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn row(id: &str, items: u32) -> BatchRow {
        BatchRow {
            id: id.into(),
            owner: Some("0123456789abcdef".into()),
            model: "gemini-2.5-flash".into(),
            fallback: false,
            display_name: "nightly".into(),
            state: BatchState::Pending,
            items,
            created: Timestamp(1_000),
            updated: Timestamp(1_000),
            ended: None,
        }
    }

    fn items(n: u32) -> Vec<NewItem> {
        (0..n)
            .map(|i| NewItem {
                request: format!(r#"{{"contents":[{{"parts":[{{"text":"item {i}"}}]}}]}}"#),
                metadata: Some(format!(r#"{{"key":"k{i}"}}"#)),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_batch_comes_back_after_a_reopen_with_what_was_answered() {
        let dir = std::env::temp_dir().join(format!("flux-batches-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("state.db");
        drop(SqliteStore::open(&path).unwrap());
        let store = BatchStore::open(&path).unwrap();
        store.create(row("b1", 3), items(3)).await.unwrap();
        store
            .answer("b1", 1, ItemOutcome::Response, r#"{"ok":1}"#.into())
            .await
            .unwrap();
        store
            .answer("b1", 2, ItemOutcome::Error, r#"{"code":400}"#.into())
            .await
            .unwrap();
        store
            .set_state("b1", BatchState::Running, Timestamp(2_000), None)
            .await
            .unwrap();
        store.create(row("b2", 1), items(1)).await.unwrap();
        store.delete("b2").await.unwrap();
        drop(store);

        let store = BatchStore::open(&path).unwrap();
        let loaded = store.load().await.unwrap();
        assert_eq!(loaded.len(), 1, "the deleted batch is gone");
        let mut expected = row("b1", 3);
        expected.state = BatchState::Running;
        expected.updated = Timestamp(2_000);
        assert_eq!(loaded[0].row, expected);
        assert_eq!(
            loaded[0].answered,
            vec![(1, ItemOutcome::Response), (2, ItemOutcome::Error)]
        );
        assert_eq!(
            store.request("b1", 0).await.unwrap().as_deref(),
            Some(r#"{"contents":[{"parts":[{"text":"item 0"}]}]}"#)
        );
        assert_eq!(store.request("b2", 0).await.unwrap(), None);
        let results = store.results("b1").await.unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(results[0].result, None);
        assert_eq!(results[0].metadata.as_deref(), Some(r#"{"key":"k0"}"#));
        assert_eq!(
            results[2].result,
            Some((ItemOutcome::Error, r#"{"code":400}"#.into()))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
