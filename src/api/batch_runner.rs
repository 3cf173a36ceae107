//! Runs the batches. One task owns the turn order: it takes the next item
//! (`batch_queue`), counts its tokens (once), and books it as background
//! work through the dispatcher: only for now, within each window less the
//! interactive reserve, on the model chain and mode like `/generate`. A
//! booked item is sent on a task of its own (at most
//! `FLUX_BATCH_CONCURRENCY` at once), which re-plans after a 429 or a
//! failure as any call does. An item that cannot be booked now goes back to
//! the front of its batch, which waits until the instant the plan named (a
//! free slot, or Pacific midnight when its day is spent, shown as the
//! reason); the task sleeps until the earliest such instant, or until
//! something changes. It never polls.
//!
//! Every answer is stored before it counts (`store::batches`), so a crash
//! resends only what was in flight. A stop lets the items upstream finish
//! within `FLUX_DRAIN_S`; [`Runner`] is the guard that stops the task when
//! the service goes, even without a stop.

use super::AppState;
use super::batch_queue::{ItemRef, Next, Park, Progress, Queue};
use super::dispatch::{self, Failure, Job};
use super::error::ApiError;
use crate::clock::Timestamp;
use crate::scheduler::{KeyChoice, Priority, Target};
use crate::store::batches::{BatchRow, BatchStore, ItemOutcome, ItemResult, NewItem};
use crate::store::{RETRY_EVERY, StoreError};
use crate::wire::GenerateRequest;
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};

/// The batches: the queue in memory and the store behind it. Cheap to clone.
#[derive(Clone)]
pub struct Batches {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Mutex<Queue>,
    store: BatchStore,
    /// Something the runner waits on changed: a new batch, an answer, a cancel.
    wake: Notify,
    /// `FLUX_BATCH_TTL_H`.
    ttl: Duration,
    /// `FLUX_BATCH_CONCURRENCY`.
    concurrency: usize,
}

impl Batches {
    /// The batches kept in `store`, as of `now`: items without a result run
    /// (again).
    pub async fn open(
        store: BatchStore,
        now: Timestamp,
        ttl: Duration,
        concurrency: usize,
    ) -> Result<Batches, StoreError> {
        let mut queue = Queue::default();
        let stored = store.load().await?;
        let kept = stored.len();
        for batch in stored {
            let id = batch.row.id.clone();
            if let Some(state) = queue.restore(batch, now) {
                store.set_state(&id, state, now, Some(now)).await?;
            }
        }
        if kept > 0 {
            tracing::info!(
                "restored {kept} batch(es); {} item(s) to run",
                queue.unfinished_items()
            );
        }
        Ok(Batches {
            inner: Arc::new(Inner {
                queue: Mutex::new(queue),
                store,
                wake: Notify::new(),
                ttl,
                concurrency,
            }),
        })
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.inner.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a new batch, then queues it.
    pub async fn create(&self, row: BatchRow, items: Vec<NewItem>) -> Result<(), StoreError> {
        self.inner.store.create(row.clone(), items).await?;
        self.queue().add(row);
        self.inner.wake.notify_one();
        Ok(())
    }

    pub fn progress(&self, id: &str, now: Timestamp) -> Option<Progress> {
        self.queue().progress(id, now)
    }

    /// Every batch, newest first.
    pub fn all(&self, now: Timestamp) -> Vec<Progress> {
        self.queue().all(now)
    }

    /// Items not answered yet, all batches together.
    pub fn unfinished_items(&self) -> u64 {
        self.queue().unfinished_items()
    }

    pub async fn results(&self, id: &str) -> Result<Vec<ItemResult>, StoreError> {
        self.inner.store.results(id).await
    }

    /// Cancels a batch that still runs.
    pub async fn cancel(&self, id: &str, now: Timestamp) -> Result<(), StoreError> {
        let changed = self.queue().cancel(id, now);
        if let Some(state) = changed {
            self.inner
                .store
                .set_state(id, state, now, Some(now))
                .await?;
        }
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Forgets a batch; its items upstream still finish, unrecorded.
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.queue().remove(id);
        self.inner.wake.notify_one();
        self.inner.store.delete(id).await
    }

    /// Starts the task that runs the batches, on `state` (whose `batches`
    /// this is).
    pub fn start(&self, state: AppState) -> Runner {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(self.clone(), state, stopped));
        Runner {
            stop,
            task: Some(task),
        }
    }

    /// Forgets the batches whose results have been kept `FLUX_BATCH_TTL_H`.
    async fn purge(&self, now: Timestamp) {
        let expired = self.queue().expired(now, self.inner.ttl);
        for id in expired {
            self.queue().remove(&id);
            match self.inner.store.delete(&id).await {
                Ok(()) => tracing::info!("batch {id} expired: its results are deleted"),
                Err(e) => tracing::warn!("batch {id} expired, but its rows stay: {e}"),
            }
        }
    }

    /// The job that serves one item of `row`'s batch.
    fn job(row: &BatchRow, request: GenerateRequest) -> Job {
        Job {
            request,
            target: if row.fallback {
                Target::ChainFrom(row.model.clone())
            } else {
                Target::Model(row.model.clone())
            },
            keys: KeyChoice::Any,
            requests: 1,
            max_wait: Duration::ZERO,
            retry: true,
            priority: Priority::Background,
        }
    }

    /// Counts the item's tokens (unless they were), books it for now, and
    /// sends it on a task in `flight`; or puts it back, or records why it
    /// failed.
    async fn launch(
        &self,
        state: &AppState,
        item: ItemRef,
        estimate: Option<u64>,
        flight: &mut JoinSet<()>,
    ) {
        let row = self.progress(&item.batch, state.scheduler.clock().now());
        let request = match self.inner.store.request(&item.batch, item.index).await {
            Ok(Some(text)) => GenerateRequest::from_json(Bytes::from(text)).ok(),
            Ok(None) => None,
            Err(e) => {
                let until = state.scheduler.clock().now().plus(RETRY_EVERY);
                let reason = format!("the state store cannot be read: {e}");
                self.queue()
                    .put_back(&item, estimate, Park { until, reason });
                return;
            }
        };
        let (Some(row), Some(request)) = (row, request) else {
            // Deleted meanwhile (requests are checked before they are stored).
            self.queue().abandon(&item);
            return;
        };
        let mut job = Self::job(&row.row, request);
        let estimate = match dispatch::prepare(state, &mut job, estimate).await {
            Ok(tokens) => tokens,
            Err(refusal) => return self.refused(state, &item, estimate, refusal).await,
        };
        let booked = match dispatch::book_now(state, &job, estimate).await {
            Ok(booked) => booked,
            Err(refusal) => return self.refused(state, &item, Some(estimate), refusal).await,
        };
        let now = state.scheduler.clock().now();
        let started = {
            let mut queue = self.queue();
            if queue.active(&item) {
                Some(queue.sent(&item, now))
            } else {
                queue.abandon(&item);
                None
            }
        };
        // Cancelled or deleted while it was planned: dropping the grant releases it.
        let Some(started) = started else { return };
        if let Some(running) = started
            && let Err(e) = self
                .inner
                .store
                .set_state(&item.batch, running, now, None)
                .await
        {
            tracing::warn!("batch {}: its start is not stored: {e}", item.batch);
        }
        let (batches, state) = (self.clone(), state.clone());
        flight.spawn(async move {
            match dispatch::send_booked(&state, job, booked, estimate).await {
                Ok(served) => {
                    let body = served.reply.body;
                    batches
                        .answer(&state, &item, ItemOutcome::Response, body)
                        .await;
                }
                Err(refusal) => {
                    let counted = Some(estimate);
                    batches.refused(&state, &item, counted, refusal).await;
                }
            }
            batches.inner.wake.notify_one();
        });
    }

    /// A refusal that says "later" puts the item back (with `estimate`, its
    /// tokens, when they were counted) and parks its batch until then; any
    /// other is the item's error.
    async fn refused(
        &self,
        state: &AppState,
        item: &ItemRef,
        estimate: Option<u64>,
        refusal: Failure,
    ) {
        let ApiError {
            status,
            message,
            retry_after,
        } = refusal.error();
        if let Some(wait) = retry_after {
            let now = state.scheduler.clock().now();
            // Never the same instant again: that would spin.
            let until = now.plus(wait.max(Duration::from_millis(1)));
            let park = Park {
                until,
                reason: message,
            };
            self.queue().put_back(item, estimate, park);
            return;
        }
        let error = match refusal {
            Failure::Client { body, .. } if body["error"].is_object() => body["error"].clone(),
            _ => json!({
                "code": status.as_u16(),
                "message": message,
                "status": super::error::status_name(status),
            }),
        };
        self.answer(state, item, ItemOutcome::Error, error).await;
    }

    /// Stores an item's result (retrying while the store refuses: the call
    /// was made, and sending it again would spend quota), then counts it.
    async fn answer(&self, state: &AppState, item: &ItemRef, outcome: ItemOutcome, result: Value) {
        let text = result.to_string();
        while let Err(e) = self
            .inner
            .store
            .answer(&item.batch, item.index, outcome, text.clone())
            .await
        {
            tracing::warn!(
                "batch {} item {}: its answer is not stored yet ({e}); retrying",
                item.batch,
                item.index
            );
            tokio::time::sleep(RETRY_EVERY).await;
        }
        let now = state.scheduler.clock().now();
        let ended = self.queue().answered(item, outcome, now);
        if let Some(ended) = ended
            && let Err(e) = self
                .inner
                .store
                .set_state(&item.batch, ended, now, Some(now))
                .await
        {
            // A restart finds every item answered and ends it then.
            tracing::warn!("batch {}: its end is not stored: {e}", item.batch);
        }
    }
}

/// Stops the runner when dropped; [`Runner::stop`] stops it gracefully.
pub struct Runner {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Runner {
    /// No new item is sent from now on; those upstream get `FLUX_DRAIN_S`
    /// to finish (the others run again after a restart). The future
    /// resolves when the runner has ended.
    pub fn stop(mut self) -> impl Future<Output = ()> {
        let _ = self.stop.send(true);
        let task = self.task.take();
        async move {
            if let Some(task) = task {
                let _ = task.await;
            }
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The runner's loop (see the module doc).
async fn run(batches: Batches, state: AppState, mut stop: watch::Receiver<bool>) {
    let clock = state.scheduler.clock();
    let mut flight: JoinSet<()> = JoinSet::new();
    while !*stop.borrow() {
        while flight.try_join_next().is_some() {}
        batches.purge(clock.now()).await;
        let wake_at = if flight.len() >= batches.inner.concurrency {
            None
        } else {
            let next = batches.queue().next(clock.now());
            match next {
                Next::Item { item, estimate } => {
                    batches.launch(&state, item, estimate, &mut flight).await;
                    continue;
                }
                Next::Idle(at) => at,
            }
        };
        let expiry = batches.queue().next_expiry(batches.inner.ttl);
        let wake_at = wake_at.into_iter().chain(expiry).min();
        let sleep = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(clock.instant_at(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = batches.inner.wake.notified() => {}
            _ = sleep => {}
            Some(_) = flight.join_next(), if !flight.is_empty() => {}
            _ = stop.changed() => {}
        }
    }
    // Stopping: the items upstream finish within the drain window.
    let upstream = async { while flight.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(state.drain.window, upstream).await;
}
