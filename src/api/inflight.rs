//! A global bound on request-body bytes held in memory (`FLUX_MAX_INFLIGHT_MB`).
//! A request is charged the body bytes it has delivered, as they arrive,
//! and keeps the charge for as long as its handler runs (waiting for a slot
//! included). A body that would take the total past the bound is cut off
//! there and its request answered 503 with `Retry-After`. A declared
//! `Content-Length` costs nothing by itself, so a client that lies about it
//! holds only what it really sent, and nobody else is refused for it.
//!
//! The same watch on the body answers one the listener cut off for its pace
//! ([`BodyTooSlow`]) with 408. Both answers are in the envelope of the
//! request's surface, whatever the handler made of the broken body.
//!
//! Bytes let go go back to the system ([`return_big_buffers`]), so a spike
//! of big bodies does not leave the process that large.

use super::AppState;
use super::error::ApiError;
use crate::listener::BodyTooSlow;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Makes the allocator give every large buffer (a body and its copies)
/// back to the system when it is freed. glibc's malloc otherwise raises its
/// mmap threshold after the first big buffer is freed and keeps later ones
/// for reuse: one 19.5 MB `/generate` body left the process 37 MB larger.
/// Called once at start; nothing to do with other allocators.
pub fn return_big_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator, under its lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Body bytes the service may hold, counted in KiB.
pub struct Budget {
    kib: Arc<Semaphore>,
    /// The whole budget, in KiB: no one request is charged more, so a body
    /// larger than the budget (but within `FLUX_MAX_BODY_MB`) still passes
    /// alone.
    total_kib: u32,
}

impl Budget {
    pub fn new(max_inflight_bytes: usize) -> Budget {
        let total_kib = max_inflight_bytes
            .div_ceil(1024)
            .clamp(1, u32::MAX as usize) as u32;
        Budget {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// KiB charged for `received` bytes.
    fn charge_for(&self, received: u64) -> u32 {
        u32::try_from(received.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.total_kib)
    }
}

/// Why a request's body was cut off.
enum Cut {
    OverBudget,
    TooSlow(String),
}

/// What one request holds of the budget, and why its body was cut off, if
/// it was: shared by its body and its [`Meter`], which outlives the body.
#[derive(Default)]
struct Tab {
    held: Mutex<Option<OwnedSemaphorePermit>>,
    cut: Mutex<Option<Cut>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tab {
    /// Raises the charge to `kib`; false if the budget has not that much left.
    fn charge(&self, budget: &Budget, kib: u32) -> bool {
        let mut held = lock(&self.held);
        let have = held.as_ref().map_or(0, |p| p.num_permits() as u32);
        if kib <= have {
            return true;
        }
        let Ok(more) = budget.kib.clone().try_acquire_many_owned(kib - have) else {
            return false;
        };
        match held.as_mut() {
            Some(permit) => permit.merge(more),
            None => *held = Some(more),
        }
        true
    }
}

/// The error a body over the budget ends with.
#[derive(Debug)]
struct OverBudget;

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request bodies held in memory reached FLUX_MAX_INFLIGHT_MB")
    }
}

impl std::error::Error for OverBudget {}

/// A request body, charged as it arrives.
struct Charged {
    body: Body,
    state: AppState,
    tab: Arc<Tab>,
    received: u64,
}

impl http_body::Body for Charged {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.received += frame.data_ref().map_or(0, |d| d.len() as u64);
                let budget = &this.state.inflight;
                if !this.tab.charge(budget, budget.charge_for(this.received)) {
                    *lock(&this.tab.cut) = Some(Cut::OverBudget);
                    return Poll::Ready(Some(Err(axum::Error::new(OverBudget))));
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let slow =
                    std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |e| {
                        e.source()
                    })
                    .find_map(|e| e.downcast_ref::<BodyTooSlow>());
                if let Some(slow) = slow {
                    *lock(&this.tab.cut) = Some(Cut::TooSlow(slow.to_string()));
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A request's watch over its body, from [`meter`] to [`Meter::settle`].
pub struct Meter(Arc<Tab>);

/// Charges `req`'s body to the budget as it arrives; one of the steps of
/// [`super::gate`], whose [`Meter`] settles once the handler is done.
pub fn meter(state: &AppState, req: Request) -> (Request, Meter) {
    let tab = Arc::new(Tab::default());
    let req = req.map(|body| {
        Body::new(Charged {
            body,
            state: state.clone(),
            tab: tab.clone(),
            received: 0,
        })
    });
    (req, Meter(tab))
}

impl Meter {
    /// Gives back what the body held, and answers a body that was cut off
    /// (503 or 408, in `envelope`) whatever the handler made of it.
    pub fn settle(self, response: Response, envelope: super::Envelope) -> Response {
        // The handler is done with the body: what it held goes back.
        lock(&self.0.held).take();
        let error = match lock(&self.0.cut).take() {
            None => return response,
            Some(Cut::OverBudget) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many request bytes are already held in memory (FLUX_MAX_INFLIGHT_MB); try again shortly",
            )
            .retry_after(Duration::from_secs(1)),
            Some(Cut::TooSlow(why)) => ApiError::new(StatusCode::REQUEST_TIMEOUT, why),
        };
        envelope.refuse(error)
    }
}
