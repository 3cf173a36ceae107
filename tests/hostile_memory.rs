//! Big bodies: the request-body bytes held in memory at once stay within
//! `FLUX_MAX_INFLIGHT_MB`; past it a request gets 503 with `Retry-After` at
//! once, and bodiless requests are never refused for it.

mod common;

use common::*;
use gemini_flux::sim::SimConfig;
use serde_json::json;
use std::time::Duration;

const FLASH: &str = "gemini-2.5-flash";

#[tokio::test(start_paused = true)]
async fn body_bytes_held_at_once_stay_within_the_budget() {
    let limits_env = json!({FLASH: {"rpm": 1, "tpm": 10_000_000, "rpd": 1000}}).to_string();
    let stack = Stack::start(
        SimConfig::new(["sim-key-0001"]).with_limits(limits(FLASH, 1, 10_000_000, 1000)),
        quiet_noon(),
        &[
            ("FLUX_MODELS", FLASH),
            ("FLUX_LIMITS", &limits_env),
            ("FLUX_MAX_INFLIGHT_MB", "1"),
            ("FLUX_TOKEN_COUNT", "local"),
        ],
    )
    .await;
    // 600 KiB bodies: one fits the 1 MiB budget, two do not.
    let big = || json!({"prompt": prompt_of(150_000)});
    assert_eq!(stack.generate(big()).await.0, 200, "alone, it fits");
    // One request a minute: this one holds its body while it waits 60 s.
    let waiting = tokio::spawn({
        let (http, base) = (stack.http.clone(), stack.svc.base_url());
        async move { generate_at(&http, &base, big()).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, retry, body) = stack.generate(big()).await;
    assert_eq!((status, retry), (503, Some(1)), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("FLUX_MAX_INFLIGHT_MB")
    );
    assert_eq!(stack.get("/status").await.0, 200, "a GET holds no body");
    assert_eq!(waiting.await.unwrap().0, 200);
    let (status, _, _) = stack
        .generate(json!({"prompt": prompt_of(150_000), "max_wait_s": 0}))
        .await;
    assert_eq!(
        status, 429,
        "admitted again once the first let go (then refused by the quota, not the budget)"
    );
}
