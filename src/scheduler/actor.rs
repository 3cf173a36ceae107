//! The one task that owns the scheduler core in the running service.
//!
//! Handlers never touch quota state: they send a command over a channel and,
//! where they need one, get the answer on a oneshot. One owner means no locks
//! around the windows and no two plans interleaving. A handler holds its
//! grant as a [`Booked`](super::grant::Booked), then an
//! [`InFlight`](super::grant::InFlight) call (see `super::grant`).
//!
//! The task owns either the core alone (one instance; changes journalled to
//! the state store) or a [`Replicated`] core (replicas sharing the keys
//! through Redis; each command reads and commits the shared lanes, and a tick
//! keeps an idle replica's copy fresh).

use super::core::{Change, Grant, KeyState, Penalty, PlanError, PlanRequest, Scheduler, Snapshot};
use super::grant::Booked;
use super::lane::GrantId;
use super::replicated::Replicated;
use crate::clock::{Clock, Timestamp};
use crate::policy::{LimitsOverride, Mode};
use crate::store::{Ledger, Record};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// How often a replica re-reads the shared state when it has nothing to do:
/// another replica's operator change takes effect here within this.
const REPLICA_TICK: Duration = Duration::from_millis(250);

pub(super) enum Command {
    Plan(PlanRequest, oneshot::Sender<Result<Grant, PlanError>>),
    Settle(GrantId, u64),
    Keep(GrantId, u64),
    Release(GrantId),
    Penalise(GrantId, Penalty),
    SetMode(Mode, oneshot::Sender<Result<(), String>>),
    SetChain(Vec<String>),
    SetFetched(BTreeMap<String, LimitsOverride>),
    SetKeyState(
        usize,
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
}

/// Who holds the quota state. One lives per service, so the variants'
/// sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Owner {
    /// This process alone; durable changes go to the journal.
    Alone(Scheduler, Journal),
    /// Replicas, through Redis.
    Replica(Replicated),
}

impl Owner {
    fn core(&self) -> &Scheduler {
        match self {
            Owner::Alone(core, _) => core,
            Owner::Replica(r) => r.core(),
        }
    }

    fn core_mut(&mut self) -> &mut Scheduler {
        match self {
            Owner::Alone(core, _) => core,
            Owner::Replica(r) => r.core_mut(),
        }
    }

    async fn plan(&mut self, request: &PlanRequest, now: Timestamp) -> Result<Grant, PlanError> {
        match self {
            Owner::Alone(core, _) => core.plan(request, now),
            Owner::Replica(r) => r.plan(request, now).await,
        }
    }

    async fn settle(&mut self, id: GrantId, tokens: u64, now: Timestamp) {
        match self {
            Owner::Alone(core, _) => core.settle(id, tokens),
            Owner::Replica(r) => r.settle(id, tokens, now).await,
        }
    }

    async fn keep(&mut self, id: GrantId, tokens: u64, now: Timestamp) {
        match self {
            Owner::Alone(core, _) => core.keep(id, tokens),
            Owner::Replica(r) => r.keep(id, tokens, now).await,
        }
    }

    async fn release(&mut self, id: GrantId, now: Timestamp) {
        match self {
            Owner::Alone(core, _) => core.release(id),
            Owner::Replica(r) => r.release(id, now).await,
        }
    }

    async fn penalise(&mut self, id: GrantId, penalty: &Penalty, now: Timestamp) {
        match self {
            Owner::Alone(core, _) => core.penalise(id, penalty, now),
            Owner::Replica(r) => r.penalise(id, penalty, now).await,
        }
    }

    async fn set_mode(&mut self, mode: Mode) -> Result<(), String> {
        match self {
            Owner::Alone(core, _) => {
                core.set_mode(mode);
                Ok(())
            }
            Owner::Replica(r) => r.set_mode(mode).await,
        }
    }

    async fn set_key_state(
        &mut self,
        key: usize,
        state: KeyState,
    ) -> Result<Option<KeyState>, String> {
        match self {
            Owner::Alone(core, _) => Ok(core.set_key_state(key, state)),
            Owner::Replica(r) => r.set_key_state(key, state).await,
        }
    }

    /// A replica refreshes its copy; one alone has nothing to refresh.
    async fn pull(&mut self, now: Timestamp) {
        if let Owner::Replica(r) = self {
            r.pull(now).await;
        }
    }

    /// Hands what must survive a restart to the journal (a replica has
    /// already written it to Redis).
    fn journal(&mut self) {
        if let Owner::Alone(core, journal) = self {
            for change in core.take_changes() {
                journal.keep(change);
            }
        }
    }

    /// A replica's Redis problem, if any, and its conflicts so far.
    fn sharing(&self) -> Option<(Option<String>, u64)> {
        match self {
            Owner::Alone(..) => None,
            Owner::Replica(r) => Some((r.problem().map(str::to_string), r.conflicts())),
        }
    }
}

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
    fn keep(&self, change: Change) {
        if let Some(lesson) = change.lesson() {
            tracing::warn!("{lesson}");
        }
        let record = match change {
            Change::KeyState(key, state) => Record::KeyState {
                key_id: self.key_ids[key].clone(),
                state,
            },
            Change::Learned {
                key,
                model,
                learned,
                at,
                ..
            } => Record::Learned {
                key_id: self.key_ids[key].clone(),
                model,
                learned,
                at,
            },
            Change::Mode(mode) => Record::Mode {
                mode,
                configured: self.configured_mode,
            },
            // Kept for the process's life: after a restart, one call finds it again.
            Change::Retired(_) => return,
        };
        self.ledger.record(record);
    }
}

impl SchedulerHandle {
    /// Starts the task that owns `core`. It runs until every handle is dropped.
    pub fn spawn(core: Scheduler, clock: Clock, log_decisions: bool, journal: Journal) -> Self {
        Self::start(Owner::Alone(core, journal), clock, log_decisions, None)
    }

    /// Starts the task that owns a replica's core; `url` (masked) is shown
    /// in `/status`.
    pub fn spawn_replica(
        replicated: Replicated,
        clock: Clock,
        log_decisions: bool,
        url: String,
    ) -> Self {
        let owner = Owner::Replica(replicated);
        Self::start(owner, clock, log_decisions, Some(url))
    }

    fn start(owner: Owner, clock: Clock, log_decisions: bool, url: Option<String>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (usable_tx, usable) = watch::channel(usable_keys(owner.core()));
        let (shared_tx, shared) = match url {
            Some(url) => {
                let (tx, rx) = watch::channel(SharedState {
                    backend: "redis",
                    url,
                    ok: true,
                    error: None,
                    conflicts: 0,
                });
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let watchers = Watchers {
            usable: usable_tx,
            shared: shared_tx,
        };
        tokio::spawn(run(owner, clock, rx, watchers, log_decisions));
        SchedulerHandle {
            tx,
            clock,
            usable,
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
        key: usize,
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
    (0..core.key_count())
        .map(|k| core.key_state(k) == Some(&KeyState::Healthy))
        .collect()
}

/// Where the actor publishes what handlers read without asking.
struct Watchers {
    usable: watch::Sender<Vec<bool>>,
    shared: Option<watch::Sender<SharedState>>,
}

async fn run(
    mut owner: Owner,
    clock: Clock,
    mut rx: mpsc::UnboundedReceiver<Command>,
    watchers: Watchers,
    log_decisions: bool,
) {
    let mut tick = matches!(owner, Owner::Replica(_)).then(|| tokio::time::interval(REPLICA_TICK));
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
            None => owner.pull(now).await,
            Some(Command::Plan(request, reply)) => {
                let planned = owner.plan(&request, now).await;
                if log_decisions {
                    log_decision(owner.core(), &request, &planned, now);
                }
                if let Err(Ok(grant)) = reply.send(planned) {
                    // The handler went away between asking and hearing back.
                    owner.release(grant.id, now).await;
                }
            }
            Some(Command::Settle(id, tokens)) => owner.settle(id, tokens, now).await,
            Some(Command::Keep(id, tokens)) => owner.keep(id, tokens, now).await,
            Some(Command::Release(id)) => owner.release(id, now).await,
            Some(Command::Penalise(id, penalty)) => owner.penalise(id, &penalty, now).await,
            Some(Command::SetMode(mode, reply)) => {
                let _ = reply.send(owner.set_mode(mode).await);
            }
            Some(Command::SetChain(chain)) => owner.core_mut().set_chain(chain),
            Some(Command::SetFetched(fetched)) => owner.core_mut().set_fetched(fetched),
            Some(Command::SetKeyState(key, state, reply)) => {
                let _ = reply.send(owner.set_key_state(key, state).await);
            }
            Some(Command::Snapshot(reply)) => {
                owner.pull(now).await;
                let _ = reply.send(owner.core().snapshot(now));
            }
        }
        owner.journal();
        watchers.usable.send_if_modified(|current| {
            let fresh = usable_keys(owner.core());
            let changed = *current != fresh;
            *current = fresh;
            changed
        });
        if let (Some(shared), Some((problem, conflicts))) = (&watchers.shared, owner.sharing()) {
            shared.send_if_modified(|current| {
                let changed = current.error != problem || current.conflicts != conflicts;
                current.ok = problem.is_none();
                current.error = problem;
                current.conflicts = conflicts;
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
