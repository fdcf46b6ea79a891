//! Starting without the stores: what the process still waits for, and the
//! waits themselves (retried with backoff, bounded by `--startup-timeout`,
//! ended by a signal). `keel_http::starting_gate` answers from it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use keel_core::{Backoff, Shutdown};
use keel_store::StoreError;
use tokio::time::Instant;

use crate::StartError;

/// What a starting process still waits for; cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Startup {
    waiting: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

impl Startup {
    /// The stores not reachable yet, with the last error of each.
    pub fn missing(&self) -> Vec<(&'static str, String)> {
        self.lock().iter().map(|(name, why)| (*name, why.clone())).collect()
    }

    /// What `keel_http::starting_gate` reports while the process starts.
    pub fn reporter(&self) -> keel_http::Waiting {
        let this = self.clone();
        Arc::new(move || this.missing())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits reporting here, for at most `timeout` in all (zero: no limit),
    /// ended early by `shutdown`.
    pub(crate) fn waiter<'a>(&'a self, timeout: Duration, shutdown: &'a Shutdown) -> Waiter<'a> {
        Waiter { startup: self, deadline: (!timeout.is_zero()).then(|| Instant::now() + timeout), timeout, shutdown }
    }
}

/// Retries a store operation while it fails transiently.
pub(crate) struct Waiter<'a> {
    startup: &'a Startup,
    deadline: Option<Instant>,
    timeout: Duration,
    shutdown: &'a Shutdown,
}

impl Waiter<'_> {
    /// Runs `op` until it succeeds. A transient failure is reported under
    /// `name` and tried again with backoff; a permanent one, the deadline or
    /// shutdown end the wait with an error.
    pub(crate) async fn until<T, F, Fut>(&self, name: &'static str, mut op: F) -> Result<T, StartError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut attempt = 0;
        // Until the first answer: what is being done, not a failure yet.
        let first = if name == "migrations" { "still running" } else { "no answer yet" };
        self.startup.lock().insert(name, first.to_owned());
        loop {
            let err = match op().await {
                Ok(value) => {
                    self.startup.lock().remove(name);
                    if attempt > 0 {
                        tracing::info!("{name} is reachable");
                    }
                    return Ok(value);
                }
                Err(err) if !err.kind().is_transient() => return Err(err.into()),
                Err(err) => err,
            };
            attempt += 1;
            if attempt == 1 {
                tracing::warn!(%err, "{name} unreachable; waiting for it (readiness reports it)");
            }
            self.startup.lock().insert(name, err.to_string());
            let mut delay = backoff.delay(attempt);
            if let Some(deadline) = self.deadline {
                let now = Instant::now();
                if now >= deadline {
                    return Err(StartError::Unavailable { what: name, waited: self.timeout, reason: err.to_string() });
                }
                delay = delay.min(deadline - now);
            }
            tokio::select! {
                () = self.shutdown.triggered() => return Err(StartError::Stopped),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}
