//! The four strategies, each implemented as honestly as its users run it,
//! against the same [`World`].

use crate::traces::Request;
use crate::world::{Agenda, Served, World, latency_ms};
use gemini_flux::clock::Timestamp;
use gemini_flux::policy::{Layers, LimitsOverride, Mode, Usage};
use gemini_flux::scheduler::{
    Grant, KeyChoice, Penalty, PlanError, PlanRequest, Priority, Scheduler, Spent, Target,
    Violation,
};
use gemini_flux::sim::quota::Rejection;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

const MODEL: &str = "gemini-2.5-flash";
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
            arrival: start.plus_millis(r.arrival_ms),
            completed: Timestamp(0),
            tokens: r.tokens,
        })
        .collect()
}

/// What a 429 tells, as the upstream client would classify it: every
/// violation, with the limit it names.
fn penalty_of(rejection: &Rejection, world: &World) -> Penalty {
    Penalty::Quota {
        violations: rejection
            .violations
            .iter()
            .map(|&quota| Violation {
                quota,
                limit: Some(world.limits.get(quota)),
            })
            .collect(),
        retry_after: rejection.retry_after,
    }
}

/// The real scheduler core: plan at arrival, send at the grant's instant.
fn gemini_flux(trace: &[Request], world: &mut World, start: Timestamp) -> Vec<Served> {
    enum Ev {
        Plan(usize),
        Counted(usize, Grant),
        Done(usize, Grant),
    }
    let limits = world.limits;
    let overrides = BTreeMap::from([(
        MODEL.to_string(),
        LimitsOverride {
            rpm: Some(limits.rpm),
            tpm: Some(limits.tpm),
            rpd: Some(limits.rpd),
            tpd: None,
            otpm: None,
        },
    )]);
    let fingerprints = (0..world.keys()).map(|k| format!("…{k:04}")).collect();
    let mut core = Scheduler::new(
        fingerprints,
        vec![MODEL.into()],
        Layers {
            env: overrides,
            ..Layers::default()
        },
        Mode::Both,
        Duration::from_millis(250),
    );
    let mut out = served(trace, start);
    let mut agenda = Agenda::new();
    for (i, s) in out.iter().enumerate() {
        agenda.push(s.arrival, Ev::Plan(i));
    }
    while let Some((now, ev)) = agenda.pop() {
        match ev {
            Ev::Plan(i) => {
                let request = PlanRequest {
                    cost: Usage::call(out[i].tokens),
                    target: Target::Model(MODEL.into()),
                    keys: KeyChoice::Any,
                    priority: Priority::Interactive,
                    deadline: Timestamp(i64::MAX),
                };
                match core.plan(&request, now) {
                    Ok(grant) => {
                        let counted = world.arrival(grant.at);
                        agenda.push(counted, Ev::Counted(i, grant));
                    }
                    // The service answers 429 with Retry-After at Pacific
                    // midnight; the client comes back then.
                    Err(PlanError::ExhaustedUntil(midnight)) => agenda.push(midnight, Ev::Plan(i)),
                    Err(e) => panic!("every trace request fits the free tier: {e}"),
                }
            }
            Ev::Counted(i, grant) => match world.admit(grant.key.get(), out[i].tokens, now) {
                Ok(()) => agenda.push(
                    now.plus_millis(latency_ms(out[i].tokens)),
                    Ev::Done(i, grant),
                ),
                Err(rejection) => {
                    core.penalise(grant.id, &penalty_of(&rejection, world), now);
                    agenda.push(now, Ev::Plan(i));
                }
            },
            Ev::Done(i, grant) => {
                core.settle(grant.id, Spent::input(out[i].tokens));
                out[i].completed = now;
            }
        }
    }
    out
}

/// The "hacky script": send every request at once with the key of the
/// current interval (keys rotate every 60 s / N, so each is used once a
/// minute); on a 429, sleep 5 s and try again with the key of that moment.
fn round_robin_timer(trace: &[Request], world: &mut World, start: Timestamp) -> Vec<Served> {
    enum Ev {
        Send(usize),
        Counted(usize, usize),
    }
    const RETRY_SLEEP_MS: i64 = 5_000;
    let interval = WINDOW_MS / world.keys() as i64;
    let mut out = served(trace, start);
    let mut agenda = Agenda::new();
    for (i, s) in out.iter().enumerate() {
        agenda.push(s.arrival, Ev::Send(i));
    }
    while let Some((now, ev)) = agenda.pop() {
        match ev {
            Ev::Send(i) => {
                let key = ((now.millis() - start.millis()) / interval) as usize % world.keys();
                let counted = world.arrival(now);
                agenda.push(counted, Ev::Counted(i, key));
            }
            Ev::Counted(i, key) => match world.admit(key, out[i].tokens, now) {
                Ok(()) => out[i].completed = now.plus_millis(latency_ms(out[i].tokens)),
                Err(_) => agenda.push(now.plus_millis(RETRY_SLEEP_MS), Ev::Send(i)),
            },
        }
    }
    out
}

/// Send at once on the current key; on a 429 move everyone to the next key
/// and retry there at once. After a whole cycle of 429s, wait the shortest
/// `retryDelay` the cycle was told.
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
    let mut current = 0;
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
                        key: current,
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
            } => match world.admit(key, out[i].tokens, now) {
                Ok(()) => out[i].completed = now.plus_millis(latency_ms(out[i].tokens)),
                Err(rejection) => {
                    if current == key {
                        current = (key + 1) % world.keys();
                    }
                    let shortest = match (shortest, rejection.retry_after) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    if refused + 1 >= world.keys() {
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
    let keys = world.keys();
    let tpm = world.limits.tpm;
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
                match world.admit(key, out[i].tokens, now) {
                    Ok(()) => agenda.push(now.plus_millis(latency_ms(out[i].tokens)), Ev::Done(i)),
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
        let fits = |k: usize| windows[k].iter().map(|(_, t)| t).sum::<u64>() + out[i].tokens <= tpm;
        match (0..keys).find(|&k| usable(k) && fits(k)) {
            Some(key) => {
                busy = true;
                windows[key].push_back((now, out[i].tokens));
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
