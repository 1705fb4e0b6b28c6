//! Istio's request metrics (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`) and, for what is forwarded at L4, its TCP
//! metrics (`istio_tcp_*`, the families and the per-connection record of `weft_proxy_core`),
//! with Istio's one label set, reported as `reporter="waypoint"`, and the access-log lines in
//! Istio's default text format. One [`RequestRecord`] per request records both when it is
//! dropped, that is when the response body has been sent or the client went away; one
//! [`ConnectionRecord`] per TCP connection counts its bytes as they flow and closes it when
//! dropped. Telemetry's metric overrides change the request and TCP metrics' series
//! ([`overrides`]).

mod overrides;
mod record_text;
mod tcp;

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::access_log::{AccessLogs, Captured};

use http::HeaderValue;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing::info;
pub use weft_proxy_core::metrics::{
    ACCESS_LOG, PEER_LABEL_VALUES, PeerLabels, Reporter, RequestLabels, RequestProtocol,
    ResponseFlag, ResponseFlags, SecurityPolicy, TcpLabels, UNKNOWN,
};
use weft_proxy_core::metrics::{LogText, Peer as PeerView, Service as ServiceView, TcpMetrics};

use crate::model::{ServiceName, WorkloadInfo};

pub(crate) use overrides::metric_overrides;
pub use overrides::{MetricOverrides, RequestMetric, RequestSeries};
pub use record_text::RecordText;
pub use tcp::{ConnectionInfo, ConnectionRecord, TcpAccessLog};

/// Istio's buckets for `istio_request_duration_milliseconds`.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's buckets for the byte-size histograms: powers of ten up to 1 GB.
pub const BYTES_BUCKETS: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

#[derive(Clone)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// Most label sets [`Metrics`] keeps resolved; past it the cache starts again empty.
const CACHED_LABEL_SETS: usize = 4096;

/// The waypoint's request and connection metrics.
pub struct Metrics {
    requests: Family<RequestSeries, Counter>,
    duration: Family<RequestSeries, Histogram, Buckets>,
    request_bytes: Family<RequestSeries, Histogram, Buckets>,
    response_bytes: Family<RequestSeries, Histogram, Buckets>,
    tcp: TcpMetrics,
    /// Connections a gateway port closed at accept because it held its cap of open ones.
    over_listener_cap: Family<GatewayPortLabels, Counter>,
    /// The four request metrics of each label set seen, by the hash of its values: a request
    /// whose labels were seen before counts without building (allocating) its label set or
    /// looking it up in each family.
    resolved: Mutex<HashMap<u64, Arc<RequestCounters>, foldhash::fast::RandomState>>,
    /// The label sets Telemetry overrides made (requests' and connections'), bounded.
    overridden: Arc<overrides::OverriddenSeries>,
    hasher: foldhash::fast::RandomState,
}

/// The gateway port a connection arrived on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
pub struct GatewayPortLabels {
    pub port: u16,
}

/// One label set's request metrics, shared with their families.
struct RequestCounters {
    labels: RequestLabels,
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates the metrics and registers them (names without the `_total` suffix, which the
    /// encoder adds to counters).
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(Buckets(&DURATION_BUCKETS_MS)),
            request_bytes: Family::new_with_constructor(Buckets(&BYTES_BUCKETS)),
            response_bytes: Family::new_with_constructor(Buckets(&BYTES_BUCKETS)),
            tcp: TcpMetrics::new(registry),
            over_listener_cap: Family::default(),
            resolved: Mutex::default(),
            overridden: Arc::default(),
            hasher: foldhash::fast::RandomState::default(),
        };
        registry.register(
            "istio_requests",
            "Requests handled",
            metrics.requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration",
            metrics.duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body sizes",
            metrics.request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes",
            metrics.response_bytes.clone(),
        );
        registry.register(
            "weft_gateway_connections_over_limit",
            "Connections a gateway port closed at accept: it held its cap of open connections",
            metrics.over_listener_cap.clone(),
        );
        metrics
    }

    /// Counts a connection `port` closed at accept, over its cap.
    pub fn connection_over_listener_cap(&self, port: u16) {
        self.over_listener_cap
            .get_or_create(&GatewayPortLabels { port })
            .inc();
    }

    /// Count of requests with exactly these labels (for tests and the admin page).
    pub fn requests_with(&self, labels: &RequestLabels) -> u64 {
        self.requests
            .get_or_create(&RequestSeries::Standard(labels.clone()))
            .get()
    }

    /// Records a request under Telemetry's `overrides`: each metric not disabled, in the
    /// series the overrides make of its labels. Uncached: every such request builds its label
    /// sets.
    fn record_overridden(&self, record: &RequestRecord, overrides: &MetricOverrides) {
        let labels = record.labels();
        let elapsed_ms = record.start.elapsed().as_secs_f64() * 1000.0;
        for metric in RequestMetric::ALL {
            if overrides.disabled(metric) {
                continue;
            }
            let mut series = overrides.series(metric, &labels, record, false);
            if !self.overridden.admit(&series) {
                series = overrides.series(metric, &labels, record, true);
            }
            match metric {
                RequestMetric::Count => {
                    self.requests.get_or_create(&series).inc();
                }
                RequestMetric::Duration => self.duration.get_or_create(&series).observe(elapsed_ms),
                RequestMetric::RequestSize => self
                    .request_bytes
                    .get_or_create(&series)
                    .observe(record.bytes_received as f64),
                RequestMetric::ResponseSize => self
                    .response_bytes
                    .get_or_create(&series)
                    .observe(record.bytes_sent as f64),
            };
        }
    }

    /// The metrics of the label set `view` describes: resolved once per distinct label set
    /// (the counters and histograms share their state with the families).
    fn counters(&self, view: &LabelsView<'_>) -> Arc<RequestCounters> {
        let hash = self.hasher.hash_one(view);
        let mut resolved = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        match resolved.get(&hash) {
            Some(counters) if view.matches(&counters.labels) => Arc::clone(counters),
            // Two label sets with one hash (never seen in practice): the second is resolved
            // each time, uncached.
            Some(_) => {
                drop(resolved);
                Arc::new(self.resolve(view.labels()))
            }
            None => {
                if resolved.len() >= CACHED_LABEL_SETS {
                    resolved.clear();
                }
                let counters = Arc::new(self.resolve(view.labels()));
                resolved.insert(hash, Arc::clone(&counters));
                counters
            }
        }
    }

    fn resolve(&self, labels: RequestLabels) -> RequestCounters {
        let series = RequestSeries::Standard(labels.clone());
        RequestCounters {
            requests: self.requests.get_or_create(&series).clone(),
            duration: self.duration.get_or_create(&series).clone(),
            request_bytes: self.request_bytes.get_or_create(&series).clone(),
            response_bytes: self.response_bytes.get_or_create(&series).clone(),
            labels,
        }
    }
}

/// A request's label values, borrowed from its record: what is hashed and compared to find
/// its label set among those already resolved.
#[derive(Hash)]
struct LabelsView<'a> {
    reporter: Reporter,
    peers: [&'a str; PEER_LABEL_VALUES],
    request_protocol: RequestProtocol,
    response_code: u16,
    grpc_response_status: &'a str,
    response_flags: ResponseFlags,
    connection_security_policy: SecurityPolicy,
}

impl LabelsView<'_> {
    fn labels(&self) -> RequestLabels {
        RequestLabels {
            peers: PeerLabels::from_values(self.reporter, self.peers),
            request_protocol: self.request_protocol,
            response_code: self.response_code,
            grpc_response_status: self.grpc_response_status.to_owned(),
            response_flags: self.response_flags,
            connection_security_policy: self.connection_security_policy,
        }
    }

    fn matches(&self, labels: &RequestLabels) -> bool {
        self.reporter == labels.peers.reporter
            && self.peers == labels.peers.values()
            && self.request_protocol == labels.request_protocol
            && self.response_code == labels.response_code
            && self.grpc_response_status == labels.grpc_response_status
            && self.response_flags == labels.response_flags
            && self.connection_security_policy == labels.connection_security_policy
    }
}

/// One side (source or destination) of a request, for labels and logs.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub workload: Option<Arc<WorkloadInfo>>,
    /// `spiffe://...` of the peer.
    pub principal: Option<RecordText>,
    pub namespace: Option<RecordText>,
}

impl Peer {
    /// The peer as Istio's labels name it at a waypoint: its workload name as the controller
    /// computed it (the Deployment's, not the `app` label), `app` and `version` from its labels,
    /// its canonical service, `latest` without a revision.
    fn view(&self) -> PeerView<'_> {
        let workload = self.workload.as_deref();
        let canonical = workload.and_then(WorkloadInfo::canonical_service);
        let label = |name: &str| {
            workload
                .and_then(|w| w.labels.get(name).map(String::as_str))
                .unwrap_or_default()
        };
        PeerView {
            workload: workload.map(|w| w.name.as_str()).unwrap_or_default(),
            namespace: self.namespace.as_deref().unwrap_or_default(),
            principal: self.principal.as_deref().unwrap_or_default(),
            app: label("app"),
            version: label("version"),
            canonical_service: canonical.unwrap_or_default(),
            canonical_revision: workload
                .and_then(WorkloadInfo::canonical_revision)
                .unwrap_or("latest"),
            cluster: weft_istio::defaults::DEFAULT_CLUSTER_ID,
        }
    }
}

/// Who reports: a gateway is the source of what it sends into the mesh (Istio's gateways
/// report `reporter="source"`).
fn reporter(at_edge: bool) -> Reporter {
    if at_edge {
        Reporter::Source
    } else {
        Reporter::Waypoint
    }
}

fn service_view(service: Option<&ServiceName>) -> ServiceView<'_> {
    service.map_or_else(ServiceView::default, |service| ServiceView {
        hostname: &service.hostname,
        name: &service.name,
        namespace: &service.namespace,
    })
}

/// The waypoint's report of what went from `source` to `destination`, addressed to `service`
/// (hostname, name, namespace) when it is known.
fn peer_labels(
    at_edge: bool,
    source: &Peer,
    destination: &Peer,
    service: Option<&ServiceName>,
) -> PeerLabels {
    PeerLabels::new(
        reporter(at_edge),
        &source.view(),
        &destination.view(),
        &service_view(service),
    )
}

fn security(mtls: bool) -> SecurityPolicy {
    if mtls {
        SecurityPolicy::MutualTls
    } else {
        SecurityPolicy::None
    }
}

/// Everything the access log and the metrics say about one request; emitted on drop. What it
/// holds is shared with the request and the configuration (one `Arc` or buffer reference
/// each), not copied: a request is recorded without a string allocation of its own.
pub struct RequestRecord {
    metrics: Arc<Metrics>,
    start: Instant,
    start_time: SystemTime,
    pub method: http::Method,
    /// The path as it arrived, with its query.
    pub path: RecordText,
    pub protocol: &'static str,
    pub authority: RecordText,
    pub request_id: RecordText,
    pub user_agent: RecordText,
    pub forwarded_for: RecordText,
    pub source: Peer,
    pub destination: Peer,
    pub destination_service: Option<Arc<ServiceName>>,
    pub status: u16,
    pub grpc_status: Option<String>,
    /// Why the request did not end well: every flag set while it was handled, as Envoy's
    /// stream info keeps them (an injected delay and the timeout that followed: `UT,DI`).
    pub response_flags: ResponseFlags,
    pub response_code_details: Cow<'static, str>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<RecordText>,
    pub route_name: Option<RecordText>,
    /// The span's name: the matched route's operation, or the one the request named
    /// (`x-envoy-decorator-operation`, at a waypoint).
    pub operation: Option<RecordText>,
    pub downstream_local: Option<SocketAddr>,
    pub downstream_remote: Option<SocketAddr>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub mtls: bool,
    /// Accepted by a gateway listener: reported as the source.
    pub at_edge: bool,
    /// The request's span, when tracing is configured; sent with the record.
    pub span: Option<crate::telemetry::RequestSpan>,
    /// Telemetry turned the access log off: no line is written.
    pub access_log_disabled: bool,
    /// The access logs Telemetry selects, when not the default line, and what the request's
    /// and response's headers hold for them.
    pub access_logs: Option<(Arc<AccessLogs>, Captured)>,
    /// Telemetry's metric overrides in force for the request, if any.
    pub metric_overrides: Option<Arc<MetricOverrides>>,
    /// The request headers the overrides' tags read ([`MetricOverrides::capture`]).
    pub metric_headers: Vec<Option<HeaderValue>>,
}

impl std::fmt::Debug for RequestRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestRecord")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl RequestRecord {
    /// When the request began: its head had arrived.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// The flags the metrics, the access log and the span say (`%RESPONSE_FLAGS%`).
    pub fn flags(&self) -> ResponseFlags {
        self.response_flags
    }

    pub fn new(metrics: Arc<Metrics>) -> Self {
        RequestRecord {
            metrics,
            start: Instant::now(),
            start_time: SystemTime::now(),
            method: http::Method::GET,
            path: RecordText::Empty,
            protocol: "HTTP/1.1",
            authority: RecordText::Empty,
            request_id: RecordText::Empty,
            user_agent: RecordText::Empty,
            forwarded_for: RecordText::Empty,
            source: Peer::default(),
            destination: Peer::default(),
            destination_service: None,
            status: 0,
            grpc_status: None,
            response_flags: ResponseFlags::NONE,
            response_code_details: Cow::Borrowed("-"),
            upstream_host: None,
            upstream_cluster: None,
            route_name: None,
            operation: None,
            downstream_local: None,
            downstream_remote: None,
            bytes_received: 0,
            bytes_sent: 0,
            mtls: false,
            at_edge: false,
            span: None,
            access_log_disabled: false,
            access_logs: None,
            metric_overrides: None,
            metric_headers: Vec::new(),
        }
    }

    /// Writes the request's lines to `logs` instead of the default line, keeping what they
    /// read of the request's `headers`.
    pub fn set_access_logs(&mut self, logs: &Arc<AccessLogs>, headers: &http::HeaderMap) {
        let captured = logs.capture_request(headers);
        self.access_logs = Some((Arc::clone(logs), captured));
    }

    /// Keeps what the access logs and the span's formatter tags read of the response's
    /// `headers`.
    pub fn capture_response_headers(&mut self, headers: &http::HeaderMap) {
        if let Some((logs, captured)) = &mut self.access_logs {
            logs.capture_response(captured, headers);
        }
        if let Some(span) = &mut self.span {
            span.capture_response(headers);
        }
    }

    /// Keeps what the access logs read of the response's `trailers`.
    pub fn capture_response_trailers(&mut self, trailers: &http::HeaderMap) {
        if let Some((logs, captured)) = &mut self.access_logs {
            logs.capture_trailers(captured, trailers);
        }
    }

    /// When the request began, on the wall clock.
    pub(crate) fn start_time(&self) -> SystemTime {
        self.start_time
    }

    /// `%START_TIME%`: when the request began, as Envoy writes it.
    pub(crate) fn start_time_text(&self) -> impl std::fmt::Display + use<> {
        UtcTime(self.start_time)
    }

    /// Records the request under Telemetry's `overrides`, with the request `headers` they
    /// read as they are now.
    pub fn set_metric_overrides(
        &mut self,
        overrides: &Arc<MetricOverrides>,
        headers: &http::HeaderMap,
    ) {
        self.metric_headers = overrides.capture(headers);
        self.metric_overrides = Some(Arc::clone(overrides));
    }

    /// The request headers the metric overrides read, taken again from `headers` (the
    /// request as it is forwarded, after the route's header operations).
    pub fn recapture_metric_headers(&mut self, headers: &http::HeaderMap) {
        if let Some(overrides) = &self.metric_overrides {
            self.metric_headers = overrides.capture(headers);
        }
    }

    /// Istio's label set for this request.
    pub fn labels(&self) -> RequestLabels {
        let (source, destination) = (self.source.view(), self.destination.view());
        self.labels_view(&source, &destination).labels()
    }

    fn labels_view<'a>(
        &'a self,
        source: &PeerView<'a>,
        destination: &PeerView<'a>,
    ) -> LabelsView<'a> {
        let service = service_view(self.destination_service.as_deref());
        LabelsView {
            reporter: reporter(self.at_edge),
            peers: PeerLabels::values_of(source, destination, &service),
            request_protocol: if self.grpc_status.is_some() {
                RequestProtocol::Grpc
            } else {
                RequestProtocol::Http
            },
            response_code: self.status,
            grpc_response_status: self.grpc_status.as_deref().unwrap_or_default(),
            response_flags: self.flags(),
            connection_security_policy: security(self.mtls),
        }
    }

    /// The access-log line, in the field order of Istio's default text format.
    pub fn access_log_line(&self) -> String {
        AccessLogLine(self).to_string()
    }
}

/// A request's access-log line, written straight into the log's buffer.
struct AccessLogLine<'a>(&'a RequestRecord);

impl std::fmt::Display for AccessLogLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn quoted(v: &str) -> LogText<'_> {
            LogText(if v.is_empty() { "-" } else { v })
        }
        let record = self.0;
        write!(
            f,
            "[{}] \"{} {} {}\" {} {} {} - \"-\" {} {} {} - \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} - {} {} - {}",
            UtcTime(record.start_time),
            LogText(record.method.as_str()),
            LogText(&record.path),
            record.protocol,
            record.status,
            record.flags(),
            LogText(&record.response_code_details),
            record.bytes_received,
            record.bytes_sent,
            record.start.elapsed().as_millis(),
            quoted(&record.forwarded_for),
            quoted(&record.user_agent),
            quoted(&record.request_id),
            quoted(&record.authority),
            OrDash(record.upstream_host.as_ref()),
            LogText(record.upstream_cluster.as_deref().unwrap_or("-")),
            OrDash(record.downstream_local.as_ref()),
            OrDash(record.downstream_remote.as_ref()),
            LogText(record.route_name.as_deref().unwrap_or("default")),
        )
    }
}

/// A value the access log writes as `-` when it is absent.
struct OrDash<'a, T>(Option<&'a T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// `2024-01-01T00:00:00.000Z`, as Envoy's `%START_TIME%`.
pub(crate) fn humantime_utc(time: SystemTime) -> String {
    UtcTime(time).to_string()
}

/// A time as [`humantime_utc`] writes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UtcTime(pub(crate) SystemTime);

impl std::fmt::Display for UtcTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = self
            .0
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = since.as_secs();
        let millis = since.subsec_millis();
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
        // Civil date from days since the epoch (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z"
        )
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        // The line is written before the request is counted: a request in the metrics has
        // its line written already, which is what a reader of both may wait on.
        if !self.access_log_disabled {
            match &self.access_logs {
                None => info!(target: ACCESS_LOG, "{}", AccessLogLine(self)),
                Some((logs, captured)) => logs.write(&crate::access_log::RequestEntry {
                    headers: logs.headers(),
                    captured,
                    record: self,
                }),
            }
        }
        if let Some(overrides) = self.metric_overrides.take() {
            self.metrics.record_overridden(self, &overrides);
        } else {
            let (source, destination) = (self.source.view(), self.destination.view());
            let counters = self
                .metrics
                .counters(&self.labels_view(&source, &destination));
            let elapsed_ms = self.start.elapsed().as_secs_f64() * 1000.0;
            counters.requests.inc();
            counters.duration.observe(elapsed_ms);
            counters.request_bytes.observe(self.bytes_received as f64);
            counters.response_bytes.observe(self.bytes_sent as f64);
        }
        if let Some(span) = self.span.take() {
            span.finish(self);
        }
    }
}

#[cfg(test)]
mod tests;
