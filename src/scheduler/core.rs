//! The scheduler core: every key, model and booking, and the rules that turn a
//! request into a grant (which lane, at what instant).
//!
//! Pure and synchronous: no I/O, no clock, no locks. Every method takes `now`
//! as an argument, so tests drive it through exact scenarios and benchmarks
//! through a simulated day in milliseconds. The actor (`super::actor`) is its
//! only owner in the running service.

use super::lane::{GrantId, Lane, LaneUsage, WINDOW_MS};
use crate::clock::{PacificDay, Timestamp};
use crate::policy::{Layers, Limits, LimitsOverride, Mode, Resolved, Source};
use crate::wire::Quota;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Backoff base after a 429 that carries no details.
const BARE_429_BACKOFF: Duration = Duration::from_secs(5);
/// Backoff base after a transient failure (500, 503, 504, a reset).
const TRANSIENT_BACKOFF: Duration = Duration::from_secs(1);

/// Whether a key may be used, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum KeyState {
    Healthy,
    /// Taken out by an operator.
    Disabled,
    /// The upstream said the key is not valid (400 API_KEY_INVALID).
    Invalid(String),
    /// The upstream refused the key's project (403 PERMISSION_DENIED).
    Blocked(String),
}

/// Which models a request may use.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// The chain, filtered by this mode (the service's mode when `None`).
    Chain(Option<Mode>),
    /// Exactly this model.
    Model(String),
    /// This model first, then the models after it in the chain that the
    /// service's mode allows (a client that opted into fallback).
    ChainFrom(String),
}

#[derive(Clone, Debug)]
pub struct PlanRequest {
    /// Input tokens the call will spend.
    pub tokens: u64,
    pub target: Target,
    /// A key (0-based) to use when it can serve by `deadline`.
    pub preferred_key: Option<usize>,
    /// The latest instant the caller accepts; later means "429, retry after".
    pub deadline: Timestamp,
}

/// A booked instant on a lane. Keys are 0-based here; the API shows them 1-based.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    pub id: GrantId,
    pub key: usize,
    pub model: String,
    pub at: Timestamp,
    pub tokens: u64,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("the request has {tokens} input tokens, more than any allowed model accepts per minute ({})", describe_tpms(.largest))]
    TooLarge {
        tokens: u64,
        largest: Vec<(String, u64)>,
    },
    #[error("the earliest slot is on {model} at {at}, beyond the request's wait ceiling")]
    WaitTooLong { model: String, at: Timestamp },
    #[error("every allowed model's daily quota is spent until {0}")]
    ExhaustedUntil(Timestamp),
    #[error("no key is usable")]
    NoUsableKey,
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

/// What an upstream failure teaches the scheduler.
#[derive(Clone, Debug, PartialEq)]
pub enum Penalty {
    /// A 429. `quota` is `None` when it carried no `QuotaFailure`.
    Quota {
        quota: Option<Quota>,
        limit: Option<u64>,
        retry_after: Option<Duration>,
    },
    /// 500, 503, 504, a timeout or a reset: the call may have counted.
    Transient,
    KeyInvalid(String),
    KeyBlocked(String),
}

/// A change the core made that must outlive the process; the actor drains
/// them ([`Scheduler::take_changes`]) and hands them to the state store.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    KeyState(usize, KeyState),
    Learned(usize, String, LimitsOverride),
    Mode(Mode),
}

pub struct Scheduler {
    fingerprints: Vec<String>,
    states: Vec<KeyState>,
    chain: Vec<String>,
    layers: Layers,
    mode: Mode,
    lanes: HashMap<(usize, String), Lane>,
    grants: HashMap<GrantId, Grant>,
    next_grant: GrantId,
    /// The window plus the guard: how long a booking holds capacity.
    span_ms: i64,
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
            fingerprints,
            chain,
            layers,
            mode,
            lanes: HashMap::new(),
            grants: HashMap::new(),
            next_grant: 1,
            span_ms: WINDOW_MS + guard.as_millis() as i64,
            changes: Vec::new(),
        }
    }

    /// Numbers grants from `first` on (replicas sharing lanes each take
    /// their own range, so grant ids never collide in a shared lane).
    pub fn number_grants_from(&mut self, first: GrantId) {
        self.next_grant = first;
    }

    /// A copy of lane (key, model), empty if it has never been used.
    pub fn lane(&self, key: usize, model: &str) -> Lane {
        self.lanes
            .get(&(key, model.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// Replaces lane (key, model) with the shared truth (replicas read it
    /// before every decision).
    pub fn put_lane(&mut self, key: usize, model: &str, lane: Lane) {
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
    pub fn adopt_key_state(&mut self, key: usize, state: KeyState) {
        if let Some(slot) = self.states.get_mut(key) {
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
    pub fn restore_call(&mut self, key: usize, model: &str, at: Timestamp, tokens: u64) {
        self.lanes
            .entry((key, model.to_string()))
            .or_default()
            .restore_call(at, tokens);
    }

    /// Puts back a previous run's count of calls on a Pacific day.
    pub fn restore_day(&mut self, key: usize, model: &str, day: chrono::NaiveDate, count: u32) {
        self.lanes
            .entry((key, model.to_string()))
            .or_default()
            .restore_day(day, count);
    }

    /// Puts back limits a previous run learned at `at`.
    pub fn restore_learned(
        &mut self,
        key: usize,
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

    /// A lane's limits in force at `now`: the model's, with what the lane learned.
    fn lane_resolved(&self, key: usize, model: &str, now: Timestamp) -> Resolved {
        let base = self.model_limits(model);
        match self
            .lanes
            .get(&(key, model.to_string()))
            .and_then(|l| l.learned(now))
        {
            Some(learned) => base.with(&learned, Source::Learned),
            None => base,
        }
    }

    fn lane_limits(&self, key: usize, model: &str, now: Timestamp) -> Limits {
        self.lane_resolved(key, model, now).limits()
    }

    /// Replaces the fetched layer (a validated policy fetch, or its cache).
    pub fn set_fetched(&mut self, fetched: BTreeMap<String, LimitsOverride>) {
        self.layers.fetched = fetched;
    }

    /// Replaces the model chain (a refreshed discovery).
    pub fn set_chain(&mut self, chain: Vec<String>) {
        self.chain = chain;
    }

    fn usable(&self, key: usize) -> bool {
        self.states[key] == KeyState::Healthy
    }

    /// The models a target allows, in chain order.
    fn candidate_models(&self, target: &Target) -> Result<Vec<String>, PlanError> {
        match target {
            Target::Model(m) if self.chain.contains(m) => Ok(vec![m.clone()]),
            Target::Model(m) => Err(PlanError::UnknownModel(m.clone())),
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

    /// Chooses a lane and an instant for a request and books it at once, so no
    /// later plan can take the same capacity.
    ///
    /// Models are tried in chain order; the first with day quota left on a
    /// usable key that can hold the request wins, even if it means waiting,
    /// and within it the lane with the earliest instant (ties go to the key
    /// with the fewest requests today, spreading the day's load).
    pub fn plan(&mut self, request: &PlanRequest, now: Timestamp) -> Result<Grant, PlanError> {
        let models = self.candidate_models(&request.target)?;
        let usable: Vec<usize> = (0..self.states.len()).filter(|&k| self.usable(k)).collect();
        if usable.is_empty() {
            return Err(PlanError::NoUsableKey);
        }
        let day = PacificDay::of(now);
        let today = day.date;
        let mut any_lane_holds_it = false;
        for model in &models {
            let mut best: Option<(Timestamp, u32, usize)> = None;
            let mut preferred_at = None;
            for &key in &usable {
                let limits = self.lane_limits(key, model, now);
                if request.tokens > limits.tpm {
                    continue;
                }
                any_lane_holds_it = true;
                let lane = self.lanes.entry((key, model.clone())).or_default();
                lane.forget_before(now, today, self.span_ms);
                if !lane.has_day_left(limits, today) {
                    continue;
                }
                let Some(at) = lane.earliest(limits, request.tokens, now, day, self.span_ms) else {
                    continue;
                };
                if request.preferred_key == Some(key) {
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
            if let (Some(p), Some(p_at)) = (request.preferred_key, preferred_at)
                && p_at <= request.deadline
            {
                (at, key) = (p_at, p);
            }
            if at > request.deadline {
                return Err(PlanError::WaitTooLong {
                    model: model.clone(),
                    at,
                });
            }
            return Ok(self.book(key, model, at, request.tokens));
        }
        if any_lane_holds_it {
            return Err(PlanError::ExhaustedUntil(day.ends));
        }
        let largest = models
            .iter()
            .map(|m| (m.clone(), self.model_limits(m).tpm))
            .collect();
        Err(PlanError::TooLarge {
            tokens: request.tokens,
            largest,
        })
    }

    fn book(&mut self, key: usize, model: &str, at: Timestamp, tokens: u64) -> Grant {
        let id = self.next_grant;
        self.next_grant += 1;
        self.lanes
            .entry((key, model.to_string()))
            .or_default()
            .book(id, at, tokens);
        let grant = Grant {
            id,
            key,
            model: model.to_string(),
            at,
            tokens,
        };
        self.grants.insert(id, grant.clone());
        grant
    }

    fn take_grant(&mut self, id: GrantId) -> Option<(Grant, &mut Lane)> {
        let grant = self.grants.remove(&id)?;
        let lane = self
            .lanes
            .entry((grant.key, grant.model.clone()))
            .or_default();
        Some((grant, lane))
    }

    /// The call was made: its booking stays, with the tokens the upstream counted.
    pub fn settle(&mut self, id: GrantId, input_tokens: u64) {
        if let Some((grant, lane)) = self.take_grant(id) {
            lane.settle(id, grant.at, input_tokens);
        }
    }

    /// The call was never made (the client left, the service is draining):
    /// its capacity and its day count go back.
    pub fn release(&mut self, id: GrantId) {
        if let Some((grant, lane)) = self.take_grant(id) {
            lane.release(id, grant.at);
        }
    }

    /// Applies what an upstream failure of grant `id` teaches, and ends the grant.
    pub fn penalise(&mut self, id: GrantId, penalty: &Penalty, now: Timestamp) {
        let Some(grant) = self.grants.get(&id).cloned() else {
            return;
        };
        let current = self.lane_limits(grant.key, &grant.model, now);
        match penalty {
            Penalty::Quota {
                quota,
                limit,
                retry_after,
            } => {
                // A refused call does not count upstream: give its booking back.
                self.release(id);
                let lane = self
                    .lanes
                    .entry((grant.key, grant.model.clone()))
                    .or_default();
                let learned = match (quota, limit) {
                    (Some(Quota::RequestsPerMinute), Some(v)) => LimitsOverride {
                        rpm: Some(*v as u32),
                        ..Default::default()
                    },
                    (Some(Quota::InputTokensPerMinute), Some(v)) => LimitsOverride {
                        tpm: Some(*v),
                        ..Default::default()
                    },
                    (Some(Quota::RequestsPerDay), Some(v)) => LimitsOverride {
                        rpd: Some(*v as u32),
                        ..Default::default()
                    },
                    _ => LimitsOverride::default(),
                };
                let before = lane.learned(now);
                lane.learn(current, learned, now);
                let after = lane.learned(now);
                if *quota == Some(Quota::RequestsPerDay) {
                    lane.exhaust_day(now.pacific_day());
                }
                match (quota, retry_after) {
                    (_, Some(delay)) => lane.cool_until(now.plus(*delay)),
                    (None, None) => lane.strike(now, BARE_429_BACKOFF),
                    // A per-minute quota with no delay: its window is a minute at most.
                    (Some(_), None) => lane.cool_until(now.plus_millis(self.span_ms)),
                }
                // New, or seen again (which restarts its week): keep it.
                if let Some(after) =
                    after.filter(|a| Some(*a) != before || learned != LimitsOverride::default())
                {
                    self.changes
                        .push(Change::Learned(grant.key, grant.model.clone(), after));
                }
            }
            Penalty::Transient => {
                self.settle(id, grant.tokens);
                let lane = self
                    .lanes
                    .entry((grant.key, grant.model.clone()))
                    .or_default();
                lane.strike(now, TRANSIENT_BACKOFF);
            }
            Penalty::KeyInvalid(reason) => {
                self.release(id);
                self.set_key_state(grant.key, KeyState::Invalid(reason.clone()));
            }
            Penalty::KeyBlocked(reason) => {
                self.release(id);
                self.set_key_state(grant.key, KeyState::Blocked(reason.clone()));
            }
        }
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

    /// How operators tell key `key` (0-based) apart: `…abcd`.
    pub fn fingerprint(&self, key: usize) -> &str {
        &self.fingerprints[key]
    }

    pub fn key_count(&self) -> usize {
        self.states.len()
    }

    pub fn key_state(&self, key: usize) -> Option<&KeyState> {
        self.states.get(key)
    }

    /// Sets a key's state (operator enable/disable, start-up validation).
    pub fn set_key_state(&mut self, key: usize, state: KeyState) -> Option<KeyState> {
        let slot = self.states.get_mut(key)?;
        if *slot != state {
            *slot = state.clone();
            self.changes.push(Change::KeyState(key, state.clone()));
        }
        Some(state)
    }

    /// Whether at least one key can serve.
    pub fn ready(&self) -> bool {
        (0..self.states.len()).any(|k| self.usable(k))
    }

    /// Everything `/status` shows, as of `now`.
    pub fn snapshot(&self, now: Timestamp) -> Snapshot {
        let keys = (0..self.states.len())
            .map(|key| KeySnapshot {
                index: key + 1,
                fingerprint: self.fingerprints[key].clone(),
                state: self.states[key].clone(),
                models: self
                    .chain
                    .iter()
                    .map(|model| {
                        let lane = self.lanes.get(&(key, model.clone()));
                        let empty = Lane::default();
                        let lane = lane.unwrap_or(&empty);
                        let snapshot = LaneSnapshot {
                            limits: self.lane_resolved(key, model, now),
                            learned: lane.learned(now),
                            usage: lane.usage(now),
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
                key: g.key + 1,
                model: g.model.clone(),
                at: g.at,
                tokens: g.tokens,
                waiting: g.at > now,
            })
            .collect();
        grants.sort_by_key(|g| (g.at, g.id));
        grants.truncate(SNAPSHOT_GRANTS);
        Snapshot {
            mode: self.mode,
            chain: self.chain.clone(),
            limits: self
                .chain
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

#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub mode: Mode,
    pub chain: Vec<String>,
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
    pub index: usize,
    pub fingerprint: String,
    #[serde(flatten)]
    pub state: KeyState,
    pub models: BTreeMap<String, LaneSnapshot>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LaneSnapshot {
    /// The limits in force on this lane (learned ones included), with sources.
    pub limits: Resolved,
    pub learned: Option<LimitsOverride>,
    #[serde(flatten)]
    pub usage: LaneUsage,
}

#[derive(Clone, Debug, Serialize)]
pub struct GrantSnapshot {
    pub id: GrantId,
    pub key: usize,
    pub model: String,
    pub at: Timestamp,
    pub tokens: u64,
    pub waiting: bool,
}
