//! The free tier as it has been since December 2025, end to end against the
//! simulator: models with limit 0, retired models, per-day input-token
//! quotas, 403s that are about a file rather than the key, learning that
//! spreads over a tier of keys, and keys of different tiers.

mod common;

use common::*;
use gemini_flux::policy::{Family, Limits, UNLIMITED};
use gemini_flux::sim::SimConfig;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const PRO: &str = "gemini-2.5-pro";
const RETIRED: &str = "gemini-2.0-flash";
const FLASH: &str = "gemini-2.5-flash";
const LITE: &str = "gemini-2.5-flash-lite";

fn keys(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("sim-key-{i:04}")).collect()
}

fn lane(rpm: u32, tpm: u64, rpd: u32, tpd: u64) -> Limits {
    Limits {
        tpd,
        ..Limits::new(rpm, tpm, rpd)
    }
}

/// `n` `/generate` calls of `tokens` each, all at once: every answer.
async fn burst(stack: &Stack, n: usize, tokens: u64) -> Vec<(u16, Value)> {
    let calls = (0..n).map(|_| stack.generate(json!({"prompt": prompt_of(tokens)})));
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|(status, _, body)| (status, body))
        .collect()
}

fn served_on(answers: &[(u16, Value)], model: &str) -> usize {
    answers
        .iter()
        .filter(|(s, v)| *s == 200 && v["model_used"] == model)
        .count()
}

#[tokio::test(start_paused = true)]
async fn the_whole_2026_chain_with_nothing_configured_serves_every_request() {
    let mut config = SimConfig::new(keys(3))
        .with_limits(BTreeMap::from([
            (FLASH.to_string(), lane(100, 250_000, 20, UNLIMITED)),
            (LITE.to_string(), Family::FlashLite.builtin_limits()),
        ]))
        .with_zero_quota(PRO)
        .with_retired(RETIRED);
    config.faults.omit_quota_value = true;
    let chain = [PRO, RETIRED, FLASH, LITE].join(",");
    let stack = Stack::start(config, quiet_noon(), &[("FLUX_MODELS", &chain)]).await;

    let mut answers = burst(&stack, 1, 100).await;
    for _ in 0..79 / 10 + 1 {
        let left = 80 - answers.len();
        answers.extend(burst(&stack, left.min(10), 100).await);
    }
    assert_eq!(answers.len(), 80);
    let failed: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(served_on(&answers, FLASH), 60, "20 a day on each of 3 keys");
    assert_eq!(served_on(&answers, LITE), 20);

    let stats = stack.sim_stats();
    let sum = |model: &str, of: fn(&gemini_flux::sim::LaneStats) -> u64| -> u64 {
        (1..=3).filter_map(|k| stats.lane(k, model)).map(of).sum()
    };
    assert!(sum(PRO, |l| l.rejected_429) <= 1, "pro: {stats:?}");
    assert!(sum(RETIRED, |l| l.retired_404) <= 1, "retired: {stats:?}");
    for k in 1..=3 {
        let flash = stats.lane(k, FLASH).unwrap();
        assert!(flash.rejected_rpd <= 1, "key {k}: {flash:?}");
    }
    // /status says why: pro has no quota (learned), 2.0-flash is retired.
    let (_, status) = stack.get("/status").await;
    assert_eq!(status["retired"][0]["model"], RETIRED);
    assert!(
        !status["chain"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == RETIRED)
    );
    for k in 0..3 {
        let pro = &status["keys"][k]["models"][PRO];
        let limits = &pro["limits"];
        assert_eq!(
            (limits["rpd"].as_u64(), limits["sources"]["rpd"].as_str()),
            (Some(0), Some("learned"))
        );
        assert_eq!(
            pro["learned_at"], "2026-06-10T19:00:00.000Z",
            "when it was learned"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_file_the_key_cannot_read_is_the_clients_403_and_harms_no_key() {
    let stack = Stack::start(
        SimConfig::new(keys(2)),
        quiet_noon(),
        &[("FLUX_MODELS", FLASH)],
    )
    .await;
    let body = json!({"contents": [{"role": "user", "parts": [
        {"fileData": {"fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc123", "mimeType": "video/mp4"}},
        {"text": "Summarise this video."}]}]});
    let (status, answer) = stack
        .post(&format!("/v1beta/models/{FLASH}:generateContent"), body)
        .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"]["status"], "PERMISSION_DENIED");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("permission to access the File abc123")
    );
    let (status, _) = stack.get("/readyz").await;
    assert_eq!(status, 200);
    let (_, status) = stack.get("/status").await;
    for key in status["keys"].as_array().unwrap() {
        assert_eq!(key["state"], "healthy", "{key}");
    }
    let foreign: u64 = stack
        .sim_stats()
        .lanes
        .iter()
        .map(|l| l.stats.foreign_file_403)
        .sum();
    // The free countTokens, then the one generate: not one per key.
    assert_eq!(foreign, 2);
    let (status, _, _) = stack.generate(json!({"prompt": "still served"})).await;
    assert_eq!(status, 200);
}

#[tokio::test(start_paused = true)]
async fn a_limit_learned_on_one_key_holds_at_once_for_its_tier() {
    // True TPM admits 4 requests of 10k per key; the service believes 250k.
    let config = SimConfig::new(keys(2)).with_limits(BTreeMap::from([(
        FLASH.to_string(),
        lane(10, 40_000, 250, UNLIMITED),
    )]));
    let stack = Stack::start(config, quiet_noon(), &[("FLUX_MODELS", FLASH)]).await;
    let answers = burst(&stack, 12, 10_000).await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    let stats = stack.sim_stats();
    // Eight fit at once; the four sent beyond them are the unavoidable 429s.
    assert!(stats.rejected_429 <= 4, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn a_paid_key_beside_a_free_one_takes_what_the_free_one_cannot() {
    let mut config = SimConfig::new(keys(2)).with_limits(BTreeMap::from([(
        FLASH.to_string(),
        lane(10, 4_000, 20, UNLIMITED),
    )]));
    config.key_limits = BTreeMap::from([(
        2,
        BTreeMap::from([(FLASH.to_string(), lane(1_000, 100_000, 10_000, UNLIMITED))]),
    )]);
    let paid = json!({"2": {FLASH: {"rpm": 1000, "tpm": 100_000, "rpd": 10_000}}}).to_string();
    let free = json!({FLASH: {"tpm": 4_000}}).to_string();
    let stack = Stack::start(
        config,
        quiet_noon(),
        &[
            ("FLUX_MODELS", FLASH),
            ("FLUX_LIMITS", &free),
            ("FLUX_KEY_LIMITS", &paid),
        ],
    )
    .await;
    let started = tokio::time::Instant::now();
    let answers = burst(&stack, 20, 1_000).await;
    let took = started.elapsed();
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let on = |k: u64| answers.iter().filter(|(_, v)| v["key_used"] == k).count();
    assert_eq!((on(1), on(2)), (4, 16));
    assert_eq!(stack.sim_stats().rejected_429, 0);
    let (_, status) = stack.get("/status").await;
    let tpm = &status["keys"][1]["models"][FLASH]["limits"];
    assert_eq!(
        (tpm["tpm"].as_u64(), tpm["sources"]["tpm"].as_str()),
        (Some(100_000), Some("key"))
    );
}

#[tokio::test(start_paused = true)]
async fn input_tokens_per_day_move_the_chain_down_with_no_429() {
    let config = SimConfig::new(keys(1)).with_limits(BTreeMap::from([
        (FLASH.to_string(), lane(10, 250_000, 20, 5_000)),
        (LITE.to_string(), Family::FlashLite.builtin_limits()),
    ]));
    let tpd = json!({FLASH: {"tpd": 5_000}}).to_string();
    let chain = [FLASH, LITE].join(",");
    let stack = Stack::start(
        config,
        quiet_noon(),
        &[("FLUX_MODELS", &chain), ("FLUX_LIMITS", &tpd)],
    )
    .await;
    let mut models = Vec::new();
    for _ in 0..8 {
        let (status, _, v) = stack.generate(json!({"prompt": prompt_of(1_000)})).await;
        assert_eq!(status, 200, "{v}");
        models.push(v["model_used"].as_str().unwrap().to_string());
    }
    assert_eq!(models.iter().filter(|m| *m == FLASH).count(), 5);
    assert_eq!(models.iter().filter(|m| *m == LITE).count(), 3);
    assert_eq!(stack.sim_stats().rejected_429, 0);
    let (_, status) = stack.get("/status").await;
    let flash = &status["keys"][0]["models"][FLASH];
    assert_eq!(flash["limits"]["tpd"], 5_000);
    assert_eq!(flash["limits"]["sources"]["tpd"], "env");
    assert_eq!(flash["tokens_today"], 5_000);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_tpd_is_learned_from_its_first_429() {
    let config = SimConfig::new(keys(1)).with_limits(BTreeMap::from([(
        FLASH.to_string(),
        lane(10, 250_000, 20, 3_000),
    )]));
    let stack = Stack::start(config, quiet_noon(), &[("FLUX_MODELS", FLASH)]).await;
    for _ in 0..3 {
        let (status, _, _) = stack.generate(json!({"prompt": prompt_of(1_000)})).await;
        assert_eq!(status, 200);
    }
    let (status, retry_after, v) = stack.generate(json!({"prompt": prompt_of(1_000)})).await;
    assert_eq!(status, 429, "{v}");
    let until_midnight = quiet_noon().next_pacific_midnight().since(quiet_noon());
    assert!(
        retry_after.unwrap() + 5 >= until_midnight.as_secs(),
        "{retry_after:?}"
    );
    let (_, status) = stack.get("/status").await;
    let flash = &status["keys"][0]["models"][FLASH];
    assert_eq!(
        (
            flash["limits"]["tpd"].as_u64(),
            flash["exhausted_today"].as_bool()
        ),
        (Some(3_000), Some(true))
    );
    let stats = stack.sim_stats();
    assert_eq!(stats.lane(1, FLASH).unwrap().rejected_tpd, 1, "{stats:?}");
}

/// An output-token quota set for a model holds each call's `maxOutputTokens`
/// from its booking until its answer says what it spent. With 1,000 a
/// minute: calls of at most 400 one after the other all go at once (each
/// settles to the few tokens it spent); three planned together, two go at
/// once and the third is booked after the window (a grant never moves).
#[tokio::test(start_paused = true)]
async fn an_output_token_quota_reserves_each_calls_most_output() {
    let config = SimConfig::new(keys(1)).with_limits(BTreeMap::from([(
        FLASH.to_string(),
        lane(100, 250_000, 1_000, UNLIMITED),
    )]));
    let otpm = json!({FLASH: {"otpm": 1_000}}).to_string();
    let stack = Stack::start(
        config,
        quiet_noon(),
        &[("FLUX_MODELS", FLASH), ("FLUX_LIMITS", &otpm)],
    )
    .await;
    let ask = || stack.generate(json!({"prompt": prompt_of(100), "max_tokens": 400}));
    let wait = |(status, _, v): (u16, Option<u64>, Value)| {
        assert_eq!(status, 200, "{v}");
        v["wait_applied"].as_f64().unwrap()
    };
    for _ in 0..3 {
        assert_eq!(wait(ask().await), 0.0);
    }
    let (a, b, c) = tokio::join!(ask(), ask(), ask());
    let mut waits = [wait(a), wait(b), wait(c)];
    waits.sort_by(f64::total_cmp);
    assert_eq!(waits, [0.0, 0.0, 60.25]);
    assert_eq!(stack.sim_stats().rejected_429, 0);
    let (_, status) = stack.get("/status").await;
    let flash = &status["keys"][0]["models"][FLASH];
    assert_eq!(flash["limits"]["otpm"], 1_000);
    assert_eq!(flash["limits"]["sources"]["otpm"], "env");
}
