//! One generate request's journey, shared by every surface: count its tokens,
//! get a grant, wait for its instant, call Gemini, settle, and re-plan on
//! what the upstream teaches (a 429, a bad key, a transient failure).
//!
//! A streamed call is settled only when its last chunk (with the final
//! `usageMetadata`) has passed: the dispatcher hands its [`Settlement`] to the
//! stream relay, which finishes it.

use super::AppState;
use super::error::ApiError;
use crate::clock::{Clock, Timestamp};
use crate::config::TokenCount;
use crate::keys::ApiKey;
use crate::policy::Usage;
use crate::scheduler::{
    Booked, Grant, Heard, InFlight, KeyChoice, KeyIndex, PlanError, PlanRequest, Priority, Spent,
    Target,
};
use crate::store::{CallId, Outcome, Record};
use crate::upstream::{Generated, ProviderApi, Upstream, UpstreamError};
use crate::wire::{GenerateRequest, openai};
use axum::http::StatusCode;
use rand::Rng;
use serde_json::Value;
use std::time::Duration;

/// What a surface asks the dispatcher for: a generate call's request as
/// the JSON text that goes upstream ([`GenerateRequest`]: a native body
/// passed through as it came, never a tree), or the JSON body of an OpenAI
/// chat or an embedding.
pub struct Job<R = GenerateRequest> {
    pub request: R,
    pub target: Target,
    pub keys: KeyChoice,
    /// The requests the call counts: 1, or the items of a batch of embeddings.
    pub requests: u64,
    pub max_wait: Duration,
    /// Re-plan after a 429 or a failure (the seed's `retry`).
    pub retry: bool,
    /// `Interactive` (a caller waits) everywhere but a batch item, which is
    /// `Background`: booked only for now, within each window less the
    /// interactive reserve.
    pub priority: Priority,
}

/// An accepted stream: its body is yet to be relayed, and its call to be
/// settled when it ends.
pub struct Stream {
    pub response: reqwest::Response,
    pub settlement: Settlement,
}

/// A served request: the upstream's answer (`Generated` or [`Stream`]) and
/// how it was served.
pub struct Served<R> {
    pub reply: R,
    pub meta: Meta,
}

/// How a request was served: what the `x-flux-*` headers and `/generate` report.
pub struct Meta {
    pub key: KeyIndex,
    pub fingerprint: String,
    pub model: String,
    /// The upstream's count when known, else the estimate.
    pub input_tokens: u64,
    /// Time spent waiting for grants, all attempts together.
    pub waited: Duration,
    pub attempts: u32,
    pub retried: bool,
}

/// The end of a call that reached the upstream: corrects the booking with
/// the tokens counted and completes the ledger row. Dropped unfinished (the
/// client left mid-stream), the booking keeps the estimate and the row stays
/// "sent", which recovery counts: the upstream did count it.
pub struct Settlement {
    call: InFlight,
    state: AppState,
    call_id: CallId,
    sent_at: Timestamp,
    estimate: u64,
    /// What the answer's rate-limit headers said (other providers').
    heard: Heard,
}

impl Settlement {
    /// The output tokens the call reserved.
    fn reserved(&self) -> u64 {
        self.call.grant().cost.output_tokens
    }

    /// Keeps what the answer's rate-limit headers said, for the settle.
    pub fn hear(&mut self, heard: Heard) {
        self.heard = heard;
    }

    /// `usage` is (input, output) tokens from the final `usageMetadata`.
    pub fn finish(self, outcome: Outcome, usage: Option<(u64, u64)>) {
        // Without usage the booking keeps its estimate and its reservation,
        // and so does the ledger (a restart restores what the lane holds).
        let (input, output) = usage.unwrap_or((self.estimate, self.reserved()));
        self.close(outcome, None, (input, output));
        let spent = Spent {
            input_tokens: input,
            // Unknown without usage: the reservation stands.
            output_tokens: usage.map(|(_, output)| output),
            heard: self.heard,
        };
        if outcome == Outcome::Ok {
            self.call.settle(spent);
        } else {
            self.call.keep(spent);
        }
    }

    /// The call failed in a way the scheduler learns from.
    fn fail(self, error: &UpstreamError) {
        let booked = (self.estimate, self.reserved());
        self.close(outcome_of(error), error.first_quota(), booked);
        if let Some(penalty) = error.penalty() {
            self.call.penalise(penalty);
        }
    }

    /// The ledger row and the metrics of the call's end.
    fn close(
        &self,
        outcome: Outcome,
        quota: Option<crate::policy::Quota>,
        (input, output): (u64, u64),
    ) {
        let state = &self.state;
        state.ledger.record(Record::CallSettled {
            id: self.call_id,
            outcome,
            input_tokens: input,
            output_tokens: output,
            latency_ms: state
                .scheduler
                .clock()
                .now()
                .since(self.sent_at)
                .as_millis() as u64,
        });
        let grant = self.call.grant();
        let served = (outcome == Outcome::Ok).then_some((input, output));
        let label = crate::metrics::outcome_label(outcome, quota);
        state.metrics.upstream_call(
            grant.key,
            &state.keys[grant.key].fingerprint(),
            &grant.model,
            label,
            served,
        );
    }
}

/// Why a job was not served. Each surface writes it in its own envelope
/// (`error::GeminiError`, `openai::OpenAiError`, `flux::FluxError`).
pub enum Failure {
    /// Gemini refused the request itself; its envelope goes back to the client.
    Client {
        status: u16,
        body: Value,
    },
    Flux(ApiError),
    /// The scheduler would not plan it: why, for the surface to answer
    /// (`error::plan_refusal` is the one table of statuses).
    Plan(Refused),
}

/// A plan the scheduler refused: its reason, when, and what earlier
/// attempts met.
pub struct Refused {
    pub error: PlanError,
    /// When it was refused: a `Retry-After` counts from here.
    pub at: Timestamp,
    /// Why each earlier attempt was not served, oldest first.
    pub tried: Vec<String>,
    /// The job's items: more than 1 for a batch of embeddings.
    pub items: u64,
    /// Background work, which waits for nothing but "now".
    pub background: bool,
}

impl Refused {
    /// What the refusal says to the client: the scheduler's reason and the
    /// attempts before it.
    pub fn message(&self) -> String {
        if let PlanError::WaitTooLong { model, at } = &self.error
            && self.background
        {
            // Background work has no wait ceiling, only "now": say so.
            return format!(
                "no slot on {model} is free now for batch work (each window keeps the interactive reserve); the next at {at}"
            );
        }
        let mut message = self.error.to_string();
        if !self.tried.is_empty() {
            message.push_str(&format!(" (after: {})", self.tried.join("; ")));
        }
        message
    }
}

impl Failure {
    /// Gemini refused the request itself: its envelope goes back, or, when
    /// its answer was not Gemini's JSON (an HTML page from a proxy, a body
    /// limit's plain text), one made in its place with the upstream's status
    /// and a short excerpt.
    pub fn refused_upstream(state: &AppState, status: u16, message: &str, body: Value) -> Failure {
        if body["error"].is_object() {
            return Failure::Client {
                status,
                body: state.scrub_value(body),
            };
        }
        let mut excerpt = one_line(&state.scrub(message));
        if let Some((cut, _)) = excerpt.char_indices().nth(200) {
            excerpt.truncate(cut);
            excerpt.push('…');
        }
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        let message = format!(
            "the upstream answered {status} with a body that is not Gemini's JSON: {:?}",
            excerpt
        );
        Failure::Client {
            status,
            body: crate::wire::envelope(status, super::error::status_name(code), &message, vec![]),
        }
    }

    /// A batch (more than one item) that one call can never hold: `Some` of
    /// how many items one window of any lane admits, or `Some(None)` when
    /// its tokens were what did not fit. The surface splits it, or answers
    /// the refusal (413).
    pub fn batch_too_large(&self) -> Option<Option<u64>> {
        match self {
            Failure::Plan(Refused {
                error: PlanError::TooManyItems { most, .. },
                ..
            }) => Some(Some(*most)),
            Failure::Plan(Refused {
                error: PlanError::TooLarge { .. },
                items,
                ..
            }) if *items > 1 => Some(None),
            _ => None,
        }
    }

    /// The refusal as a status, a message and, when it may be asked again,
    /// its `Retry-After` (no slot now, the day spent, no usable key, a store
    /// not taking writes, a stopping service): what every surface's
    /// envelope is written from. Background work puts its item back and
    /// comes back then.
    pub fn error(&self) -> ApiError {
        match self {
            Failure::Flux(e) => e.clone(),
            Failure::Plan(refused) => super::error::plan_refusal(refused),
            Failure::Client { status, body } => ApiError::new(
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST),
                body["error"]["message"]
                    .as_str()
                    .unwrap_or("the request was refused"),
            ),
        }
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Flux(e)
    }
}

/// At most this many upstream calls per request, whatever happens.
const MAX_ATTEMPTS: u32 = 8;

/// Serves `job` with one complete answer, within `FLUX_REQUEST_TIMEOUT_S`.
pub async fn generate(state: &AppState, job: Job) -> Result<Served<Generated>, Failure> {
    within_request_timeout(state, serve::<Complete>(state, job)).await
}

/// Serves `job` as a stream, within `FLUX_REQUEST_TIMEOUT_S` (until the
/// upstream accepts it; the relay then settles it when it ends).
pub async fn stream(state: &AppState, job: Job) -> Result<Served<Stream>, Failure> {
    within_request_timeout(state, serve::<Streamed>(state, job)).await
}

/// Background work's first step (a batch item): the job pinned to the key
/// that owns the files it names, and its input tokens, counted there unless
/// `counted` has them already (an item put back keeps its count). Then
/// [`book_now`], as often as it takes.
pub async fn prepare(
    state: &AppState,
    job: &mut Job,
    counted: Option<u64>,
) -> Result<u64, Failure> {
    let file_owner = pin_to_file_owner(state, job).await?;
    Ok(match counted {
        Some(tokens) => tokens,
        None => Complete::estimate(state, &job.request, file_owner).await,
    })
}

/// A grant for now for background work, or the refusal, whose
/// [`Failure::error`]'s `retry_after` says when to ask again. Apart from [`send_booked`]
/// so that the caller knows the plan's answer before it turns to its next
/// item.
pub async fn book_now(state: &AppState, job: &Job, estimate: u64) -> Result<Booked, Failure> {
    let now = state.scheduler.clock().now();
    plan(state, job, estimate, now, &[]).await
}

/// Sends what [`book_now`] booked, and plans again (by the job's priority)
/// after what the upstream teaches, like [`generate`], within
/// `FLUX_REQUEST_TIMEOUT_S`.
pub async fn send_booked(
    state: &AppState,
    job: Job,
    booked: Booked,
    estimate: u64,
) -> Result<Served<Generated>, Failure> {
    let now = state.scheduler.clock().now();
    let deadline = now.plus(job.max_wait.min(slot_horizon(state)));
    let sending = attempts::<Complete>(state, &job, estimate, deadline, booked);
    within_request_timeout(state, sending).await
}

/// Serves `job` (an OpenAI-format chat body) on the upstream's
/// OpenAI-compatible layer: its answer, as it came.
pub async fn openai_chat(state: &AppState, job: Job<Value>) -> Result<Served<Value>, Failure> {
    within_request_timeout(state, serve::<OpenAiChat>(state, job)).await
}

/// The same for a streamed chat (`"stream": true`): the relay settles it
/// from the stream's last `usage`.
pub async fn openai_chat_stream(
    state: &AppState,
    job: Job<Value>,
) -> Result<Served<Stream>, Failure> {
    within_request_timeout(state, serve::<OpenAiChatStream>(state, job)).await
}

/// Serves `job` (a native `embedContent` or `batchEmbedContents` body, or
/// an OpenAI-format embeddings body; one request an item) with the
/// upstream's answer as it came.
pub async fn embed(state: &AppState, job: Job<Value>) -> Result<Served<Value>, Failure> {
    within_request_timeout(state, serve::<Embed>(state, job)).await
}

/// Serves a call to another provider with its JSON answer, settled from
/// the usage the answer reports and what its rate-limit headers say.
pub async fn provider_json(
    state: &AppState,
    job: Job<ProviderCall>,
) -> Result<Served<Value>, Failure> {
    within_request_timeout(state, serve::<ProviderJson>(state, job)).await
}

/// Serves a call to another provider with its event stream, settled by the
/// relay from the stream's usage.
pub async fn provider_stream(
    state: &AppState,
    job: Job<ProviderCall>,
) -> Result<Served<Stream>, Failure> {
    within_request_timeout(state, serve::<ProviderStream>(state, job)).await
}

/// `FLUX_REQUEST_TIMEOUT_S` over a whole request, or 504. Whatever was under
/// way is dropped: a grant not yet sent is released, a call already sent
/// stays counted. A combinator, not an `async fn`: an `async fn` would keep
/// its argument's slot beside the timeout that the argument moves into, so
/// every waiting request would carry its whole future twice.
fn within_request_timeout<R>(
    state: &AppState,
    serving: impl Future<Output = Result<Served<R>, Failure>>,
) -> impl Future<Output = Result<Served<R>, Failure>> {
    use futures::FutureExt;
    let limit = state.request_timeout;
    tokio::time::timeout(limit, serving).map(move |served| {
        served.unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the request was not served within FLUX_REQUEST_TIMEOUT_S ({} s)",
                    limit.as_secs()
                ),
            )
            .into())
        })
    })
}

/// What dispatch reads of a job's request, whatever its format.
pub trait JobRequest {
    /// The `fileData.fileUri`s it names: a call reading an uploaded file
    /// must go to the key that owns it.
    fn file_uris(&self) -> &[String];
    /// The most output tokens the call may spend: what it reserves of an
    /// output-token quota until its answer says what it spent.
    fn most_output_tokens(&self) -> u64;
    /// The other provider it goes to; `None`: Gemini.
    fn provider(&self) -> Option<&ProviderApi> {
        None
    }
}

impl JobRequest for GenerateRequest {
    fn file_uris(&self) -> &[String] {
        GenerateRequest::file_uris(self)
    }
    fn most_output_tokens(&self) -> u64 {
        GenerateRequest::most_output_tokens(self)
    }
}

/// A call to another provider: the client's body, sent as it came (with
/// the provider's own model name) to `path` under the provider's base URL.
pub struct ProviderCall {
    pub api: ProviderApi,
    /// `chat/completions`, `embeddings` (OpenAI-compatible), `v1/messages`.
    pub path: &'static str,
    pub body: Value,
    /// The client's `anthropic-version`, passed on.
    pub anthropic_version: Option<String>,
    /// Estimated locally: no provider counts tokens for free.
    pub estimate: u64,
    /// What the call reserves of an output-token quota.
    pub most_output: u64,
    /// Reads (input, output) tokens from a whole answer.
    pub usage: fn(&Value) -> Option<(u64, u64)>,
    /// The service's clock: when an answer's limits reset.
    pub clock: Clock,
}

impl ProviderCall {
    /// Sends the call on `key`: the accepted answer (its body unread) and
    /// what its rate-limit headers say.
    async fn send(
        &self,
        key: &ApiKey,
        model: &str,
    ) -> Result<(reqwest::Response, Heard), UpstreamError> {
        let model = super::providers::own_name(model);
        let version = self.anthropic_version.as_deref();
        let answer = self
            .api
            .post(key, self.path, model, &self.body, version, self.clock)
            .await
            .map_err(|failure| failure.error)?;
        // When the answer came: its headers' relative resets count from then.
        let now = self.clock.now();
        let heard = super::providers::heard(self.api.kind(), &answer.readings, now);
        Ok((answer.response, heard))
    }
}

impl JobRequest for ProviderCall {
    fn file_uris(&self) -> &[String] {
        &[]
    }
    fn most_output_tokens(&self) -> u64 {
        self.most_output
    }
    fn provider(&self) -> Option<&ProviderApi> {
        Some(&self.api)
    }
}

/// An OpenAI chat or an embedding names no uploaded file.
impl JobRequest for Value {
    fn file_uris(&self) -> &[String] {
        &[]
    }
    /// A chat's `max_completion_tokens`, else `max_tokens`; an embedding none.
    fn most_output_tokens(&self) -> u64 {
        crate::wire::openai_usage::output_reservation(self).unwrap_or(0)
    }
}

/// One kind of upstream call: its request, what the request's input tokens
/// are estimated at, how it is made, and what a served one hands back to
/// the surface (with the input tokens it counted).
trait Exchange {
    type Request: JobRequest;
    type Answer;
    type Reply;
    /// On `key` when the request is pinned to one.
    async fn estimate(state: &AppState, request: &Self::Request, key: Option<KeyIndex>) -> u64;
    async fn call(
        upstream: &Upstream,
        key: &ApiKey,
        model: &str,
        request: &Self::Request,
    ) -> Result<Self::Answer, UpstreamError>;
    fn served(answer: Self::Answer, settlement: Settlement) -> (Self::Reply, u64);
}

/// `generateContent`: settled as soon as it answers.
struct Complete;

impl Exchange for Complete {
    type Request = GenerateRequest;
    type Answer = Generated;
    type Reply = Generated;
    async fn estimate(state: &AppState, request: &GenerateRequest, key: Option<KeyIndex>) -> u64 {
        count_tokens(state, request, key).await
    }
    async fn call(
        upstream: &Upstream,
        key: &ApiKey,
        model: &str,
        request: &GenerateRequest,
    ) -> Result<Generated, UpstreamError> {
        upstream.generate(key, model, request).await
    }
    fn served(generated: Generated, settlement: Settlement) -> (Generated, u64) {
        let input = generated.input_tokens.unwrap_or(settlement.estimate);
        settlement.finish(Outcome::Ok, Some((input, generated.output_tokens)));
        (generated, input)
    }
}

/// `streamGenerateContent`: settled by the relay when the stream ends.
struct Streamed;

impl Exchange for Streamed {
    type Request = GenerateRequest;
    type Answer = reqwest::Response;
    type Reply = Stream;
    async fn estimate(state: &AppState, request: &GenerateRequest, key: Option<KeyIndex>) -> u64 {
        Complete::estimate(state, request, key).await
    }
    async fn call(
        upstream: &Upstream,
        key: &ApiKey,
        model: &str,
        request: &GenerateRequest,
    ) -> Result<reqwest::Response, UpstreamError> {
        upstream.stream_generate(key, model, request).await
    }
    fn served(response: reqwest::Response, settlement: Settlement) -> (Stream, u64) {
        let estimate = settlement.estimate;
        let stream = Stream {
            response,
            settlement,
        };
        (stream, estimate)
    }
}

/// A JSON answer that reports its `usage` (input, output), or not: settled
/// with it, else with the estimate.
fn settled(body: Value, usage: Option<(u64, u64)>, settlement: Settlement) -> (Value, u64) {
    let (input, output) = usage.unwrap_or((settlement.estimate, 0));
    settlement.finish(Outcome::Ok, Some((input, output)));
    (body, input)
}

/// The OpenAI-compatible layer's `chat/completions`, estimated over the
/// messages' text and images, settled from the answer's `usage`.
struct OpenAiChat;

impl Exchange for OpenAiChat {
    type Request = Value;
    type Answer = Value;
    type Reply = Value;
    async fn estimate(state: &AppState, request: &Value, key: Option<KeyIndex>) -> u64 {
        let prompt = openai::ChatPrompt::of(request);
        let countable = GenerateRequest::from_value(&prompt.countable);
        count_tokens(state, &countable, key).await + prompt.remote_tokens()
    }
    async fn call(
        upstream: &Upstream,
        key: &ApiKey,
        model: &str,
        request: &Value,
    ) -> Result<Value, UpstreamError> {
        upstream
            .openai_json(key, "chat/completions", model, request)
            .await
    }
    fn served(body: Value, settlement: Settlement) -> (Value, u64) {
        let usage = openai::usage(&body);
        settled(body, usage, settlement)
    }
}

/// The same, streamed: settled by the relay from the last chunk's `usage`.
struct OpenAiChatStream;

impl Exchange for OpenAiChatStream {
    type Request = Value;
    type Answer = reqwest::Response;
    type Reply = Stream;
    async fn estimate(state: &AppState, request: &Value, key: Option<KeyIndex>) -> u64 {
        OpenAiChat::estimate(state, request, key).await
    }
    async fn call(
        upstream: &Upstream,
        key: &ApiKey,
        model: &str,
        request: &Value,
    ) -> Result<reqwest::Response, UpstreamError> {
        upstream
            .openai(key, "chat/completions", model, request)
            .await
    }
    fn served(response: reqwest::Response, settlement: Settlement) -> (Stream, u64) {
        Streamed::served(response, settlement)
    }
}

/// Another provider's JSON answer: settled from its usage, its headers heard.
struct ProviderJson;

impl Exchange for ProviderJson {
    type Request = ProviderCall;
    type Answer = (Value, Option<(u64, u64)>, Heard);
    type Reply = Value;
    async fn estimate(_: &AppState, request: &ProviderCall, _: Option<KeyIndex>) -> u64 {
        request.estimate
    }
    async fn call(
        _: &Upstream,
        key: &ApiKey,
        model: &str,
        request: &ProviderCall,
    ) -> Result<Self::Answer, UpstreamError> {
        let (response, heard) = request.send(key, model).await?;
        let body = crate::upstream::read_json(response).await?;
        let usage = (request.usage)(&body);
        Ok((body, usage, heard))
    }
    fn served((body, usage, heard): Self::Answer, mut settlement: Settlement) -> (Value, u64) {
        settlement.hear(heard);
        settled(body, usage, settlement)
    }
}

/// Another provider's event stream: its headers heard now, settled by the
/// relay when the stream ends.
struct ProviderStream;

impl Exchange for ProviderStream {
    type Request = ProviderCall;
    type Answer = (reqwest::Response, Heard);
    type Reply = Stream;
    async fn estimate(_: &AppState, request: &ProviderCall, _: Option<KeyIndex>) -> u64 {
        request.estimate
    }
    async fn call(
        _: &Upstream,
        key: &ApiKey,
        model: &str,
        request: &ProviderCall,
    ) -> Result<Self::Answer, UpstreamError> {
        request.send(key, model).await
    }
    fn served((response, heard): Self::Answer, mut settlement: Settlement) -> (Stream, u64) {
        settlement.hear(heard);
        Streamed::served(response, settlement)
    }
}

/// The input tokens of a batch of embeddings: each item's text (a native
/// request's `content`, each of its `requests`' contents, or each OpenAI
/// `input` text), counted locally (the upstream's answer states none).
fn embedding_tokens(request: &Value) -> u64 {
    if let Some(items) = request["requests"].as_array() {
        items
            .iter()
            .map(|i| openai::item_tokens(&i["content"]))
            .sum()
    } else if let Some(texts) = openai::embedding_inputs(&request["input"]) {
        texts
            .iter()
            .map(|t| openai::item_tokens(&Value::from(*t)))
            .sum()
    } else {
        openai::item_tokens(&request["content"])
    }
}

/// Embeddings: native `:embedContent` / `:batchEmbedContents`, or the
/// OpenAI-compatible layer's `embeddings` (a body with `input`). Settled
/// with the `usage` the OpenAI layer states, else with the estimate (the
/// native answer states none, and the estimate is the count).
struct Embed;

impl Exchange for Embed {
    type Request = Value;
    type Answer = Value;
    type Reply = Value;
    async fn estimate(_: &AppState, request: &Value, _: Option<KeyIndex>) -> u64 {
        embedding_tokens(request)
    }
    async fn call(
        upstream: &Upstream,
        key: &ApiKey,
        model: &str,
        request: &Value,
    ) -> Result<Value, UpstreamError> {
        if request.get("input").is_some() {
            upstream
                .openai_json(key, "embeddings", model, request)
                .await
        } else {
            upstream.embed(key, model, request).await
        }
    }
    fn served(body: Value, settlement: Settlement) -> (Value, u64) {
        let usage = openai::usage(&body).filter(|&(input, _)| input > 0);
        settled(body, usage, settlement)
    }
}

/// How one attempt ended.
enum Attempt<R> {
    /// The upstream served it: the reply and the input tokens it counted.
    Served(R, u64),
    /// Learned from and worth another plan; the reason, for the final answer.
    Retry { reason: String, transient: bool },
    /// The client's own answer, or the service cannot go on.
    Fail(Failure),
}

/// Pins, counts and plans, then [`attempts`].
///
/// A request may wait hours for its slot, and ten thousand may wait at
/// once, each holding this future. A future is as large as its largest
/// state, so the steps that call the upstream (the count here, each
/// attempt in [`attempts`]) are boxed: they take their space only while
/// they run, and the waiting state stays small (see the test below).
async fn serve<E: Exchange>(
    state: &AppState,
    mut job: Job<E::Request>,
) -> Result<Served<E::Reply>, Failure> {
    let clock = state.scheduler.clock();
    let deadline = clock.now().plus(job.max_wait.min(slot_horizon(state)));
    let file_owner = Box::pin(pin_to_file_owner(state, &mut job)).await?;
    let estimate = Box::pin(E::estimate(state, &job.request, file_owner)).await;
    let booked = plan(state, &job, estimate, deadline, &[]).await?;
    attempts::<E>(state, &job, estimate, deadline, booked).await
}

/// Waits for the booked slot and makes one attempt, then plans again after
/// what the upstream teaches, until served, failed, or out of attempts.
async fn attempts<E: Exchange>(
    state: &AppState,
    job: &Job<E::Request>,
    estimate: u64,
    deadline: Timestamp,
    mut booked: Booked,
) -> Result<Served<E::Reply>, Failure> {
    let clock = state.scheduler.clock();
    let mut waited = Duration::ZERO;
    let mut tried: Vec<String> = Vec::new();

    for attempt in 1..=MAX_ATTEMPTS {
        let before = clock.now();
        wait_for_slot(state, &booked).await?;
        let wait = clock.now().since(before);
        state.metrics.waited(wait);
        waited += wait;
        let grant = booked.grant().clone();
        // Boxed: see [`serve`].
        match Box::pin(one_attempt::<E>(state, job, booked, estimate)).await {
            Attempt::Served(reply, input_tokens) => {
                let meta = Meta {
                    key: grant.key,
                    fingerprint: state.keys[grant.key].fingerprint(),
                    model: grant.model,
                    input_tokens,
                    waited,
                    attempts: attempt,
                    retried: attempt > 1,
                };
                return Ok(Served { reply, meta });
            }
            Attempt::Fail(failure) => return Err(failure),
            Attempt::Retry { reason, transient } => {
                tried.push(reason);
                if !job.retry || attempt == MAX_ATTEMPTS {
                    break;
                }
                if transient {
                    // Jittered so that a burst of failures does not return in lockstep.
                    let backoff = rand::rng().random_range(50..250) * u64::from(attempt);
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
                booked = plan(state, job, estimate, deadline, &tried).await?;
            }
        }
    }
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!(
            "Gemini did not serve the request after {} attempt(s): {}",
            tried.len(),
            tried.join("; ")
        ),
    )
    .into())
}

/// How far past a request's arrival a slot is still worth booking: a call
/// sent later could not finish before `FLUX_REQUEST_TIMEOUT_S` cuts it,
/// and would spend quota for nothing. So every slot leaves the call
/// `FLUX_UPSTREAM_TIMEOUT_S`, or half the request timeout if that is less.
fn slot_horizon(state: &AppState) -> Duration {
    let margin = state.upstream.timeout().min(state.request_timeout / 2);
    state.request_timeout.saturating_sub(margin)
}

/// A request that names uploaded files is served by the key whose project
/// owns them, and by no other (its tokens are counted there too): `Some`
/// of that key. A file the service does not know pins nothing.
async fn pin_to_file_owner<R: JobRequest>(
    state: &AppState,
    job: &mut Job<R>,
) -> Result<Option<KeyIndex>, Failure> {
    let owner = super::files::pinned_key(state, job.request.file_uris()).await?;
    if let Some(key) = owner {
        job.keys = KeyChoice::Only(key);
    }
    Ok(owner)
}

/// Books a grant for the job, or says why not.
async fn plan<R: JobRequest>(
    state: &AppState,
    job: &Job<R>,
    estimate: u64,
    deadline: Timestamp,
    tried: &[String],
) -> Result<Booked, Failure> {
    if state.ledger.full() {
        return Err(ledger_full(state));
    }
    let clock = state.scheduler.clock();
    let request = PlanRequest {
        cost: Usage {
            requests: job.requests,
            input_tokens: estimate,
            output_tokens: job.request.most_output_tokens(),
        },
        target: job.target.clone(),
        keys: job.keys,
        priority: job.priority,
        deadline: deadline.max(clock.now()),
    };
    let planned = state
        .scheduler
        .plan(request)
        .await
        .map_err(|_| stopping())?;
    let at = clock.now();
    planned.map_err(|error| {
        Failure::Plan(Refused {
            error,
            at,
            tried: tried.to_vec(),
            items: job.requests,
            background: job.priority == Priority::Background,
        })
    })
}

/// Sends the booked call (its "sent" record first, so a crash still counts
/// it) and settles what it becomes.
async fn one_attempt<E: Exchange>(
    state: &AppState,
    job: &Job<E::Request>,
    booked: Booked,
    estimate: u64,
) -> Attempt<E::Reply> {
    let grant = booked.grant().clone();
    let call = booked.send();
    let key = &state.keys[grant.key];
    let call_id: CallId = state.ledger.next_call_id();
    let sent_at = state.scheduler.clock().now();
    state
        .ledger
        .record_sent(Record::CallSent {
            id: call_id,
            at: sent_at,
            day: state.key_zones[grant.key].day_of(sent_at),
            key_id: state.key_ids[grant.key].clone(),
            key_index: grant.key,
            fingerprint: key.fingerprint(),
            model: grant.model.clone(),
            input_tokens: estimate,
            requests: grant.cost.requests,
            output_tokens: grant.cost.output_tokens,
        })
        .await;
    let settlement = Settlement {
        call,
        state: state.clone(),
        call_id,
        sent_at,
        estimate,
        heard: Heard::default(),
    };
    let error = match E::call(&state.upstream, key, &grant.model, &job.request).await {
        Ok(answer) => {
            let (reply, input_tokens) = E::served(answer, settlement);
            return Attempt::Served(reply, input_tokens);
        }
        Err(error) => error,
    };
    let error = match judge(state, job, &grant, error).await {
        Ok(to_learn) => to_learn,
        Err(clients) => {
            settlement.finish(Outcome::ClientError, None);
            let (status, message, body) = clients
                .into_client()
                .expect("a failure that is the client's carries Gemini's answer");
            return Attempt::Fail(Failure::refused_upstream(state, status, &message, body));
        }
    };
    tracing::warn!(
        key = %grant.key,
        fingerprint = %key.fingerprint(),
        model = %grant.model,
        "upstream: {}",
        one_line(&state.scrub(&error.to_string()))
    );
    let reason = format!("key {} on {}: {}", grant.key, grant.model, error.summary());
    settlement.fail(&error);
    Attempt::Retry {
        reason,
        transient: matches!(error, UpstreamError::Transient { .. }),
    }
}

/// Waits for the grant's instant, unless the service starts stopping and the
/// instant lies beyond the drain window: then 503 at once (dropping the guard
/// releases the grant).
async fn wait_for_slot(state: &AppState, booked: &Booked) -> Result<(), Failure> {
    let clock = state.scheduler.clock();
    let at = booked.grant().at;
    let refuse = || {
        let now = clock.now();
        (state.drain.active() && at > now.plus(state.drain.window)).then(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is stopping and this request's slot is beyond its drain window",
            )
            .retry_after(at.since(now))
        })
    };
    if let Some(e) = refuse() {
        return Err(e.into());
    }
    tokio::select! {
        _ = booked.wait() => return Ok(()),
        _ = state.drain.started() => {}
    }
    if let Some(e) = refuse() {
        return Err(e.into());
    }
    booked.wait().await;
    Ok(())
}

/// Whose a failed call is. `Err`: the client's, its answer goes back as
/// Gemini gave it, touching no key and no chain: its own mistake; a retired
/// model it named itself, or a 404 that names another model than the one
/// called; a refusal naming the key that one free call on the same key does
/// not bear out (so the refusal was about this request). `Ok`: the error the
/// scheduler learns from; a refusal naming the key that the free call could
/// neither confirm nor clear (it failed for its own reasons) becomes a
/// transient failure, so the request goes elsewhere and no key is taken out
/// on one answer alone.
async fn judge<R: JobRequest>(
    state: &AppState,
    job: &Job<R>,
    grant: &Grant,
    error: UpstreamError,
) -> Result<UpstreamError, UpstreamError> {
    match &error {
        UpstreamError::Client { .. } => Err(error),
        UpstreamError::ModelRetired { message, .. } => {
            let named_by_client = matches!(
                job.target,
                Target::Model(_) | Target::ChainFrom(_) | Target::Embedding(_)
            );
            let about_this_model = message.contains(&format!("models/{}", grant.model));
            if named_by_client || !about_this_model {
                Err(error)
            } else {
                Ok(error)
            }
        }
        e if e.is_about_the_key() => {
            let key = &state.keys[grant.key];
            let check = match job.request.provider() {
                Some(api) => api.check_key(key).await,
                None => state.upstream.check_key(key, &state.count_model()).await,
            };
            match check {
                Err(refused) if refused.is_about_the_key() => Ok(error),
                Ok(()) => {
                    tracing::info!(
                        key = %grant.key,
                        "a refusal named the key, but the key answers a free call: the request's own"
                    );
                    Err(error)
                }
                Err(other) => Ok(UpstreamError::Transient {
                    status: None,
                    message: format!(
                        "{}; a free check of the key could not tell ({})",
                        error.summary(),
                        other.summary()
                    ),
                }),
            }
        }
        _ => Ok(error),
    }
}

fn outcome_of(error: &UpstreamError) -> Outcome {
    match error {
        UpstreamError::Quota { .. } => Outcome::Quota,
        UpstreamError::Transient { .. } => Outcome::Transient,
        UpstreamError::Unreached { .. } => Outcome::Unreached,
        UpstreamError::KeyInvalid { .. } => Outcome::KeyInvalid,
        UpstreamError::KeyBlocked { .. } => Outcome::KeyBlocked,
        UpstreamError::Client { .. } | UpstreamError::ModelRetired { .. } => Outcome::ClientError,
    }
}

/// The state store has refused too many records: a call made now might be
/// forgotten by a restart and overspend a quota, so none is booked.
fn ledger_full(state: &AppState) -> Failure {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the state store is not taking writes ({}); no call is booked until it does, so that none goes uncounted",
            state.ledger.problem().unwrap_or_default()
        ),
    )
    .retry_after(crate::store::RETRY_EVERY)
    .into()
}

/// A multi-line upstream message on one log line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn stopping() -> Failure {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the service is shutting down",
    )
    .retry_after(Duration::from_secs(1))
    .into()
}

/// Counts the request's input tokens with `countTokens` (free of generate
/// quota) on `key`, else spreading the calls over the usable keys; falls
/// back on the local estimate when that fails.
async fn count_tokens(state: &AppState, request: &GenerateRequest, key: Option<KeyIndex>) -> u64 {
    if state.token_count == TokenCount::Local {
        return request.local_tokens();
    }
    if let Some(key) = key.or_else(|| state.next_usable_key()) {
        match state
            .upstream
            .count_tokens(&state.keys[key], &state.count_model(), request)
            .await
        {
            Ok(n) => return n,
            Err(e) => tracing::warn!(
                key = %key,
                "countTokens failed, using the local estimate: {}",
                state.scrub(&e.to_string())
            ),
        }
    }
    request.local_tokens()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, found without making one.
    fn future_size<A, B, F: Future>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Ten thousand requests may wait for their slots at once, each in one
    /// of these futures, which is as large as its largest state: it must
    /// not carry the space of an upstream call (several KiB) while it
    /// waits. With each attempt unboxed, a generate call's took 7 KiB; with
    /// the request timeout an `async fn`, 3.5 KiB. Now: 2 to 2.4 KiB.
    #[test]
    fn a_request_waits_in_a_small_future() {
        async fn generate_owned(state: AppState, job: Job) {
            let _ = generate(&state, job).await;
        }
        async fn stream_owned(state: AppState, job: Job) {
            let _ = stream(&state, job).await;
        }
        async fn chat_owned(state: AppState, job: Job<Value>) {
            let _ = openai_chat(&state, job).await;
        }
        async fn provider_owned(state: AppState, job: Job<ProviderCall>) {
            let _ = provider_json(&state, job).await;
        }
        let sizes = [
            ("generate", future_size(generate_owned)),
            ("stream", future_size(stream_owned)),
            ("openai_chat", future_size(chat_owned)),
            ("provider_json", future_size(provider_owned)),
        ];
        for (what, size) in sizes {
            assert!(size <= 3 * 1024, "{what}'s future takes {size} bytes");
        }
    }
}
