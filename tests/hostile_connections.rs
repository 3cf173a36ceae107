//! Slow and stalled clients: connections that never finish a request header
//! (or body) are closed after `HEADER_TIMEOUT`, do not stop `/healthz` from
//! answering, and never take the service past `FLUX_MAX_CONNECTIONS`: at the
//! cap the oldest idle one makes room. Loopback only,
//! a bounded number of connections, on tokio's paused clock.

mod common;

use common::*;
use gemini_flux::listener::HEADER_TIMEOUT;
use gemini_flux::sim::SimConfig;
use std::io::{Read, Write};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Stalled connections the test opens: bounded, well under any descriptor limit.
const STALLED: usize = 200;

async fn stack(env: &[(&str, &str)]) -> Stack {
    Stack::start(SimConfig::new(["sim-key-0001"]), quiet_noon(), env).await
}

/// A connection that sent half a request header, or nothing at all. A
/// plain non-blocking socket: looking at it never moves the paused clock.
fn stalled(stack: &Stack, half_header: bool) -> std::net::TcpStream {
    let mut stream = std::net::TcpStream::connect(stack.svc.addr()).unwrap();
    if half_header {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .unwrap();
    }
    stream.set_nonblocking(true).unwrap();
    stream
}

/// The service closed `stream`: reading finds the end, or a reset.
fn closed(stream: &mut std::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        Ok(_) => false,
    }
}

/// `n` stalled connections, the `i`-th with half a header when `half_header(i)`;
/// each accepted before the next opens (so the backlog never fills).
async fn open_stalled(
    stack: &Stack,
    n: usize,
    half_header: impl Fn(usize) -> bool,
) -> Vec<std::net::TcpStream> {
    let mut streams = Vec::new();
    for i in 0..n {
        streams.push(stalled(stack, half_header(i)));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    streams
}

/// `/healthz` answers 200 at once, not after the stalled connections.
async fn healthz_answers_at_once(stack: &Stack) {
    let asked = Instant::now();
    let (status, _) = stack.get("/healthz").await;
    assert_eq!(status, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "answered at once, not after the stalled ones: {:?}",
        asked.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn stalled_connections_are_closed_and_healthz_still_answers() {
    let stack = stack(&[]).await;
    let mut streams = open_stalled(&stack, STALLED, |i| i % 2 == 0).await;
    healthz_answers_at_once(&stack).await;
    tokio::time::sleep(HEADER_TIMEOUT - Duration::from_secs(1)).await;
    let mut early = 0;
    for s in &mut streams {
        early += usize::from(closed(s));
    }
    assert_eq!(early, 0, "none closed before the header timeout");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut open = 0;
    for s in &mut streams {
        open += usize::from(!closed(s));
    }
    assert_eq!(
        open, 0,
        "all {STALLED} closed within the header timeout of 30 s"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_is_closed_after_the_timeout() {
    let stack = stack(&[]).await;
    let mut stream = TcpStream::connect(stack.svc.addr()).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let mut stream = stream.into_std().unwrap();
    tokio::time::sleep(HEADER_TIMEOUT - Duration::from_secs(1)).await;
    assert!(!closed(&mut stream), "kept alive for a while");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(closed(&mut stream), "then closed");
}

#[tokio::test(start_paused = true)]
async fn at_the_cap_the_oldest_idle_connection_makes_room() {
    let stack = stack(&[("FLUX_MAX_CONNECTIONS", "5")]).await;
    let mut streams = open_stalled(&stack, 5, |_| false).await;
    healthz_answers_at_once(&stack).await;
    let closed: Vec<bool> = streams.iter_mut().map(closed).collect();
    assert_eq!(
        closed,
        [true, false, false, false, false],
        "the oldest stalled connection, and only it, was closed to make room"
    );
}

#[tokio::test(start_paused = true)]
async fn at_the_cap_a_connection_with_a_request_in_hand_is_never_cut() {
    let stack = stack(&[("FLUX_MAX_CONNECTIONS", "2")]).await;
    let mut streams = Vec::new();
    for _ in 0..2 {
        // A complete header, then a body that stops arriving.
        let mut stream = std::net::TcpStream::connect(stack.svc.addr()).unwrap();
        stream
            .write_all(b"POST /mode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"mode\": ")
            .unwrap();
        stream.set_nonblocking(true).unwrap();
        streams.push(stream);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let asked = Instant::now();
    let (status, _) = stack.get("/healthz").await;
    assert_eq!(status, 200);
    let waited = asked.elapsed();
    assert!(
        (HEADER_TIMEOUT - Duration::from_secs(1)..HEADER_TIMEOUT + Duration::from_secs(2))
            .contains(&waited),
        "served once a stalled body timed out, not by cutting a request: {waited:?}"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    for stream in &mut streams {
        let mut answer = vec![0u8; 512];
        let n = stream.read(&mut answer).unwrap();
        assert!(
            answer[..n].starts_with(b"HTTP/1.1 400"),
            "the stalled body got an answer: {}",
            String::from_utf8_lossy(&answer[..n])
        );
    }
}

#[test]
fn the_cap_stays_below_the_descriptor_limit() {
    let limit = gemini_flux::listener::raise_descriptor_limit().unwrap();
    let cap = gemini_flux::listener::connection_cap(usize::MAX) as u64;
    assert!(
        cap * 2 < limit,
        "each connection may need a descriptor of its own and one upstream: cap {cap}, limit {limit}"
    );
    assert_eq!(gemini_flux::listener::connection_cap(10), 10);
}

#[tokio::test(start_paused = true)]
async fn a_stop_waits_for_open_connections_no_longer_than_the_drain_window() {
    let stack = stack(&[("FLUX_DRAIN_S", "2")]).await;
    // Half a header: left alone, it would hold a graceful stop for the
    // whole header timeout.
    let _stalled = open_stalled(&stack, 1, |_| true).await;
    let Stack { svc, .. } = stack;
    let asked = Instant::now();
    svc.stop().await.unwrap();
    let took = asked.elapsed();
    assert!(
        took < HEADER_TIMEOUT / 2,
        "the stop took {took:?}, beyond the 2 s drain window"
    );
}
