//! The `reviews` service most waypoint tests share: namespace `shop`, Service address
//! [`REVIEWS_VIP`], behind the namespace's waypoint (named `waypoint`, from
//! [`crate::waypoint_resources`]), with one pod per version labelled `version: vN`.

/// The `reviews` Service's cluster address.
pub const REVIEWS_VIP: &str = "10.96.0.20";

/// The `reviews` Service, labelled to use the waypoint: `http` 80 to the pods' 8080, and `grpc`
/// 9090 when `grpc`.
pub fn reviews_service(grpc: bool) -> String {
    let grpc = if grpc {
        "  - {name: grpc, port: 9090, targetPort: 9090}\n"
    } else {
        ""
    };
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: shop
  labels: {{app: reviews, istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: {REVIEWS_VIP}
  selector: {{app: reviews}}
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
{grpc}"#
    )
}

/// An OpenTelemetry collector's Service in `shop` (OTLP/gRPC on 4317), selecting the pods
/// labelled `app: otel-collector` (a client pod of that name, not enrolled).
pub const OTEL_COLLECTOR: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: otel-collector, namespace: shop}
spec:
  clusterIP: 10.96.0.77
  selector: {app: otel-collector}
  ports:
  - {name: grpc-otlp, port: 4317}
"#;

/// `client` and `reviews-v1` on node1, `reviews` behind the waypoint of `shop` on node2, and
/// the pod behind [`OTEL_COLLECTOR`] (not enrolled) on node2, under `mesh_config`.
pub fn reviews_with_collector(mesh_config: &str) -> (Vec<crate::PodSpec>, crate::MeshOptions) {
    use crate::PodSpec;
    (
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
            PodSpec::waypoint("waypoint", "node2", "shop"),
            PodSpec::client("otel-collector", "node2", "shop").not_enrolled(),
        ],
        crate::MeshOptions {
            config: format!(
                "{}---\n{OTEL_COLLECTOR}---\n{}",
                reviews_service(false),
                crate::waypoint_resources("shop")
            ),
            mesh_config: mesh_config.to_owned(),
            ..crate::MeshOptions::default()
        },
    )
}

/// The `reviews` DestinationRule: one subset per version of `versions`, selected by the
/// `version` label, after `traffic_policy` (YAML indented under `spec`, or empty).
pub fn reviews_subsets(versions: &[&str], traffic_policy: &str) -> String {
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}\nspec:\n  host: reviews.shop.svc.cluster.local\n",
    );
    if !traffic_policy.is_empty() {
        yaml.push_str(traffic_policy);
        yaml.push('\n');
    }
    yaml.push_str("  subsets:\n");
    for version in versions {
        yaml.push_str(&format!(
            "  - {{name: {version}, labels: {{version: {version}}}}}\n"
        ));
    }
    yaml
}

/// The `reviews` Service, its DestinationRule with `versions` and the waypoint: the
/// configuration a test adds its routes to.
pub fn reviews_behind_waypoint(grpc: bool, versions: &[&str]) -> String {
    format!(
        "{}---\n{}---\n{}",
        reviews_service(grpc),
        reviews_subsets(versions, ""),
        crate::waypoint_resources("shop")
    )
}

/// The `cart` Service of `shop` at 10.96.0.10, no waypoint: `http` 80 to the pods' `http`
/// port.
pub const CART_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

/// A ServiceEntry `payments-api` of `shop` (labelled `app: payments-api`) for the external
/// `host` at `vip`, `http` 80 to port 8080 of the STATIC `endpoint`.
pub fn payments_service_entry(host: &str, vip: &str, endpoint: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: payments-api
  namespace: shop
  labels: {{app: payments-api}}
spec:
  hosts: [{host}]
  addresses: [{vip}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  endpoints:
  - {{address: {endpoint}, ports: {{http: 8080}}}}
"#
    )
}

/// A DENY in `shop` of everything from the `client` service account.
pub const DENY_CLIENT: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]}]
"#;

/// A mesh config that turns the access log on, Istio's default TEXT line on standard output
/// (the proxies' process log), as Istio's `demo` profile sets it: Istio writes none by default.
pub const STDOUT_ACCESS_LOG: &str = "accessLogFile: /dev/stdout\n";
