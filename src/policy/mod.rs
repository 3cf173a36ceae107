//! Where limits and the model chain come from.
//!
//! A model's free-tier limits are one number per kind of [`quota`] (requests
//! and input tokens per minute, requests and input tokens per Pacific day).
//! They come in [`layers`]: built-in (the table of `docs/gemini-quotas.md`),
//! fetched (see [`fetch`]), file (`FLUX_POLICY_FILE`, see
//! [`file`](mod@file)), env (`FLUX_LIMITS`), key (`FLUX_KEY_LIMITS`), and
//! learned per lane from the upstream's 429s. The chain is the ordered list of models a request may fall through;
//! the mode filters it by model family.

pub mod chain;
pub mod fetch;
pub mod file;
pub mod layers;
pub mod limits;
pub mod quota;

pub use chain::{Mode, SEED_CHAIN, is_chain_candidate, order_chain};
pub use layers::{Layers, Resolved, Sources};
pub use limits::{
    Family, KeyOverrides, Limits, LimitsOverride, Reserve, Source, UNLIMITED, parse_key_overrides,
    parse_overrides, validate_key_overrides, validate_overrides,
};
pub use quota::{Metric, Quota, Usage, Window};
