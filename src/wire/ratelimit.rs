//! What an OpenAI-compatible or Anthropic provider says of its rate limits:
//! the `*ratelimit*` headers of every answer (so a lane configured above the
//! true limit is corrected before a 429), a 429's `retry-after`, and the
//! quota and wait its message names.
//!
//! Every reader here ignores what it cannot read: a header that is not
//! ASCII, not a number, negative or too large for its type is as if absent.

use super::error::seconds;
use super::files::header_text;
use crate::clock::Timestamp;
use crate::policy::Quota;
use axum::http::HeaderMap;
use chrono::DateTime;
use std::time::Duration;

/// What a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Requests,
    /// Tokens as the provider counts them (OpenAI-style headers and
    /// messages, Anthropic's `tokens`: input and output alike, or whichever
    /// binds first).
    Tokens,
    InputTokens,
    OutputTokens,
}

/// The span a limit counts over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Minute,
    Hour,
    Day,
    /// The provider did not say, and no reset time allows a guess.
    Unknown,
}

/// One limit as an answer's headers state it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    pub metric: Metric,
    pub scope: Scope,
    /// The limit in force: a lane whose configured limit for this metric and
    /// scope is higher learns this one.
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// When the limit is whole again.
    pub resets_at: Option<Timestamp>,
}

impl Reading {
    /// The gateway's quota this limit is, as for a 429's ([`Exceeded::quota`]).
    pub fn quota(&self) -> Option<Quota> {
        quota_of(self.metric, self.scope)
    }

    /// The instant to hold the lane until, when the provider says nothing
    /// is left of this limit.
    pub fn held_until(&self) -> Option<Timestamp> {
        self.resets_at.filter(|_| self.remaining == Some(0))
    }
}

/// A per-minute limit never resets further away than this: a reset beyond
/// it is a day's (see [`readings`]).
const MINUTE: Duration = Duration::from_secs(60);

/// Every limit the headers of an answer that arrived at `now` state, in
/// these styles:
/// - OpenAI, Groq: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`,
///   the reset a span (`"2m59.56s"`, `"120ms"`, or bare seconds);
/// - Cerebras: the same, suffixed
///   `-minute`, `-hour` or `-day`, which is then the scope;
/// - OpenRouter: `x-ratelimit-{limit,remaining,reset}` for requests, the
///   reset in epoch milliseconds;
/// - Anthropic: `anthropic-ratelimit-{requests,tokens,input-tokens,
///   output-tokens}-{limit,remaining,reset}`, the reset in RFC 3339; all of
///   Anthropic's limits are per minute.
///
/// Where the header does not name its scope, the reset decides: more than
/// 60 s away is a day's limit, else a minute's; no reset, `Unknown`. That is
/// how Groq's `x-ratelimit-limit-requests` (its requests per *day*) is told
/// from its `-tokens` (per minute). A minute's limit never resets further
/// away than a minute, so it is never taken for a day's; a day's limit that
/// refills to whole within a minute is taken for a minute's, which can only
/// lower a lane's minute limit if its day limit is below it.
pub fn readings(headers: &HeaderMap, now: Timestamp) -> Vec<Reading> {
    let span = |text: &str| span(text).map(|d| now.plus(d));
    let mut found = Vec::new();
    for (name, metric) in [("requests", Metric::Requests), ("tokens", Metric::Tokens)] {
        let names = |field: &str| format!("x-ratelimit-{field}-{name}");
        found.extend(reading(headers, now, metric, None, names, span));
        for (suffix, scope) in [
            ("minute", Scope::Minute),
            ("hour", Scope::Hour),
            ("day", Scope::Day),
        ] {
            let names = |field: &str| format!("x-ratelimit-{field}-{name}-{suffix}");
            found.extend(reading(headers, now, metric, Some(scope), names, span));
        }
    }
    let epoch_ms = |text: &str| {
        integer(text)
            .and_then(|ms| i64::try_from(ms).ok())
            .map(Timestamp)
    };
    let names = |field: &str| format!("x-ratelimit-{field}");
    found.extend(reading(
        headers,
        now,
        Metric::Requests,
        None,
        names,
        epoch_ms,
    ));
    for (name, metric) in [
        ("requests", Metric::Requests),
        ("tokens", Metric::Tokens),
        ("input-tokens", Metric::InputTokens),
        ("output-tokens", Metric::OutputTokens),
    ] {
        let names = |field: &str| format!("anthropic-ratelimit-{name}-{field}");
        found.extend(reading(
            headers,
            now,
            metric,
            Some(Scope::Minute),
            names,
            rfc3339,
        ));
    }
    found
}

/// One limit from the headers `name` calls `limit`, `remaining` and
/// `reset`, if any of them is there; the reset read by `reset`.
fn reading(
    headers: &HeaderMap,
    now: Timestamp,
    metric: Metric,
    scope: Option<Scope>,
    name: impl Fn(&str) -> String,
    reset: impl Fn(&str) -> Option<Timestamp>,
) -> Option<Reading> {
    let text = |field| header_text(headers, &name(field));
    let limit = text("limit").and_then(integer);
    let remaining = text("remaining").and_then(integer);
    let resets_at = text("reset").and_then(reset);
    // Unnamed, a token limit is a minute's (OpenAI's own refill over
    // "6m0s" too); a request limit whose reset is more than a minute away
    // is a day's (Groq's `-requests`).
    let scope = scope.unwrap_or(match resets_at {
        Some(at) if at.since(now) > MINUTE && metric == Metric::Requests => Scope::Day,
        Some(_) => Scope::Minute,
        None => Scope::Unknown,
    });
    (limit.is_some() || remaining.is_some() || resets_at.is_some()).then_some(Reading {
        metric,
        scope,
        limit,
        remaining,
        resets_at,
    })
}

/// How long to wait before trying again, from a refusal's headers:
/// `retry-after-ms` (milliseconds, which OpenAI's SDK honours first), else
/// `retry-after` as seconds (integer or decimal) or an HTTP date (the span
/// from `now`; zero if it is past). At most a day.
pub fn retry_after(headers: &HeaderMap, now: Timestamp) -> Option<Duration> {
    if let Some(ms) = header_text(headers, "retry-after-ms").and_then(decimal) {
        return seconds(ms / 1000.0);
    }
    let text = header_text(headers, "retry-after")?;
    match decimal(text) {
        Some(secs) => seconds(secs),
        None => {
            let date = DateTime::parse_from_rfc2822(text).ok()?;
            seconds(Timestamp(date.timestamp_millis()).since(now).as_secs_f64())
        }
    }
}

/// The wait a 429's message asks for, as OpenAI and Groq write it:
/// "Please try again in 5.289s." (or `1m2.5s`, `120ms`).
pub fn retry_in(message: &str) -> Option<Duration> {
    const ASK: &str = "try again in ";
    let rest = &message[message.find(ASK)? + ASK.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == 'µ'))
        .unwrap_or(rest.len());
    span(rest[..end].trim_end_matches('.'))
}

/// The limit a 429's message says was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exceeded {
    pub metric: Metric,
    pub scope: Scope,
    pub limit: Option<u64>,
}

impl Exceeded {
    /// The gateway's quota this limit is: a provider's tokens (OpenAI's
    /// TPM counts the prompt and the completion, Anthropic's input tokens)
    /// are its input tokens. `None` for what no lane counts: an hour, a
    /// day's output tokens, a scope not stated.
    pub fn quota(&self) -> Option<Quota> {
        quota_of(self.metric, self.scope)
    }
}

/// The gateway's quota for a provider's (metric, scope); see [`Exceeded::quota`].
fn quota_of(metric: Metric, scope: Scope) -> Option<Quota> {
    match (metric, scope) {
        (Metric::Requests, Scope::Minute) => Some(Quota::RequestsPerMinute),
        (Metric::Requests, Scope::Day) => Some(Quota::RequestsPerDay),
        (Metric::InputTokens | Metric::Tokens, Scope::Minute) => Some(Quota::InputTokensPerMinute),
        (Metric::InputTokens | Metric::Tokens, Scope::Day) => Some(Quota::InputTokensPerDay),
        (Metric::OutputTokens, Scope::Minute) => Some(Quota::OutputTokensPerMinute),
        _ => None,
    }
}

/// Which limit a 429's message names, in either provider's words:
/// - OpenAI and Groq: "… on tokens per minute (TPM): Limit 12000, Used …"
///   (the abbreviation decides: RPM, RPD, TPM, TPD, and OTPM for output
///   tokens per minute in the same words, as the simulator writes them);
/// - Anthropic: "… of 2,000 output tokens per minute." (input tokens,
///   output tokens, tokens or requests; per minute or per day).
pub fn exceeded(message: &str) -> Option<Exceeded> {
    let tags = [
        ("(RPM)", Metric::Requests, Scope::Minute),
        ("(RPD)", Metric::Requests, Scope::Day),
        ("(TPM)", Metric::Tokens, Scope::Minute),
        ("(TPD)", Metric::Tokens, Scope::Day),
        ("(OTPM)", Metric::OutputTokens, Scope::Minute),
    ];
    for (tag, metric, scope) in tags {
        if let Some(at) = message.find(tag) {
            let after = &message[at + tag.len()..];
            let limit = after
                .find("Limit ")
                .and_then(|i| count(&after[i + "Limit ".len()..]));
            return Some(Exceeded {
                metric,
                scope,
                limit,
            });
        }
    }
    let words: Vec<&str> = message.split_whitespace().collect();
    (1..words.len()).find_map(|per| {
        let scope = match words
            .get(per + 1)
            .map(|w| w.trim_end_matches(['.', ',', ';']))
        {
            Some("minute") if words[per] == "per" => Scope::Minute,
            Some("day") if words[per] == "per" => Scope::Day,
            _ => return None,
        };
        let (metric, number) = match (per.checked_sub(2).map(|i| words[i]), words[per - 1]) {
            (Some("input"), "tokens") => (Metric::InputTokens, per.checked_sub(3)?),
            (Some("output"), "tokens") => (Metric::OutputTokens, per.checked_sub(3)?),
            (_, "tokens") => (Metric::Tokens, per.checked_sub(2)?),
            (_, "requests") => (Metric::Requests, per.checked_sub(2)?),
            _ => return None,
        };
        Some(Exceeded {
            metric,
            scope,
            limit: Some(count(words[number])?),
        })
    })
}

/// A whole number of only ASCII digits (no sign, no spaces inside) that
/// fits a `u64`.
fn integer(text: &str) -> Option<u64> {
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// A count as messages write it, with thousands separators ("2,000"),
/// up to the first character that is neither a digit nor a comma.
fn count(text: &str) -> Option<u64> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == ','))
        .unwrap_or(text.len());
    integer(&text[..end].replace(',', ""))
}

/// A non-negative decimal of only ASCII digits and at most one point
/// ("7", "7.66", ".5"); no sign, exponent, `inf` or `NaN`.
fn decimal(text: &str) -> Option<f64> {
    let digits = text.bytes().filter(u8::is_ascii_digit).count();
    let points = text.bytes().filter(|&b| b == b'.').count();
    (digits > 0 && points <= 1 && digits + points == text.len())
        .then(|| text.parse().ok())
        .flatten()
}

/// A span as Go writes a `time.Duration` ("1h2m3s", "2m59.56s", "120ms",
/// "0s"; units h, m, s, ms, us/µs, ns), or bare seconds ("11.38", as
/// Cerebras writes its resets). At most a day.
fn span(text: &str) -> Option<Duration> {
    if let Some(secs) = decimal(text) {
        return seconds(secs);
    }
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let unit_at = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let next = rest[unit_at..]
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .map_or(rest.len(), |i| unit_at + i);
        let per_unit = match &rest[unit_at..next] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += decimal(&rest[..unit_at])? * per_unit;
        rest = &rest[next..];
    }
    seconds(total).filter(|_| !text.is_empty())
}

/// An RFC 3339 instant, as Anthropic writes its resets.
fn rfc3339(text: &str) -> Option<Timestamp> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| Timestamp(t.timestamp_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const NOW: Timestamp = Timestamp(1_767_225_600_000); // 2026-01-01T00:00:00Z

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn after(ms: i64) -> Option<Timestamp> {
        Some(NOW.plus_millis(ms))
    }

    #[test]
    fn groq_tells_its_day_of_requests_from_its_minute_of_tokens() {
        let answer = headers(&[
            ("x-ratelimit-limit-requests", "1000"),
            ("x-ratelimit-limit-tokens", "12000"),
            ("x-ratelimit-remaining-requests", "998"),
            ("x-ratelimit-remaining-tokens", "11500"),
            ("x-ratelimit-reset-requests", "2m52.8s"),
            ("x-ratelimit-reset-tokens", "2.5s"),
            ("retry-after", "3"),
        ]);
        assert_eq!(
            readings(&answer, NOW),
            [
                Reading {
                    metric: Metric::Requests,
                    scope: Scope::Day,
                    limit: Some(1000),
                    remaining: Some(998),
                    resets_at: after(172_800),
                },
                Reading {
                    metric: Metric::Tokens,
                    scope: Scope::Minute,
                    limit: Some(12000),
                    remaining: Some(11500),
                    resets_at: after(2_500),
                },
            ]
        );
        // A token limit is a minute's even when its refill takes longer
        // (OpenAI's documented "6m0s"): never learned as a day's.
        let openai = headers(&[
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        assert_eq!(readings(&openai, NOW)[0].scope, Scope::Minute);
        // Exactly a minute away is still a minute's; no reset, no guess.
        let edge = headers(&[
            ("x-ratelimit-limit-requests", "30"),
            ("x-ratelimit-reset-requests", "1m0s"),
            ("x-ratelimit-limit-tokens", "6000"),
        ]);
        let scopes: Vec<_> = readings(&edge, NOW).iter().map(|r| r.scope).collect();
        assert_eq!(scopes, [Scope::Minute, Scope::Unknown]);
    }

    #[test]
    fn cerebras_names_its_scopes_and_writes_bare_seconds() {
        let answer = headers(&[
            ("x-ratelimit-limit-requests-day", "14400"),
            ("x-ratelimit-remaining-requests-day", "14399"),
            ("x-ratelimit-reset-requests-day", "33011.382867097855"),
            ("x-ratelimit-limit-tokens-minute", "60000"),
            ("x-ratelimit-remaining-tokens-minute", "0"),
            ("x-ratelimit-reset-tokens-minute", "11.382867097855"),
        ]);
        let found = readings(&answer, NOW);
        assert_eq!(
            found,
            [
                Reading {
                    metric: Metric::Requests,
                    scope: Scope::Day,
                    limit: Some(14400),
                    remaining: Some(14399),
                    resets_at: after(33_011_382),
                },
                Reading {
                    metric: Metric::Tokens,
                    scope: Scope::Minute,
                    limit: Some(60000),
                    remaining: Some(0),
                    resets_at: after(11_382),
                },
            ]
        );
        // Nothing left of the minute's tokens: hold until its reset.
        let held: Vec<_> = found.iter().map(Reading::held_until).collect();
        assert_eq!(held, [None, after(11_382)]);
    }

    #[test]
    fn openrouter_resets_at_an_epoch_millisecond() {
        let minute = headers(&[
            ("X-RateLimit-Limit", "20"),
            ("X-RateLimit-Remaining", "0"),
            (
                "X-RateLimit-Reset",
                &NOW.plus_millis(41_000).millis().to_string(),
            ),
        ]);
        let expected = Reading {
            metric: Metric::Requests,
            scope: Scope::Minute,
            limit: Some(20),
            remaining: Some(0),
            resets_at: after(41_000),
        };
        assert_eq!(readings(&minute, NOW), [expected]);
        assert_eq!(expected.held_until(), after(41_000));
        // The free models' day: reset at the next UTC midnight.
        let day = headers(&[
            ("x-ratelimit-limit", "50"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1767312000000"),
        ]);
        assert_eq!(
            readings(&day, NOW)[0].scope,
            Scope::Day,
            "2026-01-02T00:00:00Z is a day away"
        );
    }

    #[test]
    fn anthropic_states_each_metric_per_minute() {
        let answer = headers(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-requests-reset", "2026-01-01T00:00:01Z"),
            ("anthropic-ratelimit-input-tokens-limit", "30000"),
            ("anthropic-ratelimit-input-tokens-remaining", "29000"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2026-01-01T00:00:02.5Z",
            ),
            ("anthropic-ratelimit-output-tokens-limit", "2000"),
            ("anthropic-ratelimit-output-tokens-remaining", "0"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2026-01-01T01:00:30+01:00",
            ),
        ]);
        let minute = |metric, limit, remaining, resets_at| Reading {
            metric,
            scope: Scope::Minute,
            limit: Some(limit),
            remaining: Some(remaining),
            resets_at,
        };
        let found = readings(&answer, NOW);
        assert_eq!(
            found,
            [
                minute(Metric::Requests, 50, 49, after(1_000)),
                minute(Metric::InputTokens, 30000, 29000, after(2_500)),
                minute(Metric::OutputTokens, 2000, 0, after(30_000)),
            ]
        );
        assert_eq!(found[2].held_until(), after(30_000));
    }

    #[test]
    fn hostile_values_are_ignored_and_never_panic() {
        let long = "9".repeat(200);
        let mut answer = headers(&[
            ("x-ratelimit-limit-requests", "-5"),
            ("x-ratelimit-remaining-requests", "99999999999999999999999"),
            ("x-ratelimit-reset-requests", "-1s"),
            ("x-ratelimit-limit-tokens", ""),
            ("x-ratelimit-remaining-tokens", "+5"),
            ("x-ratelimit-reset-tokens", "1e3"),
            ("x-ratelimit-limit-requests-day", &long),
            ("x-ratelimit-reset-requests-day", &format!("{long}h")),
            ("x-ratelimit-limit", "12 000"),
            ("x-ratelimit-reset", "99999999999999999999"),
            ("anthropic-ratelimit-requests-reset", "yesterday"),
            (
                "anthropic-ratelimit-tokens-reset",
                "9999999-01-01T00:00:00Z",
            ),
            ("retry-after", "soon"),
        ]);
        answer.insert(
            "x-ratelimit-limit-tokens-minute",
            HeaderValue::from_bytes("\u{e9}t\u{e9}".as_bytes()).unwrap(),
        );
        // Only the 200-digit span, held to a day, reads; the rest is absent.
        assert_eq!(
            readings(&answer, NOW),
            [Reading {
                metric: Metric::Requests,
                scope: Scope::Day,
                limit: None,
                remaining: None,
                resets_at: after(86_400_000),
            }]
        );
        assert_eq!(retry_after(&answer, NOW), None);
    }

    #[test]
    fn spans_in_go_form() {
        let ms = Duration::from_millis;
        let cases = [
            ("1s", ms(1_000)),
            ("6m0s", ms(360_000)),
            ("2m59.56s", ms(179_560)),
            ("7.66s", ms(7_660)),
            ("120ms", ms(120)),
            ("1h2m3s", ms(3_723_000)),
            ("0s", Duration::ZERO),
            ("1500us", Duration::from_micros(1_500)),
            ("7µs", Duration::from_micros(7)),
            ("2500000ns", Duration::from_micros(2_500)),
            ("3", ms(3_000)),
        ];
        for (text, expected) in cases {
            assert_eq!(span(text), Some(expected), "{text}");
        }
        for bad in ["", "s", "1x", "1.2.3s", "m1s", "1s2", "-1s", "1 s", "1h 2m"] {
            assert_eq!(span(bad), None, "{bad}");
        }
        assert_eq!(span("25h"), Some(Duration::from_secs(86_400)));
    }

    #[test]
    fn retry_after_in_seconds_dates_or_milliseconds() {
        let wait = |pairs: &[(&str, &str)]| retry_after(&headers(pairs), NOW);
        assert_eq!(
            wait(&[("retry-after", "30")]),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            wait(&[("retry-after", " 1.5 ")]),
            Some(Duration::from_millis(1_500))
        );
        assert_eq!(
            wait(&[("retry-after", "Thu, 01 Jan 2026 00:01:30 GMT")]),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            wait(&[("retry-after", "Wed, 31 Dec 2025 23:00:00 GMT")]),
            Some(Duration::ZERO),
            "a date past is no wait"
        );
        assert_eq!(
            wait(&[("retry-after", "30"), ("retry-after-ms", "2250")]),
            Some(Duration::from_millis(2_250))
        );
        assert_eq!(
            wait(&[("retry-after", "99999999")]),
            Some(Duration::from_secs(86_400))
        );
        for bad in ["-3", "", "NaN", "inf", "1e3", "3s"] {
            assert_eq!(wait(&[("retry-after", bad)]), None, "{bad:?}");
        }
        assert_eq!(wait(&[]), None);
    }

    #[test]
    fn groq_and_openai_messages_name_the_wait_and_the_quota() {
        let groq = "Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_1` \
                    service tier `on_demand` on tokens per minute (TPM): Limit 12000, Used 11861, \
                    Requested 1195. Please try again in 5.289s. Need more tokens? Upgrade to Dev Tier today.";
        assert_eq!(retry_in(groq), Some(Duration::from_millis(5_289)));
        assert_eq!(
            exceeded(groq),
            Some(Exceeded {
                metric: Metric::Tokens,
                scope: Scope::Minute,
                limit: Some(12000)
            })
        );
        let day = "… on requests per day (RPD): Limit 1,000, Used 1000, Requested 1. Please try again in 1m26.4s.";
        assert_eq!(retry_in(day), Some(Duration::from_millis(86_400)));
        assert_eq!(
            exceeded(day),
            Some(Exceeded {
                metric: Metric::Requests,
                scope: Scope::Day,
                limit: Some(1000)
            })
        );
        let tags = [
            (
                "on requests per minute (RPM): Limit 30, Used 30",
                Metric::Requests,
                Scope::Minute,
                30,
            ),
            (
                "on tokens per day (TPD): Limit 100000, Used 1",
                Metric::Tokens,
                Scope::Day,
                100_000,
            ),
        ];
        for (message, metric, scope, limit) in tags {
            assert_eq!(
                exceeded(message),
                Some(Exceeded {
                    metric,
                    scope,
                    limit: Some(limit)
                }),
                "{message}"
            );
        }
        assert_eq!(
            retry_in("Please try again in 120ms."),
            Some(Duration::from_millis(120))
        );
        assert_eq!(
            retry_in("Please try again in 1m2.5s"),
            Some(Duration::from_millis(62_500))
        );
        assert_eq!(retry_in("Please try again later."), None);
        assert_eq!(retry_in("try again in "), None);
        assert_eq!(
            exceeded("on tokens per minute (TPM): Limit unknown").map(|e| e.limit),
            Some(None)
        );
    }

    #[test]
    fn output_tokens_per_minute_in_groqs_words() {
        let otpm = "Rate limit reached for model `m` in organization `org_sim` service tier `on_demand` \
                    on output tokens per minute (OTPM): Limit 2000, Used 1500, Requested 1000. \
                    Please try again in 59.5s.";
        let found = exceeded(otpm);
        assert_eq!(
            found,
            Some(Exceeded {
                metric: Metric::OutputTokens,
                scope: Scope::Minute,
                limit: Some(2000)
            })
        );
        assert_eq!(
            found.and_then(|e| e.quota()),
            Some(Quota::OutputTokensPerMinute)
        );
    }

    #[test]
    fn each_limit_is_the_gateways_quota_or_none() {
        let quota = |metric, scope| {
            Exceeded {
                metric,
                scope,
                limit: None,
            }
            .quota()
        };
        let cases = [
            (
                Metric::Requests,
                Scope::Minute,
                Some(Quota::RequestsPerMinute),
            ),
            (Metric::Requests, Scope::Day, Some(Quota::RequestsPerDay)),
            (
                Metric::Tokens,
                Scope::Minute,
                Some(Quota::InputTokensPerMinute),
            ),
            (
                Metric::InputTokens,
                Scope::Minute,
                Some(Quota::InputTokensPerMinute),
            ),
            (Metric::Tokens, Scope::Day, Some(Quota::InputTokensPerDay)),
            (
                Metric::InputTokens,
                Scope::Day,
                Some(Quota::InputTokensPerDay),
            ),
            (
                Metric::OutputTokens,
                Scope::Minute,
                Some(Quota::OutputTokensPerMinute),
            ),
            (Metric::OutputTokens, Scope::Day, None),
            (Metric::Requests, Scope::Hour, None),
            (Metric::Tokens, Scope::Unknown, None),
        ];
        for (metric, scope, expected) in cases {
            assert_eq!(quota(metric, scope), expected, "{metric:?} {scope:?}");
        }
    }

    #[test]
    fn anthropic_messages_name_the_metric_and_the_limit() {
        let cases = [
            (
                "This request would exceed your organization's rate limit of 2,000 output tokens per minute (org: o, model: m). For details, refer to: https://docs.claude.com/en/api/rate-limits.",
                Metric::OutputTokens,
                2_000,
            ),
            (
                "This request would exceed the rate limit for your organization (o) of 30,000 input tokens per minute. Please reduce the prompt length.",
                Metric::InputTokens,
                30_000,
            ),
            (
                "This request would exceed the rate limit for your organization of 50 requests per minute.",
                Metric::Requests,
                50,
            ),
            ("… of 80,000 tokens per minute.", Metric::Tokens, 80_000),
        ];
        for (message, metric, limit) in cases {
            assert_eq!(
                exceeded(message),
                Some(Exceeded {
                    metric,
                    scope: Scope::Minute,
                    limit: Some(limit)
                }),
                "{message}"
            );
        }
        for nothing in [
            "Number of requests has exceeded your per-minute rate limit",
            "per minute",
            "tokens per minute",
            "of many tokens per minute",
            "",
        ] {
            assert_eq!(exceeded(nothing), None, "{nothing}");
        }
    }
}
