//! A `GenerateContentRequest` as the JSON text that goes upstream: a
//! client's body passed through as the bytes that came, or one a surface
//! built and serialised once. What the gateway needs to know of it (the
//! local token estimate, whether it names a model, the files it names) is
//! found when it is made, with a borrowed pass over the text ([`Scan`]): no
//! tree of the body is ever built, so a request costs about its own size in
//! memory however it is shaped.

use super::tokens::Scan;
use bytes::Bytes;
use serde_json::Value;

/// See the module doc. Cloning shares the text.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    json: Bytes,
    scan: Scan,
}

impl GenerateRequest {
    /// A client's body, kept as it came; refused if it is not one JSON object.
    pub fn from_json(json: Bytes) -> Result<GenerateRequest, serde_json::Error> {
        let scan = Scan::of_json(&json)?;
        Ok(GenerateRequest { json, scan })
    }

    /// A request a surface built, serialised once, into a buffer of its
    /// exact size (measured first: a doubling buffer would briefly hold up
    /// to twice a big request again).
    ///
    /// # Panics
    /// If `request` is not a JSON object: the surfaces build objects.
    pub fn from_value(request: &Value) -> GenerateRequest {
        let scan = Scan::of(request).expect("a surface builds a JSON object");
        let mut size = Measure(0);
        serde_json::to_writer(&mut size, request).expect("a Value always serialises");
        let mut json = Vec::with_capacity(size.0);
        serde_json::to_writer(&mut json, request).expect("a Value always serialises");
        GenerateRequest {
            json: Bytes::from(json),
            scan,
        }
    }

    /// The text to send upstream (shared, not copied).
    pub fn json(&self) -> Bytes {
        self.json.clone()
    }

    /// The local token estimate (`wire::tokens`).
    pub fn local_tokens(&self) -> u64 {
        self.scan.tokens
    }

    /// `generationConfig.maxOutputTokens`, or 0.
    pub fn most_output_tokens(&self) -> u64 {
        self.scan.most_output_tokens
    }

    /// The `fileData.fileUri`s it names, in order (see [`Scan`]).
    pub fn file_uris(&self) -> &[String] {
        &self.scan.file_uris
    }

    /// The body of a `countTokens` call for this request on `model`:
    /// `{"generateContentRequest": …}` with the model named inside, as the
    /// API requires (the client's own `model`, if it named one, is left as
    /// it is: one member of a name, never two). One copy of the text.
    pub fn count_tokens_body(&self, model: &str) -> Vec<u8> {
        const OPEN: &[u8] = b"{\"generateContentRequest\":";
        let start = self
            .json
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .expect("a scanned request is an object");
        let inner = &self.json[start..];
        let named = if self.scan.names_model {
            String::new()
        } else {
            let model = Value::String(format!("models/{model}"));
            let comma = if self.scan.empty { "" } else { "," };
            format!("{{\"model\":{model}{comma}")
        };
        let mut body = Vec::with_capacity(OPEN.len() + named.len() + inner.len() + 1);
        body.extend_from_slice(OPEN);
        if named.is_empty() {
            body.extend_from_slice(inner);
        } else {
            // `inner` starts with its object's `{`, which `named` replaces.
            body.extend_from_slice(named.as_bytes());
            body.extend_from_slice(&inner[1..]);
        }
        body.push(b'}');
        body
    }
}

/// A writer that only counts what it is given.
struct Measure(usize);

impl std::io::Write for Measure {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn count_body(json: &str, model: &str) -> Value {
        let request = GenerateRequest::from_json(Bytes::copy_from_slice(json.as_bytes())).unwrap();
        serde_json::from_slice(&request.count_tokens_body(model)).unwrap()
    }

    #[test]
    fn the_count_body_wraps_the_request_and_names_the_model_once() {
        assert_eq!(
            count_body(r#" {"contents": [{"parts": [{"text": "hi"}]}]} "#, "m-1"),
            json!({"generateContentRequest": {"model": "models/m-1", "contents": [{"parts": [{"text": "hi"}]}]}})
        );
        assert_eq!(
            count_body("{}", "m-1"),
            json!({"generateContentRequest": {"model": "models/m-1"}})
        );
        let named = r#"{"model": "models/theirs", "contents": []}"#;
        let body = GenerateRequest::from_json(Bytes::from_static(named.as_bytes()))
            .unwrap()
            .count_tokens_body("m-1");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            format!("{{\"generateContentRequest\":{named}}}"),
            "the client's own model stays, and is the only one"
        );
    }

    #[test]
    fn a_client_body_is_kept_as_it_came_and_a_built_one_serialised_once() {
        let text = " {\"contents\": [\"12345678\"]}\n";
        let request = GenerateRequest::from_json(Bytes::from_static(text.as_bytes())).unwrap();
        assert_eq!(request.json(), text.as_bytes());
        assert_eq!(request.local_tokens(), 2);
        assert!(request.file_uris().is_empty());
        let built = GenerateRequest::from_value(&json!({"contents": ["12345678"]}));
        assert_eq!(built.json(), &b"{\"contents\":[\"12345678\"]}"[..]);
        assert_eq!(built.local_tokens(), 2);
        assert!(GenerateRequest::from_json(Bytes::from_static(b"[1]")).is_err());
    }
}
