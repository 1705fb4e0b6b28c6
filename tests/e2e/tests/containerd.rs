//! A Kubernetes node on a real container runtime: two containerd nodes, each running the node
//! agent's DaemonSet pod from its image (the chart's environment, mounts and security context),
//! the controller in Kubernetes mode against the fake API server, and pods created through the
//! CRI as the kubelet creates them. Needs root.

use std::{net::SocketAddr, os::unix::fs::MetadataExt, time::Duration};

use serde_json::json;
use weft_e2e::{
    cni::{Capture, PluginCall, capture_of, run_plugin},
    kube_cluster::{KubeCluster, KubePod, http_get},
};
use weft_istio::labels::DATAPLANE_MODE;
use weft_testbed::FabricCapture;

const PATIENCE: Duration = Duration::from_secs(30);

#[test]
fn pods_on_containerd_join_the_mesh_through_the_cni() {
    let mut cluster = KubeCluster::start(
        &["node1", "node2"],
        &[
            ("shop", &[(DATAPLANE_MODE, "ambient")]),
            ("later", &[]),
            ("web", &[]),
        ],
    )
    .expect("the cluster starts");
    cluster
        .api
        .create(json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "shop"},
            "spec": {"mtls": {"mode": "STRICT"}}
        }))
        .unwrap();
    let backend = cluster
        .run_pod(KubePod::new("backend", "shop", "node2"))
        .unwrap();
    let backend_address: SocketAddr = (backend.ip, 8080).into();
    let client = cluster
        .run_pod(
            KubePod::new("client", "shop", "node1")
                .arg("--upstream")
                .arg(&format!("backend=http://{backend_address}")),
        )
        .unwrap();
    // Everything the client's pod sends or receives across the fabric from here on: its first
    // connection may already open the HBONE connection (and its TLS handshake) that the call
    // below reuses.
    let capture = FabricCapture::start(&cluster.testbed).unwrap();
    // ADD returned only after the agent's ack: the pod is captured before its app ever runs.
    assert_eq!(
        capture_of(&client.netns, backend_address),
        Capture::Captured
    );
    let optout = cluster
        .run_pod(KubePod::new("optout", "shop", "node1").label(DATAPLANE_MODE, "none"))
        .unwrap();
    let late = cluster
        .run_pod(KubePod::new("late", "later", "node1"))
        .unwrap();
    let outsider = cluster
        .run_pod(KubePod::new("outsider", "web", "node2"))
        .unwrap();
    assert_eq!(
        capture_of(&optout.netns, backend_address),
        Capture::Direct,
        "opted out"
    );
    assert_eq!(capture_of(&late.netns, backend_address), Capture::Direct);

    // The client's agent knows the backend as a mesh workload before the first request.
    let backend_ip = backend.ip.to_string();
    cluster
        .wait_for("node1's agent to know the backend", PATIENCE, |c| {
            c.agent_config_dump("node1")
                .ok()
                .filter(|dump| dump["state"].to_string().contains(&backend_ip))
        })
        .unwrap();

    // The kubelet's probe (from node1 itself) reaches the STRICT client; the client's call to
    // the backend on node2 crosses the fabric only as HBONE mutual TLS.
    let marker = format!("weft-cri-marker-{}", std::process::id());
    let client_url = format!("http://{}:8080/?{marker}", client.ip);
    let call = |cluster: &KubeCluster| {
        http_get(
            &cluster.testbed.node("node1").netns,
            &client_url,
            &[&format!("x-request-id: {marker}")],
        )
        .unwrap()
    };
    let (status, body) = call(&cluster);
    let captured = capture
        .finish(
            &format!(
                "ip.src == 10.251.0.0/16 && ip.dst == 10.251.0.0/16 && ip.addr == {} \
                 && tcp.len > 0",
                client.ip
            ),
            &[
                "tcp.srcport",
                "tcp.dstport",
                "tls.handshake.extensions.supported_version",
            ],
        )
        .unwrap();
    assert_eq!(status, 200, "{body}\n{}", cluster.logs());
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["upstreams"][0]["status"], 200, "{body}");
    assert_eq!(answer["upstreams"][0]["pod"], "backend", "{body}");
    let packets: Vec<&str> = captured.fields.lines().collect();
    assert!(!packets.is_empty(), "nothing crossed between the pods");
    assert!(
        packets
            .iter()
            .all(|p| p.split('\t').take(2).any(|port| port == "15008")),
        "pod traffic outside HBONE: {packets:?}"
    );
    assert!(captured.fields.contains("0x0304"), "no TLS 1.3 handshake");
    assert!(
        !captured.contains_bytes(marker.as_bytes()),
        "the request crossed in clear"
    );
    let identity = "spiffe://cluster.local/ns/shop/sa/client";
    let metrics = cluster.agent_metrics("node2").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains(&format!("source_principal=\"{identity}\""))
                && l.contains("connection_security_policy=\"mutual_tls\"")),
        "node2's agent did not record the client's mutual TLS connection:\n{metrics}"
    );

    // STRICT: a pod outside the mesh gets nothing from the client (the node's probe did).
    let (status, _) = http_get(&outsider.netns, &client_url, &[]).unwrap();
    assert_eq!(status, 0, "plaintext reached a STRICT pod");

    // Labelling the namespace enrolls its running pod, without a restart; unlabelling
    // releases it.
    let node1_cri = |c: &KubeCluster| c.nodes["node1"].containerd.client().unwrap();
    let late_started = node1_cri(&cluster)
        .container_status(&late.containers[0])
        .unwrap()
        .started_at;
    cluster
        .put_namespace("later", &[(DATAPLANE_MODE, "ambient")])
        .unwrap();
    cluster
        .wait_for("the late pod's capture", PATIENCE, |_| {
            (capture_of(&late.netns, backend_address) == Capture::Captured).then_some(())
        })
        .unwrap();
    let status = node1_cri(&cluster)
        .container_status(&late.containers[0])
        .unwrap();
    assert_eq!(
        (status.state, status.started_at),
        (1, late_started),
        "the pod was restarted"
    );
    cluster.put_namespace("later", &[]).unwrap();
    cluster
        .wait_for("the late pod's release", PATIENCE, |_| {
            (capture_of(&late.netns, backend_address) == Capture::Direct).then_some(())
        })
        .unwrap();

    // The agent container dies: the client fails closed; restarted, it takes the client back
    // with nothing re-created.
    let client_started = node1_cri(&cluster)
        .container_status(&client.containers[0])
        .unwrap()
        .started_at;
    cluster.kill_agent("node1").unwrap();
    assert_eq!(
        capture_of(&client.netns, backend_address),
        Capture::Refused,
        "failing closed"
    );
    cluster.restart_agent("node1").unwrap();
    cluster
        .wait_for("the client's capture after the restart", PATIENCE, |_| {
            (capture_of(&client.netns, backend_address) == Capture::Captured).then_some(())
        })
        .unwrap();
    cluster
        .wait_for("the client's calls after the restart", PATIENCE, |c| {
            (call(c).0 == 200).then_some(())
        })
        .unwrap();
    let status = node1_cri(&cluster)
        .container_status(&client.containers[0])
        .unwrap();
    assert_eq!(
        (status.state, status.started_at),
        (1, client_started),
        "the client was re-created"
    );

    // The pod deleted: no map entry, no pin, no link left for it.
    let netns_inode = std::fs::metadata(client.netns.path()).unwrap().ino();
    cluster.delete_pod("client").unwrap();
    let pins = cluster.pin_dir("node1");
    assert!(
        !pins.join("pods").join(&client.uid).exists(),
        "the pod's pin is left"
    );
    let entries = bpftool(&[
        "map",
        "dump",
        "pinned",
        &pins.join("maps/POD_CONFIG").to_string_lossy(),
    ]);
    assert_eq!(entries, json!([]), "node1's agent still holds a pod");
    let links = bpftool(&["link", "show"]);
    assert!(
        !links
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["netns_ino"].as_u64() == Some(netns_inode)),
        "a link is left on the pod's network namespace"
    );

    // The plugin as the runtime calls it: DEL twice for the deleted pod, DEL for a pod nobody
    // knows, ADD with garbage.
    let node = &cluster.nodes["node1"].containerd;
    let mut conf = node.cni_config().unwrap();
    let mut entry = conf["plugins"].as_array().unwrap().last().unwrap().clone();
    entry["cniVersion"] = conf["cniVersion"].take();
    entry["name"] = conf["name"].take();
    let entry = serde_json::to_vec(&entry).unwrap();
    let plugin = node.cni_bin_dir.join("weft-cni");
    let del = |sandbox: &str, pod: &str, uid: &str| {
        let call = PluginCall {
            command: "DEL",
            sandbox,
            netns: None,
            namespace: "shop",
            pod,
            uid,
        };
        run_plugin(&plugin, &call, &entry).unwrap()
    };
    for _ in 0..2 {
        let run = del(&client.sandbox, "client", &client.uid);
        assert!(run.success, "{run:?}");
    }
    let unknown = del("no-such-sandbox", "ghost", "no-such-uid");
    assert!(unknown.success, "{unknown:?}");
    let late_netns = late.netns.path();
    let add = PluginCall {
        command: "ADD",
        sandbox: "garbage",
        netns: Some(late_netns.as_path()),
        namespace: "shop",
        pod: "garbage",
        uid: "",
    };
    let garbage = run_plugin(&plugin, &add, b"{\"cniVersion\": 1, nope").unwrap();
    assert!(!garbage.success);
    assert_eq!(garbage.stdout["code"], 6, "{garbage:?}");
}

fn bpftool(args: &[&str]) -> serde_json::Value {
    let output = std::process::Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("run bpftool");
    assert!(
        output.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("bpftool json")
}
