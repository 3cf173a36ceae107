//! The `gemini-flux` binary: `serve` (the default), `demo` and `sim`.

use clap::{Args, Parser, Subcommand};
use gemini_flux::clock::Clock;
use gemini_flux::policy::{Family, parse_overrides};
use gemini_flux::sim::{Faults, SimConfig, SimServer};
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
    /// Run the Gemini simulator alone.
    Sim(SimArgs),
}

#[derive(Args)]
struct SimArgs {
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
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Sim(args) => run_sim(args).await,
            Command::Serve | Command::Demo => {
                eprintln!(
                    "gemini-flux: the service lands with the scheduler; only `sim` runs today"
                );
                ExitCode::from(2)
            }
        }
    })
}

async fn run_sim(args: SimArgs) -> ExitCode {
    let mut config = SimConfig::new(args.keys);
    config.blocked_keys = args.blocked_keys;
    config.seed = args.seed;
    config.faults = Faults {
        latency_ms: args.latency_ms,
        stream_chunk_delay_ms: args.stream_chunk_delay_ms,
        unavailable_ratio: args.unavailable_ratio,
        bare_429_ratio: args.bare_429_ratio,
        drop_mid_stream_ratio: args.drop_mid_stream_ratio,
    };
    if let Some(json) = args.limits {
        match parse_overrides(&json) {
            Ok(overrides) => {
                config.limits = overrides
                    .into_iter()
                    .map(|(model, o)| {
                        let limits = o.apply(Family::of(&model).builtin_limits());
                        (model, limits)
                    })
                    .collect();
            }
            Err(e) => {
                eprintln!("gemini-flux sim: --limits / FLUX_LIMITS: {e}");
                return ExitCode::from(2);
            }
        }
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
