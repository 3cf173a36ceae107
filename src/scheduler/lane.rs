//! One lane (key, model): its booked calls and the earliest instant a new call
//! fits under every quota of its [`Limits`] and any cooldown.
//!
//! A booking occupies a sliding quota's capacity from its instant `at` until
//! `at + span`, where `span` is the quota's window (60 seconds for Gemini's
//! per-minute quotas) plus a guard (the upstream counts a call when it
//! arrives, a little after we send it, and jitter can reorder arrivals). A new call `c` (its [`Usage`]: one
//! request, or `n` for a batch of `n` embedding items, and `T` input tokens)
//! fits at `t` when every window that would contain it stays within the
//! limit of every quota `q` counted over that window:
//!
//! ```text
//!   for every s in [t, t + span_q): used_q(s) + c_q <= limit_q  (each sliding q)
//!   on the calendar day of t:      used_q(day) + c_q <= limit_q (each per-day q)
//! ```
//!
//! where `used_q(s)` sums metric `q` over the bookings with `s - span_q < at <= s`.
//! The quotas are rows of [`Quota`]; this rule is written once over them. The usage
//! only rises at a booking's instant, so checking `s = t` and each booked
//! instant in `(t, t + span_q)` is enough. Quotas of different window
//! lengths are met together by moving `t` to the latest instant any one of
//! them asks for until all agree. Because the check covers windows
//! *after* `t` too, a small call may be slotted into a gap before calls booked
//! earlier without delaying any of them (backfilling), and nothing already
//! granted ever has to move.

use crate::clock::{Day, DayZone, Timestamp};
use crate::policy::{Limits, LimitsOverride, Metric, Quota, Usage, Window};
use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

/// Identifies a grant for its whole life (plan, wait, send, settle).
pub type GrantId = u64;

/// What `/status` counts as "the last 60 s".
const LAST_MINUTE: Duration = Duration::from_secs(60);

/// How many gap instants a plan examines before it goes to the end of the
/// lane's queue. Bounds planning cost when thousands of grants wait; the end
/// of the queue always fits, so this can only forgo a backfill, never overbook.
const MAX_GAP_CANDIDATES: usize = 512;

/// Learned limits lapse this long after the upstream last enforced them.
pub const LEARNED_TTL: Duration = Duration::from_secs(7 * 86_400);

/// How many midnights a search may cross before giving up.
const MAX_DAYS_AHEAD: usize = 8;

/// The sliding window lengths, shortest first ([`Quota::sliding_lengths`]),
/// worked out once rather than on every plan of every lane.
static SLIDING_LENGTHS: LazyLock<Vec<Duration>> = LazyLock::new(Quota::sliding_lengths);

#[derive(Clone, Copy, Debug, PartialEq)]
struct Booking {
    at: Timestamp,
    usage: Usage,
    grant: GrantId,
}

/// A window of a lane: it ends at `end`, and the bookings whose span
/// covers `end` are `bookings[lo..hi]`.
#[derive(Clone, Copy)]
struct Held {
    end: Timestamp,
    lo: usize,
    hi: usize,
}

/// A running total of bookings' usage. Wide enough that no sum of `u64`s
/// saturates, so a window's usage is the difference of two totals, clamped
/// to `u64` exactly as adding its bookings one by one (saturating) would be.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Total {
    requests: u128,
    input_tokens: u128,
    output_tokens: u128,
}

impl Total {
    fn plus(self, u: Usage) -> Total {
        Total {
            requests: self.requests + u128::from(u.requests),
            input_tokens: self.input_tokens + u128::from(u.input_tokens),
            output_tokens: self.output_tokens + u128::from(u.output_tokens),
        }
    }

    /// What was added between `earlier` and `self`, saturated to `u64`.
    fn since(self, earlier: Total) -> Usage {
        let clamp = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
        Usage {
            requests: clamp(self.requests - earlier.requests),
            input_tokens: clamp(self.input_tokens - earlier.input_tokens),
            output_tokens: clamp(self.output_tokens - earlier.output_tokens),
        }
    }
}

/// What `/status` shows of a lane at one instant.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LaneUsage {
    pub tokens_last_60s: u64,
    pub output_tokens_last_60s: u64,
    pub requests_last_60s: u32,
    pub requests_today: u32,
    pub tokens_today: u64,
    pub waiting: u32,
    pub cooldown_until: Option<Timestamp>,
    pub exhausted_today: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(into = "Stored", from = "Stored")]
pub struct Lane {
    /// Sorted by (at, grant).
    bookings: Vec<Booking>,
    /// The index of `bookings`: `totals[i]` is the usage of `bookings[..=i]`,
    /// so a window's usage is two binary searches rather than a walk. A
    /// function of `bookings` alone, kept in step by every change to them and
    /// rebuilt from the shared form (never stored).
    totals: Vec<Total>,
    /// What was booked per quota day (sent, in flight or waiting), the day
    /// being the provider's (Pacific for Gemini).
    per_day: BTreeMap<NaiveDate, Usage>,
    cooldown_until: Timestamp,
    /// A per-day 429 said this lane is spent for that day.
    exhausted_day: Option<NaiveDate>,
    /// Limits the upstream taught this lane (each only ever lowered), and when
    /// it last said so: they lapse [`LEARNED_TTL`] later.
    learned: LimitsOverride,
    learned_at: Timestamp,
    /// Consecutive failures without a quota answer to go by; grows the backoff.
    strikes: u32,
    /// The day a learned limit of 0 was last confirmed or re-checked:
    /// at most one call a day re-checks it.
    zero_checked: Option<NaiveDate>,
}

/// A lane as replicas share it (`super::replicated`): integers only, so it
/// is small and fast to read on every plan.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// (instant in ms, tokens, grant) per booking.
    bookings: Vec<(i64, u64, GrantId)>,
    /// (place in `bookings`, requests) of the bookings that count more than
    /// one request (a batch of embeddings); every other booking is one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    weights: Vec<(usize, u64)>,
    /// (place in `bookings`, output tokens) of the bookings that reserve or
    /// spent output tokens (providers with an output-token quota).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    outputs: Vec<(usize, u64)>,
    /// (days from the common era, requests) per quota day.
    per_day: Vec<(i32, u32)>,
    /// (days from the common era, input tokens) per quota day.
    #[serde(default)]
    day_tokens: Vec<(i32, u64)>,
    /// (days from the common era, output tokens), days with any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    day_outputs: Vec<(i32, u64)>,
    cooldown_until: i64,
    exhausted_day: Option<i32>,
    learned: LimitsOverride,
    learned_at: i64,
    strikes: u32,
    #[serde(default)]
    zero_checked: Option<i32>,
}

/// (place, value) of the items whose value is not the `usual` one: a column
/// of the stored form that costs nothing where every item is usual.
fn sparse<T>(items: &[T], value: impl Fn(&T) -> u64, usual: u64) -> Vec<(usize, u64)> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| (i, value(item)))
        .filter(|&(_, v)| v != usual)
        .collect()
}

/// The value a [`sparse`] column holds for place `i`.
fn at_place(column: &[(usize, u64)], i: usize, usual: u64) -> u64 {
    column.iter().find(|c| c.0 == i).map_or(usual, |c| c.1)
}

impl From<Lane> for Stored {
    fn from(lane: Lane) -> Stored {
        Stored {
            bookings: lane
                .bookings
                .iter()
                .map(|b| (b.at.millis(), b.usage.input_tokens, b.grant))
                .collect(),
            weights: sparse(&lane.bookings, |b| b.usage.requests, 1),
            outputs: sparse(&lane.bookings, |b| b.usage.output_tokens, 0),
            per_day: lane
                .per_day
                .iter()
                .map(|(d, u)| (d.num_days_from_ce(), u.requests as u32))
                .collect(),
            day_tokens: lane
                .per_day
                .iter()
                .map(|(d, u)| (d.num_days_from_ce(), u.input_tokens))
                .collect(),
            day_outputs: lane
                .per_day
                .iter()
                .filter(|(_, u)| u.output_tokens != 0)
                .map(|(d, u)| (d.num_days_from_ce(), u.output_tokens))
                .collect(),
            cooldown_until: lane.cooldown_until.millis(),
            exhausted_day: lane.exhausted_day.map(|d| d.num_days_from_ce()),
            learned: lane.learned,
            learned_at: lane.learned_at.millis(),
            strikes: lane.strikes,
            zero_checked: lane.zero_checked.map(|d| d.num_days_from_ce()),
        }
    }
}

impl From<Stored> for Lane {
    fn from(s: Stored) -> Lane {
        let day = |n: i32| NaiveDate::from_num_days_from_ce_opt(n).unwrap_or_default();
        let mut lane = Lane {
            bookings: s
                .bookings
                .into_iter()
                .enumerate()
                .map(|(i, (at, tokens, grant))| {
                    let requests = at_place(&s.weights, i, 1);
                    let output_tokens = at_place(&s.outputs, i, 0);
                    Booking {
                        at: Timestamp(at),
                        usage: Usage {
                            requests,
                            input_tokens: tokens,
                            output_tokens,
                        },
                        grant,
                    }
                })
                .collect(),
            totals: Vec::new(),
            per_day: s
                .per_day
                .iter()
                .map(|&(d, n)| {
                    let tokens = s.day_tokens.iter().find(|t| t.0 == d).map_or(0, |t| t.1);
                    let outputs = s.day_outputs.iter().find(|o| o.0 == d).map_or(0, |o| o.1);
                    let usage = Usage {
                        requests: u64::from(n),
                        input_tokens: tokens,
                        output_tokens: outputs,
                    };
                    (day(d), usage)
                })
                .collect(),
            cooldown_until: Timestamp(s.cooldown_until),
            exhausted_day: s.exhausted_day.map(day),
            learned: s.learned,
            learned_at: Timestamp(s.learned_at),
            strikes: s.strikes,
            zero_checked: s.zero_checked.map(day),
        };
        lane.index_from(0);
        lane
    }
}

impl Lane {
    /// What this lane has learned, unless it has lapsed by `now`.
    pub fn learned(&self, now: Timestamp) -> Option<LimitsOverride> {
        let fresh = now < self.learned_at.plus(LEARNED_TTL);
        (fresh && self.learned != LimitsOverride::default()).then_some(self.learned)
    }

    /// Whether `call` still fits the per-day quotas of `day`.
    pub fn day_admits(&self, limits: Limits, day: NaiveDate, call: Usage) -> bool {
        self.exhausted_day != Some(day) && limits.admits(Window::Day, self.used_on(day), call)
    }

    /// How many more requests `day` takes under `limits` (0 once spent).
    pub fn day_room(&self, limits: Limits, day: NaiveDate) -> u64 {
        if self.exhausted_day == Some(day) {
            return 0;
        }
        let used = self.used_on(day).requests;
        Quota::ALL
            .iter()
            .filter(|q| q.window() == Window::Day && q.metric() == Metric::Requests)
            .map(|&q| limits.get(q).saturating_sub(used))
            .min()
            .unwrap_or(u64::MAX)
    }

    pub fn booked_on(&self, day: NaiveDate) -> u32 {
        self.used_on(day).requests as u32
    }

    /// What the calls of `day` spent (booked, sent or in flight).
    pub fn used_on(&self, day: NaiveDate) -> Usage {
        self.per_day.get(&day).copied().unwrap_or_default()
    }

    /// The earliest instant at or after `from` when `call` fits, or `None` if
    /// it never can (more than a quota allows even when empty, or no day
    /// left within the horizon). `today` is the quota day of `from`. A plan
    /// bounds its search ([`Lane::earliest_up_to`]); the tests ask this.
    #[cfg(test)]
    pub fn earliest(
        &self,
        limits: Limits,
        call: Usage,
        from: Timestamp,
        today: Day,
        guard: Duration,
    ) -> Option<Timestamp> {
        self.earliest_up_to(limits, call, from, today, guard, Timestamp(i64::MAX))
    }

    /// [`Lane::earliest`] for a plan that already holds an instant `bound`
    /// on another lane: the same answer when it is at or before `bound`;
    /// otherwise, as soon as the search passes `bound`, some later instant
    /// (or `None`), which cannot beat it. So a lane whose queue runs past
    /// the best so far is not searched to its end.
    pub fn earliest_up_to(
        &self,
        limits: Limits,
        call: Usage,
        from: Timestamp,
        today: Day,
        guard: Duration,
        bound: Timestamp,
    ) -> Option<Timestamp> {
        if !limits.can_ever_admit(call) {
            return None;
        }
        let (mut from, mut day) = (from, today);
        if self.cooldown_until > from {
            from = self.cooldown_until;
            day = Day::of(from, today.zone);
        }
        for _ in 0..MAX_DAYS_AHEAD {
            if from > bound {
                return Some(from);
            }
            if self.day_admits(limits, day.date, call) {
                let t = self.earliest_in_sliding_windows(limits, call, from, guard, bound);
                if t < day.ends || t > bound {
                    return Some(t);
                }
            }
            from = day.ends;
            day = day.next();
        }
        None
    }

    /// The earliest instant at or after `from` that fits every sliding
    /// quota: each window length in turn moves `t` to the earliest instant it
    /// admits, until every length has admitted the same `t` (an instant one
    /// length refuses can never be the answer, so none is skipped). Past
    /// `bound`, an instant after it.
    fn earliest_in_sliding_windows(
        &self,
        limits: Limits,
        call: Usage,
        from: Timestamp,
        guard: Duration,
        bound: Timestamp,
    ) -> Timestamp {
        let lengths = SLIDING_LENGTHS.as_slice();
        let (mut t, mut admitted) = (from, 0);
        for &length in lengths.iter().cycle() {
            if admitted == lengths.len() || t > bound {
                break;
            }
            let next = self.earliest_in_window(limits, call, t, length, length + guard, bound);
            // The length that moved `t` admits where it moved it to.
            admitted = if next == t { admitted + 1 } else { 1 };
            t = next;
        }
        t
    }

    /// The earliest instant at or after `from` that fits the quotas that
    /// slide over `length` (each booking holding them for `span`).
    ///
    /// Fitting can only begin at `from`, at a booking's instant or at the end
    /// of a booking's span; those candidates are walked in order without
    /// building a list (both sequences are already sorted). When a candidate
    /// is refused by the window ending at `s`, every candidate up to `s` would
    /// be refused by that same window, so the walk resumes after `s`. Past
    /// `bound`, the first candidate after it.
    fn earliest_in_window(
        &self,
        limits: Limits,
        call: Usage,
        from: Timestamp,
        length: Duration,
        span: Duration,
        bound: Timestamp,
    ) -> Timestamp {
        // A place no later than any the search looks for: it only moves on.
        let mut place = self.bookings.partition_point(|b| b.at.plus(span) <= from);
        let tail = self.bookings[place..]
            .last()
            .map_or(from, |b| b.at.max(from));
        let mut t = from;
        let mut examined = 0;
        loop {
            if t > bound {
                return t;
            }
            // Past the gap budget, go straight to the end of the queue.
            if examined == MAX_GAP_CANDIDATES && t < tail {
                t = tail;
            }
            let Some(refusing) = self.refusing_window(limits, call, t, (length, span), place)
            else {
                return t;
            };
            examined += 1;
            // Fitting can next begin where the first booking after the
            // refusing window's end starts, or where the first span still
            // covering that end ends.
            let starting = self.bookings.get(refusing.hi).map(|b| b.at);
            let ending = self.bookings.get(refusing.lo).map(|b| b.at.plus(span));
            t = starting
                .into_iter()
                .chain(ending)
                .min()
                .expect("after the last booking's span the window is empty");
            place = refusing.lo;
        }
    }

    /// `None` if `call` fits at `t`; else the latest window that would go
    /// over (ending at `t` or later). `place` is no later than the first
    /// booking whose span covers `t`.
    fn refusing_window(
        &self,
        limits: Limits,
        call: Usage,
        t: Timestamp,
        (length, span): (Duration, Duration),
        place: usize,
    ) -> Option<Held> {
        let over =
            |w: Held| !limits.admits(Window::Sliding(length), self.used_by(w.lo, w.hi), call);
        // The windows ending at the booked instants in (t, t + span), latest
        // first: both ends of the bookings one holds only move down as the
        // window does, so each step costs what its ends move.
        let first = self.place_from(place, |b| b.at <= t);
        let last = self.place_from(first, |b| b.at < t.plus(span));
        if let Some(latest) = last.checked_sub(1).filter(|&i| i >= first) {
            let end = self.bookings[latest].at;
            let lo = self.place_from(place, |b| b.at.plus(span) <= end);
            let mut w = Held { end, lo, hi: last };
            for j in (first..last).rev() {
                w.end = self.bookings[j].at;
                while w.hi > j + 1 && self.bookings[w.hi - 1].at > w.end {
                    w.hi -= 1;
                }
                while w.lo > 0 && self.bookings[w.lo - 1].at.plus(span) > w.end {
                    w.lo -= 1;
                }
                if over(w) {
                    return Some(w);
                }
            }
        }
        let lo = self.place_from(place, |b| b.at.plus(span) <= t);
        let w = Held {
            end: t,
            lo,
            hi: first,
        };
        over(w).then_some(w)
    }

    /// The first place at or after `from` where `before` stops holding (it
    /// holds on a prefix of the bookings), galloping from `from`: a search
    /// that moves on a few bookings at a time pays for the few, not for the
    /// whole queue.
    fn place_from(&self, from: usize, before: impl Fn(&Booking) -> bool) -> usize {
        let rest = &self.bookings[from..];
        let mut end = 1;
        while end <= rest.len() && before(&rest[end - 1]) {
            end *= 2;
        }
        let start = end / 2;
        from + start + rest[start..end.min(rest.len())].partition_point(before)
    }

    /// What the bookings whose span covers instant `s` spent.
    fn usage_ending_at(&self, s: Timestamp, span: Duration) -> Usage {
        let lo = self.bookings.partition_point(|b| b.at.plus(span) <= s);
        let hi = self.bookings.partition_point(|b| b.at <= s);
        self.used_by(lo, hi)
    }

    /// What `bookings[lo..hi]` spent (nothing when `hi <= lo`), from the index.
    fn used_by(&self, lo: usize, hi: usize) -> Usage {
        if hi <= lo {
            return Usage::default();
        }
        let before = lo
            .checked_sub(1)
            .map_or(Total::default(), |i| self.totals[i]);
        self.totals[hi - 1].since(before)
    }

    /// Brings the index in step with `bookings` from place `i` on (the places
    /// before `i` are unchanged): linear in what follows `i`, as the insert
    /// or removal that calls it already is.
    fn index_from(&mut self, i: usize) {
        self.totals.truncate(i);
        let mut total = self.totals.last().copied().unwrap_or_default();
        for b in &self.bookings[i..] {
            total = total.plus(b.usage);
            self.totals.push(total);
        }
    }

    /// Books `usage` at `at`, counted in its day of `zone`.
    pub fn book(&mut self, grant: GrantId, at: Timestamp, usage: Usage, zone: DayZone) {
        let i = self
            .bookings
            .partition_point(|b| (b.at, b.grant) < (at, grant));
        self.bookings.insert(i, Booking { at, usage, grant });
        self.index_from(i);
        let day = self.per_day.entry(zone.day_of(at)).or_default();
        *day = *day + usage;
    }

    /// Puts back a call a previous run made (from the state store): it fills
    /// the window like a booking; its day is counted by [`Lane::restore_day`].
    pub fn restore_call(&mut self, at: Timestamp, usage: Usage) {
        let i = self.bookings.partition_point(|b| b.at <= at);
        self.bookings.insert(
            i,
            Booking {
                at,
                usage,
                grant: 0,
            },
        );
        self.index_from(i);
    }

    /// Sets a day's usage from the state store (never lowers it).
    pub fn restore_day(&mut self, day: NaiveDate, used: Usage) {
        let n = self.per_day.entry(day).or_default();
        n.requests = n.requests.max(used.requests);
        n.input_tokens = n.input_tokens.max(used.input_tokens);
    }

    /// Puts back limits learned by a previous run, at `at`.
    pub fn restore_learned(&mut self, learned: LimitsOverride, at: Timestamp) {
        (self.learned, self.learned_at) = (learned, at);
    }

    /// The upstream served the call: its booking counts what the upstream
    /// counted, and the lane's failures are forgotten.
    pub fn settle(
        &mut self,
        grant: GrantId,
        at: Timestamp,
        booked: Usage,
        spent: Usage,
        zone: DayZone,
    ) {
        self.keep(grant, at, booked, spent, zone);
        self.strikes = 0;
    }

    /// The call counted upstream (or may have) but was not served: its
    /// booking (`booked`) counts `spent` instead, in its window if it is
    /// still there and in its day whatever the window has forgotten.
    pub fn keep(
        &mut self,
        grant: GrantId,
        at: Timestamp,
        booked: Usage,
        spent: Usage,
        zone: DayZone,
    ) {
        if let Some(b) = self.find(grant, at) {
            self.bookings[b].usage = spent;
            self.index_from(b);
        }
        if let Some(day) = self.per_day.get_mut(&zone.day_of(at)) {
            *day = *day + spent - booked;
        }
    }

    /// Frees a booking that never reached the upstream.
    pub fn release(&mut self, grant: GrantId, at: Timestamp, zone: DayZone) {
        if let Some(b) = self.find(grant, at) {
            let booking = self.bookings.remove(b);
            self.index_from(b);
            if let Some(day) = self.per_day.get_mut(&zone.day_of(at)) {
                *day = *day - booking.usage;
            }
        }
    }

    fn find(&self, grant: GrantId, at: Timestamp) -> Option<usize> {
        let i = self
            .bookings
            .partition_point(|b| (b.at, b.grant) < (at, grant));
        (self.bookings.get(i).map(|b| b.grant) == Some(grant)).then_some(i)
    }

    /// Holds the lane back until `until` (a 429's `retryDelay`).
    pub fn cool_until(&mut self, until: Timestamp) {
        self.cooldown_until = self.cooldown_until.max(until);
    }

    /// A failure with nothing to go by: back off 1, 2, 4 … × `base`, at most a minute.
    pub fn strike(&mut self, now: Timestamp, base: Duration) {
        let backoff = base
            .saturating_mul(1 << self.strikes.min(10))
            .min(Duration::from_secs(60));
        self.cool_until(now.plus(backoff));
        self.strikes += 1;
    }

    pub fn exhaust_day(&mut self, day: NaiveDate) {
        self.exhausted_day = Some(day);
    }

    /// Lowers a learned limit to what the upstream enforced (never raises
    /// it) and restarts its lifetime; `current` is what was in force. A
    /// limit of 0 (no quota at all) is learned like any other.
    pub fn learn(&mut self, current: Limits, taught: LimitsOverride, now: Timestamp) {
        if self.learned(now).is_none() {
            self.learned = LimitsOverride::default();
        }
        for q in Quota::ALL {
            // Lowered, or raised from a learned 0 (the quota is back).
            let from_zero = |v: u64| v > 0 && self.learned.get(q) == Some(0);
            if let Some(v) = taught
                .get(q)
                .filter(|&v| v < current.get(q) || from_zero(v))
            {
                self.learned.set(q, v);
            }
        }
        if !taught.is_empty() && !self.learned.is_empty() {
            self.learned_at = now;
        }
    }

    /// When the upstream last enforced what this lane learned.
    pub fn learned_at(&self) -> Timestamp {
        self.learned_at
    }

    /// What this lane has learned, lapsed or not (what the state store keeps).
    pub fn learned_limits(&self) -> LimitsOverride {
        self.learned
    }

    /// Forgets learned limits of 0 (a re-check found quota there again);
    /// whether there were any.
    pub fn forget_zeros(&mut self) -> bool {
        let zeros: Vec<Quota> = Quota::ALL
            .into_iter()
            .filter(|&q| self.learned.get(q) == Some(0))
            .collect();
        for &q in &zeros {
            self.learned.clear(q);
        }
        !zeros.is_empty()
    }

    /// The Pacific day a learned 0 was last confirmed or re-checked.
    pub fn zero_checked(&self) -> Option<NaiveDate> {
        self.zero_checked
    }

    pub fn check_zero_on(&mut self, day: NaiveDate) {
        self.zero_checked = Some(day);
    }

    /// A re-check booked on `day` came to nothing (released, never reached
    /// the upstream, or not answered on quota): the day's re-check is free again.
    pub fn uncheck_zero_on(&mut self, day: NaiveDate) {
        if self.zero_checked == Some(day) {
            self.zero_checked = None;
        }
    }

    /// Drops what can no longer affect any decision: bookings whose longest
    /// span ended before `now`, day counts of past days.
    pub fn forget_before(&mut self, now: Timestamp, today: NaiveDate, guard: Duration) {
        let longest = SLIDING_LENGTHS.last().copied().unwrap_or(Duration::ZERO);
        let span = longest + guard;
        // Most plans find nothing to forget: the first booking says so.
        let gone = match self.bookings.first() {
            Some(first) if first.at.plus(span) <= now => {
                self.bookings.partition_point(|b| b.at.plus(span) <= now)
            }
            _ => 0,
        };
        if gone > 0 {
            self.bookings.drain(..gone);
            self.index_from(0);
        }
        if self
            .per_day
            .first_key_value()
            .is_some_and(|(day, _)| *day < today)
        {
            self.per_day.retain(|day, _| *day >= today);
        }
    }

    /// What `/status` shows at `now`, `today` being its quota day.
    pub fn usage(&self, now: Timestamp, today: NaiveDate) -> LaneUsage {
        let minute = self.usage_ending_at(now, LAST_MINUTE);
        let used_today = self.used_on(today);
        LaneUsage {
            tokens_last_60s: minute.input_tokens,
            output_tokens_last_60s: minute.output_tokens,
            requests_last_60s: minute.requests as u32,
            requests_today: used_today.requests as u32,
            tokens_today: used_today.input_tokens,
            waiting: self.bookings.iter().filter(|b| b.at > now).count() as u32,
            cooldown_until: (self.cooldown_until > now).then_some(self.cooldown_until),
            exhausted_today: self.exhausted_day == Some(today),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUARD: Duration = Duration::from_millis(250);
    const SPAN: Duration = Duration::from_secs(60).saturating_add(GUARD);
    const FLASH: Limits = Limits {
        rpm: 10,
        tpm: 250_000,
        rpd: 250,
        tpd: crate::policy::UNLIMITED,
        otpm: crate::policy::UNLIMITED,
    };
    const T0: Timestamp = Timestamp(1_781_118_000_000); // 2026-06-10 12:00 Pacific

    fn lane_with(bookings: &[(i64, u64)]) -> Lane {
        let mut lane = Lane::default();
        for (i, &(offset, tokens)) in bookings.iter().enumerate() {
            lane.book(
                i as GrantId,
                T0.plus_millis(offset),
                Usage::call(tokens),
                DayZone::PACIFIC,
            );
        }
        lane
    }

    #[test]
    fn a_large_call_waits_exactly_until_enough_tokens_leave() {
        let lane = lane_with(&[(0, 200_000)]);
        let t = lane
            .earliest(
                FLASH,
                Usage::call(100_000),
                T0.plus_millis(10_000),
                Day::of(T0, DayZone::PACIFIC),
                GUARD,
            )
            .unwrap();
        assert_eq!(t, T0.plus(SPAN));
    }

    #[test]
    fn a_small_call_backfills_a_gap_without_delaying_a_booked_one() {
        // 200k booked 30 s from now; 40k now would push the 30 s window to 240k: fine.
        let lane = lane_with(&[(30_000, 200_000)]);
        assert_eq!(
            lane.earliest(
                FLASH,
                Usage::call(40_000),
                T0,
                Day::of(T0, DayZone::PACIFIC),
                GUARD
            ),
            Some(T0)
        );
        // 60k now would break the booked call's window: it must wait until after it.
        assert_eq!(
            lane.earliest(
                FLASH,
                Usage::call(60_000),
                T0,
                Day::of(T0, DayZone::PACIFIC),
                GUARD
            ),
            Some(T0.plus_millis(30_000).plus(SPAN))
        );
    }

    #[test]
    fn rpm_binds_before_tpm_for_small_calls() {
        let lane = lane_with(&(0..10).map(|i| (i * 1_000, 100)).collect::<Vec<_>>());
        let t = lane
            .earliest(
                FLASH,
                Usage::call(100),
                T0.plus_millis(10_000),
                Day::of(T0, DayZone::PACIFIC),
                GUARD,
            )
            .unwrap();
        assert_eq!(t, T0.plus(SPAN), "the first call's span must end");
    }

    #[test]
    fn cooldown_and_day_exhaustion_push_the_instant() {
        let mut lane = Lane::default();
        lane.cool_until(T0.plus_millis(39_000));
        assert_eq!(
            lane.earliest(
                FLASH,
                Usage::call(1),
                T0,
                Day::of(T0, DayZone::PACIFIC),
                GUARD
            ),
            Some(T0.plus_millis(39_000))
        );
        lane.exhaust_day(T0.pacific_day());
        assert_eq!(
            lane.earliest(
                FLASH,
                Usage::call(1),
                T0,
                Day::of(T0, DayZone::PACIFIC),
                GUARD
            ),
            Some(T0.next_pacific_midnight())
        );
    }

    #[test]
    fn a_call_larger_than_the_tpm_never_fits() {
        assert_eq!(
            Lane::default().earliest(
                FLASH,
                Usage::call(250_001),
                T0,
                Day::of(T0, DayZone::PACIFIC),
                GUARD
            ),
            None
        );
    }

    #[test]
    fn release_frees_capacity_and_the_day_count() {
        let mut lane = lane_with(&[(0, 250_000)]);
        assert_eq!(lane.booked_on(T0.pacific_day()), 1);
        lane.release(0, T0, DayZone::PACIFIC);
        assert_eq!(lane.booked_on(T0.pacific_day()), 0);
        assert_eq!(
            lane.earliest(
                FLASH,
                Usage::call(250_000),
                T0,
                Day::of(T0, DayZone::PACIFIC),
                GUARD
            ),
            Some(T0)
        );
    }

    #[test]
    fn learning_only_lowers_and_lapses_after_a_week_unless_seen_again() {
        let mut lane = Lane::default();
        lane.learn(
            FLASH,
            LimitsOverride {
                tpm: Some(50_000),
                rpm: Some(20),
                ..Default::default()
            },
            T0,
        );
        assert_eq!(
            lane.learned(T0),
            Some(LimitsOverride {
                tpm: Some(50_000),
                ..Default::default()
            })
        );
        let current = Limits {
            tpm: 50_000,
            ..FLASH
        };
        lane.learn(
            current,
            LimitsOverride {
                tpm: Some(80_000),
                ..Default::default()
            },
            T0,
        );
        assert_eq!(lane.learned(T0).unwrap().tpm, Some(50_000));
        // Seen again on day 6: the week starts over.
        let day = 86_400_000;
        lane.learn(
            current,
            LimitsOverride {
                tpm: Some(50_000),
                ..Default::default()
            },
            T0.plus_millis(6 * day),
        );
        assert!(lane.learned(T0.plus_millis(12 * day)).is_some());
        assert_eq!(lane.learned(T0.plus_millis(13 * day)), None);
    }

    #[test]
    fn a_lane_comes_back_from_its_shared_form_unchanged() {
        let mut lane = lane_with(&[(0, 200_000), (30_000, 1_000)]);
        // Restored calls (grant 0) of different weights, and a batch.
        let batch = |requests| Usage {
            requests,
            input_tokens: 90,
            output_tokens: 0,
        };
        lane.restore_call(T0.plus_millis(1_000), batch(3));
        lane.restore_call(T0.plus_millis(2_000), batch(1));
        lane.book(7, T0.plus_millis(3_000), batch(5), DayZone::PACIFIC);
        // A call reserving output tokens (another provider's).
        let reserving = Usage::call(10).with_output(700);
        lane.book(8, T0.plus_millis(4_000), reserving, DayZone::PACIFIC);
        lane.cool_until(T0.plus_millis(5_000));
        lane.exhaust_day(T0.pacific_day());
        lane.learn(
            FLASH,
            LimitsOverride {
                tpm: Some(50_000),
                ..Default::default()
            },
            T0,
        );
        lane.strike(T0, Duration::from_secs(1));
        let text = serde_json::to_string(&lane).unwrap();
        assert_eq!(serde_json::from_str::<Lane>(&text).unwrap(), lane);
    }

    #[test]
    fn strikes_back_off_exponentially_up_to_a_minute() {
        let mut lane = Lane::default();
        for expected in [1, 2, 4, 8, 16, 32, 60, 60] {
            lane.cooldown_until = Timestamp(0);
            lane.strike(T0, Duration::from_secs(1));
            assert_eq!(lane.cooldown_until, T0.plus_millis(expected * 1_000));
        }
    }

    /// A small deterministic generator (xorshift64*), so a failing case
    /// comes back on every run.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
        }

        fn usage(&mut self) -> Usage {
            Usage {
                requests: [1, 1, 1, 3][self.below(4) as usize],
                // Now and then a figure no window could hold: sums saturate.
                input_tokens: match self.below(40) {
                    0 => u64::MAX - self.below(1_000),
                    _ => self.below(120_000),
                },
                output_tokens: [0, 0, 500, 9_000][self.below(4) as usize],
            }
        }

        /// An instant near `T0`, on a 250 ms grid so bookings share
        /// instants and spans end exactly on other bookings.
        fn instant(&mut self) -> Timestamp {
            T0.plus_millis(self.below(800) as i64 * 250 - 30_000)
        }
    }

    /// The usage of the window ending at `s`, summed booking by booking.
    fn walked_usage(lane: &Lane, s: Timestamp, span: Duration) -> Usage {
        lane.bookings
            .iter()
            .filter(|b| b.at <= s && b.at.plus(span) > s)
            .map(|b| b.usage)
            .sum()
    }

    /// Whether `call` fits at `t` under every sliding quota, by the rule of
    /// the module's doc: the window ending at `t` and at each booked instant
    /// in `(t, t + span)`, each summed by a walk.
    fn walked_fits(lane: &Lane, limits: Limits, call: Usage, t: Timestamp) -> bool {
        SLIDING_LENGTHS.iter().all(|&length| {
            let span = length + GUARD;
            let later = lane.bookings.iter().map(|b| b.at);
            std::iter::once(t)
                .chain(later.filter(|&s| s > t && s < t.plus(span)))
                .all(|s| limits.admits(Window::Sliding(length), walked_usage(lane, s, span), call))
        })
    }

    /// The earliest instant at or after `from` that [`walked_fits`]: fitting
    /// can only begin at `from`, a booked instant or the end of a span, so
    /// every one of those is tried in order.
    fn walked_earliest(lane: &Lane, limits: Limits, call: Usage, from: Timestamp) -> Timestamp {
        let mut candidates = vec![from];
        for b in &lane.bookings {
            candidates.push(b.at);
            candidates.extend(SLIDING_LENGTHS.iter().map(|&l| b.at.plus(l + GUARD)));
        }
        candidates.retain(|&c| c >= from);
        candidates.sort();
        candidates
            .into_iter()
            .find(|&t| walked_fits(lane, limits, call, t))
            .expect("after the last span every window is empty")
    }

    /// The index (running totals) answers as a walk over the bookings does,
    /// through bookings, releases, settlements and forgetting, and equals
    /// the index rebuilt from the lane's shared form.
    #[test]
    fn the_indexed_search_answers_as_a_walk_over_the_bookings() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let zone = DayZone::PACIFIC;
        let (mut searched, mut backfilled) = (0, 0);
        for _ in 0..150 {
            let limits = Limits {
                rpm: 2 + rng.below(12) as u32,
                tpm: 60_000 + rng.below(240_000),
                otpm: [crate::policy::UNLIMITED, 20_000][rng.below(2) as usize],
                ..FLASH
            };
            let mut lane = Lane::default();
            let mut grants = Vec::new();
            for g in 0..rng.below(40) {
                let (at, usage) = (rng.instant(), rng.usage());
                lane.book(g, at, usage, zone);
                grants.push((g, at, usage));
            }
            for _ in 0..4 {
                assert_eq!(Lane::from(Stored::from(lane.clone())), lane);
                for _ in 0..8 {
                    let (s, span) = (rng.instant(), SPAN);
                    assert_eq!(lane.usage_ending_at(s, span), walked_usage(&lane, s, span));
                }
                for _ in 0..4 {
                    let call = Usage {
                        requests: 1 + rng.below(2),
                        input_tokens: rng.below(limits.tpm / 2),
                        output_tokens: [0, 4_000][rng.below(2) as usize],
                    };
                    let from = rng.instant();
                    let t = lane.earliest_in_sliding_windows(
                        limits,
                        call,
                        from,
                        GUARD,
                        Timestamp(i64::MAX),
                    );
                    assert_eq!(t, walked_earliest(&lane, limits, call, from), "from {from}");
                    // Bounded by another lane's instant: exact up to it, later past it.
                    let bound = rng.instant();
                    let day = Day::of(from, zone);
                    let cut = lane.earliest_up_to(limits, call, from, day, GUARD, bound);
                    let whole = lane.earliest(limits, call, from, day, GUARD);
                    match whole {
                        Some(w) if w <= bound => assert_eq!(cut, whole),
                        _ => assert!(cut.is_none_or(|c| c > bound), "{cut:?} by {bound}"),
                    }
                    searched += 1;
                    let last = lane.bookings.last().map_or(from, |b| b.at);
                    backfilled += usize::from(t < last);
                }
                // Change the lane one way or another, then check it again.
                let pick = rng.below(grants.len() as u64) as usize;
                match (rng.below(4), grants.get(pick).copied()) {
                    (0, Some((g, at, _))) => {
                        lane.release(g, at, zone);
                        grants.remove(pick);
                    }
                    (1, Some((g, at, booked))) => {
                        let spent = rng.usage();
                        lane.keep(g, at, booked, spent, zone);
                        grants[pick].2 = spent;
                    }
                    (2, _) => lane.forget_before(rng.instant(), T0.pacific_day(), GUARD),
                    _ => {
                        let (at, usage) = (rng.instant(), rng.usage());
                        lane.restore_call(at, usage);
                    }
                }
            }
        }
        // The cases reach both answers: a gap before queued calls, and later.
        assert!(
            backfilled > 50 && searched - backfilled > 50,
            "{backfilled}/{searched}"
        );
    }
}
