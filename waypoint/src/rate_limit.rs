//! Local rate limiting, as Envoy's `local_ratelimit` filter applies it to a route: a token
//! bucket of `max_tokens` that starts full and gains `tokens_per_fill` every `fill_interval`; a
//! request that finds it empty is answered `429` (`RL`). A route's limit is one bucket for all
//! its requests, or one per client address.
//!
//! The settings are configuration, read per request from the route in force; the buckets are
//! state, kept here across configurations by the limit's key, so that a change of settings
//! reaches established connections with the next request (a bucket whose settings changed
//! starts again, full, with the new ones). Per-client buckets are bounded: a limit holds at most
//! [`MAX_CLIENT_BUCKETS`]; when that many are held, the buckets that have filled up again (no
//! different from a new one) are dropped, and a client that still finds no room shares one
//! overflow bucket with every other such client, so that a peer cycling through addresses can
//! neither grow the memory nor escape the limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whose requests draw on one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateLimitScope {
    /// Every request of the route.
    Route,
    /// The requests of one client address.
    Client,
}

/// A route's local rate limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalRateLimit {
    /// The route rule it was configured on: routes with the same key and settings share their
    /// bucket(s).
    pub key: String,
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
    pub scope: RateLimitScope,
}

/// Envoy's shortest `fill_interval`.
pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// Per-client buckets one limit holds at most.
pub const MAX_CLIENT_BUCKETS: usize = 16 * 1024;

/// Limits no request has used for this long are forgotten (their routes are gone).
const UNUSED_LIMIT: Duration = Duration::from_secs(600);

/// One token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    /// When the last whole fill interval ended.
    filled_at: Instant,
}

impl Bucket {
    fn full(limit: &LocalRateLimit, now: Instant) -> Self {
        Bucket {
            tokens: limit.max_tokens,
            filled_at: now,
        }
    }

    /// Adds the tokens of the fill intervals that ended since the last one.
    fn refill(&mut self, limit: &LocalRateLimit, now: Instant) {
        let interval = limit.fill_interval.max(MIN_FILL_INTERVAL);
        let elapsed = now.saturating_duration_since(self.filled_at);
        let fills = elapsed.as_nanos() / interval.as_nanos();
        if fills == 0 {
            return;
        }
        let added = fills.saturating_mul(u128::from(limit.tokens_per_fill));
        let tokens = (u128::from(self.tokens) + added).min(u128::from(limit.max_tokens));
        self.tokens = u32::try_from(tokens).unwrap_or(limit.max_tokens);
        // `fills` intervals fit in `elapsed`, itself a `Duration`.
        let whole = u32::try_from(fills).map_or(elapsed, |n| interval.saturating_mul(n));
        self.filled_at += whole;
    }

    /// Takes a token if there is one.
    fn take(&mut self, limit: &LocalRateLimit, now: Instant) -> bool {
        self.refill(limit, now);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// Whether the bucket is full again at `now`: dropping it changes nothing.
    fn is_full(mut self, limit: &LocalRateLimit, now: Instant) -> bool {
        self.refill(limit, now);
        self.tokens >= limit.max_tokens
    }
}

/// The buckets of one limit.
#[derive(Debug)]
struct Buckets {
    settings: LocalRateLimit,
    /// The route's bucket; with per-client scope, the overflow bucket.
    shared: Bucket,
    clients: HashMap<IpAddr, Bucket>,
    /// When the full per-client buckets were last dropped.
    swept_at: Instant,
    used_at: Instant,
}

impl Buckets {
    fn new(settings: &LocalRateLimit, now: Instant) -> Self {
        Buckets {
            settings: settings.clone(),
            shared: Bucket::full(settings, now),
            clients: HashMap::new(),
            swept_at: now,
            used_at: now,
        }
    }

    fn take(&mut self, client: IpAddr, now: Instant, capacity: usize) -> bool {
        self.used_at = now;
        let settings = &self.settings;
        if settings.scope == RateLimitScope::Route {
            return self.shared.take(settings, now);
        }
        if let Some(bucket) = self.clients.get_mut(&client) {
            return bucket.take(settings, now);
        }
        // Sweeping visits every bucket: at most once per fill interval, so that a flood of new
        // addresses does not turn every request into a sweep.
        if self.clients.len() >= capacity
            && now.saturating_duration_since(self.swept_at) >= settings.fill_interval
        {
            self.swept_at = now;
            self.clients
                .retain(|_, bucket| !bucket.is_full(settings, now));
        }
        if self.clients.len() >= capacity {
            return self.shared.take(settings, now);
        }
        let mut bucket = Bucket::full(settings, now);
        let taken = bucket.take(settings, now);
        self.clients.insert(client, bucket);
        taken
    }
}

/// The buckets of every local rate limit, by key.
#[derive(Debug)]
pub struct RateLimiter {
    limits: Mutex<HashMap<String, Buckets>>,
    client_capacity: usize,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::with_client_capacity(MAX_CLIENT_BUCKETS)
    }
}

impl RateLimiter {
    /// A limiter holding at most `client_capacity` per-client buckets per limit.
    pub fn with_client_capacity(client_capacity: usize) -> Self {
        RateLimiter {
            limits: Mutex::new(HashMap::new()),
            client_capacity: client_capacity.max(1),
        }
    }

    /// Whether a request of `client` may pass `limit` at `now` (it takes a token if so).
    pub fn admit(&self, limit: &LocalRateLimit, client: IpAddr, now: Instant) -> bool {
        let mut limits = self
            .limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(buckets) = limits.get_mut(limit.key.as_str()) {
            if buckets.settings != *limit {
                *buckets = Buckets::new(limit, now);
            }
            return buckets.take(client, now, self.client_capacity);
        }
        // A new limit: the ones no request used for long belong to routes that are gone.
        limits.retain(|_, b| now.saturating_duration_since(b.used_at) < UNUSED_LIMIT);
        let mut buckets = Buckets::new(limit, now);
        let admitted = buckets.take(client, now, self.client_capacity);
        limits.insert(limit.key.clone(), buckets);
        admitted
    }

    /// Per-client buckets held for `key` (tests and `/config_dump`).
    pub fn client_buckets(&self, key: &str) -> usize {
        self.limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .map_or(0, |b| b.clients.len())
    }
}

#[cfg(test)]
mod tests;
