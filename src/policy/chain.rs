//! The model chain (the order in which models are tried) and the modes that
//! filter it.

use super::Family;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The seed's six models, in the seed's order: stable pro, flash, lite, then
/// the previews.
pub const SEED_CHAIN: [&str; 6] = [
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-3.1-pro-preview",
    "gemini-3-flash-preview",
    "gemini-3.1-flash-lite-preview",
];

/// Which families of the chain may serve (`GEMINI_MODE`, `POST /mode`, or a
/// request's own `mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Both,
    ProOnly,
    FlashOnly,
    FlashLiteOnly,
}

impl Mode {
    pub const NAMES: &'static str = "both, pro_only, flash_only, flash_lite_only";

    pub fn allows(self, model: &str) -> bool {
        match self {
            Mode::Both => true,
            Mode::ProOnly => Family::of(model) == Family::Pro,
            Mode::FlashOnly => Family::of(model) == Family::Flash,
            Mode::FlashLiteOnly => Family::of(model) == Family::FlashLite,
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "both" => Ok(Mode::Both),
            "pro_only" => Ok(Mode::ProOnly),
            "flash_only" => Ok(Mode::FlashOnly),
            "flash_lite_only" => Ok(Mode::FlashLiteOnly),
            _ => Err(format!(
                "unknown mode {s:?}: expected one of {}",
                Mode::NAMES
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Mode::Both => "both",
            Mode::ProOnly => "pro_only",
            Mode::FlashOnly => "flash_only",
            Mode::FlashLiteOnly => "flash_lite_only",
        };
        f.write_str(name)
    }
}

/// Orders discovered models the way the seed does: stable models before
/// previews, pro before flash before lite, and the newest version first within
/// each group.
pub fn order_chain(mut models: Vec<String>) -> Vec<String> {
    models.sort_by(|a, b| {
        let key = |m: &str| (is_preview(m), Family::of(m));
        key(a)
            .cmp(&key(b))
            .then_with(|| version(b).total_cmp(&version(a)))
            .then_with(|| a.cmp(b))
    });
    models.dedup();
    models
}

/// Whether a discovered model belongs in the chain: a Gemini text model, not
/// an alias (`-latest`), a pinned revision (`-001`) or a special-purpose
/// variant (speech, images, embeddings, live audio), which have quotas of
/// their own and answer a different kind of request.
pub fn is_chain_candidate(model: &str) -> bool {
    const SPECIAL: [&str; 9] = [
        "tts",
        "image",
        "embedding",
        "live",
        "audio",
        "native",
        "computer-use",
        "robotics",
        "latest",
    ];
    let pinned_revision = model
        .rsplit('-')
        .next()
        .is_some_and(|tail| tail.len() == 3 && tail.bytes().all(|b| b.is_ascii_digit()));
    model.starts_with("gemini-") && !pinned_revision && !SPECIAL.iter().any(|s| model.contains(s))
}

fn is_preview(model: &str) -> bool {
    model.contains("preview") || model.contains("exp")
}

/// The version number in a name like `gemini-2.5-flash` (2.5); 0 if none.
fn version(model: &str) -> f64 {
    model
        .split('-')
        .find_map(|part| part.parse::<f64>().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_order_is_reproduced_from_any_order() {
        let mut shuffled: Vec<String> = SEED_CHAIN.iter().rev().map(|s| s.to_string()).collect();
        shuffled.push("gemini-2.0-flash".into());
        let ordered = order_chain(shuffled);
        assert_eq!(
            ordered,
            [
                "gemini-2.5-pro",
                "gemini-2.5-flash",
                "gemini-2.0-flash",
                "gemini-2.5-flash-lite",
                "gemini-3.1-pro-preview",
                "gemini-3-flash-preview",
                "gemini-3.1-flash-lite-preview"
            ]
        );
    }

    #[test]
    fn only_text_models_join_the_chain() {
        assert!(is_chain_candidate("gemini-2.5-flash"));
        assert!(is_chain_candidate("gemini-3.1-pro-preview"));
        for m in [
            "gemini-embedding-001",
            "gemini-2.5-flash-preview-tts",
            "gemini-flash-latest",
            "gemini-2.0-flash-001",
            "gemma-3-27b-it",
            "gemini-2.5-flash-image",
        ] {
            assert!(!is_chain_candidate(m), "{m}");
        }
    }

    #[test]
    fn modes_filter_by_family() {
        assert!(Mode::FlashOnly.allows("gemini-2.5-flash"));
        assert!(!Mode::FlashOnly.allows("gemini-2.5-flash-lite"));
        assert!(Mode::ProOnly.allows("gemini-3.1-pro-preview"));
        assert_eq!("FLASH_ONLY".parse::<Mode>(), Ok(Mode::FlashOnly));
        assert!(
            "fast"
                .parse::<Mode>()
                .unwrap_err()
                .contains("flash_lite_only")
        );
    }
}
