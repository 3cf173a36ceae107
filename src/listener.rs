//! Accepting connections so that slow or stalled clients cannot exhaust the
//! service: at most a cap of connections at once (`FLUX_MAX_CONNECTIONS`,
//! kept below the descriptor limit, which start-up raises to its hard
//! ceiling); at the cap the oldest idle one is closed to make room, or else
//! the one that has been reading a request body the longest. Each connection
//! must deliver a complete request header within [`HEADER_TIMEOUT`] of
//! opening or of its previous answer, so an idle keep-alive connection lives
//! that long too; a request body may pause no longer, and must arrive whole
//! within [`body_deadline`] (a floor plus its size at [`MIN_BODY_RATE`]), so
//! dripping it a byte at a time holds nothing for long. Accept errors (out
//! of descriptors) back off instead of spinning. Served with hyper's
//! HTTP/1.1 builder directly, since `axum::serve` exposes none of this.

use axum::Router;
use axum::http::Request;
use futures::TryFutureExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// A request header must arrive in full within this; it is also how long a
/// keep-alive connection may stay idle between requests, how long a request
/// body may pause, and the floor of [`body_deadline`].
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Past the first [`HEADER_TIMEOUT`], a request body must keep arriving at
/// this many bytes a second on average (256 kbit/s).
pub const MIN_BODY_RATE: u64 = 32 * 1024;

/// How long after its header a body of `received` bytes may take to
/// arrive: [`HEADER_TIMEOUT`] plus its size at [`MIN_BODY_RATE`] (a 20 MB
/// body: 30 s + 640 s). Counted on the bytes that came, not on the
/// `Content-Length` a client declares, so a lie buys no time.
pub fn body_deadline(received: u64) -> Duration {
    HEADER_TIMEOUT + Duration::from_secs_f64(received as f64 / MIN_BODY_RATE as f64)
}

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

/// The open connections, oldest first.
#[derive(Default)]
struct Open {
    next: u64,
    connections: BTreeMap<u64, Connection>,
}

struct Connection {
    state: Arc<Progress>,
    close: Arc<Notify>,
}

/// Where a connection is: how many requests it has in hand (from a
/// complete header until its answer has been sent), and since when it has
/// been reading a request body, while it is.
#[derive(Default)]
struct Progress {
    requests: AtomicUsize,
    reading_since: Mutex<Option<Instant>>,
}

impl Progress {
    fn idle(&self) -> bool {
        self.requests.load(Ordering::Acquire) == 0
    }

    fn reading_since(&self) -> Option<Instant> {
        *lock(&self.reading_since)
    }

    fn reading(&self, since: Option<Instant>) {
        *lock(&self.reading_since) = since;
    }
}

impl Open {
    fn add(&mut self) -> (u64, Arc<Progress>, Arc<Notify>) {
        self.next += 1;
        let connection = Connection {
            state: Arc::default(),
            close: Arc::default(),
        };
        let handles = (
            self.next,
            connection.state.clone(),
            connection.close.clone(),
        );
        self.connections.insert(self.next, connection);
        handles
    }

    /// Closes one connection to make room: the oldest with no request in
    /// hand (a stalled one, or one idle between requests), else the one
    /// that has been reading a request body the longest; never one whose
    /// request is complete (waiting for its slot, or upstream). False when
    /// every one is such.
    fn evict(&mut self) -> bool {
        let idle = self
            .connections
            .iter()
            .find(|(_, c)| c.state.idle())
            .map(|(id, _)| *id);
        let slowest = || {
            self.connections
                .iter()
                .filter_map(|(id, c)| Some((c.state.reading_since()?, *id)))
                .min()
                .map(|(_, id)| id)
        };
        match idle
            .or_else(slowest)
            .and_then(|id| self.connections.remove(&id))
        {
            Some(connection) => {
                connection.close.notify_one();
                true
            }
            None => false,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts a request in hand until it is dropped (its answer sent, or abandoned).
struct InHand(Arc<Progress>);

impl InHand {
    fn new(state: &Arc<Progress>) -> InHand {
        state.requests.fetch_add(1, Ordering::AcqRel);
        InHand(state.clone())
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a request body was cut off: it paused for [`HEADER_TIMEOUT`], or
/// fell behind [`body_deadline`]. The API answers it with 408.
#[derive(Debug)]
pub struct BodyTooSlow {
    pub received: u64,
    pub paused: bool,
}

impl std::fmt::Display for BodyTooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.paused {
            write!(
                f,
                "the request body stopped arriving for {} s",
                HEADER_TIMEOUT.as_secs()
            )
        } else {
            write!(
                f,
                "the request body arrived too slowly: {} bytes came in {} s (a body may take {} s plus 1 s per {} KiB)",
                self.received,
                body_deadline(self.received).as_secs(),
                HEADER_TIMEOUT.as_secs(),
                MIN_BODY_RATE / 1024
            )
        }
    }
}

impl std::error::Error for BodyTooSlow {}

/// A request body held to its pace (see the module doc), which marks its
/// connection as reading until it ends.
struct Paced {
    body: Incoming,
    state: Arc<Progress>,
    started: Instant,
    received: u64,
    /// The sooner of: the last frame plus [`HEADER_TIMEOUT`], and the
    /// whole body's deadline for what has come so far.
    timer: Pin<Box<Sleep>>,
    done: bool,
}

impl Paced {
    fn new(body: Incoming, state: Arc<Progress>) -> Paced {
        let started = Instant::now();
        let done = http_body::Body::is_end_stream(&body);
        if !done {
            state.reading(Some(started));
        }
        Paced {
            body,
            state,
            started,
            received: 0,
            timer: Box::pin(tokio::time::sleep_until(started + HEADER_TIMEOUT)),
            done,
        }
    }

    /// The instant the next frame must come by.
    fn next_deadline(&self) -> Instant {
        let pause = Instant::now() + HEADER_TIMEOUT;
        pause.min(self.started + body_deadline(self.received))
    }

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.state.reading(None);
        }
    }
}

impl Drop for Paced {
    fn drop(&mut self) {
        self.finish();
    }
}

impl http_body::Body for Paced {
    type Data = axum::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    let next = this.next_deadline();
                    this.timer.as_mut().reset(next);
                }
                if http_body::Body::is_end_stream(&this.body) {
                    this.finish();
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(other) => {
                this.finish();
                return Poll::Ready(other.map(|r| r.map_err(Into::into)));
            }
            Poll::Pending => {}
        }
        if this.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let whole = this.started + body_deadline(this.received);
        this.finish();
        Poll::Ready(Some(Err(Box::new(BodyTooSlow {
            received: this.received,
            paused: Instant::now() < whole,
        }))))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
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
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
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
/// make room (stalled ones first of all, since they never get a request
/// in), else the one reading a request body the longest; when every
/// connection has a complete request in hand, the new one waits for a free
/// slot.
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
                lock(&open).evict();
                tokio::select! {
                    _ = &mut shutdown => break,
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (id, progress, close) = lock(&open).add();
        let app = app.clone();
        let serving = progress.clone();
        // A combinator, not an `async` block: the block would hold the
        // router's future twice (the captured one and the one it awaits),
        // and hyper sizes each connection's slot for a request by it.
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let in_hand = InHand::new(&serving);
            let req = req.map(|body| Paced::new(body, serving.clone()));
            app.clone().oneshot(req).map_ok(|response| {
                response.map(|body| Answer {
                    body,
                    _in_hand: in_hand,
                })
            })
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
                // Evicted: one stuck reading a body is cut at once (its
                // request goes with it); one between requests closes now;
                // one whose answer is still being written (or a request
                // that began as it was chosen) gets a moment to finish, then
                // is dropped.
                _ = close.notified() => {
                    if progress.reading_since().is_none() {
                        connection.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(EVICTION_GRACE, connection.as_mut()).await;
                    }
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
