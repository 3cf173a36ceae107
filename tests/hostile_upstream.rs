//! Odd upstream answers reach the client honestly: a body that is not
//! Gemini's JSON comes back in the surface's own error envelope with the
//! upstream's status and an excerpt (never `null`); a 200 stream without one
//! valid event ends in an error event and is recorded as failed; no error
//! names the upstream's address; and no request outlives
//! `FLUX_REQUEST_TIMEOUT_S`, however slow the upstream.

mod common;

use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use common::*;
use gemini_flux::clock::Clock;
use gemini_flux::service::{self, RunningService};
use gemini_flux::sim::{Faults, SimConfig};
use serde_json::{Value, json};
use std::time::Duration;

const FLASH: &str = "gemini-2.5-flash";

/// An upstream behind a misbehaving proxy: counting works, a generate call
/// (native or on the OpenAI-compatible layer) gets an HTML 413, and a stream
/// is answered 200 with events that are not JSON.
async fn proxy_upstream(uri: Uri, body: axum::body::Bytes) -> Response {
    let path = uri.path();
    let streamed_chat = path.ends_with("/openai/chat/completions")
        && serde_json::from_slice::<Value>(&body).is_ok_and(|b| b["stream"] == true);
    if path.ends_with(":countTokens") {
        axum::Json(json!({"totalTokens": 3})).into_response()
    } else if path.ends_with(":streamGenerateContent") || streamed_chat {
        (
            [(header::CONTENT_TYPE, "text/event-stream")],
            "data: <html>upstream hiccup</html>\n\ndata: {not json\n\n",
        )
            .into_response()
    } else {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            [(header::CONTENT_TYPE, "text/html")],
            "<html>\n<head><title>413 Request Entity Too Large</title></head>\n<body>nginx</body>\n</html>",
        )
            .into_response()
    }
}

/// The service in front of `upstream`, and where it keeps its state.
async fn service_before(
    upstream: &str,
    keys: &str,
    env: &[(&str, &str)],
) -> (RunningService, std::path::PathBuf) {
    let state = fresh_state_path();
    let base = [
        ("FLUX_MODELS", FLASH),
        ("FLUX_POLICY_FETCH", "false"),
        ("FLUX_TOKEN_COUNT", "local"),
    ];
    let settings = settings(upstream, keys, &state, &[&base[..], env].concat());
    let svc = service::start(settings, Clock::starting_at(quiet_noon()))
        .await
        .unwrap();
    (svc, state)
}

async fn start_proxy() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(proxy_upstream);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> (u16, String, String) {
    let resp = http.post(url).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    (status, content_type, resp.text().await.unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_non_json_upstream_error_reaches_every_surface_in_its_envelope() {
    let (svc, _) = service_before(&start_proxy().await, "proxy-key-0001", &[]).await;
    let http = client();
    let base = svc.base_url();
    let excerpt = "413 Request Entity Too Large";

    let (status, content_type, text) =
        post(&http, format!("{base}/generate"), json!({"prompt": "hi"})).await;
    assert_eq!((status, content_type.as_str()), (413, "application/json"));
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["code"], 413, "{body}");
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(excerpt) && !message.contains('\n'),
        "{message}"
    );

    let (status, _, text) = post(
        &http,
        format!("{base}/v1beta/models/{FLASH}:generateContent"),
        json!({"contents": [{"parts": [{"text": "hi"}]}]}),
    )
    .await;
    assert_eq!(status, 413);
    let body: Value = serde_json::from_str(&text).unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains(excerpt));

    let (status, _, text) = post(
        &http,
        format!("{base}/v1/chat/completions"),
        json!({"model": FLASH, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 413);
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains(excerpt));
    svc.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_200_stream_without_one_valid_event_is_an_error_and_settles_as_failed() {
    let (svc, state) = service_before(&start_proxy().await, "proxy-key-0001", &[]).await;
    let http = client();
    let (status, _, text) = post(
        &http,
        format!(
            "{}/v1beta/models/{FLASH}:streamGenerateContent?alt=sse",
            svc.base_url()
        ),
        json!({"contents": [{"parts": [{"text": "hi"}]}]}),
    )
    .await;
    assert_eq!(status, 200, "the stream had begun");
    let event: Value = serde_json::from_str(
        text.trim()
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("one event: {text:?}")),
    )
    .unwrap();
    assert_eq!(event["error"]["code"], 502, "{event}");

    let (status, _, text) = post(
        &http,
        format!("{}/v1/chat/completions", svc.base_url()),
        json!({"model": FLASH, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        text.contains("\"error\"") && !text.contains("[DONE]"),
        "an error event, not a clean end: {text:?}"
    );
    svc.stop().await.unwrap();

    let db = rusqlite::Connection::open(&state).unwrap();
    let outcomes: Vec<String> = db
        .prepare("SELECT outcome FROM calls ORDER BY at_ms")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        outcomes,
        ["transient", "transient"],
        "recorded as failed, not ok"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_upstream_is_reported_without_its_address() {
    let port = free_port();
    let upstream = format!("http://127.0.0.1:{port}");
    let (svc, _) = service_before(&upstream, "proxy-key-0001", &[]).await;
    let (status, _, body) = generate_at(
        &client(),
        &svc.base_url(),
        json!({"prompt": "hi", "retry": false}),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("could not connect"), "{message}");
    assert!(
        !message.contains(&port.to_string()) && !message.contains("127.0.0.1"),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn no_request_outlives_the_request_timeout() {
    // A failed key is rested: three keys, so the attempts go on.
    let keys = ["sim-key-0001", "sim-key-0002", "sim-key-0003"];
    let sim_config = SimConfig::new(keys).with_limits(limits(FLASH, 100, 1_000_000, 1000));
    let sim = start_sim(sim_config, quiet_noon()).await;
    // Every attempt takes the whole upstream timeout (60 s); eight of them
    // would take 8 minutes.
    sim.set_faults(Faults {
        latency_ms: 100_000,
        ..Faults::default()
    });
    let (svc, _) = service_before(
        &sim.base_url(),
        &keys.join(","),
        &[
            ("FLUX_UPSTREAM_TIMEOUT_S", "60"),
            ("FLUX_REQUEST_TIMEOUT_S", "150"),
        ],
    )
    .await;
    let started = tokio::time::Instant::now();
    let (status, _, body) = generate_at(&client(), &svc.base_url(), json!({"prompt": "hi"})).await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("FLUX_REQUEST_TIMEOUT_S"),
        "{body}"
    );
    assert!(
        (Duration::from_secs(150)..Duration::from_secs(151)).contains(&took),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn no_slot_is_booked_too_late_for_its_call_to_finish() {
    let sim_config =
        SimConfig::new(["sim-key-0001"]).with_limits(limits(FLASH, 1, 1_000_000, 1000));
    let sim = start_sim(sim_config, quiet_noon()).await;
    // A request may last 80 s and a call 30 s: a slot must come within 50 s.
    let (svc, _) = service_before(
        &sim.base_url(),
        "sim-key-0001",
        &[
            ("FLUX_UPSTREAM_TIMEOUT_S", "30"),
            ("FLUX_REQUEST_TIMEOUT_S", "80"),
        ],
    )
    .await;
    let http = client();
    let (status, _, body) = generate_at(&http, &svc.base_url(), json!({"prompt": "hi"})).await;
    assert_eq!(status, 200, "{body}");
    // The next slot is 60.25 s away (one request a minute). Sent then, a
    // call that takes 25 s would be cut at 80 s after the upstream counted
    // it; it is refused now instead.
    sim.set_faults(Faults {
        latency_ms: 25_000,
        ..Faults::default()
    });
    let started = tokio::time::Instant::now();
    let (status, retry_after, body) =
        generate_at(&http, &svc.base_url(), json!({"prompt": "hi"})).await;
    assert_eq!((status, retry_after), (429, Some(61)), "{body}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(sim.stats().calls, 1, "no call was spent for nothing");
}
