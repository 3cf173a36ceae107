//! The HTTP surfaces, one file each: `flux` (`/generate`), `gemini`
//! (Gemini-native), `files` (the Files API, each file pinned to its key),
//! `openai` (OpenAI-compatible), `embed` (embeddings, both ways), `admin`
//! (status, mode, keys, health, the seed's routes). Handlers stay thin: they validate,
//! build a [`dispatch::Job`] and turn its outcome into an answer; streams go
//! through `relay`. `auth` guards them all; `origin` keeps other web pages
//! out, `inflight` bounds the body bytes held in memory; `gate` is the one
//! layer that runs those steps (and counts answers, and catches panics) in order. `batches` is the
//! Batch API's surface, `batch_queue` and `batch_runner` run its items
//! below interactive traffic.

mod admin;
mod anthropic;
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
mod gate;
pub mod gemini;
pub mod inflight;
mod openai;
pub mod origin;
pub mod providers;
pub mod refresh;
mod relay;

use crate::config::TokenCount;
use crate::keys::{ApiKey, KeyIndex};
use crate::scheduler::SchedulerHandle;
use crate::store::Ledger;
use crate::upstream::Upstream;
use auth::Tokens;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
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
    /// Every key: Gemini's first (`gemini_keys` of them), then each other
    /// provider's, in the providers file's order.
    pub keys: Vec<ApiKey>,
    pub gemini_keys: usize,
    /// The zone each key's per-day quotas count in (its provider's day).
    pub key_zones: Vec<crate::clock::DayZone>,
    /// The other providers, and how to reach each.
    pub providers: Vec<providers::Route>,
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

    /// Which of Gemini's keys are usable now, by index.
    pub fn usable_gemini_keys(&self) -> Vec<bool> {
        let mut usable = self.scheduler.usable_keys();
        usable.truncate(self.gemini_keys);
        usable
    }

    /// A usable Gemini key for a call that spends no generate quota, in turn.
    pub fn next_usable_key(&self) -> Option<KeyIndex> {
        let usable = self.usable_gemini_keys();
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
        .merge(anthropic::routes())
        .merge(batches::routes())
        .fallback(|req: Request| async move {
            refusal(
                &req,
                ApiError::not_found("no such route; see README.md for the routes"),
            )
        })
        .method_not_allowed_fallback(|req: Request| async move {
            refusal(
                &req,
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed on this route",
                ),
            )
        })
        .layer(gate::Gate::new(state.clone()))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// An error of the gateway's own in the envelope of the surface `req`
/// belongs to, told from the request alone, so that the router's fallbacks,
/// the gate's steps and a caught panic answer as its routes do: OpenAI's on
/// the OpenAI-compatible routes, Gemini's everywhere else.
pub fn refusal(req: &Request, error: ApiError) -> Response {
    Envelope::of(req).refuse(error)
}

/// Whose envelope a request's errors go back in (see [`refusal`]); for a
/// step of the gate that must decide before it hands the request on.
#[derive(Clone, Copy)]
pub enum Envelope {
    Gemini,
    OpenAi,
    Anthropic,
}

impl Envelope {
    pub fn of(req: &Request) -> Envelope {
        if openai::is_openai(req) {
            Envelope::OpenAi
        } else if anthropic::is_anthropic(req.uri().path()) {
            Envelope::Anthropic
        } else {
            Envelope::Gemini
        }
    }

    pub fn refuse(self, error: ApiError) -> Response {
        match self {
            Envelope::OpenAi => openai::OpenAiError::from(error).into_response(),
            Envelope::Anthropic => anthropic::AnthropicError::from(error).into_response(),
            Envelope::Gemini => error.into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panic_is_a_500_in_the_envelope_of_the_requests_surface() {
        async fn panics() -> &'static str {
            panic!("a handler's bug")
        }
        // Paths held in names, so that `tests/openapi.rs` does not take
        // these routes for the service's.
        let (openai, gemini) = ("/v1/chat/completions", "/v1beta/models");
        let app = Router::new()
            .route(openai, get(panics))
            .route(gemini, get(panics))
            .layer(tower::layer::layer_fn(gate::CatchPanic));
        let answer = |path: &'static str| {
            let app = app.clone();
            async move {
                let request = Request::get(path).body(Body::empty()).unwrap();
                let response = app.oneshot(request).await.unwrap();
                let status = response.status().as_u16();
                let bytes = axum::body::to_bytes(response.into_body(), 4096)
                    .await
                    .unwrap();
                (status, serde_json::from_slice::<Value>(&bytes).unwrap())
            }
        };
        let (status, body) = answer(openai).await;
        assert_eq!(status, 500);
        assert_eq!(
            body,
            serde_json::json!({"error": {"message": "internal error", "type": "api_error", "param": null, "code": null}})
        );
        let (status, body) = answer(gemini).await;
        assert_eq!(status, 500);
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": 500, "message": "internal error", "status": "INTERNAL"}})
        );
    }
}
