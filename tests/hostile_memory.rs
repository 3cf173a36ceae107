//! Big bodies: the request-body bytes held in memory at once stay within
//! `FLUX_MAX_INFLIGHT_MB`; past it a request gets 503 with `Retry-After` at
//! once, bodiless requests are never refused for it, and a lying
//! `Content-Length` costs only the liar. One big body raises the peak
//! memory by less than three times its size.

mod common;

use common::*;
use gemini_flux::sim::SimConfig;
use serde_json::json;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const FLASH: &str = "gemini-2.5-flash";

#[tokio::test(start_paused = true)]
async fn body_bytes_held_at_once_stay_within_the_budget() {
    let limits_env = json!({FLASH: {"rpm": 1, "tpm": 10_000_000, "rpd": 1000}}).to_string();
    let stack = Stack::start(
        SimConfig::new(["sim-key-0001"]).with_limits(limits(FLASH, 1, 10_000_000, 1000)),
        quiet_noon(),
        &[
            ("FLUX_MODELS", FLASH),
            ("FLUX_LIMITS", &limits_env),
            ("FLUX_MAX_INFLIGHT_MB", "1"),
            ("FLUX_TOKEN_COUNT", "local"),
        ],
    )
    .await;
    // 600 KiB bodies: one fits the 1 MiB budget, two do not.
    let big = || json!({"prompt": prompt_of(150_000)});
    assert_eq!(stack.generate(big()).await.0, 200, "alone, it fits");
    // One request a minute: this one holds its body while it waits 60 s.
    let waiting = tokio::spawn({
        let (http, base) = (stack.http.clone(), stack.svc.base_url());
        async move { generate_at(&http, &base, big()).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, retry, body) = stack.generate(big()).await;
    assert_eq!((status, retry), (503, Some(1)), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("FLUX_MAX_INFLIGHT_MB")
    );
    assert_eq!(stack.get("/status").await.0, 200, "a GET holds no body");
    assert_eq!(waiting.await.unwrap().0, 200);
    let (status, _, _) = stack
        .generate(json!({"prompt": prompt_of(150_000), "max_wait_s": 0}))
        .await;
    assert_eq!(
        status, 429,
        "admitted again once the first let go (then refused by the quota, not the budget)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lying_content_length_costs_the_liar_only() {
    let stack = Stack::start(
        SimConfig::new(["sim-key-0001"]),
        quiet_noon(),
        &[
            ("FLUX_MODELS", FLASH),
            ("FLUX_MAX_INFLIGHT_MB", "1"),
            ("FLUX_TOKEN_COUNT", "local"),
        ],
    )
    .await;
    // Three clients declare 10 MB bodies each and send 10 bytes: they are
    // charged the 10 bytes (1 KiB each), not the 10 MB they announced.
    let mut liars = Vec::new();
    for _ in 0..3 {
        let mut liar = tokio::net::TcpStream::connect(stack.svc.addr())
            .await
            .unwrap();
        liar.write_all(
            b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{\"prompt\":",
        )
        .await
        .unwrap();
        liars.push(liar);
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    // An honest 600 KiB body fits in what is left of the 1 MiB.
    let (status, _, body) = stack.generate(json!({"prompt": prompt_of(150_000)})).await;
    assert_eq!(status, 200, "{body}");
    drop(liars);
}

/// `VmRSS` or `VmHWM` (peak) of a process, in bytes.
fn memory_of(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// The issue's body: a small `contents` and 19.5 MB of empty arrays beside it.
fn padded_body(bytes: usize) -> Vec<u8> {
    let mut body = br#"{"contents":[{"role":"user","parts":[{"text":"hello"}]}],"x":["#.to_vec();
    while body.len() + 4 < bytes {
        body.extend_from_slice(b"[],");
    }
    body.extend_from_slice(b"[]]}");
    body
}

/// A `gemini-flux serve` process in front of an in-process simulator, ready
/// and idle; its own memory is what is measured.
async fn served_process() -> (gemini_flux::sim::SimServer, ServeProcess) {
    let sim = start_sim(SimConfig::new(["sim-key-0001"]), quiet_noon()).await;
    let dir = std::env::temp_dir().join(format!("gemini-flux-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let process = ServeProcess::spawn(
        &dir,
        &[
            ("GEMINI_KEYS", "sim-key-0001".to_string()),
            ("GEMINI_BASE_URL", sim.base_url()),
            ("FLUX_MODELS", FLASH.to_string()),
        ],
    );
    process.ready(&client()).await;
    // Let start-up's last allocations settle before "idle" is read.
    tokio::time::sleep(Duration::from_millis(200)).await;
    (sim, process)
}

/// The issue's reproduction and its kin: one 19.5 MB body on each route that
/// takes one raises the service's peak memory by less than three times the
/// body (the issue asks under about 60 MB), and a second later the service
/// is back near its idle size. A fresh `gemini-flux serve`
/// process for each, since a peak never comes down; its own `/proc` figures.
/// The simulator refuses bodies over 2 MB (while it reads, or after), so the
/// answers are the upstream's refusal or the service's own 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_big_body_raises_the_peak_by_less_than_three_times_its_size() {
    const BODY: usize = 19_500_000;
    let native = |method: &str| format!("/v1beta/models/{FLASH}:{method}");
    let text = |n: usize| "x".repeat(n);
    let cases: [(String, Vec<u8>); 5] = [
        (native("countTokens"), padded_body(BODY)),
        (native("generateContent"), padded_body(BODY)),
        (native("streamGenerateContent?alt=sse"), padded_body(BODY)),
        (
            "/generate".into(),
            serde_json::to_vec(&json!({"prompt": text(BODY - 14)})).unwrap(),
        ),
        (
            "/generate".into(),
            // A PNG's base64 signature, over and over: an image of 19.5 MB.
            serde_json::to_vec(
                &json!({"prompt": "describe", "images": ["iVBORw0KGgoA".repeat(BODY / 12 - 4)]}),
            )
            .unwrap(),
        ),
    ];
    for (path, body) in cases {
        let size = body.len() as u64;
        assert!((19_400_000..=19_500_000).contains(&size), "{path}: {size}");
        let (_sim, process) = served_process().await;
        let pid = process.child.id();
        let idle = memory_of(pid, "VmRSS:");
        let resp = client()
            .post(format!("{}{path}", process.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert!(
            matches!(status, 413 | 502) && answer["error"]["message"].is_string(),
            "{path}: {status} {answer}"
        );
        let peak = memory_of(pid, "VmHWM:");
        let raised = peak.saturating_sub(idle);
        eprintln!(
            "{path}: {size} bytes raised the peak by {:.1} MB ({:.2}x) over {:.1} MB idle",
            raised as f64 / 1e6,
            raised as f64 / size as f64,
            idle as f64 / 1e6
        );
        assert!(
            raised < 3 * size,
            "{path}: a body of {size} bytes raised the peak by {raised} bytes"
        );
        // Once the body is gone, so is the memory it took.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let kept = memory_of(pid, "VmRSS:").saturating_sub(idle);
        assert!(
            kept < size / 4,
            "{path}: {kept} bytes were still held a second after a body of {size}"
        );
    }
}
