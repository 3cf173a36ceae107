//! Server-sent events read as their bytes arrive, for the stream readers
//! that only need what an upstream's events say (`anthropic::StreamUsage`,
//! `openai_usage::StreamUsage`).
//!
//! A chunk may end anywhere (inside a line, inside a UTF-8 character): bytes
//! wait in the buffer until their line is complete, and a line is decoded
//! only then. Lines end with `\n` or `\r\n` (what every provider writes; a
//! lone `\r` is not taken as an end).

/// One event: its `event:` name (empty when it has none) and its `data:`
/// lines joined with `\n`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Event {
    pub name: String,
    pub data: String,
}

/// Reads events from byte chunks.
#[derive(Debug, Default)]
pub(crate) struct Events {
    /// The bytes of a line not ended yet.
    line: Vec<u8>,
    /// The event being read, and how many `data:` lines it has.
    event: Event,
    data_lines: usize,
}

impl Events {
    /// The events that `chunk` completes, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut done = Vec::new();
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            let line = std::mem::take(&mut self.line);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            done.extend(self.line_ended(&String::from_utf8_lossy(line)));
        }
        self.line.extend_from_slice(rest);
        done
    }

    /// The last event, when the stream ends without the blank line that
    /// should close it.
    pub fn finish(&mut self) -> Option<Event> {
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            self.line_ended(&String::from_utf8_lossy(&line));
        }
        self.line_ended("")
    }

    /// A complete line: a field of the event, or (blank) its end. An event
    /// without data is dropped, as the SSE standard says.
    fn line_ended(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let lines = std::mem::take(&mut self.data_lines);
            return (lines > 0).then_some(event);
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event.name = value.to_string(),
            "data" => {
                if self.data_lines > 0 {
                    self.event.data.push('\n');
                }
                self.event.data.push_str(value);
                self.data_lines += 1;
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, data: &str) -> Event {
        Event {
            name: name.into(),
            data: data.into(),
        }
    }

    /// Every event of `stream`, fed in chunks of `size` bytes.
    fn read(stream: &[u8], size: usize) -> Vec<Event> {
        let mut events = Events::default();
        let mut all: Vec<Event> = stream.chunks(size).flat_map(|c| events.push(c)).collect();
        all.extend(events.finish());
        all
    }

    #[test]
    fn events_come_whole_however_the_bytes_are_cut() {
        let stream = "event: a\r\ndata: {\"x\": \"é€😀\"}\r\n\r\n: a comment\n\
                      data: one\ndata:two\nid: 7\n\nevent: empty\n\ndata: last";
        let expected = vec![
            event("a", "{\"x\": \"é€😀\"}"),
            event("", "one\ntwo"),
            event("", "last"),
        ];
        // Every cut, one byte at a time included, lands inside the
        // multi-byte characters somewhere.
        for size in 1..=stream.len() {
            assert_eq!(read(stream.as_bytes(), size), expected, "chunks of {size}");
        }
    }

    #[test]
    fn a_stream_that_ends_after_its_blank_line_has_no_extra_event() {
        assert_eq!(read(b"data: x\n\n", 3), vec![event("", "x")]);
        assert_eq!(read(b"", 1), vec![]);
        assert_eq!(read(b"data:\n\n", 2), vec![event("", "")]);
    }
}
