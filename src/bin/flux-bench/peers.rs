//! `flux-bench overhead --peers`: gemini-flux's three routes and LiteLLM's
//! proxy side by side, each in front of the same in-process simulator and
//! measured the same way: added latency under a paired open-loop load, CPU
//! per request, resident memory, and saturation throughput.

use crate::overhead::{
    Gateway, KEYS, Latencies, MODEL, Options, Process, Target, TempDir, UNLIMITED, free_port,
    limits_json, open_loop, saturation, sim_with, wait_ready,
};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The LiteLLM measured: the newest release whose `[proxy]` extra pip could
/// install from PyPI when this was written (1.108.8 to 1.110.2 pin
/// `litellm-enterprise`, `litellm-proxy-extras` or `litellm-proxy` versions
/// that are not published).
const LITELLM: &str = "1.108.7";

/// Longest a request may take; a peer that cannot keep up fails its
/// requests rather than holding the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a server may keep working on a load's leftovers before the next
/// measure starts.
const SETTLE: Duration = Duration::from_secs(90);
const SATURATION_CLIENTS: usize = 64;
/// Requests sent one after another through a target before it is measured.
const WARM_UP: usize = 20;
const PROMPT: &str = "Translate into French: the quick brown fox jumps over the lazy dog.";

/// Which of the simulator's routes a call lands on: the `direct` call a
/// `via` target is paired with, and compared with.
#[derive(Clone, Copy)]
enum Upstream {
    /// `POST /v1beta/models/{model}:generateContent`.
    Native,
    /// Gemini's OpenAI-compatible layer, `POST /v1beta/openai/chat/completions`.
    OpenAi,
}

impl Upstream {
    const ALL: [Upstream; 2] = [Upstream::Native, Upstream::OpenAi];

    fn name(self) -> &'static str {
        match self {
            Upstream::Native => "direct to the simulator, `generateContent`",
            Upstream::OpenAi => "direct to the simulator, `/v1beta/openai/chat/completions`",
        }
    }

    fn direct(self, sim: &str) -> Target {
        match self {
            Upstream::Native => Route::Native.target(sim, vec![("x-goog-api-key", KEYS[0].into())]),
            Upstream::OpenAi => Target {
                url: format!("{sim}/v1beta/openai/chat/completions"),
                headers: vec![("authorization", format!("Bearer {}", KEYS[0]))],
                body: chat_body(),
            },
        }
    }
}

/// A route a client calls, with the body it sends.
#[derive(Clone, Copy)]
enum Route {
    /// `POST /v1beta/models/{model}:generateContent`.
    Native,
    /// gemini-flux's own `POST /generate`.
    Generate,
    /// `POST /v1/chat/completions`.
    Chat,
}

impl Route {
    fn target(self, base: &str, headers: Vec<(&'static str, String)>) -> Target {
        let (url, body) = match self {
            Route::Native => (
                format!("{base}/v1beta/models/{MODEL}:generateContent"),
                json!({"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}),
            ),
            Route::Generate => (format!("{base}/generate"), json!({"prompt": PROMPT})),
            Route::Chat => (format!("{base}/v1/chat/completions"), chat_body()),
        };
        Target { url, headers, body }
    }
}

fn chat_body() -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]})
}

/// What answers a `via` target.
#[derive(Clone, Copy)]
enum Server {
    GeminiFlux,
    LiteLlm,
}

/// One `via` row: a route on a server, and where the server's call lands.
struct Peer {
    name: &'static str,
    server: Server,
    route: Route,
    upstream: Upstream,
}

const PEERS: [Peer; 4] = [
    Peer {
        name: "gemini-flux, `generateContent`",
        server: Server::GeminiFlux,
        route: Route::Native,
        upstream: Upstream::Native,
    },
    Peer {
        name: "gemini-flux, `/generate`",
        server: Server::GeminiFlux,
        route: Route::Generate,
        upstream: Upstream::Native,
    },
    Peer {
        name: "gemini-flux, `/v1/chat/completions`",
        server: Server::GeminiFlux,
        route: Route::Chat,
        upstream: Upstream::OpenAi,
    },
    // LiteLLM's `gemini/` provider turns the chat into `generateContent`.
    Peer {
        name: "LiteLLM proxy, `/v1/chat/completions`",
        server: Server::LiteLlm,
        route: Route::Chat,
        upstream: Upstream::Native,
    },
];

/// A server under test, running; stopped (and its files removed) when
/// dropped.
struct Running {
    process: Process,
    url: String,
    /// What a client presents.
    auth: Vec<(&'static str, String)>,
    /// Its state or config files, removed with it.
    _files: TempDir,
}

impl Running {
    async fn start(server: Server, sim: &str, venv: &Path, options: &Options) -> Running {
        let probe = reqwest::Client::builder().no_proxy().build().unwrap();
        match server {
            Server::GeminiFlux => {
                let env = [
                    ("FLUX_LIMITS", limits_json(UNLIMITED)),
                    ("FLUX_TOKEN_COUNT", options.token_count.clone()),
                ];
                let gateway = Gateway::spawn(sim, &KEYS, &env);
                gateway.ready(&probe).await;
                let Gateway {
                    process,
                    url,
                    state,
                } = gateway;
                Running {
                    process,
                    url,
                    auth: vec![],
                    _files: state,
                }
            }
            Server::LiteLlm => {
                let files = TempDir::new("flux-bench-litellm");
                let master_key = format!("sk-{:032x}", rand::random::<u128>());
                let config = files.0.join("config.yaml");
                std::fs::write(&config, litellm_config(sim, &master_key)).unwrap();
                let port = free_port();
                let log_path = PathBuf::from(format!("{}.log", venv.display()));
                let log = std::fs::File::create(&log_path).unwrap();
                let mut cmd = Command::new(venv.join("bin/litellm"));
                cmd.arg("--config")
                    .arg(&config)
                    .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--num_workers", "1"])
                    // The price list it would fetch from GitHub ships with it.
                    .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                    .env("LITELLM_LOG", "ERROR")
                    .env("NO_PROXY", "127.0.0.1,localhost")
                    .stdout(Stdio::null())
                    .stderr(log);
                let process = Process::spawn(&mut cmd).unwrap();
                let url = format!("http://127.0.0.1:{port}");
                let what = format!("LiteLLM (its log: {})", log_path.display());
                let liveness = format!("{url}/health/liveliness");
                wait_ready(&probe, &liveness, Duration::from_secs(120), &what).await;
                Running {
                    process,
                    url,
                    auth: vec![("authorization", format!("Bearer {master_key}"))],
                    _files: files,
                }
            }
        }
    }
}

/// LiteLLM's proxy configuration: one deployment per key, all of the same
/// model under one name (the router shuffles between them), each through
/// the `gemini/` provider with `api_base` at the simulator, which makes it
/// call `{api_base}/models/{model}:generateContent` with `x-goog-api-key`.
fn litellm_config(sim: &str, master_key: &str) -> String {
    let mut yaml = String::from("model_list:\n");
    for key in KEYS {
        let _ = write!(
            yaml,
            "  - model_name: {MODEL}\n    litellm_params:\n      model: gemini/{MODEL}\n      \
             api_base: {sim}/v1beta\n      api_key: {key}\n"
        );
    }
    let _ = write!(
        yaml,
        "router_settings:\n  routing_strategy: simple-shuffle\n\
         general_settings:\n  master_key: {master_key}\n"
    );
    yaml
}

/// A directory of its own under the system's temporary one, removed when
/// dropped.
/// LiteLLM's virtual environment under the target directory, installed from
/// PyPI on the first run; a marker written last tells a finished install
/// from an interrupted one, which is redone.
async fn litellm_venv() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .parent()
        .and_then(Path::parent)
        .expect("flux-bench runs from target/<profile>/");
    let venv = target.join(format!("litellm-{LITELLM}"));
    let marker = venv.join("flux-bench-installed");
    if marker.exists() {
        return venv;
    }
    let _ = std::fs::remove_dir_all(&venv);
    eprintln!(
        "installing litellm[proxy]=={LITELLM} into {} (once)",
        venv.display()
    );
    let mut create = Command::new("python3");
    create.args(["-m", "venv"]).arg(&venv);
    let mut install = Command::new(venv.join("bin/pip"));
    install
        .args(["install", "--quiet"])
        .arg(format!("litellm[proxy]=={LITELLM}"));
    for (cmd, limit_s) in [(create, 120), (install, 1_200)] {
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot install LiteLLM: {e}"));
        let status = tokio::time::timeout(Duration::from_secs(limit_s), child.wait()).await;
        assert!(
            matches!(status, Ok(Ok(s)) if s.success()),
            "installing LiteLLM failed or took over {limit_s} s: {status:?}"
        );
    }
    std::fs::write(&marker, LITELLM).unwrap();
    venv
}

/// One target's figures at one rate.
struct AtRate {
    /// p50, p99, p99.9 in ms: added over the direct call for a `via` target,
    /// as measured for a `direct` one.
    latency: [f64; 3],
    failed: usize,
    not_sent: usize,
    /// CPU per answered request, µs (`via` targets only).
    cpu_us: Option<f64>,
}

impl AtRate {
    fn of(l: &Latencies, minus: Option<&Latencies>, cpu_us: Option<f64>) -> AtRate {
        let pct = |p| l.pct(p) - minus.map_or(0.0, |d| d.pct(p));
        AtRate {
            latency: [pct(50.0), pct(99.0), pct(99.9)],
            failed: l.failed,
            not_sent: l.not_sent,
            cpu_us,
        }
    }
}

struct Row {
    name: String,
    rates: Vec<AtRate>,
    /// Idle and peak resident memory, MiB (`via` targets only).
    rss: Option<(f64, f64)>,
    saturation: f64,
}

pub async fn main(options: Options) {
    let venv = litellm_venv().await;
    let sim = sim_with(UNLIMITED, &KEYS).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(20_000)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let direct = Upstream::ALL.map(|u| u.direct(&sim.base_url()));
    // Each direct route's latencies at each rate, over every pass it was in.
    let mut seen_direct: [Vec<Latencies>; 2] =
        std::array::from_fn(|_| options.rates.iter().map(|_| Latencies::default()).collect());

    let mut rows = Vec::new();
    for peer in PEERS {
        let running = Running::start(peer.server, &sim.base_url(), &venv, &options).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle = running.process.rss_mib().0;
        let via = peer.route.target(&running.url, running.auth.clone());
        let paired = &direct[peer.upstream as usize];
        // Python imports lazily: a first request may pay for modules.
        for _ in 0..WARM_UP {
            via.send(&http).await;
        }
        running.process.settle(SETTLE).await;
        let mut rates = Vec::new();
        for (i, &rate) in options.rates.iter().enumerate() {
            let cpu_before = running.process.cpu();
            let [d, v] = open_loop(&http, [paired, &via], rate, options.seconds).await;
            running.process.settle(SETTLE).await;
            let cpu = running.process.cpu().saturating_sub(cpu_before);
            let cpu_us = cpu.as_micros() as f64 / v.answered().max(1) as f64;
            rates.push(AtRate::of(&v, Some(&d), Some(cpu_us)));
            seen_direct[peer.upstream as usize][i].merge(d);
        }
        let saturation = saturation(&http, &via, SATURATION_CLIENTS, options.seconds).await;
        running.process.settle(SETTLE).await;
        let peak = running.process.rss_mib().1;
        rows.push(Row {
            name: peer.name.to_string(),
            rates,
            rss: Some((idle, peak)),
            saturation,
        });
    }
    for (upstream, seen) in Upstream::ALL.into_iter().zip(&seen_direct) {
        let target = &direct[upstream as usize];
        rows.push(Row {
            name: format!("{} (absolute)", upstream.name()),
            rates: seen.iter().map(|l| AtRate::of(l, None, None)).collect(),
            rss: None,
            saturation: saturation(&http, target, SATURATION_CLIENTS, options.seconds).await,
        });
    }
    print_table(&options, &rows);
}

fn print_table(options: &Options, rows: &[Row]) {
    println!("## gemini-flux and LiteLLM's proxy\n");
    println!(
        "Each `via` target in turn, with a server of its own as a child process, in front of the same \
         simulator (no added latency, quota that never binds, {} keys, `{MODEL}`); an open-loop load \
         generator in the same process as the simulator; all on this machine's {} cores. At each planned \
         instant one request goes through the target and one straight to the simulator route the target's \
         server calls, so both meet the same load; latency counts from the planned instant, and \"added\" is \
         the target's percentile minus the direct one's. gemini-flux: `FLUX_TOKEN_COUNT={}`. LiteLLM \
         {LITELLM} (`litellm[proxy]` from PyPI), 1 worker, one deployment per key of `gemini/{MODEL}` with \
         `api_base` at the simulator. Requests time out after {} s; a target that has failed most of its \
         first {} or more requests at a rate, or has a second's worth of them unanswered at once, is sent no \
         more at that rate (\"not sent\"). Each server is sent {WARM_UP} requests one by one before \
         the loads. After each load a server is left to finish its leftovers (up to \
         {} s), and its CPU time until then counts. Saturation: {} \
         clients back to back for {} s.\n",
        KEYS.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        options.token_count,
        REQUEST_TIMEOUT.as_secs(),
        crate::overhead::GIVE_UP_AFTER,
        SETTLE.as_secs(),
        SATURATION_CLIENTS,
        options.seconds,
    );
    let mut header = String::from("| target |");
    let mut rule = String::from("|---|");
    for rate in &options.rates {
        let _ = write!(
            header,
            " added p50 / p99 / p99.9 at {rate}/s | failed at {rate}/s | CPU per request at {rate}/s |"
        );
        rule.push_str("---:|---:|---:|");
    }
    header.push_str(" RSS idle | RSS peak | saturation |");
    rule.push_str("---:|---:|---:|");
    println!("{header}\n{rule}");
    for row in rows {
        let mut line = format!("| {} |", row.name);
        for at in &row.rates {
            let [p50, p99, p999] = at.latency;
            let failed = match at.not_sent {
                0 => at.failed.to_string(),
                n => format!("{} (then {n} not sent)", at.failed),
            };
            let cpu = at.cpu_us.map_or("—".into(), |us| format!("{us:.0} µs"));
            let _ = write!(
                line,
                " {p50:.2} / {p99:.2} / {p999:.2} ms | {failed} | {cpu} |"
            );
        }
        let (idle, peak) = row.rss.map_or(("—".into(), "—".into()), |(i, p)| {
            (format!("{i:.1} MiB"), format!("{p:.1} MiB"))
        });
        let _ = write!(line, " {idle} | {peak} | {:.0} req/s |", row.saturation);
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn litellm_gets_one_gemini_deployment_per_key_at_the_simulators_v1beta() {
        let yaml = litellm_config("http://127.0.0.1:9", "sk-test");
        let deployments: Vec<&str> = yaml.split("  - model_name: ").skip(1).collect();
        assert_eq!(deployments.len(), KEYS.len());
        for (deployment, key) in deployments.iter().zip(KEYS) {
            assert!(
                deployment.starts_with(&format!("{MODEL}\n")),
                "{deployment}"
            );
            assert!(deployment.contains(&format!("model: gemini/{MODEL}\n")));
            // `gemini/` appends `/models/{model}:generateContent` to it.
            assert!(deployment.contains("api_base: http://127.0.0.1:9/v1beta\n"));
            assert!(deployment.contains(&format!("api_key: {key}\n")));
        }
        assert!(yaml.ends_with("general_settings:\n  master_key: sk-test\n"));
    }
}
