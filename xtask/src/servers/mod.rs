//! The one place xtask starts servers: PostgreSQL clusters, redis-servers
//! and Redis Clusters (private ones on free ports for chaos, alerts, bench
//! and schemathesis, or the shared test servers `services up` keeps running),
//! and the release `api` and `worker` binaries.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::cmd::run;

/// A port nothing listens on now.
pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Sends `signal` (e.g. `STOP`, `CONT`, `KILL`) to `pids`.
pub(crate) fn signal(pids: &[u32], signal: &str) -> Result<()> {
    if pids.is_empty() {
        bail!("no process to send SIG{signal} to");
    }
    let mut kill = Command::new("kill");
    kill.arg(format!("-{signal}")).args(pids.iter().map(u32::to_string));
    run(kill.stdout(Stdio::null()))
}

mod binary;
mod postgres;
mod redis;

pub(crate) use binary::Binary;
pub(crate) use postgres::Postgres;
pub(crate) use redis::{ClusterNode, Redis, RedisCluster, create_cluster, redis_server};

/// Polls `ready` every 50 ms for at most `limit`.
pub(crate) fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() > deadline {
            bail!("not ready after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
