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
use super::error::{ApiError, JsonObject};
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

fn no_such_model(name: &str) -> Response {
    ApiError::not_found(format!("models/{name} is not found")).into_response()
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

/// Answers an upstream error: the client's own mistake as Gemini said it,
/// anything else as a 502 that says what happened.
pub(super) fn upstream_failure(state: &AppState, error: UpstreamError) -> Response {
    match error {
        UpstreamError::Client {
            status,
            message,
            body,
        } => Failure::refused_upstream(state, status, &message, body).into_response(),
        other => {
            ApiError::new(StatusCode::BAD_GATEWAY, state.scrub(&other.to_string())).into_response()
        }
    }
}

pub(super) fn no_usable_key() -> Response {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no key is usable")
        .retry_after(std::time::Duration::from_secs(60))
        .into_response()
}

/// Forwards `GET /v1beta/models…` on a usable key (only paging passes through).
async fn forward_models(state: &AppState, path: &str, query: &Option<String>) -> Response {
    if let Some(size) = query_value(query.as_deref(), "pageSize")
        && !size.parse::<u32>().is_ok_and(|n| (1..=1000).contains(&n))
    {
        return ApiError::bad_request("pageSize must be a whole number from 1 to 1000")
            .into_response();
    }
    let Some(key) = state.next_usable_key() else {
        return no_usable_key();
    };
    let paging: Vec<(&str, String)> = ["pageSize", "pageToken"]
        .into_iter()
        .filter_map(|name| Some((name, query_value(query.as_deref(), name)?)))
        .collect();
    let suffix = match serde_urlencoded::to_string(&paging) {
        Ok(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_string(),
    };
    match state.upstream.get_models(&state.keys[key], &suffix).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => upstream_failure(state, e),
    }
}

async fn list_models(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    forward_models(&state, "", &query).await
}

/// `GET /v1/models` belongs to both worlds: a caller that authenticates the
/// OpenAI way (`Authorization: Bearer`) gets OpenAI's list; one that uses a
/// Gemini key (`x-goog-api-key` or `?key=`) gets Gemini's.
async fn list_models_either(State(state): State<AppState>, req: Request) -> Response {
    let openai_style =
        req.headers().contains_key(header::AUTHORIZATION) && auth::goog_key(&req).is_none();
    if openai_style {
        return openai::model_list(&state).await;
    }
    let query = req.uri().query().map(str::to_string);
    forward_models(&state, "", &query).await
}

async fn get_model(State(state): State<AppState>, Path(target): Path<String>) -> Response {
    if !plausible_model(&target) {
        return no_such_model(&target);
    }
    forward_models(&state, &format!("/{target}"), &None).await
}

/// `POST …/models/{model}:{action}`.
async fn call_model(
    State(state): State<AppState>,
    Path(target): Path<String>,
    RawQuery(query): RawQuery,
    Extension(caller): Extension<auth::Caller>,
    headers: HeaderMap,
    body: JsonObject,
) -> Response {
    let Some((model, action)) = target.split_once(':') else {
        return ApiError::not_found(format!(
            "no method in {target:?}: expected {{model}}:generateContent"
        ))
        .into_response();
    };
    if !plausible_model(model) {
        return no_such_model(model);
    }
    let generates = matches!(action, "generateContent" | "streamGenerateContent");
    if generates && super::embed::embeds(model) {
        return ApiError::not_found(format!("models/{model} embeds and does not generate"))
            .into_response();
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
            return batches::create(&state, model, &headers, &caller, &body.0).await;
        }
        _ => {
            return ApiError::not_found(format!("method {action:?} is not served")).into_response();
        }
    };
    let opted_in = match fallback_header(&headers) {
        Ok(opted_in) => opted_in,
        Err(e) => return e.into_response(),
    };
    let target = if opted_in || state.native_fallback {
        Target::ChainFrom(model.to_string())
    } else {
        Target::Model(model.to_string())
    };
    // Passed through as the bytes that came, read once without a tree.
    let request = match GenerateRequest::from_json(body.0) {
        Ok(request) => request,
        Err(e) => return ApiError::bad_request(format!("invalid JSON body: {e}")).into_response(),
    };
    let job = Job {
        request,
        target,
        keys: KeyChoice::Any,
        requests: 1,
        max_wait: state.max_wait,
        retry: true,
        unknown_model: StatusCode::NOT_FOUND,
        priority: Priority::Interactive,
    };
    let (mut response, meta) = if streamed {
        let served = match dispatch::stream(&state, job).await {
            Ok(served) => served,
            Err(failure) => return failure.into_response(),
        };
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
        match dispatch::generate(&state, job).await {
            Ok(served) => (Json(served.reply.body).into_response(), served.meta),
            Err(failure) => return failure.into_response(),
        }
    };
    flux_headers(response.headers_mut(), &meta);
    response
}

async fn count_tokens(state: &AppState, model: &str, body: axum::body::Bytes) -> Response {
    // A body naming an uploaded file is counted by the file's key: no
    // other key's project may read it. Its files are found without a tree.
    let file_uris = Scan::of_json(&body)
        .map(|scan| scan.file_uris)
        .unwrap_or_default();
    let key = match super::files::pinned_key(state, &file_uris).await {
        Ok(Some(key)) => key,
        Ok(None) => match state.next_usable_key() {
            Some(key) => key,
            None => return no_usable_key(),
        },
        Err(e) => return e.into_response(),
    };
    match state
        .upstream
        .count_tokens_raw(&state.keys[key], model, body)
        .await
    {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => upstream_failure(state, e),
    }
}
