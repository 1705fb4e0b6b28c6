//! Istio's bookinfo on the testbed, as the tests that replay Istio's documented tasks deploy
//! it: namespace `default` in the ambient mesh, the four services with Istio's names, ports and
//! service accounts (`bookinfo-<service>`), productpage calling details and reviews, reviews v2
//! and v3 calling ratings, the namespace's waypoint, and `curl` as the client. The tasks' YAML is
//! then applied as Istio's docs write it. Helpers read productpage's replies: which version of
//! reviews answered, what ratings said, and on which pooled connection each call went out.

use serde_json::Value;

use crate::{Mesh, MeshOptions, PodSpec, waypoint_resources};

/// The waypoint's pod (and Gateway) name.
pub const WAYPOINT: &str = "waypoint";
/// productpage's `ip:port`, and the Host its clients send.
pub const PRODUCTPAGE: &str = "10.96.1.10:9080";
pub const PRODUCTPAGE_HOST: &str = "productpage:9080";
const PORT: u16 = 9080;

/// The bookinfo pods: curl, productpage, details and reviews v1 on node1; reviews v2 and v3,
/// ratings and the waypoint on node2, so that every call of the chain crosses the fabric.
pub fn pods() -> Vec<PodSpec> {
    let app = |service: &str, version: &str, node: &str| {
        PodSpec::app(
            &format!("{service}-{version}"),
            node,
            "default",
            service,
            version,
        )
        .with_http_port(PORT)
        .with_service_account(&format!("bookinfo-{service}"))
    };
    let url = |ip: &str, path: &str| format!("http://{ip}:{PORT}{path}");
    vec![
        PodSpec::client("curl", "node1", "default"),
        app("productpage", "v1", "node1")
            .with_upstream("details", &url("10.96.1.20", "/details/0"))
            .with_upstream("reviews", &url("10.96.1.40", "/reviews/0")),
        app("details", "v1", "node1"),
        app("reviews", "v1", "node1"),
        app("reviews", "v2", "node2").with_upstream("ratings", &url("10.96.1.30", "/ratings/0")),
        app("reviews", "v3", "node2").with_upstream("ratings", &url("10.96.1.30", "/ratings/0")),
        app("ratings", "v1", "node2"),
        PodSpec::waypoint(WAYPOINT, "node2", "default"),
    ]
}

/// Namespace `default` in the ambient mesh, its services using the waypoint when
/// `use_waypoint` (what `istioctl waypoint apply --enroll-namespace` sets).
pub fn namespace(use_waypoint: bool) -> String {
    let waypoint_label = if use_waypoint {
        ", istio.io/use-waypoint: waypoint"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  labels: {{istio.io/dataplane-mode: ambient{waypoint_label}}}\n"
    )
}

/// The namespace, the services and the waypoint's Gateway and Service.
pub fn config(use_waypoint: bool) -> String {
    let mut yaml = format!("{}---\n", namespace(use_waypoint));
    for (service, octet) in [
        ("productpage", 10),
        ("details", 20),
        ("ratings", 30),
        ("reviews", 40),
    ] {
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {service}\n  namespace: default\n  labels: {{app: {service}, service: {service}}}\nspec:\n  clusterIP: 10.96.1.{octet}\n  selector: {{app: {service}}}\n  ports:\n  - {{name: http, port: {PORT}}}\n---\n"
        ));
    }
    yaml.push_str(&waypoint_resources("default"));
    yaml
}

/// Starts bookinfo with `extra` pods and configuration, and waits until the client's calls reach
/// every service.
pub fn start(extra_pods: Vec<PodSpec>, use_waypoint: bool, extra_config: &str) -> Mesh {
    let mut pods = pods();
    pods.extend(extra_pods);
    let mesh = Mesh::start(
        pods,
        MeshOptions {
            config: format!("{}{extra_config}", config(use_waypoint)),
            log_requests: true,
            ..MeshOptions::default()
        },
    )
    .expect("start bookinfo");
    let ready = mesh.eventually(std::time::Duration::from_secs(20), || {
        let page = mesh.curl_with("curl", &[&format!("http://{PRODUCTPAGE}/productpage")]);
        let reply = page.json();
        page.status == 200
            && call(&reply, "details").status == 200
            && call(&reply, "reviews").status == 200
    });
    assert!(ready, "bookinfo does not answer\n{}", mesh.logs());
    mesh
}

/// What a sample app reported of one upstream call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Call {
    /// 0 when the call failed without an answer.
    pub status: u16,
    pub version: String,
    /// The local address of the pooled connection it went out on.
    pub connection: String,
    /// A body that was not the sample app's (an error page), or why the call failed.
    pub error: String,
}

/// The call to `name` in a sample app's reply (`Call::default()` when there was none).
pub fn call(reply: &Value, name: &str) -> Call {
    let Some(found) = reply["upstreams"]
        .as_array()
        .and_then(|calls| calls.iter().find(|c| c["name"] == name))
    else {
        return Call::default();
    };
    let text = |key: &str| found[key].as_str().unwrap_or_default().to_owned();
    Call {
        status: found["status"]
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0),
        version: text("version"),
        connection: text("connection"),
        error: text("error"),
    }
}

/// reviews' call to ratings, inside productpage's reply.
pub fn ratings(reply: &Value) -> Call {
    let reviews = reply["upstreams"]
        .as_array()
        .and_then(|calls| calls.iter().find(|c| c["name"] == "reviews"))
        .cloned()
        .unwrap_or(Value::Null);
    call(&reviews, "ratings")
}

/// The replies of a session answer that productpage answered with 200, with their time in ms;
/// panics naming the first other answer.
pub fn pages(answer: &Value) -> Vec<(Value, f64)> {
    answer["answers"]
        .as_array()
        .unwrap_or_else(|| panic!("no answers in {answer}"))
        .iter()
        .map(|a| {
            assert_eq!(a["status"], 200, "productpage answered {a}");
            (a["body"].clone(), a["ms"].as_f64().unwrap_or_default())
        })
        .collect()
}
