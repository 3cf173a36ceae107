//! Anthropic's Messages API, `POST /v1/messages` (whole or streamed), for
//! providers of kind `anthropic`: the official `anthropic` SDK points its
//! `base_url` here unchanged. The body goes to the provider as it came, on
//! the key and at the instant the scheduler chose; the call reserves its
//! `max_tokens` of the model's output-token quota until the answer's usage
//! settles it. What the gateway itself refuses is written in Anthropic's
//! envelope.

use super::AppState;
use super::dispatch::{self, Failure, ProviderCall, Stream};
use super::error::{ApiError, Refusal, Surface, answer_in};
use super::flux::flux_headers;
use super::providers;
use super::relay::{AnthropicSse, relay};
use crate::upstream::Kind;
use crate::wire::anthropic::{MessagesRequest, error_body, usage};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/messages", post(messages))
}

/// Whether a path is this surface's (its refusals are in Anthropic's envelope).
pub fn is_anthropic(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/")
}

/// An error in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(error_body(status.as_u16(), message))).into_response()
}

/// The Messages surface: Anthropic's envelope, with `Retry-After` where the
/// gateway says when to come back.
pub struct Anthropic;

impl Surface for Anthropic {
    fn answer(failure: Failure) -> Response {
        answer_in(failure, error_response)
    }
}

pub type AnthropicError = Refusal<Anthropic>;

/// The anthropic providers' models, as Anthropic lists them (`provider/model`).
pub fn model_list(state: &AppState) -> Value {
    let data: Vec<Value> = providers::models_of(state, Kind::Anthropic)
        .into_iter()
        .map(|id| json!({"type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"}))
        .collect();
    let first = data.first().map(|m| m["id"].clone());
    let last = data.last().map(|m| m["id"].clone());
    json!({"data": data, "has_more": false, "first_id": first, "last_id": last})
}

async fn messages(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AnthropicError> {
    super::error::json_content_type(&headers)?;
    let body =
        body.map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    let (request, body) = MessagesRequest::read(&body).map_err(ApiError::bad_request)?;
    let (route, model) = providers::resolve(&state, Kind::Anthropic, &request.model)?
        .ok_or_else(|| providers::unknown(&request.model, Kind::Anthropic))?;
    let version = headers
        .get("anthropic-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let call = ProviderCall {
        api: route.api.clone(),
        path: "v1/messages",
        body,
        anthropic_version: version,
        estimate: request.input_tokens,
        most_output: request.max_tokens,
        usage,
        clock: state.scheduler.clock(),
    };
    let job = providers::job(&state, model, call);
    let (mut response, meta) = if request.stream {
        let served = dispatch::provider_stream(&state, job).await?;
        let Stream {
            response: upstream,
            settlement,
        } = served.reply;
        let body = relay(upstream, settlement, AnthropicSse::default());
        let response = ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response();
        (response, served.meta)
    } else {
        let served = dispatch::provider_json(&state, job).await?;
        (Json(served.reply).into_response(), served.meta)
    };
    flux_headers(response.headers_mut(), &meta);
    Ok(response)
}
