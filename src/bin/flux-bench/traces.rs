//! The request traces the efficiency bench replays: who arrives when, for
//! which provider, with how many input tokens and how much output.
//! Deterministic for a given seed.

use crate::world::Provider;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// Milliseconds after the trace's start.
    pub arrival_ms: i64,
    /// Which of the trace's [`providers`](Trace::providers) it goes to (0: Gemini).
    pub provider: usize,
    pub tokens: u64,
    /// The most output tokens it asks for (`max_tokens`): reserved until its
    /// answer ends.
    pub max_output: u64,
    /// The output tokens its answer says (at most `max_output`).
    pub output: u64,
}

impl Request {
    /// A call to Gemini, whose output is no quota.
    pub fn gemini(arrival_ms: i64, tokens: u64) -> Request {
        Request {
            arrival_ms,
            provider: 0,
            tokens,
            max_output: 0,
            output: 0,
        }
    }
}

/// Where the `providers` trace's other providers stand in [`Trace::providers`].
const GROQ: usize = 1;
const ANTHROPIC: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trace {
    /// The seed's use: a steady stream of large dubbing/translation requests.
    Dubbing,
    /// Poisson arrivals of chat-sized requests.
    Chat,
    /// Both at once.
    Mixed,
    /// A thousand requests at the same instant.
    Burst,
    /// Gemini, an OpenAI-compatible provider and an Anthropic one at once.
    Providers,
}

impl Trace {
    pub const ALL: [Trace; 5] = [
        Trace::Dubbing,
        Trace::Chat,
        Trace::Mixed,
        Trace::Burst,
        Trace::Providers,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Trace::Dubbing => "dubbing",
            Trace::Chat => "chat",
            Trace::Mixed => "mixed",
            Trace::Burst => "burst",
            Trace::Providers => "providers",
        }
    }

    pub fn parse(s: &str) -> Option<Trace> {
        Trace::ALL.into_iter().find(|t| t.name() == s)
    }

    /// One line for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Trace::Dubbing => "120 requests of 100k-250k tokens, one every 10 s",
            Trace::Chat => "1,000 requests of 500-5k tokens, Poisson at 0.5/s",
            Trace::Mixed => {
                "500 requests, 70% of 500-5k and 30% of 100k-250k tokens, Poisson at 0.2/s"
            }
            Trace::Burst => "1,000 requests of 500-20k tokens, all at t = 0",
            Trace::Providers => {
                "600 requests, Poisson at 0.5/s: 50% to Gemini (as `mixed`), 30% to groq \
                 (500-3k tokens, `max_tokens` 256-1,024), 20% to claude (1k-10k tokens, \
                 `max_tokens` 1,024-4,096); each answer says 10-100% of its `max_tokens`"
            }
        }
    }

    /// The upstream the trace calls, Gemini's `gemini_keys` first.
    pub fn providers(self, gemini_keys: usize) -> Vec<Provider> {
        let mut providers = vec![Provider::gemini(gemini_keys)];
        if self == Trace::Providers {
            providers.extend([Provider::groq(), Provider::claude()]);
        }
        providers
    }

    pub fn generate(self, seed: u64) -> Vec<Request> {
        let mut rng = StdRng::seed_from_u64(seed ^ self as u64);
        let poisson = |rate_per_s: f64, rng: &mut StdRng| -> i64 {
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            (-u.ln() / rate_per_s * 1000.0) as i64
        };
        let chat = |rng: &mut StdRng| rng.random_range(500..=5_000);
        // Free-tier TPM is 250k on every model: a larger request can never be
        // served on the free tier (gemini-flux answers it 413 at once), so
        // traces stop there.
        let large = |rng: &mut StdRng| rng.random_range(100_000..=250_000);
        let either = |rng: &mut StdRng| {
            if rng.random_bool(0.3) {
                large(rng)
            } else {
                chat(rng)
            }
        };
        // A call to another provider: its input, its `max_tokens`, and an
        // answer that says part of them.
        let asking = |provider, tokens: (u64, u64), most: (u64, u64), rng: &mut StdRng| {
            let max_output = rng.random_range(most.0..=most.1);
            Request {
                arrival_ms: 0,
                provider,
                tokens: rng.random_range(tokens.0..=tokens.1),
                max_output,
                output: rng.random_range(max_output / 10..=max_output),
            }
        };
        let mut t = 0;
        match self {
            Trace::Dubbing => (0..120)
                .map(|i| Request::gemini(i * 10_000, large(&mut rng)))
                .collect(),
            Trace::Chat => (0..1_000)
                .map(|_| {
                    t += poisson(0.5, &mut rng);
                    Request::gemini(t, chat(&mut rng))
                })
                .collect(),
            Trace::Mixed => (0..500)
                .map(|_| {
                    t += poisson(0.2, &mut rng);
                    Request::gemini(t, either(&mut rng))
                })
                .collect(),
            Trace::Burst => (0..1_000)
                .map(|_| Request::gemini(0, rng.random_range(500..=20_000)))
                .collect(),
            Trace::Providers => (0..600)
                .map(|_| {
                    t += poisson(0.5, &mut rng);
                    let request = match rng.random_range(0..10) {
                        0..5 => Request::gemini(0, either(&mut rng)),
                        5..8 => asking(GROQ, (500, 3_000), (256, 1_024), &mut rng),
                        _ => asking(ANTHROPIC, (1_000, 10_000), (1_024, 4_096), &mut rng),
                    };
                    Request {
                        arrival_ms: t,
                        ..request
                    }
                })
                .collect(),
        }
    }
}
