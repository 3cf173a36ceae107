//! The deterministic prompt-token count: `ceil(characters / 4)` over every text
//! part of `contents` and `systemInstruction`, plus 258 per inline-data part,
//! at least 1.
//!
//! The simulator counts with it (so tests can predict every number), and the
//! gateway uses it as its local estimate when `countTokens` is unavailable.
//! Real Gemini tokenises English at roughly four characters a token.
//!
//! The count is gathered while serde walks the request ([`Scan`]), so the
//! same rules read a `serde_json::Value` (the simulator's) and the JSON text
//! of a client's body, borrowed, without building a tree of it: a body of
//! 20 MB costs no more than its text.

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::fmt;

/// Tokens Gemini charges for one image or other inline-data part.
pub const INLINE_DATA_TOKENS: u64 = 258;

/// Counts the prompt tokens of a `GenerateContentRequest` (camelCase or snake_case).
pub fn prompt_tokens(request: &Value) -> u64 {
    // A `Value` always reads; anything but an object counts as empty.
    Scan::of(request).map_or(1, |scan| scan.tokens)
}

/// What the gateway needs to know of a `GenerateContentRequest`, found in
/// one pass over it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// The local token estimate (see the module doc).
    pub tokens: u64,
    /// The object has a top-level `model` member.
    pub names_model: bool,
    /// The object has no member at all (`{}`).
    pub empty: bool,
    /// Every `fileData.fileUri` (or snake case) of its contents and system
    /// instruction, and of a `generateContentRequest` it wraps (a
    /// `countTokens` body), in order: the uploaded files a call names.
    pub file_uris: Vec<String>,
    /// `generationConfig.maxOutputTokens`: what a call reserves of an
    /// output-token quota (0 when it names none).
    pub most_output_tokens: u64,
}

impl Scan {
    /// Reads a request from any deserializer: `serde_json`'s over text, or a
    /// `&Value`. Fails on anything but a JSON object, or malformed JSON.
    pub fn of<'de, D: Deserializer<'de>>(request: D) -> Result<Scan, D::Error> {
        request.deserialize_map(RequestVisitor)
    }

    /// Reads the JSON text of a request without building it in memory.
    pub fn of_json(json: &[u8]) -> Result<Scan, serde_json::Error> {
        let mut reader = serde_json::Deserializer::from_slice(json);
        let scan = Scan::of(&mut reader)?;
        reader.end()?;
        Ok(scan)
    }
}

/// Characters of text, inline-data parts and file URIs seen so far.
#[derive(Default, Clone)]
struct Tally {
    chars: u64,
    inline_parts: u64,
    file_uris: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.chars += other.chars;
        self.inline_parts += other.inline_parts;
        self.file_uris.extend(other.file_uris);
    }

    /// What one part adds: inline data counts once, under either spelling.
    fn one_part(mut self) -> Tally {
        self.inline_parts = self.inline_parts.min(1);
        self
    }

    fn tokens(&self) -> u64 {
        (self.chars.div_ceil(4) + self.inline_parts * INLINE_DATA_TOKENS).max(1)
    }
}

/// How one kind of value counts, by its shape: a string, a list or an
/// object; a shape it does not name (and every number, boolean or null)
/// counts as nothing. [`ByShape`] walks a value with it.
trait Shape: Copy {
    type Count: Default;

    fn string(self, _text: &str) -> Self::Count {
        Self::Count::default()
    }

    fn list<'de, A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Count, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Self::Count::default())
    }

    fn object<'de, A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Count, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Self::Count::default())
    }
}

/// A [`Shape`] as serde's seed and visitor.
#[derive(Clone, Copy)]
struct ByShape<S>(S);

impl<'de, S: Shape> DeserializeSeed<'de> for ByShape<S> {
    type Value = S::Count;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Count, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: Shape> Visitor<'de> for ByShape<S> {
    type Value = S::Count;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<S::Count, E> {
        Ok(S::Count::default())
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<S::Count, E> {
        Ok(S::Count::default())
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<S::Count, E> {
        Ok(S::Count::default())
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<S::Count, E> {
        Ok(S::Count::default())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<S::Count, E> {
        Ok(S::Count::default())
    }
    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<S::Count, E> {
        Ok(self.0.string(text))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<S::Count, A::Error> {
        self.0.list(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<S::Count, A::Error> {
        self.0.object(map)
    }
}

/// Adds up a list whose every element `shape` counts.
fn sum<'de, A: SeqAccess<'de>>(
    mut seq: A,
    shape: impl Shape<Count = Tally>,
) -> Result<Tally, A::Error> {
    let mut tally = Tally::default();
    while let Some(one) = seq.next_element_seed(ByShape(shape))? {
        tally.add(one);
    }
    Ok(tally)
}

/// The member names that matter, read without copying a name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Name {
    Contents,
    SystemInstruction,
    SystemInstructionSnake,
    Model,
    Parts,
    Text,
    InlineData,
    FileData,
    FileUri,
    Wrapped,
    GenerationConfig,
    MaxOutputTokens,
    Other,
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        struct NameVisitor;
        impl Visitor<'_> for NameVisitor {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Name, E> {
                Ok(match name {
                    "contents" => Name::Contents,
                    "systemInstruction" => Name::SystemInstruction,
                    "system_instruction" => Name::SystemInstructionSnake,
                    "model" => Name::Model,
                    "parts" => Name::Parts,
                    "text" => Name::Text,
                    "inlineData" | "inline_data" => Name::InlineData,
                    "fileData" | "file_data" => Name::FileData,
                    "fileUri" | "file_uri" => Name::FileUri,
                    "generateContentRequest" | "generate_content_request" => Name::Wrapped,
                    "generationConfig" | "generation_config" => Name::GenerationConfig,
                    "maxOutputTokens" | "max_output_tokens" => Name::MaxOutputTokens,
                    _ => Name::Other,
                })
            }
        }
        d.deserialize_identifier(NameVisitor)
    }
}

/// The top level: `contents`, the system instruction (camelCase wins over
/// snake_case when both are there), whether `model` is named, and the files
/// of a request it wraps.
struct RequestVisitor;

impl<'de> Visitor<'de> for RequestVisitor {
    type Value = Scan;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object (a GenerateContentRequest)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scan, A::Error> {
        let mut contents = Tally::default();
        let (mut camel, mut snake) = (None, None);
        let mut wrapped = Vec::new();
        let mut names_model = false;
        let mut empty = true;
        let mut most_output_tokens = 0;
        while let Some(name) = map.next_key::<Name>()? {
            empty = false;
            match name {
                Name::GenerationConfig => {
                    most_output_tokens = map.next_value::<GenerationConfig>()?.most_output_tokens
                }
                Name::Contents => contents.add(map.next_value_seed(ByShape(Contents))?),
                Name::SystemInstruction => camel = Some(map.next_value_seed(ByShape(Content))?),
                Name::SystemInstructionSnake => {
                    snake = Some(map.next_value_seed(ByShape(Content))?)
                }
                Name::Wrapped => wrapped.extend(map.next_value_seed(ByShape(Wrapped))?),
                other => {
                    names_model |= other == Name::Model;
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        contents.add(camel.or(snake).unwrap_or_default());
        contents.file_uris.extend(wrapped);
        Ok(Scan {
            tokens: contents.tokens(),
            names_model,
            empty,
            file_uris: contents.file_uris,
            most_output_tokens,
        })
    }
}

/// `generationConfig`, of which only `maxOutputTokens` matters here; a value
/// that is not a whole number is left for the upstream to refuse.
struct GenerationConfig {
    most_output_tokens: u64,
}

impl<'de> Deserialize<'de> for GenerationConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<GenerationConfig, D::Error> {
        struct ConfigVisitor;
        impl<'de> Visitor<'de> for ConfigVisitor {
            type Value = GenerationConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a generationConfig object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut most_output_tokens = 0;
                while let Some(name) = map.next_key::<Name>()? {
                    match name {
                        Name::MaxOutputTokens => {
                            let value = map.next_value::<serde_json::Value>()?;
                            most_output_tokens = value.as_u64().unwrap_or(0);
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(GenerationConfig { most_output_tokens })
            }
        }
        d.deserialize_map(ConfigVisitor)
    }
}

/// `generateContentRequest` in a `countTokens` body: only its files count
/// (its tokens are the upstream's to count).
#[derive(Clone, Copy)]
struct Wrapped;

impl Shape for Wrapped {
    type Count = Vec<String>;

    fn object<'de, A: MapAccess<'de>>(self, map: A) -> Result<Vec<String>, A::Error> {
        RequestVisitor.visit_map(map).map(|scan| scan.file_uris)
    }
}

/// `contents`: a list of contents, or one content on its own.
#[derive(Clone, Copy)]
struct Contents;

impl Shape for Contents {
    type Count = Tally;

    fn string(self, text: &str) -> Tally {
        Content.string(text)
    }

    fn list<'de, A: SeqAccess<'de>>(self, seq: A) -> Result<Tally, A::Error> {
        sum(seq, Content)
    }

    fn object<'de, A: MapAccess<'de>>(self, map: A) -> Result<Tally, A::Error> {
        Content.object(map)
    }
}

/// One content: a bare string, an object with `parts`, or (without a
/// `parts` list) an object read as a single part.
#[derive(Clone, Copy)]
struct Content;

impl Shape for Content {
    type Count = Tally;

    fn string(self, text: &str) -> Tally {
        Tally {
            chars: text.chars().count() as u64,
            ..Tally::default()
        }
    }

    fn object<'de, A: MapAccess<'de>>(self, mut map: A) -> Result<Tally, A::Error> {
        let mut parts = None;
        let mut as_part = Tally::default();
        while let Some(name) = map.next_key::<Name>()? {
            match name {
                Name::Parts => parts = map.next_value_seed(ByShape(Parts))?.or(parts),
                other => as_part.add(map.next_value_seed(Member(other))?),
            }
        }
        Ok(parts.unwrap_or(as_part.one_part()))
    }
}

/// `parts`: counted when it is a list (`None` otherwise).
#[derive(Clone, Copy)]
struct Parts;

impl Shape for Parts {
    type Count = Option<Tally>;

    fn list<'de, A: SeqAccess<'de>>(self, seq: A) -> Result<Option<Tally>, A::Error> {
        sum(seq, Part).map(Some)
    }
}

/// One part: its `text` and whether it carries inline data.
#[derive(Clone, Copy)]
struct Part;

impl Shape for Part {
    type Count = Tally;

    fn object<'de, A: MapAccess<'de>>(self, mut map: A) -> Result<Tally, A::Error> {
        let mut tally = Tally::default();
        while let Some(name) = map.next_key::<Name>()? {
            tally.add(map.next_value_seed(Member(name))?);
        }
        Ok(tally.one_part())
    }
}

/// A part's member: `text` counts its characters when it is a string;
/// inline data counts once, whatever it holds; file data gives its URI;
/// anything else nothing.
#[derive(Clone, Copy)]
struct Member(Name);

impl<'de> DeserializeSeed<'de> for Member {
    type Value = Tally;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Tally, D::Error> {
        match self.0 {
            Name::Text => ByShape(Text).deserialize(d),
            Name::FileData => ByShape(FileData).deserialize(d),
            Name::InlineData => {
                IgnoredAny::deserialize(d)?;
                Ok(Tally {
                    inline_parts: 1,
                    ..Tally::default()
                })
            }
            _ => IgnoredAny::deserialize(d).map(|_| Tally::default()),
        }
    }
}

/// A `text` member's value: its characters, if it is a string.
#[derive(Clone, Copy)]
struct Text;

impl Shape for Text {
    type Count = Tally;

    fn string(self, text: &str) -> Tally {
        Content.string(text)
    }
}

/// `fileData`: its `fileUri`, if that is a string.
#[derive(Clone, Copy)]
struct FileData;

impl Shape for FileData {
    type Count = Tally;

    fn object<'de, A: MapAccess<'de>>(self, mut map: A) -> Result<Tally, A::Error> {
        let mut tally = Tally::default();
        while let Some(name) = map.next_key::<Name>()? {
            if name == Name::FileUri {
                tally.add(map.next_value_seed(ByShape(FileUri))?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(tally)
    }
}

/// A `fileUri` member's value.
#[derive(Clone, Copy)]
struct FileUri;

impl Shape for FileUri {
    type Count = Tally;

    fn string(self, uri: &str) -> Tally {
        Tally {
            file_uris: vec![uri.to_string()],
            ..Tally::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The scan of `request`, as a `Value` and as text: the two must agree.
    fn scan(request: serde_json::Value) -> Scan {
        let from_text = Scan::of_json(request.to_string().as_bytes()).unwrap();
        assert_eq!(Scan::of(&request).unwrap(), from_text, "{request}");
        from_text
    }

    fn count(request: serde_json::Value) -> u64 {
        scan(request).tokens
    }

    #[test]
    fn the_most_output_tokens_come_from_the_generation_config() {
        let most = |request| scan(request).most_output_tokens;
        assert_eq!(
            most(json!({"generationConfig": {"maxOutputTokens": 500}})),
            500
        );
        assert_eq!(
            most(json!({"generation_config": {"temperature": 1, "max_output_tokens": 7}})),
            7
        );
        // None named, or not a whole number: nothing reserved (the upstream judges it).
        assert_eq!(most(json!({"contents": []})), 0);
        assert_eq!(
            most(json!({"generationConfig": {"maxOutputTokens": "x"}})),
            0
        );
        assert!(Scan::of_json(br#"{"generationConfig": 3}"#).is_err());
    }

    #[test]
    fn counts_text_system_and_inline_parts() {
        let req = json!({
            "contents": [{"role": "user", "parts": [{"text": "abcdefghi"}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}],
            "systemInstruction": {"parts": [{"text": "xyz"}]}
        });
        // 12 characters -> 3 tokens, plus one image.
        assert_eq!(count(req.clone()), 3 + 258);
        assert_eq!(prompt_tokens(&req), 3 + 258);
    }

    #[test]
    fn snake_case_and_empty_requests() {
        let req = json!({"contents": [{"parts": [{"inline_data": {"mime_type": "image/png", "data": ""}}]}],
                          "system_instruction": {"parts": [{"text": "a"}]}});
        assert_eq!(count(req), 1 + 258);
        assert_eq!(count(json!({"contents": []})), 1);
        // Characters, not bytes.
        assert_eq!(
            count(json!({"contents": [{"parts": [{"text": "éééé"}]}]})),
            1
        );
    }

    #[test]
    fn odd_shapes_count_as_the_rules_say_and_never_fail() {
        // One content on its own, a bare string, a content read as a part.
        assert_eq!(
            count(json!({"contents": {"parts": [{"text": "12345678"}]}})),
            2
        );
        assert_eq!(count(json!({"contents": ["12345678", "1234"]})), 3);
        assert_eq!(
            count(json!({"contents": [{"text": "12345678", "role": "user"}]})),
            2
        );
        // A `parts` list wins over the content's own text; one that is not
        // a list leaves the content read as a part.
        assert_eq!(
            count(json!({"contents": [{"text": "1234", "parts": [{"text": "12345678"}]}]})),
            2
        );
        assert_eq!(
            count(json!({"contents": [{"text": "12345678", "parts": {"x": 1}}]})),
            2
        );
        // camelCase wins over snake_case.
        assert_eq!(
            count(
                json!({"contents": [], "system_instruction": "12345678", "systemInstruction": "1234"})
            ),
            1
        );
        // Everything that is not text or inline data counts for nothing.
        assert_eq!(
            count(
                json!({"contents": [[1, 2], null, 3, {"parts": [7, "x", [], {"text": 5}, {"text": {"a": "bbbbbbbb"}}]}],
                         "tools": [{"text": "12345678"}], "x": [[], []], "model": "m"})
            ),
            1
        );
        // Inline data counts once a part, under either spelling.
        assert_eq!(
            count(json!({"contents": [{"parts": [{"inlineData": {}, "inline_data": {}}]}]})),
            258
        );
        // An escaped string counts its characters once decoded.
        assert_eq!(count(json!({"contents": ["\"\\\n\t\u{1F600}\"\\\n"]})), 2);
    }

    #[test]
    fn file_uris_come_in_order_as_they_are_from_parts_bare_parts_and_a_wrapped_request() {
        // (`wire::files` picks the uploaded files' ids out of them.)
        let request = json!({
            "contents": [
                {"parts": [{"file_data": {"file_uri": "files/two"}}, {"fileData": {"fileUri": 7}}]},
                {"fileData": {"fileUri": "files/bare-part"}}],
            "generateContentRequest": {"contents": [{"parts": [{"fileData": {"fileUri": "files/two"}}]}]}
        });
        let scan = scan(request);
        assert_eq!(
            scan.file_uris,
            ["files/two", "files/bare-part", "files/two"]
        );
        assert_eq!(
            scan.tokens, 1,
            "a wrapped request's tokens are the upstream's to count"
        );
    }

    #[test]
    fn the_scan_says_whether_model_is_named_and_refuses_what_is_not_an_object() {
        let scan = Scan::of_json(br#" {"model": "models/x", "contents": []} "#).unwrap();
        assert!(scan.names_model && !scan.empty);
        let scan = Scan::of_json(b"{}").unwrap();
        assert!(!scan.names_model && scan.empty);
        for bad in [
            &b"[]"[..],
            b"\"x\"",
            b"{\"a\": ",
            b"{} {}",
            b"",
            b"{\"a\":1,}",
        ] {
            assert!(
                Scan::of_json(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
