//! The PromQL the console runs: Kiali's graph and detail queries on Istio's standard metrics,
//! with Istio's label names, so a Kiali pointed at the same Prometheus draws the same graph.
//! HTTP comes from the waypoint (`reporter="waypoint"`, as Kiali reads ambient meshes), TCP
//! from the node agents: the caller's (`reporter="source"`), and the destination's for callers
//! without an agent of their own (`source_workload="unknown"`), as Kiali picks its reporters,
//! so that no connection counts twice.

/// What each edge is grouped by (Kiali's `groupBy`, without the cluster labels of a
/// single-cluster mesh).
pub const EDGE_LABELS: &str = "source_workload_namespace,source_workload,source_canonical_service,\
source_canonical_revision,destination_service_namespace,destination_service,\
destination_service_name,destination_workload_namespace,destination_workload,\
destination_canonical_service,destination_canonical_revision";

/// What makes a name safe to put inside a PromQL string: Kubernetes names and durations only.
pub fn check_name(field: &str, value: &str) -> Result<(), String> {
    let valid = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{field} {value:?} is not a Kubernetes name (lowercase letters, digits, '-' and '.')"
        ))
    }
}

/// A rate window such as `1m` or `30s` (Kiali's `duration`).
pub fn check_window(value: &str) -> Result<(), String> {
    let (number, unit) = value.split_at(value.len().saturating_sub(1));
    if !number.is_empty()
        && number.len() <= 5
        && number.bytes().all(|b| b.is_ascii_digit())
        && matches!(unit, "s" | "m" | "h")
    {
        Ok(())
    } else {
        Err(format!(
            "window {value:?} is not a duration such as 30s, 1m or 1h"
        ))
    }
}

/// The graph of `namespace`: requests per second by edge, response code, flags and security.
pub fn http_requests(namespace: &str, window: &str) -> String {
    format!(
        "sum(rate(istio_requests_total{{reporter=\"waypoint\",destination_service_namespace=\"{namespace}\"}}[{window}])) \
         by ({EDGE_LABELS},request_protocol,response_code,response_flags,connection_security_policy) > 0"
    )
}

/// The 99th percentile of request duration from each source to each service.
pub fn http_p99_by_source(namespace: &str, window: &str) -> String {
    format!(
        "histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{{reporter=\"waypoint\",destination_service_namespace=\"{namespace}\"}}[{window}])) \
         by (le,source_workload_namespace,source_workload,source_canonical_revision,destination_service_namespace,destination_service_name))"
    )
}

/// The 99th percentile of request duration from each service to each of its workloads.
pub fn http_p99_by_workload(namespace: &str, window: &str) -> String {
    format!(
        "histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{{reporter=\"waypoint\",destination_service_namespace=\"{namespace}\"}}[{window}])) \
         by (le,destination_service_namespace,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_revision))"
    )
}

/// TCP bytes per second (`metric` is `istio_tcp_sent_bytes_total` or
/// `istio_tcp_received_bytes_total`) or connections opened per second
/// (`istio_tcp_connections_opened_total`), by edge, security and flags.
pub fn tcp(metric: &str, namespace: &str, window: &str) -> String {
    format!(
        "sum(rate({metric}{{reporter=~\"source|destination\",destination_service_namespace=\"{namespace}\"}}[{window}])) \
         by (reporter,{EDGE_LABELS},connection_security_policy,response_flags) > 0"
    )
}

/// One service's requests per second by destination version and workload: the split (what
/// reached a workload; requests refused or failed before one was picked are not in it).
pub fn service_split(namespace: &str, service: &str, window: &str) -> String {
    format!(
        "sum(rate(istio_requests_total{{reporter=\"waypoint\",destination_service_namespace=\"{namespace}\",destination_service_name=\"{service}\",destination_workload!=\"unknown\",destination_workload!=\"\"}}[{window}])) \
         by (destination_workload,destination_canonical_revision,destination_version)"
    )
}

/// One service's requests per second over time by response code (for the page's chart).
pub fn service_traffic(namespace: &str, service: &str, window: &str) -> String {
    format!(
        "sum(rate(istio_requests_total{{reporter=\"waypoint\",destination_service_namespace=\"{namespace}\",destination_service_name=\"{service}\"}}[{window}])) \
         by (response_code)"
    )
}

/// One workload's inbound and outbound request rates as the waypoint saw them.
pub fn workload_requests(namespace: &str, workload: &str, window: &str) -> [String; 2] {
    [
        format!(
            "sum(rate(istio_requests_total{{reporter=\"waypoint\",destination_workload_namespace=\"{namespace}\",destination_workload=\"{workload}\"}}[{window}])) by (source_workload,response_code)"
        ),
        format!(
            "sum(rate(istio_requests_total{{reporter=\"waypoint\",source_workload_namespace=\"{namespace}\",source_workload=\"{workload}\"}}[{window}])) by (destination_service_name,response_code)"
        ),
    ]
}

/// When the certificates of `namespace`'s identities expire, each its earliest over the proxies
/// holding it (`weft_workload_certificate_expiry_timestamp_seconds`, by the agents and
/// waypoints).
pub fn certificate_expiry(namespace: &str) -> String {
    format!(
        "min by (identity) (weft_workload_certificate_expiry_timestamp_seconds{{identity=~\"spiffe://[^/]+/ns/{namespace}/sa/.+\"}})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_windows_that_could_escape_a_promql_string_are_refused() {
        assert!(check_name("namespace", "bookinfo").is_ok());
        assert!(check_name("service", "reviews.bookinfo").is_ok());
        for bad in ["", "a\"}", "A", "x y", "ns\\"] {
            assert!(check_name("namespace", bad).is_err(), "{bad:?}");
        }
        assert!(check_window("1m").is_ok() && check_window("30s").is_ok());
        for bad in ["", "m", "1", "1d", "1m]", "123456s"] {
            assert!(check_window(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_graph_queries_use_istio_s_metric_and_label_names_as_kiali_does() {
        let query = http_requests("bookinfo", "1m");
        assert!(query.starts_with(
            "sum(rate(istio_requests_total{reporter=\"waypoint\",destination_service_namespace=\"bookinfo\"}[1m]))"
        ));
        for label in [
            "source_workload",
            "destination_service",
            "destination_workload",
            "response_code",
            "connection_security_policy",
        ] {
            assert!(query.contains(label), "{label} in {query}");
        }
        assert!(http_p99_by_source("bookinfo", "1m").starts_with(
            "histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{"
        ));
        assert_eq!(
            certificate_expiry("bookinfo"),
            "min by (identity) (weft_workload_certificate_expiry_timestamp_seconds{identity=~\"spiffe://[^/]+/ns/bookinfo/sa/.+\"})"
        );
        assert!(
            tcp("istio_tcp_sent_bytes_total", "bookinfo", "5m")
                .contains("istio_tcp_sent_bytes_total{reporter=~\"source|destination\",destination_service_namespace=\"bookinfo\"}[5m]")
        );
    }
}
