//! The JWKS resolver, as istiod's: RequestAuthentication rules that name their keys by
//! `jwksUri` (or by nothing, through the issuer's OpenID discovery document) get them inline
//! in the waypoint's configuration. The controller fetches each URL, keeps the last good key
//! set, refreshes it every [`REFRESH_INTERVAL`] and republishes when it changes; a failed fetch
//! keeps the last good keys and is retried with backoff from [`FIRST_RETRY`] up to the refresh
//! interval. Until a first fetch succeeds a rule has no key, so its tokens are refused (istiod
//! inlines a key set that validates nothing, with the same effect).
//!
//! Every fetch is bounded: the rule's `timeout` ([`DEFAULT_FETCH_TIMEOUT`] when unset, as in
//! istiod) for the whole exchange and [`MAX_JWKS_BYTES`] for the body. As istiod keeps one entry
//! per URL, rules naming one URL with different timeouts share it: the last rule a translation
//! reads sets the timeout. Key sets no translation asked for are forgotten after the next translation.
//!
//! Translation reads the store synchronously ([`JwksResolver::keys`]); the fetching runs in
//! [`JwksResolver::run`], the store's only writer.

mod fetch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// istiod's default `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(20 * 60);
/// The first retry after a failed fetch; each further failure doubles it.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The whole fetch (connect, TLS, request and body) when the rule sets no `timeout`: istiod's
/// default (`policy_applier.go`).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest key set or discovery document read.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// What the resolver fetches for a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JwksSource {
    /// `jwksUri`.
    Uri(String),
    /// No `jwks` and no `jwksUri`: the issuer's `/.well-known/openid-configuration`, then its
    /// `jwks_uri`.
    Discovery { issuer: String },
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::Uri(uri) => f.write_str(uri),
            JwksSource::Discovery { issuer } => write!(f, "{}", discovery_url(issuer)),
        }
    }
}

fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// What the resolver has for one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keys {
    /// The last key set fetched; `stale` holds the error of a failed refresh since.
    Fetched { jwks: String, stale: Option<String> },
    /// No key set yet: not fetched yet, or every fetch so far failed (the last error).
    Missing { error: Option<String> },
}

#[derive(Debug)]
struct Entry {
    jwks: Option<String>,
    error: Option<String>,
    next_fetch: Instant,
    /// The bound of each fetch.
    timeout: Duration,
    failures: u32,
    /// The translation that last asked for it.
    epoch: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<JwksSource, Entry>,
    epoch: u64,
}

/// The key sets of every `jwksUri` the configuration names; see the module's notes.
#[derive(Debug)]
pub struct JwksResolver {
    state: Mutex<State>,
    /// Wakes the fetcher when a new source is asked for.
    wanted: Notify,
    /// Bumped when a key set changes: the configuration must be republished.
    changed: watch::Sender<u64>,
}

impl Default for JwksResolver {
    fn default() -> Self {
        JwksResolver {
            state: Mutex::new(State::default()),
            wanted: Notify::new(),
            changed: watch::channel(0).0,
        }
    }
}

impl JwksResolver {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What is known of `source` now, asking for it to be fetched (each fetch bounded by
    /// `timeout`) if it is new.
    pub fn keys(&self, source: &JwksSource, timeout: Duration) -> Keys {
        let mut state = self.lock();
        let epoch = state.epoch;
        let entry = state.entries.entry(source.clone()).or_insert_with(|| {
            self.wanted.notify_one();
            Entry {
                jwks: None,
                error: None,
                next_fetch: Instant::now(),
                timeout,
                failures: 0,
                epoch,
            }
        });
        entry.epoch = epoch;
        entry.timeout = timeout;
        match &entry.jwks {
            Some(jwks) => Keys::Fetched {
                jwks: jwks.clone(),
                stale: entry.error.clone(),
            },
            None => Keys::Missing {
                error: entry.error.clone(),
            },
        }
    }

    /// Starts a translation: sources it does not ask for are forgotten by [`Self::finish`].
    pub fn begin(&self) -> u64 {
        let mut state = self.lock();
        state.epoch += 1;
        state.epoch
    }

    /// Ends the translation `epoch` began: forgets the sources it did not ask for.
    pub fn finish(&self, epoch: u64) {
        self.lock().entries.retain(|_, e| e.epoch >= epoch);
    }

    /// Changes when a key set changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Fetches what is due, forever: the store's only writer.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let client = match fetch::Client::new() {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "no TLS client for JWKS fetches; jwksUri keys stay missing");
                return;
            }
        };
        loop {
            let now = Instant::now();
            let due: Vec<(JwksSource, Duration)> = self
                .lock()
                .entries
                .iter()
                .filter(|(_, e)| e.next_fetch <= now)
                .map(|(source, e)| (source.clone(), e.timeout))
                .collect();
            for (source, timeout) in due {
                let result = client.jwks(&source, timeout).await;
                self.record(&source, result);
            }
            let next = self
                .lock()
                .entries
                .values()
                .map(|e| e.next_fetch)
                .min()
                .unwrap_or_else(|| Instant::now() + REFRESH_INTERVAL);
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = self.wanted.notified() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    fn record(&self, source: &JwksSource, result: Result<String, fetch::FetchError>) {
        let mut state = self.lock();
        let Some(entry) = state.entries.get_mut(source) else {
            return;
        };
        match result {
            Ok(jwks) => {
                entry.failures = 0;
                entry.error = None;
                entry.next_fetch = Instant::now() + REFRESH_INTERVAL;
                if entry.jwks.as_ref() != Some(&jwks) {
                    tracing::info!(%source, "jwks fetched");
                    entry.jwks = Some(jwks);
                    drop(state);
                    self.changed.send_modify(|n| *n += 1);
                }
            }
            Err(error) => {
                tracing::warn!(%source, %error, "jwks fetch failed; the last good keys stay");
                let had_error = entry.error.is_some();
                entry.error = Some(error.to_string());
                let backoff = FIRST_RETRY.saturating_mul(1 << entry.failures.min(20));
                entry.failures = entry.failures.saturating_add(1);
                entry.next_fetch = Instant::now() + backoff.min(REFRESH_INTERVAL);
                if !had_error {
                    // The failure is reported with the resource on the next translation.
                    drop(state);
                    self.changed.send_modify(|n| *n += 1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
