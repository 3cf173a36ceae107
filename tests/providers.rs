//! Other providers behind the one scheduler, end to end: the service with
//! no Gemini key and a providers file naming an OpenAI-compatible provider
//! and an Anthropic one, each a strict in-process simulator on the same
//! paused clock. Exact waits, zero upstream 429s, limits learned from the
//! answers' headers before any 429, and no key's text in any output.

mod common;

use common::*;
use gemini_flux::clock::Clock;
use gemini_flux::policy::{Limits, UNLIMITED};
use gemini_flux::service::{self, RunningService};
use gemini_flux::sim::{ProviderConfig, ProviderKind, ProviderSim};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const LLAMA: &str = "llama-3.3-70b-versatile";
const HAIKU: &str = "claude-haiku-4-5";
const GROQ_KEYS: [&str; 2] = [
    "gsk_TESTsecretGROQ000000000001",
    "gsk_TESTsecretGROQ000000000002",
];
const CLAUDE_KEY: &str = "sk-ant-TESTsecretCLAUDE0000000001";

const NO_LIMITS: Limits = Limits {
    rpm: u32::MAX,
    tpm: UNLIMITED,
    rpd: u32::MAX,
    tpd: UNLIMITED,
    otpm: UNLIMITED,
};

/// Both simulators (`llama` and `haiku` are their true limits), the
/// service in front with `file` as its providers file (`{groq}` and
/// `{claude}` stand for their base URLs).
struct Providers {
    groq: ProviderSim,
    claude: ProviderSim,
    svc: RunningService,
    http: reqwest::Client,
    /// What starts the service again, on the same state file and clock.
    settings: gemini_flux::config::Settings,
    clock: Clock,
}

impl Providers {
    async fn start(llama: Limits, haiku: Limits, file: &str) -> Providers {
        Providers::start_at(quiet_noon(), llama, haiku, file).await
    }

    async fn start_at(
        wall: gemini_flux::clock::Timestamp,
        llama: Limits,
        haiku: Limits,
        file: &str,
    ) -> Providers {
        let clock = Clock::starting_at(wall);
        let addr = "127.0.0.1:0".parse().unwrap();
        let mut groq = ProviderConfig::new(ProviderKind::OpenAiCompatible, GROQ_KEYS);
        groq.models = BTreeMap::from([(LLAMA.to_string(), llama)]);
        let groq = ProviderSim::start(groq, clock, addr).await.unwrap();
        let mut claude = ProviderConfig::new(ProviderKind::Anthropic, [CLAUDE_KEY]);
        claude.models = BTreeMap::from([(HAIKU.to_string(), haiku)]);
        let claude = ProviderSim::start(claude, clock, addr).await.unwrap();
        let state = fresh_state_path();
        std::fs::create_dir_all(state.parent().unwrap()).unwrap();
        let path = state.with_file_name("providers.toml");
        let file = file
            .replace("{groq}", &format!("{}/v1", groq.base_url()))
            .replace("{claude}", &claude.base_url());
        std::fs::write(&path, file).unwrap();
        let settings = settings(
            "http://127.0.0.1:9",
            "",
            &state,
            &[
                ("FLUX_PROVIDERS_FILE", path.to_str().unwrap()),
                ("FLUX_POLICY_FETCH", "false"),
            ],
        );
        let svc = service::start(settings.clone(), clock)
            .await
            .expect("service starts");
        Providers {
            groq,
            claude,
            svc,
            http: client(),
            settings,
            clock,
        }
    }

    /// Stops the service and starts it again on the same state file.
    async fn restart(self) -> Providers {
        self.svc.stop().await.unwrap();
        let svc = service::start(self.settings.clone(), self.clock)
            .await
            .expect("service starts again");
        Providers { svc, ..self }
    }

    /// POSTs `body` to `path`; the status, `x-flux-wait-ms` and the body.
    async fn post(&self, path: &str, body: Value) -> (u16, u64, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.svc.base_url()))
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let wait = resp
            .headers()
            .get("x-flux-wait-ms")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(u64::MAX);
        (status, wait, resp.json().await.unwrap_or(Value::Null))
    }

    async fn chat(&self, model: &str, tokens: u64) -> (u16, u64, Value) {
        let body =
            json!({"model": model, "messages": [{"role": "user", "content": prompt_of(tokens)}]});
        self.post("/v1/chat/completions", body).await
    }

    async fn message(&self, model: &str, max_tokens: u64) -> (u16, u64, Value) {
        let body = json!({"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Say hello."}]});
        self.post("/v1/messages", body).await
    }

    async fn status(&self) -> Value {
        let url = format!("{}/status", self.svc.base_url());
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

const BOTH: &str = r#"
[[providers]]
name = "groq"
kind = "openai"
base_url = "{groq}"
keys = ["gsk_TESTsecretGROQ000000000001", "gsk_TESTsecretGROQ000000000002"]
[providers.models."llama-3.3-70b-versatile"]
rpm = 5

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{claude}"
keys = ["sk-ant-TESTsecretCLAUDE0000000001"]
[providers.models."claude-haiku-4-5"]
otpm = 2000
"#;

fn sorted(mut waits: Vec<u64>) -> Vec<u64> {
    waits.sort();
    waits
}

/// 12 chats on 2 keys at 5 RPM and 6 messages reserving 500 output tokens
/// of 2,000 a minute, sent at once: ten chats and four messages go at once,
/// the rest exactly one window plus the guard later; no upstream 429.
#[tokio::test(start_paused = true)]
async fn two_providers_at_once_finish_in_one_window_with_no_429() {
    let llama = Limits {
        rpm: 5,
        ..NO_LIMITS
    };
    let haiku = Limits {
        otpm: 2_000,
        ..NO_LIMITS
    };
    let p = Providers::start(llama, haiku, BOTH).await;
    let chats = futures::future::join_all((0..12).map(|_| p.chat(LLAMA, 500)));
    let messages = futures::future::join_all((0..6).map(|_| p.message(HAIKU, 500)));
    let (chats, messages) = tokio::join!(chats, messages);
    for (status, _, body) in chats.iter().chain(&messages) {
        assert_eq!(*status, 200, "{body}");
    }
    let waits = |answers: &[(u16, u64, Value)]| sorted(answers.iter().map(|a| a.1).collect());
    assert_eq!(waits(&chats), [[0; 10].as_slice(), &[60_250; 2]].concat());
    assert_eq!(waits(&messages), [[0; 4].as_slice(), &[60_250; 2]].concat());
    assert_eq!(chats[0].2["object"], "chat.completion");
    assert_eq!(messages[0].2["type"], "message");
    assert_eq!((p.groq.stats().calls, p.groq.stats().rejected_429), (12, 0));
    assert_eq!(
        (p.claude.stats().calls, p.claude.stats().rejected_429),
        (6, 0)
    );
    // Each call's key is its provider's: groq's two share the chats.
    let status = p.status().await;
    let keys = status["keys"].as_array().unwrap();
    let providers: Vec<&str> = keys
        .iter()
        .map(|k| k["provider"].as_str().unwrap())
        .collect();
    assert_eq!(providers, ["groq", "groq", "claude"]);
    let model = |k: usize, m: &str| keys[k]["models"][m].clone();
    assert_eq!(model(0, "groq/llama-3.3-70b-versatile")["limits"]["rpm"], 5);
    assert_eq!(model(2, "claude/claude-haiku-4-5")["limits"]["otpm"], 2_000);
}

/// A lane configured above the provider's true limits learns them from the
/// headers of its first served answer, so calls one after another never
/// meet a 429: Anthropic's requests per minute, Groq's tokens per minute.
#[tokio::test(start_paused = true)]
async fn limits_stated_in_headers_are_learned_before_any_429() {
    let llama = Limits {
        tpm: 3_000,
        ..NO_LIMITS
    };
    let haiku = Limits {
        rpm: 3,
        ..NO_LIMITS
    };
    let file = BOTH
        .replace("rpm = 5", "tpm = 50000")
        .replace("otpm = 2000", "rpm = 50");
    let p = Providers::start(llama, haiku, &file).await;
    let mut message_waits = Vec::new();
    for _ in 0..4 {
        let (status, wait, body) = p.message(HAIKU, 100).await;
        assert_eq!(status, 200, "{body}");
        message_waits.push(wait);
    }
    // The first answer said 3 a minute: the fourth waits for the window
    // (from the first call's instant, the guard past it).
    assert_eq!(message_waits, [0, 0, 0, 60_250]);
    let mut chat_waits = Vec::new();
    for _ in 0..7 {
        let (status, wait, body) = p.chat(LLAMA, 1_000).await;
        assert_eq!(status, 200, "{body}");
        chat_waits.push(wait);
    }
    // 3,000 tokens a minute, said on the first answer and held by both keys
    // of the tier: three of 1,000 fit on each.
    assert_eq!(chat_waits, [0, 0, 0, 0, 0, 0, 60_250]);
    assert_eq!(p.claude.stats().rejected_429, 0);
    assert_eq!(p.groq.stats().rejected_429, 0);
    let status = p.status().await;
    let lane = &status["keys"][2]["models"]["claude/claude-haiku-4-5"];
    assert_eq!(
        (&lane["limits"]["rpm"], &lane["limits"]["sources"]["rpm"]),
        (&json!(3), &json!("learned"))
    );
}

/// Models resolve by `provider/model` or a bare name; an unknown one is a
/// 404 in the surface's own envelope; each provider's keys stay secret.
#[tokio::test(start_paused = true)]
async fn names_resolve_and_no_provider_key_is_shown() {
    let p = Providers::start(NO_LIMITS, NO_LIMITS, BOTH).await;
    let (status, _, body) = p.chat("groq/llama-3.3-70b-versatile", 10).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = p.chat("mistral-large", 10).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
    let (status, _, body) = p.message("claude/claude-haiku-4-5", 10).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = p.message(LLAMA, 10).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "not_found_error");
    let (status, _, body) = p
        .post("/v1/messages", json!({"model": HAIKU, "messages": []}))
        .await;
    assert_eq!(
        (status, &body["error"]["type"]),
        (400, &json!("invalid_request_error"))
    );
    let models = p
        .http
        .get(format!("{}/v1/models", p.svc.base_url()))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(ids.contains(&"groq/llama-3.3-70b-versatile"), "{ids:?}");
    assert!(ids.contains(&"claude/claude-haiku-4-5"), "{ids:?}");
    let mut shown = p.status().await.to_string();
    for path in ["/metrics", "/v1/models"] {
        let url = format!("{}{path}", p.svc.base_url());
        shown.push_str(&p.http.get(url).send().await.unwrap().text().await.unwrap());
    }
    for key in GROQ_KEYS.iter().chain([&CLAUDE_KEY]) {
        assert!(!shown.contains(key), "{key} shown");
    }
}

/// A provider's day is its own zone's, across a restart too: at 18:00
/// Pacific it is already tomorrow in UTC, and the two requests of Groq's
/// UTC day spent before the restart are still spent after it (no 429:
/// the third is refused by the gateway, until UTC midnight).
#[tokio::test(start_paused = true)]
async fn a_restart_keeps_a_utc_days_count() {
    let evening = at("2026-06-11T01:00:00Z"); // 18:00 on 2026-06-10 in Los Angeles
    let llama = Limits {
        rpd: 2,
        ..NO_LIMITS
    };
    let file = BOTH
        .replace(", \"gsk_TESTsecretGROQ000000000002\"]", "]")
        .replace("rpm = 5", "rpd = 2");
    let p = Providers::start_at(evening, llama, NO_LIMITS, &file).await;
    for _ in 0..2 {
        let (status, _, body) = p.chat(LLAMA, 10).await;
        assert_eq!(status, 200, "{body}");
    }
    let p = p.restart().await;
    let (status, _, body) = p.chat(LLAMA, 10).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2026-06-12T00:00:00.000Z"),
        "{body}"
    );
    assert_eq!(p.groq.stats().rejected_429, 0);
}

/// Every provider's key in its auth header only: not in an answer, a
/// header, `/status`, `/metrics` or a log line at TRACE, whatever happens:
/// served calls and streams, a provider's 429 (a lane configured too high
/// for a burst), and a key the provider does not know (401, confirmed on
/// its model list, the key taken out).
#[tokio::test(start_paused = true)]
async fn no_provider_key_text_in_any_output_or_log() {
    let (logs, _guard) = captured_logs();
    const UNKNOWN: &str = "gsk_TESTsecretGROQunknownToUpstream";
    let llama = Limits {
        rpm: 2,
        ..NO_LIMITS
    };
    let file = BOTH.replace("rpm = 5", "rpm = 50").replace(
        "\"gsk_TESTsecretGROQ000000000002\"]",
        &format!("\"gsk_TESTsecretGROQ000000000002\", \"{UNKNOWN}\"]"),
    );
    let p = Providers::start(llama, NO_LIMITS, &file).await;
    let mut shown = String::new();
    let chats = futures::future::join_all((0..8).map(|_| p.chat(LLAMA, 10))).await;
    for (status, _, body) in &chats {
        shown.push_str(&format!("{status} {body}\n"));
    }
    assert!(chats.iter().all(|c| c.0 == 200), "{shown}");
    for stream in [false, true] {
        let body = json!({"model": HAIKU, "max_tokens": 10, "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
        let resp = p
            .http
            .post(format!("{}/v1/messages", p.svc.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        shown.push_str(&format!("{:?}\n", resp.headers()));
        shown.push_str(&resp.text().await.unwrap());
    }
    for path in ["/status", "/metrics", "/v1/models", "/readyz"] {
        let url = format!("{}{path}", p.svc.base_url());
        shown.push_str(&p.http.get(url).send().await.unwrap().text().await.unwrap());
    }
    let status = p.status().await;
    assert_eq!(status["keys"][2]["state"], "invalid", "{status}");
    assert!(p.groq.stats().rejected_429 > 0, "a 429 was met and learned");
    let logs = logs.text();
    assert!(
        logs.contains("…ream"),
        "the unknown key is named by its fingerprint"
    );
    for key in GROQ_KEYS.iter().chain([&CLAUDE_KEY, &UNKNOWN]) {
        assert!(!shown.contains(key), "{key} in an answer");
        assert!(!logs.contains(key), "{key} in the logs");
    }
}

/// A `max_tokens` no model's output-token quota ever holds is refused at
/// once, saying so, in the surface's envelope: never sent, never waited for.
#[tokio::test(start_paused = true)]
async fn more_output_than_a_minute_holds_is_a_413_that_says_so() {
    let haiku = Limits {
        otpm: 2_000,
        ..NO_LIMITS
    };
    let p = Providers::start(NO_LIMITS, haiku, BOTH).await;
    let (status, _, body) = p.message(HAIKU, 64_000).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["type"], "request_too_large");
    assert_eq!(
        body["error"]["message"],
        "the request may spend 64000 output tokens (its max_tokens), more than any allowed model's output tokens per minute (claude/claude-haiku-4-5: 2000): ask for fewer"
    );
    assert_eq!(p.claude.stats().calls, 0);
}
