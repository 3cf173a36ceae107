//! The Files API's wire facts that the gateway and the simulator share: the
//! resumable upload's headers, how long a file lives, what a file id looks
//! like, and which files a generate request names (`fileData.fileUri`).

use super::tokens::Scan;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

/// A file is kept this long after its upload, unless the upstream says
/// otherwise in its `expirationTime`.
pub const FILE_LIFETIME: Duration = Duration::from_secs(48 * 3_600);

/// The resumable upload's headers (google-genai sends them in this case;
/// HTTP header names are case-insensitive).
pub const UPLOAD_PROTOCOL: &str = "x-goog-upload-protocol";
pub const UPLOAD_COMMAND: &str = "x-goog-upload-command";
pub const UPLOAD_OFFSET: &str = "x-goog-upload-offset";
pub const UPLOAD_URL: &str = "x-goog-upload-url";
pub const UPLOAD_STATUS: &str = "x-goog-upload-status";
pub const UPLOAD_SIZE_RECEIVED: &str = "x-goog-upload-size-received";
pub const UPLOAD_CHUNK_GRANULARITY: &str = "x-goog-upload-chunk-granularity";
pub const UPLOAD_HEADER_CONTENT_LENGTH: &str = "x-goog-upload-header-content-length";
pub const UPLOAD_HEADER_CONTENT_TYPE: &str = "x-goog-upload-header-content-type";

/// Every chunk but the last is a whole multiple of this many bytes.
pub const CHUNK_GRANULARITY: u64 = 8 * 1024 * 1024;

/// A header's value as trimmed text, if it is there and is text.
pub fn header_text<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// A file id (the part after `files/`): lowercase letters, digits and
/// dashes, at most 40 characters, neither starting nor ending with a dash.
pub fn valid_file_id(id: &str) -> bool {
    (1..=40).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
}

/// The file id a `fileUri` names (`https://…/v1beta/files/{id}` or
/// `files/{id}`); `None` for any other URI (a YouTube link, a web page).
pub fn file_id_of(uri: &str) -> Option<&str> {
    let (before, id) = uri.rsplit_once("files/")?;
    let id = id.split(['?', '#']).next().unwrap_or(id);
    let whole_segment = before.is_empty() || before.ends_with('/');
    (whole_segment && valid_file_id(id)).then_some(id)
}

/// The ids of the uploaded files among `uris` (the `fileData.fileUri`s of
/// a request, as [`Scan`] finds them), in order, each once.
pub fn file_ids(uris: &[String]) -> Vec<&str> {
    let mut seen = HashSet::new();
    uris.iter()
        .filter_map(|uri| file_id_of(uri))
        .filter(|id| seen.insert(*id))
        .collect()
}

/// [`file_ids`] of a `GenerateContentRequest` (or a `countTokens` body that
/// wraps one) held as a `Value`.
pub fn file_ids_of(request: &Value) -> Vec<String> {
    let uris = Scan::of(request)
        .map(|scan| scan.file_uris)
        .unwrap_or_default();
    file_ids(&uris).into_iter().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_file_uri_names_its_id_and_nothing_else_does() {
        let real = "https://generativelanguage.googleapis.com/v1beta/files/abc-123";
        assert_eq!(file_id_of(real), Some("abc-123"));
        assert_eq!(file_id_of("files/xyz"), Some("xyz"));
        assert_eq!(
            file_id_of("https://www.youtube.com/watch?v=9hE5-98ZeCg"),
            None
        );
        assert_eq!(file_id_of("https://example.com/files/report.pdf"), None);
        assert_eq!(file_id_of("https://example.com/myfiles/abc"), None);
        assert_eq!(file_id_of("files/UPPER"), None);
        assert_eq!(file_id_of(&format!("files/{}", "a".repeat(41))), None);
    }

    #[test]
    fn every_file_of_a_request_is_found_once_in_either_case() {
        let request = json!({
            "contents": [
                {"role": "user", "parts": [
                    {"fileData": {"fileUri": "https://g/v1beta/files/one", "mimeType": "text/plain"}},
                    {"text": "and"},
                    {"file_data": {"file_uri": "files/two"}}]},
                {"role": "user", "parts": [{"fileData": {"fileUri": "files/one"}}]}],
            "system_instruction": {"parts": [{"fileData": {"fileUri": "files/three"}}]}
        });
        assert_eq!(file_ids_of(&request), vec!["one", "two", "three"]);
        let count = json!({"generateContentRequest": {"contents": [{"parts": [{"fileData": {"fileUri": "files/four"}}]}]}});
        assert_eq!(file_ids_of(&count), vec!["four"]);
        assert!(file_ids_of(&json!({"contents": "just text"})).is_empty());
    }
}
