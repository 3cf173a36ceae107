//! Time as gemini-flux and its simulator see it.
//!
//! Quotas are defined on the wall clock (a 60-second window, a calendar day in
//! the provider's time zone: Pacific for Gemini, UTC for most others), while waiting is done on tokio's monotonic clock. [`Clock`] ties the two
//! together: it maps tokio's `Instant` onto milliseconds since the Unix epoch
//! from a fixed origin. Under `tokio::time::pause()` the whole service and the
//! simulator therefore move through a simulated day in milliseconds, and a test
//! may start the clock at any wall-clock moment (say, a minute before the
//! Pacific midnight of a daylight-saving change).

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use std::fmt;
use std::time::Duration;

/// Milliseconds since the Unix epoch. The only notion of "when" the quota
/// logic uses, so it can be computed with plain integer arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    /// The system's wall clock now, for threads outside tokio's clock.
    pub fn wall_now() -> Self {
        Timestamp(Utc::now().timestamp_millis())
    }

    /// The moment `d` later; saturates rather than overflowing.
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(d.as_millis() as i64))
    }

    pub fn plus_millis(self, ms: i64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }

    /// The moment `d` earlier; saturates rather than overflowing.
    pub fn minus(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_sub(d.as_millis() as i64))
    }

    /// How long from `earlier` until `self`; zero if `self` is not later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }

    pub fn to_utc(self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.0).unwrap_or_default()
    }

    /// The Pacific calendar day this moment falls in: Gemini's quota day.
    pub fn pacific_day(self) -> NaiveDate {
        DayZone::PACIFIC.day_of(self)
    }

    /// The next Pacific midnight strictly after this moment: when Gemini's
    /// per-day quotas reset.
    pub fn next_pacific_midnight(self) -> Timestamp {
        DayZone::PACIFIC.next_midnight(self)
    }
}

/// The time zone a provider's per-day quotas reset in: Gemini's day is
/// America/Los_Angeles (DST-aware), most other providers' is UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DayZone(Tz);

impl DayZone {
    pub const PACIFIC: DayZone = DayZone(Tz::America__Los_Angeles);
    pub const UTC: DayZone = DayZone(Tz::UTC);

    /// The zone of an IANA name (`UTC`, `America/Los_Angeles`, `Europe/Paris`).
    pub fn named(name: &str) -> Option<DayZone> {
        name.parse::<Tz>().ok().map(DayZone)
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// The calendar day, in this zone, that `t` falls in.
    pub fn day_of(self, t: Timestamp) -> NaiveDate {
        t.to_utc().with_timezone(&self.0).date_naive()
    }

    /// The first instant of `day` in this zone. Where a DST change skips
    /// midnight itself (a few zones change at 00:00), the first hour that
    /// exists.
    pub fn midnight(self, day: NaiveDate) -> Timestamp {
        (0..3)
            .find_map(|hour| {
                self.0
                    .with_ymd_and_hms(day.year(), day.month(), day.day(), hour, 0, 0)
                    .earliest()
            })
            .map_or(Timestamp(i64::MAX), |local| {
                Timestamp(local.timestamp_millis())
            })
    }

    /// The next midnight of this zone strictly after `t`, when per-day quotas reset.
    pub fn next_midnight(self, t: Timestamp) -> Timestamp {
        let tomorrow = self.day_of(t).succ_opt().unwrap_or(NaiveDate::MAX);
        self.midnight(tomorrow)
    }
}

/// A calendar day of a zone and the instant it ends: computed once per
/// decision, since time-zone arithmetic is the costliest step of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Day {
    pub date: NaiveDate,
    /// The next midnight.
    pub ends: Timestamp,
    pub zone: DayZone,
}

impl Day {
    pub fn of(t: Timestamp, zone: DayZone) -> Day {
        Day {
            date: zone.day_of(t),
            ends: zone.next_midnight(t),
            zone,
        }
    }

    /// The day after this one.
    pub fn next(self) -> Day {
        Day::of(self.ends, self.zone)
    }
}

/// Serialised as RFC 3339 with milliseconds, which every client can parse.
impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            self.to_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )
    }
}

/// Maps tokio's clock onto wall-clock [`Timestamp`]s from a fixed origin.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: tokio::time::Instant,
    origin_wall: Timestamp,
}

impl Clock {
    /// A clock that reads the system's wall time now and follows tokio from there.
    pub fn system() -> Self {
        let now = Timestamp::wall_now().millis();
        Self::starting_at(Timestamp(now))
    }

    /// A clock whose `now()` is `wall` at this tokio instant. Tests use it with
    /// paused time to start anywhere in the calendar.
    pub fn starting_at(wall: Timestamp) -> Self {
        Clock {
            origin: tokio::time::Instant::now(),
            origin_wall: wall,
        }
    }

    pub fn now(&self) -> Timestamp {
        self.origin_wall.plus(self.origin.elapsed())
    }

    /// The tokio instant at which this clock will read `at` (for `sleep_until`).
    pub fn instant_at(&self, at: Timestamp) -> tokio::time::Instant {
        let offset = at.0.saturating_sub(self.origin_wall.0);
        if offset <= 0 {
            self.origin
        } else {
            self.origin + Duration::from_millis(offset as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> Timestamp {
        Timestamp(DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis())
    }

    #[test]
    fn pacific_day_follows_daylight_saving() {
        // Summer: Pacific is UTC-7, so 06:59Z is still the previous day.
        assert_eq!(
            utc("2026-07-01T06:59:59Z").pacific_day().to_string(),
            "2026-06-30"
        );
        assert_eq!(
            utc("2026-07-01T07:00:00Z").pacific_day().to_string(),
            "2026-07-01"
        );
        // Winter: UTC-8.
        assert_eq!(
            utc("2026-12-01T07:59:59Z").pacific_day().to_string(),
            "2026-11-30"
        );
        assert_eq!(
            utc("2026-12-01T08:00:00Z").pacific_day().to_string(),
            "2026-12-01"
        );
    }

    #[test]
    fn next_midnight_across_dst_changes() {
        // 2026-03-08 is the spring-forward day: it lasts 23 hours.
        let start = utc("2026-03-08T08:00:00Z"); // Pacific midnight, still PST
        assert_eq!(start.pacific_day().to_string(), "2026-03-08");
        let next = DayZone::PACIFIC.next_midnight(start);
        assert_eq!(next, utc("2026-03-09T07:00:00Z"));
        assert_eq!(next.since(start), Duration::from_secs(23 * 3600));
        // 2026-11-01 falls back: 25 hours.
        let start = utc("2026-11-01T07:00:00Z");
        assert_eq!(
            DayZone::PACIFIC.next_midnight(start).since(start),
            Duration::from_secs(25 * 3600)
        );
    }

    #[test]
    fn a_utc_day_ends_at_utc_midnight_and_other_zones_by_name() {
        let late = utc("2026-11-25T23:59:59Z");
        assert_eq!(DayZone::UTC.day_of(late).to_string(), "2026-11-25");
        assert_eq!(
            DayZone::UTC.next_midnight(late),
            utc("2026-11-26T00:00:00Z")
        );
        // The same instant is still the 25th in Los Angeles, until 08:00Z.
        assert_eq!(
            DayZone::PACIFIC.next_midnight(late),
            utc("2026-11-26T08:00:00Z")
        );
        let paris = DayZone::named("Europe/Paris").unwrap();
        assert_eq!(paris.next_midnight(late), utc("2026-11-26T23:00:00Z"));
        assert_eq!(DayZone::named("Mars/Olympus"), None);
    }

    #[test]
    fn a_day_whose_midnight_is_skipped_starts_at_its_first_hour() {
        // Chile springs forward at 00:00 on 2026-09-06: that midnight never
        // happens, the day starts at 01:00 local (04:00Z, UTC-3).
        let santiago = DayZone::named("America/Santiago").unwrap();
        let day = NaiveDate::from_ymd_opt(2026, 9, 6).unwrap();
        assert_eq!(santiago.midnight(day), utc("2026-09-06T04:00:00Z"));
    }

    #[tokio::test(start_paused = true)]
    async fn clock_follows_paused_tokio_time() {
        let clock = Clock::starting_at(Timestamp(1_000));
        tokio::time::advance(Duration::from_millis(2_500)).await;
        assert_eq!(clock.now(), Timestamp(3_500));
        assert_eq!(
            clock.instant_at(Timestamp(4_000)) - tokio::time::Instant::now(),
            Duration::from_millis(500)
        );
    }
}
