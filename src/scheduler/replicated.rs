//! The scheduler core shared by replicas through Redis.
//!
//! Each replica keeps its own [`Scheduler`], but only as a working copy.
//! Before a decision it reads the lanes the decision depends on (one
//! MULTI/EXEC), applies the very rules a single instance applies, and commits
//! the one lane it changed with `commit_lane.lua`, which writes only if no
//! lane it read has moved since. If one has, another replica decided first:
//! read again, decide again. So the rules exist once (`core` and `lane`), and
//! no decision made on a stale copy ever reaches the shared state. Settle,
//! release and penalise go the same way on the grant's own lane.
//!
//! It fails closed. While Redis cannot be reached a plan is refused (503
//! with `Retry-After`) rather than made from a copy another replica may be
//! spending. If Redis comes back without its data (its epoch changed), plans
//! wait one window, so that calls made before the loss have left it.

use super::core::{Change, Grant, KeyState, Penalty, PlanError, PlanRequest, Scheduler};
use super::lane::{GrantId, Lane, WINDOW};
use crate::clock::Timestamp;
use crate::policy::Mode;
use crate::store::StoreError;
use crate::store::redis::{self, LaneId, SharedLanes};
use std::time::Duration;

/// How many times one decision may find the shared state moved under it
/// before the request is refused; each such conflict means another replica
/// made progress.
const MAX_CONFLICTS: usize = 64;

/// After the n-th conflict in a row, a decision waits a random time of up to
/// this × 2^n (at most 64×) before it reads again, so replicas that keep
/// colliding fall out of step instead of colliding again.
const CONFLICT_BACKOFF: Duration = Duration::from_micros(50);

/// Waits before the next attempt of a decision that met its `n`-th conflict.
async fn back_off_after_conflict(n: usize) {
    let most = CONFLICT_BACKOFF * (1u32 << n.min(6));
    let wait = most.mul_f64(rand::random::<f64>());
    tokio::time::sleep(wait).await;
}

/// A lane as it is written to Redis (compact JSON, see `lane::Stored`).
fn shared_form(lane: &Lane) -> String {
    serde_json::to_string(lane).expect("a lane serialises")
}

/// A request refused for want of Redis is told to come back this much later.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// After Redis failed, nothing asks it again for this long: twice its
/// timeout, so a Redis that stops answering holds the actor at most half the
/// time, and every request in between is refused at once.
const BACKOFF: Duration = redis::TIMEOUT.saturating_mul(2);

pub struct Replicated {
    core: Scheduler,
    shared: SharedLanes,
    /// Each key's stable id, by index: how lanes and key states are named in Redis.
    key_ids: Vec<String>,
    configured_mode: Mode,
    /// The window plus the guard.
    span: Duration,
    /// The Redis epoch this replica last saw.
    epoch: String,
    /// After Redis lost its data, plans wait until then.
    hold_until: Timestamp,
    /// Why the shared state could not be used last time, if it could not.
    problem: Option<String>,
    /// While `problem` stands, requests do not try Redis again before this.
    next_attempt: Timestamp,
    /// Commits refused because another replica changed a lane first.
    conflicts: u64,
}

/// A plan refused for want of the shared state, to be asked again shortly.
fn refused(reason: String, now: Timestamp) -> PlanError {
    PlanError::SharedStateUnavailable {
        reason,
        retry_at: now.plus(RETRY_AFTER),
    }
}

/// An operation on a grant's lane, replayed on a fresh copy after a conflict.
type LaneOp<'a> = &'a (dyn Fn(&mut Scheduler, GrantId, Timestamp) + Sync);

impl Replicated {
    /// Takes `core` (restored and validated by start-up) into the shared state.
    pub async fn join(
        mut core: Scheduler,
        mut shared: SharedLanes,
        key_ids: Vec<String>,
        configured_mode: Mode,
        guard: Duration,
    ) -> Result<Replicated, StoreError> {
        let epoch = shared
            .claim_epoch()
            .await
            .map_err(|e| StoreError::Write(format!("Redis: {e}")))?;
        // Each replica numbers its grants in its own range of 2^32.
        core.number_grants_from(u64::from(rand::random::<u32>()) << 32 | 1);
        Ok(Replicated {
            core,
            shared,
            key_ids,
            configured_mode,
            span: WINDOW + guard,
            epoch,
            hold_until: Timestamp(i64::MIN),
            problem: None,
            next_attempt: Timestamp(i64::MIN),
            conflicts: 0,
        })
    }

    pub fn core(&self) -> &Scheduler {
        &self.core
    }

    /// For what stays local to each replica: the chain and the fetched policy.
    pub fn core_mut(&mut self) -> &mut Scheduler {
        &mut self.core
    }

    /// Why the shared state is unusable now, if it is.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// How many commits found a lane changed by another replica (each one
    /// was decided again).
    pub fn conflicts(&self) -> u64 {
        self.conflicts
    }

    fn lane_id(&self, key: usize, model: &str) -> LaneId {
        (self.key_ids[key].clone(), model.to_string())
    }

    /// Every lane: each key on each model of the chain, in chain order.
    fn all_lanes(&self) -> Vec<(usize, String)> {
        self.core
            .chain()
            .iter()
            .flat_map(|m| (0..self.key_ids.len()).map(move |k| (k, m.clone())))
            .collect()
    }

    /// Reads `lanes`, the mode and the key states into the working copy;
    /// answers each lane's version.
    async fn read(
        &mut self,
        lanes: &[(usize, String)],
        now: Timestamp,
    ) -> Result<Vec<u64>, String> {
        let ids: Vec<LaneId> = lanes.iter().map(|(k, m)| self.lane_id(*k, m)).collect();
        let view = match self.shared.read(&ids).await {
            Ok(view) => view,
            Err(e) => return Err(self.failed(e.to_string(), now)),
        };
        self.problem = None;
        if view.epoch.as_deref() != Some(self.epoch.as_str()) {
            self.hold_until = now.plus(self.span);
            tracing::warn!(
                "Redis lost the shared quota state (restarted without persistence?): holding new plans until {} so calls made before have left the window; today's per-day counts start again",
                self.hold_until
            );
            self.epoch = match view.epoch {
                Some(theirs) => theirs,
                None => match self.shared.claim_epoch().await {
                    Ok(epoch) => epoch,
                    Err(e) => return Err(self.failed(e.to_string(), now)),
                },
            };
        }
        if let Some((mode, configured)) = view.mode
            && configured == self.configured_mode
        {
            self.core.adopt_mode(mode);
        }
        for (key, id) in self.key_ids.iter().enumerate() {
            if let Some(state) = view.key_states.get(id) {
                self.core.adopt_key_state(key, state.clone());
            }
        }
        let mut versions = Vec::with_capacity(lanes.len());
        for ((key, model), (version, state)) in lanes.iter().zip(view.lanes) {
            let lane = state
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or_default();
            self.core.put_lane(*key, model, lane);
            versions.push(version);
        }
        Ok(versions)
    }

    /// Refuses plans until the window after Redis lost its data has passed.
    fn holding(&self, now: Timestamp) -> Result<(), PlanError> {
        if now < self.hold_until {
            return Err(PlanError::SharedStateUnavailable {
                reason: "Redis lost its data; waiting for calls made before to leave the window"
                    .into(),
                retry_at: self.hold_until,
            });
        }
        Ok(())
    }

    /// Notes that Redis failed; answers the reason.
    fn failed(&mut self, reason: String, now: Timestamp) -> String {
        self.problem = Some(reason.clone());
        self.next_attempt = now.plus(BACKOFF);
        reason
    }

    /// Whether to spare Redis this request: it failed moments ago.
    fn backing_off(&self, now: Timestamp) -> bool {
        self.problem.is_some() && now < self.next_attempt
    }

    /// Redis failed this plan: note it, and refuse.
    fn unavailable(&mut self, reason: String, now: Timestamp) -> PlanError {
        refused(self.failed(reason, now), now)
    }

    /// [`Scheduler::plan`] against the shared state: read, decide, commit if
    /// nothing the decision read has moved, else again.
    pub async fn plan(
        &mut self,
        request: &PlanRequest,
        now: Timestamp,
    ) -> Result<Grant, PlanError> {
        self.holding(now)?;
        if self.backing_off(now) {
            return Err(refused(self.problem.clone().unwrap_or_default(), now));
        }
        let lanes = self.all_lanes();
        for attempt in 0..MAX_CONFLICTS {
            let versions = match self.read(&lanes, now).await {
                Ok(v) => v,
                Err(e) => return Err(self.unavailable(e, now)),
            };
            // The read may just have found that Redis lost its data.
            self.holding(now)?;
            let grant = self.core.plan(request, now)?;
            // The decision read the lanes of every model up to the chosen one.
            let chain = self.core.chain();
            let rank = |m: &str| chain.iter().position(|c| c == m);
            let chosen = rank(&grant.model);
            let read: Vec<(LaneId, u64)> = lanes
                .iter()
                .zip(versions)
                .filter(|((_, m), _)| rank(m) <= chosen)
                .map(|((k, m), v)| (self.lane_id(*k, m), v))
                .collect();
            let target = self.lane_id(grant.key, &grant.model);
            let write = read
                .iter()
                .position(|(id, _)| *id == target)
                .expect("the chosen lane was read");
            let lane = self.core.lane(grant.key, &grant.model);
            match self.shared.commit(&read, write, &shared_form(&lane)).await {
                Ok(true) => return Ok(grant),
                // Another replica decided first: this copy is stale.
                Ok(false) => {
                    self.conflicts += 1;
                    self.core.release(grant.id);
                    back_off_after_conflict(attempt).await;
                }
                Err(e) => {
                    self.core.release(grant.id);
                    return Err(self.unavailable(e.to_string(), now));
                }
            }
        }
        // Redis is fine, only busy: refuse this one without marking it down.
        Err(refused(
            format!("the shared state moved under {MAX_CONFLICTS} decisions in a row"),
            now,
        ))
    }

    /// Applies `op` to grant `id`'s lane and commits it, retrying on
    /// conflicts. If Redis cannot take it, the working copy still does and
    /// Redis keeps the booking as it was (the estimate, the capacity held):
    /// on the safe side until the booking leaves the window.
    async fn on_grant_lane(&mut self, id: GrantId, now: Timestamp, op: LaneOp<'_>) {
        let Some(grant) = self.core.grant(id).cloned() else {
            return;
        };
        let lane = [(grant.key, grant.model.clone())];
        let read_id = self.lane_id(grant.key, &grant.model);
        let attempts = if self.backing_off(now) {
            0
        } else {
            MAX_CONFLICTS
        };
        for attempt in 0..attempts {
            let Ok(versions) = self.read(&lane, now).await else {
                break;
            };
            let version = versions[0];
            self.core.hold_grant(grant.clone());
            op(&mut self.core, id, now);
            let after = self.core.lane(grant.key, &grant.model);
            match self
                .shared
                .commit(&[(read_id.clone(), version)], 0, &shared_form(&after))
                .await
            {
                Ok(true) => {
                    self.publish_changes().await.ok();
                    return;
                }
                Ok(false) => {
                    self.conflicts += 1;
                    back_off_after_conflict(attempt).await;
                }
                Err(e) => {
                    self.failed(e.to_string(), now);
                    break;
                }
            }
        }
        tracing::warn!(
            grant = id,
            "could not share the end of a grant with the other replicas: {}",
            self.problem.as_deref().unwrap_or("the lane kept moving")
        );
        // Unless an attempt already applied it to the working copy (then
        // only its commit failed), apply it there now.
        if self.core.grant(id).is_some() {
            op(&mut self.core, id, now);
        }
        self.publish_changes().await.ok();
    }

    pub async fn settle(&mut self, id: GrantId, input_tokens: u64, now: Timestamp) {
        self.on_grant_lane(id, now, &move |core, id, _| core.settle(id, input_tokens))
            .await;
    }

    pub async fn keep(&mut self, id: GrantId, input_tokens: u64, now: Timestamp) {
        self.on_grant_lane(id, now, &move |core, id, _| core.keep(id, input_tokens))
            .await;
    }

    pub async fn release(&mut self, id: GrantId, now: Timestamp) {
        self.on_grant_lane(id, now, &|core, id, _| core.release(id))
            .await;
    }

    pub async fn penalise(&mut self, id: GrantId, penalty: &Penalty, now: Timestamp) {
        self.on_grant_lane(id, now, &|core, id, now| core.penalise(id, penalty, now))
            .await;
    }

    /// Sets a key's state on every replica; refused (and undone here) if
    /// Redis cannot take it, so a change never holds on one replica only.
    pub async fn set_key_state(
        &mut self,
        key: usize,
        state: KeyState,
    ) -> Result<Option<KeyState>, String> {
        let Some(before) = self.core.key_state(key).cloned() else {
            return Ok(None);
        };
        let set = self.core.set_key_state(key, state);
        if let Err(e) = self.publish_changes().await {
            self.core.adopt_key_state(key, before);
            return Err(e);
        }
        Ok(set)
    }

    /// Sets the mode on every replica; refused and undone like a key state.
    pub async fn set_mode(&mut self, mode: Mode) -> Result<(), String> {
        let before = self.core.mode();
        self.core.set_mode(mode);
        let published = self.publish_changes().await;
        if published.is_err() {
            self.core.adopt_mode(before);
        }
        published
    }

    /// Writes the operator's (and the upstream's) key and mode decisions
    /// where every replica reads them. Learned limits travel in their lane.
    async fn publish_changes(&mut self) -> Result<(), String> {
        for change in self.core.take_changes() {
            if let Some(lesson) = change.lesson() {
                tracing::warn!("{lesson}");
            }
            let written = match change {
                Change::KeyState(key, state) => {
                    self.shared.set_key_state(&self.key_ids[key], &state).await
                }
                Change::Mode(mode) => self.shared.set_mode(mode, self.configured_mode).await,
                Change::Learned { .. } | Change::Retired(_) => Ok(()),
            };
            if let Err(e) = written {
                self.problem = Some(e.to_string());
                return Err(e.to_string());
            }
        }
        Ok(())
    }

    /// Refreshes the whole working copy (for `/status`, and every tick so
    /// that an idle replica still sees other replicas' key and mode changes,
    /// and notices Redis leaving and coming back).
    pub async fn pull(&mut self, now: Timestamp) {
        if self.backing_off(now) {
            return;
        }
        let lanes = self.all_lanes();
        let _ = self.read(&lanes, now).await;
    }
}
