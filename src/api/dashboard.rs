//! `GET /dashboard`: one self-contained page (HTML, CSS and JS embedded in
//! the binary; no CDN, no build step) that polls `/status` every second, and
//! `GET /usage`: the last hour's input tokens per key and minute, from the
//! ledger, for its chart.

use super::AppState;
use super::error::ApiError;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

const PAGE: &str = include_str!("dashboard.html");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/usage", get(usage))
}

async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE)).into_response()
}

async fn usage(State(state): State<AppState>) -> Result<Response, ApiError> {
    let since = state.scheduler.clock().now().plus_millis(-3_600_000);
    let minutes = state.ledger.usage_by_minute(since).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the state store could not be read: {e}"),
        )
    })?;
    Ok(Json(json!({"since": since, "minutes": minutes})).into_response())
}
