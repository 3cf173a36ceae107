//! The simulators' quota ledger for one lane (key, model): what the real
//! upstream enforces, written as plain arithmetic over arrival times.
//!
//! A call arriving at `now` counts in the per-minute window until `now + 60 s`
//! (exclusive), and in the requests and tokens of its provider's calendar day
//! (Gemini's is Pacific, the others' UTC: [`DayZone`]). A rejected call
//! counts in neither. A limit of 0 refuses every call. Output tokens are
//! reserved at admission (the call's maximum) and settled to what the answer
//! said ([`LaneQuota::settle`]), as Anthropic and Cerebras count them. The
//! ledger also keeps the peaks it has seen, so a test can assert from the
//! upstream's side that no window ever went over.

use crate::clock::{DayZone, Timestamp};
use crate::policy::{Limits, Metric, Quota, Usage, Window};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

pub const WINDOW: Duration = Duration::from_secs(60);

/// Why a call was refused: every quota it would break, the one that binds
/// longest (the first of them on a tie, one it can never fit first), and
/// the true time until it would fit (`None` when it never can: more than a
/// limit allows).
#[derive(Debug, PartialEq)]
pub struct Rejection {
    pub violations: Vec<Quota>,
    pub binding: Quota,
    pub retry_after: Option<Duration>,
}

/// An admitted call, to settle its reserved output tokens by (once: it
/// is not `Copy`).
#[derive(Debug, PartialEq, Eq)]
pub struct Ticket {
    seq: u64,
    day: NaiveDate,
    reserved: u64,
}

/// Where one quota stands on a lane: its limit, what the window (or the
/// day) holds of it, and how long until it holds nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub limit: u64,
    pub used: u64,
    pub reset: Duration,
}

/// What the ledger has seen, as `/__sim/stats` reports it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LaneStats {
    pub calls: u64,
    pub input_tokens: u64,
    /// Output tokens said (settled), in all.
    #[serde(default)]
    pub output_tokens: u64,
    pub rejected_429: u64,
    pub rejected_rpm: u64,
    pub rejected_tpm: u64,
    pub rejected_rpd: u64,
    #[serde(default)]
    pub rejected_tpd: u64,
    #[serde(default)]
    pub rejected_otpm: u64,
    pub peak_tokens_60s: u64,
    pub peak_requests_60s: u64,
    /// The most output tokens any minute held, reservations included.
    #[serde(default)]
    pub peak_output_tokens_60s: u64,
    pub requests_today: u32,
    #[serde(default)]
    pub tokens_today: u64,
    /// Calls to a retired model, answered 404.
    #[serde(default)]
    pub retired_404: u64,
    /// Calls naming a file this key's project does not own, answered 403.
    #[serde(default)]
    pub foreign_file_403: u64,
}

#[derive(Debug)]
pub struct LaneQuota {
    zone: DayZone,
    /// Accepted calls of the last minute: (admission number, arrival, what
    /// each spent or, until settled, reserved).
    window: VecDeque<(u64, Timestamp, Usage)>,
    admitted: u64,
    day: Option<NaiveDate>,
    day_used: Usage,
    stats: LaneStats,
}

/// Gemini's lane: its day is Pacific.
impl Default for LaneQuota {
    fn default() -> Self {
        LaneQuota::new(DayZone::PACIFIC)
    }
}

impl LaneQuota {
    /// An empty lane whose days are `zone`'s.
    pub fn new(zone: DayZone) -> Self {
        LaneQuota {
            zone,
            window: VecDeque::new(),
            admitted: 0,
            day: None,
            day_used: Usage::default(),
            stats: LaneStats::default(),
        }
    }

    /// Admits a call of `tokens` input tokens (and no output to settle)
    /// arriving at `now`, or says why not.
    pub fn admit(&mut self, limits: &Limits, tokens: u64, now: Timestamp) -> Result<(), Rejection> {
        self.admit_usage(limits, Usage::call(tokens), now).map(drop)
    }

    /// Admits a call arriving at `now` that spends `call` (a batch of
    /// embeddings spends one request an item; its output tokens are a
    /// reservation until [`settle`](Self::settle)), or says why not.
    pub fn admit_usage(
        &mut self,
        limits: &Limits,
        call: Usage,
        now: Timestamp,
    ) -> Result<Ticket, Rejection> {
        self.expire(now);
        let minute = self.minute();
        let mut violations = Vec::new();
        // The longest wait so far, and its quota; `None` never fits.
        let mut binding: Option<(Quota, Option<Duration>)> = None;
        for quota in Quota::ALL {
            let limit = limits.get(quota);
            let used = match quota.window() {
                Window::Sliding(_) => minute,
                Window::Day => self.day_used,
            };
            let (used, need) = (used.of(quota.metric()), call.of(quota.metric()));
            if used.saturating_add(need) <= limit {
                continue;
            }
            let after = if need > limit {
                None
            } else {
                Some(match quota.window() {
                    Window::Sliding(_) => self.free_after(quota.metric(), limit, need, now),
                    Window::Day => self.zone.next_midnight(now).since(now),
                })
            };
            violations.push(quota);
            let longer = match binding {
                None => true,
                Some((_, longest)) => longest.is_some() && after.is_none_or(|a| Some(a) > longest),
            };
            if longer {
                binding = Some((quota, after));
            }
        }

        if let Some((binding, retry_after)) = binding {
            self.stats.rejected_429 += 1;
            for v in &violations {
                *match v {
                    Quota::RequestsPerMinute => &mut self.stats.rejected_rpm,
                    Quota::InputTokensPerMinute => &mut self.stats.rejected_tpm,
                    Quota::RequestsPerDay => &mut self.stats.rejected_rpd,
                    Quota::InputTokensPerDay => &mut self.stats.rejected_tpd,
                    Quota::OutputTokensPerMinute => &mut self.stats.rejected_otpm,
                } += 1;
            }
            return Err(Rejection {
                violations,
                binding,
                retry_after,
            });
        }

        self.admitted += 1;
        self.window.push_back((self.admitted, now, call));
        self.day_used = self.day_used + call;
        self.stats.calls += 1;
        self.stats.input_tokens += call.input_tokens;
        let peak = minute + call;
        self.stats.peak_requests_60s = self.stats.peak_requests_60s.max(peak.requests);
        self.stats.peak_tokens_60s = self.stats.peak_tokens_60s.max(peak.input_tokens);
        self.stats.peak_output_tokens_60s =
            self.stats.peak_output_tokens_60s.max(peak.output_tokens);
        Ok(Ticket {
            seq: self.admitted,
            day: self.zone.day_of(now),
            reserved: call.output_tokens,
        })
    }

    /// Settles the call `ticket` admitted to the `output` tokens it said
    /// (never more than it reserved): its minute, while it lasts, and its
    /// day, if it is still today, keep only those.
    pub fn settle(&mut self, ticket: Ticket, output: u64, now: Timestamp) {
        self.expire(now);
        let said = output.min(ticket.reserved);
        let freed = ticket.reserved - said;
        if let Some((_, _, usage)) = self
            .window
            .iter_mut()
            .find(|(seq, _, _)| *seq == ticket.seq)
        {
            usage.output_tokens -= freed;
        }
        if self.day == Some(ticket.day) {
            self.day_used.output_tokens -= freed;
        }
        self.stats.output_tokens += said;
    }

    /// Where `quota` stands at `now` under `limits`.
    pub fn standing(&mut self, limits: &Limits, quota: Quota, now: Timestamp) -> Standing {
        self.expire(now);
        let metric = quota.metric();
        let (used, reset) = match quota.window() {
            Window::Sliding(_) => {
                let last = self
                    .window
                    .iter()
                    .rev()
                    .find(|(_, _, u)| u.of(metric) > 0)
                    .map_or(Duration::ZERO, |(_, at, _)| at.plus(WINDOW).since(now));
                (self.minute().of(metric), last)
            }
            Window::Day => {
                let used = self.day_used.of(metric);
                let reset = if used > 0 {
                    self.zone.next_midnight(now).since(now)
                } else {
                    Duration::ZERO
                };
                (used, reset)
            }
        };
        Standing {
            limit: limits.get(quota),
            used,
            reset,
        }
    }

    /// Counts a rejection the quotas did not cause (an injected bare 429).
    pub fn count_injected_429(&mut self) {
        self.stats.rejected_429 += 1;
    }

    /// Counts a call refused before any quota (`stats.retired_404` and the like).
    pub fn count_refusal(&mut self, counter: fn(&mut LaneStats) -> &mut u64) {
        *counter(&mut self.stats) += 1;
    }

    pub fn stats(&mut self, now: Timestamp) -> LaneStats {
        self.expire(now);
        self.stats.requests_today = self.day_used.requests as u32;
        self.stats.tokens_today = self.day_used.input_tokens;
        self.stats.clone()
    }

    /// What the last minute holds.
    fn minute(&self) -> Usage {
        self.window.iter().map(|&(_, _, u)| u).sum()
    }

    fn expire(&mut self, now: Timestamp) {
        while let Some(&(_, at, _)) = self.window.front() {
            if now >= at.plus(WINDOW) {
                self.window.pop_front();
            } else {
                break;
            }
        }
        let today = self.zone.day_of(now);
        if self.day != Some(today) {
            self.day = Some(today);
            self.day_used = Usage::default();
        }
    }

    /// How long until `need` more of `metric` (at most `limit`) fit under
    /// `limit`, as older calls leave the window.
    fn free_after(&self, metric: Metric, limit: u64, need: u64, now: Timestamp) -> Duration {
        let mut used: u64 = self.window.iter().map(|(_, _, u)| u.of(metric)).sum();
        for &(_, at, u) in &self.window {
            used -= u.of(metric);
            if used + need <= limit {
                return at.plus(WINDOW).since(now);
            }
        }
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLASH: Limits = crate::policy::Family::Flash.builtin_limits();

    #[test]
    fn rpm_rejects_the_eleventh_call_until_the_first_leaves() {
        let mut lane = LaneQuota::default();
        let t0 = Timestamp(1_700_000_000_000);
        for i in 0..10 {
            lane.admit(&FLASH, 10, t0.plus_millis(i * 1_000)).unwrap();
        }
        let r = lane.admit(&FLASH, 10, t0.plus_millis(20_000)).unwrap_err();
        assert_eq!(r.violations, vec![Quota::RequestsPerMinute]);
        assert_eq!(r.retry_after, Some(Duration::from_secs(40)));
        // One millisecond early is still too early; on the dot it fits.
        assert!(lane.admit(&FLASH, 10, t0.plus_millis(59_999)).is_err());
        assert!(lane.admit(&FLASH, 10, t0.plus_millis(60_000)).is_ok());
    }

    #[test]
    fn a_batch_spends_one_request_per_item_and_waits_for_as_many_to_leave() {
        let limits = Limits { rpm: 5, ..FLASH };
        let batch = |items| Usage {
            requests: items,
            input_tokens: items,
            output_tokens: 0,
        };
        let mut lane = LaneQuota::default();
        let t0 = Timestamp(1_700_000_000_000);
        lane.admit_usage(&limits, batch(3), t0).unwrap();
        lane.admit_usage(&limits, batch(1), t0.plus_millis(10_000))
            .unwrap();
        // 4 of 5 used: a batch of 2 waits until the batch of 3 leaves.
        let r = lane
            .admit_usage(&limits, batch(2), t0.plus_millis(20_000))
            .unwrap_err();
        assert_eq!(r.violations, vec![Quota::RequestsPerMinute]);
        assert_eq!(r.retry_after, Some(Duration::from_secs(40)));
        lane.admit_usage(&limits, batch(1), t0.plus_millis(20_000))
            .unwrap();
        // More items than the minute allows never fit.
        assert_eq!(
            lane.admit_usage(&limits, batch(6), t0.plus_millis(20_000))
                .unwrap_err()
                .retry_after,
            None
        );
        let stats = lane.stats(t0.plus_millis(20_000));
        assert_eq!(
            (stats.calls, stats.requests_today, stats.peak_requests_60s),
            (3, 5, 5)
        );
    }

    #[test]
    fn tpm_waits_for_enough_tokens_to_leave() {
        let mut lane = LaneQuota::default();
        let t0 = Timestamp(1_700_000_000_000);
        lane.admit(&FLASH, 100_000, t0).unwrap();
        lane.admit(&FLASH, 100_000, t0.plus_millis(10_000)).unwrap();
        let r = lane
            .admit(&FLASH, 100_000, t0.plus_millis(20_000))
            .unwrap_err();
        assert_eq!(r.violations, vec![Quota::InputTokensPerMinute]);
        assert_eq!(r.retry_after, Some(Duration::from_secs(40)));
        // More than the whole TPM never fits.
        let r = lane
            .admit(&FLASH, 250_001, t0.plus_millis(20_000))
            .unwrap_err();
        assert_eq!(r.retry_after, None);
        assert_eq!(lane.stats(t0.plus_millis(20_000)).peak_tokens_60s, 200_000);
    }

    #[test]
    fn rpd_resets_at_pacific_midnight() {
        let limits = Limits {
            rpm: 100,
            tpm: 1_000_000,
            rpd: 2,
            tpd: crate::policy::UNLIMITED,
            otpm: crate::policy::UNLIMITED,
        };
        let mut lane = LaneQuota::default();
        // 2026-07-01T06:59:00Z is 23:59 Pacific (PDT) on June 30.
        let t0 = Timestamp(
            chrono::DateTime::parse_from_rfc3339("2026-07-01T06:59:00Z")
                .unwrap()
                .timestamp_millis(),
        );
        lane.admit(&limits, 1, t0).unwrap();
        lane.admit(&limits, 1, t0).unwrap();
        let r = lane.admit(&limits, 1, t0).unwrap_err();
        assert_eq!(r.violations, vec![Quota::RequestsPerDay]);
        assert_eq!(r.retry_after, Some(Duration::from_secs(60)));
        assert!(lane.admit(&limits, 1, t0.plus_millis(60_000)).is_ok());
    }

    #[test]
    fn several_violations_report_the_longest_wait() {
        let limits = Limits {
            rpm: 1,
            tpm: 100,
            rpd: 1,
            tpd: 120,
            otpm: crate::policy::UNLIMITED,
        };
        let mut lane = LaneQuota::default();
        let t0 = Timestamp(1_700_000_000_000);
        lane.admit(&limits, 100, t0).unwrap();
        let r = lane.admit(&limits, 50, t0.plus_millis(1_000)).unwrap_err();
        // Every quota but output tokens (the call reserves none).
        assert_eq!(r.violations, Quota::ALL[..4].to_vec());
        assert!(r.retry_after.unwrap() > Duration::from_secs(59));
        assert_eq!(lane.stats(t0).rejected_429, 1);
    }

    #[test]
    fn input_tokens_per_day_are_enforced_until_pacific_midnight() {
        let limits = Limits {
            tpd: 5_000,
            ..FLASH
        };
        let mut lane = LaneQuota::default();
        let t0 = Timestamp(1_700_000_000_000);
        for i in 0..5 {
            lane.admit(&limits, 1_000, t0.plus_millis(i * 60_000))
                .unwrap();
        }
        let r = lane.admit(&limits, 1, t0.plus_millis(300_000)).unwrap_err();
        assert_eq!(r.violations, vec![Quota::InputTokensPerDay]);
        let later = t0.plus_millis(300_000);
        assert_eq!(
            r.retry_after,
            Some(later.next_pacific_midnight().since(later))
        );
        assert_eq!(lane.stats(later).tokens_today, 5_000);
        assert!(
            lane.admit(&limits, 1_000, later.next_pacific_midnight())
                .is_ok()
        );
    }

    #[test]
    fn a_limit_of_zero_refuses_every_call_for_good() {
        let limits = Limits { rpd: 0, ..FLASH };
        let r = LaneQuota::default()
            .admit(&limits, 1, Timestamp(1_700_000_000_000))
            .unwrap_err();
        assert_eq!(
            (r.violations, r.retry_after),
            (vec![Quota::RequestsPerDay], None)
        );
    }

    fn utc(text: &str) -> Timestamp {
        Timestamp(
            chrono::DateTime::parse_from_rfc3339(text)
                .unwrap()
                .timestamp_millis(),
        )
    }

    fn reserving(input_tokens: u64, output_tokens: u64) -> Usage {
        Usage {
            requests: 1,
            input_tokens,
            output_tokens,
        }
    }

    #[test]
    fn an_output_reservation_holds_until_settled_to_what_was_said() {
        let limits = Limits {
            otpm: 2_000,
            ..FLASH
        };
        let mut lane = LaneQuota::new(DayZone::UTC);
        let t0 = Timestamp(1_700_000_000_000);
        let held = lane.admit_usage(&limits, reserving(10, 1_500), t0).unwrap();
        let r = lane
            .admit_usage(&limits, reserving(10, 1_000), t0.plus_millis(5_000))
            .unwrap_err();
        assert_eq!(
            (r.violations, r.binding, r.retry_after),
            (
                vec![Quota::OutputTokensPerMinute],
                Quota::OutputTokensPerMinute,
                Some(Duration::from_secs(55))
            )
        );
        // Said 2 of its 1,500: the minute keeps 2, and 1,000 more fit.
        lane.settle(held, 2, t0.plus_millis(6_000));
        let second = lane
            .admit_usage(&limits, reserving(10, 1_000), t0.plus_millis(6_000))
            .unwrap();
        let standing = lane.standing(&limits, Quota::OutputTokensPerMinute, t0.plus_millis(6_000));
        assert_eq!((standing.limit, standing.used), (2_000, 1_002));
        assert_eq!(standing.reset, Duration::from_secs(60));
        // A settle never grows a reservation.
        lane.settle(second, 5_000, t0.plus_millis(7_000));
        let stats = lane.stats(t0.plus_millis(7_000));
        assert_eq!(
            (
                stats.output_tokens,
                stats.peak_output_tokens_60s,
                stats.rejected_otpm
            ),
            (1_002, 1_500, 1)
        );
    }

    #[test]
    fn a_settle_after_the_minute_still_frees_the_day() {
        let limits = Limits {
            otpm: 2_000,
            ..FLASH
        };
        let mut lane = LaneQuota::new(DayZone::UTC);
        let t0 = utc("2026-07-01T12:00:00Z");
        let held = lane.admit_usage(&limits, reserving(1, 1_500), t0).unwrap();
        lane.settle(held, 3, t0.plus_millis(90_000));
        assert_eq!(lane.day_used.output_tokens, 3);
        assert_eq!(lane.stats(t0.plus_millis(90_000)).output_tokens, 3);
    }

    #[test]
    fn a_utc_lane_resets_at_utc_midnight_and_a_pacific_one_does_not() {
        let limits = Limits { rpd: 1, ..FLASH };
        let t0 = utc("2026-07-01T23:59:59Z");
        let mut utc_lane = LaneQuota::new(DayZone::UTC);
        let mut pacific_lane = LaneQuota::default();
        for lane in [&mut utc_lane, &mut pacific_lane] {
            lane.admit(&limits, 1, t0).unwrap();
        }
        let r = utc_lane.admit(&limits, 1, t0).unwrap_err();
        assert_eq!(
            (r.binding, r.retry_after),
            (Quota::RequestsPerDay, Some(Duration::from_secs(1)))
        );
        let standing = utc_lane.standing(&limits, Quota::RequestsPerDay, t0);
        assert_eq!((standing.used, standing.reset), (1, Duration::from_secs(1)));
        let midnight = t0.plus_millis(1_000);
        assert!(utc_lane.admit(&limits, 1, midnight).is_ok());
        // 00:00 UTC is 17:00 in Los Angeles: the same Pacific day.
        assert!(pacific_lane.admit(&limits, 1, midnight).is_err());
    }

    #[test]
    fn the_binding_quota_is_the_longest_wait_and_never_beats_all() {
        let limits = Limits {
            rpm: 1,
            tpm: 100,
            rpd: 10,
            tpd: crate::policy::UNLIMITED,
            otpm: 50,
        };
        let mut lane = LaneQuota::new(DayZone::UTC);
        let t0 = utc("2026-07-01T12:00:00Z");
        lane.admit_usage(&limits, reserving(90, 10), t0).unwrap();
        // Requests wait 60 s, tokens too: the first of them binds.
        let r = lane
            .admit_usage(&limits, reserving(20, 10), t0.plus_millis(1_000))
            .unwrap_err();
        assert_eq!(r.binding, Quota::RequestsPerMinute);
        assert_eq!(r.retry_after, Some(Duration::from_secs(59)));
        // More output than the minute allows never fits, whatever else waits.
        let r = lane
            .admit_usage(&limits, reserving(20, 51), t0.plus_millis(1_000))
            .unwrap_err();
        assert_eq!(
            (r.binding, r.retry_after),
            (Quota::OutputTokensPerMinute, None)
        );
    }
}
