//! The Batch API end to end, on one paused clock: batches run on the free
//! keys below interactive traffic (a `/generate` sent mid-batch goes at
//! once), share the keys round robin (a small batch is not stuck behind a
//! big one), wait out a spent day instead of failing, survive a restart
//! without sending an answered item twice, and refuse bad input by name.

mod common;

use common::*;
use gemini_flux::clock::Timestamp;
use gemini_flux::sim::SimConfig;
use serde_json::{Value, json};
use std::time::Duration;

const FLASH: &str = "gemini-2.5-flash";
const KEYS: [&str; 2] = ["sim-key-aaaa", "sim-key-bbbb"];

/// Flash only, at `rpm` and `rpd` on each key, configured on both sides.
async fn stack(keys: &[&str], rpm: u32, rpd: u32, env: &[(&str, &str)]) -> Stack {
    let limits = json!({FLASH: {"rpm": rpm, "tpm": 250_000, "rpd": rpd}}).to_string();
    let config =
        SimConfig::new(keys.iter().copied()).with_limits(common::limits(FLASH, rpm, 250_000, rpd));
    let env = [&[("FLUX_MODELS", FLASH), ("FLUX_LIMITS", &limits)][..], env].concat();
    Stack::start(config, quiet_noon(), &env).await
}

/// `n` inline requests; item `i` counts `i + 1` tokens, so its answer is `ok:{i + 1}`.
fn requests(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"request": request_of(i as u64 + 1), "metadata": {"key": format!("item-{i}")}}))
        .collect()
}

async fn create(stack: &Stack, items: Vec<Value>) -> (u16, Value) {
    let body =
        json!({"batch": {"displayName": "test", "inputConfig": {"requests": {"requests": items}}}});
    stack
        .post(
            &format!("/v1beta/models/{FLASH}:batchGenerateContent"),
            body,
        )
        .await
}

/// Polls the batch every virtual second until it has ended.
async fn until_done(stack: &Stack, name: &str) -> Value {
    for _ in 0..100_000 {
        let (status, op) = stack.get(&format!("/v1beta/{name}")).await;
        assert_eq!(status, 200, "{op}");
        if op["done"] == true {
            return op;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("{name} never ended");
}

fn instant(value: &Value) -> Timestamp {
    at(value.as_str().expect("an RFC 3339 instant"))
}

/// Each inlined response's text, in order.
fn texts(op: &Value) -> Vec<String> {
    op["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
        .as_array()
        .expect("inlined responses")
        .iter()
        .map(|r| {
            r["response"]["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap_or("-")
                .to_string()
        })
        .collect()
}

fn expected_texts(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("ok:{i}")).collect()
}

#[tokio::test(start_paused = true)]
async fn an_interactive_call_mid_batch_goes_at_once_and_the_batch_ends_at_the_quota_bound() {
    let stack = stack(&KEYS, 10, 1_000, &[]).await;
    let t0 = quiet_noon();
    let (status, op) = create(&stack, requests(30)).await;
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["metadata"]["state"], "BATCH_STATE_PENDING");
    assert_eq!(op["metadata"]["batchStats"]["requestCount"], "30");
    let name = op["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("batches/"), "{name}");

    tokio::time::sleep(Duration::from_secs(8)).await;
    let (_, running) = stack.get(&format!("/v1beta/{name}")).await;
    let progress = &running["metadata"]["fluxProgress"];
    assert_eq!(running["metadata"]["state"], "BATCH_STATE_RUNNING");
    assert_eq!(
        (&progress["done"], &progress["pending"]),
        (&json!(18), &json!(12)),
        "9 of each key's 10 a minute went at once; one a key is the interactive reserve: {running}"
    );
    assert_eq!(instant(&progress["waitingUntil"]), t0.plus_millis(60_250));

    let asked = tokio::time::Instant::now();
    let (status, _, answer) = stack.generate(json!({"prompt": "hi"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["wait_applied"], 0.0, "{answer}");
    assert_eq!(tokio::time::Instant::now() - asked, Duration::ZERO);

    let done = until_done(&stack, &name).await;
    assert_eq!(done["metadata"]["state"], "BATCH_STATE_SUCCEEDED");
    assert_eq!(
        instant(&done["metadata"]["endTime"]),
        t0.plus_millis(60_250),
        "the 19th to 30th items go when the first minute's calls leave the window (+ the 250 ms guard): \
         the bound 30 calls on 2 keys at 10 RPM allow"
    );
    assert_eq!(
        texts(&done),
        expected_texts(30),
        "in input order, each right"
    );
    assert_eq!(
        done["response"]["inlinedResponses"]["inlinedResponses"][29]["metadata"]["key"],
        "item-29"
    );
    let stats = stack.sim_stats();
    assert_eq!((stats.calls, stats.rejected_429), (31, 0));
}

#[tokio::test(start_paused = true)]
async fn a_small_batch_beside_a_big_one_gets_its_fair_share() {
    let stack = stack(&KEYS[..1], 10, 10_000, &[]).await;
    let t0 = quiet_noon();
    let (_, big) = create(&stack, requests(500)).await;
    let (_, small) = create(&stack, requests(5)).await;
    let small = until_done(&stack, small["name"].as_str().unwrap()).await;
    // One key, 9 batch calls a minute: the two batches take turns, so the
    // small one has 4 in the first minute and its last at the second.
    assert_eq!(
        instant(&small["metadata"]["endTime"]),
        t0.plus_millis(60_250)
    );
    assert_eq!(texts(&small), expected_texts(5));
    let (_, big) = stack
        .get(&format!("/v1beta/{}", big["name"].as_str().unwrap()))
        .await;
    assert_eq!(big["metadata"]["state"], "BATCH_STATE_RUNNING");
    assert_eq!(
        big["metadata"]["fluxProgress"]["done"], 13,
        "5 + the 8 left at 60.25 s"
    );
    assert_eq!(stack.sim_stats().rejected_429, 0);
}

#[tokio::test(start_paused = true)]
async fn a_spent_day_leaves_the_batch_running_until_pacific_midnight() {
    // 5 a day; the interactive reserve keeps one of them: 4 a day for the batch.
    let stack = stack(&KEYS[..1], 10, 5, &[]).await;
    let (_, op) = create(&stack, requests(8)).await;
    let name = op["name"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(120)).await;
    let (_, op) = stack.get(&format!("/v1beta/{name}")).await;
    let progress = &op["metadata"]["fluxProgress"];
    assert_eq!(op["metadata"]["state"], "BATCH_STATE_RUNNING", "{op}");
    assert_eq!(
        (&progress["done"], &progress["pending"]),
        (&json!(4), &json!(4))
    );
    let midnight = at("2026-06-11T07:00:00Z");
    assert_eq!(instant(&progress["waitingUntil"]), midnight);
    let reason = progress["waitingReason"].as_str().unwrap();
    assert!(reason.contains("daily quota"), "{reason}");
    let (_, status) = stack.get("/status").await;
    assert_eq!(status["batches"][0]["waitingReason"], reason);

    let now = stack.svc.scheduler().clock().now();
    tokio::time::sleep(midnight.since(now)).await;
    let done = until_done(&stack, &name).await;
    assert_eq!(instant(&done["metadata"]["endTime"]), midnight);
    assert_eq!(texts(&done), expected_texts(8));
    assert_eq!(stack.sim_stats().rejected_429, 0);
}

#[tokio::test(start_paused = true)]
async fn a_stop_lets_items_upstream_finish_and_a_restart_runs_the_rest_once() {
    let limits = json!({FLASH: {"rpm": 10, "tpm": 250_000, "rpd": 1_000}}).to_string();
    let mut config = SimConfig::new(KEYS).with_limits(common::limits(FLASH, 10, 250_000, 1_000));
    // Each call takes 2 s upstream: the stop comes while 18 are there.
    config.faults.latency_ms = 2_000;
    let sim = start_sim(config, quiet_noon()).await;
    let state = fresh_state_path();
    let keys = KEYS.join(",");
    let env = [
        ("FLUX_MODELS", FLASH),
        ("FLUX_LIMITS", limits.as_str()),
        ("FLUX_POLICY_FETCH", "false"),
    ];
    let clock = gemini_flux::clock::Clock::starting_at(quiet_noon());
    let start =
        || gemini_flux::service::start(settings(&sim.base_url(), &keys, &state, &env), clock);
    let http = client();
    let first = start().await.unwrap();
    let body = json!({"batch": {"inputConfig": {"requests": {"requests": requests(30)}}}});
    let (status, op) = post_json(
        &http,
        &format!(
            "{}/v1/models/{FLASH}:batchGenerateContent",
            first.base_url()
        ),
        &body,
    )
    .await;
    assert_eq!(status, 200, "{op}");
    let name = op["name"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopping = tokio::time::Instant::now();
    first.stop().await.unwrap();
    assert_eq!(
        tokio::time::Instant::now() - stopping,
        Duration::from_secs(1),
        "the stop waited for the calls upstream to answer"
    );
    assert_eq!(sim.stats().calls, 18);

    let second = start().await.unwrap();
    let url = format!("{}/v1/{name}", second.base_url());
    let op = get_json(&http, &url).await;
    assert_eq!(op["metadata"]["fluxProgress"]["done"], 18, "{op}");
    // The first minute's calls leave the window at 60.25 s; 2 s upstream.
    tokio::time::sleep(Duration::from_secs(61)).await;
    let op = get_json(&http, &url).await;
    assert_eq!(op["metadata"]["state"], "BATCH_STATE_SUCCEEDED", "{op}");
    assert_eq!(texts(&op), expected_texts(30));
    let stats = sim.stats();
    assert_eq!(
        (stats.calls, stats.rejected_429),
        (30, 0),
        "each item sent once; the restart knew the first minute was spent"
    );
}

#[tokio::test(start_paused = true)]
async fn bad_batches_are_refused_naming_the_item() {
    let stack = stack(&KEYS, 10, 1_000, &[]).await;
    let mut items = requests(3);
    items[2] = json!({"request": {"contents": []}});
    let (status, e) = create(&stack, items).await;
    assert_eq!(status, 400);
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("batch.inputConfig.requests.requests[2]: request.contents"),
        "{message}"
    );
    let mut items = requests(2);
    items[1] = json!({"contents": [{"parts": [{"text": "hi"}]}]});
    let (status, e) = create(&stack, items).await;
    assert_eq!(status, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requests[1]: unknown field \"contents\""),
        "{e}"
    );
    let tiny = json!({"request": {"contents": [{"parts": [{"text": "x"}]}]}});
    let (status, e) = create(&stack, vec![tiny; 10_001]).await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 10000")
    );
    let (status, e) = stack
        .post(
            "/v1beta/models/gemini-9-ultra:batchGenerateContent",
            json!({"batch": {"inputConfig": {"requests": {"requests": requests(1)}}}}),
        )
        .await;
    assert_eq!(
        (status, e["error"]["status"].clone()),
        (404, json!("NOT_FOUND"))
    );
    let (status, e) = stack
        .post(
            &format!("/v1beta/models/{FLASH}:batchGenerateContent"),
            json!({"batch": {"inputConfig": {"fileName": "files/abc"}}}),
        )
        .await;
    assert_eq!(
        (status, e["error"]["status"].clone()),
        (400, json!("INVALID_ARGUMENT"))
    );
    assert!(
        e["error"]["message"].as_str().unwrap().contains("inline"),
        "{e}"
    );
    for path in [
        "/v1beta/batches/nosuchbatch",
        "/v1beta/batches/UPPER%2Fcase",
    ] {
        let (status, e) = stack.get(path).await;
        assert_eq!(
            (status, e["error"]["status"].clone()),
            (404, json!("NOT_FOUND")),
            "{path}"
        );
    }
    let (status, _) = stack
        .post("/v1beta/batches/nosuchbatch:cancel", json!({}))
        .await;
    assert_eq!(status, 404);
    assert_eq!(stack.sim_stats().calls, 0, "nothing was sent");
}

#[tokio::test(start_paused = true)]
async fn a_batch_is_its_tokens_own_and_can_be_cancelled_listed_and_deleted() {
    let stack = stack(&KEYS[..1], 10, 1_000, &[("FLUX_API_TOKENS", "alice,bob")]).await;
    // The SDKs' way: the token as the Gemini key.
    let call = |token: &str, method: reqwest::Method, path: String, body: Option<Value>| {
        let mut request = stack
            .http
            .request(method, stack.url(&path))
            .header("x-goog-api-key", token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    use reqwest::Method;
    let body = json!({"batch": {"inputConfig": {"requests": {"requests": requests(20)}}}});
    let create_path = format!("/v1beta/models/{FLASH}:batchGenerateContent");
    let (_, created) = call("alice", Method::POST, create_path, Some(body)).await;
    let name = created["name"].as_str().unwrap().to_string();
    let get = |token, path| call(token, Method::GET, path, None);
    assert_eq!(get("bob", format!("/v1/{name}")).await.0, 404, "not bob's");
    let (_, listed) = get("bob", "/v1/batches".into()).await;
    assert_eq!(listed["operations"], json!([]));
    let (_, listed) = get("alice", "/v1/batches?pageSize=1".into()).await;
    assert_eq!(listed["operations"][0]["name"], name.as_str());
    assert!(listed.get("nextPageToken").is_none());

    // 9 went in the first minute; cancel before the second.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let cancel = format!("/v1/{name}:cancel");
    assert_eq!(call("alice", Method::POST, cancel, None).await.0, 200);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (_, op) = get("alice", format!("/v1/{name}")).await;
    assert_eq!(op["metadata"]["state"], "BATCH_STATE_CANCELLED");
    assert_eq!(op["error"]["status"], "CANCELLED");
    let answers = op["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
        .as_array()
        .unwrap();
    assert_eq!(answers.len(), 20, "every item, in order");
    assert_eq!(
        answers[8]["response"]["candidates"][0]["content"]["parts"][0]["text"],
        "ok:9"
    );
    assert_eq!(answers[9]["error"]["status"], "CANCELLED");
    assert_eq!(stack.sim_stats().calls, 9, "nothing after the cancel");

    let deleted = call("alice", Method::DELETE, format!("/v1/{name}"), None).await;
    assert_eq!(deleted.0, 200);
    assert_eq!(get("alice", format!("/v1/{name}")).await.0, 404);
}

#[tokio::test(start_paused = true)]
async fn results_are_kept_for_the_ttl_then_forgotten() {
    let stack = stack(&KEYS[..1], 10, 1_000, &[("FLUX_BATCH_TTL_H", "1")]).await;
    let (_, op) = create(&stack, requests(2)).await;
    let name = op["name"].as_str().unwrap().to_string();
    let done = until_done(&stack, &name).await;
    let ended = instant(&done["metadata"]["endTime"]);
    tokio::time::sleep(Duration::from_secs(3_598)).await;
    assert_eq!(stack.get(&format!("/v1beta/{name}")).await.0, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(stack.svc.scheduler().clock().now() > ended.plus(Duration::from_secs(3_600)));
    assert_eq!(stack.get(&format!("/v1beta/{name}")).await.0, 404);
    let metrics = stack.text("/metrics").await;
    assert!(
        !metrics.contains(&name[8..]),
        "no gauge for a forgotten batch"
    );
}

#[tokio::test(start_paused = true)]
async fn status_and_metrics_count_each_batch_s_items() {
    let stack = stack(&KEYS[..1], 10, 1_000, &[]).await;
    let (_, op) = create(&stack, requests(12)).await;
    let id = op["name"].as_str().unwrap()["batches/".len()..].to_string();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, status) = stack.get("/status").await;
    let batch = &status["batches"][0];
    assert_eq!(batch["id"], id.as_str());
    assert_eq!(
        (
            &batch["pending"],
            &batch["running"],
            &batch["done"],
            &batch["failed"]
        ),
        (&json!(3), &json!(0), &json!(9), &json!(0))
    );
    let metrics = stack.text("/metrics").await;
    for (state, n) in [("pending", 3), ("running", 0), ("done", 9), ("failed", 0)] {
        let line = format!("flux_batch_items{{batch=\"{id}\",state=\"{state}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
}
