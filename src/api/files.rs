//! The Files API (`/upload/v1beta/files`, `/v1beta/files…`, and the `v1`
//! forms), with each file pinned to the key that uploaded it.
//!
//! A file belongs to the project whose key uploaded it; any other key gets
//! 403 for it. So gemini-flux picks the upload's key itself (usable, with
//! the most requests left today over the chain), records file → key
//! durably in the state store until the file expires, and every generate,
//! stream or countTokens call that names the file (`fileData.fileUri`) is
//! served by that key alone ([`pinned_key`]). Uploads follow Google's
//! resumable protocol: the start is answered with an `X-Goog-Upload-URL`
//! back to this service, under an upload id of ours that stands for the
//! upstream's session; the chunks are forwarded with the key. None of it
//! spends generate quota.

use super::AppState;
use super::error::{ApiError, GeminiError};
use super::gemini::{no_usable_key, query_value, upstream_failure};
use crate::clock::Timestamp;
use crate::keys::{KeyIndex, KeyState};
use crate::store::Record;
use crate::upstream::Relayed;
use crate::wire::files::{
    FILE_LIFETIME, UPLOAD_CHUNK_GRANULARITY, UPLOAD_COMMAND, UPLOAD_HEADER_CONTENT_LENGTH,
    UPLOAD_HEADER_CONTENT_TYPE, UPLOAD_OFFSET, UPLOAD_PROTOCOL, UPLOAD_SIZE_RECEIVED,
    UPLOAD_STATUS, UPLOAD_URL, file_ids, header_text, valid_file_id,
};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/upload/v1beta/files", post(upload))
        .route("/upload/v1/files", post(upload))
        .route("/v1beta/files", get(list))
        .route("/v1/files", get(list))
        .route("/v1beta/files/{id}", get(one_file).delete(one_file))
        .route("/v1/files/{id}", get(one_file).delete(one_file))
}

/// An upload's chunks carry no key (google-genai sends none: the upload URL
/// is the credential), so `auth` lets a request through that names an
/// upload id; the id is worthless unless it is one of ours.
pub fn is_upload_chunk(path: &str, query: Option<&str>) -> bool {
    (path == "/upload/v1beta/files" || path == "/upload/v1/files")
        && query_value(query, "upload_id").is_some()
}

/// Uploads under way are forgotten after this long.
const UPLOAD_TTL: Duration = Duration::from_secs(24 * 3_600);
/// At most this many uploads under way; a new one beyond it ends the oldest.
const MAX_UPLOADS: usize = 1_000;

/// What the Files API keeps in memory: uploads under way, and the owners
/// of files this process has seen (the store has them all).
#[derive(Default)]
pub struct Files {
    uploads: Mutex<HashMap<String, Upload>>,
    owners: Mutex<HashMap<String, Owner>>,
}

/// An upload the upstream has started: our id stands for its URL.
struct Upload {
    key: KeyIndex,
    upstream_url: String,
    started: Timestamp,
}

#[derive(Clone)]
struct Owner {
    key_id: String,
    expires: Timestamp,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Files {
    fn start(&self, id: String, upload: Upload) {
        let mut uploads = lock(&self.uploads);
        let now = upload.started;
        uploads.retain(|_, u| now.since(u.started) < UPLOAD_TTL);
        if uploads.len() >= MAX_UPLOADS
            && let Some(oldest) = uploads
                .iter()
                .min_by_key(|(_, u)| u.started)
                .map(|(id, _)| id.clone())
        {
            uploads.remove(&oldest);
        }
        uploads.insert(id, upload);
    }

    fn upload(&self, id: &str) -> Option<(KeyIndex, String)> {
        lock(&self.uploads)
            .get(id)
            .map(|u| (u.key, u.upstream_url.clone()))
    }

    fn finish(&self, id: &str) {
        lock(&self.uploads).remove(id);
    }

    fn known_owner(&self, name: &str, now: Timestamp) -> Option<String> {
        let mut owners = lock(&self.owners);
        match owners.get(name) {
            Some(o) if o.expires > now => Some(o.key_id.clone()),
            Some(_) => {
                owners.remove(name);
                None
            }
            None => None,
        }
    }

    fn remember(&self, name: &str, owner: Owner, now: Timestamp) {
        let mut owners = lock(&self.owners);
        owners.retain(|_, o| o.expires > now);
        owners.insert(name.to_string(), owner);
    }

    fn forget(&self, name: &str) {
        lock(&self.owners).remove(name);
    }
}

/// `x-flux-key: N` on an answer served by key N, or refused by it.
fn with_key(answer: impl IntoResponse, key: KeyIndex) -> Response {
    let mut response = answer.into_response();
    response
        .headers_mut()
        .insert("x-flux-key", HeaderValue::from(key.one_based()));
    response
}

/// The key that owns file `name`, if the service knows the file; an error
/// that names the file when that key cannot serve it now.
async fn owner_of(state: &AppState, name: &str) -> Result<Option<KeyIndex>, ApiError> {
    let now = state.scheduler.clock().now();
    let key_id = match state.files.known_owner(name, now) {
        Some(id) => id,
        None => match state.ledger.file_owner(name, now).await {
            Ok(Some(id)) => id,
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "files/{name}: the state store that knows which key owns it cannot be read ({e})"
                    ),
                )
                .retry_after(crate::store::RETRY_EVERY));
            }
        },
    };
    let Some(key) = state
        .key_ids
        .iter()
        .position(|id| *id == key_id)
        .map(KeyIndex::new)
    else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "files/{name} was uploaded with a key that is no longer configured; only that key's project can read it: upload the file again"
            ),
        ));
    };
    if !state
        .usable_gemini_keys()
        .get(key.get())
        .copied()
        .unwrap_or(false)
    {
        return Err(owner_unusable(state, name, key).await);
    }
    Ok(Some(key))
}

/// 503 naming the file and why its key cannot serve it.
async fn owner_unusable(state: &AppState, name: &str, key: KeyIndex) -> ApiError {
    let why = match state.scheduler.snapshot().await {
        Ok(snapshot) => match snapshot.keys.get(key.get()).map(|k| &k.state) {
            Some(KeyState::Disabled) => {
                format!("disabled by an operator (POST /keys/{key}/enable brings it back)")
            }
            Some(KeyState::Invalid(why)) => format!("not valid: {}", state.scrub(why)),
            Some(KeyState::Blocked(why)) => format!("refused: {}", state.scrub(why)),
            _ => "not usable".to_string(),
        },
        Err(_) => "not usable".to_string(),
    };
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "files/{name} belongs to key {key}, which is {why}; only that key's project can read the file, so no other key is tried"
        ),
    )
    .retry_after(Duration::from_secs(60))
}

/// The key that must serve a request naming `file_uris` (its
/// `fileData.fileUri`s): the one that owns the uploaded files among them.
/// `None` when it names none the service knows: such a call goes wherever
/// the scheduler sends it, and the upstream's 403 for a file not its
/// project's is the client's answer.
pub(crate) async fn pinned_key(
    state: &AppState,
    file_uris: &[String],
) -> Result<Option<KeyIndex>, ApiError> {
    let mut pinned: Option<(KeyIndex, &str)> = None;
    for name in file_ids(file_uris) {
        let Some(key) = owner_of(state, name).await? else {
            continue;
        };
        match pinned {
            Some((first_key, first)) if first_key != key => {
                return Err(ApiError::bad_request(format!(
                    "files/{first} belongs to key {first_key} and files/{name} to key {key}: one call can read the files of one key's project only. Upload them with one key (x-flux-key: N on the upload's start)"
                )));
            }
            _ => pinned = Some((key, name)),
        }
    }
    Ok(pinned.map(|(key, _)| key))
}

/// The key for a new upload: the one asked for with `x-flux-key`, else a
/// usable key with the most requests left today over the chain (in turn
/// among equals), which is where the calls naming the file will go.
async fn upload_key(state: &AppState, headers: &HeaderMap) -> Result<KeyIndex, ApiError> {
    let usable = state.usable_gemini_keys();
    if let Some(asked) = headers.get("x-flux-key") {
        let key = asked
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .and_then(KeyIndex::from_one_based)
            .filter(|k| k.get() < usable.len());
        return match key {
            Some(k) if usable[k] => Ok(k),
            Some(k) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("x-flux-key: key {k} is not usable now"),
            )),
            None => Err(ApiError::bad_request(format!(
                "x-flux-key must be a key's number, 1 to {}",
                usable.len()
            ))),
        };
    }
    let Ok(snapshot) = state.scheduler.snapshot().await else {
        return state.next_usable_key().ok_or_else(no_usable_key);
    };
    let room: Vec<(KeyIndex, u64)> = snapshot
        .keys
        .iter()
        .enumerate()
        .filter(|(k, _)| usable.get(*k).copied().unwrap_or(false))
        .map(|(k, key)| {
            let left = key
                .models
                .values()
                .filter(|lane| !lane.usage.exhausted_today)
                .map(|lane| u64::from(lane.limits.rpd.saturating_sub(lane.usage.requests_today)))
                .sum();
            (KeyIndex::new(k), left)
        })
        .collect();
    let most = room.iter().map(|r| r.1).max().ok_or_else(no_usable_key)?;
    let best: Vec<KeyIndex> = room.iter().filter(|r| r.1 == most).map(|r| r.0).collect();
    let turn = state
        .count_turn
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(best[turn % best.len()])
}

/// `POST /upload/v1beta/files`: a new upload (`X-Goog-Upload-Command:
/// start`), or one of its chunks (`?upload_id=`).
async fn upload(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, GeminiError> {
    check_protocol(&headers, query.as_deref())?;
    match query_value(query.as_deref(), "upload_id") {
        Some(id) => chunk(&state, &id, &headers, body).await,
        None => start(&state, uri.path(), &headers, body).await,
    }
}

/// The upload protocol's headers that are there say what they must: the
/// resumable protocol, sizes and offsets in whole bytes.
fn check_protocol(headers: &HeaderMap, query: Option<&str>) -> Result<(), ApiError> {
    let resumable = |v: &str| v.eq_ignore_ascii_case("resumable");
    if !header_text(headers, UPLOAD_PROTOCOL).is_none_or(resumable)
        || !query_value(query, "upload_protocol").is_none_or(|v| resumable(&v))
    {
        return Err(ApiError::bad_request(
            "gemini-flux takes resumable uploads only (X-Goog-Upload-Protocol: resumable)",
        ));
    }
    for name in [UPLOAD_OFFSET, UPLOAD_HEADER_CONTENT_LENGTH] {
        if headers.get(name).is_some_and(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_none()
        }) {
            return Err(ApiError::bad_request(format!(
                "{name} must be a whole number of bytes"
            )));
        }
    }
    Ok(())
}

/// The request headers of the upload protocol that go upstream as they came.
fn forwarded(headers: &HeaderMap, names: &[&'static str]) -> HeaderMap {
    let mut out = HeaderMap::new();
    for &name in names {
        if let Some(value) = headers.get(name) {
            out.insert(HeaderName::from_static(name), value.clone());
        }
    }
    out
}

async fn start(
    state: &AppState,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, GeminiError> {
    if header_text(headers, UPLOAD_PROTOCOL).is_none() {
        return Err(ApiError::bad_request(
            "uploads use the resumable protocol: X-Goog-Upload-Protocol: resumable, then X-Goog-Upload-Command: start",
        )
        .into());
    }
    if !header_text(headers, UPLOAD_COMMAND).is_some_and(|c| c.eq_ignore_ascii_case("start")) {
        return Err(ApiError::bad_request(
            "a new upload starts with X-Goog-Upload-Command: start (chunks go to the X-Goog-Upload-URL it answers)",
        )
        .into());
    }
    if !body.is_empty() {
        let valid = match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(o)) => o.get("file").is_none_or(Value::is_object),
            _ => false,
        };
        if !valid {
            return Err(ApiError::bad_request(
                "the start's body is a JSON object, {\"file\": {\"displayName\": …, \"mimeType\": …}}",
            )
            .into());
        }
    }
    let key = upload_key(state, headers).await?;
    let mut upstream_headers = forwarded(
        headers,
        &[
            UPLOAD_PROTOCOL,
            UPLOAD_COMMAND,
            UPLOAD_HEADER_CONTENT_LENGTH,
            UPLOAD_HEADER_CONTENT_TYPE,
        ],
    );
    upstream_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let url = state.upstream.upload_start_url();
    let answer = state
        .upstream
        .upload(&state.keys[key], &url, upstream_headers, body)
        .await
        .map_err(|e| upstream_failure(state, e))?;
    if !(200..300).contains(&answer.status) {
        let error = crate::upstream::classify(answer.status, &answer.body);
        let refused = GeminiError::from(upstream_failure(state, error));
        return Ok(with_key(refused, key));
    }
    let upstream_url = header_text(&answer.headers, UPLOAD_URL)
        .filter(|u| state.upstream.is_upstream_url(u))
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "the upstream started the upload without an upload URL of its own",
            )
        })?;
    let id = format!("{:032x}", rand::random::<u128>());
    let now = state.scheduler.clock().now();
    state.files.start(
        id.clone(),
        Upload {
            key,
            upstream_url,
            started: now,
        },
    );
    let ours = format!(
        "{}{path}?upload_id={id}&upload_protocol=resumable",
        origin(headers)
    );
    // The upstream's start answers an empty body; an empty JSON object says
    // the same and keeps the answer JSON like every other.
    let mut response = Json(serde_json::json!({})).into_response();
    for name in [UPLOAD_STATUS, UPLOAD_CHUNK_GRANULARITY] {
        if let Some(value) = answer.headers.get(name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    if let Ok(value) = HeaderValue::from_str(&ours) {
        response.headers_mut().insert(UPLOAD_URL, value);
    }
    Ok(with_key(response, key))
}

/// `scheme://host` of this service as the client reached it (`Host`,
/// `X-Forwarded-Proto`), or nothing: a path alone is a URL google-genai
/// completes with its base URL.
fn origin(headers: &HeaderMap) -> String {
    let host = header_text(headers, header::HOST.as_str())
        .filter(|h| h.parse::<axum::http::uri::Authority>().is_ok());
    let scheme = match header_text(headers, "x-forwarded-proto") {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    host.map(|h| format!("{scheme}://{h}")).unwrap_or_default()
}

/// The upstream's answer with its status, body and the named headers.
fn relay(answer: &Relayed, names: &[&'static str]) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, answer.body.clone()).into_response();
    for &name in names.iter().chain(&[header::CONTENT_TYPE.as_str()]) {
        if let Some(value) = answer.headers.get(name) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value.clone());
        }
    }
    response
}

async fn chunk(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, GeminiError> {
    let (key, upstream_url) = state.files.upload(id).ok_or_else(|| {
        ApiError::not_found(
            "no upload under way has this upload_id (unknown, finished, or started on another replica)",
        )
    })?;
    let upstream_headers = forwarded(headers, &[UPLOAD_COMMAND, UPLOAD_OFFSET]);
    let answer = match state
        .upstream
        .upload(&state.keys[key], &upstream_url, upstream_headers, body)
        .await
    {
        Ok(answer) => answer,
        Err(e) => return Ok(with_key(GeminiError::from(upstream_failure(state, e)), key)),
    };
    let finished = header_text(&answer.headers, UPLOAD_STATUS) == Some("final");
    if finished {
        state.files.finish(id);
        if (200..300).contains(&answer.status) {
            record_upload(state, key, &answer.body).await;
        }
    }
    let mut response = relay(&answer, &[UPLOAD_STATUS, UPLOAD_SIZE_RECEIVED]);
    if !(200..300).contains(&answer.status) {
        // An error's text may quote what it was sent; keys never leave.
        *response.body_mut() =
            axum::body::Body::from(state.scrub(&String::from_utf8_lossy(&answer.body)));
    }
    Ok(with_key(response, key))
}

/// Records which key owns the file a finished upload made, durably, before
/// the client hears of the file.
async fn record_upload(state: &AppState, key: KeyIndex, body: &[u8]) {
    let file: Value = serde_json::from_slice(body).unwrap_or_default();
    let Some(name) = file["file"]["name"]
        .as_str()
        .and_then(|n| n.strip_prefix("files/"))
        .filter(|n| valid_file_id(n))
    else {
        tracing::warn!(
            key = key.one_based(),
            "a finished upload named no file; it is not pinned to its key"
        );
        return;
    };
    let now = state.scheduler.clock().now();
    let expires = file["file"]["expirationTime"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| Timestamp::from_millis(t.timestamp_millis()))
        .unwrap_or(now.plus(FILE_LIFETIME));
    let owner = Owner {
        key_id: state.key_ids[key].clone(),
        expires,
    };
    state.files.remember(name, owner.clone(), now);
    state
        .ledger
        .record_durably(Record::FileOwned {
            name: name.to_string(),
            key_id: owner.key_id,
            expires,
        })
        .await;
    tracing::info!(
        key = key.one_based(),
        "files/{name} uploaded, pinned to key {key} until {expires}"
    );
}

/// A page token of ours: the key a page goes on from (1-based) and the
/// upstream's own token for it.
fn page_token(key: KeyIndex, upstream: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{key}.{upstream}"))
}

fn read_page_token(token: &str, keys: usize) -> Option<(KeyIndex, String)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
    let (key, upstream) = text.split_once('.')?;
    let key = KeyIndex::from_one_based(key.parse().ok()?)?;
    (key.get() < keys).then(|| (key, upstream.to_string()))
}

/// Files a list page holds when the caller does not say, and at most.
const PAGE_SIZE: usize = 10;
const MAX_PAGE_SIZE: usize = 100;

/// `GET /v1beta/files`: every usable key's files, keys in order. A page is
/// filled from one key after another; its `nextPageToken` (ours) names the
/// key and the upstream's token to go on from, and is given only when more
/// files follow (google-genai's pager fails on an empty last page).
async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, GeminiError> {
    let size = match query_value(query.as_deref(), "pageSize") {
        None => PAGE_SIZE,
        Some(size) => size
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "pageSize must be a whole number from 1 to {MAX_PAGE_SIZE}"
                ))
            })?,
    };
    let usable = state.usable_gemini_keys();
    let (first, mut token) =
        match query_value(query.as_deref(), "pageToken").filter(|t| !t.is_empty()) {
            None => (KeyIndex::new(0), String::new()),
            Some(given) => read_page_token(&given, usable.len())
                .ok_or_else(|| ApiError::bad_request("pageToken is not one this service gave"))?,
        };
    let keys: Vec<KeyIndex> = KeyIndex::all(usable.len())
        .filter(|&k| k >= first && usable[k])
        .collect();
    let mut files: Vec<Value> = Vec::new();
    let mut next = None;
    for (i, &key) in keys.iter().enumerate() {
        let room = size - files.len();
        let page = list_page(&state, key, room, &std::mem::take(&mut token)).await?;
        files.extend(page.files);
        if let Some(more) = page.next {
            next = Some(page_token(key, &more));
            break;
        }
        if files.len() == size {
            next = first_with_files(&state, &keys[i + 1..])
                .await?
                .map(|k| page_token(k, ""));
            break;
        }
    }
    let mut body = serde_json::json!({});
    if !files.is_empty() {
        body["files"] = Value::Array(files);
    }
    if let Some(next) = next {
        body["nextPageToken"] = Value::String(next);
    }
    Ok(Json(body))
}

/// One page of one key's files, and the upstream's token for the next.
struct Page {
    files: Vec<Value>,
    next: Option<String>,
}

async fn list_page(
    state: &AppState,
    key: KeyIndex,
    size: usize,
    token: &str,
) -> Result<Page, GeminiError> {
    let size = size.to_string();
    let mut paging = vec![("pageSize", size.as_str())];
    if !token.is_empty() {
        paging.push(("pageToken", token));
    }
    let query = serde_urlencoded::to_string(&paging).unwrap_or_default();
    let mut page = state
        .upstream
        .files(&state.keys[key], Method::GET, &format!("?{query}"))
        .await
        .map_err(|e| upstream_failure(state, e))?;
    Ok(Page {
        files: match page["files"].take() {
            Value::Array(files) => files,
            _ => Vec::new(),
        },
        next: page["nextPageToken"]
            .as_str()
            .filter(|t| !t.is_empty())
            .map(str::to_string),
    })
}

/// The first of `keys` that has a file.
async fn first_with_files(
    state: &AppState,
    keys: &[KeyIndex],
) -> Result<Option<KeyIndex>, GeminiError> {
    for &key in keys {
        if !list_page(state, key, 1, "").await?.files.is_empty() {
            return Ok(Some(key));
        }
    }
    Ok(None)
}

/// The key a call about one file goes to: its owner, else (a file the
/// service does not know) any usable key, whose answer is the client's.
async fn file_key(state: &AppState, id: &str) -> Result<KeyIndex, ApiError> {
    if !valid_file_id(id) {
        return Err(ApiError::bad_request(format!(
            "files/{id} is not a file name: lowercase letters, digits and dashes, at most 40"
        )));
    }
    match owner_of(state, id).await? {
        Some(key) => Ok(key),
        None => state.next_usable_key().ok_or_else(no_usable_key),
    }
}

/// `GET` or `DELETE /v1beta/files/{id}`, on the key that owns the file.
async fn one_file(
    State(state): State<AppState>,
    method: Method,
    Path(id): Path<String>,
) -> Result<Response, GeminiError> {
    let key = file_key(&state, &id).await?;
    let path = format!("/{id}");
    let answer = state
        .upstream
        .files(&state.keys[key], method.clone(), &path)
        .await
        .map_err(|e| GeminiError::from(upstream_failure(&state, e)));
    if answer.is_ok() && method == Method::DELETE {
        state.files.forget(&id);
        state.ledger.record(Record::FileDeleted { name: id });
    }
    Ok(with_key(answer.map(Json), key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_strangers_are_refused() {
        let third = KeyIndex::new(2);
        let token = page_token(third, "CgZhYmMxMjM=");
        assert_eq!(
            read_page_token(&token, 3),
            Some((third, "CgZhYmMxMjM=".into()))
        );
        let first = KeyIndex::new(0);
        assert_eq!(
            read_page_token(&page_token(first, ""), 3),
            Some((first, String::new()))
        );
        assert_eq!(read_page_token(&token, 2), None, "no key 3 among 2");
        assert_eq!(read_page_token("not-ours", 3), None);
    }

    #[test]
    fn only_a_chunk_of_an_upload_passes_without_a_token() {
        assert!(is_upload_chunk(
            "/upload/v1beta/files",
            Some("upload_id=abc&upload_protocol=resumable")
        ));
        assert!(is_upload_chunk("/upload/v1/files", Some("upload_id=abc")));
        assert!(!is_upload_chunk("/upload/v1beta/files", None));
        assert!(!is_upload_chunk("/v1beta/files", Some("upload_id=abc")));
    }
}
