//! Several real `gemini-flux serve` processes sharing keys through one Redis,
//! in front of one simulator. Real processes, so real time: each test is
//! built around a single one-minute window.
//!
//! Needs `redis-server` on the PATH (`scripts/test` installs it): each test
//! starts a Redis of its own, or uses `FLUX_TEST_REDIS_URL` when that is set.

mod common;

use common::*;
use gemini_flux::clock::Clock;
use gemini_flux::sim::{SimConfig, SimServer};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FLASH: &str = "gemini-2.5-flash";
const LITE: &str = "gemini-2.5-flash-lite";
const KEYS: [&str; 2] = ["replica-key-0001", "replica-key-0002"];

/// The Redis a test's replicas share: `FLUX_TEST_REDIS_URL` when set, else a
/// `redis-server` of the test's own (stopped when the first value is dropped).
fn test_redis() -> (Option<RedisServer>, String) {
    match std::env::var("FLUX_TEST_REDIS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = RedisServer::ephemeral();
            let url = server.url.clone();
            (Some(server), url)
        }
    }
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
    gemini_flux::store::redis::forget_prefix(url, prefix).unwrap();
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

/// `n` replicas sharing [`KEYS`] through a Redis of the test's own (see
/// [`test_redis`]) under a prefix of their own, in front of one simulator
/// with `limits`. Dropped, the replicas stop first, then the prefix is cleared.
struct Cluster {
    replicas: Vec<ServeProcess>,
    sim: SimServer,
    url: String,
    prefix: String,
    _redis: Option<RedisServer>,
}

impl Cluster {
    async fn start(n: usize, limits: &Value, models: &str) -> Cluster {
        let sim = sim_with(limits.clone()).await;
        let (redis, url) = test_redis();
        let prefix = unique_prefix();
        let replicas = replicas(n, &sim.base_url(), &url, &prefix, limits, models).await;
        Cluster {
            replicas,
            sim,
            url,
            prefix,
            _redis: redis,
        }
    }

    fn base(&self, i: usize) -> String {
        self.replicas[i % self.replicas.len()].base.clone()
    }

    /// Stops the replicas (so nothing writes after), then everything under
    /// the prefix, as text (and deleted).
    fn dump(mut self) -> String {
        self.replicas.clear();
        take_redis_dump(&self.url, &self.prefix)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.replicas.clear();
        let _ = gemini_flux::store::redis::forget_prefix(&self.url, &self.prefix);
    }
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
    let cluster = Cluster::start(3, &limits, FLASH).await;
    let http = client();

    // 20 requests at once, spread over the three: 2 keys x 5 go now, the
    // other 10 can start no sooner than one minute after the first ones.
    let started = Instant::now();
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let (http, base) = (http.clone(), cluster.base(i));
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
    let stats = cluster.sim.stats();
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
    let dump = cluster.dump();
    assert!(dump.contains("lane:"), "{dump}");
    for key in KEYS {
        assert!(!dump.contains(key), "a key's text reached Redis");
    }
}

/// A `redis-server` of the test's own, on a free port, killed when dropped.
struct RedisServer {
    child: Child,
    args: String,
    port: u16,
    url: String,
}

impl RedisServer {
    /// Keeping nothing on disk.
    fn ephemeral() -> RedisServer {
        let port = free_port();
        let args = format!("--port {port} --bind 127.0.0.1 --appendonly no");
        RedisServer::start(&args, port, format!("redis://127.0.0.1:{port}/0"))
    }

    /// Persisting every write (AOF, fsync always) in `dir`, so that killing
    /// and restarting it loses nothing.
    fn persistent(dir: &Path) -> RedisServer {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let args = format!(
            "--port {port} --bind 127.0.0.1 --appendonly yes --appendfsync always --dir {}",
            dir.display()
        );
        RedisServer::start(&args, port, format!("redis://127.0.0.1:{port}/0"))
    }

    /// Speaking TLS only, with the certificate `ca` made; keeps nothing.
    fn tls(ca: &TestCa) -> RedisServer {
        let port = free_port();
        let args = format!(
            "--port 0 --tls-port {port} --bind 127.0.0.1 --tls-auth-clients no \
             --tls-cert-file {} --tls-key-file {} --tls-ca-cert-file {} --appendonly no --dir {}",
            ca.path("server.pem"),
            ca.path("server.key"),
            ca.path("ca.pem"),
            ca.dir.display()
        );
        RedisServer::start(&args, port, format!("rediss://localhost:{port}/0"))
    }

    /// `args` are split on spaces (test paths have none); no RDB snapshots.
    fn start(args: &str, port: u16, url: String) -> RedisServer {
        let mut child = Command::new("redis-server")
            .args(args.split_whitespace())
            .args(["--save", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (.ci/run installs it)");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return RedisServer {
                    child,
                    args: args.to_string(),
                    port,
                    url,
                };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not start on port {port}");
    }

    /// SIGKILL.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new server with the same arguments: same port, same files.
    fn restart(&mut self) {
        *self = RedisServer::start(&self.args.clone(), self.port, self.url.clone());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A certificate authority and a server certificate for localhost, made
/// with `openssl` in a directory of the test's own.
struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    fn new(dir: PathBuf) -> TestCa {
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &str| {
            let ok = Command::new("openssl")
                .args(args.split_whitespace())
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl on the PATH")
                .success();
            assert!(ok, "openssl {args:?}");
        };
        let new_key = "-newkey rsa:2048 -nodes -days 1 -keyout";
        openssl(&format!(
            "req -x509 {new_key} ca.key -out ca.pem -subj /CN=flux-test-ca"
        ));
        openssl(&format!(
            "req {new_key} server.key -out server.csr -subj /CN=localhost"
        ));
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
             -out server.pem -days 1 -extfile san.ext",
        );
        TestCa { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
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
    let mut redis = RedisServer::persistent(&dir);
    let replicas = replicas(2, &sim.base_url(), &redis.url, "flux:", &limits, FLASH).await;
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
    let cluster = Cluster::start(3, &limits, &format!("{FLASH},{LITE}")).await;
    let http = client();

    let (status, _) = post_json(
        &http,
        &format!("{}/keys/2/disable", cluster.base(0)),
        &json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post_json(
        &http,
        &format!("{}/mode", cluster.base(0)),
        &json!({"mode": "flash_lite_only"}),
    )
    .await;
    assert_eq!(status, 200);
    let changed = Instant::now();
    for replica in &cluster.replicas[1..] {
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
        let (status, _, body) = generate_at(&http, &cluster.base(i), json!({"prompt": "hi"})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (body["key_used"].as_u64(), body["model_used"].as_str()),
            (Some(1), Some(LITE))
        );
    }
    assert_eq!(cluster.sim.stats().lane(2, LITE).map_or(0, |l| l.calls), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reaches_redis_over_tls_and_trusts_only_known_authorities() {
    let limits = json!({FLASH: {"rpm": 10, "tpm": 250_000, "rpd": 250}});
    let sim = sim_with(limits.clone()).await;
    let ca = TestCa::new(fresh_state_path().parent().unwrap().join("tls"));
    let redis = RedisServer::tls(&ca);
    let env = |trust: Option<String>| {
        let mut env = vec![
            ("GEMINI_KEYS", KEYS.join(",")),
            ("GEMINI_BASE_URL", sim.base_url()),
            ("FLUX_MODELS", FLASH.to_string()),
            ("FLUX_LIMITS", limits.to_string()),
            ("FLUX_REDIS_URL", redis.url.clone()),
        ];
        env.extend(trust.map(|ca| ("SSL_CERT_FILE", ca)));
        env
    };
    let dir = fresh_state_path().parent().unwrap().to_path_buf();

    // Trusting the test's authority (as a system store would): it serves.
    let replica = ServeProcess::spawn(&dir, &env(Some(ca.path("ca.pem"))));
    let http = client();
    replica.ready(&http).await;
    let (status, _, body) = generate_at(&http, &replica.base, json!({"prompt": "hi"})).await;
    assert_eq!(status, 200, "{body}");
    let status = get_json(&http, &format!("{}/status", replica.base)).await;
    assert_eq!(status["shared_state"]["url"], redis.url.as_str());

    // Not trusting it: the certificate is refused and start-up stops (exit 2).
    let mut untrusting = ServeProcess::spawn(&dir, &env(None));
    let exit = tokio::task::spawn_blocking(move || untrusting.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_input_tokens_of_the_day() {
    // 5,000 input tokens a Pacific day per key on flash: 5 calls of 1,000 on
    // each of the 2 keys, then lite, however the calls spread over replicas.
    let limits = json!({
        FLASH: {"rpm": 100, "tpm": 250_000, "rpd": 1_000, "tpd": 5_000},
        LITE: {"rpm": 100, "tpm": 250_000, "rpd": 1_000},
    });
    let cluster = Cluster::start(3, &limits, &format!("{FLASH},{LITE}")).await;
    let http = client();
    let mut served = Vec::new();
    for i in 0..16 {
        let (status, _, body) =
            generate_at(&http, &cluster.base(i), json!({"prompt": prompt_of(1_000)})).await;
        assert_eq!(status, 200, "{body}");
        served.push(body["model_used"].as_str().unwrap().to_string());
    }
    assert_eq!(served.iter().filter(|m| *m == FLASH).count(), 10);
    assert_eq!(served.iter().filter(|m| *m == LITE).count(), 6);
    let stats = cluster.sim.stats();
    assert_eq!(stats.rejected_429, 0, "no replica overspent a day's tokens");
    for key in 1..=2 {
        assert_eq!(stats.lane(key, FLASH).unwrap().tokens_today, 5_000);
    }
    let status = get_json(&http, &format!("{}/status", cluster.base(2))).await;
    assert_eq!(status["keys"][0]["models"][FLASH]["limits"]["tpd"], 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_finds_redis_emptied_is_not_ready_even_without_traffic() {
    let limits = json!({FLASH: {"rpm": 5, "tpm": 60_000, "rpd": 1_000}});
    let cluster = Cluster::start(1, &limits, FLASH).await;
    let http = client();
    let readyz = |base: String| {
        let http = http.clone();
        async move {
            http.get(format!("{base}/readyz"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(readyz(cluster.base(0)).await, 200);
    // Redis loses everything under the prefix (a restart without persistence).
    gemini_flux::store::redis::forget_prefix(&cluster.url, &cluster.prefix).unwrap();
    // No request is sent: the replica's own tick must notice, within a second.
    let started = Instant::now();
    while readyz(cluster.base(0)).await != 503 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "still ready after Redis lost its data"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = get_json(&http, &format!("{}/status", cluster.base(0))).await;
    assert!(
        status["shared_state"]["holding_until"].is_string(),
        "{status}"
    );
    assert_eq!(cluster.sim.stats().calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_uploaded_through_one_replica_is_read_by_its_key_through_another() {
    let limits = json!({FLASH: {"rpm": 10, "tpm": 100_000, "rpd": 1_000}});
    let cluster = Cluster::start(2, &limits, FLASH).await;
    let uploaded = upload_file(&cluster.base(0), b"shared by replicas", &[]).await;
    assert_eq!(uploaded.status, 200, "{}", uploaded.body);
    let file = uploaded.body["file"].clone();
    let id = file_id(&file);
    let owner = cluster.sim.file_owner(&id).unwrap();

    // The other replica never saw the upload: Redis tells it the owner.
    let http = client();
    for _ in 0..4 {
        let answer = Answer::to(
            http.post(format!(
                "{}/v1beta/models/{FLASH}:generateContent",
                cluster.base(1)
            ))
            .json(&about_file(&file)),
        )
        .await;
        assert_eq!(
            (answer.status, answer.key()),
            (200, owner),
            "{}",
            answer.body
        );
    }
    let stats = cluster.sim.stats();
    assert_eq!(stats.lane(owner, FLASH).unwrap().calls, 4);
    assert_eq!(cross_key_file_uses(&stats), 0);

    // The record lives as long as the file: 48 hours.
    let mut conn = redis::Client::open(cluster.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}file:{id}", cluster.prefix))
        .query(&mut conn)
        .unwrap();
    let hours_48 = 48 * 3_600_000;
    assert!(
        (hours_48 - 60_000..=hours_48).contains(&ttl),
        "expires with the file: {ttl} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_batches_with_501() {
    let limits = json!({FLASH: {"rpm": 10, "tpm": 250_000, "rpd": 250}});
    let cluster = Cluster::start(1, &limits, FLASH).await;
    let http = client();
    let batch = json!({"batch": {"inputConfig": {"requests": {"requests": [
        {"request": {"contents": [{"parts": [{"text": "hi"}]}]}}
    ]}}}});
    let create = format!(
        "{}/v1beta/models/{FLASH}:batchGenerateContent",
        cluster.base(0)
    );
    let (status, body) = post_json(&http, &create, &batch).await;
    assert_eq!(
        (status, &body["error"]["status"]),
        (501, &json!("UNIMPLEMENTED"))
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("replicas"), "{message}");
    let list = http
        .get(format!("{}/v1/batches", cluster.base(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 501);
    assert_eq!(cluster.sim.stats().calls, 0);
}
