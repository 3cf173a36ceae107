//! Nothing lost: what a run spent survives a restart, a failing disk does not
//! stop the service, and a stopping service drains as promised.

mod common;

use common::*;
use gemini_flux::clock::{Clock, Timestamp};
use gemini_flux::config::Settings;
use gemini_flux::service;
use gemini_flux::sim::{SimConfig, SimServer};
use gemini_flux::store::{Record, Recovered, Store, StoreError};
use serde_json::json;
use std::time::Duration;

const FLASH: &str = "gemini-2.5-flash";

/// One key, flash only: 10 RPM, 100k TPM, 5 a day.
fn flash_settings(sim: &SimServer, state: &std::path::Path, extra: &[(&str, &str)]) -> Settings {
    let limits = json!({FLASH: {"rpm": 10, "tpm": 100_000, "rpd": 5}}).to_string();
    let base = [
        ("FLUX_MODELS", FLASH),
        ("FLUX_LIMITS", limits.as_str()),
        ("FLUX_POLICY_FETCH", "false"),
    ];
    settings(
        &sim.base_url(),
        "sim-key-0001",
        state,
        &[&base[..], extra].concat(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_restart_remembers_the_window_the_day_and_the_operators_choices() {
    let clock = Clock::starting_at(quiet_noon());
    let sim = SimServer::start(
        SimConfig::new(["sim-key-0001"]).with_limits(limits(FLASH, 10, 100_000, 5)),
        clock,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let state = fresh_state_path();
    let http = client();

    let first = service::start(flash_settings(&sim, &state, &[]), clock)
        .await
        .unwrap();
    let base = first.base_url();
    for _ in 0..3 {
        assert_eq!(
            generate_at(&http, &base, json!({"prompt": prompt_of(30_000)}))
                .await
                .0,
            200
        );
    }
    http.post(format!("{base}/mode"))
        .json(&json!({"mode": "flash_only"}))
        .send()
        .await
        .unwrap();
    first.stop().await.unwrap();

    tokio::time::advance(Duration::from_secs(10)).await;
    let second = service::start(flash_settings(&sim, &state, &[]), clock)
        .await
        .unwrap();
    let base = second.base_url();
    let status = get_json(&http, &format!("{base}/status")).await;
    let lane = &status["keys"][0]["models"][FLASH];
    assert_eq!(lane["requests_today"], 3, "{status}");
    assert_eq!(lane["tokens_last_60s"], 90_000);
    assert_eq!(status["mode"], "flash_only");
    // 90k of 100k were spent 10 s ago: 20k more must wait for the window.
    let (s, retry, _) = generate_at(
        &http,
        &base,
        json!({"prompt": prompt_of(20_000), "max_wait_s": 5}),
    )
    .await;
    assert_eq!(
        (s, retry),
        (429, Some(51)),
        "60.25 s after the first call, rounded up"
    );
    // Two more today, then the day (5) is spent.
    tokio::time::advance(Duration::from_secs(61)).await;
    for _ in 0..2 {
        assert_eq!(
            generate_at(&http, &base, json!({"prompt": "hi"})).await.0,
            200
        );
    }
    assert_eq!(
        generate_at(&http, &base, json!({"prompt": "hi"})).await.0,
        429
    );
    assert_eq!(
        sim.stats().rejected_429,
        0,
        "the upstream never saw a request over quota"
    );
    second.stop().await.unwrap();
}

/// A store whose every write fails, as on a full disk.
struct FullDisk;

impl Store for FullDisk {
    fn recover(&mut self, _: Timestamp, _: Duration) -> Result<Recovered, StoreError> {
        Ok(Recovered::default())
    }
    fn apply(&mut self, _: &[Record]) -> Result<(), StoreError> {
        Err(StoreError::Write("database or disk is full".into()))
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_is_reported_and_scheduling_goes_on() {
    let clock = Clock::starting_at(quiet_noon());
    let sim = SimServer::start(
        SimConfig::new(["sim-key-0001"]),
        clock,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let svc = service::start_with_store(
        flash_settings(&sim, &fresh_state_path(), &[]),
        clock,
        FullDisk,
    )
    .await
    .unwrap();
    let http = client();
    assert_eq!(
        generate_at(&http, &svc.base_url(), json!({"prompt": "hi"}))
            .await
            .0,
        200
    );
    let resp = http
        .get(format!("{}/readyz", svc.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        503,
        "not ready: a restart now would forget the calls"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["state_store"]["ok"], false);
    assert!(
        body["state_store"]["error"]
            .as_str()
            .unwrap()
            .contains("disk is full")
    );
    assert_eq!(
        generate_at(&http, &svc.base_url(), json!({"prompt": "again"}))
            .await
            .0,
        200
    );
}

#[tokio::test(start_paused = true)]
async fn stopping_serves_slots_within_the_drain_window_and_refuses_the_rest() {
    let clock = Clock::starting_at(quiet_noon());
    let sim = SimServer::start(
        SimConfig::new(["sim-key-0001"]).with_limits(limits(FLASH, 1, 1_000_000, 100)),
        clock,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    // One request a minute: the second waits 60 s, the third 120 s.
    let svc = service::start(
        flash_settings(
            &sim,
            &fresh_state_path(),
            &[
                ("FLUX_LIMITS", &json!({FLASH: {"rpm": 1}}).to_string()),
                ("FLUX_DRAIN_S", "90"),
            ],
        ),
        clock,
    )
    .await
    .unwrap();
    let http = client();
    let base = svc.base_url();
    assert_eq!(
        generate_at(&http, &base, json!({"prompt": "first"}))
            .await
            .0,
        200
    );
    let second = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move { generate_at(&http, &base, json!({"prompt": "second"})).await }
    });
    let third = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move { generate_at(&http, &base, json!({"prompt": "third"})).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped = tokio::spawn(svc.stop());
    let (third_status, third_retry, _) = third.await.unwrap();
    assert_eq!(
        third_status, 503,
        "its slot is 120 s away, beyond the 90 s drain"
    );
    assert_eq!(third_retry, Some(120));
    let (second_status, _, second_body) = second.await.unwrap();
    assert_eq!(
        second_status, 200,
        "its slot came within the drain window: {second_body}"
    );
    stopped.await.unwrap().unwrap();
    assert_eq!(sim.stats().calls, 2);
}

#[tokio::test(start_paused = true)]
async fn a_retired_model_stays_out_of_the_chain_after_a_restart() {
    const RETIRED: &str = "gemini-2.0-flash";
    let clock = Clock::starting_at(quiet_noon());
    let sim = SimServer::start(
        SimConfig::new(["sim-key-0001"]).with_retired(RETIRED),
        clock,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let state = fresh_state_path();
    let http = client();
    let chain = [RETIRED, FLASH].join(",");
    let env = [
        ("FLUX_MODELS", chain.as_str()),
        ("FLUX_POLICY_FETCH", "false"),
    ];
    let retired_404 = || sim.stats().lane(1, RETIRED).map_or(0, |l| l.retired_404);
    // The first run meets it three times: the key check at start and the
    // first request's countTokens (both free), then the call that retires it.
    // The second run never meets it at all.
    for (run, met) in [(0, 3), (1, 3)] {
        let svc = service::start(
            settings(&sim.base_url(), "sim-key-0001", &state, &env),
            clock,
        )
        .await
        .unwrap();
        let base = svc.base_url();
        let (status, _, body) = generate_at(&http, &base, json!({"prompt": "hi"})).await;
        assert_eq!(
            (status, body["model_used"].as_str()),
            (200, Some(FLASH)),
            "run {run}"
        );
        let status = get_json(&http, &format!("{base}/status")).await;
        assert_eq!(status["retired"][0]["model"], RETIRED, "run {run}");
        assert_eq!(status["chain"], json!([FLASH]), "run {run}");
        assert_eq!(retired_404(), met, "run {run}");
        // Counted on a model still in the chain.
        generate_at(&http, &base, json!({"prompt": "again"})).await;
        assert_eq!(retired_404(), met, "run {run}");
        svc.stop().await.unwrap();
    }
}
