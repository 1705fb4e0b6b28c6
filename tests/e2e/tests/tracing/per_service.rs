//! A Telemetry attached to one Service samples that service only at the waypoint.

use super::*;

/// `ratings` beside `reviews` in `shop`, behind the same waypoint.
const RATINGS_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: ratings
  namespace: shop
  labels: {app: ratings, istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 10.96.0.21
  selector: {app: ratings}
  ports:
  - {name: http, port: 80, targetPort: 8080}
"#;

const RATINGS_VIP: &str = "10.96.0.21";

/// Istio's Telemetry attached to the Service `reviews` only: sample nothing there.
const REVIEWS_NO_SAMPLING: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews-no-sampling, namespace: shop}
spec:
  targetRefs:
  - {kind: Service, group: "", name: reviews}
  tracing:
  - randomSamplingPercentage: 0
"#;

#[test]
fn a_telemetry_attached_to_a_service_samples_that_service_only_at_the_waypoint() {
    let mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
            PodSpec::app("ratings-v1", "node2", "shop", "ratings", "v1"),
            PodSpec::waypoint("waypoint", "node2", "shop"),
            PodSpec::client("otel-collector", "node2", "shop").not_enrolled(),
        ],
        MeshOptions {
            config: format!(
                "{}---\n{RATINGS_SERVICE}---\n{OTEL_COLLECTOR}---\n{}",
                reviews_service(false),
                waypoint_resources("shop")
            ),
            mesh_config: MESH_CONFIG.to_owned(),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    let (receiver, _runtime) = start_receiver(&mesh, "otel-collector");
    for vip in [VIP, RATINGS_VIP] {
        mesh.await_reachable("client", &format!("http://{vip}/ready"))
            .expect("the service is reachable through the waypoint");
    }
    mesh.await_waypoint("waypoint", "a Telemetry attached to reviews", || {
        mesh.write_config("reviews-telemetry.yaml", REVIEWS_NO_SAMPLING)
    })
    .expect("the waypoint applies the Telemetry");
    let flag = |vip: &str, path: &str| {
        let response = mesh.curl_with("client", &[&format!("http://{vip}{path}")]);
        assert_eq!(response.status, 200, "{}", response.body);
        let forwarded: serde_json::Value = serde_json::from_str(&response.body).unwrap();
        let traceparent = forwarded["headers"]["traceparent"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(traceparent.starts_with("00-"), "{traceparent:?}");
        traceparent
            .rsplit('-')
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    for i in 0..5 {
        assert_eq!(
            flag(VIP, &format!("/reviews-{i}")),
            "00",
            "reviews' own Telemetry samples 0%"
        );
        assert_eq!(
            flag(RATINGS_VIP, &format!("/ratings-{i}")),
            "01",
            "ratings keeps the mesh's 100%"
        );
    }
    // Spans leave in the order their requests end: once ratings' last span arrived, any of
    // reviews' would have too.
    let spans_with = |part: &str| -> Vec<(String, Span)> {
        receiver
            .all()
            .into_iter()
            .filter(|(_, s)| tag(s, "http.url").is_some_and(|u| u.contains(part)))
            .collect()
    };
    assert!(
        mesh.eventually(Duration::from_secs(15), || spans_with("/ratings-").len()
            == 5),
        "ratings' spans did not all reach the collector: {:?}\n{}",
        receiver.all(),
        mesh.log_of("waypoint-waypoint")
    );
    let (service, span) = &spans_with("/ratings-4")[0];
    assert_eq!(service, "waypoint.shop");
    assert_eq!(span.name, "ratings.shop.svc.cluster.local:80/*");
    assert!(
        spans_with("/reviews-").is_empty(),
        "reviews' requests were traced: {:?}",
        spans_with("/reviews-")
    );

    // Deleted: reviews is traced again, on the mesh's default.
    mesh.await_waypoint("waypoint", "the Telemetry deleted", || {
        mesh.remove_config("reviews-telemetry.yaml")
    })
    .expect("the waypoint follows the deletion");
    assert_eq!(flag(VIP, "/reviews-again"), "01");
    assert!(
        mesh.eventually(Duration::from_secs(15), || !spans_with("/reviews-again")
            .is_empty()),
        "no span for reviews once its Telemetry was deleted: {:?}",
        receiver.all()
    );
}
