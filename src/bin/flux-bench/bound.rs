//! The lower bound on makespan: what no scheduler, however clever, can beat
//! given the quotas, the arrivals and the generation time.
//!
//! In any 60 s interval one lane accepts at most TPM tokens and RPM requests,
//! and its requests larger than TPM / 3 form a "bin" of at most two whose sum
//! fits the TPM; the fewest such bins is found exactly by pairing the largest
//! with the smallest that fits (the two-pointer solution of the boats
//! problem). Output tokens a minute bind by what the answers said: a call's
//! reservation shrinks to that when it ends, never below, so the calls
//! admitted in any 60 s say at most OTPM between them. The requests arriving
//! at or after `a_j`
//! must be sent in `[a_j, last send]`; if they need `W` such intervals over
//! the N lanes, the last send is at least `60 s × (W − 1)` after `a_j`. Per-day
//! quotas add whole days (in the provider's zone) when the trace needs more
//! than one. The bound is the largest of these over every `j`, plus the
//! shortest generation time, and never less than the last arrival plus its
//! own generation time. Providers share nothing: a trace that calls several
//! is bounded by its slowest provider's requests on that provider's lanes.

use crate::traces::Request;
use crate::world::{Provider, latency_ms};
use gemini_flux::clock::{DayZone, Timestamp};
use gemini_flux::policy::Limits;

const WINDOW_MS: i64 = 60_000;

/// The fewest 60 s intervals that requests of these input sizes and these
/// outputs said need on `lanes` lanes: by input tokens, by output tokens,
/// by request count, and by the bins of those over TPM / 3.
pub fn intervals(sizes: &[u64], outputs: &[u64], lanes: u64, limits: Limits) -> i64 {
    let per_window = |limit: u64| lanes.saturating_mul(limit);
    let by_tokens = sizes.iter().sum::<u64>().div_ceil(per_window(limits.tpm));
    let by_output = outputs
        .iter()
        .sum::<u64>()
        .div_ceil(per_window(limits.otpm));
    let by_requests = (sizes.len() as u64).div_ceil(per_window(u64::from(limits.rpm)));
    let by_bins = large_bins(sizes, limits.tpm).div_ceil(lanes);
    by_tokens.max(by_output).max(by_requests).max(by_bins) as i64
}

/// The fewest bins of capacity `tpm` that hold every size over `tpm / 3`
/// (at most two of those fit a bin).
fn large_bins(sizes: &[u64], tpm: u64) -> u64 {
    let mut large: Vec<u64> = sizes.iter().copied().filter(|&s| s * 3 > tpm).collect();
    large.sort_unstable();
    let (mut lo, mut hi, mut bins) = (0usize, large.len(), 0u64);
    while lo < hi {
        hi -= 1;
        if lo < hi && large[lo] + large[hi] <= tpm {
            lo += 1;
        }
        bins += 1;
    }
    bins
}

/// The lower bound on makespan (first arrival to last answer), in ms: the
/// slowest provider's, counted from the trace's first arrival.
pub fn makespan_lower_bound(trace: &[Request], providers: &[Provider], start: Timestamp) -> i64 {
    let Some(first) = trace.iter().map(|r| r.arrival_ms).min() else {
        return 0;
    };
    providers
        .iter()
        .enumerate()
        .filter_map(|(p, provider)| {
            let own: Vec<Request> = trace.iter().filter(|r| r.provider == p).copied().collect();
            let own_first = own.iter().map(|r| r.arrival_ms).min()?;
            let lanes = provider.keys as u64;
            let bound = one_provider(&own, lanes, provider.limits, provider.zone, start);
            Some(own_first - first + bound)
        })
        .max()
        .unwrap_or(0)
}

/// The bound for one provider's requests on its `lanes` lanes, from their
/// own first arrival.
fn one_provider(
    trace: &[Request],
    lanes: u64,
    limits: Limits,
    zone: DayZone,
    start: Timestamp,
) -> i64 {
    let mut sorted = trace.to_vec();
    sorted.sort_by_key(|r| r.arrival_ms);
    let first = sorted[0].arrival_ms;
    let shortest = sorted.iter().map(latency_ms).min().unwrap_or(0);
    let mut bound = sorted
        .iter()
        .map(|r| r.arrival_ms + latency_ms(r))
        .max()
        .unwrap_or(0)
        - first;

    // Every suffix of arrivals must fit in the intervals after its first arrival.
    for j in 0..sorted.len() {
        let sizes: Vec<u64> = sorted[j..].iter().map(|r| r.tokens).collect();
        let outputs: Vec<u64> = sorted[j..].iter().map(|r| r.output).collect();
        let w = intervals(&sizes, &outputs, lanes, limits);
        bound = bound.max(sorted[j].arrival_ms - first + WINDOW_MS * (w - 1) + shortest);
    }

    // Per-day quotas: the requests beyond the first days' worth wait for
    // midnights; the fewest intervals they need are those of the smallest.
    let per_day = lanes * u64::from(limits.rpd);
    let total = sorted.len() as u64;
    let days = total.div_ceil(per_day);
    if days > 1 {
        let mut midnight = start.plus_millis(first);
        for _ in 1..days {
            midnight = zone.next_midnight(midnight);
        }
        let rest = (total - (days - 1) * per_day) as usize;
        let smallest = |of: fn(&Request) -> u64| {
            let mut all: Vec<u64> = sorted.iter().map(of).collect();
            all.sort_unstable();
            all.truncate(rest);
            all
        };
        let w = intervals(
            &smallest(|r| r.tokens),
            &smallest(|r| r.output),
            lanes,
            limits,
        );
        let since_start = midnight.millis() - start.millis() - first;
        bound = bound.max(since_start + WINDOW_MS * (w - 1) + shortest);
    }
    bound
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: Timestamp = Timestamp(1_781_118_000_000);

    fn gemini(keys: usize) -> Vec<Provider> {
        vec![Provider::gemini(keys)]
    }

    #[test]
    fn rpm_bound_for_a_burst() {
        // 25 small requests on one lane at 10 RPM: three intervals, so 120 s + latency.
        let trace: Vec<Request> = (0..25).map(|_| Request::gemini(0, 100)).collect();
        assert_eq!(
            makespan_lower_bound(&trace, &gemini(1), START),
            120_000 + 802
        );
    }

    #[test]
    fn large_requests_pair_at_best() {
        // 200k pairs with nothing; 120k + 110k share; 100k + 90k share.
        assert_eq!(
            large_bins(
                &[200_000, 120_000, 110_000, 100_000, 90_000, 10_000],
                250_000
            ),
            3
        );
    }

    #[test]
    fn big_requests_cannot_share_an_interval() {
        let trace: Vec<Request> = (0..4).map(|_| Request::gemini(0, 130_000)).collect();
        assert_eq!(
            makespan_lower_bound(&trace, &gemini(2), START),
            60_000 + 800 + 2_600
        );
    }

    /// A claude call of 100 input tokens that asks for 4,000 output tokens
    /// and says `output` of them.
    fn claude(arrival_ms: i64, output: u64) -> Request {
        Request {
            arrival_ms,
            provider: 1,
            tokens: 100,
            max_output: 4_000,
            output,
        }
    }

    #[test]
    fn output_binds_by_what_the_answers_said_on_the_slowest_provider() {
        let mut providers = gemini(1);
        providers.push(Provider::claude());
        // 8 answers of 3,000 said: 24,000 against 8,000 a minute is three
        // intervals, though their reservations (32,000) would need four.
        let mut trace: Vec<Request> = (0..8).map(|_| claude(1_000, 3_000)).collect();
        // Gemini's one request, first and quick, does not bind.
        trace.push(Request::gemini(0, 100));
        let claude_latency = 800 + 2 + 30_000;
        assert_eq!(
            makespan_lower_bound(&trace, &providers, START),
            1_000 + 2 * 60_000 + claude_latency
        );
        // Gemini's side alone, on its own lanes.
        let gemini_only = [Request::gemini(0, 100)];
        assert_eq!(makespan_lower_bound(&gemini_only, &providers, START), 802);
    }
}
