//! The quota state shared by replicas through Redis: the seam's replica side.
//!
//! Each replica keeps its own [`Scheduler`], but only as a working copy.
//! Every [`Decision`] runs the same way: read the lanes it needs, with the
//! mode and the key states (one MULTI/EXEC); let the very rules a single
//! instance applies decide; publish the key states and the mode it set; and
//! commit every lane it changed with `commit_lanes.lua`, which writes only
//! if no lane the decision depends on has moved since. If one has, another
//! replica decided first: put the copy back, wait a random moment, read
//! again, decide again. So the rules exist once (`core` and `lane`), and no
//! decision made on a stale copy ever reaches the shared state; what a
//! decision changes on other lanes than its grant's (a 429's lesson spread
//! over the tier, a tier marked for the day's re-check of a learned 0)
//! travels with it.
//!
//! It fails closed. While Redis cannot be reached a plan is refused (503
//! with `Retry-After`) rather than made from a copy another replica may be
//! spending, an operator's change is refused and undone, and a grant ends
//! here only (see [`Decision::unshared`]). If Redis comes back without its
//! data (its epoch changed), plans wait one window, so that calls made
//! before the loss have left it.

mod shared_lanes;

pub use shared_lanes::{LaneId, SharedLanes};

use super::core::{Change, KeyIndex, KeyState, Scheduler};
use super::lane::Lane;
use super::seam::{Decision, LaneKey, QuotaState, Refused, Sharing};
use crate::clock::Timestamp;
use crate::policy::{Mode, Quota};
use crate::store::StoreError;
use crate::store::redis::TIMEOUT;
use redis::RedisError;
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

/// Whether a decision changed a lane from how it was read. Dropping what
/// has left every window is no change: every reader drops it alike, and
/// writing it would only move the lane under the other replicas.
fn changed(read: &Lane, decided: &Lane, now: Timestamp, guard: Duration) -> bool {
    if decided == read {
        return false;
    }
    let mut dropped = read.clone();
    dropped.forget_before(now, now.pacific_day(), guard);
    *decided != dropped
}

/// A request refused for want of Redis is told to come back this much later.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// After Redis failed, nothing asks it again for this long: twice its
/// timeout, so a Redis that stops answering holds the actor at most half the
/// time, and every request in between is refused at once.
const BACKOFF: Duration = TIMEOUT.saturating_mul(2);

/// Refused now; to be asked again shortly.
fn refused(reason: String, now: Timestamp) -> Refused {
    Refused {
        reason,
        retry_at: now.plus(RETRY_AFTER),
    }
}

pub struct Replicated {
    core: Scheduler,
    shared: SharedLanes,
    /// Each key's stable id, by index: how lanes and key states are named in Redis.
    key_ids: Vec<String>,
    configured_mode: Mode,
    /// `FLUX_GUARD_MS`.
    guard: Duration,
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

/// The working copy as a decision found it: put back if the decision is
/// not committed.
struct Found {
    /// Each lane read, with its version.
    lanes: Vec<(LaneKey, u64, Lane)>,
    mode: Mode,
    key_states: Vec<KeyState>,
}

impl Found {
    fn of(core: &Scheduler, lanes: Vec<(LaneKey, u64, Lane)>) -> Found {
        Found {
            lanes,
            mode: core.mode(),
            key_states: KeyIndex::all(core.key_count())
                .filter_map(|k| core.key_state(k).cloned())
                .collect(),
        }
    }

    fn restore(self, core: &mut Scheduler) {
        for ((key, model), _, lane) in self.lanes {
            core.put_lane(key, &model, lane);
        }
        core.adopt_mode(self.mode);
        for (key, state) in KeyIndex::all(self.key_states.len()).zip(self.key_states) {
            core.adopt_key_state(key, state);
        }
    }
}

/// What one decision commits: the versions of the lanes it depends on, and
/// the new state of each lane it changed (by its place among them).
struct Commit {
    read: Vec<(LaneId, u64)>,
    writes: Vec<(usize, String)>,
}

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
            guard,
            epoch,
            hold_until: Timestamp(i64::MIN),
            problem: None,
            next_attempt: Timestamp(i64::MIN),
            conflicts: 0,
        })
    }

    fn lane_id(&self, (key, model): &LaneKey) -> LaneId {
        (self.key_ids[*key].clone(), model.clone())
    }

    /// Reads `lanes`, the mode and the key states into the working copy;
    /// answers the copy as found.
    async fn read(&mut self, lanes: &[LaneKey], now: Timestamp) -> Result<Found, Refused> {
        let ids: Vec<LaneId> = lanes.iter().map(|lane| self.lane_id(lane)).collect();
        let view = match self.shared.read(&ids).await {
            Ok(view) => view,
            Err(e) => return Err(self.failed(&e, now)),
        };
        self.problem = None;
        if view.epoch.as_deref() != Some(self.epoch.as_str()) {
            self.hold_until = now.plus(Quota::longest_sliding() + self.guard);
            tracing::warn!(
                "Redis lost the shared quota state (restarted without persistence?): holding new plans until {} so calls made before have left the window; today's per-day counts start again",
                self.hold_until
            );
            self.epoch = match view.epoch {
                Some(theirs) => theirs,
                None => match self.shared.claim_epoch().await {
                    Ok(epoch) => epoch,
                    Err(e) => return Err(self.failed(&e, now)),
                },
            };
        }
        if let Some((mode, configured)) = view.mode
            && configured == self.configured_mode
        {
            self.core.adopt_mode(mode);
        }
        for (key, id) in KeyIndex::all(self.key_ids.len()).zip(&self.key_ids) {
            if let Some(state) = view.key_states.get(id) {
                self.core.adopt_key_state(key, state.clone());
            }
        }
        let mut found = Vec::with_capacity(lanes.len());
        for ((key, model), (version, state)) in lanes.iter().zip(view.lanes) {
            let lane: Lane = state
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or_default();
            self.core.put_lane(*key, model, lane.clone());
            found.push(((*key, model.clone()), version, lane));
        }
        Ok(Found::of(&self.core, found))
    }

    /// Refuses plans until the window after Redis lost its data has passed.
    fn holding(&self, now: Timestamp) -> Result<(), Refused> {
        if now < self.hold_until {
            return Err(Refused {
                reason: "Redis lost its data; waiting for calls made before to leave the window"
                    .into(),
                retry_at: self.hold_until,
            });
        }
        Ok(())
    }

    /// Notes that Redis failed; nothing asks it again for a moment.
    fn failed(&mut self, e: &RedisError, now: Timestamp) -> Refused {
        let reason = e.to_string();
        self.problem = Some(reason.clone());
        self.next_attempt = now.plus(BACKOFF);
        refused(reason, now)
    }

    /// Whether to spare Redis this read: it failed moments ago.
    fn backing_off(&self, now: Timestamp) -> bool {
        self.problem.is_some() && now < self.next_attempt
    }

    /// What the decision changed against `found`, and what it depends on.
    fn commit_of<D: Decision>(
        &self,
        decision: &D,
        outcome: &D::Output,
        found: &Found,
        now: Timestamp,
    ) -> Commit {
        let mut commit = Commit {
            read: Vec::new(),
            writes: Vec::new(),
        };
        for (lane, version, read) in &found.lanes {
            let decided = self.core.lane(lane.0, &lane.1);
            let changed = changed(read, &decided, now, self.guard);
            if changed {
                commit
                    .writes
                    .push((commit.read.len(), shared_form(&decided)));
            }
            if changed || decision.depends_on(&self.core, outcome, lane) {
                commit.read.push((self.lane_id(lane), *version));
            }
        }
        commit
    }

    /// Publishes the key states and the mode the decision set, then writes
    /// the lanes it changed unless one it depends on has moved
    /// (`Ok(false)`).
    async fn commit(&mut self, commit: &Commit) -> Result<bool, RedisError> {
        self.publish().await?;
        if commit.writes.is_empty() {
            return Ok(true);
        }
        self.shared.commit(&commit.read, &commit.writes).await
    }

    /// Writes the operator's (and the upstream's) key and mode decisions
    /// where every replica reads them. Learned limits travel in their lane.
    async fn publish(&mut self) -> Result<(), RedisError> {
        for change in self.core.take_changes() {
            if let Some(lesson) = change.lesson() {
                tracing::warn!("{lesson}");
            }
            match change {
                Change::KeyState(key, state) => {
                    self.shared
                        .set_key_state(&self.key_ids[key], &state)
                        .await?
                }
                Change::Mode(mode) => self.shared.set_mode(mode, self.configured_mode).await?,
                Change::Learned { .. } | Change::Retired(_) => {}
            }
        }
        Ok(())
    }

    /// Reads, decides, commits if nothing the decision depends on has
    /// moved, else again; `Err` if the shared state could not take it (the
    /// working copy then is as before).
    async fn transact<D: Decision>(
        &mut self,
        decision: &D,
        now: Timestamp,
    ) -> Result<D::Output, Refused> {
        let lanes = decision.reads(&self.core);
        if decision.books() {
            self.holding(now)?;
        }
        if lanes.is_some() && self.backing_off(now) {
            return Err(refused(self.problem.clone().unwrap_or_default(), now));
        }
        for attempt in 0..MAX_CONFLICTS {
            let found = match &lanes {
                Some(lanes) => self.read(lanes, now).await?,
                None => Found::of(&self.core, Vec::new()),
            };
            // The read may just have found that Redis lost its data.
            if decision.books() {
                self.holding(now)?;
            }
            let outcome = decision.decide(&mut self.core, now);
            let commit = self.commit_of(decision, &outcome, &found, now);
            let committed = self.commit(&commit).await;
            if let Ok(true) = committed {
                return Ok(outcome);
            }
            decision.undo(&mut self.core, outcome);
            found.restore(&mut self.core);
            match committed {
                Err(e) => return Err(self.failed(&e, now)),
                // Another replica decided first: this copy was stale.
                _ => {
                    self.conflicts += 1;
                    back_off_after_conflict(attempt).await;
                }
            }
        }
        // Redis is fine, only busy: refuse this one without marking it down.
        Err(refused(
            format!("the shared state moved under {MAX_CONFLICTS} decisions in a row"),
            now,
        ))
    }
}

impl QuotaState for Replicated {
    fn core(&self) -> &Scheduler {
        &self.core
    }

    fn core_mut(&mut self) -> &mut Scheduler {
        &mut self.core
    }

    async fn run<D: Decision>(&mut self, decision: &D, now: Timestamp) -> D::Output {
        match self.transact(decision, now).await {
            Ok(outcome) => outcome,
            Err(refused) => {
                let outcome = decision.unshared(&mut self.core, refused, now);
                // What it decided here alone (a key taken out as a grant
                // ended) still goes to the others if Redis takes it now.
                if let Err(e) = self.publish().await {
                    self.failed(&e, now);
                }
                outcome
            }
        }
    }

    fn sharing(&self) -> Option<Sharing> {
        Some(Sharing {
            problem: self.problem.clone(),
            conflicts: self.conflicts,
            holding_until: self.hold_until,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::DayZone;
    use crate::policy::Usage;

    const GUARD: Duration = Duration::from_millis(250);
    const SPAN: Duration = Duration::from_secs(60).saturating_add(GUARD);
    /// 2026-06-10 12:00 Pacific.
    const NOON: Timestamp = Timestamp(1_781_118_000_000);

    #[test]
    fn dropping_what_left_every_window_is_no_change_to_commit() {
        let mut read = Lane::default();
        read.book(1, NOON, Usage::call(1_000), DayZone::PACIFIC);
        let later = NOON.plus(SPAN);
        let mut decided = read.clone();
        assert!(!changed(&read, &decided, later, GUARD), "untouched");
        decided.forget_before(later, later.pacific_day(), GUARD);
        assert_ne!(decided, read);
        assert!(!changed(&read, &decided, later, GUARD), "only dropped");
        decided.book(2, later, Usage::call(1_000), DayZone::PACIFIC);
        assert!(changed(&read, &decided, later, GUARD), "booked");
    }
}
