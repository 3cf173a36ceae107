//! Where every limit comes from: built-in, fetched (validated), file, env and
//! learned, in that order of precedence; the fetch's 7-day cache; learning
//! from the upstream's 429s.

mod common;

use common::*;
use gemini_flux::clock::Clock;
use gemini_flux::service::{self, RunningService};
use gemini_flux::sim::{Faults, SimConfig, SimServer};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

const PRO: &str = "gemini-2.5-pro";
const FLASH: &str = "gemini-2.5-flash";
const DAY: Duration = Duration::from_secs(86_400);

fn answer(entries: &[(&str, u64, u64, u64)]) -> String {
    let models: Vec<Value> = entries
        .iter()
        .map(|&(m, rpm, tpm, rpd)| json!({"model": m, "rpm": rpm, "tpm": tpm, "rpd": rpd}))
        .collect();
    json!({ "models": models }).to_string()
}

async fn sim(clock: Clock, json_answer: Option<String>) -> SimServer {
    let mut config = SimConfig::new(["sim-key-0001", "sim-key-0002"]);
    config.faults = Faults {
        json_answer,
        ..Faults::default()
    };
    SimServer::start(config, clock, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

async fn serve(
    sim: &SimServer,
    clock: Clock,
    state: &Path,
    extra: &[(&str, &str)],
) -> RunningService {
    let models = format!("{PRO},{FLASH}");
    let env = [&[("FLUX_MODELS", models.as_str())][..], extra].concat();
    let settings = settings(&sim.base_url(), "sim-key-0001,sim-key-0002", state, &env);
    service::start(settings, clock).await.unwrap()
}

/// `/status`'s policy once the start-up fetch has had its answer.
async fn settled_status(svc: &RunningService) -> Value {
    for _ in 0..200 {
        let status = get_json(&client(), &format!("{}/status", svc.base_url())).await;
        if !status["policy"]["fetch"]["last_attempt_at"].is_null()
            || status["policy"]["fetch"]["from_cache"] == true
        {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the policy fetch never ran");
}

#[tokio::test(start_paused = true)]
async fn every_number_comes_from_the_highest_source_that_sets_it() {
    let clock = Clock::starting_at(quiet_noon());
    let sim = sim(
        clock,
        Some(answer(&[(PRO, 4, 200_000, 90), (FLASH, 9, 240_000, 240)])),
    )
    .await;
    let dir = fresh_state_path();
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    let file = dir.with_file_name("policy.toml");
    std::fs::write(&file, format!("[\"{FLASH}\"]\ntpm = 230000\nrpm = 8\n")).unwrap();
    let file_text = file.display().to_string();
    let env_limits = json!({FLASH: {"rpm": 7}}).to_string();
    let svc = serve(
        &sim,
        clock,
        &dir,
        &[
            ("FLUX_POLICY_FILE", &file_text),
            ("FLUX_LIMITS", &env_limits),
        ],
    )
    .await;
    let status = settled_status(&svc).await;
    let flash = &status["limits"][FLASH];
    assert_eq!(
        (flash["rpm"].as_u64(), flash["sources"]["rpm"].as_str()),
        (Some(7), Some("env"))
    );
    assert_eq!(
        (flash["tpm"].as_u64(), flash["sources"]["tpm"].as_str()),
        (Some(230_000), Some("file"))
    );
    assert_eq!(
        (flash["rpd"].as_u64(), flash["sources"]["rpd"].as_str()),
        (Some(240), Some("fetched"))
    );
    let pro = &status["limits"][PRO];
    assert_eq!(
        (pro["rpm"].as_u64(), pro["sources"]["rpm"].as_str()),
        (Some(4), Some("fetched"))
    );
    let fetch = &status["policy"]["fetch"];
    assert_eq!(fetch["from_cache"], false);
    assert!(fetch["expires_at"].as_str().unwrap() > fetch["fetched_at"].as_str().unwrap());
    // Without a fetch the built-in table shows through.
    let svc2 = serve(
        &sim,
        clock,
        &fresh_state_path(),
        &[("FLUX_POLICY_FETCH", "false")],
    )
    .await;
    let status = get_json(&client(), &format!("{}/status", svc2.base_url())).await;
    assert_eq!(
        status["limits"][PRO]["sources"],
        json!({"rpm": "built-in", "tpm": "built-in", "rpd": "built-in", "tpd": "built-in", "otpm": "built-in"})
    );
    assert_eq!(status["policy"]["fetch"]["enabled"], false);
}

#[tokio::test(start_paused = true)]
async fn every_kind_of_bad_fetch_answer_is_rejected_and_the_policy_stays() {
    let clock = Clock::starting_at(quiet_noon());
    let good = answer(&[(PRO, 4, 200_000, 90)]);
    let sim = sim(clock, Some(good)).await;
    let svc = serve(&sim, clock, &fresh_state_path(), &[]).await;
    settled_status(&svc).await;
    let http = client();
    let refresh = format!("{}/policy/refresh", svc.base_url());
    let bad = [
        (Some("The free tier allows 5 requests per minute on pro.".to_string()), "not JSON"),
        (Some("```json\n{\"models\": []}\n```".to_string()), "not JSON"),
        (Some("{\"models\": [{\"model\": \"gemini-2.5-pro\", \"rpm\": 4".to_string()), "not JSON"),
        (Some(r#"{"models": [{"model": "gemini-2.5-pro", "rpm": "4", "tpm": 200000, "rpd": 90}]}"#.to_string()), "not a whole number"),
        (Some(answer(&[(PRO, 0, 200_000, 90)])), "outside"),
        (Some(answer(&[(PRO, 4, 1_000_000_000_000, 90)])), "outside"),
        (Some(answer(&[("gemini-9-ultra", 4, 200_000, 90)])), "not in the chain"),
    ];
    for (text, reason) in bad {
        sim.set_faults(Faults {
            json_answer: text,
            ..Faults::default()
        });
        let (s, v) = post_json(&http, &refresh, &json!({})).await;
        assert_eq!(s, 502);
        assert!(
            v["error"]["message"].as_str().unwrap().contains(reason),
            "{v}"
        );
        let status = get_json(&http, &format!("{}/status", svc.base_url())).await;
        assert!(
            status["policy"]["fetch"]["last_rejection"]
                .as_str()
                .unwrap()
                .contains(reason)
        );
        assert_eq!(
            status["limits"][PRO]["rpm"], 4,
            "the accepted policy stays in force"
        );
    }
    // The upstream itself failing (503 on every try) is a rejection too.
    sim.set_faults(Faults {
        unavailable_ratio: 1.0,
        ..Faults::default()
    });
    let (s, v) = post_json(&http, &refresh, &json!({})).await;
    assert_eq!(s, 502);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fetch call failed"),
        "{v}"
    );
    // And the service carries on.
    sim.set_faults(Faults::default());
    let (s, v) = post_json(
        &http,
        &format!("{}/generate", svc.base_url()),
        &json!({"prompt": "still here"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // The seed's route does the same as /policy/refresh.
    let seed_refresh = |answer_text: String| {
        sim.set_faults(Faults {
            json_answer: Some(answer_text),
            ..Faults::default()
        });
        let url = format!("{}/refresh-policy", svc.base_url());
        let http = http.clone();
        async move { post_json(&http, &url, &json!({})).await }
    };
    let (s, v) = seed_refresh(answer(&[(PRO, 3, 200_000, 80)])).await;
    assert_eq!((s, v["limits"][PRO]["rpm"].as_u64()), (200, Some(3)), "{v}");
    assert_eq!(v["limits"][PRO]["sources"]["rpm"], "fetched");
    assert_eq!(v["refreshed"], true);
    // A rejected fetch there is still a 200 (the seed's client raises on
    // anything else), with the policy in force and the reason.
    let (s, v) = seed_refresh("no numbers today".into()).await;
    assert_eq!((s, v["refreshed"].as_bool()), (200, Some(false)), "{v}");
    assert!(v["rejected"].as_str().unwrap().contains("not JSON"), "{v}");
    assert_eq!(v["limits"][PRO]["rpm"], 3, "the accepted policy stays");
}

#[tokio::test(start_paused = true)]
async fn the_fetch_is_cached_for_seven_days_across_restarts() {
    let clock = Clock::starting_at(quiet_noon());
    let sim = sim(clock, Some(answer(&[(PRO, 4, 200_000, 90)]))).await;
    let state = fresh_state_path();
    let calls = |sim: &SimServer| sim.stats().calls;

    let first = serve(&sim, clock, &state, &[]).await;
    settled_status(&first).await;
    assert_eq!(calls(&sim), 1, "one fetch");
    first.stop().await.unwrap();

    tokio::time::advance(6 * DAY).await;
    let second = serve(&sim, clock, &state, &[]).await;
    let status = settled_status(&second).await;
    assert_eq!(status["policy"]["fetch"]["from_cache"], true);
    assert_eq!(status["limits"][PRO]["rpm"], 4);
    assert_eq!(calls(&sim), 1, "six days on, the cache is trusted");
    second.stop().await.unwrap();

    tokio::time::advance(2 * DAY).await;
    let third = serve(&sim, clock, &state, &[]).await;
    let status = settled_status(&third).await;
    assert_eq!(status["policy"]["fetch"]["from_cache"], false);
    assert_eq!(calls(&sim), 2, "eight days on, it is fetched again");
}

#[tokio::test(start_paused = true)]
async fn the_first_429_teaches_the_real_limit_to_every_lane_of_the_tier() {
    // The service believes the built-in 250k TPM; these projects have 50k.
    let clock = Clock::starting_at(quiet_noon());
    let mut config = SimConfig::new(["sim-key-0001", "sim-key-0002"])
        .with_limits(limits(FLASH, 10, 50_000, 250));
    config.faults = Faults::default();
    let sim = SimServer::start(config, clock, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let svc = serve(
        &sim,
        clock,
        &fresh_state_path(),
        &[("FLUX_MODELS", FLASH), ("FLUX_POLICY_FETCH", "false")],
    )
    .await;
    let http = client();
    for _ in 0..12 {
        let (s, v) = post_json(
            &http,
            &format!("{}/generate", svc.base_url()),
            &json!({"prompt": prompt_of(40_000)}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    // Both keys are on one tier (nothing sets their limits apart): the
    // first 429 teaches both lanes, so the second never draws one.
    assert_eq!(sim.stats().rejected_429, 1, "one lesson per tier");
    let status = get_json(&http, &format!("{}/status", svc.base_url())).await;
    for key in 0..2 {
        let lane = &status["keys"][key]["models"][FLASH];
        assert_eq!(
            (
                lane["limits"]["tpm"].as_u64(),
                lane["limits"]["sources"]["tpm"].as_str()
            ),
            (Some(50_000), Some("learned"))
        );
    }
}

#[test]
fn a_policy_file_that_does_not_parse_stops_start_up_with_exit_2() {
    let dir = std::env::temp_dir().join(format!("gemini-flux-policy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("limits.json");
    std::fs::write(&file, "{\n  \"gemini-2.5-flash\": {\"rpm\": 10,\n}").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gemini-flux"))
        .current_dir(&dir)
        .env_clear()
        .env("GEMINI_KEYS", "k1")
        .env("FLUX_POLICY_FILE", &file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("limits.json") && stderr.contains("line 3"),
        "{stderr}"
    );
}

#[tokio::test(start_paused = true)]
async fn no_fetch_at_start_when_configuration_sets_every_number() {
    let clock = Clock::starting_at(quiet_noon());
    let sim = sim(clock, Some(answer(&[(PRO, 4, 200_000, 90)]))).await;
    let all = json!({PRO: {"rpm": 2, "tpm": 100_000, "rpd": 50}, FLASH: {"rpm": 9, "tpm": 200_000, "rpd": 20}});
    let svc = serve(
        &sim,
        clock,
        &fresh_state_path(),
        &[("FLUX_LIMITS", &all.to_string())],
    )
    .await;
    // Long enough for the fetch that would have been sent once serving.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(sim.stats().calls, 0, "a fetch could have changed nothing");
    let status = get_json(&client(), &format!("{}/status", svc.base_url())).await;
    assert!(
        status["policy"]["fetch"]["last_attempt_at"].is_null(),
        "{status}"
    );
    assert_eq!(status["limits"][PRO]["rpm"], 2);
    // One number left to the table: the fetch runs.
    let some =
        json!({PRO: {"rpm": 2, "tpm": 100_000}, FLASH: {"rpm": 9, "tpm": 200_000, "rpd": 20}});
    let svc = serve(
        &sim,
        clock,
        &fresh_state_path(),
        &[("FLUX_LIMITS", &some.to_string())],
    )
    .await;
    settled_status(&svc).await;
    assert_eq!(sim.stats().calls, 1);
}
