use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::broadcast;

/// Local distribution of received messages to this process's subscribers.
#[derive(Debug)]
pub(crate) struct Fanout {
    channels: Mutex<HashMap<String, broadcast::Sender<Bytes>>>,
    /// Bumped each time the transport's subscriber connection is back after
    /// a loss: messages sent meanwhile were missed.
    reconnects: tokio::sync::watch::Sender<u64>,
}

impl Default for Fanout {
    fn default() -> Self {
        Self { channels: Mutex::default(), reconnects: tokio::sync::watch::Sender::new(0) }
    }
}

impl Fanout {
    #[cfg(any(feature = "redis", feature = "postgres"))]
    pub(crate) fn reconnected(&self) {
        self.reconnects.send_modify(|n| *n += 1);
    }

    pub(crate) fn reconnects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reconnects.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, broadcast::Sender<Bytes>>> {
        // Single map operations only: poisoning cannot leave it inconsistent.
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver for `channel`, and whether the transport must start
    /// listening to it (no local subscriber had it before).
    pub(crate) fn subscribe(&self, channel: &str, capacity: usize) -> (broadcast::Receiver<Bytes>, bool) {
        let mut channels = self.lock();
        if let Some(sender) = channels.get(channel) {
            return (sender.subscribe(), false);
        }
        let (sender, rx) = broadcast::channel(capacity);
        channels.insert(channel.to_owned(), sender);
        (rx, true)
    }

    pub(crate) fn dispatch(&self, channel: &str, payload: Bytes) {
        let channels = self.lock();
        if let Some(sender) = channels.get(channel) {
            // No receivers left is fine: the transport keeps listening and a
            // later subscriber reuses the sender.
            let _ = sender.send(payload);
        }
    }
}
