//! The quota state of a single instance: the core itself, and the journal
//! that keeps what must outlive the process.
//!
//! Each decision runs once, on the truth; nothing can move under it. The
//! changes the core records ([`Change`]) go to the state store through the
//! ledger, and `service::restore` puts them back after a restart.

use super::core::{Change, Scheduler};
use super::seam::{Decision, QuotaState, Sharing};
use crate::clock::Timestamp;
use crate::policy::Mode;
use crate::store::{Ledger, Record};

/// The core of the one process that holds the keys.
pub struct Alone {
    core: Scheduler,
    journal: Journal,
}

impl Alone {
    pub fn new(core: Scheduler, journal: Journal) -> Alone {
        Alone { core, journal }
    }
}

impl QuotaState for Alone {
    fn core(&self) -> &Scheduler {
        &self.core
    }

    fn core_mut(&mut self) -> &mut Scheduler {
        &mut self.core
    }

    async fn run<D: Decision>(&mut self, decision: &D, now: Timestamp) -> D::Output {
        let outcome = decision.decide(&mut self.core, now);
        for change in self.core.take_changes() {
            self.journal.keep(change);
        }
        outcome
    }

    fn sharing(&self) -> Option<Sharing> {
        None
    }
}

/// Where a single instance sends the changes that must survive a restart.
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
            Change::Retired(r) => Record::Retired {
                model: r.model,
                at: r.at,
                message: r.message,
            },
        };
        self.ledger.record(record);
    }
}
