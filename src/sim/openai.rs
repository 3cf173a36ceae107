//! The simulator's OpenAI-compatible layer, at `/v1beta/openai/` as Google
//! serves it: chat completions (whole or streamed, `n` choices, tools, and on
//! gemini-3 models a thought signature on each tool call that the next turn
//! must send back) and embeddings. It is a layer over the same lanes: a call
//! counts on the per-key, per-model quotas exactly as on the native routes
//! (an embedding item as one request), and every error is Gemini's envelope
//! inside a one-element array, as the real layer answers.
//!
//! The answers are predictable: a chat counts its messages' text and images
//! as [`ChatPrompt`] does, plus its tool declarations' text, and says
//! `ok:<prompt tokens>`; with tools
//! and the user's message last, it calls the first tool (or the one
//! `tool_choice` names) with arguments made from its parameters' schema; an
//! embedding is [`routes::embedding_of`] its text.

use super::SimState;
use super::routes::{self, Admitted, Failure, invalid_argument};
use super::tools;
use crate::policy::{Limits, Usage};
use crate::wire::openai::{ChatPrompt, embedding_inputs, item_tokens};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};
use std::sync::Arc;

type Shared = Arc<SimState>;

/// Options a chat's `reasoning_effort` may take.
const EFFORTS: [&str; 5] = ["none", "minimal", "low", "medium", "high"];
/// Most choices (`n`) and stop sequences one request may ask for.
const MAX_CHOICES: u64 = 8;
const MAX_STOPS: usize = 5;

pub(super) fn routes() -> Router<Shared> {
    let endpoint = |endpoint: Endpoint| {
        move |State(state): State<Shared>, headers: HeaderMap, body: Bytes| async move {
            answer(&state, &headers, &body, endpoint).await
        }
    };
    Router::new()
        .route(
            "/v1beta/openai/chat/completions",
            post(endpoint(Endpoint::Chat)),
        )
        .route(
            "/v1beta/openai/embeddings",
            post(endpoint(Endpoint::Embeddings)),
        )
}

#[derive(Clone, Copy)]
enum Endpoint {
    Chat,
    Embeddings,
}

/// One call to the layer, answered; a failure as the layer writes it.
async fn answer(
    state: &SimState,
    headers: &HeaderMap,
    body: &[u8],
    endpoint: Endpoint,
) -> Response {
    let action = match endpoint {
        Endpoint::Chat => "generateContent",
        Endpoint::Embeddings => "embedContent",
    };
    let answered = match open(state, headers, body, action) {
        Ok(call) => match endpoint {
            Endpoint::Chat => chat(state, call).await,
            Endpoint::Embeddings => embeddings(state, call).await,
        },
        Err(failure) => Err(failure),
    };
    answered.unwrap_or_else(Failure::openai)
}

/// What every call to the layer opens with: the caller's key (1-based,
/// from `Authorization: Bearer`), the body, its model (without `models/`)
/// and the key's limits on it for `action`.
struct Call {
    key_index: usize,
    body: Map<String, Value>,
    model: String,
    limits: Limits,
}

fn open(state: &SimState, headers: &HeaderMap, body: &[u8], action: &str) -> Result<Call, Failure> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let key_index = routes::key_index(state, key)?;
    let body = routes::json_object(body)?;
    let model = match body.get("model").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => m.trim_start_matches("models/").to_string(),
        _ => return Err(bad("model", "a model name is required")),
    };
    let limits = routes::served_limits(state, key_index, &model, "v1beta", action)?;
    Ok(Call {
        key_index,
        body,
        model,
        limits,
    })
}

fn bad(field: &str, what: &str) -> Failure {
    invalid_argument(&format!("Invalid value at '{field}': {what}"))
}

async fn chat(state: &SimState, call: Call) -> Result<Response, Failure> {
    let Call {
        key_index,
        body,
        model,
        limits,
    } = call;
    let chat = read_chat(&body, &model)?;
    let tokens = chat_tokens(&Value::Object(body));
    let admitted = routes::admit(state, key_index, &model, &limits, Usage::call(tokens)).await?;
    let answer = Reply {
        text: match (&admitted.json_answer, chat.json) {
            (Some(scripted), true) => scripted.clone(),
            _ => format!("ok:{tokens}"),
        },
        created: state.clock.now().millis() / 1000,
        model,
        prompt_tokens: tokens,
        chat,
        admitted,
    };
    Ok(answer.respond())
}

/// What a chat's prompt counts: the messages (as the gateway estimates
/// them, [`ChatPrompt`]) and, as the real model counts them too, the tool
/// declarations' text.
fn chat_tokens(body: &Value) -> u64 {
    let tools = match body.get("tools") {
        Some(tools @ Value::Array(_)) => item_tokens(&json!(tools.to_string())),
        _ => 0,
    };
    ChatPrompt::of(body).tokens() + tools
}

/// What a valid chat request asks of the answer.
struct Chat {
    choices: u64,
    stream: bool,
    /// The response format asks for JSON.
    json: bool,
    /// The tool the answer calls: its name and JSON arguments.
    call: Option<(String, String)>,
    /// The model issues thought signatures (gemini-3).
    signs: bool,
}

/// Checks a chat body as strictly as the real layer, and decides its answer.
fn read_chat(body: &Map<String, Value>, model: &str) -> Result<Chat, Failure> {
    let messages = match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        _ => return Err(bad("messages", "at least one message is required")),
    };
    for (i, message) in messages.iter().enumerate() {
        check_message(message, &format!("messages[{i}]"))?;
    }
    let tools = check_tools(body.get("tools"))?;
    let forced = check_tool_choice(body.get("tool_choice"), &tools)?;
    check_options(body)?;
    let signs = tools::signs(model);
    if signs {
        check_signatures(messages)?;
    }
    let user_last = messages.last().is_some_and(|m| m["role"] == "user");
    let call = match forced {
        ToolChoice::None => None,
        ToolChoice::Auto if user_last => tools.first().map(tool_call),
        ToolChoice::Named(name) if user_last => tools
            .iter()
            .find(|t| t["name"].as_str() == Some(&name))
            .map(tool_call),
        ToolChoice::Auto | ToolChoice::Named(_) => None,
    };
    let json = matches!(
        body.get("response_format").and_then(|f| f["type"].as_str()),
        Some("json_object" | "json_schema")
    );
    Ok(Chat {
        choices: body.get("n").and_then(Value::as_u64).unwrap_or(1),
        stream: body.get("stream") == Some(&Value::Bool(true)),
        json,
        call,
        signs,
    })
}

fn check_message(message: &Value, at: &str) -> Result<(), Failure> {
    let content = &message["content"];
    if message
        .get("tool_call_id")
        .is_some_and(|id| !id.is_string())
    {
        return Err(bad(&format!("{at}.tool_call_id"), "must be a string"));
    }
    let calls = match message.get("tool_calls") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(calls)) if message["role"] == "assistant" => calls,
        Some(_) => {
            return Err(bad(
                &format!("{at}.tool_calls"),
                "an assistant's list of tool calls",
            ));
        }
    };
    for (j, call) in calls.iter().enumerate() {
        let function = &call["function"];
        let valid = call["type"] == "function"
            && call["id"].is_string()
            && function["name"].as_str().is_some_and(|n| !n.is_empty())
            && function["arguments"].is_string();
        if !valid {
            return Err(bad(
                &format!("{at}.tool_calls[{j}]"),
                "a tool call has an id, type \"function\" and a function with a name and arguments",
            ));
        }
    }
    match message["role"].as_str() {
        Some("system" | "developer" | "user") => check_content(content, at),
        Some("assistant") if content.is_null() && !calls.is_empty() => Ok(()),
        Some("assistant") => check_content(content, at),
        Some("tool") if !message["tool_call_id"].is_string() => Err(bad(
            &format!("{at}.tool_call_id"),
            "a tool message names the call it answers",
        )),
        Some("tool") => check_content(content, at),
        _ => Err(bad(
            &format!("{at}.role"),
            "must be system, developer, user, assistant or tool",
        )),
    }
}

fn check_content(content: &Value, at: &str) -> Result<(), Failure> {
    let parts = match content {
        Value::String(_) => return Ok(()),
        Value::Array(parts) => parts,
        _ => {
            return Err(bad(
                &format!("{at}.content"),
                "must be a string or a list of parts",
            ));
        }
    };
    for (k, part) in parts.iter().enumerate() {
        let ok = match part["type"].as_str() {
            Some("text") => part["text"].is_string(),
            Some("image_url") => part["image_url"]["url"].as_str().is_some_and(|url| {
                url.starts_with("http://")
                    || url.starts_with("https://")
                    || url
                        .strip_prefix("data:")
                        .is_some_and(|d| d.contains(";base64,"))
            }),
            Some("input_audio") => {
                part["input_audio"]["data"].is_string() && part["input_audio"]["format"].is_string()
            }
            _ => false,
        };
        if !ok {
            return Err(bad(
                &format!("{at}.content[{k}]"),
                "a part is text, an image_url (a data: URL in base64, or http(s)) or input_audio",
            ));
        }
    }
    Ok(())
}

/// The declared functions, each as `{"name", "parameters"}`.
fn check_tools(tools: Option<&Value>) -> Result<Vec<Value>, Failure> {
    let tools = match tools {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(bad("tools", "must be a list")),
    };
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let function = &tool["function"];
            let named = function["name"].as_str().is_some_and(|name| {
                (1..=64).contains(&name.len())
                    && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
            });
            let parameters = function.get("parameters").unwrap_or(&Value::Null);
            let described = matches!(
                function.get("description"),
                None | Some(Value::Null | Value::String(_))
            );
            let schema = parameters.is_null() || parameters.is_object();
            if tool["type"] != "function" || !named || !described || !schema {
                return Err(bad(
                    &format!("tools[{i}]"),
                    "a tool is a function with a valid name (letters, digits, _ . : -, at most 64), a text description and an object schema",
                ));
            }
            Ok(json!({"name": function["name"], "parameters": parameters}))
        })
        .collect()
}

enum ToolChoice {
    None,
    Auto,
    Named(String),
}

fn check_tool_choice(choice: Option<&Value>, tools: &[Value]) -> Result<ToolChoice, Failure> {
    let choice = match choice {
        None | Some(Value::Null) => return Ok(ToolChoice::Auto),
        Some(c) => c,
    };
    match choice.as_str() {
        Some("none") => return Ok(ToolChoice::None),
        Some("auto" | "required") => return Ok(ToolChoice::Auto),
        _ => {}
    }
    let name = choice["function"]["name"].as_str();
    match name {
        Some(name) if choice["type"] == "function" && tools.iter().any(|t| t["name"] == name) => {
            Ok(ToolChoice::Named(name.to_string()))
        }
        _ => Err(bad(
            "tool_choice",
            "none, auto, required, or a function among the tools",
        )),
    }
}

/// The generation options, each checked when present (null is absent).
fn check_options(body: &Map<String, Value>) -> Result<(), Failure> {
    let set = |field: &str| body.get(field).filter(|v| !v.is_null());
    let number_in = |field: &str, low: f64, high: f64| match set(field) {
        Some(v) if !v.as_f64().is_some_and(|x| (low..=high).contains(&x)) => Err(bad(
            field,
            &format!("must be a number from {low} to {high}"),
        )),
        _ => Ok(()),
    };
    let whole_in = |field: &str, low: u64, high: u64| match set(field) {
        Some(v) if !v.as_u64().is_some_and(|n| (low..=high).contains(&n)) => Err(bad(
            field,
            &format!("must be a whole number from {low} to {high}"),
        )),
        _ => Ok(()),
    };
    number_in("temperature", 0.0, 2.0)?;
    number_in("top_p", 0.0, 1.0)?;
    whole_in("max_tokens", 1, u64::MAX)?;
    whole_in("max_completion_tokens", 1, u64::MAX)?;
    whole_in("n", 1, MAX_CHOICES)?;
    if set("seed").is_some_and(|v| !v.is_i64() && !v.is_u64()) {
        return Err(bad("seed", "must be a whole number"));
    }
    match set("stop") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(stops))
            if stops.len() <= MAX_STOPS && stops.iter().all(Value::is_string) => {}
        Some(_) => {
            return Err(bad(
                "stop",
                &format!("a string or a list of at most {MAX_STOPS} strings"),
            ));
        }
    }
    if set("reasoning_effort").is_some_and(|e| !e.as_str().is_some_and(|e| EFFORTS.contains(&e))) {
        return Err(bad(
            "reasoning_effort",
            &format!("must be one of {EFFORTS:?}"),
        ));
    }
    if let Some(format) = set("response_format") {
        let valid = match format["type"].as_str() {
            Some("text" | "json_object") => true,
            Some("json_schema") => {
                let schema = &format["json_schema"];
                schema["name"].is_string()
                    && matches!(schema.get("schema"), None | Some(Value::Object(_)))
            }
            _ => false,
        };
        if !valid {
            return Err(bad(
                "response_format",
                "type text, json_object, or json_schema with a json_schema that has a name (and an object schema)",
            ));
        }
    }
    for field in ["stream_options", "extra_body"] {
        if set(field).is_some_and(|v| !v.is_object()) {
            return Err(bad(field, "must be an object"));
        }
    }
    if set("stream").is_some_and(|v| !v.is_boolean()) {
        return Err(bad("stream", "must be true or false"));
    }
    if set("extra_body")
        .and_then(|e| e.get("google"))
        .is_some_and(|g| !g.is_object())
    {
        return Err(bad("extra_body.google", "must be an object"));
    }
    Ok(())
}

/// In the current turn (after the user's last message), each assistant
/// step's first tool call must carry the signature it was given, as
/// gemini-3 enforces.
fn check_signatures(messages: &[Value]) -> Result<(), Failure> {
    let turn = messages
        .iter()
        .rposition(|m| m["role"] == "user")
        .map_or(0, |i| i + 1);
    let in_contents = |i: usize| {
        messages[..=i]
            .iter()
            .filter(|m| !matches!(m["role"].as_str(), Some("system" | "developer")))
            .count()
    };
    for (i, message) in messages.iter().enumerate().skip(turn) {
        if let Some(first) = message["tool_calls"].as_array().and_then(|c| c.first()) {
            let name = first["function"]["name"].as_str().unwrap_or_default();
            let given = first["extra_content"]["google"]["thought_signature"].as_str();
            tools::check_signed(name, given, in_contents(i))?;
        }
    }
    Ok(())
}

/// A call to `tool`: its name and JSON arguments.
fn tool_call(tool: &Value) -> (String, String) {
    let name = tool["name"].as_str().unwrap_or_default().to_string();
    (name, tools::arguments(&tool["parameters"]).to_string())
}

/// One admitted chat call's answer.
struct Reply {
    text: String,
    created: i64,
    model: String,
    prompt_tokens: u64,
    chat: Chat,
    admitted: Admitted,
}

impl Reply {
    /// The tool call of the answer, as OpenAI writes it (`index` in a stream).
    fn tool_calls(&self, streamed: bool) -> Option<Value> {
        let (name, arguments) = self.chat.call.as_ref()?;
        let mut call = json!({
            "id": format!("call-{}", self.admitted.response_id),
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        });
        if self.chat.signs {
            call["extra_content"] =
                json!({"google": {"thought_signature": tools::signature(name)}});
        }
        if streamed {
            call["index"] = json!(0);
        }
        Some(json!([call]))
    }

    fn usage(&self) -> Value {
        let said = match &self.chat.call {
            Some((_, arguments)) => item_tokens(&json!(arguments)),
            None => item_tokens(&json!(self.text)),
        };
        let completion = said * self.chat.choices;
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        })
    }

    fn finish_reason(&self) -> &'static str {
        if self.chat.call.is_some() {
            "tool_calls"
        } else {
            "stop"
        }
    }

    fn envelope(&self, object: &str, choices: Vec<Value>) -> Value {
        json!({
            "id": format!("sim-{}", self.admitted.response_id),
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// Each choice with `delta` (or `message`) and the finish reason.
    fn choices(&self, key: &str, body: &Value, finish: Option<&str>) -> Vec<Value> {
        (0..self.chat.choices)
            .map(|i| json!({"index": i, key: body, "finish_reason": finish}))
            .collect()
    }

    fn respond(self) -> Response {
        if !self.chat.stream {
            let message = match self.tool_calls(false) {
                Some(calls) => json!({"role": "assistant", "content": null, "tool_calls": calls}),
                None => json!({"role": "assistant", "content": self.text}),
            };
            let mut body = self.envelope(
                "chat.completion",
                self.choices("message", &message, Some(self.finish_reason())),
            );
            body["usage"] = self.usage();
            let frames = vec![Bytes::from(body.to_string())];
            return (
                [(header::CONTENT_TYPE, "application/json")],
                self.admitted.body(frames),
            )
                .into_response();
        }
        // Text in pieces ("ok", ":", "<n>"), or the tool call in one delta;
        // the last chunk has the finish reason and the usage, whether or not
        // `stream_options.include_usage` asked for it (as the real layer does).
        let deltas: Vec<Value> = match self.tool_calls(true) {
            Some(calls) => vec![json!({"role": "assistant", "tool_calls": calls})],
            None => {
                let pieces = match self.text.strip_prefix("ok:") {
                    Some(count) => vec!["ok", ":", count],
                    None => vec![self.text.as_str()],
                };
                pieces
                    .into_iter()
                    .enumerate()
                    .map(|(i, piece)| match i {
                        0 => json!({"role": "assistant", "content": piece}),
                        _ => json!({ "content": piece }),
                    })
                    .collect()
            }
        };
        let last = deltas.len() - 1;
        let mut frames: Vec<Bytes> = deltas
            .iter()
            .enumerate()
            .map(|(i, delta)| {
                let finish = (i == last).then(|| self.finish_reason());
                let mut chunk = self.envelope(
                    "chat.completion.chunk",
                    self.choices("delta", delta, finish),
                );
                if i == last {
                    chunk["usage"] = self.usage();
                }
                Bytes::from(format!("data: {chunk}\n\n"))
            })
            .collect();
        frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
        (
            [(header::CONTENT_TYPE, "text/event-stream")],
            self.admitted.body(frames),
        )
            .into_response()
    }
}

/// `{"model", "input": "text" | ["text", …], "dimensions"?}`: one vector a
/// text, in order; each text counts as one request on the lane.
async fn embeddings(state: &SimState, call: Call) -> Result<Response, Failure> {
    let (key_index, body, model) = (call.key_index, &call.body, &call.model);
    let inputs = body
        .get("input")
        .and_then(embedding_inputs)
        .filter(|texts| texts.iter().all(|t| !t.is_empty()))
        .ok_or_else(|| bad("input", "a non-empty string or a list of non-empty strings"))?;
    if inputs.len() > routes::MAX_BATCH_ITEMS {
        return Err(bad(
            "input",
            &format!("at most {} texts a request", routes::MAX_BATCH_ITEMS),
        ));
    }
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => routes::EMBEDDING_DIMENSIONS,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=3072) => n as usize,
            _ => return Err(bad("dimensions", "must be from 1 to 3072")),
        },
    };
    let format = body.get("encoding_format").filter(|v| !v.is_null());
    if format.is_some_and(|f| !matches!(f.as_str(), Some("float" | "base64"))) {
        return Err(bad("encoding_format", "must be float or base64"));
    }
    let tokens: u64 = inputs.iter().map(|t| item_tokens(&json!(t))).sum();
    let spent = Usage {
        requests: inputs.len() as u64,
        input_tokens: tokens,
        output_tokens: 0,
    };
    let admitted = routes::admit(state, key_index, model, &call.limits, spent).await?;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            json!({"object": "embedding", "index": i, "embedding": routes::embedding_of(text, dimensions)})
        })
        .collect();
    let answer = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        admitted.body(vec![Bytes::from(answer.to_string())]),
    )
        .into_response())
}
