//! Following a document: invalidations on the bus, a reconnect refills at
//! once, and a jittered poll catches what the bus missed.

use std::sync::Weak;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::*;

pub(super) async fn follow<T: Document>(
    weak: Weak<Inner<T>>,
    mut subscription: keel_store::Subscription,
    mut reconnects: watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    let mut bus_open = true;
    loop {
        let wait = {
            let Some(inner) = weak.upgrade() else { return };
            let base = if lock(&inner.health).last_error.is_some() {
                inner.config.retry_interval
            } else {
                inner.config.poll_interval
            };
            // ±10 % so a fleet started together does not poll together.
            base.mul_f64(0.9 + fastrand::f64() * 0.2)
        };
        let announced = tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => 0,
            changed = reconnects.changed(), if bus_open => {
                if changed.is_err() {
                    // The bus is gone; the poll still runs.
                    bus_open = false;
                    continue;
                }
                // Invalidations sent while the bus was away were missed.
                let Some(inner) = weak.upgrade() else { return };
                inner.catch_up().await;
                continue;
            }
            message = subscription.recv() => match message {
                None => return,
                Some(payload) => {
                    let Some(inner) = weak.upgrade() else { return };
                    let Some(version) = announced_version(&payload, &inner.name) else { continue };
                    inner.metrics.invalidation_received();
                    if version <= inner.current.load().version {
                        continue;
                    }
                    version
                }
            },
        };
        let Some(inner) = weak.upgrade() else { return };
        inner.refill(announced).await;
    }
}

/// The message on the invalidation channel: which document, which version.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Invalidation<'a> {
    #[serde(borrow)]
    pub(super) name: std::borrow::Cow<'a, str>,
    pub(super) version: i64,
}

pub(super) fn announced_version(payload: &[u8], name: &str) -> Option<i64> {
    let message: Invalidation<'_> = serde_json::from_slice(payload).ok()?;
    (message.name == name).then_some(message.version)
}
