//! Web pages: another site's page cannot change state or spend quota through
//! a visitor's browser (403 for a foreign `Origin`, 415 for a body that is
//! not declared JSON), a page on an origin listed in `FLUX_CORS_ORIGINS` gets
//! a proper preflight, and callers without an `Origin` (curl, SDKs) are
//! untouched.

mod common;

use common::*;
use gemini_flux::sim::SimConfig;
use reqwest::header::{CONTENT_TYPE, ORIGIN};
use serde_json::Value;

const EVIL: &str = "https://evil.example";
const APP: &str = "https://app.example.com";

fn json_type() -> (reqwest::header::HeaderName, &'static str) {
    (CONTENT_TYPE, "application/json")
}

async fn stack(env: &[(&str, &str)]) -> Stack {
    Stack::start(
        SimConfig::new(["sim-key-0001", "sim-key-0002"]),
        quiet_noon(),
        env,
    )
    .await
}

/// `POST path` with `body` as text and the given headers: status, headers, JSON.
async fn post(
    stack: &Stack,
    path: &str,
    headers: &[(reqwest::header::HeaderName, &str)],
    body: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = stack.http.post(stack.url(path)).body(body.to_string());
    for (name, value) in headers {
        req = req.header(name, *value);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(start_paused = true)]
async fn another_sites_page_can_change_nothing_and_spend_nothing() {
    let stack = stack(&[]).await;

    let (s, _, body) = post(&stack, "/keys/1/disable", &[(ORIGIN, EVIL)], "").await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("FLUX_CORS_ORIGINS")
    );
    let (s, _, _) = post(
        &stack,
        "/mode",
        &[(ORIGIN, EVIL), json_type()],
        r#"{"mode": "flash_only"}"#,
    )
    .await;
    assert_eq!(s, 403);
    let (s, _, _) = post(
        &stack,
        "/generate",
        &[(ORIGIN, EVIL), json_type()],
        r#"{"prompt": "spend"}"#,
    )
    .await;
    assert_eq!(s, 403);
    let (s, _, body) = post(
        &stack,
        "/v1/chat/completions",
        &[(ORIGIN, EVIL), json_type()],
        r#"{"messages": [{"role": "user", "content": "spend"}]}"#,
    )
    .await;
    assert_eq!(s, 403);
    assert_eq!(
        body["error"]["type"], "invalid_request_error",
        "in OpenAI's envelope"
    );

    // A page's simple POST without a preflight can only be text/plain or a form.
    let (s, _, body) = post(
        &stack,
        "/mode",
        &[(CONTENT_TYPE, "text/plain")],
        r#"{"mode": "flash_only"}"#,
    )
    .await;
    assert_eq!(s, 415, "{body}");
    let (s, _, _) = post(
        &stack,
        "/generate",
        &[(CONTENT_TYPE, "application/x-www-form-urlencoded")],
        r#"{"prompt": "spend"}"#,
    )
    .await;
    assert_eq!(s, 415);
    let (s, _, _) = post(
        &stack,
        "/v1beta/models/gemini-2.5-flash:generateContent",
        &[(CONTENT_TYPE, "text/plain")],
        r#"{"contents": [{"parts": [{"text": "spend"}]}]}"#,
    )
    .await;
    assert_eq!(s, 415);

    let status = stack.get("/status").await.1;
    assert_eq!(status["mode"], "both", "the mode did not change");
    assert_eq!(
        status["keys"][0]["state"], "healthy",
        "key 1 is in rotation"
    );
    assert_eq!(stack.sim_stats().calls, 0, "no quota was spent");

    // The same calls without an Origin, as curl and the SDKs make them.
    let (s, _, _) = post(&stack, "/mode", &[json_type()], r#"{"mode": "flash_only"}"#).await;
    assert_eq!(s, 200);
    let (s, _, _) = post(
        &stack,
        "/generate",
        &[(CONTENT_TYPE, "application/json; charset=utf-8")],
        r#"{"prompt": "hi"}"#,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(post(&stack, "/keys/1/disable", &[], "").await.0, 200);
}

#[tokio::test(start_paused = true)]
async fn the_dashboard_on_the_services_own_origin_works() {
    let stack = stack(&[]).await;
    let own = stack.svc.base_url();
    let (s, _, body) = post(
        &stack,
        "/mode",
        &[(ORIGIN, own.as_str()), (CONTENT_TYPE, "application/json")],
        r#"{"mode": "flash_only"}"#,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, _, _) = post(&stack, "/keys/2/disable", &[(ORIGIN, own.as_str())], "").await;
    assert_eq!(s, 200);
    // Reading is harmless: a foreign page cannot read the answer anyway.
    let resp = stack
        .http
        .get(stack.url("/status"))
        .header(ORIGIN, EVIL)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test(start_paused = true)]
async fn a_listed_origin_gets_a_preflight_and_can_read_answers() {
    let stack = stack(&[("FLUX_CORS_ORIGINS", APP)]).await;
    let preflight = |origin: &'static str| {
        stack
            .http
            .request(reqwest::Method::OPTIONS, stack.url("/generate"))
            .header(ORIGIN, origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            )
            .send()
    };
    let resp = preflight(APP).await.unwrap();
    assert_eq!(resp.status(), 204);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(h["access-control-allow-methods"], "GET, POST, DELETE");
    assert_eq!(
        h["access-control-allow-headers"],
        "content-type, authorization"
    );
    assert_eq!(preflight(EVIL).await.unwrap().status(), 403);

    let (s, headers, body) = post(
        &stack,
        "/generate",
        &[(ORIGIN, APP), (CONTENT_TYPE, "application/json")],
        r#"{"prompt": "hi"}"#,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(headers["access-control-allow-origin"], APP);
    assert!(
        headers["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-flux-model")
    );
    assert_eq!(stack.sim_stats().calls, 1);
}

#[tokio::test]
async fn a_bad_origin_list_stops_start_up_naming_the_variable() {
    let err = gemini_flux::config::Settings::from_vars([
        ("GEMINI_KEYS".to_string(), "k".to_string()),
        (
            "FLUX_CORS_ORIGINS".to_string(),
            "app.example.com/path".to_string(),
        ),
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("FLUX_CORS_ORIGINS"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_rebound_name_is_not_the_services_own_origin_but_an_address_or_a_listed_name_is() {
    let stack = stack(&[("FLUX_CORS_ORIGINS", "http://flux.internal:8000")]).await;
    let port = stack.svc.addr().port();
    let host = reqwest::header::HOST;
    // (Host and Origin's host, route, status.) First a page at
    // evil.example, its name rebound to the service's address: its Origin
    // and the Host its browser sends agree. Then the dashboard, reached at
    // an address, at localhost, or at the name the operator listed.
    let cases = [
        (format!("evil.example:{port}"), "/keys/1/disable", 403),
        (format!("127.0.0.1:{port}"), "/keys/1/enable", 200),
        (format!("localhost:{port}"), "/keys/1/enable", 200),
        ("flux.internal:8000".to_string(), "/keys/1/enable", 200),
    ];
    for (name, path, expected) in cases {
        let origin = format!("http://{name}");
        let headers = [(ORIGIN, origin.as_str()), (host.clone(), name.as_str())];
        let (s, _, body) = post(&stack, path, &headers, "").await;
        assert_eq!(s, expected, "{name}: {body}");
    }
    let (_, status) = stack.get("/status").await;
    assert_eq!(status["keys"][0]["state"], "healthy");
}
