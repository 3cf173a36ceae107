//! The layers a model's limits come from, and how they stack. Highest first:
//! learned (per lane, from a 429: what the server enforced), key (this key's
//! own tier, `FLUX_KEY_LIMITS`), env (`FLUX_LIMITS`), file
//! (`FLUX_POLICY_FILE`), fetched (the validated answer of the policy fetch),
//! built-in (the table of `docs/gemini-quotas.md`). Each number keeps the
//! name of the layer it came from.

use super::{Family, KeyOverrides, Limits, LimitsOverride, Quota, Source, UNLIMITED};
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;

/// The configured layers (learned limits live with their lanes).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Layers {
    pub fetched: BTreeMap<String, LimitsOverride>,
    pub file: BTreeMap<String, LimitsOverride>,
    pub env: BTreeMap<String, LimitsOverride>,
    /// Per key (0-based): the file's `keys`, then `FLUX_KEY_LIMITS` on top.
    pub keys: KeyOverrides,
    /// The other providers' models (`provider/model`) with the limits the
    /// providers file gives them; a number it leaves out does not bind.
    pub providers: BTreeMap<String, Limits>,
}

/// Where each of a model's numbers came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Sources {
    pub rpm: Source,
    pub tpm: Source,
    pub rpd: Source,
    pub tpd: Source,
    pub otpm: Source,
}

impl Sources {
    fn all(source: Source) -> Sources {
        Sources {
            rpm: source,
            tpm: source,
            rpd: source,
            tpd: source,
            otpm: source,
        }
    }

    pub fn get(&self, quota: Quota) -> Source {
        match quota {
            Quota::RequestsPerMinute => self.rpm,
            Quota::InputTokensPerMinute => self.tpm,
            Quota::RequestsPerDay => self.rpd,
            Quota::InputTokensPerDay => self.tpd,
            Quota::OutputTokensPerMinute => self.otpm,
        }
    }

    fn set(&mut self, quota: Quota, source: Source) {
        match quota {
            Quota::RequestsPerMinute => self.rpm = source,
            Quota::InputTokensPerMinute => self.tpm = source,
            Quota::RequestsPerDay => self.rpd = source,
            Quota::InputTokensPerDay => self.tpd = source,
            Quota::OutputTokensPerMinute => self.otpm = source,
        }
    }
}

/// A model's limits with the source of every number. A per-day token limit
/// that nobody set shows as `null`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub rpm: u32,
    pub tpm: u64,
    pub rpd: u32,
    #[serde(serialize_with = "unlimited_as_null")]
    pub tpd: u64,
    #[serde(serialize_with = "unlimited_as_null")]
    pub otpm: u64,
    pub sources: Sources,
}

fn unlimited_as_null<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
    (*value != UNLIMITED).then_some(*value).serialize(s)
}

impl Resolved {
    fn new(limits: Limits, source: Source) -> Resolved {
        let Limits {
            rpm,
            tpm,
            rpd,
            tpd,
            otpm,
        } = limits;
        Resolved {
            rpm,
            tpm,
            rpd,
            tpd,
            otpm,
            sources: Sources::all(source),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            rpm: self.rpm,
            tpm: self.tpm,
            rpd: self.rpd,
            tpd: self.tpd,
            otpm: self.otpm,
        }
    }

    /// Lays `over` on top, marking what it sets as coming from `source`.
    pub fn with(self, over: &LimitsOverride, source: Source) -> Resolved {
        let limits = over.apply(self.limits());
        let mut sources = self.sources;
        for q in Quota::ALL.into_iter().filter(|&q| over.get(q).is_some()) {
            sources.set(q, source);
        }
        Resolved {
            sources,
            ..Resolved::new(limits, source)
        }
    }
}

impl Layers {
    /// Per-key limits from the policy file's `keys` with `FLUX_KEY_LIMITS`
    /// on top, number by number.
    pub fn merge_keys(file: &KeyOverrides, env: &KeyOverrides) -> KeyOverrides {
        let mut merged = file.clone();
        for (key, models) in env {
            let slot = merged.entry(*key).or_default();
            for (model, over) in models {
                let lower = slot.get(model).copied().unwrap_or_default();
                slot.insert(model.clone(), over.or(lower));
            }
        }
        merged
    }

    /// Whether every number of every model in `chain` is set by
    /// configuration (then a policy fetch could change nothing).
    pub fn configures_all(&self, chain: &[String]) -> bool {
        chain.iter().all(|model| {
            let r = self.resolve(model);
            [
                Quota::RequestsPerMinute,
                Quota::InputTokensPerMinute,
                Quota::RequestsPerDay,
            ]
            .into_iter()
            .all(|q| matches!(r.sources.get(q), Source::Env | Source::File))
        })
    }

    /// A model's limits before anything is learned, for keys of no tier of their own.
    pub fn resolve(&self, model: &str) -> Resolved {
        let none = LimitsOverride::default();
        let base = match self.providers.get(model) {
            Some(&limits) => Resolved::new(limits, Source::File),
            None => Resolved::new(Family::of(model).builtin_limits(), Source::BuiltIn),
        };
        base.with(self.fetched.get(model).unwrap_or(&none), Source::Fetched)
            .with(self.file.get(model).unwrap_or(&none), Source::File)
            .with(self.env.get(model).unwrap_or(&none), Source::Env)
    }

    /// Key `key`'s (0-based) limits on `model` before anything is learned.
    pub fn resolve_for(&self, key: usize, model: &str) -> Resolved {
        match self.key_override(key, model) {
            Some(own) => self.resolve(model).with(own, Source::Key),
            None => self.resolve(model),
        }
    }

    /// The key's own entry for `model`, if it has one. Keys with equal
    /// entries (or none) are one tier: what one learns holds for the others.
    pub fn key_override(&self, key: usize, model: &str) -> Option<&LimitsOverride> {
        self.keys.get(&key).and_then(|models| models.get(model))
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
        BTreeMap::from([(
            FLASH.to_string(),
            LimitsOverride {
                rpm,
                tpm,
                rpd,
                tpd: None,
                otpm: None,
            },
        )])
    }

    #[test]
    fn each_number_comes_from_the_highest_layer_that_sets_it() {
        let layers = Layers {
            fetched: only(Some(11), Some(111_000), Some(111)),
            file: only(Some(22), Some(222_000), None),
            env: only(Some(33), None, None),
            keys: BTreeMap::from([(1, only(None, Some(1_000_000), None))]),
            providers: Default::default(),
        };
        let r = layers.resolve(FLASH);
        assert_eq!((r.rpm, r.tpm, r.rpd), (33, 222_000, 111));
        assert_eq!(
            r.sources,
            Sources {
                rpm: Source::Env,
                tpm: Source::File,
                rpd: Source::Fetched,
                tpd: Source::BuiltIn,
                otpm: Source::BuiltIn,
            }
        );
        assert_eq!(r.tpd, UNLIMITED);
        let paid = layers.resolve_for(1, FLASH);
        assert_eq!((paid.tpm, paid.sources.tpm), (1_000_000, Source::Key));
        assert_eq!((paid.rpm, paid.sources.rpm), (33, Source::Env));
        assert_eq!(
            layers.resolve_for(0, FLASH),
            r,
            "key 1 has no tier of its own"
        );
        assert_eq!(
            serde_json::to_value(r).unwrap()["tpd"],
            serde_json::Value::Null
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
