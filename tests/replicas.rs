//! Several real `gemini-flux serve` processes sharing keys through one Redis,
//! in front of one simulator. Real processes, so real time: each test is
//! built around a single one-minute window.
//!
//! Needs `redis-server` on the PATH and a Redis at `FLUX_TEST_REDIS_URL`
//! (default `redis://127.0.0.1:6379/0`); `.ci/run` makes sure of both.

mod common;

use common::*;
use gemini_flux::clock::Clock;
use gemini_flux::sim::{SimConfig, SimServer};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FLASH: &str = "gemini-2.5-flash";
const LITE: &str = "gemini-2.5-flash-lite";
const KEYS: [&str; 2] = ["replica-key-0001", "replica-key-0002"];

fn redis_url() -> String {
    std::env::var("FLUX_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn unique_prefix() -> String {
    format!("gemini-flux-test:{:016x}:", rand::random::<u64>())
}

/// Every key and value under `prefix` in the Redis at `url`, as text; the
/// keys are deleted.
fn take_redis_dump(url: &str, prefix: &str) -> String {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut conn)
        .unwrap();
    let mut dump = String::new();
    for key in &keys {
        let kind: String = redis::cmd("TYPE").arg(key).query(&mut conn).unwrap();
        let value: Vec<String> = match kind.as_str() {
            "hash" => redis::cmd("HGETALL").arg(key).query(&mut conn).unwrap(),
            _ => vec![redis::cmd("GET").arg(key).query(&mut conn).unwrap()],
        };
        dump.push_str(&format!("{key} {}\n", value.join(" ")));
    }
    let _: () = redis::cmd("DEL").arg(keys).query(&mut conn).unwrap();
    dump
}

/// Starts `n` replicas sharing `keys` on the sim at `upstream` through the
/// Redis at `url` under `prefix`, all ready.
async fn replicas(
    n: usize,
    upstream: &str,
    url: &str,
    prefix: &str,
    limits: &Value,
    models: &str,
) -> Vec<ServeProcess> {
    let http = client();
    let dir = fresh_state_path().parent().unwrap().to_path_buf();
    let mut started = Vec::new();
    for _ in 0..n {
        let replica = ServeProcess::spawn(
            &dir,
            &[
                ("GEMINI_KEYS", KEYS.join(",")),
                ("GEMINI_BASE_URL", upstream.into()),
                ("FLUX_MODELS", models.into()),
                ("FLUX_LIMITS", limits.to_string()),
                ("FLUX_TOKEN_COUNT", "local".into()),
                ("FLUX_REDIS_URL", url.into()),
                ("FLUX_REDIS_PREFIX", prefix.into()),
            ],
        );
        replica.ready(&http).await;
        started.push(replica);
    }
    started
}

async fn sim_with(limits: Value) -> SimServer {
    let limits = serde_json::from_value(limits).unwrap();
    let config = SimConfig::new(KEYS).with_limits(limits);
    SimServer::start(config, Clock::system(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_sharing_two_keys_draw_no_429_and_finish_near_the_bound() {
    // Per key and minute: 5 requests (RPM binds before TPM for 10k requests).
    let limits = json!({FLASH: {"rpm": 5, "tpm": 60_000, "rpd": 1_000}});
    let sim = sim_with(limits.clone()).await;
    let (url, prefix) = (redis_url(), unique_prefix());
    let replicas = replicas(3, &sim.base_url(), &url, &prefix, &limits, FLASH).await;
    let http = client();

    // 20 requests at once, spread over the three: 2 keys x 5 go now, the
    // other 10 can start no sooner than one minute after the first ones.
    let started = Instant::now();
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let (http, base) = (http.clone(), replicas[i % 3].base.clone());
            tokio::spawn(async move {
                let answer = generate_at(&http, &base, json!({"prompt": prompt_of(10_000)})).await;
                (answer, started.elapsed())
            })
        })
        .collect();
    let mut makespan = Duration::ZERO;
    for call in calls {
        let ((status, _, body), done) = call.await.unwrap();
        assert_eq!(status, 200, "{body}");
        makespan = makespan.max(done);
    }
    let stats = sim.stats();
    assert_eq!(stats.calls, 20);
    assert_eq!(stats.rejected_429, 0, "no replica overran a shared quota");
    for key in 1..=2 {
        let lane = stats.lane(key, FLASH).unwrap();
        assert_eq!(lane.peak_requests_60s, 5, "key {key} used its full minute");
    }
    let bound = Duration::from_secs(60);
    let ratio = makespan.as_secs_f64() / bound.as_secs_f64();
    eprintln!("3 replicas, 2 keys, 20 requests: makespan {makespan:?}, {ratio:.4} x the bound");
    assert!(
        (1.0..=1.05).contains(&ratio),
        "makespan {makespan:?} is {ratio:.3} x the 60 s lower bound"
    );
    // The shared state names keys by stable id and fingerprint, never by text.
    let dump = take_redis_dump(&url, &prefix);
    assert!(dump.contains("lane:"), "{dump}");
    for key in KEYS {
        assert!(!dump.contains(key), "a key's text reached Redis");
    }
    drop(replicas);
}

/// A `redis-server` of the test's own, persisting every write (AOF,
/// fsync always) so that killing and restarting it loses nothing.
struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    fn start(port: u16, dir: PathBuf) -> RedisServer {
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (.ci/run installs it)");
        let server = RedisServer { child, port, dir };
        let client = redis::Client::open(server.url()).unwrap();
        for _ in 0..200 {
            if client.get_connection().is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not start on port {port}");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL, then a new server on the same port and files.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        *self = RedisServer::start(self.port, self.dir.clone());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of an unlabelled metric in `{base}/metrics`.
async fn metric(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Polls `{base}/readyz` until it answers `status`; how long that took.
async fn until_readyz(http: &reqwest::Client, base: &str, status: u16) -> Duration {
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(10) {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().as_u16() == status
        {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{base}/readyz never answered {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_gives_503s_not_429s_and_service_resumes_by_itself() {
    let limits = json!({FLASH: {"rpm": 3, "tpm": 1_000_000, "rpd": 1_000}});
    let sim = sim_with(limits.clone()).await;
    let dir = fresh_state_path().parent().unwrap().join("redis");
    let mut redis = RedisServer::start(free_port(), dir);
    let replicas = replicas(2, &sim.base_url(), &redis.url(), "flux:", &limits, FLASH).await;
    let http = client();
    let generate = |i: usize, body: Value| generate_at(&http, &replicas[i % 2].base, body);

    // Three calls per key fill this minute on both keys.
    for i in 0..6 {
        let (status, _, body) = generate(i, json!({"prompt": "hi"})).await;
        assert_eq!(status, 200, "{body}");
    }

    redis.kill();
    for replica in &replicas {
        let took = until_readyz(&http, &replica.base, 503).await;
        eprintln!("{} noticed Redis gone after {took:?}", replica.base);
        assert!(took < Duration::from_secs(2), "noticed after {took:?}");
        assert_eq!(
            metric(&http, &replica.base, "flux_shared_state_up").await,
            0.0
        );
    }
    for i in 0..4 {
        let (status, retry_after, body) = generate(i, json!({"prompt": "hi"})).await;
        assert_eq!(status, 503, "fail closed, not a guess: {body}");
        assert!(retry_after.is_some_and(|s| s >= 1), "{retry_after:?}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("shared quota state"),
            "{body}"
        );
    }
    assert_eq!(
        sim.stats().calls,
        6,
        "nothing reached Gemini while Redis was gone"
    );

    redis.restart();
    for replica in &replicas {
        until_readyz(&http, &replica.base, 200).await;
        assert_eq!(
            metric(&http, &replica.base, "flux_shared_state_up").await,
            1.0
        );
    }
    // Redis kept the minute's six calls: a request that cannot wait is
    // refused here, and one that can is served when the window allows.
    let (status, retry_after, _) = generate(0, json!({"prompt": "hi", "max_wait_s": 0})).await;
    assert_eq!(status, 429);
    assert!(retry_after.is_some());
    let (status, _, body) = generate(1, json!({"prompt": "hi"})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["wait_applied"].as_f64().unwrap() > 1.0, "{body}");
    let status = get_json(&http, &format!("{}/status", replicas[0].base)).await;
    assert_eq!(
        status["keys"][0]["state"], "healthy",
        "the refused change was undone"
    );
    let stats = sim.stats();
    assert_eq!(stats.calls, 7);
    assert_eq!(
        stats.rejected_429, 0,
        "Gemini never saw a request over quota"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_change_on_one_replica_holds_on_all_within_a_second() {
    let limits = json!({FLASH: {"rpm": 10, "tpm": 250_000, "rpd": 250}, LITE: {"rpm": 15, "tpm": 250_000, "rpd": 1_000}});
    let sim = sim_with(limits.clone()).await;
    let (url, prefix) = (redis_url(), unique_prefix());
    let models = format!("{FLASH},{LITE}");
    let replicas = replicas(3, &sim.base_url(), &url, &prefix, &limits, &models).await;
    let http = client();

    let (status, _) = post_json(
        &http,
        &format!("{}/keys/2/disable", replicas[0].base),
        &json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post_json(
        &http,
        &format!("{}/mode", replicas[0].base),
        &json!({"mode": "flash_lite_only"}),
    )
    .await;
    assert_eq!(status, 200);
    let changed = Instant::now();
    for replica in &replicas[1..] {
        loop {
            let status = get_json(&http, &format!("{}/status", replica.base)).await;
            if status["keys"][1]["state"] == "disabled" && status["mode"] == "flash_lite_only" {
                break;
            }
            assert!(changed.elapsed() < Duration::from_secs(1), "{status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // And they act on it: every call goes to key 1 on flash-lite.
    for i in 0..6 {
        let (status, _, body) =
            generate_at(&http, &replicas[i % 3].base, json!({"prompt": "hi"})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (body["key_used"].as_u64(), body["model_used"].as_str()),
            (Some(1), Some(LITE))
        );
    }
    assert_eq!(sim.stats().lane(2, LITE).map_or(0, |l| l.calls), 0);
    take_redis_dump(&url, &prefix);
}
