//! The ledger: batches records into transactions off the hot path.
//!
//! Ordinary records wait at most `BATCH_WINDOW` for company. A durable
//! record (a call about to go upstream) starts a flush at once and its
//! sender resumes when a commit has covered it. Flushes are group commits:
//! one flusher at a time, on tokio's blocking pool, writes whatever is
//! pending, again and again until nothing is, so concurrent durable records
//! share transactions instead of queueing for the store one by one. A failed
//! write is logged and reported through [`Ledger::problem`]; scheduling goes
//! on from memory.

use super::{Record, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// The longest an ordinary record waits before it is written.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// A handle to the state store; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

struct Inner {
    store: Mutex<Box<dyn Store>>,
    /// Records not yet written, and the number of the last one queued.
    pending: Mutex<(Vec<Record>, u64)>,
    /// The number of the last record a write has covered.
    committed: watch::Sender<u64>,
    /// A flusher is running.
    flushing: AtomicBool,
    /// A batch-window flush is scheduled.
    flush_scheduled: AtomicBool,
    problem: Mutex<Option<String>>,
    /// The store is what a restart rebuilds the windows from
    /// ([`Store::rebuilds_windows`]).
    sent_calls_must_commit: bool,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ledger {
    pub fn start(store: impl Store) -> Ledger {
        let sent_calls_must_commit = store.rebuilds_windows();
        Ledger {
            inner: Arc::new(Inner {
                sent_calls_must_commit,
                store: Mutex::new(Box::new(store)),
                pending: Mutex::new((Vec::new(), 0)),
                committed: watch::Sender::new(0),
                flushing: AtomicBool::new(false),
                flush_scheduled: AtomicBool::new(false),
                problem: Mutex::new(None),
            }),
        }
    }

    fn enqueue(&self, record: Record) -> u64 {
        let mut pending = lock(&self.inner.pending);
        pending.0.push(record);
        pending.1 += 1;
        pending.1
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

    /// Writes `record`, with whatever is pending, and returns once a commit
    /// has covered it (or the write failed).
    pub async fn record_durably(&self, record: Record) {
        let number = self.enqueue(record);
        self.written(number).await;
    }

    /// Records a call about to go upstream: committed before it returns
    /// where the store is what a restart rebuilds the windows from (a crash
    /// then still counts the call), else within `BATCH_WINDOW`.
    pub async fn record_sent(&self, record: Record) {
        if self.inner.sent_calls_must_commit {
            self.record_durably(record).await;
        } else {
            self.record(record);
        }
    }

    /// Returns once everything recorded so far is written.
    pub async fn flush(&self) {
        let number = lock(&self.inner.pending).1;
        self.written(number).await;
    }

    async fn written(&self, number: u64) {
        let mut committed = self.inner.committed.subscribe();
        self.kick();
        let _ = committed.wait_for(|c| *c >= number).await;
    }

    /// Starts the flusher unless one is running.
    fn kick(&self) {
        if !self.inner.flushing.swap(true, Ordering::AcqRel) {
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || inner.drain());
        }
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

    /// The last write error, until a write succeeds again.
    pub fn problem(&self) -> Option<String> {
        lock(&self.inner.problem).clone()
    }
}

impl Inner {
    /// Writes batches until nothing is pending. One flusher at a time: a
    /// record queued between its last batch and its stepping down is picked
    /// up by taking the flag back.
    fn drain(&self) {
        loop {
            self.write_pending();
            self.flushing.store(false, Ordering::Release);
            if lock(&self.pending).0.is_empty() || self.flushing.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }

    fn write_pending(&self) {
        let mut store = lock(&self.store);
        let (batch, last) = {
            let mut pending = lock(&self.pending);
            (std::mem::take(&mut pending.0), pending.1)
        };
        if !batch.is_empty() {
            let outcome = store.apply(&batch);
            let mut problem = lock(&self.problem);
            match outcome {
                Ok(()) => *problem = None,
                Err(e) => {
                    tracing::error!("{e}; {} record(s) kept in memory only", batch.len());
                    *problem = Some(e.to_string());
                }
            }
        }
        self.committed.send_if_modified(|c| {
            let moved = *c < last;
            *c = (*c).max(last);
            moved
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::store::{Recovered, StoreError};

    /// A store that records batches, or fails every write.
    struct Probe {
        batches: Arc<Mutex<Vec<usize>>>,
        fail: bool,
        rebuilds_windows: bool,
    }

    impl Store for Probe {
        fn recover(&mut self, _: Timestamp, _: Duration) -> Result<Recovered, StoreError> {
            Ok(Recovered::default())
        }
        fn apply(&mut self, batch: &[Record]) -> Result<(), StoreError> {
            self.batches.lock().unwrap().push(batch.len());
            if self.fail {
                Err(StoreError::Write("disk full".into()))
            } else {
                Ok(())
            }
        }
        fn rebuilds_windows(&self) -> bool {
            self.rebuilds_windows
        }
    }

    fn probe(batches: &Arc<Mutex<Vec<usize>>>, rebuilds_windows: bool) -> Probe {
        Probe {
            batches: batches.clone(),
            fail: false,
            rebuilds_windows,
        }
    }

    fn mode_record() -> Record {
        Record::Mode {
            mode: crate::policy::Mode::Both,
            configured: crate::policy::Mode::Both,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ordinary_records_are_batched_and_durable_ones_commit_at_once() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let ledger = Ledger::start(probe(&batches, true));
        for _ in 0..5 {
            ledger.record(mode_record());
        }
        ledger.record_durably(mode_record()).await;
        assert_eq!(
            *batches.lock().unwrap(),
            vec![6],
            "the durable record carried the pending ones with it"
        );
        ledger.record(mode_record());
        ledger.record(mode_record());
        tokio::time::sleep(BATCH_WINDOW).await;
        tokio::task::yield_now().await;
        ledger.flush().await;
        assert_eq!(
            *batches.lock().unwrap(),
            vec![6, 2],
            "ordinary records go together within the window"
        );
        assert_eq!(ledger.problem(), None);
    }

    #[tokio::test]
    async fn a_failing_write_is_reported_and_the_caller_goes_on() {
        let ledger = Ledger::start(Probe {
            fail: true,
            ..probe(&Arc::default(), true)
        });
        ledger.record_durably(mode_record()).await;
        assert_eq!(
            ledger.problem().as_deref(),
            Some("state store write failed: disk full")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sent_call_waits_for_its_commit_only_where_restarts_rebuild_from_it() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let rebuilt_from = Ledger::start(probe(&batches, true));
        rebuilt_from.record_sent(mode_record()).await;
        assert_eq!(
            *batches.lock().unwrap(),
            vec![1],
            "committed before the call"
        );

        let batches = Arc::new(Mutex::new(Vec::new()));
        let elsewhere = Ledger::start(probe(&batches, false));
        elsewhere.record_sent(mode_record()).await;
        assert!(batches.lock().unwrap().is_empty(), "not waited for");
        tokio::time::sleep(BATCH_WINDOW).await;
        elsewhere.flush().await;
        assert_eq!(
            *batches.lock().unwrap(),
            vec![1],
            "written within the window"
        );
    }
}
