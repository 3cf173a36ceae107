//! The simulator's Files API, per key's project as the real one: the
//! resumable upload (`start`, then `upload` chunks, the last with
//! `finalize`), strict on its headers, offsets and chunk sizes; get, list
//! and delete of the caller's own files; a 403 for any other file; and
//! every file gone 48 hours after its upload, on the simulator's clock.
//!
//! A file's bytes are counted, not kept: nothing the simulator answers
//! depends on them.

use super::routes::{
    Failure, Paging, Params, Shared, authenticate, check_version, fail, invalid_argument,
};
use crate::clock::Timestamp;
use crate::wire::files::{
    CHUNK_GRANULARITY, FILE_LIFETIME, UPLOAD_CHUNK_GRANULARITY, UPLOAD_COMMAND,
    UPLOAD_HEADER_CONTENT_LENGTH, UPLOAD_HEADER_CONTENT_TYPE, UPLOAD_OFFSET, UPLOAD_PROTOCOL,
    UPLOAD_SIZE_RECEIVED, UPLOAD_STATUS, UPLOAD_URL, header_text, valid_file_id,
};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

/// The largest file the real API takes.
const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Files a list page holds when the caller does not say, and at most.
const PAGE_SIZE: usize = 10;
const MAX_PAGE_SIZE: usize = 100;

/// The largest chunk the simulator reads (google-genai sends 8 MiB).
const MAX_CHUNK_BYTES: usize = 64 * 1024 * 1024;

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/upload/{version}/files",
            post(upload).layer(axum::extract::DefaultBodyLimit::max(MAX_CHUNK_BYTES)),
        )
        .route("/{version}/files", get(list))
        .route("/{version}/files/{id}", get(one_file).delete(one_file))
}

/// What `/__sim/stats` reports about files.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FileStats {
    /// Uploads finalized.
    pub uploaded: u64,
    pub deleted: u64,
    /// Files neither deleted nor expired.
    pub live: u64,
    /// Gets and deletes of a file the caller's project does not own (or
    /// that does not exist), answered 403. Generate calls naming one are
    /// counted per lane (`foreign_file_403`).
    pub foreign_file_403: u64,
}

/// Files and upload sessions; behind the simulator's files mutex.
#[derive(Default)]
pub(super) struct Registry {
    uploads: HashMap<String, Upload>,
    files: BTreeMap<String, StoredFile>,
    stats: FileStats,
}

/// An upload started and not yet finalized.
struct Upload {
    key_index: usize,
    /// The id asked for (`file.name`), else one is drawn at finalize.
    id: Option<String>,
    display_name: Option<String>,
    mime_type: String,
    /// `X-Goog-Upload-Header-Content-Length` (or `file.sizeBytes`).
    declared: Option<u64>,
    received: u64,
}

struct StoredFile {
    /// 1-based, as the stats name keys.
    key_index: usize,
    display_name: Option<String>,
    mime_type: String,
    size: u64,
    created: Timestamp,
    expires: Timestamp,
}

impl Registry {
    /// Files that exist from the start (`SimConfig::files`), each owned by
    /// the key (1-based) given.
    pub(super) fn preloaded(files: BTreeMap<String, usize>, now: Timestamp) -> Registry {
        let files = files
            .into_iter()
            .map(|(id, key_index)| {
                let file = StoredFile {
                    key_index,
                    display_name: None,
                    mime_type: "text/plain".into(),
                    size: 0,
                    created: now,
                    expires: now.plus(FILE_LIFETIME),
                };
                (id, file)
            })
            .collect();
        Registry {
            files,
            ..Registry::default()
        }
    }

    /// The key (1-based) whose project owns file `id` at `now`; an expired
    /// file is forgotten here.
    pub(super) fn owner(&mut self, id: &str, now: Timestamp) -> Option<usize> {
        match self.files.get(id) {
            Some(f) if f.expires <= now => {
                self.files.remove(id);
                None
            }
            Some(f) => Some(f.key_index),
            None => None,
        }
    }

    pub(super) fn stats(&mut self, now: Timestamp) -> FileStats {
        self.files.retain(|_, f| f.expires > now);
        FileStats {
            live: self.files.len() as u64,
            ..self.stats.clone()
        }
    }

    /// The file `id` if `key_index` owns it, else the real API's 403 (counted).
    fn own(&mut self, id: &str, key_index: usize, now: Timestamp) -> Result<&StoredFile, Failure> {
        if self.owner(id, now) == Some(key_index) {
            return Ok(&self.files[id]);
        }
        self.stats.foreign_file_403 += 1;
        Err(no_permission(id))
    }
}

/// The 403 a project gets for a file it does not own, or that is gone.
pub(super) fn no_permission(id: &str) -> Failure {
    fail(
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
        &format!("You do not have permission to access the File {id} or it may not exist."),
        vec![],
    )
}

fn file_json(id: &str, f: &StoredFile, version: &str) -> Value {
    let mut file = json!({
        "name": format!("files/{id}"),
        "mimeType": f.mime_type,
        "sizeBytes": f.size.to_string(),
        "createTime": f.created,
        "updateTime": f.created,
        "expirationTime": f.expires,
        "uri": format!("https://generativelanguage.googleapis.com/{version}/files/{id}"),
        "state": "ACTIVE",
        "source": "UPLOADED",
    });
    if let Some(name) = &f.display_name {
        file["displayName"] = json!(name);
    }
    file
}

fn random_text(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

/// `POST /upload/{version}/files`: a new upload (`start`), or a chunk of
/// one (`?upload_id=`).
async fn upload(
    State(state): State<Shared>,
    Path(version): Path<String>,
    headers: HeaderMap,
    Query(params): Params,
    body: Bytes,
) -> Result<Response, Failure> {
    check_version(&version)?;
    match params.get("upload_id") {
        Some(id) => chunk(&state, &version, id, &headers, &body),
        None => start(&state, &version, &headers, &params, &body),
    }
}

fn start(
    state: &super::SimState,
    version: &str,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    body: &[u8],
) -> Result<Response, Failure> {
    let key_index = authenticate(state, headers, params)?;
    if header_text(headers, UPLOAD_PROTOCOL) != Some("resumable") {
        return Err(invalid_argument(
            "The simulator takes resumable uploads only: send X-Goog-Upload-Protocol: resumable.",
        ));
    }
    if header_text(headers, UPLOAD_COMMAND) != Some("start") {
        return Err(invalid_argument(
            "A resumable upload begins with X-Goog-Upload-Command: start.",
        ));
    }
    let request: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return Err(invalid_argument(
                    "Invalid JSON payload received. Expected an object.",
                ));
            }
        }
    };
    let file = &request["file"];
    let declared = match header_text(headers, UPLOAD_HEADER_CONTENT_LENGTH) {
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            invalid_argument("X-Goog-Upload-Header-Content-Length must be a whole number.")
        })?),
        None => match &file["sizeBytes"] {
            Value::String(s) => s.parse().ok(),
            Value::Number(n) => n.as_u64(),
            _ => None,
        },
    };
    if declared.is_some_and(|n| n > MAX_FILE_BYTES) {
        return Err(invalid_argument("The file is larger than 2 GB."));
    }
    let id = match file["name"].as_str() {
        None => None,
        Some(name) => {
            let id = name.strip_prefix("files/").unwrap_or(name);
            if !valid_file_id(id) {
                return Err(invalid_argument(&format!(
                    "Invalid file name {name:?}: lowercase letters, digits and dashes, at most 40."
                )));
            }
            Some(id.to_string())
        }
    };
    let mime_type = file["mimeType"]
        .as_str()
        .or(header_text(headers, UPLOAD_HEADER_CONTENT_TYPE))
        .unwrap_or("application/octet-stream")
        .to_string();
    let upload_id = random_text(
        32,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
    );
    let mut registry = state.files();
    if let Some(id) = &id
        && registry.owner(id, state.clock.now()).is_some()
    {
        return Err(fail(
            StatusCode::CONFLICT,
            "ALREADY_EXISTS",
            &format!("File files/{id} already exists."),
            vec![],
        ));
    }
    registry.uploads.insert(
        upload_id.clone(),
        Upload {
            key_index,
            id,
            display_name: file["displayName"].as_str().map(str::to_string),
            mime_type,
            declared,
            received: 0,
        },
    );
    let host = header_text(headers, header::HOST.as_str()).unwrap_or("127.0.0.1");
    let url = format!(
        "http://{host}/upload/{version}/files?upload_id={upload_id}&upload_protocol=resumable"
    );
    Ok(upload_answer(StatusCode::OK, "active", None, None)
        .with(UPLOAD_URL, &url)
        .with(UPLOAD_CHUNK_GRANULARITY, &CHUNK_GRANULARITY.to_string())
        .into_response())
}

/// What one chunk asks for.
#[derive(PartialEq)]
enum Command {
    Upload { finalize: bool },
    Finalize,
    Query,
}

fn command(headers: &HeaderMap) -> Result<Command, Failure> {
    let words: Vec<String> = header_text(headers, UPLOAD_COMMAND)
        .unwrap_or("")
        .split(',')
        .map(|w| w.trim().to_ascii_lowercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words[..] {
        ["upload"] => Ok(Command::Upload { finalize: false }),
        ["upload", "finalize"] => Ok(Command::Upload { finalize: true }),
        ["finalize"] => Ok(Command::Finalize),
        ["query"] => Ok(Command::Query),
        _ => Err(invalid_argument(
            "X-Goog-Upload-Command must be upload, \"upload, finalize\", finalize or query.",
        )),
    }
}

fn chunk(
    state: &super::SimState,
    version: &str,
    upload_id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Failure> {
    let command = command(headers)?;
    let now = state.clock.now();
    let mut registry = state.files();
    let Some(upload) = registry.uploads.get_mut(upload_id) else {
        return Err(fail(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "No upload session has this upload_id (unknown, or already finalized).",
            vec![],
        ));
    };
    let received = upload.received;
    let refuse = |message: &str| {
        Ok(upload_answer(
            StatusCode::BAD_REQUEST,
            "active",
            Some(received),
            Some(message),
        )
        .into_response())
    };
    if command == Command::Query {
        return Ok(upload_answer(StatusCode::OK, "active", Some(received), None).into_response());
    }
    let offset = header_text(headers, UPLOAD_OFFSET).and_then(|o| o.parse::<u64>().ok());
    let Some(offset) = offset else {
        return refuse("X-Goog-Upload-Offset is required, a whole number of bytes.");
    };
    if offset != received {
        return refuse(&format!(
            "X-Goog-Upload-Offset {offset} does not match the {received} bytes received."
        ));
    }
    let n = body.len() as u64;
    let finalize = match command {
        Command::Upload { finalize } => finalize,
        _ => {
            if n > 0 {
                return refuse("A finalize without upload carries no bytes.");
            }
            true
        }
    };
    if !finalize && !n.is_multiple_of(CHUNK_GRANULARITY) {
        return refuse(&format!(
            "A chunk that does not finalize must be a multiple of {CHUNK_GRANULARITY} bytes; this one is {n}."
        ));
    }
    let total = received + n;
    if upload.declared.is_some_and(|d| total > d) || total > MAX_FILE_BYTES {
        return refuse("More bytes than the upload declared (or than 2 GB).");
    }
    if !finalize {
        upload.received = total;
        return Ok(upload_answer(StatusCode::OK, "active", Some(total), None).into_response());
    }
    if let Some(declared) = upload.declared.filter(|&d| d != total) {
        return refuse(&format!(
            "The upload declared {declared} bytes; {total} arrived."
        ));
    }
    let upload = registry.uploads.remove(upload_id).expect("found above");
    let id = match upload.id {
        Some(id) if registry.owner(&id, now).is_some() => {
            return Err(fail(
                StatusCode::CONFLICT,
                "ALREADY_EXISTS",
                &format!("File files/{id} already exists."),
                vec![],
            ));
        }
        Some(id) => id,
        None => random_text(12, b"abcdefghijklmnopqrstuvwxyz0123456789"),
    };
    let file = StoredFile {
        key_index: upload.key_index,
        display_name: upload.display_name,
        mime_type: upload.mime_type,
        size: total,
        created: now,
        expires: now.plus(FILE_LIFETIME),
    };
    let answer = json!({ "file": file_json(&id, &file, version) });
    registry.files.insert(id, file);
    registry.stats.uploaded += 1;
    let mut response = upload_answer(StatusCode::OK, "final", None, None).into_response();
    *response.body_mut() = axum::body::Body::from(answer.to_string());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    Ok(response)
}

/// An answer of the upload protocol: its status header, the bytes received
/// so far, and (when refused) the reason in Gemini's envelope.
struct UploadAnswer {
    code: StatusCode,
    headers: HeaderMap,
    body: Option<Value>,
}

fn upload_answer(
    code: StatusCode,
    status: &'static str,
    received: Option<u64>,
    refusal: Option<&str>,
) -> UploadAnswer {
    let mut answer = UploadAnswer {
        code,
        headers: HeaderMap::new(),
        body: refusal.map(|m| crate::wire::envelope(code.as_u16(), "INVALID_ARGUMENT", m, vec![])),
    };
    answer = answer.with(UPLOAD_STATUS, status);
    if let Some(n) = received {
        answer = answer.with(UPLOAD_SIZE_RECEIVED, &n.to_string());
    }
    answer
}

impl UploadAnswer {
    fn with(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.insert(HeaderName::from_static(name), value);
        }
        self
    }
}

impl IntoResponse for UploadAnswer {
    fn into_response(self) -> Response {
        match self.body {
            Some(body) => (self.code, self.headers, Json(body)).into_response(),
            None => (self.code, self.headers).into_response(),
        }
    }
}

/// `GET /{version}/files`: the caller's project's files, newest first.
async fn list(
    State(state): State<Shared>,
    Path(version): Path<String>,
    headers: HeaderMap,
    Query(params): Params,
) -> Result<Response, Failure> {
    check_version(&version)?;
    let key_index = authenticate(&state, &headers, &params)?;
    let paging = Paging::of(&params, PAGE_SIZE, MAX_PAGE_SIZE)?;
    let now = state.clock.now();
    let mut registry = state.files();
    registry.files.retain(|_, f| f.expires > now);
    let mut mine: Vec<(&String, &StoredFile)> = registry
        .files
        .iter()
        .filter(|(_, f)| f.key_index == key_index)
        .collect();
    mine.sort_by(|a, b| b.1.created.cmp(&a.1.created).then(a.0.cmp(b.0)));
    let (page, next) = paging.page(&mine);
    // Like the real API, an empty list is an empty object.
    let mut body = json!({});
    if !page.is_empty() {
        let files: Vec<Value> = page
            .iter()
            .map(|(id, f)| file_json(id, f, &version))
            .collect();
        body["files"] = json!(files);
    }
    if let Some(next) = next {
        body["nextPageToken"] = json!(next);
    }
    Ok(Json(body).into_response())
}

/// `GET` or `DELETE /{version}/files/{id}` of a file the caller's project owns.
async fn one_file(
    State(state): State<Shared>,
    method: Method,
    Path((version, id)): Path<(String, String)>,
    headers: HeaderMap,
    Query(params): Params,
) -> Result<Response, Failure> {
    check_version(&version)?;
    let key_index = authenticate(&state, &headers, &params)?;
    checked_id(&id)?;
    let mut registry = state.files();
    let file = file_json(
        &id,
        registry.own(&id, key_index, state.clock.now())?,
        &version,
    );
    if method != Method::DELETE {
        return Ok(Json(file).into_response());
    }
    registry.files.remove(&id);
    registry.stats.deleted += 1;
    Ok(Json(json!({})).into_response())
}

fn checked_id(id: &str) -> Result<(), Failure> {
    if valid_file_id(id) {
        Ok(())
    } else {
        Err(invalid_argument(&format!("Invalid file name files/{id}.")))
    }
}
