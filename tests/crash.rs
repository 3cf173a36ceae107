//! The real binary, killed with SIGKILL mid-load and restarted on the same
//! state file: nothing the crashed process spent is forgotten. Then SIGTERM
//! stops it cleanly with exit code 0. Real processes, so real (short) time.

mod common;

use common::*;
use gemini_flux::sim::SimConfig;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const FLASH: &str = "gemini-2.5-flash";

fn spawn_service(upstream: &str, state: &Path) -> ServeProcess {
    let limits = json!({FLASH: {"rpm": 100, "tpm": 100_000, "rpd": 5}});
    ServeProcess::spawn(
        state.parent().unwrap(),
        &[
            ("GEMINI_KEYS", "sim-key-0001".into()),
            ("GEMINI_BASE_URL", upstream.into()),
            ("FLUX_MODELS", FLASH.into()),
            ("FLUX_LIMITS", limits.to_string()),
            ("FLUX_STATE_PATH", state.display().to_string()),
        ],
    )
}

#[tokio::test]
async fn kill_9_mid_load_forgets_nothing_and_sigterm_exits_0() {
    let config = SimConfig::new(["sim-key-0001"]).with_limits(limits(FLASH, 100, 100_000, 5));
    // Calls stay in flight for a while, so the kill lands mid-call.
    let sim = slow_sim(config, 3_000).await;
    let state = fresh_state_path();
    let http = client();

    let first = spawn_service(&sim.base_url(), &state);
    first.ready(&http).await;
    let base = first.base.clone();
    let in_flight: Vec<_> = (0..3)
        .map(|_| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                http.post(format!("{base}/generate"))
                    .json(&json!({"prompt": prompt_of(30_000)}))
                    .send()
                    .await
            })
        })
        .collect();
    while sim.stats().calls < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(first); // SIGKILL: no chance to flush anything
    for call in in_flight {
        assert!(
            call.await.unwrap().is_err(),
            "the crashed process answered nobody"
        );
    }

    let mut second = spawn_service(&sim.base_url(), &state);
    second.ready(&http).await;
    let base = second.base.clone();
    let status = get_json(&http, &format!("{base}/status")).await;
    let lane = &status["keys"][0]["models"][FLASH];
    assert_eq!(lane["requests_today"], 3, "{status}");
    assert_eq!(lane["tokens_last_60s"], 90_000);
    // The upstream holds 90k of 100k for this minute: 20k more would be a 429
    // there, so gemini-flux refuses it here instead.
    let resp = http
        .post(format!("{base}/generate"))
        .json(&json!({"prompt": prompt_of(20_000), "max_wait_s": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    // Two more fit today's five; the sixth would break the day quota.
    for _ in 0..2 {
        assert_eq!(
            post_json(&http, &format!("{base}/generate"), &json!({"prompt": "hi"}))
                .await
                .0,
            200
        );
    }
    assert_eq!(
        post_json(&http, &format!("{base}/generate"), &json!({"prompt": "hi"}))
            .await
            .0,
        429
    );
    assert_eq!(
        sim.stats().rejected_429,
        0,
        "the upstream never saw a request over quota"
    );

    assert_eq!(second.terminate(), Some(0), "SIGTERM drains and exits 0");
}
