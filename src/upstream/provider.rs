//! The client for the providers other than Gemini: any OpenAI-compatible API
//! (Groq, OpenRouter, Mistral, Cerebras, OpenAI) and Anthropic's Messages
//! API. A call is one POST of the client's body on the provider's own model
//! name, with the key only in the kind's auth header; every answer's
//! rate-limit headers are read, and an error answer becomes the same
//! [`UpstreamError`] a Gemini call's does.

use super::classify::{UpstreamError, message_of};
use super::client::{Auth, OnModel, http_client, json_text, key_header, transport_error};
use crate::clock::{Clock, Timestamp};
use crate::keys::ApiKey;
use crate::scheduler::Violation;
use crate::wire::anthropic::error_body;
use crate::wire::ratelimit::{self, Reading};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::time::Duration;

/// The `anthropic-version` a call carries when its client named none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Which wire a provider speaks (the providers file's `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The OpenAI wire: `chat/completions`, `embeddings`, a bearer key.
    OpenAi,
    /// Anthropic's Messages API: `v1/messages`, `x-api-key` and
    /// `anthropic-version`.
    Anthropic,
}

impl Kind {
    fn auth(self) -> Auth {
        match self {
            Kind::OpenAi => Auth::Bearer,
            Kind::Anthropic => Auth::XApiKey,
        }
    }
}

/// One provider's API: its name, its wire, its base URL and a pooled client.
///
/// The base URL follows each kind's SDK: an OpenAI-compatible one includes
/// its version (`https://api.groq.com/openai/v1`), so paths are
/// `chat/completions` and `embeddings`; Anthropic's does not
/// (`https://api.anthropic.com`), so the path is `v1/messages`.
#[derive(Clone)]
pub struct ProviderApi {
    name: String,
    kind: Kind,
    base: String,
    http: reqwest::Client,
}

/// A call the provider accepted (2xx): its response, the body unread (a
/// stream's for the caller to relay), and what its headers said of the
/// limits.
#[derive(Debug)]
pub struct ProviderAnswer {
    pub response: reqwest::Response,
    pub readings: Vec<Reading>,
}

/// A call that failed: whose fault, and what the refusal's headers said of
/// the limits (none when no answer came).
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderFailure {
    pub error: UpstreamError,
    pub readings: Vec<Reading>,
}

impl ProviderFailure {
    fn unanswered(error: UpstreamError) -> Self {
        ProviderFailure {
            error,
            readings: Vec::new(),
        }
    }
}

impl ProviderApi {
    /// `timeout` bounds a whole call (`FLUX_UPSTREAM_TIMEOUT_S`).
    pub fn new(name: impl Into<String>, kind: Kind, base_url: &str, timeout: Duration) -> Self {
        ProviderApi {
            name: name.into(),
            kind,
            base: base_url.trim_end_matches('/').to_string(),
            http: http_client(timeout),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// POSTs the client's JSON `body` to `path` (`chat/completions`,
    /// `embeddings`, `v1/messages`) with its `model` set to `model`, the
    /// provider's own name for it; an Anthropic call carries the client's
    /// `anthropic_version`, else [`ANTHROPIC_VERSION`]. The rate-limit
    /// headers' relative resets and a refusal's `retry-after` count from
    /// when the answer arrived, on `clock`.
    pub async fn post(
        &self,
        key: &ApiKey,
        path: &str,
        model: &str,
        body: &Value,
        anthropic_version: Option<&str>,
        clock: Clock,
    ) -> Result<ProviderAnswer, ProviderFailure> {
        let auth = self.kind.auth();
        let mut request = self
            .http
            .post(format!("{}/{}", self.base, path.trim_start_matches('/')))
            .header(auth.name(), key_header(key, auth))
            .header(CONTENT_TYPE, "application/json");
        if self.kind == Kind::Anthropic {
            let version = anthropic_version.unwrap_or(ANTHROPIC_VERSION);
            let Ok(version) = HeaderValue::from_str(version) else {
                let message = "anthropic-version: the header's value is not valid".to_string();
                return Err(ProviderFailure::unanswered(UpstreamError::Client {
                    status: 400,
                    body: error_body(400, &message),
                    message,
                }));
            };
            request = request.header("anthropic-version", version);
        }
        let response = request
            .body(json_text(&OnModel { model, body }))
            .send()
            .await
            .map_err(|e| ProviderFailure::unanswered(transport_error(e)))?;
        let now = clock.now();
        let readings = ratelimit::readings(response.headers(), now);
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(ProviderAnswer { response, readings });
        }
        let headers = response.headers().clone();
        let error = match response.bytes().await {
            Ok(bytes) => classify(status, &headers, &scrubbed(&bytes, key), now),
            Err(e) => transport_error(e),
        };
        Err(ProviderFailure { error, readings })
    }

    /// A free call on `key` (its model list), to confirm a refusal that
    /// named the key before the key is taken out: `Ok` if it is served.
    pub async fn check_key(&self, key: &ApiKey) -> Result<(), UpstreamError> {
        let path = match self.kind {
            Kind::OpenAi => "models",
            Kind::Anthropic => "v1/models",
        };
        let auth = self.kind.auth();
        let mut request = self
            .http
            .get(format!("{}/{path}", self.base))
            .header(auth.name(), key_header(key, auth));
        if self.kind == Kind::Anthropic {
            request = request.header("anthropic-version", ANTHROPIC_VERSION);
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(transport_error)?;
        Err(classify(
            status,
            &headers,
            &scrubbed(&bytes, key),
            Timestamp(0),
        ))
    }
}

/// Whose fault an error answer (`status` not 2xx) was. Both kinds' rules
/// are the same, as both envelopes carry `error.message`:
/// - 429: a quota, the one its message names (with its limit), the wait
///   from `retry-after-ms` or `retry-after`, else from the message;
/// - 401: the key (the dispatcher confirms before taking it out);
/// - 408 and every 5xx (Anthropic's 529 "overloaded" too): transient;
/// - anything else (400, 403, 404, 413, 422…): the client's request, the
///   provider's envelope passed back as it came. A 403 names a model or a
///   feature the account may not use, not the key.
fn classify(status: u16, headers: &HeaderMap, body: &[u8], now: Timestamp) -> UpstreamError {
    let parsed = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = message_of(&parsed, body);
    match status {
        429 => UpstreamError::Quota {
            violations: ratelimit::exceeded(&message)
                .and_then(|exceeded| {
                    exceeded.quota().map(|quota| Violation {
                        quota,
                        limit: exceeded.limit,
                    })
                })
                .into_iter()
                .collect(),
            retry_after: ratelimit::retry_after(headers, now)
                .or_else(|| ratelimit::retry_in(&message)),
            message,
        },
        401 => UpstreamError::KeyInvalid {
            message,
            body: parsed,
        },
        408 | 500..=599 => UpstreamError::Transient {
            status: Some(status),
            message,
        },
        _ => UpstreamError::Client {
            status,
            message,
            body: parsed,
        },
    }
}

/// `body` with the key's text, wherever a provider echoed it, replaced by
/// its fingerprint, before anything is read from it.
fn scrubbed<'a>(body: &'a [u8], key: &ApiKey) -> Cow<'a, [u8]> {
    let secret = key.expose();
    let text = String::from_utf8_lossy(body);
    if secret.is_empty() || !text.contains(secret) {
        return Cow::Borrowed(body);
    }
    Cow::Owned(text.replace(secret, &key.fingerprint()).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Quota;
    use serde_json::json;

    const NOW: Timestamp = Timestamp(1_767_225_600_000); // 2026-01-01T00:00:00Z

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|&(name, value)| {
                (
                    reqwest::header::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    fn of(status: u16, headers: &HeaderMap, body: &Value) -> UpstreamError {
        classify(status, headers, body.to_string().as_bytes(), NOW)
    }

    fn openai(message: &str) -> Value {
        json!({"error": {"message": message, "type": "requests", "code": "rate_limit_exceeded"}})
    }

    #[test]
    fn a_groq_429_names_its_quota_limit_and_the_headers_wait() {
        let message = "Rate limit reached for model `m` in organization `o` service tier `on_demand` \
            on requests per minute (RPM): Limit 2, Used 2, Requested 1. Please try again in 44.5s.";
        assert_eq!(
            of(429, &headers(&[("retry-after", "45")]), &openai(message)),
            UpstreamError::Quota {
                violations: vec![Violation {
                    quota: Quota::RequestsPerMinute,
                    limit: Some(2)
                }],
                retry_after: Some(Duration::from_secs(45)),
                message: message.into(),
            }
        );
        // Without the header, the message's wait; `retry-after-ms` first.
        let day = "on tokens per day (TPD): Limit 100000, Used 99990, Requested 20. Please try again in 1m26.4s.";
        let waits = [
            (headers(&[]), Duration::from_millis(86_400)),
            (
                headers(&[("retry-after", "87"), ("retry-after-ms", "86400")]),
                Duration::from_millis(86_400),
            ),
        ];
        for (h, wait) in waits {
            assert_eq!(
                of(429, &h, &openai(day)),
                UpstreamError::Quota {
                    violations: vec![Violation {
                        quota: Quota::InputTokensPerDay,
                        limit: Some(100_000)
                    }],
                    retry_after: Some(wait),
                    message: day.into(),
                }
            );
        }
    }

    #[test]
    fn an_anthropic_429_names_output_tokens_per_minute() {
        let message = "This request would exceed the rate limit for your organization (o) of 2,000 output tokens per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.";
        let e = of(
            429,
            &headers(&[("retry-after", "60")]),
            &error_body(429, message),
        );
        assert_eq!(e.first_quota(), Some(Quota::OutputTokensPerMinute));
        assert_eq!(
            e,
            UpstreamError::Quota {
                violations: vec![Violation {
                    quota: Quota::OutputTokensPerMinute,
                    limit: Some(2_000)
                }],
                retry_after: Some(Duration::from_secs(60)),
                message: message.into(),
            }
        );
    }

    #[test]
    fn a_429_no_lane_counts_teaches_no_limit() {
        for message in [
            "… of 1,000 requests per hour.",
            "Rate limit exceeded: free-models-per-day",
        ] {
            assert_eq!(
                of(429, &headers(&[]), &openai(message)),
                UpstreamError::Quota {
                    violations: vec![],
                    retry_after: None,
                    message: message.into(),
                },
                "{message}"
            );
        }
    }

    #[test]
    fn a_401_is_the_keys_and_a_403_the_clients() {
        let groq = json!({"error": {"message": "Invalid API Key", "type": "invalid_request_error", "code": "invalid_api_key"}});
        let anthropic = error_body(401, "invalid x-api-key");
        for (body, message) in [(groq, "Invalid API Key"), (anthropic, "invalid x-api-key")] {
            let e = of(401, &headers(&[]), &body);
            assert!(e.is_about_the_key());
            assert_eq!(
                e,
                UpstreamError::KeyInvalid {
                    message: message.into(),
                    body
                }
            );
        }
        let forbidden = error_body(
            403,
            "Your API key does not have permission to use this model.",
        );
        let e = of(403, &headers(&[]), &forbidden);
        assert_eq!(e.penalty(), None, "a 403 never touches the key");
        assert!(matches!(e, UpstreamError::Client { status: 403, .. }));
    }

    #[test]
    fn the_clients_mistakes_go_back_in_the_providers_envelope() {
        for status in [400, 403, 404, 413, 422, 402] {
            let body = error_body(status, "nope");
            assert_eq!(
                of(status, &headers(&[]), &body),
                UpstreamError::Client {
                    status,
                    message: "nope".into(),
                    body: body.clone()
                },
                "{status}"
            );
        }
        // A body that is not JSON: an excerpt of it, and no envelope.
        let html = format!("<html>{}</html>", "x".repeat(1_000));
        match classify(400, &headers(&[]), html.as_bytes(), NOW) {
            UpstreamError::Client {
                status: 400,
                message,
                body: Value::Null,
            } => assert_eq!(message.len(), 300),
            other => panic!("not the client's: {other:?}"),
        }
    }

    #[test]
    fn server_errors_and_anthropics_overload_are_transient() {
        for status in [500, 502, 503, 504, 529, 408] {
            let e = of(status, &headers(&[]), &error_body(status, "Overloaded"));
            assert_eq!(
                e,
                UpstreamError::Transient {
                    status: Some(status),
                    message: "Overloaded".into()
                }
            );
        }
    }

    #[test]
    fn an_echoed_key_is_scrubbed_to_its_fingerprint() {
        let key = ApiKey::new("gsk_secret_key_1234");
        let body = br#"{"error":{"message":"Incorrect API key provided: gsk_secret_key_1234 (twice: gsk_secret_key_1234)"}}"#;
        let clean = scrubbed(body, &key);
        let e = classify(401, &headers(&[]), &clean, NOW);
        let (shown, debug) = (e.to_string(), format!("{e:?}"));
        assert!(!shown.contains(key.expose()) && !debug.contains(key.expose()));
        assert_eq!(
            shown,
            "the key is not valid: Incorrect API key provided: …1234 (twice: …1234)"
        );
        assert!(matches!(scrubbed(b"{}", &key), Cow::Borrowed(_)));
        assert_eq!(&*scrubbed(b"abc", &ApiKey::new("")), b"abc");
    }

    #[test]
    fn the_providers_file_names_its_kind_in_lowercase() {
        let kinds: Vec<Kind> = serde_json::from_str(r#"["openai", "anthropic"]"#).unwrap();
        assert_eq!(kinds, [Kind::OpenAi, Kind::Anthropic]);
        assert!(serde_json::from_str::<Kind>(r#""OpenAi""#).is_err());
    }
}
