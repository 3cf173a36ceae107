//! The one layer every route runs behind: the steps a request goes through
//! around its handler, outermost first: a panic anywhere becomes a 500 in
//! the envelope of the request's surface ([`CatchPanic`]); the answer is
//! counted by route template and status; other sites' pages are screened
//! (`origin`); the body is charged to the in-flight budget as it arrives
//! (`inflight`); the token is checked (`auth`). Each step's logic lives in
//! its own module; this file is only their order.
//!
//! One hand-written layer, not one `axum::middleware::from_fn` per step:
//! each of those boxed its own future (about 1.1 KiB while a request waits
//! for its slot) and a clone of the service below it, and a waiting request
//! holds them all. Here a request holds, beside its route's future, only
//! what the steps after the handler need (see [`After`]).

use super::error::ApiError;
use super::inflight::Meter;
use super::origin::Passage;
use super::{AppState, Envelope, auth, inflight, origin};
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use std::convert::Infallible;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// The layer: see the module doc.
#[derive(Clone)]
pub struct Gate(AppState);

impl Gate {
    pub fn new(state: AppState) -> Gate {
        Gate(state)
    }
}

impl<S> Layer<S> for Gate {
    type Service = CatchPanic<Steps<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic(Steps {
            state: self.0.clone(),
            inner,
        })
    }
}

/// A panic in the service below, while it is called or polled, becomes a
/// 500 in the envelope of the request's surface; its message is not
/// echoed, so nothing it held can leak.
#[derive(Clone)]
pub struct CatchPanic<S>(pub S);

impl<S> Service<Request> for CatchPanic<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Caught<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let envelope = Envelope::of(&req);
        match catch_unwind(AssertUnwindSafe(|| self.0.call(req))) {
            Ok(inner) => Caught::Running { inner, envelope },
            Err(_) => Caught::Panicked(Some(panicked(envelope))),
        }
    }
}

/// [`CatchPanic`]'s future.
pub enum Caught<F> {
    Running { inner: F, envelope: Envelope },
    Panicked(Option<Response>),
}

impl<F> Future for Caught<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Caught::Running { inner, envelope } => {
                match catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
                    Ok(polled) => polled,
                    Err(_) => Poll::Ready(Ok(panicked(*envelope))),
                }
            }
            Caught::Panicked(answer) => {
                Poll::Ready(Ok(answer.take().expect("Caught polled after completion")))
            }
        }
    }
}

fn panicked(envelope: Envelope) -> Response {
    tracing::error!("a request handler panicked");
    envelope.refuse(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error",
    ))
}

/// The steps inside [`CatchPanic`], in the order of the module doc.
#[derive(Clone)]
pub struct Steps<S> {
    state: AppState,
    inner: S,
}

impl<S> Service<Request> for Steps<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Stepped<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let state = &self.state;
        let mut after = After {
            state: state.clone(),
            // The template, never the raw path, which may carry a token in `?key=`.
            route: req.extensions().get::<MatchedPath>().cloned(),
            envelope: Envelope::of(&req),
            cors: None,
            meter: None,
        };
        match origin::screen(&state.origins, &req) {
            Passage::On => {}
            Passage::Listed(origin) => after.cors = Some(origin),
            Passage::Answered(answer) => return Stepped::Done(Some(after.finish(answer))),
        }
        let (mut req, meter) = inflight::meter(state, req);
        after.meter = Some(meter);
        if let Err(refused) = auth::check(&state.tokens, &mut req) {
            let answer = after.envelope.refuse(refused);
            return Stepped::Done(Some(after.finish(answer)));
        }
        Stepped::Waiting {
            inner: self.inner.call(req),
            after: Some(after),
        }
    }
}

/// What a request holds, beside its handler's future, for the steps after
/// the handler: the inner steps' first.
pub struct After {
    state: AppState,
    route: Option<MatchedPath>,
    envelope: Envelope,
    /// The listed origin whose CORS headers the answer gets.
    cors: Option<HeaderValue>,
    meter: Option<Meter>,
}

impl After {
    fn finish(self, response: Response) -> Response {
        let mut response = match self.meter {
            Some(meter) => meter.settle(response, self.envelope),
            None => response,
        };
        if let Some(origin) = self.cors {
            origin::allow(&mut response, origin);
        }
        let route = self.route.as_ref().map_or("unmatched", MatchedPath::as_str);
        self.state
            .metrics
            .request(route, response.status().as_u16());
        response
    }
}

/// [`Steps`]' future: the handler's, or an answer the steps gave first.
pub enum Stepped<F> {
    Waiting { inner: F, after: Option<After> },
    Done(Option<Response>),
}

impl<F> Future for Stepped<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = match self.get_mut() {
            Stepped::Waiting { inner, after } => {
                let Ok(response) = ready!(Pin::new(inner).poll(cx));
                let after = after.take().expect("Stepped polled after completion");
                after.finish(response)
            }
            Stepped::Done(answer) => answer.take().expect("Stepped polled after completion"),
        };
        Poll::Ready(Ok(answer))
    }
}
