//! Redis through fred: connection set-up and instrumented commands.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
/// A Lua script known by its SHA-1, for [`RedisStore::run_script`].
pub use fred::types::scripts::Script;
use fred::types::{Expiration, SetOptions};

use crate::StoreError;
use crate::metrics::StoreMetrics;

/// The URL schemes [`RedisConfig::url`] takes: one server (plain or TLS),
/// or a Redis Cluster reached through any of its nodes.
const SCHEMES: [&str; 4] = ["redis", "rediss", "redis-cluster", "rediss-cluster"];

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or for a Redis Cluster
    /// `redis-cluster://[user:password@]host:port?node=host2:port2&node=...`
    /// (any reachable node is enough; the client discovers the rest and
    /// follows `MOVED`/`ASK` and topology changes). `rediss` for TLS.
    pub url: String,
    /// Per-command timeout: a command that cannot be sent (Redis down) fails
    /// after this long instead of queueing forever.
    pub command_timeout: Duration,
    /// How long [`RedisStore::connect`] waits for the first connection.
    pub connect_timeout: Duration,
}

impl RedisConfig {
    /// Defaults for `url`: 2 s command timeout, 5 s connect timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), command_timeout: Duration::from_secs(2), connect_timeout: Duration::from_secs(5) }
    }
}

/// A Redis client that reconnects on its own and times every command.
/// Cloning shares the connection.
#[derive(Clone)]
pub struct RedisStore {
    client: Client,
    builder_config: RedisConfig,
    metrics: StoreMetrics,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("id", &self.client.id()).finish_non_exhaustive()
    }
}

pub(crate) fn builder(config: &RedisConfig) -> Result<Builder, StoreError> {
    let scheme = config.url.split("://").next().unwrap_or_default();
    if !SCHEMES.contains(&scheme) || !config.url.contains("://") {
        let scheme = config.url.split(':').next().unwrap_or_default();
        return Err(StoreError::InvalidUrl {
            what: "redis",
            reason: format!(
                "unsupported scheme {scheme:?} (expected redis://, rediss://, redis-cluster:// or rediss-cluster://)"
            ),
        });
    }
    let mut fred_config = Config::from_url(&config.url)
        .map_err(|err| StoreError::InvalidUrl { what: "redis", reason: err.details().to_owned() })?;
    // The first connection follows the reconnect policy too: a process that
    // starts before Redis waits for it instead of giving up.
    fred_config.fail_fast = false;
    let mut builder = Builder::from_config(fred_config);
    // Unlimited attempts with capped exponential delay: Redis restarts are
    // survived without operator action.
    builder.set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    builder.with_connection_config(|c| {
        c.connection_timeout = config.connect_timeout;
        c.internal_command_timeout = config.command_timeout;
        c.max_command_attempts = 3;
        // Names connections after the client id so operators (and tests) can
        // find them in CLIENT LIST.
        c.auto_client_setname = true;
    });
    builder.with_performance_config(|p| {
        p.default_command_timeout = config.command_timeout;
    });
    Ok(builder)
}

impl RedisStore {
    /// Connects and waits for the first connection (up to the connect
    /// timeout). The client keeps reconnecting after later failures.
    pub async fn connect(
        config: &RedisConfig,
        telemetry: &dyn keel_telemetry::MeterSource,
    ) -> Result<Self, StoreError> {
        let store = Self::open(config, telemetry)?;
        wait_connected(&store.client, config.connect_timeout).await?;
        Ok(store)
    }

    /// Starts connecting without waiting: a malformed URL is an error here
    /// ([`StoreError::InvalidUrl`]); the client keeps trying to reach the
    /// server in the background, and [`ping`](Self::ping) tells when it has.
    pub fn open(config: &RedisConfig, telemetry: &dyn keel_telemetry::MeterSource) -> Result<Self, StoreError> {
        let client = builder(config)?.build()?;
        client.connect();
        Ok(Self { client, builder_config: config.clone(), metrics: StoreMetrics::new(telemetry) })
    }

    /// The underlying fred client, for commands this type does not wrap.
    /// Prefer [`timed`](Self::timed) so the command is measured.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs a command and records its duration under `command` (the command
    /// name, e.g. `"GET"`; never a key).
    pub async fn timed<T>(
        &self,
        command: &'static str,
        fut: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, StoreError> {
        // Boxed: fred's command futures are large, and every future that
        // awaits this one (scripts, queues, a request's task) would hold and
        // move a copy of it.
        Ok(self.metrics.time_redis(command, Box::pin(fut)).await?)
    }

    /// Runs `script` by its hash (`EVALSHA`), loading it on a `NOSCRIPT`
    /// answer: the body travels to a server once, not with every call.
    ///
    /// ```no_run
    /// # async fn f(redis: keel_store::RedisStore) -> Result<(), keel_store::StoreError> {
    /// use std::sync::LazyLock;
    /// use keel_store::Script;
    ///
    /// static INCR: LazyLock<Script> = LazyLock::new(|| Script::from_lua("return redis.call('INCR', KEYS[1])"));
    /// let n: i64 = redis.run_script(&INCR, vec!["counter".into()], Vec::new()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn run_script<R: fred::types::FromValue>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<fred::types::Value>,
    ) -> Result<R, StoreError> {
        self.timed("EVALSHA", script.evalsha_with_reload(&self.client, keys, args)).await
    }

    /// Whether the URL named a Redis Cluster (`redis-cluster://`).
    pub fn is_cluster(&self) -> bool {
        self.client.is_clustered()
    }

    /// `WAIT replicas timeout` on the server that holds `key` (on a Redis
    /// Cluster, the master of its slot): blocks until the writes this client
    /// sent there reached `replicas` replicas, or `timeout` passes. Returns
    /// how many replicas acknowledged them.
    pub async fn wait_replicas(&self, key: &str, replicas: u32, timeout: Duration) -> Result<u32, StoreError> {
        let millis = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX).max(1);
        let owner = self
            .client
            .is_clustered()
            .then(|| self.client.cached_cluster_state())
            .flatten()
            .and_then(|state| state.get_server(fred::util::redis_keyslot(key.as_bytes())).cloned());
        let acked: i64 = match owner {
            Some(server) => {
                self.timed("WAIT", self.client.with_cluster_node(server).wait(i64::from(replicas), millis)).await?
            }
            None => self.timed("WAIT", self.client.wait(i64::from(replicas), millis)).await?,
        };
        Ok(u32::try_from(acked.max(0)).unwrap_or(u32::MAX))
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.timed("PING", self.client.ping::<()>(None)).await
    }

    /// `GET key` as bytes.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.timed("GET", self.client.get::<Option<Bytes>, _>(key)).await
    }

    /// `SET key value PX ttl`.
    pub async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        self.timed(
            "SET",
            self.client.set::<(), _, _>(key, value, Some(Expiration::PX(millis)), None::<SetOptions>, false),
        )
        .await
    }

    /// Stores `version:value` under `key` for `ttl`, unless the stored entry
    /// already carries a version at least as high. Atomic (one Lua script),
    /// so concurrent writers can never leave an older version behind.
    /// Returns whether it was stored.
    pub async fn set_if_newer(&self, key: &str, version: i64, value: Bytes, ttl: Duration) -> Result<bool, StoreError> {
        static SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::from_lua(SET_IF_NEWER));
        const SET_IF_NEWER: &str = r#"
            local current = redis.call('GET', KEYS[1])
            if current then
                local stored = tonumber(string.match(current, '^(-?%d+):'))
                if stored and stored >= tonumber(ARGV[1]) then return 0 end
            end
            redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3])
            return 1
        "#;
        let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let args: Vec<fred::types::Value> = vec![version.into(), value.into(), millis.into()];
        let stored: i64 = self.run_script(&SCRIPT, vec![key.to_owned()], args).await?;
        Ok(stored == 1)
    }

    /// `DEL key`.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.timed("DEL", self.client.del::<(), _>(key)).await
    }

    /// `PUBLISH channel payload`.
    pub async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), StoreError> {
        self.timed("PUBLISH", self.client.publish::<(), _, _>(channel, payload)).await
    }

    pub(crate) fn config(&self) -> &RedisConfig {
        &self.builder_config
    }
}

pub(crate) async fn wait_connected(client: &impl ClientLike, timeout: Duration) -> Result<(), StoreError> {
    match tokio::time::timeout(timeout, client.wait_for_connect()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(StoreError::Connect { backend: "redis", reason: err.to_string() }),
        Err(_) => Err(StoreError::Connect { backend: "redis", reason: format!("no connection within {timeout:?}") }),
    }
}
