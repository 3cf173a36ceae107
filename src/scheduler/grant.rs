//! A grant's life in a request handler, as types: a [`Booked`] grant waits
//! for its instant; [`Booked::send`] turns it into an [`InFlight`] call, which
//! alone can settle, keep or penalise. Dropping either is safe and does the
//! right thing: a booked grant (the client left while waiting) is released;
//! an in-flight call (the client left mid-answer) keeps its booking with the
//! estimate, since the upstream may have counted it.

use super::actor::{Command, SchedulerHandle};
use super::core::{Grant, Penalty, Spent};
use super::seam::End;

/// A grant booked for a future instant, not yet sent.
pub struct Booked {
    grant: Grant,
    handle: SchedulerHandle,
    /// Cleared when the grant becomes an [`InFlight`] call.
    release_on_drop: bool,
}

impl Booked {
    pub(super) fn new(grant: Grant, handle: SchedulerHandle) -> Booked {
        Booked {
            grant,
            handle,
            release_on_drop: true,
        }
    }

    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// Sleeps until the grant's instant (tokio time, so pausable in tests).
    /// A grant that is due already goes at once: the timer wheel would round
    /// even a past deadline up to its next millisecond tick.
    pub async fn wait(&self) {
        let clock = self.handle.clock();
        if self.grant.at > clock.now() {
            tokio::time::sleep_until(clock.instant_at(self.grant.at)).await;
        }
    }

    /// The call is about to leave: from now on the booking is kept.
    pub fn send(mut self) -> InFlight {
        self.release_on_drop = false;
        InFlight {
            grant: self.grant.clone(),
            handle: self.handle.clone(),
            keep_on_drop: true,
        }
    }
}

impl Drop for Booked {
    fn drop(&mut self) {
        if self.release_on_drop {
            self.handle.tell(Command::End(self.grant.id, End::Release));
        }
    }
}

/// A call that has left for the upstream.
pub struct InFlight {
    grant: Grant,
    handle: SchedulerHandle,
    /// Cleared when the call is settled, kept or penalised.
    keep_on_drop: bool,
}

impl InFlight {
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// The upstream served the call: keep the booking with what the
    /// upstream counted.
    pub fn settle(mut self, spent: Spent) {
        self.keep_on_drop = false;
        self.handle
            .tell(Command::End(self.grant.id, End::Settle(spent)));
    }

    /// The call counted upstream (or may have) but was not served, for
    /// example the client's own mistake: keep the booking, learn nothing.
    pub fn keep(mut self, spent: Spent) {
        self.keep_on_drop = false;
        self.handle
            .tell(Command::End(self.grant.id, End::Keep(spent)));
    }

    /// The call failed in a way the scheduler learns from.
    pub fn penalise(mut self, penalty: Penalty) {
        self.keep_on_drop = false;
        self.handle
            .tell(Command::End(self.grant.id, End::Penalise(penalty)));
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.keep_on_drop {
            let estimate = End::Keep(Spent::input(self.grant.cost.input_tokens));
            self.handle.tell(Command::End(self.grant.id, estimate));
        }
    }
}
