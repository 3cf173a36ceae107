//! gemini-flux: one HTTP endpoint in front of N Gemini API keys.
//!
//! Each key comes from its own Google Cloud project and so has its own quota:
//! requests and input tokens per minute and per Pacific day, per model. gemini-flux decides for every request which key, which model and
//! at what instant to send it, so that the caller never meets a 429 that could
//! have been avoided and never waits longer than the quotas force.
//!
//! The rooms, in the order a request meets them (see `ARCHITECTURE.md`):
//!
//! * [`config`]: the environment and `.env` turned into validated settings.
//! * [`service`]: start-up (store, discovery, key validation, recovery) and
//!   the graceful stop; [`listener`]: connections, capped and timed out.
//! * [`api`]: the HTTP surfaces (`/generate`, Gemini-native, OpenAI, admin,
//!   dashboard), client auth, [`api::dispatch`], one request's journey, and
//!   [`api::refresh`], the run-time policy fetch (an ordinary dispatched call).
//! * [`scheduler`]: the pure core that decides key, model and instant, and the
//!   actor that owns it.
//! * [`upstream`]: the Gemini client and the classification of its errors.
//! * [`store`]: what survives a restart (SQLite), written by the ledger.
//! * [`policy`]: the kinds of quota as data, the limits in layers with their
//!   sources, the model chain and modes, and the policy fetch's validator.
//! * [`metrics`]: the Prometheus registry.
//! * [`clock`]: wall-clock timestamps tied to tokio's (pausable) clock, and the
//!   Pacific day that per-day quotas count against.
//! * [`wire`]: Gemini's error envelope, quota names and token count, shared by
//!   the gateway and the simulator so they cannot disagree.
//! * [`keys`]: API keys that print only their fingerprint.
//! * [`sim`]: a strict in-repo Gemini stand-in for tests, benchmarks and `demo`.

pub mod api;
pub mod clock;
pub mod config;
pub mod keys;
pub mod listener;
pub mod metrics;
pub mod policy;
pub mod scheduler;
pub mod service;
pub mod sim;
pub mod store;
pub mod upstream;
pub mod wire;
