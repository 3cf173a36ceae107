//! The simulator's HTTP surface: Gemini's routes under `/v1beta` and `/v1`
//! (the Files API's in `files`), plus `/__sim/stats` and `/__sim/faults`
//! for tests.

use super::{Faults, SimState};
use crate::policy::{Limits, Metric, Quota, Usage, Window};
use crate::wire::{self, envelope, error, format_duration, prompt_tokens};
use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub(super) type Shared = Arc<SimState>;
pub(super) type Params = Query<HashMap<String, String>>;

/// Every model advertises Gemini's real context sizes.
const INPUT_TOKEN_LIMIT: u64 = 1_048_576;
const OUTPUT_TOKEN_LIMIT: u64 = 65_536;
/// The embedding model the real list holds beside the generation models; it
/// embeds and cannot generate (discovery must skip it).
pub const EMBEDDING_MODEL: &str = "gemini-embedding-001";
/// The most items one `batchEmbedContents` call may hold.
pub(super) const MAX_BATCH_ITEMS: usize = 100;
/// The length of an embedding when the request names none
/// (`gemini-embedding-001`'s default).
pub(super) const EMBEDDING_DIMENSIONS: usize = 3072;

/// Whether `model` embeds (and so cannot generate).
pub(super) fn is_embedding(model: &str) -> bool {
    model.contains("embedding")
}

pub(super) fn router(state: Shared) -> Router {
    Router::new()
        .route("/{version}/models", get(list_models))
        .route(
            "/{version}/models/{target}",
            get(get_model).post(call_model),
        )
        .merge(super::openai::routes())
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

impl Failure {
    fn body(self) -> (StatusCode, Value) {
        let body = envelope(self.code.as_u16(), self.status, &self.message, self.details);
        (self.code, body)
    }

    /// The same error as the OpenAI-compatible layer writes it.
    pub(super) fn openai(self) -> Response {
        let (code, body) = self.body();
        (code, Json(wire::openai::error_body(body))).into_response()
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (code, body) = self.body();
        (code, Json(body)).into_response()
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

pub(super) fn not_found(message: &str) -> Failure {
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
    key_index(state, key)
}

/// The 1-based index of the caller's `key`, or Google's answer when it is
/// missing, unknown or blocked.
pub(super) fn key_index(state: &SimState, key: Option<&str>) -> Result<usize, Failure> {
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
    let methods = if is_embedding(name) {
        json!(["embedContent", "batchEmbedContents", "countTextTokens"])
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
    if !names.contains(&EMBEDDING_MODEL) {
        names.push(EMBEDDING_MODEL);
    }
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
    let embeds = matches!(action, "embedContent" | "batchEmbedContents");
    if !generates && !embeds && action != "countTokens" {
        return Err(not_found(&format!("method {action} is not supported")));
    }
    let limits = served_limits(&state, key_index, model, &version, action)?;
    let request = Value::Object(json_object(&body)?);
    if embeds {
        return embed(&state, key_index, model, limits, action, &request).await;
    }
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
        function_call: super::tools::native_call(&request, model)?,
    };
    generate(&state, call, stream, sse).await
}

/// A request body that must be a JSON object, or Google's 400.
pub(super) fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, Failure> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid_argument(
            "Invalid JSON payload received. Expected an object.",
        )),
        Err(e) => Err(invalid_argument(&format!(
            "Invalid JSON payload received. {e}"
        ))),
    }
}

/// Key `key_index`'s limits on `model` for `action`, or the answer Google
/// gives: 404 for a retired model (counted on the lane), for one it does not
/// serve, and for one that does not do `action` (an embedding model does not
/// generate, a generation model does not embed).
pub(super) fn served_limits(
    state: &SimState,
    key_index: usize,
    model: &str,
    version: &str,
    action: &str,
) -> Result<Limits, Failure> {
    if state.retired.contains(model) {
        state.count_refusal(key_index, model, |s| &mut s.retired_404);
        return Err(not_found(&format!(
            "This model models/{model} is no longer available to new users. Please update your code to use a newer model for the latest features and improvements."
        )));
    }
    let embedding_action = matches!(action, "embedContent" | "batchEmbedContents");
    let does_action = action == "countTokens" || embedding_action == is_embedding(model);
    match state.limits_of(key_index, model) {
        Some(limits) if does_action => Ok(limits),
        _ => Err(not_found(&format!(
            "models/{model} is not found for API version {version}, or is not supported for {action}. Call ListModels to see the list of available models and their supported methods."
        ))),
    }
}

/// One generate call, as the quota ledger and the answer need it.
struct GenerateCall<'a> {
    key_index: usize,
    model: &'a str,
    limits: Limits,
    tokens: u64,
    /// The request asked for JSON (`responseMimeType: application/json`).
    wants_json: bool,
    /// The `functionCall` part the model answers with, if it calls a tool.
    function_call: Option<Value>,
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

/// `:embedContent` (`{"content"}`, answered `{"embedding": {"values"}}`)
/// and `:batchEmbedContents` (`{"requests": [...]}`, answered
/// `{"embeddings": [...]}` in order): each item counts as one request, and
/// its text's tokens, on the lane.
async fn embed(
    state: &SimState,
    key_index: usize,
    model: &str,
    limits: Limits,
    action: &str,
    request: &Value,
) -> Result<Response, Failure> {
    let items: Vec<&Value> = if action == "embedContent" {
        vec![request]
    } else {
        let requests = match request.get("requests") {
            Some(Value::Array(r)) if !r.is_empty() => r,
            _ => {
                return Err(invalid_argument(
                    "* BatchEmbedContentsRequest.requests: requests is not specified",
                ));
            }
        };
        if requests.len() > MAX_BATCH_ITEMS {
            return Err(invalid_argument(&format!(
                "* BatchEmbedContentsRequest.requests: at most {MAX_BATCH_ITEMS} requests can be in one batch"
            )));
        }
        let path_model = format!("models/{model}");
        if let Some(other) = requests
            .iter()
            .map(|r| r["model"].as_str().unwrap_or_default())
            .find(|m| *m != path_model)
        {
            return Err(invalid_argument(&format!(
                "Model in an EmbedContentRequest ({other:?}) must match the batch's model ({path_model})."
            )));
        }
        requests.iter().collect()
    };
    let mut texts = Vec::with_capacity(items.len());
    let mut tokens = 0;
    for item in &items {
        let content = &item["content"];
        let parts = content["parts"].as_array().map_or(&[][..], Vec::as_slice);
        if parts.is_empty() || parts.iter().any(|p| !p["text"].is_string()) {
            return Err(invalid_argument(
                "* EmbedContentRequest.content: contents must hold at least one part, each a text",
            ));
        }
        let dimensions = match item
            .get("outputDimensionality")
            .or_else(|| item.get("output_dimensionality"))
        {
            None => EMBEDDING_DIMENSIONS,
            Some(n) => match n.as_u64() {
                Some(n @ 1..=3072) => n as usize,
                _ => {
                    return Err(invalid_argument(
                        "* EmbedContentRequest.output_dimensionality: must be between 1 and 3072",
                    ));
                }
            },
        };
        let text: String = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        tokens += wire::openai::item_tokens(content);
        texts.push((text, dimensions));
    }
    let call = Usage {
        requests: items.len() as u64,
        input_tokens: tokens,
        output_tokens: 0,
    };
    let admitted = admit(state, key_index, model, &limits, call).await?;
    let mut embeddings = texts
        .iter()
        .map(|(text, dimensions)| json!({"values": embedding_of(text, *dimensions)}));
    let body = if action == "embedContent" {
        json!({"embedding": embeddings.next()})
    } else {
        json!({"embeddings": embeddings.collect::<Vec<_>>()})
    };
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        admitted.body(vec![Bytes::from(body.to_string())]),
    )
        .into_response())
}

/// A unit vector of `dimensions` values drawn from `text` alone: the same
/// text always embeds the same, different texts differently.
pub(super) fn embedding_of(text: &str, dimensions: usize) -> Vec<f32> {
    // FNV-1a: a seed that does not depend on the build.
    let seed = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = StdRng::seed_from_u64(seed);
    let raw: Vec<f32> = (0..dimensions)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let norm = raw
        .iter()
        .map(|v| v * v)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    raw.into_iter().map(|v| v / norm).collect()
}

/// A call the quotas admitted, with the faults drawn for it.
pub(super) struct Admitted {
    pub(super) response_id: u64,
    /// What the model says when asked for JSON ([`Faults::json_answer`]).
    pub(super) json_answer: Option<String>,
    drop_mid_way: bool,
    chunk_delay: Duration,
}

/// Draws the faults for a call on lane (`key_index`, `model`) that spends
/// `call`, and admits it under the lane's quotas, or answers as the upstream
/// would (503, a bare 429, the quota's 429); an admitted call then takes the
/// simulated latency.
pub(super) async fn admit(
    state: &SimState,
    key_index: usize,
    model: &str,
    limits: &Limits,
    call: Usage,
) -> Result<Admitted, Failure> {
    let now = state.clock.now();
    let (admitted, latency) = {
        let mut inner = state.lock();
        let faults = inner.faults.clone();
        if inner.rng.random_bool(faults.unavailable_ratio) {
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
            return Err(fail(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
                vec![],
            ));
        }
        if let Err(rejection) = lane.admit_usage(limits, call, now) {
            return Err(quota_exceeded(model, limits, rejection, &faults));
        }
        inner.responses += 1;
        let admitted = Admitted {
            response_id: inner.responses,
            json_answer: faults.json_answer,
            drop_mid_way,
            chunk_delay: Duration::from_millis(faults.stream_chunk_delay_ms),
        };
        (admitted, Duration::from_millis(faults.latency_ms))
    };
    tracing::debug!(key = key_index, model, ?call, "sim admitted a call");
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    Ok(admitted)
}

impl Admitted {
    /// `frames` as an answer's body: paced by the chunk delay, and with the
    /// drop fault cut half-way (the body ends in an error, so hyper aborts
    /// the connection).
    pub(super) fn body(&self, mut frames: Vec<Bytes>) -> Body {
        let mut cut = None;
        if self.drop_mid_way {
            if frames.len() == 1 {
                let whole = frames.remove(0);
                frames.push(whole.slice(..whole.len() / 2));
            } else {
                frames.truncate(frames.len() / 2);
            }
            cut = Some(Err(std::io::Error::other("simulated connection drop")));
        }
        let frames = frames.into_iter().map(Ok).chain(cut);
        let delay = self.chunk_delay;
        let body = futures::stream::iter(frames.enumerate()).then(move |(i, frame)| async move {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if frame.is_err() {
                // Let what was written reach the client before the cut, as a
                // real connection drop mid-answer would.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            frame
        });
        Body::from_stream(body)
    }
}

/// What one admitted generate call turns into.
struct Answer {
    text: String,
    function_call: Option<Value>,
    model: String,
    prompt_tokens: u64,
    admitted: Admitted,
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
        function_call,
    } = call;
    let admitted = admit(state, key_index, model, &limits, Usage::call(tokens)).await?;
    let text = match (&admitted.json_answer, wants_json) {
        (Some(scripted), true) => scripted.clone(),
        _ => format!("ok:{tokens}"),
    };
    let answer = Answer {
        text,
        function_call,
        model: model.to_string(),
        prompt_tokens: tokens,
        admitted,
    };
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

/// A quota's `quotaMetric` and `quotaId` on `model`: an embedding model's
/// are its own (`embed_content_free_tier_requests`,
/// `EmbedContentRequestsPerMinutePerUserPerProjectPerModel-FreeTier`, as seen
/// in 2026 429 bodies; the token and per-day ids follow the same pattern).
fn quota_names(model: &str, quota: Quota) -> (&'static str, &'static str) {
    if !is_embedding(model) {
        return (quota.quota_metric(), quota.quota_id());
    }
    let metric = match quota.metric() {
        Metric::Requests => "generativelanguage.googleapis.com/embed_content_free_tier_requests",
        Metric::InputTokens => {
            "generativelanguage.googleapis.com/embed_content_free_tier_input_token_count"
        }
        Metric::OutputTokens => {
            "generativelanguage.googleapis.com/embed_content_free_tier_output_token_count"
        }
    };
    let id = match quota {
        Quota::RequestsPerMinute => {
            "EmbedContentRequestsPerMinutePerUserPerProjectPerModel-FreeTier"
        }
        Quota::InputTokensPerMinute => {
            "EmbedContentInputTokensPerMinutePerUserPerProjectPerModel-FreeTier"
        }
        Quota::RequestsPerDay => "EmbedContentRequestsPerDayPerUserPerProjectPerModel-FreeTier",
        Quota::InputTokensPerDay => {
            "EmbedContentInputTokensPerDayPerUserPerProjectPerModel-FreeTier"
        }
        Quota::OutputTokensPerMinute => {
            "EmbedContentOutputTokensPerMinutePerUserPerProjectPerModel-FreeTier"
        }
    };
    (metric, id)
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
            let (metric, id) = quota_names(model, q);
            message.push_str(&format!(
                "\n* Quota exceeded for metric: {metric}, limit: {value}, model: {model}"
            ));
            let mut v = json!({
                "quotaMetric": metric,
                "quotaId": id,
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
        let part = match &self.function_call {
            Some(call) => call.clone(),
            None => json!({ "text": text }),
        };
        let mut candidate = json!({"content": {"role": "model", "parts": [part]}, "index": 0});
        if finish {
            candidate["finishReason"] = json!("STOP");
        }
        json!({
            "candidates": [candidate],
            "usageMetadata": self.usage(candidates_so_far),
            "modelVersion": self.model,
            "responseId": format!("sim-{}", self.admitted.response_id),
        })
    }

    fn respond(self, stream: bool, sse: bool) -> Response {
        let text = self.text.clone();
        let candidates = wire::prompt_tokens(&json!({"contents": [{"parts": [{"text": text}]}]}));
        let frames: Vec<Bytes> = if !stream {
            vec![Bytes::from(self.chunk(&text, true, candidates).to_string())]
        } else {
            // "ok", ":", "<n>": several events, the last with the finish
            // reason and full usage; a function call in one.
            let pieces = if self.function_call.is_some() {
                vec![String::new()]
            } else {
                vec![
                    "ok".to_string(),
                    ":".to_string(),
                    self.prompt_tokens.to_string(),
                ]
            };
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
        (
            [(header::CONTENT_TYPE, content_type)],
            self.admitted.body(frames),
        )
            .into_response()
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
