//! Istio's TCP metrics (`istio_tcp_connections_opened_total`, `..._closed_total`,
//! `istio_tcp_sent_bytes_total`, `istio_tcp_received_bytes_total`) and the per-connection
//! record: opened with the connection's labels, counting its bytes without locks, and on drop
//! closing the connection's counters and writing its one access-log event, in the format of
//! the proxy that holds it ([`AccessLog`]).
//!
//! Building a label set (23 strings, the principals formatted) and looking it up in four metric
//! families (hashing all of it, under each family's lock) cost the node agent more per
//! connection than policy and planning together; connections between the same workloads share
//! one set, so [`TcpMetrics::open_cached`] resolves each distinct set once and keeps its
//! counters.

use std::{
    any::Any,
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::labels::{ResponseFlag, Series, TcpLabels};

/// The tracing target of access-log events, the agents' and the waypoints' alike (ztunnel's).
/// Their lines are written without the log subscriber's own escaping of terminal control
/// characters (see `Config::init`), which walks every character of a message: an access line
/// writes each text that could carry one through [`LogText`] instead.
pub const ACCESS_LOG: &str = "access";

/// A text of an access-log line, with control characters (C0, DEL, C1: what could drive a
/// terminal reading the log) escaped as the log subscriber escapes them; a text of visible
/// ASCII, the usual case, is written as it is after one scan of its bytes.
#[derive(Debug, Clone, Copy)]
pub struct LogText<'a>(pub &'a str);

impl std::fmt::Display for LogText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return f.write_str(self.0);
        }
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "\\u{{{:x}}}", u32::from(c))?;
            } else {
                std::fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

/// Label sets kept resolved at most; past it the cache starts over (entries of workloads that
/// were replaced by a configuration update are never hit again).
const CACHED_LABEL_SETS: usize = 4096;

/// What a cached label set was built from, by identity: the caller's records (kept alive by the
/// entry, so that an address cannot be reused while it is a key) and whatever else decides the
/// labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LabelKey {
    pub records: [usize; 3],
    pub discriminant: u64,
}

/// One of Istio's four TCP metrics (Telemetry's `TCP_*` metric selectors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpMetric {
    /// `istio_tcp_connections_opened_total` (`TCP_OPENED_CONNECTIONS`).
    Opened = 0,
    /// `istio_tcp_connections_closed_total` (`TCP_CLOSED_CONNECTIONS`).
    Closed = 1,
    /// `istio_tcp_sent_bytes_total` (`TCP_SENT_BYTES`).
    Sent = 2,
    /// `istio_tcp_received_bytes_total` (`TCP_RECEIVED_BYTES`).
    Received = 3,
}

impl TcpMetric {
    pub const ALL: [TcpMetric; 4] = [
        TcpMetric::Opened,
        TcpMetric::Closed,
        TcpMetric::Sent,
        TcpMetric::Received,
    ];
}

/// How Telemetry's metric overrides change one connection's TCP metrics.
pub trait TcpSeriesOverride: std::fmt::Debug + Send + Sync + 'static {
    /// The series `metric` counts a connection labelled `labels` in; `None`: the metric is
    /// not recorded.
    fn series(&self, metric: TcpMetric, labels: &TcpLabels) -> Option<Series<TcpLabels>>;
}

/// One resolved label set and its counters (`None`: a metric Telemetry disabled).
#[derive(Debug)]
struct LabelCounters {
    labels: TcpLabels,
    opened: Option<Counter>,
    /// Resolved on the first close, so that no closed count shows before a connection ended.
    closed: OnceLock<Counter>,
    sent: Option<Counter>,
    received: Option<Counter>,
    _records: Option<Box<dyn Any + Send + Sync>>,
}

type TcpFamily = Family<Series<TcpLabels>, Counter>;

/// The four `istio_tcp_*` families.
#[derive(Debug, Default)]
pub struct TcpMetrics {
    opened: TcpFamily,
    closed: TcpFamily,
    sent: TcpFamily,
    received: TcpFamily,
    resolved: Mutex<HashMap<LabelKey, Arc<LabelCounters>, foldhash::fast::RandomState>>,
}

impl TcpMetrics {
    /// Registers the families (the `_total` suffix is added on export).
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register(
            "tcp_connections_opened",
            "Total TCP connections opened",
            metrics.opened.clone(),
        );
        istio.register(
            "tcp_connections_closed",
            "Total TCP connections closed",
            metrics.closed.clone(),
        );
        istio.register(
            "tcp_sent_bytes",
            "Bytes sent in response to the client (destination to source)",
            metrics.sent.clone(),
        );
        istio.register(
            "tcp_received_bytes",
            "Bytes received from the client (source to destination)",
            metrics.received.clone(),
        );
        metrics
    }

    /// Counts a connection with `labels` as opened; `log` writes its access-log event.
    pub fn open<L: AccessLog>(&self, labels: TcpLabels, log: L) -> TcpConnection<L> {
        self.record(Arc::new(self.resolve(labels, None)), None, log)
    }

    /// [`Self::open`] under Telemetry's metric overrides: each metric is counted in the series
    /// `overrides` makes of `labels`, or not at all. Uncached: every such connection resolves
    /// its series.
    pub fn open_overridden<L: AccessLog>(
        &self,
        labels: TcpLabels,
        overrides: Box<dyn TcpSeriesOverride>,
        log: L,
    ) -> TcpConnection<L> {
        let counter = |family: &TcpFamily, metric| {
            overrides
                .series(metric, &labels)
                .map(|series| family.get_or_create(&series).clone())
        };
        let counters = LabelCounters {
            opened: counter(&self.opened, TcpMetric::Opened),
            closed: OnceLock::new(),
            sent: counter(&self.sent, TcpMetric::Sent),
            received: counter(&self.received, TcpMetric::Received),
            labels,
            _records: None,
        };
        self.record(Arc::new(counters), Some(overrides), log)
    }

    /// [`Self::open`] with the labels `labels` builds, built once per distinct `key`. `records`
    /// are what `key` names by address: the cache keeps them alive with the entry.
    pub fn open_cached<L: AccessLog, R: Any + Send + Sync>(
        &self,
        key: LabelKey,
        labels: impl FnOnce() -> (TcpLabels, R),
        log: L,
    ) -> TcpConnection<L> {
        let cached = self.lock_resolved().get(&key).cloned();
        let counters = match cached {
            Some(counters) => counters,
            None => {
                let (labels, records) = labels();
                let counters = Arc::new(self.resolve(labels, Some(Box::new(records))));
                let mut resolved = self.lock_resolved();
                if resolved.len() >= CACHED_LABEL_SETS {
                    resolved.clear();
                }
                resolved.insert(key, counters.clone());
                counters
            }
        };
        self.record(counters, None, log)
    }

    /// Label sets resolved and kept.
    pub fn cached_label_sets(&self) -> usize {
        self.lock_resolved().len()
    }

    fn lock_resolved(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<LabelKey, Arc<LabelCounters>, foldhash::fast::RandomState>>
    {
        // Entries are inserted whole; a panic elsewhere cannot leave one half-written.
        self.resolved.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn resolve(
        &self,
        labels: TcpLabels,
        records: Option<Box<dyn Any + Send + Sync>>,
    ) -> LabelCounters {
        // Counters share their atomic with the family: cloned once here, they count bytes live
        // (a long connection shows up before it ends) without a lock per write.
        let series = Series::Standard(labels.clone());
        LabelCounters {
            opened: Some(self.opened.get_or_create(&series).clone()),
            closed: OnceLock::new(),
            sent: Some(self.sent.get_or_create(&series).clone()),
            received: Some(self.received.get_or_create(&series).clone()),
            labels,
            _records: records,
        }
    }

    fn record<L: AccessLog>(
        &self,
        counters: Arc<LabelCounters>,
        overrides: Option<Box<dyn TcpSeriesOverride>>,
        log: L,
    ) -> TcpConnection<L> {
        if let Some(opened) = &counters.opened {
            opened.inc();
        }
        TcpConnection {
            counters,
            overrides,
            closed: self.closed.clone(),
            flagged: None,
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            started: Instant::now(),
            log,
        }
    }
}

/// What a connection's access-log event says, in its proxy's format.
pub trait AccessLog: Send + Sync + 'static {
    /// The connection was ended by its proxy (a policy that no longer allows it, its pod
    /// leaving the mesh) for `reason`: what the event should say, and the response flag the
    /// connection closes with, if any.
    fn revoked(&mut self, reason: &str) -> Option<ResponseFlag>;

    /// Writes the connection's one event.
    fn write(&self, end: &ConnectionEnd<'_>);
}

/// A connection as it ends.
#[derive(Debug)]
pub struct ConnectionEnd<'a> {
    pub labels: &'a TcpLabels,
    /// Bytes sent toward the client.
    pub sent: u64,
    /// Bytes received from the client.
    pub received: u64,
    pub duration: Duration,
}

/// One connection's record. Bytes go to the families' counters as they flow (atomics, no lock)
/// and to the connection's own totals for its access-log event.
#[derive(Debug)]
pub struct TcpConnection<L: AccessLog> {
    counters: Arc<LabelCounters>,
    /// Telemetry's metric overrides in force when the connection opened.
    overrides: Option<Box<dyn TcpSeriesOverride>>,
    closed: TcpFamily,
    /// The labels with the response flags the connection closes with, once they are not `-`.
    flagged: Option<TcpLabels>,
    /// Bytes sent to the client, bytes received from it.
    bytes: [AtomicU64; 2],
    started: Instant,
    log: L,
}

impl<L: AccessLog> TcpConnection<L> {
    /// Bytes sent toward the client (the response direction).
    pub fn add_sent(&self, bytes: u64) {
        self.bytes[0].fetch_add(bytes, Ordering::Relaxed);
        if let Some(sent) = &self.counters.sent {
            sent.inc_by(bytes);
        }
    }

    /// Bytes received from the client (the request direction).
    pub fn add_received(&self, bytes: u64) {
        self.bytes[1].fetch_add(bytes, Ordering::Relaxed);
        if let Some(received) = &self.counters.received {
            received.inc_by(bytes);
        }
    }

    /// The response flag the connection closes with (`-` when it ends well).
    pub fn set_response_flags(&mut self, flag: ResponseFlag) {
        self.flagged
            .get_or_insert_with(|| self.counters.labels.clone())
            .response_flags = flag;
    }

    /// The labels the connection closes with.
    pub fn labels(&self) -> &TcpLabels {
        self.flagged.as_ref().unwrap_or(&self.counters.labels)
    }

    /// What the access-log event will say.
    pub fn log_mut(&mut self) -> &mut L {
        &mut self.log
    }

    /// The connection was ended by its proxy for `reason`.
    pub fn revoked(&mut self, reason: &str) {
        if let Some(flag) = self.log.revoked(reason) {
            self.set_response_flags(flag);
        }
    }
}

impl<L: AccessLog> Drop for TcpConnection<L> {
    fn drop(&mut self) {
        match (&self.overrides, &self.flagged) {
            (Some(overrides), _) => {
                if let Some(series) = overrides.series(TcpMetric::Closed, self.labels()) {
                    self.closed.get_or_create(&series).inc();
                }
            }
            (None, None) => {
                self.counters
                    .closed
                    .get_or_init(|| {
                        self.closed
                            .get_or_create(&Series::Standard(self.counters.labels.clone()))
                            .clone()
                    })
                    .inc();
            }
            (None, Some(labels)) => {
                self.closed
                    .get_or_create(&Series::Standard(labels.clone()))
                    .inc();
            }
        }
        self.log.write(&ConnectionEnd {
            labels: self.labels(),
            sent: self.bytes[0].load(Ordering::Relaxed),
            received: self.bytes[1].load(Ordering::Relaxed),
            duration: self.started.elapsed(),
        });
    }
}

impl<L: AccessLog> weft_hbone::ByteMeter for TcpConnection<L> {
    fn add_sent(&self, bytes: u64) {
        TcpConnection::add_sent(self, bytes);
    }

    fn add_received(&self, bytes: u64) {
        TcpConnection::add_received(self, bytes);
    }

    fn revoked(&mut self, reason: &str) {
        TcpConnection::revoked(self, reason);
    }
}
