//! The request timeout, armed only for requests that wait.
//!
//! `tower_http::timeout::TimeoutLayer` registers a timer for every request.
//! Most requests (probes, cached reads) are answered on their first poll and
//! never need one: here the timer is armed the first time the handler
//! returns `Pending`, with the deadline counted from that moment (the first
//! poll is synchronous work of microseconds).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{Request, Response, StatusCode};
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// Answers an empty `503` when a request is still running after `timeout`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LazyTimeoutLayer {
    timeout: Duration,
}

impl LazyTimeoutLayer {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for LazyTimeoutLayer {
    type Service = LazyTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LazyTimeout { inner, timeout: self.timeout }
    }
}

/// The service of [`LazyTimeoutLayer`].
#[derive(Debug, Clone)]
pub(crate) struct LazyTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for LazyTimeout<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = LazyTimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        LazyTimeoutFuture { inner: self.inner.call(request), timeout: self.timeout, sleep: None }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`LazyTimeout`].
    pub(crate) struct LazyTimeoutFuture<F> {
        #[pin]
        inner: F,
        timeout: Duration,
        // Boxed: armed for few requests, and the future stays small for
        // the many that never wait.
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl<F, ResBody, E> Future for LazyTimeoutFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Default,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result);
        }
        let sleep =
            this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + *this.timeout)));
        std::task::ready!(sleep.as_mut().poll(cx));
        let mut response = Response::new(ResBody::default());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt as _;

    use super::*;

    fn request() -> Request<()> {
        Request::get("/").body(()).expect("request")
    }

    /// A handler that answers at once never arms a timer; one that waits is
    /// answered 503 at the deadline, counted from its first wait.
    #[tokio::test(start_paused = true)]
    async fn only_waiting_requests_time_out() {
        let layer = LazyTimeoutLayer::new(Duration::from_secs(2));
        let quick = layer.layer(tower::service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) }));
        assert_eq!(quick.oneshot(request()).await.unwrap().status(), StatusCode::OK);

        let slow = layer.layer(tower::service_fn(|_: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok::<_, Infallible>(Response::new(()))
        }));
        let started = Instant::now();
        assert_eq!(slow.clone().oneshot(request()).await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(started.elapsed(), Duration::from_secs(2));

        let in_time = layer.layer(tower::service_fn(|_: Request<()>| async {
            tokio::time::sleep(Duration::from_millis(1999)).await;
            Ok::<_, Infallible>(Response::new(()))
        }));
        assert_eq!(in_time.oneshot(request()).await.unwrap().status(), StatusCode::OK);
    }
}
