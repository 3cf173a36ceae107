//! Every refusal in the envelope of the surface it answers, with the status
//! it has always had: OpenAI's `{"error": {"message", "type", "param",
//! "code"}}` on the OpenAI-compatible routes (the router's 404 and 405, auth's
//! 401 and the body limit's 413 included), Gemini's `{"error": {"code",
//! "status", "message"}}` on the Gemini-native routes and `/generate`; and
//! the scheduler's refusals (too large, a wait past the ceiling, a model
//! outside the chain) in each.

mod common;

use common::*;
use gemini_flux::sim::SimConfig;
use serde_json::{Value, json};

const FLASH: &str = "gemini-2.5-flash";
const TOKEN: &str = "client-token";

/// OpenAI's envelope, exactly its four fields, with this type and code.
#[track_caller]
fn assert_openai(answer: &Answer, status: u16, kind: &str, code: Value) {
    assert_eq!(answer.status, status, "{}", answer.body);
    let error = answer.body["error"].as_object().expect("an error object");
    let mut fields: Vec<&str> = error.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["code", "message", "param", "type"],
        "{}",
        answer.body
    );
    assert_eq!(error["type"], kind, "{}", answer.body);
    assert_eq!(error["code"], code, "{}", answer.body);
    assert_eq!(error["param"], Value::Null);
    assert!(!answer.message().is_empty());
}

/// Gemini's envelope, with this status and its name.
#[track_caller]
fn assert_gemini(answer: &Answer, status: u16, name: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.body["error"]["code"], status, "{}", answer.body);
    assert_eq!(answer.body["error"]["status"], name, "{}", answer.body);
    assert!(
        answer.body["error"].get("type").is_none(),
        "{}",
        answer.body
    );
    assert!(!answer.message().is_empty());
}

fn chat(text: &str) -> Value {
    json!({"model": FLASH, "messages": [{"role": "user", "content": text}]})
}

#[tokio::test(start_paused = true)]
async fn the_edges_refusals_on_openai_routes_are_in_openais_envelope() {
    let stack = Stack::start(
        SimConfig::new(["sim-key-0001"]),
        quiet_noon(),
        &[("FLUX_API_TOKENS", TOKEN), ("FLUX_MAX_BODY_MB", "1")],
    )
    .await;
    let http = &stack.http;
    let invalid_key = json!("invalid_api_key");

    // 401: no token, a wrong one; `/v1/models` asked OpenAI's way too.
    let none = Answer::to(
        http.post(stack.url("/v1/chat/completions"))
            .json(&chat("hi")),
    )
    .await;
    assert_openai(&none, 401, "invalid_request_error", invalid_key.clone());
    let wrong = Answer::to(
        http.post(stack.url("/v1beta/openai/embeddings"))
            .bearer_auth("not-the-token")
            .json(&json!({"model": "gemini-embedding-001", "input": "x"})),
    )
    .await;
    assert_openai(&wrong, 401, "invalid_request_error", invalid_key.clone());
    let models = Answer::to(http.get(stack.url("/v1/models")).bearer_auth("nope")).await;
    assert_openai(&models, 401, "invalid_request_error", invalid_key);
    // The same route asked with a Gemini key is Gemini's.
    let native = Answer::to(
        http.get(stack.url("/v1/models"))
            .header("x-goog-api-key", "nope"),
    )
    .await;
    assert_gemini(&native, 401, "UNAUTHENTICATED");

    // 404 for a route that is not served, 405 for a wrong method.
    let missing = Answer::to(
        http.post(stack.url("/v1beta/openai/responses"))
            .bearer_auth(TOKEN)
            .json(&chat("hi")),
    )
    .await;
    assert_openai(
        &missing,
        404,
        "invalid_request_error",
        json!("model_not_found"),
    );
    assert_eq!(
        missing.message(),
        "no such route; see README.md for the routes"
    );
    let method = Answer::to(
        http.get(stack.url("/v1/chat/completions"))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_openai(&method, 405, "invalid_request_error", Value::Null);
    let method = Answer::to(http.delete(stack.url("/v1/models")).bearer_auth(TOKEN)).await;
    assert_openai(&method, 405, "invalid_request_error", Value::Null);

    // 413 past FLUX_MAX_BODY_MB.
    let huge = chat(&"x".repeat(1_100_000));
    let large = Answer::to(
        http.post(stack.url("/v1/chat/completions"))
            .bearer_auth(TOKEN)
            .json(&huge),
    )
    .await;
    assert_openai(&large, 413, "invalid_request_error", Value::Null);

    // Gemini's elsewhere, as before.
    let missing = Answer::to(http.get(stack.url("/v1beta/nowhere")).bearer_auth(TOKEN)).await;
    assert_gemini(&missing, 404, "NOT_FOUND");
    let method = Answer::to(http.delete(stack.url("/generate")).bearer_auth(TOKEN)).await;
    assert_gemini(&method, 405, "METHOD_NOT_ALLOWED");
    let none = Answer::to(http.get(stack.url("/v1beta/models"))).await;
    assert_gemini(&none, 401, "UNAUTHENTICATED");
    assert_eq!(stack.sim_stats().calls, 0, "no call went upstream");
}

/// One key whose flash takes 1 request and 100 tokens a minute, upstream
/// and in the service alike; no wait allowed.
async fn one_a_minute() -> Stack {
    let sim = SimConfig::new(["sim-key-0001"]).with_limits(limits(FLASH, 1, 100, 100));
    Stack::start(
        sim,
        quiet_noon(),
        &[
            ("FLUX_MODELS", FLASH),
            (
                "FLUX_LIMITS",
                r#"{"gemini-2.5-flash": {"rpm": 1, "tpm": 100}}"#,
            ),
            ("FLUX_MAX_WAIT_S", "0"),
        ],
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn a_refused_plan_is_answered_in_each_surfaces_envelope() {
    let stack = one_a_minute().await;
    let http = &stack.http;
    let native = stack.url(&format!("/v1beta/models/{FLASH}:generateContent"));
    let openai = stack.url("/v1/chat/completions");

    // More tokens than a minute of the lane holds: 413, no Retry-After.
    let too_large = "the request has 400 input tokens, more than any allowed model accepts in one call (gemini-2.5-flash: 100)";
    let seed = Answer::to(
        http.post(stack.url("/generate"))
            .json(&json!({"prompt": prompt_of(400)})),
    )
    .await;
    assert_gemini(&seed, 413, "INVALID_ARGUMENT");
    let gemini = Answer::to(http.post(&native).json(&request_of(400))).await;
    assert_gemini(&gemini, 413, "INVALID_ARGUMENT");
    let chat_large = Answer::to(http.post(&openai).json(&chat(&prompt_of(400)))).await;
    assert_openai(&chat_large, 413, "invalid_request_error", Value::Null);
    for answer in [&seed, &gemini, &chat_large] {
        assert_eq!(answer.message(), too_large);
        assert_eq!(answer.header("retry-after"), None);
    }

    // A model outside the chain: the caller's bad argument on /generate,
    // a missing model where Gemini and OpenAI say so.
    let seed = Answer::to(
        http.post(stack.url("/generate"))
            .json(&json!({"prompt": "hi", "model": "gemini-9-ultra"})),
    )
    .await;
    assert_gemini(&seed, 400, "INVALID_ARGUMENT");
    let gemini = Answer::to(
        http.post(stack.url("/v1beta/models/gemini-9-ultra:generateContent"))
            .json(&request_of(5)),
    )
    .await;
    assert_gemini(&gemini, 404, "NOT_FOUND");
    let mut unknown = chat("hi");
    unknown["model"] = json!("gemini-9-ultra");
    let chat_unknown = Answer::to(http.post(&openai).json(&unknown)).await;
    assert_openai(
        &chat_unknown,
        404,
        "invalid_request_error",
        json!("model_not_found"),
    );
    for answer in [&seed, &gemini, &chat_unknown] {
        assert_eq!(
            answer.message(),
            "model \"gemini-9-ultra\" is not in the chain"
        );
    }

    // The minute's one request spent: the next slot is 60.25 s away, past
    // the wait ceiling of 0: 429 with Retry-After 61 on every surface.
    let (s, _, v) = stack.generate(json!({"prompt": "spend the minute"})).await;
    assert_eq!(s, 200, "{v}");
    let seed = Answer::to(
        http.post(stack.url("/generate"))
            .json(&json!({"prompt": "hi"})),
    )
    .await;
    assert_gemini(&seed, 429, "RESOURCE_EXHAUSTED");
    let gemini = Answer::to(http.post(&native).json(&request_of(5))).await;
    assert_gemini(&gemini, 429, "RESOURCE_EXHAUSTED");
    let chat_wait = Answer::to(http.post(&openai).json(&chat("hi"))).await;
    assert_openai(
        &chat_wait,
        429,
        "rate_limit_error",
        json!("rate_limit_exceeded"),
    );
    for answer in [&seed, &gemini, &chat_wait] {
        assert_eq!(answer.header("retry-after"), Some("61"), "{}", answer.body);
        assert!(
            answer
                .message()
                .starts_with("the earliest slot is on gemini-2.5-flash at "),
            "{}",
            answer.body
        );
    }
    let stats = stack.sim_stats();
    assert_eq!((stats.calls, stats.rejected_429), (1, 0));
}
