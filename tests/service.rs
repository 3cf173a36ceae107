//! The service end to end: simulator and gateway on ephemeral ports, on one
//! paused clock, so every wait is exact and a simulated hour takes a moment.

mod common;

use common::*;
use gemini_flux::policy::{Limits, UNLIMITED};
use gemini_flux::sim::{Faults, SimConfig};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const PRO: &str = "gemini-2.5-pro";
const FLASH: &str = "gemini-2.5-flash";

fn sim_with(keys: &[&str], limits: &[(&str, u32, u64, u32)]) -> SimConfig {
    let limits: BTreeMap<String, Limits> = limits
        .iter()
        .map(|&(m, rpm, tpm, rpd)| {
            let tpd = UNLIMITED;
            (
                m.to_string(),
                Limits {
                    rpm,
                    tpm,
                    rpd,
                    tpd,
                    otpm: gemini_flux::policy::UNLIMITED,
                },
            )
        })
        .collect();
    SimConfig::new(keys.iter().copied()).with_limits(limits)
}

fn limits_env(limits: &[(&str, u32, u64, u32)]) -> String {
    let map: serde_json::Map<String, Value> = limits
        .iter()
        .map(|&(m, rpm, tpm, rpd)| (m.to_string(), json!({"rpm": rpm, "tpm": tpm, "rpd": rpd})))
        .collect();
    Value::Object(map).to_string()
}

/// One key, flash only, on flash's free-tier limits, configured on both sides.
async fn one_flash_key() -> Stack {
    let limits = [(FLASH, 10, 250_000, 250)];
    let env = [
        ("FLUX_MODELS", FLASH),
        ("FLUX_LIMITS", &limits_env(&limits) as &str),
    ];
    Stack::start(sim_with(&["sim-key-aaaa"], &limits), quiet_noon(), &env).await
}

/// [`one_flash_key`] with 200k of its 250k tokens spent just now.
async fn busy_flash_key() -> Stack {
    let stack = one_flash_key().await;
    let (status, _, _) = stack.generate(json!({"prompt": prompt_of(200_000)})).await;
    assert_eq!(status, 200);
    stack
}

#[tokio::test(start_paused = true)]
async fn generate_answers_with_the_seed_fields() {
    let stack = Stack::start(
        SimConfig::new(["sim-key-aaaa", "sim-key-bbbb"]),
        quiet_noon(),
        &[],
    )
    .await;
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
    let (status, _, v) = stack
        .generate(json!({"prompt": prompt_of(100), "system": "abcd", "images": [png], "max_tokens": 50.0, "temperature": 0.2}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["response"], "ok:359",
        "100 + 1 (system) + 258 (the image as inlineData)"
    );
    assert_eq!(v["model_used"], PRO);
    assert_eq!(v["input_tokens"], 359);
    assert_eq!(v["output_tokens"], 2);
    assert_eq!(v["tokens_used"], 361);
    assert_eq!(v["wait_applied"], 0.0);
    assert_eq!(v["retried"], false);
    assert_eq!(v["key_used"], 1, "on idle keys, the tie goes to key 1");
    assert!(v["request_id"].as_str().unwrap().len() >= 8);
}

#[tokio::test(start_paused = true)]
async fn waits_are_exactly_what_the_token_window_forces() {
    let stack = one_flash_key().await;
    let requests = (0..6).map(|_| stack.generate(json!({"prompt": prompt_of(100_000)})));
    let answers = futures::future::join_all(requests).await;
    let mut waits: Vec<f64> = answers
        .iter()
        .map(|(s, _, v)| {
            assert_eq!(*s, 200, "{v}");
            v["wait_applied"].as_f64().unwrap()
        })
        .collect();
    waits.sort_by(f64::total_cmp);
    // Two 100k calls fit a 250k minute; each next pair waits for the window
    // (60 s) plus the guard (0.25 s).
    // The clock is paused: the waits are exact (to the millisecond the
    // answer reports).
    let expected = [0.0, 0.0, 60.25, 60.25, 120.5, 120.5];
    assert_eq!(waits, expected);
    let stats = stack.sim_stats();
    assert_eq!(stats.rejected_429, 0);
    assert_eq!(stats.lane(1, FLASH).unwrap().peak_tokens_60s, 200_000);
}

#[tokio::test(start_paused = true)]
async fn a_saturating_concurrent_load_never_draws_a_429() {
    let limits = [(PRO, 5, 250_000, 100), (FLASH, 10, 250_000, 250)];
    let env = [
        ("FLUX_MODELS", "gemini-2.5-pro,gemini-2.5-flash"),
        ("FLUX_LIMITS", &limits_env(&limits) as &str),
        ("FLUX_MAX_WAIT_S", "7200"),
    ];
    let keys = ["sim-key-0001", "sim-key-0002", "sim-key-0003"];
    let stack = Stack::start(sim_with(&keys, &limits), quiet_noon(), &env).await;
    let sizes = (0..300u64).map(|i| {
        if i % 7 == 0 {
            120_000
        } else {
            500 + (i * 7919) % 20_000
        }
    });
    let requests = sizes.map(|t| stack.generate(json!({"prompt": prompt_of(t)})));
    let answers = futures::future::join_all(requests).await;
    assert!(
        answers.iter().all(|(s, _, _)| *s == 200),
        "every request served"
    );
    let stats = stack.sim_stats();
    assert_eq!(stats.rejected_429, 0, "no 429 reached the upstream");
    assert_eq!(stats.calls, 300);
    for lane in &stats.lanes {
        let l = limits.iter().find(|x| x.0 == lane.model).unwrap();
        assert!(
            lane.stats.peak_requests_60s <= u64::from(l.1) && lane.stats.peak_tokens_60s <= l.2
        );
    }
    // Pro's day quota is 3 x 100 = 300, so pro serves everything, in order.
    assert!(answers.iter().all(|(_, _, v)| v["model_used"] == PRO));
}

#[tokio::test(start_paused = true)]
async fn the_chain_falls_to_flash_exactly_when_pro_rpd_is_spent() {
    let limits = [(PRO, 5, 250_000, 3), (FLASH, 10, 250_000, 250)];
    let env = [
        ("FLUX_MODELS", "gemini-2.5-pro,gemini-2.5-flash"),
        ("FLUX_LIMITS", &limits_env(&limits) as &str),
    ];
    let stack = Stack::start(
        sim_with(&["sim-key-0001", "sim-key-0002"], &limits),
        quiet_noon(),
        &env,
    )
    .await;
    let mut models = Vec::new();
    for _ in 0..8 {
        let (s, _, v) = stack.generate(json!({"prompt": "hello"})).await;
        assert_eq!(s, 200);
        models.push(v["model_used"].as_str().unwrap().to_string());
    }
    assert_eq!(models, [PRO, PRO, PRO, PRO, PRO, PRO, FLASH, FLASH]);
    assert_eq!(stack.sim_stats().rejected_429, 0);
    let (_, status) = stack.get("/status").await;
    assert_eq!(status["keys"][0]["models"][PRO]["requests_today"], 3);
}

#[tokio::test(start_paused = true)]
async fn disabled_and_invalid_keys_get_no_traffic() {
    let sim = sim_with(
        &["sim-key-0001", "sim-key-0002", "sim-key-0003"],
        &[(FLASH, 10, 250_000, 250)],
    );
    // Key 4 is unknown to the upstream: invalid at start-up.
    let keys = "sim-key-0001,sim-key-0002,sim-key-0003,not-a-real-key-9999";
    let stack = Stack::start_with_keys(sim, quiet_noon(), keys, &[("FLUX_MODELS", FLASH)]).await;
    let (_, status) = stack.get("/status").await;
    assert_eq!(status["keys"][3]["state"], "invalid");
    assert!(
        status["keys"][3]["reason"]
            .as_str()
            .unwrap()
            .contains("API key not valid")
    );

    let (s, v) = stack.post("/keys/2/disable", json!({})).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("disabled")));
    for _ in 0..30 {
        assert_eq!(stack.generate(json!({"prompt": "hi"})).await.0, 200);
    }
    let stats = stack.sim_stats();
    assert_eq!(
        stats.lane(1, FLASH).unwrap().calls + stats.lane(3, FLASH).unwrap().calls,
        30
    );
    assert!(
        stats.lane(2, FLASH).is_none(),
        "the disabled key was never used"
    );
    assert_eq!(stats.rejected_429, 0);

    assert_eq!(stack.post("/keys/2/enable", json!({})).await.0, 200);
    assert_eq!(stack.post("/keys/5/enable", json!({})).await.0, 404);
    assert_eq!(stack.post("/keys/zero/enable", json!({})).await.0, 404);
    assert_eq!(stack.post("/keys/1/explode", json!({})).await.0, 404);
}

#[tokio::test(start_paused = true)]
async fn a_key_revoked_mid_run_is_taken_out_and_the_request_replanned() {
    let sim = sim_with(
        &["sim-key-0001", "sim-key-0002"],
        &[(FLASH, 10, 250_000, 250)],
    );
    let stack = Stack::start(sim, quiet_noon(), &[("FLUX_MODELS", FLASH)]).await;
    stack.sim.revoke_key("sim-key-0001");
    let answers: Vec<Value> =
        futures::future::join_all((0..6).map(|_| stack.generate(json!({"prompt": "hi"}))))
            .await
            .into_iter()
            .map(|(s, _, v)| {
                assert_eq!(s, 200, "{v}");
                v
            })
            .collect();
    assert!(answers.iter().all(|v| v["key_used"] == 2));
    assert!(answers.iter().any(|v| v["retried"] == true));
    let (_, status) = stack.get("/status").await;
    assert_eq!(status["keys"][0]["state"], "invalid");
    assert_eq!(status["keys"][1]["state"], "healthy");
}

#[tokio::test(start_paused = true)]
async fn a_429_teaches_the_real_limit_and_the_request_is_retried() {
    // The service believes the built-in 250k TPM; this project only has 50k.
    let limits = [(FLASH, 10, 50_000, 250)];
    let stack = Stack::start(
        sim_with(&["sim-key-0001"], &limits),
        quiet_noon(),
        &[("FLUX_MODELS", FLASH)],
    )
    .await;
    let (s, _, first) = stack.generate(json!({"prompt": prompt_of(40_000)})).await;
    assert_eq!((s, first["retried"].as_bool()), (200, Some(false)));
    let (s, _, second) = stack.generate(json!({"prompt": prompt_of(40_000)})).await;
    assert_eq!(s, 200, "{second}");
    assert_eq!(second["retried"], true);
    // The retry waited for the first call to leave the window.
    assert!(second["wait_applied"].as_f64().unwrap() >= 59.0, "{second}");
    let (_, status) = stack.get("/status").await;
    assert_eq!(status["keys"][0]["models"][FLASH]["limits"]["tpm"], 50_000);
    assert_eq!(status["keys"][0]["models"][FLASH]["learned"]["tpm"], 50_000);
    // Having learned, the next ones draw no further 429.
    for _ in 0..3 {
        assert_eq!(
            stack.generate(json!({"prompt": prompt_of(40_000)})).await.0,
            200
        );
    }
    assert_eq!(stack.sim_stats().rejected_429, 1);
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_elsewhere() {
    let stack = Stack::start(
        SimConfig::new(["sim-key-0001", "sim-key-0002"]),
        quiet_noon(),
        &[("FLUX_MODELS", FLASH)],
    )
    .await;
    stack.sim.set_faults(Faults {
        unavailable_ratio: 0.3,
        bare_429_ratio: 0.1,
        ..Faults::default()
    });
    // One after another: the simulator's fault draws are seeded, so the run
    // is the same every time.
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(stack.generate(json!({"prompt": "hi"})).await);
    }
    assert!(answers.iter().all(|(s, _, _)| *s == 200), "{answers:?}");
    assert!(answers.iter().any(|(_, _, v)| v["retried"] == true));

    stack.sim.set_faults(Faults {
        unavailable_ratio: 1.0,
        ..Faults::default()
    });
    let (s, _, v) = stack.generate(json!({"prompt": "hi"})).await;
    assert_eq!(s, 502);
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("8 attempt(s)") && message.contains("503"),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slot_beyond_the_wait_ceiling_is_a_429_with_retry_after() {
    let stack = busy_flash_key().await;
    let (s, retry_after, v) = stack
        .generate(json!({"prompt": prompt_of(100_000), "max_wait_s": 10}))
        .await;
    assert_eq!(s, 429);
    assert_eq!(retry_after, Some(61), "60.25 s rounded up");
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    // Nothing was booked: a small request still goes at once.
    let (s, _, v) = stack
        .generate(json!({"prompt": "hi", "max_wait_s": 0}))
        .await;
    assert_eq!((s, v["wait_applied"].as_f64()), (200, Some(0.0)));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_while_waiting_releases_its_slot() {
    let stack = busy_flash_key().await;
    // This one must wait a minute; its client gives up after 5 s.
    let impatient = stack
        .http
        .post(stack.url("/generate"))
        .json(&json!({"prompt": prompt_of(100_000)}))
        .timeout(Duration::from_secs(5))
        .send();
    assert!(impatient.await.is_err());
    // The server learns of the closed connection from the socket; under the
    // paused clock a fixed sleep could pass before it does, so poll.
    let mut status = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        status = stack.get("/status").await.1;
        if status["queue"]["waiting"] == 0 {
            break;
        }
    }
    assert_eq!(status["queue"]["waiting"], 0, "{status}");
    assert_eq!(status["keys"][0]["models"][FLASH]["requests_today"], 1);
    assert_eq!(stack.sim_stats().calls, 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_every_model_is_413_with_the_numbers() {
    let stack = Stack::start(
        SimConfig::new(["sim-key-0001"]),
        quiet_noon(),
        &[("FLUX_MODELS", "gemini-2.5-pro,gemini-2.5-flash")],
    )
    .await;
    let (s, _, v) = stack.generate(json!({"prompt": prompt_of(300_000)})).await;
    assert_eq!(s, 413);
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("300000") && message.contains("gemini-2.5-pro: 250000"),
        "{message}"
    );
    assert_eq!(stack.sim_stats().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn the_mode_filters_the_chain_at_run_time() {
    let stack = Stack::start(SimConfig::new(["sim-key-0001"]), quiet_noon(), &[]).await;
    let (s, v) = stack.get("/mode").await;
    assert_eq!((s, v["mode"].as_str()), (200, Some("both")));
    let (s, v) = stack
        .post("/mode", json!({"mode": "flash_lite_only"}))
        .await;
    assert_eq!((s, v["mode"].as_str()), (200, Some("flash_lite_only")));
    assert_eq!(
        v["models"],
        json!(["gemini-2.5-flash-lite", "gemini-3.1-flash-lite-preview"])
    );
    let (_, _, v) = stack.generate(json!({"prompt": "hi"})).await;
    assert_eq!(v["model_used"], "gemini-2.5-flash-lite");
    let (_, _, v) = stack
        .generate(json!({"prompt": "hi", "mode": "pro_only"}))
        .await;
    assert_eq!(v["model_used"], PRO);
    let (_, _, v) = stack
        .generate(json!({"prompt": "hi", "model": FLASH}))
        .await;
    assert_eq!(v["model_used"], FLASH);
    assert_eq!(stack.post("/mode", json!({"mode": "fastest"})).await.0, 400);
}

#[tokio::test(start_paused = true)]
async fn bad_input_gets_a_clear_error_and_touches_no_key() {
    let stack = Stack::start(
        SimConfig::new(["sim-key-0001", "sim-key-0002"]),
        quiet_noon(),
        &[("FLUX_MAX_BODY_MB", "1")],
    )
    .await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"prompt": ""}), 400, "prompt is empty"),
        (json!({"prompt": "   "}), 400, "prompt is empty"),
        (json!({}), 400, "prompt"),
        (json!({"prompt": 12}), 400, "invalid type"),
        (
            json!({"prompt": "hi", "mode": "turbo"}),
            400,
            "unknown mode",
        ),
        (
            json!({"prompt": "hi", "model": "gemini-0-nano"}),
            400,
            "not in the chain",
        ),
        (
            json!({"prompt": "hi", "max_tokens": -5}),
            400,
            "non-negative whole number",
        ),
        (
            json!({"prompt": "hi", "max_tokens": 2.5}),
            400,
            "non-negative whole number",
        ),
        (
            json!({"prompt": "hi", "max_tokens": 1e12}),
            400,
            "out of range",
        ),
        (json!({"prompt": "hi", "max_tokens": 0}), 400, "max_tokens"),
        (
            json!({"prompt": "hi", "temperature": 7}),
            400,
            "temperature",
        ),
        (json!({"prompt": "hi", "max_wait_s": -1}), 400, "max_wait_s"),
        (
            json!({"prompt": "hi", "preferred_key": 9}),
            400,
            "preferred_key 9",
        ),
        (
            json!({"prompt": "hi", "images": ["%%%not base64"]}),
            400,
            "base64",
        ),
        (
            json!({"prompt": "hi", "images": "one"}),
            400,
            "invalid type",
        ),
        (json!([1, 2]), 400, "must be a JSON object"),
    ];
    for (body, status, needle) in cases {
        let (s, _, v) = stack.generate(body.clone()).await;
        assert_eq!(s, status, "{body} -> {v}");
        assert_eq!(v["error"]["code"], status);
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{body} -> {v}"
        );
    }
    let raw = |body: &'static str| {
        stack
            .http
            .post(stack.url("/generate"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let resp = raw("{\"prompt\": ").await.unwrap();
    assert_eq!(resp.status(), 400);
    let resp = raw("").await.unwrap();
    assert_eq!(resp.status(), 400);
    let huge = json!({"prompt": "x".repeat(2 * 1024 * 1024)});
    let (s, _, v) = stack.generate(huge).await;
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (413, Some("INVALID_ARGUMENT"))
    );
    assert_eq!(stack.get("/nowhere").await.0, 404);
    let resp = stack
        .http
        .delete(stack.url("/generate"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);

    // No key was taken out, no quota spent.
    assert!(stack.every_key_healthy().await);
    assert_eq!(stack.sim_stats().calls, 0);
    assert_eq!(stack.get("/readyz").await.0, 200);
    assert_eq!(stack.get("/healthz").await.0, 200);
}

#[tokio::test(start_paused = true)]
async fn readyz_fails_when_no_key_is_usable() {
    let stack = Stack::start(SimConfig::new(["sim-key-0001"]), quiet_noon(), &[]).await;
    stack.post("/keys/1/disable", json!({})).await;
    let (s, v) = stack.get("/readyz").await;
    assert_eq!((s, v["usable_keys"].as_u64()), (503, Some(0)));
    let (s, retry, _) = stack.generate(json!({"prompt": "hi"})).await;
    assert_eq!((s, retry), (503, Some(60)));
}

#[tokio::test(start_paused = true)]
async fn when_every_day_is_spent_the_answer_is_429_until_pacific_midnight() {
    // 23:00 Pacific (PDT): midnight is an hour away.
    let limits = [(FLASH, 10, 250_000, 2)];
    let env = [
        ("FLUX_MODELS", FLASH),
        ("FLUX_LIMITS", &limits_env(&limits) as &str),
    ];
    let stack = Stack::start(
        sim_with(&["sim-key-0001"], &limits),
        at("2026-06-11T06:00:00Z"),
        &env,
    )
    .await;
    assert_eq!(stack.generate(json!({"prompt": "a"})).await.0, 200);
    assert_eq!(stack.generate(json!({"prompt": "b"})).await.0, 200);
    let (s, retry_after, v) = stack.generate(json!({"prompt": "c"})).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(retry_after, Some(3600));
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(stack.generate(json!({"prompt": "d"})).await.0, 200);
    assert_eq!(stack.sim_stats().rejected_429, 0);
}
