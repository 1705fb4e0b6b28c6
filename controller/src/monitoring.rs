//! The controller's monitoring port on the admin server of `weft-proxy-core`: Prometheus text
//! (encoded by `prometheus-client`) with Istio's `pilot_*` names, the translation's own
//! gauge and the count of refused resources, `/ready` (istiod's readiness path), which answers
//! 200 only once every gRPC port accepts, and [`crate::syncz`]'s `/debug/syncz` and `/version`.
//!
//! Beside them, `pilot_proxy_convergence_time` with istiod's buckets, and what every Weft
//! process reports about itself (`process_*`, `istio_build{component="pilot"}`) from
//! `weft-proxy-core`.
//!
//! Istio exports `pilot_xds_pushes` and `pilot_total_xds_rejects` under those exact names, and
//! its dashboards query them so; OpenMetrics counters would be renamed `..._total`, so the
//! cumulative values are exported untyped (`unknown`), as Prometheus stores untyped samples
//! under their own names. Those two and `pilot_xds_push_time_sum` carry istiod's `type` label,
//! the short name of the resource type ([`metric_type`]).
//!
//! `provider_lookup_cluster_failures{type}` is istiod's counter of the same name (exported by
//! istiod without a `_total` suffix, so untyped here too): each time a translation finds no
//! service for an extension provider's `service` and drops the provider
//! ([`crate::translate::ProviderLookupFailures`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use weft_proxy_core::admin::{AdminServer, Endpoints, combine, metrics_at, readiness_endpoints};
use weft_xds::{XdsCounters, metrics::names};

use crate::index::LiveIndex;

/// AuthorizationPolicies the node agents enforce without the attributes only a request carries
/// (a DENY refusing more than written, an ALLOW rule allowing nothing).
pub const POLICIES_WITHOUT_HTTP_ATTRIBUTES: &str =
    "weft_authorization_policies_enforced_without_http_attributes";

/// Resources refused by validation so far: a document of the configuration directory at each
/// load that refuses it, an object of the API server at each event (the webhook keeps most of
/// them out). Its increase is how an operator, or a test, sees an edit refused.
pub const CONFIGURATION_REJECTIONS: &str = "weft_configuration_rejections";

/// The `type` label of the discovery metrics for a type URL: istiod's `GetMetricType` for the
/// types it knows (`wds` for `istio.workload.Address`, `wads` for
/// `istio.security.Authorization`, `sds` for Envoy's `Secret`), the message's name in snake
/// case for the types of our own, and `other` for anything else (istiod would export the type
/// URL itself; a NACK names its type, so a proxy's strings must not become label values).
pub fn metric_type(type_url: &str) -> &'static str {
    match type_url {
        weft_proto::ADDRESS_TYPE_URL => "wds",
        weft_proto::AUTHORIZATION_TYPE_URL => "wads",
        weft_proto::SECRET_TYPE_URL => "sds",
        weft_proto::WAYPOINT_CONFIG_TYPE_URL => "waypoint_config",
        weft_proto::MESH_CONFIG_TYPE_URL => "mesh_config",
        weft_proto::SOURCE_WORKLOAD_TYPE_URL => "source_workload",
        _ => "other",
    }
}

/// The types the controller serves, each exported from the start (at zero until something of
/// it is pushed), so that `increase()` sees a type's first NACK.
const SERVED_TYPES: [&str; 6] = [
    "wds",
    "wads",
    "sds",
    "waypoint_config",
    "mesh_config",
    "source_workload",
];

/// istiod's `provider_lookup_cluster_failures` (`pilot/pkg/model/monitoring.go`).
pub const PROVIDER_LOOKUP_CLUSTER_FAILURES: &str = "provider_lookup_cluster_failures";

/// What the last translation found, set by the publisher after each one.
#[derive(Debug, Default)]
pub struct TranslationGauges {
    pub policies_without_http_attributes: AtomicU64,
    /// Counted by the translations themselves ([`crate::translate::MeshSettings`] holds the
    /// same counts).
    pub provider_lookup_failures: Arc<crate::translate::ProviderLookupFailures>,
}

/// Reads the discovery server's counters and the translation's gauges at each scrape.
#[derive(Debug)]
struct PilotMetrics {
    counters: Arc<XdsCounters>,
    gauges: Arc<TranslationGauges>,
    index: Arc<LiveIndex>,
}

/// One value under its own name.
#[derive(Debug)]
struct Sample<T>(MetricType, T);

impl<T: prometheus_client::encoding::EncodeGaugeValue + std::fmt::Debug> EncodeMetric
    for Sample<T>
{
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.1)
    }

    fn metric_type(&self) -> MetricType {
        self.0
    }
}

/// One value per `type`.
#[derive(Debug)]
struct ByType<T>(MetricType, BTreeMap<&'static str, T>);

impl<T: prometheus_client::encoding::EncodeGaugeValue + std::fmt::Debug> EncodeMetric
    for ByType<T>
{
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        for (metric_type, value) in &self.1 {
            encoder
                .encode_family(&[("type", *metric_type)])?
                .encode_gauge(value)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.0
    }
}

/// The counters by `type`: every served type, and any other that counted something.
#[derive(Debug, Default)]
struct CountsByType {
    pushes: BTreeMap<&'static str, u64>,
    push_time: BTreeMap<&'static str, f64>,
    rejects: BTreeMap<&'static str, u64>,
}

impl CountsByType {
    fn of(counters: &XdsCounters) -> Self {
        let mut counts = Self::default();
        for metric_type in SERVED_TYPES {
            counts.pushes.insert(metric_type, 0);
            counts.push_time.insert(metric_type, 0.0);
            counts.rejects.insert(metric_type, 0);
        }
        for (type_url, counted) in counters.by_type() {
            let metric_type = metric_type(&type_url);
            *counts.pushes.entry(metric_type).or_default() += counted.pushes;
            *counts.push_time.entry(metric_type).or_default() += counted.push_time.as_secs_f64();
            *counts.rejects.entry(metric_type).or_default() += counted.rejects;
        }
        counts
    }
}

/// `pilot_proxy_convergence_time`: the pushes counted by bucket, their latencies summed.
#[derive(Debug)]
struct Convergence {
    buckets: Vec<(f64, u64)>,
    sum: f64,
}

impl EncodeMetric for Convergence {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        // `prometheus-client` writes `+Inf` for the bucket bounded by `f64::MAX`.
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .map(|&(bound, count)| (if bound.is_finite() { bound } else { f64::MAX }, count))
            .collect();
        let count = buckets.iter().map(|(_, count)| count).sum();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum, count, &buckets, None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Collector for PilotMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters = &self.counters;
        let by_type = CountsByType::of(counters);
        let mut sample = |name: &str, help: &str, metric: &dyn EncodeMetric| {
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
        };
        sample(
            names::PUSHES,
            "Responses pushed to proxies, by resource type",
            &ByType(MetricType::Unknown, by_type.pushes),
        )?;
        sample(
            names::REJECTS,
            "Responses rejected (NACKed) by proxies, by resource type",
            &ByType(MetricType::Unknown, by_type.rejects),
        )?;
        sample(
            names::CONNECTED,
            "Proxies connected to the discovery stream",
            &Sample(MetricType::Gauge, counters.connected()),
        )?;
        sample(
            &format!("{}_sum", names::PUSH_TIME),
            "Seconds between configuration changes and their pushes, summed by resource type",
            &ByType(MetricType::Unknown, by_type.push_time),
        )?;
        sample(
            names::CONVERGENCE_TIME,
            "Delay in seconds between config change and a proxy receiving all required configuration",
            &Convergence {
                buckets: counters.convergence_buckets(),
                sum: counters.convergence_total().as_secs_f64(),
            },
        )?;
        sample(
            POLICIES_WITHOUT_HTTP_ATTRIBUTES,
            "AuthorizationPolicies node agents enforce without their HTTP attributes",
            &Sample(
                MetricType::Gauge,
                self.gauges
                    .policies_without_http_attributes
                    .load(Ordering::Relaxed),
            ),
        )?;
        sample(
            CONFIGURATION_REJECTIONS,
            "Resources refused by validation",
            &Sample(MetricType::Unknown, self.index.rejections()),
        )?;
        let lookup_failures = self.gauges.provider_lookup_failures.counts();
        if lookup_failures.is_empty() {
            // istiod exports the sum from its first increment on.
            return Ok(());
        }
        sample(
            PROVIDER_LOOKUP_CLUSTER_FAILURES,
            "Number of times a cluster lookup failed",
            &ByType(MetricType::Unknown, lookup_failures),
        )
    }
}

/// `/metrics` and `/ready`: `ready` turns true when the controller's gRPC listeners are bound,
/// so a probe never sees a ready controller whose ports refuse.
pub fn endpoints(
    counters: Arc<XdsCounters>,
    gauges: Arc<TranslationGauges>,
    index: Arc<LiveIndex>,
    ready: watch::Receiver<bool>,
) -> Endpoints {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(PilotMetrics {
        counters,
        gauges,
        index,
    }));
    weft_proxy_core::metrics::register_process_metrics(
        &mut registry,
        weft_proxy_core::metrics::Component::Controller,
    );
    combine([
        metrics_at(&["/metrics"], Arc::new(registry)),
        readiness_endpoints("/ready", move || {
            if *ready.borrow() {
                Ok(())
            } else {
                Err("not ready".to_owned())
            }
        }),
    ])
}

/// Serves the monitoring endpoints, with `/debug/syncz` and `/version` from `sync`, on
/// `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    counters: Arc<XdsCounters>,
    sync: Arc<crate::syncz::SyncStatus>,
    gauges: Arc<TranslationGauges>,
    index: Arc<LiveIndex>,
    ready: watch::Receiver<bool>,
) {
    let endpoints = combine([
        endpoints(counters, gauges, index, ready),
        crate::syncz::endpoints(sync),
    ]);
    AdminServer::from_listener(listener, endpoints).run().await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weft_xds::{Rejection, XdsMetrics};

    use super::*;

    fn get(endpoints: &Endpoints, path: &str) -> (http::StatusCode, String) {
        let (status, _, body) = endpoints(path).expect("served");
        (status, body)
    }

    #[test]
    fn istio_s_names_and_the_readiness_of_the_grpc_ports() {
        let counters = Arc::new(XdsCounters::default());
        counters.proxy_connected("a");
        counters.pushed(weft_proto::ADDRESS_TYPE_URL, Duration::from_millis(1500));
        counters.pushed(
            weft_proto::WAYPOINT_CONFIG_TYPE_URL,
            Duration::from_millis(500),
        );
        counters.pushed("type.googleapis.com/made.Up", Duration::from_millis(250));
        // Three pushes reached proxies (one covered two types: one observation).
        for latency in [400, 450, 2000] {
            counters.converged(Duration::from_millis(latency));
        }
        counters.rejected(&Rejection {
            proxy_id: "a".into(),
            type_url: weft_proto::AUTHORIZATION_TYPE_URL.into(),
            nonce: "1".into(),
            message: "bad".into(),
        });
        let gauges = Arc::new(TranslationGauges::default());
        gauges
            .policies_without_http_attributes
            .store(3, Ordering::Relaxed);
        gauges.provider_lookup_failures.failed("opentelemetry");
        gauges.provider_lookup_failures.failed("envoyOtelAls");
        gauges.provider_lookup_failures.failed("envoyOtelAls");
        let index = Arc::new(LiveIndex::default());
        index.count_rejections(2);
        let (ready, ready_watch) = watch::channel(false);
        let endpoints = endpoints(counters, gauges, index, ready_watch);
        let (status, text) = get(&endpoints, "/metrics");
        assert_eq!(status, http::StatusCode::OK);
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "pilot_xds_pushes{type=\"wds\"} 1",
            "pilot_xds_pushes{type=\"waypoint_config\"} 1",
            "pilot_xds_pushes{type=\"other\"} 1",
            "pilot_xds_pushes{type=\"wads\"} 0",
            "pilot_xds_pushes{type=\"sds\"} 0",
            "pilot_xds_pushes{type=\"mesh_config\"} 0",
            "pilot_xds_pushes{type=\"source_workload\"} 0",
            "pilot_total_xds_rejects{type=\"wads\"} 1",
            "pilot_total_xds_rejects{type=\"wds\"} 0",
            "pilot_xds 1",
            "pilot_xds_push_time_sum{type=\"wds\"} 1.5",
            "pilot_xds_push_time_sum{type=\"waypoint_config\"} 0.5",
            "pilot_xds_push_time_sum{type=\"other\"} 0.25",
            "weft_authorization_policies_enforced_without_http_attributes 3",
            "weft_configuration_rejections 2",
            "provider_lookup_cluster_failures{type=\"opentelemetry\"} 1",
            "provider_lookup_cluster_failures{type=\"envoyOtelAls\"} 2",
            "# TYPE provider_lookup_cluster_failures unknown",
            "# TYPE pilot_xds gauge",
            "# TYPE pilot_proxy_convergence_time histogram",
            "pilot_proxy_convergence_time_count 3",
            "pilot_proxy_convergence_time_bucket{le=\"0.1\"} 0",
            "pilot_proxy_convergence_time_bucket{le=\"0.5\"} 2",
            "pilot_proxy_convergence_time_bucket{le=\"1.0\"} 2",
            "pilot_proxy_convergence_time_bucket{le=\"3.0\"} 3",
            "pilot_proxy_convergence_time_bucket{le=\"+Inf\"} 3",
            "pilot_proxy_convergence_time_sum 2.85",
        ] {
            assert!(lines.contains(&expected), "no {expected:?} in\n{text}");
        }
        assert!(
            !text.contains("made.Up"),
            "a type URL became a label value:\n{text}"
        );
        // Every served type maps to its own name, none to `other`.
        for type_url in [
            weft_proto::ADDRESS_TYPE_URL,
            weft_proto::AUTHORIZATION_TYPE_URL,
            weft_proto::SECRET_TYPE_URL,
            weft_proto::WAYPOINT_CONFIG_TYPE_URL,
            weft_proto::MESH_CONFIG_TYPE_URL,
            weft_proto::SOURCE_WORKLOAD_TYPE_URL,
        ] {
            assert!(SERVED_TYPES.contains(&metric_type(type_url)), "{type_url}");
        }
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("process_resident_memory_bytes ")),
            "{text}"
        );
        let build = format!(
            "istio_build{{component=\"pilot\",tag=\"{}\"}} 1",
            weft_proxy_core::metrics::process::VERSION
        );
        assert!(lines.contains(&build.as_str()), "no {build} in\n{text}");
        assert_eq!(
            get(&endpoints, "/ready").0,
            http::StatusCode::SERVICE_UNAVAILABLE
        );
        ready.send_replace(true);
        assert_eq!(get(&endpoints, "/ready").0, http::StatusCode::OK);
    }
}
