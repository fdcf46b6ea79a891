//! A stream append and the cache entry that shows it, as one unit: the
//! write path of a write-behind service whose reads go through the cache
//! (the `version:value` entries of [`RedisStore::set_if_newer`]).

use std::sync::LazyLock;
use std::time::Duration;

use fred::types::Value;

use crate::{RedisStore, Script, StoreError};

/// One append of [`RedisStore::append_cached`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedAppend {
    /// The cache entry, set to `version:cached` unless it holds a version at
    /// least as high (the format of [`RedisStore::set_if_newer`]).
    pub cache_key: String,
    /// The stream entry's `item` field.
    pub item: String,
    /// The version the cache entry is compared by.
    pub version: i64,
    /// What the cache entry holds after the version.
    pub cached: String,
    /// How long the cache entry lives.
    pub ttl: Duration,
    /// Unix milliseconds after which Redis, by its own clock, refuses the
    /// append: one whose caller has given up must not land later.
    pub deadline_ms: i64,
}

/// What became of one [`CachedAppend`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Appended (with this entry id) and cached.
    Id(String),
    /// The stream was at capacity: nothing changed.
    Full,
    /// Redis ran it after its deadline: nothing changed.
    Late,
}

/// `KEYS[1]` the stream, then one cache key per append; `ARGV[1]` the
/// capacity, then five arguments per append. Each append is cached and
/// appended as one unit, in order, until the stream is at capacity; it
/// answers each one's entry id, `false` for those that found no room, and
/// `0` for those Redis runs after their deadline.
const APPEND_CACHED: &str = r#"
    local capacity = tonumber(ARGV[1])
    local length = redis.call('XLEN', KEYS[1])
    local time = redis.call('TIME')
    local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
    local ids = {}
    for i = 2, #KEYS do
        local at = 2 + (i - 2) * 5
        if now > tonumber(ARGV[at + 4]) then
            ids[i - 1] = 0
        elseif length >= capacity then
            ids[i - 1] = false
        else
            local version = tonumber(ARGV[at + 1])
            local current = redis.call('GET', KEYS[i])
            local stored = current and tonumber(string.match(current, '^(-?%d+):'))
            if not (stored and stored >= version) then
                redis.call('SET', KEYS[i], ARGV[at + 1] .. ':' .. ARGV[at + 2], 'PX', ARGV[at + 3])
            end
            ids[i - 1] = redis.call('XADD', KEYS[1], '*', 'item', ARGV[at])
            length = length + 1
        end
    end
    return ids
"#;

impl RedisStore {
    /// Appends each of `appends` to `stream` and sets its cache entry, each
    /// as one unit, in order, in one script call, while the stream holds
    /// fewer than `capacity` entries. On a Redis Cluster every key must
    /// share one slot (a hash tag). Answers one [`Appended`] per append.
    pub async fn append_cached(
        &self,
        stream: &str,
        capacity: u64,
        appends: Vec<CachedAppend>,
    ) -> Result<Vec<Appended>, StoreError> {
        static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::from_lua(APPEND_CACHED));
        let count = appends.len();
        let mut keys = Vec::with_capacity(count + 1);
        keys.push(stream.to_owned());
        let mut args = Vec::with_capacity(1 + 5 * count);
        args.push(Value::from(i64::try_from(capacity).unwrap_or(i64::MAX)));
        for append in appends {
            let millis = i64::try_from(append.ttl.as_millis()).unwrap_or(i64::MAX).max(1);
            keys.push(append.cache_key);
            args.extend([
                append.item.into(),
                append.version.into(),
                append.cached.into(),
                millis.into(),
                append.deadline_ms.into(),
            ]);
        }
        let ids: Vec<Value> = self.run_script(&SCRIPT, keys, args).await?;
        if ids.len() != count {
            let why = format!("the append script answered {} ids for {count} appends", ids.len());
            return Err(StoreError::Redis(fred::error::Error::new(fred::error::ErrorKind::Protocol, why)));
        }
        Ok(ids
            .into_iter()
            .map(|id| match id {
                Value::Integer(_) => Appended::Late,
                Value::Null | Value::Boolean(false) => Appended::Full,
                id => id.into_string().map_or(Appended::Full, Appended::Id),
            })
            .collect())
    }
}
