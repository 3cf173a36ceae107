//! `flux-bench replicas`: 1, 2 and 4 gemini-flux processes sharing two keys
//! through one Redis, in front of one simulator, on the same trace, in real
//! time. Reports the upstream's 429s and the makespan against its lower
//! bound; then what a Redis round trip adds to each request, measured as
//! paired open-loop load on one replica and on one instance alone.

use crate::bound::intervals;
use crate::overhead::{
    Gateway, KEYS, MODEL, ONE_A_MINUTE, Queue, Target, UNLIMITED, limits_json, open_loop,
    saturation, sim_with,
};
use gemini_flux::policy::Limits;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::time::{Duration, Instant};

pub struct Options {
    pub replicas: Vec<usize>,
    pub requests: usize,
    /// Requests in the long-queue run.
    pub queue: usize,
    pub redis_url: String,
}

/// Two keys whose request quota binds within a minute or two.
const TIGHT: Limits = Limits {
    rpm: 10,
    tpm: 100_000,
    rpd: 10_000,
    tpd: gemini_flux::policy::UNLIMITED,
    otpm: gemini_flux::policy::UNLIMITED,
};

const SHARED_KEYS: usize = 2;

/// Every run's Redis keys start with this; they are deleted at the end.
const PREFIX: &str = "flux-bench:";

/// What every gateway here runs with: `limits`, the local token count (no
/// `countTokens` round trip), no policy fetch.
fn gateway_env(limits: Limits) -> Vec<(&'static str, String)> {
    vec![
        ("FLUX_LIMITS", limits_json(limits)),
        ("FLUX_TOKEN_COUNT", "local".to_string()),
        ("FLUX_POLICY_FETCH", "false".to_string()),
    ]
}

/// `n` replicas on one Redis under a prefix of their own, all ready.
async fn replicas(
    n: usize,
    upstream: &str,
    limits: Limits,
    options: &Options,
    http: &reqwest::Client,
) -> Vec<Gateway> {
    let prefix = format!("{}{:08x}:", PREFIX, rand::random::<u32>());
    let mut started = Vec::new();
    for _ in 0..n {
        let mut env = gateway_env(limits);
        env.extend([
            ("FLUX_REDIS_URL", options.redis_url.clone()),
            ("FLUX_REDIS_PREFIX", prefix.clone()),
        ]);
        let gateway = Gateway::spawn(upstream, &KEYS[..SHARED_KEYS], &env);
        gateway.ready(http).await;
        started.push(gateway);
    }
    started
}

pub async fn main(options: Options) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let sizes: Vec<u64> = (0..options.requests)
        .map(|_| rng.random_range(1_000..10_000))
        .collect();
    // All arrive at once and the simulator answers at once, so the bound is
    // the intervals the burst needs, less the first.
    let windows = intervals(&sizes, &[], SHARED_KEYS as u64, TIGHT);
    let bound = Duration::from_secs(60 * (windows as u64 - 1));

    println!("## Replicas sharing keys through Redis\n");
    println!(
        "Each run: N `gemini-flux serve` processes with the same {SHARED_KEYS} keys, one Redis, one simulator \
         ({} RPM, {} TPM per key on {MODEL}, no added latency). {} requests of 1k–10k tokens (seed 5) arrive at \
         once, spread round-robin over the replicas. Makespan counts from the burst to the last answer; the \
         lower bound is {} one-minute windows' worth, i.e. {} s. Real time.\n",
        TIGHT.rpm,
        TIGHT.tpm,
        options.requests,
        windows,
        bound.as_secs()
    );
    println!("| replicas | served | upstream 429s | makespan | lower bound | ÷ bound |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &n in &options.replicas {
        let sim = sim_with(TIGHT, &KEYS[..SHARED_KEYS]).await;
        let gateways = replicas(n, &sim.base_url(), TIGHT, &options, &http).await;
        let started = Instant::now();
        let calls: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &tokens)| {
                let url = format!("{}/generate", gateways[i % n].url);
                let http = http.clone();
                let prompt = "x".repeat(tokens as usize * 4);
                tokio::spawn(async move {
                    let ok = http
                        .post(url)
                        .json(&json!({"prompt": prompt}))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    (ok, started.elapsed())
                })
            })
            .collect();
        let (mut served, mut makespan) = (0, Duration::ZERO);
        for call in calls {
            let (ok, done) = call.await.unwrap();
            served += usize::from(ok);
            makespan = makespan.max(done);
        }
        let stats = sim.stats();
        // A burst that fits one window has no bound to divide by.
        let ratio = match bound.is_zero() {
            true => "–".to_string(),
            false => format!("{:.3}", makespan.as_secs_f64() / bound.as_secs_f64()),
        };
        println!(
            "| {n} | {served}/{} | {} | {:.2} s | {} s | {ratio} |",
            options.requests,
            stats.rejected_429,
            makespan.as_secs_f64(),
            bound.as_secs()
        );
    }

    // What sharing costs per request: the same requests, at the same
    // instants, to one instance alone (SQLite) and to one replica (Redis).
    let sim = sim_with(UNLIMITED, &KEYS[..SHARED_KEYS]).await;
    let state = std::env::temp_dir().join(format!("flux-bench-{}.db", std::process::id()));
    let mut env = gateway_env(UNLIMITED);
    env.push(("FLUX_STATE_PATH", state.display().to_string()));
    let alone = Gateway::spawn(&sim.base_url(), &KEYS[..SHARED_KEYS], &env);
    alone.ready(&http).await;
    let replica = replicas(1, &sim.base_url(), UNLIMITED, &options, &http)
        .await
        .remove(0);
    let target = |gateway: &Gateway| Target {
        url: format!("{}/generate", gateway.url),
        headers: vec![],
        body: json!({"prompt": "Translate into French: the quick brown fox."}),
    };
    let (alone_target, replica_target) = (target(&alone), target(&replica));
    println!(
        "\nThe cost of sharing: paired open-loop load (5 s per rate), the same request at the same instant \
         to one instance alone (SQLite) and to one replica (Redis at {}); quota never binds.\n",
        gemini_flux::store::redis::masked(&options.redis_url)
    );
    println!(
        "| rate (req/s) | alone p50 | alone p99 | replica p50 | replica p99 | added p50 | added p99 | failed |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for rate in [100, 300] {
        let [a, r] = open_loop(&http, [&alone_target, &replica_target], rate, 5).await;
        println!(
            "| {rate} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            a.pct(50.0),
            a.pct(99.0),
            r.pct(50.0),
            r.pct(99.0),
            r.pct(50.0) - a.pct(50.0),
            r.pct(99.0) - a.pct(99.0),
            a.failed + r.failed
        );
    }
    drop(alone);
    drop(replica);
    let _ = std::fs::remove_file(state);

    // Contention: every replica books on the same lanes, so a decision may
    // find them moved and decide again. Sustained throughput, 64 clients in
    // all, spread over the replicas.
    println!(
        "\nThroughput on one Redis: 64 back-to-back clients spread over N replicas (5 s), quota never binds, \
         every decision on the same {SHARED_KEYS} keys' lanes.\n"
    );
    println!(
        "| replicas | requests/s through all replicas | decisions made again (conflicts) per request |"
    );
    println!("|---:|---:|---:|");
    for &n in &options.replicas {
        let gateways = replicas(n, &sim.base_url(), UNLIMITED, &options, &http).await;
        let runs = gateways.iter().map(|g| {
            let (http, target) = (http.clone(), target(g));
            async move { saturation(&http, &target, 64 / n, 5).await }
        });
        let total: f64 = futures::future::join_all(runs).await.iter().sum();
        let mut conflicts = 0;
        for gateway in &gateways {
            let status: serde_json::Value = http
                .get(format!("{}/status", gateway.url))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            conflicts += status["shared_state"]["conflicts"].as_u64().unwrap_or(0);
        }
        let per_request = conflicts as f64 / (total * 5.0).max(1.0);
        println!("| {n} | {total:.0} | {per_request:.3} |");
    }

    // A long queue: every booking lands in one lane, which every decision
    // on a replica reads and writes whole.
    let sim = sim_with(ONE_A_MINUTE, &KEYS[..1]).await;
    println!(
        "\nA long queue: {} requests at once on one key allowing one a minute, so all but one wait in one lane; \
         the time from the first request sent until `/status` shows them all booked (connections included), \
         alone and as one replica.\n",
        options.queue
    );
    println!("| gemini-flux | booked | time to book them | per request |");
    println!("|---|---:|---:|---:|");
    let state = std::env::temp_dir().join(format!("flux-bench-queue-{}.db", std::process::id()));
    let mut base_env = gateway_env(ONE_A_MINUTE);
    base_env.push(("FLUX_MAX_WAIT_S", (30 * 86_400).to_string()));
    let prefix = format!("{}{:08x}:", PREFIX, rand::random::<u32>());
    for (label, extra) in [
        (
            "alone (SQLite)",
            ("FLUX_STATE_PATH", state.display().to_string()),
        ),
        (
            "one replica (Redis)",
            ("FLUX_REDIS_URL", options.redis_url.clone()),
        ),
    ] {
        let mut env = base_env.clone();
        env.extend([extra, ("FLUX_REDIS_PREFIX", prefix.clone())]);
        let gateway = Gateway::spawn(&sim.base_url(), &KEYS[..1], &env);
        gateway.ready(&http).await;
        let queue = Queue::fill(&http, &gateway, options.queue).await;
        println!(
            "| {label} | {} | {:.2} s | {:.0} µs |",
            queue.waiting,
            queue.booked_in.as_secs_f64(),
            queue.booked_in.as_micros() as f64 / queue.waiting.max(1) as f64
        );
    }
    let _ = std::fs::remove_file(state);
    let _ = gemini_flux::store::redis::forget_prefix(&options.redis_url, PREFIX);
}
