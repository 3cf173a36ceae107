//! The clients for the upstreams: Gemini (or the simulator in its place),
//! and the other providers' APIs.
//!
//! [`Upstream`] makes Gemini's calls; [`classify`] turns any error answer
//! into an [`UpstreamError`] that says whose fault it was and what the
//! scheduler should learn from it. The key travels only in the
//! `x-goog-api-key` header. [`ProviderApi`] calls an OpenAI-compatible or
//! Anthropic provider, the key only in that kind's auth header, and
//! classifies its error answers into the same [`UpstreamError`].

mod classify;
mod client;
mod provider;

pub use classify::{UpstreamError, classify};
pub use client::{Generated, Relayed, Upstream, read_json};
pub use provider::{ANTHROPIC_VERSION, Kind, ProviderAnswer, ProviderApi, ProviderFailure};
