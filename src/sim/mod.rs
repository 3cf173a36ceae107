//! A strict, in-repo stand-in for the Gemini API.
//!
//! Every test, benchmark and the `demo` command run against it, because no
//! machine here reaches Google. It serves the `/v1beta` and `/v1` surface of
//! `docs/gemini-wire.md` (generate, stream, count tokens, list models,
//! embeddings) and the OpenAI-compatible layer at `/v1beta/openai/`
//! (`openai`: chat with tools, streams, embeddings), enforces the per-key,
//! per-model RPM, input-token TPM, and Pacific-day RPD and input-token TPD
//! exactly (an embedding item counts as one request), and answers with the real error envelopes and
//! the 2026 message text. It also models what the free tier became in 2026:
//! models with limit 0, retired models (404), keys of other tiers (their own
//! limits), and the 403 a project gets for a file it does not own. Strict on
//! purpose: a lenient simulator would hide the gateway's bugs.
//!
//! Its clock is a [`Clock`], so under `tokio::time::pause()` a test moves it
//! through an hour or a day instantly. `GET /__sim/stats` reports, per lane,
//! what the upstream saw (calls, tokens, 429s, peak window usage), which is how
//! tests prove "never over quota" from the upstream's side.

mod faults;
mod files;
mod openai;
pub mod provider;
pub mod quota;
mod routes;
mod tools;

pub use faults::Faults;
pub use files::FileStats;
pub use provider::{ProviderConfig, ProviderKind, ProviderSim};
pub use quota::LaneStats;

use crate::clock::{Clock, Timestamp};
use crate::policy::{Family, Limits, SEED_CHAIN};
use quota::LaneQuota;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the simulator serves: its keys, its models with their limits, faults.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Keys it accepts, in order (stats name them 1-based).
    pub keys: Vec<String>,
    /// Keys it knows but refuses with 403 PERMISSION_DENIED (a blocked project).
    pub blocked_keys: Vec<String>,
    /// The models it serves and the limits each key has on them.
    pub limits: BTreeMap<String, Limits>,
    /// Keys (1-based) on another tier: their own limits on these models.
    pub key_limits: BTreeMap<usize, BTreeMap<String, Limits>>,
    /// Models it answers with 404 "no longer available to new users".
    pub retired: BTreeSet<String>,
    /// Files that exist from the start (the id after `files/`) and the key
    /// (1-based) whose project owns each; more are made by uploads. Any
    /// other file is answered 403.
    pub files: BTreeMap<String, usize>,
    pub faults: Faults,
    /// Seed for the fault draws, so a failing run can be replayed.
    pub seed: u64,
}

impl SimConfig {
    /// The seed's six models and the embedding model, on the built-in
    /// free-tier limits.
    pub fn new(keys: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let limits = SEED_CHAIN
            .iter()
            .chain([&routes::EMBEDDING_MODEL])
            .map(|m| (m.to_string(), Family::of(m).builtin_limits()))
            .collect();
        SimConfig {
            keys: keys.into_iter().map(Into::into).collect(),
            blocked_keys: Vec::new(),
            limits,
            key_limits: BTreeMap::new(),
            retired: BTreeSet::new(),
            files: BTreeMap::new(),
            faults: Faults::default(),
            seed: 0,
        }
    }

    pub fn with_limits(mut self, limits: BTreeMap<String, Limits>) -> Self {
        self.limits = limits;
        self
    }

    /// A model with no quota at all (every limit 0), as pro became on the
    /// free tier in December 2025.
    pub fn with_zero_quota(mut self, model: &str) -> Self {
        let zero = Limits {
            rpm: 0,
            tpm: 0,
            rpd: 0,
            tpd: 0,
            otpm: 0,
        };
        self.limits.insert(model.to_string(), zero);
        self
    }

    /// A model that answers 404 "no longer available to new users".
    pub fn with_retired(mut self, model: &str) -> Self {
        self.limits
            .entry(model.to_string())
            .or_insert(Family::of(model).builtin_limits());
        self.retired.insert(model.to_string());
        self
    }
}

/// One lane's figures in `GET /__sim/stats`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LaneReport {
    pub key_index: usize,
    pub key: String,
    pub model: String,
    #[serde(flatten)]
    pub stats: LaneStats,
}

/// The whole of `GET /__sim/stats`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SimStats {
    pub lanes: Vec<LaneReport>,
    pub calls: u64,
    pub rejected_429: u64,
    #[serde(default)]
    pub files: FileStats,
}

impl SimStats {
    /// The figures of `lanes` at `now`, their keys named 1-based in
    /// `key_order` (the provider simulators report the same way).
    pub(crate) fn of(
        lanes: &mut BTreeMap<(usize, String), LaneQuota>,
        key_order: &[String],
        now: Timestamp,
    ) -> SimStats {
        let lanes: Vec<LaneReport> = lanes
            .iter_mut()
            .map(|((index, model), lane)| LaneReport {
                key_index: *index,
                key: crate::keys::fingerprint(&key_order[index - 1]),
                model: model.clone(),
                stats: lane.stats(now),
            })
            .collect();
        SimStats {
            calls: lanes.iter().map(|l| l.stats.calls).sum(),
            rejected_429: lanes.iter().map(|l| l.stats.rejected_429).sum(),
            lanes,
            files: FileStats::default(),
        }
    }

    pub fn lane(&self, key_index: usize, model: &str) -> Option<&LaneStats> {
        self.lanes
            .iter()
            .find(|l| l.key_index == key_index && l.model == model)
            .map(|l| &l.stats)
    }
}

enum KeyStatus {
    Active(usize),
    Blocked,
}

/// The simulator's state; the mutex is held only for the arithmetic of one call.
pub(crate) struct SimState {
    keys: HashMap<String, KeyStatus>,
    key_order: Vec<String>,
    limits: BTreeMap<String, Limits>,
    key_limits: BTreeMap<usize, BTreeMap<String, Limits>>,
    retired: BTreeSet<String>,
    /// Files and uploads, each owned by a key's project.
    files: Mutex<files::Registry>,
    clock: Clock,
    inner: Mutex<Inner>,
}

struct Inner {
    lanes: BTreeMap<(usize, String), LaneQuota>,
    /// Keys that have since been deleted: answered as unknown (API_KEY_INVALID).
    revoked: HashSet<String>,
    faults: Faults,
    rng: StdRng,
    responses: u64,
}

impl SimState {
    fn new(config: SimConfig, clock: Clock) -> Self {
        let mut keys: HashMap<String, KeyStatus> = config
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), KeyStatus::Active(i + 1)))
            .collect();
        for k in &config.blocked_keys {
            keys.insert(k.clone(), KeyStatus::Blocked);
        }
        SimState {
            keys,
            key_order: config.keys,
            limits: config.limits,
            key_limits: config.key_limits,
            retired: config.retired,
            files: Mutex::new(files::Registry::preloaded(config.files, clock.now())),
            clock,
            inner: Mutex::new(Inner {
                lanes: BTreeMap::new(),
                revoked: HashSet::new(),
                faults: config.faults,
                rng: StdRng::seed_from_u64(config.seed),
                responses: 0,
            }),
        }
    }

    /// Key `key_index`'s (1-based) limits on `model`, if it serves the model.
    fn limits_of(&self, key_index: usize, model: &str) -> Option<Limits> {
        self.key_limits
            .get(&key_index)
            .and_then(|models| models.get(model))
            .or_else(|| self.limits.get(model))
            .copied()
    }

    /// Counts a call to lane (key, model) refused before any quota.
    fn count_refusal(
        &self,
        key_index: usize,
        model: &str,
        counter: fn(&mut LaneStats) -> &mut u64,
    ) {
        self.lock()
            .lanes
            .entry((key_index, model.to_string()))
            .or_default()
            .count_refusal(counter);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere must not take the simulator down with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn files(&self) -> std::sync::MutexGuard<'_, files::Registry> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stats(&self) -> SimStats {
        let now = self.clock.now();
        let mut stats = SimStats::of(&mut self.lock().lanes, &self.key_order, now);
        stats.files = self.files().stats(now);
        stats
    }
}

/// A running simulator on a local port. Dropping it stops the server.
pub struct SimServer {
    addr: SocketAddr,
    state: Arc<SimState>,
    task: JoinHandle<()>,
}

impl SimServer {
    /// Binds `bind` (port 0 for an ephemeral one) and serves in the background.
    pub async fn start(
        config: SimConfig,
        clock: Clock,
        bind: SocketAddr,
    ) -> std::io::Result<SimServer> {
        config.faults.validate().map_err(std::io::Error::other)?;
        let state = Arc::new(SimState::new(config, clock));
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let app = routes::router(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("simulator stopped: {e}");
            }
        });
        Ok(SimServer { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the value for `GEMINI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the upstream has seen so far (the same as `GET /__sim/stats`).
    pub fn stats(&self) -> SimStats {
        self.state.stats()
    }

    /// The key (1-based) whose project owns file `id` (the part after
    /// `files/`), while it exists.
    pub fn file_owner(&self, id: &str) -> Option<usize> {
        self.state.files().owner(id, self.state.clock.now())
    }

    /// From now on the key is refused as not valid, as when its owner deletes it.
    pub fn revoke_key(&self, key: &str) {
        self.state.lock().revoked.insert(key.to_string());
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().faults = faults;
    }

    /// Serves until the task ends (for the `sim` command).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
