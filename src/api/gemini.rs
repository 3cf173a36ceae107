//! Gemini-native routes under `/v1beta` and `/v1`, so the `google-genai`
//! SDKs work by changing one base URL. Generate calls are scheduled exactly
//! like `/generate`; their bodies pass through untouched and so do the
//! answers, plus `x-flux-*` headers. The path's model is honoured; falling
//! down the chain is allowed only with `x-flux-fallback: true` (or
//! `FLUX_NATIVE_FALLBACK=true`). `countTokens` and the model list go to any
//! usable key (a body naming an uploaded file to its key) and spend no
//! generate quota.

use super::AppState;
use super::dispatch::{self, Failure, Job, Stream};
use super::error::{ApiError, GeminiError, JsonObject};
use super::flux::flux_headers;
use super::relay::{GeminiArray, GeminiSse, relay};
use super::{auth, batches, openai};
use crate::scheduler::{KeyChoice, Priority, Target};
use crate::upstream::UpstreamError;
use crate::wire::GenerateRequest;
use crate::wire::tokens::Scan;
use axum::Json;
use axum::Router;
use axum::extract::{Extension, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1beta/models", get(list_models))
        .route("/v1/models", get(list_models_either))
        .route("/v1beta/models/{target}", get(get_model).post(call_model))
        .route("/v1/models/{target}", get(get_model).post(call_model))
}

/// Model names are letters, digits, dots, dashes and underscores; anything
/// else is refused before it can reach an upstream URL.
fn plausible_model(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn no_such_model(name: &str) -> ApiError {
    ApiError::not_found(format!("models/{name} is not found"))
}

/// `x-flux-fallback: true|false`; absent is false; anything else is a 400.
pub fn fallback_header(headers: &HeaderMap) -> Result<bool, ApiError> {
    match headers
        .get("x-flux-fallback")
        .map(|v| v.to_str().unwrap_or("").to_ascii_lowercase())
    {
        None => Ok(false),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" => Ok(false),
        Some(_) => Err(ApiError::bad_request(
            "x-flux-fallback must be true or false",
        )),
    }
}

/// The value of `name` in a query string, decoded.
pub(super) fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query?).ok()?;
    pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// An upstream error's answer: the client's own mistake as Gemini said it,
/// anything else as a 502 that says what happened.
pub(super) fn upstream_failure(state: &AppState, error: UpstreamError) -> Failure {
    match error {
        UpstreamError::Client {
            status,
            message,
            body,
        } => Failure::refused_upstream(state, status, &message, body),
        other => ApiError::new(StatusCode::BAD_GATEWAY, state.scrub(&other.to_string())).into(),
    }
}

pub(super) fn no_usable_key() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no key is usable")
        .retry_after(std::time::Duration::from_secs(60))
}

/// Forwards `GET /v1beta/models…` on a usable key (only paging passes through).
async fn forward_models(
    state: &AppState,
    path: &str,
    query: &Option<String>,
) -> Result<Json<Value>, GeminiError> {
    if let Some(size) = query_value(query.as_deref(), "pageSize")
        && !size.parse::<u32>().is_ok_and(|n| (1..=1000).contains(&n))
    {
        return Err(ApiError::bad_request("pageSize must be a whole number from 1 to 1000").into());
    }
    let key = state.next_usable_key().ok_or_else(no_usable_key)?;
    let paging: Vec<(&str, String)> = ["pageSize", "pageToken"]
        .into_iter()
        .filter_map(|name| Some((name, query_value(query.as_deref(), name)?)))
        .collect();
    let suffix = match serde_urlencoded::to_string(&paging) {
        Ok(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_string(),
    };
    let body = state
        .upstream
        .get_models(&state.keys[key], &suffix)
        .await
        .map_err(|e| upstream_failure(state, e))?;
    Ok(Json(body))
}

async fn list_models(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, GeminiError> {
    forward_models(&state, "", &query).await
}

/// `GET /v1/models` belongs to both worlds ([`openai::asks_openai_style`]):
/// OpenAI's list to an OpenAI client, Gemini's to a Gemini one.
async fn list_models_either(State(state): State<AppState>, req: Request) -> Response {
    if openai::asks_openai_style(&req) || state.gemini_keys == 0 {
        return openai::model_list(&state).await.into_response();
    }
    if req.headers().contains_key("x-api-key") {
        return Json(super::anthropic::model_list(&state)).into_response();
    }
    let query = req.uri().query().map(str::to_string);
    forward_models(&state, "", &query).await.into_response()
}

async fn get_model(
    State(state): State<AppState>,
    Path(target): Path<String>,
) -> Result<Json<Value>, GeminiError> {
    if !plausible_model(&target) {
        return Err(no_such_model(&target).into());
    }
    forward_models(&state, &format!("/{target}"), &None).await
}

/// A body smaller than this is copied out of the connection's read buffer
/// (hyper's first is 8 KiB) before the request waits. A larger one came in
/// several reads and was joined into a buffer of its own, or (hyper doubles
/// a connection's read size only when a read fills it) fills at least about
/// half of the one it came in.
const OWN_BUFFER_BELOW: usize = 8 * 1024;

/// `body`, in a buffer of its own if it is small (see [`OWN_BUFFER_BELOW`]).
/// Takes the body by value, so that the slice of the read buffer goes
/// here, not at the end of the handler.
fn own_buffer(body: axum::body::Bytes) -> axum::body::Bytes {
    if body.len() < OWN_BUFFER_BELOW {
        axum::body::Bytes::copy_from_slice(&body)
    } else {
        body
    }
}

/// `POST …/models/{model}:{action}`.
async fn call_model(
    State(state): State<AppState>,
    Path(target): Path<String>,
    RawQuery(query): RawQuery,
    Extension(caller): Extension<auth::Caller>,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<Response, GeminiError> {
    let Some((model, action)) = target.split_once(':') else {
        return Err(ApiError::not_found(format!(
            "no method in {target:?}: expected {{model}}:generateContent"
        ))
        .into());
    };
    if !plausible_model(model) {
        return Err(no_such_model(model).into());
    }
    let generates = matches!(action, "generateContent" | "streamGenerateContent");
    if generates && super::embed::embeds(model) {
        return Err(
            ApiError::not_found(format!("models/{model} embeds and does not generate")).into(),
        );
    }
    let streamed = match action {
        "generateContent" => false,
        "streamGenerateContent" => true,
        // Passed through as the text that came: no tree of a body that
        // spends no quota (a big one would multiply in memory).
        "countTokens" => return count_tokens(&state, model, body.0).await,
        "embedContent" | "batchEmbedContents" => {
            return super::embed::native(&state, model, action, &body.0).await;
        }
        "batchGenerateContent" => {
            return Ok(batches::create(&state, model, &headers, &caller, &body.0).await?);
        }
        _ => return Err(ApiError::not_found(format!("method {action:?} is not served")).into()),
    };
    let target = if fallback_header(&headers)? || state.native_fallback {
        Target::ChainFrom(model.to_string())
    } else {
        Target::Model(model.to_string())
    };
    // The headers' values and a small body are slices of the connection's
    // read buffer (8 KiB at least): held while the request waits for its
    // slot, they would keep that buffer alive beside the one the connection
    // reads into next. Let go of the headers, and keep a small body in a
    // buffer of its own size.
    drop(headers);
    // Passed through as the bytes that came, read once without a tree.
    let request = GenerateRequest::from_json(own_buffer(body.0))
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let job = Job {
        request,
        target,
        keys: KeyChoice::Any,
        requests: 1,
        max_wait: state.max_wait,
        retry: true,
        priority: Priority::Interactive,
    };
    let (mut response, meta) = if streamed {
        let served = dispatch::stream(&state, job).await?;
        let Stream {
            response: upstream,
            settlement,
        } = served.reply;
        let sse = query_value(query.as_deref(), "alt").as_deref() == Some("sse");
        let (content_type, body) = if sse {
            ("text/event-stream", relay(upstream, settlement, GeminiSse))
        } else {
            (
                "application/json",
                relay(upstream, settlement, GeminiArray::default()),
            )
        };
        let response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
        (response, served.meta)
    } else {
        let served = dispatch::generate(&state, job).await?;
        (Json(served.reply.body).into_response(), served.meta)
    };
    flux_headers(response.headers_mut(), &meta);
    Ok(response)
}

async fn count_tokens(
    state: &AppState,
    model: &str,
    body: axum::body::Bytes,
) -> Result<Response, GeminiError> {
    // A body naming an uploaded file is counted by the file's key: no
    // other key's project may read it. Its files are found without a tree.
    let file_uris = Scan::of_json(&body)
        .map(|scan| scan.file_uris)
        .unwrap_or_default();
    let key = match super::files::pinned_key(state, &file_uris).await? {
        Some(key) => key,
        None => state.next_usable_key().ok_or_else(no_usable_key)?,
    };
    let answer = state
        .upstream
        .count_tokens_raw(&state.keys[key], model, body)
        .await
        .map_err(|e| upstream_failure(state, e))?;
    Ok(Json(answer).into_response())
}
