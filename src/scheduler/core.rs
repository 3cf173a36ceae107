//! The scheduler core: every key, model and booking, and the rules that turn a
//! request into a grant (which lane, at what instant).
//!
//! Pure and synchronous: no I/O, no clock, no locks. Every method takes `now`
//! as an argument, so tests drive it through exact scenarios and benchmarks
//! through a simulated day in milliseconds. The actor (`super::actor`) is its
//! only owner in the running service.

use super::lane::{GrantId, LEARNED_TTL, Lane, LaneUsage};
use crate::clock::{Day, DayZone, Timestamp};
pub use crate::keys::{KeyIndex, KeyState};
use crate::policy::{
    Layers, Limits, LimitsOverride, Mode, Quota, Reserve, Resolved, Source, Usage, Window,
};
use chrono::NaiveDate;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Backoff base after a 429 that carries no details.
const BARE_429_BACKOFF: Duration = Duration::from_secs(5);
/// Backoff base after a transient failure (500, 503, 504, a reset).
const TRANSIENT_BACKOFF: Duration = Duration::from_secs(1);

/// Which models a request may use.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// The chain, filtered by this mode (the service's mode when `None`).
    Chain(Option<Mode>),
    /// Exactly this model of the chain.
    Model(String),
    /// An embedding model: never in the chain, planned on its own lanes
    /// (only the embedding surfaces name one).
    Embedding(String),
    /// This model first, then the models after it in the chain that the
    /// service's mode allows (a client that opted into fallback).
    ChainFrom(String),
    /// A model of a provider other than Gemini (`provider/model`), planned
    /// on that provider's keys; only the other providers' surfaces name one,
    /// so a Gemini route can never book (and send) another provider's key.
    Provider(String),
}

/// Which keys a request may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyChoice {
    Any,
    /// This key when it can serve by the deadline, else any.
    Prefer(KeyIndex),
    /// This key alone (a file its project owns), on any model the target allows.
    Only(KeyIndex),
}

/// Whose call it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Priority {
    /// A caller is waiting: book the earliest slot, even a later one.
    #[default]
    Interactive,
    /// Background work (a batch item): booked only for now, never a later
    /// slot, and only within each window less the interactive reserve.
    Background,
}

#[derive(Clone, Debug)]
pub struct PlanRequest {
    /// What the call will spend: one request (or one per item of a batch of
    /// embeddings) and its input tokens.
    pub cost: Usage,
    pub target: Target,
    pub keys: KeyChoice,
    pub priority: Priority,
    /// The latest instant the caller accepts; later means "429, retry after".
    pub deadline: Timestamp,
}

/// A booked instant on a lane.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    pub id: GrantId,
    pub key: KeyIndex,
    pub model: String,
    pub at: Timestamp,
    /// What it booked: requests, the input tokens estimated and the output
    /// tokens reserved.
    pub cost: Usage,
    /// The call re-checks a model learned to have no quota (limit 0) on
    /// this key's tier: its success clears that.
    pub probe: bool,
}

/// What a call spent, as its answer reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spent {
    pub input_tokens: u64,
    /// `None` when the answer did not say: the reservation stands.
    pub output_tokens: Option<u64>,
    /// What the answer's rate-limit headers said of its lane.
    pub heard: Heard,
}

/// What an answer's rate-limit headers say of its lane (other providers
/// send them on every answer): limits, and a limit with nothing left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heard {
    /// The limits the provider states. Only those below the limits in force
    /// are learned, so an answer that repeats them changes nothing.
    pub limits: LimitsOverride,
    /// A limit with nothing remaining until this instant: the lane waits.
    pub hold_until: Option<Timestamp>,
    /// When the answer came.
    pub at: Timestamp,
}

impl Spent {
    /// Input tokens alone (Gemini's answers; output is not a quota there).
    pub const fn input(input_tokens: u64) -> Spent {
        Spent {
            input_tokens,
            output_tokens: None,
            heard: Heard {
                limits: LimitsOverride {
                    rpm: None,
                    tpm: None,
                    rpd: None,
                    tpd: None,
                    otpm: None,
                },
                hold_until: None,
                at: Timestamp(0),
            },
        }
    }

    /// What a booking of `booked` counts once this is known.
    fn applied_to(self, booked: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens.unwrap_or(booked.output_tokens),
            ..booked
        }
    }
}

/// A provider the keys belong to, and the zone its per-day quotas reset in.
/// The first is Gemini's: its models are the chain and the embedding
/// models. Every other provider's models are named `provider/model`.
#[derive(Clone, Debug, PartialEq)]
pub struct Provider {
    pub name: String,
    pub zone: DayZone,
}

impl Provider {
    pub fn gemini() -> Provider {
        Provider {
            name: "gemini".into(),
            zone: DayZone::PACIFIC,
        }
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("the request has {tokens} input tokens, more than any allowed model accepts in one call ({})", describe_tpms(.largest))]
    TooLarge {
        tokens: u64,
        largest: Vec<(String, u64)>,
    },
    /// More output tokens reserved (`max_tokens`) than any allowed model's
    /// output-token quota holds in a minute.
    #[error("the request may spend {tokens} output tokens (its max_tokens), more than any allowed model's output tokens per minute ({}): ask for fewer", describe_tpms(.largest))]
    TooMuchOutput {
        tokens: u64,
        largest: Vec<(String, u64)>,
    },
    /// A batch of more items than one window of any allowed lane admits, or
    /// than what is left of the day: the caller splits it into runs of `most`.
    #[error(
        "the batch has {requests} items, more than {model} takes at once now ({most}): split it"
    )]
    TooManyItems {
        requests: u64,
        model: String,
        most: u64,
    },
    #[error("the earliest slot is on {model} at {at}, beyond the request's wait ceiling")]
    WaitTooLong { model: String, at: Timestamp },
    #[error("every allowed model's daily quota is spent, or has none on any usable key, until {0}")]
    ExhaustedUntil(Timestamp),
    #[error("no key is usable")]
    NoUsableKey,
    /// The request can go to one key alone (it names a file that key's
    /// project owns), and that key is out.
    #[error(
        "key {0} is the only key the request can use (it owns a file the request names), and it is {1}"
    )]
    KeyOut(KeyIndex, KeyState),
    #[error("model {0:?} is not in the chain")]
    UnknownModel(String),
    #[error("mode {0} allows no model of the chain")]
    NoModelInMode(Mode),
    /// Replicas only: the quota state they share cannot be read or written,
    /// and a guess could overrun a quota another replica is spending.
    #[error("the shared quota state is unavailable ({reason}); refusing rather than risk a quota")]
    SharedStateUnavailable { reason: String, retry_at: Timestamp },
}

fn describe_tpms(largest: &[(String, u64)]) -> String {
    largest
        .iter()
        .map(|(m, t)| format!("{m}: {t}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One quota a 429 says was exceeded, with the limit it names (`None` when
/// neither `quotaValue` nor the message gave one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    pub quota: Quota,
    pub limit: Option<u64>,
}

/// What an upstream failure teaches the scheduler.
#[derive(Clone, Debug, PartialEq)]
pub enum Penalty {
    /// A 429: every violation it lists (none when it carried no
    /// `QuotaFailure`), and the delay it asked for.
    Quota {
        violations: Vec<Violation>,
        retry_after: Option<Duration>,
    },
    /// 500, 503, 504, a timeout or a reset: the call may have counted.
    Transient,
    /// The call never reached the upstream (connection refused, DNS): it
    /// did not count.
    Unreached,
    KeyInvalid(String),
    KeyBlocked(String),
    /// 404 "no longer available": the model is retired for this project.
    ModelRetired(String),
}

/// A model the upstream said is retired, dropped from the chain.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Retired {
    pub model: String,
    pub at: Timestamp,
    pub message: String,
}

/// A change the core made that must outlive the process; the actor drains
/// them ([`Scheduler::take_changes`]) and hands them to the state store.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    KeyState(KeyIndex, KeyState),
    /// A lane's learned limits after a change; `taught` is what the upstream
    /// said this time (empty when a lane only takes what a sibling learned).
    Learned {
        key: KeyIndex,
        model: String,
        learned: LimitsOverride,
        taught: LimitsOverride,
        /// When the upstream last enforced `learned` (its week runs from there).
        at: Timestamp,
    },
    Mode(Mode),
    Retired(Retired),
}

impl Change {
    /// What the upstream taught, as one log line (operator changes are
    /// logged where the operator made them).
    pub fn lesson(&self) -> Option<String> {
        let limits = |o: &LimitsOverride| {
            Quota::ALL
                .iter()
                .filter_map(|&q| o.get(q).map(|v| format!("{} {v}", q.field())))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Change::Learned {
                key,
                model,
                learned,
                taught,
                ..
            } if taught.is_empty() => Some(format!(
                "key {key} on {model}: limits in force now {} (learned on its tier)",
                limits(learned)
            )),
            Change::Learned {
                key,
                model,
                learned,
                taught,
                ..
            } => Some(format!(
                "key {key} on {model}: learned {} from a 429 (in force now: {})",
                limits(taught),
                limits(learned)
            )),
            Change::Retired(r) => Some(format!(
                "{} is retired upstream and out of the chain: {}",
                r.model, r.message
            )),
            Change::KeyState(..) | Change::Mode(_) => None,
        }
    }
}

pub struct Scheduler {
    fingerprints: Vec<String>,
    states: Vec<KeyState>,
    /// Gemini's first, then the providers file's (see [`Provider`]).
    providers: Vec<Provider>,
    /// Each key's place in `providers`.
    key_provider: Vec<usize>,
    chain: Vec<String>,
    layers: Layers,
    mode: Mode,
    lanes: HashMap<(KeyIndex, String), Lane>,
    grants: HashMap<GrantId, Grant>,
    next_grant: GrantId,
    retired: Vec<Retired>,
    /// `FLUX_GUARD_MS`: how much longer than its window a booking holds a
    /// sliding quota's capacity.
    guard: Duration,
    /// What background work leaves free for interactive calls.
    reserve: Reserve,
    changes: Vec<Change>,
}

impl Scheduler {
    /// `fingerprints` names the keys (their text never reaches the core);
    /// `layers` are the configured limits; `guard` is `FLUX_GUARD_MS`.
    pub fn new(
        fingerprints: Vec<String>,
        chain: Vec<String>,
        layers: Layers,
        mode: Mode,
        guard: Duration,
    ) -> Self {
        Scheduler {
            states: vec![KeyState::Healthy; fingerprints.len()],
            providers: vec![Provider::gemini()],
            key_provider: vec![0; fingerprints.len()],
            fingerprints,
            chain,
            layers,
            mode,
            lanes: HashMap::new(),
            grants: HashMap::new(),
            next_grant: 1,
            retired: Vec::new(),
            guard,
            reserve: Reserve::default(),
            changes: Vec::new(),
        }
    }

    /// Sets the providers (Gemini's first) and which one each key belongs to.
    pub fn set_providers(&mut self, providers: Vec<Provider>, key_provider: Vec<usize>) {
        assert_eq!(
            key_provider.len(),
            self.states.len(),
            "one provider per key"
        );
        assert!(key_provider.iter().all(|&p| p < providers.len()));
        (self.providers, self.key_provider) = (providers, key_provider);
    }

    /// The provider whose model `model` is: one named `provider/…` by a
    /// provider after the first, else Gemini.
    fn provider_of(&self, model: &str) -> usize {
        model
            .split_once('/')
            .and_then(|(name, _)| self.providers.iter().skip(1).position(|p| p.name == name))
            .map_or(0, |p| p + 1)
    }

    /// The zone key `key`'s per-day quotas reset in.
    pub fn zone(&self, key: KeyIndex) -> DayZone {
        self.providers[self.key_provider[key]].zone
    }

    /// The keys of the provider whose model `model` is.
    fn keys_of(&self, model: &str) -> impl Iterator<Item = KeyIndex> + '_ {
        let provider = self.provider_of(model);
        KeyIndex::all(self.states.len()).filter(move |&k| self.key_provider[k] == provider)
    }

    /// Sets what background work leaves free (`FLUX_BATCH_RESERVE`).
    pub fn set_reserve(&mut self, reserve: Reserve) {
        self.reserve = reserve;
    }

    /// Numbers grants from `first` on (replicas sharing lanes each take
    /// their own range, so grant ids never collide in a shared lane).
    pub fn number_grants_from(&mut self, first: GrantId) {
        self.next_grant = first;
    }

    /// A copy of lane (key, model), empty if it has never been used.
    pub fn lane(&self, key: KeyIndex, model: &str) -> Lane {
        self.lanes
            .get(&(key, model.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// Replaces lane (key, model) with the shared truth (replicas read it
    /// before every decision).
    pub fn put_lane(&mut self, key: KeyIndex, model: &str, lane: Lane) {
        self.lanes.insert((key, model.to_string()), lane);
    }

    /// A grant this scheduler holds (planned, not yet settled or released).
    pub fn grant(&self, id: GrantId) -> Option<&Grant> {
        self.grants.get(&id)
    }

    /// Holds `grant` again, so an operation on it can be replayed on a
    /// fresher copy of its lane.
    pub fn hold_grant(&mut self, grant: Grant) {
        self.grants.insert(grant.id, grant);
    }

    /// Takes a key state another replica decided, without journalling it.
    pub fn adopt_key_state(&mut self, key: KeyIndex, state: KeyState) {
        if let Some(slot) = self.states.get_mut(key.get()) {
            *slot = state;
        }
    }

    /// Takes a mode another replica set, without journalling it.
    pub fn adopt_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    /// The durable changes made since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Puts back a call a previous run made within the window.
    pub fn restore_call(&mut self, key: KeyIndex, model: &str, at: Timestamp, used: Usage) {
        self.lanes
            .entry((key, model.to_string()))
            .or_default()
            .restore_call(at, used);
    }

    /// Puts back what a previous run's calls spent on a quota day.
    pub fn restore_day(&mut self, key: KeyIndex, model: &str, day: chrono::NaiveDate, used: Usage) {
        self.lanes
            .entry((key, model.to_string()))
            .or_default()
            .restore_day(day, used);
    }

    /// Puts back limits a previous run learned at `at`.
    pub fn restore_learned(
        &mut self,
        key: KeyIndex,
        model: &str,
        learned: LimitsOverride,
        at: Timestamp,
    ) {
        self.lanes
            .entry((key, model.to_string()))
            .or_default()
            .restore_learned(learned, at);
    }

    /// A model's limits before anything is learned, with their sources.
    pub fn model_limits(&self, model: &str) -> Resolved {
        self.layers.resolve(model)
    }

    /// A lane's limits in force at `now`: the key's tier's, with what the lane learned.
    fn lane_resolved(&self, key: KeyIndex, model: &str, now: Timestamp) -> Resolved {
        let configured = self.layers.resolve_for(key.get(), model);
        in_force(configured, self.lanes.get(&(key, model.to_string())), now)
    }

    fn lane_limits(&self, key: KeyIndex, model: &str, now: Timestamp) -> Limits {
        self.lane_resolved(key, model, now).limits()
    }

    /// Replaces the fetched layer (a validated policy fetch, or its cache).
    pub fn set_fetched(&mut self, fetched: BTreeMap<String, LimitsOverride>) {
        self.layers.fetched = fetched;
    }

    /// Replaces the model chain (a refreshed discovery); retired models stay out.
    pub fn set_chain(&mut self, mut chain: Vec<String>) {
        chain.retain(|m| !self.retired.iter().any(|r| &r.model == m));
        self.chain = chain;
    }

    /// The keys of `key`'s tier on `model` (itself included): keys whose
    /// configured limits there are the same, so what one learns holds for all.
    pub fn tier(&self, key: KeyIndex, model: &str) -> Vec<KeyIndex> {
        let own = self.layers.key_override(key.get(), model);
        self.keys_of(model)
            .filter(|&k| self.layers.key_override(k.get(), model) == own)
            .collect()
    }

    fn usable(&self, key: KeyIndex) -> bool {
        self.states[key] == KeyState::Healthy
    }

    /// The models a target allows, in chain order.
    fn candidate_models(&self, target: &Target) -> Result<Vec<String>, PlanError> {
        match target {
            Target::Model(m) if self.chain.contains(m) => Ok(vec![m.clone()]),
            Target::Embedding(m) if outside_the_chain(m) && !self.is_retired(m) => {
                Ok(vec![m.clone()])
            }
            Target::Provider(m)
                if self.provider_of(m) != 0 && self.layers.providers.contains_key(m) =>
            {
                Ok(vec![m.clone()])
            }
            Target::Model(m) | Target::Embedding(m) | Target::Provider(m) => {
                Err(PlanError::UnknownModel(m.clone()))
            }
            Target::ChainFrom(m) => {
                let start = self
                    .chain
                    .iter()
                    .position(|c| c == m)
                    .ok_or_else(|| PlanError::UnknownModel(m.clone()))?;
                let rest = self.chain[start + 1..]
                    .iter()
                    .filter(|c| self.mode.allows(c));
                Ok(std::iter::once(m).chain(rest).cloned().collect())
            }
            Target::Chain(mode) => {
                let mode = mode.unwrap_or(self.mode);
                let models: Vec<String> = self
                    .chain
                    .iter()
                    .filter(|m| mode.allows(m))
                    .cloned()
                    .collect();
                if models.is_empty() {
                    Err(PlanError::NoModelInMode(mode))
                } else {
                    Ok(models)
                }
            }
        }
    }

    /// Every lane a plan for `target` may look at, whatever the mode: each
    /// key on the named model, or on the whole chain. Not filtered by the
    /// mode, because a replica reads the mode with the lanes and may find it
    /// changed by another replica: a plan must never book a lane it did not read.
    pub fn lanes_to_plan(&self, target: &Target) -> Vec<(KeyIndex, String)> {
        let models = match target {
            Target::Model(m) | Target::Embedding(m) | Target::Provider(m) => vec![m.clone()],
            Target::Chain(_) | Target::ChainFrom(_) => self.chain.clone(),
        };
        models
            .into_iter()
            .flat_map(|m| {
                let keys: Vec<KeyIndex> = self.keys_of(&m).collect();
                keys.into_iter().map(move |k| (k, m.clone()))
            })
            .collect()
    }

    /// The usable keys a request for `model`'s provider may go to.
    fn keys_for(&self, choice: KeyChoice, model: &str) -> Result<Vec<KeyIndex>, PlanError> {
        let keys: Vec<KeyIndex> = match choice {
            KeyChoice::Only(key)
                if key.get() >= self.states.len()
                    || self.key_provider[key] != self.provider_of(model) =>
            {
                return Err(PlanError::NoUsableKey);
            }
            KeyChoice::Only(key) if !self.usable(key) => {
                return Err(PlanError::KeyOut(key, self.states[key].clone()));
            }
            KeyChoice::Only(key) => vec![key],
            KeyChoice::Any | KeyChoice::Prefer(_) => {
                self.keys_of(model).filter(|&k| self.usable(k)).collect()
            }
        };
        if keys.is_empty() {
            return Err(PlanError::NoUsableKey);
        }
        Ok(keys)
    }

    /// Chooses a lane and an instant for a request and books it at once, so no
    /// later plan can take the same capacity.
    ///
    /// Models are tried in chain order; the first with day quota left on a
    /// usable key that can hold the request wins, even if it means waiting,
    /// and within it the lane with the earliest instant (ties go to the key
    /// with the fewest requests today, spreading the day's load).
    pub fn plan(&mut self, request: &PlanRequest, now: Timestamp) -> Result<Grant, PlanError> {
        let models = self.candidate_models(&request.target)?;
        // Every candidate is one provider's: the chain is Gemini's.
        let usable = self.keys_for(request.keys, &models[0])?;
        let call = request.cost;
        let background = request.priority == Priority::Background;
        let deadline = if background {
            request.deadline.min(now)
        } else {
            request.deadline
        };
        let day = Day::of(now, self.zone(usable[0]));
        let today = day.date;
        let mut any_lane_holds_it = false;
        // The most items of a batch any lane still takes today, and where.
        let mut day_room: Option<(u64, &String)> = None;
        for model in &models {
            let mut best: Option<(Timestamp, u32, KeyIndex)> = None;
            let mut preferred_at = None;
            let mut probes = Vec::new();
            // The model's layers, resolved once for every key (each key's
            // own entry goes on top, as `Layers::resolve_for` puts it).
            let model_limits = self.layers.resolve(model);
            // The lanes' map key, its model copied once per model, not per lane.
            let mut id = (usable[0], model.clone());
            for &key in &usable {
                id.0 = key;
                let configured = match self.layers.key_override(key.get(), model) {
                    Some(own) => model_limits.with(own, Source::Key),
                    None => model_limits,
                };
                let existing = self.lanes.get_mut(&id);
                let (limits, probe) = match zero_check(configured, existing.as_deref(), today, now)
                {
                    ZeroCheck::NoZero(limits) => (limits, false),
                    ZeroCheck::Skip => {
                        // Out for today; "spent until midnight" only if it could ever hold the request.
                        any_lane_holds_it |= configured.limits().can_ever_admit(call);
                        continue;
                    }
                    ZeroCheck::Probe(limits) => (limits, true),
                };
                let limits = if background {
                    limits.for_background(call, self.reserve)
                } else {
                    limits
                };
                if !limits.can_ever_admit(call) {
                    continue;
                }
                any_lane_holds_it = true;
                let lane = match existing {
                    Some(lane) => lane,
                    None => self.lanes.entry(id.clone()).or_default(),
                };
                lane.forget_before(now, today, self.guard);
                if !lane.day_admits(limits, today, call) {
                    let room = lane.day_room(limits, today);
                    let splits = (1..call.requests).contains(&room);
                    if splits && day_room.is_none_or(|(r, _)| room > r) {
                        day_room = Some((room, model));
                    }
                    continue;
                }
                // A lane that cannot beat the best so far is searched only up
                // to it (the preferred key's instant is needed exactly).
                let bound = match best {
                    Some((at, ..)) if request.keys != KeyChoice::Prefer(key) => at,
                    _ => Timestamp(i64::MAX),
                };
                let Some(at) = lane.earliest_up_to(limits, call, now, day, self.guard, bound)
                else {
                    continue;
                };
                if probe {
                    probes.push(key);
                }
                if request.keys == KeyChoice::Prefer(key) {
                    preferred_at = Some(at);
                }
                let rank = (at, lane.booked_on(today), key);
                if best.is_none_or(|b| rank < b) {
                    best = Some(rank);
                }
            }
            let Some((mut at, _, mut key)) = best else {
                continue;
            };
            if let (KeyChoice::Prefer(p), Some(p_at)) = (request.keys, preferred_at)
                && p_at <= deadline
            {
                (at, key) = (p_at, p);
            }
            if at > deadline {
                return Err(PlanError::WaitTooLong {
                    model: model.clone(),
                    at,
                });
            }
            let probe = probes.contains(&key);
            if probe {
                // One re-check a day for the whole tier.
                for k in self.tier(key, model) {
                    self.lane_mut(k, model).check_zero_on(today);
                }
            }
            return Ok(self.book(key, model, at, call, probe));
        }
        if let Some((most, model)) = day_room {
            // Part of the batch still fits today: the caller splits it.
            return Err(PlanError::TooManyItems {
                requests: call.requests,
                model: model.clone(),
                most,
            });
        }
        if any_lane_holds_it {
            return Err(PlanError::ExhaustedUntil(day.ends));
        }
        Err(self.never_fits(call, &models, &usable, now))
    }

    /// Why no lane can ever hold `call`: too many items for one window, or
    /// too many tokens for one call (with the largest call each model takes
    /// on any usable key, learned and per-key limits included).
    fn never_fits(
        &self,
        call: Usage,
        models: &[String],
        usable: &[KeyIndex],
        now: Timestamp,
    ) -> PlanError {
        let lanes = || {
            models.iter().flat_map(move |m| {
                usable
                    .iter()
                    .map(move |&k| (m, self.lane_limits(k, m, now)))
            })
        };
        // An average item of the batch, and the most of them a lane holds.
        let item = Usage {
            requests: 1,
            input_tokens: call.input_tokens.div_ceil(call.requests.max(1)),
            output_tokens: call.output_tokens.div_ceil(call.requests.max(1)),
        };
        let most = lanes()
            .map(|(m, l)| (m, l.most_items(item)))
            .filter(|&(_, most)| most >= 1)
            .max_by_key(|&(_, most)| most);
        if let (true, Some((model, most))) = (call.requests > 1, most) {
            return PlanError::TooManyItems {
                requests: call.requests,
                model: model.clone(),
                most,
            };
        }
        // The largest call each model takes on any usable key, by `bound`.
        let largest = |bound: fn(&Limits) -> u64| {
            models
                .iter()
                .map(|m| {
                    let most = usable
                        .iter()
                        .map(|&k| bound(&self.lane_limits(k, m, now)))
                        .max()
                        .unwrap_or(0);
                    (m.clone(), most)
                })
                .collect::<Vec<_>>()
        };
        let outputs = largest(|l| l.otpm);
        if outputs.iter().all(|&(_, most)| call.output_tokens > most) {
            return PlanError::TooMuchOutput {
                tokens: call.output_tokens,
                largest: outputs,
            };
        }
        PlanError::TooLarge {
            tokens: call.input_tokens,
            largest: largest(Limits::per_call_bound),
        }
    }

    fn book(
        &mut self,
        key: KeyIndex,
        model: &str,
        at: Timestamp,
        cost: Usage,
        probe: bool,
    ) -> Grant {
        let id = self.next_grant;
        self.next_grant += 1;
        let zone = self.zone(key);
        self.lane_mut(key, model).book(id, at, cost, zone);
        let grant = Grant {
            id,
            key,
            model: model.to_string(),
            at,
            cost,
            probe,
        };
        self.grants.insert(id, grant.clone());
        grant
    }

    fn take_grant(&mut self, id: GrantId) -> Option<(Grant, DayZone, &mut Lane)> {
        let grant = self.grants.remove(&id)?;
        let zone = self.zone(grant.key);
        let lane = self
            .lanes
            .entry((grant.key, grant.model.clone()))
            .or_default();
        Some((grant, zone, lane))
    }

    /// The upstream served the call: its booking stays, with the tokens the
    /// upstream counted. A re-check that got through clears its tier's
    /// learned zeros.
    pub fn settle(&mut self, id: GrantId, spent: Spent) {
        let Some((grant, zone, lane)) = self.take_grant(id) else {
            return;
        };
        lane.settle(id, grant.at, grant.cost, spent.applied_to(grant.cost), zone);
        self.hear(&grant, spent.heard);
        if grant.probe {
            for k in self.tier(grant.key, &grant.model) {
                let lane = self.lanes.entry((k, grant.model.clone())).or_default();
                if lane.forget_zeros() {
                    self.changes.push(Change::Learned {
                        key: k,
                        model: grant.model.clone(),
                        learned: lane.learned_limits(),
                        taught: LimitsOverride::default(),
                        at: lane.learned_at(),
                    });
                }
            }
        }
    }

    /// The call counted upstream (or may have) but was not served (the
    /// client's own mistake, a transient failure, a client gone mid-answer):
    /// its booking stays with what it `spent`. A re-check it was may go again.
    pub fn keep(&mut self, id: GrantId, spent: Spent) {
        if let Some((grant, zone, lane)) = self.take_grant(id) {
            lane.keep(id, grant.at, grant.cost, spent.applied_to(grant.cost), zone);
            self.reopen_check(&grant);
            self.hear(&grant, spent.heard);
        }
    }

    /// The call was never made (the client left, the service is draining):
    /// its capacity and its day count go back, and a re-check it was may go again.
    pub fn release(&mut self, id: GrantId) {
        if let Some((grant, zone, lane)) = self.take_grant(id) {
            lane.release(id, grant.at, zone);
            self.reopen_check(&grant);
        }
    }

    /// Learns what an answer's headers said: a stated limit below the one in
    /// force (before any 429 could teach it), and a limit spent until its reset.
    fn hear(&mut self, grant: &Grant, heard: Heard) {
        if heard == Heard::default() {
            // Nothing said (every Gemini answer): no work on the settle's path.
            return;
        }
        let current = self.lane_limits(grant.key, &grant.model, heard.at);
        let mut lower = LimitsOverride::default();
        for q in Quota::ALL {
            if let Some(stated) = heard.limits.get(q).filter(|&v| v > 0 && v < current.get(q)) {
                lower.set(q, stated);
            }
        }
        if !lower.is_empty() {
            let today = self.zone(grant.key).day_of(heard.at);
            self.teach(grant, lower, heard.at, today);
        }
        if let Some(until) = heard.hold_until.filter(|&u| u > heard.at) {
            self.lane_mut(grant.key, &grant.model).cool_until(until);
        }
    }

    /// A re-check that came to nothing frees its tier's re-check of the day.
    fn reopen_check(&mut self, grant: &Grant) {
        if grant.probe {
            let day = self.zone(grant.key).day_of(grant.at);
            for k in self.tier(grant.key, &grant.model) {
                self.lane_mut(k, &grant.model).uncheck_zero_on(day);
            }
        }
    }

    /// Applies what an upstream failure of grant `id` teaches, and ends the grant.
    pub fn penalise(&mut self, id: GrantId, penalty: &Penalty, now: Timestamp) {
        let Some(grant) = self.grants.get(&id).cloned() else {
            return;
        };
        match penalty {
            Penalty::Quota {
                violations,
                retry_after,
            } => {
                // A refused call does not count upstream: give its booking back.
                self.release(id);
                self.learn_quota(&grant, violations, *retry_after, now);
            }
            Penalty::Transient => {
                self.keep(id, Spent::input(grant.cost.input_tokens));
                self.lane_mut(grant.key, &grant.model)
                    .strike(now, TRANSIENT_BACKOFF);
            }
            Penalty::Unreached => {
                self.release(id);
                self.lane_mut(grant.key, &grant.model)
                    .strike(now, TRANSIENT_BACKOFF);
            }
            Penalty::KeyInvalid(reason) => {
                self.release(id);
                self.set_key_state(grant.key, KeyState::Invalid(reason.clone()));
            }
            Penalty::KeyBlocked(reason) => {
                self.release(id);
                self.set_key_state(grant.key, KeyState::Blocked(reason.clone()));
            }
            Penalty::ModelRetired(message) => {
                self.release(id);
                self.retire(&grant.model, message, now);
            }
        }
    }

    fn lane_mut(&mut self, key: KeyIndex, model: &str) -> &mut Lane {
        self.lanes.entry((key, model.to_string())).or_default()
    }

    /// What a 429 teaches: every limit it names is learned on the lane and,
    /// provisionally, on its tier's other lanes of the model (so a re-plan
    /// does not draw the same 429 on a sibling); a per-day violation spends
    /// the lane's day whatever the delay says; the lane cools for the delay.
    fn learn_quota(
        &mut self,
        grant: &Grant,
        violations: &[Violation],
        retry_after: Option<Duration>,
        now: Timestamp,
    ) {
        let mut taught = LimitsOverride::default();
        for v in violations {
            if let Some(limit) = v.limit {
                let lower = taught.get(v.quota).map_or(limit, |t| t.min(limit));
                taught.set(v.quota, lower);
            }
        }
        let zone = self.zone(grant.key);
        let today = zone.day_of(now);
        self.teach(grant, taught, now, today);
        let per_day = violations.iter().any(|v| v.quota.window() == Window::Day);
        // The longest sliding window among the quotas it names frees it.
        let sliding = violations
            .iter()
            .filter_map(|v| match v.quota.window() {
                Window::Sliding(length) => Some(length),
                Window::Day => None,
            })
            .max()
            .unwrap_or(Duration::ZERO);
        let span = sliding + self.guard;
        let lane = self.lane_mut(grant.key, &grant.model);
        // The day the call counted in is spent; if that day is already over
        // (the answer came after midnight), the new one is untouched.
        if per_day && zone.day_of(grant.at) == today {
            lane.exhaust_day(today);
        }
        match retry_after {
            // "0s" on a per-day violation says nothing: the day decides.
            Some(delay) if !per_day || !delay.is_zero() => lane.cool_until(now.plus(delay)),
            _ if violations.is_empty() => lane.strike(now, BARE_429_BACKOFF),
            // A sliding quota with no delay: its window frees it at the latest.
            _ if !per_day => lane.cool_until(now.plus(span)),
            _ => {}
        }
    }

    /// Learns `taught` on the grant's lane and, provisionally, on its tier's
    /// other lanes of the model; a limit of 0 is this day's re-check too.
    fn teach(&mut self, grant: &Grant, taught: LimitsOverride, now: Timestamp, today: NaiveDate) {
        let zero = Quota::ALL.iter().any(|&q| taught.get(q) == Some(0));
        for k in self.tier(grant.key, &grant.model) {
            let current = self.lane_limits(k, &grant.model, now);
            let lane = self.lane_mut(k, &grant.model);
            let before = lane.learned(now);
            lane.learn(current, taught, now);
            if zero {
                lane.check_zero_on(today);
            }
            let after = lane.learned(now);
            // New, or seen again on the lane that was told (which restarts its week).
            let told = k == grant.key && !taught.is_empty();
            if let Some(learned) = after.filter(|a| Some(*a) != before || told) {
                self.changes.push(Change::Learned {
                    key: k,
                    model: grant.model.clone(),
                    learned,
                    taught: if k == grant.key {
                        taught
                    } else {
                        LimitsOverride::default()
                    },
                    at: now,
                });
            }
        }
    }

    /// Drops a model the upstream retired from the chain, for every key.
    fn retire(&mut self, model: &str, message: &str, now: Timestamp) {
        if let Some(retired) = self.take_out(model, now, message) {
            self.changes.push(Change::Retired(retired));
        }
    }

    /// Puts back a model a previous run found retired at `at`, unless that
    /// is more than [`LEARNED_TTL`] before `now` (then one call checks again).
    pub fn restore_retired(&mut self, model: &str, at: Timestamp, message: &str, now: Timestamp) {
        if now < at.plus(LEARNED_TTL) {
            self.take_out(model, at, message);
        }
    }

    /// Takes a retired model out of the chain for every key; what was
    /// recorded, unless it was out already.
    fn take_out(&mut self, model: &str, at: Timestamp, message: &str) -> Option<Retired> {
        if self.is_retired(model) {
            return None;
        }
        self.chain.retain(|m| m != model);
        let retired = Retired {
            model: model.to_string(),
            at,
            message: message.to_string(),
        };
        self.retired.push(retired.clone());
        Some(retired)
    }

    fn is_retired(&self, model: &str) -> bool {
        self.retired.iter().any(|r| r.model == model)
    }

    /// The models the upstream said are retired, oldest first.
    pub fn retired(&self) -> &[Retired] {
        &self.retired
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
        self.changes.push(Change::Mode(mode));
    }

    pub fn chain(&self) -> &[String] {
        &self.chain
    }

    /// How operators tell key `key` apart: `…abcd`.
    pub fn fingerprint(&self, key: KeyIndex) -> &str {
        &self.fingerprints[key]
    }

    pub fn key_count(&self) -> usize {
        self.states.len()
    }

    pub fn key_state(&self, key: KeyIndex) -> Option<&KeyState> {
        self.states.get(key.get())
    }

    /// Sets a key's state (operator enable/disable, start-up validation).
    pub fn set_key_state(&mut self, key: KeyIndex, state: KeyState) -> Option<KeyState> {
        let slot = self.states.get_mut(key.get())?;
        if *slot != state {
            *slot = state.clone();
            self.changes.push(Change::KeyState(key, state.clone()));
        }
        Some(state)
    }

    /// Whether at least one key can serve.
    pub fn ready(&self) -> bool {
        KeyIndex::all(self.states.len()).any(|k| self.usable(k))
    }

    /// The models `/status` shows: the chain, then any model outside it a
    /// request has used (an embedding model), then the other providers'.
    pub fn models_shown(&self) -> Vec<String> {
        let outside: std::collections::BTreeSet<&String> = self
            .lanes
            .keys()
            .map(|(_, m)| m)
            .filter(|m| !self.chain.contains(m) && outside_the_chain(m))
            .collect();
        let providers = self.layers.providers.keys();
        self.chain
            .iter()
            .chain(outside)
            .chain(providers)
            .cloned()
            .collect()
    }

    /// Everything `/status` shows, as of `now`.
    pub fn snapshot(&self, now: Timestamp) -> Snapshot {
        let models = self.models_shown();
        let keys = KeyIndex::all(self.states.len())
            .map(|key| KeySnapshot {
                index: key,
                fingerprint: self.fingerprints[key].clone(),
                provider: self.providers[self.key_provider[key]].name.clone(),
                state: self.states[key].clone(),
                models: models
                    .iter()
                    .filter(|m| self.provider_of(m) == self.key_provider[key])
                    .map(|model| {
                        let lane = self.lanes.get(&(key, model.clone()));
                        let empty = Lane::default();
                        let lane = lane.unwrap_or(&empty);
                        let snapshot = LaneSnapshot {
                            limits: self.lane_resolved(key, model, now),
                            learned: lane.learned(now),
                            learned_at: lane.learned(now).map(|_| lane.learned_at()),
                            usage: lane.usage(now, self.zone(key).day_of(now)),
                        };
                        (model.clone(), snapshot)
                    })
                    .collect(),
            })
            .collect();
        let waiting_total = self.grants.values().filter(|g| g.at > now).count();
        let mut grants: Vec<GrantSnapshot> = self
            .grants
            .values()
            .map(|g| GrantSnapshot {
                id: g.id,
                key: g.key,
                model: g.model.clone(),
                at: g.at,
                tokens: g.cost.input_tokens,
                requests: g.cost.requests,
                waiting: g.at > now,
            })
            .collect();
        grants.sort_by_key(|g| (g.at, g.id));
        grants.truncate(SNAPSHOT_GRANTS);
        Snapshot {
            mode: self.mode,
            chain: self.chain.clone(),
            retired: self.retired.clone(),
            limits: models
                .iter()
                .map(|m| (m.clone(), self.model_limits(m)))
                .collect(),
            keys,
            queue: QueueCounts {
                waiting: waiting_total,
                in_flight: self.grants.len() - waiting_total,
            },
            grants,
        }
    }
}

/// A model planned on its own lanes though never in the generate chain.
fn outside_the_chain(model: &str) -> bool {
    crate::policy::Family::of(model) == crate::policy::Family::Embedding
}

/// A lane's limits in force at `now`: `configured` (its key's tier's), with
/// what the lane (`None` if never used) learned.
fn in_force(configured: Resolved, lane: Option<&Lane>, now: Timestamp) -> Resolved {
    match lane.and_then(|l| l.learned(now)) {
        Some(learned) => configured.with(&learned, Source::Learned),
        None => configured,
    }
}

/// Whether a lane (`None` if never used) whose key's limits are `configured`
/// has a learned limit of 0 and, if so, whether today's one re-check may go
/// (with the limits it had before).
fn zero_check(
    configured: Resolved,
    lane: Option<&Lane>,
    today: NaiveDate,
    now: Timestamp,
) -> ZeroCheck {
    let limits = in_force(configured, lane, now).limits();
    if limits.zeros().next().is_none() {
        return ZeroCheck::NoZero(limits);
    }
    if lane.and_then(Lane::zero_checked) >= Some(today) {
        ZeroCheck::Skip
    } else {
        ZeroCheck::Probe(configured.limits())
    }
}

/// What [`zero_check`] found on a lane.
enum ZeroCheck {
    /// No limit of 0: plan with these.
    NoZero(Limits),
    /// A learned 0 already checked today: the lane cannot serve.
    Skip,
    /// A learned 0 not checked today: one call may, with these limits.
    Probe(Limits),
}

#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub mode: Mode,
    pub chain: Vec<String>,
    /// Models the upstream retired, dropped from the chain.
    pub retired: Vec<Retired>,
    pub limits: BTreeMap<String, Resolved>,
    pub keys: Vec<KeySnapshot>,
    pub queue: QueueCounts,
    /// The soonest grants not yet settled (waiting for their instant, or in
    /// flight), at most [`SNAPSHOT_GRANTS`] of them.
    pub grants: Vec<GrantSnapshot>,
}

/// How many grants a snapshot lists; the counts cover them all.
pub const SNAPSHOT_GRANTS: usize = 200;

#[derive(Clone, Copy, Debug, Serialize)]
pub struct QueueCounts {
    pub waiting: usize,
    pub in_flight: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct KeySnapshot {
    pub index: KeyIndex,
    pub fingerprint: String,
    /// The provider it belongs to (`gemini`, or the providers file's name).
    pub provider: String,
    #[serde(flatten)]
    pub state: KeyState,
    pub models: BTreeMap<String, LaneSnapshot>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LaneSnapshot {
    /// The limits in force on this lane (learned ones included), with sources.
    pub limits: Resolved,
    pub learned: Option<LimitsOverride>,
    /// When the upstream last enforced what was learned.
    pub learned_at: Option<Timestamp>,
    #[serde(flatten)]
    pub usage: LaneUsage,
}

#[derive(Clone, Debug, Serialize)]
pub struct GrantSnapshot {
    pub id: GrantId,
    pub key: KeyIndex,
    pub model: String,
    pub at: Timestamp,
    pub tokens: u64,
    /// More than one for a batch of embeddings.
    pub requests: u64,
    pub waiting: bool,
}
