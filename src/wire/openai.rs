//! The OpenAI-compatible layer Gemini serves at `/v1beta/openai/`, as far as
//! both the gateway (which forwards to it) and the simulator (which serves
//! it) must agree: what a chat body's prompt counts, what an embedding item
//! counts, where an answer states its usage, and the error shape (Gemini's
//! envelope inside a one-element array).

use super::tokens::{INLINE_DATA_TOKENS, prompt_tokens};
use serde_json::{Value, json};

/// What an OpenAI chat body sends to the model, to be counted: a
/// `GenerateContentRequest` of every message's text (tool calls' names and
/// arguments, and tool results, included) and its inline images (`data:`
/// URLs), which `countTokens` takes as it is, and how many images it names
/// by `http(s)` URL (counted at [`INLINE_DATA_TOKENS`] each: the upstream
/// fetches them, a count cannot). Tool declarations are not in it: the
/// answer's `usage` corrects for them.
pub struct ChatPrompt {
    pub countable: Value,
    pub remote_images: u64,
}

impl ChatPrompt {
    pub fn of(body: &Value) -> ChatPrompt {
        let messages = body["messages"].as_array().map_or(&[][..], Vec::as_slice);
        let mut remote_images = 0;
        let contents: Vec<Value> = messages
            .iter()
            .filter_map(|message| {
                let mut parts = content_parts(&message["content"], &mut remote_images);
                for call in message["tool_calls"].as_array().into_iter().flatten() {
                    let function = &call["function"];
                    let text = format!(
                        "{}{}",
                        function["name"].as_str().unwrap_or_default(),
                        function["arguments"].as_str().unwrap_or_default()
                    );
                    parts.push(json!({ "text": text }));
                }
                (!parts.is_empty()).then(|| json!({"role": "user", "parts": parts}))
            })
            .collect();
        ChatPrompt {
            countable: json!({ "contents": contents }),
            remote_images,
        }
    }

    /// The count added to the countable's for the images named by URL.
    pub fn remote_tokens(&self) -> u64 {
        self.remote_images * INLINE_DATA_TOKENS
    }

    /// The prompt's local count.
    pub fn tokens(&self) -> u64 {
        prompt_tokens(&self.countable) + self.remote_tokens()
    }
}

/// One message's `content` (a string, or a list of typed parts) as Gemini
/// parts; an image by URL is counted in `remote`, not a part.
fn content_parts(content: &Value, remote: &mut u64) -> Vec<Value> {
    match content {
        Value::String(text) => vec![json!({ "text": text })],
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| match part["type"].as_str() {
                Some("text") => Some(json!({"text": part["text"]})),
                Some("image_url") => {
                    let url = part["image_url"]["url"].as_str().unwrap_or_default();
                    match url
                        .strip_prefix("data:")
                        .and_then(|rest| rest.split_once(";base64,"))
                    {
                        Some((mime, data)) => {
                            Some(json!({"inlineData": {"mimeType": mime, "data": data}}))
                        }
                        None => {
                            *remote += 1;
                            None
                        }
                    }
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
        // abcd + abcdefgh + get{} + sunny: 22 characters, 6 tokens; two
        // images, one of them by URL (not in what countTokens is asked).
        let prompt = ChatPrompt::of(&body);
        assert_eq!(prompt.tokens(), 6 + 2 * 258);
        assert_eq!(prompt_tokens(&prompt.countable), 6 + 258);
        assert_eq!(prompt.remote_images, 1);
        let image = &prompt.countable["contents"][1]["parts"][1]["inlineData"];
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
