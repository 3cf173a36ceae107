//! `flux-bench overhead`: what the gateway itself costs. The real service runs
//! as a child process in front of the simulator (zero added latency, quota so
//! large that nothing waits); an open-loop load generator sends at fixed
//! rates, straight to the simulator and through gemini-flux, and compares.
//! Then saturation throughput, CPU per request, RSS, and RSS with 10,000
//! requests waiting for their slots. The plumbing here (child processes,
//! open loop, saturation) also serves `--peers` (`peers`).

use gemini_flux::clock::Clock;
use gemini_flux::policy::Limits;
use gemini_flux::sim::{SimConfig, SimServer};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::{Duration, Instant};

pub const MODEL: &str = "gemini-2.5-flash";
pub const KEYS: [&str; 8] = [
    "bench-key-01",
    "bench-key-02",
    "bench-key-03",
    "bench-key-04",
    "bench-key-05",
    "bench-key-06",
    "bench-key-07",
    "bench-key-08",
];

/// Quota so large that nothing ever waits.
pub const UNLIMITED: Limits = Limits {
    rpm: 1_000_000,
    tpm: 100_000_000_000,
    rpd: 1_000_000_000,
    tpd: gemini_flux::policy::UNLIMITED,
    otpm: gemini_flux::policy::UNLIMITED,
};

/// One request a minute: everything after the first waits.
pub const ONE_A_MINUTE: Limits = Limits {
    rpm: 1,
    tpm: 1_000_000,
    rpd: 1_000_000,
    tpd: gemini_flux::policy::UNLIMITED,
    otpm: gemini_flux::policy::UNLIMITED,
};

pub struct Options {
    pub rates: Vec<u32>,
    pub seconds: u64,
    pub waiting: usize,
    /// `FLUX_TOKEN_COUNT` for the gateway under test.
    pub token_count: String,
}

/// A port on loopback that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process, killed when dropped (a panic included), whose CPU time
/// and memory are read from `/proc`.
pub struct Process {
    child: Child,
}

impl Process {
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Process> {
        cmd.spawn().map(|child| Process { child })
    }

    pub fn proc_field(&self, file: &str, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id()))
            .unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    /// Resident memory now and at its peak, in MiB.
    pub fn rss_mib(&self) -> (f64, f64) {
        (
            self.proc_field("status", "VmRSS:") as f64 / 1024.0,
            self.proc_field("status", "VmHWM:") as f64 / 1024.0,
        )
    }

    /// User + system CPU time used so far.
    pub fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // After the command name (which may hold spaces) come the state (3rd
        // field overall), …, utime (14th) and stime (15th).
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let field = |n: usize| {
            after
                .split_whitespace()
                .nth(n - 3)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let ticks = field(14) + field(15);
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
    }

    /// Returns once the process has used no more than one clock tick of CPU
    /// in a quarter second (at most `limit` later), so that the work a load
    /// left queued is counted with that load and does not spill into the
    /// next measure.
    pub async fn settle(&self, limit: Duration) {
        let until = Instant::now() + limit;
        let mut before = self.cpu();
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.cpu();
            if now.saturating_sub(before) <= Duration::from_millis(10) {
                return;
            }
            before = now;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `url` until it answers a success (at most `limit`).
pub async fn wait_ready(http: &reqwest::Client, url: &str, limit: Duration, what: &str) {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not become ready within {limit:?}");
}

/// The service as a child process, stopped when dropped, on a new state
/// file of its own (unless `FLUX_STATE_PATH` is given), removed with it.
pub struct Gateway {
    pub process: Process,
    pub url: String,
    pub state: TempDir,
}

/// A directory removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A new, empty directory named after `prefix` and this process.
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Gateway {
    pub fn spawn(upstream: &str, keys: &[&str], env: &[(&str, String)]) -> Gateway {
        let port = free_port();
        let binary = std::env::current_exe()
            .unwrap()
            .with_file_name("gemini-flux");
        let state = TempDir::new(&format!("flux-bench-gateway-{port}"));
        let mut cmd = Command::new(&binary);
        cmd.arg("serve")
            .env("FLUX_STATE_PATH", state.0.join("state.db"))
            .env("GEMINI_KEYS", keys.join(","))
            .env("GEMINI_BASE_URL", upstream)
            .env("FLUX_BIND", format!("127.0.0.1:{port}"))
            .env("FLUX_MODELS", MODEL)
            .env("GEMINI_LOG", "false")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let process = Process::spawn(&mut cmd).unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (build it with --release first)",
                binary.display()
            )
        });
        Gateway {
            process,
            url: format!("http://127.0.0.1:{port}"),
            state,
        }
    }

    pub async fn ready(&self, http: &reqwest::Client) {
        let url = format!("{}/readyz", self.url);
        wait_ready(http, &url, Duration::from_secs(10), "the gateway").await;
    }
}

/// One request to send, again and again.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Value,
}

impl Target {
    pub async fn send(&self, http: &reqwest::Client) -> bool {
        let mut req = http.post(&self.url).json(&self.body);
        for (k, v) in &self.headers {
            req = req.header(*k, v);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
            _ => false,
        }
    }
}

#[derive(Default)]
pub struct Latencies {
    pub sorted_us: Vec<u64>,
    pub failed: usize,
    /// Planned requests not sent: the target had failed most of its
    /// requests, or fallen a second behind (see [`Tally`]).
    pub not_sent: usize,
}

impl Latencies {
    pub fn pct(&self, p: f64) -> f64 {
        let i = ((self.sorted_us.len() as f64 * p / 100.0) as usize)
            .min(self.sorted_us.len().saturating_sub(1));
        self.sorted_us.get(i).copied().unwrap_or(0) as f64 / 1000.0
    }

    /// Requests answered.
    pub fn answered(&self) -> usize {
        self.sorted_us.len()
    }

    /// These and `other`'s, as one sample.
    pub fn merge(&mut self, other: Latencies) {
        self.sorted_us.extend(other.sorted_us);
        self.sorted_us.sort_unstable();
        self.failed += other.failed;
        self.not_sent += other.not_sent;
    }
}

/// Outcomes a target has before it may be given up on for failing: once it
/// has at least this many and most of them are failures, the rest of its
/// planned requests are not sent, so a peer that cannot serve a rate does
/// not keep the run (and the machine) busy with doomed requests.
pub const GIVE_UP_AFTER: usize = 50;

/// One target's requests so far, shared by its requests in flight. It is
/// given up on (and stays so) when most of its outcomes are failures, or
/// when a second's worth of its requests is unanswered at once: it has
/// fallen a second behind the rate and its queue only grows (its failures,
/// time-outs, would show only after the run).
struct Tally {
    sent: AtomicUsize,
    answered: AtomicUsize,
    failed: AtomicUsize,
    /// Most requests unanswered at once.
    backlog: usize,
    given_up: AtomicBool,
}

impl Tally {
    fn new(rate: u32) -> Tally {
        Tally {
            sent: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            backlog: (rate as usize).max(GIVE_UP_AFTER),
            given_up: AtomicBool::new(false),
        }
    }

    /// Whether to send the next request (counted as sent if so).
    fn may_send(&self) -> bool {
        if self.given_up.load(Relaxed) {
            return false;
        }
        let sent = self.sent.load(Relaxed);
        let done = self.answered.load(Relaxed) + self.failed.load(Relaxed);
        if sent.saturating_sub(done) >= self.backlog {
            self.given_up.store(true, Relaxed);
            return false;
        }
        self.sent.fetch_add(1, Relaxed);
        true
    }

    fn record(&self, ok: bool) {
        let (answered, failed) = if ok {
            (
                self.answered.fetch_add(1, Relaxed) + 1,
                self.failed.load(Relaxed),
            )
        } else {
            (
                self.answered.load(Relaxed),
                self.failed.fetch_add(1, Relaxed) + 1,
            )
        };
        if answered + failed >= GIVE_UP_AFTER && failed > answered {
            self.given_up.store(true, Relaxed);
        }
    }
}

/// What became of one planned request.
enum Outcome {
    Answered { us: u64 },
    Failed,
    NotSent,
}

/// At `rate` planned instants a second for `seconds`, sends one request to
/// each target at once, whatever the others are doing; latency counts from
/// the planned instant. Pairing the paths means all meet the same load and
/// the same scheduling noise.
pub async fn open_loop<const N: usize>(
    http: &reqwest::Client,
    targets: [&Target; N],
    rate: u32,
    seconds: u64,
) -> [Latencies; N] {
    let total = rate as u64 * seconds;
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let targets: Arc<[(Target, Tally); N]> =
        Arc::new(targets.map(|t| (t.clone(), Tally::new(rate))));
    let tasks: Vec<_> = (0..total)
        .flat_map(|i| (0..N).map(move |which| (i, which)))
        .map(|(i, which)| {
            let (http, targets) = (http.clone(), targets.clone());
            let planned = start + Duration::from_micros(i * 1_000_000 / rate as u64);
            let task = tokio::spawn(async move {
                tokio::time::sleep_until(planned).await;
                let (target, tally) = &targets[which];
                if !tally.may_send() {
                    return Outcome::NotSent;
                }
                let ok = target.send(&http).await;
                tally.record(ok);
                match ok {
                    true => Outcome::Answered {
                        us: planned.elapsed().as_micros() as u64,
                    },
                    false => Outcome::Failed,
                }
            });
            (which, task)
        })
        .collect();
    let mut out: [Latencies; N] = std::array::from_fn(|_| Latencies::default());
    for (which, task) in tasks {
        let l = &mut out[which];
        match task.await {
            Ok(Outcome::Answered { us }) => l.sorted_us.push(us),
            Ok(Outcome::Failed) | Err(_) => l.failed += 1,
            Ok(Outcome::NotSent) => l.not_sent += 1,
        }
    }
    for l in &mut out {
        l.sorted_us.sort_unstable();
    }
    out
}

/// Requests a second that `workers` back-to-back clients sustain.
pub async fn saturation(
    http: &reqwest::Client,
    target: &Target,
    workers: usize,
    seconds: u64,
) -> f64 {
    let until = Instant::now() + Duration::from_secs(seconds);
    let target = Arc::new(target.clone());
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (http, target) = (http.clone(), target.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    n += u64::from(target.send(&http).await);
                }
                n
            })
        })
        .collect();
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap_or(0);
    }
    done as f64 / seconds as f64
}

/// The same prompt `direct` to the simulator (`generateContent`) and `via`
/// the gateway (`POST /generate`), for a paired load.
pub fn paired_targets(sim: &str, gateway: &str) -> (Target, Target) {
    let prompt = "Translate into French: the quick brown fox jumps over the lazy dog.";
    let direct = Target {
        url: format!("{sim}/v1beta/models/{MODEL}:generateContent"),
        headers: vec![("x-goog-api-key", KEYS[0].to_string())],
        body: json!({"contents": [{"role": "user", "parts": [{"text": prompt}]}]}),
    };
    let via = Target {
        url: format!("{gateway}/generate"),
        headers: vec![],
        body: json!({"prompt": prompt}),
    };
    (direct, via)
}

pub fn limits_json(l: Limits) -> String {
    json!({MODEL: {"rpm": l.rpm, "tpm": l.tpm, "rpd": l.rpd}}).to_string()
}

/// The simulator on a free port, accepting `keys`, serving `MODEL` with `limits`.
pub async fn sim_with(limits: Limits, keys: &[&str]) -> SimServer {
    let config = SimConfig::new(keys.iter().copied())
        .with_limits(BTreeMap::from([(MODEL.to_string(), limits)]));
    SimServer::start(config, Clock::system(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

pub async fn main(options: Options) {
    let sim = sim_with(UNLIMITED, &KEYS).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(20_000)
        .build()
        .unwrap();
    let env = [
        ("FLUX_LIMITS", limits_json(UNLIMITED)),
        ("FLUX_TOKEN_COUNT", options.token_count.clone()),
    ];
    let gateway = Gateway::spawn(&sim.base_url(), &KEYS, &env);
    gateway.ready(&http).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = gateway.process.rss_mib().0;

    let (direct, via) = paired_targets(&sim.base_url(), &gateway.url);

    println!("## Gateway overhead\n");
    println!(
        "The service as a child process (`FLUX_TOKEN_COUNT={}`) in front of the simulator with no added latency \
         and quota that never binds ({} keys); an open-loop load generator in the same process as the simulator; \
         all on this machine's {} cores. At each planned instant one request goes `direct` (one `generateContent` \
         to the simulator) and one `via` gemini-flux (`POST /generate`), so both meet the same load; latency \
         counts from the planned instant.\n",
        options.token_count,
        KEYS.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| rate (req/s) | direct p50 | direct p99 | direct p99.9 | via p50 | via p99 | via p99.9 | added p50 | added p99 | failed | gateway CPU per request |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &rate in &options.rates {
        let cpu_before = gateway.process.cpu();
        let [d, v] = open_loop(&http, [&direct, &via], rate, options.seconds).await;
        let cpu = gateway.process.cpu().saturating_sub(cpu_before);
        let per_request_us = cpu.as_micros() as f64 / v.answered().max(1) as f64;
        println!(
            "| {rate} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} | {:.0} µs |",
            d.pct(50.0),
            d.pct(99.0),
            d.pct(99.9),
            v.pct(50.0),
            v.pct(99.0),
            v.pct(99.9),
            v.pct(50.0) - d.pct(50.0),
            v.pct(99.0) - d.pct(99.0),
            d.failed + v.failed,
            per_request_us
        );
    }
    let direct_rps = saturation(&http, &direct, 64, options.seconds).await;
    let via_rps = saturation(&http, &via, 64, options.seconds).await;
    let (_, peak) = gateway.process.rss_mib();
    drop(gateway);
    println!("\n| measure | value |\n|---|---:|");
    println!("| saturation, direct to the simulator (64 clients) | {direct_rps:.0} req/s |");
    println!("| saturation, through gemini-flux (64 clients) | {via_rps:.0} req/s |");
    println!("| gateway RSS idle | {idle_rss:.1} MiB |");
    println!("| gateway peak RSS under the load above | {peak:.1} MiB |");

    // Every request must wait: one key, one request a minute; each on a
    // connection of its own, so the connection cap makes room for them (and
    // for the `/status` polls).
    let sim_tight = sim_with(ONE_A_MINUTE, &KEYS[..1]).await;
    let env = [
        ("FLUX_LIMITS", limits_json(ONE_A_MINUTE)),
        ("FLUX_MAX_WAIT_S", (30 * 86_400).to_string()),
        ("FLUX_TOKEN_COUNT", options.token_count.clone()),
        ("FLUX_MAX_CONNECTIONS", (options.waiting + 64).to_string()),
    ];
    let gateway = Gateway::spawn(&sim_tight.base_url(), &KEYS[..1], &env);
    gateway.ready(&http).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (idle, _) = gateway.process.rss_mib();
    let queue = Queue::fill(&http, &gateway, options.waiting).await;
    let waiting = queue.waiting;
    let (rss, _) = gateway.process.rss_mib();
    println!("| gateway RSS with {waiting} requests waiting for their slots | {rss:.1} MiB |");
    println!(
        "| each waiting request | {:.1} KiB |",
        (rss - idle) * 1024.0 / waiting.max(1) as f64
    );
    drop(gateway);
    drop(queue);
}

/// Requests left waiting for their slots, each on a connection of its own;
/// dropped, they hang up.
pub struct Queue {
    /// How many the gateway shows waiting.
    pub waiting: usize,
    /// From the first request sent until the gateway showed them waiting.
    pub booked_in: Duration,
    pending: Vec<tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>>,
}

impl Queue {
    /// Sends `n` requests that must wait and returns once the gateway shows
    /// them booked (polling `/status`, at most a minute).
    pub async fn fill(http: &reqwest::Client, gateway: &Gateway, n: usize) -> Queue {
        let fresh_connections = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let started = Instant::now();
        let pending = (0..n)
            .map(|_| {
                let http = fresh_connections.clone();
                let url = format!("{}/generate", gateway.url);
                tokio::spawn(async move {
                    http.post(url)
                        .json(&json!({"prompt": "wait for me"}))
                        .send()
                        .await
                })
            })
            .collect();
        let mut waiting = 0;
        for _ in 0..1_200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let status: Value = match http.get(format!("{}/status", gateway.url)).send().await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => continue,
            };
            waiting = status["queue"]["waiting"].as_u64().unwrap_or(0) as usize;
            if waiting + 1 >= n {
                break;
            }
        }
        Queue {
            waiting,
            booked_in: started.elapsed(),
            pending,
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        for p in &self.pending {
            p.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target on a port where nothing listens: every request is refused.
    fn refused() -> Target {
        Target {
            url: format!("http://127.0.0.1:{}/generate", free_port()),
            headers: vec![],
            body: json!({"prompt": "anyone?"}),
        }
    }

    #[tokio::test]
    async fn a_target_failing_most_requests_is_given_up_on_and_its_pair_is_not() {
        let sim = sim_with(UNLIMITED, &KEYS[..1]).await;
        let direct = Target {
            url: format!("{}/v1beta/models/{MODEL}:generateContent", sim.base_url()),
            headers: vec![("x-goog-api-key", KEYS[0].to_string())],
            body: json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
        };
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let [ok, dead] = open_loop(&http, [&direct, &refused()], 400, 1).await;

        assert_eq!((ok.answered(), ok.failed, ok.not_sent), (400, 0, 0));
        assert_eq!(dead.answered(), 0);
        assert_eq!(dead.failed + dead.not_sent, 400);
        // Refusals come back at once: few are in flight when the tally
        // passes GIVE_UP_AFTER, and the rest of the second is not sent.
        assert!(
            (GIVE_UP_AFTER..GIVE_UP_AFTER + 50).contains(&dead.failed),
            "{} failed",
            dead.failed
        );
    }

    #[tokio::test]
    async fn a_target_a_second_behind_is_sent_no_more() {
        // Connections wait in the kernel's queue, never accepted.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut target = refused();
        target.url = format!("http://{}/generate", silent.local_addr().unwrap());
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(2_500))
            .build()
            .unwrap();
        let [silence] = open_loop(&http, [&target], 100, 2).await;
        // A second's worth (100) sent; the other 100 not sent, though no
        // time-out (the failing rule) came before the run's end.
        assert_eq!(
            (silence.answered(), silence.failed, silence.not_sent),
            (0, 100, 100)
        );
    }

    #[test]
    fn a_tally_gives_up_only_once_most_of_enough_outcomes_failed() {
        let failing = Tally::new(1_000);
        for _ in 0..GIVE_UP_AFTER - 1 {
            failing.record(false);
        }
        assert!(failing.may_send(), "49 outcomes: too few yet");
        failing.record(false);
        assert!(!failing.may_send(), "50 of 50 failed");

        let mixed = Tally::new(1_000);
        for _ in 0..GIVE_UP_AFTER {
            mixed.record(true);
        }
        for _ in 0..GIVE_UP_AFTER {
            mixed.record(false);
        }
        assert!(mixed.may_send(), "50 of 100 failed: not most");
        mixed.record(false);
        assert!(!mixed.may_send(), "51 of 101 failed");
        mixed.record(true);
        mixed.record(true);
        assert!(!mixed.may_send(), "once given up, stays so");
    }

    #[test]
    fn a_process_is_killed_when_a_panic_unwinds_past_it() {
        let pid = std::sync::Mutex::new(0);
        let unwound = std::panic::catch_unwind(|| {
            let process = Process::spawn(Command::new("sleep").arg("60")).unwrap();
            *pid.lock().unwrap() = process.child.id();
            panic!("a measure failed");
        });
        assert!(unwound.is_err());
        let pid = *pid.lock().unwrap();
        assert!(pid > 0);
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "sleep {pid} outlived the panic"
        );
    }

    #[test]
    fn merged_latencies_are_one_sample() {
        let mut a = Latencies {
            sorted_us: vec![1_000, 3_000],
            failed: 1,
            not_sent: 0,
        };
        a.merge(Latencies {
            sorted_us: vec![2_000, 4_000],
            failed: 2,
            not_sent: 5,
        });
        assert_eq!(a.sorted_us, [1_000, 2_000, 3_000, 4_000]);
        assert_eq!((a.failed, a.not_sent, a.answered()), (3, 5, 4));
        assert_eq!(a.pct(50.0), 3.0);
    }
}
