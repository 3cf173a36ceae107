//! Exact scenarios for the scheduler core, in simulated time.

use super::core::*;
use crate::clock::Timestamp;
use crate::policy::{Layers, Limits, LimitsOverride, Mode};
use crate::sim::quota::LaneQuota;
use crate::wire::Quota;
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

fn scheduler(keys: usize, overrides: &[(&str, u32, u64, u32)]) -> Scheduler {
    let overrides: BTreeMap<String, LimitsOverride> = overrides
        .iter()
        .map(|&(m, rpm, tpm, rpd)| {
            (
                m.to_string(),
                LimitsOverride {
                    rpm: Some(rpm),
                    tpm: Some(tpm),
                    rpd: Some(rpd),
                },
            )
        })
        .collect();
    Scheduler::new(
        (0..keys).map(|k| format!("…k{k:03}")).collect(),
        vec![PRO.into(), FLASH.into(), LITE.into()],
        Layers {
            env: overrides,
            ..Layers::default()
        },
        Mode::Both,
        Duration::from_millis(GUARD_MS as u64),
    )
}

fn ask(tokens: u64, target: Target) -> PlanRequest {
    PlanRequest {
        tokens,
        target,
        preferred_key: None,
        deadline: Timestamp(i64::MAX),
    }
}

fn model(m: &str) -> Target {
    Target::Model(m.into())
}

#[test]
fn a_100k_request_waits_exactly_what_the_token_window_needs() {
    let mut s = scheduler(1, &[]);
    let first = s.plan(&ask(200_000, model(FLASH)), NOON).unwrap();
    assert_eq!(first.at, NOON);
    let now = NOON.plus_millis(10_000);
    let second = s.plan(&ask(100_000, model(FLASH)), now).unwrap();
    assert_eq!(second.at.since(now), Duration::from_millis(50_250));
}

#[test]
fn rpm_binds_before_tpm_on_small_requests() {
    let mut s = scheduler(1, &[]);
    for _ in 0..10 {
        assert_eq!(s.plan(&ask(100, model(FLASH)), NOON).unwrap().at, NOON);
    }
    assert_eq!(
        s.plan(&ask(100, model(FLASH)), NOON).unwrap().at,
        NOON.plus_millis(SPAN)
    );
}

#[test]
fn the_earliest_key_wins_and_load_spreads_over_keys() {
    let mut s = scheduler(3, &[]);
    let keys: Vec<usize> = (0..30)
        .map(|_| s.plan(&ask(10, model(FLASH)), NOON).unwrap().key)
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

#[test]
fn the_chain_waits_on_pro_for_rpm_but_falls_to_flash_when_pro_rpd_is_spent() {
    let mut s = scheduler(2, &[(PRO, 5, 250_000, 7)]);
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

#[test]
fn a_model_that_cannot_hold_the_request_is_skipped_and_none_is_413() {
    let mut s = scheduler(1, &[(PRO, 5, 100_000, 100), (FLASH, 10, 200_000, 250)]);
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

#[test]
fn modes_filter_the_chain_and_a_request_may_override() {
    let mut s = scheduler(1, &[]);
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

#[test]
fn chain_from_falls_down_only_from_the_named_model() {
    let mut s = scheduler(1, &[(FLASH, 10, 250_000, 1)]);
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

#[test]
fn a_slot_beyond_the_deadline_is_refused_without_booking() {
    let mut s = scheduler(1, &[]);
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

#[test]
fn rpd_rolls_over_at_pacific_midnight_on_a_dst_day() {
    // 2026-03-08 23:59:30 PDT; that day (spring forward) ends at 07:00Z.
    let late = Timestamp::from_millis(
        chrono::DateTime::parse_from_rfc3339("2026-03-09T06:59:30Z")
            .unwrap()
            .timestamp_millis(),
    );
    let mut s = scheduler(1, &[(FLASH, 10, 250_000, 2)]);
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

#[test]
fn unusable_keys_get_nothing() {
    let mut s = scheduler(3, &[]);
    s.set_key_state(0, KeyState::Disabled);
    s.set_key_state(2, KeyState::Invalid("API key not valid".into()));
    for _ in 0..25 {
        assert_eq!(s.plan(&ask(10, model(LITE)), NOON).unwrap().key, 1);
    }
    s.set_key_state(1, KeyState::Blocked("403".into()));
    assert_eq!(
        s.plan(&ask(10, model(LITE)), NOON),
        Err(PlanError::NoUsableKey)
    );
    assert!(!s.ready());
}

#[test]
fn a_preferred_key_is_honoured_within_the_deadline_only() {
    let mut s = scheduler(2, &[]);
    let mut req = ask(200_000, model(FLASH));
    req.preferred_key = Some(1);
    assert_eq!(s.plan(&req, NOON).unwrap().key, 1);
    // Key 2 is now busy for a minute: with a 10 s ceiling, key 1 serves instead.
    req.deadline = NOON.plus_millis(10_000);
    let g = s.plan(&req, NOON).unwrap();
    assert_eq!((g.key, g.at), (0, NOON));
}

#[test]
fn a_429_teaches_the_lane_its_real_limit_and_cools_it() {
    let mut s = scheduler(1, &[]);
    let g = s.plan(&ask(60_000, model(FLASH)), NOON).unwrap();
    let penalty = Penalty::Quota {
        quota: Some(Quota::InputTokensPerMinute),
        limit: Some(50_000),
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

#[test]
fn a_per_day_429_spends_the_lane_until_midnight() {
    let mut s = scheduler(1, &[]);
    let g = s.plan(&ask(10, Target::Chain(None)), NOON).unwrap();
    assert_eq!(g.model, PRO);
    let penalty = Penalty::Quota {
        quota: Some(Quota::RequestsPerDay),
        limit: Some(100),
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

#[test]
fn key_errors_take_the_key_out_and_release_the_booking() {
    let mut s = scheduler(2, &[]);
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

#[test]
fn release_gives_back_capacity_and_settle_corrects_tokens() {
    let mut s = scheduler(1, &[]);
    let a = s.plan(&ask(250_000, model(FLASH)), NOON).unwrap();
    s.release(a.id);
    let b = s.plan(&ask(250_000, model(FLASH)), NOON).unwrap();
    assert_eq!(b.at, NOON);
    s.settle(b.id, 100_000);
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
    let mut lanes: HashMap<(usize, &str), LaneQuota> = HashMap::new();
    arrivals
        .iter()
        .filter(|(t, g)| {
            lanes
                .entry((g.key, &g.model))
                .or_default()
                .admit(&limits(&g.model), g.tokens, *t)
                .is_err()
        })
        .count()
}

#[test]
fn a_thousand_concurrent_plans_never_overbook_any_window() {
    let mut s = scheduler(4, &[]);
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
    let limits = |m: &str| s.model_limits(m).limits();
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

#[test]
fn a_snapshot_counts_every_grant_but_lists_the_soonest() {
    let mut s = scheduler(1, &[(FLASH, 10, 250_000, 100_000)]);
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
