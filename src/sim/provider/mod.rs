//! Strict stand-ins for the providers gemini-flux serves besides Gemini: an
//! OpenAI-compatible one (modelled on Groq and OpenAI, `openai_compat`) and
//! Anthropic (`anthropic`), one skeleton for both.
//!
//! Each serves one kind on loopback, started in-process like the Gemini
//! simulator and on the same [`Clock`], so a test under `tokio::time::pause()`
//! moves both through a day at once. Quotas are per key and per model, kept
//! on the Gemini simulator's own ledger ([`LaneQuota`]) in the provider's
//! calendar day (UTC unless told otherwise): requests and input tokens a
//! minute and a day, and output tokens a minute, which a call reserves at
//! admission (its maximum) and settles to what it said when its answer ends,
//! as Anthropic and Cerebras do. Every answer on a lane carries the
//! provider's rate-limit headers; a refusal carries its real 429 body and a
//! `retry-after` that is the true time until the call would fit.
//! `GET /__sim/stats` reports per lane as the Gemini simulator does.

mod anthropic;
mod openai_compat;

use super::quota::{LaneQuota, Rejection, Standing, Ticket};
use super::{Faults, SimStats};
use crate::clock::{Clock, DayZone};
use crate::policy::{Limits, Quota, UNLIMITED, Usage};
use crate::wire::openai::item_tokens;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Which provider a [`ProviderSim`] plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`, with a bearer
    /// key and Groq's `x-ratelimit-*` headers and 429 bodies.
    OpenAiCompatible,
    /// `/v1/messages` (and `count_tokens`), `/v1/models`, with `x-api-key`,
    /// `anthropic-version` and the `anthropic-ratelimit-*` headers.
    Anthropic,
}

impl std::str::FromStr for ProviderKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "openai" | "openai-compatible" => Ok(ProviderKind::OpenAiCompatible),
            "anthropic" => Ok(ProviderKind::Anthropic),
            other => Err(format!(
                "{other:?} is not a provider kind: openai (or openai-compatible) or anthropic"
            )),
        }
    }
}

/// A refusal in a provider's own envelope (each kind writes its `body`), with
/// `retry-after` in whole seconds where the provider says when to come back.
struct Failure {
    status: StatusCode,
    body: Value,
    retry_after: Option<u64>,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// How many output tokens an OpenAI-compatible call reserves when it names
/// no `max_completion_tokens` nor `max_tokens` (an Anthropic call must name
/// `max_tokens`).
pub const DEFAULT_MAX_TOKENS: u64 = 1_024;

/// Limits that never bind: a model `--limits` names with no numbers of its own.
pub const NO_LIMITS: Limits = Limits {
    rpm: u32::MAX,
    tpm: UNLIMITED,
    rpd: u32::MAX,
    tpd: UNLIMITED,
    otpm: UNLIMITED,
};

/// What a provider simulator serves.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// Keys it accepts, in order (stats name them 1-based).
    pub keys: Vec<String>,
    /// The models it serves and each key's limits on them.
    pub models: BTreeMap<String, Limits>,
    /// The calendar day its per-day quotas count in.
    pub day: DayZone,
    /// Only `latency_ms` and `stream_chunk_delay_ms` apply here.
    pub faults: Faults,
}

impl ProviderConfig {
    /// The kind's usual free or first-tier models and limits, on a UTC day.
    pub fn new(kind: ProviderKind, keys: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let limits = |rpm, tpm, rpd, tpd, otpm| Limits {
            rpm,
            tpm,
            rpd,
            tpd,
            otpm,
        };
        let models = match kind {
            // Groq's free tier, 2026.
            ProviderKind::OpenAiCompatible => BTreeMap::from([
                (
                    "llama-3.1-8b-instant".to_string(),
                    limits(30, 6_000, 14_400, 500_000, UNLIMITED),
                ),
                (
                    "llama-3.3-70b-versatile".to_string(),
                    limits(30, 12_000, 1_000, 100_000, UNLIMITED),
                ),
                (
                    "text-embedding-3-small".to_string(),
                    limits(100, 30_000, 1_000, UNLIMITED, UNLIMITED),
                ),
            ]),
            // Anthropic's first tier: no per-day quotas.
            ProviderKind::Anthropic => BTreeMap::from([
                (
                    "claude-haiku-4-5".to_string(),
                    Limits {
                        rpm: 50,
                        tpm: 50_000,
                        otpm: 10_000,
                        ..NO_LIMITS
                    },
                ),
                (
                    "claude-sonnet-4-5".to_string(),
                    Limits {
                        rpm: 50,
                        tpm: 30_000,
                        otpm: 8_000,
                        ..NO_LIMITS
                    },
                ),
            ]),
        };
        ProviderConfig {
            kind,
            keys: keys.into_iter().map(Into::into).collect(),
            models,
            day: DayZone::UTC,
            faults: Faults::default(),
        }
    }

    pub fn with_models(mut self, models: BTreeMap<String, Limits>) -> Self {
        self.models = models;
        self
    }

    /// Faults this simulator does not model are refused, not ignored.
    fn validate(&self) -> Result<(), String> {
        let modelled = Faults {
            latency_ms: self.faults.latency_ms,
            stream_chunk_delay_ms: self.faults.stream_chunk_delay_ms,
            ..Faults::default()
        };
        if self.faults != modelled {
            return Err(
                "a provider simulator models only the latency_ms and stream_chunk_delay_ms faults"
                    .to_string(),
            );
        }
        Ok(())
    }
}

/// Whether a limit is set at all (an unset one is neither enforced in
/// earnest nor announced in headers).
pub(super) fn is_set(limit: u64) -> bool {
    limit != UNLIMITED && limit != u64::from(u32::MAX)
}

/// The simulator's state; the mutex is held only for one call's arithmetic.
pub(crate) struct ProviderState {
    keys: HashMap<String, usize>,
    key_order: Vec<String>,
    models: BTreeMap<String, Limits>,
    day: DayZone,
    clock: Clock,
    faults: Faults,
    inner: Mutex<Inner>,
}

struct Inner {
    lanes: BTreeMap<(usize, String), LaneQuota>,
    /// Answers given so far: each answer's id is the next.
    answers: u64,
}

/// The lane (key, model) a call goes on, and the key's limits there.
#[derive(Clone, Debug)]
pub(super) struct Lane {
    pub(super) key_index: usize,
    pub(super) model: String,
    pub(super) limits: Limits,
}

/// Why the quotas refused a call: the quota that binds longest, where it
/// stood, what the call asked, and the true wait (`None`: never fits).
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) quota: Quota,
    pub(super) limit: u64,
    pub(super) used: u64,
    pub(super) requested: u64,
    pub(super) retry_after: Option<Duration>,
}

impl ProviderState {
    fn new(config: ProviderConfig, clock: Clock) -> Self {
        ProviderState {
            keys: config
                .keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k.clone(), i + 1))
                .collect(),
            key_order: config.keys,
            models: config.models,
            day: config.day,
            clock,
            faults: config.faults,
            inner: Mutex::new(Inner {
                lanes: BTreeMap::new(),
                answers: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere must not take the simulator down with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The 1-based index of `key`, if the simulator knows it.
    pub(super) fn key_index(&self, key: Option<&str>) -> Option<usize> {
        key.and_then(|k| self.keys.get(k)).copied()
    }

    /// Key `key_index`'s lane on `model`, if the model is served.
    pub(super) fn lane(&self, key_index: usize, model: &str) -> Option<Lane> {
        let limits = *self.models.get(model)?;
        Some(Lane {
            key_index,
            model: model.to_string(),
            limits,
        })
    }

    pub(super) fn models(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// A fresh id for an answer (`request-id`, a message's or completion's id).
    pub(super) fn next_id(&self) -> u64 {
        let mut inner = self.lock();
        inner.answers += 1;
        inner.answers
    }

    pub(super) fn now_millis(&self) -> i64 {
        self.clock.now().millis()
    }

    pub(super) fn now_secs(&self) -> i64 {
        self.now_millis() / 1_000
    }

    /// Admits `call` on `lane` (its output tokens are the reservation), or
    /// says which quota refused it and for how long.
    pub(super) fn admit(&self, lane: &Lane, call: Usage) -> Result<Ticket, Refusal> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let quota = inner
            .lanes
            .entry((lane.key_index, lane.model.clone()))
            .or_insert_with(|| LaneQuota::new(self.day));
        quota.admit_usage(&lane.limits, call, now).map_err(|r| {
            let Rejection {
                binding,
                retry_after,
                ..
            } = r;
            let standing = quota.standing(&lane.limits, binding, now);
            Refusal {
                quota: binding,
                limit: standing.limit,
                used: standing.used,
                requested: call.of(binding.metric()),
                retry_after,
            }
        })
    }

    /// Settles an admitted call's reservation to the `output` tokens it said.
    fn settle(&self, lane: &Lane, ticket: Ticket, output: u64) {
        let now = self.clock.now();
        if let Some(quota) = self
            .lock()
            .lanes
            .get_mut(&(lane.key_index, lane.model.clone()))
        {
            quota.settle(ticket, output, now);
        }
    }

    /// Where `quota` stands on `lane` now, for the rate-limit headers.
    pub(super) fn standing(&self, lane: &Lane, quota: Quota) -> Standing {
        let now = self.clock.now();
        self.lock()
            .lanes
            .entry((lane.key_index, lane.model.clone()))
            .or_insert_with(|| LaneQuota::new(self.day))
            .standing(&lane.limits, quota, now)
    }

    /// The simulated model's thinking time, taken after admission.
    pub(super) async fn think(&self) {
        if self.faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.faults.latency_ms)).await;
        }
    }

    pub(crate) fn stats(&self) -> SimStats {
        let now = self.clock.now();
        SimStats::of(&mut self.lock().lanes, &self.key_order, now)
    }
}

/// An admitted call's reservation, settled to its answer's output tokens
/// when dropped: when a whole answer has been written, or a stream ends
/// (before its last frame goes, see [`paced`]) or is abandoned.
pub(super) struct Settle {
    state: Arc<ProviderState>,
    lane: Lane,
    ticket: Option<Ticket>,
    output: u64,
}

impl Settle {
    pub(super) fn new(state: Arc<ProviderState>, lane: Lane, ticket: Ticket, output: u64) -> Self {
        Settle {
            state,
            lane,
            ticket: Some(ticket),
            output,
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.state.settle(&self.lane, ticket, self.output);
        }
    }
}

/// A streamed answer's `frames`, paced by the chunk-delay fault; the call
/// settles just before the last frame goes, so a client that has read the
/// whole stream finds the lane settled.
pub(super) fn paced(state: &ProviderState, frames: Vec<Bytes>, settle: Settle) -> Body {
    let delay = Duration::from_millis(state.faults.stream_chunk_delay_ms);
    let start = (frames.into_iter(), Some(settle), false);
    let stream =
        futures::stream::unfold(start, move |(mut frames, mut settle, started)| async move {
            let frame = frames.next()?;
            if started && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if frames.len() == 0 {
                drop(settle.take());
            }
            Some((Ok::<_, Infallible>(frame), (frames, settle, true)))
        });
    Body::from_stream(stream)
}

/// What the simulated model says: `text`, cut to at most `max` tokens
/// (four characters a token, as every count here), and its token count.
pub(super) struct Said {
    pub(super) text: String,
    pub(super) tokens: u64,
    /// The answer hit `max` and was cut there.
    pub(super) cut: bool,
}

impl Said {
    pub(super) fn new(mut text: String, max: u64) -> Said {
        let tokens = item_tokens(&Value::String(text.clone()));
        if tokens <= max {
            return Said {
                text,
                tokens,
                cut: false,
            };
        }
        let chars = usize::try_from(max.saturating_mul(4)).unwrap_or(usize::MAX);
        if let Some((at, _)) = text.char_indices().nth(chars) {
            text.truncate(at);
        }
        Said {
            text,
            tokens: max,
            cut: true,
        }
    }

    /// The plain answer to a prompt of `input` tokens: `ok:<input>`.
    pub(super) fn ok(input: u64, max: u64) -> Said {
        Said::new(format!("ok:{input}"), max)
    }

    /// The text in the pieces a stream sends it in: `ok`, `:`, `<n>` (or
    /// whole when it was cut).
    pub(super) fn pieces(&self) -> Vec<&str> {
        match self.text.strip_prefix("ok:") {
            Some(count) if !self.cut => vec!["ok", ":", count],
            _ => vec![self.text.as_str()],
        }
    }
}

/// The arguments the simulated model calls a tool with (from its JSON
/// schema, as the Gemini simulator makes them), as JSON text, and what they
/// count as output (at most `max`).
pub(super) fn tool_arguments(schema: &Value, max: u64) -> (Value, u64) {
    let arguments = super::tools::arguments(schema);
    let tokens = item_tokens(&Value::String(arguments.to_string()));
    (arguments, tokens.min(max))
}

/// `d` in whole seconds, rounded up: a `retry-after` value.
pub(super) fn whole_seconds(d: Duration) -> u64 {
    d.as_millis().div_ceil(1_000) as u64
}

/// A running provider simulator on a local port. Dropping it stops it.
pub struct ProviderSim {
    addr: SocketAddr,
    state: Arc<ProviderState>,
    task: JoinHandle<()>,
}

impl ProviderSim {
    /// Binds `bind` (port 0 for an ephemeral one) and serves in the background.
    pub async fn start(
        config: ProviderConfig,
        clock: Clock,
        bind: SocketAddr,
    ) -> std::io::Result<ProviderSim> {
        config.validate().map_err(std::io::Error::other)?;
        let kind = config.kind;
        let state = Arc::new(ProviderState::new(config, clock));
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let surface = match kind {
            ProviderKind::OpenAiCompatible => openai_compat::routes(),
            ProviderKind::Anthropic => anthropic::routes(),
        };
        let app: Router = surface
            .route("/__sim/stats", get(stats))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("provider simulator stopped: {e}");
            }
        });
        Ok(ProviderSim { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the provider's base URL (its routes start `/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the provider has seen so far (the same as `GET /__sim/stats`).
    pub fn stats(&self) -> SimStats {
        self.state.stats()
    }

    /// Serves until the task ends (for the `sim` command).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for ProviderSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stats(State(state): State<Arc<ProviderState>>) -> Response {
    axum::Json(state.stats()).into_response()
}
