//! `baseline`: a bare axum 0.8 server with the route shapes of Keel's api,
//! built with the same axum, tokio, fred and allocator, and nothing else — no
//! middleware, no metrics, no validation. `cargo xtask bench http` runs it
//! beside Keel and reports Keel's throughput as a ratio of this one's.
//!
//! `baseline --listen <ADDR>` (other arguments are ignored); with
//! `REDIS_URL`, `PUT /entries/{key}` does one `XADD`.
//!
//! | route | does |
//! |---|---|
//! | `GET /livez` | answers `ok` |
//! | `PUT /entries/{key}` | one `XADD` of the key and body on `baseline:entries`, answers 202 `{"key","version"}` |
//! | `GET /document` | answers a static JSON document the size of Keel's `monitoring` settings |
//! | `PUT /fair/entries/{key}` | the fair baseline ([`fair`]): cache if newer and append in one script, 202 `{"key","version"}`; with `DATABASE_URL` too, one consumer persists the stream into `fair_entries` |

use std::process::ExitCode;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::routing::{get, put};
use bytes::Bytes;
use fred::prelude::{Builder, Client, ClientLike as _, Config, StreamsInterface as _};

mod fair;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DOCUMENT: &str = r#"{"name":"monitoring","version":1,"value":{"enable_monitoring":true,"log_level":"info"},"updated_at":"2026-12-01T00:00:00.000Z","updated_by":"admin"}"#;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let listen = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "127.0.0.1:18081".to_owned());
    let redis = match std::env::var("REDIS_URL") {
        Ok(url) => match connect(&url).await {
            Ok(client) => Some(client),
            Err(err) => {
                eprintln!("baseline: cannot connect to {url}: {err}");
                return ExitCode::from(69);
            }
        },
        Err(_) => None,
    };
    let app = Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/entries/{*key}", put(put_entry))
        .route("/fair/entries/{*key}", put(put_fair))
        .route("/document", get(|| async { ([(header::CONTENT_TYPE, "application/json")], DOCUMENT) }))
        .with_state(redis.clone());
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("baseline: cannot listen on {listen}: {err}");
            return ExitCode::from(69);
        }
    };
    let consumer = async {
        match (redis.clone(), std::env::var("DATABASE_URL")) {
            (Some(redis), Ok(url)) => fair::consume(&redis, url).await,
            _ => std::future::pending().await,
        }
    };
    eprintln!("baseline listening on http://{listen}");
    tokio::select! {
        served = axum::serve(listener, app) => match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("baseline: {err}");
                ExitCode::from(70)
            }
        },
        Err(err) = consumer => {
            eprintln!("baseline: the fair consumer stopped: {err}");
            ExitCode::from(70)
        }
    }
}

async fn connect(url: &str) -> Result<Client, fred::error::Error> {
    let client = Builder::from_config(Config::from_url(url)?).build()?;
    client.init().await?;
    Ok(client)
}

/// A status, a content type and a body.
type Answer = (StatusCode, [(header::HeaderName, &'static str); 1], String);

fn plain(status: StatusCode, text: impl Into<String>) -> Answer {
    (status, [(header::CONTENT_TYPE, "text/plain")], text.into())
}

/// 202 `{"key","version"}` (`version` already JSON).
fn accepted(key: &str, version: &str) -> Answer {
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"key":"{key}","version":{version}}}"#),
    )
}

async fn put_entry(State(redis): State<Option<Client>>, Path(key): Path<String>, body: Bytes) -> Answer {
    let Some(redis) = redis else { return plain(StatusCode::SERVICE_UNAVAILABLE, "no REDIS_URL") };
    let fields = vec![("key", Bytes::from(key.clone().into_bytes())), ("value", body)];
    match redis.xadd::<String, _, _, _, _>("baseline:entries", false, None, "*", fields).await {
        Ok(id) => accepted(&key, &format!("{id:?}")),
        Err(err) => plain(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
    }
}

async fn put_fair(State(redis): State<Option<Client>>, Path(key): Path<String>, body: Bytes) -> Answer {
    let Some(redis) = redis else { return plain(StatusCode::SERVICE_UNAVAILABLE, "no REDIS_URL") };
    let Ok(value) = std::str::from_utf8(&body) else { return plain(StatusCode::BAD_REQUEST, "not UTF-8") };
    match fair::put(&redis, &key, value).await {
        Ok(version) => accepted(&key, &version.to_string()),
        Err(err) => plain(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
    }
}
