//! Reads a Gemini error answer and decides whose fault it was.
//!
//! Only what is the key's or its project's takes a key out: a 400 whose
//! `ErrorInfo` says `API_KEY_INVALID`, or a 401/403 whose `ErrorInfo` names a
//! key- or project-level reason ([`KEY_REASONS`]); a 401 without details is
//! about the credential too. A 403 about a *resource* (a file another
//! project uploaded) is the client's, and goes back untouched. Every
//! violation of a 429 is read, with its limit from `quotaValue` or else from
//! the message, and its delay from `RetryInfo` or else from the message.

use crate::policy::Quota;
use crate::scheduler::{Penalty, Violation};
use crate::wire::{error, parse_duration, seconds};
use serde_json::Value;
use std::time::Duration;

/// `ErrorInfo.reason`s (from `google.api.ErrorReason`) that refuse the key
/// or its project, never one request.
pub const KEY_REASONS: &[&str] = &[
    "API_KEY_INVALID",
    "API_KEY_EXPIRED",
    "API_KEY_SERVICE_BLOCKED",
    "API_KEY_HTTP_REFERRER_BLOCKED",
    "API_KEY_IP_ADDRESS_BLOCKED",
    "API_KEY_ANDROID_APP_BLOCKED",
    "API_KEY_IOS_APP_BLOCKED",
    "SERVICE_DISABLED",
    "BILLING_DISABLED",
    "CONSUMER_SUSPENDED",
    "CONSUMER_INVALID",
    "USER_PROJECT_DENIED",
    "ACCOUNT_STATE_INVALID",
];

/// Every way a call to Gemini can fail, by what the gateway must do about it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum UpstreamError {
    /// 400 with `API_KEY_INVALID` or `API_KEY_EXPIRED`: take the key out of
    /// rotation (once a free call confirms it).
    #[error("the key is not valid: {message}")]
    KeyInvalid { message: String, body: Value },
    /// 401/403 with a key- or project-level reason: the key's project is
    /// refused (once a free call confirms it). `status` and `body` are
    /// Gemini's, for the client when the confirmation finds the key fine.
    #[error("the key was refused: {message}")]
    KeyBlocked {
        message: String,
        status: u16,
        body: Value,
    },
    /// 429: a quota. `violations` is empty for a bare 429 without details.
    #[error("quota exceeded ({}): {message}", describe(.violations))]
    Quota {
        violations: Vec<Violation>,
        retry_after: Option<Duration>,
        message: String,
    },
    /// 404 "no longer available to new users": the model is retired.
    #[error("the model is retired: {message}")]
    ModelRetired { message: String, body: Value },
    /// 500, 503, 504, a timeout, a reset: try again elsewhere.
    #[error("transient upstream failure{}: {message}", .status.map(|s| format!(" ({s})")).unwrap_or_default())]
    Transient {
        status: Option<u16>,
        message: String,
    },
    /// No connection was made (refused, DNS): the upstream saw nothing.
    #[error("the upstream could not be reached: {message}")]
    Unreached { message: String },
    /// Any other 4xx: the client's request is at fault; the key is fine.
    /// `body` is the upstream's envelope, passed back to the client.
    #[error("the request was refused ({status}): {message}")]
    Client {
        status: u16,
        message: String,
        body: Value,
    },
}

fn describe(violations: &[Violation]) -> String {
    if violations.is_empty() {
        return "unspecified".into();
    }
    violations
        .iter()
        .map(|v| match v.limit {
            Some(limit) => format!("{} limit {limit}", v.quota.quota_id()),
            None => v.quota.quota_id().to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl UpstreamError {
    /// What the scheduler learns; `None` when the client is at fault.
    pub fn penalty(&self) -> Option<Penalty> {
        match self {
            UpstreamError::KeyInvalid { message, .. } => Some(Penalty::KeyInvalid(message.clone())),
            UpstreamError::KeyBlocked { message, .. } => Some(Penalty::KeyBlocked(message.clone())),
            UpstreamError::Quota {
                violations,
                retry_after,
                ..
            } => Some(Penalty::Quota {
                violations: violations.clone(),
                retry_after: *retry_after,
            }),
            UpstreamError::ModelRetired { message, .. } => {
                Some(Penalty::ModelRetired(message.clone()))
            }
            UpstreamError::Transient { .. } => Some(Penalty::Transient),
            UpstreamError::Unreached { .. } => Some(Penalty::Unreached),
            UpstreamError::Client { .. } => None,
        }
    }

    /// Whether the answer refused the key itself (to be confirmed before the
    /// key is taken out).
    pub fn is_about_the_key(&self) -> bool {
        matches!(
            self,
            UpstreamError::KeyInvalid { .. } | UpstreamError::KeyBlocked { .. }
        )
    }

    /// Gemini's own status and envelope, for the client, where the answer
    /// can be the client's to see (its mistake, a model it named that is
    /// retired, a key refusal that the confirmation did not bear out).
    /// (status, message, envelope).
    pub fn into_client(self) -> Option<(u16, String, Value)> {
        match self {
            UpstreamError::Client {
                status,
                message,
                body,
            }
            | UpstreamError::KeyBlocked {
                status,
                message,
                body,
            } => Some((status, message, body)),
            UpstreamError::KeyInvalid { message, body } => Some((400, message, body)),
            UpstreamError::ModelRetired { message, body } => Some((404, message, body)),
            _ => None,
        }
    }

    /// The first quota it names, for labels.
    pub fn first_quota(&self) -> Option<Quota> {
        match self {
            UpstreamError::Quota { violations, .. } => violations.first().map(|v| v.quota),
            _ => None,
        }
    }

    /// A few words for the list of what a request went through.
    pub fn summary(&self) -> String {
        match self {
            UpstreamError::Quota { violations, .. } if violations.is_empty() => {
                "429 without details".into()
            }
            UpstreamError::Quota { violations, .. } => format!("429 {}", describe(violations)),
            UpstreamError::KeyInvalid { .. } => "key not valid".into(),
            UpstreamError::KeyBlocked { status, .. } => format!("key refused ({status})"),
            UpstreamError::ModelRetired { .. } => "model retired (404)".into(),
            UpstreamError::Transient {
                status: Some(s), ..
            } => format!("{s}"),
            UpstreamError::Transient {
                status: None,
                message,
            }
            | UpstreamError::Unreached { message } => message.clone(),
            UpstreamError::Client { status, .. } => format!("{status}"),
        }
    }
}

/// Classifies an error answer from its status and body (which may not be
/// JSON). The OpenAI-compatible layer wraps Gemini's envelope in a
/// one-element array: it is read, and handed on, as the envelope itself.
pub fn classify(status: u16, body: &[u8]) -> UpstreamError {
    let parsed = match serde_json::from_slice(body).unwrap_or(Value::Null) {
        Value::Array(mut wrapped) if wrapped.len() == 1 && wrapped[0]["error"].is_object() => {
            wrapped.remove(0)
        }
        parsed => parsed,
    };
    let message = message_of(&parsed, body);
    let details: &[Value] = parsed["error"]["details"]
        .as_array()
        .map_or(&[], Vec::as_slice);
    let of_type = |suffix: &'static str| {
        details
            .iter()
            .filter(move |d| d["@type"].as_str().is_some_and(|t| t == suffix))
    };
    let reason = of_type(error::ERROR_INFO_TYPE).find_map(|d| d["reason"].as_str());
    let key_reason = reason.is_some_and(|r| KEY_REASONS.contains(&r));

    match status {
        400 if matches!(reason, Some("API_KEY_INVALID" | "API_KEY_EXPIRED")) => {
            UpstreamError::KeyInvalid {
                message,
                body: parsed,
            }
        }
        401 if reason.is_none() || key_reason => UpstreamError::KeyBlocked {
            message,
            status,
            body: parsed,
        },
        403 if key_reason => UpstreamError::KeyBlocked {
            message,
            status,
            body: parsed,
        },
        404 if message.contains("no longer available") => UpstreamError::ModelRetired {
            message,
            body: parsed,
        },
        429 => {
            let violations: Vec<&Value> = of_type(error::QUOTA_FAILURE_TYPE)
                .flat_map(|d| d["violations"].as_array().map_or(&[][..], Vec::as_slice))
                .collect();
            let stated = stated_limits(&message);
            let violations = violations
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    let quota = v["quotaId"].as_str().and_then(Quota::from_quota_id)?;
                    let limit = match &v["quotaValue"] {
                        Value::String(s) => s.parse().ok(),
                        Value::Number(n) => n.as_u64(),
                        _ => None,
                    }
                    .or_else(|| limit_in_message(&stated, i, violations.len(), quota));
                    Some(Violation { quota, limit })
                })
                .collect();
            let retry_after = of_type(error::RETRY_INFO_TYPE)
                .find_map(|d| d["retryDelay"].as_str().and_then(parse_duration))
                .or_else(|| delay_in_message(&message));
            UpstreamError::Quota {
                violations,
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

/// An error answer's message: its envelope's `error.message` (Gemini's,
/// OpenAI's and Anthropic's envelopes all have one), else the first 300
/// bytes of the body.
pub(super) fn message_of(parsed: &Value, body: &[u8]) -> String {
    parsed["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&body[..body.len().min(300)])
                .trim()
                .to_string()
        })
}

/// The `(metric, limit)` pairs a 429's message spells out, in order:
/// `… Quota exceeded for metric: M, limit: N, model: X …`.
fn stated_limits(message: &str) -> Vec<(&str, u64)> {
    message
        .split("metric:")
        .skip(1)
        .filter_map(|part| {
            let (metric, rest) = part.split_once(',')?;
            let digits: String = rest
                .trim_start()
                .strip_prefix("limit:")?
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            Some((metric.trim(), digits.parse().ok()?))
        })
        .collect()
}

/// The limit the message gives for the `index`-th of `count` violations:
/// by position when the message lists as many and that one names the same
/// metric, else by a metric that only one listed limit names.
fn limit_in_message(
    stated: &[(&str, u64)],
    index: usize,
    count: usize,
    quota: Quota,
) -> Option<u64> {
    let same_place = stated
        .get(index)
        .filter(|s| stated.len() == count && s.0 == quota.quota_metric());
    if let Some(&(_, limit)) = same_place {
        return Some(limit);
    }
    let mut same = stated.iter().filter(|s| s.0 == quota.quota_metric());
    match (same.next(), same.next()) {
        (Some(one), None) => Some(one.1),
        _ => None,
    }
}

/// `Please retry in 38.8s.` (or `in 250ms`).
fn delay_in_message(message: &str) -> Option<Duration> {
    let rest = &message[message.find("retry in ")? + "retry in ".len()..];
    let number: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let value: f64 = number.parse().ok()?;
    let unit = &rest[number.len()..];
    let secs = if unit.starts_with("ms") {
        value / 1000.0
    } else if unit.starts_with('s') {
        value
    } else {
        return None;
    };
    seconds(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    fn quota_penalty(v: Value) -> (Vec<Violation>, Option<Duration>) {
        match classify(429, &body(v)).penalty() {
            Some(Penalty::Quota {
                violations,
                retry_after,
            }) => (violations, retry_after),
            other => panic!("not a quota penalty: {other:?}"),
        }
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
    fn only_key_and_project_reasons_refuse_the_key() {
        let denied = |reason: Option<&str>, message: &str| {
            let mut error = json!({"code": 403, "status": "PERMISSION_DENIED", "message": message});
            if let Some(r) = reason {
                error["details"] = json!([{"@type": error::ERROR_INFO_TYPE, "reason": r, "domain": "googleapis.com"}]);
            }
            body(json!({ "error": error }))
        };
        for reason in [
            "SERVICE_DISABLED",
            "API_KEY_SERVICE_BLOCKED",
            "CONSUMER_SUSPENDED",
        ] {
            let e = classify(403, &denied(Some(reason), "refused"));
            assert!(e.is_about_the_key(), "{reason}");
        }
        // The 403 a project gets for a file it does not own is the client's.
        let file = classify(
            403,
            &denied(
                None,
                "You do not have permission to access the File abc123 or it may not exist.",
            ),
        );
        assert!(matches!(file, UpstreamError::Client { status: 403, .. }));
        assert_eq!(file.penalty(), None);
        assert!(!classify(403, &denied(Some("SOMETHING_ELSE"), "no")).is_about_the_key());
        assert!(classify(401, b"{}").is_about_the_key());
    }

    #[test]
    fn every_violation_is_read_with_its_limit_and_the_delay() {
        let v = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota", "details": [
            {"@type": error::QUOTA_FAILURE_TYPE, "violations": [
                {"quotaId": Quota::RequestsPerMinute.quota_id(), "quotaValue": "10"},
                {"quotaId": Quota::InputTokensPerDay.quota_id(), "quotaValue": "5000"}]},
            {"@type": error::RETRY_INFO_TYPE, "retryDelay": "39s"}]}});
        assert_eq!(
            quota_penalty(v),
            (
                vec![
                    Violation {
                        quota: Quota::RequestsPerMinute,
                        limit: Some(10)
                    },
                    Violation {
                        quota: Quota::InputTokensPerDay,
                        limit: Some(5_000)
                    }
                ],
                Some(Duration::from_secs(39))
            )
        );
        assert_eq!(
            classify(429, b"Too Many Requests").penalty(),
            Some(Penalty::Quota {
                violations: vec![],
                retry_after: None
            })
        );
    }

    #[test]
    fn a_missing_quota_value_and_delay_come_from_the_2026_message() {
        let message = "You exceeded your current quota, please check your plan and billing details. \
            * Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 0, model: gemini-2.5-pro\n\
            * Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_input_token_count, limit: 0, model: gemini-2.5-pro\n\
            Please retry in 38.8s.";
        let v = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": message, "details": [
            {"@type": error::QUOTA_FAILURE_TYPE, "violations": [
                {"quotaId": Quota::RequestsPerDay.quota_id()},
                {"quotaId": Quota::InputTokensPerMinute.quota_id()}]}]}});
        let (violations, delay) = quota_penalty(v);
        assert_eq!(
            violations.iter().map(|v| v.limit).collect::<Vec<_>>(),
            vec![Some(0), Some(0)]
        );
        assert_eq!(delay, Some(Duration::from_millis(38_800)));
        // One violation, named in the message by its metric among others.
        assert_eq!(
            limit_in_message(&stated_limits(message), 0, 1, Quota::InputTokensPerMinute),
            Some(0)
        );
        assert_eq!(
            delay_in_message("Please retry in 250ms."),
            Some(Duration::from_millis(250))
        );
        assert_eq!(delay_in_message("Please retry later."), None);
        assert_eq!(
            delay_in_message("Please retry in 99999999999999999999s."),
            Some(crate::wire::error::MAX_DELAY),
            "an absurd delay is held to a day, not a panic"
        );
        // By position only where the metric agrees: an RPD of 20 listed first
        // is not the TPM of the first violation.
        let swapped = [
            (Quota::RequestsPerDay.quota_metric(), 20),
            (Quota::InputTokensPerMinute.quota_metric(), 250_000),
        ];
        assert_eq!(
            limit_in_message(&swapped, 0, 2, Quota::InputTokensPerMinute),
            Some(250_000)
        );
    }

    #[test]
    fn the_openai_layers_wrapped_envelope_is_read_as_the_envelope() {
        let quota = json!([{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota", "details": [
            {"@type": error::QUOTA_FAILURE_TYPE, "violations": [
                {"quotaId": Quota::RequestsPerMinute.quota_id(), "quotaValue": "10"}]},
            {"@type": error::RETRY_INFO_TYPE, "retryDelay": "7s"}]}}]);
        assert_eq!(
            quota_penalty(quota),
            (
                vec![Violation {
                    quota: Quota::RequestsPerMinute,
                    limit: Some(10)
                }],
                Some(Duration::from_secs(7))
            )
        );
        let invalid = json!([{"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "API key not valid.",
            "details": [{"@type": error::ERROR_INFO_TYPE, "reason": "API_KEY_INVALID"}]}}]);
        assert!(classify(400, &body(invalid)).is_about_the_key());
        let mine = json!([{"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "Function call is missing a thought_signature"}}]);
        match classify(400, &body(mine)) {
            UpstreamError::Client { body, message, .. } => {
                assert_eq!(body["error"]["code"], 400, "the envelope, unwrapped");
                assert_eq!(message, "Function call is missing a thought_signature");
            }
            other => panic!("not the client's: {other:?}"),
        }
    }

    #[test]
    fn a_retired_model_and_transient_failures() {
        for s in [500, 503, 504] {
            assert_eq!(classify(s, b"").penalty(), Some(Penalty::Transient));
        }
        let gone = json!({"error": {"code": 404, "status": "NOT_FOUND", "message":
            "This model models/gemini-2.0-flash is no longer available to new users. Please update your code to use a newer model for the latest features and improvements."}});
        let e = classify(404, &body(gone));
        assert!(matches!(e.penalty(), Some(Penalty::ModelRetired(_))));
        assert_eq!(e.into_client().map(|c| c.0), Some(404));
    }
}
