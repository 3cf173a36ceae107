//! The scheduler's decision cost: one `plan` (and the `release` that keeps
//! the state steady) at 32 keys × 6 models, on idle lanes and with 10,000
//! grants already waiting.

use criterion::{Criterion, criterion_group, criterion_main};
use gemini_flux::clock::Timestamp;
use gemini_flux::policy::{Layers, Mode, SEED_CHAIN, Usage};
use gemini_flux::scheduler::{KeyChoice, PlanRequest, Priority, Scheduler, Target};
use std::hint::black_box;
use std::time::Duration;

const NOON: Timestamp = Timestamp(1_781_118_000_000);

fn scheduler(keys: usize) -> Scheduler {
    Scheduler::new(
        (0..keys).map(|k| format!("…{k:04}")).collect(),
        SEED_CHAIN.iter().map(|m| m.to_string()).collect(),
        Layers::default(),
        Mode::Both,
        Duration::from_millis(250),
    )
}

fn request(tokens: u64) -> PlanRequest {
    PlanRequest {
        cost: Usage::call(tokens),
        target: Target::Chain(None),
        keys: KeyChoice::Any,
        priority: Priority::Interactive,
        deadline: Timestamp(i64::MAX),
    }
}

fn plan_cost(c: &mut Criterion) {
    let mut idle = scheduler(32);
    c.bench_function("plan+release, 32 keys x 6 models, idle", |b| {
        b.iter(|| {
            let g = idle.plan(black_box(&request(2_000)), NOON).unwrap();
            idle.release(g.id);
        })
    });

    let mut busy = scheduler(32);
    for i in 0..10_000u64 {
        busy.plan(&request(1_000 + (i * 7_919) % 60_000), NOON)
            .unwrap();
    }
    c.bench_function("plan+release, 32 keys x 6 models, 10,000 waiting", |b| {
        b.iter(|| {
            let g = busy.plan(black_box(&request(2_000)), NOON).unwrap();
            busy.release(g.id);
        })
    });
}

criterion_group!(benches, plan_cost);
criterion_main!(benches);
