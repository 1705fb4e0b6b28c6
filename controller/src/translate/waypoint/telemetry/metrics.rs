//! Telemetry's `metrics`: the overrides of Istio's request and TCP metrics for one side of a
//! proxy (the TCP metrics a waypoint or gateway records for what it forwards at L4), as
//! istiod's `mergeMetrics` normalizes them for the Prometheus provider (the mesh's default
//! metrics provider, `prometheus`, as in Istio's default mesh config). Entries are applied in
//! order, each over the last: an entry naming providers replaces the inherited ones, and the
//! last providers named decide whether Prometheus is in scope at all; `disabled` on all
//! metrics (no `metric`, or `ALL_METRICS`) turns the side's metrics off until a later entry
//! for that side changes any metric; otherwise each matched metric takes the entry's
//! `disabled` when it sets it, and its `tagOverrides` by tag name over the earlier ones.

use std::collections::BTreeMap;

use weft_proto::waypoint as wp;
use weft_proxy_core::metrics::is_label_name;

use crate::model::tag_expression::{self, Attribute, TagSource};
use crate::model::telemetry::{
    IstioMetric, Metrics, MetricsOverrides, TagOperation, TagOverride, WorkloadMode,
};

/// The one metrics provider Weft reports to.
pub(super) const PROMETHEUS: &str = "prometheus";

/// The metrics a proxy records, in the order of Istio's `allMetrics` that applies to them.
const METRICS: [(IstioMetric, wp::RequestMetric); 8] = [
    (IstioMetric::RequestCount, wp::RequestMetric::RequestCount),
    (
        IstioMetric::RequestDuration,
        wp::RequestMetric::RequestDuration,
    ),
    (IstioMetric::RequestSize, wp::RequestMetric::RequestSize),
    (IstioMetric::ResponseSize, wp::RequestMetric::ResponseSize),
    (
        IstioMetric::TcpOpenedConnections,
        wp::RequestMetric::TcpOpenedConnections,
    ),
    (
        IstioMetric::TcpClosedConnections,
        wp::RequestMetric::TcpClosedConnections,
    ),
    (IstioMetric::TcpSentBytes, wp::RequestMetric::TcpSentBytes),
    (
        IstioMetric::TcpReceivedBytes,
        wp::RequestMetric::TcpReceivedBytes,
    ),
];

/// One metric's merged override.
#[derive(Debug, Default, Clone, PartialEq)]
struct Merged<'t> {
    disabled: Option<bool>,
    tags: BTreeMap<&'t str, &'t TagOverride>,
}

/// The request and TCP metric overrides of the side `covers` selects (by `match.mode`), from the
/// applicable `metrics` entries, weakest first.
pub(super) fn merge_metrics<'t>(
    entries: impl Iterator<Item = &'t Metrics> + Clone,
    covers: impl Fn(Option<WorkloadMode>) -> bool,
) -> Vec<wp::MetricOverride> {
    let named = |m: &Metrics| -> Option<Vec<String>> {
        (!m.providers.is_empty()).then(|| {
            m.providers
                .iter()
                .map(|p| p.name.to_ascii_lowercase())
                .collect()
        })
    };
    let in_scope = entries
        .clone()
        .filter_map(named)
        .last()
        .is_none_or(|names| names.iter().any(|n| n == PROMETHEUS));
    let mut all_disabled = !in_scope;
    let mut merged: [Merged<'t>; 8] = Default::default();
    let mut parent = vec![PROMETHEUS.to_owned()];
    for entry in entries {
        if let Some(names) = named(entry) {
            parent = names;
        }
        if !in_scope || !parent.iter().any(|n| n == PROMETHEUS) {
            continue;
        }
        for o in &entry.overrides {
            let selector = o.match_.as_ref();
            if !covers(selector.and_then(|s| s.mode)) {
                continue;
            }
            if is_all_metrics(o) && o.disabled == Some(true) {
                all_disabled = true;
                continue;
            }
            all_disabled = false;
            for (i, (metric, _)) in METRICS.iter().enumerate() {
                if !matches_metric(o, *metric) {
                    continue;
                }
                let target = &mut merged[i];
                if o.disabled.is_some() {
                    target.disabled = o.disabled;
                }
                for (name, tag) in &o.tag_overrides {
                    target.tags.insert(name.as_str(), tag);
                }
            }
        }
    }
    METRICS
        .iter()
        .zip(merged)
        .filter_map(|((_, metric), merged)| {
            let disabled = all_disabled || merged.disabled == Some(true);
            let mut removed_tags = Vec::new();
            let mut upserted_tags = Vec::new();
            if !disabled {
                for (name, tag) in merged.tags {
                    // Validation reported a name Prometheus refuses; it is not sent.
                    if !is_label_name(name) {
                        continue;
                    }
                    match tag.operation.unwrap_or(TagOperation::Upsert) {
                        TagOperation::Remove => removed_tags.push(name.to_owned()),
                        TagOperation::Upsert => {
                            // Validation reported what is not evaluated; it is not sent.
                            let Some(Ok(sources)) = tag.value.as_deref().map(tag_expression::parse)
                            else {
                                continue;
                            };
                            upserted_tags.push(wp::MetricTag {
                                tag: name.to_owned(),
                                sources: sources.into_iter().map(tag_source).collect(),
                            });
                        }
                    }
                }
            }
            (disabled || !removed_tags.is_empty() || !upserted_tags.is_empty()).then_some(
                wp::MetricOverride {
                    metric: *metric as i32,
                    disabled,
                    removed_tags,
                    upserted_tags,
                },
            )
        })
        .collect()
}

/// istiod's `isAllMetrics`: no metric match (none at all, or `ALL_METRICS`); a custom metric
/// is one metric.
fn is_all_metrics(o: &MetricsOverrides) -> bool {
    match &o.match_ {
        None => true,
        Some(selector) => {
            selector.custom_metric.is_none()
                && selector.metric.is_none_or(|m| m == IstioMetric::AllMetrics)
        }
    }
}

/// istiod's `getMatches`: whether the override matches `metric`.
fn matches_metric(o: &MetricsOverrides, metric: IstioMetric) -> bool {
    is_all_metrics(o) || o.match_.as_ref().and_then(|s| s.metric) == Some(metric)
}

fn tag_source(source: TagSource) -> wp::MetricTagSource {
    use wp::metric_tag_source::Source;
    wp::MetricTagSource {
        source: Some(match source {
            TagSource::Literal(text) => Source::Literal(text),
            TagSource::RequestHeader(name) => Source::RequestHeader(name),
            TagSource::Attribute(attribute) => {
                Source::Attribute(request_attribute(attribute) as i32)
            }
        }),
    }
}

fn request_attribute(attribute: Attribute) -> wp::RequestAttribute {
    use wp::RequestAttribute as R;
    match attribute {
        Attribute::RequestHost => R::RequestHost,
        Attribute::RequestMethod => R::RequestMethod,
        Attribute::RequestPath => R::RequestPath,
        Attribute::RequestUrlPath => R::RequestUrlPath,
        Attribute::RequestProtocol => R::RequestProtocol,
        Attribute::RequestId => R::RequestId,
        Attribute::RequestUserAgent => R::RequestUserAgent,
        Attribute::ResponseCode => R::ResponseCode,
        Attribute::SourceAddress => R::SourceAddress,
        Attribute::SourcePort => R::SourcePort,
        Attribute::DestinationAddress => R::DestinationAddress,
        Attribute::DestinationPort => R::DestinationPort,
        Attribute::ConnectionMtls => R::ConnectionMtls,
        Attribute::ConnectionPeerPrincipal => R::ConnectionPeerPrincipal,
        Attribute::UpstreamAddress => R::UpstreamAddress,
        Attribute::ClusterName => R::ClusterName,
        Attribute::RouteName => R::RouteName,
    }
}
