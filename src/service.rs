//! Starting and stopping the service: from [`Settings`] to a listening router.
//!
//! Start-up opens the state store (refusing a file it cannot trust, or a
//! Redis that does not answer), discovers
//! the model chain (unless `FLUX_MODELS` pins it), validates every key with
//! one free `countTokens` call in parallel, restores what a previous run had
//! spent, prints the key table, spawns the scheduler actor and serves.
//!
//! It binds its address right after opening the store, so a busy port stops
//! it before the slow part (discovery, validation) and before it says
//! anything about where it listens. Stopping drains: no new connections; calls already upstream
//! finish; a request waiting for its slot is served if the slot comes within
//! `FLUX_DRAIN_S`, else answered 503 with `Retry-After` at once; batch items
//! upstream get as long; then the store is flushed, retrying for up to
//! `FLUX_DRAIN_S` while it refuses.

use crate::api::auth::Tokens;
use crate::api::batch_runner::{Batches, Runner};
use crate::api::inflight::Budget;
use crate::api::origin::Policy;
use crate::api::refresh::{self, FetchStatus};
use crate::api::{self, AppState, Drain, Shared};
use crate::clock::{Clock, DayZone};
use crate::config::Settings;
use crate::keys::ApiKey;
use crate::listener;
use crate::policy::{Layers, Quota, UNLIMITED};
use crate::scheduler::alone::Journal;
use crate::scheduler::replicated::{Replicated, SharedLanes};
use crate::scheduler::{KeyIndex, KeyState, Provider, Scheduler, SchedulerHandle};
use crate::store::batches::BatchStore;
use crate::store::redis::masked;
use crate::store::{Ledger, Recovered, RedisStore, SqliteStore, Store, StoreError};
use crate::upstream::{Upstream, UpstreamError};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// A running service. Dropping it without [`RunningService::stop`] aborts it.
pub struct RunningService {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    draining: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
    state: AppState,
    /// `FLUX_DRAIN_S`: also how long the stop keeps retrying the store.
    drain: std::time::Duration,
    /// The task that runs the batches (where they run).
    batch_runner: Option<Runner>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} (FLUX_BIND): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("state store {0}")]
    State(#[from] StoreError),
}

impl RunningService {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn scheduler(&self) -> &SchedulerHandle {
        &self.state.scheduler
    }

    /// Drains (see the module doc), flushes the store, and returns.
    pub async fn stop(mut self) -> std::io::Result<()> {
        let _ = self.draining.send(true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let batches_stopped = self.batch_runner.take().map(Runner::stop);
        // Connections get the drain window to finish; the store's flush runs
        // whatever they do (a client that never reads its answer must not
        // keep the ledger from being written).
        let served = match tokio::time::timeout(self.drain, &mut self.task).await {
            Ok(joined) => joined.unwrap_or(Ok(())),
            Err(_) => {
                tracing::warn!(
                    "connections still open after the drain window; stopping without them"
                );
                Ok(())
            }
        };
        if let Some(stopped) = batches_stopped {
            stopped.await;
        }
        self.state.ledger.flush_within(self.drain).await;
        served
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    pub async fn serve_until(mut self, signal: impl Future<Output = ()>) -> std::io::Result<()> {
        tokio::select! {
            _ = signal => self.stop().await,
            result = &mut self.task => result.unwrap_or(Ok(())),
        }
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

/// Starts the service on `settings.bind`, its time read from `clock`, its
/// state kept in SQLite at `settings.state_path`, or shared with other
/// replicas through Redis when `FLUX_REDIS_URL` is set.
pub async fn start(settings: Settings, clock: Clock) -> Result<RunningService, StartError> {
    match settings.redis.clone() {
        None => {
            let store = SqliteStore::open(&settings.state_path)?;
            let batches = BatchStore::open(&settings.state_path)?;
            let listener = bind(settings.bind).await?;
            launch(settings, clock, store, Some(batches), None, listener).await
        }
        Some(redis) => {
            let store = RedisStore::open(&redis.url, &redis.prefix)?;
            let shared = SharedLanes::connect(&redis.url, &redis.prefix).await?;
            tracing::info!(
                "sharing quota state with other replicas through Redis at {} (prefix {:?})",
                masked(&redis.url),
                redis.prefix
            );
            let shared = Some((shared, masked(&redis.url)));
            let listener = bind(settings.bind).await?;
            launch(settings, clock, store, None, shared, listener).await
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// [`start`] with any [`Store`] (tests use one that fails on purpose).
pub async fn start_with_store(
    settings: Settings,
    clock: Clock,
    store: impl Store,
) -> Result<RunningService, StartError> {
    let listener = bind(settings.bind).await?;
    launch(settings, clock, store, None, None, listener).await
}

/// Starts on `store`, running batches from `batch_store` where there is
/// one; with `shared` (Redis, and its URL masked for display) as a replica.
async fn launch(
    settings: Settings,
    clock: Clock,
    mut store: impl Store,
    batch_store: Option<BatchStore>,
    shared: Option<(SharedLanes, String)>,
    listener: TcpListener,
) -> Result<RunningService, StartError> {
    let metrics = match shared {
        Some(_) => crate::metrics::Metrics::for_replica(),
        None => crate::metrics::Metrics::default(),
    };
    let upstream = Upstream::new(&settings.base_url, settings.upstream_timeout);
    let recovered = store.recover(clock.now(), Quota::longest_sliding() + settings.guard)?;
    // A fetch accepted less than seven days ago, and the models found with
    // it, are trusted; otherwise discover now and fetch once serving.
    let cache = if settings.policy_fetch {
        refresh::fresh(recovered.policy_cache.clone(), clock.now())
    } else {
        None
    };
    let chain = match (&settings.models, &cache) {
        (Some(pinned), _) => pinned.clone(),
        (None, Some(cache)) => cache.models.clone(),
        // Other providers alone: no Gemini key to discover with.
        (None, None) if settings.keys.is_empty() => refresh::seed_chain(),
        (None, None) => refresh::discover_chain(&upstream, &settings.keys)
            .await
            .unwrap_or_else(|| {
                tracing::warn!("model discovery found nothing; using the seed's six models");
                refresh::seed_chain()
            }),
    };
    // Gemini's keys, then each other provider's.
    let keys: Vec<ApiKey> = settings
        .keys
        .iter()
        .chain(settings.providers.iter().flat_map(|p| &p.keys))
        .cloned()
        .collect();
    let key_ids: Vec<String> = keys.iter().map(ApiKey::stable_id).collect();
    let fingerprints = keys.iter().map(ApiKey::fingerprint).collect();
    let layers = Layers {
        fetched: cache
            .as_ref()
            .map(|c| c.fetched.clone())
            .unwrap_or_default(),
        file: settings.policy_file.models.clone(),
        env: settings.limits.clone(),
        keys: Layers::merge_keys(&settings.policy_file.keys, &settings.key_limits),
        providers: settings
            .providers
            .iter()
            .flat_map(|p| {
                p.models
                    .iter()
                    .map(|(model, limits)| (format!("{}/{model}", p.name), *limits))
            })
            .collect(),
    };
    // A fetch could change no number that configuration sets, and needs a Gemini key.
    let fetch_at_start =
        settings.policy_fetch && !settings.keys.is_empty() && !layers.configures_all(&chain);
    if settings.policy_fetch && !fetch_at_start {
        tracing::info!("every limit of every model is configured: no policy fetch at start");
    }
    let mut core = Scheduler::new(
        fingerprints,
        chain.clone(),
        layers,
        settings.mode,
        settings.guard,
    );
    core.set_providers(
        std::iter::once(Provider::gemini())
            .chain(settings.providers.iter().map(|p| Provider {
                name: p.name.clone(),
                zone: p.day,
            }))
            .collect(),
        std::iter::repeat_n(0, settings.keys.len())
            .chain(
                (1..)
                    .zip(&settings.providers)
                    .flat_map(|(i, p)| std::iter::repeat_n(i, p.keys.len())),
            )
            .collect(),
    );
    // Models found retired before stay out, and are not what keys are checked on.
    for (model, at, message) in &recovered.retired {
        core.restore_retired(model, *at, message, clock.now());
    }
    let check_model = core.chain().first().unwrap_or(&chain[0]).clone();
    // Other providers' keys are judged by their first answers.
    let mut validated = validate_keys(&upstream, &settings.keys, &check_model).await;
    validated.resize(keys.len(), KeyState::Healthy);
    restore(&mut core, &recovered, &key_ids, validated, settings.mode);
    core.take_changes();
    core.set_reserve(settings.batches.reserve);
    let key_zones: Vec<DayZone> = KeyIndex::all(keys.len()).map(|k| core.zone(k)).collect();
    log_startup_table(&settings, core.chain(), &keys, &core);
    let policy_status = match &cache {
        Some(c) => FetchStatus::accepted(c.at, true),
        None => FetchStatus {
            enabled: settings.policy_fetch,
            ..FetchStatus::default()
        },
    };

    let ledger = Ledger::start(store, settings.guards.max_unwritten);
    let batches = match batch_store {
        Some(store) => {
            let b = &settings.batches;
            Some(Batches::open(store, clock.now(), b.ttl, b.concurrency).await?)
        }
        None => None,
    };
    let scheduler = match shared {
        Some((shared, url)) => {
            let replicated =
                Replicated::join(core, shared, key_ids.clone(), settings.mode, settings.guard)
                    .await?;
            SchedulerHandle::spawn_replica(replicated, clock, settings.log_decisions, url)
        }
        None => {
            let journal = Journal {
                ledger: ledger.clone(),
                key_ids: key_ids.clone(),
                configured_mode: settings.mode,
            };
            SchedulerHandle::spawn(core, clock, settings.log_decisions, journal)
        }
    };
    let (draining, drain_signal) = watch::channel(false);
    let state = AppState::new(Shared {
        scheduler,
        upstream,
        keys: keys.clone(),
        gemini_keys: settings.keys.len(),
        key_zones,
        providers: api::providers::routes_of(&settings.providers, settings.upstream_timeout),
        key_ids,
        ledger,
        token_count: settings.token_count,
        fallback_count_model: chain[0].clone(),
        count_turn: AtomicUsize::new(0),
        max_wait: settings.max_wait,
        drain: Drain {
            signal: drain_signal,
            window: settings.drain,
        },
        tokens: Tokens {
            api: settings.api_tokens.clone(),
            admin: settings.admin_token.clone(),
        },
        native_fallback: settings.native_fallback,
        pinned_models: settings.models.clone(),
        policy_status: std::sync::Mutex::new(policy_status),
        metrics,
        origins: Policy {
            allowed: settings.guards.cors_origins.clone(),
        },
        inflight: Budget::new(settings.guards.max_inflight_bytes),
        request_timeout: settings.guards.request_timeout,
        files: Default::default(),
        batches,
    });
    if settings.api_tokens.is_empty() {
        tracing::warn!(
            "FLUX_API_TOKENS is not set: anyone who can reach this address can spend the keys' quota"
        );
    }
    let app = api::router(state.clone(), settings.max_body_bytes);
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: settings.bind,
        source,
    })?;
    let cap = listener::connection_cap(settings.guards.max_connections);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(listener::serve(listener, app, cap, async {
        let _ = stopped.await;
    }));
    tracing::info!(
        "gemini-flux listening on http://{addr} (at most {cap} connections; a request header must arrive within {} s)",
        listener::HEADER_TIMEOUT.as_secs()
    );
    if fetch_at_start && cache.is_none() {
        let state = state.clone();
        tokio::spawn(async move {
            let _ = refresh::refresh(&state).await;
        });
    }
    let batch_runner = state.batches.as_ref().map(|b| b.start(state.clone()));
    Ok(RunningService {
        addr,
        stop: Some(stop),
        draining,
        task,
        state,
        drain: settings.drain,
        batch_runner,
    })
}

/// Puts back what a previous run spent and decided. A key an operator
/// disabled stays disabled; otherwise today's validation decides its state.
/// A mode changed at run time stays unless the configured mode has changed.
fn restore(
    core: &mut Scheduler,
    recovered: &Recovered,
    key_ids: &[String],
    validated: Vec<KeyState>,
    configured: crate::policy::Mode,
) {
    let index = |id: &str| key_ids.iter().position(|k| k == id).map(KeyIndex::new);
    for call in &recovered.recent_calls {
        if let Some(k) = index(&call.key_id) {
            let used = crate::policy::Usage {
                requests: call.requests,
                input_tokens: call.input_tokens,
                output_tokens: call.output_tokens,
            };
            core.restore_call(k, &call.model, call.at, used);
        }
    }
    for (id, model, day, used) in &recovered.day_counts {
        if let Some(k) = index(id) {
            core.restore_day(k, model, *day, *used);
        }
    }
    for (id, model, learned, at) in &recovered.learned {
        if let Some(k) = index(id) {
            core.restore_learned(k, model, *learned, *at);
        }
    }
    let disabled: Vec<KeyIndex> = recovered
        .key_states
        .iter()
        .filter(|(_, s)| *s == KeyState::Disabled)
        .filter_map(|(id, _)| index(id))
        .collect();
    for (key, state) in KeyIndex::all(validated.len()).zip(validated) {
        let state = if disabled.contains(&key) {
            KeyState::Disabled
        } else {
            state
        };
        core.set_key_state(key, state);
    }
    if let Some((mode, when_configured)) = recovered.mode
        && when_configured == configured
    {
        core.set_mode(mode);
    }
    let restored: usize = recovered
        .day_counts
        .iter()
        .map(|d| d.3.requests as usize)
        .sum();
    if restored > 0 {
        tracing::info!(
            "restored {} call(s) in the last minute and {restored} today",
            recovered.recent_calls.len()
        );
    }
}

/// One `countTokens` per key, all at once: healthy, invalid or blocked.
async fn validate_keys(upstream: &Upstream, keys: &[ApiKey], model: &str) -> Vec<KeyState> {
    let checks = keys.iter().map(|key| {
        async move {
            match upstream.check_key(key, model).await {
                Ok(()) => KeyState::Healthy,
                Err(UpstreamError::KeyInvalid { message, .. }) => KeyState::Invalid(message),
                Err(UpstreamError::KeyBlocked { message, .. }) => KeyState::Blocked(message),
                Err(e) => {
                    tracing::warn!(key = %key.fingerprint(), "could not validate the key, keeping it in rotation: {e}");
                    KeyState::Healthy
                }
            }
        }
    });
    futures::future::join_all(checks).await
}

/// A limit's source as `/status` spells it (`built-in`, `env`, …).
fn source_name(source: crate::policy::Source) -> String {
    serde_json::to_value(source)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn log_startup_table(settings: &Settings, chain: &[String], keys: &[ApiKey], core: &Scheduler) {
    tracing::info!("mode {}, chain: {}", settings.mode, chain.join(" > "));
    for model in chain {
        let resolved = core.model_limits(model);
        let limits = resolved.limits();
        // Every quota set or known; a per-day token quota nobody set is left out.
        let shown: Vec<String> = Quota::ALL
            .into_iter()
            .filter(|&q| limits.get(q) != UNLIMITED)
            .map(|q| {
                let source = source_name(resolved.sources.get(q));
                format!("{} {} ({source})", limits.get(q), q.field())
            })
            .collect();
        tracing::info!("  {model}: {}", shown.join(", "));
    }
    for (i, key) in KeyIndex::all(keys.len()).zip(keys) {
        let shown = match core.key_state(i).unwrap_or(&KeyState::Healthy) {
            KeyState::Healthy => "healthy".to_string(),
            KeyState::Disabled => "disabled".to_string(),
            KeyState::Invalid(why) => format!("INVALID: {why}"),
            KeyState::Blocked(why) => format!("BLOCKED: {why}"),
        };
        tracing::info!("  key {:>2} {}  {shown}", i.to_string(), key.fingerprint());
    }
}
