use std::collections::BTreeSet;

use super::{testing::RecordingAgent, *};

fn pod(uid: &str, name: &str) -> EnrolledPod {
    EnrolledPod {
        uid: uid.into(),
        namespace: "default".into(),
        name: name.into(),
        netns: format!("/run/netns/{name}").into(),
        addresses: vec![],
        excluded_outbound_ports: vec![],
        excluded_inbound_ports: vec![],
        dns_capture: true,
    }
}

fn socket_path(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!("weft-enroll-{}-{test}.sock", std::process::id()))
}

#[tokio::test]
async fn snapshot_then_updates_then_reconnect_reconciles() {
    let path = socket_path("reconcile");
    let server = EnrollmentServer::bind(&path).unwrap();
    let pods: &'static RecordingAgent = Box::leak(Box::default());
    tokio::spawn(server.run(pods));

    let mut client = EnrollmentClient::connect(&path).await.unwrap();
    client
        .snapshot(&[pod("u1", "a"), pod("u2", "b")])
        .await
        .unwrap();
    assert_eq!(pods.enrolled(), BTreeSet::from(["u1".into(), "u2".into()]));
    client.add(&pod("u3", "c")).await.unwrap();
    client.remove("u1").await.unwrap();
    assert_eq!(pods.enrolled(), BTreeSet::from(["u2".into(), "u3".into()]));
    drop(client);

    // The enrolling side restarts and its snapshot no longer has u2: the agent drops it, and
    // re-adding u3 is idempotent.
    let mut client = EnrollmentClient::connect(&path).await.unwrap();
    client
        .snapshot(&[pod("u3", "c"), pod("u4", "d")])
        .await
        .unwrap();
    assert_eq!(pods.enrolled(), BTreeSet::from(["u3".into(), "u4".into()]));
    assert_eq!(
        pods.adds
            .lock()
            .unwrap()
            .iter()
            .filter(|u| *u == "u3")
            .count(),
        2
    );
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn refusals_and_malformed_messages_are_answered_and_the_connection_survives() {
    let path = socket_path("refusals");
    let server = EnrollmentServer::bind(&path).unwrap();
    let pods: &'static RecordingAgent = Box::leak(Box::default());
    tokio::spawn(server.run(pods));

    let mut client = EnrollmentClient::connect(&path).await.unwrap();
    let error = client.add(&pod("u9", "bad-pod")).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("cannot open netns /run/netns/bad-pod"),
        "{error}"
    );

    // A line that is not a message gets an error naming the problem, not a hang-up.
    client
        .lines
        .get_mut()
        .write_all(b"{\"type\":\"pod_exploded\"}\n")
        .await
        .unwrap();
    let mut line = String::new();
    client.lines.read_line(&mut line).await.unwrap();
    let reply: EnrollmentReply = serde_json::from_str(line.trim_end()).unwrap();
    assert!(
        matches!(&reply, EnrollmentReply::Error { message } if message.contains("pod_exploded")),
        "{reply:?}"
    );

    client.snapshot(&[pod("u1", "a")]).await.unwrap();
    let again = client
        .send(&EnrollmentMessage::SnapshotSent)
        .await
        .unwrap_err();
    assert!(again.to_string().contains("already complete"), "{again}");
    assert_eq!(pods.enrolled(), BTreeSet::from(["u1".into()]));
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced() {
    let path = socket_path("stale");
    std::fs::write(&path, b"left by a crashed agent").unwrap();
    let server = EnrollmentServer::bind(&path).unwrap();
    assert_eq!(server.path(), path);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn uids_that_are_no_path_component_are_refused_before_anything_uses_them() {
    let path = socket_path("uids");
    let server = EnrollmentServer::bind(&path).unwrap();
    let pods: &'static RecordingAgent = Box::leak(Box::default());
    tokio::spawn(server.run(pods));
    let mut client = EnrollmentClient::connect(&path).await.unwrap();
    client.snapshot(&[pod("u1", "a")]).await.unwrap();
    for uid in ["", ".", "..", "../pods", "a/b", "x\0y", &"u".repeat(65)] {
        let added = client.add(&pod(uid, "escape")).await;
        assert!(
            matches!(&added, Err(EnrollmentError::Refused(m)) if m.contains("pod uid")),
            "{uid:?}: {added:?}"
        );
        let removed = client.remove(uid).await;
        assert!(
            matches!(&removed, Err(EnrollmentError::Refused(m)) if m.contains("pod uid")),
            "{uid:?}: {removed:?}"
        );
    }
    // A uuid, as Kubernetes makes them, and names as the testbed makes them, are fine.
    client
        .add(&pod("9f1c2e4a-7b3d-4c5e-8f6a-1b2c3d4e5f60", "k8s"))
        .await
        .unwrap();
    client
        .add(&pod("uid-reviews.v1_a", "testbed"))
        .await
        .unwrap();
    assert_eq!(pods.adds.lock().unwrap().len(), 3);
    assert!(pods.enrolled().contains("u1"));
}

/// A rolling update: the next agent binds the path while this one still serves. The enrolling
/// side's connection to this one is closed, so that it reconnects, to the next agent, and
/// sends it the snapshot; this one's server ends.
#[tokio::test]
async fn the_next_agent_takes_the_path_over_and_the_enrolling_side_follows_it() {
    let path = socket_path("takeover");
    let old_pods: &'static RecordingAgent = Box::leak(Box::default());
    let old = tokio::spawn(EnrollmentServer::bind(&path).unwrap().run(old_pods));
    let mut client = EnrollmentClient::connect(&path).await.unwrap();
    client.snapshot(&[pod("u1", "a")]).await.unwrap();
    assert_eq!(old_pods.enrolled(), BTreeSet::from(["u1".into()]));

    let new_pods: &'static RecordingAgent = Box::leak(Box::default());
    tokio::spawn(EnrollmentServer::bind(&path).unwrap().run(new_pods));
    let deadline = Duration::from_secs(5);
    tokio::time::timeout(deadline, client.closed())
        .await
        .expect("the old agent keeps the enrolling side after the take-over");
    tokio::time::timeout(deadline, old)
        .await
        .expect("the old agent's server still runs")
        .unwrap()
        .unwrap();

    let mut client = EnrollmentClient::connect(&path).await.unwrap();
    client.snapshot(&[pod("u1", "a")]).await.unwrap();
    assert_eq!(new_pods.enrolled(), BTreeSet::from(["u1".into()]));
    // The old agent keeps what it served: it drains it later.
    assert_eq!(old_pods.enrolled(), BTreeSet::from(["u1".into()]));
    let _ = std::fs::remove_file(&path);
}
