//! The environment (and `.env`) turned into typed, validated settings, once.
//!
//! Names are the contract of README.md's table. Anything malformed is refused here,
//! at start-up, with a message naming the variable, so the service never runs
//! on a half-understood configuration.

pub mod providers;

use crate::keys::ApiKey;
use crate::policy::file::{PolicyFile, read_policy_file};
use crate::policy::{
    KeyOverrides, LimitsOverride, Mode, Reserve, parse_key_overrides, parse_overrides,
};
use providers::ProviderSettings;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";
pub const DEFAULT_BIND: &str = "127.0.0.1:8000";
const DEFAULT_MAX_WAIT_S: f64 = 600.0;
const DEFAULT_UPSTREAM_TIMEOUT_S: u64 = 600;

/// Everything the service needs to start.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Gemini's keys (`GEMINI_KEY_n`, `GEMINI_KEYS`, then the providers
    /// file's gemini entries).
    pub keys: Vec<ApiKey>,
    /// The other providers (`FLUX_PROVIDERS_FILE`), whose keys come after
    /// Gemini's in every key list.
    pub providers: Vec<ProviderSettings>,
    pub mode: Mode,
    /// Log one line per scheduling decision (`GEMINI_LOG`).
    pub log_decisions: bool,
    pub base_url: String,
    pub bind: SocketAddr,
    /// A pinned model chain (`FLUX_MODELS`); discovered when `None`.
    pub models: Option<Vec<String>>,
    pub limits: BTreeMap<String, LimitsOverride>,
    pub max_wait: Duration,
    pub guard: Duration,
    pub max_body_bytes: usize,
    pub upstream_timeout: Duration,
    pub token_count: TokenCount,
    /// The SQLite file for what survives restarts (`FLUX_STATE_PATH`).
    pub state_path: std::path::PathBuf,
    /// How long a stopping service still serves waiting requests (`FLUX_DRAIN_S`).
    pub drain: Duration,
    /// Tokens clients must present (`FLUX_API_TOKENS`); empty: open.
    pub api_tokens: Vec<String>,
    /// Token for the admin routes (`FLUX_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// Let Gemini-native calls fall down the chain without asking (`FLUX_NATIVE_FALLBACK`).
    pub native_fallback: bool,
    /// The limits of `FLUX_POLICY_FILE`, read and checked at start.
    pub policy_file: PolicyFile,
    /// Per-key limits (`FLUX_KEY_LIMITS`), by 0-based key index.
    pub key_limits: KeyOverrides,
    /// Ask Gemini for its limits when no fresh cache exists (`FLUX_POLICY_FETCH`).
    pub policy_fetch: bool,
    /// Share quota state with other replicas through Redis (`FLUX_REDIS_URL`)
    /// instead of keeping it in SQLite.
    pub redis: Option<RedisSettings>,
    /// Bounds against slow clients, browsers, big bodies and a full disk.
    pub guards: Guards,
    /// The Batch API's reserve, retention and concurrency.
    pub batches: BatchSettings,
}

/// How batches run below interactive traffic.
#[derive(Clone, Debug)]
pub struct BatchSettings {
    /// What batch items leave free in every window of every lane for
    /// interactive calls (`FLUX_BATCH_RESERVE`, `requests,percent%`).
    pub reserve: Reserve,
    /// How long a finished batch and its results are kept (`FLUX_BATCH_TTL_H`).
    pub ttl: Duration,
    /// Batch items in flight upstream at once, all batches together
    /// (`FLUX_BATCH_CONCURRENCY`).
    pub concurrency: usize,
}

fn batch_settings(raw: &Raw) -> Result<BatchSettings, ConfigError> {
    let reserve = match raw.flux_batch_reserve.as_deref().map(str::trim) {
        None | Some("") => Reserve::default(),
        Some(text) => text
            .parse()
            .map_err(|e| ConfigError(format!("FLUX_BATCH_RESERVE: {e}")))?,
    };
    let ttl_h = raw.flux_batch_ttl_h.unwrap_or(48);
    if ttl_h == 0 || ttl_h > 24 * 365 {
        return Err(ConfigError(
            "FLUX_BATCH_TTL_H must be a whole number of hours from 1 to 8760".into(),
        ));
    }
    let concurrency = raw.flux_batch_concurrency.unwrap_or(64);
    if !(1..=10_000).contains(&concurrency) {
        return Err(ConfigError(
            "FLUX_BATCH_CONCURRENCY must be a whole number from 1 to 10000".into(),
        ));
    }
    Ok(BatchSettings {
        reserve,
        ttl: Duration::from_secs(ttl_h * 3600),
        concurrency: concurrency as usize,
    })
}

/// What keeps a hostile or unlucky world from exhausting the service.
#[derive(Clone, Debug)]
pub struct Guards {
    /// Browser origins allowed besides the service's own (`FLUX_CORS_ORIGINS`).
    pub cors_origins: Allowed,
    /// Connections served at once (`FLUX_MAX_CONNECTIONS`), before the
    /// descriptor limit lowers it.
    pub max_connections: usize,
    /// Bound on a whole request: count, waits and every attempt
    /// (`FLUX_REQUEST_TIMEOUT_S`).
    pub request_timeout: Duration,
    /// Request-body bytes held in memory at once (`FLUX_MAX_INFLIGHT_MB`).
    pub max_inflight_bytes: usize,
    /// Ledger records a failing store may leave unwritten before calls are
    /// refused (`FLUX_MAX_UNWRITTEN`).
    pub max_unwritten: usize,
}

fn guards(raw: &Raw) -> Result<Guards, ConfigError> {
    let cors_origins = Allowed::parse(raw.flux_cors_origins.as_deref().unwrap_or(""))
        .map_err(|e| ConfigError(format!("FLUX_CORS_ORIGINS: {e}")))?;
    let at_least_one = |name: &str, value: Option<u64>, default: u64| match value {
        None => Ok(default),
        Some(0) => Err(ConfigError(format!("{name} must be at least 1"))),
        Some(n) => Ok(n),
    };
    let max_connections = at_least_one("FLUX_MAX_CONNECTIONS", raw.flux_max_connections, 4096)?;
    // By default, the longest wait plus one call of the longest duration.
    let wait_s = raw.flux_max_wait_s.unwrap_or(DEFAULT_MAX_WAIT_S);
    let default_timeout_s = (wait_s.is_finite() && wait_s >= 0.0).then_some(wait_s.ceil() as u64);
    let timeout_s = at_least_one(
        "FLUX_REQUEST_TIMEOUT_S",
        raw.flux_request_timeout_s,
        default_timeout_s.unwrap_or(0)
            + raw
                .flux_upstream_timeout_s
                .unwrap_or(DEFAULT_UPSTREAM_TIMEOUT_S),
    )?;
    let inflight_mb = at_least_one("FLUX_MAX_INFLIGHT_MB", raw.flux_max_inflight_mb, 256)?;
    let max_unwritten = at_least_one("FLUX_MAX_UNWRITTEN", raw.flux_max_unwritten, 10_000)?;
    Ok(Guards {
        cors_origins,
        max_connections: max_connections as usize,
        request_timeout: Duration::from_secs(timeout_s),
        max_inflight_bytes: (inflight_mb as usize).saturating_mul(1024 * 1024),
        max_unwritten: max_unwritten as usize,
    })
}

/// Where replicas share their quota state.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port/db` (`FLUX_REDIS_URL`).
    pub url: String,
    /// Put before every Redis key (`FLUX_REDIS_PREFIX`, default `gemini-flux:`):
    /// replicas with the same prefix share one truth.
    pub prefix: String,
}

/// How a request's input tokens are counted before it is planned
/// (`FLUX_TOKEN_COUNT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenCount {
    /// One free `countTokens` call per request: exact, one more round trip.
    Upstream,
    /// The local estimate (4 characters a token, 258 per inline part): no
    /// round trip; the booking is corrected by `promptTokenCount` when the
    /// answer comes. For traffic whose TPM never binds.
    Local,
}

/// The raw variables, as envy reads them.
#[derive(Deserialize, Default)]
struct Raw {
    gemini_keys: Option<String>,
    gemini_mode: Option<String>,
    gemini_log: Option<bool>,
    gemini_base_url: Option<String>,
    flux_bind: Option<String>,
    flux_models: Option<String>,
    flux_limits: Option<String>,
    flux_key_limits: Option<String>,
    flux_max_wait_s: Option<f64>,
    flux_guard_ms: Option<u64>,
    flux_max_body_mb: Option<u64>,
    flux_upstream_timeout_s: Option<u64>,
    flux_token_count: Option<String>,
    flux_state_path: Option<String>,
    flux_drain_s: Option<u64>,
    flux_api_tokens: Option<String>,
    flux_admin_token: Option<String>,
    flux_native_fallback: Option<bool>,
    flux_policy_file: Option<String>,
    flux_providers_file: Option<String>,
    flux_policy_fetch: Option<bool>,
    flux_redis_url: Option<String>,
    flux_redis_prefix: Option<String>,
    flux_cors_origins: Option<String>,
    flux_max_connections: Option<u64>,
    flux_request_timeout_s: Option<u64>,
    flux_max_inflight_mb: Option<u64>,
    flux_max_unwritten: Option<u64>,
    flux_batch_reserve: Option<String>,
    flux_batch_ttl_h: Option<u64>,
    flux_batch_concurrency: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct ConfigError(String);

fn redis_settings(
    url: Option<String>,
    prefix: Option<String>,
) -> Result<Option<RedisSettings>, ConfigError> {
    let Some(url) = url.map(|u| u.trim().to_string()).filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    if let Err(e) = redis::Client::open(url.as_str()) {
        return Err(ConfigError(format!(
            "FLUX_REDIS_URL: {} is not a Redis URL like redis://host:6379/0 ({e})",
            crate::store::redis::masked(&url)
        )));
    }
    let prefix = prefix.unwrap_or_else(|| "gemini-flux:".to_string());
    if prefix.trim().is_empty() || prefix.chars().any(char::is_whitespace) {
        return Err(ConfigError(
            "FLUX_REDIS_PREFIX must be a non-empty name without spaces".into(),
        ));
    }
    Ok(Some(RedisSettings { url, prefix }))
}

impl Settings {
    /// Reads the process environment, after loading `.env` from the working
    /// directory (variables already set win over the file).
    pub fn from_env() -> Result<Settings, ConfigError> {
        match dotenvy::dotenv() {
            Ok(_) | Err(dotenvy::Error::Io(_)) => {}
            Err(e) => return Err(ConfigError(format!(".env: {e}"))),
        }
        Settings::from_vars(std::env::vars())
    }

    /// Reads settings from the given variables (tests pass their own); a name
    /// given twice keeps its last value, as in an environment.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .collect::<BTreeMap<String, String>>()
            .into_iter()
            .collect();
        let raw: Raw =
            envy::from_iter(vars.iter().cloned()).map_err(|e| ConfigError(envy_message(e)))?;
        let mut keys = collect_keys(&vars, raw.gemini_keys.as_deref())?;
        let from_file = match raw.flux_providers_file.as_deref().map(str::trim) {
            None | Some("") => providers::ProvidersFile::default(),
            Some(path) => providers::read(std::path::Path::new(path), &vars)?,
        };
        for key in from_file.gemini_keys {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        // A key's text names its lanes and its ledger rows: one provider each.
        let mut seen = std::collections::HashSet::new();
        let every_key = keys
            .iter()
            .chain(from_file.providers.iter().flat_map(|p| &p.keys));
        if every_key.map(ApiKey::stable_id).any(|id| !seen.insert(id)) {
            return Err(ConfigError(
                "FLUX_PROVIDERS_FILE: the same key is given to two providers (or to a provider and Gemini)".into(),
            ));
        }
        if keys.is_empty() && from_file.providers.is_empty() {
            return Err(ConfigError(
                "no keys: set GEMINI_KEY_1, GEMINI_KEY_2, … or GEMINI_KEYS=key1,key2 (in the environment or .env), or other providers' in FLUX_PROVIDERS_FILE".into(),
            ));
        }
        let guards = guards(&raw)?;
        let batches = batch_settings(&raw)?;
        let mode = match raw.gemini_mode.as_deref() {
            None | Some("") => Mode::Both,
            Some(m) => m
                .parse()
                .map_err(|e| ConfigError(format!("GEMINI_MODE: {e}")))?,
        };
        let bind_text = raw.flux_bind.unwrap_or_else(|| DEFAULT_BIND.to_string());
        let bind = bind_text.parse().map_err(|_| {
            ConfigError(format!(
                "FLUX_BIND: {bind_text:?} is not an address like 127.0.0.1:8000"
            ))
        })?;
        let models = raw
            .flux_models
            .map(|m| split_list(&m))
            .filter(|m| !m.is_empty());
        let limits = match raw.flux_limits.as_deref().map(str::trim) {
            None | Some("") => BTreeMap::new(),
            Some(json) => {
                parse_overrides(json).map_err(|e| ConfigError(format!("FLUX_LIMITS: {e}")))?
            }
        };
        let key_limits = match raw.flux_key_limits.as_deref().map(str::trim) {
            None | Some("") => KeyOverrides::new(),
            Some(json) => parse_key_overrides(json)
                .map_err(|e| ConfigError(format!("FLUX_KEY_LIMITS: {e}")))?,
        };
        let mut policy_file = match raw.flux_policy_file.as_deref().map(str::trim) {
            None | Some("") => PolicyFile::default(),
            Some(path) => read_policy_file(std::path::Path::new(path))
                .map_err(|e| ConfigError(format!("FLUX_POLICY_FILE {e}")))?,
        };
        // The providers file's gemini numbers join the file layer, under FLUX_POLICY_FILE's.
        for (model, over) in from_file.gemini_models {
            let lower = policy_file.models.get(&model).copied().unwrap_or_default();
            policy_file.models.insert(model, lower.or(over));
        }
        let beyond = |k: &KeyOverrides| k.keys().copied().find(|&i| i >= keys.len());
        if let Some(i) = beyond(&key_limits).or(beyond(&policy_file.keys)) {
            return Err(ConfigError(format!(
                "per-key limits name key {}, but {} key(s) are configured",
                crate::keys::KeyIndex::new(i),
                keys.len()
            )));
        }
        let max_wait_s = raw.flux_max_wait_s.unwrap_or(DEFAULT_MAX_WAIT_S);
        let max_wait = Duration::try_from_secs_f64(max_wait_s).map_err(|_| {
            ConfigError("FLUX_MAX_WAIT_S must be a non-negative number of seconds".into())
        })?;
        let base_url = raw
            .gemini_base_url
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(ConfigError(format!(
                "GEMINI_BASE_URL: {base_url:?} must start with http:// or https://"
            )));
        }
        let body_mb = raw.flux_max_body_mb.unwrap_or(20);
        if body_mb == 0 {
            return Err(ConfigError("FLUX_MAX_BODY_MB must be at least 1".into()));
        }
        let token_count = match raw.flux_token_count.as_deref().map(str::trim) {
            None | Some("") | Some("upstream") => TokenCount::Upstream,
            Some("local") => TokenCount::Local,
            Some(other) => {
                return Err(ConfigError(format!(
                    "FLUX_TOKEN_COUNT: {other:?} is neither upstream nor local"
                )));
            }
        };
        Ok(Settings {
            keys,
            providers: from_file.providers,
            mode,
            log_decisions: raw.gemini_log.unwrap_or(true),
            base_url,
            bind,
            models,
            limits,
            max_wait,
            guard: Duration::from_millis(raw.flux_guard_ms.unwrap_or(250)),
            max_body_bytes: (body_mb as usize).saturating_mul(1024 * 1024),
            upstream_timeout: Duration::from_secs(
                raw.flux_upstream_timeout_s
                    .unwrap_or(DEFAULT_UPSTREAM_TIMEOUT_S),
            ),
            token_count,
            state_path: raw
                .flux_state_path
                .filter(|p| !p.trim().is_empty())
                .map_or_else(
                    crate::store::SqliteStore::default_path,
                    std::path::PathBuf::from,
                ),
            drain: Duration::from_secs(raw.flux_drain_s.unwrap_or(20)),
            api_tokens: raw
                .flux_api_tokens
                .as_deref()
                .map(split_list)
                .unwrap_or_default(),
            admin_token: raw
                .flux_admin_token
                .filter(|t| !t.trim().is_empty())
                .map(|t| t.trim().to_string()),
            native_fallback: raw.flux_native_fallback.unwrap_or(false),
            policy_file,
            key_limits,
            policy_fetch: raw.flux_policy_fetch.unwrap_or(true),
            guards,
            batches,
            redis: redis_settings(raw.flux_redis_url, raw.flux_redis_prefix)?,
        })
    }
}

fn envy_message(e: envy::Error) -> String {
    match e {
        envy::Error::Custom(m) => format!("bad setting: {m}"),
        other => format!("bad setting: {other}"),
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// `GEMINI_KEY_1 … GEMINI_KEY_N` in numeric order, then `GEMINI_KEYS`; each
/// key once.
fn collect_keys(vars: &[(String, String)], list: Option<&str>) -> Result<Vec<ApiKey>, ConfigError> {
    let mut numbered: Vec<(u32, &str)> = vars
        .iter()
        .filter_map(|(name, value)| {
            let n = name.strip_prefix("GEMINI_KEY_")?.parse::<u32>().ok()?;
            Some((n, value.trim()))
        })
        .filter(|(_, v)| !v.is_empty())
        .collect();
    numbered.sort_by_key(|(n, _)| *n);
    let mut keys: Vec<String> = numbered.into_iter().map(|(_, v)| v.to_string()).collect();
    keys.extend(list.map(split_list).unwrap_or_default());
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.clone()));
    Ok(keys.into_iter().map(ApiKey::new).collect())
}

/// The origins `FLUX_CORS_ORIGINS` allows, normalised (`https://app.example.com`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Allowed {
    /// `*`: any origin.
    any: bool,
    origins: Vec<String>,
}

impl Allowed {
    /// A comma-separated list of origins (scheme, host, optional port), or `*`.
    pub fn parse(list: &str) -> Result<Allowed, String> {
        let mut allowed = Allowed::default();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                allowed.any = true;
                continue;
            }
            let origin = normalise_origin(item).ok_or_else(|| {
                format!("{item:?} is not an origin like https://app.example.com (scheme, host and port only)")
            })?;
            allowed.origins.push(origin);
        }
        Ok(allowed)
    }

    /// Whether `origin` (normalised) is allowed.
    pub fn lists(&self, origin: &str) -> bool {
        self.any || self.origins.iter().any(|o| o == origin)
    }
}

/// `scheme://host[:port]` as browsers serialise it, or `None` if `text` is
/// anything else (a path, credentials, the opaque `null`).
pub fn normalise_origin(text: &str) -> Option<String> {
    let url = reqwest::Url::parse(text).ok()?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none();
    plain.then(|| url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn numbered_keys_come_in_numeric_order_then_the_list() {
        let s = Settings::from_vars(vars(&[
            ("GEMINI_KEY_10", "kkkk-10"),
            ("GEMINI_KEY_2", "kkkk-2"),
            ("GEMINI_KEYS", "kkkk-a, kkkk-2"),
        ]))
        .unwrap();
        let keys: Vec<&str> = s.keys.iter().map(ApiKey::expose).collect();
        assert_eq!(keys, ["kkkk-2", "kkkk-10", "kkkk-a"]);
        assert_eq!(s.mode, Mode::Both);
        assert_eq!(s.max_wait, Duration::from_secs(600));
        assert_eq!(s.guard, Duration::from_millis(250));
        assert_eq!(s.max_body_bytes, 20 * 1024 * 1024);
        assert!(s.log_decisions);
    }

    #[test]
    fn bad_settings_are_refused_with_the_variable_named() {
        let err =
            |pairs: &[(&str, &str)]| Settings::from_vars(vars(pairs)).unwrap_err().to_string();
        assert!(err(&[]).contains("GEMINI_KEY_1"));
        assert!(err(&[("GEMINI_KEYS", "k"), ("GEMINI_MODE", "turbo")]).contains("GEMINI_MODE"));
        assert!(err(&[("GEMINI_KEYS", "k"), ("FLUX_LIMITS", "{oops")]).contains("FLUX_LIMITS"));
        let guard = err(&[("GEMINI_KEYS", "k"), ("FLUX_GUARD_MS", "soon")]);
        assert!(guard.contains("FLUX_GUARD_MS"), "{guard}");
        assert!(err(&[("GEMINI_KEYS", "k"), ("FLUX_BIND", "here")]).contains("FLUX_BIND"));
        assert!(
            err(&[("GEMINI_KEYS", "k"), ("FLUX_MAX_WAIT_S", "-1")]).contains("FLUX_MAX_WAIT_S")
        );
    }

    #[test]
    fn batch_settings_default_and_refuse_bad_values() {
        let plain = Settings::from_vars(vars(&[("GEMINI_KEYS", "k")])).unwrap();
        assert_eq!(plain.batches.reserve, Reserve::default());
        assert_eq!(plain.batches.ttl, Duration::from_secs(48 * 3600));
        assert_eq!(plain.batches.concurrency, 64);
        let set = Settings::from_vars(vars(&[
            ("GEMINI_KEYS", "k"),
            ("FLUX_BATCH_RESERVE", "2, 25%"),
            ("FLUX_BATCH_TTL_H", "1"),
            ("FLUX_BATCH_CONCURRENCY", "4"),
        ]))
        .unwrap()
        .batches;
        assert_eq!(
            set.reserve,
            Reserve {
                requests: 2,
                token_percent: 25
            }
        );
        assert_eq!(set.ttl, Duration::from_secs(3600));
        assert_eq!(set.concurrency, 4);
        for (name, bad) in [
            ("FLUX_BATCH_RESERVE", "10%"),
            ("FLUX_BATCH_RESERVE", "1,100%"),
            ("FLUX_BATCH_TTL_H", "0"),
            ("FLUX_BATCH_TTL_H", "two days"),
            ("FLUX_BATCH_CONCURRENCY", "0"),
        ] {
            let e = Settings::from_vars(vars(&[("GEMINI_KEYS", "k"), (name, bad)])).unwrap_err();
            assert!(e.to_string().contains(name), "{name}={bad}: {e}");
        }
    }

    #[test]
    fn redis_is_off_unless_asked_and_its_prefix_defaults() {
        let plain = Settings::from_vars(vars(&[("GEMINI_KEYS", "k")])).unwrap();
        assert!(plain.redis.is_none());
        let shared = Settings::from_vars(vars(&[
            ("GEMINI_KEYS", "k"),
            ("FLUX_REDIS_URL", " rediss://u:pw@cache:6380/2 "),
        ]))
        .unwrap()
        .redis
        .unwrap();
        assert_eq!(shared.url, "rediss://u:pw@cache:6380/2");
        assert_eq!(shared.prefix, "gemini-flux:");
        let err =
            |pairs: &[(&str, &str)]| Settings::from_vars(vars(pairs)).unwrap_err().to_string();
        let url = err(&[
            ("GEMINI_KEYS", "k"),
            ("FLUX_REDIS_URL", "http://u:pw@cache"),
        ]);
        assert!(
            url.contains("FLUX_REDIS_URL") && !url.contains("pw@"),
            "{url}"
        );
        let prefix = err(&[
            ("GEMINI_KEYS", "k"),
            ("FLUX_REDIS_URL", "redis://cache"),
            ("FLUX_REDIS_PREFIX", "my app:"),
        ]);
        assert!(prefix.contains("FLUX_REDIS_PREFIX"), "{prefix}");
    }

    #[test]
    fn errors_never_contain_a_key() {
        let e = Settings::from_vars(vars(&[("GEMINI_KEYS", "AIzaSECRET"), ("GEMINI_MODE", "x")]))
            .unwrap_err();
        assert!(!e.to_string().contains("AIzaSECRET"));
    }

    #[test]
    fn a_providers_file_alone_is_enough_and_a_key_serves_one_provider() {
        let dir = std::env::temp_dir().join(format!("flux-providers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("providers.toml");
        let file = |keys: &str| {
            let text = format!(
                "[[providers]]\nname = \"groq\"\nkind = \"openai\"\nbase_url = \"https://g.example/v1\"\nkeys = [{keys}]\n[providers.models.m]\nrpm = 1\n"
            );
            std::fs::write(&path, text).unwrap();
            vec![(
                "FLUX_PROVIDERS_FILE".to_string(),
                path.display().to_string(),
            )]
        };
        let alone = Settings::from_vars(file("\"gsk_1\"")).unwrap();
        assert!(alone.keys.is_empty());
        assert_eq!(alone.providers[0].keys.len(), 1);
        let mut shared = file("\"AIzaSHARED\"");
        shared.push(("GEMINI_KEYS".into(), "AIzaSHARED".into()));
        let e = Settings::from_vars(shared).unwrap_err().to_string();
        assert!(e.contains("the same key is given to two providers"), "{e}");
        assert!(!e.contains("AIzaSHARED"), "{e}");
        assert!(
            Settings::from_vars(Vec::new())
                .unwrap_err()
                .to_string()
                .starts_with("no keys")
        );
    }
}
