//! The default backend: one SQLite file (WAL mode), versioned migrations,
//! fed through the journal.
//!
//! A batch of records is appended to the journal (`journal.rs`) with one
//! write and the call goes on; a thread of the store's own (the folder)
//! moves each second's records into SQLite in one transaction, keeps the
//! per-day and per-minute totals that recovery and the dashboard read, prunes
//! what no restart needs, and checkpoints the WAL. A read (recovery, the
//! dashboard, a file's owner) first waits for the folder to take everything
//! written so far, so it never misses a record.

use super::journal::{self, Segment};
use super::{
    CallId, MinuteUsage, Outcome, PolicyCache, RecentCall, Record, Recovered, Store, StoreError,
};
use crate::clock::Timestamp;
use crate::keys::KeyState;
use crate::policy::{LimitsOverride, Mode, Usage};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
    // 8: what each day and each minute spent, kept as totals, so that calls
    // need only be kept for minutes.
    "CREATE TABLE day_usage (
        day TEXT NOT NULL,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        PRIMARY KEY (day, key_id, model)
    ) WITHOUT ROWID;
    INSERT INTO day_usage
        SELECT pacific_day, key_id, model, sum(requests), sum(input_tokens), sum(coalesce(output_tokens, 0))
        FROM calls WHERE outcome IN ('sent', 'ok', 'transient', 'client_error')
        GROUP BY pacific_day, key_id, model;
    CREATE TABLE minute_usage (
        minute_ms INTEGER NOT NULL,
        key_index INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,
        PRIMARY KEY (minute_ms, key_index, fingerprint)
    ) WITHOUT ROWID;
    INSERT INTO minute_usage
        SELECT (at_ms / 60000) * 60000, key_index, fingerprint, sum(input_tokens)
        FROM calls WHERE outcome IN ('sent', 'ok', 'transient', 'client_error')
        GROUP BY 1, 2, 3;
    DROP INDEX calls_by_day;",
];

/// Calls are kept this long, then pruned: recovery needs the last minute's
/// (days and minutes are kept as totals). A call that settles later than
/// this keeps counting what it reserved when sent: more, never less.
const KEEP_CALLS: Duration = Duration::from_secs(15 * 60);

/// The per-day and per-minute totals are kept this long: recovery needs the
/// current day in every zone (at most 26 hours), the dashboard the last hour.
const KEEP_TOTALS: Duration = Duration::from_secs(2 * 86_400);

/// The journal's records go to SQLite at least this often, or at this many.
const FOLD_EVERY: Duration = Duration::from_secs(1);
const FOLD_RECORDS: usize = 4_096;

/// How often the WAL is folded back into the database file, and old calls
/// pruned.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

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
    /// For migrations and reads; the folder writes on a connection of its own.
    conn: Connection,
    path: PathBuf,
    /// This run's name in its journal segments' names.
    run: String,
    /// The segment being appended to, and the number of the next one.
    segment: Option<Segment>,
    next_segment: u64,
    /// The records in `segment`, and when the first of them came.
    unfolded: Vec<Record>,
    unfolded_since: Instant,
    folder: Folder,
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
        let mut conn = conn;
        migrate(&mut conn, version)
            .map_err(|e| unusable(format!("migration failed ({e})"), not_a_db))?;
        // What a run that is gone (a crash, a kill -9) journaled and never
        // folded: into SQLite before anything reads it.
        let no_room = "Free some disk space and start again: the journal files beside it keep every record until then.";
        let orphans = journal::orphans(path)
            .map_err(|e| unusable(format!("its journal cannot be read ({e})"), no_room))?;
        for (segment, records) in orphans {
            apply_records(&mut conn, &records).map_err(|e| {
                unusable(
                    format!("its journal cannot be folded into it ({e})"),
                    no_room,
                )
            })?;
            if let Err(e) = segment.remove() {
                tracing::warn!(
                    "a folded journal segment stays ({e}); folding it again is harmless"
                );
            }
        }
        let run = journal::run_name();
        let segment = Segment::create(path, &run, 0).map_err(|e| {
            unusable(
                format!("cannot create its journal beside it ({e})"),
                "Set FLUX_STATE_PATH to a writable place.",
            )
        })?;
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
            run,
            segment: Some(segment),
            next_segment: 1,
            unfolded: Vec::new(),
            unfolded_since: Instant::now(),
            folder: Folder::start(path),
        })
    }

    /// Hands the journal's records to the folder, in a segment of their own
    /// (appending goes on in a new one). If no new segment can be created
    /// (a full disk), appending goes on in this one and the folder waits.
    fn hand_over(&mut self) {
        if self.unfolded.is_empty() {
            return;
        }
        match Segment::create(&self.path, &self.run, self.next_segment) {
            Ok(next) => {
                self.next_segment += 1;
                let full = self.segment.replace(next);
                let records = std::mem::take(&mut self.unfolded);
                self.folder.send(Job::Fold(full, records));
            }
            Err(e) => tracing::warn!("no new journal segment ({e}); the current one grows"),
        }
    }

    /// Returns once the folder has taken every record written so far.
    fn folded(&mut self) -> Result<(), StoreError> {
        self.hand_over();
        if !self.unfolded.is_empty() {
            // No new segment could be made: fold a copy now (they stay in
            // the segment, and folding them again later changes nothing).
            self.folder.send(Job::Fold(None, self.unfolded.clone()));
        }
        let (done, answer) = mpsc::channel();
        self.folder.send(Job::Tell(done));
        answer
            .recv()
            .unwrap_or_else(|_| Err("the state store's folder stopped".into()))
            .map_err(StoreError::Write)
    }

    /// The default location, relative to the working directory.
    pub fn default_path() -> PathBuf {
        PathBuf::from("./data/gemini-flux.db")
    }
}

impl Drop for SqliteStore {
    /// Everything journaled goes to SQLite before the store is gone (what a
    /// full disk refuses stays in the journal, for the next start).
    fn drop(&mut self) {
        let records = std::mem::take(&mut self.unfolded);
        self.folder.send(Job::Fold(self.segment.take(), records));
        self.folder.stop();
    }
}

fn migrate(conn: &mut Connection, from: usize) -> rusqlite::Result<()> {
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!("state store migrated to schema {}", i + 1);
    }
    Ok(())
}

/// What the folder is asked to do.
enum Job {
    /// Fold these records, journaled in this segment (none at the end of a
    /// run that never created one), into SQLite, then remove the segment.
    Fold(Option<Segment>, Vec<Record>),
    /// Say, once everything sent before is folded, whether it all was.
    Tell(mpsc::Sender<Result<(), String>>),
}

/// The folder thread: takes the journal's records into SQLite, and every
/// [`CHECKPOINT_EVERY`] prunes and checkpoints, on a connection of its own,
/// so that a call's record never waits for a transaction, a prune or a
/// checkpoint (a read, which waits for the folder, holds the ledger meanwhile).
struct Folder {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Folder {
    fn start(path: &Path) -> Folder {
        let (jobs, received) = mpsc::channel();
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("flux-store-folder".into())
            .spawn(move || fold_loop(&path, received));
        match thread {
            Ok(thread) => Folder {
                jobs: Some(jobs),
                thread: Some(thread),
            },
            Err(e) => {
                tracing::error!(
                    "no folder thread ({e}); records stay in the journal until a restart"
                );
                Folder {
                    jobs: None,
                    thread: None,
                }
            }
        }
    }

    fn send(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
    }

    /// Folds what is left, checkpoints, and waits for the thread to end.
    fn stop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn fold_loop(path: &Path, jobs: mpsc::Receiver<Job>) {
    let mut conn = match Connection::open(path) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::error!(
                "the folder cannot open the state store ({e}); records stay in the journal until a restart"
            );
            return;
        }
    };
    let _ = conn.pragma_update(None, "journal_size_limit", WAL_LIMIT_BYTES);
    let _ = conn.busy_timeout(Duration::from_secs(5));
    let mut waiting: VecDeque<(Option<Segment>, Vec<Record>)> = VecDeque::new();
    let mut failing = false;
    let mut maintained = Instant::now();
    loop {
        let job = jobs.recv_timeout(CHECKPOINT_EVERY.saturating_sub(maintained.elapsed()));
        let stopping = matches!(job, Err(mpsc::RecvTimeoutError::Disconnected));
        let mut tell = None;
        match job {
            Ok(Job::Fold(segment, records)) => waiting.push_back((segment, records)),
            Ok(Job::Tell(to)) => tell = Some(to),
            Err(_) => {}
        }
        let folded = fold_waiting(&mut conn, &mut waiting);
        match (&folded, failing) {
            (Err(e), false) => tracing::error!(
                "the state store refuses the journal's records ({e}); they stay in the journal and are tried again"
            ),
            (Ok(()), true) => tracing::info!("the state store takes the journal's records again"),
            _ => {}
        }
        failing = folded.is_err();
        if let Some(to) = tell {
            let _ = to.send(folded);
        }
        if stopping || maintained.elapsed() >= CHECKPOINT_EVERY {
            maintained = Instant::now();
            if let Err(e) = prune(&conn, Timestamp::wall_now()) {
                tracing::warn!("state store pruning failed: {e}");
            }
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!("state store checkpoint failed: {e}");
            }
        }
        if stopping {
            return;
        }
    }
}

/// Folds the waiting segments in order, each in one transaction, removing
/// each once SQLite has it; stops at the first refusal (the rest wait).
fn fold_waiting(
    conn: &mut Connection,
    waiting: &mut VecDeque<(Option<Segment>, Vec<Record>)>,
) -> Result<(), String> {
    while let Some((_, records)) = waiting.front() {
        apply_records(conn, records).map_err(|e| e.to_string())?;
        if let Some((Some(segment), _)) = waiting.pop_front()
            && let Err(e) = segment.remove()
        {
            tracing::warn!("a folded journal segment stays ({e}); folding it again is harmless");
        }
    }
    Ok(())
}

/// Deletes the calls older than [`KEEP_CALLS`] and the totals older than
/// [`KEEP_TOTALS`] before the newest call (or before `now`, if the newest
/// lies ahead of it: a clock stepped back must not take today's calls), the
/// calls in at most [`PRUNE_CHUNKS_PER_ROUND`] chunks of [`PRUNE_CHUNK`].
/// Measured from the newest call rather than from `now` alone, so a store
/// restored from elsewhere, or a test's virtual day, never loses the calls
/// it is about to need.
fn prune(conn: &Connection, now: Timestamp) -> rusqlite::Result<usize> {
    let newest: Option<i64> = conn.query_row("SELECT max(at_ms) FROM calls", [], |r| r.get(0))?;
    let anchor = Timestamp(newest.map_or(now.millis(), |n| n.min(now.millis())));
    let mut pruned = 0;
    for _ in 0..PRUNE_CHUNKS_PER_ROUND {
        let n = conn.execute(
            "DELETE FROM calls WHERE id IN (SELECT id FROM calls WHERE at_ms < ?1 LIMIT ?2)",
            params![anchor.minus(KEEP_CALLS).millis(), PRUNE_CHUNK],
        )?;
        pruned += n;
        if n < PRUNE_CHUNK as usize {
            break;
        }
    }
    let old = anchor.minus(KEEP_TOTALS);
    conn.execute(
        "DELETE FROM minute_usage WHERE minute_ms < ?1",
        params![old.millis()],
    )?;
    conn.execute(
        "DELETE FROM day_usage WHERE day < ?1",
        params![
            old.to_utc()
                .date_naive()
                .pred_opt()
                .unwrap_or_default()
                .to_string()
        ],
    )?;
    Ok(pruned)
}

/// What a call adds to the totals: its requests, input and output tokens if
/// its outcome counts, else nothing.
fn counted(outcome: &str, requests: i64, input: i64, output: i64) -> [i64; 3] {
    if Outcome::COUNTED.iter().any(|o| o.as_str() == outcome) {
        [requests, input, output]
    } else {
        [0; 3]
    }
}

/// The change a batch makes to the per-day and per-minute totals, written
/// once per row it touches.
#[derive(Default)]
struct Totals {
    /// (day, key id, model) → requests, input tokens, output tokens.
    days: HashMap<(String, String, String), [i64; 3]>,
    /// (minute, key index, fingerprint) → input tokens.
    minutes: HashMap<(i64, i64, String), i64>,
}

/// Where a call's totals go.
struct CallPlace {
    day: String,
    key_id: String,
    model: String,
    at_ms: i64,
    key_index: i64,
    fingerprint: String,
}

impl Totals {
    fn add(&mut self, place: CallPlace, before: [i64; 3], after: [i64; 3]) {
        if before == after {
            return;
        }
        let day = self
            .days
            .entry((place.day, place.key_id, place.model))
            .or_default();
        for i in 0..3 {
            day[i] += after[i] - before[i];
        }
        *self
            .minutes
            .entry((
                place.at_ms / 60_000 * 60_000,
                place.key_index,
                place.fingerprint,
            ))
            .or_default() += after[1] - before[1];
    }

    fn write(self, tx: &Transaction) -> rusqlite::Result<()> {
        let mut days = tx.prepare_cached(
            "INSERT INTO day_usage (day, key_id, model, requests, input_tokens, output_tokens) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (day, key_id, model) DO UPDATE SET requests = requests + excluded.requests,
                 input_tokens = input_tokens + excluded.input_tokens, output_tokens = output_tokens + excluded.output_tokens",
        )?;
        for ((day, key_id, model), [r, i, o]) in self.days {
            days.execute(params![day, key_id, model, r, i, o])?;
        }
        let mut minutes = tx.prepare_cached(
            "INSERT INTO minute_usage (minute_ms, key_index, fingerprint, input_tokens) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (minute_ms, key_index, fingerprint) DO UPDATE SET input_tokens = input_tokens + excluded.input_tokens",
        )?;
        for ((minute, key_index, fingerprint), i) in self.minutes {
            minutes.execute(params![minute, key_index, fingerprint, i])?;
        }
        Ok(())
    }
}

/// Applies `records` in one transaction. Folding the same records twice
/// (a crash between a fold's commit and its segment's removal) changes
/// nothing: a call already there is not inserted again, and a settle moves
/// the totals by the difference it makes to the call's row.
fn apply_records(conn: &mut Connection, records: &[Record]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let mut totals = Totals::default();
    for record in records {
        match record {
            Record::CallSent {
                id,
                at,
                day,
                key_id,
                key_index,
                fingerprint,
                model,
                input_tokens,
                requests,
                output_tokens,
            } => {
                let inserted = tx.prepare_cached(
                    "INSERT OR IGNORE INTO calls (id, at_ms, pacific_day, key_id, key_index, fingerprint, model, input_tokens, requests, output_tokens, outcome)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'sent')",
                )?
                .execute(params![id, at.millis(), day.to_string(), key_id, key_index.one_based() as i64, fingerprint, model, *input_tokens as i64, *requests as i64, *output_tokens as i64])?;
                if inserted == 1 {
                    let place = CallPlace {
                        day: day.to_string(),
                        key_id: key_id.clone(),
                        model: model.clone(),
                        at_ms: at.millis(),
                        key_index: key_index.one_based() as i64,
                        fingerprint: fingerprint.clone(),
                    };
                    let sent = counted(
                        Outcome::Sent.as_str(),
                        *requests as i64,
                        *input_tokens as i64,
                        *output_tokens as i64,
                    );
                    totals.add(place, [0; 3], sent);
                }
            }
            Record::CallSettled {
                id,
                outcome,
                input_tokens,
                output_tokens,
                latency_ms,
            } => {
                let row = tx
                    .prepare_cached(
                        "SELECT pacific_day, key_id, model, at_ms, key_index, fingerprint, requests, outcome, input_tokens, coalesce(output_tokens, 0)
                         FROM calls WHERE id = ?1",
                    )?
                    .query_row(params![id], |r| {
                        let place = CallPlace {
                            day: r.get(0)?,
                            key_id: r.get(1)?,
                            model: r.get(2)?,
                            at_ms: r.get(3)?,
                            key_index: r.get(4)?,
                            fingerprint: r.get(5)?,
                        };
                        let requests: i64 = r.get(6)?;
                        let before = counted(&r.get::<_, String>(7)?, requests, r.get(8)?, r.get(9)?);
                        Ok((place, requests, before))
                    })
                    .optional()?;
                // Pruned already: it keeps counting what it was sent with.
                let Some((place, requests, before)) = row else {
                    continue;
                };
                tx.prepare_cached("UPDATE calls SET outcome = ?2, input_tokens = ?3, output_tokens = ?4, latency_ms = ?5 WHERE id = ?1")?
                    .execute(params![id, outcome.as_str(), *input_tokens as i64, *output_tokens as i64, *latency_ms as i64])?;
                let after = counted(
                    outcome.as_str(),
                    requests,
                    *input_tokens as i64,
                    *output_tokens as i64,
                );
                totals.add(place, before, after);
            }
            setting => {
                apply_setting(&tx, setting)?;
            }
        }
    }
    totals.write(&tx)?;
    tx.commit()
}

/// Applies a record that is not a call's.
fn apply_setting(tx: &Transaction, record: &Record) -> rusqlite::Result<usize> {
    match record {
        Record::CallSent { .. } | Record::CallSettled { .. } => Ok(0),
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
        Record::FileDeleted { name } => tx.execute("DELETE FROM files WHERE name = ?1", params![name]),
    }
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
        self.folded()?;
        let mut query = self
            .conn
            .prepare(
                "SELECT key_index, fingerprint, minute_ms, input_tokens FROM minute_usage
                 WHERE minute_ms >= ?1 / 60000 * 60000 ORDER BY minute_ms, key_index",
            )
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
        self.folded()?;
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
        self.folded()?;
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
            .prepare(
                "SELECT key_id, model, day, requests, input_tokens FROM day_usage WHERE day >= ?1 AND requests > 0",
            )
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
        let Some(segment) = self.segment.as_mut() else {
            return Err(StoreError::Write("the state store is closing".into()));
        };
        segment
            .append(batch)
            .map_err(|e| StoreError::Write(format!("the ledger's journal: {e}")))?;
        if self.unfolded.is_empty() {
            self.unfolded_since = Instant::now();
        }
        self.unfolded.extend_from_slice(batch);
        if self.unfolded.len() >= FOLD_RECORDS || self.unfolded_since.elapsed() >= FOLD_EVERY {
            self.hand_over();
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.folded()
    }

    fn last_call_id(&mut self) -> Result<Option<CallId>, StoreError> {
        self.folded()?;
        self.conn
            .query_row("SELECT max(id) FROM calls", [], |r| r.get(0))
            .map_err(write_error)
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
    fn a_long_lived_store_keeps_minutes_of_calls_and_days_of_totals() {
        let path = temp_path("prune");
        let mut store = SqliteStore::open(&path).unwrap();
        // 30,000 calls of 10 tokens, one every 2 s over the 1000 minutes
        // before NOON.
        let at = |i: i64| NOON.plus_millis(-(30_000 - i) * 2_000);
        let calls: Vec<Record> = (0..30_000).map(|i| sent(i, at(i), 10)).collect();
        store.apply(&calls).unwrap();
        store.folded().unwrap();
        let count = |s: &SqliteStore, sql: &str| -> i64 {
            s.conn.query_row(sql, [], |r| r.get(0)).unwrap()
        };
        let rounds: Vec<usize> = std::iter::repeat_with(|| prune(&store.conn, at(29_999)).unwrap())
            .take_while(|&n| n > 0)
            .collect();
        let kept = (0..30_000)
            .filter(|&i| at(i) >= at(29_999).minus(KEEP_CALLS))
            .count() as i64;
        assert_eq!(kept, 451, "15 minutes of calls");
        let round = PRUNE_CHUNK as usize * PRUNE_CHUNKS_PER_ROUND;
        assert_eq!(
            rounds,
            [round, 30_000 - kept as usize - round],
            "a backlog drains over rounds of at most {round}"
        );
        assert_eq!(count(&store, "SELECT count(*) FROM calls"), kept);
        // The totals outlive the calls: the day's and the dashboard's hour.
        assert_eq!(count(&store, "SELECT sum(requests) FROM day_usage"), 30_000);
        let hour = store
            .usage_by_minute(at(29_999).minus(Duration::from_secs(3_600)))
            .unwrap();
        assert_eq!(
            hour.iter().map(|m| m.input_tokens).sum::<u64>(),
            61 * 30 * 10
        );
        // A call stamped three days ahead (a clock that jumped and came
        // back) does not make today's calls look old.
        store
            .apply(&[sent(40_000, at(29_999).plus_millis(3 * 86_400_000), 10)])
            .unwrap();
        store.folded().unwrap();
        assert_eq!(prune(&store.conn, at(29_999)).unwrap(), 0);
        assert_eq!(count(&store, "SELECT count(*) FROM calls"), kept + 1);
        let limit: i64 = store
            .conn
            .query_row("PRAGMA journal_size_limit", [], |r| r.get(0))
            .unwrap();
        assert_eq!(limit, WAL_LIMIT_BYTES);
    }

    impl SqliteStore {
        /// What a `kill -9` leaves: the journal as written, nothing folded.
        fn crash(mut self) {
            self.segment.take();
            self.unfolded.clear();
        }

        fn segments(&self) -> usize {
            let dir = self.path.parent().unwrap();
            std::fs::read_dir(dir)
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    name.to_string_lossy().contains(".ledger-")
                })
                .count()
        }
    }

    #[test]
    fn what_only_the_journal_holds_comes_back_after_a_crash() {
        let path = temp_path("crash");
        let mut store = SqliteStore::open(&path).unwrap();
        store
            .apply(&[
                sent(1, NOON.plus_millis(-30_000), 100),
                sent(2, NOON.plus_millis(-20_000), 200),
                Record::CallSettled {
                    id: 2,
                    outcome: Outcome::Quota,
                    input_tokens: 200,
                    output_tokens: 0,
                    latency_ms: 3,
                },
            ])
            .unwrap();
        let in_sqlite: i64 = store
            .conn
            .query_row("SELECT count(*) FROM calls", [], |r| r.get(0))
            .unwrap();
        assert_eq!(in_sqlite, 0, "not folded yet: only the journal has them");
        store.crash();
        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store.segments(),
            1,
            "the crashed run's segment folded and removed"
        );
        let r = store.recover(NOON, Duration::from_millis(60_250)).unwrap();
        assert_eq!(r.recent_calls.len(), 1, "the 429'd call does not count");
        assert_eq!(r.day_counts[0].3, Usage::call(100));
        assert!(store.last_call_id().unwrap() == Some(2));
    }

    #[test]
    fn folding_the_same_records_twice_counts_them_once() {
        let path = temp_path("twice");
        let mut store = SqliteStore::open(&path).unwrap();
        let records = [
            sent(1, NOON.plus_millis(-30_000), 100),
            batch(2, NOON.plus_millis(-20_000), 200, 4),
            Record::CallSettled {
                id: 1,
                outcome: Outcome::Ok,
                input_tokens: 90,
                output_tokens: 5,
                latency_ms: 3,
            },
            Record::CallSettled {
                id: 2,
                outcome: Outcome::Quota,
                input_tokens: 200,
                output_tokens: 0,
                latency_ms: 3,
            },
        ];
        apply_records(&mut store.conn, &records).unwrap();
        apply_records(&mut store.conn, &records).unwrap();
        let r = store.recover(NOON, Duration::from_millis(60_250)).unwrap();
        assert_eq!(
            r.day_counts[0].3,
            Usage::call(90),
            "the call settled to 90 tokens; the 429'd batch counts nothing"
        );
        let minutes = store.usage_by_minute(NOON.plus_millis(-60_000)).unwrap();
        assert_eq!(minutes.iter().map(|m| m.input_tokens).sum::<u64>(), 90);
    }

    #[test]
    fn folded_segments_are_removed_and_a_second_of_records_is_one_fold() {
        let path = temp_path("segments");
        let mut store = SqliteStore::open(&path).unwrap();
        for i in 0..(FOLD_RECORDS as i64 + 10) {
            store.apply(&[sent(i, NOON.plus_millis(i), 1)]).unwrap();
        }
        assert_eq!(
            store.unfolded.len(),
            10,
            "handed over at {FOLD_RECORDS} records"
        );
        store.folded().unwrap();
        assert_eq!(store.segments(), 1, "only the segment being written");
        let in_sqlite: i64 = store
            .conn
            .query_row("SELECT count(*) FROM calls", [], |r| r.get(0))
            .unwrap();
        assert_eq!(in_sqlite, FOLD_RECORDS as i64 + 10);
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.segments(), 1, "none left behind by a clean stop");
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
