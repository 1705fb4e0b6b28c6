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
//! under their own names.

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

/// What the last translation found, set by the publisher after each one.
#[derive(Debug, Default)]
pub struct TranslationGauges {
    pub policies_without_http_attributes: AtomicU64,
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
        let mut sample = |name: &str, help: &str, metric: &dyn EncodeMetric| {
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
        };
        sample(
            names::PUSHES,
            "Responses pushed to proxies",
            &Sample(MetricType::Unknown, counters.pushes()),
        )?;
        sample(
            names::REJECTS,
            "Responses rejected (NACKed) by proxies",
            &Sample(MetricType::Unknown, counters.rejects()),
        )?;
        sample(
            names::CONNECTED,
            "Proxies connected to the discovery stream",
            &Sample(MetricType::Gauge, counters.connected()),
        )?;
        sample(
            &format!("{}_sum", names::PUSH_TIME),
            "Seconds between configuration changes and their pushes, summed",
            &Sample(
                MetricType::Unknown,
                counters.push_time_total().as_secs_f64(),
            ),
        )?;
        sample(
            names::CONVERGENCE_TIME,
            "Delay in seconds between config change and a proxy receiving all required configuration",
            &Convergence {
                buckets: counters.convergence_buckets(),
                sum: counters.push_time_total().as_secs_f64(),
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
        counters.pushed("type", Duration::from_millis(1500));
        counters.pushed("type", Duration::from_millis(500));
        counters.rejected(&Rejection {
            proxy_id: "a".into(),
            type_url: "type".into(),
            nonce: "1".into(),
            message: "bad".into(),
        });
        let gauges = Arc::new(TranslationGauges::default());
        gauges
            .policies_without_http_attributes
            .store(3, Ordering::Relaxed);
        let index = Arc::new(LiveIndex::default());
        index.count_rejections(2);
        let (ready, ready_watch) = watch::channel(false);
        let endpoints = endpoints(counters, gauges, index, ready_watch);
        let (status, text) = get(&endpoints, "/metrics");
        assert_eq!(status, http::StatusCode::OK);
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "pilot_xds_pushes 2",
            "pilot_total_xds_rejects 1",
            "pilot_xds 1",
            "pilot_xds_push_time_sum 2.0",
            "weft_authorization_policies_enforced_without_http_attributes 3",
            "weft_configuration_rejections 2",
            "# TYPE pilot_xds gauge",
            "# TYPE pilot_proxy_convergence_time histogram",
            "pilot_proxy_convergence_time_count 2",
            "pilot_proxy_convergence_time_bucket{le=\"0.5\"} 1",
            "pilot_proxy_convergence_time_bucket{le=\"1.0\"} 1",
            "pilot_proxy_convergence_time_bucket{le=\"3.0\"} 2",
            "pilot_proxy_convergence_time_bucket{le=\"+Inf\"} 2",
            "pilot_proxy_convergence_time_sum 2.0",
        ] {
            assert!(lines.contains(&expected), "no {expected:?} in\n{text}");
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
