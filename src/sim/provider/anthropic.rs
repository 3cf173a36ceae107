//! The Anthropic Messages API: `POST /v1/messages` (whole, or streamed as
//! `event:`/`data:` pairs: `message_start`, `content_block_start`, `ping`,
//! `content_block_delta`s, `content_block_stop`, `message_delta` with the
//! output tokens, `message_stop`), `POST /v1/messages/count_tokens` (free)
//! and `GET /v1/models`, with `x-api-key` and `anthropic-version` required.
//!
//! Every answer has a `request-id`, and every answer on a lane the
//! `anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,
//! remaining,reset}` headers of its per-minute quotas that are set (resets
//! in RFC 3339, to the second). A call reserves its `max_tokens` of the
//! output tokens a minute at admission and settles to what it said; a
//! refusal is the real `rate_limit_error` with `retry-after` in whole
//! seconds, rounded up (none when the call can never fit).

use super::Failure;
use super::{
    Lane, ProviderState, Refusal, Said, Settle, is_set, paced, tool_arguments, whole_seconds,
};
use crate::policy::{Quota, Usage};
use crate::wire::anthropic::{error_body, input_tokens};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use std::sync::Arc;

type Shared = Arc<ProviderState>;

/// The organization every key belongs to, as the 429 message names it.
const ORGANIZATION: &str = "org_sim";

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/models", get(models))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "Not Found") })
}

/// Anthropic's envelope; the status decides the error's type.
fn error(status: StatusCode, message: &str) -> Failure {
    Failure {
        status,
        body: error_body(status.as_u16(), message),
        retry_after: None,
    }
}

fn invalid(message: &str) -> Failure {
    error(StatusCode::BAD_REQUEST, message)
}

/// How the 429 message names a quota.
fn quota_unit(quota: Quota) -> &'static str {
    match quota {
        Quota::RequestsPerMinute => "requests per minute",
        Quota::InputTokensPerMinute => "input tokens per minute",
        Quota::OutputTokensPerMinute => "output tokens per minute",
        Quota::RequestsPerDay => "requests per day",
        Quota::InputTokensPerDay => "input tokens per day",
    }
}

/// `n` with thousands separated by commas, as Anthropic's messages write limits.
fn with_commas(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn refused(refusal: Refusal) -> Failure {
    let message = format!(
        "This request would exceed the rate limit for your organization ({ORGANIZATION}) of {} {}. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later. You may also contact sales at https://www.anthropic.com/contact-sales to discuss your options for a rate limit increase.",
        with_commas(refusal.limit),
        quota_unit(refusal.quota)
    );
    Failure {
        retry_after: refusal.retry_after.map(whole_seconds),
        ..error(StatusCode::TOO_MANY_REQUESTS, &message)
    }
}

/// Adds the lane's `anthropic-ratelimit-*` headers to `response`.
fn with_rate_headers(state: &ProviderState, lane: &Lane, mut response: Response) -> Response {
    let now = state.now_millis();
    let trios = [
        ("requests", Quota::RequestsPerMinute),
        ("input-tokens", Quota::InputTokensPerMinute),
        ("output-tokens", Quota::OutputTokensPerMinute),
    ];
    let headers = response.headers_mut();
    for (name, quota) in trios {
        if !is_set(lane.limits.get(quota)) {
            continue;
        }
        let standing = state.standing(lane, quota);
        // The moment the window is whole again, to the second above.
        let reset_ms = (now + standing.reset.as_millis() as i64 + 999) / 1_000 * 1_000;
        let reset = chrono::DateTime::from_timestamp_millis(reset_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let values = [
            ("limit", standing.limit.to_string()),
            ("remaining", (standing.limit - standing.used).to_string()),
            ("reset", reset),
        ];
        for (what, value) in values {
            if let (Ok(header), Ok(value)) = (
                HeaderName::try_from(format!("anthropic-ratelimit-{name}-{what}")),
                HeaderValue::try_from(value),
            ) {
                headers.insert(header, value);
            }
        }
    }
    response
}

/// The caller's key (1-based) and body, or the answer for a missing or
/// unknown key, a missing `anthropic-version`, or a body that is not a JSON
/// object.
fn open(
    state: &ProviderState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(usize, Map<String, Value>), Failure> {
    let key_index = authenticate(state, headers)?;
    let body = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(invalid("The request body must be a JSON object.")),
        Err(e) => {
            return Err(invalid(&format!(
                "There was an issue with your request: {e}"
            )));
        }
    };
    Ok((key_index, body))
}

fn authenticate(state: &ProviderState, headers: &HeaderMap) -> Result<usize, Failure> {
    let unauthorized = |m| error(StatusCode::UNAUTHORIZED, m);
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    if key.is_none() {
        return Err(unauthorized("x-api-key header is required"));
    }
    let key_index = state
        .key_index(key)
        .ok_or_else(|| unauthorized("invalid x-api-key"))?;
    if !headers.contains_key("anthropic-version") {
        return Err(invalid("anthropic-version: header is required"));
    }
    Ok(key_index)
}

/// The model a body names, as served to key `key_index`.
fn lane_of(
    state: &ProviderState,
    key_index: usize,
    body: &Map<String, Value>,
) -> Result<Lane, Failure> {
    let model = match body.get("model").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => m,
        _ => return Err(invalid("model: Field required")),
    };
    state
        .lane(key_index, model)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, &format!("model: {model}")))
}

/// Puts the request id on an answer.
fn identified(mut response: Response, id: u64) -> Response {
    if let Ok(value) = HeaderValue::try_from(format!("req_sim_{id:020}")) {
        response.headers_mut().insert("request-id", value);
    }
    response
}

async fn messages(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let id = state.next_id();
    let response = match open(&state, &headers, &body) {
        Err(failure) => failure.into_response(),
        Ok((key_index, body)) => match lane_of(&state, key_index, &body) {
            Err(failure) => failure.into_response(),
            Ok(lane) => {
                let answered = answer(state.clone(), lane.clone(), body, id).await;
                with_rate_headers(
                    &state,
                    &lane,
                    answered.unwrap_or_else(Failure::into_response),
                )
            }
        },
    };
    identified(response, id)
}

/// `{"model", "messages", "system"?}`: the input tokens, spending nothing.
async fn count_tokens(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let id = state.next_id();
    let counted = open(&state, &headers, &body).and_then(|(key_index, body)| {
        lane_of(&state, key_index, &body)?;
        check_messages(&body)?;
        Ok(json!({"input_tokens": input_tokens(&Value::Object(body))}))
    });
    let response = match counted {
        Ok(body) => axum::Json(body).into_response(),
        Err(failure) => failure.into_response(),
    };
    identified(response, id)
}

async fn models(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let id = state.next_id();
    let response = match authenticate(&state, &headers) {
        Err(failure) => failure.into_response(),
        Ok(_) => {
            let data: Vec<Value> = state
                .models()
                .map(|m| json!({"type": "model", "id": m, "display_name": m, "created_at": "2025-10-01T00:00:00Z"}))
                .collect();
            let first = data.first().map(|m| m["id"].clone());
            let last = data.last().map(|m| m["id"].clone());
            axum::Json(json!({"data": data, "has_more": false, "first_id": first, "last_id": last}))
                .into_response()
        }
    };
    identified(response, id)
}

/// What a valid Messages request asks of its answer.
struct Ask {
    max_tokens: u64,
    stream: bool,
    /// The tool the answer calls: its name and input schema.
    call: Option<(String, Value)>,
}

fn check_messages(body: &Map<String, Value>) -> Result<(), Failure> {
    let messages = match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => return Err(invalid("messages: at least one message is required")),
        _ => return Err(invalid("messages: Field required")),
    };
    for (i, message) in messages.iter().enumerate() {
        if !matches!(message["role"].as_str(), Some("user" | "assistant")) {
            return Err(invalid(&format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            )));
        }
        let valid = match &message["content"] {
            Value::String(text) => !text.is_empty(),
            Value::Array(blocks) => !blocks.is_empty() && blocks.iter().all(valid_block),
            _ => false,
        };
        if !valid {
            return Err(invalid(&format!(
                "messages.{i}.content: a non-empty text, or a list of text, image, document, tool_use and tool_result blocks"
            )));
        }
    }
    match body.get("system") {
        None | Some(Value::String(_)) => Ok(()),
        Some(Value::Array(blocks))
            if blocks
                .iter()
                .all(|b| b["type"] == "text" && b["text"].is_string()) =>
        {
            Ok(())
        }
        Some(_) => Err(invalid("system: a text, or a list of text blocks")),
    }
}

fn valid_block(block: &Value) -> bool {
    match block["type"].as_str() {
        Some("text") => block["text"].is_string(),
        Some("image" | "document") => block["source"].is_object(),
        Some("tool_use") => {
            block["id"].is_string() && block["name"].is_string() && block["input"].is_object()
        }
        Some("tool_result") => block["tool_use_id"].is_string(),
        _ => false,
    }
}

fn read_ask(body: &Map<String, Value>) -> Result<Ask, Failure> {
    let max_tokens = match body.get("max_tokens") {
        None | Some(Value::Null) => return Err(invalid("max_tokens: Field required")),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => n,
            _ => {
                return Err(invalid(
                    "max_tokens: Input should be a whole number of at least 1",
                ));
            }
        },
    };
    check_messages(body)?;
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream: Input should be a valid boolean")),
    };
    let tools: Vec<(String, Value)> = match body.get("tools") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(tools)) => tools
            .iter()
            .enumerate()
            .map(
                |(i, tool)| match (tool["name"].as_str(), tool.get("input_schema")) {
                    (Some(name), Some(schema @ Value::Object(_))) if !name.is_empty() => {
                        Ok((name.to_string(), schema.clone()))
                    }
                    _ => Err(invalid(&format!(
                        "tools.{i}: a tool has a name and an input_schema object"
                    ))),
                },
            )
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("tools: Input should be a valid list")),
    };
    let choice = body.get("tool_choice").filter(|c| !c.is_null());
    let chosen = match choice.map(|c| (c["type"].as_str(), c["name"].as_str())) {
        None | Some((Some("auto" | "any"), _)) => tools.first().cloned(),
        Some((Some("none"), _)) => None,
        Some((Some("tool"), Some(name))) if tools.iter().any(|(n, _)| n == name) => {
            tools.iter().find(|(n, _)| n == name).cloned()
        }
        Some(_) => {
            return Err(invalid(
                "tool_choice: auto, any, none, or a tool among the tools",
            ));
        }
    };
    // The model calls a tool when the user spoke last, not with a tool's result.
    let last = body["messages"].as_array().and_then(|m| m.last());
    let user_spoke = last.is_some_and(|m| {
        m["role"] == "user"
            && !m["content"]
                .as_array()
                .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result"))
    });
    Ok(Ask {
        max_tokens,
        stream,
        call: chosen.filter(|_| user_spoke),
    })
}

async fn answer(
    state: Shared,
    lane: Lane,
    body: Map<String, Value>,
    id: u64,
) -> Result<Response, Failure> {
    let ask = read_ask(&body)?;
    let input = input_tokens(&Value::Object(body));
    let reserve = Usage {
        requests: 1,
        input_tokens: input,
        output_tokens: ask.max_tokens,
    };
    let ticket = state.admit(&lane, reserve).map_err(refused)?;
    state.think().await;
    let reply = Reply::new(&ask, input, id, &lane.model);
    let settle = Settle::new(state.clone(), lane, ticket, reply.output);
    if !ask.stream {
        drop(settle);
        return Ok(axum::Json(reply.whole()).into_response());
    }
    Ok((
        [(header::CONTENT_TYPE, "text/event-stream")],
        paced(&state, reply.events(), settle),
    )
        .into_response())
}

/// One admitted call's answer: one text or tool_use block.
struct Reply {
    id: u64,
    model: String,
    said: Option<Said>,
    /// The tool call: its name and input.
    tool_use: Option<(String, Value)>,
    input: u64,
    output: u64,
}

impl Reply {
    fn new(ask: &Ask, input: u64, id: u64, model: &str) -> Reply {
        let (said, tool_use, output) = match &ask.call {
            Some((name, schema)) => {
                let (arguments, output) = tool_arguments(schema, ask.max_tokens);
                (None, Some((name.clone(), arguments)), output)
            }
            None => {
                let said = Said::ok(input, ask.max_tokens);
                let output = said.tokens;
                (Some(said), None, output)
            }
        };
        Reply {
            id,
            model: model.to_string(),
            said,
            tool_use,
            input,
            output,
        }
    }

    fn stop_reason(&self) -> &'static str {
        match &self.said {
            None => "tool_use",
            Some(said) if said.cut => "max_tokens",
            Some(_) => "end_turn",
        }
    }

    fn tool_block(&self, input: Value) -> Option<Value> {
        let (name, _) = self.tool_use.as_ref()?;
        Some(
            json!({"type": "tool_use", "id": format!("toolu_sim_{}", self.id), "name": name, "input": input}),
        )
    }

    /// The message; `content` and `usage` as given.
    fn message(&self, content: Value, stop_reason: Option<&str>, output: u64) -> Value {
        json!({
            "id": format!("msg_sim_{}", self.id),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": {
                "input_tokens": self.input,
                "output_tokens": output,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        })
    }

    fn whole(&self) -> Value {
        let block = match (&self.said, &self.tool_use) {
            (Some(said), _) => json!({"type": "text", "text": said.text}),
            (None, Some((_, input))) => self.tool_block(input.clone()).unwrap_or_default(),
            (None, None) => json!({"type": "text", "text": ""}),
        };
        self.message(json!([block]), Some(self.stop_reason()), self.output)
    }

    /// The stream's events, in the real order; `message_start` counts the
    /// first output token, `message_delta` all of them.
    fn events(&self) -> Vec<Bytes> {
        let (start, deltas) = match (&self.said, &self.tool_use) {
            (Some(said), _) => (
                json!({"type": "text", "text": ""}),
                said.pieces()
                    .into_iter()
                    .map(|p| json!({"type": "text_delta", "text": p}))
                    .collect(),
            ),
            (None, Some((_, input))) => (
                self.tool_block(json!({})).unwrap_or_default(),
                vec![json!({"type": "input_json_delta", "partial_json": input.to_string()})],
            ),
            (None, None) => (json!({"type": "text", "text": ""}), vec![]),
        };
        let mut events = vec![
            json!({"type": "message_start", "message": self.message(json!([]), None, self.output.min(1))}),
            json!({"type": "content_block_start", "index": 0, "content_block": start}),
            json!({"type": "ping"}),
        ];
        events.extend(
            deltas
                .into_iter()
                .map(|delta| json!({"type": "content_block_delta", "index": 0, "delta": delta})),
        );
        events.extend([
            json!({"type": "content_block_stop", "index": 0}),
            json!({
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason(), "stop_sequence": null},
                "usage": {"output_tokens": self.output},
            }),
            json!({"type": "message_stop"}),
        ]);
        events
            .iter()
            .map(|e| {
                let name = e["type"].as_str().unwrap_or_default();
                Bytes::from(format!("event: {name}\ndata: {e}\n\n"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_written_with_commas() {
        assert_eq!(with_commas(2_000), "2,000");
        assert_eq!(with_commas(999), "999");
        assert_eq!(with_commas(1_234_567), "1,234,567");
    }
}
