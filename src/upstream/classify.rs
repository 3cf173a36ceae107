//! Reads a Gemini error answer and decides whose fault it was.

use crate::scheduler::Penalty;
use crate::wire::{Quota, error, parse_duration};
use serde_json::Value;
use std::time::Duration;

/// Every way a call to Gemini can fail, by what the gateway must do about it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum UpstreamError {
    /// 400 with `API_KEY_INVALID`: take the key out of rotation.
    #[error("the key is not valid: {message}")]
    KeyInvalid { message: String },
    /// 403: the key's project is blocked or has the API disabled.
    #[error("the key was refused: {message}")]
    KeyBlocked { message: String },
    /// 429: a quota. `quota` is `None` for a bare 429 without details.
    #[error("quota exceeded ({}): {message}", .quota.map_or("unspecified", |q| q.quota_id()))]
    Quota {
        quota: Option<Quota>,
        limit: Option<u64>,
        retry_after: Option<Duration>,
        message: String,
    },
    /// 500, 503, 504, a timeout, a reset: try again elsewhere.
    #[error("transient upstream failure{}: {message}", .status.map(|s| format!(" ({s})")).unwrap_or_default())]
    Transient {
        status: Option<u16>,
        message: String,
    },
    /// Any other 4xx: the client's request is at fault; the key is fine.
    /// `body` is the upstream's envelope, passed back to the client.
    #[error("the request was refused ({status}): {message}")]
    Client {
        status: u16,
        message: String,
        body: Value,
    },
}

impl UpstreamError {
    /// What the scheduler learns; `None` when the client is at fault.
    pub fn penalty(&self) -> Option<Penalty> {
        match self {
            UpstreamError::KeyInvalid { message } => Some(Penalty::KeyInvalid(message.clone())),
            UpstreamError::KeyBlocked { message } => Some(Penalty::KeyBlocked(message.clone())),
            UpstreamError::Quota {
                quota,
                limit,
                retry_after,
                ..
            } => Some(Penalty::Quota {
                quota: *quota,
                limit: *limit,
                retry_after: *retry_after,
            }),
            UpstreamError::Transient { .. } => Some(Penalty::Transient),
            UpstreamError::Client { .. } => None,
        }
    }
}

/// Classifies an error answer from its status and body (which may not be JSON).
pub fn classify(status: u16, body: &[u8]) -> UpstreamError {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = parsed["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&body[..body.len().min(300)])
                .trim()
                .to_string()
        });
    let details: &[Value] = parsed["error"]["details"]
        .as_array()
        .map_or(&[], Vec::as_slice);
    let of_type = |suffix: &'static str| {
        details
            .iter()
            .filter(move |d| d["@type"].as_str().is_some_and(|t| t == suffix))
    };

    match status {
        400 if of_type(error::ERROR_INFO_TYPE).any(|d| d["reason"] == "API_KEY_INVALID") => {
            UpstreamError::KeyInvalid { message }
        }
        401 | 403 => UpstreamError::KeyBlocked { message },
        429 => {
            // Several violations: the per-day one matters most, then the first.
            let violations: Vec<&Value> = of_type(error::QUOTA_FAILURE_TYPE)
                .flat_map(|d| d["violations"].as_array().map_or(&[][..], Vec::as_slice))
                .collect();
            let quota_of = |v: &Value| v["quotaId"].as_str().and_then(Quota::from_quota_id);
            let chosen = violations
                .iter()
                .find(|v| quota_of(v) == Some(Quota::RequestsPerDay))
                .or(violations.first());
            let limit = chosen.and_then(|v| match &v["quotaValue"] {
                Value::String(s) => s.parse().ok(),
                Value::Number(n) => n.as_u64(),
                _ => None,
            });
            let retry_after = of_type(error::RETRY_INFO_TYPE)
                .find_map(|d| d["retryDelay"].as_str().and_then(parse_duration));
            UpstreamError::Quota {
                quota: chosen.and_then(|v| quota_of(v)),
                limit,
                retry_after,
                message,
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    #[test]
    fn key_invalid_needs_the_reason() {
        let invalid = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "API key not valid.",
            "details": [{"@type": error::ERROR_INFO_TYPE, "reason": "API_KEY_INVALID"}]}});
        assert!(matches!(
            classify(400, &body(invalid)),
            UpstreamError::KeyInvalid { .. }
        ));
        let bad_request = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "contents is not specified"}});
        let e = classify(400, &body(bad_request));
        assert!(matches!(&e, UpstreamError::Client { status: 400, .. }));
        assert_eq!(
            e.penalty(),
            None,
            "a client's mistake never touches the key"
        );
        assert!(matches!(
            classify(404, b"{}"),
            UpstreamError::Client { status: 404, .. }
        ));
    }

    #[test]
    fn quota_details_are_parsed() {
        let v = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota", "details": [
            {"@type": error::QUOTA_FAILURE_TYPE, "violations": [
                {"quotaId": Quota::RequestsPerMinute.quota_id(), "quotaValue": "10"},
                {"quotaId": Quota::RequestsPerDay.quota_id(), "quotaValue": "250"}]},
            {"@type": error::RETRY_INFO_TYPE, "retryDelay": "39s"}]}});
        assert_eq!(
            classify(429, &body(v)).penalty(),
            Some(Penalty::Quota {
                quota: Some(Quota::RequestsPerDay),
                limit: Some(250),
                retry_after: Some(Duration::from_secs(39))
            })
        );
        assert_eq!(
            classify(429, b"Too Many Requests").penalty(),
            Some(Penalty::Quota {
                quota: None,
                limit: None,
                retry_after: None
            })
        );
    }

    #[test]
    fn server_errors_are_transient_and_403_blocks() {
        for s in [500, 503, 504] {
            assert_eq!(classify(s, b"").penalty(), Some(Penalty::Transient));
        }
        assert!(matches!(
            classify(403, b"{}"),
            UpstreamError::KeyBlocked { .. }
        ));
    }
}
