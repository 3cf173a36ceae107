//! The Gemini Batch API, run on free-tier keys, in the shapes google-genai's
//! `client.batches` reads: `POST …/models/{model}:batchGenerateContent`
//! with inline requests (reached through `gemini::call_model`),
//! `GET …/batches` (paged), `GET …/batches/{id}`,
//! `POST …/batches/{id}:cancel` and `DELETE …/batches/{id}`, under `/v1beta`
//! and `/v1`. A batch is a long-running operation; when it ends its
//! results come inline, in input order, each with its response or its
//! error. Each batch belongs to the API token that created it. The items
//! run below interactive traffic (`batch_runner`).

use super::AppState;
use super::auth::Caller;
use super::batch_queue::Progress;
use super::batch_runner::Batches;
use super::error::ApiError;
use super::gemini::fallback_header;
use crate::store::StoreError;
use crate::store::batches::{BatchRow, BatchState, ItemOutcome, ItemResult, NewItem};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use rand::Rng;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

/// At most this many requests in one batch (and at most `FLUX_MAX_BODY_MB`
/// of them: they come in one body).
pub const MAX_ITEMS: usize = 10_000;

/// At most this many items waiting or running, all batches together.
pub const MAX_UNFINISHED: u64 = 100_000;

const BATCH_TYPE: &str =
    "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch";
const OUTPUT_TYPE: &str =
    "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1beta/batches", get(list))
        .route("/v1/batches", get(list))
        .route(
            "/v1beta/batches/{name}",
            get(get_batch).post(cancel).delete(delete),
        )
        .route(
            "/v1/batches/{name}",
            get(get_batch).post(cancel).delete(delete),
        )
}

/// The batches, or 501 where they do not run (replicas sharing Redis).
fn batches(state: &AppState) -> Result<&Batches, ApiError> {
    state.batches.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "the Batch API runs on a single instance with its SQLite state store; replicas sharing Redis do not run batches",
        )
    })
}

fn store_failed(e: StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the batch could not be stored: {e}"),
    )
    .retry_after(crate::store::RETRY_EVERY)
}

/// `POST …/models/{model}:batchGenerateContent`.
pub async fn create(
    state: &AppState,
    model: &str,
    headers: &HeaderMap,
    caller: &Caller,
    body: &[u8],
) -> Result<Response, ApiError> {
    let batches = batches(state)?;
    let fallback = fallback_header(headers)? || state.native_fallback;
    let (display_name, items) = read_batch(body, model)?;
    let chain = state
        .scheduler
        .snapshot()
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is shutting down",
            )
        })?
        .chain;
    if !chain.iter().any(|m| m == model) {
        return Err(ApiError::not_found(format!("models/{model} is not found")));
    }
    let queued = batches.unfinished_items();
    if queued + items.len() as u64 > MAX_UNFINISHED {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{queued} batch items wait already; at most {MAX_UNFINISHED} may wait at once: submit this batch when more are done"
            ),
        )
        .retry_after(std::time::Duration::from_secs(60)));
    }
    let now = state.scheduler.clock().now();
    let id = new_id();
    let row = BatchRow {
        display_name: display_name.unwrap_or_else(|| format!("batch-{id}")),
        id,
        owner: caller.0.clone(),
        model: model.to_string(),
        fallback,
        state: BatchState::Pending,
        items: items.len() as u32,
        created: now,
        updated: now,
        ended: None,
    };
    batches
        .create(row.clone(), items)
        .await
        .map_err(store_failed)?;
    tracing::info!(
        "batch {} accepted: {} request(s) on {model}",
        row.id,
        row.items
    );
    let progress = batches
        .progress(&row.id, now)
        .ok_or_else(|| ApiError::not_found("the batch was deleted at once"))?;
    Ok(Json(operation(&progress, None)).into_response())
}

/// 20 lowercase letters and digits, as Gemini's batch names look.
fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// `models/x` or `x`, as `x`.
fn bare_model(name: &str) -> &str {
    name.strip_prefix("models/").unwrap_or(name)
}

/// A `batchGenerateContent` body, read without a tree of the whole (a
/// 20 MB body would take many times that): each request stays raw text
/// until it is checked on its own. Fields by their JSON or proto names.
#[derive(Deserialize)]
struct CreateBody<'a> {
    #[serde(borrow)]
    batch: BatchBody<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchBody<'a> {
    #[serde(default)]
    model: Option<Value>,
    #[serde(default, alias = "display_name")]
    display_name: Option<Value>,
    #[serde(borrow, alias = "input_config")]
    input_config: InputConfig<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InputConfig<'a> {
    #[serde(default, alias = "file_name")]
    file_name: Option<Value>,
    #[serde(borrow, default)]
    requests: Option<InlinedRequests<'a>>,
}

#[derive(Deserialize)]
struct InlinedRequests<'a> {
    #[serde(borrow)]
    requests: Vec<&'a RawValue>,
}

/// The display name and the items of a `batchGenerateContent` body; a 400
/// naming the item that is wrong.
fn read_batch(body: &[u8], model: &str) -> Result<(Option<String>, Vec<NewItem>), ApiError> {
    let shape = r#"the body must be {"batch": {"displayName": …, "inputConfig": {"requests": {"requests": [{"request": {"contents": […]}, "metadata": {…}}, …]}}}}"#;
    let body: CreateBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("{shape} ({e})")))?;
    let batch = body.batch;
    if let Some(named) = batch.model
        && named.as_str().map(bare_model) != Some(model)
    {
        return Err(ApiError::bad_request(format!(
            "batch.model {named} is not the model of the path, models/{model}"
        )));
    }
    let display_name = match batch.display_name {
        None => None,
        Some(Value::String(name)) if name.chars().count() <= 512 => Some(name),
        Some(_) => {
            return Err(ApiError::bad_request(
                "batch.displayName must be a string of at most 512 characters",
            ));
        }
    };
    if batch.input_config.file_name.is_some() {
        return Err(ApiError::bad_request(
            "a file of requests (inputConfig.fileName) is not run here: send the requests inline",
        ));
    }
    let requests = batch
        .input_config
        .requests
        .ok_or_else(|| ApiError::bad_request(shape))?
        .requests;
    if requests.is_empty() {
        return Err(ApiError::bad_request("the batch has no requests"));
    }
    if requests.len() > MAX_ITEMS {
        return Err(ApiError::bad_request(format!(
            "the batch has {} requests; at most {MAX_ITEMS} go in one batch: split it",
            requests.len()
        )));
    }
    let items = requests
        .iter()
        .enumerate()
        .map(|(i, item)| {
            read_item(item, model).map_err(|why| {
                ApiError::bad_request(format!("batch.inputConfig.requests.requests[{i}]: {why}"))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((display_name, items))
}

/// One inline request: `{"request": GenerateContentRequest, "metadata": {…}}`.
fn read_item(item: &RawValue, model: &str) -> Result<NewItem, String> {
    let item: Map<String, Value> = serde_json::from_str(item.get())
        .map_err(|_| r#"must be an object {"request": {…}, "metadata": {…}}"#)?;
    if let Some(unknown) = item.keys().find(|k| *k != "request" && *k != "metadata") {
        return Err(format!(
            r#"unknown field {unknown:?}: an item is {{"request": {{"contents": […]}}, "metadata": {{…}}}}"#
        ));
    }
    let mut request = item
        .get("request")
        .and_then(Value::as_object)
        .cloned()
        .ok_or(r#""request" (a GenerateContentRequest object) is required"#)?;
    match request.get("contents") {
        Some(Value::Array(contents)) if !contents.is_empty() => {}
        _ => return Err("request.contents must be a non-empty list".into()),
    }
    // The batch's model serves every item; the field goes no further.
    if let Some(named) = request.remove("model")
        && named.as_str().map(bare_model) != Some(model)
    {
        return Err(format!(
            "request.model {named} is not the batch's model, models/{model}"
        ));
    }
    let metadata = match item.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => Some(m.to_string()),
        Some(_) => return Err("metadata must be an object".into()),
    };
    Ok(NewItem {
        request: Value::Object(request).to_string(),
        metadata,
    })
}

fn wire_state(state: BatchState) -> &'static str {
    match state {
        BatchState::Pending => "BATCH_STATE_PENDING",
        BatchState::Running => "BATCH_STATE_RUNNING",
        BatchState::Succeeded => "BATCH_STATE_SUCCEEDED",
        BatchState::Cancelled => "BATCH_STATE_CANCELLED",
    }
}

/// What gemini-flux adds to a batch's metadata (and lists in `/status`):
/// items per state, what it waits for, when it should finish.
pub fn progress_json(p: &Progress) -> Value {
    json!({
        "id": p.row.id,
        "displayName": p.row.display_name,
        "model": p.row.model,
        "state": p.row.state.as_str(),
        "items": p.row.items,
        "pending": p.pending,
        "running": p.running,
        "done": p.done,
        "failed": p.failed,
        "createTime": p.row.created,
        "endTime": p.row.ended,
        "waitingUntil": p.parked.as_ref().map(|w| w.until),
        "waitingReason": p.parked.as_ref().map(|w| &w.reason),
        "expectedFinish": p.expected_finish,
    })
}

/// A batch as the long-running operation Gemini answers with; `output`,
/// once it has ended, its results in input order.
fn operation(p: &Progress, output: Option<Vec<Value>>) -> Value {
    let name = format!("batches/{}", p.row.id);
    let mut metadata = json!({
        "@type": BATCH_TYPE,
        "model": format!("models/{}", p.row.model),
        "displayName": p.row.display_name,
        "createTime": p.row.created,
        "updateTime": p.row.updated,
        "batchStats": {
            "requestCount": p.row.items.to_string(),
            "successfulRequestCount": p.done.to_string(),
            "failedRequestCount": p.failed.to_string(),
            "pendingRequestCount": (p.pending + p.running).to_string(),
        },
        "state": wire_state(p.row.state),
        "name": name,
        "fluxProgress": progress_json(p),
    });
    let mut operation = json!({"name": name});
    if let Some(ended) = p.row.ended {
        metadata["endTime"] = json!(ended);
        operation["done"] = json!(true);
    }
    if let Some(responses) = output {
        let inlined = json!({"inlinedResponses": responses});
        metadata["output"] = json!({"inlinedResponses": inlined});
        if p.row.state == BatchState::Succeeded {
            operation["response"] = json!({"@type": OUTPUT_TYPE, "inlinedResponses": inlined});
        }
    }
    if p.row.state == BatchState::Cancelled {
        operation["error"] =
            json!({"code": 1, "message": "the batch was cancelled", "status": "CANCELLED"});
    }
    operation["metadata"] = metadata;
    operation
}

/// Each item's response or error, in input order; one that never ran (its
/// batch was cancelled first) has a CANCELLED error.
fn inlined_responses(results: Vec<ItemResult>) -> Vec<Value> {
    results
        .into_iter()
        .map(|item| {
            let mut answer = match item.result {
                Some((outcome, text)) => {
                    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    match outcome {
                        ItemOutcome::Response => json!({"response": value}),
                        ItemOutcome::Error => json!({"error": value}),
                    }
                }
                None => json!({"error": {
                    "code": 1,
                    "message": "the batch was cancelled before this request ran",
                    "status": "CANCELLED",
                }}),
            };
            if let Some(metadata) = item.metadata.and_then(|m| serde_json::from_str(&m).ok()) {
                answer["metadata"] = metadata;
            }
            answer
        })
        .collect()
}

/// The caller's batch named in the path (`{id}`, with `:cancel` on the POST).
fn find(state: &AppState, id: &str, caller: &Caller) -> Result<Progress, ApiError> {
    let batches = batches(state)?;
    let not_found = || ApiError::not_found(format!("batches/{id} is not found"));
    let plausible = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !plausible {
        return Err(not_found());
    }
    batches
        .progress(id, state.scheduler.clock().now())
        .filter(|p| p.row.owner == caller.0)
        .ok_or_else(not_found)
}

/// `GET …/batches/{id}`.
async fn get_batch(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let progress = find(&state, &id, &caller)?;
    let output = match progress.row.ended {
        Some(_) => {
            let results = batches(&state)?
                .results(&id)
                .await
                .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
            Some(inlined_responses(results))
        }
        None => None,
    };
    Ok(Json(operation(&progress, output)).into_response())
}

/// `POST …/batches/{id}:cancel`: items not sent yet never run; the batch
/// keeps the results it has.
async fn cancel(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let Some(id) = name.strip_suffix(":cancel") else {
        return Err(ApiError::not_found(format!(
            "no method in {name:?}: expected {{id}}:cancel"
        )));
    };
    find(&state, id, &caller)?;
    let now = state.scheduler.clock().now();
    batches(&state)?
        .cancel(id, now)
        .await
        .map_err(store_failed)?;
    tracing::info!("batch {id} cancelled");
    Ok(Json(json!({})).into_response())
}

/// `DELETE …/batches/{id}`: the batch and its results are forgotten.
async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    find(&state, &id, &caller)?;
    batches(&state)?.delete(&id).await.map_err(store_failed)?;
    tracing::info!("batch {id} deleted");
    Ok(Json(json!({})).into_response())
}

/// `GET …/batches?pageSize=&pageToken=`: the caller's batches, newest
/// first, without their results.
async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let batches = batches(&state)?;
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
            .map_err(|_| ApiError::bad_request("the query string is malformed"))?;
    let value = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let size = match value("pageSize") {
        None => 50,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request("pageSize must be a whole number from 1 to 1000")
            })?,
    };
    let start = match value("pageToken").filter(|t| !t.is_empty()) {
        None => 0,
        Some(token) => token
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request("pageToken is not one this service gave"))?,
    };
    let now = state.scheduler.clock().now();
    let mine: Vec<Progress> = batches
        .all(now)
        .into_iter()
        .filter(|p| p.row.owner == caller.0)
        .collect();
    let page: Vec<Value> = mine
        .iter()
        .skip(start)
        .take(size)
        .map(|p| operation(p, None))
        .collect();
    let mut answer = json!({"operations": page});
    if start + size < mine.len() {
        answer["nextPageToken"] = json!((start + size).to_string());
    }
    Ok(Json(answer).into_response())
}
