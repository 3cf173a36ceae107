//! `FLUX_PROVIDERS_FILE`: other providers (any OpenAI-compatible API, and
//! Anthropic), their keys, their models' quotas and the zone their days
//! reset in, read from one TOML file and checked at start-up.
//!
//! ```toml
//! [[providers]]
//! name = "groq"
//! kind = "openai"            # "gemini" | "openai" | "anthropic"
//! base_url = "https://api.groq.com/openai/v1"
//! keys = ["gsk_…"]           # or keys_env = "GROQ_KEYS" (comma-separated)
//! day = "UTC"                # the default; Gemini's is America/Los_Angeles
//! [providers.models."llama-3.3-70b-versatile"]
//! rpm = 30
//! rpd = 1000
//! tpm = 12000
//! tpd = 100000
//! otpm = 2000
//! ```
//!
//! A `kind = "gemini"` entry adds its keys to Gemini's and its models' numbers
//! to the file layer of Gemini's limits; it has no `base_url` or `day` of its
//! own (`GEMINI_BASE_URL`, the Pacific day).

use super::ConfigError;
use crate::clock::DayZone;
use crate::keys::ApiKey;
use crate::policy::{Limits, LimitsOverride, UNLIMITED, validate_overrides};
use crate::upstream::Kind;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// What an entry of the file is: Gemini's keys, or another provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Gemini,
    /// Any OpenAI-compatible API: `{base_url}/chat/completions`, Bearer keys.
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic's Messages API: `{base_url}/v1/messages`, `x-api-key`.
    Anthropic,
}

/// One provider other than Gemini, as the gateway runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderSettings {
    /// What its models are called inside: `{name}/{model}`.
    pub name: String,
    /// The API it speaks.
    pub kind: Kind,
    pub base_url: String,
    pub keys: Vec<ApiKey>,
    pub day: DayZone,
    /// Each model's limits; a number the file leaves out never binds.
    pub models: BTreeMap<String, Limits>,
}

/// What the file adds: other providers, and Gemini keys and limits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProvidersFile {
    pub providers: Vec<ProviderSettings>,
    pub gemini_keys: Vec<ApiKey>,
    pub gemini_models: BTreeMap<String, LimitsOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Shape {
    #[serde(default)]
    providers: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    kind: ProviderKind,
    base_url: Option<String>,
    #[serde(default)]
    keys: Vec<String>,
    keys_env: Option<String>,
    day: Option<String>,
    #[serde(default)]
    models: BTreeMap<String, LimitsOverride>,
}

/// No limit at all: what a model's number is when the file leaves it out.
const NO_LIMITS: Limits = Limits {
    rpm: u32::MAX,
    tpm: UNLIMITED,
    rpd: u32::MAX,
    tpd: UNLIMITED,
    otpm: UNLIMITED,
};

/// Reads and checks the file; `vars` are the environment, for `keys_env`.
/// Errors name the file and the provider, never a key.
pub fn read(path: &Path, vars: &[(String, String)]) -> Result<ProvidersFile, ConfigError> {
    let fail = |why: String| ConfigError(format!("FLUX_PROVIDERS_FILE {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    parse(&text, vars).map_err(fail)
}

fn parse(text: &str, vars: &[(String, String)]) -> Result<ProvidersFile, String> {
    // The error's place and reason, never its excerpt: the line may hold a key.
    let shape: Shape = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map_or(0, |s| text[..s.start].lines().count().max(1));
        format!("line {line}: {}", e.message())
    })?;
    let mut file = ProvidersFile::default();
    for entry in shape.providers {
        let name = entry.name.trim().to_string();
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
        if name.is_empty() || !name.chars().all(valid) {
            return Err(format!(
                "provider name {name:?} must be lowercase letters, digits, '-', '_' or '.'"
            ));
        }
        let about = |why: &str| format!("provider {name:?}: {why}");
        let mut keys = entry.keys;
        if let Some(var) = &entry.keys_env {
            let value = vars
                .iter()
                .rev()
                .find(|(k, _)| k == var)
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| about(&format!("keys_env names {var}, which is not set")))?;
            keys.extend(value.split(',').map(str::to_string));
        }
        let mut seen = std::collections::HashSet::new();
        keys = keys
            .into_iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty() && seen.insert(k.clone()))
            .collect();
        if keys.is_empty() {
            return Err(about("no keys (set keys = [...] or keys_env)"));
        }
        let keys: Vec<ApiKey> = keys.into_iter().map(ApiKey::new).collect();
        let models = validate_overrides(entry.models).map_err(|e| about(&e))?;
        if entry.kind == ProviderKind::Gemini {
            if entry.base_url.is_some() || entry.day.is_some() {
                return Err(about(
                    "a gemini entry takes GEMINI_BASE_URL and the Pacific day: no base_url or day",
                ));
            }
            file.gemini_keys.extend(keys);
            file.gemini_models.extend(models);
            continue;
        }
        if name == "gemini" || file.providers.iter().any(|p| p.name == name) {
            return Err(about("the name is taken"));
        }
        let base_url = entry
            .base_url
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .ok_or_else(|| about("base_url must start with http:// or https://"))?;
        let day = match entry.day.as_deref().map(str::trim) {
            None => DayZone::UTC,
            Some(zone) => DayZone::named(zone)
                .ok_or_else(|| about(&format!("day {zone:?} is not a time zone like UTC")))?,
        };
        if models.is_empty() {
            return Err(about(
                "no models ([providers.models.\"name\"] with its limits)",
            ));
        }
        file.providers.push(ProviderSettings {
            name,
            kind: match entry.kind {
                ProviderKind::Anthropic => Kind::Anthropic,
                // A gemini entry joined Gemini's keys above.
                ProviderKind::OpenAi | ProviderKind::Gemini => Kind::OpenAi,
            },
            base_url,
            keys,
            day,
            models: models
                .into_iter()
                .map(|(model, over)| (model, over.apply(NO_LIMITS)))
                .collect(),
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROQ: &str = r#"
        [[providers]]
        name = "groq"
        kind = "openai"
        base_url = "https://api.groq.com/openai/v1/"
        keys = ["gsk_one", "gsk_two", "gsk_one"]
        [providers.models."llama-3.3-70b-versatile"]
        rpm = 30
        rpd = 1000
        tpm = 12000
        tpd = 100000
        otpm = 2000

        [[providers]]
        name = "claude"
        kind = "anthropic"
        base_url = "https://api.anthropic.com"
        keys_env = "ANTHROPIC_KEYS"
        day = "America/New_York"
        [providers.models."claude-haiku-4-5"]
        rpm = 50

        [[providers]]
        name = "more-gemini"
        kind = "gemini"
        keys = ["AIza-extra"]
        [providers.models."gemini-2.5-flash"]
        rpd = 250
    "#;

    fn vars() -> Vec<(String, String)> {
        vec![("ANTHROPIC_KEYS".into(), "sk-ant-1, sk-ant-2".into())]
    }

    #[test]
    fn a_file_gives_each_provider_its_keys_zone_and_limits() {
        let file = parse(GROQ, &vars()).unwrap();
        let [groq, claude] = &file.providers[..] else {
            panic!("two providers: {:?}", file.providers.len());
        };
        assert_eq!(groq.base_url, "https://api.groq.com/openai/v1");
        assert_eq!(groq.kind, Kind::OpenAi);
        assert_eq!(groq.day, DayZone::UTC);
        let keys: Vec<&str> = groq.keys.iter().map(ApiKey::expose).collect();
        assert_eq!(keys, ["gsk_one", "gsk_two"]);
        assert_eq!(
            groq.models["llama-3.3-70b-versatile"],
            Limits {
                rpm: 30,
                tpm: 12_000,
                rpd: 1_000,
                tpd: 100_000,
                otpm: 2_000,
            }
        );
        assert_eq!(claude.day, DayZone::named("America/New_York").unwrap());
        let keys: Vec<&str> = claude.keys.iter().map(ApiKey::expose).collect();
        assert_eq!(keys, ["sk-ant-1", "sk-ant-2"]);
        // Left out: never binds.
        assert_eq!(claude.models["claude-haiku-4-5"].otpm, UNLIMITED);
        assert_eq!(claude.models["claude-haiku-4-5"].rpm, 50);
        assert_eq!(file.gemini_keys.len(), 1);
        assert_eq!(file.gemini_models["gemini-2.5-flash"].rpd, Some(250));
    }

    #[test]
    fn mistakes_are_named_and_keys_never_shown() {
        let one = |body: &str| {
            let text = format!("[[providers]]\n{body}");
            parse(&text, &[]).unwrap_err()
        };
        let model = "[providers.models.m]\nrpm = 1";
        let base = "base_url = \"https://x.example/v1\"";
        let bad = [
            (
                format!("name = \"Groq!\"\nkind = \"openai\"\nkeys = [\"k\"]\n{base}\n{model}"),
                "must be lowercase",
            ),
            (
                format!("name = \"g\"\nkind = \"openai\"\n{base}\n{model}"),
                "no keys",
            ),
            (
                format!("name = \"g\"\nkind = \"openai\"\nkeys_env = \"NOPE\"\n{base}\n{model}"),
                "NOPE, which is not set",
            ),
            (
                format!(
                    "name = \"g\"\nkind = \"openai\"\nkeys = [\"sk-secret\"]\nbase_url = \"ftp://x\"\n{model}"
                ),
                "base_url must start",
            ),
            (
                format!(
                    "name = \"g\"\nkind = \"openai\"\nkeys = [\"sk-secret\"]\n{base}\nday = \"Mars/Base\"\n{model}"
                ),
                "not a time zone",
            ),
            (
                format!("name = \"g\"\nkind = \"openai\"\nkeys = [\"sk-secret\"]\n{base}"),
                "no models",
            ),
            (
                format!(
                    "name = \"g\"\nkind = \"openai\"\nkeys = [\"sk-secret\"]\n{base}\n[providers.models.m]\nrpm = 0"
                ),
                "m.rpm must be a positive integer",
            ),
            (
                format!(
                    "name = \"g\"\nkind = \"openai\"\nkeys = [\"sk-secret\"]\n{base}\n[providers.models.m]\nrpmm = 3"
                ),
                "unknown field",
            ),
            (
                format!(
                    "name = \"gemini\"\nkind = \"openai\"\nkeys = [\"sk-secret\"]\n{base}\n{model}"
                ),
                "the name is taken",
            ),
            (
                "name = \"g\"\nkind = \"cohere\"\nkeys = [\"sk-secret\"]".to_string(),
                "line 3: unknown variant",
            ),
            (
                "name = \"g\"\nkind = \"openai\"\nkeys = [\"sk-secret\"".to_string(),
                "line 4",
            ),
        ];
        for (body, expected) in bad {
            let error = one(&body);
            assert!(error.contains(expected), "{error} (wanted {expected:?})");
            assert!(!error.contains("sk-secret"), "{error}");
        }
    }
}
