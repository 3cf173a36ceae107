//! `flux-bench efficiency`: every strategy on every trace and key count, in
//! simulated time, as a markdown table.

use crate::bound::makespan_lower_bound;
use crate::strategies::Strategy;
use crate::traces::Trace;
use crate::world::{Provider, World};
use gemini_flux::clock::Timestamp;
use gemini_flux::policy::UNLIMITED;
use std::time::Instant;

/// Wednesday 2026-06-10, noon Pacific: half a day before the first reset.
const START: Timestamp = Timestamp(1_781_118_000_000);
const SEED: u64 = 42;

pub struct Options {
    pub traces: Vec<Trace>,
    pub keys: Vec<usize>,
    pub strategies: Vec<Strategy>,
}

struct Row {
    strategy: Strategy,
    /// Each provider's key count, Gemini's first: `8 + 2 + 1`.
    keys: String,
    trace: Trace,
    makespan_ms: i64,
    bound_ms: i64,
    rejected_429: u64,
    tokens_per_min: f64,
    p50_wait_ms: i64,
    p99_wait_ms: i64,
}

fn run(strategy: Strategy, trace: Trace, keys: usize) -> Row {
    let requests = trace.generate(SEED);
    let providers = trace.providers(keys);
    let bound_ms = makespan_lower_bound(&requests, &providers, START);
    let keys = providers
        .iter()
        .map(|p| p.keys.to_string())
        .collect::<Vec<_>>()
        .join(" + ");
    let mut world = World::new(providers, SEED);
    let served = strategy.run(&requests, &mut world, START);
    assert!(
        served.iter().all(|s| s.completed.millis() > 0),
        "{} left requests unserved",
        strategy.name()
    );
    let first = served.iter().map(|s| s.arrival).min().unwrap();
    let last = served.iter().map(|s| s.completed).max().unwrap();
    let makespan_ms = last.millis() - first.millis();
    let mut waits: Vec<i64> = served.iter().map(|s| s.wait_ms()).collect();
    waits.sort_unstable();
    let pct = |p: usize| waits[(waits.len() * p / 100).min(waits.len() - 1)];
    let tokens: u64 = served.iter().map(|s| s.request.tokens).sum();
    Row {
        strategy,
        keys,
        trace,
        makespan_ms,
        bound_ms,
        rejected_429: world.rejected_429,
        tokens_per_min: tokens as f64 / (makespan_ms as f64 / 60_000.0),
        p50_wait_ms: pct(50),
        p99_wait_ms: pct(99),
    }
}

/// `1d 02:03:04`, `2:03:04`, `3:04`.
fn duration(ms: i64) -> String {
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h) {
        (0, 0) => format!("{m}:{s:02}"),
        (0, _) => format!("{h}:{m:02}:{s:02}"),
        _ => format!("{d}d {h:02}:{m:02}:{s:02}"),
    }
}

/// `groq (2 keys of groq/llama-3.3-70b-versatile: 30 RPM, 12000 input TPM,
/// 1000 RPD, UTC day)`.
fn describe(provider: &Provider) -> String {
    let l = provider.limits;
    let mut quotas = vec![format!("{} RPM", l.rpm), format!("{} input TPM", l.tpm)];
    if l.otpm != UNLIMITED {
        quotas.push(format!("{} output TPM", l.otpm));
    }
    if l.rpd != u32::MAX {
        quotas.push(format!("{} RPD", l.rpd));
    }
    format!(
        "{} ({} key{} of `{}`: {}, {} day)",
        provider.name,
        provider.keys,
        if provider.keys == 1 { "" } else { "s" },
        provider.model,
        quotas.join(", "),
        provider.zone.name(),
    )
}

pub fn main(options: Options) {
    let limits = crate::world::FLASH_2025;
    let started = Instant::now();
    println!("## Scheduling efficiency\n");
    println!(
        "One model (gemini-2.5-flash) on the 2025 free tier: {} RPM, {} input TPM, {} RPD per key. \
         Upstream: the simulator's quota ledger; calls arrive 0-{} ms after they are sent; an answer takes \
         0.8 s + 1 s per 50k prompt tokens. Start: Wednesday noon, Pacific.\n",
        limits.rpm,
        limits.tpm,
        limits.rpd,
        crate::world::MAX_JITTER_MS
    );
    for trace in &options.traces {
        println!("- `{}`: {}", trace.name(), trace.describe());
    }
    println!();
    let mut runs = 0;
    for trace in &options.traces {
        let [_, others @ ..] = &trace.providers(1)[..] else {
            unreachable!("every trace calls Gemini")
        };
        if others.is_empty() {
            continue;
        }
        let others: Vec<String> = others.iter().map(describe).collect();
        println!(
            "`{}` also calls {}. Its keys column counts Gemini's keys, then each other provider's; \
             its calls to them reserve their `max_tokens` until the answer ends (1 s more per 100 \
             output tokens said), when the upstream keeps only what was said.",
            trace.name(),
            others.join(" and ")
        );
        for s in options
            .strategies
            .iter()
            .filter(|s| !s.speaks_to_other_providers())
        {
            println!(
                "`{}` is not run on `{}`: the seed speaks to Gemini alone. The two scripts run \
                 one copy per provider, each on its provider's keys.",
                s.name(),
                trace.name()
            );
        }
        println!();
    }
    println!(
        "| strategy | keys | trace | makespan | lower bound | ÷ bound | upstream 429s | tokens/min | p50 wait | p99 wait |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for &trace in &options.traces {
        for &keys in &options.keys {
            for &strategy in &options.strategies {
                if trace.providers(keys).len() > 1 && !strategy.speaks_to_other_providers() {
                    continue;
                }
                runs += 1;
                let r = run(strategy, trace, keys);
                println!(
                    "| {} | {} | {} | {} | {} | {:.3} | {} | {:.0} | {} | {} |",
                    r.strategy.name(),
                    r.keys,
                    r.trace.name(),
                    duration(r.makespan_ms),
                    duration(r.bound_ms),
                    r.makespan_ms as f64 / r.bound_ms as f64,
                    r.rejected_429,
                    r.tokens_per_min,
                    duration(r.p50_wait_ms),
                    duration(r.p99_wait_ms),
                );
            }
        }
    }
    println!(
        "\n({runs} runs in {:.1} s of real time)",
        started.elapsed().as_secs_f64()
    );
}
