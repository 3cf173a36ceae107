//! The one task that owns the scheduler core in the running service.
//!
//! Handlers never touch quota state: they send a command over a channel and,
//! where they need one, get the answer on a oneshot. One owner means no locks
//! around the windows and no two plans interleaving. A [`GrantGuard`] stands
//! for a booked grant in a handler: dropped before the call was sent (the
//! client went away while waiting), it releases the grant; dropped after, the
//! booking stays, since the upstream may have counted the call.

use super::core::{Change, Grant, KeyState, Penalty, PlanError, PlanRequest, Scheduler, Snapshot};
use super::lane::GrantId;
use crate::clock::{Clock, Timestamp};
use crate::policy::{LimitsOverride, Mode};
use crate::store::{Ledger, Record};
use std::collections::BTreeMap;
use tokio::sync::{mpsc, oneshot, watch};

enum Command {
    Plan(PlanRequest, oneshot::Sender<Result<Grant, PlanError>>),
    Settle(GrantId, u64),
    Release(GrantId),
    Penalise(GrantId, Penalty),
    SetMode(Mode),
    SetChain(Vec<String>),
    SetFetched(BTreeMap<String, LimitsOverride>),
    SetKeyState(usize, KeyState, oneshot::Sender<Option<KeyState>>),
    Snapshot(oneshot::Sender<Snapshot>),
}

/// A cheap, cloneable way to talk to the scheduler task.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::UnboundedSender<Command>,
    clock: Clock,
    usable: watch::Receiver<Vec<bool>>,
}

/// The actor has stopped (the service is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the scheduler has stopped")]
pub struct Stopped;

/// Where the actor sends the changes that must survive a restart.
pub struct Journal {
    pub ledger: Ledger,
    /// Each key's [`crate::keys::ApiKey::stable_id`], by index.
    pub key_ids: Vec<String>,
    /// The mode the configuration asked for (a run-time change is kept
    /// against it, so a changed configuration wins over an old override).
    pub configured_mode: Mode,
}

impl Journal {
    fn keep(&self, change: Change, now: Timestamp) {
        let record = match change {
            Change::KeyState(key, state) => Record::KeyState {
                key_id: self.key_ids[key].clone(),
                state,
            },
            Change::Learned(key, model, learned) => Record::Learned {
                key_id: self.key_ids[key].clone(),
                model,
                learned,
                at: now,
            },
            Change::Mode(mode) => Record::Mode {
                mode,
                configured: self.configured_mode,
            },
        };
        self.ledger.record(record);
    }
}

impl SchedulerHandle {
    /// Starts the task that owns `core`. It runs until every handle is dropped.
    pub fn spawn(core: Scheduler, clock: Clock, log_decisions: bool, journal: Journal) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (usable_tx, usable) = watch::channel(usable_keys(&core));
        tokio::spawn(run(core, clock, rx, usable_tx, log_decisions, journal));
        SchedulerHandle { tx, clock, usable }
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Which keys (0-based) are usable now; updated whenever a state changes.
    pub fn usable_keys(&self) -> Vec<bool> {
        self.usable.borrow().clone()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    fn tell(&self, command: Command) {
        // If the actor is gone the service is stopping; nothing is left to update.
        let _ = self.tx.send(command);
    }

    /// Books a grant. The guard releases it if dropped before the call is sent.
    pub async fn plan(
        &self,
        request: PlanRequest,
    ) -> Result<Result<GrantGuard, PlanError>, Stopped> {
        let planned = self.ask(|reply| Command::Plan(request, reply)).await?;
        Ok(planned.map(|grant| GrantGuard {
            grant,
            handle: self.clone(),
            phase: Phase::Booked,
        }))
    }

    pub fn set_mode(&self, mode: Mode) {
        self.tell(Command::SetMode(mode));
    }

    pub fn set_chain(&self, chain: Vec<String>) {
        self.tell(Command::SetChain(chain));
    }

    /// Puts a validated policy fetch in force.
    pub fn set_fetched(&self, fetched: BTreeMap<String, LimitsOverride>) {
        self.tell(Command::SetFetched(fetched));
    }

    /// Changes key `key`'s (0-based) state; `None` if there is no such key.
    pub async fn set_key_state(
        &self,
        key: usize,
        state: KeyState,
    ) -> Result<Option<KeyState>, Stopped> {
        self.ask(|reply| Command::SetKeyState(key, state, reply))
            .await
    }

    pub async fn snapshot(&self) -> Result<Snapshot, Stopped> {
        self.ask(Command::Snapshot).await
    }
}

fn usable_keys(core: &Scheduler) -> Vec<bool> {
    (0..core.key_count())
        .map(|k| core.key_state(k) == Some(&KeyState::Healthy))
        .collect()
}

async fn run(
    mut core: Scheduler,
    clock: Clock,
    mut rx: mpsc::UnboundedReceiver<Command>,
    usable: watch::Sender<Vec<bool>>,
    log_decisions: bool,
    journal: Journal,
) {
    while let Some(command) = rx.recv().await {
        let now = clock.now();
        match command {
            Command::Plan(request, reply) => {
                let planned = core.plan(&request, now);
                if log_decisions {
                    log_decision(&core, &request, &planned, now);
                }
                if let Err(Ok(grant)) = reply.send(planned) {
                    // The handler went away between asking and hearing back.
                    core.release(grant.id);
                }
            }
            Command::Settle(id, tokens) => core.settle(id, tokens),
            Command::Release(id) => core.release(id),
            Command::Penalise(id, penalty) => core.penalise(id, &penalty, now),
            Command::SetMode(mode) => core.set_mode(mode),
            Command::SetChain(chain) => core.set_chain(chain),
            Command::SetFetched(fetched) => core.set_fetched(fetched),
            Command::SetKeyState(key, state, reply) => {
                let _ = reply.send(core.set_key_state(key, state));
            }
            Command::Snapshot(reply) => {
                let _ = reply.send(core.snapshot(now));
            }
        }
        for change in core.take_changes() {
            journal.keep(change, now);
        }
        usable.send_if_modified(|current| {
            let fresh = usable_keys(&core);
            let changed = *current != fresh;
            *current = fresh;
            changed
        });
    }
}

fn log_decision(
    core: &Scheduler,
    request: &PlanRequest,
    planned: &Result<Grant, PlanError>,
    now: crate::clock::Timestamp,
) {
    match planned {
        Ok(g) => {
            let fingerprint = core.fingerprint(g.key);
            tracing::info!(
                target: "gemini_flux::decision",
                grant = g.id,
                key = g.key + 1,
                fingerprint = %fingerprint,
                model = %g.model,
                tokens = g.tokens,
                wait_ms = g.at.since(now).as_millis() as u64,
                "granted"
            );
        }
        Err(e) => {
            tracing::info!(target: "gemini_flux::decision", tokens = request.tokens, "refused: {e}")
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Phase {
    Booked,
    Sent,
    Done,
}

/// A booked grant held by a request handler.
pub struct GrantGuard {
    grant: Grant,
    handle: SchedulerHandle,
    phase: Phase,
}

impl GrantGuard {
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// Sleeps until the grant's instant (tokio time, so pausable in tests).
    /// A grant that is due already goes at once: the timer wheel would round
    /// even a past deadline up to its next millisecond tick.
    pub async fn wait(&self) {
        if self.grant.at > self.handle.clock.now() {
            tokio::time::sleep_until(self.handle.clock.instant_at(self.grant.at)).await;
        }
    }

    /// The call is about to leave: from now on the booking is kept.
    pub fn mark_sent(&mut self) {
        self.phase = Phase::Sent;
    }

    /// The call succeeded (or reached the upstream): keep the booking with the
    /// tokens the upstream counted.
    pub fn settle(mut self, input_tokens: u64) {
        self.phase = Phase::Done;
        self.handle
            .tell(Command::Settle(self.grant.id, input_tokens));
    }

    /// The call failed in a way the scheduler learns from.
    pub fn penalise(mut self, penalty: Penalty) {
        self.phase = Phase::Done;
        self.handle.tell(Command::Penalise(self.grant.id, penalty));
    }
}

impl Drop for GrantGuard {
    fn drop(&mut self) {
        match self.phase {
            Phase::Booked => self.handle.tell(Command::Release(self.grant.id)),
            Phase::Sent => self
                .handle
                .tell(Command::Settle(self.grant.id, self.grant.tokens)),
            Phase::Done => {}
        }
    }
}
