//! The inner half of the middleware stack as one layer: the body limit,
//! panic catching, the request timeout and the JSON error envelope.
//!
//! Four layers (`tower_http`'s body limit and panic catcher, a timeout, an
//! error mapper, and the adapters between their body types) would each wrap
//! the request, the response and the future once more on every request.
//! Here one future does all four, in the order the stack promises: a panic
//! or an oversized body is answered inside the timeout, and every answer,
//! the timeout's 503 included, goes through the JSON error envelope.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody as _};
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::{BoxFuture, Either};
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::{ApiError, HttpMetrics};

/// See the module docs.
#[derive(Clone)]
pub(crate) struct GuardLayer {
    timeout: Duration,
    body_limit: usize,
    metrics: HttpMetrics,
}

impl GuardLayer {
    pub(crate) fn new(timeout: Duration, body_limit: usize, metrics: HttpMetrics) -> Self {
        Self { timeout, body_limit, metrics }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard { inner, layer: self.clone() }
    }
}

/// The service of [`GuardLayer`].
#[derive(Clone)]
pub(crate) struct Guard<S> {
    inner: S,
    layer: GuardLayer,
}

impl<S> Service<Request<Body>> for Guard<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let (inner, answer) = match body_limit(&request, self.layer.body_limit) {
            Limit::TooLarge => (None, Some(too_large())),
            limit => {
                if let Limit::Bytes(limit) = limit {
                    request = request.map(|body| Body::new(http_body_util::Limited::new(body, limit)));
                }
                match catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
                    Ok(inner) => (Some(inner), None),
                    Err(panic) => (None, Some(panicked(&self.layer.metrics, &*panic))),
                }
            }
        };
        GuardFuture {
            inner,
            answer,
            rewriting: None,
            sleep: None,
            timeout: self.layer.timeout,
            metrics: self.layer.metrics.clone(),
        }
    }
}

/// What the body limit asks of a request.
enum Limit {
    /// Its `Content-Length` is over the limit.
    TooLarge,
    /// Read at most this many bytes of it.
    Bytes(usize),
    /// It has no body (nearly every `GET`): nothing to hold.
    NoBody,
}

fn body_limit(request: &Request<Body>, limit: usize) -> Limit {
    // A request without a body has nothing to limit, whatever it declares:
    // nearly every `GET` stops here, before any header is looked up.
    if request.body().is_end_stream() {
        return Limit::NoBody;
    }
    let length = request.headers().get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse().ok());
    match length {
        Some(length) if length > limit => Limit::TooLarge,
        Some(length) => Limit::Bytes(length),
        None => Limit::Bytes(limit),
    }
}

fn too_large() -> Response {
    ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE, "length limit exceeded").into_response()
}

/// A caught panic: counted and logged; the answer does not carry its text,
/// which may hold internals.
fn panicked(metrics: &HttpMetrics, panic: &(dyn Any + Send)) -> Response {
    metrics.count_panic();
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into());
    tracing::error!(panic = %detail, "handler panicked");
    ApiError::internal("internal error").into_response()
}

pin_project_lite::pin_project! {
    /// The future of [`Guard`].
    pub(crate) struct GuardFuture<F> {
        // The handler's future, until it answers, panics or times out.
        #[pin]
        inner: Option<F>,
        // An answer made without the handler (a 413, a panic while called).
        answer: Option<Response>,
        // An error answer being rewritten into the envelope.
        rewriting: Option<BoxFuture<'static, Response>>,
        // Armed the first time the handler waits (most never do), with the
        // deadline counted from then; boxed, so the future stays small.
        sleep: Option<Pin<Box<Sleep>>>,
        timeout: Duration,
        metrics: HttpMetrics,
    }
}

impl<F> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(rewriting) = this.rewriting.as_mut() {
            return rewriting.as_mut().poll(cx).map(Ok);
        }
        let response = match (this.answer.take(), this.inner.as_mut().as_pin_mut()) {
            (Some(answer), _) => answer,
            (None, Some(inner)) => {
                let response = match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
                    Ok(Poll::Ready(Ok(response))) => response,
                    Ok(Poll::Pending) => {
                        let sleep = this
                            .sleep
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + *this.timeout)));
                        std::task::ready!(sleep.as_mut().poll(cx));
                        // Empty: the envelope below says what happened.
                        StatusCode::SERVICE_UNAVAILABLE.into_response()
                    }
                    Err(panic) => panicked(this.metrics, &*panic),
                };
                // Done with the handler (or given up on it): dropped now.
                this.inner.set(None);
                response
            }
            // Polled after it answered: not done by hyper or axum.
            (None, None) => return Poll::Ready(Ok(ApiError::internal("answer polled twice").into_response())),
        };
        match crate::error::json_errors(response) {
            Either::Left(ready) => Poll::Ready(Ok(ready.into_inner())),
            Either::Right(mut rewrite) => {
                let polled = rewrite.as_mut().poll(cx);
                if polled.is_pending() {
                    *this.rewriting = Some(rewrite);
                }
                polled.map(Ok)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt as _;

    use super::*;

    fn guarded<F, Fut>(timeout: Duration, handler: F) -> Guard<tower::util::ServiceFn<F>>
    where
        F: FnMut(Request<Body>) -> Fut,
        Fut: Future<Output = Result<Response, Infallible>>,
    {
        let metrics = HttpMetrics::new(&keel_telemetry::Telemetry::new("t").expect("telemetry"));
        GuardLayer::new(timeout, 1024, metrics).layer(tower::service_fn(handler))
    }

    fn request() -> Request<Body> {
        Request::get("/").body(Body::empty()).expect("request")
    }

    /// A handler that answers at once never arms a timer; one that waits is
    /// answered 503 at the deadline, counted from its first wait.
    #[tokio::test(start_paused = true)]
    async fn only_waiting_requests_time_out() {
        let quick = guarded(Duration::from_secs(2), |_| async { Ok(Response::new(Body::empty())) });
        let answered = quick.oneshot(request()).await.unwrap();
        assert_eq!(answered.status(), StatusCode::OK);

        let slow = guarded(Duration::from_secs(2), |_| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(Response::new(Body::empty()))
        });
        let started = Instant::now();
        assert_eq!(slow.oneshot(request()).await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(started.elapsed(), Duration::from_secs(2));

        let in_time = guarded(Duration::from_secs(2), |_| async {
            tokio::time::sleep(Duration::from_millis(1999)).await;
            Ok(Response::new(Body::empty()))
        });
        assert_eq!(in_time.oneshot(request()).await.unwrap().status(), StatusCode::OK);
    }

    /// A panic while the handler is called (not only while it is polled) is
    /// a 500 in the envelope; a declared length over the limit is refused
    /// before the handler runs.
    #[tokio::test]
    async fn panics_in_call_and_declared_oversized_bodies_are_answered() {
        let exploding = guarded(Duration::from_secs(2), |_| -> std::future::Ready<Result<Response, Infallible>> {
            panic!("while called")
        });
        let answered = exploding.oneshot(request()).await.unwrap();
        assert_eq!(answered.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(answered.headers()[header::CONTENT_TYPE], "application/json");

        let mut reached = false;
        let big = Request::post("/").header(header::CONTENT_LENGTH, "1025").body(Body::from("x")).expect("request");
        let answered = guarded(Duration::from_secs(2), |_| {
            reached = true;
            async { Ok(Response::new(Body::empty())) }
        })
        .oneshot(big)
        .await
        .unwrap();
        assert_eq!(answered.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(!reached, "the handler ran for a body declared too large");
    }
}
