//! The OpenAI-compatible and Anthropic simulators, probed over HTTP as a
//! client of the real providers would: the exact `retry-after` of each
//! refusal, the rate-limit headers after a number of calls, the UTC-midnight
//! reset, an output-token reservation refused and then admitted once the
//! call holding it has settled, each provider's 401, and Anthropic's stream.

mod common;

use common::*;
use gemini_flux::clock::{Clock, Timestamp};
use gemini_flux::policy::{Limits, UNLIMITED};
use gemini_flux::sim::{Faults, ProviderConfig, ProviderKind, ProviderSim};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const MODEL: &str = "sim-model";
const KEY: &str = "sim-key-1";

fn one_model(limits: Limits) -> BTreeMap<String, Limits> {
    BTreeMap::from([(MODEL.to_string(), limits)])
}

const OPEN: Limits = Limits {
    rpm: 1_000,
    tpm: UNLIMITED,
    rpd: 1_000_000,
    tpd: UNLIMITED,
    otpm: UNLIMITED,
};

async fn start(kind: ProviderKind, limits: Limits, wall: Timestamp, faults: Faults) -> ProviderSim {
    let mut config = ProviderConfig::new(kind, [KEY, "sim-key-2"]).with_models(one_model(limits));
    config.faults = faults;
    ProviderSim::start(
        config,
        Clock::starting_at(wall),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("provider simulator starts")
}

/// A message of exactly `tokens` input tokens (four characters each).
fn text_of(tokens: u64) -> String {
    "x".repeat(tokens as usize * 4)
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }
}

async fn read(response: reqwest::Response) -> Answer {
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.json().await.unwrap_or(Value::Null),
    }
}

async fn openai_chat(sim: &ProviderSim, key: &str, body: Value) -> Answer {
    let response = client()
        .post(format!("{}/v1/chat/completions", sim.base_url()))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    read(response).await
}

fn chat_of(tokens: u64) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": text_of(tokens)}]})
}

fn anthropic_request(sim: &ProviderSim, key: &str, body: &Value) -> reqwest::RequestBuilder {
    client()
        .post(format!("{}/v1/messages", sim.base_url()))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(body)
}

fn message_of(tokens: u64, max_tokens: u64, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": text_of(tokens)}],
    })
}

#[tokio::test(start_paused = true)]
async fn an_rpm_refusal_says_the_true_wait_and_the_call_fits_then() {
    let sim = start(
        ProviderKind::OpenAiCompatible,
        Limits { rpm: 2, ..OPEN },
        quiet_noon(),
        Faults::default(),
    )
    .await;
    assert_eq!(openai_chat(&sim, KEY, chat_of(10)).await.status, 200);
    tokio::time::advance(Duration::from_millis(10_500)).await;
    assert_eq!(openai_chat(&sim, KEY, chat_of(10)).await.status, 200);
    tokio::time::advance(Duration::from_millis(5_000)).await;

    // The first call leaves the minute 44.5 s from now.
    let refused = openai_chat(&sim, KEY, chat_of(10)).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), "45");
    assert_eq!(
        refused.body,
        json!({"error": {
            "message": "Rate limit reached for model `sim-model` in organization `org_sim` service tier `on_demand` on requests per minute (RPM): Limit 2, Used 2, Requested 1. Please try again in 44.5s. Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing",
            "type": "requests",
            "code": "rate_limit_exceeded",
        }})
    );
    // Another key's lane is its own.
    assert_eq!(
        openai_chat(&sim, "sim-key-2", chat_of(10)).await.status,
        200
    );
    tokio::time::advance(Duration::from_millis(44_499)).await;
    assert_eq!(openai_chat(&sim, KEY, chat_of(10)).await.status, 429);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(openai_chat(&sim, KEY, chat_of(10)).await.status, 200);

    let stats = sim.stats();
    let lane = stats.lane(1, MODEL).unwrap();
    assert_eq!(
        (
            lane.calls,
            lane.rejected_429,
            lane.rejected_rpm,
            lane.peak_requests_60s
        ),
        (3, 2, 2, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn openai_headers_count_down_the_day_and_the_minute() {
    let limits = Limits {
        rpd: 10,
        tpm: 1_000,
        ..OPEN
    };
    // 12:00 UTC: twelve hours to the UTC midnight.
    let sim = start(
        ProviderKind::OpenAiCompatible,
        limits,
        at("2026-06-10T12:00:00Z"),
        Faults::default(),
    )
    .await;
    let mut last = None;
    for _ in 0..3 {
        let answer = openai_chat(&sim, KEY, chat_of(100)).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body["usage"]["prompt_tokens"], 100);
        last = Some(answer);
        tokio::time::advance(Duration::from_millis(2_340)).await;
    }
    let last = last.unwrap();
    // Three calls 2.34 s apart: the last answered at 12:00:04.68.
    assert_eq!(last.header("x-ratelimit-limit-requests"), "10");
    assert_eq!(last.header("x-ratelimit-remaining-requests"), "7");
    assert_eq!(last.header("x-ratelimit-reset-requests"), "11h59m55.32s");
    assert_eq!(last.header("x-ratelimit-limit-tokens"), "1000");
    assert_eq!(last.header("x-ratelimit-remaining-tokens"), "700");
    assert_eq!(last.header("x-ratelimit-reset-tokens"), "1m0s");

    // A refusal carries them too, unchanged by it.
    let refused = openai_chat(&sim, KEY, chat_of(800)).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.body["error"]["type"], "tokens");
    assert_eq!(refused.header("x-ratelimit-remaining-tokens"), "700");
    assert_eq!(refused.header("x-ratelimit-remaining-requests"), "7");
    assert_eq!(refused.header("x-ratelimit-reset-tokens"), "57.66s");
}

#[tokio::test(start_paused = true)]
async fn requests_per_day_reset_at_utc_midnight() {
    let sim = start(
        ProviderKind::OpenAiCompatible,
        Limits { rpd: 1, ..OPEN },
        at("2026-07-01T23:59:59Z"),
        Faults::default(),
    )
    .await;
    assert_eq!(openai_chat(&sim, KEY, chat_of(1)).await.status, 200);
    let refused = openai_chat(&sim, KEY, chat_of(1)).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), "1");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(
            "on requests per day (RPD): Limit 1, Used 1, Requested 1. Please try again in 1s."
        ),
        "{message}"
    );
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_eq!(openai_chat(&sim, KEY, chat_of(1)).await.status, 429);
    tokio::time::advance(Duration::from_millis(1)).await;
    let next_day = openai_chat(&sim, KEY, chat_of(1)).await;
    assert_eq!(next_day.status, 200);
    assert_eq!(next_day.header("x-ratelimit-remaining-requests"), "0");
    assert_eq!(next_day.header("x-ratelimit-reset-requests"), "24h0m0s");
}

#[tokio::test(start_paused = true)]
async fn an_output_reservation_is_refused_until_the_call_holding_it_settles() {
    let limits = Limits {
        otpm: 2_000,
        ..OPEN
    };
    let faults = Faults {
        stream_chunk_delay_ms: 5_000,
        ..Faults::default()
    };
    let sim = start(ProviderKind::Anthropic, limits, quiet_noon(), faults).await;

    // A stream reserves its 1,500 output tokens while it runs.
    let mut held = anthropic_request(&sim, KEY, &message_of(10, 1_500, true))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 200);
    assert_eq!(
        held.headers()["anthropic-ratelimit-output-tokens-remaining"],
        "500"
    );
    assert!(held.chunk().await.unwrap().is_some());

    let refused = read(
        anthropic_request(&sim, KEY, &message_of(10, 1_000, false))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), "60");
    assert_eq!(refused.body["type"], "error");
    assert_eq!(refused.body["error"]["type"], "rate_limit_error");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("This request would exceed the rate limit for your organization (org_sim) of 2,000 output tokens per minute."),
        "{message}"
    );
    assert_eq!(
        refused.header("anthropic-ratelimit-output-tokens-remaining"),
        "500"
    );

    // The stream ends having said "ok:10" (2 tokens): only those stay.
    while held.chunk().await.unwrap().is_some() {}
    let admitted = read(
        anthropic_request(&sim, KEY, &message_of(10, 1_000, false))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(admitted.status, 200);
    assert_eq!(admitted.body["usage"]["output_tokens"], 2);
    assert_eq!(
        admitted.header("anthropic-ratelimit-output-tokens-remaining"),
        "1996"
    );
    let stats = sim.stats();
    let lane = stats.lane(1, MODEL).unwrap();
    assert_eq!(
        (
            lane.calls,
            lane.output_tokens,
            lane.rejected_otpm,
            lane.peak_output_tokens_60s
        ),
        (2, 4, 1, 1_500)
    );
}

#[tokio::test(start_paused = true)]
async fn anthropic_headers_and_rpm_retry_after() {
    let limits = Limits {
        rpm: 3,
        tpm: 50_000,
        otpm: 10_000,
        ..OPEN
    };
    let sim = start(
        ProviderKind::Anthropic,
        limits,
        at("2026-06-10T12:00:00Z"),
        Faults::default(),
    )
    .await;
    for _ in 0..3 {
        let answer = read(
            anthropic_request(&sim, KEY, &message_of(250, 100, false))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(answer.status, 200);
        tokio::time::advance(Duration::from_millis(1_200)).await;
    }
    // Three calls at 12:00:00, :01.2 and :02.4, now 12:00:03.6.
    let refused = read(
        anthropic_request(&sim, KEY, &message_of(250, 100, false))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), "57");
    assert!(refused.header("request-id").starts_with("req_sim_"));
    let expected = [
        ("anthropic-ratelimit-requests-limit", "3"),
        ("anthropic-ratelimit-requests-remaining", "0"),
        ("anthropic-ratelimit-requests-reset", "2026-06-10T12:01:03Z"),
        ("anthropic-ratelimit-input-tokens-limit", "50000"),
        ("anthropic-ratelimit-input-tokens-remaining", "49250"),
        ("anthropic-ratelimit-output-tokens-limit", "10000"),
        // Each said "ok:250" (2 tokens), settled from the 100 reserved.
        ("anthropic-ratelimit-output-tokens-remaining", "9994"),
    ];
    for (name, value) in expected {
        assert_eq!(refused.header(name), value, "{name}");
    }
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("of 3 requests per minute."), "{message}");
}

#[tokio::test(start_paused = true)]
async fn a_bad_key_is_refused_in_each_providers_envelope() {
    let openai = start(
        ProviderKind::OpenAiCompatible,
        OPEN,
        quiet_noon(),
        Faults::default(),
    )
    .await;
    let refused = openai_chat(&openai, "not-a-key", chat_of(1)).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.body,
        json!({"error": {"message": "Invalid API Key", "type": "invalid_request_error", "code": "invalid_api_key"}})
    );
    assert!(refused.headers.get("x-ratelimit-limit-requests").is_none());

    let anthropic = start(
        ProviderKind::Anthropic,
        OPEN,
        quiet_noon(),
        Faults::default(),
    )
    .await;
    let refused = read(
        anthropic_request(&anthropic, "not-a-key", &message_of(1, 10, false))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.body,
        json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
    );
    // Neither counted anything.
    assert_eq!(openai.stats().calls + anthropic.stats().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn anthropic_refuses_a_request_without_version_or_max_tokens() {
    let sim = start(
        ProviderKind::Anthropic,
        OPEN,
        quiet_noon(),
        Faults::default(),
    )
    .await;
    let unversioned = read(
        client()
            .post(format!("{}/v1/messages", sim.base_url()))
            .header("x-api-key", KEY)
            .json(&message_of(1, 10, false))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(unversioned.status, 400);
    assert_eq!(
        unversioned.body["error"],
        json!({"type": "invalid_request_error", "message": "anthropic-version: header is required"})
    );
    let mut body = message_of(1, 10, false);
    body.as_object_mut().unwrap().remove("max_tokens");
    let unbounded = read(anthropic_request(&sim, KEY, &body).send().await.unwrap()).await;
    assert_eq!(unbounded.status, 400);
    assert_eq!(
        unbounded.body["error"],
        json!({"type": "invalid_request_error", "message": "max_tokens: Field required"})
    );
    assert_eq!(sim.stats().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn an_anthropic_stream_sends_the_real_events_with_usage() {
    let sim = start(
        ProviderKind::Anthropic,
        OPEN,
        quiet_noon(),
        Faults::default(),
    )
    .await;
    let response = anthropic_request(&sim, KEY, &message_of(1_234, 500, true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_string();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str());
            (name, data)
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert_eq!(events[0].1["message"]["usage"]["input_tokens"], 1_234);
    let said: String = events
        .iter()
        .filter_map(|(_, e)| e["delta"]["text"].as_str())
        .collect();
    assert_eq!(said, "ok:1234");
    assert_eq!(events[7].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[7].1["usage"]["output_tokens"], 2);
}

#[tokio::test(start_paused = true)]
async fn an_openai_stream_ends_with_usage_when_asked() {
    let sim = start(
        ProviderKind::OpenAiCompatible,
        OPEN,
        quiet_noon(),
        Faults::default(),
    )
    .await;
    let mut body = chat_of(40);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = client()
        .post(format!("{}/v1/chat/completions", sim.base_url()))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let lines: Vec<&str> = text
        .split("\n\n")
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_prefix("data: ").unwrap())
        .collect();
    assert_eq!(lines.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = lines[..lines.len() - 1]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let said: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(said, "ok:40");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42})
    );
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c.get("usage") == Some(&Value::Null))
    );
}
