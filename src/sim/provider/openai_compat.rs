//! The OpenAI-compatible provider, modelled on Groq (and OpenAI's own wire):
//! `POST /v1/chat/completions` (whole, or streamed as `data:` lines ending
//! `data: [DONE]`, usage in a last chunk of no choices when
//! `stream_options.include_usage` asks), `POST /v1/embeddings`,
//! `GET /v1/models`, with the key as `Authorization: Bearer`.
//!
//! Every answer on a lane carries Groq's headers: `x-ratelimit-*-requests`
//! for the requests per day (per minute where no day quota is set) and
//! `x-ratelimit-*-tokens` for the input tokens per minute (per day where no
//! minute quota is set), resets as Go durations (`2m59.56s`). A refusal is
//! Groq's 429 (or 413 when the call can never fit), naming the quota that
//! binds, with `retry-after` in whole seconds, rounded up.

use super::Failure;
use super::{
    DEFAULT_MAX_TOKENS, Lane, ProviderState, Refusal, Said, Settle, is_set, paced, tool_arguments,
    whole_seconds,
};
use crate::policy::{Quota, Usage};
use crate::sim::routes::{embedding_of, is_embedding};
use crate::wire::format_duration;
use crate::wire::openai::{ChatPrompt, embedding_inputs, item_tokens};
use crate::wire::openai_usage::output_reservation;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

type Shared = Arc<ProviderState>;

/// The organization every key belongs to, as the 429 message names it.
const ORGANIZATION: &str = "org_sim";
/// The most texts one embeddings request may hold (OpenAI's).
const MAX_EMBEDDING_INPUTS: usize = 2_048;
/// A vector's length when the request names none (`text-embedding-3-small`'s).
const EMBEDDING_DIMENSIONS: usize = 1_536;

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .fallback(|request: axum::extract::Request| async move {
            let message = format!(
                "Unknown request URL: {} {}. Please check the URL for typos, or see the docs at https://console.groq.com/docs/",
                request.method(),
                request.uri().path()
            );
            error(StatusCode::NOT_FOUND, &message, None).code("unknown_url")
        })
}

/// OpenAI's envelope of type `invalid_request_error`, naming the request's
/// field at fault when there is one.
fn error(status: StatusCode, message: &str, param: Option<&str>) -> Failure {
    let mut body = json!({"error": {"message": message, "type": "invalid_request_error"}});
    if let Some(param) = param {
        body["error"]["param"] = json!(param);
    }
    Failure {
        status,
        body,
        retry_after: None,
    }
}

fn invalid(param: &str, message: &str) -> Failure {
    error(StatusCode::BAD_REQUEST, message, Some(param))
}

impl Failure {
    fn code(mut self, code: &str) -> Self {
        self.body["error"]["code"] = json!(code);
        self
    }
}

/// How a quota is named in Groq's 429 message, and its error `type`.
fn quota_name(quota: Quota) -> (&'static str, &'static str) {
    match quota {
        Quota::RequestsPerMinute => ("requests per minute (RPM)", "requests"),
        Quota::RequestsPerDay => ("requests per day (RPD)", "requests"),
        Quota::InputTokensPerMinute => ("tokens per minute (TPM)", "tokens"),
        Quota::InputTokensPerDay => ("tokens per day (TPD)", "tokens"),
        Quota::OutputTokensPerMinute => ("output tokens per minute (OTPM)", "tokens"),
    }
}

/// Groq's answer to a call the quotas refuse: 429 with the true wait, or
/// 413 when the call alone is more than the quota allows.
fn refused(model: &str, refusal: Refusal) -> Failure {
    let Refusal {
        quota,
        limit,
        used,
        requested,
        retry_after,
    } = refusal;
    let (name, kind) = quota_name(quota);
    let upsell =
        "Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing";
    let on = format!(
        "for model `{model}` in organization `{ORGANIZATION}` service tier `on_demand` on {name}"
    );
    let (status, message) = match retry_after {
        Some(wait) => (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Rate limit reached {on}: Limit {limit}, Used {used}, Requested {requested}. Please try again in {}. {upsell}",
                go_duration(wait)
            ),
        ),
        None => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request too large {on}: Limit {limit}, Requested {requested}, please reduce your message size and try again. {upsell}"
            ),
        ),
    };
    Failure {
        status,
        body: json!({"error": {"message": message, "type": kind, "code": "rate_limit_exceeded"}}),
        retry_after: retry_after.map(whole_seconds),
    }
}

/// `d` as Go's `time.Duration` prints it, to the millisecond: `0s`,
/// `450ms`, `7.66s`, `2m59.56s`, `1h0m5s`.
pub(super) fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if (1..1_000).contains(&ms) {
        return format!("{ms}ms");
    }
    let (hours, minutes) = (ms / 3_600_000, ms / 60_000 % 60);
    let seconds = format_duration(Duration::from_millis((ms % 60_000) as u64));
    match (hours, minutes) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

/// Adds the lane's `x-ratelimit-*` headers to `response`.
fn with_rate_headers(state: &ProviderState, lane: &Lane, mut response: Response) -> Response {
    let pick = |quotas: [Quota; 2]| quotas.into_iter().find(|&q| is_set(lane.limits.get(q)));
    let trios = [
        (
            "requests",
            pick([Quota::RequestsPerDay, Quota::RequestsPerMinute]),
        ),
        (
            "tokens",
            pick([Quota::InputTokensPerMinute, Quota::InputTokensPerDay]),
        ),
    ];
    let headers = response.headers_mut();
    for (name, quota) in trios {
        let Some(quota) = quota else { continue };
        let standing = state.standing(lane, quota);
        let values = [
            ("limit", standing.limit.to_string()),
            ("remaining", (standing.limit - standing.used).to_string()),
            ("reset", go_duration(standing.reset)),
        ];
        for (what, value) in values {
            if let (Ok(header), Ok(value)) = (
                axum::http::HeaderName::try_from(format!("x-ratelimit-{what}-{name}")),
                HeaderValue::try_from(value),
            ) {
                headers.insert(header, value);
            }
        }
    }
    response
}

/// What endpoint a call is for: which models it may name.
#[derive(Clone, Copy, PartialEq)]
enum Endpoint {
    Chat,
    Embeddings,
}

/// The caller's lane and body, or the answer for a missing or unknown key,
/// a body that is not a JSON object, or a model not served (here).
fn open(
    state: &ProviderState,
    headers: &HeaderMap,
    body: &[u8],
    endpoint: Endpoint,
) -> Result<(Lane, Map<String, Value>), Failure> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(key_index) = state.key_index(key) else {
        return Err(
            error(StatusCode::UNAUTHORIZED, "Invalid API Key", None).code("invalid_api_key")
        );
    };
    let body = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(invalid("body", "the request body must be a JSON object")),
        Err(e) => {
            return Err(invalid(
                "body",
                &format!("We could not parse the JSON body of your request. ({e})"),
            ));
        }
    };
    let model = match body.get("model").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => m,
        _ => return Err(invalid("model", "you must provide a model parameter")),
    };
    let lane = state.lane(key_index, model).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist or you do not have access to it."),
            Some("model"),
        )
        .code("model_not_found")
    })?;
    let wrong = match endpoint {
        Endpoint::Chat if is_embedding(model) => Some(
            "This is not a chat model and thus not supported in the v1/chat/completions endpoint.",
        ),
        Endpoint::Embeddings if !is_embedding(model) => {
            Some("This model does not support embeddings.")
        }
        _ => None,
    };
    match wrong {
        Some(message) => Err(error(StatusCode::NOT_FOUND, message, Some("model"))),
        None => Ok((lane, body)),
    }
}

/// Opens a call, answers it on its lane with `on_lane`, and puts the
/// lane's headers and the request id on whatever comes back.
async fn answer<F, Fut>(
    state: Shared,
    headers: &HeaderMap,
    body: &[u8],
    endpoint: Endpoint,
    on_lane: F,
) -> Response
where
    F: FnOnce(Shared, Lane, Map<String, Value>, u64) -> Fut,
    Fut: Future<Output = Result<Response, Failure>>,
{
    let id = state.next_id();
    let mut response = match open(&state, headers, body, endpoint) {
        Err(failure) => failure.into_response(),
        Ok((lane, body)) => {
            let answered = on_lane(state.clone(), lane.clone(), body, id).await;
            with_rate_headers(
                &state,
                &lane,
                answered.unwrap_or_else(Failure::into_response),
            )
        }
    };
    if let Ok(value) = HeaderValue::try_from(format!("req_sim_{id:020}")) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn chat(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    answer(state, &headers, &body, Endpoint::Chat, chat_on_lane).await
}

async fn embeddings(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    answer(state, &headers, &body, Endpoint::Embeddings, embed_on_lane).await
}

async fn models(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if state.key_index(key).is_none() {
        return error(StatusCode::UNAUTHORIZED, "Invalid API Key", None)
            .code("invalid_api_key")
            .into_response();
    }
    let data: Vec<Value> = state
        .models()
        .map(|id| json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "sim", "active": true}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// What a valid chat request asks of its answer.
struct Chat {
    stream: bool,
    include_usage: bool,
    /// Output tokens reserved: the request's maximum, or [`DEFAULT_MAX_TOKENS`].
    max_tokens: u64,
    /// The tool the answer calls: its name and parameters' schema.
    call: Option<(String, Value)>,
}

fn read_chat(body: &Map<String, Value>) -> Result<Chat, Failure> {
    let messages = match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(invalid(
                "messages",
                "'messages' : minimum number of items is 1",
            ));
        }
        _ => {
            return Err(invalid(
                "messages",
                "'messages' : property 'messages' is missing or not a list",
            ));
        }
    };
    for (i, message) in messages.iter().enumerate() {
        check_message(message, i)?;
    }
    let set = |field: &str| body.get(field).filter(|v| !v.is_null());
    if set("n").is_some_and(|n| n.as_u64() != Some(1)) {
        return Err(invalid("n", "'n' : number must be at most 1"));
    }
    for field in ["max_tokens", "max_completion_tokens"] {
        if set(field).is_some_and(|v| v.as_u64().is_none_or(|n| n < 1)) {
            return Err(invalid(
                field,
                &format!("'{field}' : must be a whole number of at least 1"),
            ));
        }
    }
    let stream = match set("stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream", "'stream' : value must be a boolean")),
    };
    let include_usage = match set("stream_options") {
        None => false,
        Some(Value::Object(o)) => o.get("include_usage") == Some(&Value::Bool(true)),
        Some(_) => {
            return Err(invalid(
                "stream_options",
                "'stream_options' : value must be an object",
            ));
        }
    };
    let tools = check_tools(set("tools"))?;
    let user_last = messages.last().is_some_and(|m| m["role"] == "user");
    let call = match set("tool_choice") {
        None => tools.first().cloned(),
        Some(choice) if choice == "auto" || choice == "required" => tools.first().cloned(),
        Some(choice) if choice == "none" => None,
        Some(choice) => {
            let name = choice["function"]["name"].as_str();
            match tools.iter().find(|(n, _)| Some(n.as_str()) == name) {
                Some(tool) if choice["type"] == "function" => Some(tool.clone()),
                _ => {
                    return Err(invalid(
                        "tool_choice",
                        "'tool_choice' : none, auto, required, or a function among the tools",
                    ));
                }
            }
        }
    };
    Ok(Chat {
        stream,
        include_usage,
        max_tokens: output_reservation(&Value::Object(body.clone())).unwrap_or(DEFAULT_MAX_TOKENS),
        call: call.filter(|_| user_last),
    })
}

fn check_message(message: &Value, i: usize) -> Result<(), Failure> {
    let at = format!("messages.{i}");
    let content = &message["content"];
    let text_or_parts = match content {
        Value::String(_) => true,
        Value::Array(parts) => parts.iter().all(|p| match p["type"].as_str() {
            Some("text") => p["text"].is_string(),
            Some("image_url") => p["image_url"]["url"].is_string(),
            _ => false,
        }),
        _ => false,
    };
    let calls = message.get("tool_calls").filter(|c| !c.is_null());
    let valid = match message["role"].as_str() {
        Some("system" | "developer" | "user") => text_or_parts,
        Some("assistant") => text_or_parts || (content.is_null() && calls.is_some()),
        Some("tool") => text_or_parts && message["tool_call_id"].is_string(),
        _ => {
            return Err(invalid(
                &format!("{at}.role"),
                &format!(
                    "'{at}.role' : value must be one of system, developer, user, assistant, tool"
                ),
            ));
        }
    };
    if !valid {
        return Err(invalid(
            &format!("{at}.content"),
            &format!(
                "'{at}' : a message's content is a string or a list of text and image_url parts (a tool message names its tool_call_id)"
            ),
        ));
    }
    Ok(())
}

/// The declared functions: each one's name and parameters' schema.
fn check_tools(tools: Option<&Value>) -> Result<Vec<(String, Value)>, Failure> {
    let Some(tools) = tools else {
        return Ok(vec![]);
    };
    let Some(tools) = tools.as_array() else {
        return Err(invalid("tools", "'tools' : value must be a list"));
    };
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let function = &tool["function"];
            match function["name"].as_str() {
                Some(name) if tool["type"] == "function" && !name.is_empty() => Ok((
                    name.to_string(),
                    function.get("parameters").cloned().unwrap_or(Value::Null),
                )),
                _ => Err(invalid(
                    &format!("tools.{i}"),
                    &format!("'tools.{i}' : a tool is {{\"type\": \"function\", \"function\": {{\"name\", \"parameters\"}}}}"),
                )),
            }
        })
        .collect()
}

async fn chat_on_lane(
    state: Shared,
    lane: Lane,
    body: Map<String, Value>,
    id: u64,
) -> Result<Response, Failure> {
    let chat = read_chat(&body)?;
    let input = ChatPrompt::of(&Value::Object(body)).tokens();
    let reserve = Usage {
        requests: 1,
        input_tokens: input,
        output_tokens: chat.max_tokens,
    };
    let ticket = state
        .admit(&lane, reserve)
        .map_err(|r| refused(&lane.model, r))?;
    state.think().await;
    let reply = Reply::new(&chat, input, id, state.now_secs(), &lane.model);
    let settle = Settle::new(state.clone(), lane, ticket, reply.output);
    if !chat.stream {
        drop(settle);
        return Ok(axum::Json(reply.whole()).into_response());
    }
    let frames = reply.chunks(chat.include_usage);
    Ok((
        [(header::CONTENT_TYPE, "text/event-stream")],
        paced(&state, frames, settle),
    )
        .into_response())
}

/// One admitted chat's answer: text, or a call of a tool.
struct Reply {
    envelope: Value,
    said: Option<Said>,
    /// The tool call, as a whole message writes it.
    tool_call: Option<Value>,
    input: u64,
    output: u64,
}

impl Reply {
    fn new(chat: &Chat, input: u64, id: u64, created: i64, model: &str) -> Reply {
        let envelope = json!({
            "id": format!("chatcmpl-sim-{id}"),
            "created": created,
            "model": model,
            "system_fingerprint": "fp_sim",
        });
        match &chat.call {
            Some((name, schema)) => {
                let (arguments, output) = tool_arguments(schema, chat.max_tokens);
                Reply {
                    envelope,
                    said: None,
                    tool_call: Some(json!({
                        "id": format!("call_sim_{id}"),
                        "type": "function",
                        "function": {"name": name, "arguments": arguments.to_string()},
                    })),
                    input,
                    output,
                }
            }
            None => {
                let said = Said::ok(input, chat.max_tokens);
                Reply {
                    envelope,
                    output: said.tokens,
                    said: Some(said),
                    tool_call: None,
                    input,
                }
            }
        }
    }

    fn finish_reason(&self) -> &'static str {
        match (&self.said, &self.tool_call) {
            (_, Some(_)) => "tool_calls",
            (Some(said), _) if said.cut => "length",
            _ => "stop",
        }
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.input,
            "completion_tokens": self.output,
            "total_tokens": self.input + self.output,
        })
    }

    fn with(&self, object: &str, choices: Value) -> Value {
        let mut body = self.envelope.clone();
        body["object"] = json!(object);
        body["choices"] = choices;
        body
    }

    fn whole(&self) -> Value {
        let message = match (&self.said, &self.tool_call) {
            (_, Some(call)) => json!({"role": "assistant", "content": null, "tool_calls": [call]}),
            (Some(said), None) => json!({"role": "assistant", "content": said.text}),
            (None, None) => json!({"role": "assistant", "content": ""}),
        };
        let mut body = self.with(
            "chat.completion",
            json!([{"index": 0, "message": message, "logprobs": null, "finish_reason": self.finish_reason()}]),
        );
        body["usage"] = self.usage();
        body
    }

    /// The stream's `data:` frames: the role, the text in pieces (or the
    /// tool call in one delta), the finish reason, the usage when asked
    /// (each chunk before it then says `"usage": null`), and `[DONE]`.
    fn chunks(&self, include_usage: bool) -> Vec<Bytes> {
        let mut deltas = vec![json!({"role": "assistant", "content": ""})];
        match (&self.said, &self.tool_call) {
            (_, Some(call)) => {
                let mut call = call.clone();
                call["index"] = json!(0);
                deltas.push(json!({"tool_calls": [call]}));
            }
            (Some(said), None) => {
                deltas.extend(said.pieces().into_iter().map(|p| json!({"content": p})));
            }
            (None, None) => {}
        }
        let mut chunks: Vec<Value> = deltas
            .into_iter()
            .map(|delta| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]))
            .chain([json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": self.finish_reason()}])])
            .map(|choices| self.with("chat.completion.chunk", choices))
            .collect();
        if include_usage {
            for chunk in &mut chunks {
                chunk["usage"] = Value::Null;
            }
            let mut last = self.with("chat.completion.chunk", json!([]));
            last["usage"] = self.usage();
            chunks.push(last);
        }
        chunks
            .iter()
            .map(|c| Bytes::from(format!("data: {c}\n\n")))
            .chain([Bytes::from_static(b"data: [DONE]\n\n")])
            .collect()
    }
}

/// `{"model", "input": text | [text, …], "dimensions"?, "encoding_format"?}`:
/// one request on the lane, its texts' tokens as input; a vector a text, in
/// order, as floats or (`base64`) little-endian `f32` bytes.
async fn embed_on_lane(
    state: Shared,
    lane: Lane,
    body: Map<String, Value>,
    _id: u64,
) -> Result<Response, Failure> {
    let inputs = body
        .get("input")
        .and_then(embedding_inputs)
        .filter(|texts| texts.iter().all(|t| !t.is_empty()))
        .ok_or_else(|| {
            invalid(
                "input",
                "'input' : a non-empty string or a list of non-empty strings",
            )
        })?;
    if inputs.len() > MAX_EMBEDDING_INPUTS {
        return Err(invalid(
            "input",
            &format!("'input' : at most {MAX_EMBEDDING_INPUTS} texts a request"),
        ));
    }
    let dimensions = match body.get("dimensions").filter(|v| !v.is_null()) {
        None => EMBEDDING_DIMENSIONS,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=3072) => n as usize,
            _ => {
                return Err(invalid(
                    "dimensions",
                    "'dimensions' : must be from 1 to 3072",
                ));
            }
        },
    };
    let base64 = match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            return Err(invalid(
                "encoding_format",
                "'encoding_format' : must be float or base64",
            ));
        }
    };
    let tokens: u64 = inputs.iter().map(|t| item_tokens(&json!(t))).sum();
    state
        .admit(&lane, Usage::call(tokens))
        .map_err(|r| refused(&lane.model, r))?;
    state.think().await;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let vector = embedding_of(text, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let answer = json!({
        "object": "list",
        "data": data,
        "model": lane.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Ok(axum::Json(answer).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_does() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(ms(0)), "0s");
        assert_eq!(go_duration(ms(450)), "450ms");
        assert_eq!(go_duration(ms(7_660)), "7.66s");
        assert_eq!(go_duration(ms(179_560)), "2m59.56s");
        assert_eq!(go_duration(ms(60_000)), "1m0s");
        assert_eq!(go_duration(ms(3_605_000)), "1h0m5s");
    }
}
