//! Other providers behind the same scheduler: which provider a client's model
//! name means, and the jobs that call them. A provider's model is named
//! `provider/model` inside (the scheduler's lanes, `/status`, the ledger);
//! a client may name it so, or by its bare name when one provider alone
//! serves a model of that name.

use super::AppState;
use super::dispatch::{Job, ProviderCall};
use super::error::ApiError;
use crate::clock::Timestamp;
use crate::config::providers::ProviderSettings;
use crate::policy::LimitsOverride;
use crate::scheduler::{Heard, KeyChoice, Priority, Target};
use crate::upstream::{Kind, ProviderApi};
use crate::wire::ratelimit::{Metric, Reading};
use axum::http::StatusCode;
use std::time::Duration;

/// One provider the gateway reaches, with the models the providers file gives it.
pub struct Route {
    pub name: String,
    pub api: ProviderApi,
    /// Its own names for them (without the `provider/` prefix).
    pub models: Vec<String>,
}

/// The routes of the providers file's providers, in its order.
pub fn routes_of(providers: &[ProviderSettings], timeout: Duration) -> Vec<Route> {
    providers
        .iter()
        .map(|p| Route {
            name: p.name.clone(),
            api: ProviderApi::new(&p.name, p.kind, &p.base_url, timeout),
            models: p.models.keys().cloned().collect(),
        })
        .collect()
}

/// How many output tokens a call that names no maximum reserves.
pub const DEFAULT_MAX_TOKENS: u64 = 1_024;

/// The provider of `kind` and the model (named inside) that a client's
/// `named` model means: `provider/model`, or a bare name one provider of
/// that kind serves. `None`: no provider's (Gemini's, or unknown). A bare
/// name two providers serve is the client's to make precise (400).
pub fn resolve<'s>(
    state: &'s AppState,
    kind: Kind,
    named: &str,
) -> Result<Option<(&'s Route, String)>, ApiError> {
    let of_kind = || state.providers.iter().filter(move |r| r.api.kind() == kind);
    if let Some((name, model)) = named.split_once('/')
        && let Some(route) =
            of_kind().find(|r| r.name == name && r.models.iter().any(|m| m == model))
    {
        return Ok(Some((route, named.to_string())));
    }
    let serving: Vec<&Route> = of_kind()
        .filter(|r| r.models.iter().any(|m| m == named))
        .collect();
    match serving[..] {
        [] => Ok(None),
        [route] => Ok(Some((route, format!("{}/{named}", route.name)))),
        _ => Err(ApiError::bad_request(format!(
            "model {named:?} is served by several providers; name one: {}",
            serving
                .iter()
                .map(|r| format!("{}/{named}", r.name))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Every provider model of `kind`, as a client names it (`provider/model`).
pub fn models_of(state: &AppState, kind: Kind) -> Vec<String> {
    state
        .providers
        .iter()
        .filter(|r| r.api.kind() == kind)
        .flat_map(|r| r.models.iter().map(move |m| format!("{}/{m}", r.name)))
        .collect()
}

/// An interactive job for a provider's `model` (named inside).
pub fn job(state: &AppState, model: String, call: ProviderCall) -> Job<ProviderCall> {
    Job {
        request: call,
        target: Target::Provider(model),
        keys: KeyChoice::Any,
        max_wait: state.max_wait,
        retry: true,
        requests: 1,
        priority: Priority::Interactive,
    }
}

/// What an answer's rate-limit headers teach its lane, received at `at`.
/// Anthropic's combined `tokens` limit is whichever of its token limits
/// binds first (often the output one): not learned as any one of them.
pub fn heard(kind: Kind, readings: &[Reading], at: Timestamp) -> Heard {
    let mut limits = LimitsOverride::default();
    let mut hold_until: Option<Timestamp> = None;
    let combined = |r: &&Reading| kind == Kind::Anthropic && r.metric == Metric::Tokens;
    for reading in readings.iter().filter(|r| !combined(r)) {
        if let (Some(quota), Some(limit)) = (reading.quota(), reading.limit)
            && limits.get(quota).is_none_or(|l| limit < l)
        {
            limits.set(quota, limit);
        }
        if let Some(until) = reading.held_until() {
            hold_until = Some(hold_until.map_or(until, |h| h.max(until)));
        }
    }
    Heard {
        limits,
        hold_until,
        at,
    }
}

/// The model a provider answers for: the name without `provider/`.
pub fn own_name(model: &str) -> &str {
    model.split_once('/').map_or(model, |(_, m)| m)
}

/// 404 for a model no provider of this surface serves.
pub fn unknown(named: &str, kind: Kind) -> ApiError {
    let what = match kind {
        Kind::Anthropic => "no anthropic provider serves",
        Kind::OpenAi => "no provider serves",
    };
    ApiError::new(StatusCode::NOT_FOUND, format!("{what} model {named:?}"))
}
