//! Helpers for tests that run Keel over real sockets or as real processes.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Sends one HTTP/1.1 request (reqwest) and returns the status code and
/// body. A connection failure panics, naming the address.
pub async fn http_request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or_else(|err| panic!("method {method}: {err}"));
    let mut request = client().request(method, format!("http://{addr}{path}")).body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap_or_else(|err| panic!("request to {addr}{path} failed: {err}"));
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_else(|err| panic!("cannot read the answer from {addr}{path}: {err}"));
    (status, body)
}

/// A client that opens a connection per request (no pooling across tests
/// that stop and start servers).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap_or_else(|err| panic!("cannot build an HTTP client: {err}"))
}

/// `GET path`, returning the status code and body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], "").await
}

/// A Server-Sent Events stream opened by [`sse`].
pub struct SseStream {
    events: std::pin::Pin<Box<dyn futures_util::Stream<Item = eventsource_stream::Event> + Send>>,
    seen: Vec<eventsource_stream::Event>,
}

/// Opens `GET path` as a Server-Sent Events stream (eventsource-stream over
/// reqwest); panics unless it answers 200 `text/event-stream`.
pub async fn sse(addr: &str, path: &str, headers: &[(&str, &str)]) -> SseStream {
    use eventsource_stream::Eventsource as _;
    use futures_util::StreamExt as _;
    let mut request = client().get(format!("http://{addr}{path}")).header("accept", "text/event-stream");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap_or_else(|err| panic!("cannot open {addr}{path}: {err}"));
    assert_eq!(response.status(), 200, "{path}");
    let kind = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(kind.starts_with("text/event-stream"), "{path}: content-type {kind}");
    let events = response
        .bytes_stream()
        .eventsource()
        .take_while(|event| std::future::ready(event.is_ok()))
        .filter_map(|event| std::future::ready(event.ok()));
    SseStream { events: Box::pin(events), seen: Vec::new() }
}

impl SseStream {
    /// Waits (up to 10 s) for an event named `kind` whose data contains
    /// `needle` (one already received counts), and returns its data.
    pub async fn until(&mut self, kind: &str, needle: &str) -> String {
        self.until_within(kind, needle, Duration::from_secs(10)).await
    }

    /// The next event not yet returned by this method or seen by
    /// [`until`](Self::until) (`None`: none within `limit`, or the stream
    /// ended).
    pub async fn next_within(&mut self, limit: Duration) -> Option<eventsource_stream::Event> {
        use futures_util::StreamExt as _;
        let event = tokio::time::timeout(limit, self.events.next()).await.ok().flatten()?;
        self.seen.push(event.clone());
        Some(event)
    }

    /// [`until`](Self::until), waiting at most `limit`.
    pub async fn until_within(&mut self, kind: &str, needle: &str, limit: Duration) -> String {
        use futures_util::StreamExt as _;
        if let Some(event) = self.seen.iter().find(|e| e.event == kind && e.data.contains(needle)) {
            return event.data.clone();
        }
        let found = tokio::time::timeout(limit, async {
            while let Some(event) = self.events.next().await {
                let hit = event.event == kind && event.data.contains(needle);
                self.seen.push(event);
                if hit {
                    return self.seen.last().map(|e| e.data.clone());
                }
            }
            None
        })
        .await;
        let seen: Vec<String> = self.seen.iter().map(|e| format!("{}: {}", e.event, e.data)).collect();
        match found {
            Ok(Some(data)) => data,
            Ok(None) => panic!("the stream ended before a {kind} event with {needle:?}: {seen:?}"),
            Err(_) => panic!("no {kind} event with {needle:?} within {limit:?}: {seen:?}"),
        }
    }
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
