//! The client's address toward the application, in a real pod namespace: the agent's
//! connection comes from the client's address, and one that cannot get a port other than the
//! client's own fails with a clear error instead of looping. Needs root.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use node_agent::netns::PodNetns;
use weft_testbed::Topology;

mod support;

/// A client outside the pod (another pod's address).
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 250, 0, 9));
/// The only ephemeral port the pod's namespace may choose.
const ONLY_PORT: u16 = 40000;

#[tokio::test]
async fn the_application_sees_the_client_and_a_port_clash_fails_after_a_few_draws() {
    let testbed = Topology::new()
        .node("node1", &["app"])
        .build()
        .expect("build the testbed");
    let app = testbed.pod("app");
    let netns = PodNetns::open(&app.netns.path(), PodNetns::current().expect("own netns"))
        .expect("open the pod's namespace")
        .keep_client_addresses()
        .expect("reply routes in the pod");
    app.netns
        .sysctl(
            "net.ipv4.ip_local_port_range",
            &format!("{ONLY_PORT} {ONLY_PORT}"),
        )
        .expect("narrow the ephemeral range");
    let listener = support::listen_in(&app.netns, "0.0.0.0:8080");
    let target = SocketAddr::from((app.ip, 8080));

    // The client's connection holds the one port: every draw is the client's own.
    let clash = netns
        .connect_from(CLIENT, Some(ONLY_PORT), target)
        .await
        .expect_err("no port other than the client's");
    assert_eq!(clash.kind(), std::io::ErrorKind::AddrInUse, "{clash}");
    assert!(
        clash
            .to_string()
            .contains("ip_local_port_range is too narrow"),
        "{clash}"
    );

    // Another client port: the application accepts a connection from the client's address.
    let _stream = netns
        .connect_from(CLIENT, Some(ONLY_PORT + 1), target)
        .await
        .expect("connect from the client's address");
    let (_accepted, peer) = listener.accept().expect("accept");
    assert_eq!(peer, SocketAddr::new(CLIENT, ONLY_PORT));
}
