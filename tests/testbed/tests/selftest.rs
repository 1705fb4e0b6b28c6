//! The testbed's own tests: connectivity, placement of processes, isolation, teardown and sweep.
//! They need root (run them through `cargo xtask test`).

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use weft_testbed::{CGROUP_ROOT, Netns, Testbed, Topology};

const ECHO_PORT: u16 = 7000;
const TIMEOUT: Duration = Duration::from_secs(5);

fn two_by_two() -> Testbed {
    Topology::new()
        .node("node1", &["a1", "a2"])
        .node("node2", &["b1", "b2"])
        .control_plane()
        .build()
        .expect("build the testbed")
}

/// Starts a one-connection-at-a-time echo server inside `netns`, serving `connections` clients.
fn echo_server(netns: &Netns, ip: Ipv4Addr, connections: usize) -> std::thread::JoinHandle<()> {
    let listener = netns
        .run(move || TcpListener::bind((ip, ECHO_PORT)))
        .expect("enter netns")
        .expect("bind echo server");
    std::thread::spawn(move || {
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().expect("accept");
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut buf = [0u8; 256];
            let n = stream.read(&mut buf).expect("read");
            stream.write_all(&buf[..n]).expect("write");
        }
    })
}

/// Connects from inside `netns` to `target` and checks the echo.
fn echo_from(netns: &Netns, target: SocketAddr, message: &str) -> String {
    let mut stream = netns
        .run(move || TcpStream::connect_timeout(&target, TIMEOUT))
        .expect("enter netns")
        .unwrap_or_else(|e| panic!("connect from {} to {target}: {e}", netns.name()));
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(message.as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).expect("read echo");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn wait_for_exec(child: &Child, comm: &str) {
    let deadline = Instant::now() + TIMEOUT;
    let path = format!("/proc/{}/comm", child.id());
    while std::fs::read_to_string(&path).unwrap_or_default().trim() != comm {
        assert!(
            Instant::now() < deadline,
            "process {} never became {comm}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn netns_inode(path: impl Into<PathBuf>) -> u64 {
    std::fs::metadata(path.into()).expect("stat netns").ino()
}

#[test]
fn pods_reach_each_other_across_and_within_nodes() {
    let testbed = two_by_two();
    let server = testbed.pod("a1");
    let handle = echo_server(&server.netns, server.ip, 3);
    let target = SocketAddr::from((server.ip, ECHO_PORT));

    assert_eq!(
        echo_from(&testbed.pod("b1").netns, target, "from b1"),
        "from b1"
    );
    assert_eq!(
        echo_from(&testbed.pod("a2").netns, target, "from a2"),
        "from a2"
    );
    let host = testbed.control_plane().expect("control plane host");
    assert_eq!(echo_from(&host.netns, target, "from cp"), "from cp");
    handle.join().unwrap();

    // The client really crossed the fabric: b1's packets came from b1's address.
    let b2 = testbed.pod("b2");
    let listener = b2
        .netns
        .run(move || TcpListener::bind((b2.ip, ECHO_PORT)))
        .unwrap()
        .unwrap();
    let a1 = testbed.pod("a1");
    let _client = a1
        .netns
        .run(move || TcpStream::connect_timeout(&SocketAddr::from((b2.ip, ECHO_PORT)), TIMEOUT))
        .unwrap()
        .unwrap();
    let (_, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(a1.ip));
}

#[test]
fn processes_run_in_their_pod_cgroup_and_netns() {
    let testbed = two_by_two();
    let pod = testbed.pod("b2");
    let mut child = testbed
        .pod_command("b2", "sleep")
        .arg("30")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn in pod");
    wait_for_exec(&child, "sleep");

    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
    let relative = pod.cgroup.path().strip_prefix(CGROUP_ROOT).unwrap();
    let expected = format!("0::/{}", relative.display());
    assert!(
        cgroup.lines().any(|l| l == expected),
        "process cgroups {cgroup:?} do not include {expected}"
    );
    assert!(pod.cgroup.procs().unwrap().contains(&child.id()));
    assert_eq!(
        netns_inode(format!("/proc/{}/ns/net", child.id())),
        netns_inode(pod.netns.path()),
        "the process is not in the pod's network namespace"
    );
    assert_ne!(
        netns_inode(pod.netns.path()),
        netns_inode("/proc/self/ns/net")
    );

    // The same holds for a node process.
    let mut node_child = testbed
        .node_command("node1", "sleep")
        .arg("30")
        .spawn()
        .unwrap();
    wait_for_exec(&node_child, "sleep");
    assert_eq!(
        netns_inode(format!("/proc/{}/ns/net", node_child.id())),
        netns_inode(testbed.node("node1").netns.path())
    );
    assert!(
        testbed
            .node("node1")
            .cgroup
            .procs()
            .unwrap()
            .contains(&node_child.id())
    );

    // Teardown kills what still runs inside.
    drop(testbed);
    assert!(child.wait().is_ok());
    assert!(node_child.wait().is_ok());
}

#[test]
fn teardown_leaves_nothing_behind() {
    let testbed = two_by_two();
    let prefix = testbed.prefix().to_string();
    let cgroup = testbed.cgroup().path().to_path_buf();
    let mut sleeper = testbed
        .pod_command("a1", "sleep")
        .arg("30")
        .spawn()
        .unwrap();
    wait_for_exec(&sleeper, "sleep");
    assert!(
        Netns::list()
            .unwrap()
            .iter()
            .any(|n| n.starts_with(&prefix))
    );
    assert!(cgroup.exists());
    drop(testbed);
    assert!(
        !sleeper.wait().unwrap().success(),
        "teardown left the pod's process running"
    );

    let left: Vec<_> = Netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert!(!cgroup.exists(), "cgroup {} left behind", cgroup.display());
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&prefix));
}

#[test]
fn two_testbeds_at_once_do_not_collide() {
    let (first, second) = std::thread::scope(|s| {
        let a = s.spawn(two_by_two);
        let b = s.spawn(two_by_two);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(first.prefix(), second.prefix());
    // Both use the same addresses, yet each talks only within itself.
    for testbed in [&first, &second] {
        let server = testbed.pod("b1");
        let handle = echo_server(&server.netns, server.ip, 1);
        let reply = echo_from(
            &testbed.pod("a1").netns,
            SocketAddr::from((server.ip, ECHO_PORT)),
            testbed.prefix(),
        );
        assert_eq!(reply, testbed.prefix());
        handle.join().unwrap();
    }
}

#[test]
fn nothing_routes_out_of_the_testbed() {
    let testbed = two_by_two();
    // A documentation address (TEST-NET-1): only route lookups, no packet is sent.
    let outside = "192.0.2.1";
    for node in testbed.nodes() {
        let lookup = node.netns.ip(&["route", "get", outside]);
        assert!(
            lookup.is_err(),
            "node {} routes to {outside}: {lookup:?}",
            node.name
        );
        let routes = node.netns.ip(&["-4", "route", "show", "default"]).unwrap();
        assert!(
            routes.trim().is_empty(),
            "node {} has a default route",
            node.name
        );
    }
    let host = testbed.control_plane().unwrap();
    assert!(host.netns.ip(&["route", "get", outside]).is_err());
    for pod in testbed.pods() {
        // A pod's only way out is its node, which has none.
        let route = pod.netns.ip(&["route", "get", outside]).unwrap();
        assert!(route.contains(&format!("via {}", pod.gateway)), "{route}");
    }
    // No testbed link lives in the root namespace: every veth end was created inside a
    // testbed namespace.
    let root_links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let root_links = String::from_utf8_lossy(&root_links.stdout);
    assert!(!root_links.contains(testbed.fabric().name()));
    assert!(
        !root_links.contains("link-netns"),
        "a root-namespace link points into another namespace: {root_links}"
    );
}

#[test]
fn a_crashed_run_is_swept_at_start() {
    // A pid that is not running stands for the crashed process.
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dead = (1..100)
        .map(|i| pid_max - i)
        .find(|pid| !PathBuf::from(format!("/proc/{pid}")).exists())
        .unwrap();
    let stale = format!("wft{dead}x0");
    let stale_ns = format!("{stale}-p-orphan");
    let stale_cgroup = PathBuf::from(CGROUP_ROOT).join(&stale);
    Command::new("ip")
        .args(["netns", "add", &stale_ns])
        .status()
        .unwrap();
    std::fs::create_dir_all(stale_cgroup.join("pod-orphan")).unwrap();
    // A process left running inside the crashed run's cgroup.
    let mut orphan = Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$0" && exec sleep 60"#)
        .arg(stale_cgroup.join("pod-orphan/cgroup.procs"))
        .spawn()
        .unwrap();
    // Every testbed built sweeps what dead runs left, so one built by a test running alongside
    // may kill the orphan first, before or after its exec: either way it must end up killed.
    let deadline = Instant::now() + TIMEOUT;
    let comm = format!("/proc/{}/comm", orphan.id());
    while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep"
        && orphan.try_wait().unwrap().is_none()
    {
        assert!(Instant::now() < deadline, "the orphan never started");
        std::thread::sleep(Duration::from_millis(10));
    }

    let testbed = Topology::new().node("solo", &["p"]).build().unwrap();
    assert!(
        !Netns::list().unwrap().contains(&stale_ns),
        "stale namespace kept"
    );
    assert!(!stale_cgroup.exists(), "stale cgroup kept");
    let status = orphan.wait().unwrap();
    assert!(!status.success(), "the orphan was not killed");
    drop(testbed);
}

#[test]
fn invalid_topologies_are_refused_with_a_reason() {
    let cases: [(Topology, &str); 3] = [
        (Topology::new(), "no nodes"),
        (Topology::new().node("n", &["n"]), "used twice"),
        (Topology::new().node("Bad_Name", &[]), "[a-z0-9-]"),
    ];
    for (topology, reason) in cases {
        let error = topology.build().expect_err("must be refused").to_string();
        assert!(error.contains(reason), "{error:?} lacks {reason:?}");
    }
}
