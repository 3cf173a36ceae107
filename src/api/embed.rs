//! Embeddings, on the embedding model's own quota: Gemini-native
//! `:embedContent` and `:batchEmbedContents` (under `/v1beta` and `/v1`),
//! passed through, and OpenAI's `/v1/embeddings`, forwarded to the upstream's
//! OpenAI-compatible layer. Each item counts as one request on the model's
//! lanes (the upstream charges a batch per item), and its text's tokens.
//!
//! A batch larger than one call may hold is split, in order, into
//! sub-batches that are planned and dispatched at once, so they spread over
//! keys and windows; their answers are joined, in input order, into one
//! response. One call holds at most the upstream's 100 items, and at most
//! what one window of a lane admits: the scheduler says how many items when
//! it refuses a batch as too large, and halves are tried when the batch's
//! tokens were what did not fit.

use super::AppState;
use super::dispatch::ProviderCall;
use super::dispatch::{self, Failure, Job, Meta, Served};
use super::error::{ApiError, GeminiError};
use super::flux::flux_headers;
use super::openai::{self, OpenAiError};
use super::providers;
use crate::policy::Family;
use crate::scheduler::{KeyChoice, Priority, Target};
use crate::upstream::Kind;
use crate::wire::openai::{embedding_inputs, item_tokens};
use crate::wire::openai_usage::answer_usage;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use std::ops::Range;

/// The most items the upstream takes in one `batchEmbedContents`.
const MAX_BATCH_ITEMS: usize = 100;

/// `POST …/models/{model}:embedContent` or `:batchEmbedContents`: `body` is
/// the client's object, passed through (split when a batch is too large).
pub(super) async fn native(
    state: &AppState,
    model: &str,
    action: &str,
    body: &[u8],
) -> Result<Response, GeminiError> {
    if !embeds(model) {
        return Err(ApiError::not_found(not_an_embedding_model(model)).into());
    }
    let body: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    if action == "embedContent" {
        if !body.get("content").is_some_and(Value::is_object) {
            return Err(ApiError::bad_request("content must be a Content object").into());
        }
        let served = dispatch::embed(state, job(state, model, Value::Object(body), 1)).await?;
        return Ok(answer(served.reply, &[served.meta]));
    }
    let items = match body.get("requests").and_then(Value::as_array) {
        Some(items) if !items.is_empty() && items.iter().all(Value::is_object) => items,
        _ => {
            return Err(ApiError::bad_request(
                "requests must be a list of at least one EmbedContentRequest",
            )
            .into());
        }
    };
    let batch = |run: Range<usize>| json!({"requests": &items[run]});
    let call = |job| dispatch::embed(state, job).boxed();
    let served = serve(state, model, items.len(), &batch, &call).await?;
    let mut embeddings = Vec::with_capacity(items.len());
    let mut metas = Vec::with_capacity(served.len());
    for (run, mut s) in served {
        match s.reply["embeddings"].take() {
            Value::Array(part) if part.len() == run.len() => embeddings.extend(part),
            _ => return Err(short_answer(&run).into()),
        }
        metas.push(s.meta);
    }
    Ok(answer(json!({ "embeddings": embeddings }), &metas))
}

/// `POST /v1/embeddings` (and `/v1beta/openai/embeddings`): `{"model",
/// "input": "text" | ["text", …], …}`, forwarded; one vector a text, in order.
pub(super) async fn openai(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let mut body = openai::read_object(&headers, body)?;
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(|m| m.trim_start_matches("models/").to_string())
        .ok_or_else(|| ApiError::bad_request("model must name an embedding model"))?;
    if let Some((route, model)) = providers::resolve(&state, Kind::OpenAi, &model)? {
        // Another provider's embeddings: one call, as the client sent it.
        let body = Value::Object(body);
        let call = ProviderCall {
            api: route.api.clone(),
            path: "embeddings",
            estimate: embedding_inputs(&body["input"]).map_or(0, |texts| {
                texts.iter().map(|t| item_tokens(&json!(t))).sum()
            }),
            most_output: 0,
            body,
            anthropic_version: None,
            usage: answer_usage,
            clock: state.scheduler.clock(),
        };
        let served = dispatch::provider_json(&state, providers::job(&state, model, call)).await?;
        let mut response = Json(served.reply).into_response();
        flux_headers(response.headers_mut(), &served.meta);
        return Ok(response);
    }
    if !embeds(&model) {
        return Err(ApiError::not_found(not_an_embedding_model(&model)).into());
    }
    let input = body.remove("input").unwrap_or(Value::Null);
    let texts = embedding_inputs(&input).ok_or_else(|| {
        ApiError::bad_request("input must be a string or a list of at least one string")
    })?;
    let part = |run: Range<usize>| {
        let mut part = body.clone();
        part.insert("input".into(), json!(&texts[run]));
        Value::Object(part)
    };
    let call = |job| dispatch::embed(&state, job).boxed();
    let served = serve(&state, &model, texts.len(), &part, &call).await?;
    let mut data = Vec::with_capacity(texts.len());
    let (mut prompt, mut total) = (0, 0);
    let mut metas = Vec::with_capacity(served.len());
    let mut joined = Value::Null;
    for (run, mut s) in served {
        let vectors = match s.reply["data"].take() {
            Value::Array(vectors) if vectors.len() == run.len() => vectors,
            _ => return Err(short_answer(&run).into()),
        };
        for (offset, mut item) in vectors.into_iter().enumerate() {
            item["index"] = json!(run.start + offset);
            data.push(item);
        }
        prompt += s.reply["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
        total += s.reply["usage"]["total_tokens"].as_u64().unwrap_or(0);
        if joined.is_null() {
            joined = s.reply;
        }
        metas.push(s.meta);
    }
    joined["data"] = Value::Array(data);
    joined["usage"] = json!({"prompt_tokens": prompt, "total_tokens": total});
    Ok(answer(joined, &metas))
}

/// Whether `model` is an embedding model: no other embeds, and an
/// embedding call on one would book its lanes only to be refused.
pub(super) fn embeds(model: &str) -> bool {
    Family::of(model) == Family::Embedding
}

fn not_an_embedding_model(model: &str) -> String {
    format!("models/{model} is not an embedding model (gemini-embedding-001 is one)")
}

/// The job of one (sub-)request of `items` items on `model`'s lanes.
fn job(state: &AppState, model: &str, request: Value, items: usize) -> Job<Value> {
    Job {
        request,
        target: Target::Embedding(model.to_string()),
        keys: KeyChoice::Any,
        max_wait: state.max_wait,
        retry: true,
        requests: items as u64,
        priority: Priority::Interactive,
    }
}

/// The served calls of a batch, each with its run of items, in input order.
type Answers = Vec<(Range<usize>, Served<Value>)>;

/// How one sub-request is sent (`dispatch::embed`, borrowing the state).
type Call<'a> = dyn Fn(Job<Value>) -> BoxFuture<'a, Result<Served<Value>, Failure>> + Sync + 'a;

/// Serves the `count` items of a batch, `make` building the request of a
/// run of them: in runs of at most [`MAX_BATCH_ITEMS`], all at once; each
/// answer with its run, in input order.
async fn serve<'a>(
    state: &'a AppState,
    model: &'a str,
    count: usize,
    make: &'a (dyn Fn(Range<usize>) -> Value + Sync),
    call: &'a Call<'a>,
) -> Result<Answers, Failure> {
    let runs = runs(0..count, MAX_BATCH_ITEMS);
    let served = futures::future::try_join_all(
        runs.into_iter()
            .map(|run| serve_run(state, model, run, make, call)),
    )
    .await?;
    Ok(served.into_iter().flatten().collect())
}

/// Serves one run of items as one call; when the scheduler says one call
/// never holds it, as runs of the most items one window admits, or halves
/// when its tokens were what did not fit, all at once. The first failure drops the rest, releasing what was not sent.
fn serve_run<'a>(
    state: &'a AppState,
    model: &'a str,
    run: Range<usize>,
    make: &'a (dyn Fn(Range<usize>) -> Value + Sync),
    call: &'a Call<'a>,
) -> BoxFuture<'a, Result<Answers, Failure>> {
    async move {
        let items = run.len();
        let failure = match call(job(state, model, make(run.clone()), items)).await {
            Ok(served) => return Ok(vec![(run, served)]),
            Err(failure) => failure,
        };
        match failure.batch_too_large() {
            Some(most) if items > 1 => {
                let size = match most.and_then(|m| usize::try_from(m).ok()) {
                    Some(most) if most >= 1 && most < items => most,
                    _ => items.div_ceil(2),
                };
                let parts = runs(run, size)
                    .into_iter()
                    .map(|part| serve_run(state, model, part, make, call));
                let served = futures::future::try_join_all(parts).await?;
                Ok(served.into_iter().flatten().collect())
            }
            _ => Err(failure),
        }
    }
    .boxed()
}

/// The upstream answered a run with another number of vectors than items:
/// no answer beats one whose vectors sit beside the wrong inputs.
fn short_answer(run: &Range<usize>) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!(
            "the upstream answered items {} to {} with a different number of embeddings",
            run.start, run.end
        ),
    )
}

/// `range` cut, in order, into runs of at most `size`.
fn runs(range: Range<usize>, size: usize) -> Vec<Range<usize>> {
    let size = size.max(1);
    range
        .clone()
        .step_by(size)
        .map(|start| start..(start + size).min(range.end))
        .collect()
}

/// The joined answer with the `x-flux-*` headers: the first call's, and,
/// when the batch was split, `x-flux-keys` (the key of each call, in input
/// order) and the longest wait.
fn answer(body: Value, metas: &[Meta]) -> Response {
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    flux_headers(headers, &metas[0]);
    if metas.len() > 1 {
        let keys: Vec<String> = metas.iter().map(|m| m.key.to_string()).collect();
        if let Ok(v) = HeaderValue::from_str(&keys.join(",")) {
            headers.insert("x-flux-keys", v);
        }
        let waited = metas.iter().map(|m| m.waited).max().unwrap_or_default();
        headers.insert(
            "x-flux-wait-ms",
            HeaderValue::from(waited.as_millis() as u64),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_cut_in_order() {
        assert_eq!(runs(0..7, 3), vec![0..3, 3..6, 6..7]);
        assert_eq!(runs(3..6, 5), vec![3..6]);
        assert_eq!(runs(2..4, 1), vec![2..3, 3..4]);
    }
}
