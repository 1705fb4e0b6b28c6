//! A ServiceEntry whose `workloadSelector` picks its endpoints among the pods and
//! WorkloadEntries of its namespace, as istiod's ambient index builds them
//! (`pilot/pkg/serviceregistry/ambient/workloads.go`: a selected workload names the entry's
//! hosts in its `services`): a mesh pod and a VM outside the mesh behind one host and VIP,
//! reached through the node agents in L4, then through the waypoint the entry names
//! (`istio.io/use-waypoint`) with the host's routes; relabelled out of the selector, each leaves
//! the host once the agents, or the waypoint, applied the change. Needs root.

use std::{collections::BTreeSet, time::Duration};

use weft_e2e::{Mesh, MeshOptions, PodSpec, curl::answering_pods};
use weft_test_support::prometheus::Exposition;

const HOST: &str = "svc.example.internal";
/// The entry's VIP: nothing answers there, the agents resolve it.
const VIP: &str = "10.96.200.50";
const WAYPOINT: &str = "waypoint";

/// The ServiceEntry for `HOST` selecting `app: api` (port 80 to the workloads' 8080), with
/// extra metadata `labels`.
fn selector_entry(labels: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: shop, labels: {{{labels}}}}}
spec:
  hosts: [{HOST}]
  addresses: [{VIP}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: api}}}}
"#
    )
}

/// The WorkloadEntry for the VM at `address` (outside the mesh: plain TCP), labelled `app`.
fn vm_entry(address: &str, app: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: api-vm, namespace: shop, labels: {{app: {app}}}}}
spec: {{address: "{address}", serviceAccount: api-vm}}
"#
    )
}

/// The workloads, by name, that the agent store `state` has backing `HOST`.
fn backing(state: &serde_json::Value) -> BTreeSet<String> {
    state["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["services"].to_string().contains(HOST))
        .filter_map(|w| w["name"].as_str().map(str::to_owned))
        .collect()
}

/// A client, the selected pod `api-1`, and the VM `api-vm` (a testbed namespace no Pod object
/// names, never enrolled) that the WorkloadEntry points at; `extra` pods besides.
fn mesh(extra: Vec<PodSpec>, options: MeshOptions) -> Mesh {
    let mut pods = vec![
        PodSpec::client("client", "node1", "shop"),
        PodSpec::app("api-1", "node2", "shop", "api", "v1"),
        PodSpec::app("api-vm", "node2", "shop", "api-vm", "v1").outside_cluster(),
    ];
    pods.extend(extra);
    Mesh::start(pods, options).expect("start the mesh")
}

fn retire(pod: &mut PodSpec) {
    pod.labels.insert("app".into(), "retired".into());
}

#[test]
fn a_selected_pod_and_workload_entry_back_the_host_through_the_agents_until_relabelled() {
    let mut mesh = mesh(Vec::new(), MeshOptions::default());
    let vm = mesh.pod("api-vm").ip.to_string();
    mesh.kubectl_apply(&selector_entry("")).unwrap();
    mesh.kubectl_apply(&vm_entry(&vm, "api")).unwrap();
    mesh.await_agents("the pod and the WorkloadEntry backing the host", |state| {
        backing(state) == BTreeSet::from(["api-1".to_owned(), "api-vm".to_owned()])
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    // Each request on its own connection (the agent picks an endpoint per connection): the
    // pod over HBONE and the VM in plain TCP both answer for the VIP, on the port's targetPort.
    let url = format!("http://{VIP}/selected");
    let close = ["-H", "Connection: close"];
    let answers = mesh.curl_bodies("client", &url, 12, &close).unwrap();
    assert_eq!(
        answering_pods(&answers),
        ["api-1".to_owned(), "api-vm".to_owned()].into(),
        "{answers:?}\n{}",
        mesh.logs()
    );
    let opened = Exposition::parse(&mesh.metrics("node1")).count(
        "istio_tcp_connections_opened_total",
        &[("reporter", "source"), ("destination_service", HOST)],
    );
    assert!(opened >= 12, "{opened} connections counted under {HOST}");

    // Relabelled, both leave the host: once the agents hold the entry with no endpoint, a
    // connection to the VIP gets no answer.
    mesh.update_pod("api-1", retire).unwrap();
    mesh.kubectl_apply(&vm_entry(&vm, "retired")).unwrap();
    mesh.await_agents("the relabelled workloads leaving the host", |state| {
        backing(state).is_empty()
            && state["services"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["hostname"] == HOST))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let answer = mesh.curl_with("client", &[&url]);
    assert_eq!(answer.status, 0, "{}", answer.body);
}

/// The host's route at the waypoint: a header added to every request.
const ROUTES: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: shop}
spec:
  hosts: [svc.example.internal]
  http:
  - headers: {request: {set: {x-selected: through-waypoint}}}
    route: [{destination: {host: svc.example.internal}}]
"#;

#[test]
fn a_selector_entry_using_a_waypoint_is_routed_there_until_relabelled() {
    let mut mesh = mesh(
        vec![PodSpec::waypoint(WAYPOINT, "node2", "shop")],
        MeshOptions {
            config: weft_e2e::waypoint_resources("shop"),
            ..MeshOptions::default()
        },
    );
    let vm = mesh.pod("api-vm").ip.to_string();
    mesh.kubectl_apply(&selector_entry(&format!(
        "istio.io/use-waypoint: {WAYPOINT}"
    )))
    .unwrap();
    mesh.kubectl_apply(&vm_entry(&vm, "api")).unwrap();
    mesh.kubectl_apply(ROUTES).unwrap();
    let url = format!("http://{VIP}/selected");
    let routed = |body: &str| body.contains("\"x-selected\":\"through-waypoint\"");

    // The client's agent sends the VIP's traffic to the waypoint, which routes it (the header)
    // to the selected pod and VM.
    let reached = mesh.eventually(Duration::from_secs(20), || {
        let answer = mesh.curl_with("client", &[&url]);
        answer.status == 200 && routed(&answer.body)
    });
    assert!(reached, "the host was never routed\n{}", mesh.logs());
    let close = ["-H", "Connection: close"];
    let answers = mesh.curl_bodies("client", &url, 16, &close).unwrap();
    assert_eq!(
        answering_pods(&answers),
        ["api-1".to_owned(), "api-vm".to_owned()].into(),
        "{answers:?}"
    );
    assert!(answers.iter().all(|(_, body)| routed(body)), "{answers:?}");
    let served = Exposition::parse(&mesh.waypoint_metrics(WAYPOINT)).count(
        "istio_requests_total",
        &[
            ("reporter", "waypoint"),
            ("destination_service", HOST),
            ("destination_service_name", "api"),
            ("response_code", "200"),
        ],
    );
    assert!(served >= 17, "{served} requests counted under {HOST}");

    // The VM relabelled: once the waypoint applied it, only the pod answers.
    mesh.await_waypoint(WAYPOINT, "the relabelled WorkloadEntry", || {
        mesh.kubectl_apply(&vm_entry(&vm, "retired"))
    })
    .unwrap();
    let answers = mesh.curl_bodies("client", &url, 8, &close).unwrap();
    assert_eq!(
        answering_pods(&answers),
        ["api-1".to_owned()].into(),
        "{answers:?}"
    );

    // The pod relabelled too: the waypoint has no endpoint left for the host, 503 `UH`.
    let before = mesh.waypoint_config_version(WAYPOINT);
    mesh.update_pod("api-1", retire).unwrap();
    mesh.await_waypoint_since(WAYPOINT, &before, "the relabelled pod")
        .unwrap();
    let answer = mesh.curl_with("client", &[&url]);
    assert_eq!(answer.status, 503, "{}", answer.body);
    let unhealthy = Exposition::parse(&mesh.waypoint_metrics(WAYPOINT)).count(
        "istio_requests_total",
        &[
            ("destination_service", HOST),
            ("response_code", "503"),
            ("response_flags", "UH"),
        ],
    );
    assert!(unhealthy >= 1, "no 503 UH counted under {HOST}");
}
