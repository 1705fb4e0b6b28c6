//! Nodes, watched for the locality of the pods they run: a change of a node's topology labels
//! is pushed to the agents as an update of its pods' workloads, and nothing else of a node
//! (its status, at every heartbeat) wakes the translation.

use serde_json::json;
use weft_proto::istio::workload;
use weft_xds::ResourceStore;

use crate::source::kube::test_support::{Started, eventually};
use crate::translate::{self, agent};

const FIXTURE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Node
metadata: {name: node1, labels: {topology.kubernetes.io/region: eu, topology.kubernetes.io/zone: eu-1}}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-1, namespace: shop, uid: cart-1-uid, labels: {app: cart}}
spec: {nodeName: node1, serviceAccountName: cart, containers: [{name: app, image: cart}]}
status: {podIP: 10.251.1.10}
"#;

fn node(zone: &str, heartbeat: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node1", "labels": {
            "topology.kubernetes.io/region": "eu",
            "topology.kubernetes.io/zone": zone,
        }},
        "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}]},
    })
}

fn cart_locality(index: &crate::index::ConfigIndex) -> Option<workload::Locality> {
    agent::addresses(index, &agent::MeshSettings::default())
        .into_values()
        .find_map(|address| match address.r#type {
            Some(workload::address::Type::Workload(w)) if w.name == "cart-1" => Some(w.locality),
            _ => None,
        })
        .expect("cart-1 has a workload")
}

fn zone(zone: &str) -> Option<workload::Locality> {
    Some(workload::Locality {
        region: "eu".into(),
        zone: zone.into(),
        subzone: String::new(),
    })
}

#[tokio::test]
async fn a_node_label_change_is_pushed_as_an_update_of_its_pods_and_its_heartbeat_is_not() {
    let started = Started::with(FIXTURE).await;
    let settings = translate::MeshSettings::default();
    let mut store = ResourceStore::new();
    let first = store.replace_all(translate::resources(&started.index.snapshot(), &settings));
    assert!(first.added > 0);
    assert_eq!(cart_locality(&started.index.snapshot()), zone("eu-1"));
    let changes = started.index.subscribe();
    let before = *changes.borrow();

    // A heartbeat (status only), then a zone change: the one watch delivers them in order, so
    // once the zone is seen the heartbeat was handled, and it changed nothing.
    started
        .fake
        .update(node("eu-1", "2026-01-01T00:00:10Z"))
        .unwrap();
    started
        .fake
        .update(node("eu-2", "2026-01-01T00:00:20Z"))
        .unwrap();
    eventually("the new zone reaches the index", || {
        cart_locality(&started.index.snapshot()) == zone("eu-2")
    })
    .await;
    assert_eq!(
        *changes.borrow() - before,
        1,
        "only the label change is a change of the mesh"
    );

    // Pushed: exactly the pod's workload is updated.
    let pushed = store.replace_all(translate::resources(&started.index.snapshot(), &settings));
    assert_eq!(
        (pushed.added, pushed.updated, pushed.removed),
        (0, 1, 0),
        "{pushed:?}"
    );
    started.stop().await;
}
