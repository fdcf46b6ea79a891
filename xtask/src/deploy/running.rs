//! The binaries started for the check, their scratch directory, and a
//! plain HTTP GET.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// A binary started for the check; killed when dropped.
pub(super) struct Running {
    pub(super) child: Child,
    pub(super) addr: String,
    pub(super) _dir: TempDir,
}

impl Running {
    /// Starts `binary` on a free port, in cluster mode or embedded, and
    /// waits for `marker`.
    pub(super) fn start(binary: &Path, listen_flag: &str, marker: &str, cluster: bool) -> Result<Running> {
        let dir = TempDir::new()?;
        let database = std::env::var("KEEL_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let redis = std::env::var("KEEL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let mut command = Command::new(binary);
        command.args([listen_flag, "127.0.0.1:0", "--log-format", "json"]).current_dir(&dir.0);
        if cluster {
            command.env("DATABASE_URL", database).env("REDIS_URL", redis);
        } else {
            command.env_remove("DATABASE_URL").env_remove("REDIS_URL").env_remove("KEEL_DATA_DIR");
        }
        let mut child = command
            .env("KEEL_NAMESPACE", format!("deploy-check-{}", std::process::id()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let marker = marker.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if json["message"].as_str().is_some_and(|m| m.starts_with(&marker)) {
                    let _ = tx.send(Ok(json["addr"].as_str().unwrap_or_default().to_owned()));
                } else if json.is_null() || json["level"] == "ERROR" {
                    let _ = tx.send(Err(line));
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(addr)) => return Ok(Running { child, addr, _dir: dir }),
                Ok(Err(line)) => eprintln!("{}: {line}", binary.display()),
                Err(_) => {
                    let _ = child.kill();
                    bail!("{} did not start within 30s", binary.display());
                }
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed when dropped.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let path = std::env::temp_dir().join(format!("keel-deploy-check-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `GET path` over a fresh connection: status and body.
/// A GET over HTTP/1.0: the server answers unchunked and closes.
pub(crate) fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let status = raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}
