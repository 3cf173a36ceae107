//! The one seam every quota decision runs through: read the lanes it needs,
//! let the pure core decide, commit.
//!
//! A [`Decision`] says which lanes it reads, how the core decides, which of
//! the lanes read its outcome depends on, and what it answers when the
//! shared state cannot take it. A [`QuotaState`] runs it:
//! [`Alone`](super::alone::Alone) once, on the core it owns, journalling
//! what must outlive the process;
//! [`Replicated`](super::replicated::Replicated) on a working copy read from
//! Redis, committed with compare-and-set, and decided again on a conflict.
//! The actor is generic over the two and never asks which one it has.

use super::core::{Grant, KeyIndex, KeyState, Penalty, PlanError, PlanRequest, Scheduler, Spent};
use super::lane::GrantId;
use crate::clock::Timestamp;
use crate::policy::Mode;
use std::future::Future;

/// A lane of the core: (key, model).
pub type LaneKey = (KeyIndex, String);

/// Why the shared quota state cannot take a decision now, and when to ask
/// again.
#[derive(Debug)]
pub struct Refused {
    pub reason: String,
    pub retry_at: Timestamp,
}

/// How a replica's sharing goes, for `/status` and `/readyz`.
#[derive(Clone, Debug)]
pub struct Sharing {
    /// Why the shared state is unusable now, if it is.
    pub problem: Option<String>,
    /// Decisions made again because another replica changed a lane first.
    pub conflicts: u64,
    /// Plans are held until then (Redis lost its data; calls made before
    /// may still fill the window).
    pub holding_until: Timestamp,
}

/// Who holds the quota state, and runs every decision on it.
pub trait QuotaState: Send + 'static {
    /// The core: the truth alone, a replica's working copy as last read.
    fn core(&self) -> &Scheduler;

    /// For what each process keeps for itself (the chain, the fetched
    /// policy): not quota state, so not shared.
    fn core_mut(&mut self) -> &mut Scheduler;

    /// Reads what `decision` needs, lets the core decide, commits.
    fn run<D: Decision>(
        &mut self,
        decision: &D,
        now: Timestamp,
    ) -> impl Future<Output = D::Output> + Send;

    /// `None` alone; a replica's problem and conflicts so far.
    fn sharing(&self) -> Option<Sharing>;
}

/// One decision on the quota state, as the seam runs it.
pub trait Decision: Sync {
    type Output: Send;

    /// The lanes the core reads to decide; `None` for a decision on what
    /// lives outside the lanes (an operator's key state or mode).
    fn reads(&self, core: &Scheduler) -> Option<Vec<LaneKey>>;

    /// Whether it takes capacity: a replica holds such decisions while
    /// calls made before Redis lost its data may still fill the window.
    fn books(&self) -> bool {
        false
    }

    /// The core's decision; a replica may run it again on a fresh copy.
    fn decide(&self, core: &mut Scheduler, now: Timestamp) -> Self::Output;

    /// Whether `outcome` depends on `lane` as it was read (then its version
    /// is checked at commit). Every lane the decision changed is checked
    /// whatever this says.
    fn depends_on(&self, _core: &Scheduler, _outcome: &Self::Output, _lane: &LaneKey) -> bool {
        true
    }

    /// Takes an outcome that is not committed out of the core's grants (the
    /// seam puts its lanes, the mode and the key states back as read).
    fn undo(&self, _core: &mut Scheduler, _outcome: Self::Output) {}

    /// The answer when the shared state cannot take the decision; `core` is
    /// as it was before the decision.
    fn unshared(&self, core: &mut Scheduler, refused: Refused, now: Timestamp) -> Self::Output;
}

/// Every lane `/status` shows: each key on each model of the chain, in
/// chain order, then on each model outside it that a request has used.
fn every_lane(core: &Scheduler) -> Vec<LaneKey> {
    core.models_shown()
        .iter()
        .flat_map(|m| KeyIndex::all(core.key_count()).map(move |k| (k, m.clone())))
        .collect()
}

/// Books a grant ([`Scheduler::plan`]).
pub struct Plan<'a>(pub &'a PlanRequest);

impl Decision for Plan<'_> {
    type Output = Result<Grant, PlanError>;

    fn reads(&self, core: &Scheduler) -> Option<Vec<LaneKey>> {
        Some(core.lanes_to_plan(&self.0.target))
    }

    fn books(&self) -> bool {
        true
    }

    fn decide(&self, core: &mut Scheduler, now: Timestamp) -> Self::Output {
        core.plan(self.0, now)
    }

    /// A grant depends on the lanes of every model up to the chosen one (a
    /// later model's lanes were never looked at).
    fn depends_on(&self, core: &Scheduler, outcome: &Self::Output, (_, model): &LaneKey) -> bool {
        let rank = |m: &str| core.chain().iter().position(|c| c == m);
        match outcome {
            Ok(grant) => rank(model) <= rank(&grant.model),
            Err(_) => true,
        }
    }

    fn undo(&self, core: &mut Scheduler, outcome: Self::Output) {
        if let Ok(grant) = outcome {
            core.release(grant.id);
        }
    }

    fn unshared(&self, _: &mut Scheduler, refused: Refused, _: Timestamp) -> Self::Output {
        Err(PlanError::SharedStateUnavailable {
            reason: refused.reason,
            retry_at: refused.retry_at,
        })
    }
}

/// How a grant ends.
#[derive(Debug)]
pub enum End {
    /// The upstream served the call: keep the booking with what it spent.
    Settle(Spent),
    /// The call counted (or may have) but was not served: keep the booking,
    /// learn nothing.
    Keep(Spent),
    /// The call was never made.
    Release,
    /// The call failed in a way the scheduler learns from.
    Penalise(Penalty),
}

/// Ends a grant the core holds.
struct EndGrant {
    grant: Grant,
    end: End,
}

/// Ends grant `id` as `how` says, unless it has ended already (or was
/// never held here).
pub async fn end(state: &mut impl QuotaState, id: GrantId, how: End, now: Timestamp) {
    if let Some(grant) = state.core().grant(id).cloned() {
        state.run(&EndGrant { grant, end: how }, now).await;
    }
}

impl Decision for EndGrant {
    type Output = ();

    /// Every lane of the grant's tier on its model: a 429's lesson, and a
    /// re-check that got through, spread there.
    fn reads(&self, core: &Scheduler) -> Option<Vec<LaneKey>> {
        let model = &self.grant.model;
        let tier = core.tier(self.grant.key, model);
        Some(tier.into_iter().map(|k| (k, model.clone())).collect())
    }

    /// On nothing it left alone: it changes each lane from that lane alone
    /// (a lesson from the lane's own limits, a settle on the grant's own
    /// booking), so a sibling's booking elsewhere cannot make it wrong.
    /// Checking the whole tier made settles decide again about four times
    /// as often as before when three replicas planned and settled at once.
    fn depends_on(&self, _: &Scheduler, _: &(), _: &LaneKey) -> bool {
        false
    }

    fn decide(&self, core: &mut Scheduler, now: Timestamp) {
        // Held again, so that a decision made again on a fresh copy ends it.
        core.hold_grant(self.grant.clone());
        let id = self.grant.id;
        match &self.end {
            End::Settle(spent) => core.settle(id, *spent),
            End::Keep(spent) => core.keep(id, *spent),
            End::Release => core.release(id),
            End::Penalise(penalty) => core.penalise(id, penalty, now),
        }
    }

    /// Ended here only: Redis keeps the booking as it was (the estimate, the
    /// capacity held), on the safe side until it leaves the window.
    fn unshared(&self, core: &mut Scheduler, refused: Refused, now: Timestamp) {
        tracing::warn!(
            grant = self.grant.id,
            "could not share the end of a grant with the other replicas: {}",
            refused.reason
        );
        self.decide(core, now);
    }
}

/// Sets the mode everywhere; refused (and undone) if it cannot be shared,
/// so a change never holds on one replica only.
pub struct SetMode(pub Mode);

impl Decision for SetMode {
    type Output = Result<(), String>;

    fn reads(&self, _: &Scheduler) -> Option<Vec<LaneKey>> {
        None
    }

    fn decide(&self, core: &mut Scheduler, _: Timestamp) -> Self::Output {
        core.set_mode(self.0);
        Ok(())
    }

    fn unshared(&self, _: &mut Scheduler, refused: Refused, _: Timestamp) -> Self::Output {
        Err(refused.reason)
    }
}

/// Sets a key's (0-based) state everywhere, like [`SetMode`]; answers
/// `None` if there is no such key.
pub struct SetKeyState(pub KeyIndex, pub KeyState);

impl Decision for SetKeyState {
    type Output = Result<Option<KeyState>, String>;

    fn reads(&self, _: &Scheduler) -> Option<Vec<LaneKey>> {
        None
    }

    fn decide(&self, core: &mut Scheduler, _: Timestamp) -> Self::Output {
        Ok(core.set_key_state(self.0, self.1.clone()))
    }

    fn unshared(&self, _: &mut Scheduler, refused: Refused, _: Timestamp) -> Self::Output {
        Err(refused.reason)
    }
}

/// Decides nothing: refreshes a replica's working copy (for `/status`, and
/// every tick so that an idle replica sees the others' key and mode
/// changes, and notices Redis leaving and coming back).
pub struct Pull;

impl Decision for Pull {
    type Output = ();

    fn reads(&self, core: &Scheduler) -> Option<Vec<LaneKey>> {
        Some(every_lane(core))
    }

    fn decide(&self, _: &mut Scheduler, _: Timestamp) {}

    fn unshared(&self, _: &mut Scheduler, _: Refused, _: Timestamp) {}
}
