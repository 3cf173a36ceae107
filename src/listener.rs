//! Accepting connections so that slow or stalled clients cannot exhaust the
//! service: at most a cap of connections at once (`FLUX_MAX_CONNECTIONS`,
//! kept below the descriptor limit, which start-up raises to its hard
//! ceiling), the oldest idle one closed to make room at the cap; each must
//! deliver a complete request header within [`HEADER_TIMEOUT`] of opening or
//! of its previous answer, so an idle keep-alive connection lives that long
//! too, and a request body may pause no longer; accept errors (out of
//! descriptors) back off instead of spinning. Served with hyper's HTTP/1.1
//! builder directly, since `axum::serve` exposes none of this.

use axum::Router;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

/// A request header must arrive in full within this; it is also how long a
/// keep-alive connection may stay idle between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Descriptors kept back from connections: the state store, Redis, logs.
const RESERVED_DESCRIPTORS: u64 = 64;

/// The longest pause after repeated accept errors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How long an evicted connection may take to finish what it was writing.
const EVICTION_GRACE: Duration = Duration::from_secs(1);

/// The limit on open descriptors (soft, hard), if the platform has one.
#[cfg(unix)]
fn descriptor_limits() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit)
}

/// Raises the soft limit on open descriptors to the hard one; returns the
/// soft limit in force afterwards.
#[cfg(unix)]
pub fn raise_descriptor_limit() -> Option<u64> {
    let limit = descriptor_limits()?;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            tracing::warn!("could not raise the open-descriptor limit to its hard ceiling");
        }
    }
    descriptor_limit()
}

/// The soft limit on open descriptors.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
fn descriptor_limit() -> Option<u64> {
    descriptor_limits().map(|l| l.rlim_cur as u64)
}

#[cfg(not(unix))]
pub fn raise_descriptor_limit() -> Option<u64> {
    None
}

#[cfg(not(unix))]
fn descriptor_limit() -> Option<u64> {
    None
}

/// `configured`, lowered so that every connection can hold its own
/// descriptor and one to the upstream without reaching the limit.
pub fn connection_cap(configured: usize) -> usize {
    let room = descriptor_limit()
        .map_or(u64::MAX, |n| n.saturating_sub(RESERVED_DESCRIPTORS) / 2)
        .max(1);
    configured.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// The open connections, oldest first, each with how many requests it has
/// in hand (from a complete header until its answer has been sent).
#[derive(Default)]
struct Open {
    next: u64,
    connections: BTreeMap<u64, Connection>,
}

struct Connection {
    requests: Arc<AtomicUsize>,
    close: Arc<Notify>,
}

impl Open {
    fn add(&mut self) -> (u64, Arc<AtomicUsize>, Arc<Notify>) {
        self.next += 1;
        let connection = Connection {
            requests: Arc::default(),
            close: Arc::default(),
        };
        let handles = (
            self.next,
            connection.requests.clone(),
            connection.close.clone(),
        );
        self.connections.insert(self.next, connection);
        handles
    }

    /// Closes the oldest connection with no request in hand (a stalled one,
    /// or one idle between requests); false when every one is working.
    fn evict_idle(&mut self) -> bool {
        let idle = self
            .connections
            .iter()
            .find(|(_, c)| c.requests.load(Ordering::Acquire) == 0)
            .map(|(id, _)| *id);
        match idle.and_then(|id| self.connections.remove(&id)) {
            Some(connection) => {
                connection.close.notify_one();
                true
            }
            None => false,
        }
    }
}

fn lock(open: &Mutex<Open>) -> MutexGuard<'_, Open> {
    open.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts a request in hand until it is dropped (its answer sent, or abandoned).
struct InHand(Arc<AtomicUsize>);

impl InHand {
    fn new(requests: &Arc<AtomicUsize>) -> InHand {
        requests.fetch_add(1, Ordering::AcqRel);
        InHand(requests.clone())
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body, holding its request in hand until it has been sent.
struct Answer {
    body: axum::body::Body,
    _in_hand: InHand,
}

impl http_body::Body for Answer {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Serves `app` on `listener`, at most `cap` connections at once, until
/// `shutdown` completes; then stops accepting and waits for the open
/// connections to finish what they are doing.
///
/// At the cap, the oldest connection with no request in hand is closed to
/// make room (stalled ones first of all, since they never get a request in);
/// when every connection is working, the new one waits for a free slot.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    cap: usize,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(cap));
    let open = Arc::new(Mutex::new(Open::default()));
    let (closing, closing_signal) = watch::channel(false);
    let mut failures: u32 = 0;
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if failures > 0 {
                        tracing::info!("accepting connections again after {failures} failed accept(s)");
                        failures = 0;
                    }
                    stream
                }
                Err(e) if per_connection(&e) => continue,
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::error!("accept error: {e}; backing off until it clears");
                    }
                    let pause = Duration::from_millis(10 << failures.min(7)).min(MAX_ACCEPT_BACKOFF);
                    tokio::time::sleep(pause).await;
                    continue;
                }
            },
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                lock(&open).evict_idle();
                tokio::select! {
                    _ = &mut shutdown => break,
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (id, requests, close) = lock(&open).add();
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let in_hand = InHand::new(&requests);
            // A body that stops arriving is cut off like a stalled header.
            let req = req.map(|body| TimeoutBody::new(HEADER_TIMEOUT, body));
            let answer = app.clone().oneshot(req);
            async move {
                let response = answer.await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| Answer {
                    body,
                    _in_hand: in_hand,
                }))
            }
        });
        let mut closing_signal = closing_signal.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let stopping = async {
                let _ = closing_signal.wait_for(|c| *c).await;
            };
            tokio::select! {
                _ = connection.as_mut() => {}
                // Evicted: a connection between requests closes now; one whose
                // answer is still being written (or a request that began as it
                // was chosen) gets a moment to finish, then is dropped.
                _ = close.notified() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(EVICTION_GRACE, connection.as_mut()).await;
                }
                _ = stopping => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            lock(&open).connections.remove(&id);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    let _ = slots.acquire_many(cap as u32).await;
    Ok(())
}

/// Errors that concern one connection only (it was gone before we took it).
fn per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    )
}
