//! The agent's metrics, with Istio's names and labels (what ztunnel exports), and the
//! per-connection record: a guard opened with the connection's labels, counting its bytes without
//! locks, that on drop closes the connection's counters and writes its one access-log event.
//!
//! Building a label set (23 strings, the principals formatted) and looking it up in four metric
//! families (SipHash over all of them, under each family's lock) cost more per connection than
//! policy and planning together; connections between the same workloads share one set, so
//! [`Metrics::connection_opened_between`] resolves each distinct set once and keeps its counters.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::state::{Service, Workload};

/// Istio's label set for TCP metrics; `unknown` where a value is not known.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

const UNKNOWN: &str = "unknown";

fn or_unknown(value: &str) -> String {
    if value.is_empty() {
        UNKNOWN.to_string()
    } else {
        value.to_string()
    }
}

impl Default for ConnectionLabels {
    fn default() -> Self {
        let u = || UNKNOWN.to_string();
        Self {
            reporter: u(),
            source_workload: u(),
            source_canonical_service: u(),
            source_canonical_revision: u(),
            source_workload_namespace: u(),
            source_principal: u(),
            source_app: u(),
            source_version: u(),
            source_cluster: u(),
            destination_service: u(),
            destination_service_namespace: u(),
            destination_service_name: u(),
            destination_workload: u(),
            destination_canonical_service: u(),
            destination_canonical_revision: u(),
            destination_workload_namespace: u(),
            destination_principal: u(),
            destination_app: u(),
            destination_version: u(),
            destination_cluster: u(),
            request_protocol: "tcp".to_string(),
            response_flags: "-".to_string(),
            connection_security_policy: u(),
        }
    }
}

impl ConnectionLabels {
    /// Labels for a connection between `source` and `destination` (either may be unknown).
    pub fn from_workloads(
        reporter: &str,
        source: Option<&Workload>,
        destination: Option<&Workload>,
        destination_service: Option<&Service>,
        security_policy: &str,
    ) -> Self {
        let mut labels = Self {
            reporter: reporter.to_string(),
            connection_security_policy: security_policy.to_string(),
            ..Self::default()
        };
        if let Some(w) = source {
            labels.source_workload = or_unknown(&w.workload_name);
            labels.source_canonical_service = or_unknown(&w.canonical_name);
            labels.source_canonical_revision = or_unknown(&w.canonical_revision);
            labels.source_workload_namespace = or_unknown(&w.namespace);
            labels.source_principal = principal(w);
            labels.source_app = or_unknown(&w.canonical_name);
            labels.source_version = or_unknown(&w.canonical_revision);
            labels.source_cluster = or_unknown(&w.cluster_id);
        }
        if let Some(w) = destination {
            labels.destination_workload = or_unknown(&w.workload_name);
            labels.destination_canonical_service = or_unknown(&w.canonical_name);
            labels.destination_canonical_revision = or_unknown(&w.canonical_revision);
            labels.destination_workload_namespace = or_unknown(&w.namespace);
            labels.destination_principal = principal(w);
            labels.destination_app = or_unknown(&w.canonical_name);
            labels.destination_version = or_unknown(&w.canonical_revision);
            labels.destination_cluster = or_unknown(&w.cluster_id);
        }
        if let Some(s) = destination_service {
            labels.destination_service = or_unknown(&s.hostname);
            labels.destination_service_namespace = or_unknown(&s.namespace);
            labels.destination_service_name = or_unknown(&s.name);
        }
        labels
    }
}

fn principal(workload: &Workload) -> String {
    workload
        .identity()
        .map_or_else(|_| UNKNOWN.to_string(), |id| id.to_string())
}

/// Label sets kept resolved at most; past it the cache starts over (entries of workloads that
/// were replaced by a config update are never hit again).
const CACHED_LABEL_SETS: usize = 4096;

/// Which workloads and service a connection is between, by identity of the store's records (the
/// cached entry holds them, so an address cannot be reused while it is a key).
type LabelKey = (&'static str, &'static str, usize, usize, usize);

/// The store records a cached label set was built from (source, destination, service).
type LabelRecords = (
    Option<Arc<Workload>>,
    Option<Arc<Workload>>,
    Option<Arc<Service>>,
);

/// One resolved label set and its counters.
#[derive(Debug)]
struct LabelCounters {
    labels: ConnectionLabels,
    opened: Counter,
    /// Resolved on the first close, so that no closed count shows before a connection ended.
    closed: std::sync::OnceLock<Counter>,
    sent: Counter,
    received: Counter,
    _records: LabelRecords,
}

/// The agent's metric families.
#[derive(Debug, Default)]
pub struct Metrics {
    opened: Family<ConnectionLabels, Counter>,
    closed: Family<ConnectionLabels, Counter>,
    sent: Family<ConnectionLabels, Counter>,
    received: Family<ConnectionLabels, Counter>,
    resolved: Mutex<HashMap<LabelKey, Arc<LabelCounters>, foldhash::fast::RandomState>>,
}

impl Metrics {
    /// Registers Istio's `istio_tcp_*` families (the `_total` suffix is added on export).
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

    /// Counts the connection as opened and returns its record.
    pub fn connection_opened(&self, labels: ConnectionLabels) -> ConnectionGuard {
        let counters = self.resolve(labels, (None, None, None));
        self.guard(Arc::new(counters))
    }

    /// [`Self::connection_opened`] with the labels of [`ConnectionLabels::from_workloads`],
    /// resolved once per distinct (reporter, source, destination, service, security).
    pub fn connection_opened_between(
        &self,
        reporter: &'static str,
        source: Option<&Arc<Workload>>,
        destination: Option<&Arc<Workload>>,
        destination_service: Option<&Arc<Service>>,
        security_policy: &'static str,
    ) -> ConnectionGuard {
        let address = |p: Option<*const ()>| p.map_or(0, |p| p as usize);
        let key = (
            reporter,
            security_policy,
            address(source.map(|w| Arc::as_ptr(w).cast())),
            address(destination.map(|w| Arc::as_ptr(w).cast())),
            address(destination_service.map(|s| Arc::as_ptr(s).cast())),
        );
        let cached = self.lock_resolved().get(&key).cloned();
        let counters = match cached {
            Some(counters) => counters,
            None => {
                let labels = ConnectionLabels::from_workloads(
                    reporter,
                    source.map(Arc::as_ref),
                    destination.map(Arc::as_ref),
                    destination_service.map(Arc::as_ref),
                    security_policy,
                );
                let records = (
                    source.cloned(),
                    destination.cloned(),
                    destination_service.cloned(),
                );
                let counters = Arc::new(self.resolve(labels, records));
                let mut resolved = self.lock_resolved();
                if resolved.len() >= CACHED_LABEL_SETS {
                    resolved.clear();
                }
                resolved.insert(key, counters.clone());
                counters
            }
        };
        self.guard(counters)
    }

    fn lock_resolved(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<LabelKey, Arc<LabelCounters>, foldhash::fast::RandomState>>
    {
        // Entries are inserted whole; a panic elsewhere cannot leave one half-written.
        self.resolved.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn resolve(&self, labels: ConnectionLabels, records: LabelRecords) -> LabelCounters {
        // Counters share their atomic with the family: cloned once here, they count bytes live
        // (a long connection shows up before it ends) without a lock per write.
        LabelCounters {
            opened: self.opened.get_or_create(&labels).clone(),
            closed: std::sync::OnceLock::new(),
            sent: self.sent.get_or_create(&labels).clone(),
            received: self.received.get_or_create(&labels).clone(),
            labels,
            _records: records,
        }
    }

    fn guard(&self, counters: Arc<LabelCounters>) -> ConnectionGuard {
        counters.opened.inc();
        ConnectionGuard {
            counters,
            closed: self.closed.clone(),
            response_flags: None,
            bytes: Arc::default(),
            started: Instant::now(),
            source: None,
            destination: None,
            error: None,
        }
    }
}

/// One connection's record. Bytes go to the families' counters as they flow (atomics, no lock)
/// and to the connection's own totals for its access-log event.
#[derive(Debug)]
pub struct ConnectionGuard {
    counters: Arc<LabelCounters>,
    closed: Family<ConnectionLabels, Counter>,
    /// The labels with the response flags the connection closes with, once they are not `-`.
    response_flags: Option<ConnectionLabels>,
    bytes: Arc<[AtomicU64; 2]>,
    started: Instant,
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
    error: Option<String>,
}

impl ConnectionGuard {
    /// Bytes sent toward the client (the response direction).
    pub fn add_sent(&self, bytes: u64) {
        self.bytes[0].fetch_add(bytes, Ordering::Relaxed);
        self.counters.sent.inc_by(bytes);
    }

    /// Bytes received from the client (the request direction).
    pub fn add_received(&self, bytes: u64) {
        self.bytes[1].fetch_add(bytes, Ordering::Relaxed);
        self.counters.received.inc_by(bytes);
    }

    /// The `response_flags` the connection closes with (`-` when it ends well).
    pub fn set_response_flags(&mut self, flags: &str) {
        let labels = self
            .response_flags
            .get_or_insert_with(|| self.counters.labels.clone());
        flags.clone_into(&mut labels.response_flags);
    }

    /// The client's socket address as the agent saw it, for the access log.
    pub fn set_source(&mut self, address: SocketAddr) {
        self.source = Some(address);
    }

    /// The destination's socket address (the original destination), for the access log.
    pub fn set_destination(&mut self, address: SocketAddr) {
        self.destination = Some(address);
    }

    /// Why the connection failed, for the access log.
    pub fn set_error(&mut self, error: impl std::fmt::Display) {
        self.error = Some(error.to_string());
    }

    pub fn labels(&self) -> &ConnectionLabels {
        self.response_flags
            .as_ref()
            .unwrap_or(&self.counters.labels)
    }
}

/// A socket address in the access log, `unknown` when the agent never learned it.
struct LoggedAddress(Option<SocketAddr>);

impl std::fmt::Display for LoggedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(address) => address.fmt(f),
            None => f.write_str(UNKNOWN),
        }
    }
}

/// `outbound` for what the source's agent reports, `inbound` for the destination's.
fn direction(reporter: &str) -> &str {
    match reporter {
        "source" => "outbound",
        "destination" => "inbound",
        other => other,
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let sent = self.bytes[0].load(Ordering::Relaxed);
        let received = self.bytes[1].load(Ordering::Relaxed);
        match &self.response_flags {
            None => self
                .counters
                .closed
                .get_or_init(|| self.closed.get_or_create(&self.counters.labels).clone())
                .inc(),
            Some(labels) => self.closed.get_or_create(labels).inc(),
        };
        let l = self.labels();
        tracing::info!(
            target: "access",
            src = %LoggedAddress(self.source),
            dst = %LoggedAddress(self.destination),
            direction = direction(&l.reporter),
            src_workload = %l.source_workload,
            src_namespace = %l.source_workload_namespace,
            src_identity = %l.source_principal,
            dst_workload = %l.destination_workload,
            dst_namespace = %l.destination_workload_namespace,
            dst_identity = %l.destination_principal,
            dst_service = %l.destination_service,
            security = %l.connection_security_policy,
            response_flags = %l.response_flags,
            bytes_sent = sent,
            bytes_received = received,
            duration_ms = self.started.elapsed().as_millis() as u64,
            error = self.error.as_deref(),
            "connection complete"
        );
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn a_connection_is_counted_with_every_label_and_its_bytes() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let mut guard = metrics.connection_opened(ConnectionLabels {
            reporter: "destination".into(),
            source_principal: "spiffe://cluster.local/ns/a/sa/b".into(),
            ..ConnectionLabels::default()
        });
        guard.add_sent(300);
        guard.add_received(20);
        guard.add_received(22);
        guard.set_response_flags("DENY");
        drop(guard);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for expected in [
            "istio_tcp_connections_opened_total{reporter=\"destination\"",
            "istio_tcp_connections_closed_total{reporter=\"destination\"",
            "response_flags=\"DENY\"",
            "source_principal=\"spiffe://cluster.local/ns/a/sa/b\"",
            "destination_workload=\"unknown\"",
            "connection_security_policy=\"unknown\"",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        let received = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_received_bytes_total{"))
            .unwrap();
        assert!(received.ends_with(" 42"), "{received}");
        let sent = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_sent_bytes_total{"))
            .unwrap();
        assert!(sent.ends_with(" 300"), "{sent}");
    }

    fn line(text: &str, prefix: &str) -> String {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .to_string()
    }

    #[test]
    fn bytes_are_visible_while_the_connection_is_open() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let guard = metrics.connection_opened(ConnectionLabels {
            reporter: "source".into(),
            ..ConnectionLabels::default()
        });
        guard.add_received(1000);
        guard.add_sent(7);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(line(&text, "istio_tcp_received_bytes_total{").ends_with(" 1000"));
        assert!(line(&text, "istio_tcp_sent_bytes_total{").ends_with(" 7"));
        assert!(
            !text.contains("istio_tcp_connections_closed_total{"),
            "{text}"
        );
        drop(guard);
        text.clear();
        encode(&mut text, &registry).unwrap();
        assert!(line(&text, "istio_tcp_connections_closed_total{").ends_with(" 1"));
        // Counted once: closing does not add the bytes again.
        assert!(line(&text, "istio_tcp_received_bytes_total{").ends_with(" 1000"));
    }

    fn workload(name: &str) -> Arc<Workload> {
        Arc::new(Workload {
            uid: format!("uid-{name}"),
            name: name.into(),
            namespace: "shop".into(),
            addresses: vec![],
            trust_domain: "cluster.local".into(),
            service_account: name.into(),
            node: "node1".into(),
            tunnel: crate::state::TunnelProtocol::Hbone,
            waypoint: None,
            canonical_name: name.into(),
            canonical_revision: "v1".into(),
            workload_name: name.into(),
            cluster_id: "Kubernetes".into(),
            healthy: true,
            services: Default::default(),
            authorization_policies: vec![],
        })
    }

    #[test]
    fn connections_between_the_same_records_share_one_label_set() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let (client, server) = (workload("client"), workload("server"));
        for _ in 0..3 {
            let guard = metrics.connection_opened_between(
                "source",
                Some(&client),
                Some(&server),
                None,
                "mutual_tls",
            );
            guard.add_received(10);
        }
        assert_eq!(metrics.lock_resolved().len(), 1);
        // A config update replaces the record: its new labels are used, not the cached ones.
        let renamed = Arc::new(Workload {
            workload_name: "server-v2".into(),
            ..(*server).clone()
        });
        let mut failed = metrics.connection_opened_between(
            "source",
            Some(&client),
            Some(&renamed),
            None,
            "mutual_tls",
        );
        failed.set_response_flags("CONNECT");
        assert_eq!(failed.labels().destination_workload, "server-v2");
        drop(failed);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        let count = |prefix: &str, needle: &str| {
            text.lines()
                .filter(|l| l.starts_with(prefix) && l.contains(needle))
                .map(|l| l.rsplit(' ').next().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let server_labels = "destination_workload=\"server\"";
        assert_eq!(
            count("istio_tcp_connections_opened_total{", server_labels),
            ["3"]
        );
        assert_eq!(
            count("istio_tcp_connections_closed_total{", server_labels),
            ["3"]
        );
        assert_eq!(
            count("istio_tcp_received_bytes_total{", server_labels),
            ["30"]
        );
        // Opened with the labels it started with, closed with the flags it ended with.
        let renamed_labels = "destination_workload=\"server-v2\"";
        let opened = count("istio_tcp_connections_opened_total{", renamed_labels);
        assert_eq!(opened, ["1"]);
        let closed: Vec<_> = text
            .lines()
            .filter(|l| {
                l.starts_with("istio_tcp_connections_closed_total{") && l.contains(renamed_labels)
            })
            .collect();
        assert_eq!(closed.len(), 1, "{text}");
        assert!(closed[0].contains("response_flags=\"CONNECT\""), "{text}");
    }

    /// Collects what a fmt subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn one_access_log_event_per_connection_with_its_details() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        tracing::subscriber::with_default(subscriber, || {
            let mut guard = metrics.connection_opened(ConnectionLabels {
                reporter: "destination".into(),
                source_principal: "spiffe://cluster.local/ns/a/sa/client".into(),
                destination_principal: "spiffe://cluster.local/ns/b/sa/server".into(),
                ..ConnectionLabels::default()
            });
            guard.set_source("10.0.0.1:40000".parse().unwrap());
            guard.set_destination("10.0.0.2:8080".parse().unwrap());
            guard.add_sent(5);
            guard.add_received(9);
            guard.set_response_flags("DENY");
            guard.set_error("denied by shop/deny-all");
            drop(guard);
        });
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.lines().count(), 1, "{log}");
        for expected in [
            "access:",
            "src=10.0.0.1:40000",
            "dst=10.0.0.2:8080",
            "direction=\"inbound\"",
            "src_identity=spiffe://cluster.local/ns/a/sa/client",
            "dst_identity=spiffe://cluster.local/ns/b/sa/server",
            "bytes_sent=5",
            "bytes_received=9",
            "duration_ms=",
            "response_flags=DENY",
            "error=\"denied by shop/deny-all\"",
            "connection complete",
        ] {
            assert!(log.contains(expected), "missing {expected} in {log}");
        }
    }
}
