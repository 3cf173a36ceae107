//! OpenAI chat completions through gemini-flux, forwarded to the upstream's
//! own OpenAI-compatible layer (the simulator's, here): tools and streamed
//! tool calls, an agent loop that keeps gemini-3's thought signatures, the
//! options passed through as they came, settlement from the answer's usage,
//! and an upstream 429 from that layer learned like a native one. Also the
//! same function calling on the native route, where the body passes through.

mod common;

use common::*;
use gemini_flux::sim::{Faults, SimConfig};
use serde_json::{Value, json};

const FLASH: &str = "gemini-2.5-flash";
const GEMINI_3: &str = "gemini-3-flash-preview";

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}})
}

fn ask(model: &str, messages: Value) -> Value {
    json!({"model": model, "messages": messages, "tools": [weather_tool()]})
}

/// The events of an OpenAI stream, `[DONE]` left out; panics unless it ends with it.
fn events(text: &str) -> Vec<Value> {
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

/// A service that estimates prompts locally (the upstream's `usage` then
/// corrects the booking where it counts more).
async fn counting_locally(sim: SimConfig) -> Stack {
    Stack::start(sim, quiet_noon(), &[("FLUX_TOKEN_COUNT", "local")]).await
}

/// Key 1's counts on `model` in `/status`: (requests today, tokens today).
async fn booked(stack: &Stack, model: &str) -> (u64, u64) {
    let (_, status) = stack.get("/status").await;
    let lane = &status["keys"][0]["models"][model];
    (
        lane["requests_today"].as_u64().unwrap(),
        lane["tokens_today"].as_u64().unwrap(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_chat_with_tools_returns_the_tool_call_and_settles_at_the_upstreams_count() {
    let stack = counting_locally(SimConfig::new(["sim-key-0001"])).await;
    let (s, v) = stack
        .post(
            "/v1/chat/completions",
            ask(
                FLASH,
                json!([{"role": "user", "content": "Weather in Paris?"}]),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "sim"}));
    assert!(
        call.get("extra_content").is_none(),
        "no signature before gemini-3: {call}"
    );
    // The estimate counts the messages (17 characters: 5 tokens); the
    // upstream counted the tool declaration too, and the booking says so.
    let counted = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(counted > 5, "{v}");
    assert_eq!(booked(&stack, FLASH).await, (1, counted));
    assert_eq!(
        stack.sim_stats().lane(1, FLASH).unwrap().input_tokens,
        counted
    );
    assert_eq!(stack.sim_stats().rejected_429, 0);
}

#[tokio::test(start_paused = true)]
async fn a_streamed_tool_call_arrives_as_a_delta_and_settles_from_the_last_usage() {
    let stack = counting_locally(SimConfig::new(["sim-key-0001"])).await;
    let mut body = ask(
        FLASH,
        json!([{"role": "user", "content": "Weather in Paris?"}]),
    );
    body["stream"] = json!(true);
    let resp = stack
        .http
        .post(stack.url("/v1beta/openai/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = events(&resp.text().await.unwrap());
    let delta = &events[0]["choices"][0]["delta"];
    assert_eq!(delta["tool_calls"][0]["index"], 0);
    assert_eq!(delta["tool_calls"][0]["function"]["name"], "get_weather");
    let last = events.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    let counted = last["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(counted > 5);
    assert_eq!(booked(&stack, FLASH).await, (1, counted));
}

#[tokio::test(start_paused = true)]
async fn an_agent_loop_on_gemini_3_sends_the_thought_signature_back() {
    let stack = Stack::start(SimConfig::new(["sim-key-0001"]), quiet_noon(), &[]).await;
    let question = json!({"role": "user", "content": "Weather in Paris?"});
    let (s, first) = stack
        .post("/v1/chat/completions", ask(GEMINI_3, json!([question])))
        .await;
    assert_eq!(s, 200, "{first}");
    let assistant = first["choices"][0]["message"].clone();
    let call = &assistant["tool_calls"][0];
    assert!(
        call["extra_content"]["google"]["thought_signature"].is_string(),
        "{call}"
    );
    let result = json!({"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"});

    // The tool's result with the assistant's turn as it came: the answer.
    let (s, answer) = stack
        .post(
            "/v1/chat/completions",
            ask(GEMINI_3, json!([question, assistant, result])),
        )
        .await;
    assert_eq!(s, 200, "{answer}");
    let message = &answer["choices"][0]["message"];
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert!(
        message["content"].as_str().unwrap().starts_with("ok:"),
        "{answer}"
    );

    // Without the signature, gemini-3 refuses; the refusal is the client's,
    // in OpenAI's envelope, and touches no key.
    let mut unsigned = assistant.clone();
    unsigned["tool_calls"][0]
        .as_object_mut()
        .unwrap()
        .remove("extra_content");
    let (s, refused) = stack
        .post(
            "/v1/chat/completions",
            ask(GEMINI_3, json!([question, unsigned, result])),
        )
        .await;
    assert_eq!(s, 400, "{refused}");
    assert_eq!(refused["error"]["type"], "invalid_request_error");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing a thought_signature"),
        "{refused}"
    );
    let (_, status) = stack.get("/status").await;
    assert_eq!(status["keys"][0]["state"], "healthy");
    assert_eq!(
        booked(&stack, GEMINI_3).await.0,
        3,
        "the refused call kept its booking and was not retried"
    );
    assert_eq!(stack.sim_stats().lane(1, GEMINI_3).unwrap().calls, 2);
    assert_eq!(stack.sim_stats().rejected_429, 0);
}

#[tokio::test(start_paused = true)]
async fn every_option_reaches_the_upstream_as_it_came() {
    let mut sim = SimConfig::new(["sim-key-0001"]);
    sim.faults = Faults {
        json_answer: Some(r#"{"city": "Paris"}"#.into()),
        ..Faults::default()
    };
    let stack = counting_locally(sim).await;
    let image = |url: &str| json!({"type": "image_url", "image_url": {"url": url}});
    let (s, v) = stack
        .post(
            "/v1/chat/completions",
            json!({
                "model": FLASH,
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "abcdefgh"},
                    image("data:image/png;base64,iVBORw0KGgo="),
                    image("https://example.com/cat.jpg")]}],
                "n": 2, "stop": ["END"], "seed": 7, "temperature": 0.3,
                "reasoning_effort": "low",
                "extra_body": {"google": {"thinking_config": {"thinking_budget": 0}}},
                "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object"}}},
            }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "n");
    assert_eq!(choices[1]["message"]["content"], r#"{"city": "Paris"}"#);
    // 2 tokens of text and two images, counted alike by the estimate and
    // the upstream.
    assert_eq!(v["usage"]["prompt_tokens"], 2 + 2 * 258);
    assert_eq!(booked(&stack, FLASH).await, (1, 2 + 2 * 258));

    // What the gateway does not check, the upstream judges.
    let (s, v) = stack
        .post(
            "/v1/chat/completions",
            json!({"model": FLASH, "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "extreme"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reasoning_effort")
    );
    assert_eq!(stack.sim_stats().rejected_429, 0);
}

#[tokio::test(start_paused = true)]
async fn a_429_from_the_openai_layer_is_learned_like_a_native_one() {
    // The service believes flash's built-in 10 RPM; the projects allow 2.
    let keys = ["sim-key-0001", "sim-key-0002"];
    let sim = SimConfig::new(keys).with_limits(limits(FLASH, 2, 250_000, 250));
    let stack = Stack::start(sim, quiet_noon(), &[("FLUX_MODELS", FLASH)]).await;
    let chat = json!({"model": FLASH, "messages": [{"role": "user", "content": "hi"}]});
    let started = tokio::time::Instant::now();
    for _ in 0..5 {
        let (s, v) = stack.post("/v1/chat/completions", chat.clone()).await;
        assert_eq!(s, 200, "{v}");
    }
    // Two calls a key, then the fifth drew the upstream's 429 (wrapped as
    // the OpenAI layer wraps it), which taught 2 RPM: it waited for the
    // next window (60 s and the 250 ms guard) instead of failing.
    assert_eq!(started.elapsed(), std::time::Duration::from_millis(60_250));
    let (_, status) = stack.get("/status").await;
    let lane = &status["keys"][0]["models"][FLASH];
    assert_eq!(lane["learned"]["rpm"], 2, "{lane}");
    assert_eq!(lane["limits"]["sources"]["rpm"], "learned", "{lane}");
    // Key 2 is on the same tier: it learned too, so no second 429.
    let stats = stack.sim_stats();
    assert_eq!((stats.rejected_429, stats.calls), (1, 5));
}

#[tokio::test(start_paused = true)]
async fn what_the_gateway_refuses_itself_spends_nothing() {
    let stack = Stack::start(SimConfig::new(["sim-key-0001"]), quiet_noon(), &[]).await;
    let cases = [
        (json!({"model": FLASH}), 400, "messages"),
        (json!({"model": FLASH, "messages": []}), 400, "at least one"),
        (
            json!({"model": FLASH, "messages": [{"content": "x"}]}),
            400,
            "messages[0]",
        ),
        (
            json!({"model": 7, "messages": [{"role": "user", "content": "x"}]}),
            400,
            "model",
        ),
        (
            json!({"model": FLASH, "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
            400,
            "stream",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
            404,
            "gpt-4o",
        ),
    ];
    for (body, status, names) in cases {
        let (s, v) = stack.post("/v1/chat/completions", body).await;
        assert_eq!(s, status, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{message}");
        assert!(v["error"]["type"].is_string() && v["error"].get("param").is_some());
    }
    // Nothing was booked, so nothing was sent.
    assert_eq!(booked(&stack, FLASH).await, (0, 0));
}

#[tokio::test(start_paused = true)]
async fn the_simulators_openai_layer_answers_errors_as_an_array() {
    let sim = start_sim(
        SimConfig::new(["sim-key-0001"]).with_limits(limits(FLASH, 1, 250_000, 250)),
        quiet_noon(),
    )
    .await;
    let http = client();
    let url = format!("{}/v1beta/openai/chat/completions", sim.base_url());
    let chat = json!({"model": FLASH, "messages": [{"role": "user", "content": "hi"}]});
    let send = |key: &'static str| http.post(&url).bearer_auth(key).json(&chat).send();
    let wrong = send("not-a-key").await.unwrap();
    assert_eq!(wrong.status(), 400);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body[0]["error"]["details"][0]["reason"], "API_KEY_INVALID");
    assert_eq!(send("sim-key-0001").await.unwrap().status(), 200);
    let over = send("sim-key-0001").await.unwrap();
    assert_eq!(over.status(), 429);
    let body: Value = over.json().await.unwrap();
    assert_eq!(body[0]["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(
        body[0]["error"]["details"][0]["violations"][0]["quotaValue"],
        "1"
    );
    // The same lane as the native route: that one is refused too.
    let native = http
        .post(format!(
            "{}/v1beta/models/{FLASH}:generateContent",
            sim.base_url()
        ))
        .header("x-goog-api-key", "sim-key-0001")
        .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(native.status(), 429);
}

#[tokio::test(start_paused = true)]
async fn native_function_calls_pass_through_with_their_signature() {
    let stack = Stack::start(SimConfig::new(["sim-key-0001"]), quiet_noon(), &[]).await;
    let url = format!("/v1beta/models/{GEMINI_3}:generateContent");
    let declaration = json!({"name": "get_weather", "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}});
    let question = json!({"role": "user", "parts": [{"text": "Weather in Paris?"}]});
    let ask = |contents: Value| json!({"contents": contents, "tools": [{"functionDeclarations": [declaration]}]});
    let (s, first) = stack.post(&url, ask(json!([question]))).await;
    assert_eq!(s, 200, "{first}");
    let call = first["candidates"][0]["content"].clone();
    let part = &call["parts"][0];
    assert_eq!(
        part["functionCall"],
        json!({"name": "get_weather", "args": {"city": "sim"}})
    );
    assert!(part["thoughtSignature"].is_string(), "{part}");
    let result = json!({"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"sky": "sunny"}}}]});
    let (s, answer) = stack.post(&url, ask(json!([question, call, result]))).await;
    assert_eq!(s, 200, "{answer}");
    let text = answer["candidates"][0]["content"]["parts"][0]["text"].as_str();
    assert!(text.is_some_and(|t| t.starts_with("ok:")), "{answer}");
    // The call sent back without its signature: gemini-3's 400, the client's.
    let mut unsigned = call.clone();
    unsigned["parts"][0]
        .as_object_mut()
        .unwrap()
        .remove("thoughtSignature");
    let (s, refused) = stack
        .post(&url, ask(json!([question, unsigned, result])))
        .await;
    assert_eq!(s, 400, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("position 2")
    );
    let (_, status) = stack.get("/status").await;
    assert_eq!(status["keys"][0]["state"], "healthy");
    assert_eq!(stack.sim_stats().rejected_429, 0);
}
