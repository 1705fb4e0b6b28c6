//! The CNI side of a node with the real binaries (`weft-cni`, `weft-cni-node`, `node-agent`)
//! against a fake API server: pods join the mesh through the plugin before ADD returns, running
//! pods follow their namespace's label, the agent's restart fails closed and recovers without a
//! pod being re-created, DEL is idempotent, bad input gets CNI errors, and the plugin is
//! installed into and removed from the node's configuration. Needs root.

use weft_e2e::cni::{Capture, CniNode, CniPod};
use weft_istio::labels::DATAPLANE_MODE;

#[test]
fn pods_join_and_leave_the_mesh_through_the_cni_side() -> anyhow::Result<()> {
    let mut node = CniNode::start(
        &[
            ("shop", &[(DATAPLANE_MODE, "ambient")]),
            ("later", &[]),
            ("web", &[]),
        ],
        vec![
            // Created while the node runs: enrolled by ADD.
            CniPod::new("app", "shop", false),
            CniPod::new("app2", "shop", false),
            // Running before the node daemon started: in its first snapshot.
            CniPod::new("running", "shop", true),
            CniPod::new("optout", "shop", true).label(DATAPLANE_MODE, "none"),
            // Running in a namespace that joins the mesh later.
            CniPod::new("late", "later", true),
            CniPod::new("plain", "web", false),
        ],
    )?;
    node.wait_for_capture("running", Capture::Captured)?;
    assert_eq!(node.capture_of("optout"), Capture::Direct, "opted out");
    assert_eq!(node.capture_of("late"), Capture::Direct);

    // ADD: the pod is captured when ADD returns; the bridge's result passes through.
    let conf = serde_json::to_vec(&node.plugin_config("app")?)?;
    let add = node.plugin("ADD", "app", &conf)?;
    assert!(add.success, "{add:?}\n{}", node.logs());
    assert_eq!(add.stdout, node.plugin_config("app")?["prevResult"]);
    assert_eq!(
        node.capture_of("app"),
        Capture::Captured,
        "captured before ADD returned"
    );
    node.set_running("app")?;
    let check = node.plugin("CHECK", "app", &conf)?;
    assert!(check.success, "{check:?}");
    // A pod outside the mesh passes through, uncaptured.
    let plain_conf = serde_json::to_vec(&node.plugin_config("plain")?)?;
    let plain = node.plugin("ADD", "plain", &plain_conf)?;
    assert!(plain.success, "{plain:?}");
    assert_eq!(node.capture_of("plain"), Capture::Direct);

    // Labelling the namespace enrolls its running pod without a restart; unlabelling releases
    // it.
    node.put_namespace("later", &[(DATAPLANE_MODE, "ambient")])?;
    node.wait_for_capture("late", Capture::Captured)?;
    node.put_namespace("later", &[])?;
    node.wait_for_capture("late", Capture::Direct)?;

    // The agent dies: enrolled pods fail closed, and a new mesh pod's ADD fails clearly (the
    // runtime retries it); pods outside the mesh are not held up.
    node.kill_agent();
    assert_eq!(node.capture_of("app"), Capture::Refused, "failing closed");
    assert_eq!(
        node.capture_of("running"),
        Capture::Refused,
        "failing closed"
    );
    let app2_conf = serde_json::to_vec(&node.plugin_config("app2")?)?;
    let refused = node.plugin("ADD", "app2", &app2_conf)?;
    assert!(!refused.success, "{refused:?}");
    assert_eq!(refused.stdout["code"], 11, "{refused:?}");
    let message = refused.stdout["msg"].as_str().unwrap_or_default();
    assert!(
        message.contains("pod shop/app2 is in the mesh") && message.contains("did not enroll"),
        "{refused:?}"
    );
    assert!(
        refused.stdout["details"]
            .as_str()
            .unwrap_or_default()
            .contains("unreachable"),
        "{refused:?}"
    );
    assert!(node.plugin("ADD", "plain", &plain_conf)?.success);
    // Back: the daemon resends its snapshot, the agent takes its pods over, nobody re-created.
    node.start_agent()?;
    node.wait_for_capture("app", Capture::Captured)?;
    node.wait_for_capture("running", Capture::Captured)?;
    let retried = node.plugin("ADD", "app2", &app2_conf)?;
    assert!(retried.success, "{retried:?}");

    // A pod deleted from the API is released, whatever DEL does.
    let running_uid = node.uid("running");
    node.api.delete("v1", "Pod", "shop", "running")?;
    node.wait_for(
        "the deleted pod's release",
        std::time::Duration::from_secs(20),
        |n| !n.pinned_pods().contains(&running_uid),
    )?;
    assert_eq!(node.capture_of("running"), Capture::Direct);

    // DEL releases at once, twice is fine, and so is a pod nobody knows.
    for _ in 0..2 {
        let del = node.plugin("DEL", "app", &conf)?;
        assert!(del.success, "{del:?}");
        assert_eq!(del.stdout, serde_json::Value::Null);
    }
    assert_eq!(node.capture_of("app"), Capture::Direct);
    assert!(!node.pinned_pods().contains(&node.uid("app")));
    let unknown = node.plugin(
        "DEL",
        "ghost",
        br#"{"cniVersion":"1.0.0","type":"weft-cni"}"#,
    )?;
    assert!(unknown.success, "{unknown:?}");

    // Bad input: CNI errors, never a crash.
    let garbage = node.plugin("ADD", "app", b"\x01\x02 not json")?;
    assert!(!garbage.success);
    assert_eq!(garbage.stdout["code"], 6, "{garbage:?}");
    let unchained = node.plugin(
        "ADD",
        "app",
        br#"{"cniVersion":"1.0.0","name":"pods","type":"weft-cni"}"#,
    )?;
    assert_eq!(unchained.stdout["code"], 7, "{unchained:?}");
    assert!(
        unchained.stdout["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("must be chained"),
        "{unchained:?}"
    );

    // The daemon stops and its DaemonSet is gone: the plugin leaves the node.
    node.stop_daemon();
    assert_eq!(node.installed_entry(), None);
    assert!(!node.dir.join("bin/weft-cni").exists());
    assert!(!node.dir.join("net.d/weft-cni-kubeconfig").exists());
    Ok(())
}
