//! HTTP calls to Gemini: generate, count tokens, list models, embed, the
//! Files API (uploads, get, list, delete), and the OpenAI-compatible layer's
//! chat completions and embeddings (forwarded as the client wrote them, with
//! the chosen model and key). Bodies go as JSON text: a generate request's
//! own (a client's bytes where it is passed through), never re-serialised
//! from a tree.

use super::classify::{UpstreamError, classify};
use crate::keys::ApiKey;
use crate::wire::GenerateRequest;
use bytes::Bytes;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;
use std::time::Duration;

/// API version used for the gateway's own calls.
const VERSION: &str = "v1beta";

/// A successful generate answer and what it tells about usage.
#[derive(Clone, Debug)]
pub struct Generated {
    pub body: Value,
    pub input_tokens: Option<u64>,
    pub output_tokens: u64,
}

impl Generated {
    fn from_body(body: Value) -> Self {
        let usage = &body["usageMetadata"];
        Generated {
            input_tokens: usage["promptTokenCount"].as_u64(),
            output_tokens: usage["candidatesTokenCount"].as_u64().unwrap_or(0)
                + usage["thoughtsTokenCount"].as_u64().unwrap_or(0),
            body,
        }
    }

    /// The text of the first candidate, parts joined.
    pub fn text(&self) -> String {
        self.body["candidates"][0]["content"]["parts"]
            .as_array()
            .map(|parts| parts.iter().filter_map(|p| p["text"].as_str()).collect())
            .unwrap_or_default()
    }
}

/// The gateway's HTTP client for an upstream: rustls, a 10 s connect
/// timeout, `timeout` on a whole call, its own user agent. At most
/// [`IDLE_PER_HOST`] idle connections are kept to a host.
pub(super) fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(IDLE_PER_HOST)
        .user_agent(concat!("gemini-flux/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("an HTTP client with rustls")
}

/// Idle connections kept to one upstream host. A burst of calls over
/// HTTP/1.1 (10,000 requests each counting its tokens upstream) opens a
/// connection per call, and an unbounded pool would keep them all for the
/// idle timeout; 64 keeps the steady state's reuse (an HTTP/2 upstream, as
/// Google's, needs one) and lets the rest of a burst go.
const IDLE_PER_HOST: usize = 64;

/// A pooled client for one upstream base URL.
#[derive(Clone)]
pub struct Upstream {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
}

impl Upstream {
    /// `timeout` bounds a whole call; large prompts take long, so keep it generous.
    pub fn new(base_url: &str, timeout: Duration) -> Self {
        Upstream {
            http: http_client(timeout),
            base: base_url.trim_end_matches('/').to_string(),
            timeout,
        }
    }

    /// The bound on one call (`FLUX_UPSTREAM_TIMEOUT_S`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn url(&self, model: &str, action: &str) -> String {
        format!("{}/{VERSION}/models/{model}:{action}", self.base)
    }

    /// The OpenAI-compatible layer's `path` (`chat/completions`, `embeddings`).
    fn openai_url(&self, path: &str) -> String {
        format!("{}/{VERSION}/openai/{path}", self.base)
    }

    /// Sends `body`, JSON text, to `url` with the key as `auth` says; an
    /// answer that is not a success is classified.
    async fn send(
        &self,
        key: &ApiKey,
        auth: Auth,
        url: String,
        body: impl Into<reqwest::Body>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let response = self
            .http
            .post(url)
            .header(auth.name(), key_header(key, auth))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let bytes = response.bytes().await.map_err(transport_error)?;
            return Err(classify(status, &bytes));
        }
        Ok(response)
    }

    /// POSTs `body`, JSON text, on Gemini's own API: its JSON answer.
    async fn post(
        &self,
        key: &ApiKey,
        url: String,
        body: impl Into<reqwest::Body>,
    ) -> Result<Value, UpstreamError> {
        read_json(self.send(key, Auth::Goog, url, body).await?).await
    }

    /// `:generateContent` with a `GenerateContentRequest` body.
    pub async fn generate(
        &self,
        key: &ApiKey,
        model: &str,
        request: &GenerateRequest,
    ) -> Result<Generated, UpstreamError> {
        let body = self
            .post(key, self.url(model, "generateContent"), request.json())
            .await?;
        Ok(Generated::from_body(body))
    }

    /// `:streamGenerateContent?alt=sse`: once the upstream has accepted the
    /// call (2xx), the response whose body is the event stream.
    pub async fn stream_generate(
        &self,
        key: &ApiKey,
        model: &str,
        request: &GenerateRequest,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = format!("{}?alt=sse", self.url(model, "streamGenerateContent"));
        self.send(key, Auth::Goog, url, request.json()).await
    }

    /// `:embedContent` (a body with `content`) or `:batchEmbedContents` (a
    /// body with `requests`), answer as is.
    pub async fn embed(
        &self,
        key: &ApiKey,
        model: &str,
        request: &Value,
    ) -> Result<Value, UpstreamError> {
        let action = if request.get("requests").is_some() {
            "batchEmbedContents"
        } else {
            "embedContent"
        };
        self.post(key, self.url(model, action), json_text(request))
            .await
    }

    /// The OpenAI-compatible layer's `path` (`chat/completions`,
    /// `embeddings`) with the client's body on `model`: once the upstream has
    /// accepted the call, its response (the event stream of a body with
    /// `"stream": true`).
    pub async fn openai(
        &self,
        key: &ApiKey,
        path: &str,
        model: &str,
        body: &Value,
    ) -> Result<reqwest::Response, UpstreamError> {
        let body = json_text(&OnModel { model, body });
        self.send(key, Auth::Bearer, self.openai_url(path), body)
            .await
    }

    /// The same, its JSON answer as is.
    pub async fn openai_json(
        &self,
        key: &ApiKey,
        path: &str,
        model: &str,
        body: &Value,
    ) -> Result<Value, UpstreamError> {
        read_json(self.openai(key, path, model, body).await?).await
    }

    /// `:countTokens` with the caller's own body (JSON text, passed on as it
    /// came), answer passed back as is.
    pub async fn count_tokens_raw(
        &self,
        key: &ApiKey,
        model: &str,
        body: Bytes,
    ) -> Result<Value, UpstreamError> {
        self.post(key, self.url(model, "countTokens"), body).await
    }

    /// `method url` without a body, on `key`: its JSON answer.
    async fn bodiless(
        &self,
        key: &ApiKey,
        method: reqwest::Method,
        url: String,
    ) -> Result<Value, UpstreamError> {
        let response = self
            .http
            .request(method, url)
            .header(Auth::Goog.name(), key_header(key, Auth::Goog))
            .send()
            .await
            .map_err(transport_error)?;
        read_json(response).await
    }

    /// `GET /v1beta/models…` (`path` after `models`, with its query), as is.
    pub async fn get_models(&self, key: &ApiKey, path: &str) -> Result<Value, UpstreamError> {
        let url = format!("{}/{VERSION}/models{path}", self.base);
        self.bodiless(key, reqwest::Method::GET, url).await
    }

    /// `:countTokens` for a whole `GenerateContentRequest` (free of generate quota).
    pub async fn count_tokens(
        &self,
        key: &ApiKey,
        model: &str,
        request: &GenerateRequest,
    ) -> Result<u64, UpstreamError> {
        let body = request.count_tokens_body(model);
        let answer = self.post(key, self.url(model, "countTokens"), body).await?;
        answer["totalTokens"]
            .as_u64()
            .ok_or_else(|| UpstreamError::Transient {
                status: None,
                message: "countTokens answered without totalTokens".into(),
            })
    }

    /// One free `countTokens` on `key`: whether the key itself is refused.
    /// Start-up validates every key with it, and a refusal that names the
    /// key is confirmed with it before the key is taken out.
    pub async fn check_key(&self, key: &ApiKey, model: &str) -> Result<(), UpstreamError> {
        let probe = GenerateRequest::from_value(
            &serde_json::json!({"contents": [{"role": "user", "parts": [{"text": "ping"}]}]}),
        );
        self.count_tokens(key, model, &probe).await.map(drop)
    }

    /// Every model the key can use for `generateContent`, following all pages.
    pub async fn list_generation_models(&self, key: &ApiKey) -> Result<Vec<String>, UpstreamError> {
        let mut models = Vec::new();
        let mut page_token = String::new();
        for _ in 0..100 {
            let response = self
                .http
                .get(format!("{}/{VERSION}/models", self.base))
                .query(&[("pageSize", "1000"), ("pageToken", page_token.as_str())])
                .header(Auth::Goog.name(), key_header(key, Auth::Goog))
                .send()
                .await
                .map_err(transport_error)?;
            let page = read_json(response).await?;
            for m in page["models"].as_array().map_or(&[][..], Vec::as_slice) {
                let generates = m["supportedGenerationMethods"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|x| x == "generateContent"));
                if let (true, Some(name)) = (generates, m["name"].as_str()) {
                    models.push(name.trim_start_matches("models/").to_string());
                }
            }
            match page["nextPageToken"].as_str() {
                Some(t) if !t.is_empty() => page_token = t.to_string(),
                _ => break,
            }
        }
        Ok(models)
    }
}

/// An answer of the upstream's Files API relayed as it came (the upload
/// protocol's answers carry what the client needs in their headers, errors
/// included: `X-Goog-Upload-Status`, `X-Goog-Upload-Size-Received`).
#[derive(Debug)]
pub struct Relayed {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

/// The Files API. Its calls spend no generate quota, so they are not
/// scheduled: they go straight to the key they are for.
impl Upstream {
    /// Where a resumable upload starts.
    pub fn upload_start_url(&self) -> String {
        format!("{}/upload/{VERSION}/files", self.base)
    }

    /// Whether `url` (an `X-Goog-Upload-URL` the upstream gave) is on the
    /// upstream itself: a key is never sent anywhere else.
    pub fn is_upstream_url(&self, url: &str) -> bool {
        url.strip_prefix(&self.base)
            .is_some_and(|rest| rest.starts_with('/'))
    }

    /// One call of the resumable upload protocol (the start, or a chunk)
    /// to `url` on `key`, its answer relayed whatever its status.
    pub async fn upload(
        &self,
        key: &ApiKey,
        url: &str,
        headers: reqwest::header::HeaderMap,
        body: bytes::Bytes,
    ) -> Result<Relayed, UpstreamError> {
        if !self.is_upstream_url(url) {
            return Err(UpstreamError::Transient {
                status: None,
                message: "the upstream named an upload URL that is not its own".into(),
            });
        }
        let response = self
            .http
            .post(url)
            .headers(headers)
            .header(Auth::Goog.name(), key_header(key, Auth::Goog))
            .body(body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(transport_error)?;
        Ok(Relayed {
            status,
            headers,
            body,
        })
    }

    /// `GET` or `DELETE /v1beta/files{path}` (`path` with its query), as is.
    pub async fn files(
        &self,
        key: &ApiKey,
        method: reqwest::Method,
        path: &str,
    ) -> Result<Value, UpstreamError> {
        let url = format!("{}/{VERSION}/files{path}", self.base);
        self.bodiless(key, method, url).await
    }
}

/// How a call presents the key: Gemini's own header, the bearer token the
/// OpenAI-compatible layer (and every OpenAI-compatible provider) reads, or
/// Anthropic's `x-api-key`.
#[derive(Clone, Copy)]
pub(super) enum Auth {
    Goog,
    Bearer,
    XApiKey,
}

impl Auth {
    /// The header that carries the key.
    pub(super) fn name(self) -> &'static str {
        match self {
            Auth::Goog => "x-goog-api-key",
            Auth::Bearer => "authorization",
            Auth::XApiKey => "x-api-key",
        }
    }
}

/// The key as `auth`'s header value, marked sensitive so that HTTP-level
/// debug output shows `Sensitive` in its place.
pub(super) fn key_header(key: &ApiKey, auth: Auth) -> reqwest::header::HeaderValue {
    use reqwest::header::HeaderValue;
    let value = match auth {
        Auth::Goog | Auth::XApiKey => HeaderValue::from_str(key.expose()),
        Auth::Bearer => HeaderValue::from_str(&format!("Bearer {}", key.expose())),
    };
    let mut value = value.unwrap_or_else(|_| HeaderValue::from_static("invalid-key-characters"));
    value.set_sensitive(true);
    value
}

/// A client's OpenAI-format body with `model` set to the one planned: its
/// own `model` is left out and every other field passes as it came.
pub(super) struct OnModel<'a> {
    pub(super) model: &'a str,
    pub(super) body: &'a Value,
}

impl Serialize for OnModel<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("model", self.model)?;
        for (name, value) in self.body.as_object().into_iter().flatten() {
            if name != "model" {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

/// `body` as JSON text, for the calls whose body is built as a tree (the
/// OpenAI layer's and embeddings).
pub(super) fn json_text(body: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(body).expect("a JSON tree always serialises")
}

/// The JSON body of an answer; a non-success is classified.
pub async fn read_json(response: reqwest::Response) -> Result<Value, UpstreamError> {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(transport_error)?;
    if !(200..300).contains(&status) {
        return Err(classify(status, &bytes));
    }
    serde_json::from_slice(&bytes).map_err(|e| UpstreamError::Transient {
        status: Some(status),
        message: format!("the answer was not JSON: {e}"),
    })
}

/// Timeouts and cut-off bodies: the call may or may not have reached Gemini,
/// so they count as transient. A connection that was never made (refused,
/// DNS, TLS) means Gemini saw nothing.
pub(crate) fn transport_error(e: reqwest::Error) -> UpstreamError {
    // Without the URL: the upstream's address is not the client's business.
    if e.is_connect() && !e.is_timeout() {
        return UpstreamError::Unreached {
            message: format!("could not connect: {}", e.without_url()),
        };
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else {
        "connection failed"
    };
    UpstreamError::Transient {
        status: None,
        message: format!("{kind}: {}", e.without_url()),
    }
}
