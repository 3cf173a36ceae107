//! Redis as the state store of replicas holding the same keys: what lives
//! there and under which names, and the ledger's Redis backend.
//!
//! Everything lives under one prefix (`FLUX_REDIS_PREFIX`, default
//! `gemini-flux:`), shown here as `P`:
//!
//! ```text
//!   P lane:{key id}:{model}  hash {v: version, state: the lane, compact JSON}
//!   P keys                   hash {key id: key state}
//!   P mode                   {mode, configured}
//!   P policy                 the accepted policy fetch and its models
//!   P usage:{minute}         hash {"{index} {fingerprint}": input tokens}, for the dashboard
//!   P file:{file id}         the id of the key that owns the uploaded file; expires with the file
//!   P epoch                  a random id written once: if it changes, Redis lost its data
//! ```
//!
//! Key ids are [`crate::keys::ApiKey::stable_id`]: a key's text never
//! reaches Redis. [`RedisStore`] is the [`Store`] the ledger writes through,
//! on its blocking thread. The lanes are read and committed by the
//! replicated scheduler (`scheduler::replicated::shared_lanes`), which names
//! its keys with `Names` and shares the few helpers here; the store never
//! reads a lane.

use super::{MinuteUsage, PolicyCache, Record, Recovered, Store, StoreError};
use crate::clock::Timestamp;
use crate::keys::KeyState;
use crate::policy::{LimitsOverride, Mode};
use redis::{Cmd, FromRedisValue, RedisError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// How long one Redis operation may take before the replica gives up on it
/// (and refuses the request it was for).
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// The dashboard's per-minute usage is kept two hours.
const USAGE_TTL: Duration = Duration::from_secs(2 * 3_600);

/// `url` with its password replaced by `***`, fit for logs and errors.
pub fn masked(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "(an unparsable Redis URL)".to_string(),
    }
}

/// Deletes every key under `prefix` and answers how many there were: how
/// tests and benchmarks leave a shared Redis as they found it.
pub fn forget_prefix(url: &str, prefix: &str) -> Result<usize, RedisError> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut conn)?;
    if !keys.is_empty() {
        redis::cmd("DEL").arg(&keys).query::<()>(&mut conn)?;
    }
    Ok(keys.len())
}

/// Names of the shared state's Redis keys.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
        }
    }
    /// Lane (key, model), its key named by its stable id.
    pub(crate) fn lane(&self, key_id: &str, model: &str) -> String {
        format!("{}lane:{key_id}:{model}", self.prefix)
    }
    pub(crate) fn keys(&self) -> String {
        format!("{}keys", self.prefix)
    }
    pub(crate) fn mode(&self) -> String {
        format!("{}mode", self.prefix)
    }
    fn policy(&self) -> String {
        format!("{}policy", self.prefix)
    }
    fn usage(&self, minute: i64) -> String {
        format!("{}usage:{minute}", self.prefix)
    }
    fn file(&self, name: &str) -> String {
        format!("{}file:{name}", self.prefix)
    }
    pub(crate) fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    pub(crate) fn set_key_state(&self, key_id: &str, state: &KeyState) -> Cmd {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.keys()).arg(key_id).arg(json(state));
        cmd
    }

    pub(crate) fn set_mode(&self, mode: Mode, configured: Mode) -> Cmd {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.mode())
            .arg(json(&StoredMode { mode, configured }));
        cmd
    }
}

#[derive(Serialize, Deserialize)]
struct StoredMode {
    mode: Mode,
    configured: Mode,
}

#[derive(Serialize, Deserialize)]
struct StoredPolicy {
    fetched: BTreeMap<String, LimitsOverride>,
    models: Vec<String>,
    at_ms: i64,
}

/// The mode as written by [`Names::set_mode`]: (mode, configured mode).
pub(crate) fn parse_mode(text: Option<String>) -> Option<(Mode, Mode)> {
    text.and_then(|text| serde_json::from_str::<StoredMode>(&text).ok())
        .map(|m| (m.mode, m.configured))
}

/// The key states as written by [`Names::set_key_state`], by key id; an
/// entry that does not parse is left out.
pub(crate) fn parse_key_states<C: FromIterator<(String, KeyState)>>(
    raw: HashMap<String, String>,
) -> C {
    raw.into_iter()
        .filter_map(|(id, text)| Some((id, serde_json::from_str(&text).ok()?)))
        .collect()
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("plain data serialises")
}

pub(crate) fn client(url: &str) -> Result<redis::Client, StoreError> {
    redis::Client::open(url).map_err(|e| unusable(url, &e))
}

pub(crate) fn unusable(url: &str, e: &RedisError) -> StoreError {
    StoreError::Unusable {
        path: masked(url),
        problem: format!("Redis cannot be used: {e}"),
        remedy: "Start Redis, or correct FLUX_REDIS_URL (unset it to keep state in SQLite)."
            .to_string(),
    }
}

/// The ledger's Redis backend: per-minute usage for the dashboard, key
/// states, the mode and the policy cache. Windows and day counts are not
/// here: they live in the shared lanes themselves.
pub struct RedisStore {
    client: redis::Client,
    url: String,
    conn: Option<redis::Connection>,
    names: Names,
}

impl RedisStore {
    /// Connects and checks that Redis answers; refuses to start otherwise.
    pub fn open(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        let mut store = RedisStore {
            client: client(url)?,
            url: url.to_string(),
            conn: None,
            names: Names::new(prefix),
        };
        store
            .conn()
            .and_then(|c| redis::cmd("PING").query::<String>(c))
            .map_err(|e| unusable(url, &e))?;
        Ok(store)
    }

    fn conn(&mut self) -> Result<&mut redis::Connection, RedisError> {
        if self.conn.is_none() {
            let conn = self.client.get_connection_with_timeout(TIMEOUT)?;
            conn.set_read_timeout(Some(TIMEOUT))?;
            conn.set_write_timeout(Some(TIMEOUT))?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    /// Runs `pipe`; a failed connection is dropped, to be made again next time.
    fn run<T: FromRedisValue>(&mut self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        let result = self.conn().and_then(|c| pipe.query::<T>(c));
        result.map_err(|e| {
            self.conn = None;
            StoreError::Write(format!("Redis at {}: {e}", masked(&self.url)))
        })
    }
}

impl Store for RedisStore {
    fn usage_by_minute(&mut self, since: Timestamp) -> Result<Vec<MinuteUsage>, StoreError> {
        let first = since.millis().div_euclid(60_000);
        let minutes: Vec<i64> = (first..first + USAGE_TTL.as_secs() as i64 / 60 + 1).collect();
        let mut pipe = redis::pipe();
        for minute in &minutes {
            pipe.hgetall(self.names.usage(*minute));
        }
        let rows: Vec<HashMap<String, u64>> = self.run(&pipe)?;
        let mut usage = Vec::new();
        for (minute, row) in minutes.iter().zip(rows) {
            let mut row: Vec<MinuteUsage> = row
                .into_iter()
                .filter_map(|(field, tokens)| {
                    let (index, fingerprint) = field.split_once(' ')?;
                    Some(MinuteUsage {
                        key: index.parse().ok()?,
                        fingerprint: fingerprint.to_string(),
                        minute: Timestamp(minute * 60_000),
                        input_tokens: tokens,
                    })
                })
                .collect();
            row.sort_by_key(|u| u.key);
            usage.extend(row);
        }
        Ok(usage)
    }

    /// Redis drops the name when the file expires.
    fn file_owner(&mut self, name: &str, _now: Timestamp) -> Result<Option<String>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.get(self.names.file(name));
        let (owner,): (Option<String>,) = self.run(&pipe)?;
        Ok(owner)
    }

    fn recover(&mut self, _now: Timestamp, _window: Duration) -> Result<Recovered, StoreError> {
        let mut pipe = redis::pipe();
        pipe.hgetall(self.names.keys())
            .get(self.names.mode())
            .get(self.names.policy());
        let (keys, mode, policy): (HashMap<String, String>, Option<String>, Option<String>) =
            self.run(&pipe)?;
        Ok(Recovered {
            key_states: parse_key_states(keys),
            mode: parse_mode(mode),
            policy_cache: policy
                .and_then(|text| serde_json::from_str::<StoredPolicy>(&text).ok())
                .map(|p| PolicyCache {
                    fetched: p.fetched,
                    models: p.models,
                    at: Timestamp(p.at_ms),
                }),
            // Windows, day counts and learned limits are read from the lanes.
            ..Recovered::default()
        })
    }

    fn apply(&mut self, batch: &[Record]) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for record in batch {
            match record {
                Record::CallSent {
                    at,
                    key_index,
                    fingerprint,
                    input_tokens,
                    ..
                } => {
                    let usage = self.names.usage(at.millis().div_euclid(60_000));
                    pipe.hincr(&usage, format!("{key_index} {fingerprint}"), *input_tokens)
                        .ignore()
                        .expire(&usage, USAGE_TTL.as_secs() as i64)
                        .ignore();
                }
                Record::KeyState { key_id, state } => {
                    pipe.add_command(self.names.set_key_state(key_id, state))
                        .ignore();
                }
                Record::Mode { mode, configured } => {
                    pipe.add_command(self.names.set_mode(*mode, *configured))
                        .ignore();
                }
                Record::PolicyCache(cache) => {
                    let stored = StoredPolicy {
                        fetched: cache.fetched.clone(),
                        models: cache.models.clone(),
                        at_ms: cache.at.millis(),
                    };
                    pipe.set(self.names.policy(), json(&stored)).ignore();
                }
                Record::FileOwned {
                    name,
                    key_id,
                    expires,
                } => {
                    let file = self.names.file(name);
                    pipe.set(&file, key_id)
                        .ignore()
                        .pexpire_at(&file, expires.millis())
                        .ignore();
                }
                Record::FileDeleted { name } => {
                    pipe.del(self.names.file(name)).ignore();
                }
                // The dashboard counts the tokens booked when the call left;
                // learned limits travel inside their lane; each replica finds
                // a retired model on its own (one 404 each).
                Record::CallSettled { .. } | Record::Learned { .. } | Record::Retired { .. } => {}
            }
        }
        if pipe.is_empty() {
            return Ok(());
        }
        self.run::<()>(&pipe)
    }

    /// The booking in the shared lane already counts the call, from the
    /// moment it was planned; the `CallSent` row only feeds the dashboard.
    fn rebuilds_windows(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::masked;

    #[test]
    fn a_password_never_leaves_in_a_url() {
        assert_eq!(
            masked("redis://flux:s3cret@cache:6379/0"),
            "redis://flux:***@cache:6379/0"
        );
        assert_eq!(
            masked("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert!(!masked("redis://:s3cret@h/0").contains("s3cret"));
        assert!(!masked("not a url s3cret").contains("s3cret"));
    }
}
