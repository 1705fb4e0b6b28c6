use std::collections::BTreeSet;

use super::*;
use crate::console::prometheus::{parse_matrix, parse_vector};

/// An answer as Prometheus' `/api/v1/query` writes it.
fn answer(series: &[(&[(&str, &str)], &str)]) -> Vec<Sample> {
    let result: Vec<serde_json::Value> = series
        .iter()
        .map(|(labels, value)| {
            let metric: serde_json::Map<String, serde_json::Value> = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
                .collect();
            serde_json::json!({ "metric": metric, "value": [1_733_380_000.123, value] })
        })
        .collect();
    let body = serde_json::json!({
        "status": "success",
        "data": { "resultType": "vector", "result": result }
    });
    parse_vector("q", body.to_string().as_bytes()).expect("a vector")
}

const PRODUCTPAGE: &[(&str, &str)] = &[
    ("source_workload_namespace", "bookinfo"),
    // Workloads named as Istio names them (the Deployment), apart from the canonical service.
    ("source_workload", "productpage-v1"),
    ("source_canonical_service", "productpage"),
    ("source_canonical_revision", "v1"),
    ("destination_service_namespace", "bookinfo"),
    ("destination_service_name", "reviews"),
    ("destination_service", "reviews.bookinfo.svc.cluster.local"),
    ("destination_workload_namespace", "bookinfo"),
    ("destination_workload", "reviews-v1"),
    ("destination_canonical_service", "reviews"),
];

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut labels: Vec<_> = PRODUCTPAGE.to_vec();
    for (k, v) in extra {
        labels.retain(|(key, _)| key != k);
        labels.push((k, v));
    }
    labels
}

#[test]
fn a_canary_reads_as_two_versions_behind_one_service_with_its_split_and_p99() {
    let v1 = with(&[
        ("destination_canonical_revision", "v1"),
        ("response_code", "200"),
        ("connection_security_policy", "mutual_tls"),
        ("response_flags", "-"),
    ]);
    let v2 = with(&[
        ("destination_workload", "reviews-v2"),
        ("destination_canonical_revision", "v2"),
        ("response_code", "200"),
        ("connection_security_policy", "mutual_tls"),
        ("response_flags", "-"),
    ]);
    let v2_errors = with(&[
        ("destination_workload", "reviews-v2"),
        ("destination_canonical_revision", "v2"),
        ("response_code", "503"),
        ("connection_security_policy", "mutual_tls"),
        ("response_flags", "UF"),
    ]);
    let denied = with(&[
        ("source_workload", "client"),
        ("source_canonical_revision", "latest"),
        ("destination_workload", "unknown"),
        ("response_code", "403"),
        ("connection_security_policy", "mutual_tls"),
        ("response_flags", "-"),
    ]);
    // An application's own 403 is an answer, not a denial.
    let forbidden_by_app = with(&[
        ("destination_canonical_revision", "v1"),
        ("response_code", "403"),
        ("connection_security_policy", "mutual_tls"),
        ("response_flags", "-"),
    ]);
    let p99 = with(&[("le", "")]);
    let answers = Answers {
        requests: answer(&[
            (&v1, "9"),
            (&v2, "0.9"),
            (&v2_errors, "0.1"),
            (&denied, "2"),
            (&forbidden_by_app, "0"),
        ]),
        p99_by_source: answer(&[(&p99, "12.5")]),
        p99_by_workload: answer(&[(
            &with(&[
                ("destination_workload", "reviews-v2"),
                ("destination_canonical_revision", "v2"),
            ]),
            "NaN",
        )]),
        ..Answers::default()
    };
    let graph = build("bookinfo", "1m", &answers, BTreeSet::new());
    let ids: Vec<&str> = graph.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "service:bookinfo/reviews",
            "workload:bookinfo/client/latest",
            "workload:bookinfo/productpage-v1/v1",
            "workload:bookinfo/reviews-v1/v1",
            "workload:bookinfo/reviews-v2/v2",
        ]
    );
    let edge = |source: &str, target: &str, denied: bool| {
        graph
            .edges
            .iter()
            .find(|e| e.source == source && e.target == target && e.denied == denied)
            .unwrap_or_else(|| panic!("no edge {source} -> {target} in {:#?}", graph.edges))
    };
    let call = edge(
        "workload:bookinfo/productpage-v1/v1",
        "service:bookinfo/reviews",
        false,
    );
    assert!((call.request_rate - 10.0).abs() < 1e-9);
    assert!((call.error_rate - 0.01).abs() < 1e-9);
    assert_eq!(call.p99_ms, Some(12.5));
    assert!((call.mtls - 1.0).abs() < 1e-9);
    let to_v1 = edge(
        "service:bookinfo/reviews",
        "workload:bookinfo/reviews-v1/v1",
        false,
    );
    let to_v2 = edge(
        "service:bookinfo/reviews",
        "workload:bookinfo/reviews-v2/v2",
        false,
    );
    assert!((to_v1.request_rate / call.request_rate - 0.9).abs() < 1e-9);
    assert!((to_v2.request_rate / call.request_rate - 0.1).abs() < 1e-9);
    // NaN (no request in the window) is no latency.
    assert_eq!(to_v2.p99_ms, None);
    // What policy denied stays apart and reaches no workload.
    let refused = edge(
        "workload:bookinfo/client/latest",
        "service:bookinfo/reviews",
        true,
    );
    assert!((refused.request_rate - 2.0).abs() < 1e-9);
    assert_eq!(graph.edges.len(), 4);
}

#[test]
fn tcp_edges_come_from_the_agents_and_waypoints_are_drawn_through() {
    let tcp = [
        ("reporter", "source"),
        ("source_workload_namespace", "bookinfo"),
        ("source_workload", "productpage-v1"),
        ("source_canonical_revision", "v1"),
        ("destination_service_namespace", "bookinfo"),
        ("destination_service_name", "details"),
        ("destination_workload_namespace", "bookinfo"),
        ("destination_workload", "details-v1"),
        ("destination_canonical_revision", "v1"),
        ("connection_security_policy", "mutual_tls"),
        ("response_flags", "-"),
    ];
    let mut from_waypoint = tcp.to_vec();
    from_waypoint[2] = ("source_workload", "waypoint");
    let mut plaintext = tcp.to_vec();
    plaintext[0] = ("reporter", "destination");
    plaintext[2] = ("source_workload", "unknown");
    plaintext[9] = ("connection_security_policy", "unknown");
    // The same connections as the destination's agent saw them: not counted twice.
    let mut twice = tcp.to_vec();
    twice[0] = ("reporter", "destination");
    let answers = Answers {
        tcp_bytes: answer(&[
            (&tcp, "2048"),
            (&from_waypoint, "99"),
            (&plaintext, "10"),
            (&twice, "2048"),
        ]),
        tcp_connections: answer(&[
            (&tcp, "0.5"),
            (&from_waypoint, "9"),
            (&plaintext, "1"),
            (&twice, "0.5"),
        ]),
        ..Answers::default()
    };
    let hidden = BTreeSet::from([("bookinfo".to_owned(), "waypoint".to_owned())]);
    let graph = build("bookinfo", "1m", &answers, hidden);
    assert!(graph.nodes.iter().all(|n| n.name != "waypoint"));
    let call = graph
        .edges
        .iter()
        .find(|e| e.source == "workload:bookinfo/productpage-v1/v1")
        .expect("productpage's TCP edge");
    assert!(!call.is_http());
    assert!((call.tcp_bytes_per_second - 2048.0).abs() < 1e-9);
    assert!((call.tcp_connections_per_second - 0.5).abs() < 1e-9);
    assert!((call.mtls - 1.0).abs() < 1e-9);
    let unknown = graph
        .edges
        .iter()
        .find(|e| e.source == "unknown")
        .expect("the plaintext caller's edge");
    assert_eq!(unknown.mtls, 0.0);
    // The service's edge to details carries both callers' connections, not the waypoint's.
    let served = graph
        .edges
        .iter()
        .find(|e| e.source == "service:bookinfo/details")
        .expect("the service's edge");
    assert!((served.tcp_connections_per_second - 1.5).abs() < 1e-9);
}

#[test]
fn prometheus_errors_and_matrices_are_read_as_its_api_documents() {
    let refused = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
    let error = parse_vector("sum(", refused).unwrap_err().to_string();
    assert_eq!(
        error,
        "Prometheus refused \"sum(\": bad_data: parse error at char 5"
    );
    let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[
        {"metric":{"response_code":"200"},"values":[[1.5,"1"],[16.5,"+Inf"]]}]}}"#;
    let series = parse_matrix("q", matrix).expect("a matrix");
    assert_eq!(series[0].points, [(1.5, 1.0), (16.5, f64::INFINITY)]);
    assert!(parse_vector("q", matrix).is_err());
    let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1.0,"3"]}}"#;
    assert_eq!(parse_vector("q", scalar).expect("a scalar")[0].value, 3.0);
}
