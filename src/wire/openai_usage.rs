//! What the scheduler books and settles for an OpenAI-compatible provider
//! (Groq, OpenRouter, Mistral, Cerebras, OpenAI): the output tokens a chat
//! request reserves, and the usage its answer reports, whole or streamed.

use super::openai::usage;
use super::sse::Events;
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

/// Reads a chat stream's events as their bytes arrive and keeps the last
/// usage reported (the final chunk's, when `include_usage` was asked for).
#[derive(Debug, Default)]
pub struct StreamUsage {
    events: Events,
    usage: Option<(u64, u64)>,
    done: bool,
}

impl StreamUsage {
    /// Takes the next bytes of the stream, cut anywhere.
    pub fn push(&mut self, chunk: &[u8]) {
        for event in self.events.push(chunk) {
            self.event(&event.data);
        }
    }

    /// The stream ended: (prompt, completion) tokens, if any chunk said.
    pub fn finish(mut self) -> Option<(u64, u64)> {
        if let Some(event) = self.events.finish() {
            self.event(&event.data);
        }
        self.usage
    }

    /// Whether `data: [DONE]` closed the stream (a stream cut short has no
    /// trustworthy usage of its end).
    pub fn done(&self) -> bool {
        self.done
    }

    fn event(&mut self, data: &str) {
        if data == "[DONE]" {
            self.done = true;
        } else if let Some(usage) = serde_json::from_str(data)
            .ok()
            .as_ref()
            .and_then(answer_usage)
        {
            self.usage = Some(usage);
        }
    }
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

    /// A stream whose chunks say `usage: null` until the last one, and a
    /// multi-byte character in its text.
    const STREAM: &str = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"h\u{e9}\u{1F600}\"}}],\"usage\":null}\n\n",
        ": keep-alive\n\n",
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\r\n\r\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":17,\"completion_tokens\":9}}\n\n",
        "data: [DONE]\n\n"
    );

    #[test]
    fn a_stream_cut_anywhere_gives_its_final_usage() {
        for size in 1..=STREAM.len() {
            let mut reader = StreamUsage::default();
            STREAM.as_bytes().chunks(size).for_each(|c| reader.push(c));
            assert!(reader.done(), "chunks of {size}");
            assert_eq!(reader.finish(), Some((17, 9)), "chunks of {size}");
        }
    }

    #[test]
    fn a_stream_cut_short_is_not_done_and_may_have_no_usage() {
        let cut = &STREAM[..STREAM.find("data: {\"choices\":[],").unwrap()];
        let mut reader = StreamUsage::default();
        reader.push(cut.as_bytes());
        assert!(!reader.done());
        assert_eq!(reader.finish(), None);
        // A last event without its blank line still counts.
        let mut reader = StreamUsage::default();
        reader.push(b"data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}");
        assert_eq!(reader.finish(), Some((1, 2)));
        // Groq's place, and garbage that is not JSON.
        let mut reader = StreamUsage::default();
        reader.push(b"data: {not json\n\ndata: {\"x_groq\":{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}}\n\n");
        assert_eq!(reader.finish(), Some((3, 4)));
    }
}
