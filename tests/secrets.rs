//! A key's text appears only in the request to Gemini: never in a response,
//! a header, `/status`, an error or a log line, even at TRACE level.

mod common;

use common::*;
use gemini_flux::sim::{Faults, SimConfig};
use serde_json::json;

const KEYS: [&str; 3] = [
    "AIzaSyTESTsecretKEYnumber0000000001",
    "AIzaSyTESTsecretKEYnumber0000000002",
    "AIzaSyTESTsecretKEYnumber0000000003",
];
const UNKNOWN_KEY: &str = "AIzaSyTESTsecretKEYunknownToUpstream";

#[tokio::test(start_paused = true)]
async fn no_key_text_in_any_output() {
    let (logs, _guard) = captured_logs();

    let sim = SimConfig::new(KEYS).with_limits(common::limits("gemini-2.5-flash", 2, 50_000, 250));
    let all_keys = format!("{},{UNKNOWN_KEY}", KEYS.join(","));
    let stack = Stack::start_with_keys(
        sim,
        quiet_noon(),
        &all_keys,
        &[("FLUX_MODELS", "gemini-2.5-flash")],
    )
    .await;

    let mut outputs: Vec<String> = Vec::new();
    let record = |resp: reqwest::Response| async {
        let headers = format!("{:?}", resp.headers());
        let body = resp.text().await.unwrap_or_default();
        format!("{headers}\n{body}")
    };
    // Success, a learned 429 (the service believes 250k TPM), bad input,
    // faults, a key revoked mid-run, and every read-only route.
    let bodies = [
        json!({"prompt": "hello"}),
        json!({"prompt": prompt_of(40_000)}),
        json!({"prompt": prompt_of(40_000)}),
        json!({"prompt": ""}),
        json!({"prompt": "hi", "model": "nope"}),
        json!({"prompt": prompt_of(300_000)}),
    ];
    for body in bodies {
        outputs.push(
            record(
                stack
                    .http
                    .post(stack.url("/generate"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await,
        );
    }
    stack.sim.set_faults(Faults {
        unavailable_ratio: 1.0,
        ..Faults::default()
    });
    outputs.push(
        record(
            stack
                .http
                .post(stack.url("/generate"))
                .json(&json!({"prompt": "x"}))
                .send()
                .await
                .unwrap(),
        )
        .await,
    );
    stack.sim.set_faults(Faults::default());
    stack.sim.revoke_key(KEYS[0]);
    for _ in 0..4 {
        outputs.push(
            record(
                stack
                    .http
                    .post(stack.url("/generate"))
                    .json(&json!({"prompt": "y"}))
                    .send()
                    .await
                    .unwrap(),
            )
            .await,
        );
    }
    // The OpenAI-compatible layer (the key as a bearer token upstream):
    // answered, refused by the upstream, and embeddings.
    let chats = [
        (
            "/v1/chat/completions",
            json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}], "n": 99}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "gemini-embedding-001", "input": ["a", "b"]}),
        ),
    ];
    for (path, body) in chats {
        let resp = stack.http.post(stack.url(path)).json(&body).send();
        outputs.push(record(resp.await.unwrap()).await);
    }
    for path in ["/status", "/mode", "/readyz", "/healthz"] {
        outputs.push(record(stack.http.get(stack.url(path)).send().await.unwrap()).await);
    }
    outputs.push(
        record(
            stack
                .http
                .post(stack.url("/keys/2/disable"))
                .send()
                .await
                .unwrap(),
        )
        .await,
    );

    let log_text = logs.text();
    assert!(log_text.contains("granted"), "the decisions were logged");
    assert!(log_text.contains("…0002"), "keys are named by fingerprint");
    let status = &outputs[outputs.len() - 5];
    assert!(
        status.contains("invalid"),
        "the revoked key shows as invalid: {status}"
    );
    for key in KEYS.iter().chain([&UNKNOWN_KEY]) {
        assert!(!log_text.contains(key), "a key leaked into the logs");
        for out in &outputs {
            assert!(!out.contains(key), "a key leaked into a response: {out}");
        }
    }
}
