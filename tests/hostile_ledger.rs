//! A full disk loses no call: the ledger keeps what the store refuses, in
//! order, and writes it once the store takes writes again; the service says
//! it is not ready meanwhile, stops booking past `FLUX_MAX_UNWRITTEN`, and a
//! restart remembers every call the upstream served.

mod common;

use common::*;
use gemini_flux::clock::{Clock, Timestamp};
use gemini_flux::service;
use gemini_flux::sim::{SimConfig, SimServer};
use gemini_flux::store::{RETRY_EVERY, Record, Recovered, SqliteStore, Store, StoreError};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const FLASH: &str = "gemini-2.5-flash";

/// The real SQLite store, refusing every write while `full` is set, as a
/// full disk makes it do.
struct FillableDisk {
    store: SqliteStore,
    full: Arc<AtomicBool>,
}

impl Store for FillableDisk {
    fn recover(
        &mut self,
        now: Timestamp,
        window: std::time::Duration,
    ) -> Result<Recovered, StoreError> {
        self.store.recover(now, window)
    }
    fn apply(&mut self, batch: &[Record]) -> Result<(), StoreError> {
        if self.full.load(Ordering::Acquire) {
            return Err(StoreError::Write("database or disk is full".into()));
        }
        self.store.apply(batch)
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        self.store.sync()
    }
}

struct World {
    sim: SimServer,
    clock: Clock,
    state: std::path::PathBuf,
    http: reqwest::Client,
}

impl World {
    async fn new() -> World {
        let clock = Clock::starting_at(quiet_noon());
        let sim = SimServer::start(
            SimConfig::new(["sim-key-0001"]).with_limits(limits(
                FLASH,
                10_000,
                100_000_000,
                10_000,
            )),
            clock,
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        World {
            sim,
            clock,
            state: fresh_state_path(),
            http: client(),
        }
    }

    fn settings(&self, max_unwritten: &str) -> gemini_flux::config::Settings {
        let limits = json!({FLASH: {"rpm": 10_000, "tpm": 100_000_000, "rpd": 10_000}}).to_string();
        settings(
            &self.sim.base_url(),
            "sim-key-0001",
            &self.state,
            &[
                ("FLUX_MODELS", FLASH),
                ("FLUX_LIMITS", &limits),
                ("FLUX_POLICY_FETCH", "false"),
                ("FLUX_TOKEN_COUNT", "local"),
                ("FLUX_MAX_UNWRITTEN", max_unwritten),
            ],
        )
    }

    /// A service on the real state file, whose disk fills while `full` is set.
    async fn start_fillable(
        &self,
        max_unwritten: &str,
    ) -> (service::RunningService, Arc<AtomicBool>) {
        let full = Arc::new(AtomicBool::new(false));
        let store = FillableDisk {
            store: SqliteStore::open(&self.state).unwrap(),
            full: full.clone(),
        };
        let svc = service::start_with_store(self.settings(max_unwritten), self.clock, store)
            .await
            .unwrap();
        (svc, full)
    }

    async fn calls(&self, svc: &service::RunningService, n: usize) -> Vec<u16> {
        let mut statuses = Vec::new();
        for _ in 0..n {
            let (status, _, _) =
                generate_at(&self.http, &svc.base_url(), json!({"prompt": "hi"})).await;
            statuses.push(status);
        }
        statuses
    }

    async fn readyz(&self, svc: &service::RunningService) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}/readyz", svc.base_url()))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    /// What a fresh start on the state file remembers of today.
    async fn remembered_today(&self) -> u64 {
        let svc = service::start(self.settings("10000"), self.clock)
            .await
            .unwrap();
        let status = get_json(&self.http, &format!("{}/status", svc.base_url())).await;
        svc.stop().await.unwrap();
        status["keys"][0]["models"][FLASH]["requests_today"]
            .as_u64()
            .unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn calls_made_while_the_disk_is_full_are_written_once_it_has_room() {
    let world = World::new().await;
    let (svc, full) = world.start_fillable("10000").await;
    assert!(world.calls(&svc, 20).await.iter().all(|&s| s == 200));
    tokio::time::sleep(gemini_flux::store::BATCH_WINDOW * 2).await;

    full.store(true, Ordering::Release);
    let statuses = world.calls(&svc, 400).await;
    assert!(
        statuses.iter().all(|&s| s == 200),
        "under the bound, scheduling goes on from memory"
    );
    let (status, body) = world.readyz(&svc).await;
    assert_eq!(status, 503, "not ready while calls are unwritten: {body}");
    assert_eq!(body["state_store"]["ok"], false);
    assert_eq!(
        body["state_store"]["unwritten"], 800,
        "400 calls, each sent and settled"
    );
    let status = get_json(&world.http, &format!("{}/status", svc.base_url())).await;
    assert_eq!(status["state_store"]["ok"], false);

    full.store(false, Ordering::Release);
    tokio::time::sleep(RETRY_EVERY).await;
    let (status, body) = world.readyz(&svc).await;
    assert_eq!(
        (status, &body["state_store"]),
        (200, &json!({"ok": true, "unwritten": 0})),
        "written by the retry, without a new call"
    );
    svc.stop().await.unwrap();

    assert_eq!(world.sim.stats().calls, 420);
    assert_eq!(
        world.remembered_today().await,
        420,
        "the restart remembers every call the upstream served"
    );
}

#[tokio::test(start_paused = true)]
async fn past_its_bound_of_unwritten_records_the_service_books_nothing() {
    let world = World::new().await;
    let (svc, full) = world.start_fillable("30").await;
    full.store(true, Ordering::Release);
    // Each call leaves two records: the 15th fills the bound of 30.
    assert!(world.calls(&svc, 15).await.iter().all(|&s| s == 200));
    let (status, retry, body) =
        generate_at(&world.http, &svc.base_url(), json!({"prompt": "one more"})).await;
    assert_eq!((status, retry), (503, Some(1)), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("disk is full"), "{message}");
    assert_eq!(
        world.sim.stats().calls,
        15,
        "the refused request never reached the upstream"
    );

    full.store(false, Ordering::Release);
    tokio::time::sleep(RETRY_EVERY).await;
    assert_eq!(world.calls(&svc, 1).await, [200], "booking again");
    // Stopping while the disk is full again: the stop keeps trying for
    // FLUX_DRAIN_S (20 s), and the disk has room again within it.
    full.store(true, Ordering::Release);
    assert_eq!(world.calls(&svc, 1).await, [200]);
    let stopping = tokio::spawn(svc.stop());
    tokio::time::sleep(RETRY_EVERY * 5).await;
    full.store(false, Ordering::Release);
    stopping.await.unwrap().unwrap();
    assert_eq!(world.remembered_today().await, 17);
    assert_eq!(world.sim.stats().calls, 17);
}
