//! `flux-bench`: measures gemini-flux. `efficiency` replays request traces
//! through the real scheduler core and three other strategies against the
//! simulator's quota model in simulated time; `overhead` measures the
//! gateway's own cost; `replicas` runs several processes on one Redis. The
//! tables go to BENCHMARKS.md.

mod bound;
mod efficiency;
mod overhead;
mod peers;
mod replicas;
mod soak;
mod strategies;
mod traces;
mod world;

use clap::{Parser, Subcommand};
use strategies::Strategy;
use traces::Trace;

#[derive(Parser)]
#[command(
    name = "flux-bench",
    about = "Benchmarks for gemini-flux; prints markdown tables"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Strategies side by side on request traces, in simulated time.
    Efficiency {
        /// A subset that runs in seconds: 1 and 8 keys.
        #[arg(long)]
        quick: bool,
        /// Key counts (default 1,4,8,32).
        #[arg(long, value_delimiter = ',')]
        keys: Vec<usize>,
        /// Traces: dubbing, chat, mixed, burst, providers (default all).
        #[arg(long, value_delimiter = ',')]
        traces: Vec<String>,
    },
    /// The gateway's own cost: latency added, throughput, CPU and memory.
    Overhead {
        /// Open-loop request rates, per second.
        #[arg(long, value_delimiter = ',', default_value = "500,1000,2000")]
        rates: Vec<u32>,
        /// Seconds at each rate.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Requests left waiting for their slots, for the memory figure.
        #[arg(long, default_value_t = 10_000)]
        waiting: usize,
        /// FLUX_TOKEN_COUNT for the gateway: upstream or local.
        #[arg(long, default_value = "upstream")]
        token_count: String,
        /// Instead: gemini-flux's native, `/generate` and OpenAI routes and
        /// LiteLLM's proxy (installed into target/ on the first run) side
        /// by side, one table.
        #[arg(long)]
        peers: bool,
    },
    /// One long-lived gateway on one state file under a steady load: tail
    /// latency, stalls, state file, WAL, bytes written and RSS over time.
    Soak {
        /// Open-loop request rate, per second.
        #[arg(long, default_value_t = 1_000)]
        rate: u32,
        /// Minutes to run.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Seconds in each row of the table.
        #[arg(long, default_value_t = 60)]
        every: u64,
    },
    /// Replicas sharing keys through one Redis: 429s, makespan ÷ bound, and
    /// what a Redis round trip adds per request. Real time (a few minutes).
    Replicas {
        /// Replica counts to run.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        replicas: Vec<usize>,
        /// Requests in the burst.
        #[arg(long, default_value_t = 24)]
        requests: usize,
        /// Requests in the long-queue run.
        #[arg(long, default_value_t = 2_000)]
        queue: usize,
        /// The Redis the replicas share.
        #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
        redis_url: String,
    },
}

fn main() {
    match Cli::parse().command {
        Command::Efficiency {
            quick,
            keys,
            traces,
        } => {
            let keys = match (keys.is_empty(), quick) {
                (false, _) => keys,
                (true, true) => vec![1, 8],
                (true, false) => vec![1, 4, 8, 32],
            };
            let traces: Vec<Trace> = if traces.is_empty() {
                Trace::ALL.to_vec()
            } else {
                traces
                    .iter()
                    .map(|t| {
                        Trace::parse(t).unwrap_or_else(|| {
                            panic!("unknown trace {t:?}: dubbing, chat, mixed, burst, providers")
                        })
                    })
                    .collect()
            };
            efficiency::main(efficiency::Options {
                traces,
                keys,
                strategies: Strategy::ALL.to_vec(),
            });
        }
        Command::Overhead {
            rates,
            seconds,
            waiting,
            token_count,
            peers,
        } => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            let options = overhead::Options {
                rates,
                seconds,
                waiting,
                token_count,
            };
            match peers {
                true => runtime.block_on(peers::main(options)),
                false => runtime.block_on(overhead::main(options)),
            }
        }
        Command::Soak {
            rate,
            minutes,
            every,
        } => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            runtime.block_on(soak::main(soak::Options {
                rate,
                minutes,
                every,
            }));
        }
        Command::Replicas {
            replicas,
            requests,
            queue,
            redis_url,
        } => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            runtime.block_on(replicas::main(replicas::Options {
                replicas,
                requests,
                queue,
                redis_url,
            }));
        }
    }
}
