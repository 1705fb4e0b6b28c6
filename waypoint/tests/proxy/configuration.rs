//! Configuration in and out: a bad configuration keeps the last good one, delta ADS with a
//! NACK, request metrics with Istio's labels, and the admin page's `/config_dump`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use tokio::sync::watch;
use weft_proto::waypoint as proto;

use waypoint::testing::{FakeEndpoint, LOCALHOST};

use crate::harness::*;

#[tokio::test]
async fn invalid_config_is_rejected_and_the_last_good_one_kept() {
    let (harness, v1, _v2) = routed_to_v1().await;
    let bad_route = proto::HttpRoute {
        r#match: vec![proto::HttpMatchRequest {
            uri: Some(proto::StringMatch {
                match_type: Some(proto::string_match::MatchType::Regex(
                    "(unclosed".to_owned(),
                )),
            }),
            ..Default::default()
        }],
        ..route_to("v1")
    };
    let error = harness
        .waypoint
        .apply_config(config(vec![bad_route], vec![cluster("v1", &[&v1])]))
        .unwrap_err();
    assert!(error.contains("http route 0"), "{error}");
    let (status, _, body) = harness.get("/").await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v1".as_ref()));
}

#[tokio::test]
async fn configuration_arrives_over_delta_ads_and_a_bad_push_is_nacked() {
    use prost_types::Any;
    use weft_xds::{DeltaAdsServer, ResourceStore, XdsCounters};

    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let mut resources = ResourceStore::new();
    let type_url = weft_proto::WAYPOINT_CONFIG_TYPE_URL;
    resources.set(
        type_url,
        "default/waypoint",
        Any::from_msg(&config(vec![route_to("v1")], vec![cluster("v1", &[&v1])])).unwrap(),
    );
    let counters = Arc::new(XdsCounters::default());
    let server = DeltaAdsServer::new(resources.reader()).with_metrics(counters.clone());
    let _session = subscribe_over_delta_ads(&harness, server).await;
    let mut version = harness.waypoint.store().version();
    tokio::time::timeout(Duration::from_secs(10), version.wait_for(|v| *v >= 1))
        .await
        .unwrap()
        .unwrap();
    let (status, _, body) = harness.get("/").await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v1".as_ref()));

    // A push the waypoint cannot apply is NACKed and traffic keeps the last good routes.
    let mut bad = config(vec![route_to("v2")], vec![cluster("v2", &[&v2])]);
    bad.services[0].vips[0] = "not-an-ip".to_owned();
    resources.set(type_url, "default/waypoint", Any::from_msg(&bad).unwrap());
    for _ in 0..200 {
        if counters.rejects() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(counters.rejects(), 1);
    let (status, _, body) = harness.get("/").await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v1".as_ref()));

    // The next good push applies.
    resources.set(
        type_url,
        "default/waypoint",
        Any::from_msg(&config(vec![route_to("v2")], vec![cluster("v2", &[&v2])])).unwrap(),
    );
    tokio::time::timeout(Duration::from_secs(10), version.wait_for(|v| *v >= 2))
        .await
        .unwrap()
        .unwrap();
    let (status, _, body) = harness.get("/").await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v2".as_ref()));
}

#[tokio::test]
async fn requests_are_counted_with_istio_labels() {
    let (harness, _v1, _v2) = routed_to_v1().await;
    for _ in 0..3 {
        harness.get("/").await;
    }
    let text = harness.metrics().await;
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"200\""))
        .unwrap_or_else(|| panic!("{text}"));
    for label in [
        "reporter=\"waypoint\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
        "destination_principal=\"spiffe://cluster.local/ns/default/sa/reviews-v1\"",
        "destination_service=\"reviews.default.svc.cluster.local\"",
        "destination_service_name=\"reviews\"",
        "destination_version=\"v1\"",
        "connection_security_policy=\"mutual_tls\"",
        "response_flags=\"-\"",
    ] {
        assert!(line.contains(label), "{label} missing in {line}");
    }
    assert!(line.ends_with(" 3"), "{line}");
    assert!(text.contains("istio_request_duration_milliseconds_bucket{"));
    assert!(text.contains("le=\"0.5\""));
}

#[tokio::test]
async fn admin_config_dump_shows_config_endpoint_state_certificate_and_xds_never_the_key() {
    use prost_types::Any;
    use weft_xds::{DeltaAdsServer, ResourceStore};

    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let mut both = cluster("", &[&v1, &v2]);
    both.outlier_detection = Some(proto::OutlierDetection {
        consecutive_5xx_errors: Some(2),
        base_ejection_time: Some(duration(Duration::from_secs(30))),
        max_ejection_percent: 50,
        ..Default::default()
    });
    let default = proto::HttpRoute {
        name: "default".to_owned(),
        retries: Some(proto::HttpRetry {
            attempts: 0,
            ..Default::default()
        }),
        ..route_to("")
    };
    let mut good = config(vec![route_to_undefined_subset(), default], vec![both]);
    good.workloads = vec![direct_workload(&v2)];
    good.authorization_policies
        .push(deny_admin_for_the_service());

    // Over delta ADS, with one push the waypoint must refuse.
    let mut resources = ResourceStore::new();
    let type_url = weft_proto::WAYPOINT_CONFIG_TYPE_URL;
    resources.set(type_url, "default/waypoint", Any::from_msg(&good).unwrap());
    let server = DeltaAdsServer::new(resources.reader());
    let session = subscribe_over_delta_ads(&harness, server).await;
    let mut version = harness.waypoint.store().version();
    tokio::time::timeout(Duration::from_secs(10), version.wait_for(|v| *v >= 1))
        .await
        .unwrap()
        .unwrap();
    let mut bad = good.clone();
    bad.services[0].vips[0] = "not-an-ip".to_owned();
    resources.set(type_url, "default/waypoint", Any::from_msg(&bad).unwrap());
    for _ in 0..200 {
        if harness
            .waypoint
            .store()
            .xds_history()
            .last_rejected
            .is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // v1 fails twice and is ejected.
    v1.behaviour.status.store(500, Ordering::Relaxed);
    let mut sender = harness.http1().await;
    for _ in 0..4 {
        send_on(&mut sender, get("/")).await;
    }

    let admin = harness
        .waypoint
        .bind_admin(
            SocketAddr::new(LOCALHOST, 0),
            Some(session.state.clone()),
            serde_json::json!({"adminAddress": "127.0.0.1:15000"}),
        )
        .await
        .unwrap();
    let admin_address = admin.address().unwrap();
    tokio::spawn(admin.run());
    let (status, text) = http_get(admin_address, "/config_dump").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("BEGIN"),
        "{text}"
    );
    let dump: serde_json::Value = serde_json::from_str(&text).unwrap();

    assert_eq!(dump["waypoint"], "default/waypoint");
    assert_eq!(dump["settings"]["adminAddress"], "127.0.0.1:15000");
    let certificate = &dump["certificate"];
    assert_eq!(
        certificate["identity"],
        harness.waypoint_identity.to_string()
    );
    assert!(
        certificate["serial"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{certificate}"
    );
    assert!(
        certificate["not_after"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{certificate}"
    );
    assert_eq!(certificate.as_object().unwrap().len(), 7, "{certificate}");

    let xds = &dump["xds"];
    assert_eq!(xds["connected"], true, "{xds}");
    assert_eq!(xds["last_applied"]["resource"], "default/waypoint", "{xds}");
    assert!(
        xds["last_applied"]["version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{xds}"
    );
    assert!(
        xds["last_rejected"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not-an-ip")),
        "{xds}"
    );
    assert_ne!(
        xds["last_rejected"]["version"],
        xds["last_applied"]["version"]
    );

    let service = &dump["services"][0];
    assert_eq!(service["hostname"], HOST);
    assert_eq!(service["ports"][0]["protocol"], "http");
    let routes = service["http_routes"].as_array().unwrap();
    assert_eq!(routes[0]["name"], "to-v9");
    assert_eq!(
        routes[0]["action"]["forward"][0]["missing"], true,
        "{service}"
    );
    assert_eq!(
        routes[1]["action"]["forward"][0]["missing"], false,
        "{service}"
    );
    assert_eq!(routes[1]["retries"]["attempts"], 0);

    let cluster = &dump["clusters"][0];
    assert!(
        cluster["outlier_detection"]
            .as_str()
            .unwrap()
            .contains("consecutive5xxErrors 2")
    );
    let endpoint = |e: &FakeEndpoint| {
        cluster["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["address"] == e.app_address.to_string())
            .unwrap_or_else(|| panic!("{cluster}"))
            .clone()
    };
    let ejected = endpoint(&v1);
    assert_eq!(ejected["outlier"]["ejected"], true, "{ejected}");
    assert_eq!(ejected["outlier"]["ejections"], 1, "{ejected}");
    assert!(
        ejected["outlier"]["ejection_remaining_ms"]
            .as_u64()
            .unwrap()
            > 20_000
    );
    assert_eq!(ejected["identity"], v1.identity.to_string());
    assert_eq!(endpoint(&v2)["outlier"]["ejected"], false);

    assert_eq!(
        dump["workloads"][0]["address"],
        v2.app_address.ip().to_string()
    );
    assert_eq!(dump["workloads"][0]["services"][0], HOST);
    let policy = &dump["policies"][0];
    assert_eq!(
        (policy["name"].as_str(), policy["action"].as_str()),
        (Some("deny-admin"), Some("DENY"))
    );
    assert_eq!(policy["target_services"][0], HOST);

    // Nothing else is served there.
    let (status, _) = http_get(admin_address, "/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A delta ADS server and the waypoint's client subscribed to its configuration there; both
/// stop when this is dropped.
struct XdsSession {
    state: watch::Receiver<weft_xds::ConnectionState>,
    _server: watch::Sender<bool>,
    _client: watch::Sender<bool>,
}

async fn subscribe_over_delta_ads(
    harness: &Harness,
    server: weft_xds::DeltaAdsServer,
) -> XdsSession {
    let (address, server_stop) =
        serve_grpc(tonic::transport::Server::builder().add_service(server.into_service())).await;
    let client = weft_xds::DeltaClient::new(
        weft_xds::Target::address(&format!("http://{address}")).unwrap(),
        weft_proto::envoy::config::core::v3::Node {
            id: "waypoint~127.0.0.1~waypoint.default~default.svc.cluster.local".to_owned(),
            ..Default::default()
        },
    )
    .subscribe_names(
        weft_proto::WAYPOINT_CONFIG_TYPE_URL,
        vec!["default/waypoint".to_owned()],
        harness.waypoint.store().xds_handler(),
    );
    let state = client.state();
    let (client_stop, mut stopped) = watch::channel(false);
    tokio::spawn(client.run_until(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    XdsSession {
        state,
        _server: server_stop,
        _client: client_stop,
    }
}
