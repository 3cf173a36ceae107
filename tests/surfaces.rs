//! The Gemini-native and OpenAI-compatible surfaces, client auth and the
//! seed's routes, end to end against the simulator.

mod common;

use common::*;
use gemini_flux::sim::{Faults, SimConfig};
use serde_json::{Value, json};
use std::time::Duration;

const FLASH: &str = "gemini-2.5-flash";

fn body(text: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": text}]}]})
}

/// `:streamGenerateContent?alt=sse` on flash with a one-part prompt.
async fn stream_sse(stack: &Stack, text: &str) -> reqwest::Response {
    let url = stack.url(&format!(
        "/v1beta/models/{FLASH}:streamGenerateContent?alt=sse"
    ));
    stack.http.post(url).json(&body(text)).send().await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn native_generate_passes_through_on_both_versions() {
    let stack = Stack::start(SimConfig::new(["sim-key-0001"]), quiet_noon(), &[]).await;
    for version in ["v1beta", "v1"] {
        let resp = stack
            .http
            .post(stack.url(&format!("/{version}/models/{FLASH}:generateContent")))
            .json(&json!({"contents": [{"parts": [{"text": "abcdefgh"}]}], "system_instruction": {"parts": [{"text": "abcd"}]}, "generationConfig": {"maxOutputTokens": 5}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-flux-model"], FLASH);
        assert_eq!(resp.headers()["x-flux-key"], "1");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(
            v["candidates"][0]["content"]["parts"][0]["text"], "ok:3",
            "snake_case passed through untouched"
        );
        assert_eq!(v["modelVersion"], FLASH);
    }
    assert_eq!(stack.sim_stats().lane(1, FLASH).unwrap().calls, 2);
}

/// Real time on purpose: the simulator holds its later chunks for an hour,
/// so the first can reach the client only if nothing buffers the answer.
/// (Under paused time, a streamed body on a reused keep-alive connection
/// stalls in tokio's auto-advance; in real time it flows.)
#[tokio::test]
async fn the_first_streamed_chunk_arrives_before_the_upstream_sends_its_last() {
    let stack = Stack::start(SimConfig::new(["sim-key-0001"]), quiet_noon(), &[]).await;
    stack.sim.set_faults(Faults {
        stream_chunk_delay_ms: 3_600_000,
        ..Faults::default()
    });
    let mut resp = stream_sse(&stack, "hello world!").await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let first = tokio::time::timeout(Duration::from_secs(30), resp.chunk())
        .await
        .expect("the first chunk came while the upstream still held the rest")
        .unwrap()
        .unwrap();
    let event: Value = serde_json::from_str(
        String::from_utf8_lossy(&first)
            .trim()
            .strip_prefix("data: ")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(event["candidates"][0]["content"]["parts"][0]["text"], "ok");
    // The client leaves mid-stream: the upstream call is dropped and the
    // booking settles (with the estimate), so nothing stays in flight.
    drop(resp);
    let mut in_flight = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        in_flight = stack.get("/status").await.1["queue"]["in_flight"].clone();
        if in_flight == 0 {
            break;
        }
    }
    assert_eq!(in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_completed_stream_settles_with_the_final_usage() {
    let stack = Stack::start(SimConfig::new(["sim-key-0001"]), quiet_noon(), &[]).await;
    let resp = stream_sse(&stack, "hello world!").await;
    let text = resp.text().await.unwrap();
    let texts: String = text
        .split("\r\n\r\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|e| serde_json::from_str::<Value>(e).unwrap()["candidates"][0]["content"]["parts"][0]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, "ok:3");
    let (_, status) = stack.get("/status").await;
    assert_eq!(status["queue"]["in_flight"], 0, "{status}");
    assert_eq!(status["keys"][0]["models"][FLASH]["tokens_last_60s"], 3);
}

#[tokio::test(start_paused = true)]
async fn streams_without_alt_sse_are_one_json_array() {
    let stack = Stack::start(SimConfig::new(["sim-key-0001"]), quiet_noon(), &[]).await;
    let resp = stack
        .http
        .post(stack.url(&format!("/v1/models/{FLASH}:streamGenerateContent")))
        .json(&body("abcd"))
        .send()
        .await
        .unwrap();
    let chunks: Vec<Value> = resp.json().await.unwrap();
    assert_eq!(chunks.len(), 3);
    assert_eq!(chunks[2]["usageMetadata"]["promptTokenCount"], 1);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_drops_mid_stream_ends_the_stream_with_an_error_event() {
    let stack = Stack::start(SimConfig::new(["sim-key-0001"]), quiet_noon(), &[]).await;
    stack.sim.set_faults(Faults {
        drop_mid_stream_ratio: 1.0,
        ..Faults::default()
    });
    let resp = stream_sse(&stack, "hello").await;
    let text = resp.text().await.expect("the client's stream ends cleanly");
    let last = text
        .split("\r\n\r\n")
        .filter(|e| !e.is_empty())
        .last()
        .unwrap();
    let event: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(event["error"]["code"], 502, "{text}");
}

#[tokio::test(start_paused = true)]
async fn count_tokens_and_model_lists_spend_no_generate_quota() {
    let stack = Stack::start(SimConfig::new(["sim-key-0001"]), quiet_noon(), &[]).await;
    let (s, v) = stack
        .post(
            &format!("/v1beta/models/{FLASH}:countTokens"),
            body("abcdefgh"),
        )
        .await;
    assert_eq!((s, v["totalTokens"].as_u64()), (200, Some(2)));
    let (s, v) = stack.get("/v1beta/models?pageSize=2").await;
    assert_eq!((s, v["models"].as_array().map(Vec::len)), (200, Some(2)));
    assert!(v["nextPageToken"].is_string());
    let (s, v) = stack.get(&format!("/v1/models/{FLASH}")).await;
    assert_eq!(
        (s, v["name"].as_str()),
        (200, Some("models/gemini-2.5-flash"))
    );
    assert_eq!(stack.get("/v1/models/gemini-0-nano").await.0, 404);
    assert_eq!(stack.get("/v1/models/bad%20name").await.0, 404);
    assert_eq!(stack.get("/v1beta/models?pageSize=1001").await.0, 400);
    let bad_header = stack
        .http
        .post(stack.url(&format!("/v1beta/models/{FLASH}:generateContent")))
        .header("x-flux-fallback", "maybe")
        .json(&body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_header.status(), 400);
    assert_eq!(stack.sim_stats().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn the_path_model_is_honoured_unless_the_client_opts_into_fallback() {
    let stack = Stack::start(
        SimConfig::new(["sim-key-0001"])
            .with_limits(limits(FLASH, 10, 250_000, 1))
            .tap_add_lite(),
        quiet_noon(),
        &[
            ("FLUX_MODELS", "gemini-2.5-flash,gemini-2.5-flash-lite"),
            ("FLUX_LIMITS", r#"{"gemini-2.5-flash": {"rpd": 1}}"#),
        ],
    )
    .await;
    let url = stack.url(&format!("/v1beta/models/{FLASH}:generateContent"));
    assert_eq!(
        stack
            .http
            .post(&url)
            .json(&body("a"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let refused = stack.http.post(&url).json(&body("b")).send().await.unwrap();
    assert_eq!(
        refused.status(),
        429,
        "flash's day is spent and the client did not opt in"
    );
    let fallen = stack
        .http
        .post(&url)
        .header("x-flux-fallback", "true")
        .json(&body("c"))
        .send()
        .await
        .unwrap();
    assert_eq!(fallen.status(), 200);
    assert_eq!(fallen.headers()["x-flux-model"], "gemini-2.5-flash-lite");
    let v: Value = fallen.json().await.unwrap();
    assert_eq!(v["modelVersion"], "gemini-2.5-flash-lite");
    let (s, v) = stack
        .post("/v1beta/models/gemini-9-ultra:generateContent", body("d"))
        .await;
    assert_eq!((s, v["error"]["status"].as_str()), (404, Some("NOT_FOUND")));
    assert_eq!(stack.sim_stats().rejected_429, 0);
}

trait AddLite {
    fn tap_add_lite(self) -> Self;
}

impl AddLite for SimConfig {
    fn tap_add_lite(mut self) -> Self {
        self.limits.insert(
            "gemini-2.5-flash-lite".into(),
            gemini_flux::policy::Family::FlashLite.builtin_limits(),
        );
        self
    }
}

#[tokio::test(start_paused = true)]
async fn openai_chat_is_translated_both_ways() {
    let stack = Stack::start(SimConfig::new(["sim-key-0001"]), quiet_noon(), &[]).await;
    for path in ["/v1/chat/completions", "/v1beta/openai/chat/completions"] {
        let (s, v) = stack
            .post(path, json!({"model": FLASH, "messages": [{"role": "system", "content": "abcd"}, {"role": "user", "content": "abcdefgh"}], "max_tokens": 20}))
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], "ok:3");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})
        );
        assert_eq!(v["model"], FLASH);
    }
    let (s, v) = stack
        .post(
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let (s, v) = stack
        .post("/v1/chat/completions", json!({"messages": "nope"}))
        .await;
    assert_eq!(
        (s, v["error"]["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
    let (s, v) = stack.get("/v1beta/openai/models").await;
    assert_eq!((s, v["object"].as_str()), (200, Some("list")));
    assert!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == FLASH)
    );
}

#[tokio::test(start_paused = true)]
async fn openai_streams_end_with_usage_and_done() {
    let stack = Stack::start(SimConfig::new(["sim-key-0001"]), quiet_noon(), &[]).await;
    let resp = stack
        .http
        .post(stack.url("/v1/chat/completions"))
        .json(&json!({"model": FLASH, "messages": [{"role": "user", "content": "abcdefgh"}], "stream": true, "stream_options": {"include_usage": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "ok:2");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(events.last().unwrap()["usage"]["prompt_tokens"], 2);
}

#[tokio::test(start_paused = true)]
async fn tokens_guard_every_route_they_should() {
    let env = [
        ("FLUX_API_TOKENS", "tok-app-1,tok-app-2"),
        ("FLUX_ADMIN_TOKEN", "tok-admin"),
    ];
    let stack = Stack::start(SimConfig::new(["sim-key-0001"]), quiet_noon(), &env).await;
    let http = &stack.http;
    let code = |request: reqwest::RequestBuilder| async move {
        request.send().await.unwrap().status().as_u16()
    };
    // Open routes.
    assert_eq!(code(http.get(stack.url("/healthz"))).await, 200);
    assert_eq!(code(http.get(stack.url("/readyz"))).await, 200);
    // Everything else wants a token.
    for path in [
        "/status",
        "/mode",
        "/health",
        "/v1beta/openai/models",
        "/metrics",
        "/usage",
    ] {
        let resp = http.get(stack.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        assert_eq!(
            code(http.get(stack.url(path)).bearer_auth("tok-app-2")).await,
            200,
            "{path}"
        );
    }
    let (s, _, v) = stack.generate(json!({"prompt": "hi"})).await;
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    let ok = http
        .post(stack.url("/generate"))
        .bearer_auth("tok-app-1")
        .json(&json!({"prompt": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // Gemini-native: the token as the SDK's API key, in the header or the query.
    let native = stack.url(&format!("/v1beta/models/{FLASH}:generateContent"));
    assert_eq!(
        code(
            http.post(&native)
                .header("x-goog-api-key", "tok-app-1")
                .json(&body("x"))
        )
        .await,
        200
    );
    assert_eq!(
        code(
            http.post(format!("{native}?key=tok-app-2"))
                .json(&body("x"))
        )
        .await,
        200
    );
    assert_eq!(
        code(
            http.post(&native)
                .header("x-goog-api-key", "wrong")
                .json(&body("x"))
        )
        .await,
        401
    );
    // On the OpenAI routes the refusal is in OpenAI's shape.
    let resp = http
        .post(stack.url("/v1/chat/completions"))
        .bearer_auth("wrong")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    // Admin routes want the admin token, and only it.
    let set_mode = |token: &'static str| {
        http.post(stack.url("/mode"))
            .bearer_auth(token)
            .json(&json!({"mode": "flash_only"}))
    };
    assert_eq!(code(set_mode("tok-app-1")).await, 401);
    assert_eq!(code(set_mode("tok-admin")).await, 200);
    assert_eq!(
        code(
            http.post(stack.url("/keys/1/disable"))
                .bearer_auth("tok-app-1")
        )
        .await,
        401
    );
    assert_eq!(
        code(
            http.post(stack.url("/config"))
                .bearer_auth("tok-admin")
                .json(&json!({}))
        )
        .await,
        200
    );
    // A token is never a Gemini key: the upstream saw only its own key.
    assert_eq!(stack.sim_stats().rejected_429, 0);
}

#[tokio::test(start_paused = true)]
async fn the_seed_routes_work_as_its_client_expects() {
    let stack = Stack::start(
        SimConfig::new(["sim-key-0001", "sim-key-0002"]),
        quiet_noon(),
        &[],
    )
    .await;
    let (s, v) = stack.get("/health").await;
    assert_eq!(
        (s, v["status"].as_str(), v["usable_keys"].as_u64()),
        (200, Some("ok"), Some(2))
    );
    let (s, v) = stack
        .post("/config", json!({"mode": "flash_only", "disable_key": 2}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["changes"],
        json!(["mode set to flash_only", "key 2 (…0002) disabled"])
    );
    let (_, status) = stack.get("/status").await;
    assert_eq!(
        (status["mode"].as_str(), status["keys"][1]["state"].as_str()),
        (Some("flash_only"), Some("disabled"))
    );
    assert_eq!(stack.post("/config", json!({"mode": "warp"})).await.0, 400);
    // Found by schemathesis: key 0 once underflowed into a panic (a 500).
    assert_eq!(
        stack.post("/config", json!({"disable_key": 0})).await.0,
        404
    );
    assert_eq!(
        stack.post("/config", json!([null, null])).await.0,
        400,
        "a struct is an object, not an array"
    );
    let (s, _) = stack
        .post("/config", json!({"enable_key": 7, "mode": "both"}))
        .await;
    assert_eq!(s, 404);
    let (_, status) = stack.get("/status").await;
    assert_eq!(
        status["mode"], "flash_only",
        "nothing changed when part of the request was wrong"
    );
    // preferred_key: key 2 is out, so key 1 serves and the answer says so.
    let (s, _, v) = stack
        .generate(json!({"prompt": "hi", "preferred_key": 2}))
        .await;
    assert_eq!((s, v["key_used"].as_u64()), (200, Some(1)));
}

#[tokio::test(start_paused = true)]
async fn metrics_parse_as_prometheus_text_and_name_keys_by_fingerprint() {
    let sim = SimConfig::new([
        "AIzaSyTESTmetricsKEY000000000001",
        "AIzaSyTESTmetricsKEY000000000002",
    ])
    .with_limits(limits(FLASH, 10, 50_000, 250));
    let stack = Stack::start(sim, quiet_noon(), &[("FLUX_MODELS", FLASH)]).await;
    for _ in 0..3 {
        assert_eq!(
            stack.generate(json!({"prompt": prompt_of(30_000)})).await.0,
            200
        );
    }
    let resp = stack.http.get(stack.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains("AIzaSyTESTmetricsKEY"),
        "a key leaked into /metrics"
    );
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    // Three calls of 30k on two lanes of 50k: the third is refused once (one
    // lesson for the tier of both keys), then waits and is served.
    assert_eq!(
        value("flux_upstream_calls_total", &[("outcome", "ok")]),
        3.0
    );
    assert_eq!(
        value(
            "flux_upstream_calls_total",
            &[(
                "outcome",
                "429 GenerateContentInputTokensPerModelPerMinute-FreeTier"
            )]
        ),
        1.0
    );
    assert_eq!(
        value("flux_input_tokens_total", &[("model", FLASH)]),
        90_000.0
    );
    // The third call waited a minute: only it is still in a window.
    assert_eq!(
        value("flux_lane_tokens_last_60s", &[("fingerprint", "…0001")])
            + value("flux_lane_tokens_last_60s", &[("fingerprint", "…0002")]),
        30_000.0
    );
    assert_eq!(
        value("flux_lane_limit", &[("quota", "rpm"), ("key", "1")]),
        10.0
    );
    assert_eq!(value("flux_keys", &[("state", "healthy")]), 2.0);
    assert_eq!(
        value(
            "flux_requests_total",
            &[("route", "/generate"), ("status", "200")]
        ),
        3.0
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric.starts_with("flux_wait_seconds"))
    );
}
