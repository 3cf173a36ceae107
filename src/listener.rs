//! Accepting connections so that slow or stalled clients cannot exhaust the
//! service: at most a cap of connections at once (`FLUX_MAX_CONNECTIONS`,
//! kept below the descriptor limit, which start-up raises to its hard
//! ceiling); each must deliver a complete request header within
//! [`HEADER_TIMEOUT`] of opening or of its previous answer, so an idle
//! keep-alive connection lives that long too; accept errors (out of
//! descriptors) back off instead of spinning. Served with hyper's HTTP/1.1
//! builder directly, since `axum::serve` exposes none of this.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// A request header must arrive in full within this; it is also how long a
/// keep-alive connection may stay idle between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Descriptors kept back from connections: the state store, Redis, logs.
const RESERVED_DESCRIPTORS: u64 = 64;

/// The longest pause after repeated accept errors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

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

/// Serves `app` on `listener`, at most `cap` connections at once, until
/// `shutdown` completes; then stops accepting and waits for the open
/// connections to finish what they are doing.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    cap: usize,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(cap));
    let (closing, closing_signal) = watch::channel(false);
    let mut failures: u32 = 0;
    tokio::pin!(shutdown);
    loop {
        // At the cap, new connections wait in the kernel's backlog until one
        // closes (a stalled one does within HEADER_TIMEOUT).
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
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
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut closing_signal = closing_signal.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = closing_signal.wait_for(|c| *c) => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
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
