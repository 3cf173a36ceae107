//! The Files API through gemini-flux, on a paused clock: google-genai's
//! resumable upload, each file pinned to the key that uploaded it (through
//! a restart and a reordering of the keys), get, list and delete on the
//! owner, a clear answer when the owner cannot serve; and the simulator's
//! own strictness about the upload protocol and its 48 hours.

mod common;

use common::*;
use gemini_flux::clock::Clock;
use gemini_flux::service::{self, RunningService};
use gemini_flux::sim::{SimConfig, SimServer};
use serde_json::{Value, json};
use std::time::Duration;

const FLASH: &str = "gemini-2.5-flash";
const KEYS: [&str; 3] = ["files-key-0001", "files-key-0002", "files-key-0003"];

fn sim_config(rpm: u32) -> SimConfig {
    SimConfig::new(KEYS).with_limits(limits(FLASH, rpm, 1_000_000, 1_000))
}

/// `FLUX_LIMITS` saying what [`sim_config`] enforces.
fn flux_limits(rpm: u32) -> String {
    json!({FLASH: {"rpm": rpm, "tpm": 1_000_000, "rpd": 1_000}}).to_string()
}

async fn post(base: &str, path: &str, body: &Value) -> Answer {
    Answer::to(client().post(format!("{base}{path}")).json(body)).await
}

/// `{FLASH}:{action}` (generateContent, streamGenerateContent, countTokens)
/// about an uploaded `file`.
async fn about(base: &str, action: &str, file: &Value) -> Answer {
    post(
        base,
        &format!("/v1beta/models/{FLASH}:{action}"),
        &about_file(file),
    )
    .await
}

async fn get(base: &str, path: &str) -> Answer {
    Answer::to(client().get(format!("{base}{path}"))).await
}

#[tokio::test(start_paused = true)]
async fn an_uploaded_file_is_read_by_its_key_alone_at_that_keys_pace() {
    // 3 keys at 3 requests a minute: 9 calls spread over them would all go
    // at once; pinned to the file's key they take three windows.
    let stack = Stack::start(
        sim_config(3),
        quiet_noon(),
        &[("FLUX_MODELS", FLASH), ("FLUX_LIMITS", &flux_limits(3))],
    )
    .await;
    let base = stack.svc.base_url();
    let uploaded = upload_file(&base, b"The quarterly numbers are up.", &[]).await;
    assert_eq!(uploaded.status, 200, "{}", uploaded.body);
    assert_eq!(uploaded.header("x-goog-upload-status"), Some("final"));
    let file = uploaded.body["file"].clone();
    let owner = uploaded.key();
    let answered = format!("{:?} {}", uploaded.headers, uploaded.body);
    assert!(KEYS.iter().all(|key| !answered.contains(key)));
    assert_eq!(stack.sim.file_owner(&file_id(&file)), Some(owner));
    assert_eq!(file["sizeBytes"], "29");

    let path = format!("/v1beta/models/{FLASH}:generateContent");
    let started = tokio::time::Instant::now();
    let body = about_file(&file);
    let calls = (0..9).map(|_| post(&base, &path, &body));
    let answers = futures::future::join_all(calls).await;
    assert_eq!(
        answers
            .iter()
            .map(|a| (a.status, a.key()))
            .collect::<Vec<_>>(),
        vec![(200, owner); 9]
    );
    assert_eq!(started.elapsed(), Duration::from_millis(2 * 60_250));

    // A stream and a countTokens that name it go to the owner too.
    let stream = about(&base, "streamGenerateContent", &file).await;
    assert_eq!((stream.status, stream.key()), (200, owner));
    let counted = about(&base, "countTokens", &file).await;
    assert_eq!(counted.status, 200, "{}", counted.body);

    let stats = stack.sim_stats();
    assert_eq!(stats.lane(owner, FLASH).unwrap().calls, 10);
    assert_eq!(stats.calls, 10, "no other key was called");
    assert_eq!(cross_key_file_uses(&stats), 0, "{stats:#?}");
    assert_eq!(stats.rejected_429, 0);
    assert_eq!(stats.files.uploaded, 1);
}

#[tokio::test(start_paused = true)]
async fn uploads_spread_over_keys_and_get_list_delete_go_to_each_files_owner() {
    let stack = Stack::start(
        sim_config(10),
        quiet_noon(),
        &[("FLUX_MODELS", FLASH), ("FLUX_API_TOKENS", "tok")],
    )
    .await;
    let base = stack.svc.base_url();
    let token = [("x-goog-api-key", "tok")];
    let mut owners = Vec::new();
    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        let uploaded = upload_file(&base, text.as_bytes(), &token).await;
        assert_eq!(uploaded.status, 200, "{}", uploaded.body);
        owners.push(uploaded.key());
        ids.push(file_id(&uploaded.body["file"]));
    }
    owners.sort();
    assert_eq!(owners, vec![1, 2, 3], "equal room: one file a key");

    let http = client();
    let with_token = |r: reqwest::RequestBuilder| r.header("x-goog-api-key", "tok");
    // The list: every key's files, two a page here; a token only while
    // more follow (google-genai's pager fails on an empty last page).
    let list = |query: String| {
        let http = http.clone();
        let url = format!("{base}/v1beta/files?{query}");
        async move { Answer::to(with_token(http.get(url))).await }
    };
    let mut listed = Vec::new();
    let mut pages = 0;
    let mut page_token = String::new();
    loop {
        let page = list(format!("pageSize=2&pageToken={page_token}")).await;
        assert_eq!(page.status, 200, "{}", page.body);
        pages += 1;
        for f in page.body["files"].as_array().unwrap() {
            listed.push(file_id(f));
        }
        match page.body["nextPageToken"].as_str() {
            Some(t) => page_token = t.to_string(),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.sort();
    listed.sort();
    assert_eq!((pages, listed), (2, expected));
    let whole = list("pageSize=3".into()).await.body;
    assert_eq!(
        (
            whole["files"].as_array().unwrap().len(),
            whole.get("nextPageToken")
        ),
        (3, None)
    );

    // Each from its owner (asked in the opposite order to the uploads, so
    // that no turn over the keys can answer for the owner by chance).
    for id in ids.iter().rev() {
        let file = Answer::to(with_token(http.get(format!("{base}/v1/files/{id}")))).await;
        assert_eq!(file.status, 200, "{}", file.body);
        assert_eq!(Some(file.key()), stack.sim.file_owner(id));
        assert_eq!(file.body["name"], format!("files/{id}"));
    }
    // Key 3's file goes; the list is then two files and no token, though a
    // key follows the last one listed.
    let last = ids
        .iter()
        .find(|id| stack.sim.file_owner(id) == Some(3))
        .unwrap()
        .clone();
    let deleted = Answer::to(with_token(
        http.delete(format!("{base}/v1beta/files/{last}")),
    ))
    .await;
    assert_eq!((deleted.status, deleted.key()), (200, 3));
    assert_eq!(stack.sim.file_owner(&last), None);
    let two = list("pageSize=2".into()).await.body;
    assert_eq!(
        (
            two["files"].as_array().unwrap().len(),
            two.get("nextPageToken")
        ),
        (2, None)
    );
    let stats = stack.sim_stats();
    assert_eq!((stats.files.deleted, stats.files.live), (1, 2));
    assert_eq!(cross_key_file_uses(&stats), 0);

    // Without the token nothing starts; a page token of nobody's is refused.
    let refused = Answer::to(
        http.post(format!("{base}/upload/v1beta/files"))
            .header("X-Goog-Upload-Protocol", "resumable")
            .header("X-Goog-Upload-Command", "start"),
    )
    .await;
    assert_eq!(refused.status, 401);
    let stranger = Answer::to(with_token(
        http.get(format!("{base}/v1beta/files?pageToken=bm9ib2R5")),
    ))
    .await;
    assert_eq!(stranger.status, 400, "{}", stranger.body);
}

async fn serve(
    sim: &SimServer,
    keys: &[&str],
    state: &std::path::Path,
    clock: Clock,
) -> RunningService {
    let settings = settings(
        &sim.base_url(),
        &keys.join(","),
        state,
        &[("FLUX_POLICY_FETCH", "false"), ("FLUX_MODELS", FLASH)],
    );
    service::start(settings, clock)
        .await
        .expect("service starts")
}

#[tokio::test(start_paused = true)]
async fn a_restart_with_the_keys_reordered_still_sends_the_file_to_its_owner_and_never_elsewhere() {
    let clock = Clock::starting_at(quiet_noon());
    let sim = SimServer::start(sim_config(10), clock, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let state = fresh_state_path();
    let svc = serve(&sim, &KEYS, &state, clock).await;
    let uploaded = upload_file(&svc.base_url(), b"kept across restarts", &[]).await;
    let file = uploaded.body["file"].clone();
    let owner = sim.file_owner(&file_id(&file)).unwrap();
    assert_ne!(owner, 2, "reversing the keys moves the owner");
    svc.stop().await.unwrap();

    // Same state file, keys in the opposite order: key N is now key 4 - N.
    let reversed: Vec<&str> = KEYS.iter().rev().copied().collect();
    let svc = serve(&sim, &reversed, &state, clock).await;
    let base = svc.base_url();
    for _ in 0..3 {
        let answer = about(&base, "generateContent", &file).await;
        assert_eq!(
            (answer.status, answer.key()),
            (200, 4 - owner),
            "{}",
            answer.body
        );
    }
    let stats = sim.stats();
    assert_eq!(stats.lane(owner, FLASH).unwrap().calls, 3);
    assert_eq!(cross_key_file_uses(&stats), 0);
    svc.stop().await.unwrap();

    // Without the owner's key no other key is tried: 409, naming the file.
    let others: Vec<&str> = KEYS
        .iter()
        .copied()
        .filter(|k| *k != KEYS[owner - 1])
        .collect();
    let svc = serve(&sim, &others, &state, clock).await;
    let base = svc.base_url();
    let orphan = about(&base, "generateContent", &file).await;
    assert_eq!(
        (orphan.status, orphan.body["error"]["status"].as_str()),
        (409, Some("FAILED_PRECONDITION"))
    );
    assert!(orphan.message().contains(&format!(
        "files/{} was uploaded with a key that is no longer configured",
        file_id(&file)
    )));
    assert_eq!(sim.stats().calls, 3);

    // 48 hours on, the file and its record are gone: the call goes to any
    // key, and the upstream's 403 is the client's answer.
    tokio::time::sleep(Duration::from_secs(48 * 3_600)).await;
    let late = about(&base, "generateContent", &file).await;
    assert_eq!(late.status, 403, "{}", late.body);
    assert!(late.message().contains("or it may not exist"));
    let status = get(&base, "/status").await.body;
    for key in status["keys"].as_array().unwrap() {
        assert_eq!(key["state"], "healthy", "{key}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_file_whose_key_is_out_gets_a_clear_503_and_no_other_key_is_tried() {
    let stack = Stack::start(sim_config(10), quiet_noon(), &[("FLUX_MODELS", FLASH)]).await;
    let base = stack.svc.base_url();
    let uploaded = upload_file(&base, b"pinned", &[("x-flux-key", "2")]).await;
    assert_eq!(uploaded.key(), 2, "x-flux-key chooses the upload's key");
    let file = uploaded.body["file"].clone();
    let id = file_id(&file);
    assert_eq!(post(&base, "/keys/2/disable", &json!({})).await.status, 200);

    for action in ["generateContent", "streamGenerateContent", "countTokens"] {
        let answer = about(&base, action, &file).await;
        assert_eq!(answer.status, 503, "{action}: {}", answer.body);
        assert_eq!(answer.body["error"]["status"], "UNAVAILABLE");
        let message = answer.message();
        assert!(
            message.contains(&format!("files/{id} belongs to key 2, which is disabled")),
            "{message}"
        );
    }
    assert_eq!(get(&base, &format!("/v1beta/files/{id}")).await.status, 503);
    let stats = stack.sim_stats();
    assert_eq!((stats.calls, cross_key_file_uses(&stats)), (0, 0));

    // Files of two keys cannot be read by one call: said before any is sent.
    let other = upload_file(&base, b"elsewhere", &[("x-flux-key", "3")])
        .await
        .body["file"]
        .clone();
    assert_eq!(post(&base, "/keys/2/enable", &json!({})).await.status, 200);
    let mut both = about_file(&file);
    both["contents"][0]["parts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"fileData": {"fileUri": other["uri"]}}));
    let mixed = post(
        &base,
        &format!("/v1beta/models/{FLASH}:generateContent"),
        &both,
    )
    .await;
    assert_eq!(mixed.status, 400, "{}", mixed.body);
    assert!(mixed.message().contains(&format!(
        "files/{id} belongs to key 2 and files/{} to key 3",
        file_id(&other)
    )));
    assert_eq!(stack.sim_stats().calls, 0);
}

/// The simulator alone, spoken to as google-genai does.
struct SimFiles {
    sim: SimServer,
}

impl SimFiles {
    async fn start() -> SimFiles {
        SimFiles {
            sim: start_sim(sim_config(10), quiet_noon()).await,
        }
    }

    async fn start_upload(&self, key: &str, size: usize) -> Answer {
        Answer::to(
            client()
                .post(format!("{}/upload/v1beta/files", self.sim.base_url()))
                .header("x-goog-api-key", key)
                .header("X-Goog-Upload-Protocol", "resumable")
                .header("X-Goog-Upload-Command", "start")
                .header("X-Goog-Upload-Header-Content-Length", size.to_string())
                .json(&json!({"file": {"mimeType": "text/plain"}})),
        )
        .await
    }

    async fn chunk(url: &str, command: &str, offset: usize, bytes: Vec<u8>) -> Answer {
        Answer::to(
            client()
                .post(url)
                .header("X-Goog-Upload-Command", command)
                .header("X-Goog-Upload-Offset", offset.to_string())
                .body(bytes),
        )
        .await
    }
}

#[tokio::test(start_paused = true)]
async fn the_simulator_holds_the_upload_protocol_to_its_word() {
    let s = SimFiles::start().await;
    let no_protocol = Answer::to(
        client()
            .post(format!("{}/upload/v1beta/files", s.sim.base_url()))
            .header("x-goog-api-key", KEYS[0])
            .json(&json!({})),
    )
    .await;
    assert_eq!(no_protocol.status, 400);

    let size = UPLOAD_CHUNK + 10;
    let started = s.start_upload(KEYS[0], size).await;
    assert_eq!(
        started.header("x-goog-upload-chunk-granularity"),
        Some("8388608")
    );
    let url = started.header("x-goog-upload-url").unwrap().to_string();
    // A chunk that does not finalize is a whole multiple of 8 MiB.
    let short = SimFiles::chunk(&url, "upload", 0, vec![b'x'; 10]).await;
    assert_eq!(
        (short.status, short.header("x-goog-upload-size-received")),
        (400, Some("0"))
    );
    let first = SimFiles::chunk(&url, "upload", 0, vec![b'x'; UPLOAD_CHUNK]).await;
    assert_eq!(
        (first.status, first.header("x-goog-upload-status")),
        (200, Some("active"))
    );
    // An offset that is not what arrived is refused, and says what did.
    let wrong = SimFiles::chunk(&url, "upload, finalize", 0, vec![b'x'; 10]).await;
    assert_eq!(
        (wrong.status, wrong.header("x-goog-upload-size-received")),
        (400, Some("8388608"))
    );
    // Fewer bytes than declared do not make a file.
    let early = SimFiles::chunk(&url, "upload, finalize", UPLOAD_CHUNK, vec![b'x'; 9]).await;
    assert_eq!(early.status, 400, "{}", early.body);
    let last = SimFiles::chunk(&url, "upload, finalize", UPLOAD_CHUNK, vec![b'x'; 10]).await;
    assert_eq!(
        (last.status, last.header("x-goog-upload-status")),
        (200, Some("final"))
    );
    assert_eq!(
        last.body["file"]["sizeBytes"],
        (UPLOAD_CHUNK + 10).to_string()
    );
    let id = file_id(&last.body["file"]);
    assert_eq!(s.sim.file_owner(&id), Some(1));
    // The session is over.
    let again = SimFiles::chunk(&url, "upload, finalize", size, vec![]).await;
    assert_eq!(again.status, 404);

    // Another project's key: 403 for get and delete, counted.
    let base = s.sim.base_url();
    let foreign = |method: reqwest::Method| {
        client()
            .request(method, format!("{base}/v1beta/files/{id}"))
            .header("x-goog-api-key", KEYS[1])
    };
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let answer = Answer::to(foreign(method)).await;
        assert_eq!(answer.status, 403, "{}", answer.body);
    }
    let listed = Answer::to(
        client()
            .get(format!("{base}/v1beta/files"))
            .header("x-goog-api-key", KEYS[1]),
    )
    .await;
    assert_eq!(listed.body, json!({}), "key 2 owns no file");
    assert_eq!(s.sim.stats().files.foreign_file_403, 2);

    // 48 hours on the simulator's clock, the file is gone.
    tokio::time::sleep(Duration::from_secs(48 * 3_600 - 1)).await;
    assert_eq!(s.sim.file_owner(&id), Some(1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.sim.file_owner(&id), None);
    assert_eq!(s.sim.stats().files.live, 0);
}
