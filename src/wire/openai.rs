//! The OpenAI-compatible layer Gemini serves at `/v1beta/openai/`, as far as
//! both the gateway (which forwards to it) and the simulator (which serves
//! it) must agree: what a chat body's prompt counts, what an embedding item
//! counts, where an answer states its usage, and the error shape (Gemini's
//! envelope inside a one-element array).

use super::tokens::prompt_tokens;
use serde_json::{Value, json};

/// A `GenerateContentRequest` holding what an OpenAI chat body sends to the
/// model: every message's text (tool calls' names and arguments, and tool
/// results, included) and its images (a `data:` URL as the inline data it
/// carries; an `http(s)` URL as one image part). Its [`prompt_tokens`] is
/// the prompt's count, and `countTokens` takes it as it is. Tool
/// declarations are not in it: the answer's `usage` corrects for them.
pub fn chat_countable(body: &Value) -> Value {
    let messages = body["messages"].as_array().map_or(&[][..], Vec::as_slice);
    let contents: Vec<Value> = messages
        .iter()
        .map(|message| {
            let mut parts = content_parts(&message["content"]);
            for call in message["tool_calls"].as_array().into_iter().flatten() {
                let function = &call["function"];
                let text = format!(
                    "{}{}",
                    function["name"].as_str().unwrap_or_default(),
                    function["arguments"].as_str().unwrap_or_default()
                );
                parts.push(json!({ "text": text }));
            }
            json!({"role": "user", "parts": parts})
        })
        .collect();
    json!({ "contents": contents })
}

/// One message's `content` (a string, or a list of typed parts) as Gemini parts.
fn content_parts(content: &Value) -> Vec<Value> {
    match content {
        Value::String(text) => vec![json!({ "text": text })],
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| match part["type"].as_str() {
                Some("text") => Some(json!({"text": part["text"]})),
                Some("image_url") => {
                    let url = part["image_url"]["url"].as_str().unwrap_or_default();
                    let (mime, data) = url
                        .strip_prefix("data:")
                        .and_then(|rest| rest.split_once(";base64,"))
                        .unwrap_or(("image/jpeg", ""));
                    Some(json!({"inlineData": {"mimeType": mime, "data": data}}))
                }
                _ => None,
            })
            .collect(),
        _ => vec![],
    }
}

/// The input tokens of one embedding item: a native `Content`, or an
/// OpenAI `input` string.
pub fn item_tokens(item: &Value) -> u64 {
    prompt_tokens(&json!({ "contents": [item] }))
}

/// An OpenAI embeddings `input`: one string or a list of strings (lists of
/// token ids are not served by Gemini's layer). `None` for anything else.
pub fn embedding_inputs(input: &Value) -> Option<Vec<&str>> {
    match input {
        Value::String(s) => Some(vec![s.as_str()]),
        Value::Array(items) if !items.is_empty() => items.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

/// (input, output) tokens from an OpenAI answer's or chunk's `usage`.
pub fn usage(body: &Value) -> Option<(u64, u64)> {
    let usage = body.get("usage")?;
    let input = usage["prompt_tokens"].as_u64()?;
    Some((input, usage["completion_tokens"].as_u64().unwrap_or(0)))
}

/// How the OpenAI-compatible layer writes an error: Gemini's envelope as
/// the one element of a JSON array.
pub fn error_body(envelope: Value) -> Value {
    Value::Array(vec![envelope])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_counts_every_message_text_tool_call_and_image() {
        let body = json!({"messages": [
            {"role": "system", "content": "abcd"},
            {"role": "user", "content": [
                {"type": "text", "text": "abcdefgh"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]});
        // abcd + abcdefgh + get{} + sunny: 22 characters, 6 tokens; two images.
        assert_eq!(prompt_tokens(&chat_countable(&body)), 6 + 2 * 258);
        let image = &chat_countable(&body)["contents"][1]["parts"][1]["inlineData"];
        assert_eq!(
            (image["mimeType"].as_str(), image["data"].as_str()),
            (Some("image/png"), Some("AAAA"))
        );
    }

    #[test]
    fn embedding_items_and_inputs() {
        assert_eq!(item_tokens(&json!({"parts": [{"text": "abcdefghi"}]})), 3);
        assert_eq!(item_tokens(&json!("abcd")), 1);
        assert_eq!(embedding_inputs(&json!("a")), Some(vec!["a"]));
        assert_eq!(embedding_inputs(&json!(["a", "b"])), Some(vec!["a", "b"]));
        assert_eq!(embedding_inputs(&json!([1, 2])), None);
        assert_eq!(embedding_inputs(&json!([])), None);
    }
}
