//! Helpers shared by the end-to-end tests: a simulator on an ephemeral port,
//! a wall-clock origin, and a plain HTTP client.
#![allow(dead_code)] // each test binary uses its own subset

use gemini_flux::clock::{Clock, Timestamp};
use gemini_flux::policy::Limits;
use gemini_flux::sim::{SimConfig, SimServer};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// A timestamp from RFC 3339 text.
pub fn at(rfc3339: &str) -> Timestamp {
    Timestamp::from_millis(
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis(),
    )
}

/// A weekday noon in Pacific time, far from any midnight.
pub fn quiet_noon() -> Timestamp {
    at("2026-06-10T19:00:00Z")
}

pub fn limits(model: &str, rpm: u32, tpm: u64, rpd: u32) -> BTreeMap<String, Limits> {
    BTreeMap::from([(model.to_string(), Limits { rpm, tpm, rpd })])
}

pub async fn start_sim(config: SimConfig, wall: Timestamp) -> SimServer {
    SimServer::start(
        config,
        Clock::starting_at(wall),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("simulator starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A request whose prompt counts exactly `tokens` tokens in the simulator.
pub fn request_of(tokens: u64) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": "x".repeat(tokens as usize * 4)}]}]})
}
