//! The client for the real Gemini API (or the simulator in its place).
//!
//! [`Upstream`] makes the calls; [`classify`] turns any error answer into an
//! [`UpstreamError`] that says whose fault it was and what the scheduler should
//! learn from it. The key travels only in the `x-goog-api-key` header.

mod classify;
mod client;

pub use classify::{UpstreamError, classify};
pub use client::{Generated, Relayed, Upstream};
