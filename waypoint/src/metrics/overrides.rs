//! Telemetry's `metrics[].overrides` for the request and TCP metrics, as Istio's stats filter
//! applies them: a metric `disabled` is not recorded; a tag removed is absent from that
//! metric's series; a tag upserted replaces a standard label's value or adds a label, its value
//! computed per request (per connection for a TCP metric) from the sources the controller
//! parsed out of the CEL expression (the first with a value gives it; none: `unknown`). The
//! controller sends only what differs from Istio's standard metrics, for the proxy's side; a
//! request records which overrides were in force when it arrived, with the request headers
//! they read, a connection those in force when it opened. A connection has no request: its
//! request headers and request and response attributes have no value, as in Envoy, where
//! they are absent from a TCP stream's attributes.
//!
//! Every series of one metric under one configuration has the same label names; the label
//! values a request brings (a header, its path) are bounded in length, and past
//! [`MAX_OVERRIDDEN_SERIES`] label sets every upserted value is `unknown`, so that no client
//! can grow the metrics without bound.

use std::borrow::Cow;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderName, HeaderValue};
use weft_proto::waypoint as proto;
use weft_proxy_core::metrics::{
    LabelPairs, RequestLabels, Series, TcpLabels, TcpMetric, TcpSeriesOverride, UNKNOWN,
    is_label_name,
};

use super::{ConnectionInfo, RequestRecord};
use crate::model::{ConfigError, invalid};

/// Label sets with overridden labels kept at most, across the request metrics.
pub(super) const MAX_OVERRIDDEN_SERIES: usize = 8192;
/// Longest label value taken from a request; longer ones are cut (at a character boundary).
const MAX_TAG_VALUE_BYTES: usize = 256;

/// Istio's request metrics, in the order [`MetricOverrides`] keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestMetric {
    /// `istio_requests_total` (`REQUEST_COUNT`).
    Count = 0,
    /// `istio_request_duration_milliseconds` (`REQUEST_DURATION`).
    Duration = 1,
    /// `istio_request_bytes` (`REQUEST_SIZE`).
    RequestSize = 2,
    /// `istio_response_bytes` (`RESPONSE_SIZE`).
    ResponseSize = 3,
}

impl RequestMetric {
    pub const ALL: [RequestMetric; 4] = [
        RequestMetric::Count,
        RequestMetric::Duration,
        RequestMetric::RequestSize,
        RequestMetric::ResponseSize,
    ];
}

/// The overrides in force for some traffic (`WaypointConfig.metric_overrides`, or a service's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricOverrides {
    metrics: [Option<MetricOverride>; 4],
    /// The TCP metrics', by [`TcpMetric`].
    tcp: [Option<MetricOverride>; 4],
    /// Every request header a tag reads, once: what a request keeps for its record.
    headers: Vec<HeaderName>,
}

#[derive(Debug, Clone, PartialEq)]
struct MetricOverride {
    disabled: bool,
    removed: Vec<String>,
    upserted: Vec<(String, Vec<Source>)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Source {
    Literal(String),
    Attribute(proto::RequestAttribute),
    /// Index into [`MetricOverrides::headers`].
    Header(usize),
}

/// A request metric's series: Istio's standard labels, or those an override made of them.
pub type RequestSeries = Series<RequestLabels>;

/// Checks and converts the overrides of `field` (`metric_overrides`, or a service's); `None`
/// when there are none.
pub(crate) fn metric_overrides(
    overrides: &[proto::MetricOverride],
    field: &str,
) -> Result<Option<std::sync::Arc<MetricOverrides>>, ConfigError> {
    if overrides.is_empty() {
        return Ok(None);
    }
    let mut converted = MetricOverrides::default();
    for (i, o) in overrides.iter().enumerate() {
        let path = format!("{field}[{i}]");
        use proto::RequestMetric as P;
        let slot = match P::try_from(o.metric) {
            Ok(P::RequestCount) => &mut converted.metrics[RequestMetric::Count as usize],
            Ok(P::RequestDuration) => &mut converted.metrics[RequestMetric::Duration as usize],
            Ok(P::RequestSize) => &mut converted.metrics[RequestMetric::RequestSize as usize],
            Ok(P::ResponseSize) => &mut converted.metrics[RequestMetric::ResponseSize as usize],
            Ok(P::TcpOpenedConnections) => &mut converted.tcp[TcpMetric::Opened as usize],
            Ok(P::TcpClosedConnections) => &mut converted.tcp[TcpMetric::Closed as usize],
            Ok(P::TcpSentBytes) => &mut converted.tcp[TcpMetric::Sent as usize],
            Ok(P::TcpReceivedBytes) => &mut converted.tcp[TcpMetric::Received as usize],
            Ok(P::Unspecified) | Err(_) => {
                return Err(invalid(
                    &format!("{path}.metric"),
                    format!("{} is not a request or TCP metric", o.metric),
                ));
            }
        };
        if slot.is_some() {
            return Err(invalid(&format!("{path}.metric"), "given twice"));
        }
        let mut upserted = Vec::new();
        for tag in &o.upserted_tags {
            let mut sources = Vec::new();
            for source in &tag.sources {
                use proto::metric_tag_source::Source as S;
                sources.push(match &source.source {
                    Some(S::Literal(text)) => Source::Literal(text.clone()),
                    Some(S::Attribute(a)) => Source::Attribute(
                        proto::RequestAttribute::try_from(*a)
                            .ok()
                            .filter(|a| *a != proto::RequestAttribute::Unspecified)
                            .ok_or_else(|| {
                                invalid(
                                    &format!("{path}.upserted_tags[{}]", tag.tag),
                                    format!("{a} is not a request attribute"),
                                )
                            })?,
                    ),
                    Some(S::RequestHeader(name)) => {
                        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                            invalid(
                                &format!("{path}.upserted_tags[{}]", tag.tag),
                                format!("{name:?} is not a header name"),
                            )
                        })?;
                        let at = match converted.headers.iter().position(|h| *h == name) {
                            Some(at) => at,
                            None => {
                                converted.headers.push(name);
                                converted.headers.len() - 1
                            }
                        };
                        Source::Header(at)
                    }
                    None => {
                        return Err(invalid(
                            &format!("{path}.upserted_tags[{}]", tag.tag),
                            "a source without a value",
                        ));
                    }
                });
            }
            upserted.push((tag.tag.clone(), sources));
        }
        for name in o.removed_tags.iter().chain(upserted.iter().map(|(n, _)| n)) {
            if !is_label_name(name) {
                return Err(invalid(
                    &path,
                    format!("{name:?} is not a Prometheus label name"),
                ));
            }
        }
        *slot = Some(MetricOverride {
            disabled: o.disabled,
            removed: o.removed_tags.clone(),
            upserted,
        });
    }
    Ok(Some(std::sync::Arc::new(converted)))
}

impl MetricOverrides {
    /// Whether `metric` is not recorded.
    pub fn disabled(&self, metric: RequestMetric) -> bool {
        self.metrics[metric as usize]
            .as_ref()
            .is_some_and(|o| o.disabled)
    }

    /// Whether any request metric differs from Istio's standard one.
    pub fn changes_requests(&self) -> bool {
        self.metrics.iter().any(Option::is_some)
    }

    /// Whether any TCP metric differs from Istio's standard one.
    pub fn changes_tcp(&self) -> bool {
        self.tcp.iter().any(Option::is_some)
    }

    /// The request headers the tags read, as `headers` has them.
    pub fn capture(&self, headers: &HeaderMap) -> Vec<Option<HeaderValue>> {
        self.headers
            .iter()
            .map(|h| headers.get(h).cloned())
            .collect()
    }

    /// The series of `metric` for `record`, whose standard labels are `labels`; `overflow`
    /// makes every upserted value `unknown`.
    pub(super) fn series(
        &self,
        metric: RequestMetric,
        labels: &RequestLabels,
        record: &RequestRecord,
        overflow: bool,
    ) -> RequestSeries {
        overridden_series(
            self.metrics[metric as usize].as_ref(),
            labels,
            record,
            overflow,
        )
    }
}

/// The series `o` makes of `labels`, its upserted values taken from `attributes`; `overflow`
/// makes every upserted value `unknown`.
fn overridden_series<L: LabelPairs + Clone>(
    o: Option<&MetricOverride>,
    labels: &L,
    attributes: &dyn MetricAttributes,
    overflow: bool,
) -> Series<L> {
    let Some(o) = o.filter(|o| !o.removed.is_empty() || !o.upserted.is_empty()) else {
        return Series::Standard(labels.clone());
    };
    let mut pairs: Vec<(Cow<'static, str>, String)> = labels
        .pairs()
        .into_iter()
        .filter(|(name, _)| !o.removed.iter().any(|r| r == name))
        .map(|(name, value)| (Cow::Borrowed(name), value))
        .collect();
    for (name, sources) in &o.upserted {
        if o.removed.contains(name) {
            continue;
        }
        let value = if overflow {
            UNKNOWN.to_owned()
        } else {
            sources
                .iter()
                .find_map(|s| source_value(s, attributes))
                .map_or_else(|| UNKNOWN.to_owned(), |v| label_value(&v))
        };
        match pairs.iter_mut().find(|(n, _)| n == name) {
            Some(pair) => pair.1 = value,
            None => pairs.push((Cow::Owned(name.clone()), value)),
        }
    }
    Series::Overridden(pairs)
}

/// A source's value; `None` when it has none (an absent header, an empty attribute).
fn source_value<'r>(
    source: &'r Source,
    attributes: &'r dyn MetricAttributes,
) -> Option<Cow<'r, str>> {
    match source {
        Source::Literal(literal) => Some(Cow::Borrowed(literal)),
        Source::Header(i) => attributes.header(*i).map(Cow::Borrowed),
        Source::Attribute(attribute) => attributes.attribute(*attribute),
    }
}

/// What a tag's sources read: Envoy's attributes and the captured request headers of a
/// request, or of a connection.
trait MetricAttributes {
    /// The attribute's value; `None` when it has none.
    fn attribute(&self, attribute: proto::RequestAttribute) -> Option<Cow<'_, str>>;
    /// The request header captured at `index` ([`MetricOverrides::capture`]).
    fn header(&self, index: usize) -> Option<&str>;
}

fn non_empty(text: &str) -> Option<Cow<'_, str>> {
    (!text.is_empty()).then_some(Cow::Borrowed(text))
}

fn shown(value: Option<impl ToString>) -> Option<Cow<'static, str>> {
    value.map(|v| Cow::Owned(v.to_string()))
}

impl MetricAttributes for RequestRecord {
    fn attribute(&self, attribute: proto::RequestAttribute) -> Option<Cow<'_, str>> {
        use proto::RequestAttribute as A;
        match attribute {
            A::Unspecified => None,
            A::RequestHost => non_empty(self.authority.as_str()),
            A::RequestMethod => non_empty(self.method.as_str()),
            A::RequestPath => non_empty(self.path.as_str()),
            A::RequestUrlPath => {
                non_empty(self.path.as_str().split('?').next().unwrap_or_default())
            }
            A::RequestProtocol => non_empty(self.protocol),
            A::RequestId => non_empty(self.request_id.as_str()),
            A::RequestUserAgent => non_empty(self.user_agent.as_str()),
            A::ResponseCode => (self.status != 0).then(|| Cow::Owned(self.status.to_string())),
            A::SourceAddress => shown(self.downstream_remote),
            A::SourcePort => shown(self.downstream_remote.map(|a| a.port())),
            A::DestinationAddress => shown(self.downstream_local),
            A::DestinationPort => shown(self.downstream_local.map(|a| a.port())),
            A::ConnectionMtls => Some(Cow::Borrowed(if self.mtls { "true" } else { "false" })),
            A::ConnectionPeerPrincipal => self.source.principal.as_deref().and_then(non_empty),
            A::UpstreamAddress => shown(self.upstream_host),
            A::ClusterName => self.upstream_cluster.as_deref().and_then(non_empty),
            A::RouteName => self.route_name.as_deref().and_then(non_empty),
        }
    }

    fn header(&self, index: usize) -> Option<&str> {
        self.metric_headers.get(index)?.as_ref()?.to_str().ok()
    }
}

/// What a TCP connection's tags can read, fixed when it opens: the attributes Envoy gives a
/// TCP stream (`source.*`, `destination.*`, `connection.*`, `upstream.address`,
/// `xds.cluster_name`). A connection has no request, response or route.
#[derive(Debug)]
struct ConnectionAttributes {
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
    mtls: bool,
    principal: Option<String>,
    upstream: Option<String>,
    cluster: Option<String>,
}

impl ConnectionAttributes {
    fn of(info: &ConnectionInfo) -> Self {
        ConnectionAttributes {
            source: info.downstream_remote.parse().ok(),
            destination: info.downstream_local.parse().ok(),
            mtls: info.mtls,
            principal: info.source.principal.as_deref().map(str::to_owned),
            upstream: info.upstream_host.clone(),
            cluster: info.upstream_cluster.clone(),
        }
    }
}

impl MetricAttributes for ConnectionAttributes {
    fn attribute(&self, attribute: proto::RequestAttribute) -> Option<Cow<'_, str>> {
        use proto::RequestAttribute as A;
        match attribute {
            A::SourceAddress => shown(self.source),
            A::SourcePort => shown(self.source.map(|a| a.port())),
            A::DestinationAddress => shown(self.destination),
            A::DestinationPort => shown(self.destination.map(|a| a.port())),
            A::ConnectionMtls => Some(Cow::Borrowed(if self.mtls { "true" } else { "false" })),
            A::ConnectionPeerPrincipal => self.principal.as_deref().and_then(non_empty),
            A::UpstreamAddress => self.upstream.as_deref().and_then(non_empty),
            A::ClusterName => self.cluster.as_deref().and_then(non_empty),
            A::Unspecified
            | A::RequestHost
            | A::RequestMethod
            | A::RequestPath
            | A::RequestUrlPath
            | A::RequestProtocol
            | A::RequestId
            | A::RequestUserAgent
            | A::ResponseCode
            | A::RouteName => None,
        }
    }

    fn header(&self, _: usize) -> Option<&str> {
        None
    }
}

/// The overridden label sets recorded so far, by hash: at most [`MAX_OVERRIDDEN_SERIES`]
/// across the request and TCP metrics.
#[derive(Debug, Default)]
pub(super) struct OverriddenSeries {
    seen: Mutex<HashSet<u64, foldhash::fast::RandomState>>,
    hasher: foldhash::fast::RandomState,
}

impl OverriddenSeries {
    /// Whether `series` may be recorded: a standard one always; an overridden one when it was
    /// seen before or while fewer than [`MAX_OVERRIDDEN_SERIES`] were.
    pub(super) fn admit<L: std::hash::Hash>(&self, series: &Series<L>) -> bool {
        if matches!(series, Series::Standard(_)) {
            return true;
        }
        let hash = self.hasher.hash_one(series);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(&hash) {
            return true;
        }
        if seen.len() >= MAX_OVERRIDDEN_SERIES {
            return false;
        }
        seen.insert(hash);
        true
    }
}

/// Telemetry's overrides of one TCP connection's metrics.
#[derive(Debug)]
pub(super) struct TcpOverride {
    overrides: Arc<MetricOverrides>,
    attributes: ConnectionAttributes,
    bound: Arc<OverriddenSeries>,
}

impl TcpOverride {
    pub(super) fn new(
        overrides: Arc<MetricOverrides>,
        info: &ConnectionInfo,
        bound: Arc<OverriddenSeries>,
    ) -> Self {
        TcpOverride {
            overrides,
            attributes: ConnectionAttributes::of(info),
            bound,
        }
    }
}

impl TcpSeriesOverride for TcpOverride {
    fn series(&self, metric: TcpMetric, labels: &TcpLabels) -> Option<Series<TcpLabels>> {
        let o = self.overrides.tcp[metric as usize].as_ref();
        if o.is_some_and(|o| o.disabled) {
            return None;
        }
        let series = overridden_series(o, labels, &self.attributes, false);
        if self.bound.admit(&series) {
            return Some(series);
        }
        Some(overridden_series(o, labels, &self.attributes, true))
    }
}

/// A label value as the text exposition needs it: cut to [`MAX_TAG_VALUE_BYTES`], with `\`,
/// `"` and line feeds escaped (the encoder writes values as they are).
fn label_value(value: &str) -> String {
    let mut end = value.len().min(MAX_TAG_VALUE_BYTES);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let mut escaped = String::with_capacity(end);
    for c in value[..end].chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}
