//! Metrics hooks of the discovery server. The server reports events through [`XdsMetrics`]; the
//! controller exports them under Istio's metric names (listed once, in [`names`]).
//! [`XdsCounters`] is a ready-made in-memory implementation, used by tests and admin dumps; it
//! counts by type URL and leaves naming the types (istiod's `type` label) to its reader.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::server::ProxyIdentity;

/// Istio's names for the discovery server metrics, in one place.
pub mod names {
    /// Counter: responses pushed to proxies, labelled by resource type.
    pub const PUSHES: &str = "pilot_xds_pushes";
    /// Counter: responses rejected (NACKed) by proxies, labelled by resource type.
    pub const REJECTS: &str = "pilot_total_xds_rejects";
    /// Gauge: proxies currently connected to the discovery stream.
    pub const CONNECTED: &str = "pilot_xds";
    /// Histogram: seconds between a configuration change and its push to one proxy.
    pub const PUSH_TIME: &str = "pilot_xds_push_time";
    /// Histogram: seconds between a configuration change and a proxy receiving it, in
    /// [`super::CONVERGENCE_BUCKETS`].
    pub const CONVERGENCE_TIME: &str = "pilot_proxy_convergence_time";
}

/// The upper bounds, in seconds, of `pilot_proxy_convergence_time`'s buckets: istiod's
/// (`pilot/pkg/xds/monitoring.go`), so that Istio's dashboards and alerts read the same
/// quantiles. Past the last, a push counts only in `+Inf`.
pub const CONVERGENCE_BUCKETS: [f64; 8] = [0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];

/// Type URLs [`XdsCounters`] counts apart; pushes and NACKs of any further type URL count under
/// [`OTHER_TYPE_URL`]. A proxy names the type of what it NACKs, so its strings must not grow
/// the table without bound.
pub const MAX_COUNTED_TYPE_URLS: usize = 32;

/// The key under which [`XdsCounters`] counts type URLs past [`MAX_COUNTED_TYPE_URLS`].
pub const OTHER_TYPE_URL: &str = "other";

/// What [`XdsCounters`] counted of one type URL.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TypeCounts {
    /// Responses pushed (`pilot_xds_pushes`).
    pub pushes: u64,
    /// Their latencies summed (`pilot_xds_push_time` sum).
    pub push_time: Duration,
    /// NACKs received (`pilot_total_xds_rejects`).
    pub rejects: u64,
}

/// A rejected response, as reported by the proxy in its NACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `Node.id` of the proxy that rejected the response.
    pub proxy_id: String,
    /// Type URL of the rejected resources.
    pub type_url: String,
    /// Nonce of the rejected response.
    pub nonce: String,
    /// The proxy's error message.
    pub message: String,
}

/// Events of the discovery server. Implementations must be cheap and must not block: they are
/// called from the per-proxy stream tasks.
pub trait XdsMetrics: Send + Sync + 'static {
    /// A proxy opened a stream and identified itself.
    fn proxy_connected(&self, proxy_id: &str);
    /// A proxy's stream ended.
    fn proxy_disconnected(&self, proxy_id: &str);
    /// One response of `type_url` was sent; `latency` runs from the change (or subscription)
    /// that caused it to the send.
    fn pushed(&self, type_url: &str, latency: Duration);
    /// A change reached one proxy: every response it caused on the proxy's stream (one per
    /// type it changed) was sent, the last `latency` after the change. Once per push and
    /// proxy, as istiod records `pilot_proxy_convergence_time` after `pushConnection`; a
    /// subscription's first responses are no push.
    fn converged(&self, _latency: Duration) {}
    /// A proxy NACKed a response.
    fn rejected(&self, rejection: &Rejection);
    /// Per-stream events for a sync-status view (`/debug/syncz`): a stream was admitted, one
    /// response was sent on it, the proxy answered a response (ACK: `error` is `None`), the
    /// stream ended. Streams are told apart by [`ProxyIdentity::connection`].
    fn stream_event(&self, _proxy: &ProxyIdentity, _event: StreamEvent<'_>) {}
}

/// One event of one discovery stream, for [`XdsMetrics::stream_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEvent<'a> {
    Opened,
    Sent {
        type_url: &'a str,
        nonce: &'a str,
    },
    Answered {
        type_url: &'a str,
        nonce: &'a str,
        error: Option<&'a str>,
    },
    Closed,
}

/// Metrics sink that records nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMetrics;

impl XdsMetrics for NoMetrics {
    fn proxy_connected(&self, _proxy_id: &str) {}
    fn proxy_disconnected(&self, _proxy_id: &str) {}
    fn pushed(&self, _type_url: &str, _latency: Duration) {}
    fn rejected(&self, _rejection: &Rejection) {}
}

/// How many rejections [`XdsCounters`] keeps for inspection; older ones are dropped.
const RECENT_REJECTIONS_KEPT: usize = 64;

/// In-memory counters: totals plus the most recent rejections.
#[derive(Debug, Default)]
pub struct XdsCounters {
    pushes: AtomicU64,
    rejects: AtomicU64,
    connected: AtomicI64,
    push_time_total_micros: AtomicU64,
    /// Convergence latencies summed (`pilot_proxy_convergence_time_sum`).
    convergence_total_micros: AtomicU64,
    /// Pushes per bucket of [`CONVERGENCE_BUCKETS`] (not cumulative), the last for `+Inf`.
    convergence: [AtomicU64; CONVERGENCE_BUCKETS.len() + 1],
    by_type: Mutex<BTreeMap<String, TypeCounts>>,
    recent_rejections: Mutex<VecDeque<Rejection>>,
}

impl XdsCounters {
    /// Responses pushed so far (`pilot_xds_pushes`).
    pub fn pushes(&self) -> u64 {
        self.pushes.load(Ordering::Relaxed)
    }

    /// NACKs received so far (`pilot_total_xds_rejects`).
    pub fn rejects(&self) -> u64 {
        self.rejects.load(Ordering::Relaxed)
    }

    /// Proxies connected now (`pilot_xds`).
    pub fn connected(&self) -> i64 {
        self.connected.load(Ordering::Relaxed)
    }

    /// Sum of all push latencies (`pilot_xds_push_time` sum).
    pub fn push_time_total(&self) -> Duration {
        Duration::from_micros(self.push_time_total_micros.load(Ordering::Relaxed))
    }

    /// Sum of every convergence latency (`pilot_proxy_convergence_time_sum`).
    pub fn convergence_total(&self) -> Duration {
        Duration::from_micros(self.convergence_total_micros.load(Ordering::Relaxed))
    }

    /// Pushes by [`CONVERGENCE_BUCKETS`] of their latency: `(upper bound, pushes in this
    /// bucket alone)`, the last with `f64::INFINITY` for the slower ones.
    pub fn convergence_buckets(&self) -> Vec<(f64, u64)> {
        CONVERGENCE_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.convergence)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect()
    }

    /// Pushes, their latency and NACKs by type URL (at most [`MAX_COUNTED_TYPE_URLS`] of them,
    /// then [`OTHER_TYPE_URL`]); a type appears once something of it was counted.
    pub fn by_type(&self) -> BTreeMap<String, TypeCounts> {
        self.by_type
            .lock()
            .map(|counts| counts.clone())
            .unwrap_or_default()
    }

    fn count(&self, type_url: &str, add: impl FnOnce(&mut TypeCounts)) {
        let Ok(mut counts) = self.by_type.lock() else {
            return;
        };
        if let Some(found) = counts.get_mut(type_url) {
            add(found);
        } else if counts.len() < MAX_COUNTED_TYPE_URLS {
            add(counts.entry(type_url.to_owned()).or_default());
        } else {
            add(counts.entry(OTHER_TYPE_URL.to_owned()).or_default());
        }
    }

    /// The most recent rejections, oldest first.
    pub fn recent_rejections(&self) -> Vec<Rejection> {
        self.recent_rejections
            .lock()
            .map(|recent| recent.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl XdsMetrics for XdsCounters {
    fn proxy_connected(&self, _proxy_id: &str) {
        self.connected.fetch_add(1, Ordering::Relaxed);
    }

    fn proxy_disconnected(&self, _proxy_id: &str) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
    }

    fn pushed(&self, type_url: &str, latency: Duration) {
        self.pushes.fetch_add(1, Ordering::Relaxed);
        self.count(type_url, |counts| {
            counts.pushes += 1;
            counts.push_time += latency;
        });
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.push_time_total_micros
            .fetch_add(micros, Ordering::Relaxed);
    }

    fn converged(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.convergence_total_micros
            .fetch_add(micros, Ordering::Relaxed);
        let seconds = latency.as_secs_f64();
        let bucket = CONVERGENCE_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(CONVERGENCE_BUCKETS.len());
        self.convergence[bucket].fetch_add(1, Ordering::Relaxed);
    }

    fn rejected(&self, rejection: &Rejection) {
        self.rejects.fetch_add(1, Ordering::Relaxed);
        self.count(&rejection.type_url, |counts| counts.rejects += 1);
        if let Ok(mut recent) = self.recent_rejections.lock() {
            if recent.len() == RECENT_REJECTIONS_KEPT {
                recent.pop_front();
            }
            recent.push_back(rejection.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(type_url: &str) -> Rejection {
        Rejection {
            proxy_id: "proxy".into(),
            type_url: type_url.into(),
            nonce: "1".into(),
            message: "bad".into(),
        }
    }

    #[test]
    fn pushes_and_rejects_count_by_type_url_within_a_bound() {
        let counters = XdsCounters::default();
        counters.pushed("a", Duration::from_millis(300));
        counters.pushed("a", Duration::from_millis(200));
        counters.pushed("b", Duration::from_millis(1));
        counters.rejected(&rejection("b"));
        let by_type = counters.by_type();
        assert_eq!(
            by_type["a"],
            TypeCounts {
                pushes: 2,
                push_time: Duration::from_millis(500),
                rejects: 0
            }
        );
        assert_eq!(by_type["b"].pushes, 1);
        assert_eq!(by_type["b"].rejects, 1);
        assert_eq!(counters.pushes(), 3);

        // A proxy NACKing under made-up type URLs fills the table once, then counts as other;
        // the types already counted keep counting apart.
        for i in 0..100 {
            counters.rejected(&rejection(&format!("made-up-{i}")));
        }
        counters.pushed("a", Duration::ZERO);
        let by_type = counters.by_type();
        assert_eq!(by_type.len(), MAX_COUNTED_TYPE_URLS + 1);
        assert_eq!(by_type["a"].pushes, 3);
        assert_eq!(
            by_type[OTHER_TYPE_URL].rejects,
            100 - (MAX_COUNTED_TYPE_URLS as u64 - 2)
        );
        assert_eq!(counters.rejects(), 101);
    }
}
