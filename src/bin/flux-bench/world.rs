//! The simulated upstream every strategy faces: one lane per key, each on
//! its provider's one model, enforced by the simulator's own quota ledger in
//! the provider's day; network jitter on the way there and generation time
//! on the way back, at whose end the upstream settles a call's output
//! reservation. Plus the event agenda that drives a strategy through
//! simulated time.

use crate::traces::Request;
use gemini_flux::clock::{DayZone, Timestamp};
use gemini_flux::policy::{Limits, UNLIMITED, Usage};
use gemini_flux::sim::quota::{LaneQuota, Rejection, Ticket};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;

/// The lane every efficiency run uses: gemini-2.5-flash as the free tier
/// published it in 2025 (250 requests a day; 20 since December 2025, which
/// would end every trace within minutes). Fixed, so figures stay comparable.
pub const FLASH_2025: Limits = Limits {
    rpm: 10,
    tpm: 250_000,
    rpd: 250,
    tpd: UNLIMITED,
    otpm: UNLIMITED,
};

/// An OpenAI-compatible provider's free llama lane, as Groq publishes it.
pub const GROQ_LLAMA: Limits = Limits {
    rpm: 30,
    tpm: 12_000,
    rpd: 1_000,
    tpd: UNLIMITED,
    otpm: UNLIMITED,
};

/// An Anthropic lane: input and output tokens a minute, no daily quota.
pub const CLAUDE: Limits = Limits {
    rpm: 50,
    tpm: 50_000,
    rpd: u32::MAX,
    tpd: UNLIMITED,
    otpm: 8_000,
};

/// Time between sending a call and the upstream counting it, at most.
pub const MAX_JITTER_MS: i64 = 100;

/// How long an answer takes: a base, time to read the prompt and time to
/// say the output.
pub fn latency_ms(request: &Request) -> i64 {
    800 + (request.tokens / 50) as i64 + request.output as i64 * 10
}

/// One provider of the upstream: `keys` keys, each a lane of `model` (the
/// name gemini-flux plans it by: `provider/model` for any but Gemini) under
/// `limits`, whose days are `zone`'s.
#[derive(Clone, Debug)]
pub struct Provider {
    pub name: &'static str,
    pub model: &'static str,
    pub zone: DayZone,
    pub limits: Limits,
    pub keys: usize,
}

impl Provider {
    /// Gemini's 2025 flash lane on `keys` keys.
    pub fn gemini(keys: usize) -> Provider {
        Provider {
            name: "gemini",
            model: "gemini-2.5-flash",
            zone: DayZone::PACIFIC,
            limits: FLASH_2025,
            keys,
        }
    }

    /// An OpenAI-compatible provider's llama on two keys.
    pub fn groq() -> Provider {
        Provider {
            name: "groq",
            model: "groq/llama-3.3-70b-versatile",
            zone: DayZone::UTC,
            limits: GROQ_LLAMA,
            keys: 2,
        }
    }

    /// An Anthropic model on one key.
    pub fn claude() -> Provider {
        Provider {
            name: "claude",
            model: "claude/claude-sonnet-4-5",
            zone: DayZone::UTC,
            limits: CLAUDE,
            keys: 1,
        }
    }
}

/// An admitted call whose answer has not ended: the upstream settles its
/// output reservation then.
struct Answer {
    key: usize,
    ticket: Ticket,
    output: u64,
}

pub struct World {
    /// Gemini first; their keys follow one another in this order.
    pub providers: Vec<Provider>,
    /// Each key's provider and lane.
    lanes: Vec<(usize, LaneQuota)>,
    answering: Agenda<Answer>,
    rng: StdRng,
    pub rejected_429: u64,
}

impl World {
    pub fn new(providers: Vec<Provider>, seed: u64) -> Self {
        let lanes = providers
            .iter()
            .enumerate()
            .flat_map(|(p, provider)| {
                (0..provider.keys).map(move |_| (p, LaneQuota::new(provider.zone)))
            })
            .collect();
        World {
            providers,
            lanes,
            answering: Agenda::new(),
            rng: StdRng::seed_from_u64(seed),
            rejected_429: 0,
        }
    }

    /// The keys of provider `p`.
    pub fn keys_of(&self, p: usize) -> Range<usize> {
        let first = self.providers[..p].iter().map(|q| q.keys).sum();
        first..first + self.providers[p].keys
    }

    pub fn keys(&self) -> usize {
        self.lanes.len()
    }

    /// Which provider `key` belongs to.
    pub fn provider_of(&self, key: usize) -> usize {
        self.lanes[key].0
    }

    /// When a call sent at `sent` is counted upstream.
    pub fn arrival(&mut self, sent: Timestamp) -> Timestamp {
        sent.plus_millis(self.rng.random_range(0..=MAX_JITTER_MS))
    }

    /// The upstream's verdict on `request` arriving at `at` on `key`: when
    /// its answer ends, or why not. It reserves its `max_output` until then.
    pub fn admit(
        &mut self,
        key: usize,
        request: &Request,
        at: Timestamp,
    ) -> Result<Timestamp, Rejection> {
        self.answer_until(at);
        let (p, lane) = &mut self.lanes[key];
        assert_eq!(*p, request.provider, "a key serves its own provider only");
        let call = Usage::call(request.tokens).with_output(request.max_output);
        match lane.admit_usage(&self.providers[*p].limits, call, at) {
            Ok(ticket) => {
                let done = at.plus_millis(latency_ms(request));
                let output = request.output;
                self.answering.push(
                    done,
                    Answer {
                        key,
                        ticket,
                        output,
                    },
                );
                Ok(done)
            }
            Err(rejection) => {
                self.rejected_429 += 1;
                Err(rejection)
            }
        }
    }

    /// Settles every answer that ended by `now`, each at its own end.
    fn answer_until(&mut self, now: Timestamp) {
        while let Some((done, a)) = self.answering.pop_due(now) {
            self.lanes[a.key].1.settle(a.ticket, a.output, done);
        }
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

    /// The next event if it is due by `now`.
    fn pop_due(&mut self, now: Timestamp) -> Option<(Timestamp, E)> {
        let &Reverse((at, _, _)) = self.heap.peek()?;
        if at <= now { self.pop() } else { None }
    }
}

/// What happened to one request.
#[derive(Clone, Copy, Debug)]
pub struct Served {
    pub request: Request,
    pub arrival: Timestamp,
    pub completed: Timestamp,
}

impl Served {
    /// Time not spent generating: queueing, backoff and retries.
    pub fn wait_ms(&self) -> i64 {
        (self.completed.millis() - self.arrival.millis() - latency_ms(&self.request)).max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gemini_flux::policy::Quota;

    /// A call to claude (the world's second provider) of 100 input tokens.
    fn ask(max_output: u64, output: u64) -> Request {
        Request {
            arrival_ms: 0,
            provider: 1,
            tokens: 100,
            max_output,
            output,
        }
    }

    #[test]
    fn output_is_reserved_until_the_answer_ends_then_only_what_was_said_stays() {
        let mut world = World::new(vec![Provider::gemini(1), Provider::claude()], 1);
        let claude = world.keys_of(1).start;
        let t0 = Timestamp(1_781_118_000_000);
        // 4,000 reserved, 400 said: the answer takes 0.8 s + 2 ms + 4 s.
        let done = world.admit(claude, &ask(4_000, 400), t0).unwrap();
        assert_eq!(done, t0.plus_millis(4_802));
        // While it answers, 4,001 more do not fit in 8,000 a minute.
        let r = world
            .admit(claude, &ask(4_001, 10), t0.plus_millis(4_801))
            .unwrap_err();
        assert_eq!(r.violations, vec![Quota::OutputTokensPerMinute]);
        // Once it ended, its 400 stay for the minute: 7,600 fit, not one more.
        world.admit(claude, &ask(7_600, 10), done).unwrap();
        assert!(world.admit(claude, &ask(1, 1), done).is_err());
        assert_eq!(world.rejected_429, 2);
    }
}
