//! The gateway's client for the other providers (`upstream::ProviderApi`)
//! against the strict OpenAI-compatible and Anthropic simulators, on one
//! paused clock: what a served call's headers say of the limits, and whose
//! fault each refusal is (a quota with its limit and wait, the key, the
//! client's request), the key's text never in an error.

mod common;

use common::*;
use gemini_flux::clock::{Clock, Timestamp};
use gemini_flux::keys::ApiKey;
use gemini_flux::policy::{Limits, Quota, UNLIMITED};
use gemini_flux::scheduler::Violation;
use gemini_flux::sim::{Faults, ProviderConfig, ProviderKind, ProviderSim};
use gemini_flux::upstream::{Kind, ProviderAnswer, ProviderApi, ProviderFailure, UpstreamError};
use gemini_flux::wire::ratelimit::{Metric, Reading, Scope};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const MODEL: &str = "sim-model";
const KEY: &str = "sim-key-1";

const OPEN: Limits = Limits {
    rpm: 1_000,
    tpm: UNLIMITED,
    rpd: 1_000_000,
    tpd: UNLIMITED,
    otpm: UNLIMITED,
};

/// A simulator of `kind` serving `MODEL` with `limits`, the API that calls
/// it (base URLs as each kind's SDK writes them), and the shared clock.
struct Provider {
    sim: ProviderSim,
    api: ProviderApi,
    clock: Clock,
}

impl Provider {
    async fn start(kind: Kind, limits: Limits, wall: Timestamp, faults: Faults) -> Provider {
        let sim_kind = match kind {
            Kind::OpenAi => ProviderKind::OpenAiCompatible,
            Kind::Anthropic => ProviderKind::Anthropic,
        };
        let mut config = ProviderConfig::new(sim_kind, [KEY, "sim-key-2"])
            .with_models(BTreeMap::from([(MODEL.to_string(), limits)]));
        config.faults = faults;
        let clock = Clock::starting_at(wall);
        let sim = ProviderSim::start(config, clock, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("provider simulator starts");
        let base = match kind {
            Kind::OpenAi => format!("{}/v1/", sim.base_url()),
            Kind::Anthropic => sim.base_url(),
        };
        let api = ProviderApi::new("sim", kind, &base, Duration::from_secs(600));
        Provider { sim, api, clock }
    }

    /// The kind's call (chat, or a message) of `body` with `key`, on `MODEL`.
    async fn post(&self, key: &str, body: &Value) -> Result<ProviderAnswer, ProviderFailure> {
        self.post_on(key, MODEL, body, None).await
    }

    /// The same on `model`, with the client's `anthropic-version` if any.
    async fn post_on(
        &self,
        key: &str,
        model: &str,
        body: &Value,
        version: Option<&str>,
    ) -> Result<ProviderAnswer, ProviderFailure> {
        let path = match self.api.kind() {
            Kind::OpenAi => "chat/completions",
            Kind::Anthropic => "v1/messages",
        };
        self.api
            .post(&ApiKey::new(key), path, model, body, version, self.clock)
            .await
    }

    async fn served(&self, body: &Value) -> (Value, Vec<Reading>) {
        let answer = self.post(KEY, body).await.expect("served");
        assert_eq!(answer.response.status(), 200);
        (answer.response.json().await.unwrap(), answer.readings)
    }

    async fn refused(&self, key: &str, body: &Value) -> ProviderFailure {
        let failure = self.post(key, body).await.expect_err("refused");
        keyless(&failure.error, key);
        failure
    }
}

/// The key's text is in neither the error's Display nor its Debug.
fn keyless(error: &UpstreamError, key: &str) {
    for shown in [error.to_string(), format!("{error:?}")] {
        assert!(!shown.contains(key), "the key in {shown}");
    }
}

/// A chat of exactly `tokens` input tokens, naming a model of the client's
/// own that the call replaces with the provider's.
fn chat_of(tokens: u64) -> Value {
    json!({"model": "the-clients-alias", "messages": [{"role": "user", "content": "x".repeat(tokens as usize * 4)}]})
}

fn message_of(tokens: u64, max_tokens: u64, stream: bool) -> Value {
    json!({
        "model": "the-clients-alias",
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": "x".repeat(tokens as usize * 4)}],
    })
}

fn reading(
    metric: Metric,
    scope: Scope,
    limit: u64,
    remaining: u64,
    resets_at: Timestamp,
) -> Reading {
    Reading {
        metric,
        scope,
        limit: Some(limit),
        remaining: Some(remaining),
        resets_at: Some(resets_at),
    }
}

#[tokio::test(start_paused = true)]
async fn a_served_chat_reads_the_day_of_requests_and_the_minute_of_tokens() {
    let limits = Limits {
        rpd: 10,
        tpm: 1_000,
        ..OPEN
    };
    let groq = Provider::start(
        Kind::OpenAi,
        limits,
        at("2026-06-10T12:00:00Z"),
        Faults::default(),
    )
    .await;
    let mut last = Vec::new();
    for _ in 0..3 {
        let (body, readings) = groq.served(&chat_of(100)).await;
        assert_eq!(body["model"], MODEL, "served on the provider's model");
        assert_eq!(body["usage"]["prompt_tokens"], 100);
        last = readings;
        tokio::time::advance(Duration::from_millis(2_340)).await;
    }
    // The third call at 12:00:04.68: 7 requests left of the UTC day's 10,
    // 700 tokens of the minute's 1,000, the minute whole 60 s later.
    assert_eq!(
        last,
        [
            reading(
                Metric::Requests,
                Scope::Day,
                10,
                7,
                at("2026-06-11T00:00:00Z")
            ),
            reading(
                Metric::Tokens,
                Scope::Minute,
                1_000,
                700,
                at("2026-06-10T12:01:04.680Z")
            ),
        ]
    );
    assert_eq!(groq.sim.stats().lane(1, MODEL).unwrap().calls, 3);
}

#[tokio::test(start_paused = true)]
async fn a_served_message_reads_each_minute_quota() {
    let limits = Limits {
        rpm: 3,
        tpm: 50_000,
        otpm: 10_000,
        ..OPEN
    };
    let claude = Provider::start(
        Kind::Anthropic,
        limits,
        at("2026-06-10T12:00:00Z"),
        Faults::default(),
    )
    .await;
    claude.served(&message_of(250, 100, false)).await;
    tokio::time::advance(Duration::from_millis(1_200)).await;
    let (body, readings) = claude.served(&message_of(250, 100, false)).await;
    assert_eq!(body["model"], MODEL);
    // Two calls at 12:00:00 and :01.2, each of 250 input tokens, each
    // saying 2 output tokens of the 100 reserved; the minute is whole when
    // the second leaves it, at 12:01:01.2, written to the second above.
    let whole = at("2026-06-10T12:01:02Z");
    assert_eq!(
        readings,
        [
            reading(Metric::Requests, Scope::Minute, 3, 1, whole),
            reading(Metric::InputTokens, Scope::Minute, 50_000, 49_500, whole),
            reading(Metric::OutputTokens, Scope::Minute, 10_000, 9_996, whole),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_rpm_refusal_is_a_quota_with_its_limit_and_the_providers_wait() {
    let groq = Provider::start(
        Kind::OpenAi,
        Limits { rpm: 2, ..OPEN },
        quiet_noon(),
        Faults::default(),
    )
    .await;
    groq.served(&chat_of(10)).await;
    tokio::time::advance(Duration::from_millis(10_500)).await;
    groq.served(&chat_of(10)).await;
    tokio::time::advance(Duration::from_millis(5_000)).await;

    let refused = groq.refused(KEY, &chat_of(10)).await;
    // The first call leaves the minute in 44.5 s: `retry-after: 45`.
    assert_eq!(
        refused.error,
        UpstreamError::Quota {
            violations: vec![Violation {
                quota: Quota::RequestsPerMinute,
                limit: Some(2)
            }],
            retry_after: Some(Duration::from_secs(45)),
            message: "Rate limit reached for model `sim-model` in organization `org_sim` service tier `on_demand` on requests per minute (RPM): Limit 2, Used 2, Requested 1. Please try again in 44.5s. Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing".into(),
        }
    );
    // The refusal's headers are read too: the day's requests, unchanged by it.
    assert_eq!(
        refused
            .readings
            .iter()
            .map(|r| (r.metric, r.scope, r.remaining))
            .collect::<Vec<_>>(),
        [(Metric::Requests, Scope::Day, Some(999_998))]
    );
}

#[tokio::test(start_paused = true)]
async fn an_anthropic_output_reservation_refused_is_output_tokens_per_minute() {
    let limits = Limits {
        otpm: 2_000,
        ..OPEN
    };
    let faults = Faults {
        stream_chunk_delay_ms: 5_000,
        ..Faults::default()
    };
    let claude = Provider::start(Kind::Anthropic, limits, quiet_noon(), faults).await;
    // A stream holds its 1,500 output tokens while its body, unread, waits.
    let held = claude
        .post(KEY, &message_of(10, 1_500, true))
        .await
        .expect("served");
    let output = held
        .readings
        .iter()
        .find(|r| r.metric == Metric::OutputTokens);
    assert_eq!(
        output.map(|r| (r.limit, r.remaining)),
        Some((Some(2_000), Some(500)))
    );

    let refused = claude.refused(KEY, &message_of(10, 1_000, false)).await;
    match refused.error {
        UpstreamError::Quota {
            violations,
            retry_after,
            message,
        } => {
            assert_eq!(
                violations,
                [Violation {
                    quota: Quota::OutputTokensPerMinute,
                    limit: Some(2_000)
                }]
            );
            assert_eq!(retry_after, Some(Duration::from_secs(60)));
            assert!(
                message.contains("of 2,000 output tokens per minute."),
                "{message}"
            );
        }
        other => panic!("not a quota: {other:?}"),
    }
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn a_bad_key_is_the_keys_fault_with_each_providers_envelope() {
    let groq = Provider::start(Kind::OpenAi, OPEN, quiet_noon(), Faults::default()).await;
    let refused = groq.refused("not-a-key", &chat_of(1)).await;
    assert_eq!(
        refused.error,
        UpstreamError::KeyInvalid {
            message: "Invalid API Key".into(),
            body: json!({"error": {"message": "Invalid API Key", "type": "invalid_request_error", "code": "invalid_api_key"}}),
        }
    );
    let claude = Provider::start(Kind::Anthropic, OPEN, quiet_noon(), Faults::default()).await;
    let refused = claude.refused("not-a-key", &message_of(1, 10, false)).await;
    assert_eq!(
        refused.error,
        UpstreamError::KeyInvalid {
            message: "invalid x-api-key".into(),
            body: json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}),
        }
    );
    assert!(refused.error.is_about_the_key());
    assert_eq!(groq.sim.stats().calls + claude.sim.stats().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_model_is_the_clients_404_in_the_providers_envelope() {
    let unknown = async |provider: &Provider, body: &Value| {
        let failure = provider.post_on(KEY, "no-such-model", body, None).await;
        failure.expect_err("refused").error
    };
    let groq = Provider::start(Kind::OpenAi, OPEN, quiet_noon(), Faults::default()).await;
    let error = unknown(&groq, &chat_of(1)).await;
    keyless(&error, KEY);
    assert_eq!(
        error,
        UpstreamError::Client {
            status: 404,
            message: "The model `no-such-model` does not exist or you do not have access to it."
                .into(),
            body: json!({"error": {
                "message": "The model `no-such-model` does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }}),
        }
    );
    assert_eq!(error.penalty(), None, "the key is fine");
    let claude = Provider::start(Kind::Anthropic, OPEN, quiet_noon(), Faults::default()).await;
    assert_eq!(
        unknown(&claude, &message_of(1, 10, false)).await,
        UpstreamError::Client {
            status: 404,
            message: "model: no-such-model".into(),
            body: json!({"type": "error", "error": {"type": "not_found_error", "message": "model: no-such-model"}}),
        }
    );
}

#[tokio::test(start_paused = true)]
async fn the_clients_anthropic_version_goes_upstream_or_is_refused_unsent() {
    let claude = Provider::start(Kind::Anthropic, OPEN, quiet_noon(), Faults::default()).await;
    let body = message_of(1, 10, false);
    let post = |version| claude.post_on(KEY, MODEL, &body, Some(version));
    assert_eq!(
        post("2023-06-01").await.expect("served").response.status(),
        200
    );
    let bad = post("2023-06-01\n").await.expect_err("refused");
    assert!(
        matches!(bad.error, UpstreamError::Client { status: 400, .. }),
        "{bad:?}"
    );
    assert_eq!(claude.sim.stats().calls, 1, "the refused one never left");
}

/// A chat with `key` to an OpenAI-compatible provider at `base` that is
/// not a simulator, refused.
async fn refused_chat_at(base: &str, key: &str) -> ProviderFailure {
    let api = ProviderApi::new("other", Kind::OpenAi, base, Duration::from_secs(600));
    let (key, body) = (ApiKey::new(key), chat_of(1));
    let clock = Clock::starting_at(quiet_noon());
    let answer = api.post(&key, "chat/completions", MODEL, &body, None, clock);
    answer.await.expect_err("refused")
}

#[tokio::test(start_paused = true)]
async fn a_provider_that_cannot_be_reached_saw_nothing() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let failure = refused_chat_at(&base, KEY).await;
    assert!(
        matches!(failure.error, UpstreamError::Unreached { .. }),
        "{failure:?}"
    );
    assert!(failure.readings.is_empty());
    keyless(&failure.error, KEY);
}

/// A provider that echoes the key it refuses, as OpenAI once did in its
/// "Incorrect API key provided" message.
#[tokio::test(start_paused = true)]
async fn a_key_the_provider_echoes_is_in_no_error() {
    use axum::http::HeaderMap;
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|headers: HeaderMap| async move {
            let auth = headers["authorization"].to_str().unwrap_or_default().to_string();
            let message = format!("Incorrect API key provided: {auth}. You can find your API key at https://example.com.");
            (
                axum::http::StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": {"message": message, "echo": auth}})),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let key = "sk-proj-echoed-0123456789abcdef";
    let failure = refused_chat_at(&base, key).await;
    keyless(&failure.error, key);
    assert_eq!(
        failure.error,
        UpstreamError::KeyInvalid {
            message: "Incorrect API key provided: Bearer …cdef. You can find your API key at https://example.com.".into(),
            body: json!({"error": {
                "message": "Incorrect API key provided: Bearer …cdef. You can find your API key at https://example.com.",
                "echo": "Bearer …cdef",
            }}),
        }
    );
}
