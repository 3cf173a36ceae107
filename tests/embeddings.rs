//! Embeddings through gemini-flux: native `:embedContent` and
//! `:batchEmbedContents` and OpenAI's `/v1/embeddings`, planned on the
//! embedding model's own lanes where each item counts as one request; a
//! batch larger than a window is split over keys and windows and answered
//! in input order; and never an upstream 429.

mod common;

use common::*;
use gemini_flux::policy::{Limits, UNLIMITED};
use gemini_flux::sim::SimConfig;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const EMBED: &str = "gemini-embedding-001";
/// One minute's window and the 250 ms guard past its edge.
const NEXT_WINDOW: Duration = Duration::from_millis(60_250);

fn embedding_limits(rpm: u32, tpm: u64) -> BTreeMap<String, Limits> {
    BTreeMap::from([(
        EMBED.to_string(),
        Limits {
            rpm,
            tpm,
            rpd: 1_000,
            tpd: UNLIMITED,
            otpm: gemini_flux::policy::UNLIMITED,
        },
    )])
}

/// A service whose embedding model has `rpm` and `tpm` on each of `keys`
/// keys, upstream and in the service alike.
async fn stack(keys: usize, rpm: u32, tpm: u64) -> Stack {
    let keys: Vec<String> = (1..=keys).map(|i| format!("sim-key-{i:04}")).collect();
    let sim = SimConfig::new(keys).with_limits(embedding_limits(rpm, tpm));
    let limits = format!(r#"{{"{EMBED}": {{"rpm": {rpm}, "tpm": {tpm}}}}}"#);
    Stack::start(sim, quiet_noon(), &[("FLUX_LIMITS", &limits)]).await
}

fn content(text: &str) -> Value {
    json!({"parts": [{"text": text}]})
}

/// A `batchEmbedContents` body of `texts`, as google-genai writes it.
fn batch(texts: &[String]) -> Value {
    let requests: Vec<Value> = texts
        .iter()
        .map(|t| json!({"model": format!("models/{EMBED}"), "content": content(t)}))
        .collect();
    json!({ "requests": requests })
}

fn texts(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix} text number {i}"))
        .collect()
}

fn vectors(answer: &Value) -> Vec<Value> {
    answer["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["values"].clone())
        .collect()
}

/// Each text's vector, asked for alone with `embedContent`.
async fn one_by_one(stack: &Stack, texts: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for t in texts {
        let (s, v) = stack
            .post(
                &format!("/v1beta/models/{EMBED}:embedContent"),
                json!({"content": content(t)}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        out.push(v["embedding"]["values"].clone());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn native_embeddings_on_both_versions_count_one_request_an_item() {
    let stack = stack(1, 100, 30_000).await;
    let (s, one) = stack
        .post(
            &format!("/v1beta/models/{EMBED}:embedContent"),
            json!({"content": content("abcdefgh")}),
        )
        .await;
    assert_eq!(s, 200, "{one}");
    assert_eq!(one["embedding"]["values"].as_array().unwrap().len(), 3072);
    let three = texts("a", 3);
    let (s, answer) = stack
        .post(
            &format!("/v1/models/{EMBED}:batchEmbedContents"),
            batch(&three),
        )
        .await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(vectors(&answer).len(), 3);
    let lane = stack.sim_stats().lane(1, EMBED).unwrap().clone();
    // Two calls upstream, four requests counted: one and three.
    assert_eq!((lane.calls, lane.requests_today), (2, 4));
    let (_, status) = stack.get("/status").await;
    assert_eq!(status["keys"][0]["models"][EMBED]["requests_today"], 4);
    assert_eq!(
        status["keys"][0]["models"][EMBED]["tokens_today"],
        lane.tokens_today
    );
    assert_eq!(stack.sim_stats().rejected_429, 0);
}

#[tokio::test(start_paused = true)]
async fn six_batches_of_three_on_three_keys_at_5_rpm_take_one_extra_window() {
    let stack = stack(3, 5, 30_000).await;
    let started = tokio::time::Instant::now();
    let calls = (0..6).map(|i| {
        let body = batch(&texts(&format!("batch {i}"), 3));
        let url = stack.url(&format!("/v1beta/models/{EMBED}:batchEmbedContents"));
        let http = stack.http.clone();
        async move {
            let resp = http.post(url).json(&body).send().await.unwrap();
            let status = resp.status().as_u16();
            let answer: Value = resp.json().await.unwrap();
            (status, answer, tokio::time::Instant::now())
        }
    });
    let answers = futures::future::join_all(calls).await;
    let mut done: Vec<Duration> = Vec::new();
    for (status, answer, at) in answers {
        assert_eq!(status, 200, "{answer}");
        assert_eq!(vectors(&answer).len(), 3);
        done.push(at - started);
    }
    done.sort();
    // Three batches fit the first window (one a key); the other three, 2
    // items short on every key, wait for the next.
    assert_eq!(done[..3], [Duration::ZERO; 3]);
    assert_eq!(done[3..], [NEXT_WINDOW; 3]);
    let stats = stack.sim_stats();
    assert_eq!(stats.rejected_429, 0);
    for key in 1..=3 {
        let lane = stats.lane(key, EMBED).unwrap();
        assert_eq!((lane.requests_today, lane.peak_requests_60s), (6, 3));
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_larger_than_a_window_is_split_over_keys_and_windows_in_order() {
    let stack = stack(2, 5, 30_000).await;
    let twelve = texts("split", 12);
    let started = tokio::time::Instant::now();
    let resp = stack
        .http
        .post(stack.url(&format!("/v1beta/models/{EMBED}:batchEmbedContents")))
        .json(&batch(&twelve))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Five on each key now, the last two in the next window.
    assert_eq!(started.elapsed(), NEXT_WINDOW);
    assert_eq!(resp.headers()["x-flux-key"], "1");
    assert_eq!(resp.headers()["x-flux-keys"], "1,2,1");
    assert_eq!(resp.headers()["x-flux-wait-ms"], "60250");
    let answer: Value = resp.json().await.unwrap();
    let stats = stack.sim_stats();
    assert_eq!(stats.rejected_429, 0);
    assert_eq!(
        (
            stats.lane(1, EMBED).unwrap().requests_today,
            stats.lane(2, EMBED).unwrap().requests_today
        ),
        (7, 5)
    );
    // In input order: each vector is its own text's.
    assert_eq!(vectors(&answer), one_by_one(&stack, &twelve).await);
}

#[tokio::test(start_paused = true)]
async fn a_batch_within_the_rpm_but_over_the_tpm_is_halved() {
    // 8 items of 10 tokens on 100 RPM but 40 TPM: two calls of 4, one a key.
    let stack = stack(2, 100, 40).await;
    let eight: Vec<String> = (0..8).map(|i| format!("{i}").repeat(40)).collect();
    let (s, answer) = stack
        .post(
            &format!("/v1beta/models/{EMBED}:batchEmbedContents"),
            batch(&eight),
        )
        .await;
    assert_eq!(s, 200, "{answer}");
    let stats = stack.sim_stats();
    assert_eq!(stats.rejected_429, 0);
    for key in 1..=2 {
        let lane = stats.lane(key, EMBED).unwrap();
        assert_eq!(
            (lane.calls, lane.requests_today, lane.input_tokens),
            (1, 4, 40)
        );
    }
    assert_eq!(vectors(&answer), one_by_one(&stack, &eight).await);
}

#[tokio::test(start_paused = true)]
async fn openai_embeddings_give_one_vector_per_input_in_order() {
    let stack = stack(1, 5, 30_000).await;
    let seven = texts("openai", 7);
    let started = tokio::time::Instant::now();
    let (s, v) = stack
        .post(
            "/v1/embeddings",
            json!({"model": EMBED, "input": seven, "dimensions": 8}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        started.elapsed(),
        NEXT_WINDOW,
        "5 now, 2 in the next window"
    );
    let data = v["data"].as_array().unwrap();
    let indexes: Vec<u64> = data.iter().map(|d| d["index"].as_u64().unwrap()).collect();
    assert_eq!(indexes, (0..7).collect::<Vec<_>>());
    assert!(
        data.iter()
            .all(|d| d["embedding"].as_array().unwrap().len() == 8)
    );
    let lane = stack.sim_stats().lane(1, EMBED).unwrap().clone();
    assert_eq!((lane.calls, lane.requests_today), (2, 7));
    assert_eq!(v["usage"]["prompt_tokens"], lane.input_tokens);
    // The same text embeds the same, alone or in a batch.
    let (_, alone) = stack
        .post(
            "/v1beta/openai/embeddings",
            json!({"model": EMBED, "input": seven[6], "dimensions": 8}),
        )
        .await;
    assert_eq!(alone["data"][0]["embedding"], data[6]["embedding"]);
    assert_eq!(stack.sim_stats().rejected_429, 0);
}

#[tokio::test(start_paused = true)]
async fn refusals_come_in_each_surfaces_envelope() {
    let stack = stack(1, 100, 30).await;
    let native = format!("/v1beta/models/{EMBED}:embedContent");
    let (s, v) = stack.post(&native, json!({"contents": []})).await;
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    // Larger than the whole TPM: it can never fit.
    let (s, v) = stack
        .post(&native, json!({"content": content(&"x".repeat(200))}))
        .await;
    assert_eq!(s, 413, "{v}");
    let (s, v) = stack
        .post("/v1/embeddings", json!({"model": EMBED, "input": [1, 2]}))
        .await;
    assert_eq!(
        (s, v["error"]["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
    let (s, v) = stack
        .post(
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": "x"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let (s, v) = stack.post("/v1/embeddings", json!({"input": "x"})).await;
    assert_eq!(s, 400, "{v}");
    // An embedding model does not chat or generate, nor another model embed:
    // refused before any lane is booked.
    let (s, v) = stack
        .post(
            "/v1/embeddings",
            json!({"model": "gemini-2.5-flash", "input": "x"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let (s, v) = stack
        .post(
            "/v1/chat/completions",
            json!({"model": EMBED, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let (s, _) = stack
        .post(
            &format!("/v1beta/models/{EMBED}:generateContent"),
            json!({"contents": [{"parts": [{"text": "x"}]}]}),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = stack
        .post(
            "/v1beta/models/gemini-2.5-flash:embedContent",
            json!({"content": content("x")}),
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(stack.sim_stats().calls, 0);
    let (_, status) = stack.get("/status").await;
    for model in [EMBED, "gemini-2.5-flash"] {
        let booked = &status["keys"][0]["models"][model]["requests_today"];
        assert_eq!(booked.as_u64().unwrap_or(0), 0, "{model}: {status}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_simulator_counts_an_item_as_a_request_and_names_the_embedding_quota() {
    let sim = start_sim(
        SimConfig::new(["sim-key-0001"]).with_limits(embedding_limits(5, 30_000)),
        quiet_noon(),
    )
    .await;
    let http = client();
    let url = format!(
        "{}/v1beta/models/{EMBED}:batchEmbedContents",
        sim.base_url()
    );
    let post = |body: Value| {
        http.post(&url)
            .header("x-goog-api-key", "sim-key-0001")
            .json(&body)
            .send()
    };
    assert_eq!(post(batch(&texts("a", 4))).await.unwrap().status(), 200);
    let refused = post(batch(&texts("b", 2))).await.unwrap();
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    let violation = &body["error"]["details"][0]["violations"][0];
    assert_eq!(
        violation["quotaId"],
        "EmbedContentRequestsPerMinutePerUserPerProjectPerModel-FreeTier"
    );
    assert_eq!(violation["quotaValue"], "5");
    // One more fits; a batch naming another model, or of 101, is refused.
    assert_eq!(post(batch(&texts("c", 1))).await.unwrap().status(), 200);
    let mut other = batch(&texts("d", 1));
    other["requests"][0]["model"] = json!("models/gemini-2.5-flash");
    assert_eq!(post(other).await.unwrap().status(), 400);
    assert_eq!(post(batch(&texts("e", 101))).await.unwrap().status(), 400);
    let lane = sim.stats().lane(1, EMBED).unwrap().clone();
    assert_eq!(
        (lane.calls, lane.requests_today, lane.rejected_rpm),
        (2, 5, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_retired_embedding_model_is_the_clients_404_after_one_call() {
    let sim = SimConfig::new(["sim-key-0001", "sim-key-0002"]).with_retired(EMBED);
    let stack = Stack::start(sim, quiet_noon(), &[]).await;
    for _ in 0..2 {
        let (status, answer) = stack
            .post(
                &format!("/v1beta/models/{EMBED}:embedContent"),
                json!({"content": content("hello")}),
            )
            .await;
        assert_eq!(status, 404, "{answer}");
        assert_eq!(answer["error"]["status"], "NOT_FOUND");
    }
    let stats = stack.sim_stats();
    let met: u64 = (1..=2)
        .filter_map(|k| stats.lane(k, EMBED))
        .map(|l| l.retired_404)
        .sum();
    assert_eq!(met, 2, "one call each, never retried on other keys");
    assert!(stack.every_key_healthy().await);
}
