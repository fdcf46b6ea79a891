//! redis-servers and Redis Clusters of our own, and the command line every
//! one of them is started with.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{on_path, run};
use crate::services::try_install;

use super::*;

/// A redis-server of our own that syncs its append-only file on every
/// write, so a killed and restarted server keeps what it acknowledged.
pub(crate) struct Redis {
    pub(crate) port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// A node of a Redis Cluster (its cluster state in `dir/nodes.conf`).
    cluster: bool,
    /// `appendfsync`: `always` here, `everysec` for the benchmarks.
    fsync: &'static str,
}

impl Redis {
    pub(crate) fn start(dir: &Path) -> Result<Self> {
        Self::start_with_fsync(dir, "always")
    }

    /// [`start`](Self::start) with another `appendfsync` policy: `everysec`
    /// is what `deploy/compose` runs (the append-only file is written before
    /// each answer and synced every second).
    pub(crate) fn start_with_fsync(dir: &Path, fsync: &'static str) -> Result<Self> {
        if !on_path("redis-server") && !try_install("redis-server")? {
            bail!("chaos needs redis-server (Debian: apt-get install redis-server)");
        }
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let mut redis = Self { port: free_port()?, dir: dir.to_path_buf(), child: None, cluster: false, fsync };
        redis.up()?;
        Ok(redis)
    }

    pub(crate) fn up(&mut self) -> Result<()> {
        let cluster = self.cluster.then_some(ClusterNode {
            node_timeout_ms: 1500,
            // A replica may take over however long it was cut off: the
            // writes that matter are those WAIT put there.
            any_replica_takes_over: true,
        });
        let child = redis_server(self.port, &self.dir, Some(self.fsync), cluster)
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start redis-server")?;
        self.child = Some(child);
        wait_until(Duration::from_secs(20), || answers(self.port)).context("redis-server did not start")
    }

    pub(crate) fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    pub(crate) fn pid(&self) -> Vec<u32> {
        self.child.iter().map(Child::id).collect()
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// A Redis Cluster node's settings.
#[derive(Clone, Copy)]
pub(crate) struct ClusterNode {
    /// `cluster-node-timeout`.
    pub(crate) node_timeout_ms: u32,
    /// `cluster-replica-validity-factor 0`: a replica takes over however
    /// long it was cut off from its master.
    pub(crate) any_replica_takes_over: bool,
}

/// `redis-server` on 127.0.0.1:`port` with its files (and `redis.log`) in
/// `dir`: no snapshots; an append-only file synced by `fsync` (`always`,
/// `everysec`) or none; a cluster node with `cluster`.
pub(crate) fn redis_server(port: u16, dir: &Path, fsync: Option<&str>, cluster: Option<ClusterNode>) -> Command {
    let mut command = Command::new("redis-server");
    command.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""]);
    match fsync {
        Some(fsync) => command.args(["--appendonly", "yes", "--appendfsync", fsync]),
        None => command.args(["--appendonly", "no"]),
    };
    if let Some(node) = cluster {
        command.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
        command.args(["--cluster-node-timeout", &node.node_timeout_ms.to_string()]);
        if node.any_replica_takes_over {
            command.args(["--cluster-replica-validity-factor", "0"]);
        }
    }
    command.arg("--dir").arg(dir).arg("--logfile").arg(dir.join("redis.log"));
    command
}

/// `redis-cli --cluster create` over the nodes at `ports`: three masters and
/// a replica each.
pub(crate) fn create_cluster(ports: &[u16]) -> Result<()> {
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    run(Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .stdout(Stdio::null()))
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A private Redis Cluster: six nodes on free ports, three masters with one
/// replica each, created with `redis-cli --cluster create`.
pub(crate) struct RedisCluster {
    pub(crate) nodes: Vec<Redis>,
}

impl RedisCluster {
    pub(crate) fn start(dir: &Path) -> Result<Self> {
        if !on_path("redis-cli") && !try_install("redis-server")? {
            bail!("chaos needs redis-server and redis-cli (Debian: apt-get install redis-server)");
        }
        let _ = std::fs::remove_dir_all(dir);
        let mut nodes = Vec::new();
        for i in 0..6 {
            let node_dir = dir.join(i.to_string());
            std::fs::create_dir_all(&node_dir)?;
            let mut node = Redis { port: free_port()?, dir: node_dir, child: None, cluster: true, fsync: "always" };
            node.up()?;
            nodes.push(node);
        }
        create_cluster(&nodes.iter().map(|n| n.port).collect::<Vec<_>>())?;
        let cluster = Self { nodes };
        wait_until(Duration::from_secs(30), || cluster.healthy(None) && cluster.replicas_in_sync())
            .context("the chaos cluster never became ok with every replica in sync")?;
        Ok(cluster)
    }

    /// The URL `REDIS_URL` takes, naming every node.
    pub(crate) fn url(&self) -> String {
        let [first, rest @ ..] = &self.nodes[..] else { return String::new() };
        let others: Vec<String> = rest.iter().map(|n| format!("node=127.0.0.1:{}", n.port)).collect();
        format!("redis-cluster://127.0.0.1:{}?{}", first.port, others.join("&"))
    }

    fn cli(port: u16, args: &[&str]) -> Option<String> {
        let out =
            Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every running node (but `except`) reports `cluster_state:ok`.
    pub(crate) fn healthy(&self, except: Option<usize>) -> bool {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| Some(*i) != except && n.child.is_some())
            .all(|(_, n)| Self::cli(n.port, &["cluster", "info"]).is_some_and(|info| info.contains("cluster_state:ok")))
    }

    /// Three replicas, each with its link to its master up.
    fn replicas_in_sync(&self) -> bool {
        let linked = self
            .nodes
            .iter()
            .filter_map(|n| Self::cli(n.port, &["info", "replication"]))
            .filter(|info| info.contains("role:slave") && info.contains("master_link_status:up"))
            .count();
        linked == 3
    }

    /// Entries left in the first `partitions` entry streams of `namespace`
    /// (`{namespace}:entries-stream:{pN}`), each asked of its master; `None`
    /// while one cannot answer.
    pub(crate) fn stream_backlog(&self, namespace: &str, partitions: usize) -> Option<u64> {
        let asking = self.nodes.iter().position(|n| n.child.is_some())?;
        (0..partitions)
            .map(|p| {
                let key = format!("{namespace}:entries-stream:{{p{p}}}");
                let master = self.master_of(&key, asking).ok()?;
                Self::cli(self.nodes[master].port, &["XLEN", &key])?.trim().parse::<u64>().ok()
            })
            .sum()
    }

    /// `CLUSTER NODES` and `CLUSTER INFO` as node `asking` answers them.
    pub(crate) fn describe(&self, asking: usize) -> String {
        let port = self.nodes[asking].port;
        let nodes = Self::cli(port, &["cluster", "nodes"]).unwrap_or_default();
        let info = Self::cli(port, &["cluster", "info"]).unwrap_or_default();
        format!("{nodes}{}", info.lines().take(3).collect::<Vec<_>>().join("\n"))
    }

    /// The node (index) that is master of `key`'s slot, as `asking` sees it.
    pub(crate) fn master_of(&self, key: &str, asking: usize) -> Result<usize> {
        let port = self.nodes[asking].port;
        let slot: u16 = Self::cli(port, &["cluster", "keyslot", key]).context("CLUSTER KEYSLOT")?.trim().parse()?;
        let table = Self::cli(port, &["cluster", "nodes"]).context("CLUSTER NODES")?;
        for line in table.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b)
            });
            let node_port = fields[1].split('@').next().and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse().ok());
            if owns && let Some(index) = self.nodes.iter().position(|n| Some(n.port) == node_port) {
                return Ok(index);
            }
        }
        bail!("no master owns slot {slot} of {key}")
    }
}
