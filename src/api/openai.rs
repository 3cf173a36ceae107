//! OpenAI-compatible routes, at `/v1/...` and at `/v1beta/openai/...` (where
//! Gemini itself offers them), so any OpenAI SDK can point here. Chat
//! completions are translated to a `GenerateContentRequest`, scheduled like
//! every other call, and translated back; errors come in OpenAI's shape.

use super::AppState;
use super::dispatch::{self, Failure, Job, Stream};
use super::error::{ApiError, set_retry_after, whole_number};
use super::flux::flux_headers;
use super::relay::{Framing, Usage, relay};
use crate::scheduler::{KeyChoice, Priority, Target};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1beta/openai/chat/completions", post(chat))
        .route("/v1beta/openai/models", get(models))
}

pub fn is_openai_path(path: &str) -> bool {
    path == "/v1/chat/completions" || path.starts_with("/v1beta/openai/")
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        404 => ("invalid_request_error", Some("model_not_found")),
        429 => ("rate_limit_error", Some("rate_limit_exceeded")),
        400..=499 => ("invalid_request_error", None),
        _ => ("api_error", None),
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (status, Json(body)).into_response()
}

pub fn failure_response(failure: Failure) -> Response {
    let (status, message) = failure.status_and_message();
    let mut response = error_response(status, &message);
    if let Failure::Flux(ApiError {
        retry_after: Some(wait),
        ..
    }) = failure
    {
        set_retry_after(response.headers_mut(), wait);
    }
    response
}

/// The chain, as OpenAI lists models.
pub async fn model_list(state: &AppState) -> Response {
    match state.scheduler.snapshot().await {
        Ok(snapshot) => {
            let data: Vec<Value> = snapshot
                .chain
                .iter()
                .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "google"}))
                .collect();
            Json(json!({"object": "list", "data": data})).into_response()
        }
        Err(_) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is shutting down",
        ),
    }
}

async fn models(State(state): State<AppState>) -> Response {
    model_list(&state).await
}

#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(default, deserialize_with = "whole_number")]
    max_tokens: Option<u32>,
    #[serde(default, deserialize_with = "whole_number")]
    max_completion_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop: Option<Stop>,
    response_format: Option<ResponseFormat>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    #[serde(default, deserialize_with = "whole_number")]
    n: Option<u32>,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Deserialize)]
struct ImageUrl {
    url: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchema },
}

#[derive(Deserialize)]
struct JsonSchema {
    schema: Option<Value>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Gemini parts for one message's content.
fn parts(content: Option<Content>) -> Result<Vec<Value>, String> {
    match content {
        None => Ok(vec![]),
        Some(Content::Text(text)) => Ok(vec![json!({"text": text})]),
        Some(Content::Parts(parts)) => parts
            .into_iter()
            .map(|p| match p {
                ContentPart::Text { text } => Ok(json!({"text": text})),
                ContentPart::ImageUrl { image_url } => {
                    let (mime, data) = image_url
                        .url
                        .strip_prefix("data:")
                        .and_then(|rest| rest.split_once(";base64,"))
                        .ok_or("image_url must be a data: URL with base64 content")?;
                    Ok(json!({"inlineData": {"mimeType": mime, "data": data}}))
                }
            })
            .collect(),
    }
}

impl ChatRequest {
    /// The equivalent `GenerateContentRequest`.
    fn into_gemini(self) -> Result<Value, String> {
        if self.n.is_some_and(|n| n != 1) {
            return Err("only n = 1 is supported".into());
        }
        let mut system = Vec::new();
        let mut contents = Vec::new();
        for message in self.messages {
            let role = match message.role.as_str() {
                "system" | "developer" => {
                    system.extend(parts(message.content)?);
                    continue;
                }
                "user" => "user",
                "assistant" => "model",
                other => return Err(format!("messages with role {other:?} are not supported")),
            };
            contents.push(json!({"role": role, "parts": parts(message.content)?}));
        }
        if contents.is_empty() {
            return Err("messages must hold at least one user or assistant message".into());
        }
        let mut config = serde_json::Map::new();
        if self.max_completion_tokens == Some(0) || self.max_tokens == Some(0) {
            return Err("max_tokens and max_completion_tokens must be at least 1".into());
        }
        if let Some(n) = self.max_completion_tokens.or(self.max_tokens) {
            config.insert("maxOutputTokens".into(), json!(n));
        }
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err("temperature must be between 0 and 2".into());
            }
            config.insert("temperature".into(), json!(t));
        }
        if let Some(p) = self.top_p {
            config.insert("topP".into(), json!(p));
        }
        match self.stop {
            Some(Stop::One(s)) => {
                config.insert("stopSequences".into(), json!([s]));
            }
            Some(Stop::Many(v)) => {
                config.insert("stopSequences".into(), json!(v));
            }
            None => {}
        }
        match self.response_format {
            Some(ResponseFormat::JsonObject) => {
                config.insert("responseMimeType".into(), json!("application/json"));
            }
            Some(ResponseFormat::JsonSchema { json_schema }) => {
                config.insert("responseMimeType".into(), json!("application/json"));
                if let Some(schema) = json_schema.schema {
                    config.insert("responseJsonSchema".into(), schema);
                }
            }
            Some(ResponseFormat::Text) | None => {}
        }
        let mut request = json!({"contents": contents});
        if !system.is_empty() {
            request["systemInstruction"] = json!({"parts": system});
        }
        if !config.is_empty() {
            request["generationConfig"] = Value::Object(config);
        }
        Ok(request)
    }
}

fn finish_reason(gemini: &Value) -> Value {
    match gemini.as_str() {
        None => Value::Null,
        Some("MAX_TOKENS") => json!("length"),
        Some("SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII") => {
            json!("content_filter")
        }
        Some(_) => json!("stop"),
    }
}

fn text_of(chunk: &Value) -> String {
    chunk["candidates"][0]["content"]["parts"]
        .as_array()
        .map(|parts| parts.iter().filter_map(|p| p["text"].as_str()).collect())
        .unwrap_or_default()
}

fn usage_json((input, output): Usage) -> Value {
    json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output})
}

async fn chat(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(e) = super::error::json_content_type(&headers) {
        return error_response(e.status, &e.message);
    }
    let body = match body {
        Ok(b) => b,
        Err(rejection) => return error_response(rejection.status(), &rejection.body_text()),
    };
    let request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("invalid request body: {e}"),
            );
        }
    };
    let stream = request.stream;
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let model = request
        .model
        .clone()
        .map(|m| m.trim_start_matches("models/").to_string());
    let gemini = match request.into_gemini() {
        Ok(g) => g,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    let opted_in = match super::gemini::fallback_header(&headers) {
        Ok(opted_in) => opted_in,
        Err(e) => return error_response(e.status, &e.message),
    };
    let target = match model {
        None => Target::Chain(None),
        Some(m) if opted_in || state.native_fallback => Target::ChainFrom(m),
        Some(m) => Target::Model(m),
    };
    let job = Job {
        request: gemini,
        target,
        keys: KeyChoice::Any,
        requests: 1,
        max_wait: state.max_wait,
        retry: true,
        unknown_model: StatusCode::NOT_FOUND,
        priority: Priority::Interactive,
    };
    let id = format!("chatcmpl-{:016x}", rand::random::<u64>());
    let created = state.scheduler.clock().now().millis() / 1000;
    let (mut response, meta) = if stream {
        let served = match dispatch::stream(&state, job).await {
            Ok(s) => s,
            Err(failure) => return failure_response(failure),
        };
        let framing = ChatChunks {
            id,
            created,
            model: served.meta.model.clone(),
            include_usage,
            sent_role: false,
        };
        let Stream {
            response: upstream,
            settlement,
        } = served.reply;
        let body = relay(upstream, settlement, framing);
        let response = ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response();
        (response, served.meta)
    } else {
        let served = match dispatch::generate(&state, job).await {
            Ok(s) => s,
            Err(failure) => return failure_response(failure),
        };
        let g = &served.reply;
        let usage = (served.meta.input_tokens, g.output_tokens);
        let response = Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": served.meta.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": g.text()},
                "finish_reason": finish_reason(&g.body["candidates"][0]["finishReason"]),
            }],
            "usage": usage_json(usage),
        }))
        .into_response();
        (response, served.meta)
    };
    flux_headers(response.headers_mut(), &meta);
    response
}

/// OpenAI's streaming framing: `chat.completion.chunk` events, an optional
/// usage chunk, then `data: [DONE]`.
struct ChatChunks {
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
    sent_role: bool,
}

impl ChatChunks {
    fn event(&self, choices: Value, usage: Option<Value>) -> String {
        let mut chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": choices});
        if let Some(u) = usage {
            chunk["usage"] = u;
        }
        format!("data: {chunk}\n\n")
    }
}

impl Framing for ChatChunks {
    fn chunk(&mut self, chunk: &Value) -> Option<Bytes> {
        let mut delta = json!({"content": text_of(chunk)});
        if !std::mem::replace(&mut self.sent_role, true) {
            delta["role"] = json!("assistant");
        }
        let choices = json!([{"index": 0, "delta": delta, "finish_reason": finish_reason(&chunk["candidates"][0]["finishReason"])}]);
        Some(Bytes::from(self.event(choices, None)))
    }

    fn end(&mut self, usage: Option<Usage>) -> Option<Bytes> {
        let mut out = String::new();
        if self.include_usage {
            out.push_str(&self.event(json!([]), Some(usage_json(usage.unwrap_or((0, 0))))));
        }
        out.push_str("data: [DONE]\n\n");
        Some(Bytes::from(out))
    }

    fn broken(&mut self, message: &str) -> Bytes {
        let error = json!({"error": {"message": format!("the upstream stream broke off: {message}"), "type": "api_error", "param": null, "code": null}});
        Bytes::from(format!("data: {error}\n\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(v: Value) -> Result<Value, String> {
        serde_json::from_value::<ChatRequest>(v)
            .map_err(|e| e.to_string())?
            .into_gemini()
    }

    #[test]
    fn messages_and_options_become_a_generate_request() {
        let g = translate(json!({
            "model": "gemini-2.5-flash",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "More"}
            ],
            "max_completion_tokens": 100, "temperature": 0.5, "top_p": 0.9, "stop": "END",
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
        }))
        .unwrap();
        assert_eq!(g["systemInstruction"]["parts"][0]["text"], "Be brief.");
        assert_eq!(
            g["contents"][0]["parts"][1]["inlineData"]["mimeType"],
            "image/png"
        );
        assert_eq!(g["contents"][1]["role"], "model");
        assert_eq!(g["contents"].as_array().unwrap().len(), 3);
        let c = &g["generationConfig"];
        assert_eq!(
            (c["maxOutputTokens"].as_u64(), c["topP"].as_f64()),
            (Some(100), Some(0.9))
        );
        assert_eq!(c["stopSequences"], json!(["END"]));
        assert_eq!(c["responseMimeType"], "application/json");
        assert_eq!(c["responseJsonSchema"], json!({"type": "object"}));
    }

    #[test]
    fn unsupported_requests_are_refused_with_a_reason() {
        assert!(
            translate(json!({"messages": []}))
                .unwrap_err()
                .contains("at least one")
        );
        assert!(
            translate(json!({"messages": [{"role": "tool", "content": "x"}]}))
                .unwrap_err()
                .contains("tool")
        );
        assert!(
            translate(json!({"messages": [{"role": "user", "content": "x"}], "n": 2}))
                .unwrap_err()
                .contains("n = 1")
        );
        let zero = json!({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 5, "max_tokens": 0});
        assert!(translate(zero).unwrap_err().contains("at least 1"));
        let url = json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]});
        assert!(translate(url).unwrap_err().contains("data: URL"));
    }

    #[test]
    fn stream_chunks_end_with_usage_and_done() {
        let mut f = ChatChunks {
            id: "c".into(),
            created: 1,
            model: "m".into(),
            include_usage: true,
            sent_role: false,
        };
        let first = f
            .chunk(&json!({"candidates": [{"content": {"parts": [{"text": "ok"}]}}]}))
            .unwrap();
        assert!(String::from_utf8_lossy(&first).contains("\"role\":\"assistant\""));
        let end = String::from_utf8(f.end(Some((10, 2))).unwrap().to_vec()).unwrap();
        assert!(end.contains("\"total_tokens\":12") && end.ends_with("data: [DONE]\n\n"));
    }
}
