use std::{cell::RefCell, path::PathBuf};

use k8s_openapi::api::core::v1::PodSpec;
use kube::api::ObjectMeta;
use serde_json::json;

use super::*;
use crate::decide::DATAPLANE_MODE;

/// Pods by `namespace/name`, namespaces' labels by name.
#[derive(Default)]
struct FakeCluster {
    pods: BTreeMap<String, Pod>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    lookups: RefCell<usize>,
}

impl FakeCluster {
    fn with_pod(mut self, namespace: &str, name: &str, labels: &[(&str, &str)]) -> Self {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec::default()),
            status: None,
        };
        self.pods.insert(format!("{namespace}/{name}"), pod);
        self
    }

    fn with_namespace(mut self, name: &str, labels: &[(&str, &str)]) -> Self {
        self.namespaces.insert(
            name.into(),
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self
    }
}

impl Cluster for FakeCluster {
    async fn pod(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(Pod, BTreeMap<String, String>), String> {
        *self.lookups.borrow_mut() += 1;
        let pod = self
            .pods
            .get(&format!("{namespace}/{name}"))
            .cloned()
            .ok_or_else(|| format!("pods \"{name}\" not found"))?;
        Ok((
            pod,
            self.namespaces.get(namespace).cloned().unwrap_or_default(),
        ))
    }
}

/// Answers with a fixed reply (or a transport failure) and records the requests.
struct FakeDaemon {
    reply: Result<Reply, String>,
    requests: RefCell<Vec<Request>>,
}

impl FakeDaemon {
    fn answering(reply: Result<Reply, String>) -> Self {
        Self {
            reply,
            requests: RefCell::default(),
        }
    }
}

impl NodeDaemon for FakeDaemon {
    async fn send(&self, request: Request) -> Result<Reply, String> {
        self.requests.borrow_mut().push(request);
        self.reply.clone()
    }
}

fn invocation(command: Command, pod: Option<(&str, &str)>) -> Invocation {
    let mut args = BTreeMap::new();
    if let Some((namespace, name)) = pod {
        args.insert("K8S_POD_NAMESPACE".to_string(), namespace.to_string());
        args.insert("K8S_POD_NAME".to_string(), name.to_string());
    }
    Invocation {
        command,
        container_id: "sandbox-1".into(),
        netns: Some(PathBuf::from("/var/run/netns/cni-1")),
        interface: "eth0".into(),
        args,
    }
}

fn conf(version: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "cniVersion": version,
        "name": "net",
        "type": "weft-cni",
        "exclude_namespaces": ["kube-system"],
        "prevResult": {
            "cniVersion": version,
            "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/cni-1"}],
            "ips": [{"address": "10.251.1.10/24", "gateway": "10.251.1.1", "interface": 0}],
            "dns": {}
        }
    }))
    .unwrap()
}

fn block<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

fn cluster() -> FakeCluster {
    FakeCluster::default()
        .with_namespace("shop", &[(DATAPLANE_MODE, "ambient")])
        .with_namespace("plain", &[])
        .with_pod("shop", "cart", &[])
        .with_pod("shop", "legacy", &[(DATAPLANE_MODE, "none")])
        .with_pod("plain", "web", &[])
}

#[test]
fn add_enrolls_mesh_pods_and_passes_the_previous_result_through() {
    for version in ["0.4.0", "1.0.0"] {
        let cluster = cluster();
        let daemon = FakeDaemon::answering(Ok(Reply::Ack));
        let out = block(run(
            &invocation(Command::Add, Some(("shop", "cart"))),
            &conf(version),
            &cluster,
            &daemon,
        ))
        .unwrap()
        .unwrap();
        let expected =
            serde_json::from_slice::<Value>(&conf(version)).unwrap()["prevResult"].clone();
        assert_eq!(
            out, expected,
            "{version}: the result must pass through unchanged"
        );
        let requests = daemon.requests.borrow();
        let [Request::Add { pod, sandbox }] = requests.as_slice() else {
            panic!("{requests:?}");
        };
        assert_eq!(sandbox, "sandbox-1");
        assert_eq!(pod.uid, "uid-cart");
        assert_eq!(pod.netns, PathBuf::from("/var/run/netns/cni-1"));
        assert_eq!(
            pod.addresses,
            vec!["10.251.1.10".parse::<std::net::IpAddr>().unwrap()]
        );
    }
}

#[test]
fn add_refuses_a_pod_whose_uid_the_agent_would_refuse_without_asking_it() {
    // Found by the `cni_plugin` fuzz target (fuzz/regressions/cni_plugin/invalid-pod-uid).
    let mut cluster = cluster();
    let cart = cluster.pods.get_mut("shop/cart").unwrap();
    cart.metadata.uid = Some("4d2b1f0e-7c3a-4a\u{fffd}e-9a53".into());
    let daemon = FakeDaemon::answering(Ok(Reply::Ack));
    let error = block(run(
        &invocation(Command::Add, Some(("shop", "cart"))),
        &conf("1.0.0"),
        &cluster,
        &daemon,
    ))
    .unwrap_err();
    assert_eq!(error.code, codes::INVALID_POD, "{error}");
    assert!(
        error.msg.contains("pod shop/cart cannot be enrolled"),
        "{error}"
    );
    assert!(daemon.requests.borrow().is_empty());
}

#[test]
fn add_enables_the_agents_sysctls_inside_the_pods_namespace() {
    // A real namespace (needs root): after ADD, the agent finds them set, also where its
    // container sees `/proc/sys` read-only.
    let testbed = weft_testbed::Topology::new()
        .node("node1", &["cart"])
        .build()
        .expect("build the testbed (run as root, through cargo xtask test)");
    let pod = testbed.pod("cart");
    let read = |key: &'static str| {
        pod.netns
            .run(move || std::fs::read_to_string(std::path::Path::new("/proc/sys").join(key)))
            .unwrap()
            .unwrap()
    };
    for key in crate::netns::POD_SYSCTLS {
        assert_eq!(
            read(key).trim(),
            "0",
            "{key} starts unset in a new namespace"
        );
    }
    let mut invocation = invocation(Command::Add, Some(("shop", "cart")));
    invocation.netns = Some(pod.netns.path());
    let daemon = FakeDaemon::answering(Ok(Reply::Ack));
    block(run(&invocation, &conf("1.0.0"), &cluster(), &daemon)).unwrap();
    for key in crate::netns::POD_SYSCTLS {
        assert_eq!(read(key).trim(), "1", "{key} after ADD");
    }
}

#[test]
fn pods_outside_the_mesh_never_wait_for_the_agent() {
    // The daemon is down: only pods in the mesh notice.
    let cases = [
        (Some(("shop", "legacy")), 1, "opted out"),
        (Some(("plain", "web")), 1, "plain namespace"),
        (
            Some(("kube-system", "dns")),
            0,
            "excluded namespace: not even looked up",
        ),
        (None, 0, "not a Kubernetes pod"),
    ];
    for (pod, lookups, name) in cases {
        let cluster = cluster();
        let daemon = FakeDaemon::answering(Err("connection refused".into()));
        let out = block(run(
            &invocation(Command::Add, pod),
            &conf("1.0.0"),
            &cluster,
            &daemon,
        ))
        .unwrap();
        assert!(out.is_some(), "{name}");
        assert!(daemon.requests.borrow().is_empty(), "{name}");
        assert_eq!(*cluster.lookups.borrow(), lookups, "{name}");
    }
}

#[test]
fn mesh_pods_fail_clearly_when_they_cannot_be_enrolled() {
    let cases: [(Result<Reply, String>, &str); 2] = [
        (
            Err("the node daemon's socket /var/run/weft/cni.sock is unreachable".into()),
            "unreachable",
        ),
        (
            Ok(Reply::Error {
                message: "the node agent at /var/run/weft/enroll.sock is unreachable".into(),
            }),
            "node agent",
        ),
    ];
    for (reply, details) in cases {
        let daemon = FakeDaemon::answering(reply);
        let error = block(run(
            &invocation(Command::Add, Some(("shop", "cart"))),
            &conf("1.0.0"),
            &cluster(),
            &daemon,
        ))
        .unwrap_err();
        assert_eq!(error.code, codes::TRY_AGAIN_LATER);
        assert!(
            error.msg.contains("pod shop/cart is in the mesh")
                && error.msg.contains("did not enroll"),
            "{error}"
        );
        assert!(error.details.contains(details), "{error}");
    }
    // A pod the API server does not know: retried by the runtime.
    let error = block(run(
        &invocation(Command::Add, Some(("shop", "ghost"))),
        &conf("1.0.0"),
        &cluster(),
        &FakeDaemon::answering(Ok(Reply::Ack)),
    ))
    .unwrap_err();
    assert_eq!(error.code, codes::TRY_AGAIN_LATER);
    assert!(error.msg.contains("reading pod shop/ghost"), "{error}");
    // Garbage on stdin.
    let error = block(run(
        &invocation(Command::Add, Some(("shop", "cart"))),
        b"\x00garbage",
        &cluster(),
        &FakeDaemon::answering(Ok(Reply::Ack)),
    ))
    .unwrap_err();
    assert_eq!(error.code, spec::codes::DECODING_FAILURE);
}

#[test]
fn del_is_idempotent_and_survives_a_missing_daemon() {
    let daemon = FakeDaemon::answering(Ok(Reply::Ack));
    let del = invocation(Command::Del, Some(("shop", "cart")));
    for _ in 0..2 {
        assert_eq!(
            block(run(&del, &conf("1.0.0"), &cluster(), &daemon)).unwrap(),
            None
        );
    }
    assert_eq!(daemon.requests.borrow().len(), 2);
    let gone = FakeDaemon::answering(Err("connection refused".into()));
    assert_eq!(
        block(run(&del, &conf("1.0.0"), &cluster(), &gone)).unwrap(),
        None
    );
    // An agent that fails to release is worth a retry.
    let failing = FakeDaemon::answering(Ok(Reply::Error {
        message: "map error".into(),
    }));
    let error = block(run(&del, &conf("1.0.0"), &cluster(), &failing)).unwrap_err();
    assert!(error.msg.contains("releasing sandbox sandbox-1"), "{error}");
}

#[test]
fn check_reports_a_mesh_pod_that_is_not_enrolled() {
    let check = invocation(Command::Check, Some(("shop", "cart")));
    let enrolled = FakeDaemon::answering(Ok(Reply::Enrolled { enrolled: true }));
    assert_eq!(
        block(run(&check, &conf("1.0.0"), &cluster(), &enrolled)).unwrap(),
        None
    );
    let missing = FakeDaemon::answering(Ok(Reply::Enrolled { enrolled: false }));
    let error = block(run(&check, &conf("1.0.0"), &cluster(), &missing)).unwrap_err();
    assert_eq!(error.code, codes::NOT_ENROLLED);
    assert!(
        error
            .msg
            .contains("shop/cart is in the mesh but not enrolled"),
        "{error}"
    );
    // Outside the mesh there is nothing to check.
    let plain = invocation(Command::Check, Some(("plain", "web")));
    assert_eq!(
        block(run(&plain, &conf("1.0.0"), &cluster(), &missing)).unwrap(),
        None
    );
}

#[test]
fn version_and_status() {
    let daemon = FakeDaemon::answering(Err("unused".into()));
    let version = block(run(
        &invocation(Command::Version, None),
        br#"{"cniVersion":"0.4.0"}"#,
        &cluster(),
        &daemon,
    ))
    .unwrap()
    .unwrap();
    assert_eq!(version["cniVersion"], "0.4.0");
    let status = block(run(
        &invocation(Command::Status, None),
        br#"{"cniVersion":"1.1.0","type":"weft-cni"}"#,
        &cluster(),
        &daemon,
    ));
    assert_eq!(status.unwrap(), None);
}
