//! Where limits and the model chain come from.
//!
//! A model's free-tier limits (requests and input tokens per minute, requests
//! per Pacific day) start from the built-in table of `GEMINI_API.md` and can be
//! overridden per model through `FLUX_LIMITS`. The chain is the ordered list of
//! models a request may fall through; the mode filters it by model family.

pub mod chain;
pub mod limits;

pub use chain::{Mode, SEED_CHAIN, is_chain_candidate, order_chain};
pub use limits::{Family, Limits, LimitsOverride, Source, parse_overrides};
