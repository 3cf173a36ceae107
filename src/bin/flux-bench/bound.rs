//! The lower bound on makespan: what no scheduler, however clever, can beat
//! given the quotas, the arrivals and the generation time.
//!
//! In any 60 s interval one lane accepts at most TPM tokens and RPM requests,
//! and its requests larger than TPM / 3 form a "bin" of at most two whose sum
//! fits the TPM; the fewest such bins is found exactly by pairing the largest
//! with the smallest that fits (the two-pointer solution of the boats
//! problem). The requests arriving at or after `a_j`
//! must be sent in `[a_j, last send]`; if they need `W` such intervals over
//! the N lanes, the last send is at least `60 s × (W − 1)` after `a_j`. Per-day
//! quotas add whole Pacific days when the trace needs more than one. The bound
//! is the largest of these over every `j`, plus the shortest generation time,
//! and never less than the last arrival plus its own generation time.

use crate::traces::Request;
use crate::world::latency_ms;
use gemini_flux::clock::Timestamp;
use gemini_flux::policy::Limits;

const WINDOW_MS: i64 = 60_000;

/// The fewest 60 s intervals that requests of these sizes need on `lanes`
/// lanes: by tokens, by request count, and by the bins of those over TPM / 3.
pub fn intervals(sizes: &[u64], lanes: u64, limits: Limits) -> i64 {
    let tokens: u64 = sizes.iter().sum();
    let by_tokens = tokens.div_ceil(lanes * limits.tpm);
    let by_requests = (sizes.len() as u64).div_ceil(lanes * u64::from(limits.rpm));
    let by_bins = large_bins(sizes, limits.tpm).div_ceil(lanes);
    by_tokens.max(by_requests).max(by_bins) as i64
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

/// The lower bound on makespan (first arrival to last answer), in ms.
pub fn makespan_lower_bound(
    trace: &[Request],
    lanes: usize,
    limits: Limits,
    start: Timestamp,
) -> i64 {
    let lanes = lanes as u64;
    let mut sorted = trace.to_vec();
    sorted.sort_by_key(|r| r.arrival_ms);
    let first = sorted[0].arrival_ms;
    let shortest = sorted
        .iter()
        .map(|r| latency_ms(r.tokens))
        .min()
        .unwrap_or(0);
    let mut bound = sorted
        .iter()
        .map(|r| r.arrival_ms + latency_ms(r.tokens))
        .max()
        .unwrap_or(0)
        - first;

    // Every suffix of arrivals must fit in the intervals after its first arrival.
    for j in 0..sorted.len() {
        let suffix: Vec<u64> = sorted[j..].iter().map(|r| r.tokens).collect();
        let w = intervals(&suffix, lanes, limits);
        bound = bound.max(sorted[j].arrival_ms - first + WINDOW_MS * (w - 1) + shortest);
    }

    // Per-day quotas: the requests beyond the first days' worth wait for midnights.
    let per_day = lanes * u64::from(limits.rpd);
    let total = sorted.len() as u64;
    let days = total.div_ceil(per_day);
    if days > 1 {
        let mut midnight = start.plus_millis(first);
        for _ in 1..days {
            midnight = midnight.next_pacific_midnight();
        }
        let rest = (total - (days - 1) * per_day) as usize;
        let mut smallest: Vec<u64> = sorted.iter().map(|r| r.tokens).collect();
        smallest.sort_unstable();
        let w = intervals(&smallest[..rest], lanes, limits);
        let since_start = midnight.millis() - start.millis() - first;
        bound = bound.max(since_start + WINDOW_MS * (w - 1) + shortest);
    }
    bound
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLASH: Limits = crate::world::FLASH_2025;

    #[test]
    fn rpm_bound_for_a_burst() {
        // 25 small requests on one lane at 10 RPM: three intervals, so 120 s + latency.
        let trace: Vec<Request> = (0..25)
            .map(|_| Request {
                arrival_ms: 0,
                tokens: 100,
            })
            .collect();
        assert_eq!(
            makespan_lower_bound(&trace, 1, FLASH, Timestamp(1_781_118_000_000)),
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
        let trace: Vec<Request> = (0..4)
            .map(|_| Request {
                arrival_ms: 0,
                tokens: 130_000,
            })
            .collect();
        assert_eq!(
            makespan_lower_bound(&trace, 2, FLASH, Timestamp(1_781_118_000_000)),
            60_000 + 800 + 2_600
        );
    }
}
