//! What must survive a restart, and the one writer that keeps it.
//!
//! A restart must not forget what was spent: the calls of the last minute
//! (their tokens still fill the windows upstream), the calls of today (they
//! count against per-day quotas), key states, the mode and learned limits.
//! [`Store`] is the small trait a backend implements ([`SqliteStore`] by
//! default); [`Ledger`] is the handle the service writes through, backed by a
//! writer thread that batches records off the hot path. A call's `CallSent`
//! record is written (to the SQLite store's journal, one `write(2)` for a
//! batch) before the call goes upstream, so a `kill -9` can never lose a call
//! the upstream may have counted; with Redis ([`RedisStore`]) the booking in
//! the shared lane already counts it, and the record is batched.
//! Which key owns each uploaded file is kept here too, until the file
//! expires, so that a restart (or another replica) still sends a call
//! naming it to that key.

pub mod batches;
mod journal;
pub mod redis;
mod sqlite;
mod writer;

pub use self::redis::RedisStore;
pub use sqlite::SqliteStore;
pub use writer::{BATCH_WINDOW, Ledger, RETRY_EVERY};

use crate::clock::Timestamp;
use crate::keys::{KeyIndex, KeyState};
use crate::policy::{LimitsOverride, Mode, Usage};
use chrono::NaiveDate;
use std::collections::BTreeMap;
use std::time::Duration;

/// Identifies a call record across restarts. Ids rise with time
/// ([`Ledger::next_call_id`]), so the ledger's rows are appended in order.
pub type CallId = i64;

/// How a call ended, as the ledger keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Sent, answer not yet known (a crash leaves calls in this state).
    Sent,
    Ok,
    /// 429: the upstream did not count it.
    Quota,
    Transient,
    KeyInvalid,
    KeyBlocked,
    /// The client's request was at fault; the upstream may have counted it.
    ClientError,
    /// No connection was made: the upstream never saw the call.
    Unreached,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Ok => "ok",
            Outcome::Quota => "quota",
            Outcome::Transient => "transient",
            Outcome::KeyInvalid => "key_invalid",
            Outcome::KeyBlocked => "key_blocked",
            Outcome::ClientError => "client_error",
            Outcome::Unreached => "unreached",
        }
    }

    /// Outcomes whose calls the upstream counted (or may have): the ones the
    /// scheduler keeps booked, and so the ones recovery restores.
    pub const COUNTED: [Outcome; 4] = [
        Outcome::Sent,
        Outcome::Ok,
        Outcome::Transient,
        Outcome::ClientError,
    ];
}

/// One write. The journal keeps it as a line of JSON
/// (`{"CallSent":{"id":…}}`), times in milliseconds.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Record {
    CallSent {
        id: CallId,
        #[serde(with = "journal::millis")]
        at: Timestamp,
        /// The quota day it counts in: `at`'s date in its provider's zone
        /// (Pacific for Gemini's keys).
        day: chrono::NaiveDate,
        key_id: String,
        #[serde(with = "journal::key_index")]
        key_index: KeyIndex,
        fingerprint: String,
        model: String,
        input_tokens: u64,
        /// 1, or the items of a batch of embeddings.
        requests: u64,
        /// The output tokens it reserves until settled (other providers').
        output_tokens: u64,
    },
    CallSettled {
        id: CallId,
        outcome: Outcome,
        input_tokens: u64,
        output_tokens: u64,
        latency_ms: u64,
    },
    KeyState {
        key_id: String,
        state: KeyState,
    },
    /// The mode set at run time, with the configured mode it overrode.
    Mode {
        mode: Mode,
        configured: Mode,
    },
    Learned {
        key_id: String,
        model: String,
        learned: LimitsOverride,
        #[serde(with = "journal::millis")]
        at: Timestamp,
    },
    PolicyCache(PolicyCache),
    /// The upstream said `model` is retired for this project.
    Retired {
        model: String,
        #[serde(with = "journal::millis")]
        at: Timestamp,
        message: String,
    },
    /// A file uploaded through key `key_id`: the calls that name it go to
    /// that key until `expires` (the upstream deletes it then).
    FileOwned {
        /// The file's id, the part after `files/`.
        name: String,
        key_id: String,
        #[serde(with = "journal::millis")]
        expires: Timestamp,
    },
    /// A file deleted through the gateway.
    FileDeleted {
        name: String,
    },
}

/// An accepted policy fetch and the model list discovered with it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PolicyCache {
    pub fetched: BTreeMap<String, LimitsOverride>,
    pub models: Vec<String>,
    #[serde(with = "journal::millis")]
    pub at: Timestamp,
}

/// A counted call still inside the per-minute window.
#[derive(Clone, Debug, PartialEq)]
pub struct RecentCall {
    pub key_id: String,
    pub model: String,
    pub at: Timestamp,
    pub input_tokens: u64,
    /// 1, or the items of a batch of embeddings.
    pub requests: u64,
    /// Reserved when sent, what the answer reported once settled.
    pub output_tokens: u64,
}

/// Everything needed to rebuild the scheduler.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recovered {
    pub recent_calls: Vec<RecentCall>,
    /// (key id, model, Pacific day, what its counted calls spent) for today and later.
    pub day_counts: Vec<(String, String, NaiveDate, Usage)>,
    pub key_states: Vec<(String, KeyState)>,
    pub mode: Option<(Mode, Mode)>,
    /// (key id, model, learned limits, when last enforced).
    pub learned: Vec<(String, String, LimitsOverride, Timestamp)>,
    pub policy_cache: Option<PolicyCache>,
    /// (model, when the upstream said so, its message) of retired models.
    pub retired: Vec<(String, Timestamp, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state file cannot be used; start-up stops and the file is left as it is.
    #[error("{path}: {problem}. {remedy}")]
    Unusable {
        path: String,
        problem: String,
        remedy: String,
    },
    #[error("state store write failed: {0}")]
    Write(String),
}

/// Input tokens of counted calls in one minute on one key.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MinuteUsage {
    pub key: usize,
    pub fingerprint: String,
    /// The minute's first instant.
    pub minute: Timestamp,
    pub input_tokens: u64,
}

/// A persistence backend. Calls come from the writer thread only.
pub trait Store: Send + 'static {
    /// Input tokens per key and minute since `since`, for the dashboard. A
    /// backend that keeps no history answers none.
    fn usage_by_minute(&mut self, since: Timestamp) -> Result<Vec<MinuteUsage>, StoreError> {
        let _ = since;
        Ok(Vec::new())
    }
    /// The key id that owns file `name` (the part after `files/`) at `now`,
    /// from a [`Record::FileOwned`] not deleted and not expired. A backend
    /// that keeps no files knows none.
    fn file_owner(&mut self, name: &str, now: Timestamp) -> Result<Option<String>, StoreError> {
        let _ = (name, now);
        Ok(None)
    }
    /// What to restore as of `now`: calls after `now - window`, today's counts.
    fn recover(&mut self, now: Timestamp, window: Duration) -> Result<Recovered, StoreError>;
    /// Applies a batch (the SQLite store: appends it to its journal with one
    /// write).
    fn apply(&mut self, batch: &[Record]) -> Result<(), StoreError>;
    /// Makes everything applied so far readable to whoever opens the store
    /// next (the SQLite store folds its journal in), for a stop.
    fn sync(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The largest call id recorded, so a new run numbers its calls after
    /// it. A backend that keeps no calls knows none.
    fn last_call_id(&mut self) -> Result<Option<CallId>, StoreError> {
        Ok(None)
    }
    /// Whether a call's `CallSent` record must be written before the call
    /// leaves: true where this store is what a restart rebuilds the windows
    /// from. A store whose windows live elsewhere says false.
    fn rebuilds_windows(&self) -> bool {
        true
    }
}
