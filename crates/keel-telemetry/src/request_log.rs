//! The request a log record is written for, without a `tracing` span.
//!
//! Keel's HTTP middleware gives every record written while a request is
//! handled that request's method, path and id. A `tracing` span does this for
//! any subscriber, but every request pays for it whether or not anything is
//! logged: the span is created, its fields are formatted and stored, and it
//! is entered and closed.
//!
//! When Keel's own JSON logging is the subscriber (`init_logging` with
//! `LogFormat::Json`) and nothing else asked for spans ([`need_spans`]), the
//! middleware sets a [`RequestLog`] instead, for as long as each poll of the
//! request lasts ([`RequestLog::scope`]). The JSON formatter reads it only
//! when a record is written, and writes it as the `"span"` object the span
//! would have given (`name` `request`, `method`, `uri`, `request_id`). A real
//! span entered inside the request is still the one shown, as before.
//!
//! ```
//! use keel_telemetry::request_log::{self, RequestLog};
//!
//! let id = http::HeaderValue::from_static("id-1");
//! let mut current = Some(RequestLog::new(http::Method::GET, &http::Uri::from_static("/a"), id));
//! let path =
//!     RequestLog::scope(&mut current, || request_log::with_current(|r| r.map(|r| r.path().to_owned())));
//! assert_eq!(path.as_deref(), Some("/a"));
//! assert!(request_log::with_current(|r| r.is_none()));
//! assert!(current.is_some(), "the request is handed back after the scope");
//! ```

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Uri};

/// Keel's JSON formatter (which writes the current [`RequestLog`]) is the
/// global subscriber's.
static JSON_LOGGING: AtomicBool = AtomicBool::new(false);

/// A layer was installed that needs request spans ([`need_spans`]).
static SPANS_NEEDED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static CURRENT: Cell<Option<RequestLog>> = const { Cell::new(None) };
}

/// What a log record shows of the request it was written for.
///
/// One pointer: made once per request, then moved in and out of the
/// thread's slot on every poll at no cost.
#[derive(Debug, Clone)]
pub struct RequestLog(Box<Fields>);

#[derive(Debug, Clone)]
struct Fields {
    method: Method,
    path: Option<PathAndQuery>,
    id: HeaderValue,
}

impl RequestLog {
    /// The request `method uri` whose id is `id`.
    pub fn new(method: Method, uri: &Uri, id: HeaderValue) -> Self {
        Self(Box::new(Fields { method, path: uri.path_and_query().cloned(), id }))
    }

    /// The request's method.
    pub fn method(&self) -> &str {
        self.0.method.as_str()
    }

    /// The request's path, without its query.
    pub fn path(&self) -> &str {
        self.0.path.as_ref().map_or("", PathAndQuery::path)
    }

    /// The request id as text (empty when it is not visible ASCII).
    pub fn id(&self) -> &str {
        self.0.id.to_str().unwrap_or("")
    }

    /// Gives the request id back (to echo it on the response).
    pub fn into_id(self) -> HeaderValue {
        self.0.id
    }

    /// Runs `f` with the request in `slot` as the current one on this
    /// thread, then puts it back in `slot` (also when `f` panics) and
    /// restores whatever was current before. Meant to wrap each poll of the
    /// request's future: nothing is allocated, three moves per call.
    pub fn scope<R>(slot: &mut Option<Self>, f: impl FnOnce() -> R) -> R {
        /// Hands the request back when the poll ends, however it ends.
        struct Restore<'a> {
            slot: &'a mut Option<RequestLog>,
            previous: Option<RequestLog>,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                *self.slot = CURRENT.replace(self.previous.take());
            }
        }
        let previous = CURRENT.replace(slot.take());
        let _restore = Restore { slot, previous };
        f()
    }
}

/// Calls `f` with the request this thread is handling, if a
/// [`RequestLog::scope`] is running. Inside `f` (and anything it calls) the
/// current request reads as `None`.
pub fn with_current<R>(f: impl FnOnce(Option<&RequestLog>) -> R) -> R {
    /// Puts the request back however `f` ends.
    struct PutBack(Option<RequestLog>);
    impl Drop for PutBack {
        fn drop(&mut self) {
            if self.0.is_some() {
                CURRENT.set(self.0.take());
            }
        }
    }
    let current = PutBack(CURRENT.take());
    f(current.0.as_ref())
}

/// Whether requests still need a real `tracing` span: true unless Keel's
/// JSON logging is installed and no installed layer asked for spans.
pub fn spans_needed() -> bool {
    !JSON_LOGGING.load(Ordering::Relaxed) || SPANS_NEEDED.load(Ordering::Relaxed)
}

/// Asks for a real `tracing` span around every request from now on: called
/// by `otlp_layer`, and to be called by whoever gives `init_logging_with` a
/// layer that reads spans.
pub fn need_spans() {
    SPANS_NEEDED.store(true, Ordering::Relaxed);
}

/// Keel's JSON formatter became (`true`) or stopped being the global one.
#[cfg_attr(not(feature = "logging"), allow(dead_code))]
pub(crate) fn set_json_logging(installed: bool) {
    JSON_LOGGING.store(installed, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &'static str) -> Option<RequestLog> {
        Some(RequestLog::new(Method::POST, &Uri::from_static(path), HeaderValue::from_static("r-1")))
    }

    fn current_path() -> Option<String> {
        with_current(|r| r.map(|r| r.path().to_owned()))
    }

    /// Scopes nest and unwind: the inner request is current inside, the
    /// outer one again after, nothing after both, also across a panic.
    #[test]
    fn scopes_nest_and_restore_even_after_a_panic() {
        let (mut outer, mut inner) = (request("/outer"), request("/inner?q=1"));
        RequestLog::scope(&mut outer, || {
            assert_eq!(current_path().as_deref(), Some("/outer"));
            RequestLog::scope(&mut inner, || assert_eq!(current_path().as_deref(), Some("/inner")));
            assert_eq!(current_path().as_deref(), Some("/outer"));
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                RequestLog::scope(&mut inner, || panic!("handler panicked"))
            }));
            assert!(panicked.is_err());
            assert_eq!(current_path().as_deref(), Some("/outer"));
        });
        assert_eq!(current_path(), None);
        let (outer, inner) = (outer.expect("outer handed back"), inner.expect("inner handed back"));
        assert_eq!((outer.method(), outer.id(), inner.path()), ("POST", "r-1", "/inner"));
        assert_eq!(inner.into_id(), "r-1");
    }

    /// Moving a request in and out of the slot moves one pointer.
    #[test]
    fn a_request_is_one_pointer() {
        assert_eq!(std::mem::size_of::<Option<RequestLog>>(), std::mem::size_of::<usize>());
    }

    /// Reading the current request does not lose it, even when the reader
    /// panics.
    #[test]
    fn reading_the_current_request_keeps_it() {
        let mut slot = request("/kept");
        RequestLog::scope(&mut slot, || {
            let panicked = std::panic::catch_unwind(|| with_current(|_| panic!("reader panicked")));
            assert!(panicked.is_err());
            assert_eq!(current_path().as_deref(), Some("/kept"));
            assert_eq!(with_current(|_| current_path()), None, "inside a reader the request reads as none");
        });
        assert!(slot.is_some());
    }
}
