//! `flux-bench soak`: one long-lived gateway on one state file under a
//! steady open-loop load, minute by minute. It shows whether the gateway
//! stays fast, small and bounded over time: the tail latency and the worst
//! stall, the state file, its WAL and journal, the bytes written to disk
//! per request, and the RSS.

use crate::overhead::{
    Gateway, KEYS, Latencies, UNLIMITED, limits_json, open_loop, paired_targets, sim_with,
};
use std::path::{Path, PathBuf};

pub struct Options {
    pub rate: u32,
    pub minutes: u64,
    /// Seconds in each row of the table.
    pub every: u64,
}

/// Bytes of the files whose names start with `prefix` in `dir`.
fn bytes_of(dir: &Path, prefix: &str) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

pub async fn main(options: Options) {
    let dir: PathBuf = std::env::temp_dir().join(format!("flux-bench-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory for the state file");
    let state = dir.join("state.db");

    let sim = sim_with(UNLIMITED, &KEYS).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(20_000)
        .build()
        .unwrap();
    let env = [
        ("FLUX_LIMITS", limits_json(UNLIMITED)),
        ("FLUX_TOKEN_COUNT", "upstream".to_string()),
        ("FLUX_STATE_PATH", state.display().to_string()),
    ];
    let gateway = Gateway::spawn(&sim.base_url(), &KEYS, &env);
    gateway.ready(&http).await;

    let (direct, via) = paired_targets(&sim.base_url(), &gateway.url);

    println!(
        "## Soak: {} minutes at {} req/s on one state file\n",
        options.minutes, options.rate
    );
    println!(
        "The service as a child process (`FLUX_TOKEN_COUNT=upstream`, every call's \"sent\" record written before it leaves) \
         in front of the simulator (no added latency, quota that never binds, {} keys), on a new state file that lives \
         through the whole run; the paired open-loop load of `flux-bench overhead` (one request `direct` to the simulator, \
         one `via` gemini-flux `POST /generate`, at each planned instant). Each row covers {} s. `disk / request` is \
         what the gateway wrote to storage per request (`write_bytes` in `/proc/PID/io`: the pages it dirtied, \
         whether in the journal, the WAL or the database).\n",
        KEYS.len(),
        options.every
    );
    println!(
        "| at | via p50 | via p99 | via p99.9 | via max | direct p99.9 | direct max | failed | WAL | database | journal | disk / request | RSS |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let rows = (options.minutes * 60).div_ceil(options.every);
    let (mut all_via, mut all_direct) = (Latencies::default(), Latencies::default());
    let (mut failed, mut requests) = (0, 0u64);
    let (mut peak_wal, mut first_rss, mut last_rss) = (0, 0.0, 0.0);
    let io = |field| gateway.process.proc_field("io", field);
    let disk_start = io("write_bytes:");
    for row in 1..=rows {
        let disk = io("write_bytes:");
        let [d, v] = open_loop(&http, [&direct, &via], options.rate, options.every).await;
        let served = v.answered().max(1) as f64;
        let wal = bytes_of(&dir, "state.db-wal");
        let db = bytes_of(&dir, "state.db")
            - wal
            - bytes_of(&dir, "state.db-shm")
            - bytes_of(&dir, "state.db.ledger-");
        let journal = bytes_of(&dir, "state.db.ledger-");
        let (rss, _) = gateway.process.rss_mib();
        peak_wal = peak_wal.max(wal);
        if row == 1 {
            first_rss = rss;
        }
        last_rss = rss;
        println!(
            "| {} s | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} ms | {:.2} ms | {:.1} ms | {} | {:.1} MiB | {:.1} MiB | {:.2} MiB | {:.0} B | {:.1} MiB |",
            row * options.every,
            v.pct(50.0),
            v.pct(99.0),
            v.pct(99.9),
            v.pct(100.0),
            d.pct(99.9),
            d.pct(100.0),
            d.failed + v.failed + d.not_sent + v.not_sent,
            mib(wal),
            mib(db),
            mib(journal),
            (io("write_bytes:") - disk) as f64 / served,
            rss
        );
        failed += d.failed + v.failed + d.not_sent + v.not_sent;
        requests += v.answered() as u64;
        all_via.merge(v);
        all_direct.merge(d);
    }
    let (v, d) = (all_via, all_direct);
    println!("\n| over the whole run | value |\n|---|---:|");
    println!("| requests through gemini-flux | {requests} ({failed} failed) |");
    println!(
        "| via p99 / p99.9 | {:.2} ms / {:.2} ms |",
        v.pct(99.0),
        v.pct(99.9)
    );
    println!(
        "| direct p99 / p99.9 | {:.2} ms / {:.2} ms |",
        d.pct(99.0),
        d.pct(99.9)
    );
    println!(
        "| worst request via / direct | {:.1} ms / {:.1} ms |",
        v.pct(100.0),
        d.pct(100.0)
    );
    println!("| largest WAL | {:.1} MiB |", mib(peak_wal));
    println!(
        "| written to disk per request | {:.0} B |",
        (io("write_bytes:") - disk_start) as f64 / requests.max(1) as f64
    );
    println!("| RSS first row → last row | {first_rss:.1} → {last_rss:.1} MiB |");
    drop(gateway);
    let _ = std::fs::remove_dir_all(&dir);
}
