//! The default backend: one SQLite file (WAL mode), versioned migrations.

use super::{MinuteUsage, Outcome, PolicyCache, RecentCall, Record, Recovered, Store, StoreError};
use crate::clock::Timestamp;
use crate::keys::KeyState;
use crate::policy::{LimitsOverride, Mode, Usage};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Each entry moves the schema one version up; `PRAGMA user_version` says
/// how many have been applied. Append, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: the call ledger, key states, settings, learned limits.
    "CREATE TABLE calls (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        pacific_day TEXT NOT NULL,
        key_id TEXT NOT NULL,
        key_index INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        model TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER,
        outcome TEXT NOT NULL,
        latency_ms INTEGER
    );
    CREATE INDEX calls_by_time ON calls (at_ms);
    CREATE INDEX calls_by_day ON calls (pacific_day, key_id, model);
    CREATE TABLE key_states (key_id TEXT PRIMARY KEY, state TEXT NOT NULL, reason TEXT);
    CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE learned_limits (
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        rpm INTEGER, tpm INTEGER, rpd INTEGER,
        learned_at_ms INTEGER NOT NULL,
        PRIMARY KEY (key_id, model)
    );",
    // 2: the cache of the policy fetch and of the discovered models.
    "CREATE TABLE policy_cache (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        fetched TEXT NOT NULL,
        models TEXT NOT NULL,
        fetched_at_ms INTEGER NOT NULL
    );",
    // 3: learned input tokens per Pacific day.
    "ALTER TABLE learned_limits ADD COLUMN tpd INTEGER;",
    // 4: the requests a call counts (a batch of embeddings counts one per item).
    "ALTER TABLE calls ADD COLUMN requests INTEGER NOT NULL DEFAULT 1;",
    // 5: which key (by stable id) owns each uploaded file, until it expires.
    "CREATE TABLE files (
        name TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        expires_at_ms INTEGER NOT NULL
    );",
    // 6: the Batch API: each batch, and each item's request and result.
    "CREATE TABLE batches (
        id TEXT PRIMARY KEY,
        owner TEXT,
        model TEXT NOT NULL,
        fallback INTEGER NOT NULL,
        display_name TEXT NOT NULL,
        state TEXT NOT NULL,
        items INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        ended_ms INTEGER
    );
    CREATE TABLE batch_items (
        batch_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        request TEXT NOT NULL,
        metadata TEXT,
        outcome TEXT,
        result TEXT,
        PRIMARY KEY (batch_id, idx)
    ) WITHOUT ROWID;",
    // 7: learned output tokens per minute (other providers).
    "ALTER TABLE learned_limits ADD COLUMN otpm INTEGER;",
];

/// Calls are kept this long, then pruned: recovery needs the last minute and
/// the current Pacific day (at most 25 hours), the dashboard the last hour.
const KEEP_CALLS: Duration = Duration::from_secs(2 * 86_400);

/// How often the WAL is folded back into the database file, and old calls
/// pruned.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The WAL is truncated back to this size whenever a checkpoint has folded
/// all of it, so a long-lived instance's state file stays bounded.
const WAL_LIMIT_BYTES: i64 = 64 << 20;

/// Old calls are deleted this many at a time, so that pruning never holds
/// the write lock long enough to stall a request's "sent" record, and at
/// most this many chunks a round (a backlog drains over several rounds
/// rather than starving the writer).
const PRUNE_CHUNK: i64 = 2_000;
const PRUNE_CHUNKS_PER_ROUND: usize = 10;

pub struct SqliteStore {
    conn: Connection,
    /// Dropping it stops the checkpoint thread.
    _checkpoints: std::sync::mpsc::Sender<()>,
}

impl SqliteStore {
    /// Opens (creating the directory and file if needed) and migrates. A file
    /// that is not a database, or is from a newer gemini-flux, is refused and
    /// left untouched.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let unusable = |problem: String, remedy: &str| StoreError::Unusable {
            path: path.display().to_string(),
            problem,
            remedy: remedy.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                unusable(
                    format!("cannot create its directory: {e}"),
                    "Set FLUX_STATE_PATH to a writable place.",
                )
            })?;
        }
        let conn = Connection::open(path).map_err(|e| {
            unusable(
                format!("cannot open it: {e}"),
                "Set FLUX_STATE_PATH to a writable place.",
            )
        })?;
        let not_a_db =
            "Move the file away (it is left as it is) or set FLUX_STATE_PATH to another file.";
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| unusable(format!("not a gemini-flux state database ({e})"), not_a_db))?;
        let version = version.max(0) as usize;
        if version > MIGRATIONS.len() {
            return Err(unusable(
                format!(
                    "written by a newer gemini-flux (schema {version}, this one knows {})",
                    MIGRATIONS.len()
                ),
                "Run that newer version, or set FLUX_STATE_PATH to another file.",
            ));
        }
        if version > 0 {
            let ours: bool = conn
                .query_row("SELECT count(*) = 1 FROM sqlite_master WHERE type = 'table' AND name = 'calls'", [], |r| r.get(0))
                .map_err(|e| unusable(format!("unreadable ({e})"), not_a_db))?;
            if !ours {
                return Err(unusable(
                    "a SQLite database, but not gemini-flux's".into(),
                    not_a_db,
                ));
            }
        } else {
            let tables: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .map_err(|e| {
                    unusable(format!("not a gemini-flux state database ({e})"), not_a_db)
                })?;
            if tables > 0 {
                return Err(unusable(
                    "a SQLite database, but not gemini-flux's".into(),
                    not_a_db,
                ));
            }
        }
        // Commits append to the WAL; folding it back into the file (with an
        // fsync) is left to a thread of its own, so that no commit a request
        // waits on ever carries a checkpoint.
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|_| conn.pragma_update(None, "synchronous", "NORMAL"))
            .and_then(|_| conn.pragma_update(None, "wal_autocheckpoint", 0))
            .and_then(|_| conn.pragma_update(None, "journal_size_limit", WAL_LIMIT_BYTES))
            .and_then(|_| conn.busy_timeout(std::time::Duration::from_secs(5)))
            .map_err(|e| unusable(format!("cannot configure it ({e})"), not_a_db))?;
        let mut store = SqliteStore {
            conn,
            _checkpoints: checkpoint_thread(path),
        };
        store
            .migrate(version)
            .map_err(|e| unusable(format!("migration failed ({e})"), not_a_db))?;
        Ok(store)
    }

    fn migrate(&mut self, from: usize) -> rusqlite::Result<()> {
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(from) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
            tracing::info!("state store migrated to schema {}", i + 1);
        }
        Ok(())
    }

    /// The default location, relative to the working directory.
    pub fn default_path() -> PathBuf {
        PathBuf::from("./data/gemini-flux.db")
    }
}

/// Prunes old calls and checkpoints the WAL every [`CHECKPOINT_EVERY`] on a
/// connection of its own (a passive checkpoint never blocks the writer), and
/// once more on the way out, until the returned sender is dropped.
fn checkpoint_thread(path: &Path) -> std::sync::mpsc::Sender<()> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let path = path.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("flux-store-checkpoint".into())
        .spawn(move || {
            let Ok(conn) = Connection::open(&path) else {
                return;
            };
            let _ = conn.pragma_update(None, "journal_size_limit", WAL_LIMIT_BYTES);
            let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
            let checkpoint = || {
                let now = Timestamp::wall_now();
                if let Err(e) = prune_old_calls(&conn, now) {
                    tracing::warn!("state store pruning failed: {e}");
                }
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!("state store checkpoint failed: {e}");
                }
            };
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                checkpoint();
            }
            checkpoint();
        });
    if let Err(e) = spawned {
        tracing::warn!("no checkpoint thread ({e}); the WAL will grow until restart");
    }
    stop
}

/// Deletes the calls older than [`KEEP_CALLS`] before the newest one (or
/// before `now`, if the newest lies ahead of it: a clock stepped back must
/// not take today's calls), in at most [`PRUNE_CHUNKS_PER_ROUND`] chunks of
/// [`PRUNE_CHUNK`]. Measured from the newest call rather than from `now`
/// alone, so a store restored from elsewhere, or a test's virtual day, never
/// loses the calls it is about to need.
fn prune_old_calls(conn: &Connection, now: Timestamp) -> rusqlite::Result<usize> {
    let mut pruned = 0;
    for _ in 0..PRUNE_CHUNKS_PER_ROUND {
        let n = conn.execute(
            "DELETE FROM calls WHERE id IN (
                 SELECT id FROM calls
                 WHERE at_ms < min((SELECT max(at_ms) FROM calls), ?3) - ?1
                 LIMIT ?2)",
            params![KEEP_CALLS.as_millis() as i64, PRUNE_CHUNK, now.millis()],
        )?;
        pruned += n;
        if n < PRUNE_CHUNK as usize {
            break;
        }
    }
    Ok(pruned)
}

fn counted_list() -> String {
    Outcome::COUNTED
        .iter()
        .map(|o| format!("'{}'", o.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

fn state_parts(state: &KeyState) -> (&'static str, Option<&str>) {
    match state {
        KeyState::Healthy => ("healthy", None),
        KeyState::Disabled => ("disabled", None),
        KeyState::Invalid(r) => ("invalid", Some(r)),
        KeyState::Blocked(r) => ("blocked", Some(r)),
    }
}

fn state_from(name: &str, reason: Option<String>) -> Option<KeyState> {
    let reason = reason.unwrap_or_default();
    match name {
        "healthy" => Some(KeyState::Healthy),
        "disabled" => Some(KeyState::Disabled),
        "invalid" => Some(KeyState::Invalid(reason)),
        "blocked" => Some(KeyState::Blocked(reason)),
        _ => None,
    }
}

fn write_error(e: rusqlite::Error) -> StoreError {
    StoreError::Write(e.to_string())
}

impl Store for SqliteStore {
    fn usage_by_minute(&mut self, since: Timestamp) -> Result<Vec<MinuteUsage>, StoreError> {
        let mut query = self
            .conn
            .prepare(&format!(
                "SELECT key_index, fingerprint, (at_ms / 60000) * 60000 AS minute, sum(input_tokens)
                 FROM calls WHERE at_ms >= ?1 AND outcome IN ({})
                 GROUP BY key_index, fingerprint, minute ORDER BY minute, key_index",
                counted_list()
            ))
            .map_err(write_error)?;
        query
            .query_map(params![since.millis()], |r| {
                Ok(MinuteUsage {
                    key: r.get::<_, i64>(0)? as usize,
                    fingerprint: r.get(1)?,
                    minute: Timestamp(r.get(2)?),
                    input_tokens: r.get::<_, i64>(3)? as u64,
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(write_error)
    }

    fn file_owner(&mut self, name: &str, now: Timestamp) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT key_id FROM files WHERE name = ?1 AND expires_at_ms > ?2",
                params![name, now.millis()],
                |r| r.get(0),
            )
            .optional()
            .map_err(write_error)
    }

    fn recover(&mut self, now: Timestamp, window: Duration) -> Result<Recovered, StoreError> {
        let counted = counted_list();
        let c = &self.conn;
        c.execute(
            "DELETE FROM calls WHERE at_ms < ?1",
            params![now.minus(KEEP_CALLS).millis()],
        )
        .map_err(write_error)?;
        c.execute(
            "DELETE FROM files WHERE expires_at_ms <= ?1",
            params![now.millis()],
        )
        .map_err(write_error)?;

        let mut recent = c
            .prepare(&format!(
                "SELECT key_id, model, at_ms, input_tokens, requests, coalesce(output_tokens, 0) FROM calls WHERE at_ms > ?1 AND outcome IN ({counted}) ORDER BY at_ms"
            ))
            .map_err(write_error)?;
        let recent_calls = recent
            .query_map(params![now.minus(window).millis()], |r| {
                Ok(RecentCall {
                    key_id: r.get(0)?,
                    model: r.get(1)?,
                    at: Timestamp(r.get(2)?),
                    input_tokens: r.get::<_, i64>(3)? as u64,
                    requests: r.get::<_, i64>(4)? as u64,
                    output_tokens: r.get::<_, i64>(5)? as u64,
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(write_error)?;

        // The column holds each call's day in its provider's zone: from
        // the day before Pacific's today, every zone's today is in (a lane
        // forgets the days before its own today).
        let today = now.pacific_day().pred_opt().unwrap_or_default().to_string();
        let mut days = c
            .prepare(&format!(
                "SELECT key_id, model, pacific_day, sum(requests), sum(input_tokens) FROM calls WHERE pacific_day >= ?1 AND outcome IN ({counted}) GROUP BY key_id, model, pacific_day"
            ))
            .map_err(write_error)?;
        let day_counts = days
            .query_map(params![today], |r| {
                let day: String = r.get(2)?;
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    day,
                    Usage {
                        requests: r.get::<_, i64>(3)? as u64,
                        input_tokens: r.get::<_, i64>(4)? as u64,
                        output_tokens: 0,
                    },
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(write_error)?
            .into_iter()
            .filter_map(|(k, m, d, n)| Some((k, m, d.parse().ok()?, n)))
            .collect();

        let mut states = c
            .prepare("SELECT key_id, state, reason FROM key_states")
            .map_err(write_error)?;
        let key_states = states
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(write_error)?
            .into_iter()
            .filter_map(|(k, s, reason)| Some((k, state_from(&s, reason)?)))
            .collect();

        let setting = |name: &str| -> Result<Option<String>, StoreError> {
            c.query_row(
                "SELECT value FROM settings WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(write_error)
        };
        let mode = match (setting("mode")?, setting("mode_configured")?) {
            (Some(m), Some(c)) => m.parse::<Mode>().ok().zip(c.parse::<Mode>().ok()),
            _ => None,
        };

        let mut learned_q = c
            .prepare(
                "SELECT key_id, model, rpm, tpm, rpd, learned_at_ms, tpd, otpm FROM learned_limits",
            )
            .map_err(write_error)?;
        let learned = learned_q
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    LimitsOverride {
                        rpm: r.get(2)?,
                        tpm: r.get::<_, Option<i64>>(3)?.map(|t| t as u64),
                        rpd: r.get(4)?,
                        tpd: r.get::<_, Option<i64>>(6)?.map(|t| t as u64),
                        otpm: r.get::<_, Option<i64>>(7)?.map(|t| t as u64),
                    },
                    Timestamp(r.get(5)?),
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(write_error)?;

        let policy_cache = c
            .query_row(
                "SELECT fetched, models, fetched_at_ms FROM policy_cache WHERE id = 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
            .optional()
            .map_err(write_error)?
            .and_then(|(fetched, models, at)| {
                Some(PolicyCache {
                    fetched: serde_json::from_str(&fetched).ok()?,
                    models: serde_json::from_str(&models).ok()?,
                    at: Timestamp(at),
                })
            });

        let mut retired_q = c
            .prepare("SELECT name, value FROM settings WHERE name LIKE 'retired:%' ORDER BY name")
            .map_err(write_error)?;
        let retired = retired_q
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(write_error)?
            .into_iter()
            .filter_map(|(name, value)| {
                let model = name.strip_prefix("retired:")?.to_string();
                let (at, message) = value.split_once(' ')?;
                Some((model, Timestamp(at.parse().ok()?), message.to_string()))
            })
            .collect();

        Ok(Recovered {
            recent_calls,
            day_counts,
            key_states,
            mode,
            learned,
            policy_cache,
            retired,
        })
    }

    fn apply(&mut self, batch: &[Record]) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(write_error)?;
        for record in batch {
            match record {
                Record::CallSent { id, at, day, key_id, key_index, fingerprint, model, input_tokens, requests, output_tokens } => tx.execute(
                    "INSERT OR REPLACE INTO calls (id, at_ms, pacific_day, key_id, key_index, fingerprint, model, input_tokens, requests, output_tokens, outcome)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'sent')",
                    params![id, at.millis(), day.to_string(), key_id, key_index.one_based() as i64, fingerprint, model, *input_tokens as i64, *requests as i64, *output_tokens as i64],
                ),
                Record::CallSettled { id, outcome, input_tokens, output_tokens, latency_ms } => tx.execute(
                    "UPDATE calls SET outcome = ?2, input_tokens = ?3, output_tokens = ?4, latency_ms = ?5 WHERE id = ?1",
                    params![id, outcome.as_str(), *input_tokens as i64, *output_tokens as i64, *latency_ms as i64],
                ),
                Record::KeyState { key_id, state } => {
                    let (name, reason) = state_parts(state);
                    tx.execute(
                        "INSERT OR REPLACE INTO key_states (key_id, state, reason) VALUES (?1, ?2, ?3)",
                        params![key_id, name, reason],
                    )
                }
                Record::Mode { mode, configured } => tx
                    .execute("INSERT OR REPLACE INTO settings (name, value) VALUES ('mode', ?1)", params![mode.to_string()])
                    .and_then(|_| {
                        tx.execute(
                            "INSERT OR REPLACE INTO settings (name, value) VALUES ('mode_configured', ?1)",
                            params![configured.to_string()],
                        )
                    }),
                Record::PolicyCache(cache) => tx.execute(
                    "INSERT OR REPLACE INTO policy_cache (id, fetched, models, fetched_at_ms) VALUES (1, ?1, ?2, ?3)",
                    params![
                        serde_json::to_string(&cache.fetched).unwrap_or_default(),
                        serde_json::to_string(&cache.models).unwrap_or_default(),
                        cache.at.millis()
                    ],
                ),
                Record::Retired { model, at, message } => tx.execute(
                    "INSERT OR REPLACE INTO settings (name, value) VALUES (?1, ?2)",
                    params![format!("retired:{model}"), format!("{} {message}", at.millis())],
                ),
                Record::Learned { key_id, model, learned, at } => tx.execute(
                    "INSERT OR REPLACE INTO learned_limits (key_id, model, rpm, tpm, rpd, learned_at_ms, tpd, otpm) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![key_id, model, learned.rpm, learned.tpm.map(|t| t as i64), learned.rpd, at.millis(), learned.tpd.map(|t| t as i64), learned.otpm.map(|t| t as i64)],
                ),
                Record::FileOwned { name, key_id, expires } => tx.execute(
                    "INSERT OR REPLACE INTO files (name, key_id, expires_at_ms) VALUES (?1, ?2, ?3)",
                    params![name, key_id, expires.millis()],
                ),
                Record::FileDeleted { name } => {
                    tx.execute("DELETE FROM files WHERE name = ?1", params![name])
                }
            }
            .map_err(write_error)?;
        }
        tx.commit().map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON: Timestamp = Timestamp(1_781_118_000_000);

    fn temp_path(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("gemini-flux-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("state.db")
    }

    fn sent(id: i64, at: Timestamp, tokens: u64) -> Record {
        batch(id, at, tokens, 1)
    }

    /// A call that counts `requests` (a batch of embeddings).
    fn batch(id: i64, at: Timestamp, tokens: u64, requests: u64) -> Record {
        Record::CallSent {
            id,
            at,
            day: at.pacific_day(),
            key_id: "k1".into(),
            key_index: crate::keys::KeyIndex::new(0),
            fingerprint: "…0001".into(),
            model: "gemini-2.5-flash".into(),
            input_tokens: tokens,
            requests,
            output_tokens: 0,
        }
    }

    #[test]
    fn a_long_lived_store_prunes_in_chunks_and_bounds_its_wal() {
        let path = temp_path("prune");
        let mut store = SqliteStore::open(&path).unwrap();
        // 10,000 calls, one every 26 s over three days before NOON.
        let at = |i: i64| NOON.plus_millis(-(10_000 - i) * 26_000);
        let calls: Vec<Record> = (0..10_000).map(|i| sent(i, at(i), 10)).collect();
        store.apply(&calls).unwrap();
        let count = |s: &SqliteStore| -> i64 {
            s.conn
                .query_row("SELECT count(*) FROM calls", [], |r| r.get(0))
                .unwrap()
        };
        let pruned = prune_old_calls(&store.conn, at(9_999)).unwrap();
        let kept = (0..10_000)
            .filter(|&i| at(i) >= at(9_999).minus(KEEP_CALLS))
            .count() as i64;
        assert_eq!((pruned as i64, count(&store)), (10_000 - kept, kept));
        assert!(pruned as i64 > PRUNE_CHUNK, "pruned in several chunks");
        assert_eq!(prune_old_calls(&store.conn, at(9_999)).unwrap(), 0);
        // A call stamped three days ahead (a clock that jumped and came
        // back) does not make today's calls look old.
        store
            .apply(&[sent(20_000, at(9_999).plus_millis(3 * 86_400_000), 10)])
            .unwrap();
        assert_eq!(prune_old_calls(&store.conn, at(9_999)).unwrap(), 0);
        assert_eq!(count(&store), kept + 1);
        let limit: i64 = store
            .conn
            .query_row("PRAGMA journal_size_limit", [], |r| r.get(0))
            .unwrap();
        assert_eq!(limit, WAL_LIMIT_BYTES);
    }

    #[test]
    fn a_call_in_flight_comes_back_with_the_output_it_reserved() {
        let path = temp_path("reserved");
        let mut store = SqliteStore::open(&path).unwrap();
        let at = NOON.plus_millis(-5_000);
        let reserving = Record::CallSent {
            id: 1,
            at,
            day: at.pacific_day(),
            key_id: "k1".into(),
            key_index: crate::keys::KeyIndex::new(0),
            fingerprint: "…0001".into(),
            model: "claude/claude-haiku-4-5".into(),
            input_tokens: 10,
            requests: 1,
            output_tokens: 700,
        };
        store.apply(&[reserving]).unwrap();
        let r = store.recover(NOON, Duration::from_millis(60_250)).unwrap();
        assert_eq!(
            r.recent_calls[0].output_tokens, 700,
            "killed in flight: the reservation"
        );
    }

    #[test]
    fn counted_calls_and_settings_come_back() {
        let path = temp_path("roundtrip");
        let mut store = SqliteStore::open(&path).unwrap();
        store
            .apply(&[
                sent(1, NOON.plus_millis(-120_000), 10),
                batch(2, NOON.plus_millis(-30_000), 20, 3),
                sent(3, NOON.plus_millis(-10_000), 30),
                sent(4, NOON.plus_millis(-5_000), 40),
                Record::CallSettled {
                    id: 4,
                    outcome: Outcome::Unreached,
                    input_tokens: 40,
                    output_tokens: 0,
                    latency_ms: 1,
                },
                Record::CallSettled {
                    id: 3,
                    outcome: Outcome::Quota,
                    input_tokens: 30,
                    output_tokens: 0,
                    latency_ms: 5,
                },
                Record::CallSettled {
                    id: 2,
                    outcome: Outcome::Ok,
                    input_tokens: 25,
                    output_tokens: 3,
                    latency_ms: 900,
                },
                Record::KeyState {
                    key_id: "k2".into(),
                    state: KeyState::Invalid("not valid".into()),
                },
                Record::Mode {
                    mode: Mode::FlashOnly,
                    configured: Mode::Both,
                },
                Record::Learned {
                    key_id: "k1".into(),
                    model: "gemini-2.5-flash".into(),
                    learned: LimitsOverride {
                        tpm: Some(50_000),
                        ..Default::default()
                    },
                    at: NOON,
                },
                Record::PolicyCache(PolicyCache {
                    fetched: std::collections::BTreeMap::from([(
                        "gemini-2.5-flash".to_string(),
                        LimitsOverride {
                            rpm: Some(9),
                            ..Default::default()
                        },
                    )]),
                    models: vec!["gemini-2.5-flash".into()],
                    at: NOON,
                }),
            ])
            .unwrap();
        drop(store);
        let mut store = SqliteStore::open(&path).unwrap();
        let r = store.recover(NOON, Duration::from_millis(60_250)).unwrap();
        assert_eq!(
            r.recent_calls.len(),
            1,
            "the 429'd call, the one that never reached the upstream and the old one are not in the window"
        );
        assert_eq!(
            (r.recent_calls[0].input_tokens, r.recent_calls[0].requests),
            (25, 3)
        );
        // What the answer said it spent replaces what the call reserved.
        assert_eq!(r.recent_calls[0].output_tokens, 3);
        assert_eq!(
            r.day_counts,
            vec![(
                "k1".into(),
                "gemini-2.5-flash".into(),
                NOON.pacific_day(),
                Usage {
                    requests: 4,
                    input_tokens: 35,
                    output_tokens: 0,
                }
            )]
        );
        assert_eq!(
            r.key_states,
            vec![("k2".into(), KeyState::Invalid("not valid".into()))]
        );
        assert_eq!(r.mode, Some((Mode::FlashOnly, Mode::Both)));
        assert_eq!((r.learned[0].2.tpm, r.learned[0].3), (Some(50_000), NOON));
        let usage = store.usage_by_minute(NOON.plus_millis(-3_600_000)).unwrap();
        assert_eq!(
            usage.iter().map(|u| u.input_tokens).sum::<u64>(),
            25 + 10,
            "the 429'd call is not usage"
        );
        let cache = r.policy_cache.unwrap();
        assert_eq!(
            (
                cache.models.len(),
                cache.at,
                cache.fetched["gemini-2.5-flash"].rpm
            ),
            (1, NOON, Some(9))
        );
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_and_left_intact() {
        let path = temp_path("garbage");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let garbage = b"this is not a database, it is somebody's notes\n".repeat(100);
        std::fs::write(&path, &garbage).unwrap();
        let err = SqliteStore::open(&path).err().expect("refused").to_string();
        assert!(
            err.contains("not a gemini-flux state database") && err.contains("state.db"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), garbage);
    }

    #[test]
    fn a_file_is_owned_until_it_expires_or_is_deleted_across_a_reopen() {
        let path = temp_path("files");
        let mut store = SqliteStore::open(&path).unwrap();
        let owned = |name: &str, key_id: &str, hours: i64| Record::FileOwned {
            name: name.into(),
            key_id: key_id.into(),
            expires: NOON.plus_millis(hours * 3_600_000),
        };
        store
            .apply(&[
                owned("kept", "k2", 48),
                owned("deleted", "k1", 48),
                owned("expiring", "k3", 1),
                Record::FileDeleted {
                    name: "deleted".into(),
                },
            ])
            .unwrap();
        drop(store);
        let mut store = SqliteStore::open(&path).unwrap();
        let owner = |store: &mut SqliteStore, name: &str, at: Timestamp| {
            store.file_owner(name, at).unwrap()
        };
        assert_eq!(owner(&mut store, "kept", NOON), Some("k2".into()));
        assert_eq!(owner(&mut store, "deleted", NOON), None);
        assert_eq!(owner(&mut store, "expiring", NOON), Some("k3".into()));
        let later = NOON.plus_millis(3_600_000);
        assert_eq!(owner(&mut store, "expiring", later), None, "expired");
        store.recover(later, Duration::from_secs(60)).unwrap();
        let left: i64 = store
            .conn
            .query_row("SELECT count(*) FROM files", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 1, "recovery prunes the expired file");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let path = temp_path("newer");
        SqliteStore::open(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = SqliteStore::open(&path).err().expect("refused").to_string();
        assert!(err.contains("newer gemini-flux (schema 99"), "{err}");
    }

    #[test]
    fn another_programs_database_is_refused() {
        let path = temp_path("foreign");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE notes (x TEXT)")
            .unwrap();
        let err = SqliteStore::open(&path).err().expect("refused").to_string();
        assert!(err.contains("not gemini-flux's"), "{err}");
    }
}
