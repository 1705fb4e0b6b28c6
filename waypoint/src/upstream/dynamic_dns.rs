//! `resolution: DYNAMIC_DNS` (Envoy's dynamic forward proxy, as Istio's waypoints use it for a
//! wildcard ServiceEntry host): the endpoint of a request is the name its Host gives, resolved
//! when the request comes, through a cache shared by every cluster of the waypoint.
//!
//! The cache holds what Envoy's DNS cache holds, with Envoy's defaults as bounds: at most
//! [`MAX_HOSTS`] names (a new name beyond them is refused, 503, as Envoy's "DNS cache
//! overflow"), each kept for its records' TTL (at least [`MIN_REFRESH`], Envoy's
//! `dns_min_refresh_rate`; at most [`MAX_REFRESH`]) and forgotten once unused for [`HOST_TTL`]
//! when room is needed; at most [`MAX_ADDRESSES`] addresses a name, [`MAX_LOOKUPS`] lookups in
//! flight (more is an overflow too), each within the resolver's timeout. A hit is one map
//! lookup under a lock held for no `.await`. A miss (or an expired answer) is resolved by a task
//! of its own, so a client that goes away never leaves a name pending; every request for that
//! name waits for the one lookup. A failed lookup keeps the last good addresses for
//! [`FAILURE_RETRY`], else fails the requests (503 `DF`, Envoy's `DnsResolutionFailed`) for
//! that long without asking again.
//!
//! Only names under the service's wildcard reach here ([`under_wildcard`], checked before
//! routing), only valid DNS names are looked up, and no answer points the waypoint at itself
//! or at a link-local address ([`reachable`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use weft_proxy_core::dns::Answer;

/// How many names the cache holds at most (Envoy's `max_hosts` default).
pub const MAX_HOSTS: usize = 1024;
/// How long a name nobody asks for stays when room is needed (Envoy's `host_ttl` default).
pub const HOST_TTL: Duration = Duration::from_secs(300);
/// The shortest time an answer is kept, whatever its TTL (Envoy's `dns_min_refresh_rate`).
pub const MIN_REFRESH: Duration = Duration::from_secs(5);
/// The longest time an answer is kept, whatever its TTL (the waypoint's other DNS refreshes).
pub const MAX_REFRESH: Duration = weft_proxy_core::dns::MAX_REFRESH;
/// How long a failed lookup stands before the name is asked again.
pub const FAILURE_RETRY: Duration = Duration::from_secs(5);
/// How many lookups run at once at most.
pub const MAX_LOOKUPS: usize = 64;
/// How many addresses of a name are kept.
pub const MAX_ADDRESSES: usize = 8;

/// Resolves one name (production: the waypoint's stub resolver, [`weft_proxy_core::dns`]).
pub type Lookup = Arc<dyn Fn(String) -> BoxFuture<'static, Result<Answer, String>> + Send + Sync>;

/// Why a name gave no address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("resolving {name} failed: {reason}")]
    Failed { name: String, reason: String },
    #[error("no room to resolve {0}: the DNS cache is full")]
    Overflow(String),
}

enum Entry {
    Resolved {
        addresses: Arc<[IpAddr]>,
        expires: Instant,
        used: Instant,
    },
    Failed {
        reason: Arc<str>,
        expires: Instant,
    },
    /// A lookup runs; `done` turns true when the entry is replaced.
    Pending {
        done: watch::Receiver<bool>,
        stale: Option<Arc<[IpAddr]>>,
    },
}

/// The names resolved for `DYNAMIC_DNS` clusters. Cheap to clone.
#[derive(Clone)]
pub struct DynamicDnsCache {
    inner: Arc<Inner>,
}

struct Inner {
    entries: Mutex<HashMap<Box<str>, Entry>>,
    lookup: Lookup,
    lookups: Arc<Semaphore>,
}

impl std::fmt::Debug for DynamicDnsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamicDnsCache")
            .field("names", &self.len())
            .finish_non_exhaustive()
    }
}

impl DynamicDnsCache {
    pub fn new(lookup: Lookup) -> Self {
        DynamicDnsCache {
            inner: Arc::new(Inner {
                entries: Mutex::new(HashMap::new()),
                lookup,
                lookups: Arc::new(Semaphore::new(MAX_LOOKUPS)),
            }),
        }
    }

    /// The cache of the system's resolver, or of the resolver configuration at `resolv_conf`,
    /// built at the first lookup.
    pub fn system(resolv_conf: Option<std::path::PathBuf>) -> Self {
        let resolver = Arc::new(weft_proxy_core::dns::LazyResolver::new(resolv_conf));
        DynamicDnsCache::new(Arc::new(move |name: String| {
            let resolver = Arc::clone(&resolver);
            // Fully qualified: the resolver's search domains are not tried.
            Box::pin(async move { resolver.lookup(&format!("{name}.")).await })
        }))
    }

    /// How many names the cache holds.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether the cache holds no name.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Entry>> {
        self.inner.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The address of `name` (its first: IPv4 first), from the cache or resolved now.
    pub async fn resolve(&self, name: &str) -> Result<IpAddr, DnsError> {
        let name = normalized(name).ok_or_else(|| DnsError::Failed {
            name: name.to_owned(),
            reason: "not a DNS name".to_owned(),
        })?;
        // The second pass reads what the lookup the first one waited for left.
        for _ in 0..2 {
            let mut done = match self.read_or_start(&name)? {
                Ok(address) => return Ok(address),
                Err(done) => done,
            };
            // The lookup task always replaces the entry; a dropped sender means it did.
            let _ = done.wait_for(|d| *d).await;
        }
        Err(DnsError::Failed {
            name: name.into_owned(),
            reason: "the lookup left no answer".to_owned(),
        })
    }

    /// The cached address, or the lookup to wait for (started here when none runs).
    #[allow(clippy::type_complexity)]
    fn read_or_start(&self, name: &str) -> Result<Result<IpAddr, watch::Receiver<bool>>, DnsError> {
        let now = Instant::now();
        let mut entries = self.entries();
        let stale = match entries.get_mut(name) {
            Some(Entry::Resolved {
                addresses,
                expires,
                used,
            }) => {
                if *expires > now {
                    *used = now;
                    return Ok(Ok(addresses[0]));
                }
                Some(Arc::clone(addresses))
            }
            Some(Entry::Failed { reason, expires }) if *expires > now => {
                return Err(DnsError::Failed {
                    name: name.to_owned(),
                    reason: reason.to_string(),
                });
            }
            Some(Entry::Pending { done, .. }) => return Ok(Err(done.clone())),
            Some(Entry::Failed { .. }) => None,
            None => {
                if entries.len() >= MAX_HOSTS {
                    evict(&mut entries, now);
                }
                if entries.len() >= MAX_HOSTS {
                    return Err(DnsError::Overflow(name.to_owned()));
                }
                None
            }
        };
        let Ok(permit) = Arc::clone(&self.inner.lookups).try_acquire_owned() else {
            return Err(DnsError::Overflow(name.to_owned()));
        };
        let (finished, done) = watch::channel(false);
        entries.insert(
            name.into(),
            Entry::Pending {
                done: done.clone(),
                stale,
            },
        );
        drop(entries);
        let cache = self.clone();
        let owned = name.to_owned();
        tokio::spawn(async move {
            let answer = (cache.inner.lookup)(owned.clone()).await;
            cache.settle(&owned, answer);
            drop(permit);
            let _ = finished.send(true);
        });
        Ok(Err(done))
    }

    /// Replaces `name`'s pending entry with its answer.
    fn settle(&self, name: &str, answer: Result<Answer, String>) {
        let now = Instant::now();
        let mut entries = self.entries();
        let stale = match entries.remove(name) {
            Some(Entry::Pending { stale, .. }) => stale,
            _ => None,
        };
        let entry = match answer {
            Ok(answer) if answer.addresses.iter().any(|a| reachable(*a)) => {
                let addresses: Vec<IpAddr> = answer
                    .addresses
                    .into_iter()
                    .filter(|a| reachable(*a))
                    .take(MAX_ADDRESSES)
                    .collect();
                Entry::Resolved {
                    addresses: addresses.into(),
                    expires: now + answer.ttl.clamp(MIN_REFRESH, MAX_REFRESH),
                    used: now,
                }
            }
            failed => {
                let reason = failed
                    .err()
                    .unwrap_or_else(|| "no address outside the proxy's own host".to_owned());
                tracing::debug!(hostname = %name, %reason, "DYNAMIC_DNS name not resolved");
                match stale {
                    Some(addresses) => Entry::Resolved {
                        addresses,
                        expires: now + FAILURE_RETRY,
                        used: now,
                    },
                    None => Entry::Failed {
                        reason: reason.into(),
                        expires: now + FAILURE_RETRY,
                    },
                }
            }
        };
        entries.insert(name.into(), entry);
    }
}

/// Whether the waypoint may connect to `address` for a name the outside world's DNS gave:
/// never to itself (loopback, unspecified) nor to link-local addresses (a cloud's metadata
/// service, `169.254.169.254`), whatever a record under the wildcard says. Stricter than
/// Envoy's dynamic forward proxy, which connects to any answer.
fn reachable(address: IpAddr) -> bool {
    let address = address.to_canonical();
    if address.is_loopback() || address.is_unspecified() || address.is_multicast() {
        return false;
    }
    match address {
        IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_broadcast(),
        IpAddr::V6(v6) => !v6.is_unicast_link_local(),
    }
}

/// Forgets the names unused for [`HOST_TTL`] and the failures that ran out.
fn evict(entries: &mut HashMap<Box<str>, Entry>, now: Instant) {
    entries.retain(|_, entry| match entry {
        Entry::Resolved { used, .. } => now.saturating_duration_since(*used) < HOST_TTL,
        Entry::Failed { expires, .. } => *expires > now,
        Entry::Pending { .. } => true,
    });
}

/// `name` in lower case without a final dot, if it is a DNS name (labels of letters, digits and
/// hyphens, at most 63 bytes each, 253 in all).
fn normalized(name: &str) -> Option<Cow<'_, str>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return None;
    }
    Some(if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

/// Whether `name` falls under the wildcard host `pattern` (`*.example.com`: any name ending in
/// `.example.com` with at least one label before, as Envoy matches a virtual host's wildcard
/// domain), ignoring case and a final dot.
pub fn under_wildcard(pattern: &str, name: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix('*') else {
        return false;
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.len() > suffix.len()
        && suffix.starts_with('.')
        && name.is_char_boundary(name.len() - suffix.len())
        && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// The host and port of a request's authority (`host`, `host:port`, `[v6]:port`).
pub fn host_and_port(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return (authority, None);
        };
        return (host, after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests;
