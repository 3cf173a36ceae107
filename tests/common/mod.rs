//! Helpers shared by the end-to-end tests: a simulator on an ephemeral port,
//! a wall-clock origin, and a plain HTTP client.
#![allow(dead_code)] // each test binary uses its own subset

use gemini_flux::clock::{Clock, Timestamp};
use gemini_flux::policy::Limits;
use gemini_flux::sim::{SimConfig, SimServer};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// A timestamp from RFC 3339 text.
pub fn at(rfc3339: &str) -> Timestamp {
    Timestamp::from_millis(
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis(),
    )
}

/// A weekday noon in Pacific time, far from any midnight.
pub fn quiet_noon() -> Timestamp {
    at("2026-06-10T19:00:00Z")
}

pub fn limits(model: &str, rpm: u32, tpm: u64, rpd: u32) -> BTreeMap<String, Limits> {
    BTreeMap::from([(model.to_string(), Limits::new(rpm, tpm, rpd))])
}

/// A simulator on the system clock whose every generate call takes
/// `latency_ms` upstream, for tests that kill a real process mid-call.
pub async fn slow_sim(mut config: SimConfig, latency_ms: u64) -> SimServer {
    config.faults = gemini_flux::sim::Faults {
        latency_ms,
        ..Default::default()
    };
    SimServer::start(config, Clock::system(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

pub async fn start_sim(config: SimConfig, wall: Timestamp) -> SimServer {
    SimServer::start(
        config,
        Clock::starting_at(wall),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("simulator starts")
}

/// A client that opens a connection per request: the tests jump the clock
/// by minutes, past the service's idle keep-alive timeout, and a pooled
/// connection the service closed at that instant would fail the next request.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// A request whose prompt counts exactly `tokens` tokens in the simulator.
pub fn request_of(tokens: u64) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": "x".repeat(tokens as usize * 4)}]}]})
}

use gemini_flux::config::Settings;
use gemini_flux::service::{self, RunningService};
use gemini_flux::sim::SimStats;

/// A simulator and the service in front of it, both on ephemeral ports,
/// both on one clock.
pub struct Stack {
    pub sim: SimServer,
    pub svc: RunningService,
    pub http: reqwest::Client,
}

impl Stack {
    /// Starts the simulator with `sim_config`, then the service with the
    /// simulator's keys and the extra `env` settings.
    pub async fn start(sim_config: SimConfig, wall: Timestamp, env: &[(&str, &str)]) -> Stack {
        let keys = sim_config.keys.join(",");
        Self::start_with_keys(sim_config, wall, &keys, env).await
    }

    pub async fn start_with_keys(
        sim_config: SimConfig,
        wall: Timestamp,
        keys: &str,
        env: &[(&str, &str)],
    ) -> Stack {
        let clock = Clock::starting_at(wall);
        let sim = SimServer::start(sim_config, clock, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        // Tests count calls; the policy fetch (one call) is tested on its own.
        let env = [&[("FLUX_POLICY_FETCH", "false")][..], env].concat();
        let settings = settings(&sim.base_url(), keys, &fresh_state_path(), &env);
        let svc = service::start(settings, clock)
            .await
            .expect("service starts");
        Stack {
            sim,
            svc,
            http: client(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.svc.base_url())
    }

    /// `POST /generate` with `body`; the status, `Retry-After` and JSON answer.
    pub async fn generate(&self, body: Value) -> (u16, Option<u64>, Value) {
        generate_at(&self.http, &self.svc.base_url(), body).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }

    /// Whether `/status` shows every key healthy (none taken out).
    pub async fn every_key_healthy(&self) -> bool {
        let (_, status) = self.get("/status").await;
        status["keys"]
            .as_array()
            .is_some_and(|keys| keys.iter().all(|k| k["state"] == "healthy"))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }

    /// `GET path` as text (`/metrics`).
    pub async fn text(&self, path: &str) -> String {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        resp.text().await.unwrap()
    }

    pub fn sim_stats(&self) -> SimStats {
        self.sim.stats()
    }
}

/// `GET url` as JSON.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// `POST url` with a JSON body: the status and the JSON answer.
pub async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let resp = http.post(url).json(body).send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// Settings for a service in front of `upstream` with `keys`, on an
/// ephemeral port, keeping its state at `state`; `env` adds variables or
/// overrides these (the last value of a name wins).
pub fn settings(
    upstream: &str,
    keys: &str,
    state: &std::path::Path,
    env: &[(&str, &str)],
) -> Settings {
    let base = [
        ("GEMINI_KEYS", keys.to_string()),
        ("GEMINI_BASE_URL", upstream.to_string()),
        ("FLUX_BIND", "127.0.0.1:0".to_string()),
        ("FLUX_STATE_PATH", state.display().to_string()),
    ];
    let vars = base
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Settings::from_vars(vars).expect("valid settings")
}

/// `POST {base}/generate` with `body`; the status, `Retry-After` and JSON answer.
pub async fn generate_at(
    http: &reqwest::Client,
    base: &str,
    body: Value,
) -> (u16, Option<u64>, Value) {
    let resp = http
        .post(format!("{base}/generate"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    (
        status,
        retry_after,
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// A state file of its own for each service a test starts.
pub fn fresh_state_path() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("gemini-flux-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("state.db")
}

/// A prompt that counts exactly `tokens` tokens.
pub fn prompt_of(tokens: u64) -> String {
    "x".repeat(tokens as usize * 4)
}

/// A `gemini-flux serve` process of the test's own, on a free port, stopped
/// with SIGKILL when dropped.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub base: String,
}

impl ServeProcess {
    /// Starts `gemini-flux serve` in `dir` with only `env` (plus a port and
    /// quiet logs): nothing leaks in from the test's own environment.
    pub fn spawn(dir: &std::path::Path, env: &[(&str, String)]) -> ServeProcess {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_gemini-flux"))
            .arg("serve")
            .current_dir(dir)
            .env_clear()
            .env("FLUX_BIND", format!("127.0.0.1:{port}"))
            .env("GEMINI_LOG", "false")
            .env("FLUX_POLICY_FETCH", "false")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the binary starts");
        ServeProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Waits (real time, at most 10 s) until `/readyz` answers 200.
    pub async fn ready(&self, http: &reqwest::Client) {
        for _ in 0..400 {
            let answer = http.get(format!("{}/readyz", self.base)).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("the service at {} did not become ready", self.base);
    }
}

impl ServeProcess {
    /// Stops it with SIGTERM, as a supervisor would: its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let term = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        self.child.wait().unwrap().code()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An answer: status, headers, JSON body (`Null` when empty or not JSON).
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub async fn of(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// Sends `request` and reads its answer.
    pub async fn to(request: reqwest::RequestBuilder) -> Answer {
        Answer::of(request.send().await.unwrap()).await
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error's message (Gemini's envelope); empty when there is none.
    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }

    /// `x-flux-key`: the key (1-based) that served it; 0 when none did.
    pub fn key(&self) -> usize {
        self.header("x-flux-key")
            .and_then(|k| k.parse().ok())
            .unwrap_or(0)
    }
}

/// The size of google-genai's upload chunks.
pub const UPLOAD_CHUNK: usize = 8 * 1024 * 1024;

/// google-genai's upload through the service at `base`: `start` with the
/// file's metadata, then 8 MiB chunks to the `X-Goog-Upload-URL` (no key on
/// them), the last with `finalize`. `extra` headers go on the start. The
/// finalize's answer (or the first chunk's refusal).
pub async fn upload_file(base: &str, bytes: &[u8], extra: &[(&str, &str)]) -> Answer {
    let http = client();
    let metadata = json!({"file": {"displayName": "notes.txt", "mimeType": "text/plain"}});
    let mut start = http
        .post(format!("{base}/upload/v1beta/files"))
        .header("X-Goog-Upload-Protocol", "resumable")
        .header("X-Goog-Upload-Command", "start")
        .header(
            "X-Goog-Upload-Header-Content-Length",
            bytes.len().to_string(),
        )
        .header("X-Goog-Upload-Header-Content-Type", "text/plain")
        .json(&metadata);
    for (name, value) in extra {
        start = start.header(*name, *value);
    }
    let started = Answer::of(start.send().await.unwrap()).await;
    assert_eq!(started.status, 200, "{}", started.body);
    assert_eq!(started.header("x-goog-upload-status"), Some("active"));
    let url = started.header("x-goog-upload-url").unwrap().to_string();
    assert!(
        url.starts_with(&format!("{base}/upload/v1beta/files?upload_id=")),
        "the upload goes on through gemini-flux: {url}"
    );
    let mut offset = 0;
    loop {
        let end = (offset + UPLOAD_CHUNK).min(bytes.len());
        let command = if end == bytes.len() {
            "upload, finalize"
        } else {
            "upload"
        };
        let answer = Answer::of(
            http.post(&url)
                .header("X-Goog-Upload-Command", command)
                .header("X-Goog-Upload-Offset", offset.to_string())
                .body(bytes[offset..end].to_vec())
                .send()
                .await
                .unwrap(),
        )
        .await;
        offset = end;
        if command == "upload, finalize" || answer.status != 200 {
            return answer;
        }
        assert_eq!(answer.header("x-goog-upload-status"), Some("active"));
    }
}

/// Uses of a file by a key whose project does not own it, as the simulator
/// counted them (generate and countTokens calls, gets and deletes).
pub fn cross_key_file_uses(stats: &SimStats) -> u64 {
    stats.files.foreign_file_403
        + stats
            .lanes
            .iter()
            .map(|l| l.stats.foreign_file_403)
            .sum::<u64>()
}

/// A generate request that names an uploaded `file` (its `uri`).
pub fn about_file(file: &Value) -> Value {
    json!({"contents": [{"role": "user", "parts": [
        {"fileData": {"fileUri": file["uri"], "mimeType": "text/plain"}},
        {"text": "What does it say?"}]}]})
}

/// The id of an uploaded `file` (its `name` after `files/`).
pub fn file_id(file: &Value) -> String {
    file["name"]
        .as_str()
        .unwrap()
        .trim_start_matches("files/")
        .to_string()
}

/// Every log line of the tests' subscriber, at TRACE: `captured_logs()`
/// installs it for the current thread (tokio's paused tests run on one).
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Captures every log line, at TRACE, while the guard lives.
pub fn captured_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}
