//! A global bound on request-body bytes held in memory (`FLUX_MAX_INFLIGHT_MB`).
//! A request with a body is charged its `Content-Length` (or the largest body
//! allowed, when it does not say) for as long as its handler runs, waits for
//! a slot included; beyond the bound it gets 503 with `Retry-After` at once
//! instead of growing the process.

use super::AppState;
use super::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Body bytes the service may hold, counted in KiB.
pub struct Budget {
    kib: Arc<Semaphore>,
    /// The whole budget, in KiB.
    total_kib: u32,
    /// `FLUX_MAX_BODY_MB`: no single body is charged more.
    max_body_bytes: usize,
}

impl Budget {
    pub fn new(max_inflight_bytes: usize, max_body_bytes: usize) -> Budget {
        let total_kib = max_inflight_bytes
            .div_ceil(1024)
            .clamp(1, u32::MAX as usize) as u32;
        Budget {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            max_body_bytes,
        }
    }

    /// What a request's body is charged, in KiB (0: it has none).
    fn charge(&self, req: &Request) -> u32 {
        let headers = req.headers();
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let bytes = match declared {
            Some(n) => n.min(self.max_body_bytes as u64),
            None if headers.contains_key(header::TRANSFER_ENCODING) => self.max_body_bytes as u64,
            None => 0,
        };
        u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.total_kib)
    }
}

/// The middleware: see the module doc.
pub async fn admit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let kib = state.inflight.charge(&req);
    if kib == 0 {
        return next.run(req).await;
    }
    match state.inflight.kib.clone().try_acquire_many_owned(kib) {
        Ok(held) => {
            let response = next.run(req).await;
            drop(held);
            response
        }
        Err(_) => super::refusal(
            req.uri().path(),
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many request bytes are already held in memory (FLUX_MAX_INFLIGHT_MB); try again shortly",
            )
            .retry_after(Duration::from_secs(1)),
        ),
    }
}
