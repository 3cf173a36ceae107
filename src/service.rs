//! Starting and stopping the service: from [`Settings`] to a listening router.
//!
//! Start-up discovers the model chain (unless `FLUX_MODELS` pins it),
//! validates every key with one free `countTokens` call in parallel, prints
//! the key table, spawns the scheduler actor and serves until told to stop.

use crate::api::{self, AppState, Shared};
use crate::clock::Clock;
use crate::config::Settings;
use crate::keys::ApiKey;
use crate::policy::{SEED_CHAIN, is_chain_candidate, order_chain};
use crate::scheduler::{KeyState, Scheduler, SchedulerHandle};
use crate::upstream::{Upstream, UpstreamError};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running service. Dropping it without [`RunningService::stop`] aborts it.
pub struct RunningService {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    state: AppState,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
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

    /// Stops accepting, lets requests in progress finish, and returns.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap_or(Ok(()))
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

/// Starts the service on `settings.bind`, its time read from `clock`.
pub async fn start(settings: Settings, clock: Clock) -> Result<RunningService, StartError> {
    let upstream = Upstream::new(&settings.base_url, settings.upstream_timeout);
    let chain = match &settings.models {
        Some(pinned) => pinned.clone(),
        None => discover_chain(&upstream, &settings.keys).await,
    };
    let states = validate_keys(&upstream, &settings.keys, &chain[0]).await;
    let fingerprints = settings.keys.iter().map(ApiKey::fingerprint).collect();
    let mut core = Scheduler::new(
        fingerprints,
        chain.clone(),
        settings.limits.clone(),
        settings.mode,
        settings.guard,
    );
    for (key, state) in states.iter().enumerate() {
        core.set_key_state(key, state.clone());
    }
    log_startup_table(&settings, &chain, &states, &core);
    let scheduler = SchedulerHandle::spawn(core, clock, settings.log_decisions);

    let state = AppState::new(Shared {
        scheduler,
        upstream,
        keys: settings.keys.clone(),
        token_count: settings.token_count,
        count_model: chain[0].clone(),
        count_turn: AtomicUsize::new(0),
        max_wait: settings.max_wait,
    });
    let app = api::router(state.clone(), settings.max_body_bytes);
    let listener = TcpListener::bind(settings.bind)
        .await
        .map_err(|source| StartError::Bind {
            addr: settings.bind,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: settings.bind,
        source,
    })?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!("gemini-flux listening on http://{addr}");
    Ok(RunningService {
        addr,
        stop: Some(stop),
        task,
        state,
    })
}

/// The chain from `GET /models` on the first key that answers, ordered as the
/// seed orders it; the seed's six when no key can list.
async fn discover_chain(upstream: &Upstream, keys: &[ApiKey]) -> Vec<String> {
    for key in keys.iter().take(3) {
        match upstream.list_generation_models(key).await {
            Ok(models) => {
                let models: Vec<String> = models
                    .into_iter()
                    .filter(|m| is_chain_candidate(m))
                    .collect();
                if !models.is_empty() {
                    return order_chain(models);
                }
            }
            Err(e) => tracing::warn!(key = %key.fingerprint(), "model discovery failed: {e}"),
        }
    }
    tracing::warn!("model discovery found nothing; using the seed's six models");
    SEED_CHAIN.iter().map(|s| s.to_string()).collect()
}

/// One `countTokens` per key, all at once: healthy, invalid or blocked.
async fn validate_keys(upstream: &Upstream, keys: &[ApiKey], model: &str) -> Vec<KeyState> {
    let probe = serde_json::json!({"contents": [{"role": "user", "parts": [{"text": "ping"}]}]});
    let checks = keys.iter().map(|key| {
        let probe = &probe;
        async move {
            match upstream.count_tokens(key, model, probe).await {
                Ok(_) => KeyState::Healthy,
                Err(UpstreamError::KeyInvalid { message }) => KeyState::Invalid(message),
                Err(UpstreamError::KeyBlocked { message }) => KeyState::Blocked(message),
                Err(e) => {
                    tracing::warn!(key = %key.fingerprint(), "could not validate the key, keeping it in rotation: {e}");
                    KeyState::Healthy
                }
            }
        }
    });
    futures::future::join_all(checks).await
}

fn log_startup_table(settings: &Settings, chain: &[String], states: &[KeyState], core: &Scheduler) {
    tracing::info!("mode {}, chain: {}", settings.mode, chain.join(" > "));
    for model in chain {
        let l = core.model_limits(model);
        tracing::info!(
            "  {model}: {} rpm, {} tpm, {} rpd ({:?})",
            l.limits.rpm,
            l.limits.tpm,
            l.limits.rpd,
            l.source
        );
    }
    for (i, (key, state)) in settings.keys.iter().zip(states).enumerate() {
        let shown = match state {
            KeyState::Healthy => "healthy".to_string(),
            KeyState::Disabled => "disabled".to_string(),
            KeyState::Invalid(why) => format!("INVALID: {why}"),
            KeyState::Blocked(why) => format!("BLOCKED: {why}"),
        };
        tracing::info!("  key {:>2} {}  {shown}", i + 1, key.fingerprint());
    }
}
