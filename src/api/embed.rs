//! Embeddings, on the embedding model's own quota: Gemini-native
//! `:embedContent` and `:batchEmbedContents` (under `/v1beta` and `/v1`),
//! passed through, and OpenAI's `/v1/embeddings`, forwarded to the upstream's
//! OpenAI-compatible layer. Each item counts as one request on the model's
//! lanes (the upstream charges a batch per item), and its text's tokens.
//!
//! A batch larger than one call may hold (what one window of a lane admits,
//! and the upstream's 100 items) is split, in order, into sub-batches that
//! are planned and dispatched at once, so they spread over keys and
//! windows; their answers are joined, in input order, into one response.

use super::AppState;
use super::dispatch::{self, Failure, Job, Meta, Served};
use super::error::ApiError;
use super::flux::flux_headers;
use super::openai;
use crate::scheduler::{KeyChoice, Target};
use crate::wire::openai::{embedding_inputs, item_tokens};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::ops::Range;

/// The most items the upstream takes in one `batchEmbedContents`.
const MAX_BATCH_ITEMS: usize = 100;

/// `POST …/models/{model}:embedContent` or `:batchEmbedContents`: `body` is
/// the client's object, passed through (split when a batch is too large).
pub(super) async fn native(state: &AppState, model: &str, action: &str, body: &[u8]) -> Response {
    let body: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(body) => body,
        Err(e) => return ApiError::bad_request(format!("invalid JSON body: {e}")).into_response(),
    };
    if action == "embedContent" {
        if !body.get("content").is_some_and(Value::is_object) {
            return ApiError::bad_request("content must be a Content object").into_response();
        }
        return match dispatch::embed(state, job(state, model, Value::Object(body))).await {
            Ok(served) => answer(served.reply, &[&served.meta]),
            Err(failure) => failure.into_response(),
        };
    }
    let items = match body.get("requests").and_then(Value::as_array) {
        Some(items) if !items.is_empty() && items.iter().all(Value::is_object) => items,
        _ => {
            return ApiError::bad_request(
                "requests must be a list of at least one EmbedContentRequest",
            )
            .into_response();
        }
    };
    let tokens: Vec<u64> = items.iter().map(|i| item_tokens(&i["content"])).collect();
    let runs = match per_call(state, model).await {
        Ok(bound) => split(&tokens, bound),
        Err(failure) => return failure.into_response(),
    };
    let calls = runs.iter().map(|run| {
        let batch = json!({"requests": &items[run.clone()]});
        dispatch::embed(state, job(state, model, batch))
    });
    match futures::future::try_join_all(calls).await {
        Ok(served) => {
            let embeddings: Vec<Value> = served
                .iter()
                .flat_map(|s| s.reply["embeddings"].as_array().cloned().unwrap_or_default())
                .collect();
            answer(json!({ "embeddings": embeddings }), &metas(&served))
        }
        Err(failure) => failure.into_response(),
    }
}

/// `POST /v1/embeddings` (and `/v1beta/openai/embeddings`): `{"model",
/// "input": "text" | ["text", …], …}`, forwarded; one vector a text, in order.
pub(super) async fn openai(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut body = match openai::read_object(&headers, body) {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let Some(model) = body
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(|m| m.trim_start_matches("models/").to_string())
    else {
        return openai::error_response(StatusCode::BAD_REQUEST, "model must name an embedding model");
    };
    let input = body.remove("input").unwrap_or(Value::Null);
    let Some(texts) = embedding_inputs(&input) else {
        return openai::error_response(
            StatusCode::BAD_REQUEST,
            "input must be a string or a list of at least one string",
        );
    };
    let tokens: Vec<u64> = texts.iter().map(|t| item_tokens(&json!(t))).collect();
    let bound = match per_call(&state, &model).await {
        Ok(bound) => bound,
        Err(failure) => return openai::failure_response(failure),
    };
    let runs = split(&tokens, bound);
    let calls = runs.iter().map(|run| {
        let mut part = body.clone();
        part.insert("input".into(), json!(&texts[run.clone()]));
        dispatch::openai_embed(&state, job(&state, &model, Value::Object(part)))
    });
    // Every sub-batch at once (each planned on its own, so they spread over
    // keys and windows); the first failure drops the rest, releasing what
    // was not yet sent.
    let served = match futures::future::try_join_all(calls).await {
        Ok(served) => served,
        Err(failure) => return openai::failure_response(failure),
    };
    let mut data = Vec::with_capacity(texts.len());
    let (mut prompt, mut total) = (0, 0);
    for (s, run) in served.iter().zip(&runs) {
        for (offset, mut item) in s.reply["data"].as_array().cloned().unwrap_or_default().into_iter().enumerate() {
            item["index"] = json!(run.start + offset);
            data.push(item);
        }
        prompt += s.reply["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
        total += s.reply["usage"]["total_tokens"].as_u64().unwrap_or(0);
    }
    let mut joined = served[0].reply.clone();
    joined["data"] = Value::Array(data);
    joined["usage"] = json!({"prompt_tokens": prompt, "total_tokens": total});
    answer(joined, &metas(&served))
}

/// The job of one (sub-)request on `model`'s lanes: one request an item.
fn job(state: &AppState, model: &str, request: Value) -> Job {
    Job {
        requests: items_of(&request),
        request,
        target: Target::Model(model.to_string()),
        keys: KeyChoice::Any,
        max_wait: state.max_wait,
        retry: true,
        unknown_model: StatusCode::NOT_FOUND,
    }
}

fn metas(served: &[Served<Value>]) -> Vec<&Meta> {
    served.iter().map(|s| &s.meta).collect()
}

/// How many items a (sub-)request holds.
fn items_of(request: &Value) -> u64 {
    if let Some(items) = request.get("requests").and_then(Value::as_array) {
        items.len() as u64
    } else if let Some(texts) = request.get("input").and_then(embedding_inputs) {
        texts.len() as u64
    } else {
        1
    }
}

/// The most items, and input tokens, one call of `model` may hold.
async fn per_call(state: &AppState, model: &str) -> Result<(usize, u64), Failure> {
    let _ = (state, model);
    Ok((MAX_BATCH_ITEMS, u64::MAX))
}

/// Consecutive runs of the items (whose tokens are `tokens`), in order, each
/// within `(max_items, max_tokens)`; an item alone above `max_tokens` is a
/// run of its own (its plan then says it can never fit).
fn split(tokens: &[u64], (max_items, max_tokens): (usize, u64)) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut sum = 0u64;
    for (i, &t) in tokens.iter().enumerate() {
        let full = i - start == max_items.max(1) || (i > start && sum.saturating_add(t) > max_tokens);
        if full {
            runs.push(start..i);
            start = i;
            sum = 0;
        }
        sum = sum.saturating_add(t);
    }
    if start < tokens.len() {
        runs.push(start..tokens.len());
    }
    runs
}

/// The joined answer with the `x-flux-*` headers: the first sub-batch's, with
/// every key used (in input order) and the longest wait when it was split.
fn answer(body: Value, metas: &[&Meta]) -> Response {
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    flux_headers(headers, metas[0]);
    if metas.len() > 1 {
        let keys: Vec<String> = metas.iter().map(|m| (m.key + 1).to_string()).collect();
        if let Ok(v) = HeaderValue::from_str(&keys.join(",")) {
            headers.insert("x-flux-key", v);
        }
        let waited = metas.iter().map(|m| m.waited).max().unwrap_or_default();
        headers.insert("x-flux-wait-ms", HeaderValue::from(waited.as_millis() as u64));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_splits_in_order_by_items_and_tokens() {
        assert_eq!(split(&[1; 7], (3, u64::MAX)), vec![0..3, 3..6, 6..7]);
        assert_eq!(split(&[1; 3], (3, u64::MAX)), vec![0..3]);
        assert_eq!(split(&[4, 4, 4, 1], (10, 8)), vec![0..2, 2..4]);
        // An item too large alone is alone.
        assert_eq!(split(&[2, 20, 2], (10, 8)), vec![0..1, 1..2, 2..3]);
    }
}
