//! The simulator's HTTP surface: Gemini's routes under `/v1beta` and `/v1`
//! (the Files API's in `files`), plus `/__sim/stats` and `/__sim/faults`
//! for tests.

use super::{Faults, SimState};
use crate::policy::{Limits, Window};
use crate::wire::{self, envelope, error, format_duration, prompt_tokens};
use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use rand::Rng;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub(super) type Shared = Arc<SimState>;
pub(super) type Params = Query<HashMap<String, String>>;

/// Every model advertises Gemini's real context sizes.
const INPUT_TOKEN_LIMIT: u64 = 1_048_576;
const OUTPUT_TOKEN_LIMIT: u64 = 65_536;
/// A model the real list also holds that cannot generate: discovery must skip it.
const EMBEDDING_MODEL: &str = "gemini-embedding-001";

pub(super) fn router(state: Shared) -> Router {
    Router::new()
        .route("/{version}/models", get(list_models))
        .route(
            "/{version}/models/{target}",
            get(get_model).post(call_model),
        )
        .merge(super::files::routes())
        .route("/__sim/stats", get(stats))
        .route("/__sim/faults", get(get_faults).post(set_faults))
        .fallback(|| async { not_found("no such route").into_response() })
        .with_state(state)
}

/// An error answer in Gemini's envelope.
pub(super) struct Failure {
    code: StatusCode,
    status: &'static str,
    message: String,
    details: Vec<Value>,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = envelope(self.code.as_u16(), self.status, &self.message, self.details);
        (self.code, Json(body)).into_response()
    }
}

pub(super) fn fail(
    code: StatusCode,
    status: &'static str,
    message: &str,
    details: Vec<Value>,
) -> Failure {
    Failure {
        code,
        status,
        message: message.to_string(),
        details,
    }
}

fn not_found(message: &str) -> Failure {
    fail(StatusCode::NOT_FOUND, "NOT_FOUND", message, vec![])
}

pub(super) fn invalid_argument(message: &str) -> Failure {
    fail(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message, vec![])
}

/// Finds the caller's key (header first, then `?key=`) and answers as Google
/// does when it is missing, unknown or blocked.
pub(super) fn authenticate(
    state: &SimState,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<usize, Failure> {
    let key = headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .or(params.get("key").map(String::as_str));
    let Some(key) = key else {
        return Err(fail(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            vec![],
        ));
    };
    let revoked = state.lock().revoked.contains(key);
    match state.keys.get(key).filter(|_| !revoked) {
        Some(super::KeyStatus::Active(index)) => Ok(*index),
        Some(super::KeyStatus::Blocked) => Err(fail(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Generative Language API has not been used in this project before or it is disabled.",
            vec![
                json!({"@type": error::ERROR_INFO_TYPE, "reason": "SERVICE_DISABLED", "domain": "googleapis.com"}),
            ],
        )),
        None => Err(fail(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            vec![json!({
                "@type": error::ERROR_INFO_TYPE,
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"}
            })],
        )),
    }
}

pub(super) fn check_version(version: &str) -> Result<(), Failure> {
    match version {
        "v1" | "v1beta" => Ok(()),
        _ => Err(not_found(&format!("API version {version} is not served"))),
    }
}

fn model_json(name: &str) -> Value {
    let methods = if name == EMBEDDING_MODEL {
        json!(["embedContent", "countTextTokens"])
    } else {
        json!(["generateContent", "countTokens"])
    };
    json!({
        "name": format!("models/{name}"),
        "version": "001",
        "displayName": name,
        "inputTokenLimit": INPUT_TOKEN_LIMIT,
        "outputTokenLimit": OUTPUT_TOKEN_LIMIT,
        "supportedGenerationMethods": methods,
    })
}

fn model_names(state: &SimState) -> Vec<&str> {
    let mut names: Vec<&str> = state.limits.keys().map(String::as_str).collect();
    names.push(EMBEDDING_MODEL);
    names
}

async fn list_models(
    State(state): State<Shared>,
    Path(version): Path<String>,
    headers: HeaderMap,
    Query(params): Params,
) -> Result<Response, Failure> {
    check_version(&version)?;
    authenticate(&state, &headers, &params)?;
    let names = model_names(&state);
    let (page, next) = Paging::of(&params, 50, 1_000)?.page(&names);
    let mut body = json!({ "models": page.iter().map(|n| model_json(n)).collect::<Vec<_>>() });
    if let Some(next) = next {
        body["nextPageToken"] = json!(next);
    }
    Ok(Json(body).into_response())
}

/// Where a list's page starts and how long it is: `pageSize` (`default`
/// when absent or 0, at most `max`) and `pageToken` (the offset it goes on
/// from, as the simulator writes its tokens).
pub(super) struct Paging {
    start: usize,
    size: usize,
}

impl Paging {
    pub(super) fn of(
        params: &HashMap<String, String>,
        default: usize,
        max: usize,
    ) -> Result<Paging, Failure> {
        let size = match params.get("pageSize").map(|s| s.parse::<usize>()) {
            None | Some(Ok(0)) => default,
            Some(Ok(n)) => n.min(max),
            Some(Err(_)) => return Err(invalid_argument("pageSize must be a positive integer")),
        };
        let start = match params.get("pageToken").filter(|t| !t.is_empty()) {
            None => 0,
            Some(t) => t
                .parse::<usize>()
                .map_err(|_| invalid_argument("Invalid page token."))?,
        };
        Ok(Paging { start, size })
    }

    /// This page of `items`, and the token of the next when there is one.
    pub(super) fn page<'a, T>(&self, items: &'a [T]) -> (&'a [T], Option<String>) {
        let start = self.start.min(items.len());
        let end = (start + self.size).min(items.len());
        let next = (end < items.len()).then(|| end.to_string());
        (&items[start..end], next)
    }
}

async fn get_model(
    State(state): State<Shared>,
    Path((version, target)): Path<(String, String)>,
    headers: HeaderMap,
    Query(params): Params,
) -> Result<Response, Failure> {
    check_version(&version)?;
    authenticate(&state, &headers, &params)?;
    if model_names(&state).contains(&target.as_str()) {
        Ok(Json(model_json(&target)).into_response())
    } else {
        Err(not_found(&format!(
            "models/{target} is not found for API version {version}"
        )))
    }
}

/// `POST /{version}/models/{model}:{action}`.
async fn call_model(
    State(state): State<Shared>,
    Path((version, target)): Path<(String, String)>,
    headers: HeaderMap,
    Query(params): Params,
    body: Bytes,
) -> Result<Response, Failure> {
    check_version(&version)?;
    let Some((model, action)) = target.split_once(':') else {
        return Err(not_found(&format!("no action in {target}")));
    };
    let key_index = authenticate(&state, &headers, &params)?;
    let generates = matches!(action, "generateContent" | "streamGenerateContent");
    if !generates && action != "countTokens" {
        return Err(not_found(&format!("method {action} is not supported")));
    }
    if state.retired.contains(model) {
        state.count_refusal(key_index, model, |s| &mut s.retired_404);
        return Err(not_found(&format!(
            "This model models/{model} is no longer available to new users. Please update your code to use a newer model for the latest features and improvements."
        )));
    }
    let Some(limits) = state.limits_of(key_index, model) else {
        return Err(not_found(&format!(
            "models/{model} is not found for API version {version}, or is not supported for {action}. Call ListModels to see the list of available models and their supported methods."
        )));
    };
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return Err(invalid_argument(
                "Invalid JSON payload received. Expected an object.",
            ));
        }
        Err(e) => {
            return Err(invalid_argument(&format!(
                "Invalid JSON payload received. {e}"
            )));
        }
    };
    check_files(&state, key_index, model, &request)?;
    if action == "countTokens" {
        return count_tokens(&request);
    }
    if !matches!(request.get("contents"), Some(Value::Array(c)) if !c.is_empty()) {
        return Err(invalid_argument(
            "* GenerateContentRequest.contents: contents is not specified",
        ));
    }
    let tokens = prompt_tokens(&request);
    let wants_json = request["generationConfig"]["responseMimeType"] == "application/json"
        || request["generation_config"]["response_mime_type"] == "application/json";
    let stream = action == "streamGenerateContent";
    let sse = params.get("alt").map(String::as_str) == Some("sse");
    let call = GenerateCall {
        key_index,
        model,
        limits,
        tokens,
        wants_json,
    };
    generate(&state, call, stream, sse).await
}

/// One generate call, as the quota ledger and the answer need it.
struct GenerateCall<'a> {
    key_index: usize,
    model: &'a str,
    limits: Limits,
    tokens: u64,
    /// The request asked for JSON (`responseMimeType: application/json`).
    wants_json: bool,
}

fn count_tokens(request: &Value) -> Result<Response, Failure> {
    let counted = match (
        request.get("contents"),
        request.get("generateContentRequest"),
    ) {
        (Some(Value::Array(_)), _) => prompt_tokens(request),
        (_, Some(inner @ Value::Object(_))) if inner.get("contents").is_some() => {
            prompt_tokens(inner)
        }
        _ => {
            return Err(invalid_argument(
                "* CountTokensRequest: contents or generateContentRequest is required",
            ));
        }
    };
    Ok(Json(json!({"totalTokens": counted})).into_response())
}

/// What one admitted call turns into.
struct Answer {
    text: String,
    model: String,
    prompt_tokens: u64,
    response_id: u64,
    drop_mid_way: bool,
    latency: Duration,
    chunk_delay: Duration,
}

async fn generate(
    state: &SimState,
    call: GenerateCall<'_>,
    stream: bool,
    sse: bool,
) -> Result<Response, Failure> {
    let GenerateCall {
        key_index,
        model,
        limits,
        tokens,
        wants_json,
    } = call;
    let now = state.clock.now();
    let answer = {
        let mut inner = state.lock();
        let faults = inner.faults.clone();
        if inner.rng.random_bool(faults.unavailable_ratio) {
            drop(inner);
            return Err(fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "The model is overloaded. Please try again later.",
                vec![],
            ));
        }
        let bare_429 = inner.rng.random_bool(faults.bare_429_ratio);
        let drop_mid_way = inner.rng.random_bool(faults.drop_mid_stream_ratio);
        let lane = inner
            .lanes
            .entry((key_index, model.to_string()))
            .or_default();
        if bare_429 {
            lane.count_injected_429();
            drop(inner);
            return Err(fail(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
                vec![],
            ));
        }
        if let Err(rejection) = lane.admit(&limits, tokens, now) {
            drop(inner);
            return Err(quota_exceeded(model, &limits, rejection, &faults));
        }
        inner.responses += 1;
        let text = match (&faults.json_answer, wants_json) {
            (Some(scripted), true) => scripted.clone(),
            _ => format!("ok:{tokens}"),
        };
        Answer {
            text,
            model: model.to_string(),
            prompt_tokens: tokens,
            response_id: inner.responses,
            drop_mid_way,
            latency: Duration::from_millis(faults.latency_ms),
            chunk_delay: Duration::from_millis(faults.stream_chunk_delay_ms),
        }
    };
    tracing::debug!(key = key_index, model, tokens, "sim admitted a call");
    if !answer.latency.is_zero() {
        tokio::time::sleep(answer.latency).await;
    }
    Ok(answer.respond(stream, sse))
}

/// Every uploaded file a request names (`fileData.fileUri`, or snake case)
/// must belong to the caller's project: otherwise the real 403.
fn check_files(
    state: &SimState,
    key_index: usize,
    model: &str,
    request: &Value,
) -> Result<(), Failure> {
    let now = state.clock.now();
    for id in wire::files::file_ids_of(request) {
        if state.files().owner(&id, now) != Some(key_index) {
            state.count_refusal(key_index, model, |s| &mut s.foreign_file_403);
            return Err(super::files::no_permission(&id));
        }
    }
    Ok(())
}

/// The 429 as Gemini writes it since late 2025: every violation in
/// `QuotaFailure` and spelled out in the message, and a `retryDelay` that is
/// "0s" when a per-day quota is among them (the day, not the delay, decides).
fn quota_exceeded(
    model: &str,
    limits: &Limits,
    rejection: super::quota::Rejection,
    faults: &Faults,
) -> Failure {
    let per_day = rejection
        .violations
        .iter()
        .any(|q| q.window() == Window::Day);
    let delay = if per_day {
        Some(Duration::ZERO)
    } else {
        rejection.retry_after
    };
    let mut message = String::from(
        "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor your current usage, head to: https://ai.dev/rate-limit. ",
    );
    let violations: Vec<Value> = rejection
        .violations
        .iter()
        .map(|&q| {
            let value = limits.get(q);
            message.push_str(&format!(
                "\n* Quota exceeded for metric: {}, limit: {value}, model: {model}",
                q.quota_metric()
            ));
            let mut v = json!({
                "quotaMetric": q.quota_metric(),
                "quotaId": q.quota_id(),
                "quotaDimensions": {"location": "global", "model": model},
            });
            if !faults.omit_quota_value {
                v["quotaValue"] = json!(value.to_string());
            }
            v
        })
        .collect();
    let mut details = vec![
        json!({"@type": error::QUOTA_FAILURE_TYPE, "violations": violations}),
        json!({"@type": error::HELP_TYPE, "links": [{"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]}),
    ];
    if let Some(delay) = delay {
        details
            .push(json!({"@type": error::RETRY_INFO_TYPE, "retryDelay": format_duration(delay)}));
        message.push_str(&format!("\nPlease retry in {:.6}s.", delay.as_secs_f64()));
    }
    fail(
        StatusCode::TOO_MANY_REQUESTS,
        "RESOURCE_EXHAUSTED",
        &message,
        details,
    )
}

impl Answer {
    fn usage(&self, candidates: u64) -> Value {
        json!({
            "promptTokenCount": self.prompt_tokens,
            "candidatesTokenCount": candidates,
            "totalTokenCount": self.prompt_tokens + candidates,
        })
    }

    /// One `GenerateContentResponse`; `finish` marks the last chunk.
    fn chunk(&self, text: &str, finish: bool, candidates_so_far: u64) -> Value {
        let mut candidate =
            json!({"content": {"role": "model", "parts": [{"text": text}]}, "index": 0});
        if finish {
            candidate["finishReason"] = json!("STOP");
        }
        json!({
            "candidates": [candidate],
            "usageMetadata": self.usage(candidates_so_far),
            "modelVersion": self.model,
            "responseId": format!("sim-{}", self.response_id),
        })
    }

    fn respond(self, stream: bool, sse: bool) -> Response {
        let text = self.text.clone();
        let candidates = wire::prompt_tokens(&json!({"contents": [{"parts": [{"text": text}]}]}));
        let frames: Vec<Bytes> = if !stream {
            vec![Bytes::from(self.chunk(&text, true, candidates).to_string())]
        } else {
            // "ok", ":", "<n>": several events, the last with the finish reason and full usage.
            let pieces = [
                "ok".to_string(),
                ":".to_string(),
                self.prompt_tokens.to_string(),
            ];
            let last = pieces.len() - 1;
            let chunks = pieces.iter().enumerate().map(|(i, p)| {
                let so_far = if i == last { candidates } else { 0 };
                self.chunk(p, i == last, so_far).to_string()
            });
            if sse {
                chunks
                    .map(|c| Bytes::from(format!("data: {c}\r\n\r\n")))
                    .collect()
            } else {
                let mut frames: Vec<Bytes> = chunks
                    .enumerate()
                    .map(|(i, c)| Bytes::from(format!("{}{c}", if i == 0 { "[" } else { ",\r\n" })))
                    .collect();
                frames.push(Bytes::from_static(b"]"));
                frames
            }
        };
        let content_type = if stream && sse {
            "text/event-stream"
        } else {
            "application/json"
        };
        let frames = self.cut_if_dropping(frames);
        let delay = self.chunk_delay;
        let body = futures::stream::iter(frames.into_iter().enumerate()).then(
            move |(i, frame)| async move {
                if i > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if frame.is_err() {
                    // Let what was written reach the client before the cut, as a
                    // real connection drop mid-answer would.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                frame
            },
        );
        (
            [(header::CONTENT_TYPE, content_type)],
            Body::from_stream(body),
        )
            .into_response()
    }

    /// With the drop fault, the answer stops half-way and the connection is
    /// cut (the body stream ends in an error, so hyper aborts it).
    fn cut_if_dropping(&self, mut frames: Vec<Bytes>) -> Vec<Result<Bytes, std::io::Error>> {
        if !self.drop_mid_way {
            return frames.into_iter().map(Ok).collect();
        }
        if frames.len() == 1 {
            let whole = frames.remove(0);
            frames.push(whole.slice(..whole.len() / 2));
        } else {
            frames.truncate(frames.len() / 2);
        }
        let mut out: Vec<Result<Bytes, std::io::Error>> = frames.into_iter().map(Ok).collect();
        out.push(Err(std::io::Error::other("simulated connection drop")));
        out
    }
}

async fn stats(State(state): State<Shared>) -> Response {
    Json(state.stats()).into_response()
}

async fn get_faults(State(state): State<Shared>) -> Response {
    Json(state.lock().faults.clone()).into_response()
}

async fn set_faults(State(state): State<Shared>, body: Bytes) -> Result<Response, Failure> {
    let faults: Faults =
        serde_json::from_slice(&body).map_err(|e| invalid_argument(&format!("faults: {e}")))?;
    faults.validate().map_err(|e| invalid_argument(&e))?;
    state.lock().faults = faults.clone();
    tracing::info!(?faults, "sim faults changed");
    Ok(Json(faults).into_response())
}
