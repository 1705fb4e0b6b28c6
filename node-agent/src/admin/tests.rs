use std::collections::BTreeMap;

use http::StatusCode;
use weft_identity::{CertificateSource, SpiffeId};
use weft_proto::istio::workload as proto;
use weft_proxy_core::metrics::{Reporter, SecurityPolicy};

use super::*;
use crate::{proxy::ConnectionLog, testing::local_certificates};

/// What `endpoints` answers `path` (the server itself is `weft_proxy_core`'s, tested there).
fn get(endpoints: &Endpoints, path: &str) -> (StatusCode, String) {
    endpoints(path)
        .map(|(status, _, body)| (status, body))
        .unwrap_or((StatusCode::NOT_FOUND, String::new()))
}

fn config() -> Config {
    let settings: BTreeMap<String, String> = [("NODE_NAME".to_owned(), "node1".to_owned())].into();
    Config::from_strings(&settings).unwrap()
}

#[tokio::test]
async fn the_three_ports_serve_the_dump_the_metrics_and_readiness() {
    let store = WorkloadStore::new();
    store.insert_workload(
        proto::Workload {
            uid: "Kubernetes//Pod/shop/cart-1".into(),
            name: "cart-1".into(),
            namespace: "shop".into(),
            addresses: vec![vec![10, 0, 0, 7]],
            service_account: "cart".into(),
            tunnel_protocol: proto::TunnelProtocol::Hbone as i32,
            ..Default::default()
        }
        .try_into()
        .unwrap(),
    );
    let certificates = local_certificates(Arc::new(
        weft_identity::CertificateAuthority::generate().unwrap(),
    ));
    let identity = SpiffeId::new("cluster.local", "shop", "cart").unwrap();
    let certificate = certificates.fetch(&identity).await.unwrap();
    let mut registry = Registry::default();
    let metrics = crate::metrics::Metrics::new(&mut registry);
    let guard = metrics.connection_opened_between(
        Reporter::Source,
        None,
        store
            .workload_by_uid("Kubernetes//Pod/shop/cart-1")
            .as_ref(),
        None,
        SecurityPolicy::MutualTls,
        ConnectionLog::default(),
    );
    guard.add_received(12);
    drop(guard);
    let (xds, xds_state) = watch::channel(ConnectionState::default());
    let describe = certificates.clone();
    let (drain, _watch) = weft_proxy_core::drain::channel();
    // Captured pods this process does not serve (a restart before the enrolling side's snapshot).
    let unserved = Arc::new(std::sync::atomic::AtomicUsize::new(2));
    let [dump, metrics_port, readiness] = endpoints(
        config(),
        store,
        Arc::new(move || describe.describe()),
        xds_state,
        Arc::new(registry),
        drain.status(),
        {
            let unserved = unserved.clone();
            Arc::new(move || unserved.load(std::sync::atomic::Ordering::Relaxed))
        },
    );

    let (status, body) = get(&dump, "/config_dump");
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json["state"]["workloads"][0]["uid"],
        "Kubernetes//Pod/shop/cart-1"
    );
    assert_eq!(
        json["certificates"][0]["certificate"]["serial"],
        certificate.describe().serial.as_str()
    );
    assert_eq!(json["config"]["node_name"], "node1");
    assert_eq!(json["xds"]["synced"], false);
    assert!(!body.contains("PRIVATE KEY"), "{body}");
    assert!(!body.contains("BEGIN"), "no PEM at all: {body}");
    assert_eq!(get(&dump, "/healthz").0, StatusCode::OK);

    let (status, text) = get(&metrics_port, "/metrics");
    assert_eq!(status, StatusCode::OK);
    for family in [
        "istio_tcp_connections_opened_total{reporter=\"source\"",
        "istio_tcp_connections_closed_total{reporter=\"source\"",
        "istio_tcp_received_bytes_total{",
        "istio_tcp_sent_bytes_total{",
        "destination_workload_namespace=\"shop\"",
        "source_workload=\"unknown\"",
    ] {
        assert!(text.contains(family), "missing {family} in\n{text}");
    }
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    assert_eq!(get(&metrics_port, "/stats/prometheus").1, text);

    // Ready once the first configuration arrived, on 15021 and 15020.
    let (status, body) = get(&readiness, READINESS_PATH);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("waiting for configuration"));
    xds.send_modify(|state| state.synced = true);
    // ... and every captured pod is served: the snapshot took them over.
    let (status, body) = get(&readiness, READINESS_PATH);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("2 captured pods not served"), "{body}");
    unserved.store(0, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get(&readiness, READINESS_PATH).0, StatusCode::OK);
    assert_eq!(get(&metrics_port, READINESS_PATH).0, StatusCode::OK);

    // Unready from the start of the drain (SIGTERM), on both ports.
    drain.start();
    let (status, body) = get(&readiness, READINESS_PATH);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("draining"), "{body}");
    assert_eq!(
        get(&metrics_port, READINESS_PATH).0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}
