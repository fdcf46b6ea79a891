//! Helpers for tests that run Keel over real sockets or as real processes.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Sends one HTTP/1.1 request and returns the status code and body.
pub async fn http_request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap_or_else(|err| panic!("cannot connect to {addr}: {err}"));
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap_or_else(|err| panic!("cannot write to {addr}: {err}"));
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap_or_else(|err| panic!("cannot read from {addr}: {err}"));
    let raw = String::from_utf8_lossy(&raw);
    let status = raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// `GET path`, returning the status code and body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], "").await
}

/// Spawns `command` (which must log JSON to stderr) and waits up to 30 s for
/// the log line whose message starts with `marker`; returns the child and
/// that line's `addr` field. The child is killed when dropped, and its stderr
/// keeps being drained so it never blocks on a full pipe.
pub async fn spawn_until_listening(command: Command, marker: &str) -> (Child, String) {
    let (child, addr, _) = spawn_with_logs(command, marker).await;
    (child, addr)
}

/// Later log lines of a process started by [`spawn_with_logs`].
pub type LogLines = tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>;

/// Waits (at most `limit`) for a log line whose message contains `text`.
pub async fn wait_for_log(lines: &mut LogLines, text: &str, limit: Duration) -> serde_json::Value {
    tokio::time::timeout(limit, async {
        while let Some(line) = lines.recv().await {
            if line["message"].as_str().is_some_and(|m| m.contains(text)) {
                return line;
            }
        }
        panic!("the process exited before logging {text:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no log line with {text:?} within {limit:?}"))
}

/// [`spawn_until_listening`], also returning every later log line.
pub async fn spawn_with_logs(mut command: Command, marker: &str) -> (Child, String, LogLines) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot spawn {command:?}: {err}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("stderr is piped"));
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            seen.push(line);
            if json["message"].as_str().is_some_and(|m| m.starts_with(marker)) {
                return Some(json);
            }
        }
        None
    })
    .await;
    let line = match found {
        Ok(Some(line)) => line,
        Ok(None) => panic!("process exited before {marker:?}:\n{}", seen.join("\n")),
        Err(_) => panic!("no {marker:?} within 30s:\n{}", seen.join("\n")),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            // Nobody listening is fine: keep draining the pipe.
            let _ = tx.send(serde_json::from_str(&line).unwrap_or_default());
        }
    });
    let addr = line["addr"].as_str().unwrap_or_else(|| panic!("{marker:?} line has no addr: {line}")).to_owned();
    (child, addr, rx)
}

/// Sends SIGTERM to `child` and returns its exit code (waiting up to 15 s).
pub async fn terminate(child: &mut Child) -> Option<i32> {
    let pid = child.id().unwrap_or_else(|| panic!("child already exited")).to_string();
    let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().is_ok_and(|s| s.success());
    assert!(sent, "cannot send SIGTERM to {pid}");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap_or_else(|_| panic!("process {pid} did not stop within 15s of SIGTERM"))
        .unwrap_or_else(|err| panic!("cannot wait for {pid}: {err}"));
    status.code()
}
