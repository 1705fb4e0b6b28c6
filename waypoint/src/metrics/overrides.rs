//! Telemetry's `metrics[].overrides` for the request metrics, as Istio's stats filter applies
//! them: a metric `disabled` is not recorded; a tag removed is absent from that metric's
//! series; a tag upserted replaces a standard label's value or adds a label, its value
//! computed per request from the sources the controller parsed out of the CEL expression
//! (the first with a value gives it; none: `unknown`). The controller sends only what differs
//! from Istio's standard metrics, for the proxy's side; a request records which overrides were
//! in force when it arrived, with the request headers they read.
//!
//! Every series of one metric under one configuration has the same label names; the label
//! values a request brings (a header, its path) are bounded in length, and past
//! [`MAX_OVERRIDDEN_SERIES`] label sets every upserted value is `unknown`, so that no client
//! can grow the metrics without bound.

use std::borrow::Cow;
use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};
use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use weft_proto::waypoint as proto;
use weft_proxy_core::metrics::{RequestLabels, UNKNOWN, is_label_name};

use super::RequestRecord;
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

/// A series' labels: Istio's standard set, or the set a Telemetry override made of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[allow(
    clippy::large_enum_variant,
    reason = "the standard set is the usual key, kept inline in the families' maps"
)]
pub enum RequestSeries {
    Standard(RequestLabels),
    Overridden(Vec<(Cow<'static, str>, String)>),
}

impl EncodeLabelSet for RequestSeries {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        match self {
            RequestSeries::Standard(labels) => labels.encode(encoder),
            RequestSeries::Overridden(pairs) => pairs.encode(encoder),
        }
    }
}

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
        let index = match proto::RequestMetric::try_from(o.metric) {
            Ok(proto::RequestMetric::RequestCount) => RequestMetric::Count,
            Ok(proto::RequestMetric::RequestDuration) => RequestMetric::Duration,
            Ok(proto::RequestMetric::RequestSize) => RequestMetric::RequestSize,
            Ok(proto::RequestMetric::ResponseSize) => RequestMetric::ResponseSize,
            _ => {
                return Err(invalid(
                    &format!("{path}.metric"),
                    format!("{} is not a request metric", o.metric),
                ));
            }
        } as usize;
        if converted.metrics[index].is_some() {
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
        converted.metrics[index] = Some(MetricOverride {
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
        let Some(o) = &self.metrics[metric as usize] else {
            return RequestSeries::Standard(labels.clone());
        };
        if o.removed.is_empty() && o.upserted.is_empty() {
            return RequestSeries::Standard(labels.clone());
        }
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
                    .find_map(|s| self.value(s, record))
                    .map_or_else(|| UNKNOWN.to_owned(), |v| label_value(&v))
            };
            match pairs.iter_mut().find(|(n, _)| n == name) {
                Some(pair) => pair.1 = value,
                None => pairs.push((Cow::Owned(name.clone()), value)),
            }
        }
        RequestSeries::Overridden(pairs)
    }

    /// A source's value for `record`; `None` when it has none (an absent header, an empty
    /// attribute).
    fn value<'r>(&self, source: &'r Source, record: &'r RequestRecord) -> Option<Cow<'r, str>> {
        use proto::RequestAttribute as A;
        let text = |t: &'r str| (!t.is_empty()).then_some(Cow::Borrowed(t));
        let shown = |v: Option<String>| v.map(Cow::Owned);
        match source {
            Source::Literal(literal) => Some(Cow::Borrowed(literal)),
            Source::Header(i) => record
                .metric_headers
                .get(*i)?
                .as_ref()?
                .to_str()
                .ok()
                .map(Cow::Borrowed),
            Source::Attribute(attribute) => match attribute {
                A::Unspecified => None,
                A::RequestHost => text(record.authority.as_str()),
                A::RequestMethod => text(record.method.as_str()),
                A::RequestPath => text(record.path.as_str()),
                A::RequestUrlPath => {
                    text(record.path.as_str().split('?').next().unwrap_or_default())
                }
                A::RequestProtocol => text(record.protocol),
                A::RequestId => text(record.request_id.as_str()),
                A::RequestUserAgent => text(record.user_agent.as_str()),
                A::ResponseCode => {
                    (record.status != 0).then(|| Cow::Owned(record.status.to_string()))
                }
                A::SourceAddress => shown(record.downstream_remote.map(|a| a.to_string())),
                A::SourcePort => shown(record.downstream_remote.map(|a| a.port().to_string())),
                A::DestinationAddress => shown(record.downstream_local.map(|a| a.to_string())),
                A::DestinationPort => shown(record.downstream_local.map(|a| a.port().to_string())),
                A::ConnectionMtls => {
                    Some(Cow::Borrowed(if record.mtls { "true" } else { "false" }))
                }
                A::ConnectionPeerPrincipal => record.source.principal.as_deref().and_then(text),
                A::UpstreamAddress => shown(record.upstream_host.map(|a| a.to_string())),
                A::ClusterName => record.upstream_cluster.as_deref().and_then(text),
                A::RouteName => record.route_name.as_deref().and_then(text),
            },
        }
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
