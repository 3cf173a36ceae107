//! The simulator, probed over HTTP as a client of the real API would probe it:
//! every error shape, each quota with its exact id, value and retry delay,
//! per-key independence, the Pacific-midnight reset across DST changes,
//! streaming framing, and countTokens spending nothing.

mod common;

use common::*;
use gemini_flux::policy::Quota;
use gemini_flux::sim::{Faults, SimConfig};
use serde_json::{Value, json};
use std::time::Duration;

const FLASH: &str = "gemini-2.5-flash";

struct Probe {
    base: String,
    http: reqwest::Client,
}

impl Probe {
    fn new(sim: &gemini_flux::sim::SimServer) -> Self {
        Probe {
            base: sim.base_url(),
            http: client(),
        }
    }

    async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(k) = key {
            req = req.header("x-goog-api-key", k);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn generate(&self, key: &str, tokens: u64) -> (u16, Value) {
        self.post(
            &format!("/v1beta/models/{FLASH}:generateContent"),
            Some(key),
            &request_of(tokens),
        )
        .await
    }

    async fn stream(&self, key: &str, tokens: u64, sse: bool) -> reqwest::Response {
        let alt = if sse { "?alt=sse" } else { "" };
        self.http
            .post(format!(
                "{}/v1beta/models/{FLASH}:streamGenerateContent{alt}",
                self.base
            ))
            .header("x-goog-api-key", key)
            .json(&request_of(tokens))
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("x-goog-api-key", key)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }
}

fn detail<'a>(body: &'a Value, type_suffix: &str) -> &'a Value {
    body["error"]["details"]
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|x| x["@type"].as_str().unwrap_or("").ends_with(type_suffix))
        })
        .unwrap_or(&Value::Null)
}

#[tokio::test(start_paused = true)]
async fn generate_answers_with_predictable_text_and_usage() {
    let sim = start_sim(SimConfig::new(["key-aaaa"]), quiet_noon()).await;
    let p = Probe::new(&sim);
    let body = json!({
        "contents": [{"role": "user", "parts": [{"text": "a".repeat(400)}, {"inline_data": {"mime_type": "image/png", "data": "AAAA"}}]}],
        "system_instruction": {"parts": [{"text": "abcd"}]}
    });
    // On /v1 too, and with the key in the query.
    let resp = p
        .http
        .post(format!(
            "{}/v1/models/{FLASH}:generateContent?key=key-aaaa",
            p.base
        ))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let expected = 101 + 258;
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        format!("ok:{expected}")
    );
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    assert_eq!(v["usageMetadata"]["promptTokenCount"], expected);
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 2);
    assert_eq!(v["usageMetadata"]["totalTokenCount"], expected + 2);
    assert_eq!(v["modelVersion"], FLASH);
}

#[tokio::test(start_paused = true)]
async fn every_error_has_the_real_envelope() {
    let mut config = SimConfig::new(["key-aaaa"]);
    config.blocked_keys = vec!["key-blocked".into()];
    let sim = start_sim(config, quiet_noon()).await;
    let p = Probe::new(&sim);
    let path = format!("/v1beta/models/{FLASH}:generateContent");

    let (s, v) = p.post(&path, None, &request_of(1)).await;
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );

    let (s, v) = p.post(&path, Some("not-a-key"), &request_of(1)).await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], 400);
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(detail(&v, "ErrorInfo")["reason"], "API_KEY_INVALID");

    let (s, v) = p.post(&path, Some("key-blocked"), &request_of(1)).await;
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );

    let (s, v) = p
        .post(
            "/v1beta/models/gemini-9-ultra:generateContent",
            Some("key-aaaa"),
            &request_of(1),
        )
        .await;
    assert_eq!((s, v["error"]["status"].as_str()), (404, Some("NOT_FOUND")));

    let (s, v) = p
        .post(&path, Some("key-aaaa"), &json!({"prompt": "hi"}))
        .await;
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    assert!(v["error"]["message"].as_str().unwrap().contains("contents"));

    let resp = p
        .http
        .post(format!("{}{path}", p.base))
        .header("x-goog-api-key", "key-aaaa")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");

    // None of those spent quota.
    assert_eq!(sim.stats().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn rpm_429_names_its_quota_and_the_true_delay() {
    let sim = start_sim(
        SimConfig::new(["key-aaaa"]).with_limits(limits(FLASH, 10, 250_000, 250)),
        quiet_noon(),
    )
    .await;
    let p = Probe::new(&sim);
    for _ in 0..10 {
        assert_eq!(p.generate("key-aaaa", 10).await.0, 200);
        tokio::time::advance(Duration::from_secs(2)).await;
    }
    // 20 s after the first call: it leaves the window 40 s from now.
    let (s, v) = p.generate("key-aaaa", 10).await;
    assert_eq!(s, 429);
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    let violation = &detail(&v, "QuotaFailure")["violations"][0];
    assert_eq!(
        violation["quotaId"],
        "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    );
    assert_eq!(
        violation["quotaMetric"],
        "generativelanguage.googleapis.com/generate_content_free_tier_requests"
    );
    assert_eq!(violation["quotaDimensions"]["model"], FLASH);
    assert_eq!(violation["quotaValue"], "10");
    assert_eq!(detail(&v, "RetryInfo")["retryDelay"], "40s");
    assert!(!detail(&v, "Help").is_null());

    tokio::time::advance(Duration::from_millis(39_999)).await;
    assert_eq!(p.generate("key-aaaa", 10).await.0, 429);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(p.generate("key-aaaa", 10).await.0, 200);
    let stats = sim.stats();
    let lane = stats.lane(1, FLASH).unwrap();
    assert_eq!(
        (
            lane.calls,
            lane.rejected_429,
            lane.rejected_rpm,
            lane.peak_requests_60s
        ),
        (11, 2, 2, 10)
    );
}

#[tokio::test(start_paused = true)]
async fn tpm_429_counts_input_tokens_only() {
    let sim = start_sim(
        SimConfig::new(["key-aaaa"]).with_limits(limits(FLASH, 100, 250_000, 250)),
        quiet_noon(),
    )
    .await;
    let p = Probe::new(&sim);
    assert_eq!(p.generate("key-aaaa", 150_000).await.0, 200);
    tokio::time::advance(Duration::from_millis(24_500)).await;
    let (s, v) = p.generate("key-aaaa", 100_001).await;
    assert_eq!(s, 429);
    let violation = &detail(&v, "QuotaFailure")["violations"][0];
    assert_eq!(
        violation["quotaId"],
        "GenerateContentInputTokensPerModelPerMinute-FreeTier"
    );
    assert_eq!(
        violation["quotaMetric"],
        "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count"
    );
    assert_eq!(violation["quotaValue"], "250000");
    assert_eq!(detail(&v, "RetryInfo")["retryDelay"], "35.5s");
    // 100,000 still fits beside the first call.
    assert_eq!(p.generate("key-aaaa", 100_000).await.0, 200);
    assert_eq!(sim.stats().lane(1, FLASH).unwrap().peak_tokens_60s, 250_000);
    // A request larger than the whole TPM can never fit: no RetryInfo.
    tokio::time::advance(Duration::from_secs(120)).await;
    let (s, v) = p.generate("key-aaaa", 250_001).await;
    assert_eq!(s, 429);
    assert!(detail(&v, "RetryInfo").is_null());
}

#[tokio::test(start_paused = true)]
async fn keys_have_independent_quotas() {
    let sim = start_sim(
        SimConfig::new(["key-aaaa", "key-bbbb"]).with_limits(limits(FLASH, 2, 250_000, 250)),
        quiet_noon(),
    )
    .await;
    let p = Probe::new(&sim);
    assert_eq!(p.generate("key-aaaa", 5).await.0, 200);
    assert_eq!(p.generate("key-aaaa", 5).await.0, 200);
    assert_eq!(p.generate("key-aaaa", 5).await.0, 429);
    assert_eq!(p.generate("key-bbbb", 5).await.0, 200);
    assert_eq!(p.generate("key-bbbb", 5).await.0, 200);
    let stats = sim.stats();
    assert_eq!(stats.lane(1, FLASH).unwrap().rejected_429, 1);
    assert_eq!(stats.lane(2, FLASH).unwrap().rejected_429, 0);
    assert_eq!(
        stats.lanes.iter().find(|l| l.key_index == 2).unwrap().key,
        "…bbbb"
    );
}

/// Requests per day reset at Pacific midnight, wherever daylight saving puts it.
async fn rpd_resets_at(last_minute_utc: &str, seconds_to_midnight: u64) {
    let sim = start_sim(
        SimConfig::new(["key-aaaa"]).with_limits(limits(FLASH, 100, 1_000_000, 2)),
        at(last_minute_utc),
    )
    .await;
    let p = Probe::new(&sim);
    assert_eq!(p.generate("key-aaaa", 1).await.0, 200);
    assert_eq!(p.generate("key-aaaa", 1).await.0, 200);
    let (s, v) = p.generate("key-aaaa", 1).await;
    assert_eq!(s, 429);
    let violation = &detail(&v, "QuotaFailure")["violations"][0];
    assert_eq!(
        violation["quotaId"],
        "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    );
    assert_eq!(violation["quotaValue"], "2");
    // As the real upstream does on a per-day violation: the delay says
    // nothing, the message names the limit, and midnight decides.
    assert_eq!(detail(&v, "RetryInfo")["retryDelay"], "0s");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "* Quota exceeded for metric: {}, limit: 2, model: {FLASH}",
            Quota::RequestsPerDay.quota_metric()
        )),
        "{message}"
    );
    tokio::time::advance(Duration::from_millis(seconds_to_midnight * 1000 - 1)).await;
    assert_eq!(p.generate("key-aaaa", 1).await.0, 429);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(p.generate("key-aaaa", 1).await.0, 200);
    assert_eq!(sim.stats().lane(1, FLASH).unwrap().requests_today, 1);
}

#[tokio::test(start_paused = true)]
async fn rpd_resets_at_pacific_midnight_in_winter_and_summer() {
    rpd_resets_at("2026-01-15T07:59:00Z", 60).await; // PST, UTC-8
    rpd_resets_at("2026-07-15T06:59:30Z", 30).await; // PDT, UTC-7
}

#[tokio::test(start_paused = true)]
async fn rpd_resets_on_daylight_saving_change_days() {
    // 2026-03-08 (spring forward) ends at 07:00Z; 2026-11-01 (fall back) at 08:00Z.
    rpd_resets_at("2026-03-09T06:59:50Z", 10).await;
    rpd_resets_at("2026-11-02T07:59:00Z", 60).await;
}

#[tokio::test(start_paused = true)]
async fn count_tokens_is_free_and_accepts_both_shapes() {
    let sim = start_sim(
        SimConfig::new(["key-aaaa"]).with_limits(limits(FLASH, 1, 1_000, 1)),
        quiet_noon(),
    )
    .await;
    let p = Probe::new(&sim);
    let path = format!("/v1beta/models/{FLASH}:countTokens");
    for _ in 0..20 {
        let (s, v) = p.post(&path, Some("key-aaaa"), &request_of(700)).await;
        assert_eq!((s, v["totalTokens"].as_u64()), (200, Some(700)));
    }
    let wrapped = json!({"generateContentRequest": {"model": format!("models/{FLASH}"), "contents": request_of(10)["contents"], "systemInstruction": {"parts": [{"text": "abcd"}]}}});
    let (s, v) = p.post(&path, Some("key-aaaa"), &wrapped).await;
    assert_eq!((s, v["totalTokens"].as_u64()), (200, Some(11)));
    let (s, _) = p.post(&path, Some("key-aaaa"), &json!({})).await;
    assert_eq!(s, 400);
    // The one request a minute and a day is still there.
    assert_eq!(p.generate("key-aaaa", 10).await.0, 200);
    assert_eq!(p.generate("key-aaaa", 10).await.0, 429);
}

#[tokio::test(start_paused = true)]
async fn streaming_uses_sse_framing_and_ends_with_usage() {
    let sim = start_sim(SimConfig::new(["key-aaaa"]), quiet_noon()).await;
    let p = Probe::new(&sim);
    let resp = p.stream("key-aaaa", 1234, true).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.unwrap();
    let events: Vec<&str> = text.split("\r\n\r\n").filter(|e| !e.is_empty()).collect();
    assert!(events.len() >= 3, "several events: {text:?}");
    assert!(text.ends_with("\r\n\r\n"));
    let chunks: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    let joined: String = chunks
        .iter()
        .map(|c| {
            c["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(joined, "ok:1234");
    let last = chunks.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["promptTokenCount"], 1234);
    assert_eq!(last["usageMetadata"]["totalTokenCount"], 1236);
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["candidates"][0].get("finishReason").is_none())
    );

    // Without alt=sse: one JSON array of the same chunks.
    let resp = p.stream("key-aaaa", 5, false).await;
    let array: Vec<Value> = resp.json().await.unwrap();
    assert_eq!(array.len(), 3);
    assert_eq!(array[2]["usageMetadata"]["promptTokenCount"], 5);
}

#[tokio::test(start_paused = true)]
async fn models_are_listed_in_pages() {
    let sim = start_sim(SimConfig::new(["key-aaaa"]), quiet_noon()).await;
    let p = Probe::new(&sim);
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let (s, v) = p
            .get(
                &format!("/v1beta/models?pageSize=2&pageToken={token}"),
                "key-aaaa",
            )
            .await;
        assert_eq!(s, 200);
        for m in v["models"].as_array().unwrap() {
            names.push(m["name"].as_str().unwrap().to_string());
            assert!(m["inputTokenLimit"].as_u64().unwrap() > 0);
        }
        match v["nextPageToken"].as_str() {
            Some(t) => token = t.to_string(),
            None => break,
        }
    }
    assert_eq!(
        names.len(),
        7,
        "six generation models and one embedding model: {names:?}"
    );
    assert!(names.contains(&"models/gemini-2.5-flash-lite".to_string()));
    let (s, v) = p.get("/v1/models/gemini-2.5-pro", "key-aaaa").await;
    assert_eq!(
        (s, v["supportedGenerationMethods"][0].as_str()),
        (200, Some("generateContent"))
    );
    assert_eq!(
        p.get("/v1beta/models/gemini-0-nano", "key-aaaa").await.0,
        404
    );
    assert_eq!(
        p.get("/v1beta/models?pageToken=zzz", "key-aaaa").await.0,
        400
    );
}

#[tokio::test(start_paused = true)]
async fn injected_faults_look_like_the_real_ones() {
    let sim = start_sim(SimConfig::new(["key-aaaa"]), quiet_noon()).await;
    let p = Probe::new(&sim);

    sim.set_faults(Faults {
        unavailable_ratio: 1.0,
        ..Faults::default()
    });
    let (s, v) = p.generate("key-aaaa", 10).await;
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (503, Some("UNAVAILABLE"))
    );

    sim.set_faults(Faults {
        bare_429_ratio: 1.0,
        ..Faults::default()
    });
    let (s, v) = p.generate("key-aaaa", 10).await;
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (429, Some("RESOURCE_EXHAUSTED"))
    );
    assert!(v["error"].get("details").is_none());

    // Faults can be set over HTTP too, and bad ones are refused.
    let resp = p
        .http
        .post(format!("{}/__sim/faults", p.base))
        .json(&json!({"drop_mid_stream_ratio": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = p
        .http
        .post(format!("{}/__sim/faults", p.base))
        .json(&json!({"bare_429_ratio": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = p.stream("key-aaaa", 10, true).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.is_err(), "the body is cut off");

    let stats: Value = p
        .http
        .get(format!("{}/__sim/stats", p.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["rejected_429"], 1);
    assert_eq!(
        stats["calls"], 1,
        "the dropped call was admitted and counted"
    );
}

#[tokio::test(start_paused = true)]
async fn added_latency_and_chunk_delays_take_simulated_time() {
    let sim = start_sim(SimConfig::new(["key-aaaa"]), quiet_noon()).await;
    sim.set_faults(Faults {
        latency_ms: 1_500,
        stream_chunk_delay_ms: 700,
        ..Faults::default()
    });
    let p = Probe::new(&sim);
    let started = tokio::time::Instant::now();
    let resp = p.stream("key-aaaa", 10, true).await;
    resp.text().await.unwrap();
    // 1.5 s of latency, then two pauses between three chunks.
    assert_eq!(started.elapsed(), Duration::from_millis(1_500 + 2 * 700));
}

#[tokio::test(start_paused = true)]
async fn the_2026_free_tier_zero_quota_retired_models_other_tiers_and_foreign_files() {
    let mut config = SimConfig::new(["key-aaaa", "key-bbbb"])
        .with_limits(limits(FLASH, 10, 2_000, 20))
        .with_zero_quota("gemini-2.5-pro")
        .with_retired("gemini-2.0-flash");
    config.faults.omit_quota_value = true;
    config.key_limits = std::collections::BTreeMap::from([(2, limits(FLASH, 10, 100_000, 20))]);
    config.files = std::collections::BTreeMap::from([("mine".to_string(), 1)]);
    let sim = start_sim(config, quiet_noon()).await;
    let p = Probe::new(&sim);

    // Limit 0: every quota is violated, the limits are in the message only.
    let (s, v) = p
        .post(
            "/v1beta/models/gemini-2.5-pro:generateContent",
            Some("key-aaaa"),
            &request_of(10),
        )
        .await;
    assert_eq!(s, 429);
    let violations = detail(&v, "QuotaFailure")["violations"].as_array().unwrap();
    assert_eq!(violations.len(), 4);
    assert!(violations.iter().all(|v| v.get("quotaValue").is_none()));
    let message = v["error"]["message"].as_str().unwrap();
    assert_eq!(
        message.matches("limit: 0, model: gemini-2.5-pro").count(),
        4
    );
    assert_eq!(
        detail(&v, "RetryInfo")["retryDelay"],
        "0s",
        "a per-day quota is among them"
    );

    let (s, v) = p
        .post(
            "/v1beta/models/gemini-2.0-flash:generateContent",
            Some("key-aaaa"),
            &request_of(10),
        )
        .await;
    assert_eq!(s, 404);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no longer available to new users")
    );

    // Key 2 is on another tier: 3,000 tokens fit there, not on key 1.
    assert_eq!(p.generate("key-aaaa", 3_000).await.0, 429);
    assert_eq!(p.generate("key-bbbb", 3_000).await.0, 200);

    // A file belongs to the project that uploaded it.
    let with_file = |id: &str| json!({"contents": [{"parts": [{"fileData": {"fileUri": format!("https://generativelanguage.googleapis.com/v1beta/files/{id}"), "mimeType": "text/plain"}}, {"text": "read it"}]}]});
    let path = format!("/v1beta/models/{FLASH}:generateContent");
    assert_eq!(
        p.post(&path, Some("key-aaaa"), &with_file("mine")).await.0,
        200
    );
    let (s, v) = p.post(&path, Some("key-bbbb"), &with_file("mine")).await;
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    assert!(
        detail(&v, "ErrorInfo").is_null(),
        "nothing in it is about the key"
    );
    let stats = sim.stats();
    assert_eq!(stats.lane(2, FLASH).unwrap().foreign_file_403, 1);
    assert_eq!(stats.lane(1, "gemini-2.0-flash").unwrap().retired_404, 1);
}
