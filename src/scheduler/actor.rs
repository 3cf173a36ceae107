//! The one task that owns the quota state in the running service.
//!
//! Handlers never touch quota state: they send a command over a channel and,
//! where they need one, get the answer on a oneshot. One owner means no locks
//! around the windows and no two plans interleaving. A handler holds its
//! grant as a [`Booked`](super::grant::Booked), then an
//! [`InFlight`](super::grant::InFlight) call (see `super::grant`).
//!
//! The task owns the quota state through the seam ([`QuotaState`]): the core
//! [`Alone`] (one instance; changes journalled to the state store) or a
//! [`Replicated`] core (replicas sharing the keys through Redis). Every
//! command that touches quota state runs as a decision on it; a tick keeps
//! an idle replica's copy fresh.

use super::alone::{Alone, Journal};
use super::core::{Grant, KeyIndex, KeyState, PlanError, PlanRequest, Scheduler, Snapshot};
use super::grant::Booked;
use super::lane::GrantId;
use super::replicated::Replicated;
use super::seam::{End, Plan, Pull, QuotaState, SetKeyState, SetMode, end};
use crate::clock::{Clock, Timestamp};
use crate::policy::{LimitsOverride, Mode};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// How often a replica re-reads the shared state when it has nothing to do:
/// another replica's operator change takes effect here within this.
const REPLICA_TICK: Duration = Duration::from_millis(250);

pub(super) enum Command {
    Plan(PlanRequest, oneshot::Sender<Result<Grant, PlanError>>),
    End(GrantId, End),
    SetMode(Mode, oneshot::Sender<Result<(), String>>),
    SetChain(Vec<String>),
    SetFetched(BTreeMap<String, LimitsOverride>),
    SetKeyState(
        KeyIndex,
        KeyState,
        oneshot::Sender<Result<Option<KeyState>, String>>,
    ),
    Snapshot(oneshot::Sender<Snapshot>),
}

/// A cheap, cloneable way to talk to the scheduler task.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::UnboundedSender<Command>,
    clock: Clock,
    usable: watch::Receiver<Vec<bool>>,
    first_model: watch::Receiver<Option<String>>,
    shared: Option<watch::Receiver<SharedState>>,
}

/// Why the scheduler could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// The actor has stopped (the service is shutting down).
    #[error("the scheduler has stopped")]
    Stopped,
    /// A replica could not share the change with the others (Redis is
    /// unreachable), so it was refused and undone here too.
    #[error("the change could not be shared with the other replicas: {0}")]
    Unshared(String),
}

/// How a replica's shared state is doing, for `/status` and `/readyz`.
#[derive(Clone, Debug, Serialize)]
pub struct SharedState {
    pub backend: &'static str,
    /// The Redis URL, password masked.
    pub url: String,
    pub ok: bool,
    pub error: Option<String>,
    /// Decisions made again because another replica changed a lane first.
    pub conflicts: u64,
    /// Plans are refused until then: Redis lost its data, and calls made
    /// before may still fill the window. `None` when not holding.
    pub holding_until: Option<Timestamp>,
}

impl SharedState {
    /// Whether plans can be made now.
    pub fn accepts_plans(&self, now: Timestamp) -> bool {
        self.ok && self.holding_until.is_none_or(|t| t <= now)
    }
}

impl SchedulerHandle {
    /// Starts the task that owns `core`. It runs until every handle is dropped.
    pub fn spawn(core: Scheduler, clock: Clock, log_decisions: bool, journal: Journal) -> Self {
        Self::start(Alone::new(core, journal), clock, log_decisions, None)
    }

    /// Starts the task that owns a replica's core; `url` (masked) is shown
    /// in `/status`.
    pub fn spawn_replica(
        replicated: Replicated,
        clock: Clock,
        log_decisions: bool,
        url: String,
    ) -> Self {
        Self::start(replicated, clock, log_decisions, Some(url))
    }

    fn start(
        state: impl QuotaState,
        clock: Clock,
        log_decisions: bool,
        url: Option<String>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (usable_tx, usable) = watch::channel(usable_keys(state.core()));
        let (first_model_tx, first_model) = watch::channel(state.core().chain().first().cloned());
        let (shared_tx, shared) = match url {
            Some(url) => {
                let (tx, rx) = watch::channel(SharedState {
                    backend: "redis",
                    url,
                    ok: true,
                    error: None,
                    conflicts: 0,
                    holding_until: None,
                });
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let watchers = Watchers {
            usable: usable_tx,
            first_model: first_model_tx,
            shared: shared_tx,
        };
        tokio::spawn(run(state, clock, rx, watchers, log_decisions));
        SchedulerHandle {
            tx,
            clock,
            usable,
            first_model,
            shared,
        }
    }

    /// A replica's shared state (`None` for a single instance).
    pub fn shared_state(&self) -> Option<SharedState> {
        self.shared.as_ref().map(|s| s.borrow().clone())
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Which keys (0-based) are usable now; updated whenever a state changes.
    pub fn usable_keys(&self) -> Vec<bool> {
        self.usable.borrow().clone()
    }

    /// The chain's first model now (a retired model leaves the chain), for
    /// the free calls that need a model: `countTokens` and the key check.
    pub fn first_model(&self) -> Option<String> {
        self.first_model.borrow().clone()
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Unavailable> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| Unavailable::Stopped)?;
        answer.await.map_err(|_| Unavailable::Stopped)
    }

    pub(super) fn tell(&self, command: Command) {
        // If the actor is gone the service is stopping; nothing is left to update.
        let _ = self.tx.send(command);
    }

    /// Books a grant. Dropped before it is sent, it is released.
    pub async fn plan(
        &self,
        request: PlanRequest,
    ) -> Result<Result<Booked, PlanError>, Unavailable> {
        let planned = self.ask(|reply| Command::Plan(request, reply)).await?;
        Ok(planned.map(|grant| Booked::new(grant, self.clone())))
    }

    pub async fn set_mode(&self, mode: Mode) -> Result<(), Unavailable> {
        self.ask(|reply| Command::SetMode(mode, reply))
            .await?
            .map_err(Unavailable::Unshared)
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
        key: KeyIndex,
        state: KeyState,
    ) -> Result<Option<KeyState>, Unavailable> {
        self.ask(|reply| Command::SetKeyState(key, state, reply))
            .await?
            .map_err(Unavailable::Unshared)
    }

    pub async fn snapshot(&self) -> Result<Snapshot, Unavailable> {
        self.ask(Command::Snapshot).await
    }
}

fn usable_keys(core: &Scheduler) -> Vec<bool> {
    KeyIndex::all(core.key_count())
        .map(|k| core.key_state(k) == Some(&KeyState::Healthy))
        .collect()
}

/// Where the actor publishes what handlers read without asking.
struct Watchers {
    usable: watch::Sender<Vec<bool>>,
    first_model: watch::Sender<Option<String>>,
    shared: Option<watch::Sender<SharedState>>,
}

async fn run(
    mut state: impl QuotaState,
    clock: Clock,
    mut rx: mpsc::UnboundedReceiver<Command>,
    watchers: Watchers,
    log_decisions: bool,
) {
    let mut tick = (state.sharing().is_some()).then(|| tokio::time::interval(REPLICA_TICK));
    loop {
        let command = tokio::select! {
            command = rx.recv() => match command {
                Some(command) => Some(command),
                None => break,
            },
            _ = next_tick(&mut tick) => None,
        };
        let now = clock.now();
        match command {
            None => state.run(&Pull, now).await,
            Some(Command::Plan(request, reply)) => {
                let planned = state.run(&Plan(&request), now).await;
                if log_decisions {
                    log_decision(state.core(), &request, &planned, now);
                }
                if let Err(Ok(grant)) = reply.send(planned) {
                    // The handler went away between asking and hearing back.
                    end(&mut state, grant.id, End::Release, now).await;
                }
            }
            Some(Command::End(id, how)) => end(&mut state, id, how, now).await,
            Some(Command::SetMode(mode, reply)) => {
                let _ = reply.send(state.run(&SetMode(mode), now).await);
            }
            Some(Command::SetChain(chain)) => state.core_mut().set_chain(chain),
            Some(Command::SetFetched(fetched)) => state.core_mut().set_fetched(fetched),
            Some(Command::SetKeyState(key, key_state, reply)) => {
                let _ = reply.send(state.run(&SetKeyState(key, key_state), now).await);
            }
            Some(Command::Snapshot(reply)) => {
                state.run(&Pull, now).await;
                let _ = reply.send(state.core().snapshot(now));
            }
        }
        watchers.usable.send_if_modified(|current| {
            let fresh = usable_keys(state.core());
            let changed = *current != fresh;
            *current = fresh;
            changed
        });
        watchers.first_model.send_if_modified(|current| {
            let fresh = state.core().chain().first();
            let changed = current.as_ref() != fresh;
            if changed {
                *current = fresh.cloned();
            }
            changed
        });
        if let (Some(shared), Some(sharing)) = (&watchers.shared, state.sharing()) {
            let holding_until = (sharing.holding_until > now).then_some(sharing.holding_until);
            shared.send_if_modified(|current| {
                let changed = current.error != sharing.problem
                    || current.conflicts != sharing.conflicts
                    || current.holding_until != holding_until;
                current.ok = sharing.problem.is_none();
                current.error = sharing.problem;
                current.conflicts = sharing.conflicts;
                current.holding_until = holding_until;
                changed
            });
        }
    }
}

/// The replica's next tick; never, for a single instance (whose tests run
/// on a paused clock that a periodic timer would keep waking).
async fn next_tick(tick: &mut Option<tokio::time::Interval>) {
    match tick {
        Some(tick) => {
            tick.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn log_decision(
    core: &Scheduler,
    request: &PlanRequest,
    planned: &Result<Grant, PlanError>,
    now: Timestamp,
) {
    match planned {
        Ok(g) => {
            let fingerprint = core.fingerprint(g.key);
            tracing::info!(
                target: "gemini_flux::decision",
                grant = g.id,
                key = %g.key,
                fingerprint = %fingerprint,
                model = %g.model,
                tokens = g.cost.input_tokens,
                requests = g.cost.requests,
                wait_ms = g.at.since(now).as_millis() as u64,
                "granted"
            );
        }
        Err(e) => {
            tracing::info!(target: "gemini_flux::decision", tokens = request.cost.input_tokens, "refused: {e}")
        }
    }
}
