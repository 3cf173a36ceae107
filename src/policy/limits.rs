//! Per-model quota limits: the built-in free-tier table, model families, and
//! the `FLUX_LIMITS` override format (also `FLUX_KEY_LIMITS`' per-key entries).

use super::quota::{Metric, Quota, Usage, Window};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A model's limits on one project: one number per [`Quota`] kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: u32,
    /// Input tokens per minute.
    pub tpm: u64,
    /// Requests per Pacific day.
    pub rpd: u32,
    /// Input tokens per Pacific day ([`UNLIMITED`] where none is known).
    #[serde(default = "unlimited")]
    pub tpd: u64,
    /// Output tokens per minute ([`UNLIMITED`] where none is known; Gemini
    /// has none).
    #[serde(default = "unlimited")]
    pub otpm: u64,
}

const fn unlimited() -> u64 {
    UNLIMITED
}

/// A limit nobody has set or seen: never binds.
pub const UNLIMITED: u64 = u64::MAX;

impl Limits {
    /// The limit of one kind.
    pub const fn get(&self, quota: Quota) -> u64 {
        match quota {
            Quota::RequestsPerMinute => self.rpm as u64,
            Quota::InputTokensPerMinute => self.tpm,
            Quota::RequestsPerDay => self.rpd as u64,
            Quota::InputTokensPerDay => self.tpd,
            Quota::OutputTokensPerMinute => self.otpm,
        }
    }

    /// Whether `call` fits on top of `used` under every quota of `window`.
    pub fn admits(&self, window: Window, used: Usage, call: Usage) -> bool {
        Quota::ALL
            .iter()
            .filter(|q| q.window() == window)
            .all(|&q| used.of(q.metric()).saturating_add(call.of(q.metric())) <= self.get(q))
    }

    /// Whether `call` can ever fit (an empty window admits it).
    pub fn can_ever_admit(&self, call: Usage) -> bool {
        Quota::ALL
            .iter()
            .all(|&q| call.of(q.metric()) <= self.get(q))
    }

    /// The most input tokens one call may have: beyond it, no window ever admits it.
    pub fn per_call_bound(&self) -> u64 {
        Quota::ALL
            .iter()
            .filter(|q| q.metric() == Metric::InputTokens)
            .map(|&q| self.get(q))
            .min()
            .unwrap_or(UNLIMITED)
    }

    /// How many calls of `item` an empty window of every quota holds.
    pub fn most_items(&self, item: Usage) -> u64 {
        Quota::ALL
            .iter()
            .map(|&q| match item.of(q.metric()) {
                0 => u64::MAX,
                need => self.get(q) / need,
            })
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The kinds whose limit is 0: the model has no quota at all there.
    pub fn zeros(&self) -> impl Iterator<Item = Quota> + '_ {
        Quota::ALL.into_iter().filter(|&q| self.get(q) == 0)
    }

    /// What a background `call` may use of these limits: each window less
    /// the reserve kept for interactive calls. Where the call alone is more
    /// than that share, the limit becomes the call itself, so it goes only
    /// into a window that is otherwise empty, never into the reserve.
    pub fn for_background(&self, call: Usage, reserve: Reserve) -> Limits {
        let mut kept = LimitsOverride::default();
        for q in Quota::ALL {
            let limit = self.get(q);
            if limit == UNLIMITED {
                continue;
            }
            let held = match q.metric() {
                // Never the last request: a limit of 1 stays usable.
                Metric::Requests => reserve.requests.min(limit.saturating_sub(1)),
                Metric::InputTokens | Metric::OutputTokens => {
                    (u128::from(limit) * u128::from(reserve.token_percent) / 100) as u64
                }
            };
            let share = limit - held;
            let need = call.of(q.metric());
            kept.set(
                q,
                if need <= share {
                    share
                } else {
                    need.min(limit)
                },
            );
        }
        kept.apply(*self)
    }
}

/// What background work (batch items) leaves free in every window of every
/// lane, so that an interactive call arriving meanwhile finds room at once
/// (`FLUX_BATCH_RESERVE`, written `requests,percent%`: `1,10%` keeps one
/// request and a tenth of the tokens of each window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reserve {
    pub requests: u64,
    pub token_percent: u8,
}

impl Default for Reserve {
    /// One request and 10 % of the tokens: one interactive call of an
    /// ordinary size always fits at once, and a busy batch loses little.
    fn default() -> Self {
        Reserve {
            requests: 1,
            token_percent: 10,
        }
    }
}

impl std::str::FromStr for Reserve {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad =
            || format!("{text:?} is not a reserve: write requests,percent% (for example 1,10%)");
        let (requests, percent) = text.split_once(',').ok_or_else(bad)?;
        let percent = percent.trim().trim_end_matches('%').trim();
        let requests = requests.trim().parse().map_err(|_| bad())?;
        let token_percent = percent.parse().ok().filter(|p| *p < 100).ok_or_else(bad)?;
        Ok(Reserve {
            requests,
            token_percent,
        })
    }
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
    /// `FLUX_KEY_LIMITS`, or the policy file's `keys`: this key's own tier.
    Key,
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
    /// Embedding models: never in the generate chain, planned on their own
    /// lanes when a surface names one.
    Embedding,
}

impl Family {
    /// Infers the family from a model name; an unknown name is treated as
    /// `Pro`, the family with the tightest limits.
    pub fn of(model: &str) -> Family {
        if model.contains("embedding") {
            Family::Embedding
        } else if model.contains("flash-lite") {
            Family::FlashLite
        } else if model.contains("flash") {
            Family::Flash
        } else {
            Family::Pro
        }
    }

    /// The free-tier figures for the family's stable model, as of 2026
    /// (`docs/gemini-quotas.md` says where each comes from and which are
    /// uncertain). No per-day token quota is published: it is learned when
    /// the upstream enforces one.
    pub const fn builtin_limits(self) -> Limits {
        match self {
            // The 2025 figures. Since 2025-12-07 many projects have limit 0
            // here; that is learned from the first 429 and shared by the tier.
            Family::Pro => Limits {
                rpm: 5,
                tpm: 250_000,
                rpd: 100,
                tpd: UNLIMITED,
                otpm: UNLIMITED,
            },
            // 250 RPD until 2025-12-07, 20 since.
            Family::Flash => Limits {
                rpm: 10,
                tpm: 250_000,
                rpd: 20,
                tpd: UNLIMITED,
                otpm: UNLIMITED,
            },
            // Reports disagree (15 RPM / 1,000 RPD, or 10 / 20): the higher
            // figures, since a per-day 429 teaches the lower at once.
            Family::FlashLite => Limits {
                rpm: 15,
                tpm: 250_000,
                rpd: 1_000,
                tpd: UNLIMITED,
                otpm: UNLIMITED,
            },
            // About 100 requests a minute (unconfirmed); 30,000 tokens a
            // minute and 1,000 requests a day as commonly reported. Each item
            // of a `batchEmbedContents` counts as one request.
            Family::Embedding => Limits {
                rpm: 100,
                tpm: 30_000,
                rpd: 1_000,
                tpd: UNLIMITED,
                otpm: UNLIMITED,
            },
        }
    }
}

/// One model's entry in `FLUX_LIMITS`: any field left out keeps the lower
/// layer's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpd: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpd: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otpm: Option<u64>,
}

impl LimitsOverride {
    /// Only `quota`, at `value`.
    pub fn only(quota: Quota, value: u64) -> LimitsOverride {
        let mut o = LimitsOverride::default();
        o.set(quota, value);
        o
    }

    pub fn get(&self, quota: Quota) -> Option<u64> {
        match quota {
            Quota::RequestsPerMinute => self.rpm.map(u64::from),
            Quota::InputTokensPerMinute => self.tpm,
            Quota::RequestsPerDay => self.rpd.map(u64::from),
            Quota::InputTokensPerDay => self.tpd,
            Quota::OutputTokensPerMinute => self.otpm,
        }
    }

    /// Sets one number (request counts saturate at `u32::MAX`).
    pub fn set(&mut self, quota: Quota, value: u64) {
        let requests = u32::try_from(value).unwrap_or(u32::MAX);
        match quota {
            Quota::RequestsPerMinute => self.rpm = Some(requests),
            Quota::InputTokensPerMinute => self.tpm = Some(value),
            Quota::RequestsPerDay => self.rpd = Some(requests),
            Quota::InputTokensPerDay => self.tpd = Some(value),
            Quota::OutputTokensPerMinute => self.otpm = Some(value),
        }
    }

    pub fn clear(&mut self, quota: Quota) {
        match quota {
            Quota::RequestsPerMinute => self.rpm = None,
            Quota::InputTokensPerMinute => self.tpm = None,
            Quota::RequestsPerDay => self.rpd = None,
            Quota::InputTokensPerDay => self.tpd = None,
            Quota::OutputTokensPerMinute => self.otpm = None,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == LimitsOverride::default()
    }

    /// Each number of `self`, else `lower`'s.
    pub fn or(self, lower: LimitsOverride) -> LimitsOverride {
        LimitsOverride {
            rpm: self.rpm.or(lower.rpm),
            tpm: self.tpm.or(lower.tpm),
            rpd: self.rpd.or(lower.rpd),
            tpd: self.tpd.or(lower.tpd),
            otpm: self.otpm.or(lower.otpm),
        }
    }

    pub fn apply(&self, base: Limits) -> Limits {
        Limits {
            rpm: self.rpm.unwrap_or(base.rpm),
            tpm: self.tpm.unwrap_or(base.tpm),
            rpd: self.rpd.unwrap_or(base.rpd),
            tpd: self.tpd.unwrap_or(base.tpd),
            otpm: self.otpm.unwrap_or(base.otpm),
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

/// The per-key limits, in `FLUX_KEY_LIMITS` and the policy file's `keys`.
/// Keys are 0-based here; the text names them 1-based, as `/keys/{n}` does.
pub type KeyOverrides = BTreeMap<usize, BTreeMap<String, LimitsOverride>>;

/// Parses `{"3": {"gemini-2.5-flash": {"rpm": 1000, "tpm": 1000000}}}`.
pub fn parse_key_overrides(json: &str) -> Result<KeyOverrides, String> {
    let parsed: BTreeMap<String, BTreeMap<String, LimitsOverride>> = serde_json::from_str(json)
        .map_err(|e| format!("not a valid per-key limits object: {e}"))?;
    validate_key_overrides(parsed)
}

/// Checks each key index (a 1-based whole number, written plainly) and its limits.
pub fn validate_key_overrides(
    parsed: BTreeMap<String, BTreeMap<String, LimitsOverride>>,
) -> Result<KeyOverrides, String> {
    parsed
        .into_iter()
        .map(|(index, models)| {
            let n: usize = index
                .parse()
                .ok()
                .filter(|&n: &usize| n >= 1 && n.to_string() == index)
                .ok_or_else(|| format!("key {index:?} is not a key index (1, 2, …)"))?;
            let models = validate_overrides(models).map_err(|e| format!("key {n}: {e}"))?;
            Ok((n - 1, models))
        })
        .collect()
}

/// Refuses zeros and empty model names (the types already refuse negatives,
/// fractions and strings).
pub fn validate_overrides(
    parsed: BTreeMap<String, LimitsOverride>,
) -> Result<BTreeMap<String, LimitsOverride>, String> {
    for (model, o) in &parsed {
        if let Some(q) = Quota::ALL.into_iter().find(|&q| o.get(q) == Some(0)) {
            return Err(format!("{model}.{} must be a positive integer", q.field()));
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
                rpd: 20,
                tpd: UNLIMITED,
                otpm: UNLIMITED,
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
                rpd: 20,
                tpd: UNLIMITED,
                otpm: UNLIMITED,
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
        let tpd = parse_overrides(r#"{"m": {"tpd": 5000}}"#).unwrap();
        assert_eq!(tpd["m"].get(Quota::InputTokensPerDay), Some(5_000));
        assert!(
            parse_overrides(r#"{"m": {"tpd": 0}}"#)
                .unwrap_err()
                .contains("m.tpd")
        );
    }

    #[test]
    fn key_limits_are_per_one_based_index() {
        let k =
            parse_key_overrides(r#"{"3": {"gemini-2.5-flash": {"rpm": 1000, "tpd": 9}}}"#).unwrap();
        assert_eq!(k[&2]["gemini-2.5-flash"].rpm, Some(1000));
        for bad in [
            r#"{"0": {"m": {"rpm": 1}}}"#,
            r#"{"x": {"m": {"rpm": 1}}}"#,
            r#"{"01": {"m": {"rpm": 1}}}"#,
            r#"{"1": {"m": {"rpm": 0}}}"#,
        ] {
            assert!(parse_key_overrides(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_call_fits_only_where_every_quota_of_the_window_admits_it() {
        let l = Limits {
            rpm: 2,
            tpm: 100,
            rpd: 5,
            tpd: 150,
            otpm: crate::policy::UNLIMITED,
        };
        let used = Usage {
            requests: 1,
            input_tokens: 60,
            output_tokens: 0,
        };
        let minute = Window::Sliding(std::time::Duration::from_secs(60));
        assert!(l.admits(minute, used, Usage::call(40)));
        assert!(!l.admits(minute, used, Usage::call(41)));
        assert!(l.admits(Window::Day, used, Usage::call(90)));
        assert!(!l.admits(Window::Day, used, Usage::call(91)));
        assert!(l.can_ever_admit(Usage::call(100)));
        assert!(!l.can_ever_admit(Usage::call(101)));
        let batch = |n| Usage {
            requests: n,
            input_tokens: 10,
            output_tokens: 0,
        };
        assert!(l.can_ever_admit(batch(2)) && !l.can_ever_admit(batch(3)));
        assert_eq!(l.zeros().count(), 0);
        assert_eq!(
            Limits { rpd: 0, ..l }.zeros().collect::<Vec<_>>(),
            vec![Quota::RequestsPerDay]
        );
    }

    #[test]
    fn background_work_leaves_the_reserve_in_every_window() {
        let flash = Limits {
            rpm: 10,
            tpm: 250_000,
            rpd: 1,
            tpd: UNLIMITED,
            otpm: crate::policy::UNLIMITED,
        };
        let reserve: Reserve = "1,10%".parse().unwrap();
        assert_eq!(reserve, Reserve::default());
        assert_eq!(
            flash.for_background(Usage::call(1_000), reserve),
            Limits {
                rpm: 9,
                tpm: 225_000,
                rpd: 1,
                tpd: UNLIMITED,
                otpm: UNLIMITED,
            },
            "a limit of 1 stays usable; an unlimited one stays unlimited"
        );
        assert_eq!(
            flash.for_background(Usage::call(1_000), "0, 0".parse().unwrap()),
            flash
        );
        // An item over the share may only go into an otherwise empty window.
        assert_eq!(
            flash.for_background(Usage::call(230_000), reserve).tpm,
            230_000
        );
        let huge = Limits {
            tpm: u64::MAX - 1,
            ..flash
        };
        assert_eq!(
            huge.for_background(Usage::call(1), reserve).tpm,
            (u64::MAX - 1) - (u64::MAX - 1) / 10,
            "no overflow"
        );
        for bad in ["1", "x,10%", "1,100%", "1,-5"] {
            assert!(bad.parse::<Reserve>().is_err(), "{bad}");
        }
    }
}
