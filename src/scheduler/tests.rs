//! Exact scenarios for the scheduler's rules, in simulated time, run twice:
//! on the core alone and on replicas sharing it through Redis
//! ([`super::replicated`], every operation a decision through the seam), so
//! both backends answer to one set of rules.
//!
//! The Redis runs start a `redis-server` of their own for each test (it must
//! be on the PATH; nothing need be running), or use `FLUX_TEST_REDIS_URL`
//! when that is set. Each test's replicas share a prefix of their own, and
//! the first deletes its keys when dropped.

use super::core::*;
use super::lane::GrantId;
use super::replicated::{Replicated, SharedLanes};
use super::seam::{Decision, End, Plan, Pull, QuotaState, SetKeyState, SetMode, end};
use crate::clock::Timestamp;
use crate::policy::{Layers, Limits, LimitsOverride, Mode, Quota, Source, UNLIMITED, Usage};
use crate::sim::quota::LaneQuota;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const GUARD_MS: i64 = 250;
const SPAN: i64 = 60_000 + GUARD_MS;
/// 2026-06-10 12:00 Pacific.
const NOON: Timestamp = Timestamp(1_781_118_000_000);
const PRO: &str = "gemini-2.5-pro";
const FLASH: &str = "gemini-2.5-flash";
const LITE: &str = "gemini-2.5-flash-lite";

/// (model, rpm, tpm, rpd) set in the environment layer.
/// (model, rpm, tpm, rpd, tpd) as `FLUX_LIMITS` would set them.
type Override<'a> = (&'a str, u32, u64, u32, u64);

/// Flash with the 2025 free-tier day (250 requests), for runs longer than 2026's 20.
const FLASH_2025: Override = (FLASH, 10, 250_000, 250, UNLIMITED);

fn scheduler(keys: usize, overrides: &[Override]) -> Scheduler {
    let overrides: BTreeMap<String, LimitsOverride> = overrides
        .iter()
        .map(|&(m, rpm, tpm, rpd, tpd)| {
            (
                m.to_string(),
                LimitsOverride {
                    rpm: Some(rpm),
                    tpm: Some(tpm),
                    rpd: Some(rpd),
                    tpd: (tpd != UNLIMITED).then_some(tpd),
                    otpm: None,
                },
            )
        })
        .collect();
    scheduler_with(
        keys,
        Layers {
            env: overrides,
            ..Layers::default()
        },
    )
}

fn scheduler_with(keys: usize, layers: Layers) -> Scheduler {
    Scheduler::new(
        (0..keys).map(|k| format!("…k{k:03}")).collect(),
        vec![PRO.into(), FLASH.into(), LITE.into()],
        layers,
        Mode::Both,
        Duration::from_millis(GUARD_MS as u64),
    )
}

fn ask(tokens: u64, target: Target) -> PlanRequest {
    PlanRequest {
        cost: Usage::call(tokens),
        target,
        keys: KeyChoice::Any,
        priority: Priority::Interactive,
        deadline: Timestamp(i64::MAX),
    }
}

fn model(m: &str) -> Target {
    Target::Model(m.into())
}

fn provider(m: &str) -> Target {
    Target::Provider(m.into())
}

fn a_100k_request_waits_exactly_what_the_token_window_needs<R: Rules>(
    new: fn(usize, &[Override]) -> R,
) {
    let mut s = new(1, &[]);
    let first = s.plan(&ask(200_000, model(FLASH)), NOON).unwrap();
    assert_eq!(first.at, NOON);
    let now = NOON.plus_millis(10_000);
    let second = s.plan(&ask(100_000, model(FLASH)), now).unwrap();
    assert_eq!(second.at.since(now), Duration::from_millis(50_250));
}

fn rpm_binds_before_tpm_on_small_requests<R: Rules>(new: fn(usize, &[Override]) -> R) {
    let mut s = new(1, &[]);
    for _ in 0..10 {
        assert_eq!(s.plan(&ask(100, model(FLASH)), NOON).unwrap().at, NOON);
    }
    assert_eq!(
        s.plan(&ask(100, model(FLASH)), NOON).unwrap().at,
        NOON.plus_millis(SPAN)
    );
}

fn the_earliest_key_wins_and_load_spreads_over_keys<R: Rules>(new: fn(usize, &[Override]) -> R) {
    let mut s = new(3, &[]);
    let keys: Vec<usize> = (0..30)
        .map(|_| s.plan(&ask(10, model(FLASH)), NOON).unwrap().key.get())
        .collect();
    for k in 0..3 {
        assert_eq!(keys.iter().filter(|&&x| x == k).count(), 10);
    }
    assert_eq!(
        &keys[..3],
        &[0, 1, 2],
        "ties go to the key with the fewest requests today"
    );
}

fn the_chain_waits_on_pro_for_rpm_but_falls_to_flash_when_pro_rpd_is_spent<R: Rules>(
    new: fn(usize, &[Override]) -> R,
) {
    let mut s = new(2, &[(PRO, 5, 250_000, 7, UNLIMITED)]);
    let chain = || ask(100, Target::Chain(None));
    // Ten fill both keys' RPM; the 11th and the 12th wait for pro rather than fall.
    let grants: Vec<Grant> = (0..12).map(|_| s.plan(&chain(), NOON).unwrap()).collect();
    assert!(
        grants.iter().all(|g| g.model == PRO),
        "RPM alone never moves a request down the chain"
    );
    assert_eq!(grants[10].at, NOON.plus_millis(SPAN));
    // 2 keys x 7 a day = 14 on pro; the 15th goes to flash at once.
    s.plan(&chain(), NOON).unwrap();
    s.plan(&chain(), NOON).unwrap();
    let fallen = s.plan(&chain(), NOON).unwrap();
    assert_eq!((fallen.model.as_str(), fallen.at), (FLASH, NOON));
}

fn a_model_that_cannot_hold_the_request_is_skipped_and_none_is_413<R: Rules>(
    new: fn(usize, &[Override]) -> R,
) {
    let mut s = new(
        1,
        &[
            (PRO, 5, 100_000, 100, UNLIMITED),
            (FLASH, 10, 200_000, 250, UNLIMITED),
        ],
    );
    let g = s.plan(&ask(150_000, Target::Chain(None)), NOON).unwrap();
    assert_eq!(g.model, FLASH);
    match s.plan(&ask(300_000, Target::Chain(None)), NOON) {
        Err(PlanError::TooLarge { tokens, largest }) => {
            assert_eq!(tokens, 300_000);
            assert_eq!(largest[0], (PRO.to_string(), 100_000));
            assert_eq!(largest[2], (LITE.to_string(), 250_000));
        }
        other => panic!("expected 413, got {other:?}"),
    }
}

fn modes_filter_the_chain_and_a_request_may_override<R: Rules>(new: fn(usize, &[Override]) -> R) {
    let mut s = new(1, &[]);
    s.set_mode(Mode::FlashLiteOnly);
    assert_eq!(
        s.plan(&ask(10, Target::Chain(None)), NOON).unwrap().model,
        LITE
    );
    assert_eq!(
        s.plan(&ask(10, Target::Chain(Some(Mode::FlashOnly))), NOON)
            .unwrap()
            .model,
        FLASH
    );
    assert_eq!(
        s.plan(&ask(10, model("gemini-1.0-ultra")), NOON),
        Err(PlanError::UnknownModel("gemini-1.0-ultra".into()))
    );
}

fn chain_from_falls_down_only_from_the_named_model<R: Rules>(new: fn(usize, &[Override]) -> R) {
    let mut s = new(1, &[(FLASH, 10, 250_000, 1, UNLIMITED)]);
    let from_flash = || ask(10, Target::ChainFrom(FLASH.into()));
    assert_eq!(s.plan(&from_flash(), NOON).unwrap().model, FLASH);
    assert_eq!(
        s.plan(&from_flash(), NOON).unwrap().model,
        LITE,
        "flash's day is spent: down, never up to pro"
    );
    assert_eq!(
        s.plan(&ask(10, model(FLASH)), NOON),
        Err(PlanError::ExhaustedUntil(NOON.next_pacific_midnight()))
    );
}

fn a_slot_beyond_the_deadline_is_refused_without_booking<R: Rules>(
    new: fn(usize, &[Override]) -> R,
) {
    let mut s = new(1, &[]);
    s.plan(&ask(250_000, model(FLASH)), NOON).unwrap();
    let mut late = ask(1_000, model(FLASH));
    late.deadline = NOON.plus_millis(30_000);
    assert_eq!(
        s.plan(&late, NOON),
        Err(PlanError::WaitTooLong {
            model: FLASH.into(),
            at: NOON.plus_millis(SPAN)
        })
    );
    assert_eq!(
        s.snapshot(NOON).grants.len(),
        1,
        "the refused request booked nothing"
    );
}

fn rpd_rolls_over_at_pacific_midnight_on_a_dst_day<R: Rules>(new: fn(usize, &[Override]) -> R) {
    // 2026-03-08 23:59:30 PDT; that day (spring forward) ends at 07:00Z.
    let late = Timestamp::from_millis(
        chrono::DateTime::parse_from_rfc3339("2026-03-09T06:59:30Z")
            .unwrap()
            .timestamp_millis(),
    );
    let mut s = new(1, &[(FLASH, 10, 250_000, 2, UNLIMITED)]);
    s.plan(&ask(1, model(FLASH)), late).unwrap();
    s.plan(&ask(1, model(FLASH)), late).unwrap();
    assert_eq!(
        s.plan(&ask(1, model(FLASH)), late),
        Err(PlanError::ExhaustedUntil(late.plus_millis(30_000)))
    );
    let tomorrow = s
        .plan(&ask(1, model(FLASH)), late.plus_millis(30_000))
        .unwrap();
    assert_eq!(tomorrow.at, late.plus_millis(30_000));
}

fn unusable_keys_get_nothing<R: Rules>(new: fn(usize, &[Override]) -> R) {
    let mut s = new(3, &[]);
    s.set_key_state(0, KeyState::Disabled);
    s.set_key_state(2, KeyState::Invalid("API key not valid".into()));
    for _ in 0..25 {
        assert_eq!(s.plan(&ask(10, model(LITE)), NOON).unwrap().key.get(), 1);
    }
    s.set_key_state(1, KeyState::Blocked("403".into()));
    assert_eq!(
        s.plan(&ask(10, model(LITE)), NOON),
        Err(PlanError::NoUsableKey)
    );
    assert!(
        s.snapshot(NOON)
            .keys
            .iter()
            .all(|k| k.state != KeyState::Healthy)
    );
}

fn a_preferred_key_is_honoured_within_the_deadline_only<R: Rules>(
    new: fn(usize, &[Override]) -> R,
) {
    let mut s = new(2, &[]);
    let mut req = ask(200_000, model(FLASH));
    req.keys = KeyChoice::Prefer(KeyIndex::new(1));
    assert_eq!(s.plan(&req, NOON).unwrap().key.get(), 1);
    // Key 2 is now busy for a minute: with a 10 s ceiling, key 1 serves instead.
    req.deadline = NOON.plus_millis(10_000);
    let g = s.plan(&req, NOON).unwrap();
    assert_eq!((g.key.get(), g.at), (0, NOON));
}

fn a_429_teaches_the_lane_its_real_limit_and_cools_it<R: Rules>(new: fn(usize, &[Override]) -> R) {
    let mut s = new(1, &[]);
    let g = s.plan(&ask(60_000, model(FLASH)), NOON).unwrap();
    let penalty = Penalty::Quota {
        violations: vec![Violation {
            quota: Quota::InputTokensPerMinute,
            limit: Some(50_000),
        }],
        retry_after: Some(Duration::from_secs(7)),
    };
    s.penalise(g.id, &penalty, NOON);
    let lane = &s.snapshot(NOON).keys[0].models[FLASH];
    assert_eq!(lane.limits.tpm, 50_000);
    assert_eq!(lane.usage.cooldown_until, Some(NOON.plus_millis(7_000)));
    // 60k can no longer fit flash on this key: it goes to the next model.
    let too_large = s.plan(&ask(60_000, Target::Chain(Some(Mode::FlashOnly))), NOON);
    assert!(
        matches!(too_large, Err(PlanError::TooLarge { tokens: 60_000, .. })),
        "{too_large:?}"
    );
    let retry = s.plan(&ask(40_000, model(FLASH)), NOON).unwrap();
    assert_eq!(retry.at, NOON.plus_millis(7_000));
}

fn a_per_day_429_spends_the_lane_until_midnight<R: Rules>(new: fn(usize, &[Override]) -> R) {
    let mut s = new(1, &[]);
    let g = s.plan(&ask(10, Target::Chain(None)), NOON).unwrap();
    assert_eq!(g.model, PRO);
    let penalty = Penalty::Quota {
        violations: vec![Violation {
            quota: Quota::RequestsPerDay,
            limit: Some(100),
        }],
        retry_after: None,
    };
    s.penalise(g.id, &penalty, NOON);
    assert_eq!(
        s.plan(&ask(10, Target::Chain(None)), NOON).unwrap().model,
        FLASH
    );
    assert_eq!(
        s.plan(&ask(10, model(PRO)), NOON),
        Err(PlanError::ExhaustedUntil(NOON.next_pacific_midnight()))
    );
}

fn key_errors_take_the_key_out_and_release_the_booking<R: Rules>(new: fn(usize, &[Override]) -> R) {
    let mut s = new(2, &[]);
    let g = s.plan(&ask(10, model(FLASH)), NOON).unwrap();
    s.penalise(g.id, &Penalty::KeyInvalid("API key not valid".into()), NOON);
    let snap = s.snapshot(NOON);
    assert_eq!(
        snap.keys[g.key].state,
        KeyState::Invalid("API key not valid".into())
    );
    assert_eq!(snap.keys[g.key].models[FLASH].usage.requests_today, 0);
    assert_ne!(s.plan(&ask(10, model(FLASH)), NOON).unwrap().key, g.key);
}

fn release_gives_back_capacity_and_settle_corrects_tokens<R: Rules>(
    new: fn(usize, &[Override]) -> R,
) {
    let mut s = new(1, &[]);
    let a = s.plan(&ask(250_000, model(FLASH)), NOON).unwrap();
    s.release(a.id, NOON);
    let b = s.plan(&ask(250_000, model(FLASH)), NOON).unwrap();
    assert_eq!(b.at, NOON);
    s.settle(b.id, 100_000, NOON);
    assert_eq!(s.plan(&ask(150_000, model(FLASH)), NOON).unwrap().at, NOON);
}

/// Replays grants as the upstream would see them, each arriving up to the
/// guard late, and counts the 429s it would answer.
fn upstream_rejections(
    grants: &[Grant],
    limits: impl Fn(&str) -> Limits,
    jitter_seed: u64,
) -> usize {
    let mut rng = rand::rngs::StdRng::seed_from_u64(jitter_seed);
    let mut arrivals: Vec<(Timestamp, &Grant)> = grants
        .iter()
        .map(|g| (g.at.plus_millis(rng.random_range(0..GUARD_MS)), g))
        .collect();
    arrivals.sort_by_key(|(t, g)| (*t, g.id));
    let mut lanes: HashMap<(KeyIndex, &str), LaneQuota> = HashMap::new();
    arrivals
        .iter()
        .filter(|(t, g)| {
            lanes
                .entry((g.key, &g.model))
                .or_default()
                .admit(&limits(&g.model), g.cost.input_tokens, *t)
                .is_err()
        })
        .count()
}

fn a_thousand_concurrent_plans_never_overbook_any_window<R: Rules>(
    new: fn(usize, &[Override]) -> R,
) {
    let mut s = new(4, &[]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut grants = Vec::new();
    for i in 0..1_000 {
        let tokens = if i % 3 == 0 {
            rng.random_range(100_000..250_000)
        } else {
            rng.random_range(10..20_000)
        };
        grants.push(s.plan(&ask(tokens, Target::Chain(None)), NOON).unwrap());
    }
    let snapshot = s.snapshot(NOON);
    let limits = |m: &str| snapshot.limits[m].limits();
    for seed in 0..5 {
        assert_eq!(upstream_rejections(&grants, limits, seed), 0);
    }
    // And the booking is tight: the first minute's pro capacity is used fully.
    let first_minute_pro = grants
        .iter()
        .filter(|g| g.model == PRO && g.at == NOON)
        .count();
    assert_eq!(first_minute_pro, 4 * 5);
}

fn a_snapshot_counts_every_grant_but_lists_the_soonest<R: Rules>(new: fn(usize, &[Override]) -> R) {
    let mut s = new(1, &[(FLASH, 10, 250_000, 100_000, UNLIMITED)]);
    for _ in 0..500 {
        s.plan(&ask(10, model(FLASH)), NOON).unwrap();
    }
    let snap = s.snapshot(NOON);
    assert_eq!(
        (snap.queue.waiting, snap.queue.in_flight),
        (490, 10),
        "ten go now, the rest wait"
    );
    assert_eq!(snap.grants.len(), SNAPSHOT_GRANTS);
    assert!(snap.grants.windows(2).all(|w| w[0].at <= w[1].at));
}

/// The scheduler's operations as a scenario drives them.
trait Rules {
    fn plan(&mut self, request: &PlanRequest, now: Timestamp) -> Result<Grant, PlanError>;
    fn settle(&mut self, id: GrantId, tokens: u64, now: Timestamp);
    fn release(&mut self, id: GrantId, now: Timestamp);
    fn penalise(&mut self, id: GrantId, penalty: &Penalty, now: Timestamp);
    fn set_key_state(&mut self, key: usize, state: KeyState);
    fn set_mode(&mut self, mode: Mode);
    fn snapshot(&mut self, now: Timestamp) -> Snapshot;
}

impl Rules for Scheduler {
    fn plan(&mut self, request: &PlanRequest, now: Timestamp) -> Result<Grant, PlanError> {
        Scheduler::plan(self, request, now)
    }
    fn settle(&mut self, id: GrantId, tokens: u64, _: Timestamp) {
        Scheduler::settle(self, id, Spent::input(tokens))
    }
    fn release(&mut self, id: GrantId, _: Timestamp) {
        Scheduler::release(self, id)
    }
    fn penalise(&mut self, id: GrantId, penalty: &Penalty, now: Timestamp) {
        Scheduler::penalise(self, id, penalty, now)
    }
    fn set_key_state(&mut self, key: usize, state: KeyState) {
        Scheduler::set_key_state(self, KeyIndex::new(key), state);
    }
    fn set_mode(&mut self, mode: Mode) {
        Scheduler::set_mode(self, mode)
    }
    fn snapshot(&mut self, now: Timestamp) -> Snapshot {
        Scheduler::snapshot(self, now)
    }
}

/// A replica of the scheduler sharing its lanes through Redis at a place
/// of its own (or at another replica's, to share with it).
struct OverRedis {
    runtime: tokio::runtime::Runtime,
    replica: Replicated,
    place: SharedPlace,
    /// The first replica at a place deletes its keys when dropped.
    owns_prefix: bool,
}

/// Where the replicas of one test share their lanes: a prefix on a
/// `redis-server` of the test's own (stopped when the last replica goes),
/// or on `FLUX_TEST_REDIS_URL` when that is set. So `cargo test --lib`
/// needs `redis-server` on the PATH, not a running Redis.
#[derive(Clone)]
struct SharedPlace {
    url: String,
    prefix: String,
    _server: Option<std::sync::Arc<TestRedis>>,
}

/// A `redis-server` on a free loopback port that keeps nothing on disk.
struct TestRedis(std::process::Child);

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn new_place() -> SharedPlace {
    let prefix = format!("gemini-flux-test:{:016x}:", rand::random::<u64>());
    if let Ok(url) = std::env::var("FLUX_TEST_REDIS_URL") {
        return SharedPlace {
            url,
            prefix,
            _server: None,
        };
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("these tests start a redis-server of their own: put it on the PATH (scripts/test installs it)");
    let server = TestRedis(child);
    for _ in 0..400 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return SharedPlace {
                url: format!("redis://127.0.0.1:{port}/0"),
                prefix,
                _server: Some(std::sync::Arc::new(server)),
            };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("redis-server did not start on port {port}");
}

fn over_redis(keys: usize, overrides: &[Override]) -> OverRedis {
    let mut first = replica_of(&new_place(), keys, overrides);
    first.owns_prefix = true;
    first
}

fn replica_of(place: &SharedPlace, keys: usize, overrides: &[Override]) -> OverRedis {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let replica = runtime.block_on(async {
        let shared = SharedLanes::connect(&place.url, &place.prefix)
            .await
            .unwrap_or_else(|e| panic!("Redis at {}: {e}", place.url));
        let key_ids = (0..keys).map(|k| format!("key{k}")).collect();
        let guard = Duration::from_millis(GUARD_MS as u64);
        let core = scheduler(keys, overrides);
        Replicated::join(core, shared, key_ids, Mode::Both, guard)
            .await
            .unwrap()
    });
    OverRedis {
        runtime,
        replica,
        place: place.clone(),
        owns_prefix: false,
    }
}

impl OverRedis {
    fn run<D: Decision>(&mut self, decision: &D, now: Timestamp) -> D::Output {
        self.runtime.block_on(self.replica.run(decision, now))
    }

    fn end(&mut self, id: GrantId, how: End, now: Timestamp) {
        self.runtime.block_on(end(&mut self.replica, id, how, now))
    }
}

impl Rules for OverRedis {
    fn plan(&mut self, request: &PlanRequest, now: Timestamp) -> Result<Grant, PlanError> {
        self.run(&Plan(request), now)
    }
    fn settle(&mut self, id: GrantId, tokens: u64, now: Timestamp) {
        self.end(id, End::Settle(Spent::input(tokens)), now)
    }
    fn release(&mut self, id: GrantId, now: Timestamp) {
        self.end(id, End::Release, now)
    }
    fn penalise(&mut self, id: GrantId, penalty: &Penalty, now: Timestamp) {
        self.end(id, End::Penalise(penalty.clone()), now)
    }
    fn set_key_state(&mut self, key: usize, state: KeyState) {
        self.run(&SetKeyState(KeyIndex::new(key), state), NOON)
            .unwrap();
    }
    fn set_mode(&mut self, mode: Mode) {
        self.run(&SetMode(mode), NOON).unwrap()
    }
    fn snapshot(&mut self, now: Timestamp) -> Snapshot {
        self.run(&Pull, now);
        let sharing = self.replica.sharing().expect("a replica shares");
        assert_eq!(sharing.problem, None, "Redis answers");
        self.replica.core().snapshot(now)
    }
}

/// Deletes every Redis key at `place`, as a Redis restarted without
/// persistence would have lost them.
fn forget_all(place: &SharedPlace) {
    crate::store::redis::forget_prefix(&place.url, &place.prefix).unwrap();
}

impl Drop for OverRedis {
    fn drop(&mut self) {
        if self.owns_prefix {
            forget_all(&self.place);
        }
    }
}

fn input_tokens_per_day_fall_to_the_next_model_once_spent<R: Rules>(
    new: fn(usize, &[Override]) -> R,
) {
    let mut s = new(1, &[(FLASH, 100, 250_000, 1_000, 5_000)]);
    let flash_then_lite = Target::ChainFrom(FLASH.into());
    let mut served = Vec::new();
    for i in 0..8 {
        let now = NOON.plus_millis(i * 1_000);
        let g = s.plan(&ask(1_000, flash_then_lite.clone()), now).unwrap();
        assert_eq!(g.at, now, "nothing waits: the day, not the minute, binds");
        s.settle(g.id, 1_000, now);
        served.push(g.model);
    }
    assert_eq!(served.iter().filter(|m| *m == FLASH).count(), 5);
    assert_eq!(served.iter().filter(|m| *m == LITE).count(), 3);
    let lane = &s.snapshot(NOON).keys[0].models[FLASH];
    assert_eq!((lane.limits.tpd, lane.usage.tokens_today), (5_000, 5_000));
    // The upstream counted fewer tokens than estimated: the day gives them back.
    let mut s = new(1, &[(FLASH, 100, 250_000, 1_000, 5_000)]);
    let g = s.plan(&ask(5_000, model(FLASH)), NOON).unwrap();
    s.settle(g.id, 4_000, NOON);
    assert_eq!(s.plan(&ask(1_000, model(FLASH)), NOON).unwrap().at, NOON);
    assert_eq!(
        s.plan(&ask(1, model(FLASH)), NOON),
        Err(PlanError::ExhaustedUntil(NOON.next_pacific_midnight()))
    );
}

/// A 429 naming `quota` with its limit, as in 2026.
fn quota_429(quota: Quota, limit: u64, retry_after: Option<Duration>) -> Penalty {
    Penalty::Quota {
        violations: vec![Violation {
            quota,
            limit: Some(limit),
        }],
        retry_after,
    }
}

/// Each scenario as two tests: `alone::name` and `over_redis::name`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod alone {
            $(#[test]
            fn $name() {
                super::$name(super::scheduler)
            })*
        }
        mod over_redis {
            $(#[test]
            fn $name() {
                super::$name(super::over_redis)
            })*
        }
    };
}

on_both_backends!(
    a_100k_request_waits_exactly_what_the_token_window_needs,
    rpm_binds_before_tpm_on_small_requests,
    the_earliest_key_wins_and_load_spreads_over_keys,
    the_chain_waits_on_pro_for_rpm_but_falls_to_flash_when_pro_rpd_is_spent,
    a_model_that_cannot_hold_the_request_is_skipped_and_none_is_413,
    modes_filter_the_chain_and_a_request_may_override,
    chain_from_falls_down_only_from_the_named_model,
    a_slot_beyond_the_deadline_is_refused_without_booking,
    rpd_rolls_over_at_pacific_midnight_on_a_dst_day,
    unusable_keys_get_nothing,
    a_preferred_key_is_honoured_within_the_deadline_only,
    a_429_teaches_the_lane_its_real_limit_and_cools_it,
    a_per_day_429_spends_the_lane_until_midnight,
    key_errors_take_the_key_out_and_release_the_booking,
    release_gives_back_capacity_and_settle_corrects_tokens,
    a_thousand_concurrent_plans_never_overbook_any_window,
    a_snapshot_counts_every_grant_but_lists_the_soonest,
    input_tokens_per_day_fall_to_the_next_model_once_spent,
    a_learned_zero_skips_the_model_on_the_whole_tier_and_is_rechecked_once_a_day,
    a_request_pinned_to_one_key_waits_there_on_the_chain,
    each_item_of_an_embedding_batch_counts_as_a_request,
    background_work_books_only_now_and_leaves_the_reserve,
);

fn background_work_books_only_now_and_leaves_the_reserve<R: Rules>(
    new: fn(usize, &[Override]) -> R,
) {
    let mut s = new(1, &[FLASH_2025]);
    let background = |tokens| PlanRequest {
        priority: Priority::Background,
        ..ask(tokens, model(FLASH))
    };
    // Flash takes 10 a minute: a batch gets 9 now, and no later slot.
    for _ in 0..9 {
        assert_eq!(s.plan(&background(10), NOON).unwrap().at, NOON);
    }
    assert_eq!(
        s.plan(&background(10), NOON),
        Err(PlanError::WaitTooLong {
            model: FLASH.into(),
            at: NOON.plus_millis(SPAN)
        })
    );
    // The tenth request of the window is an interactive caller's, at once.
    assert_eq!(s.plan(&ask(10, model(FLASH)), NOON).unwrap().at, NOON);
    // Tokens: background keeps within 90 % of the window's 250,000 …
    let later = NOON.plus_millis(SPAN);
    let big = s.plan(&background(200_000), later).unwrap();
    assert_eq!(big.at, later);
    assert!(s.plan(&background(30_000), later).is_err());
    assert_eq!(s.plan(&ask(30_000, model(FLASH)), later).unwrap().at, later);
    // … and an item larger than that share goes only into an empty window,
    // never into the reserve of a busy one.
    let after = later.plus_millis(SPAN);
    let small = s.plan(&background(1_000), after).unwrap();
    assert!(s.plan(&background(240_000), after).is_err());
    assert_eq!(s.plan(&ask(10_000, model(FLASH)), after).unwrap().at, after);
    s.release(small.id, after);
    let empty = after.plus_millis(SPAN);
    assert_eq!(s.plan(&background(240_000), empty).unwrap().at, empty);
    // The day's reserve too: the last request of the day is an interactive caller's.
    let mut s = new(1, &[(FLASH, 1_000, 250_000, 5, UNLIMITED)]);
    for _ in 0..4 {
        assert_eq!(s.plan(&background(10), NOON).unwrap().at, NOON);
    }
    assert!(s.plan(&background(230_000), NOON).is_err());
    assert_eq!(s.plan(&ask(10, model(FLASH)), NOON).unwrap().at, NOON);
}

fn a_request_pinned_to_one_key_waits_there_on_the_chain<R: Rules>(
    new: fn(usize, &[Override]) -> R,
) {
    let mut s = new(3, &[]);
    let mut pinned = ask(10, Target::Chain(None));
    pinned.keys = KeyChoice::Only(KeyIndex::new(1));
    // Pro has 5 a minute: the pinned key serves them in windows, while two
    // other keys sit idle, because only key 2's project owns the file.
    let grants: Vec<(usize, String, i64)> = (0..12)
        .map(|_| {
            let g = s.plan(&pinned, NOON).unwrap();
            (g.key.get(), g.model, g.at.since(NOON).as_millis() as i64)
        })
        .collect();
    assert!(
        grants.iter().all(|(k, m, _)| *k == 1 && m == PRO),
        "{grants:?}"
    );
    let at: Vec<i64> = grants.iter().map(|g| g.2).collect();
    assert_eq!(
        at,
        [[0; 5], [SPAN; 5]]
            .concat()
            .into_iter()
            .chain([2 * SPAN; 2])
            .collect::<Vec<_>>()
    );
    // An unpinned request still goes to the idle keys at once.
    assert_ne!(s.plan(&ask(10, model(PRO)), NOON).unwrap().key.get(), 1);
    s.set_key_state(1, KeyState::Disabled);
    assert_eq!(
        s.plan(&pinned, NOON),
        Err(PlanError::KeyOut(KeyIndex::new(1), KeyState::Disabled))
    );
}

fn each_item_of_an_embedding_batch_counts_as_a_request<R: Rules>(new: fn(usize, &[Override]) -> R) {
    const EMBED: &str = "gemini-embedding-001";
    let mut s = new(3, &[(EMBED, 5, 30_000, 1_000, UNLIMITED)]);
    let batch = |items: u64| PlanRequest {
        cost: Usage {
            requests: items,
            input_tokens: 30 * items,
            output_tokens: 0,
        },
        ..ask(0, Target::Embedding(EMBED.into()))
    };
    // Six batches of 3 on 3 keys at 5 a minute: one batch per key per
    // window (3 + 3 > 5), so the second three wait exactly one window.
    let at: Vec<(usize, i64)> = (0..6)
        .map(|_| {
            let g = s.plan(&batch(3), NOON).unwrap();
            (g.key.get(), g.at.since(NOON).as_millis() as i64)
        })
        .collect();
    assert_eq!(
        at,
        [(0, 0), (1, 0), (2, 0), (0, SPAN), (1, SPAN), (2, SPAN)]
    );
    // The embedding model is outside the chain, yet `/status` shows its lanes.
    let lane = &s.snapshot(NOON).keys[0].models[EMBED];
    assert_eq!((lane.usage.requests_last_60s, lane.limits.rpm), (3, 5));
    // More items than a window ever admits: the caller must split.
    assert_eq!(
        s.plan(&batch(6), NOON),
        Err(PlanError::TooManyItems {
            requests: 6,
            model: EMBED.into(),
            most: 5
        })
    );
    // Only an embedding surface names a model outside the chain.
    assert_eq!(
        s.plan(&ask(10, model(EMBED)), NOON),
        Err(PlanError::UnknownModel(EMBED.into()))
    );
    assert_eq!(
        s.plan(&ask(10, Target::Embedding(FLASH.into())), NOON),
        Err(PlanError::UnknownModel(FLASH.into()))
    );
    // With 2 of the day's 10 left on the one key, a batch of 3 is split,
    // not told to wait until midnight.
    let mut s = new(1, &[(EMBED, 100, 30_000, 10, UNLIMITED)]);
    s.plan(&batch(8), NOON).unwrap();
    assert_eq!(
        s.plan(&batch(3), NOON),
        Err(PlanError::TooManyItems {
            requests: 3,
            model: EMBED.into(),
            most: 2
        })
    );
    s.plan(&batch(2), NOON).unwrap();
    assert_eq!(
        s.plan(&batch(3), NOON),
        Err(PlanError::ExhaustedUntil(NOON.next_pacific_midnight()))
    );
}

fn a_learned_zero_skips_the_model_on_the_whole_tier_and_is_rechecked_once_a_day<R: Rules>(
    new: fn(usize, &[Override]) -> R,
) {
    let mut s = new(3, &[]);
    let g = s.plan(&ask(10, Target::Chain(None)), NOON).unwrap();
    assert_eq!(g.model, PRO);
    let zero = quota_429(Quota::RequestsPerDay, 0, Some(Duration::ZERO));
    s.penalise(g.id, &zero, NOON);
    // No key of the tier tries pro again today, and nobody waits for it.
    for _ in 0..20 {
        let g = s.plan(&ask(10, Target::Chain(None)), NOON).unwrap();
        assert_eq!((g.model.as_str(), g.at), (FLASH, NOON));
    }
    let snapshot = s.snapshot(NOON);
    for key in &snapshot.keys {
        let pro = &key.models[PRO];
        assert_eq!(
            (pro.limits.rpd, pro.limits.sources.rpd),
            (0, Source::Learned)
        );
    }
    assert_eq!(
        s.plan(&ask(10, model(PRO)), NOON),
        Err(PlanError::ExhaustedUntil(NOON.next_pacific_midnight()))
    );
    // The next Pacific day, exactly one call re-checks it, for the whole tier.
    let tomorrow = NOON.plus_millis(86_400_000);
    let probe = s.plan(&ask(10, Target::Chain(None)), tomorrow).unwrap();
    assert_eq!((probe.model.as_str(), probe.probe), (PRO, true));
    let next = s.plan(&ask(10, Target::Chain(None)), tomorrow).unwrap();
    assert_eq!(next.model, FLASH, "one re-check a day, not one per key");
    s.penalise(probe.id, &zero, tomorrow);
    // The day after, the re-check gets through: pro is back on every key.
    let later = tomorrow.plus_millis(86_400_000);
    let probe = s.plan(&ask(10, Target::Chain(None)), later).unwrap();
    assert_eq!(probe.model, PRO);
    s.settle(probe.id, 10, later);
    let served: Vec<(usize, String)> = (0..3)
        .map(|_| {
            let g = s.plan(&ask(10, Target::Chain(None)), later).unwrap();
            (g.key.get(), g.model)
        })
        .collect();
    assert!(served.iter().all(|(_, m)| m == PRO), "{served:?}");
}

#[test]
fn learning_spreads_within_a_tier_and_never_across_tiers() {
    // Key 3 is on a paid tier of its own.
    let paid = LimitsOverride::only(Quota::InputTokensPerMinute, 1_000_000);
    let layers = Layers {
        keys: BTreeMap::from([(2, BTreeMap::from([(FLASH.to_string(), paid)]))]),
        ..Layers::default()
    };
    let mut s = scheduler_with(3, layers);
    let g = s.plan(&ask(10, model(FLASH)), NOON).unwrap();
    assert_eq!(g.key.get(), 0);
    let learned = quota_429(
        Quota::InputTokensPerMinute,
        4_000,
        Some(Duration::from_secs(7)),
    );
    s.penalise(g.id, &learned, NOON);
    let snapshot = s.snapshot(NOON);
    let tpm = |k: usize| {
        let l = &snapshot.keys[k].models[FLASH].limits;
        (l.tpm, l.sources.tpm)
    };
    assert_eq!(tpm(0), (4_000, Source::Learned));
    assert_eq!(
        tpm(1),
        (4_000, Source::Learned),
        "its sibling learned at once"
    );
    assert_eq!(
        tpm(2),
        (1_000_000, Source::Key),
        "another tier learns nothing"
    );
    // Only the lane that was refused cools down.
    assert_eq!(snapshot.keys[1].models[FLASH].usage.cooldown_until, None);
}

#[test]
fn a_per_day_429_with_a_zero_delay_spends_the_day_and_cools_nothing() {
    let mut s = scheduler(2, &[]);
    let g = s.plan(&ask(10, model(FLASH)), NOON).unwrap();
    let per_day = quota_429(Quota::RequestsPerDay, 20, Some(Duration::ZERO));
    s.penalise(g.id, &per_day, NOON);
    let snapshot = s.snapshot(NOON);
    let lane = &snapshot.keys[g.key].models[FLASH];
    assert!(lane.usage.exhausted_today);
    assert_eq!(lane.usage.cooldown_until, None);
    // The other key serves now; the spent one only after midnight.
    let other = s.plan(&ask(10, model(FLASH)), NOON).unwrap();
    assert_eq!((other.key.get(), other.at), (1 - g.key.get(), NOON));
}

#[test]
fn a_retired_model_leaves_the_chain_for_every_key_and_stays_out() {
    let mut s = scheduler(2, &[]);
    let g = s.plan(&ask(10, Target::Chain(None)), NOON).unwrap();
    assert_eq!(g.model, PRO);
    s.penalise(
        g.id,
        &Penalty::ModelRetired("no longer available".into()),
        NOON,
    );
    assert_eq!(s.chain(), [FLASH, LITE]);
    for _ in 0..4 {
        assert_eq!(
            s.plan(&ask(10, Target::Chain(None)), NOON).unwrap().model,
            FLASH
        );
    }
    s.set_chain(vec![PRO.into(), FLASH.into(), LITE.into()]);
    assert_eq!(
        s.chain(),
        [FLASH, LITE],
        "a rediscovery does not bring it back"
    );
    let retired = &s.snapshot(NOON).retired;
    assert_eq!((retired.len(), retired[0].model.as_str()), (1, PRO));
    assert!(matches!(
        s.take_changes().last(),
        Some(Change::Retired(r)) if r.model == PRO
    ));
}

#[test]
fn three_replicas_planning_in_turn_never_overbook_any_window() {
    let first = over_redis(2, &[FLASH_2025]);
    let place = first.place.clone();
    let mut replicas = [
        first,
        replica_of(&place, 2, &[FLASH_2025]),
        replica_of(&place, 2, &[FLASH_2025]),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut grants = Vec::new();
    for i in 0..300 {
        let tokens = rng.random_range(10..120_000);
        let now = NOON.plus_millis(i * 200);
        grants.push(
            replicas[i as usize % 3]
                .plan(&ask(tokens, model(FLASH)), now)
                .unwrap(),
        );
    }
    let snapshot = replicas[0].snapshot(NOON);
    let limits = |m: &str| snapshot.limits[m].limits();
    for seed in 0..5 {
        assert_eq!(upstream_rejections(&grants, limits, seed), 0);
    }
    // The three took turns on one truth: no two grants share a slot they could not.
    let mut ids: Vec<GrantId> = grants.iter().map(|g| g.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), grants.len(), "grant ids never collide");
    // Each replica saw the others' bookings: the first minute holds exactly
    // what 2 keys x 250k allow, not three times that.
    let first_minute: u64 = grants
        .iter()
        .filter(|g| g.at < NOON.plus_millis(SPAN))
        .map(|g| g.cost.input_tokens)
        .sum();
    assert!(first_minute <= 2 * 250_000, "{first_minute}");
}

#[test]
fn a_429_on_one_replica_teaches_its_tier_on_every_replica() {
    let mut a = over_redis(2, &[]);
    let mut b = replica_of(&a.place.clone(), 2, &[]);
    let g = a.plan(&ask(10, model(FLASH)), NOON).unwrap();
    assert_eq!(g.key.get(), 0);
    let tpm = quota_429(
        Quota::InputTokensPerMinute,
        4_000,
        Some(Duration::from_secs(7)),
    );
    a.penalise(g.id, &tpm, NOON);
    // Key 1's lane learned the limit on a, and b reads it from Redis: what
    // fits goes to key 1 at once (key 0 cools), what does not is refused
    // rather than sent to key 1 for a second 429.
    let fits = b.plan(&ask(3_000, model(FLASH)), NOON).unwrap();
    assert_eq!((fits.key.get(), fits.at), (1, NOON));
    let too_large = b.plan(&ask(5_000, model(FLASH)), NOON);
    assert!(
        matches!(too_large, Err(PlanError::TooLarge { tokens: 5_000, .. })),
        "{too_large:?}"
    );
    let snapshot = b.snapshot(NOON);
    let limits = &snapshot.keys[1].models[FLASH].limits;
    assert_eq!((limits.tpm, limits.sources.tpm), (4_000, Source::Learned));
}

#[test]
fn a_commit_made_on_a_stale_read_is_refused() {
    let mut a = over_redis(1, &[]);
    let mut b = replica_of(&a.place.clone(), 1, &[]);
    let grant = a.plan(&ask(200_000, model(FLASH)), NOON).unwrap();
    assert_eq!(grant.at, NOON);
    // b read nothing yet; its plan must still see a's booking.
    let second = b.plan(&ask(100_000, model(FLASH)), NOON).unwrap();
    assert_eq!(second.at, NOON.plus_millis(SPAN));
    // A write against the version read before a's booking is refused.
    let runtime = &a.runtime;
    let refused = runtime.block_on(async {
        let mut shared = SharedLanes::connect(&a.place.url, &a.place.prefix)
            .await
            .unwrap();
        let lane = ("key0".to_string(), FLASH.to_string());
        shared
            .commit(&[(lane, 0)], &[(0, "{}".into())])
            .await
            .unwrap()
    });
    assert!(!refused, "version 0 is long gone");
}

#[test]
fn after_redis_loses_its_data_plans_wait_one_window() {
    let mut a = over_redis(1, &[]);
    let mut b = replica_of(&a.place.clone(), 1, &[]);
    a.plan(&ask(250_000, model(FLASH)), NOON).unwrap();
    forget_all(&a.place);
    // Neither replica trusts the empty Redis until a's call has left the window.
    let later = NOON.plus_millis(1_000);
    for replica in [&mut a, &mut b] {
        match replica.plan(&ask(10, model(FLASH)), later) {
            Err(PlanError::SharedStateUnavailable { retry_at, .. }) => {
                assert_eq!(retry_at, later.plus_millis(SPAN))
            }
            other => panic!("expected a hold, got {other:?}"),
        }
    }
    let after = later.plus_millis(SPAN);
    assert_eq!(
        a.plan(&ask(250_000, model(FLASH)), after).unwrap().at,
        after
    );
    assert_eq!(
        b.plan(&ask(250_000, model(FLASH)), after).unwrap().at,
        after.plus_millis(SPAN),
        "b sees a's booking in the new Redis"
    );
}

#[test]
fn replicas_planning_at_the_same_time_never_overbook_any_window() {
    let owner = over_redis(2, &[FLASH_2025]);
    let place = owner.place.clone();
    let threads: Vec<_> = (0..3u64)
        .map(|seed| {
            let place = place.clone();
            std::thread::spawn(move || {
                let mut replica = replica_of(&place, 2, &[FLASH_2025]);
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let grants: Vec<Grant> = (0..150)
                    .map(|_| {
                        let tokens = rng.random_range(10..120_000);
                        replica.plan(&ask(tokens, model(FLASH)), NOON).unwrap()
                    })
                    .collect();
                (grants, replica.replica.sharing().unwrap().conflicts)
            })
        })
        .collect();
    let (mut grants, mut conflicts) = (Vec::new(), 0);
    for thread in threads {
        let (mine, seen) = thread.join().unwrap();
        grants.extend(mine);
        conflicts += seen;
    }
    let limits = |m: &str| scheduler(2, &[FLASH_2025]).model_limits(m).limits();
    for seed in 0..5 {
        assert_eq!(
            upstream_rejections(&grants, limits, seed),
            0,
            "{conflicts} conflicts were resolved, none overbooked"
        );
    }
    // Three threads booking 450 grants on two shared lanes must collide: if
    // none did, the compare-and-set above was never exercised.
    assert!(conflicts > 0, "no replica ever had to decide again");
    eprintln!("450 plans from 3 replicas at once: {conflicts} decided again");
}

/// Pro learned to have no quota on the tier of 3 keys, checked today.
fn pro_learned_zero() -> Scheduler {
    let mut s = scheduler(3, &[]);
    let g = s.plan(&ask(10, Target::Chain(None)), NOON).unwrap();
    s.penalise(g.id, &quota_429(Quota::RequestsPerDay, 0, None), NOON);
    s
}

const TOMORROW: Timestamp = Timestamp(NOON.0 + 86_400_000);

#[test]
fn a_recheck_that_fails_for_other_reasons_keeps_the_zero_and_may_go_again() {
    let mut s = pro_learned_zero();
    let probe = s.plan(&ask(10, Target::Chain(None)), TOMORROW).unwrap();
    assert!(probe.probe);
    // A 503: the quota was not tested. Pro stays out, and today's re-check is free again.
    s.penalise(probe.id, &Penalty::Transient, TOMORROW);
    let snapshot = s.snapshot(TOMORROW);
    assert!(snapshot.keys.iter().all(|k| k.models[PRO].limits.rpd == 0));
    let again = s.plan(&ask(10, Target::Chain(None)), TOMORROW).unwrap();
    assert_eq!((again.model.as_str(), again.probe), (PRO, true));
    // The client's own mistake (kept, not served) settles nothing either.
    s.keep(again.id, Spent::input(10));
    let third = s.plan(&ask(10, Target::Chain(None)), TOMORROW).unwrap();
    assert_eq!((third.model.as_str(), third.probe), (PRO, true));
    // A re-check released unsent (the client left) frees it too.
    s.release(third.id);
    let fourth = s.plan(&ask(10, Target::Chain(None)), TOMORROW).unwrap();
    assert!(fourth.probe);
    // Only a served call brings pro back.
    s.take_changes();
    s.settle(fourth.id, Spent::input(10));
    let changes = s.take_changes();
    let cleared = changes
        .iter()
        .filter(|c| matches!(c, Change::Learned { .. }))
        .count();
    assert_eq!(cleared, 3, "one record per lane whose zero was cleared");
    assert_eq!(
        s.plan(&ask(10, Target::Chain(None)), TOMORROW)
            .unwrap()
            .model,
        PRO
    );
}

#[test]
fn a_recheck_told_the_real_limit_takes_it() {
    let mut s = pro_learned_zero();
    let probe = s.plan(&ask(10, Target::Chain(None)), TOMORROW).unwrap();
    s.penalise(
        probe.id,
        &quota_429(Quota::RequestsPerDay, 50, None),
        TOMORROW,
    );
    let snapshot = s.snapshot(TOMORROW);
    for key in &snapshot.keys {
        assert_eq!(
            key.models[PRO].limits.rpd, 50,
            "a learned 0 is raised to what was said"
        );
    }
}

#[test]
fn a_per_day_429_answered_after_midnight_leaves_the_new_day_alone() {
    let mut s = scheduler(1, &[]);
    let midnight = NOON.next_pacific_midnight();
    let g = s
        .plan(&ask(10, model(FLASH)), midnight.plus_millis(-200))
        .unwrap();
    s.penalise(
        g.id,
        &quota_429(Quota::RequestsPerDay, 20, Some(Duration::ZERO)),
        midnight.plus_millis(100),
    );
    let next = s
        .plan(&ask(10, model(FLASH)), midnight.plus_millis(100))
        .unwrap();
    assert_eq!(next.at, midnight.plus_millis(100));
}

#[test]
fn a_call_outliving_its_window_still_corrects_the_days_tokens() {
    let mut s = scheduler(1, &[(FLASH, 100, 250_000, 1_000, 5_000)]);
    let long = s.plan(&ask(4_000, model(FLASH)), NOON).unwrap();
    // 90 s later another plan makes the lane forget the first booking's window.
    let later = NOON.plus_millis(90_000);
    let other = s.plan(&ask(500, model(FLASH)), later).unwrap();
    s.settle(other.id, Spent::input(500));
    s.settle(long.id, Spent::input(1_000));
    let lane = &s.snapshot(later).keys[0].models[FLASH];
    assert_eq!(lane.usage.tokens_today, 1_500);
    assert_eq!(s.plan(&ask(3_000, model(FLASH)), later).unwrap().at, later);
}

#[test]
fn a_request_no_model_can_hold_is_413_even_beside_a_zero_quota_model() {
    let mut s = pro_learned_zero();
    let err = s
        .plan(&ask(300_000, Target::Chain(None)), NOON)
        .unwrap_err();
    assert!(
        matches!(
            &err,
            PlanError::TooLarge {
                tokens: 300_000,
                ..
            }
        ),
        "{err:?}"
    );
    // The bound it names is what the lanes take in one call, learned limits included.
    let mut s = scheduler(1, &[]);
    let g = s.plan(&ask(10, model(FLASH)), NOON).unwrap();
    s.penalise(
        g.id,
        &quota_429(Quota::InputTokensPerDay, 5_000, None),
        NOON,
    );
    match s.plan(&ask(6_000, model(FLASH)), NOON) {
        Err(PlanError::TooLarge { largest, .. }) => {
            assert_eq!(largest, vec![(FLASH.to_string(), 5_000)]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_mode_changed_on_another_replica_never_books_a_lane_left_unread() {
    let mut a = over_redis(1, &[]);
    let mut b = replica_of(&a.place.clone(), 1, &[]);
    a.set_mode(Mode::ProOnly);
    b.run(&Pull, NOON);
    // B still believes pro_only when A switches to flash_only.
    a.set_mode(Mode::FlashOnly);
    let g = b.plan(&ask(10, Target::Chain(None)), NOON).unwrap();
    assert_eq!(g.model, FLASH);
    // The booking is in the shared lane: flash takes 9 more now, not 10.
    let at_noon = (0..10)
        .filter(|_| a.plan(&ask(10, model(FLASH)), NOON).unwrap().at == NOON)
        .count();
    assert_eq!(at_noon, 9);
}

#[test]
fn a_batch_too_large_is_told_what_the_lanes_that_take_one_item_admit() {
    const EMBED: &str = "gemini-embedding-001";
    let mut layers = Layers::default();
    let own = |rpm, tpm| LimitsOverride {
        rpm: Some(rpm),
        tpm: Some(tpm),
        ..Default::default()
    };
    layers.env.insert(EMBED.into(), own(100, 30_000));
    // Key 2 takes 200 a minute, but never an item of 1,000 tokens; key 1
    // takes 30 of them a minute (30,000 tokens).
    layers
        .keys
        .insert(1, [(EMBED.to_string(), own(200, 100))].into());
    let mut s = scheduler_with(2, layers);
    let batch = PlanRequest {
        cost: Usage {
            requests: 150,
            input_tokens: 150_000,
            output_tokens: 0,
        },
        ..ask(0, Target::Embedding(EMBED.into()))
    };
    assert_eq!(
        s.plan(&batch, NOON),
        Err(PlanError::TooManyItems {
            requests: 150,
            model: EMBED.into(),
            most: 30
        })
    );
}

/// Two Gemini keys and one key of an OpenAI-compatible provider `groq`
/// (UTC day) whose one model has `limits`.
fn with_groq(limits: Limits) -> Scheduler {
    let mut layers = Layers::default();
    layers.providers.insert(GROQ.into(), limits);
    let mut s = scheduler_with(3, layers);
    let groq = Provider {
        name: "groq".into(),
        zone: crate::clock::DayZone::UTC,
    };
    s.set_providers(vec![Provider::gemini(), groq], vec![0, 0, 1]);
    s
}

const GROQ: &str = "groq/llama-3.3-70b-versatile";

fn groq_limits(rpm: u32, rpd: u32, otpm: u64) -> Limits {
    Limits {
        rpm,
        tpm: UNLIMITED,
        rpd,
        tpd: UNLIMITED,
        otpm,
    }
}

#[test]
fn another_providers_model_goes_only_to_its_keys_and_theirs_never_serve_the_chain() {
    let mut s = with_groq(groq_limits(30, 1_000, UNLIMITED));
    for _ in 0..5 {
        let g = s.plan(&ask(100, provider(GROQ)), NOON).unwrap();
        assert_eq!((g.key.get(), g.at), (2, NOON));
        let g = s.plan(&ask(100, Target::Chain(None)), NOON).unwrap();
        assert_ne!(g.key.get(), 2);
    }
    // Pinned to a key of the wrong provider: no usable key.
    let pinned = PlanRequest {
        keys: KeyChoice::Only(KeyIndex::new(0)),
        ..ask(100, provider(GROQ))
    };
    assert_eq!(s.plan(&pinned, NOON), Err(PlanError::NoUsableKey));
    // A provider name that is not configured is no model at all, and a
    // Gemini route (`Target::Model`) never reaches another provider's model.
    for target in [
        provider("mistral/large"),
        provider("groq/unlisted"),
        model(GROQ),
    ] {
        assert!(
            matches!(
                s.plan(&ask(100, target.clone()), NOON),
                Err(PlanError::UnknownModel(_))
            ),
            "{target:?}"
        );
    }
    let shown = s.snapshot(NOON);
    assert!(shown.keys[2].models.keys().eq([GROQ]));
    assert!(!shown.keys[0].models.contains_key(GROQ));
}

#[test]
fn a_utc_providers_day_ends_at_utc_midnight() {
    let mut s = with_groq(groq_limits(30, 2, UNLIMITED));
    for _ in 0..2 {
        s.plan(&ask(100, provider(GROQ)), NOON).unwrap();
    }
    // NOON Pacific is 19:00Z: the UTC day ends five hours later, not at Pacific midnight.
    let utc_midnight = Timestamp(1_781_136_000_000); // 2026-06-11T00:00:00Z
    assert_eq!(
        s.plan(&ask(100, provider(GROQ)), NOON),
        Err(PlanError::ExhaustedUntil(utc_midnight))
    );
    // The Gemini keys' day is Pacific: untouched.
    assert_eq!(s.plan(&ask(100, model(FLASH)), NOON).unwrap().at, NOON);
    // After UTC midnight the groq key serves again.
    let g = s.plan(&ask(100, provider(GROQ)), utc_midnight).unwrap();
    assert_eq!((g.key.get(), g.at), (2, utc_midnight));
}

#[test]
fn output_tokens_are_reserved_from_the_most_and_settled_to_what_was_spent() {
    let mut s = with_groq(groq_limits(100, 1_000, 2_000));
    let call = |most| PlanRequest {
        cost: Usage::call(500).with_output(most),
        ..ask(500, provider(GROQ))
    };
    let first: Vec<Grant> = (0..4).map(|_| s.plan(&call(500), NOON).unwrap()).collect();
    assert!(first.iter().all(|g| g.at == NOON));
    // 2,000 output tokens reserved: a fifth waits for the window.
    let fifth = s.plan(&call(500), NOON).unwrap();
    assert_eq!(fifth.at, NOON.plus_millis(SPAN));
    s.release(fifth.id);
    // The four spent 20 each: 1,920 are free again at once.
    for g in &first {
        s.settle(
            g.id,
            Spent {
                output_tokens: Some(20),
                ..Spent::input(500)
            },
        );
    }
    let now = NOON.plus_millis(2_000);
    for _ in 0..3 {
        assert_eq!(s.plan(&call(500), now).unwrap().at, now);
    }
    // 80 + 1,500 reserved: 420 left, so 400 fits and 500 more waits until
    // the three reservations leave (the first four's 80 leaving is not enough).
    assert_eq!(s.plan(&call(400), now).unwrap().at, now);
    assert_eq!(s.plan(&call(500), now).unwrap().at, now.plus_millis(SPAN));
    // An answer that does not report output keeps the reservation.
    let mut t = with_groq(groq_limits(100, 1_000, 1_000));
    let g = t.plan(&call(1_000), NOON).unwrap();
    t.settle(g.id, Spent::input(500));
    assert_eq!(t.plan(&call(1), NOON).unwrap().at, NOON.plus_millis(SPAN));
}

#[test]
fn what_an_answers_headers_say_is_learned_before_any_429() {
    // Configured at 30 RPM; the provider says 5.
    let mut s = with_groq(groq_limits(30, 1_000, UNLIMITED));
    let first = s.plan(&ask(100, provider(GROQ)), NOON).unwrap();
    let heard = Heard {
        limits: LimitsOverride {
            rpm: Some(5),
            // Above what is configured: not learned.
            rpd: Some(14_400),
            ..Default::default()
        },
        hold_until: None,
        at: NOON.plus_millis(500),
    };
    s.settle(
        first.id,
        Spent {
            heard,
            ..Spent::input(100)
        },
    );
    let changes = s.take_changes();
    assert!(
        matches!(&changes[..], [Change::Learned { learned, .. }] if learned.rpm == Some(5) && learned.rpd.is_none()),
        "{changes:?}"
    );
    let at: Vec<i64> = (0..5)
        .map(|_| s.plan(&ask(100, provider(GROQ)), NOON).unwrap().at.0 - NOON.0)
        .collect();
    // Four more in the minute (five with the first), then the window.
    assert_eq!(at, [0, 0, 0, 0, SPAN]);
    // Saying the same again teaches nothing new: no write.
    let again = s
        .plan(&ask(100, provider(GROQ)), NOON.plus_millis(SPAN))
        .unwrap();
    s.settle(
        again.id,
        Spent {
            heard,
            ..Spent::input(100)
        },
    );
    assert!(s.take_changes().is_empty());
    // Nothing left until a reset: the lane waits for it.
    let held = s
        .plan(&ask(100, provider(GROQ)), NOON.plus_millis(SPAN))
        .unwrap();
    let until = NOON.plus_millis(200_000);
    s.settle(
        held.id,
        Spent {
            heard: Heard {
                hold_until: Some(until),
                ..Heard::default()
            },
            ..Spent::input(100)
        },
    );
    assert_eq!(
        s.plan(&ask(100, provider(GROQ)), NOON.plus_millis(SPAN))
            .unwrap()
            .at,
        until
    );
}
