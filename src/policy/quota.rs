//! The kinds of quota a lane is held to, as data: each is a *metric* (what a
//! call spends) counted over a *window* (a sliding span of any length, or a
//! calendar day).
//!
//! The scheduler's one rule ("every window that would contain the call stays
//! within its limit", see `scheduler::lane`) is written once over these rows,
//! so a new kind of quota is a new row here, not new arithmetic there.

use serde::{Deserialize, Serialize};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// What a call spends against a quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Requests,
    InputTokens,
    /// Reserved from the request's most output tokens when the call is
    /// booked, settled to what the answer reports (Anthropic, Cerebras).
    OutputTokens,
}

/// The span a quota counts over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// A sliding span of this length: every such span holds at most the
    /// limit (Gemini's per-minute quotas slide over 60 seconds).
    Sliding(Duration),
    /// The provider's calendar day, in its zone (Gemini's: America/Los_Angeles;
    /// see [`crate::clock::DayZone`]).
    Day,
}

/// One kind of quota. Gemini's free tier enforces the first four, per project
/// and per model; other providers add output tokens per minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quota {
    RequestsPerMinute,
    InputTokensPerMinute,
    RequestsPerDay,
    InputTokensPerDay,
    OutputTokensPerMinute,
}

impl Quota {
    pub const ALL: [Quota; 5] = [
        Quota::RequestsPerMinute,
        Quota::InputTokensPerMinute,
        Quota::RequestsPerDay,
        Quota::InputTokensPerDay,
        Quota::OutputTokensPerMinute,
    ];

    pub const fn metric(self) -> Metric {
        match self {
            Quota::RequestsPerMinute | Quota::RequestsPerDay => Metric::Requests,
            Quota::InputTokensPerMinute | Quota::InputTokensPerDay => Metric::InputTokens,
            Quota::OutputTokensPerMinute => Metric::OutputTokens,
        }
    }

    pub const fn window(self) -> Window {
        match self {
            Quota::RequestsPerMinute
            | Quota::InputTokensPerMinute
            | Quota::OutputTokensPerMinute => Window::Sliding(MINUTE),
            Quota::RequestsPerDay | Quota::InputTokensPerDay => Window::Day,
        }
    }

    /// The lengths of the sliding windows the quotas count over, each once.
    pub fn sliding_lengths() -> Vec<Duration> {
        let mut lengths: Vec<Duration> = Quota::ALL
            .iter()
            .filter_map(|q| match q.window() {
                Window::Sliding(length) => Some(length),
                Window::Day => None,
            })
            .collect();
        lengths.sort();
        lengths.dedup();
        lengths
    }

    /// The longest sliding window: how long a call can still bind a quota.
    pub fn longest_sliding() -> Duration {
        Quota::sliding_lengths()
            .last()
            .copied()
            .unwrap_or(Duration::ZERO)
    }

    /// Its field in `FLUX_LIMITS`, the policy file and `/status`.
    pub const fn field(self) -> &'static str {
        match self {
            Quota::RequestsPerMinute => "rpm",
            Quota::InputTokensPerMinute => "tpm",
            Quota::RequestsPerDay => "rpd",
            Quota::InputTokensPerDay => "tpd",
            Quota::OutputTokensPerMinute => "otpm",
        }
    }
}

/// What calls spend of each metric: one call of `T` input tokens is
/// `Usage::call(T)`; a window's content is the sum of its calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub requests: u64,
    pub input_tokens: u64,
    /// Reserved (the request's most output tokens) until the answer says
    /// how many it spent.
    pub output_tokens: u64,
}

impl Usage {
    pub const fn call(input_tokens: u64) -> Usage {
        Usage {
            requests: 1,
            input_tokens,
            output_tokens: 0,
        }
    }

    /// The same call, reserving `most` output tokens.
    pub const fn with_output(self, most: u64) -> Usage {
        Usage {
            output_tokens: most,
            ..self
        }
    }

    pub const fn of(self, metric: Metric) -> u64 {
        match metric {
            Metric::Requests => self.requests,
            Metric::InputTokens => self.input_tokens,
            Metric::OutputTokens => self.output_tokens,
        }
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, other: Usage) -> Usage {
        // Saturating: a provider's usage figures are not trusted to be sane.
        Usage {
            requests: self.requests.saturating_add(other.requests),
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
        }
    }
}

impl std::ops::Sub for Usage {
    type Output = Usage;
    fn sub(self, other: Usage) -> Usage {
        Usage {
            requests: self.requests.saturating_sub(other.requests),
            input_tokens: self.input_tokens.saturating_sub(other.input_tokens),
            output_tokens: self.output_tokens.saturating_sub(other.output_tokens),
        }
    }
}

impl std::iter::Sum for Usage {
    fn sum<I: Iterator<Item = Usage>>(iter: I) -> Usage {
        iter.fold(Usage::default(), |a, b| a + b)
    }
}
