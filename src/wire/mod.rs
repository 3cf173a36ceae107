//! The Gemini API's wire format, as far as both the gateway and the simulator
//! need it: the error envelope, the free-tier quota ids, protobuf duration
//! strings, the deterministic token count the simulator promises, a generate
//! request as the JSON text that travels (read without a tree), the Files
//! API's upload headers and file ids, and what both must agree on of the
//! OpenAI-compatible layer (`openai`).
//!
//! Keeping these in one place means the simulator cannot drift from what the
//! gateway's upstream client expects to parse.

pub mod anthropic;
pub mod error;
pub mod files;
pub mod openai;
pub mod openai_usage;
pub mod ratelimit;
pub mod request;
pub mod tokens;

pub use error::{envelope, format_duration, parse_duration, seconds};
pub use request::GenerateRequest;
pub use tokens::prompt_tokens;
