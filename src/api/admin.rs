//! Operating the service: `/status`, `/mode`, `/keys/{n}/enable|disable`,
//! `/healthz` and `/readyz`, and the seed's `/health` and `/config`, kept so
//! its Python client works unchanged.

use super::AppState;
use super::error::{ApiError, JsonBody, whole_number};
use super::refresh;
use crate::metrics::BatchItems;
use crate::policy::Mode;
use crate::scheduler::{KeyIndex, KeyState, Unavailable};
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/status", get(status))
        .route("/mode", get(get_mode).post(set_mode))
        .route("/keys/{n}/enable", post(enable_key))
        .route("/keys/{n}/disable", post(disable_key))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/policy/refresh", post(refresh_policy))
        .route("/refresh-policy", post(seed_refresh_policy))
        .route("/config", post(config))
}

fn unavailable(e: Unavailable) -> ApiError {
    let message = match e {
        Unavailable::Stopped => "the service is shutting down".to_string(),
        other => other.to_string(),
    };
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).retry_after(Duration::from_secs(1))
}

async fn status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let snapshot = state.scheduler.snapshot().await.map_err(unavailable)?;
    let mut body = serde_json::to_value(&snapshot).expect("a snapshot serialises");
    body["ready"] = json!(ready(&state));
    body["state_store"] = store_health(&state);
    if let Some(shared) = state.scheduler.shared_state() {
        body["shared_state"] = json!(shared);
    }
    body["policy"] = json!({"fetch": fetch_status(&state)});
    if let Some(batches) = &state.batches {
        let now = state.scheduler.clock().now();
        let all = batches.all(now);
        body["batches"] = all.iter().map(super::batches::progress_json).collect();
    }
    Ok(Json(body).into_response())
}

async fn get_mode(State(state): State<AppState>) -> Result<Response, ApiError> {
    let snapshot = state.scheduler.snapshot().await.map_err(unavailable)?;
    Ok(mode_answer(snapshot.mode, &snapshot.chain))
}

fn mode_answer(mode: Mode, chain: &[String]) -> Response {
    let allowed: Vec<&String> = chain.iter().filter(|m| mode.allows(m)).collect();
    Json(json!({"mode": mode, "models": allowed})).into_response()
}

#[derive(Deserialize)]
struct ModeBody {
    mode: String,
}

async fn set_mode(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<ModeBody>,
) -> Result<Response, ApiError> {
    let mode: Mode = body.mode.parse().map_err(ApiError::bad_request)?;
    state.scheduler.set_mode(mode).await.map_err(unavailable)?;
    tracing::info!(%mode, "mode changed");
    let snapshot = state.scheduler.snapshot().await.map_err(unavailable)?;
    Ok(mode_answer(snapshot.mode, &snapshot.chain))
}

async fn enable_key(state: State<AppState>, n: Path<String>) -> Result<Response, ApiError> {
    set_key(state, n, KeyState::Healthy, "enabled").await
}

async fn disable_key(state: State<AppState>, n: Path<String>) -> Result<Response, ApiError> {
    set_key(state, n, KeyState::Disabled, "disabled").await
}

async fn set_key(
    State(state): State<AppState>,
    Path(n): Path<String>,
    new_state: KeyState,
    done: &str,
) -> Result<Response, ApiError> {
    let unknown = || {
        ApiError::not_found(format!(
            "no key {n:?}: keys are numbered 1 to {}",
            state.keys.len()
        ))
    };
    let index: usize = n.parse().map_err(|_| unknown())?;
    // Only the plain spelling: `+1` or `01` naming key 1 would let a typo,
    // or a crafted path, act on a key.
    if n != index.to_string() {
        return Err(ApiError::bad_request(format!(
            "{n:?} is not a key index: write it as a plain number, 1 to {}",
            state.keys.len()
        )));
    }
    let key = KeyIndex::from_one_based(index as u64)
        .filter(|k| k.get() < state.keys.len())
        .ok_or_else(unknown)?;
    state
        .scheduler
        .set_key_state(key, new_state.clone())
        .await
        .map_err(unavailable)?
        .ok_or_else(unknown)?;
    let fingerprint = state.keys[key].fingerprint();
    tracing::info!(key = %key, %fingerprint, "key {done} by an operator");
    let mut body = json!({"index": key, "fingerprint": fingerprint});
    body.as_object_mut().unwrap().extend(
        serde_json::to_value(&new_state)
            .unwrap()
            .as_object()
            .unwrap()
            .clone(),
    );
    Ok(Json(body).into_response())
}

/// Ready while a key is usable, the state store has written every record
/// (a single instance keeps scheduling from memory while it cannot, up to
/// `FLUX_MAX_UNWRITTEN` records, but a restart now would forget those
/// calls) and, for a replica, Redis answers: a load balancer then sends the
/// traffic to an instance that is.
async fn readyz(State(state): State<AppState>) -> Response {
    let usable = state.scheduler.usable_keys().iter().filter(|&&u| u).count();
    let ready = ready(&state);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body =
        json!({"ready": ready, "usable_keys": usable, "state_store": store_health(&state)});
    if let Some(shared) = state.scheduler.shared_state() {
        body["shared_state"] = json!(shared);
    }
    (status, Json(body)).into_response()
}

/// A key is usable, the store is healthy and, for a replica, Redis answers
/// and plans are not held (after Redis lost its data).
fn ready(state: &AppState) -> bool {
    let now = state.scheduler.clock().now();
    state.scheduler.usable_keys().contains(&true)
        && state.ledger.problem().is_none()
        && state
            .scheduler
            .shared_state()
            .is_none_or(|s| s.accepts_plans(now))
}

fn store_health(state: &AppState) -> serde_json::Value {
    let unwritten = state.ledger.unwritten();
    match state.ledger.problem() {
        None => json!({"ok": true, "unwritten": unwritten}),
        Some(error) => json!({"ok": false, "error": error, "unwritten": unwritten}),
    }
}

/// The seed's health answer.
async fn health(State(state): State<AppState>) -> Response {
    let usable = state.scheduler.usable_keys().iter().filter(|&&u| u).count();
    Json(json!({"status": if usable > 0 { "ok" } else { "degraded" }, "keys": state.keys.len(), "usable_keys": usable}))
        .into_response()
}

#[derive(Deserialize)]
struct ConfigBody {
    mode: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    disable_key: Option<u64>,
    #[serde(default, deserialize_with = "whole_number")]
    enable_key: Option<u64>,
}

/// The seed's `POST /config`: everything is checked before anything changes.
async fn config(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<ConfigBody>,
) -> Result<Response, ApiError> {
    let mode = body
        .mode
        .as_deref()
        .map(str::parse::<Mode>)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let index = |n: u64| {
        KeyIndex::from_one_based(n)
            .filter(|k| k.get() < state.keys.len())
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no key {n}: keys are numbered 1 to {}",
                    state.keys.len()
                ))
            })
    };
    let disable = body.disable_key.map(index).transpose()?;
    let enable = body.enable_key.map(index).transpose()?;
    let mut changes = Vec::new();
    if let Some(mode) = mode {
        state.scheduler.set_mode(mode).await.map_err(unavailable)?;
        changes.push(format!("mode set to {mode}"));
    }
    for (key, new_state, done) in [
        (disable, KeyState::Disabled, "disabled"),
        (enable, KeyState::Healthy, "enabled"),
    ] {
        if let Some(key) = key {
            state
                .scheduler
                .set_key_state(key, new_state)
                .await
                .map_err(unavailable)?;
            changes.push(format!(
                "key {key} ({}) {done}",
                state.keys[key].fingerprint()
            ));
        }
    }
    Ok(Json(json!({"changes": changes})).into_response())
}

fn fetch_status(state: &AppState) -> serde_json::Value {
    let status = state
        .policy_status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    serde_json::to_value(status).unwrap_or_default()
}

/// `POST /policy/refresh` (and the seed's `POST /refresh-policy`): rediscover
/// the models and refetch the limits now, ignoring the cache. The answer is
/// the policy in force with the source of every number, or a 502 with the
/// reason, in which case the previous policy stays.
async fn refresh_policy(State(state): State<AppState>) -> Result<Response, ApiError> {
    refresh::refresh(&state).await.map_err(|reason| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("the policy was not refreshed: {reason}"),
        )
    })?;
    policy_answer(&state, None).await
}

/// The seed's `POST /refresh-policy`: 200 with the policy in force whatever
/// the fetch did, and why a rejected fetch was rejected (the seed's Python
/// client raises on any other status).
async fn seed_refresh_policy(State(state): State<AppState>) -> Result<Response, ApiError> {
    let rejected = refresh::refresh(&state).await.err();
    policy_answer(&state, rejected).await
}

async fn policy_answer(state: &AppState, rejected: Option<String>) -> Result<Response, ApiError> {
    let snapshot = state.scheduler.snapshot().await.map_err(unavailable)?;
    let mut body =
        json!({"chain": snapshot.chain, "limits": snapshot.limits, "fetch": fetch_status(state)});
    if let Some(reason) = rejected {
        body["refreshed"] = json!(false);
        body["rejected"] = json!(reason);
    } else {
        body["refreshed"] = json!(true);
    }
    Ok(Json(body).into_response())
}

/// `GET /metrics` in the Prometheus (OpenMetrics) text format.
async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let snapshot = state.scheduler.snapshot().await.map_err(unavailable)?;
    if let Some(batches) = &state.batches {
        let all = batches.all(state.scheduler.clock().now());
        let items: Vec<BatchItems> = all
            .iter()
            .map(|p| BatchItems {
                batch: &p.row.id,
                pending: p.pending,
                running: p.running,
                done: p.done,
                failed: p.failed,
            })
            .collect();
        state.metrics.batches(&items);
    }
    let text = state
        .metrics
        .render(&snapshot, state.scheduler.shared_state().as_ref());
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
