//! The simulated upstream every strategy faces: one lane per key on one
//! model, enforced by the simulator's own quota ledger; network jitter on the
//! way there and generation time on the way back. Plus the event agenda that
//! drives a strategy through simulated time.

use gemini_flux::clock::Timestamp;
use gemini_flux::policy::Limits;
use gemini_flux::sim::quota::{LaneQuota, Rejection};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The lane every efficiency run uses: gemini-2.5-flash as the free tier
/// published it in 2025 (250 requests a day; 20 since December 2025, which
/// would end every trace within minutes). Fixed, so figures stay comparable.
pub const FLASH_2025: Limits = Limits {
    rpm: 10,
    tpm: 250_000,
    rpd: 250,
    tpd: gemini_flux::policy::UNLIMITED,
    otpm: gemini_flux::policy::UNLIMITED,
};

/// Time between sending a call and the upstream counting it, at most.
pub const MAX_JITTER_MS: i64 = 100;

/// How long Gemini takes to answer: a base plus time to read the prompt.
pub fn latency_ms(tokens: u64) -> i64 {
    800 + (tokens / 50) as i64
}

pub struct World {
    pub limits: Limits,
    lanes: Vec<LaneQuota>,
    rng: StdRng,
    pub rejected_429: u64,
}

impl World {
    pub fn new(keys: usize, limits: Limits, seed: u64) -> Self {
        World {
            limits,
            lanes: (0..keys).map(|_| LaneQuota::default()).collect(),
            rng: StdRng::seed_from_u64(seed),
            rejected_429: 0,
        }
    }

    pub fn keys(&self) -> usize {
        self.lanes.len()
    }

    /// When a call sent at `sent` is counted upstream.
    pub fn arrival(&mut self, sent: Timestamp) -> Timestamp {
        sent.plus_millis(self.rng.random_range(0..=MAX_JITTER_MS))
    }

    /// The upstream's verdict on a call arriving at `at`.
    pub fn admit(&mut self, key: usize, tokens: u64, at: Timestamp) -> Result<(), Rejection> {
        let limits = self.limits;
        let verdict = self.lanes[key].admit(&limits, tokens, at);
        if verdict.is_err() {
            self.rejected_429 += 1;
        }
        verdict
    }
}

/// Events in time order (ties in insertion order).
pub struct Agenda<E> {
    heap: BinaryHeap<Reverse<(Timestamp, u64, usize)>>,
    events: Vec<Option<E>>,
}

impl<E> Agenda<E> {
    pub fn new() -> Self {
        Agenda {
            heap: BinaryHeap::new(),
            events: Vec::new(),
        }
    }

    pub fn push(&mut self, at: Timestamp, event: E) {
        let seq = self.events.len();
        self.events.push(Some(event));
        self.heap.push(Reverse((at, seq as u64, seq)));
    }

    pub fn pop(&mut self) -> Option<(Timestamp, E)> {
        let Reverse((at, _, slot)) = self.heap.pop()?;
        Some((
            at,
            self.events[slot].take().expect("each event is popped once"),
        ))
    }
}

/// What happened to one request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Served {
    pub arrival: Timestamp,
    pub completed: Timestamp,
    pub tokens: u64,
}

impl Served {
    /// Time not spent generating: queueing, backoff and retries.
    pub fn wait_ms(&self) -> i64 {
        (self.completed.millis() - self.arrival.millis() - latency_ms(self.tokens)).max(0)
    }
}
