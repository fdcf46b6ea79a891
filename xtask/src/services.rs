//! Making sure PostgreSQL and Redis answer before tests run.
//!
//! Addresses come from `KEEL_TEST_POSTGRES_URL` and `KEEL_TEST_REDIS_URL`
//! (defaults: the local servers). A server that does not answer is started
//! from the installed binaries; when none is installed (and this is not a CI
//! run as root that may install it), the command fails saying what to install.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{on_path, run};

const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";

/// `host:port` of a `scheme://[user@]host:port/...` URL.
pub fn host_port(url: &str, default_port: u16) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if host_port.is_empty() {
        return None;
    }
    Some(if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:{default_port}") })
}

fn postgres_addr() -> String {
    let url = std::env::var("KEEL_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES.into());
    host_port(&url, 5432).unwrap_or_else(|| "127.0.0.1:5432".into())
}

fn redis_addr() -> String {
    let url = std::env::var("KEEL_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS.into());
    host_port(&url, 6379).unwrap_or_else(|| "127.0.0.1:6379".into())
}

fn connect(addr: &str) -> Option<TcpStream> {
    let sock = addr.to_socket_addrs().ok()?.next()?;
    let stream = TcpStream::connect_timeout(&sock, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    Some(stream)
}

/// PostgreSQL answers an SSLRequest with a single `S` or `N` byte.
fn postgres_answers(addr: &str) -> bool {
    let Some(mut stream) = connect(addr) else { return false };
    let ssl_request = [0u8, 0, 0, 8, 4, 210, 22, 47];
    let mut reply = [0u8; 1];
    stream.write_all(&ssl_request).is_ok() && stream.read_exact(&mut reply).is_ok() && matches!(&reply, b"S" | b"N")
}

fn redis_answers(addr: &str) -> bool {
    let Some(mut stream) = connect(addr) else { return false };
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// Prints whether each service answers; fails if one does not.
pub fn status() -> Result<()> {
    let (pg, redis) = (postgres_addr(), redis_addr());
    let (pg_ok, redis_ok) = (postgres_answers(&pg), redis_answers(&redis));
    eprintln!("postgres {pg}: {}", if pg_ok { "up" } else { "DOWN" });
    eprintln!("redis    {redis}: {}", if redis_ok { "up" } else { "DOWN" });
    if !(pg_ok && redis_ok) {
        bail!("a required service is down; run `cargo xtask services up`");
    }
    Ok(())
}

/// Ensures both services answer, starting (or, in CI as root, installing) them.
pub fn up() -> Result<()> {
    let (pg, redis) = (postgres_addr(), redis_addr());
    if !postgres_answers(&pg) {
        eprintln!("xtask: postgres is not answering on {pg}; starting it");
        start_postgres(&pg)?;
        wait_for("postgres", &pg, postgres_answers)?;
    }
    if !redis_answers(&redis) {
        eprintln!("xtask: redis is not answering on {redis}; starting it");
        start_redis(&redis)?;
        wait_for("redis", &redis, redis_answers)?;
    }
    eprintln!("xtask: postgres {pg} and redis {redis} are up");
    Ok(())
}

fn wait_for(name: &str, addr: &str, check: fn(&str) -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if check(addr) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("{name} was started but does not answer on {addr} after 30s")
}

pub(crate) fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// In CI, as root, with apt available: install a missing server package.
pub(crate) fn try_install(package: &str) -> Result<bool> {
    if std::env::var_os("CI").is_none() {
        return Ok(false);
    }
    install(package)
}

/// As root, with apt available: install `package` (a tool a command the
/// user asked for needs, such as the load generator of `bench http`).
pub(crate) fn install(package: &str) -> Result<bool> {
    if !is_root() || !on_path("apt-get") {
        return Ok(false);
    }
    eprintln!("xtask: installing {package} with apt-get");
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get").args(["install", "-y", "-q", package]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(true)
}

fn local_port(addr: &str) -> Result<u16> {
    let (host, port) = addr.rsplit_once(':').context("address without port")?;
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        bail!("{addr} is not local: start that server yourself or point KEEL_TEST_*_URL at a local one");
    }
    port.parse().context("bad port")
}

fn postgres_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("/usr/local/bin"), PathBuf::from("/usr/bin")];
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect();
        versions.sort();
        versions.reverse();
        dirs.extend(versions);
    }
    dirs
}

pub(crate) fn find_postgres_tool(tool: &str) -> Option<PathBuf> {
    postgres_bin_dirs().into_iter().map(|d| d.join(tool)).find(|p| p.is_file())
}

fn start_postgres(addr: &str) -> Result<()> {
    let port = local_port(addr)?;
    // A Debian-packaged cluster: start it the packaged way.
    if on_path("pg_ctlcluster")
        && port == 5432
        && let Ok(versions) = std::fs::read_dir("/etc/postgresql")
    {
        for version in versions.filter_map(|e| e.ok()) {
            let version = version.file_name().to_string_lossy().into_owned();
            if Path::new(&format!("/etc/postgresql/{version}/main")).is_dir() {
                let _ =
                    run(Command::new("pg_ctlcluster").args(["--skip-systemctl-redirect", &version, "main", "start"]));
                if wait_for("postgres", addr, postgres_answers).is_ok() {
                    return Ok(());
                }
            }
        }
    }
    // A throwaway cluster under target/, trust auth, left running.
    let dir = crate::workspace_root().join("target").join("keel-services").join("postgres");
    crate::servers::Postgres::start_on(&dir, port)
        .with_context(|| format!("PostgreSQL is not answering on {addr}; or set KEEL_TEST_POSTGRES_URL"))?
        .keep();
    Ok(())
}

fn start_redis(addr: &str) -> Result<()> {
    let port = local_port(addr)?;
    if !on_path("redis-server") && !try_install("redis-server")? {
        bail!(
            "Redis is not answering on {addr} and redis-server is not installed: install it (Debian: apt-get install redis-server) or set KEEL_TEST_REDIS_URL"
        );
    }
    let dir = crate::workspace_root().join("target").join("keel-services").join("redis");
    std::fs::create_dir_all(&dir)?;
    run(crate::servers::redis_server(port, &dir, None, None).args(["--daemonize", "yes"]))
}

/// Ports of the local Redis Cluster of `services up --redis-cluster`: three
/// masters, then three replicas (each with its bus port, +10000).
pub const CLUSTER_PORTS: [u16; 6] = [7101, 7102, 7103, 7104, 7105, 7106];

/// The URL of the local Redis Cluster, in the form `REDIS_URL` takes.
pub fn cluster_url() -> String {
    let [first, rest @ ..] = CLUSTER_PORTS;
    let nodes: Vec<String> = rest.iter().map(|p| format!("node=127.0.0.1:{p}")).collect();
    format!("redis-cluster://127.0.0.1:{first}?{}", nodes.join("&"))
}

/// `CLUSTER INFO` of the node on `port` says the cluster serves every slot.
fn cluster_ok(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "cluster", "info"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
}

/// Starts (when it does not answer) a six-node Redis Cluster on
/// [`CLUSTER_PORTS`] from the installed `redis-server`, with its files under
/// `target/keel-services/redis-cluster/`, and creates it with
/// `redis-cli --cluster create` (three masters, one replica each). Nothing is
/// kept on disk but the nodes' cluster configuration.
pub fn up_cluster() -> Result<()> {
    if CLUSTER_PORTS.iter().all(|p| cluster_ok(*p)) {
        eprintln!("xtask: redis cluster {} is up", cluster_url());
        return Ok(());
    }
    if (!on_path("redis-server") || !on_path("redis-cli")) && !try_install("redis-server")? {
        bail!("a Redis Cluster needs redis-server and redis-cli: install them (Debian: apt-get install redis-server)");
    }
    let root = crate::workspace_root().join("target").join("keel-services").join("redis-cluster");
    for port in CLUSTER_PORTS {
        let addr = format!("127.0.0.1:{port}");
        if redis_answers(&addr) {
            continue;
        }
        let dir = root.join(port.to_string());
        // A node that lost its peers cannot rejoin a new cluster: start clean.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let node = crate::servers::ClusterNode { node_timeout_ms: 2000, any_replica_takes_over: false };
        run(crate::servers::redis_server(port, &dir, None, Some(node)).args(["--daemonize", "yes"]))?;
        wait_for("redis cluster node", &addr, redis_answers)?;
    }
    if !cluster_ok(CLUSTER_PORTS[0]) {
        crate::servers::create_cluster(&CLUSTER_PORTS)?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !CLUSTER_PORTS.iter().all(|p| cluster_ok(*p)) {
        if Instant::now() > deadline {
            bail!("the redis cluster on ports {CLUSTER_PORTS:?} did not reach cluster_state:ok within 30s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("xtask: redis cluster {} is up", cluster_url());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_and_port_from_urls() {
        assert_eq!(host_port("postgres://postgres@127.0.0.1:5432/postgres", 5432).as_deref(), Some("127.0.0.1:5432"));
        assert_eq!(host_port("redis://localhost", 6379).as_deref(), Some("localhost:6379"));
        assert_eq!(host_port("postgres://u:p@db:6000?x=1", 5432).as_deref(), Some("db:6000"));
        assert_eq!(host_port("nonsense", 1), None);
    }

    #[test]
    fn the_cluster_url_names_every_node() {
        assert_eq!(
            cluster_url(),
            "redis-cluster://127.0.0.1:7101?node=127.0.0.1:7102&node=127.0.0.1:7103&node=127.0.0.1:7104&node=127.0.0.1:7105&node=127.0.0.1:7106"
        );
    }
}
