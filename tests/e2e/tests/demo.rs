//! The demo's scenarios on containerd, as `cargo xtask demo --runtime containerd` plays them:
//! bookinfo's pods, the client and the waypoint created through the CRI from the images and
//! enrolled by weft-cni, the node agents as their DaemonSet's pods, the controller in
//! Kubernetes mode. Every scenario must pass, and nothing the run created may outlive it.
//! The scenarios at the mesh's edge (the gateways), which only the testbed runtime plays, on the
//! testbed (CI plays every scenario there with `cargo xtask demo --no-wait`).
//! Needs root and the images of `cargo xtask images --debug` (`cargo xtask test` builds them).

use std::{path::PathBuf, sync::atomic::AtomicBool};

use weft_e2e::{
    demo::{Demo, EDGE_SCENARIOS, Runtime, examples},
    kube_cluster::PIN_BASE,
    scenarios::SCENARIOS,
};

fn bookinfo() -> examples::Examples {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/bookinfo");
    examples::load(&dir).expect("the bookinfo examples")
}

#[test]
fn the_demo_plays_the_edge_scenarios_on_the_testbed() {
    let demo = Demo::start(Runtime::Testbed, &bookinfo()).expect("bookinfo starts on the testbed");
    for name in EDGE_SCENARIOS {
        let (played, failed) = demo.play(Some(name), &AtomicBool::new(false));
        assert_eq!(played, 1, "{name}");
        assert!(failed.is_empty(), "{name} failed\n{}", demo.cluster.logs());
    }
}

#[test]
fn the_demo_plays_every_scenario_on_containerd_and_leaves_nothing() {
    let examples = bookinfo();
    let demo = Demo::start(Runtime::Containerd, &examples).expect("bookinfo starts on containerd");
    let (played, failed) = demo.play(None, &AtomicBool::new(false));
    assert!(
        failed.is_empty(),
        "scenarios failed: {failed:?}\n{}",
        demo.cluster.logs()
    );
    // Every scenario but the edge's, which need the gateways this runtime does not run.
    assert_eq!(played, SCENARIOS.len() - EDGE_SCENARIOS.len());

    // What the run created, to check it is gone once the demo is dropped: the pods' network
    // namespaces (made by containerd's CNI chain), the runtime's state, the agents' pins, the
    // run's files.
    let testbed = demo.cluster.testbed();
    let mut left: Vec<PathBuf> = demo
        .cluster
        .places()
        .values()
        .map(|place| PathBuf::from(weft_testbed::NETNS_DIR).join(&place.netns))
        .collect();
    assert!(left.iter().all(|netns| netns.exists()));
    left.extend(["node1", "node2"].map(|node| testbed.runtime_state_dir(node)));
    left.push(testbed.pin_dir(PIN_BASE));
    left.push(demo.cluster.dir().to_path_buf());
    drop(demo);
    let remaining: Vec<&PathBuf> = left.iter().filter(|path| path.exists()).collect();
    assert!(remaining.is_empty(), "left behind: {remaining:?}");
}
