//! Prometheus metrics, through the official client (`prometheus-client`),
//! one registry per service. Counters and the wait histogram are updated as
//! things happen; the per-lane gauges are read from a scheduler snapshot when
//! `/metrics` is scraped. Keys appear as index and fingerprint, never as text.

use crate::policy::{Quota, UNLIMITED};
use crate::scheduler::{KeyIndex, KeyState, SharedState, Snapshot};
use crate::store::Outcome;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabels {
    key: String,
    fingerprint: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    key: String,
    fingerprint: String,
    model: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    key: String,
    fingerprint: String,
    model: String,
    quota: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BatchLabels {
    batch: String,
    state: String,
}

/// One batch's items by state, for `flux_batch_items`.
pub struct BatchItems<'a> {
    pub batch: &'a str,
    pub pending: u32,
    pub running: u32,
    pub done: u32,
    pub failed: u32,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RouteLabels, Counter>,
    upstream_calls: Family<CallLabels, Counter>,
    input_tokens: Family<LaneLabels, Counter>,
    output_tokens: Family<LaneLabels, Counter>,
    wait_seconds: Histogram,
    grants_waiting: Gauge,
    grants_in_flight: Gauge,
    lane_tokens: Family<LaneLabels, Gauge>,
    lane_requests: Family<LaneLabels, Gauge>,
    lane_requests_today: Family<LaneLabels, Gauge>,
    lane_limit: Family<LimitLabels, Gauge>,
    keys: Family<StateLabels, Gauge>,
    shared_state_up: Gauge,
    shared_state_conflicts: Counter,
    batch_items: Family<BatchLabels, Gauge>,
}

/// How one upstream call ended, as a label.
pub fn outcome_label(outcome: Outcome, quota: Option<Quota>) -> String {
    match (outcome, quota) {
        (Outcome::Quota, Some(q)) => format!("429 {}", q.quota_id()),
        (Outcome::Quota, None) => "429".into(),
        (o, _) => o.as_str().into(),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("flux");
        let m = Metrics {
            requests: Family::default(),
            upstream_calls: Family::default(),
            input_tokens: Family::default(),
            output_tokens: Family::default(),
            wait_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 12)),
            grants_waiting: Gauge::default(),
            grants_in_flight: Gauge::default(),
            lane_tokens: Family::default(),
            lane_requests: Family::default(),
            lane_requests_today: Family::default(),
            lane_limit: Family::default(),
            keys: Family::default(),
            shared_state_up: Gauge::default(),
            shared_state_conflicts: Counter::default(),
            batch_items: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "HTTP requests answered, by route and status",
            m.requests.clone(),
        );
        registry.register(
            "upstream_calls",
            "Calls to Gemini, by key, model and outcome (429s by quota id)",
            m.upstream_calls.clone(),
        );
        registry.register(
            "input_tokens",
            "Input tokens Gemini counted, by key and model",
            m.input_tokens.clone(),
        );
        registry.register(
            "output_tokens",
            "Output tokens Gemini produced, by key and model",
            m.output_tokens.clone(),
        );
        registry.register(
            "wait_seconds",
            "Time requests waited for their slot",
            m.wait_seconds.clone(),
        );
        registry.register(
            "grants_waiting",
            "Grants booked and waiting for their instant",
            m.grants_waiting.clone(),
        );
        registry.register(
            "grants_in_flight",
            "Grants whose call is under way",
            m.grants_in_flight.clone(),
        );
        registry.register(
            "lane_tokens_last_60s",
            "Input tokens booked in the last 60 s, by lane",
            m.lane_tokens.clone(),
        );
        registry.register(
            "lane_requests_last_60s",
            "Requests booked in the last 60 s, by lane",
            m.lane_requests.clone(),
        );
        registry.register(
            "lane_requests_today",
            "Requests booked this Pacific day, by lane",
            m.lane_requests_today.clone(),
        );
        registry.register(
            "lane_limit",
            "The limit in force on a lane, by quota (rpm, tpm, rpd)",
            m.lane_limit.clone(),
        );
        registry.register("keys", "Keys by state", m.keys.clone());
        registry.register(
            "batch_items",
            "Items of each batch kept, by state (pending, running, done, failed)",
            m.batch_items.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The replica's metrics, registered only when it shares state through
    /// Redis (a single instance has no such thing to report).
    pub fn for_replica() -> Self {
        let mut m = Metrics::default();
        m.registry.register(
            "shared_state_up",
            "1 while Redis answers (plans are refused otherwise)",
            m.shared_state_up.clone(),
        );
        m.registry.register(
            "shared_state_conflicts",
            "Decisions made again because another replica changed a lane first",
            m.shared_state_conflicts.clone(),
        );
        m
    }

    pub fn request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&RouteLabels {
                route: route.into(),
                status: status.to_string(),
            })
            .inc();
    }

    /// One upstream call ended; `tokens` is (input, output) when it was served.
    pub fn upstream_call(
        &self,
        key: KeyIndex,
        fingerprint: &str,
        model: &str,
        outcome: String,
        tokens: Option<(u64, u64)>,
    ) {
        let lane = LaneLabels {
            key: key.to_string(),
            fingerprint: fingerprint.into(),
            model: model.into(),
        };
        let call = CallLabels {
            key: lane.key.clone(),
            fingerprint: lane.fingerprint.clone(),
            model: lane.model.clone(),
            outcome,
        };
        self.upstream_calls.get_or_create(&call).inc();
        if let Some((input, output)) = tokens {
            self.input_tokens.get_or_create(&lane).inc_by(input);
            self.output_tokens.get_or_create(&lane).inc_by(output);
        }
    }

    /// Sets the batch gauges to `batches` (a batch no longer kept has none).
    pub fn batches(&self, batches: &[BatchItems]) {
        self.batch_items.clear();
        for b in batches {
            let counts = [
                ("pending", b.pending),
                ("running", b.running),
                ("done", b.done),
                ("failed", b.failed),
            ];
            for (state, n) in counts {
                let labels = BatchLabels {
                    batch: b.batch.to_string(),
                    state: state.to_string(),
                };
                self.batch_items.get_or_create(&labels).set(i64::from(n));
            }
        }
    }

    pub fn waited(&self, wait: Duration) {
        self.wait_seconds.observe(wait.as_secs_f64());
    }

    /// The text exposition, with the gauges set from `snapshot` (and, for a
    /// replica, `shared`).
    pub fn render(&self, snapshot: &Snapshot, shared: Option<&SharedState>) -> String {
        self.grants_waiting.set(snapshot.queue.waiting as i64);
        self.grants_in_flight.set(snapshot.queue.in_flight as i64);
        if let Some(shared) = shared {
            self.shared_state_up.set(i64::from(shared.ok));
            let seen = self.shared_state_conflicts.get();
            self.shared_state_conflicts
                .inc_by(shared.conflicts.saturating_sub(seen));
        }
        for state in ["healthy", "disabled", "invalid", "blocked"] {
            self.keys
                .get_or_create(&StateLabels {
                    state: state.into(),
                })
                .set(0);
        }
        for key in &snapshot.keys {
            let state = match key.state {
                KeyState::Healthy => "healthy",
                KeyState::Disabled => "disabled",
                KeyState::Invalid(_) => "invalid",
                KeyState::Blocked(_) => "blocked",
            };
            self.keys
                .get_or_create(&StateLabels {
                    state: state.into(),
                })
                .inc();
            for (model, lane) in &key.models {
                let labels = LaneLabels {
                    key: key.index.to_string(),
                    fingerprint: key.fingerprint.clone(),
                    model: model.clone(),
                };
                self.lane_tokens
                    .get_or_create(&labels)
                    .set(lane.usage.tokens_last_60s as i64);
                self.lane_requests
                    .get_or_create(&labels)
                    .set(i64::from(lane.usage.requests_last_60s));
                self.lane_requests_today
                    .get_or_create(&labels)
                    .set(i64::from(lane.usage.requests_today));
                let limits = lane.limits.limits();
                // A limit nobody set or saw (no per-day token quota) has no gauge.
                for quota in Quota::ALL
                    .into_iter()
                    .filter(|&q| limits.get(q) != UNLIMITED)
                {
                    let l = LimitLabels {
                        key: labels.key.clone(),
                        fingerprint: labels.fingerprint.clone(),
                        model: model.clone(),
                        quota: quota.field().into(),
                    };
                    self.lane_limit
                        .get_or_create(&l)
                        .set(limits.get(quota) as i64);
                }
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::policy::{Layers, LimitsOverride, Mode};
    use crate::scheduler::{PlanRequest, Scheduler, Target};

    #[test]
    fn the_queue_gauges_count_every_grant_not_only_the_listed_ones() {
        let mut core = Scheduler::new(
            vec!["…k001".into()],
            vec!["gemini-2.5-flash".into()],
            Layers {
                env: [(
                    "gemini-2.5-flash".to_string(),
                    LimitsOverride {
                        rpm: Some(10),
                        rpd: Some(100_000),
                        ..Default::default()
                    },
                )]
                .into(),
                ..Layers::default()
            },
            Mode::Both,
            Duration::from_millis(250),
        );
        let noon = Timestamp(1_781_118_000_000);
        for _ in 0..500 {
            let request = PlanRequest {
                cost: crate::policy::Usage::call(10),
                target: Target::Chain(None),
                keys: crate::scheduler::KeyChoice::Any,
                priority: crate::scheduler::Priority::Interactive,
                deadline: Timestamp(i64::MAX),
            };
            core.plan(&request, noon).unwrap();
        }
        let text = Metrics::default().render(&core.snapshot(noon), None);
        // Ten go now (10 RPM); the other 490 wait, beyond the 200 a snapshot lists.
        assert!(text.contains("flux_grants_waiting 490"), "{text}");
        assert!(text.contains("flux_grants_in_flight 10"), "{text}");
        assert!(!text.contains("shared_state"), "a single instance has none");
    }
}
