//! The real binary running a batch, killed with SIGKILL while some of its
//! items are upstream, and restarted on the same state file: the batch
//! still ends with every answer in order, only the items in flight at the
//! crash are sent twice, and the upstream never refuses a call. Real
//! processes, so real time (about 70 s: the second minute's quota).

mod common;

use common::*;
use gemini_flux::sim::SimConfig;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

const FLASH: &str = "gemini-2.5-flash";
const KEYS: &str = "sim-key-0001,sim-key-0002";

fn spawn_service(upstream: &str, state: &Path) -> ServeProcess {
    let limits = json!({FLASH: {"rpm": 10, "tpm": 250_000, "rpd": 1_000}});
    ServeProcess::spawn(
        state.parent().unwrap(),
        &[
            ("GEMINI_KEYS", KEYS.into()),
            ("GEMINI_BASE_URL", upstream.into()),
            ("FLUX_MODELS", FLASH.into()),
            ("FLUX_LIMITS", limits.to_string()),
            ("FLUX_STATE_PATH", state.display().to_string()),
            // Four upstream at a time, so the kill finds some in flight and
            // some answered.
            ("FLUX_BATCH_CONCURRENCY", "4".into()),
        ],
    )
}

fn done_count(op: &Value) -> u64 {
    op["metadata"]["fluxProgress"]["done"].as_u64().unwrap()
}

#[tokio::test]
async fn a_batch_killed_mid_flight_ends_with_every_answer_resending_only_what_was_upstream() {
    let config = SimConfig::new(KEYS.split(',')).with_limits(limits(FLASH, 10, 250_000, 1_000));
    // Each call takes 2 s upstream: the kill lands while some are there.
    let sim = slow_sim(config, 2_000).await;
    let state = fresh_state_path();
    let http = client();

    let first = spawn_service(&sim.base_url(), &state);
    first.ready(&http).await;
    let items: Vec<Value> = (0..30)
        .map(|i| json!({"request": request_of(i + 1)}))
        .collect();
    let body = json!({"batch": {"inputConfig": {"requests": {"requests": items}}}});
    let (status, op) = post_json(
        &http,
        &format!("{}/v1/models/{FLASH}:batchGenerateContent", first.base),
        &body,
    )
    .await;
    assert_eq!(status, 200, "{op}");
    let name = op["name"].as_str().unwrap().to_string();

    // Wait until a first round is answered and the next is upstream.
    let answered = loop {
        let op = get_json(&http, &format!("{}/v1/{name}", first.base)).await;
        let done = done_count(&op);
        if done >= 4 && sim.stats().calls >= done + 2 {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(first); // SIGKILL
    tokio::time::sleep(Duration::from_millis(300)).await;
    let in_flight = sim.stats().calls - answered;
    assert!((2..=4).contains(&in_flight), "{in_flight} in flight");

    let mut second = spawn_service(&sim.base_url(), &state);
    second.ready(&http).await;
    let url = format!("{}/v1/{name}", second.base);
    let restored = get_json(&http, &url).await;
    assert!(done_count(&restored) >= answered, "{restored}");
    let mut done = restored;
    for _ in 0..600 {
        if done["done"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        done = get_json(&http, &url).await;
    }
    assert_eq!(done["metadata"]["state"], "BATCH_STATE_SUCCEEDED", "{done}");
    let texts: Vec<&str> = done["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["response"]["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap_or("-")
        })
        .collect();
    let expected: Vec<String> = (1..=30).map(|i| format!("ok:{i}")).collect();
    assert_eq!(texts, expected, "all 30, in input order, each right");
    let stats = sim.stats();
    assert!(
        (30..=30 + in_flight).contains(&stats.calls),
        "{} calls upstream: 30 and at most the {in_flight} in flight at the crash again",
        stats.calls
    );
    assert_eq!(
        stats.rejected_429, 0,
        "the restart knew what the crash had spent"
    );

    assert_eq!(second.terminate(), Some(0), "SIGTERM drains and exits 0");
}
