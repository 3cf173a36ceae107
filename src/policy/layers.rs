//! The layers a model's limits come from, and how they stack. Highest first:
//! learned (per lane, from a 429's `quotaValue`: what the server enforced),
//! env (`FLUX_LIMITS`), file (`FLUX_POLICY_FILE`), fetched (the validated
//! answer of the policy fetch), built-in (the table of `GEMINI_API.md`).
//! Each number keeps the name of the layer it came from.

use super::{Family, Limits, LimitsOverride, Source};
use serde::Serialize;
use std::collections::BTreeMap;

/// The configured layers (learned limits live with their lanes).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Layers {
    pub fetched: BTreeMap<String, LimitsOverride>,
    pub file: BTreeMap<String, LimitsOverride>,
    pub env: BTreeMap<String, LimitsOverride>,
}

/// Where each of a model's three numbers came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Sources {
    pub rpm: Source,
    pub tpm: Source,
    pub rpd: Source,
}

/// A model's limits with the source of every number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub rpm: u32,
    pub tpm: u64,
    pub rpd: u32,
    pub sources: Sources,
}

impl Resolved {
    pub fn limits(&self) -> Limits {
        Limits {
            rpm: self.rpm,
            tpm: self.tpm,
            rpd: self.rpd,
        }
    }

    /// Lays `over` on top, marking what it sets as coming from `source`.
    pub fn with(mut self, over: &LimitsOverride, source: Source) -> Resolved {
        if let Some(v) = over.rpm {
            (self.rpm, self.sources.rpm) = (v, source);
        }
        if let Some(v) = over.tpm {
            (self.tpm, self.sources.tpm) = (v, source);
        }
        if let Some(v) = over.rpd {
            (self.rpd, self.sources.rpd) = (v, source);
        }
        self
    }
}

impl Layers {
    /// A model's limits before anything is learned.
    pub fn resolve(&self, model: &str) -> Resolved {
        let builtin = Family::of(model).builtin_limits();
        let base = Resolved {
            rpm: builtin.rpm,
            tpm: builtin.tpm,
            rpd: builtin.rpd,
            sources: Sources {
                rpm: Source::BuiltIn,
                tpm: Source::BuiltIn,
                rpd: Source::BuiltIn,
            },
        };
        let none = LimitsOverride::default();
        base.with(self.fetched.get(model).unwrap_or(&none), Source::Fetched)
            .with(self.file.get(model).unwrap_or(&none), Source::File)
            .with(self.env.get(model).unwrap_or(&none), Source::Env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLASH: &str = "gemini-2.5-flash";

    fn only(
        rpm: Option<u32>,
        tpm: Option<u64>,
        rpd: Option<u32>,
    ) -> BTreeMap<String, LimitsOverride> {
        BTreeMap::from([(FLASH.to_string(), LimitsOverride { rpm, tpm, rpd })])
    }

    #[test]
    fn each_number_comes_from_the_highest_layer_that_sets_it() {
        let layers = Layers {
            fetched: only(Some(11), Some(111_000), Some(111)),
            file: only(Some(22), Some(222_000), None),
            env: only(Some(33), None, None),
        };
        let r = layers.resolve(FLASH);
        assert_eq!((r.rpm, r.tpm, r.rpd), (33, 222_000, 111));
        assert_eq!(
            r.sources,
            Sources {
                rpm: Source::Env,
                tpm: Source::File,
                rpd: Source::Fetched
            }
        );
        let learned = r.with(
            &LimitsOverride {
                tpm: Some(50_000),
                ..Default::default()
            },
            Source::Learned,
        );
        assert_eq!(
            (learned.tpm, learned.sources.tpm),
            (50_000, Source::Learned)
        );
        let untouched = Layers::default().resolve("gemini-2.5-pro");
        assert_eq!((untouched.rpm, untouched.sources.rpm), (5, Source::BuiltIn));
    }
}
