//! Deciding which key, which model and at what instant.
//!
//! [`core`] holds the rules as pure code ([`Scheduler`]); [`lane`] the
//! arithmetic of one (key, model) lane; [`seam`] the one way a decision
//! reaches the quota state (read, decide, commit), with its two sides:
//! [`alone`] (one instance, journalled) and [`replicated`] (replicas sharing
//! the lanes through Redis); [`actor`] the one tokio task that owns the
//! quota state in the running service, and the handle everyone else talks
//! to; [`grant`] a grant's life in a handler (booked, then in flight).

pub mod actor;
pub mod alone;
pub mod core;
pub mod grant;
pub mod lane;
pub mod replicated;
pub mod seam;

pub use actor::{SchedulerHandle, SharedState, Unavailable};
pub use core::{
    Change, Grant, Heard, KeyChoice, KeyIndex, KeyState, Penalty, PlanError, PlanRequest, Priority,
    Provider, Retired, Scheduler, Snapshot, Spent, Target, Violation,
};
pub use grant::{Booked, InFlight};
pub use lane::GrantId;

#[cfg(test)]
mod tests;
