//! What the scheduler books and settles for an OpenAI-compatible provider
//! (Groq, OpenRouter, Mistral, Cerebras, OpenAI): the output tokens a chat
//! request reserves, and the usage its whole answer reports (a stream's is
//! read by the relay, `api::relay`).

use super::openai::usage;
use serde_json::Value;

/// The output tokens a chat request may spend, which output-token quotas
/// reserve until the answer's usage settles them: `max_completion_tokens`
/// (the current name), else `max_tokens` (the older one), else `None` (the
/// caller falls back on the model's default). A value that is not a
/// non-negative integer counts as absent: the upstream refuses it anyway.
pub fn output_reservation(body: &Value) -> Option<u64> {
    ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find_map(|name| body.get(name).and_then(Value::as_u64))
}

/// (prompt, completion) tokens of an answer or stream chunk: the standard
/// `usage`, or Groq's `x_groq.usage` (where its streams put the final
/// usage when `stream_options.include_usage` was not asked for).
pub fn answer_usage(body: &Value) -> Option<(u64, u64)> {
    usage(body).or_else(|| usage(body.get("x_groq")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_reservation_is_max_completion_tokens_then_max_tokens() {
        let reserve = |body| output_reservation(&body);
        assert_eq!(
            reserve(json!({"max_completion_tokens": 300, "max_tokens": 500})),
            Some(300)
        );
        assert_eq!(reserve(json!({"max_tokens": 500})), Some(500));
        assert_eq!(reserve(json!({"messages": []})), None);
        // Not a count: absent, so the other name or the default decides.
        assert_eq!(
            reserve(json!({"max_completion_tokens": -1, "max_tokens": 40})),
            Some(40)
        );
        assert_eq!(reserve(json!({"max_tokens": "500"})), None);
        assert_eq!(reserve(json!({"max_tokens": 1.5})), None);
        assert_eq!(reserve(json!({"max_tokens": null})), None);
    }

    #[test]
    fn a_whole_answer_states_its_usage_in_either_place() {
        let answer = json!({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46}});
        assert_eq!(answer_usage(&answer), Some((12, 34)));
        let groq = json!({"choices": [], "x_groq": {"id": "r", "usage": {"prompt_tokens": 5, "completion_tokens": 6}}});
        assert_eq!(answer_usage(&groq), Some((5, 6)));
        assert_eq!(answer_usage(&json!({"usage": null})), None);
        assert_eq!(
            answer_usage(&json!({"usage": {"prompt_tokens": "5"}})),
            None
        );
    }
}
