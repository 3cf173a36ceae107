//! Deciding which key, which model and at what instant.
//!
//! [`core`] holds the rules as pure code ([`Scheduler`]); [`lane`] the
//! arithmetic of one (key, model) lane; [`actor`] the one tokio task that owns
//! the core in the running service, and the handle everyone else talks to;
//! [`replicated`] the same core shared by replicas through Redis.

pub mod actor;
pub mod core;
pub mod lane;
pub mod replicated;

pub use actor::{GrantGuard, SchedulerHandle, SharedState, Unavailable};
pub use core::{
    Change, Grant, KeyState, Penalty, PlanError, PlanRequest, Retired, Scheduler, Snapshot, Target,
    Violation,
};
pub use lane::GrantId;

#[cfg(test)]
mod tests;
