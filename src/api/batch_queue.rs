//! The batches in memory: which item goes next, and each batch's counts.
//!
//! Items are taken round robin: across the submitters (the API token that
//! created each batch), then across each submitter's batches, one item a
//! turn, each batch in input order. So a 10-item batch is not starved by a
//! 10,000-item one, nor one team's batches by another's. A batch whose item
//! could not be booked now is parked until the instant the plan named (a
//! free slot, or Pacific midnight when its day is spent), with the reason,
//! and the others go on meanwhile.
//!
//! Pure: no I/O and no clock (instants are passed in). Requests and results
//! live in the state store (`store::batches`); an item here is an index.

use crate::clock::Timestamp;
use crate::store::batches::{BatchRow, BatchState, ItemOutcome, StoredBatch};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// An item taken from the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemRef {
    pub batch: String,
    pub index: u32,
}

/// What the runner does next.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Plan this item; its tokens were counted already when `estimate` says so.
    Item {
        item: ItemRef,
        estimate: Option<u64>,
    },
    /// Nothing can go now: wake at this instant (when a parked batch may go
    /// again), or when something changes.
    Idle(Option<Timestamp>),
}

/// Why a batch waits, and until when.
#[derive(Clone, Debug, PartialEq)]
pub struct Park {
    pub until: Timestamp,
    pub reason: String,
}

/// One batch's standing, for the API, `/status`, `/metrics` and the dashboard.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub row: BatchRow,
    /// Not sent yet.
    pub pending: u32,
    /// Being planned or upstream.
    pub running: u32,
    /// Answered with a response.
    pub done: u32,
    /// Answered with an error.
    pub failed: u32,
    pub parked: Option<Park>,
    /// At the pace so far, when the last item will be answered.
    pub expected_finish: Option<Timestamp>,
}

struct Batch {
    row: BatchRow,
    pending: VecDeque<u32>,
    running: u32,
    done: u32,
    failed: u32,
    /// When its first item was sent: the pace is measured from there.
    started: Option<Timestamp>,
    parked: Option<Park>,
    /// The tokens of the item put back at the front, counted already.
    front_estimate: Option<(u32, u64)>,
}

/// Every batch kept, and the turn order.
#[derive(Default)]
pub struct Queue {
    batches: HashMap<String, Batch>,
    /// Submitters in turn order, each with its active batches in turn order.
    turns: VecDeque<(Option<String>, VecDeque<String>)>,
}

impl Queue {
    /// A new batch: every item waits, in input order.
    pub fn add(&mut self, row: BatchRow) {
        let pending = (0..row.items).collect();
        self.insert(row, pending, (0, 0));
    }

    /// A batch found in the state store at start: its items without a
    /// result wait (again). Returns the state to store when it turns out
    /// finished (the crash came between its last answer and its end).
    pub fn restore(&mut self, stored: StoredBatch, now: Timestamp) -> Option<BatchState> {
        let mut answered = vec![false; stored.row.items as usize];
        let (mut done, mut failed) = (0, 0);
        for (index, outcome) in stored.answered {
            if let Some(slot) = answered.get_mut(index as usize) {
                *slot = true;
                match outcome {
                    ItemOutcome::Response => done += 1,
                    ItemOutcome::Error => failed += 1,
                }
            }
        }
        let pending = if stored.row.state.active() {
            (0..stored.row.items)
                .filter(|&i| !answered[i as usize])
                .collect()
        } else {
            VecDeque::new()
        };
        let id = stored.row.id.clone();
        self.insert(stored.row, pending, (done, failed));
        self.finish_if_done(&id, now)
    }

    fn insert(&mut self, row: BatchRow, pending: VecDeque<u32>, (done, failed): (u32, u32)) {
        let id = row.id.clone();
        if row.state.active() {
            match self.turns.iter_mut().find(|(owner, _)| *owner == row.owner) {
                Some((_, ids)) => ids.push_back(id.clone()),
                None => self
                    .turns
                    .push_back((row.owner.clone(), VecDeque::from([id.clone()]))),
            }
        }
        self.batches.insert(
            id,
            Batch {
                row,
                pending,
                running: 0,
                done,
                failed,
                started: None,
                parked: None,
                front_estimate: None,
            },
        );
    }

    /// The next item, round robin across submitters and then their batches;
    /// or, when none can go now, when to look again.
    pub fn next(&mut self, now: Timestamp) -> Next {
        let mut wake: Option<Timestamp> = None;
        for o in 0..self.turns.len() {
            for b in 0..self.turns[o].1.len() {
                let batch = self
                    .batches
                    .get_mut(&self.turns[o].1[b])
                    .expect("every batch in turn is kept");
                if batch.pending.is_empty() {
                    continue;
                }
                if let Some(park) = batch.parked.as_ref().filter(|p| p.until > now) {
                    wake = Some(wake.map_or(park.until, |w| w.min(park.until)));
                    continue;
                }
                let index = batch.pending.pop_front().expect("not empty");
                batch.running += 1;
                batch.parked = None;
                let estimate = batch
                    .front_estimate
                    .take()
                    .filter(|(i, _)| *i == index)
                    .map(|(_, tokens)| tokens);
                let item = ItemRef {
                    batch: batch.row.id.clone(),
                    index,
                };
                // This batch, then this submitter, go to the back of their turns.
                self.turns[o].1.rotate_left(b + 1);
                self.turns.rotate_left(o + 1);
                return Next::Item { item, estimate };
            }
        }
        Next::Idle(wake)
    }

    /// The item's call was booked: its batch runs. Returns the state to
    /// store when the batch starts now.
    pub fn sent(&mut self, item: &ItemRef, now: Timestamp) -> Option<BatchState> {
        let batch = self.batches.get_mut(&item.batch)?;
        batch.started.get_or_insert(now);
        (batch.row.state == BatchState::Pending).then(|| {
            batch.row.state = BatchState::Running;
            batch.row.updated = now;
            BatchState::Running
        })
    }

    /// Whether the item's batch still runs (it may have been cancelled or
    /// deleted while the item was being planned).
    pub fn active(&self, item: &ItemRef) -> bool {
        self.batches
            .get(&item.batch)
            .is_some_and(|b| b.row.state.active())
    }

    /// The item could not be booked now: back to the front of its batch,
    /// which waits until `park.until`. `estimate` is its tokens, when they
    /// were counted.
    pub fn put_back(&mut self, item: &ItemRef, estimate: Option<u64>, park: Park) {
        let Some(batch) = self.batches.get_mut(&item.batch) else {
            return;
        };
        batch.running -= 1;
        if batch.row.state.active() {
            batch.pending.push_front(item.index);
            batch.front_estimate = estimate.map(|tokens| (item.index, tokens));
            batch.parked = Some(park);
        }
    }

    /// The item will not run: its batch was cancelled or deleted meanwhile.
    pub fn abandon(&mut self, item: &ItemRef) {
        if let Some(batch) = self.batches.get_mut(&item.batch) {
            batch.running -= 1;
        }
    }

    /// The item's result is stored. Returns the state to store when that
    /// was the batch's last item.
    pub fn answered(
        &mut self,
        item: &ItemRef,
        outcome: ItemOutcome,
        now: Timestamp,
    ) -> Option<BatchState> {
        let batch = self.batches.get_mut(&item.batch)?;
        batch.running -= 1;
        match outcome {
            ItemOutcome::Response => batch.done += 1,
            ItemOutcome::Error => batch.failed += 1,
        }
        batch.row.updated = now;
        self.finish_if_done(&item.batch, now)
    }

    fn finish_if_done(&mut self, id: &str, now: Timestamp) -> Option<BatchState> {
        let batch = self.batches.get_mut(id)?;
        if !(batch.row.state.active() && batch.pending.is_empty() && batch.running == 0) {
            return None;
        }
        batch.row.state = BatchState::Succeeded;
        batch.row.updated = now;
        batch.row.ended = Some(now);
        batch.parked = None;
        self.leave_turns(id);
        Some(BatchState::Succeeded)
    }

    /// Cancels a running batch: its waiting items never run (those
    /// upstream still answer). Returns the state to store, if it changed.
    pub fn cancel(&mut self, id: &str, now: Timestamp) -> Option<BatchState> {
        let batch = self.batches.get_mut(id)?;
        if !batch.row.state.active() {
            return None;
        }
        batch.row.state = BatchState::Cancelled;
        batch.row.updated = now;
        batch.row.ended = Some(now);
        batch.pending.clear();
        batch.parked = None;
        self.leave_turns(id);
        Some(BatchState::Cancelled)
    }

    /// Forgets a batch.
    pub fn remove(&mut self, id: &str) -> Option<BatchRow> {
        self.leave_turns(id);
        self.batches.remove(id).map(|b| b.row)
    }

    fn leave_turns(&mut self, id: &str) {
        for (_, ids) in &mut self.turns {
            ids.retain(|b| b != id);
        }
        self.turns.retain(|(_, ids)| !ids.is_empty());
    }

    /// Batches ended `ttl` ago or longer: their results are no longer kept.
    pub fn expired(&self, now: Timestamp, ttl: Duration) -> Vec<String> {
        self.batches
            .values()
            .filter(|b| b.row.ended.is_some_and(|e| e.plus(ttl) <= now))
            .map(|b| b.row.id.clone())
            .collect()
    }

    /// When the next ended batch expires.
    pub fn next_expiry(&self, ttl: Duration) -> Option<Timestamp> {
        self.batches
            .values()
            .filter_map(|b| b.row.ended.map(|e| e.plus(ttl)))
            .min()
    }

    /// Items of every batch not answered yet.
    pub fn unfinished_items(&self) -> u64 {
        self.batches
            .values()
            .map(|b| u64::from(b.pending.len() as u32 + b.running))
            .sum()
    }

    pub fn progress(&self, id: &str, now: Timestamp) -> Option<Progress> {
        let b = self.batches.get(id)?;
        let answered = b.done + b.failed;
        let remaining = b.pending.len() as u32 + b.running;
        let from = b.parked.as_ref().map_or(now, |p| p.until.max(now));
        let expected_finish = match (b.started, remaining) {
            (_, 0) => None,
            (Some(started), _) if answered > 0 => {
                let per_item = now.since(started).as_millis() / u128::from(answered);
                Some(from.plus_millis((per_item * u128::from(remaining)) as i64))
            }
            _ => None,
        };
        Some(Progress {
            row: b.row.clone(),
            pending: b.pending.len() as u32,
            running: b.running,
            done: b.done,
            failed: b.failed,
            parked: b.parked.clone(),
            expected_finish,
        })
    }

    /// Every batch, newest first.
    pub fn all(&self, now: Timestamp) -> Vec<Progress> {
        let mut all: Vec<Progress> = self
            .batches
            .keys()
            .filter_map(|id| self.progress(id, now))
            .collect();
        all.sort_by(|a, b| (b.row.created, &b.row.id).cmp(&(a.row.created, &a.row.id)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp(1_781_118_000_000);

    fn row(id: &str, owner: Option<&str>, items: u32) -> BatchRow {
        BatchRow {
            id: id.into(),
            owner: owner.map(str::to_string),
            model: "gemini-2.5-flash".into(),
            fallback: false,
            display_name: id.into(),
            state: BatchState::Pending,
            items,
            created: T0,
            updated: T0,
            ended: None,
        }
    }

    fn take(q: &mut Queue, now: Timestamp) -> Option<ItemRef> {
        match q.next(now) {
            Next::Item { item, .. } => Some(item),
            Next::Idle(_) => None,
        }
    }

    fn order(q: &mut Queue, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let item = take(q, T0).expect("an item");
                format!("{}{}", item.batch, item.index)
            })
            .collect()
    }

    #[test]
    fn turns_go_round_submitters_then_their_batches() {
        let mut q = Queue::default();
        q.add(row("a", Some("alice"), 4));
        q.add(row("b", Some("alice"), 4));
        q.add(row("c", Some("bob"), 4));
        // alice and bob alternate; alice's two batches alternate within her turns.
        assert_eq!(
            order(&mut q, 8),
            ["a0", "c0", "b0", "c1", "a1", "c2", "b1", "c3"]
        );
        // bob is done: alice's batches share what is left.
        assert_eq!(order(&mut q, 4), ["a2", "b2", "a3", "b3"]);
        assert_eq!(q.next(T0), Next::Idle(None));
    }

    #[test]
    fn a_parked_batch_keeps_its_item_first_and_lets_the_others_go() {
        let mut q = Queue::default();
        q.add(row("a", None, 2));
        q.add(row("b", None, 2));
        let a0 = take(&mut q, T0).unwrap();
        let later = T0.plus_millis(60_250);
        q.put_back(
            &a0,
            Some(42),
            Park {
                until: later,
                reason: "no slot now".into(),
            },
        );
        assert_eq!(order(&mut q, 2), ["b0", "b1"]);
        assert_eq!(
            q.next(T0),
            Next::Idle(Some(later)),
            "nothing before a's instant"
        );
        assert_eq!(
            q.next(later),
            Next::Item {
                item: a0,
                estimate: Some(42)
            },
            "the same item, counted once"
        );
    }

    #[test]
    fn the_last_answer_ends_the_batch_and_a_restart_finds_the_rest() {
        let mut q = Queue::default();
        q.add(row("a", None, 3));
        let items: Vec<ItemRef> = (0..3).map(|_| take(&mut q, T0).unwrap()).collect();
        assert_eq!(q.sent(&items[0], T0), Some(BatchState::Running));
        assert_eq!(q.sent(&items[1], T0), None);
        let t1 = T0.plus_millis(10_000);
        assert_eq!(q.answered(&items[0], ItemOutcome::Response, t1), None);
        let p = q.progress("a", t1).unwrap();
        assert_eq!((p.pending, p.running, p.done, p.failed), (0, 2, 1, 0));
        assert_eq!(
            p.expected_finish,
            Some(t1.plus_millis(20_000)),
            "10 s an item so far, two to go"
        );
        assert_eq!(q.answered(&items[1], ItemOutcome::Error, t1), None);
        assert_eq!(
            q.answered(&items[2], ItemOutcome::Response, t1),
            Some(BatchState::Succeeded)
        );
        assert_eq!(q.progress("a", t1).unwrap().row.ended, Some(t1));
        assert_eq!(
            q.expired(t1.plus_millis(3_599_999), Duration::from_secs(3600)),
            Vec::<String>::new()
        );
        assert_eq!(
            q.expired(t1.plus_millis(3_600_000), Duration::from_secs(3600)),
            ["a"]
        );

        let mut fresh = Queue::default();
        let mut stored = row("b", None, 3);
        stored.state = BatchState::Running;
        let restored = fresh.restore(
            StoredBatch {
                row: stored,
                answered: vec![(1, ItemOutcome::Response)],
            },
            T0,
        );
        assert_eq!(restored, None);
        assert_eq!(
            order(&mut fresh, 2),
            ["b0", "b2"],
            "unanswered items run again"
        );
    }

    #[test]
    fn a_cancelled_batch_drops_its_waiting_items() {
        let mut q = Queue::default();
        q.add(row("a", None, 3));
        let a0 = take(&mut q, T0).unwrap();
        assert_eq!(q.cancel("a", T0), Some(BatchState::Cancelled));
        assert_eq!(q.cancel("a", T0), None);
        assert!(!q.active(&a0));
        assert_eq!(q.next(T0), Next::Idle(None));
        q.abandon(&a0);
        let p = q.progress("a", T0).unwrap();
        assert_eq!((p.pending, p.running, p.done), (0, 0, 0));
        assert_eq!(q.unfinished_items(), 0);
    }
}
