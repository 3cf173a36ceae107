//! Slow and stalled clients: connections that never finish a request header
//! are closed after `HEADER_TIMEOUT`, a body must arrive within 30 s plus
//! its size at `MIN_BODY_RATE` (a drip is cut at its deadline, with 408),
//! stalled ones do not stop `/healthz` from answering, and none take the
//! service past `FLUX_MAX_CONNECTIONS`: at the cap the oldest idle one makes
//! room, else one stuck reading a body, never a complete request. Loopback
//! only, a bounded number of connections, on tokio's paused clock.

mod common;

use common::*;
use gemini_flux::listener::{HEADER_TIMEOUT, MIN_BODY_RATE};
use gemini_flux::sim::SimConfig;
use serde_json::json;
use std::io::{Read, Write};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

const FLASH: &str = "gemini-2.5-flash";

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

/// A raw connection that sent `head` (a request header), split so that a
/// test can keep writing its body while it waits for the answer.
async fn sent_header(stack: &Stack, head: &str) -> (OwnedReadHalf, OwnedWriteHalf) {
    let stream = TcpStream::connect(stack.svc.addr()).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    (reader, writer)
}

/// `POST /mode` with a JSON body of exactly `length` bytes (the rest of it
/// from [`mode_body`]).
fn mode_head(length: usize) -> String {
    format!(
        "POST /mode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// A `/mode` body of `length` bytes: the mode, and padding the service ignores.
fn mode_body(length: usize) -> Vec<u8> {
    let open = br#"{"mode": "both", "pad": ""#;
    let mut body = open.to_vec();
    body.resize(length - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

/// Reads one answer: its status and JSON body.
async fn read_answer(reader: &mut OwnedReadHalf) -> (u16, serde_json::Value) {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = reader.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed without an answer: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("a content-length");
        if body.len() >= length {
            let status = head[9..12].parse().unwrap();
            return (status, serde_json::from_str(&body[..length]).unwrap());
        }
    }
}

/// `POST /mode` with a body of `length` bytes, sent `chunk` bytes at a
/// time, the first `first` after the header and the others `every` apart:
/// the answer (bounded: 20 virtual minutes), and how long after the header
/// it came.
async fn dripped(
    stack: &Stack,
    length: usize,
    first: Duration,
    chunk: usize,
    every: Duration,
) -> (u16, serde_json::Value, Duration) {
    let (mut reader, mut writer) = sent_header(stack, &mode_head(length)).await;
    let sent = Instant::now();
    let body = mode_body(length);
    let dripping = async {
        tokio::time::sleep(first).await;
        for piece in body.chunks(chunk) {
            if writer.write_all(piece).await.is_err() {
                break;
            }
            tokio::time::sleep(every).await;
        }
        std::future::pending::<()>().await;
    };
    let (status, answer) = tokio::time::timeout(Duration::from_secs(1200), async {
        tokio::select! {
            answer = read_answer(&mut reader) => answer,
            _ = dripping => unreachable!(),
        }
    })
    .await
    .expect("answered, not held for ever");
    (status, answer, sent.elapsed())
}

/// `took` is `at`, to the millisecond.
fn assert_cut_at(took: Duration, at: Duration) {
    assert!(
        (at..at + Duration::from_millis(1)).contains(&took),
        "cut off at {took:?}, not {at:?}"
    );
}

/// The message of a 408.
fn message(answer: &serde_json::Value) -> &str {
    answer["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn a_body_dripped_a_byte_every_29_s_is_cut_at_its_whole_deadline() {
    let stack = stack(&[]).await;
    // Each byte comes before the 30 s pause runs out: only the deadline
    // of the whole body can end it.
    let second = Duration::from_secs(29);
    let (status, answer, took) = dripped(&stack, 100, second, 1, second).await;
    // One byte came: it buys 1/32768 s past the 30 s floor.
    assert_cut_at(
        took,
        HEADER_TIMEOUT + Duration::from_nanos(1_000_000_000 / MIN_BODY_RATE),
    );
    assert_eq!(status, 408, "{answer}");
    assert_eq!(answer["error"]["status"], "DEADLINE_EXCEEDED");
    assert!(
        message(&answer).starts_with("the request body arrived too slowly: 1 bytes came in 30 s"),
        "{answer}"
    );
    assert_eq!(
        stack.get("/mode").await.1["mode"],
        "both",
        "nothing changed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stops_for_30_s_is_cut_however_much_time_it_has_left() {
    let stack = stack(&[]).await;
    // 1 MiB at once would have 62 s for the whole; it stops 10 bytes short.
    let length = 1024 * 1024;
    let hour = Duration::from_secs(3600);
    let (status, answer, took) = dripped(&stack, length, Duration::ZERO, length - 10, hour).await;
    assert_cut_at(took, HEADER_TIMEOUT);
    assert_eq!(status, 408, "{answer}");
    assert_eq!(
        message(&answer),
        "the request body stopped arriving for 30 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_may_take_30_s_plus_its_size_at_32_kib_a_second() {
    let stack = stack(&[]).await;
    let pace = |length| {
        dripped(
            &stack,
            length,
            Duration::ZERO,
            25 * 1024,
            Duration::from_secs(1),
        )
    };
    // 25 KiB a second, slower than 32 KiB/s: a body of 1 MiB is whole
    // after 41 s, within its 62 s.
    let (status, answer, _) = pace(1024 * 1024).await;
    assert_eq!((status, &answer["mode"]), (200, &json!("both")), "{answer}");
    // At that pace a 4 MiB body falls behind: after the 138th piece (at
    // 137 s) 3,450 KiB have come, which may take 30 s + 107.8125 s.
    let (status, answer, took) = pace(4 * 1024 * 1024).await;
    assert_cut_at(took, Duration::from_micros(137_812_500));
    assert_eq!(status, 408, "{answer}");
    assert!(
        message(&answer).contains(&format!("{} bytes came in 137 s", 138 * 25 * 1024)),
        "{answer}"
    );
}

#[tokio::test(start_paused = true)]
async fn at_the_cap_a_connection_stuck_reading_a_body_makes_room_and_a_waiting_request_stays() {
    let limits_env = json!({FLASH: {"rpm": 1, "tpm": 250_000, "rpd": 1000}}).to_string();
    let stack = Stack::start(
        SimConfig::new(["sim-key-0001"]).with_limits(limits(FLASH, 1, 250_000, 1000)),
        quiet_noon(),
        &[
            ("FLUX_MAX_CONNECTIONS", "2"),
            ("FLUX_MODELS", FLASH),
            ("FLUX_LIMITS", &limits_env),
        ],
    )
    .await;
    assert_eq!(stack.generate(json!({"prompt": "first"})).await.0, 200);
    // The minute's one request is spent: this one waits 60 s for its slot,
    // its request complete and in hand.
    let waiting = tokio::spawn({
        let (http, base) = (stack.http.clone(), stack.svc.base_url());
        async move { generate_at(&http, &base, json!({"prompt": "second"})).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    // A complete header, then a body that comes a byte at a time.
    let (mut stuck, mut writer) = sent_header(&stack, &mode_head(100)).await;
    writer.write_all(b"{").await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;

    let asked = Instant::now();
    let (status, _) = stack.get("/healthz").await;
    assert_eq!(status, 200);
    assert!(
        asked.elapsed() < Duration::from_millis(100),
        "room was made at once: {:?}",
        asked.elapsed()
    );
    let mut rest = Vec::new();
    let closed = stuck.read_to_end(&mut rest).await;
    assert!(
        closed.is_err() || rest.is_empty(),
        "the stuck body's connection was cut without an answer: {}",
        String::from_utf8_lossy(&rest)
    );
    let (status, _, body) = waiting.await.unwrap();
    assert_eq!(status, 200, "the waiting request was never cut: {body}");
    assert_eq!(body["wait_applied"].as_f64().unwrap().round(), 60.0);
    assert_eq!(stack.sim_stats().rejected_429, 0);
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
