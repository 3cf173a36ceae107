//! Anthropic's Messages API (`POST /v1/messages`), as far as the gateway
//! reads it: the few members of a request it schedules by (the body itself
//! is forwarded as it came), the usage a whole answer reports (a stream's is
//! read by the relay, `api::relay`), and Anthropic's error envelope, which its SDK expects of every
//! refusal.

use super::tokens::prompt_tokens;
use serde_json::{Value, json};

/// What the scheduler needs of a Messages request.
#[derive(Debug, PartialEq, Eq)]
pub struct MessagesRequest {
    pub model: String,
    /// The output tokens the call may spend: output-token quotas reserve
    /// them until the answer's usage settles the call.
    pub max_tokens: u64,
    pub stream: bool,
    /// The local estimate of its input tokens ([`input_tokens`]).
    pub input_tokens: u64,
}

impl MessagesRequest {
    /// Reads a request body; `Err` is the message of the 400
    /// `invalid_request_error` it deserves (Anthropic's own wording where
    /// it has one). Members it does not know are left alone. The body comes
    /// back parsed too, so a large request is parsed once.
    pub fn read(body: &[u8]) -> Result<(MessagesRequest, Value), String> {
        let body: Value = serde_json::from_slice(body)
            .map_err(|e| format!("the request body is not valid JSON: {e}"))?;
        if !body.is_object() {
            return Err("the request body must be a JSON object".into());
        }
        let model = match body.get("model") {
            None => return Err("model: Field required".into()),
            Some(Value::String(model)) if !model.is_empty() => model.clone(),
            Some(_) => return Err("model: Input should be a non-empty string".into()),
        };
        let max_tokens = match body.get("max_tokens") {
            None => return Err("max_tokens: Field required".into()),
            Some(n) => n
                .as_u64()
                .filter(|&n| n >= 1)
                .ok_or("max_tokens: Input should be an integer of at least 1")?,
        };
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(stream)) => *stream,
            Some(_) => return Err("stream: Input should be a valid boolean".into()),
        };
        let Some(messages) = body.get("messages").and_then(Value::as_array) else {
            return Err("messages: Input should be a valid list".into());
        };
        if let Some(i) = messages.iter().position(|m| !m["role"].is_string()) {
            return Err(format!(
                "messages.{i}: Input should be an object with a role"
            ));
        }
        let request = MessagesRequest {
            model,
            max_tokens,
            stream,
            input_tokens: input_tokens(&body),
        };
        Ok((request, body))
    }
}

/// The local estimate of a Messages request's input tokens, by the rule of
/// `wire::tokens` (a quarter of the text's characters, rounded up, at least
/// 1), so it agrees with the simulators, which count with it too. The text
/// is the `system` prompt (a string or text blocks), every message's
/// content (a string or blocks: `text`, a `tool_use`'s name and input JSON,
/// a `tool_result`'s content, a text `document`'s data) and every tool
/// definition (name, description, input schema JSON). An image, or a
/// document that is not text, costs a fixed `INLINE_DATA_TOKENS` (258):
/// its real cost depends on pixels or pages the gateway does not decode,
/// and the answer's usage corrects the estimate.
pub fn input_tokens(body: &Value) -> u64 {
    let mut parts = Vec::new();
    content_parts(&body["system"], &mut parts);
    for message in body["messages"].as_array().into_iter().flatten() {
        content_parts(&message["content"], &mut parts);
    }
    for tool in body["tools"].as_array().into_iter().flatten() {
        let schema = tool.get("input_schema").map(Value::to_string);
        let text = [
            tool["name"].as_str(),
            tool["description"].as_str(),
            schema.as_deref(),
        ];
        parts.push(json!({"text": text.into_iter().flatten().collect::<String>()}));
    }
    prompt_tokens(&json!({"contents": [{"parts": parts}]}))
}

/// A `content` (or `system`): a string, or a list of blocks, as Gemini parts.
fn content_parts(content: &Value, parts: &mut Vec<Value>) {
    match content {
        Value::String(text) => parts.push(json!({ "text": text })),
        Value::Array(blocks) => blocks.iter().for_each(|block| block_parts(block, parts)),
        _ => {}
    }
}

/// One content block as Gemini parts; a kind not named here counts nothing.
fn block_parts(block: &Value, parts: &mut Vec<Value>) {
    let inline = || json!({"inlineData": {}});
    match block["type"].as_str() {
        Some("text") => parts.push(json!({"text": block["text"]})),
        Some("image") => parts.push(inline()),
        Some("document") => match block["source"]["type"].as_str() {
            Some("text") => parts.push(json!({"text": block["source"]["data"]})),
            _ => parts.push(inline()),
        },
        Some("tool_use") => {
            let name = block["name"].as_str().unwrap_or_default();
            let input = block.get("input").map(Value::to_string).unwrap_or_default();
            parts.push(json!({ "text": format!("{name}{input}") }));
        }
        Some("tool_result") => content_parts(&block["content"], parts),
        _ => {}
    }
}

/// (input, output) tokens of a whole answer's `usage`. The input is what
/// Anthropic's input-token limits count: `input_tokens` plus
/// `cache_creation_input_tokens` (cache reads are not counted against them).
pub fn usage(answer: &Value) -> Option<(u64, u64)> {
    let usage = answer.get("usage")?;
    let input = usage["input_tokens"]
        .as_u64()?
        .saturating_add(usage["cache_creation_input_tokens"].as_u64().unwrap_or(0));
    Some((input, usage["output_tokens"].as_u64().unwrap_or(0)))
}

/// Anthropic's `error.type` for an HTTP status. A 503 is
/// `overloaded_error`: the gateway answers 503 when no key can take the
/// call now, which is what that type tells the SDK (try again later); any
/// other status takes its class's type (`invalid_request_error` for 4xx,
/// `api_error` for 5xx).
fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// Anthropic's error envelope: `{"type": "error", "error": {"type", "message"}}`.
pub fn error_body(status: u16, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: Value) -> Result<MessagesRequest, String> {
        let (request, parsed) = MessagesRequest::read(body.to_string().as_bytes())?;
        assert_eq!(parsed, body, "the body comes back as it was read");
        Ok(request)
    }

    #[test]
    fn a_request_gives_its_model_reservation_stream_and_estimate() {
        let request = read(json!({
            "model": "claude-haiku-4-5", "max_tokens": 500, "stream": true,
            "metadata": {"user_id": "u"}, "unknown": [1, 2],
            "system": "abcd",
            "messages": [{"role": "user", "content": "abcdefgh"}]
        }));
        // abcd + abcdefgh: 12 characters, 3 tokens.
        assert_eq!(
            request,
            Ok(MessagesRequest {
                model: "claude-haiku-4-5".into(),
                max_tokens: 500,
                stream: true,
                input_tokens: 3,
            })
        );
        let plain = read(json!({"model": "m", "max_tokens": 1, "messages": []})).unwrap();
        assert!(!plain.stream);
        assert_eq!(plain.input_tokens, 1, "at least one token");
    }

    #[test]
    fn the_estimate_counts_every_kind_of_block_and_the_tools() {
        let body = json!({
            "system": [{"type": "text", "text": "sys!", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "12345678"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc!"}},
                    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "not counted", "signature": "s"},
                    {"type": "tool_use", "id": "t1", "name": "get", "input": {"q": 1}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "t1", "content": [
                        {"type": "text", "text": "ab"}, {"type": "image", "source": {}}]}]}],
            "tools": [{"name": "get", "description": "Gets.", "input_schema": {"type": "object"}},
                      {"type": "web_search_20250305", "name": "web_search"}]
        });
        // Text: sys! (4) + 12345678 (8) + doc! (4) + get{"q":1} (10) +
        // sunny (5) + ab (2) + get Gets. {"type":"object"} (3 + 5 + 17)
        // + web_search (10) = 68 characters, 17 tokens; and three
        // blocks at a fixed 258: two images and the PDF.
        assert_eq!(input_tokens(&body), 17 + 3 * 258);
    }

    #[test]
    fn a_bad_request_is_told_what_is_wrong() {
        let cases = [
            (
                json!({"model": "m", "messages": []}),
                "max_tokens: Field required",
            ),
            (
                json!({"model": "m", "max_tokens": 0, "messages": []}),
                "max_tokens: Input should be an integer of at least 1",
            ),
            (
                json!({"model": "m", "max_tokens": -5, "messages": []}),
                "max_tokens: Input should be an integer of at least 1",
            ),
            (
                json!({"model": "m", "max_tokens": "5", "messages": []}),
                "max_tokens: Input should be an integer of at least 1",
            ),
            (
                json!({"max_tokens": 5, "messages": []}),
                "model: Field required",
            ),
            (
                json!({"model": 7, "max_tokens": 5, "messages": []}),
                "model: Input should be a non-empty string",
            ),
            (
                json!({"model": "m", "max_tokens": 5}),
                "messages: Input should be a valid list",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user"}, 3]}),
                "messages.1: Input should be an object with a role",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [], "stream": "yes"}),
                "stream: Input should be a valid boolean",
            ),
            (json!([1]), "the request body must be a JSON object"),
        ];
        for (body, message) in cases {
            assert_eq!(read(body.clone()), Err(message.to_string()), "{body}");
        }
        let broken = MessagesRequest::read(b"{\"model\": ").unwrap_err();
        assert!(
            broken.starts_with("the request body is not valid JSON: "),
            "{broken}"
        );
    }

    #[test]
    fn a_whole_answer_states_its_usage_with_cache_writes_as_input() {
        let answer = json!({"type": "message", "content": [], "usage": {
            "input_tokens": 20, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 7}});
        assert_eq!(usage(&answer), Some((25, 7)));
        assert_eq!(usage(&json!({"usage": {"output_tokens": 7}})), None);
        assert_eq!(usage(&json!({"usage": {"input_tokens": 3}})), Some((3, 0)));
    }

    #[test]
    fn errors_take_anthropics_type_for_their_status() {
        let types = [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (408, "invalid_request_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (529, "overloaded_error"),
        ];
        for (status, kind) in types {
            assert_eq!(error_type(status), kind, "{status}");
        }
        assert_eq!(
            error_body(429, "slow down"),
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
        );
    }
}
