use std::{collections::BTreeSet, time::Instant};

use weft_enrollment::{EnrollmentServer, PodLifecycle, testing::RecordingAgent};

use super::*;

fn start_agent(socket: &Path) -> (Arc<RecordingAgent>, tokio::task::JoinHandle<()>) {
    let agent = Arc::new(RecordingAgent::default());
    let server = EnrollmentServer::bind(socket).unwrap();
    let serving = agent.clone();
    let task = tokio::spawn(async move {
        let _ = server.run(serving.as_ref()).await;
    });
    (agent, task)
}

fn pod(name: &str) -> EnrolledPod {
    EnrolledPod {
        uid: format!("uid-{name}"),
        namespace: "shop".into(),
        name: name.into(),
        netns: format!("/var/run/netns/{name}").into(),
        addresses: vec![],
        excluded_outbound_ports: vec![],
        excluded_inbound_ports: vec![],
        dns_capture: true,
    }
}

async fn send(socket: &Path, request: Request) -> Reply {
    protocol::send(socket, &request, Duration::from_secs(5))
        .await
        .unwrap()
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn socket_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-cni-daemon-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn plugin_requests_reach_the_agent_and_survive_its_restart() {
    let dir = socket_dir("restart");
    let (agent_socket, plugin_socket) = (dir.join("agent.sock"), dir.join("cni.sock"));
    let (agent, task) = start_agent(&agent_socket);
    let link = AgentLink::start(agent_socket.clone(), vec![pod("held")]);
    let server = PluginServer::bind(&plugin_socket, link.clone()).unwrap();
    tokio::spawn(server.run());

    // The first connection's snapshot carries the pods held from the start.
    eventually("the initial snapshot", || {
        agent.enrolled().contains("uid-held")
    })
    .await;
    let add = Request::Add {
        pod: pod("cart"),
        sandbox: "sandbox-cart".into(),
    };
    assert_eq!(send(&plugin_socket, add).await, Reply::Ack);
    assert!(agent.enrolled().contains("uid-cart"));
    let check = Request::Check {
        uid: "uid-cart".into(),
    };
    assert_eq!(
        send(&plugin_socket, check.clone()).await,
        Reply::Enrolled { enrolled: true }
    );
    // The agent's refusal reaches the plugin as it was.
    let refused = send(
        &plugin_socket,
        Request::Add {
            pod: pod("bad-one"),
            sandbox: "sandbox-bad".into(),
        },
    )
    .await;
    assert!(
        matches!(&refused, Reply::Error { message } if message.contains("cannot open netns")),
        "{refused:?}"
    );

    // The agent restarts: the link notices, reconnects and resends every held pod.
    task.abort();
    let _ = task.await;
    let (restarted, _task) = start_agent(&agent_socket);
    eventually("the snapshot after the restart", || {
        restarted.enrolled() == BTreeSet::from(["uid-cart".to_string(), "uid-held".to_string()])
    })
    .await;

    // DEL by sandbox id alone, twice, and for a pod nobody knows: all acknowledged.
    for _ in 0..2 {
        let del = Request::Del {
            uid: None,
            sandbox: "sandbox-cart".into(),
        };
        assert_eq!(send(&plugin_socket, del).await, Reply::Ack);
    }
    eventually("the release", || !restarted.enrolled().contains("uid-cart")).await;
    let unknown = Request::Del {
        uid: Some("uid-nobody".into()),
        sandbox: "sandbox-nobody".into(),
    };
    assert_eq!(send(&plugin_socket, unknown).await, Reply::Ack);
    assert_eq!(
        send(&plugin_socket, check).await,
        Reply::Enrolled { enrolled: false }
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_unreachable_agent_and_garbage_get_clear_errors() {
    let dir = socket_dir("unreachable");
    let (agent_socket, plugin_socket) = (dir.join("agent.sock"), dir.join("cni.sock"));
    let link = AgentLink::start(agent_socket.clone(), vec![]);
    let server = PluginServer::bind(&plugin_socket, link).unwrap();
    tokio::spawn(server.run());
    let reply = send(
        &plugin_socket,
        Request::Add {
            pod: pod("cart"),
            sandbox: "s".into(),
        },
    )
    .await;
    let Reply::Error { message } = reply else {
        panic!("{reply:?}");
    };
    assert!(
        message.contains(&format!(
            "the node agent at {} is unreachable",
            agent_socket.display()
        )),
        "{message}"
    );
    // Garbage from a plugin: an error reply, and the server goes on.
    let mut stream = UnixStream::connect(&plugin_socket).await.unwrap();
    stream.write_all(b"{\"type\":\"frob\"}\n").await.unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).await.unwrap();
    assert!(reply.contains("malformed request"), "{reply}");
    let del = Request::Del {
        uid: Some("uid-cart".into()),
        sandbox: "s".into(),
    };
    assert_eq!(send(&plugin_socket, del).await, Reply::Ack);
    let _ = std::fs::remove_dir_all(&dir);
}
