//! Gemini's error envelope `{"error": {"code", "message", "status", "details"}}`
//! and the quota vocabulary of its 429 answers.

use crate::policy::{Metric, Quota};
use serde_json::{Value, json};
use std::time::Duration;

/// `@type` of the detail that names a rejected key (`reason: API_KEY_INVALID`).
pub const ERROR_INFO_TYPE: &str = "type.googleapis.com/google.rpc.ErrorInfo";
pub const QUOTA_FAILURE_TYPE: &str = "type.googleapis.com/google.rpc.QuotaFailure";
pub const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";
pub const HELP_TYPE: &str = "type.googleapis.com/google.rpc.Help";

/// Gemini's names for each kind of quota (the kinds themselves are policy:
/// [`crate::policy::Quota`]).
impl Quota {
    pub fn quota_id(self) -> &'static str {
        match self {
            Quota::RequestsPerMinute => "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            Quota::InputTokensPerMinute => "GenerateContentInputTokensPerModelPerMinute-FreeTier",
            Quota::RequestsPerDay => "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
            Quota::InputTokensPerDay => "GenerateContentInputTokensPerModelPerDay-FreeTier",
            // Gemini enforces none on the free tier; named as its others are.
            Quota::OutputTokensPerMinute => "GenerateContentOutputTokensPerModelPerMinute-FreeTier",
        }
    }

    pub fn quota_metric(self) -> &'static str {
        match self.metric() {
            Metric::InputTokens => {
                "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count"
            }
            Metric::Requests => {
                "generativelanguage.googleapis.com/generate_content_free_tier_requests"
            }
            Metric::OutputTokens => {
                "generativelanguage.googleapis.com/generate_content_free_tier_output_token_count"
            }
        }
    }

    /// Recognises a quota id, including paid-tier variants that differ only in
    /// their suffix.
    pub fn from_quota_id(id: &str) -> Option<Quota> {
        let lower = id.to_ascii_lowercase();
        let tokens = lower.contains("token");
        if lower.contains("outputtoken") {
            lower
                .contains("perminute")
                .then_some(Quota::OutputTokensPerMinute)
        } else if lower.contains("perday") {
            Some(if tokens {
                Quota::InputTokensPerDay
            } else {
                Quota::RequestsPerDay
            })
        } else if tokens {
            Some(Quota::InputTokensPerMinute)
        } else if lower.contains("perminute") {
            Some(Quota::RequestsPerMinute)
        } else {
            None
        }
    }
}

/// The Gemini error envelope.
pub fn envelope(code: u16, status: &str, message: &str, details: Vec<Value>) -> Value {
    let mut error = json!({"code": code, "message": message, "status": status});
    if !details.is_empty() {
        error["details"] = Value::Array(details);
    }
    json!({ "error": error })
}

/// A protobuf `Duration` as Gemini writes it: `"39s"`, `"0.5s"`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        let s = format!("{}.{:03}", ms / 1000, ms % 1000);
        format!("{}s", s.trim_end_matches('0'))
    }
}

/// The longest delay an upstream answer is taken at its word for.
pub const MAX_DELAY: Duration = Duration::from_secs(86_400);

/// Parses a protobuf `Duration` string (`"39s"`, `"0.5s"`, `"1.000340s"`);
/// a delay beyond [`MAX_DELAY`] is held to it.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    seconds(secs)
}

/// `secs` as a delay: `None` unless finite and not negative, at most [`MAX_DELAY`].
pub fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0)
        .then(|| Duration::from_secs_f64(secs.min(MAX_DELAY.as_secs_f64())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_in_gemini_form() {
        assert_eq!(format_duration(Duration::from_secs(39)), "39s");
        assert_eq!(format_duration(Duration::from_millis(500)), "0.5s");
        assert_eq!(format_duration(Duration::from_millis(59_750)), "59.75s");
        assert_eq!(parse_duration("39s"), Some(Duration::from_secs(39)));
        assert_eq!(
            parse_duration("1.000340s"),
            Some(Duration::from_micros(1_000_340))
        );
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("99999999999999999999s"), Some(MAX_DELAY));
        assert_eq!(parse_duration("39"), None);
    }

    #[test]
    fn quota_ids_are_recognised() {
        for q in Quota::ALL {
            assert_eq!(Quota::from_quota_id(q.quota_id()), Some(q));
        }
        assert_eq!(
            Quota::from_quota_id("GenerateRequestsPerMinutePerProjectPerModel"),
            Some(Quota::RequestsPerMinute)
        );
        assert_eq!(Quota::from_quota_id("Something"), None);
        assert_eq!(
            Quota::from_quota_id("GenerateContentInputTokensPerModelPerDay-FreeTier"),
            Some(Quota::InputTokensPerDay)
        );
    }
}
