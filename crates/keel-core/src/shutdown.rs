use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Coordinates a graceful shutdown: one root [`CancellationToken`] that every
/// background task watches, and a [`TaskTracker`] that knows when they are done.
///
/// Cloning is cheap and every clone controls the same shutdown.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// let shutdown = keel_core::Shutdown::new();
/// let token = shutdown.token();
/// shutdown.spawn(async move { token.cancelled().await; /* flush, close */ });
/// shutdown.trigger();
/// shutdown.drain(Duration::from_secs(1)).await.unwrap();
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
    /// When [`trigger`](Self::trigger) first ran: the start of the budget.
    started: std::sync::Arc<std::sync::OnceLock<tokio::time::Instant>>,
}

/// Background tasks were still running when the grace period ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{remaining} background task(s) still running after the {grace:?} grace period")]
pub struct DrainTimeout {
    /// How many tasks had not finished.
    pub remaining: usize,
    /// The grace period that ran out.
    pub grace: Duration,
}

impl Shutdown {
    /// A fresh, untriggered shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// The root token; cancelled when shutdown starts.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// True once shutdown has started.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when shutdown starts.
    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }

    /// Starts shutdown (and its budget's clock). Idempotent.
    pub fn trigger(&self) {
        self.started.get_or_init(tokio::time::Instant::now);
        self.token.cancel();
    }

    /// What is left of `budget`, counted from when shutdown started (all
    /// of it before): drain, in-flight requests and every flush share one
    /// budget by each asking for what remains.
    pub fn remaining(&self, budget: Duration) -> Duration {
        self.started.get().map_or(budget, |at| budget.saturating_sub(at.elapsed()))
    }

    /// Spawns a task that [`drain`](Self::drain) will wait for.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Spawns `task` on `tasks`' tracker when there is one (so a drain waits
    /// for it), else plainly on the runtime: for libraries whose owner may
    /// or may not run them under a [`Shutdown`].
    pub fn spawn_on<F>(tasks: Option<&Shutdown>, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match tasks {
            Some(shutdown) => shutdown.spawn(task),
            None => tokio::spawn(task),
        }
    }

    /// Installs SIGINT and SIGTERM handlers now (so a signal arriving right
    /// after this returns is never lost to the default action) and triggers
    /// shutdown on the first one. Must be called inside a tokio runtime.
    pub fn trigger_on_signals(&self) -> std::io::Result<JoinHandle<()>> {
        let signals = Signals::install()?;
        let shutdown = self.clone();
        Ok(tokio::spawn(async move {
            tokio::select! {
                name = signals.recv() => {
                    tracing::info!(signal = name, "shutdown requested");
                    shutdown.trigger();
                }
                () = shutdown.triggered() => {}
            }
        }))
    }

    /// Triggers shutdown (if not yet) and waits up to `grace` for every spawned
    /// task to finish.
    pub async fn drain(&self, grace: Duration) -> Result<(), DrainTimeout> {
        self.trigger();
        self.tracker.close();
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(DrainTimeout { remaining: self.tracker.len(), grace }),
        }
    }
}

#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn recv(self) -> &'static str {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "ctrl-c",
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tasks_that_observe_the_token() {
        let shutdown = Shutdown::new();
        let token = shutdown.token();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        shutdown.spawn(async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        shutdown.drain(Duration::from_secs(1)).await.unwrap();
        assert!(done.load(std::sync::atomic::Ordering::SeqCst));
        assert!(shutdown.is_triggered());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_reports_tasks_that_overrun_the_grace_period() {
        let shutdown = Shutdown::new();
        shutdown.spawn(std::future::pending::<()>());
        let err = shutdown.drain(Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(err.remaining, 1);
        assert_eq!(err.grace, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn signal_task_ends_when_triggered_elsewhere() {
        let shutdown = Shutdown::new();
        let task = shutdown.trigger_on_signals().unwrap();
        shutdown.trigger();
        task.await.unwrap();
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_drain_waits_for_tasks_spawned_on_it_and_not_for_plain_ones() {
        let shutdown = Shutdown::new();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        Shutdown::spawn_on(Some(&shutdown), async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        Shutdown::spawn_on(None, std::future::pending::<()>());
        shutdown.drain(Duration::from_secs(5)).await.unwrap();
        assert!(done.load(std::sync::atomic::Ordering::SeqCst), "the drain waited for the tracked task");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_runs_from_the_first_trigger() {
        let shutdown = Shutdown::new();
        let budget = Duration::from_secs(10);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(shutdown.remaining(budget), budget, "nothing spent before shutdown");
        shutdown.trigger();
        tokio::time::sleep(Duration::from_secs(3)).await;
        shutdown.trigger();
        assert_eq!(shutdown.remaining(budget), Duration::from_secs(7));
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(shutdown.remaining(budget), Duration::ZERO);
    }
}
