//! The four strategies, each implemented as honestly as its users run it,
//! against the same [`World`]. On a trace that calls several providers the
//! two scripts run one copy per provider, on that provider's keys (none of
//! them knows of providers); the seed speaks to Gemini alone.

use crate::traces::Request;
use crate::world::{Agenda, Served, World};
use gemini_flux::clock::Timestamp;
use gemini_flux::policy::{Layers, LimitsOverride, Mode, Usage};
use gemini_flux::scheduler::{
    self, Grant, KeyChoice, Penalty, PlanError, PlanRequest, Priority, Scheduler, Spent, Target,
    Violation,
};
use gemini_flux::sim::quota::Rejection;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

const WINDOW_MS: i64 = 60_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    GeminiFlux,
    RoundRobinTimer,
    RotateOn429,
    SeedSerial,
}

impl Strategy {
    pub const ALL: [Strategy; 4] = [
        Strategy::GeminiFlux,
        Strategy::RoundRobinTimer,
        Strategy::RotateOn429,
        Strategy::SeedSerial,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::GeminiFlux => "gemini-flux",
            Strategy::RoundRobinTimer => "round-robin-timer",
            Strategy::RotateOn429 => "rotate-on-429",
            Strategy::SeedSerial => "seed-serial",
        }
    }

    /// Whether it can serve a trace that calls other providers than Gemini.
    pub fn speaks_to_other_providers(self) -> bool {
        self != Strategy::SeedSerial
    }

    pub fn run(self, trace: &[Request], world: &mut World, start: Timestamp) -> Vec<Served> {
        match self {
            Strategy::GeminiFlux => gemini_flux(trace, world, start),
            Strategy::RoundRobinTimer => round_robin_timer(trace, world, start),
            Strategy::RotateOn429 => rotate_on_429(trace, world, start),
            Strategy::SeedSerial => seed_serial(trace, world, start),
        }
    }
}

fn served(trace: &[Request], start: Timestamp) -> Vec<Served> {
    trace
        .iter()
        .map(|r| Served {
            request: *r,
            arrival: start.plus_millis(r.arrival_ms),
            completed: Timestamp(0),
        })
        .collect()
}

/// What a 429 on `key` tells, as the upstream client would classify it:
/// every violation, with the limit it names.
fn penalty_of(rejection: &Rejection, key: usize, world: &World) -> Penalty {
    let limits = world.providers[world.provider_of(key)].limits;
    Penalty::Quota {
        violations: rejection
            .violations
            .iter()
            .map(|&quota| Violation {
                quota,
                limit: Some(limits.get(quota)),
            })
            .collect(),
        retry_after: rejection.retry_after,
    }
}

/// The real scheduler core, told every provider as the service tells it:
/// plan at arrival, send at the grant's instant, settle the answer's output.
fn gemini_flux(trace: &[Request], world: &mut World, start: Timestamp) -> Vec<Served> {
    enum Ev {
        Plan(usize),
        Counted(usize, Grant),
        Done(usize, Grant),
    }
    let (gemini, others) = world.providers.split_first().expect("Gemini comes first");
    let overrides = BTreeMap::from([(
        gemini.model.to_string(),
        LimitsOverride {
            rpm: Some(gemini.limits.rpm),
            tpm: Some(gemini.limits.tpm),
            rpd: Some(gemini.limits.rpd),
            tpd: None,
            otpm: None,
        },
    )]);
    let fingerprints = (0..world.keys()).map(|k| format!("…{k:04}")).collect();
    let mut core = Scheduler::new(
        fingerprints,
        vec![gemini.model.into()],
        Layers {
            env: overrides,
            providers: others
                .iter()
                .map(|p| (p.model.to_string(), p.limits))
                .collect(),
            ..Layers::default()
        },
        Mode::Both,
        Duration::from_millis(250),
    );
    let providers = world
        .providers
        .iter()
        .map(|p| scheduler::Provider {
            name: p.name.into(),
            zone: p.zone,
        })
        .collect();
    core.set_providers(
        providers,
        (0..world.keys()).map(|k| world.provider_of(k)).collect(),
    );
    let mut out = served(trace, start);
    let mut agenda = Agenda::new();
    for (i, s) in out.iter().enumerate() {
        agenda.push(s.arrival, Ev::Plan(i));
    }
    while let Some((now, ev)) = agenda.pop() {
        match ev {
            Ev::Plan(i) => {
                let r = out[i].request;
                let request = PlanRequest {
                    cost: Usage::call(r.tokens).with_output(r.max_output),
                    // Gemini's model is the chain's; the others', their providers'.
                    target: match (r.provider, world.providers[r.provider].model) {
                        (0, model) => Target::Model(model.into()),
                        (_, model) => Target::Provider(model.into()),
                    },
                    keys: KeyChoice::Any,
                    priority: Priority::Interactive,
                    deadline: Timestamp(i64::MAX),
                };
                match core.plan(&request, now) {
                    Ok(grant) => {
                        let counted = world.arrival(grant.at);
                        agenda.push(counted, Ev::Counted(i, grant));
                    }
                    // The service answers 429 with Retry-After at the
                    // provider's midnight; the client comes back then.
                    Err(PlanError::ExhaustedUntil(midnight)) => agenda.push(midnight, Ev::Plan(i)),
                    Err(e) => panic!("every trace request fits the free tier: {e}"),
                }
            }
            Ev::Counted(i, grant) => {
                let key = grant.key.get();
                match world.admit(key, &out[i].request, now) {
                    Ok(done) => agenda.push(done, Ev::Done(i, grant)),
                    Err(rejection) => {
                        core.penalise(grant.id, &penalty_of(&rejection, key, world), now);
                        agenda.push(now, Ev::Plan(i));
                    }
                }
            }
            Ev::Done(i, grant) => {
                let r = out[i].request;
                let spent = Spent {
                    output_tokens: Some(r.output),
                    ..Spent::input(r.tokens)
                };
                core.settle(grant.id, spent);
                out[i].completed = now;
            }
        }
    }
    out
}

/// The "hacky script": send every request at once with the key of the
/// current interval (its provider's N keys rotate every 60 s / N, so each is
/// used once a minute); on a 429, sleep 5 s and try again with the key of
/// that moment.
fn round_robin_timer(trace: &[Request], world: &mut World, start: Timestamp) -> Vec<Served> {
    enum Ev {
        Send(usize),
        Counted(usize, usize),
    }
    const RETRY_SLEEP_MS: i64 = 5_000;
    let mut out = served(trace, start);
    let mut agenda = Agenda::new();
    for (i, s) in out.iter().enumerate() {
        agenda.push(s.arrival, Ev::Send(i));
    }
    while let Some((now, ev)) = agenda.pop() {
        match ev {
            Ev::Send(i) => {
                let keys = world.keys_of(out[i].request.provider);
                let interval = WINDOW_MS / keys.len() as i64;
                let turn = ((now.millis() - start.millis()) / interval) as usize % keys.len();
                let counted = world.arrival(now);
                agenda.push(counted, Ev::Counted(i, keys.start + turn));
            }
            Ev::Counted(i, key) => match world.admit(key, &out[i].request, now) {
                Ok(done) => out[i].completed = done,
                Err(_) => agenda.push(now.plus_millis(RETRY_SLEEP_MS), Ev::Send(i)),
            },
        }
    }
    out
}

/// Send at once on the current key (of the request's provider); on a 429
/// move everyone to the next key and retry there at once. After a whole
/// cycle of 429s, wait the shortest `retryDelay` the cycle was told.
fn rotate_on_429(trace: &[Request], world: &mut World, start: Timestamp) -> Vec<Served> {
    enum Ev {
        Send {
            i: usize,
            refused: usize,
            shortest: Option<Duration>,
        },
        Counted {
            i: usize,
            key: usize,
            refused: usize,
            shortest: Option<Duration>,
        },
    }
    // Each provider's current key.
    let mut current: Vec<usize> = (0..world.providers.len())
        .map(|p| world.keys_of(p).start)
        .collect();
    let mut out = served(trace, start);
    let mut agenda = Agenda::new();
    for (i, s) in out.iter().enumerate() {
        agenda.push(
            s.arrival,
            Ev::Send {
                i,
                refused: 0,
                shortest: None,
            },
        );
    }
    while let Some((now, ev)) = agenda.pop() {
        match ev {
            Ev::Send {
                i,
                refused,
                shortest,
            } => {
                let counted = world.arrival(now);
                agenda.push(
                    counted,
                    Ev::Counted {
                        i,
                        key: current[out[i].request.provider],
                        refused,
                        shortest,
                    },
                );
            }
            Ev::Counted {
                i,
                key,
                refused,
                shortest,
            } => match world.admit(key, &out[i].request, now) {
                Ok(done) => out[i].completed = done,
                Err(rejection) => {
                    let keys = world.keys_of(out[i].request.provider);
                    let current = &mut current[out[i].request.provider];
                    if *current == key {
                        *current = keys.start + (key + 1 - keys.start) % keys.len();
                    }
                    let shortest = match (shortest, rejection.retry_after) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    if refused + 1 >= keys.len() {
                        let wait = shortest.unwrap_or(Duration::from_secs(1));
                        agenda.push(
                            now.plus(wait),
                            Ev::Send {
                                i,
                                refused: 0,
                                shortest: None,
                            },
                        );
                    } else {
                        agenda.push(
                            now,
                            Ev::Send {
                                i,
                                refused: refused + 1,
                                shortest,
                            },
                        );
                    }
                }
            },
        }
    }
    out
}

/// The seed's own algorithm: one request at a time under a global lock; a
/// per-key window of input tokens only (no RPM, no RPD); the first key with
/// room is used; a 429 marks that key's model exhausted until Pacific
/// midnight and the request is tried again.
fn seed_serial(trace: &[Request], world: &mut World, start: Timestamp) -> Vec<Served> {
    enum Ev {
        Arrive(usize),
        Wake,
        Counted(usize, usize),
        Done(usize),
    }
    /// A 429 answer comes back about this fast.
    const REFUSAL_MS: i64 = 100;
    assert_eq!(world.providers.len(), 1, "the seed speaks to Gemini alone");
    let keys = world.keys();
    let tpm = world.providers[0].limits.tpm;
    let mut windows: Vec<VecDeque<(Timestamp, u64)>> = vec![VecDeque::new(); keys];
    let mut exhausted: Vec<Option<chrono::NaiveDate>> = vec![None; keys];
    let mut queue: VecDeque<usize> = VecDeque::new();
    let mut busy = false;
    let mut out = served(trace, start);
    let mut agenda = Agenda::new();
    for (i, s) in out.iter().enumerate() {
        agenda.push(s.arrival, Ev::Arrive(i));
    }
    while let Some((now, ev)) = agenda.pop() {
        match ev {
            Ev::Arrive(i) => queue.push_back(i),
            Ev::Wake => {}
            Ev::Counted(i, key) => {
                match world.admit(key, &out[i].request, now) {
                    Ok(done) => agenda.push(done, Ev::Done(i)),
                    Err(_) => {
                        exhausted[key] = Some(now.pacific_day());
                        agenda.push(now.plus_millis(REFUSAL_MS), Ev::Wake);
                        busy = false;
                    }
                }
                continue;
            }
            Ev::Done(i) => {
                out[i].completed = now;
                queue.pop_front();
                busy = false;
            }
        }
        if busy {
            continue;
        }
        let Some(&i) = queue.front() else { continue };
        let today = now.pacific_day();
        for w in windows.iter_mut() {
            while w
                .front()
                .is_some_and(|(t, _)| now.millis() - t.millis() >= WINDOW_MS)
            {
                w.pop_front();
            }
        }
        let usable = |k: usize| exhausted[k] != Some(today);
        let fits = |k: usize| {
            windows[k].iter().map(|(_, t)| t).sum::<u64>() + out[i].request.tokens <= tpm
        };
        match (0..keys).find(|&k| usable(k) && fits(k)) {
            Some(key) => {
                busy = true;
                windows[key].push_back((now, out[i].request.tokens));
                let counted = world.arrival(now);
                agenda.push(counted, Ev::Counted(i, key));
            }
            None => {
                let next_expiry = (0..keys)
                    .filter(|&k| usable(k))
                    .filter_map(|k| windows[k].front().map(|(t, _)| t.plus_millis(WINDOW_MS)))
                    .min();
                agenda.push(
                    next_expiry.unwrap_or_else(|| now.next_pacific_midnight()),
                    Ev::Wake,
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traces::Trace;

    /// Wednesday noon, Pacific.
    const START: Timestamp = Timestamp(1_781_118_000_000);

    fn on_three_providers(strategy: Strategy) -> (Vec<Served>, u64) {
        let trace = Trace::Providers;
        let mut world = World::new(trace.providers(8), 42);
        let served = strategy.run(&trace.generate(42), &mut world, START);
        (served, world.rejected_429)
    }

    #[test]
    fn gemini_flux_serves_three_providers_at_once_without_a_429() {
        let (served, rejected) = on_three_providers(Strategy::GeminiFlux);
        assert_eq!(rejected, 0);
        assert_eq!(served.len(), 600);
        assert!(served.iter().all(|s| s.completed > s.arrival));
        // The same upstream refuses a script that does not plan.
        assert_eq!(on_three_providers(Strategy::RotateOn429).1, 1_292);
    }
}
