//! ztunnel's DNS metrics (`src/dns/metrics.rs`), with its names and labels:
//! `istio_dns_requests_total` (every query: answered, forwarded, or refused for an unknown
//! pod), `istio_dns_upstream_requests_total` and `istio_dns_upstream_failures_total` (queries
//! forwarded, and those that got no answer), `istio_dns_upstream_request_duration_seconds`
//! (the time upstream took, failures included), each labelled by query type and protocol
//! (lower case: `a`, `udp`) and the source's canonical service and revision (`unknown` when
//! the pod is not known yet).

use std::time::Duration;

use hickory_proto::op::Message;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::state::Workload;

/// ztunnel's buckets, in seconds.
const DURATION_BUCKETS: [f64; 6] = [0.001, 0.005, 0.01, 0.1, 1.0, 5.0];

/// The labels of every DNS family.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    pub request_query_type: String,
    pub request_protocol: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
}

/// How a query reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Udp,
    Tcp,
}

impl DnsLabels {
    /// The labels of `query` (its first question's type; `unknown` if it has none) from
    /// `source` over `protocol`.
    pub fn of(query: &[u8], protocol: Protocol, source: Option<&Workload>) -> Self {
        let request_query_type = Message::from_vec(query)
            .ok()
            .and_then(|m| m.queries.first().map(|q| q.query_type().to_string()))
            .map_or_else(|| "unknown".to_owned(), |t| t.to_lowercase());
        let known = |value: Option<&String>| {
            value
                .filter(|v| !v.is_empty())
                .map_or_else(|| "unknown".to_owned(), Clone::clone)
        };
        Self {
            request_query_type,
            request_protocol: match protocol {
                Protocol::Udp => "udp",
                Protocol::Tcp => "tcp",
            }
            .to_owned(),
            source_canonical_service: known(source.map(|w| &w.canonical_name)),
            source_canonical_revision: known(source.map(|w| &w.canonical_revision)),
        }
    }
}

/// The DNS families, registered on the agent's metrics endpoint.
#[derive(Debug)]
pub struct DnsMetrics {
    requests: Family<DnsLabels, Counter>,
    upstream_requests: Family<DnsLabels, Counter>,
    upstream_failures: Family<DnsLabels, Counter>,
    upstream_duration: Family<DnsLabels, Histogram>,
}

impl DnsMetrics {
    /// Registers the families under `istio_` (the `_total` and unit suffixes are added on
    /// export).
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            upstream_requests: Family::default(),
            upstream_failures: Family::default(),
            upstream_duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
        };
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register(
            "dns_requests",
            "Total number of DNS requests",
            metrics.requests.clone(),
        );
        istio.register(
            "dns_upstream_requests",
            "Total number of DNS requests forwarded to upstream",
            metrics.upstream_requests.clone(),
        );
        istio.register(
            "dns_upstream_failures",
            "Total number of DNS requests that failed to forward upstream",
            metrics.upstream_failures.clone(),
        );
        istio.register_with_unit(
            "dns_upstream_request_duration",
            "Total time in seconds Istio takes to get DNS response from upstream",
            Unit::Seconds,
            metrics.upstream_duration.clone(),
        );
        metrics
    }

    /// Counts a query received.
    pub fn request(&self, labels: &DnsLabels) {
        self.requests.get_or_create(labels).inc();
    }

    /// Counts a query forwarded upstream that took `elapsed`, and whether it got an answer.
    pub fn forwarded(&self, labels: &DnsLabels, elapsed: Duration, answered: bool) {
        self.upstream_requests.get_or_create(labels).inc();
        self.upstream_duration
            .get_or_create(labels)
            .observe(elapsed.as_secs_f64());
        if !answered {
            self.upstream_failures.get_or_create(labels).inc();
        }
    }
}
