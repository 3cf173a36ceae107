//! OpenAI-compatible routes, at `/v1/...` and at `/v1beta/openai/...` (where
//! Gemini itself offers them), so any OpenAI SDK can point here. A chat
//! completion is not translated: the client's body goes, as it came, to the
//! upstream's own OpenAI-compatible layer (`/v1beta/openai/chat/completions`)
//! on the key and model the scheduler chose, and its answer or stream comes
//! back as that layer wrote it. So tools, `tool_choice`, images, `n`, `stop`,
//! `seed`, `response_format`, `reasoning_effort`, `extra_body` and gemini-3
//! thought signatures work exactly as Google serves them. The body's `model`
//! picks the lanes; what the gateway itself refuses is written here, in
//! OpenAI's envelope. Embeddings live in `embed`.

use super::AppState;
use super::dispatch::{self, Failure, Job, Meta, ProviderCall, Served, Stream};
use super::error::{ApiError, Refusal, Surface, answer_in};
use super::flux::flux_headers;
use super::providers;
use super::relay::{OpenAiSse, relay};
use crate::scheduler::{KeyChoice, Priority, Target};
use crate::upstream::Kind;
use crate::wire::openai;
use crate::wire::openai_usage::{answer_usage, output_reservation};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1beta/openai/chat/completions", post(chat))
        .route("/v1/embeddings", post(super::embed::openai))
        .route("/v1beta/openai/embeddings", post(super::embed::openai))
        .route("/v1beta/openai/models", get(models))
}

/// Whether `req` is the OpenAI-compatible surface's: its routes, and `/v1/models`
/// asked OpenAI's way (see [`asks_openai_style`]).
pub fn is_openai(req: &Request) -> bool {
    let path = req.uri().path();
    matches!(path, "/v1/chat/completions" | "/v1/embeddings")
        || path.starts_with("/v1beta/openai/")
        || path == "/v1/models" && asks_openai_style(req)
}

/// `/v1/models` belongs to both worlds: a caller that authenticates the
/// OpenAI way (`Authorization: Bearer`) is an OpenAI client; one that uses a
/// Gemini key (`x-goog-api-key` or `?key=`) a Gemini one.
pub fn asks_openai_style(req: &Request) -> bool {
    req.headers().contains_key(header::AUTHORIZATION) && super::auth::goog_key(req).is_none()
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
fn error_response(status: StatusCode, message: &str) -> Response {
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        404 => ("invalid_request_error", Some("model_not_found")),
        429 => ("rate_limit_error", Some("rate_limit_exceeded")),
        400..=499 => ("invalid_request_error", None),
        _ => ("api_error", None),
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (status, Json(body)).into_response()
}

/// The OpenAI-compatible routes: OpenAI's envelope, the upstream's refusal
/// with its status and message, the gateway's with its `Retry-After`.
pub struct OpenAi;

impl Surface for OpenAi {
    fn answer(failure: Failure) -> Response {
        answer_in(failure, error_response)
    }
}

pub type OpenAiError = Refusal<OpenAi>;

/// The chain, as OpenAI lists models.
pub async fn model_list(state: &AppState) -> Result<Json<Value>, OpenAiError> {
    let snapshot = state.scheduler.snapshot().await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is shutting down",
        )
    })?;
    let gemini = snapshot.chain.iter().map(|m| (m.clone(), "google"));
    let others = state.providers.iter().flat_map(|r| {
        r.models
            .iter()
            .map(move |m| (format!("{}/{m}", r.name), r.name.as_str()))
    });
    let data: Vec<Value> = gemini
        .chain(others)
        .map(|(id, owner)| json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn models(State(state): State<AppState>) -> Result<Json<Value>, OpenAiError> {
    model_list(&state).await
}

/// The body of an OpenAI route as a JSON object, or why not.
pub(super) fn read_object(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Map<String, Value>, ApiError> {
    super::error::json_content_type(headers)?;
    let body =
        body.map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request(
            "invalid request body: a JSON object is expected",
        )),
        Err(e) => Err(ApiError::bad_request(format!("invalid request body: {e}"))),
    }
}

/// The lanes a chat body's `model` allows: the chain when it names none;
/// that model alone, or from it down the chain when the client opted into
/// fallback (`x-flux-fallback: true` or `FLUX_NATIVE_FALLBACK`). An
/// embedding model does not chat.
fn target(
    state: &AppState,
    headers: &HeaderMap,
    body: &Map<String, Value>,
) -> Result<Target, ApiError> {
    let model = match body.get("model") {
        None | Some(Value::Null) => return Ok(Target::Chain(None)),
        Some(Value::String(m)) if !m.is_empty() => m.trim_start_matches("models/").to_string(),
        Some(_) => return Err(ApiError::bad_request("model must be a model's name")),
    };
    if super::embed::embeds(&model) {
        return Err(ApiError::not_found(format!(
            "models/{model} embeds and does not chat; /v1/embeddings serves it"
        )));
    }
    let opted_in = super::gemini::fallback_header(headers)?;
    Ok(if opted_in || state.native_fallback {
        Target::ChainFrom(model)
    } else {
        Target::Model(model)
    })
}

/// What the gateway needs of a chat body to plan it: `messages`, a list of
/// messages that each have a role (it counts their text), and `stream`.
/// Everything else is the upstream's to judge.
fn check_chat(body: &Map<String, Value>) -> Result<bool, String> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or("messages must be a list of at least one message")?;
    if let Some(i) = messages.iter().position(|m| !m["role"].is_string()) {
        return Err(format!("messages[{i}] must be an object with a role"));
    }
    for field in ["max_tokens", "max_completion_tokens"] {
        if body.get(field).is_some_and(|v| v.as_u64() == Some(0)) {
            return Err(format!("{field} must be at least 1"));
        }
    }
    match body.get("stream") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(stream)) => Ok(*stream),
        Some(_) => Err("stream must be true or false".into()),
    }
}

async fn chat(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let mut body = read_object(&headers, body)?;
    let stream = check_chat(&body).map_err(ApiError::bad_request)?;
    let provider = match body.get("model").and_then(Value::as_str) {
        Some(named) => providers::resolve(&state, Kind::OpenAi, named)?,
        None => None,
    };
    if stream {
        // The call is settled from the stream's usage: asked for, whatever
        // the client asked (Google's layer sends it anyway).
        let options = body.entry("stream_options").or_insert_with(|| json!({}));
        if let Value::Object(options) = options {
            options.insert("include_usage".into(), Value::Bool(true));
        }
    }
    let (mut response, meta) = match provider {
        Some((route, model)) => {
            let body = Value::Object(body);
            let call = ProviderCall {
                api: route.api.clone(),
                path: "chat/completions",
                estimate: openai::ChatPrompt::of(&body).tokens(),
                most_output: output_reservation(&body).unwrap_or(providers::DEFAULT_MAX_TOKENS),
                body,
                anthropic_version: None,
                usage: answer_usage,
                clock: state.scheduler.clock(),
            };
            let job = providers::job(&state, model, call);
            if stream {
                streamed(dispatch::provider_stream(&state, job).await?)
            } else {
                whole(dispatch::provider_json(&state, job).await?)
            }
        }
        None => {
            let job = Job {
                target: target(&state, &headers, &body)?,
                request: Value::Object(body),
                keys: KeyChoice::Any,
                max_wait: state.max_wait,
                retry: true,
                requests: 1,
                priority: Priority::Interactive,
            };
            if stream {
                streamed(dispatch::openai_chat_stream(&state, job).await?)
            } else {
                whole(dispatch::openai_chat(&state, job).await?)
            }
        }
    };
    flux_headers(response.headers_mut(), &meta);
    Ok(response)
}

/// A served chat's whole answer, as it came.
fn whole(served: Served<Value>) -> (Response, Meta) {
    (Json(served.reply).into_response(), served.meta)
}

/// A served chat's stream, relayed as it comes in OpenAI's framing.
fn streamed(served: Served<Stream>) -> (Response, Meta) {
    let Stream {
        response: upstream,
        settlement,
    } = served.reply;
    let body = relay(upstream, settlement, OpenAiSse);
    let response = ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response();
    (response, served.meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(v: Value) -> Result<bool, String> {
        check_chat(v.as_object().unwrap())
    }

    #[test]
    fn the_gateway_checks_only_what_it_plans_with() {
        let ok = json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}], "n": 3});
        assert_eq!(check(ok), Ok(false));
        let streamed = json!({"messages": [{"role": "user", "content": "x"}], "stream": true});
        assert_eq!(check(streamed), Ok(true));
        assert!(
            check(json!({"messages": []}))
                .unwrap_err()
                .contains("at least one")
        );
        assert!(
            check(json!({"messages": [{"content": "x"}]}))
                .unwrap_err()
                .contains("messages[0]")
        );
        let zero = json!({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 5, "max_tokens": 0});
        assert!(check(zero).unwrap_err().contains("max_tokens"));
        let stream = json!({"messages": [{"role": "user", "content": "x"}], "stream": "yes"});
        assert!(check(stream).unwrap_err().contains("stream"));
    }
}
