//! `POST /generate`: the seed's simple surface. A prompt in, text out, with
//! the decision (key, model, wait) reported alongside.

use super::AppState;
use super::dispatch::{self, Failure, Job, Meta};
use super::error::{ApiError, Gemini, JsonBody, Refusal, Surface, whole_number};
use crate::policy::Mode;
use crate::scheduler::{KeyChoice, KeyIndex, PlanError, Priority, Target};
use crate::upstream::Generated;
use crate::wire::GenerateRequest;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::alphabet::STANDARD as BASE64_ALPHABET;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

pub fn routes() -> Router<AppState> {
    Router::new().route("/generate", post(generate))
}

#[derive(Deserialize)]
struct GenerateBody {
    prompt: String,
    system: Option<String>,
    images: Option<Vec<Attachment>>,
    files: Option<Vec<Attachment>>,
    model: Option<String>,
    mode: Option<String>,
    /// 1-based, as `/status` shows keys.
    #[serde(default, deserialize_with = "whole_number")]
    preferred_key: Option<u64>,
    #[serde(default, deserialize_with = "whole_number")]
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    max_wait_s: Option<f64>,
    retry: Option<bool>,
}

/// Standard base64, read as leniently as Google reads it: padding optional,
/// stray trailing bits ignored.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &BASE64_ALPHABET,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// An image or file: bare base64 (or a `data:` URL), or with its MIME type.
#[derive(Deserialize)]
#[serde(untagged)]
enum Attachment {
    Data(String),
    Typed {
        data: String,
        #[serde(alias = "mimeType")]
        mime_type: Option<String>,
    },
}

impl Attachment {
    /// The `inlineData` part, with the MIME type given or sniffed.
    fn into_part(self, what: &str, n: usize) -> Result<Value, ApiError> {
        let (data, given) = match self {
            Attachment::Data(d) => (d, None),
            Attachment::Typed { data, mime_type } => (data, mime_type),
        };
        // The text is moved and trimmed in place, never copied: an
        // attachment may be most of a 20 MB body.
        let mut data = data;
        let data_url = data
            .strip_prefix("data:")
            .and_then(|rest| rest.split_once(";base64,"))
            .map(|(mime, payload)| (mime.to_string(), data.len() - payload.len()));
        let data_url_type = data_url.map(|(mime, start)| {
            data.drain(..start);
            mime
        });
        data.retain(|c| !c.is_whitespace());
        let bytes = LENIENT_BASE64
            .decode(&data)
            .map_err(|e| ApiError::bad_request(format!("{what}[{n}] is not valid base64: {e}")))?;
        if bytes.is_empty() {
            return Err(ApiError::bad_request(format!("{what}[{n}] is empty")));
        }
        let mime = given
            .or(data_url_type)
            .unwrap_or_else(|| sniff_mime(&bytes).to_string());
        let inline = object([("mimeType", mime.into()), ("data", data.into())]);
        Ok(object([("inlineData", inline)]))
    }
}

/// A JSON object of `members`, moved in.
fn object<const N: usize>(members: [(&str, Value); N]) -> Value {
    Value::Object(
        members
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect(),
    )
}

/// The MIME type of the formats Gemini accepts inline, from their magic bytes.
fn sniff_mime(bytes: &[u8]) -> &'static str {
    match bytes {
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [0xFF, 0xD8, 0xFF, ..] => "image/jpeg",
        [b'G', b'I', b'F', b'8', ..] => "image/gif",
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => "image/webp",
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'A',
            b'V',
            b'E',
            ..,
        ] => "audio/wav",
        [b'%', b'P', b'D', b'F', ..] => "application/pdf",
        [b'I', b'D', b'3', ..] => "audio/mpeg",
        _ if std::str::from_utf8(bytes).is_ok() => "text/plain",
        _ => "application/octet-stream",
    }
}

impl GenerateBody {
    /// Validates every field and builds the job; any mistake is a 400.
    fn into_job(self, state: &AppState) -> Result<Job, ApiError> {
        if self.prompt.trim().is_empty() {
            return Err(ApiError::bad_request("prompt is empty"));
        }
        let target = match (self.model, self.mode) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request("give model or mode, not both"));
            }
            (Some(m), None) => Target::Model(m),
            (None, Some(mode)) => {
                Target::Chain(Some(mode.parse::<Mode>().map_err(ApiError::bad_request)?))
            }
            (None, None) => Target::Chain(None),
        };
        let keys = match self.preferred_key {
            None => KeyChoice::Any,
            Some(n) => match KeyIndex::from_one_based(n).filter(|k| k.get() < state.keys.len()) {
                Some(key) => KeyChoice::Prefer(key),
                None => {
                    return Err(ApiError::bad_request(format!(
                        "preferred_key {n} does not exist: keys are numbered 1 to {}",
                        state.keys.len()
                    )));
                }
            },
        };
        let mut config = serde_json::Map::new();
        match self.max_tokens {
            Some(0) => return Err(ApiError::bad_request("max_tokens must be at least 1")),
            Some(n) => {
                config.insert("maxOutputTokens".into(), json!(n));
            }
            None => {}
        }
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(ApiError::bad_request("temperature must be between 0 and 2"));
            }
            config.insert("temperature".into(), json!(t));
        }
        let max_wait = match self.max_wait_s {
            None => state.max_wait,
            Some(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s.min(30.0 * 86_400.0)),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "max_wait_s must be a non-negative number of seconds",
                ));
            }
        };
        // Built by moving the texts in (`json!` would copy each one).
        let mut parts = vec![object([("text", self.prompt.into())])];
        for (what, list) in [("images", self.images), ("files", self.files)] {
            for (n, a) in list.unwrap_or_default().into_iter().enumerate() {
                parts.push(a.into_part(what, n)?);
            }
        }
        let content = object([("role", "user".into()), ("parts", parts.into())]);
        let mut request = object([("contents", vec![content].into())]);
        if let Some(system) = self.system.filter(|s| !s.trim().is_empty()) {
            let text = object([("text", system.into())]);
            request["systemInstruction"] = object([("parts", vec![text].into())]);
        }
        if !config.is_empty() {
            request["generationConfig"] = Value::Object(config);
        }
        Ok(Job {
            request: GenerateRequest::from_value(&request),
            target,
            keys,
            requests: 1,
            max_wait,
            retry: self.retry.unwrap_or(true),
            priority: Priority::Interactive,
        })
    }
}

/// `/generate`: Gemini's envelope, as the Gemini-native routes write it,
/// but a model outside the chain is the caller's bad argument (400), not a
/// missing resource.
pub(super) struct Seed;

impl Surface for Seed {
    fn answer(failure: Failure) -> Response {
        match &failure {
            Failure::Plan(refused) if matches!(refused.error, PlanError::UnknownModel(_)) => {
                ApiError::bad_request(refused.message()).into_response()
            }
            _ => Gemini::answer(failure),
        }
    }
}

type FluxError = Refusal<Seed>;

async fn generate(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<GenerateBody>,
) -> Result<Response, FluxError> {
    let job = body.into_job(&state)?;
    let request_id = format!("{:016x}", rand::random::<u64>());
    let served = dispatch::generate(&state, job).await?;
    Ok(answer(&served.reply, &served.meta, request_id))
}

fn answer(generated: &Generated, o: &Meta, request_id: String) -> Response {
    let candidate = &generated.body["candidates"][0];
    let body = json!({
        "response": generated.text(),
        "key_used": o.key,
        "key_fingerprint": o.fingerprint,
        "model_used": o.model,
        "tokens_used": o.input_tokens + generated.output_tokens,
        "input_tokens": o.input_tokens,
        "output_tokens": generated.output_tokens,
        "wait_applied": o.waited.as_secs_f64(),
        "retried": o.retried,
        "attempts": o.attempts,
        "request_id": request_id,
        "finish_reason": candidate["finishReason"],
        "block_reason": generated.body["promptFeedback"]["blockReason"],
    });
    let mut response = Json(body).into_response();
    flux_headers(response.headers_mut(), o);
    response
}

/// `x-flux-key`, `x-flux-model`, `x-flux-wait-ms` on every proxied answer.
pub fn flux_headers(headers: &mut HeaderMap, o: &Meta) {
    headers.insert("x-flux-key", HeaderValue::from(o.key.one_based()));
    if let Ok(model) = HeaderValue::from_str(&o.model) {
        headers.insert("x-flux-model", model);
    }
    headers.insert(
        "x-flux-wait-ms",
        HeaderValue::from(o.waited.as_millis() as u64),
    );
}

#[cfg(test)]
mod tests {
    use super::sniff_mime;

    #[test]
    fn mime_types_are_sniffed_from_magic_bytes() {
        assert_eq!(sniff_mime(b"\x89PNG\r\n\x1a\n...."), "image/png");
        assert_eq!(sniff_mime(b"\xFF\xD8\xFF\xE0"), "image/jpeg");
        assert_eq!(sniff_mime(b"%PDF-1.7"), "application/pdf");
        assert_eq!(sniff_mime(b"RIFF1234WEBPVP8 "), "image/webp");
        assert_eq!(sniff_mime(b"hello"), "text/plain");
        assert_eq!(sniff_mime(&[0, 159, 146, 150]), "application/octet-stream");
    }
}
