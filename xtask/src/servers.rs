//! The one place xtask starts servers: PostgreSQL clusters, redis-servers
//! and Redis Clusters (private ones on free ports for chaos, alerts, bench
//! and schemathesis, or the shared test servers `services up` keeps running),
//! and the release `api` and `worker` binaries.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{on_path, run};
use crate::services::{find_postgres_tool, is_root, try_install};

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

/// A PostgreSQL cluster of our own, under `dir`, on its own port.
pub(crate) struct Postgres {
    pub(crate) port: u16,
    /// The cluster's data directory (the server's own files: its user can
    /// write there).
    pub(crate) data: PathBuf,
    log: PathBuf,
    pg_ctl: PathBuf,
}

impl Postgres {
    /// A cluster of its own under `dir` on a free port, stopped when dropped.
    pub(crate) fn start(dir: &Path) -> Result<Self> {
        Self::start_on(dir, free_port()?)
    }

    /// A cluster under `dir` (created by `initdb` with trust auth the first
    /// time) on `port`, stopped when dropped unless [kept](Self::keep).
    pub(crate) fn start_on(dir: &Path, port: u16) -> Result<Self> {
        if find_postgres_tool("initdb").is_none() && !try_install("postgresql")? {
            bail!("no PostgreSQL server is installed: install it (Debian: apt-get install postgresql)");
        }
        let (Some(initdb), Some(pg_ctl)) = (find_postgres_tool("initdb"), find_postgres_tool("pg_ctl")) else {
            bail!("initdb/pg_ctl not found although PostgreSQL seems installed");
        };
        std::fs::create_dir_all(dir)?;
        if is_root() {
            run(Command::new("chown").args(["-R", "postgres"]).arg(dir))?;
        }
        let pg = Self { port, data: dir.join("data"), log: dir.join("postgres.log"), pg_ctl };
        if !pg.data.join("PG_VERSION").exists() {
            run(as_postgres(&initdb)
                .args(["-A", "trust", "-U", "postgres", "-D"])
                .arg(&pg.data)
                .stdout(Stdio::null()))?;
        }
        pg.up()?;
        Ok(pg)
    }

    /// Leaves the server running after this handle is gone.
    pub(crate) fn keep(self) {
        std::mem::forget(self);
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub(crate) fn up(&self) -> Result<()> {
        let options = format!("-p {} -c listen_addresses=127.0.0.1 -k {}", self.port, self.data.display());
        run(as_postgres(&self.pg_ctl)
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-o", &options, "-w", "start"])
            .stdout(Stdio::null()))
    }

    /// `pg_ctl stop -m fast`: sessions are terminated, the server exits.
    pub(crate) fn stop_fast(&self) -> Result<()> {
        run(as_postgres(&self.pg_ctl)
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null()))
    }

    /// The postmaster and every backend of this cluster.
    pub(crate) fn pids(&self) -> Result<Vec<u32>> {
        let pidfile = std::fs::read_to_string(self.data.join("postmaster.pid")).context("postmaster.pid")?;
        let master: u32 = pidfile.lines().next().unwrap_or_default().trim().parse().context("postmaster pid")?;
        let mut pids = vec![master];
        for entry in std::fs::read_dir("/proc")?.filter_map(|e| e.ok()) {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if ppid.and_then(|p| p.parse::<u32>().ok()) == Some(master) {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    pub(crate) fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs `sql` with psql; rows as `|`-separated lines.
    pub(crate) fn psql(&self, database: &str, sql: &str) -> Result<String> {
        self.psql_commands(database, &[sql])
    }

    /// Runs `commands` (SQL or `psql` meta-commands such as `\timing on`)
    /// one after the other in one `psql` session; its output.
    pub(crate) fn psql_commands(&self, database: &str, commands: &[&str]) -> Result<String> {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", database])
            .args(["-At", "-v", "ON_ERROR_STOP=1"])
            .args(commands.iter().flat_map(|command| ["-c", command]))
            .output()
            .context("cannot run psql")?;
        if !out.status.success() {
            bail!("psql {commands:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub(crate) fn recreate(&self, database: &str) -> Result<()> {
        self.psql("postgres", &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))?;
        self.psql("postgres", &format!("CREATE DATABASE {database}"))?;
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.pg_ctl)
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

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

/// A running `api` or `worker`.
pub(crate) struct Binary {
    pub(crate) addr: String,
    child: Child,
    command: Vec<String>,
    envs: Vec<(String, String)>,
    path: PathBuf,
    log: PathBuf,
}

impl Binary {
    /// Starts `path` listening on a free port (`listen_flag`), with `envs`;
    /// its output goes to `log`.
    pub(crate) fn spawn(path: &Path, listen_flag: &str, envs: &[(&str, String)], log: &Path) -> Result<Self> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let command = vec![listen_flag.to_owned(), addr.clone(), "--log-format".into(), "json".into()];
        let envs: Vec<(String, String)> = envs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        let child = Self::launch(path, &command, &envs, log)?;
        Ok(Self { addr, child, command, envs, path: path.to_path_buf(), log: log.to_path_buf() })
    }

    fn launch(path: &Path, args: &[String], envs: &[(String, String)], log: &Path) -> Result<Child> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        Command::new(path)
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", path.display()))
    }

    /// Waits for `/readyz` to answer 200.
    pub(crate) fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let (addr, child) = (self.addr.clone(), &mut self.child);
        let mut exited = None;
        let ready = wait_until(limit, || {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return true;
            }
            crate::chaos::load::get(&addr, "/readyz").is_ok_and(|(status, _)| status == 200)
        });
        if let Some(status) = exited {
            bail!("{} exited with {status} while starting (log: {})", self.path.display(), self.log.display());
        }
        ready.with_context(|| format!("{} on {addr} not ready (log: {})", self.path.display(), self.log.display()))
    }

    pub(crate) fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Starts the same command again (after [`kill`](Self::kill)).
    pub(crate) fn restart(&mut self) -> Result<()> {
        self.child = Self::launch(&self.path, &self.command, &self.envs, &self.log)?;
        Ok(())
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and returns at once.
    pub(crate) fn terminate(&self) -> Result<()> {
        signal(&[self.child.id()], "TERM")
    }

    /// Waits up to `limit` for the process to exit; its exit code.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {limit:?}", self.path.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits (SIGKILL after 30 s).
    pub(crate) fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.kill();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
