//! Per-model quota limits: the built-in free-tier table, model families, and
//! the `FLUX_LIMITS` override format.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The three quotas of one model on one project.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: u32,
    /// Input tokens per minute.
    pub tpm: u64,
    /// Requests per Pacific day.
    pub rpd: u32,
}

/// Where a limit came from, shown in `/status` so an operator can tell a
/// guessed number from one the server enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    BuiltIn,
    Fetched,
    File,
    Env,
    Learned,
}

/// A model family: what the modes filter on and what an unlisted model
/// (a preview, say) borrows its built-in limits from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    Pro,
    Flash,
    FlashLite,
}

impl Family {
    /// Infers the family from a model name; an unknown name is treated as
    /// `Pro`, the family with the tightest limits.
    pub fn of(model: &str) -> Family {
        if model.contains("flash-lite") {
            Family::FlashLite
        } else if model.contains("flash") {
            Family::Flash
        } else {
            Family::Pro
        }
    }

    /// The free-tier figures published for the family's stable model.
    pub const fn builtin_limits(self) -> Limits {
        match self {
            Family::Pro => Limits {
                rpm: 5,
                tpm: 250_000,
                rpd: 100,
            },
            Family::Flash => Limits {
                rpm: 10,
                tpm: 250_000,
                rpd: 250,
            },
            Family::FlashLite => Limits {
                rpm: 15,
                tpm: 250_000,
                rpd: 1_000,
            },
        }
    }
}

/// One model's entry in `FLUX_LIMITS`: any field left out keeps the lower
/// layer's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub rpd: Option<u32>,
}

impl LimitsOverride {
    pub fn apply(&self, base: Limits) -> Limits {
        Limits {
            rpm: self.rpm.unwrap_or(base.rpm),
            tpm: self.tpm.unwrap_or(base.tpm),
            rpd: self.rpd.unwrap_or(base.rpd),
        }
    }
}

/// Parses `{"model": {"rpm": 10, "tpm": 250000, "rpd": 250}}`. Every number
/// must be a positive integer; the error names the offending model and field.
pub fn parse_overrides(json: &str) -> Result<BTreeMap<String, LimitsOverride>, String> {
    let parsed: BTreeMap<String, LimitsOverride> =
        serde_json::from_str(json).map_err(|e| format!("not a valid limits object: {e}"))?;
    validate_overrides(parsed)
}

/// Refuses zeros and empty model names (the types already refuse negatives,
/// fractions and strings).
pub fn validate_overrides(
    parsed: BTreeMap<String, LimitsOverride>,
) -> Result<BTreeMap<String, LimitsOverride>, String> {
    for (model, o) in &parsed {
        let zero = [
            ("rpm", o.rpm.map(u64::from)),
            ("tpm", o.tpm),
            ("rpd", o.rpd.map(u64::from)),
        ]
        .into_iter()
        .find(|(_, v)| *v == Some(0));
        if let Some((field, _)) = zero {
            return Err(format!("{model}.{field} must be a positive integer"));
        }
        if model.trim().is_empty() {
            return Err("a model name is empty".into());
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_their_builtin_limits() {
        assert_eq!(Family::of("gemini-2.5-flash-lite"), Family::FlashLite);
        assert_eq!(Family::of("gemini-3-flash-preview"), Family::Flash);
        assert_eq!(Family::of("gemini-3.1-pro-preview"), Family::Pro);
        assert_eq!(
            Family::Flash.builtin_limits(),
            Limits {
                rpm: 10,
                tpm: 250_000,
                rpd: 250
            }
        );
    }

    #[test]
    fn overrides_parse_and_reject_nonsense() {
        let o = parse_overrides(r#"{"gemini-2.5-flash": {"rpm": 3}}"#).unwrap();
        let l = o["gemini-2.5-flash"].apply(Family::Flash.builtin_limits());
        assert_eq!(
            l,
            Limits {
                rpm: 3,
                tpm: 250_000,
                rpd: 250
            }
        );
        assert!(
            parse_overrides(r#"{"m": {"rpm": 0}}"#)
                .unwrap_err()
                .contains("m.rpm")
        );
        assert!(parse_overrides(r#"{"m": {"rpm": -1}}"#).is_err());
        assert!(parse_overrides(r#"{"m": {"rpm": "5"}}"#).is_err());
        assert!(parse_overrides(r#"{"m": {"rpms": 5}}"#).is_err());
        assert!(parse_overrides("[1]").is_err());
    }
}
