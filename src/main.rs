//! The `gemini-flux` binary: `serve` (the default), `demo` and `sim`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use gemini_flux::clock::{Clock, DayZone};
use gemini_flux::config::Settings;
use gemini_flux::config::providers::ProviderSettings;
use gemini_flux::policy::{Family, Limits, LimitsOverride, parse_key_overrides, parse_overrides};
use gemini_flux::service;
use gemini_flux::sim::provider::NO_LIMITS;
use gemini_flux::sim::{Faults, ProviderConfig, ProviderKind, ProviderSim, SimConfig, SimServer};
use gemini_flux::upstream::Kind;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "gemini-flux",
    version,
    about = "Multiplexes N Gemini API keys so request-heavy jobs never see an avoidable 429"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Run the service against an in-process simulator with fake keys.
    Demo,
    /// Run a simulator alone: Gemini's (the default), or with `--kind` an
    /// OpenAI-compatible provider's or Anthropic's.
    Sim(Box<SimArgs>),
    /// Exit 0 if the service on FLUX_BIND answers /healthz (the container's
    /// HEALTHCHECK: the image has no shell or curl).
    Healthcheck,
}

/// The provider a `sim` plays.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SimKind {
    Gemini,
    Openai,
    Anthropic,
}

#[derive(Args)]
struct SimArgs {
    /// Which provider to simulate: gemini, openai (an OpenAI-compatible one,
    /// Groq's wire) or anthropic.
    #[arg(long, value_enum, default_value_t = SimKind::Gemini)]
    kind: SimKind,
    /// The calendar day of an openai or anthropic simulator's per-day
    /// quotas: utc or pacific (Gemini's is always Pacific).
    #[arg(long, default_value = "utc")]
    day: String,
    /// Port to listen on (0 for any free port).
    #[arg(long, default_value_t = 18080)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Comma-separated keys the simulator accepts.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sim-key-1,sim-key-2,sim-key-3"
    )]
    keys: Vec<String>,
    /// Comma-separated keys it refuses with 403 PERMISSION_DENIED.
    #[arg(long, value_delimiter = ',')]
    blocked_keys: Vec<String>,
    /// Limits per model as JSON, e.g. '{"gemini-2.5-flash":{"rpm":10,"tpm":250000,"rpd":250}}'.
    /// The simulator then serves exactly these models. Default: the built-in free tier.
    #[arg(long, env = "FLUX_LIMITS")]
    limits: Option<String>,
    /// Per-key limits as JSON, keys by 1-based index (keys of another tier),
    /// e.g. '{"2":{"gemini-2.5-flash":{"rpm":1000,"tpm":1000000}}}'.
    #[arg(long, env = "FLUX_KEY_LIMITS")]
    key_limits: Option<String>,
    /// Comma-separated models with no quota at all (every limit 0), as pro
    /// became on the free tier in December 2025.
    #[arg(long, value_delimiter = ',')]
    zero_quota: Vec<String>,
    /// Comma-separated models answered 404 "no longer available to new users".
    #[arg(long, value_delimiter = ',')]
    retired: Vec<String>,
    /// Leave `quotaValue` out of 429s (the limit is then only in the message).
    #[arg(long)]
    omit_quota_value: bool,
    /// Milliseconds added to every generate call.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Milliseconds between streamed chunks.
    #[arg(long, default_value_t = 0)]
    stream_chunk_delay_ms: u64,
    /// Fraction of calls answered 503 UNAVAILABLE.
    #[arg(long, default_value_t = 0.0)]
    unavailable_ratio: f64,
    /// Fraction of calls answered with a bare 429.
    #[arg(long, default_value_t = 0.0)]
    bare_429_ratio: f64,
    /// Fraction of calls whose connection drops mid-answer.
    #[arg(long, default_value_t = 0.0)]
    drop_mid_stream_ratio: f64,
    /// Seed for the fault draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> ExitCode {
    let command = Cli::parse().command.unwrap_or(Command::Serve);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let demo = matches!(command, Command::Demo);
    let settings = match command {
        Command::Sim(args) => {
            init_logging(true);
            return runtime.block_on(run_sim(*args));
        }
        Command::Healthcheck => return runtime.block_on(healthcheck()),
        Command::Demo => demo_settings(),
        Command::Serve => Settings::from_env(),
    };
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gemini-flux: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(settings.log_decisions);
    // Each connection holds a descriptor: take every one the system allows.
    if let Some(limit) = gemini_flux::listener::raise_descriptor_limit() {
        tracing::debug!("open descriptors allowed: {limit}");
    }
    // A spike of big bodies is given back once they are gone.
    gemini_flux::api::inflight::return_big_buffers();
    if demo {
        runtime.block_on(run_demo(settings))
    } else {
        runtime.block_on(run_service(settings))
    }
}

/// `RUST_LOG` is honoured (default `info`); `GEMINI_LOG=false` silences the
/// per-decision lines.
fn init_logging(log_decisions: bool) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if !log_decisions {
        filter = filter.add_directive(
            "gemini_flux::decision=off"
                .parse()
                .expect("a valid directive"),
        );
    }
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

async fn run_service(settings: Settings) -> ExitCode {
    match service::start(settings, Clock::system()).await {
        Ok(running) => serve(running).await,
        Err(e) => {
            eprintln!("gemini-flux: {e}");
            ExitCode::from(2)
        }
    }
}

/// Serves until Ctrl-C or SIGTERM, then stops gracefully.
async fn serve(running: service::RunningService) -> ExitCode {
    match running.serve_until(shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gemini-flux: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The fake keys of `demo`: the in-process simulator accepts exactly these.
const DEMO_KEYS: [&str; 4] = [
    "demo-key-0001",
    "demo-key-0002",
    "demo-key-0003",
    "demo-key-0004",
];

/// The other providers of `demo`: an OpenAI-compatible one (Groq's free
/// models) and Anthropic, each with fake keys its simulator accepts.
const DEMO_PROVIDERS: [(&str, ProviderKind, &[&str]); 2] = [
    (
        "groq",
        ProviderKind::OpenAiCompatible,
        &["demo-groq-key-1", "demo-groq-key-2"],
    ),
    ("claude", ProviderKind::Anthropic, &["demo-claude-key-1"]),
];

/// The environment's settings, with the keys and upstream replaced by the
/// demo's own (no real key is read, so none can be spent by accident).
fn demo_settings() -> Result<Settings, gemini_flux::config::ConfigError> {
    let _ = dotenvy::dotenv();
    let vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("GEMINI_KEY") && k != "GEMINI_BASE_URL")
        .chain([("GEMINI_KEYS".to_string(), DEMO_KEYS.join(","))])
        .collect();
    // The demo's fake keys keep their own state file unless told otherwise.
    let state = ("FLUX_STATE_PATH".to_string(), "./data/demo.db".to_string());
    let has_state = vars.iter().any(|(k, _)| k == "FLUX_STATE_PATH");
    Settings::from_vars(vars.into_iter().chain((!has_state).then_some(state)))
}

async fn run_demo(mut settings: Settings) -> ExitCode {
    let mut config = SimConfig::new(DEMO_KEYS);
    config.faults.latency_ms = 300;
    // FLUX_LIMITS describes the simulated projects too, so both sides agree.
    for (model, limits) in config.limits.iter_mut() {
        if let Some(o) = settings.limits.get(model) {
            *limits = o.apply(*limits);
        }
    }
    // Asked for its limits (the policy fetch), the simulated model tells the truth.
    let models: Vec<serde_json::Value> = config
        .limits
        .iter()
        .filter(|(m, _)| Family::of(m) != Family::Embedding)
        .map(|(m, l)| serde_json::json!({"model": m, "rpm": l.rpm, "tpm": l.tpm, "rpd": l.rpd}))
        .collect();
    config.faults.json_answer = Some(serde_json::json!({ "models": models }).to_string());
    let sim = match SimServer::start(config, Clock::system(), ([127, 0, 0, 1], 0).into()).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("gemini-flux demo: cannot start the simulator: {e}");
            return ExitCode::from(2);
        }
    };
    settings.base_url = sim.base_url();
    tracing::info!(
        "demo: simulated Gemini with {} fake keys at {}",
        DEMO_KEYS.len(),
        sim.base_url()
    );
    // One provider of each other kind, simulated too, as a providers file would name them.
    let mut others = Vec::new();
    for (name, kind, keys) in DEMO_PROVIDERS {
        let config = ProviderConfig::new(kind, keys.iter().copied());
        let limits = config.models.clone();
        let sim =
            match ProviderSim::start(config, Clock::system(), ([127, 0, 0, 1], 0).into()).await {
                Ok(sim) => sim,
                Err(e) => {
                    eprintln!("gemini-flux demo: cannot start the {name} simulator: {e}");
                    return ExitCode::from(2);
                }
            };
        let (kind, base_url) = match kind {
            ProviderKind::OpenAiCompatible => (Kind::OpenAi, format!("{}/v1", sim.base_url())),
            ProviderKind::Anthropic => (Kind::Anthropic, sim.base_url()),
        };
        tracing::info!(
            "demo: simulated provider {name} ({} model(s)) at {base_url}",
            limits.len()
        );
        settings.providers.push(ProviderSettings {
            name: name.to_string(),
            kind,
            base_url,
            keys: keys
                .iter()
                .map(|k| gemini_flux::keys::ApiKey::new(*k))
                .collect(),
            day: DayZone::UTC,
            models: limits,
        });
        others.push(sim);
    }
    // Only once the service listens does it say where.
    let running = match service::start(settings, Clock::system()).await {
        Ok(running) => running,
        Err(e) => {
            eprintln!("gemini-flux demo: {e}");
            return ExitCode::from(2);
        }
    };
    let bind = running.addr();
    eprintln!(
        "\n  Try it:\n    curl -s http://{bind}/generate -H 'content-type: application/json' -d '{{\"prompt\": \"Hello, Gemini\"}}'\n    curl -s http://{bind}/status\n"
    );
    serve(running).await
}

async fn healthcheck() -> ExitCode {
    let bind = std::env::var("FLUX_BIND")
        .unwrap_or_else(|_| gemini_flux::config::DEFAULT_BIND.to_string());
    let Ok(mut addr) = bind.parse::<SocketAddr>() else {
        eprintln!("healthcheck: FLUX_BIND {bind:?} is not an address");
        return ExitCode::FAILURE;
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(IpAddr::from([127, 0, 0, 1]));
    }
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .no_proxy()
        .build();
    let answered = match client {
        Ok(c) => c
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success()),
        Err(_) => false,
    };
    if answered {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing the requests in progress");
}

/// Each model's override laid on `base`'s limits for it.
fn applied(
    overrides: BTreeMap<String, LimitsOverride>,
    base: impl Fn(&str) -> Limits,
) -> BTreeMap<String, Limits> {
    overrides
        .into_iter()
        .map(|(model, o)| {
            let limits = o.apply(base(&model));
            (model, limits)
        })
        .collect()
}

/// The faults every simulator kind takes from the command line.
fn sim_faults(args: &SimArgs) -> Faults {
    Faults {
        latency_ms: args.latency_ms,
        stream_chunk_delay_ms: args.stream_chunk_delay_ms,
        unavailable_ratio: args.unavailable_ratio,
        bare_429_ratio: args.bare_429_ratio,
        drop_mid_stream_ratio: args.drop_mid_stream_ratio,
        ..Faults::default()
    }
}

async fn run_sim(args: SimArgs) -> ExitCode {
    let kind = match args.kind {
        SimKind::Gemini => None,
        SimKind::Openai => Some(ProviderKind::OpenAiCompatible),
        SimKind::Anthropic => Some(ProviderKind::Anthropic),
    };
    if let Some(kind) = kind {
        return run_provider_sim(args, kind).await;
    }
    let faults = Faults {
        omit_quota_value: args.omit_quota_value,
        ..sim_faults(&args)
    };
    let mut config = SimConfig::new(args.keys);
    config.blocked_keys = args.blocked_keys;
    config.seed = args.seed;
    config.faults = faults;
    if let Some(json) = args.limits {
        match parse_overrides(&json) {
            Ok(overrides) => {
                config.limits = applied(overrides, |model| Family::of(model).builtin_limits());
            }
            Err(e) => {
                eprintln!("gemini-flux sim: --limits / FLUX_LIMITS: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(json) = args.key_limits {
        match parse_key_overrides(&json) {
            Ok(per_key) => {
                let served = config.limits.clone();
                let base = |model: &str| {
                    let builtin = Family::of(model).builtin_limits();
                    served.get(model).copied().unwrap_or(builtin)
                };
                config.key_limits = per_key
                    .into_iter()
                    .map(|(key, models)| (key + 1, applied(models, base)))
                    .collect();
            }
            Err(e) => {
                eprintln!("gemini-flux sim: --key-limits / FLUX_KEY_LIMITS: {e}");
                return ExitCode::from(2);
            }
        }
    }
    for model in &args.zero_quota {
        config = config.with_zero_quota(model);
    }
    for model in &args.retired {
        config = config.with_retired(model);
    }
    let bind = SocketAddr::new(args.bind, args.port);
    match SimServer::start(config, Clock::system(), bind).await {
        Ok(sim) => {
            tracing::info!("Gemini simulator listening on {}", sim.base_url());
            sim.wait().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gemini-flux sim: cannot listen on {bind}: {e}");
            ExitCode::from(2)
        }
    }
}

/// `sim --kind openai|anthropic`: a provider simulator with the kind's
/// models, or exactly those of `--limits` (a model it does not know starts
/// with no limit), its day in `--day`, and the latency faults.
async fn run_provider_sim(args: SimArgs, kind: ProviderKind) -> ExitCode {
    let gemini_only = !args.blocked_keys.is_empty()
        || args.key_limits.is_some()
        || !args.zero_quota.is_empty()
        || !args.retired.is_empty()
        || args.omit_quota_value;
    if gemini_only {
        eprintln!(
            "gemini-flux sim: --blocked-keys, --key-limits, --zero-quota, --retired and --omit-quota-value are the Gemini simulator's"
        );
        return ExitCode::from(2);
    }
    let faults = sim_faults(&args);
    let mut config = ProviderConfig::new(kind, args.keys);
    config.faults = faults;
    config.day = match args.day.as_str() {
        "utc" => DayZone::UTC,
        "pacific" => DayZone::PACIFIC,
        other => {
            eprintln!("gemini-flux sim: --day {other:?}: utc or pacific");
            return ExitCode::from(2);
        }
    };
    if let Some(json) = args.limits {
        match parse_overrides(&json) {
            Ok(overrides) => {
                let served = config.models.clone();
                let base = |model: &str| served.get(model).copied().unwrap_or(NO_LIMITS);
                config.models = applied(overrides, base);
            }
            Err(e) => {
                eprintln!("gemini-flux sim: --limits / FLUX_LIMITS: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let bind = SocketAddr::new(args.bind, args.port);
    match ProviderSim::start(config, Clock::system(), bind).await {
        Ok(sim) => {
            tracing::info!("{kind:?} simulator listening on {}", sim.base_url());
            sim.wait().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gemini-flux sim: cannot start on {bind}: {e}");
            ExitCode::from(2)
        }
    }
}
