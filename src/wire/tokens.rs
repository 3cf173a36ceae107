//! The deterministic prompt-token count: `ceil(characters / 4)` over every text
//! part of `contents` and `systemInstruction`, plus 258 per inline-data part,
//! at least 1.
//!
//! The simulator counts with it (so tests can predict every number), and the
//! gateway uses it as its local estimate when `countTokens` is unavailable.
//! Real Gemini tokenises English at roughly four characters a token.

use serde_json::Value;

/// Tokens Gemini charges for one image or other inline-data part.
pub const INLINE_DATA_TOKENS: u64 = 258;

/// Counts the prompt tokens of a `GenerateContentRequest` (camelCase or snake_case).
pub fn prompt_tokens(request: &Value) -> u64 {
    let mut tally = Tally::default();
    if let Some(contents) = request.get("contents") {
        match contents {
            Value::Array(items) => items.iter().for_each(|c| tally.content(c)),
            other => tally.content(other),
        }
    }
    if let Some(system) = field(request, "systemInstruction", "system_instruction") {
        tally.content(system);
    }
    tally.total()
}

fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

#[derive(Default)]
struct Tally {
    chars: u64,
    inline_parts: u64,
}

impl Tally {
    fn content(&mut self, content: &Value) {
        match content {
            Value::String(text) => self.chars += text.chars().count() as u64,
            Value::Object(_) => {
                if let Some(Value::Array(parts)) = content.get("parts") {
                    parts.iter().for_each(|p| self.part(p));
                } else {
                    self.part(content);
                }
            }
            _ => {}
        }
    }

    fn part(&mut self, part: &Value) {
        if let Some(Value::String(text)) = part.get("text") {
            self.chars += text.chars().count() as u64;
        }
        if field(part, "inlineData", "inline_data").is_some() {
            self.inline_parts += 1;
        }
    }

    fn total(&self) -> u64 {
        (self.chars.div_ceil(4) + self.inline_parts * INLINE_DATA_TOKENS).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_text_system_and_inline_parts() {
        let req = json!({
            "contents": [{"role": "user", "parts": [{"text": "abcdefghi"}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}],
            "systemInstruction": {"parts": [{"text": "xyz"}]}
        });
        // 12 characters -> 3 tokens, plus one image.
        assert_eq!(prompt_tokens(&req), 3 + 258);
    }

    #[test]
    fn snake_case_and_empty_requests() {
        let req = json!({"contents": [{"parts": [{"inline_data": {"mime_type": "image/png", "data": ""}}]}],
                          "system_instruction": {"parts": [{"text": "a"}]}});
        assert_eq!(prompt_tokens(&req), 1 + 258);
        assert_eq!(prompt_tokens(&json!({"contents": []})), 1);
        // Characters, not bytes.
        assert_eq!(
            prompt_tokens(&json!({"contents": [{"parts": [{"text": "éééé"}]}]})),
            1
        );
    }
}
