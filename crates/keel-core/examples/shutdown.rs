//! Graceful shutdown with keel-core: a worker spawned on a [`Shutdown`]
//! tracker stops when shutdown is triggered, `drain` waits for it within a
//! grace period read as a human duration, and retries between failures
//! follow a capped exponential [`Backoff`].
//!
//! Run it with `cargo run -p keel-core --example shutdown`.
#![allow(clippy::print_stdout, reason = "an example shows its user what happened")]

use std::time::Duration;

use keel_core::{Backoff, HumanDuration, Shutdown, Status};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Configuration values are written as "2s", "500ms", "5m".
    let grace: HumanDuration = "2s".parse()?;

    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let worker = shutdown.spawn(async move {
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                () = stop.triggered() => return ticks,
                () = tokio::time::sleep(Duration::from_millis(5)) => ticks += 1,
            }
        }
    });

    tokio::time::sleep(Duration::from_millis(50)).await;
    shutdown.trigger();
    shutdown.drain(grace.get()).await?;
    let ticks = worker.await?;
    assert!(ticks > 0, "the worker ran before shutdown");
    println!("worker stopped after {ticks} ticks; drained within {grace}");

    // Delays double from 100 ms up to 2 s; jitter off for a stable printout.
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2)).with_jitter(0.0);
    let delays: Vec<Duration> = (1..=7).map(|attempt| backoff.delay(attempt)).collect();
    assert_eq!(delays[6], Duration::from_secs(2));
    println!("retry delays: {delays:?}");

    // Statuses are ordered from worst to best.
    assert!(Status::Ko < Status::Warn && Status::Warn < Status::Ok);
    println!("worst of OK and WARN: {}", Status::Ok.min(Status::Warn));
    Ok(())
}
