//! Relays an upstream event stream to the client as it arrives (nothing is
//! buffered beyond one event), in the client's framing, and settles the call
//! with the last usage seen (Gemini's `usageMetadata`, or the OpenAI-compatible
//! layer's `usage`, whose stream ends with `data: [DONE]`). An upstream that breaks mid-stream
//! ends the client's stream with an error event rather than a hang, and so
//! does a stream that ended without one valid event (it is settled as
//! failed, not ok); a client that leaves drops the relay, which drops the
//! upstream connection.

use super::dispatch::Settlement;
use crate::store::Outcome;
use axum::body::{Body, Bytes};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::convert::Infallible;

/// Input and output tokens, from `usageMetadata`.
pub type Usage = (u64, u64);

/// How chunks are written to the client.
pub trait Framing: Send + 'static {
    /// One upstream chunk (a `GenerateContentResponse`).
    fn chunk(&mut self, chunk: &Value) -> Option<Bytes>;
    /// The stream ended normally.
    fn end(&mut self, usage: Option<Usage>) -> Option<Bytes>;
    /// The upstream broke off; `message` says how.
    fn broken(&mut self, message: &str) -> Bytes;
    /// The usage the stream has reported once `chunk` is read, if it says.
    fn usage(&mut self, chunk: &Value) -> Option<Usage> {
        usage_of(chunk)
    }
}

/// The usage a chunk reports, if it reports one.
pub fn usage_of(chunk: &Value) -> Option<Usage> {
    let Some(usage) = chunk.get("usageMetadata") else {
        return crate::wire::openai::usage(chunk);
    };
    let input = usage["promptTokenCount"].as_u64()?;
    let output = usage["candidatesTokenCount"].as_u64().unwrap_or(0)
        + usage["thoughtsTokenCount"].as_u64().unwrap_or(0);
    Some((input, output))
}

/// The error object written into a broken stream.
pub fn broken_stream_error(message: &str) -> Value {
    json!({"error": {"code": 502, "status": "UNAVAILABLE", "message": format!("the upstream stream broke off: {message}")}})
}

struct Relay<F> {
    upstream: BoxStream<'static, reqwest::Result<Bytes>>,
    buffer: Vec<u8>,
    ready: VecDeque<Bytes>,
    usage: Option<Usage>,
    settlement: Option<Settlement>,
    framing: F,
    finished: bool,
    /// Events relayed, and events skipped because they were not JSON.
    relayed: usize,
    skipped: usize,
}

impl<F: Framing> Relay<F> {
    /// Moves every complete event out of the buffer.
    fn drain_events(&mut self) {
        while let Some((end, sep)) = find_boundary(&self.buffer) {
            let event: Vec<u8> = self.buffer.drain(..end + sep).take(end).collect();
            self.event(&event);
        }
    }

    fn event(&mut self, event: &[u8]) {
        let text = String::from_utf8_lossy(event);
        let data: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .join("\n");
        // `[DONE]` closes an OpenAI stream; the framing writes its own end.
        if data.is_empty() || data == "[DONE]" {
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(&data) else {
            self.skipped += 1;
            return;
        };
        self.relayed += 1;
        if let Some(u) = self.framing.usage(&chunk) {
            self.usage = Some(u);
        }
        if let Some(out) = self.framing.chunk(&chunk) {
            self.ready.push_back(out);
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        if self.skipped > 0 {
            tracing::warn!(
                "{} upstream stream event(s) were not JSON; skipped",
                self.skipped
            );
        }
        if let Some(s) = self.settlement.take() {
            s.finish(outcome, self.usage);
        }
        self.finished = true;
    }
}

/// An error with its causes ("error decoding response body: … timed out").
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The first event boundary (`\n\n` or `\r\n\r\n`): its start and length.
fn find_boundary(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The client's body: the upstream's events in `framing`, as they come.
pub fn relay(response: reqwest::Response, settlement: Settlement, framing: impl Framing) -> Body {
    let relay = Relay {
        upstream: response.bytes_stream().boxed(),
        buffer: Vec::new(),
        ready: VecDeque::new(),
        usage: None,
        settlement: Some(settlement),
        framing,
        finished: false,
        relayed: 0,
        skipped: 0,
    };
    let stream = futures::stream::unfold(relay, |mut r| async move {
        loop {
            if let Some(out) = r.ready.pop_front() {
                return Some((Ok::<Bytes, Infallible>(out), r));
            }
            if r.finished {
                return None;
            }
            match r.upstream.next().await {
                Some(Ok(bytes)) => {
                    r.buffer.extend_from_slice(&bytes);
                    r.drain_events();
                }
                Some(Err(e)) => {
                    let out = r.framing.broken(&describe(&e));
                    r.ready.push_back(out);
                    r.finish(Outcome::Transient);
                }
                None => {
                    let rest = std::mem::take(&mut r.buffer);
                    r.event(&rest);
                    if r.relayed == 0 {
                        let out = r.framing.broken("it ended without one valid event");
                        r.ready.push_back(out);
                        r.finish(Outcome::Transient);
                        continue;
                    }
                    let usage = r.usage;
                    if let Some(out) = r.framing.end(usage) {
                        r.ready.push_back(out);
                    }
                    r.finish(Outcome::Ok);
                }
            }
        }
    });
    Body::from_stream(stream)
}

/// Gemini's `?alt=sse` framing: `data: <chunk>` and a blank line.
pub struct GeminiSse;

impl Framing for GeminiSse {
    fn chunk(&mut self, chunk: &Value) -> Option<Bytes> {
        Some(Bytes::from(format!("data: {chunk}\r\n\r\n")))
    }
    fn end(&mut self, _: Option<Usage>) -> Option<Bytes> {
        None
    }
    fn broken(&mut self, message: &str) -> Bytes {
        Bytes::from(format!("data: {}\r\n\r\n", broken_stream_error(message)))
    }
}

/// Gemini's default streaming framing: one JSON array, written element by element.
#[derive(Default)]
pub struct GeminiArray {
    started: bool,
}

impl GeminiArray {
    fn open(&mut self) -> &'static str {
        if std::mem::replace(&mut self.started, true) {
            ",\r\n"
        } else {
            "["
        }
    }
}

impl Framing for GeminiArray {
    fn chunk(&mut self, chunk: &Value) -> Option<Bytes> {
        Some(Bytes::from(format!("{}{chunk}", self.open())))
    }
    fn end(&mut self, _: Option<Usage>) -> Option<Bytes> {
        Some(Bytes::from_static(if self.started { b"]" } else { b"[]" }))
    }
    fn broken(&mut self, message: &str) -> Bytes {
        Bytes::from(format!("{}{}]", self.open(), broken_stream_error(message)))
    }
}

/// The OpenAI-compatible layer's framing, passed through: each
/// `chat.completion.chunk` as it came, then `data: [DONE]`.
pub struct OpenAiSse;

impl Framing for OpenAiSse {
    fn chunk(&mut self, chunk: &Value) -> Option<Bytes> {
        Some(Bytes::from(format!("data: {chunk}\n\n")))
    }
    fn end(&mut self, _: Option<Usage>) -> Option<Bytes> {
        Some(Bytes::from_static(b"data: [DONE]\n\n"))
    }
    fn broken(&mut self, message: &str) -> Bytes {
        let error = json!({"error": {"message": format!("the upstream stream broke off: {message}"), "type": "api_error", "param": null, "code": null}});
        Bytes::from(format!("data: {error}\n\n"))
    }
}

/// Anthropic's Messages stream, passed through: each event as `event:` and
/// `data:` lines (the type is the data's own). Its usage comes in two parts:
/// the input in `message_start`, the output so far in each `message_delta`.
#[derive(Default)]
pub struct AnthropicSse {
    input: Option<u64>,
}

impl Framing for AnthropicSse {
    fn chunk(&mut self, chunk: &Value) -> Option<Bytes> {
        let kind = chunk["type"].as_str().unwrap_or("message");
        Some(Bytes::from(format!("event: {kind}\ndata: {chunk}\n\n")))
    }
    fn end(&mut self, _: Option<Usage>) -> Option<Bytes> {
        None
    }
    fn broken(&mut self, message: &str) -> Bytes {
        let error = crate::wire::anthropic::error_body(
            502,
            &format!("the upstream stream broke off: {message}"),
        );
        Bytes::from(format!("event: error\ndata: {error}\n\n"))
    }
    fn usage(&mut self, chunk: &Value) -> Option<Usage> {
        match chunk["type"].as_str()? {
            // Its output count is a placeholder (1): only a delta says what
            // was generated, so a stream broken before one keeps the reservation.
            "message_start" => {
                let (input, _) = crate::wire::anthropic::usage(&chunk["message"])?;
                self.input = Some(input);
                None
            }
            "message_delta" => {
                let output = chunk["usage"]["output_tokens"].as_u64()?;
                Some((self.input?, output))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_of_both_line_endings() {
        assert_eq!(find_boundary(b"data: {}\r\n\r\ndata"), Some((8, 4)));
        assert_eq!(find_boundary(b"data: {}\n\ndata"), Some((8, 2)));
        assert_eq!(find_boundary(b"data: {}"), None);
    }

    #[test]
    fn array_framing_opens_separates_and_closes() {
        let mut f = GeminiArray::default();
        let a = f.chunk(&json!({"n": 1})).unwrap();
        let b = f.chunk(&json!({"n": 2})).unwrap();
        let end = f.end(None).unwrap();
        let all = [a, b, end].concat();
        let parsed: Vec<Value> = serde_json::from_slice(&all).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            GeminiArray::default().end(None).unwrap(),
            Bytes::from_static(b"[]")
        );
    }

    #[test]
    fn usage_comes_from_the_usage_metadata() {
        let chunk = json!({"usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 3, "thoughtsTokenCount": 2}});
        assert_eq!(usage_of(&chunk), Some((10, 5)));
        let openai = json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}});
        assert_eq!(usage_of(&openai), Some((7, 2)));
        assert_eq!(usage_of(&json!({})), None);
    }

    #[test]
    fn an_anthropic_stream_keeps_its_event_names_and_adds_up_its_usage() {
        let events = [
            json!({"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 25, "cache_creation_input_tokens": 5, "output_tokens": 1}}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}),
            json!({"type": "ping"}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}}),
            json!({"type": "message_stop"}),
        ];
        let mut framing = AnthropicSse::default();
        let usage: Vec<Option<Usage>> = events.iter().map(|e| framing.usage(e)).collect();
        // Input from the start (cache writes count), the output so far from
        // each delta; the start's own output count (1) is not a usage.
        assert_eq!(usage, [None, None, None, Some((30, 15)), None]);
        assert_eq!(
            framing.chunk(&events[2]).unwrap(),
            Bytes::from("event: ping\ndata: {\"type\":\"ping\"}\n\n")
        );
        assert_eq!(framing.end(Some((30, 15))), None);
        let broken = String::from_utf8(framing.broken("reset").to_vec()).unwrap();
        assert!(broken.starts_with("event: error\ndata: {"), "{broken}");
        assert!(broken.contains("\"type\":\"api_error\""), "{broken}");
        // A delta with no start before it says nothing it can be settled by.
        assert_eq!(AnthropicSse::default().usage(&events[3]), None);
    }
}
