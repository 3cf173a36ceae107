//! The HTTP surfaces, one file each: `flux` (`/generate`), `gemini`
//! (Gemini-native), `files` (the Files API, each file pinned to its key),
//! `openai` (OpenAI-compatible), `embed` (embeddings, both ways), `admin`
//! (status, mode, keys, health, the seed's routes). Handlers stay thin: they validate,
//! build a [`dispatch::Job`] and turn its outcome into an answer; streams go
//! through `relay`. `auth` guards them all; `origin` keeps other web pages
//! out, `inflight` bounds the body bytes held in memory. `batches` is the
//! Batch API's surface, `batch_queue` and `batch_runner` run its items
//! below interactive traffic.

mod admin;
pub mod auth;
mod batch_queue;
pub mod batch_runner;
mod batches;
mod dashboard;
pub mod dispatch;
mod embed;
pub mod error;
pub mod files;
mod flux;
pub mod gemini;
pub mod inflight;
mod openai;
pub mod origin;
pub mod refresh;
mod relay;

use crate::config::TokenCount;
use crate::keys::{ApiKey, KeyIndex};
use crate::scheduler::SchedulerHandle;
use crate::store::Ledger;
use crate::upstream::Upstream;
use auth::Tokens;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use error::ApiError;
use refresh::FetchStatus;
use serde_json::Value;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;
use tokio::sync::watch;

/// What every handler shares. Quota state is not here: it lives in the
/// scheduler actor, reached through `scheduler`.
pub struct Shared {
    pub scheduler: SchedulerHandle,
    pub upstream: Upstream,
    pub keys: Vec<ApiKey>,
    /// Each key's stable id for the state store, by index.
    pub key_ids: Vec<String>,
    pub ledger: Ledger,
    pub token_count: TokenCount,
    /// The model of free calls when the chain has none left (the chain's
    /// first at start).
    pub fallback_count_model: String,
    /// Spreads pass-through calls (countTokens, model lists) over the keys.
    pub count_turn: AtomicUsize,
    /// `FLUX_MAX_WAIT_S`.
    pub max_wait: Duration,
    pub drain: Drain,
    pub tokens: Tokens,
    /// `FLUX_NATIVE_FALLBACK`.
    pub native_fallback: bool,
    /// `FLUX_MODELS`, when it pins the chain.
    pub pinned_models: Option<Vec<String>>,
    pub policy_status: std::sync::Mutex<FetchStatus>,
    pub metrics: crate::metrics::Metrics,
    /// Whose web pages may call (`FLUX_CORS_ORIGINS`).
    pub origins: origin::Policy,
    /// Request-body bytes held in memory (`FLUX_MAX_INFLIGHT_MB`).
    pub inflight: inflight::Budget,
    /// `FLUX_REQUEST_TIMEOUT_S`.
    pub request_timeout: Duration,
    /// Uploads under way and the owners of files seen (the store keeps them all).
    pub files: files::Files,
    /// The Batch API's batches; `None` where batches do not run (replicas).
    pub batches: Option<batch_runner::Batches>,
}

/// Whether the service is stopping, and how far ahead it still serves.
pub struct Drain {
    pub signal: watch::Receiver<bool>,
    /// `FLUX_DRAIN_S`.
    pub window: Duration,
}

impl Drain {
    pub fn active(&self) -> bool {
        *self.signal.borrow()
    }

    /// Resolves when the service starts stopping.
    pub async fn started(&self) {
        let mut signal = self.signal.clone();
        let _ = signal.wait_for(|d| *d).await;
    }
}

impl Shared {
    /// The model `countTokens` and the key check ask about: the chain's
    /// first now, so a model retired upstream is never asked again.
    pub fn count_model(&self) -> String {
        self.scheduler
            .first_model()
            .unwrap_or_else(|| self.fallback_count_model.clone())
    }

    /// A usable key for a call that spends no generate quota, in turn.
    pub fn next_usable_key(&self) -> Option<KeyIndex> {
        let usable = self.scheduler.usable_keys();
        let healthy: Vec<KeyIndex> = KeyIndex::all(usable.len()).filter(|&k| usable[k]).collect();
        let turn = self
            .count_turn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (!healthy.is_empty()).then(|| healthy[turn % healthy.len()])
    }

    /// Replaces any key's text in `text` by its fingerprint: the last line of
    /// defence for text that came from elsewhere (an upstream message).
    pub fn scrub(&self, text: &str) -> String {
        self.keys.iter().fold(text.to_string(), |t, k| {
            t.replace(k.expose(), &k.fingerprint())
        })
    }

    pub fn scrub_value(&self, value: Value) -> Value {
        let text = value.to_string();
        let clean = self.scrub(&text);
        if clean == text {
            value
        } else {
            serde_json::from_str(&clean).unwrap_or(Value::Null)
        }
    }
}

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The whole service's routes. `max_body_bytes` is `FLUX_MAX_BODY_MB`.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .merge(flux::routes())
        .merge(admin::routes())
        .merge(dashboard::routes())
        .merge(gemini::routes())
        .merge(files::routes())
        .merge(openai::routes())
        .merge(batches::routes())
        .fallback(|| async { ApiError::not_found("no such route; see README.md for the routes") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            inflight::admit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            origin::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_request,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

/// An error in the envelope of the surface `path` belongs to: OpenAI's on
/// the OpenAI routes, Gemini's everywhere else.
pub fn refusal(path: &str, error: ApiError) -> Response {
    if openai::is_openai_path(path) {
        return openai::failure_response(dispatch::Failure::Flux(error));
    }
    error.into_response()
}

/// Counts every answer by route template (never the raw path, which may
/// carry a token in `?key=`) and status.
async fn count_request(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(req).await;
    state.metrics.request(&route, response.status().as_u16());
    response
}

/// A handler panic becomes a 500 in the usual envelope; its message is not
/// echoed, so nothing it held can leak.
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "internal error",
    )
    .into_response()
}
