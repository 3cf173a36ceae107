//! Errors from gemini-flux itself, in Gemini's envelope with the right status,
//! and the body parsing that produces them (never axum's plain-text 422).
//! The one table from a refused plan to its status and `Retry-After`
//! ([`plan_refusal`]), and each surface's error type, a [`Refusal`] that
//! its [`Surface`] writes in its envelope ([`GeminiError`] here).

use super::dispatch::{Failure, Refused};
use crate::scheduler::PlanError;
use crate::wire::envelope;
use axum::Json;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, Error as _};
use std::marker::PhantomData;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, rounded up).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }
}

/// Gemini's name for each status code we answer with.
pub fn status_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        405 => "METHOD_NOT_ALLOWED",
        408 => "DEADLINE_EXCEEDED",
        409 => "FAILED_PRECONDITION",
        415 => "INVALID_ARGUMENT",
        429 => "RESOURCE_EXHAUSTED",
        501 => "UNIMPLEMENTED",
        502 => "BAD_GATEWAY",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = envelope(
            self.status.as_u16(),
            status_name(self.status),
            &self.message,
            vec![],
        );
        let mut response = (self.status, Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            set_retry_after(response.headers_mut(), wait);
        }
        response
    }
}

/// A refused plan's answer: its status and when to ask again. A model
/// outside the chain is 404, as Gemini and OpenAI say it (`/generate`
/// answers it 400, in `flux`).
pub fn plan_refusal(refused: &Refused) -> ApiError {
    let since = |at: crate::clock::Timestamp| Some(at.since(refused.at));
    let (status, retry_after) = match &refused.error {
        PlanError::TooLarge { .. }
        | PlanError::TooMuchOutput { .. }
        | PlanError::TooManyItems { .. } => (StatusCode::PAYLOAD_TOO_LARGE, None),
        PlanError::WaitTooLong { at, .. } | PlanError::ExhaustedUntil(at) => {
            (StatusCode::TOO_MANY_REQUESTS, since(*at))
        }
        PlanError::NoUsableKey | PlanError::KeyOut(..) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::from_secs(60)),
        ),
        PlanError::UnknownModel(_) => (StatusCode::NOT_FOUND, None),
        PlanError::NoModelInMode(_) => (StatusCode::BAD_REQUEST, None),
        PlanError::SharedStateUnavailable { retry_at, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            since(*retry_at).map(|wait| wait.max(Duration::from_secs(1))),
        ),
    };
    ApiError {
        status,
        message: refused.message(),
        retry_after,
    }
}

/// How a surface answers a refusal: its envelope, and any status of its own.
pub trait Surface {
    fn answer(failure: Failure) -> Response;
}

/// `failure` in an envelope `write` makes from its status and message, with
/// `Retry-After` where the gateway says when to come back (the OpenAI and
/// Anthropic surfaces; Gemini's keeps the upstream's own envelope).
pub fn answer_in(failure: Failure, write: fn(StatusCode, &str) -> Response) -> Response {
    let error = failure.error();
    let mut response = write(error.status, &error.message);
    if let Some(wait) = error.retry_after {
        set_retry_after(response.headers_mut(), wait);
    }
    response
}

/// A refusal on surface `S`, which its handlers return with `?`.
pub struct Refusal<S>(pub Failure, PhantomData<S>);

impl<S> From<Failure> for Refusal<S> {
    fn from(failure: Failure) -> Self {
        Refusal(failure, PhantomData)
    }
}

impl<S> From<ApiError> for Refusal<S> {
    fn from(error: ApiError) -> Self {
        Failure::Flux(error).into()
    }
}

impl<S: Surface> IntoResponse for Refusal<S> {
    fn into_response(self) -> Response {
        S::answer(self.0)
    }
}

/// The Gemini-native routes: Gemini's envelope, the upstream's own as it
/// came, the gateway's with its status and `Retry-After`.
pub struct Gemini;

impl Surface for Gemini {
    fn answer(failure: Failure) -> Response {
        match failure {
            Failure::Client { status, body } => (
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                Json(body),
            )
                .into_response(),
            failure => failure.error().into_response(),
        }
    }
}

pub type GeminiError = Refusal<Gemini>;

/// `Retry-After` in whole seconds, rounded up (at least 1).
pub fn set_retry_after(headers: &mut axum::http::HeaderMap, wait: Duration) {
    let secs = wait.as_millis().div_ceil(1000).max(1) as u64;
    headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
}

/// A request body that is one JSON object, checked without building it in
/// memory (a borrowed parse), kept as the bytes that arrived: every failure
/// is an [`ApiError`]: 415 for a declared content type that is not JSON,
/// 413 over the size limit, 400 for anything malformed or not an object.
pub struct JsonObject(pub axum::body::Bytes);

/// [`JsonObject`] read into `T`: 400 for a field of the wrong shape (a
/// top-level array is refused, though serde would read it as a struct).
pub struct JsonBody<T>(pub T);

/// Refuses a body declared as anything but JSON (`application/json`, or
/// `application/…+json`). `text/plain` and form types are what a web page
/// can send cross-site without a preflight, so they are never read as JSON.
/// No `Content-Type` at all is accepted, as curl and some clients send.
pub fn json_content_type(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || essence.starts_with("application/") && essence.ends_with("+json");
    if json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("the body must be JSON (Content-Type: application/json), not {essence:?}"),
        ))
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        json_content_type(req.headers())?;
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| {
                let status = rejection.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        status,
                        "the request body is larger than FLUX_MAX_BODY_MB allows",
                    )
                } else {
                    ApiError::bad_request(format!("could not read the request body: {rejection}"))
                }
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "the request body is empty; a JSON object is expected",
            ));
        }
        let raw: &serde_json::value::RawValue = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        if !raw.get().starts_with('{') {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        Ok(JsonObject(bytes))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let JsonObject(bytes) = JsonObject::from_request(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Accepts `5` and `5.0`: both are integers to JSON Schema, and Python's
/// `json` writes a float-typed count the second way.
pub fn whole_number<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let whole = n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(f))
            .map(|f| f as u64)
    });
    let v = whole.ok_or_else(|| {
        D::Error::custom(format!("expected a non-negative whole number, got {n}"))
    })?;
    T::try_from(v)
        .map(Some)
        .map_err(|_| D::Error::custom(format!("{v} is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(content_type: Option<&str>, body: &'static str) -> Result<String, (u16, String)> {
        let mut req = Request::builder().method("POST").uri("/");
        if let Some(t) = content_type {
            req = req.header(header::CONTENT_TYPE, t);
        }
        let req = req.body(axum::body::Body::from(body)).unwrap();
        match JsonObject::from_request(req, &()).await {
            Ok(object) => Ok(String::from_utf8(object.0.to_vec()).unwrap()),
            Err(e) => Err((e.status.as_u16(), e.message)),
        }
    }

    #[tokio::test]
    async fn a_json_object_is_checked_and_kept_as_it_came() {
        let json = Some("application/json; charset=utf-8");
        assert_eq!(
            read(json, " {\"a\": [1, 2]} ").await.unwrap(),
            " {\"a\": [1, 2]} "
        );
        assert_eq!(read(None, "{}").await.unwrap(), "{}", "no type: curl");
        assert_eq!(
            read(Some("application/vnd.x+json"), "{}").await.unwrap(),
            "{}"
        );
        for (body, status) in [("[1]", 400), ("  ", 400), ("{\"a\": ", 400), ("\"x\"", 400)] {
            assert_eq!(read(json, body).await.unwrap_err().0, status, "{body:?}");
        }
        for t in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            assert_eq!(read(Some(t), "{}").await.unwrap_err().0, 415, "{t}");
        }
    }
}
