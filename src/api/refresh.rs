//! Refreshing the policy at run time: rediscover the models (unless
//! `FLUX_MODELS` pins them) and ask Gemini for its limits, validated; put both
//! in force and in the state store's cache, or keep what is in force and say
//! why. The fetch is one ordinary call: scheduled, and counted in its lane,
//! like any other.

use super::AppState;
use super::dispatch::{self, Job};
use crate::clock::Timestamp;
use crate::keys::ApiKey;
use crate::policy::fetch::{self, CACHE_TTL};
use crate::policy::{SEED_CHAIN, is_chain_candidate, order_chain};
use crate::scheduler::{KeyChoice, Priority, Target};
use crate::store::{PolicyCache, Record};
use crate::upstream::Upstream;
use serde::Serialize;

/// How long the fetch may wait for a slot: its own ceiling, since it is the
/// service's call, not a client's.
const FETCH_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What `/status` says of the policy fetch.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct FetchStatus {
    /// `FLUX_POLICY_FETCH`.
    pub enabled: bool,
    /// When the limits in force were fetched (or cached) and until when they are trusted.
    pub fetched_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub from_cache: bool,
    pub last_attempt_at: Option<Timestamp>,
    /// Why the last answer was refused, if it was.
    pub last_rejection: Option<String>,
}

impl FetchStatus {
    pub fn accepted(at: Timestamp, from_cache: bool) -> FetchStatus {
        FetchStatus {
            enabled: true,
            fetched_at: Some(at),
            expires_at: Some(at.plus(CACHE_TTL)),
            from_cache,
            last_attempt_at: (!from_cache).then_some(at),
            last_rejection: None,
        }
    }
}

/// The cache, if it is younger than its seven days at `now`.
pub fn fresh(cache: Option<PolicyCache>, now: Timestamp) -> Option<PolicyCache> {
    cache.filter(|c| now < c.at.plus(CACHE_TTL))
}

/// The chain from `GET /models` on the first key that answers, ordered as the
/// seed orders it; `None` when no key can list.
pub async fn discover_chain(upstream: &Upstream, keys: &[ApiKey]) -> Option<Vec<String>> {
    for key in keys.iter().take(3) {
        match upstream.list_generation_models(key).await {
            Ok(models) => {
                let models: Vec<String> = models
                    .into_iter()
                    .filter(|m| is_chain_candidate(m))
                    .collect();
                if !models.is_empty() {
                    return Some(order_chain(models));
                }
            }
            Err(e) => tracing::warn!(key = %key.fingerprint(), "model discovery failed: {e}"),
        }
    }
    None
}

/// The seed's six, when nothing better is known.
pub fn seed_chain() -> Vec<String> {
    SEED_CHAIN.iter().map(|s| s.to_string()).collect()
}

/// Rediscovers and refetches now, ignoring the cache. On success the new
/// chain and limits are in force and cached; on failure nothing changes and
/// the reason is returned (and kept for `/status`).
pub async fn refresh(state: &AppState) -> Result<(), String> {
    let clock = state.scheduler.clock();
    let started = clock.now();
    let chain = match &state.pinned_models {
        Some(pinned) => pinned.clone(),
        None => match discover_chain(&state.upstream, &state.keys[..state.gemini_keys]).await {
            Some(chain) => chain,
            None => state
                .scheduler
                .snapshot()
                .await
                .map(|s| s.chain)
                .unwrap_or_else(|_| seed_chain()),
        },
    };
    let job = Job {
        request: crate::wire::GenerateRequest::from_value(&fetch::request(&chain)),
        target: Target::Chain(None),
        keys: KeyChoice::Any,
        requests: 1,
        max_wait: FETCH_MAX_WAIT,
        retry: true,
        priority: Priority::Interactive,
    };
    let answered = match dispatch::generate(state, job).await {
        Ok(served) => Ok(served.reply.text()),
        Err(failure) => {
            let error = failure.error();
            Err(format!(
                "the fetch call failed: {} ({})",
                error.message, error.status
            ))
        }
    };
    let verdict = answered.and_then(|text| fetch::validate(&text, &chain));
    let mut status = state
        .policy_status
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    status.last_attempt_at = Some(started);
    match verdict {
        Ok(fetched) => {
            state.scheduler.set_chain(chain.clone());
            state.scheduler.set_fetched(fetched.clone());
            state.ledger.record(Record::PolicyCache(PolicyCache {
                fetched,
                models: chain,
                at: started,
            }));
            *status = FetchStatus::accepted(started, false);
            tracing::info!(
                "policy fetched and accepted; trusted until {}",
                started.plus(CACHE_TTL)
            );
            Ok(())
        }
        Err(reason) => {
            tracing::warn!("policy fetch rejected, the policy in force stays: {reason}");
            status.last_rejection = Some(reason.clone());
            Err(reason)
        }
    }
}
