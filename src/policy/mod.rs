//! Where limits and the model chain come from.
//!
//! A model's free-tier limits (requests and input tokens per minute, requests
//! per Pacific day) come in [`layers`]: built-in (the table of
//! `GEMINI_API.md`), fetched (see [`fetch`]), file (`FLUX_POLICY_FILE`, see
//! [`file`](mod@file)), env (`FLUX_LIMITS`), and learned per lane from the upstream's
//! 429s. The chain is the ordered list of models a request may fall through;
//! the mode filters it by model family.

pub mod chain;
pub mod fetch;
pub mod file;
pub mod layers;
pub mod limits;

pub use chain::{Mode, SEED_CHAIN, is_chain_candidate, order_chain};
pub use layers::{Layers, Resolved, Sources};
pub use limits::{Family, Limits, LimitsOverride, Source, parse_overrides, validate_overrides};
