//! The request traces the efficiency bench replays: who arrives when, with
//! how many input tokens. Deterministic for a given seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// Milliseconds after the trace's start.
    pub arrival_ms: i64,
    pub tokens: u64,
}

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
}

impl Trace {
    pub const ALL: [Trace; 4] = [Trace::Dubbing, Trace::Chat, Trace::Mixed, Trace::Burst];

    pub fn name(self) -> &'static str {
        match self {
            Trace::Dubbing => "dubbing",
            Trace::Chat => "chat",
            Trace::Mixed => "mixed",
            Trace::Burst => "burst",
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
        }
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
        let mut t = 0;
        match self {
            Trace::Dubbing => (0..120)
                .map(|i| Request {
                    arrival_ms: i * 10_000,
                    tokens: large(&mut rng),
                })
                .collect(),
            Trace::Chat => (0..1_000)
                .map(|_| {
                    t += poisson(0.5, &mut rng);
                    Request {
                        arrival_ms: t,
                        tokens: chat(&mut rng),
                    }
                })
                .collect(),
            Trace::Mixed => (0..500)
                .map(|_| {
                    t += poisson(0.2, &mut rng);
                    let tokens = if rng.random_bool(0.3) {
                        large(&mut rng)
                    } else {
                        chat(&mut rng)
                    };
                    Request {
                        arrival_ms: t,
                        tokens,
                    }
                })
                .collect(),
            Trace::Burst => (0..1_000)
                .map(|_| Request {
                    arrival_ms: 0,
                    tokens: rng.random_range(500..=20_000),
                })
                .collect(),
        }
    }
}
