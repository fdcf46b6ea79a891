//! Built-in network checks.

use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::{CheckConfig, CheckKind, HealthError, Report, SharedCheck};

/// Connects to `target` (`host:port`); success when the connection opens.
pub fn tcp(target: impl Into<String>) -> SharedCheck {
    let target: std::sync::Arc<str> = target.into().into();
    std::sync::Arc::new(move || {
        let target = target.clone();
        async move {
            match tokio::net::TcpStream::connect(&*target).await {
                Ok(_) => Report::ok(),
                Err(err) => Report::fail(format!("connect {target}: {err}")),
            }
        }
    })
}

/// GETs `url` (plain `http://`); success on `expect` (default: any 2xx).
pub fn http(url: &str, expect: Option<u16>) -> Result<SharedCheck, HealthError> {
    let uri: http::Uri =
        url.parse().map_err(|err| HealthError::Config(format!("invalid http check url {url:?}: {err}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(HealthError::Config(format!("http check url {url:?} must start with http://")));
    }
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    Ok(std::sync::Arc::new(move || {
        let (client, uri) = (client.clone(), uri.clone());
        async move {
            match client.get(uri.clone()).await {
                Ok(response) => {
                    let code = response.status().as_u16();
                    let good = expect.map_or(response.status().is_success(), |e| e == code);
                    if good { Report::ok() } else { Report::fail(format!("GET {uri}: status {code}")) }
                }
                Err(err) => Report::fail(format!("GET {uri}: {err}")),
            }
        }
    }))
}

/// The check for a `tcp` or `http` entry; `None` for kinds the caller must
/// supply (`postgres`, `redis`).
pub fn from_config(config: &CheckConfig) -> Result<Option<SharedCheck>, HealthError> {
    let target = config.target.clone().unwrap_or_default();
    Ok(match config.kind {
        CheckKind::Tcp => Some(tcp(target)),
        CheckKind::Http => Some(http(&target, config.expect_status)?),
        CheckKind::Postgres | CheckKind::Redis => None,
    })
}
