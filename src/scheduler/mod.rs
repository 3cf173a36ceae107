//! Deciding which key, which model and at what instant.
//!
//! [`core`] holds the rules as pure code ([`Scheduler`]); [`lane`] the
//! arithmetic of one (key, model) lane; [`actor`] the one tokio task that owns
//! the core in the running service, and the handle everyone else talks to;
//! [`grant`] a grant's life in a handler (booked, then in flight);
//! [`replicated`] the same core shared by replicas through Redis.

pub mod actor;
pub mod core;
pub mod grant;
pub mod lane;
pub mod replicated;

pub use actor::{SchedulerHandle, SharedState, Unavailable};
pub use core::{
    Change, Grant, KeyState, Penalty, PlanError, PlanRequest, Retired, Scheduler, Snapshot, Target,
    Violation,
};
pub use grant::{Booked, InFlight};
pub use lane::GrantId;

#[cfg(test)]
mod tests;
