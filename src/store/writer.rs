//! The ledger: batches records into transactions off the hot path, and
//! never drops one.
//!
//! Ordinary records wait at most `BATCH_WINDOW` for company. A durable
//! record (a call about to go upstream) starts a flush at once and its
//! sender resumes when a write has been tried on it. Flushes are group
//! commits: one flusher at a time, on tokio's blocking pool, writes whatever
//! is pending, again and again until nothing is, so concurrent durable
//! records share transactions instead of queueing for the store one by one.
//!
//! A failed write (a full disk) puts its batch back at the head of the
//! queue, in order, and is tried again every `RETRY_EVERY` and with every
//! new durable record, until the store takes it. A store that panics while
//! writing is a failed write too: the flusher lives on, nobody waits for
//! ever, no record is lost. Until then
//! [`Ledger::problem`] reports the error, and once more than
//! `max_unwritten` records wait, [`Ledger::full`] tells dispatch to stop
//! booking calls it could not count.

use super::{CallId, Record, Store, StoreError};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// The longest an ordinary record waits before it is written.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// How often a failed write is tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// A handle to the state store; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

/// What is waiting to be written, numbered in the order it was recorded.
#[derive(Default)]
struct Queue {
    /// Records not yet written (a failed batch comes back to the front).
    records: Vec<Record>,
    /// The number of the last record queued.
    queued: u64,
    /// The number of the last record written: all before it are too.
    written: u64,
}

struct Inner {
    store: Mutex<Box<dyn Store>>,
    queue: Mutex<Queue>,
    /// The number of the last record a write has been tried on.
    tried: watch::Sender<u64>,
    /// A flusher is running.
    flushing: AtomicBool,
    /// A batch-window flush is scheduled.
    flush_scheduled: AtomicBool,
    /// A retry after a failed write is scheduled.
    retry_scheduled: AtomicBool,
    /// The last write error, while the records it left behind are unwritten.
    problem: Mutex<Option<String>>,
    /// The store is what a restart rebuilds the windows from
    /// ([`Store::rebuilds_windows`]).
    sent_calls_must_commit: bool,
    /// Beyond this many unwritten records, no call is booked.
    max_unwritten: u64,
    /// The next call's id.
    next_call_id: AtomicI64,
    runtime: tokio::runtime::Handle,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ledger {
    /// Starts the writer (inside a tokio runtime). `max_unwritten` is
    /// `FLUX_MAX_UNWRITTEN`.
    pub fn start(mut store: impl Store, max_unwritten: usize) -> Ledger {
        let sent_calls_must_commit = store.rebuilds_windows();
        // Ids start at the wall clock's milliseconds × 2^20: above every
        // earlier run's (none makes 2^20 calls a millisecond), and above the
        // store's largest if the clock was set back.
        let last = store.last_call_id().ok().flatten().unwrap_or(0);
        let first_call_id =
            (crate::clock::Timestamp::wall_now().millis() << 20).max(last.saturating_add(1));
        Ledger {
            inner: Arc::new(Inner {
                sent_calls_must_commit,
                store: Mutex::new(Box::new(store)),
                queue: Mutex::new(Queue::default()),
                tried: watch::Sender::new(0),
                flushing: AtomicBool::new(false),
                flush_scheduled: AtomicBool::new(false),
                retry_scheduled: AtomicBool::new(false),
                problem: Mutex::new(None),
                max_unwritten: max_unwritten as u64,
                next_call_id: AtomicI64::new(first_call_id),
                runtime: tokio::runtime::Handle::current(),
            }),
        }
    }

    /// A new call's id: larger than every id before it, in this run or an
    /// earlier one, so that the ledger's rows are appended in order.
    pub fn next_call_id(&self) -> CallId {
        self.inner.next_call_id.fetch_add(1, Ordering::Relaxed)
    }

    fn enqueue(&self, record: Record) -> u64 {
        let mut queue = lock(&self.inner.queue);
        queue.records.push(record);
        queue.queued += 1;
        queue.queued
    }

    /// Writes `record` within `BATCH_WINDOW`.
    pub fn record(&self, record: Record) {
        self.enqueue(record);
        if !self.inner.flush_scheduled.swap(true, Ordering::AcqRel) {
            let ledger = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(BATCH_WINDOW).await;
                ledger.inner.flush_scheduled.store(false, Ordering::Release);
                ledger.flush().await;
            });
        }
    }

    /// Writes `record`, with whatever is pending, and returns once a write
    /// has been tried on it (if that failed, it stays queued and is retried).
    pub async fn record_durably(&self, record: Record) {
        let number = self.enqueue(record);
        self.tried_up_to(number).await;
    }

    /// Records a call about to go upstream: tried before it returns where
    /// the store is what a restart rebuilds the windows from (a crash then
    /// still counts the call), else within `BATCH_WINDOW`.
    pub async fn record_sent(&self, record: Record) {
        if self.inner.sent_calls_must_commit {
            self.record_durably(record).await;
        } else {
            self.record(record);
        }
    }

    /// Returns once a write has been tried on everything recorded so far.
    pub async fn flush(&self) {
        let number = lock(&self.inner.queue).queued;
        self.tried_up_to(number).await;
    }

    /// Flushes, trying again every `RETRY_EVERY` for at most `patience`
    /// while the store refuses; true when everything is written. Then the
    /// store makes it readable to the next opener ([`Store::sync`]), for a
    /// stop.
    pub async fn flush_within(&self, patience: Duration) -> bool {
        let give_up = tokio::time::Instant::now() + patience;
        loop {
            self.flush().await;
            let unwritten = self.unwritten();
            if unwritten == 0 {
                let inner = self.inner.clone();
                let synced = tokio::task::spawn_blocking(move || lock(&inner.store).sync()).await;
                if let Ok(Err(e)) = synced {
                    tracing::warn!(
                        "the state store keeps the last records in its journal, for the next start: {e}"
                    );
                }
                return true;
            }
            if tokio::time::Instant::now() + RETRY_EVERY > give_up {
                tracing::error!(
                    "{unwritten} record(s) could not be written to the state store: {}",
                    self.problem().unwrap_or_default()
                );
                return false;
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    async fn tried_up_to(&self, number: u64) {
        let mut tried = self.inner.tried.subscribe();
        Inner::kick(&self.inner);
        let _ = tried.wait_for(|t| *t >= number).await;
    }

    /// Input tokens per key and minute since `since` (what is pending is
    /// written first, so the answer is up to date).
    pub async fn usage_by_minute(
        &self,
        since: crate::clock::Timestamp,
    ) -> Result<Vec<super::MinuteUsage>, String> {
        self.flush().await;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            lock(&inner.store)
                .usage_by_minute(since)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The key id that owns file `name` at `now` (see [`Store::file_owner`]),
    /// read from the store as it is: an upload's record is written durably
    /// before the upload is answered.
    pub async fn file_owner(
        &self,
        name: &str,
        now: crate::clock::Timestamp,
    ) -> Result<Option<String>, String> {
        let inner = self.inner.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            lock(&inner.store)
                .file_owner(&name, now)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The last write error, while records it left behind are unwritten.
    pub fn problem(&self) -> Option<String> {
        lock(&self.inner.problem).clone()
    }

    /// Records queued and not yet written.
    pub fn unwritten(&self) -> u64 {
        let queue = lock(&self.inner.queue);
        queue.queued - queue.written
    }

    /// Too many records wait for a store that refuses them: a call booked
    /// now might not be counted after a restart.
    pub fn full(&self) -> bool {
        self.problem().is_some() && self.unwritten() >= self.inner.max_unwritten
    }
}

impl Inner {
    /// Starts the flusher unless one is running.
    fn kick(inner: &Arc<Inner>) {
        if !inner.flushing.swap(true, Ordering::AcqRel) {
            let inner = inner.clone();
            inner
                .runtime
                .clone()
                .spawn_blocking(move || Inner::drain(&inner));
        }
    }

    /// Writes batches until nothing is pending or a write fails. One flusher
    /// at a time: a record queued between its last batch and its stepping
    /// down is picked up by taking the flag back.
    fn drain(inner: &Arc<Inner>) {
        loop {
            let wrote = inner.write_pending();
            inner.flushing.store(false, Ordering::Release);
            if !wrote {
                Inner::retry_later(inner);
                return;
            }
            if lock(&inner.queue).records.is_empty() || inner.flushing.swap(true, Ordering::AcqRel)
            {
                return;
            }
        }
    }

    /// Writes what is queued in one transaction; false if the store refused
    /// it (the batch is then back at the head of the queue).
    fn write_pending(&self) -> bool {
        let mut store = lock(&self.store);
        let (batch, last) = {
            let mut queue = lock(&self.queue);
            (std::mem::take(&mut queue.records), queue.queued)
        };
        let outcome = if batch.is_empty() {
            Ok(())
        } else {
            // A panic would end the flusher with its batch and leave
            // `flushing` set: every later record would wait for ever.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.apply(&batch)))
                .unwrap_or_else(|panic| Err(StoreError::Write(panicked(panic.as_ref()))))
        };
        let tried = match outcome {
            Ok(()) => {
                lock(&self.queue).written = last;
                let recovered = lock(&self.problem).take();
                if let Some(error) = recovered {
                    tracing::info!(
                        "the state store takes writes again ({} record(s) written after: {error})",
                        batch.len()
                    );
                }
                last
            }
            Err(e) => {
                let mut queue = lock(&self.queue);
                let newer = std::mem::replace(&mut queue.records, batch);
                queue.records.extend(newer);
                let waiting = queue.queued - queue.written;
                let mut problem = lock(&self.problem);
                if problem.is_none() {
                    tracing::error!(
                        "{e}; {waiting} record(s) kept in memory and retried every {}s",
                        RETRY_EVERY.as_secs()
                    );
                }
                *problem = Some(e.to_string());
                // Everything queued now would fail the same way: its
                // waiters go on, and the retry carries it.
                queue.queued
            }
        };
        self.tried.send_if_modified(|t| {
            let moved = *t < tried;
            *t = (*t).max(tried);
            moved
        });
        lock(&self.problem).is_none()
    }

    /// Tries the queue again after `RETRY_EVERY` (once scheduled, not twice).
    fn retry_later(inner: &Arc<Inner>) {
        if inner.retry_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = inner.clone();
        inner.runtime.clone().spawn(async move {
            tokio::time::sleep(RETRY_EVERY).await;
            inner.retry_scheduled.store(false, Ordering::Release);
            Inner::kick(&inner);
        });
    }
}

/// What a panic in the store said, as a write error.
fn panicked(panic: &(dyn std::any::Any + Send)) -> String {
    let said = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message");
    format!("the state store panicked while writing: {said}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::store::{Outcome, Recovered};

    /// A store that keeps the ids of the records it wrote, batch by batch,
    /// or refuses every write while `failing` is set (a full disk).
    struct Probe {
        batches: Arc<Mutex<Vec<Vec<i64>>>>,
        failing: Arc<AtomicBool>,
        panicking: Arc<AtomicBool>,
        rebuilds_windows: bool,
    }

    impl Store for Probe {
        fn recover(&mut self, _: Timestamp, _: Duration) -> Result<Recovered, StoreError> {
            Ok(Recovered::default())
        }
        fn apply(&mut self, batch: &[Record]) -> Result<(), StoreError> {
            if self.failing.load(Ordering::Acquire) {
                return Err(StoreError::Write("disk full".into()));
            }
            assert!(
                !self.panicking.load(Ordering::Acquire),
                "a bug in the store"
            );
            let ids = batch
                .iter()
                .map(|r| match r {
                    Record::CallSettled { id, .. } => *id,
                    _ => -1,
                })
                .collect();
            self.batches.lock().unwrap().push(ids);
            Ok(())
        }
        fn rebuilds_windows(&self) -> bool {
            self.rebuilds_windows
        }
    }

    type Batches = Arc<Mutex<Vec<Vec<i64>>>>;

    fn probe(rebuilds_windows: bool) -> (Probe, Batches, Arc<AtomicBool>) {
        let (probe, batches, failing, _) = panicking_probe(rebuilds_windows);
        (probe, batches, failing)
    }

    /// A probe, with a switch that makes its writes fail and one that makes
    /// them panic.
    fn panicking_probe(
        rebuilds_windows: bool,
    ) -> (Probe, Batches, Arc<AtomicBool>, Arc<AtomicBool>) {
        let batches = Batches::default();
        let failing = Arc::new(AtomicBool::new(false));
        let panicking = Arc::new(AtomicBool::new(false));
        let probe = Probe {
            batches: batches.clone(),
            failing: failing.clone(),
            panicking: panicking.clone(),
            rebuilds_windows,
        };
        (probe, batches, failing, panicking)
    }

    fn call(id: i64) -> Record {
        Record::CallSettled {
            id,
            outcome: Outcome::Ok,
            input_tokens: 1,
            output_tokens: 1,
            latency_ms: 1,
        }
    }

    fn written(batches: &Batches) -> Vec<i64> {
        batches.lock().unwrap().concat()
    }

    #[tokio::test(start_paused = true)]
    async fn ordinary_records_are_batched_and_durable_ones_commit_at_once() {
        let (store, batches, _) = probe(true);
        let ledger = Ledger::start(store, 100);
        for id in 1..=5 {
            ledger.record(call(id));
        }
        ledger.record_durably(call(6)).await;
        assert_eq!(
            *batches.lock().unwrap(),
            vec![vec![1, 2, 3, 4, 5, 6]],
            "the durable record carried the pending ones with it"
        );
        ledger.record(call(7));
        ledger.record(call(8));
        tokio::time::sleep(BATCH_WINDOW).await;
        tokio::task::yield_now().await;
        ledger.flush().await;
        assert_eq!(
            batches.lock().unwrap()[1],
            vec![7, 8],
            "ordinary records go together within the window"
        );
        assert_eq!((ledger.problem(), ledger.unwritten()), (None, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_keeps_every_record_in_order_until_the_store_takes_it() {
        let (store, batches, failing) = probe(true);
        let ledger = Ledger::start(store, 100);
        ledger.record_durably(call(1)).await;
        failing.store(true, Ordering::Release);
        for id in 2..=4 {
            ledger.record_durably(call(id)).await;
        }
        ledger.record(call(5));
        tokio::time::sleep(RETRY_EVERY * 3).await;
        ledger.flush().await;
        assert_eq!(written(&batches), vec![1], "nothing got through");
        assert_eq!(ledger.unwritten(), 4);
        assert_eq!(
            ledger.problem().as_deref(),
            Some("state store write failed: disk full"),
            "reported while records wait"
        );

        failing.store(false, Ordering::Release);
        tokio::time::sleep(RETRY_EVERY).await;
        ledger.flush().await;
        assert_eq!(
            written(&batches),
            vec![1, 2, 3, 4, 5],
            "retried by itself, every record once, in order"
        );
        assert_eq!((ledger.problem(), ledger.unwritten()), (None, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_panics_loses_nothing_and_wedges_nothing() {
        let (store, batches, _, panicking) = panicking_probe(true);
        let ledger = Ledger::start(store, 100);
        ledger.record_durably(call(1)).await;
        panicking.store(true, Ordering::Release);
        let tried = tokio::time::timeout(RETRY_EVERY * 5, async {
            ledger.record_durably(call(2)).await;
            ledger.record(call(3));
            ledger.record_durably(call(4)).await;
        })
        .await;
        assert!(tried.is_ok(), "a durable record waited for ever");
        assert_eq!(ledger.unwritten(), 3, "kept, not dropped with the panic");
        assert_eq!(
            ledger.problem().as_deref(),
            Some(
                "state store write failed: the state store panicked while writing: a bug in the store"
            ),
            "reported unhealthy while they wait"
        );
        panicking.store(false, Ordering::Release);
        tokio::time::sleep(RETRY_EVERY).await;
        ledger.flush().await;
        assert_eq!(
            written(&batches),
            vec![1, 2, 3, 4],
            "every record once, in order"
        );
        assert_eq!((ledger.problem(), ledger.unwritten()), (None, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_ledger_is_full_only_past_its_bound_of_unwritten_records() {
        let (store, _, failing) = probe(true);
        let ledger = Ledger::start(store, 3);
        failing.store(true, Ordering::Release);
        ledger.record_durably(call(1)).await;
        ledger.record_durably(call(2)).await;
        assert!(!ledger.full(), "2 of 3 unwritten");
        ledger.record_durably(call(3)).await;
        assert!(ledger.full(), "3 of 3 unwritten");
        assert!(
            !ledger.flush_within(RETRY_EVERY * 2).await,
            "a store that keeps refusing is given up on, and says so"
        );
        failing.store(false, Ordering::Release);
        assert!(ledger.flush_within(RETRY_EVERY * 2).await);
        assert!(!ledger.full());
    }

    #[tokio::test(start_paused = true)]
    async fn a_sent_call_waits_for_its_commit_only_where_restarts_rebuild_from_it() {
        let (store, batches, _) = probe(true);
        let rebuilt_from = Ledger::start(store, 100);
        rebuilt_from.record_sent(call(1)).await;
        assert_eq!(written(&batches), vec![1], "committed before the call");

        let (store, batches, _) = probe(false);
        let elsewhere = Ledger::start(store, 100);
        elsewhere.record_sent(call(1)).await;
        assert!(batches.lock().unwrap().is_empty(), "not waited for");
        tokio::time::sleep(BATCH_WINDOW).await;
        elsewhere.flush().await;
        assert_eq!(written(&batches), vec![1], "written within the window");
    }
}
