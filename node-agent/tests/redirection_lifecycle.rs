//! The redirection lifecycle on the real kernel: fail closed while the agent is down, adoption
//! of the pinned state by a restarted agent without re-enrolling, un-enrolling back to plain
//! networking, and uninstalling with nothing left attached, at the cgroup root or on the pod's
//! netns. Needs root.

mod support;

use std::{net::SocketAddr, sync::Arc};

use node_agent::ebpf::{Enroller, PodEnrollment, Redirection};
use support::{AgentMode, OutboundAgent, Server, client};
use weft_testbed::Topology;

#[test]
fn pod_client() {
    client::entry();
}

#[test]
fn fails_closed_while_the_agent_is_down_and_adopts_on_restart() {
    let testbed = Topology::new()
        .node("node1", &["client"])
        .node("node2", &["server"])
        .build()
        .expect("build the testbed");
    let client_pod = testbed.pod("client");
    let server_ip = testbed.pod("server").ip;
    let server = Server::start(&testbed.pod("server").netns, "0.0.0.0:8080");
    let url = format!("http://{server_ip}:8080/");
    let destination: SocketAddr = (server_ip, 8080).into();

    let redirection = support::open_redirection(&testbed, false);
    let (pod, inbound) = support::enroll(&redirection, &testbed, "client", vec![], vec![]);
    let agent = OutboundAgent::start(
        &client_pod.netns,
        redirection.clone(),
        pod.netns_cookie,
        AgentMode::Forward,
    );
    assert_eq!(
        support::curl(&testbed, "client", &url),
        (Some(0), "ok".into())
    );
    assert_eq!(agent.wait_for(1)[0].original, Some(destination));
    assert_eq!(server.peers().len(), 1);

    // The agent goes down: listeners closed, programs' user-space side gone, pins stay.
    agent.stop();
    drop(inbound);
    drop(redirection);
    let (code, _) = support::curl(&testbed, "client", &url);
    assert_eq!(
        code,
        Some(7),
        "curl must fail to connect while the agent is down"
    );
    assert_eq!(
        client::in_pod(&testbed, "client", &format!("connect {destination}")),
        "error=ConnectionRefused"
    );
    assert_eq!(server.peers().len(), 1, "a connection bypassed the agent");

    // The agent restarts: it adopts the pinned maps and links, opens new listeners.
    let redirection =
        Arc::new(Redirection::open(support::redirection_config(&testbed, false)).expect("adopt"));
    let enrolled = redirection.enrolled().unwrap();
    assert_eq!(enrolled, vec![pod.clone()], "the pod was not adopted");
    let inbound = support::listen_in(&client_pod.netns, "0.0.0.0:15006");
    use std::os::fd::AsFd;
    let adopted = redirection
        .adopt(&PodEnrollment {
            uid: pod.uid.clone(),
            netns: client_pod.netns.path(),
            addresses: vec![client_pod.ip.into()],
            excluded_outbound_ports: vec![],
            excluded_inbound_ports: vec![],
            dns_capture: true,
            inbound_listener: inbound.as_fd(),
        })
        .unwrap();
    assert_eq!(adopted, pod);
    let agent = OutboundAgent::start(
        &client_pod.netns,
        redirection.clone(),
        pod.netns_cookie,
        AgentMode::Forward,
    );
    assert_eq!(
        support::curl(&testbed, "client", &url),
        (Some(0), "ok".into())
    );
    let accepted = agent.wait_for(1);
    assert_eq!(accepted[0].original, Some(destination));
    assert_eq!(server.peers().len(), 2);
    assert_eq!(server.peers()[1], accepted[0].upstream.unwrap());
    // Refused connects while down left no records behind.
    let records = redirection.connection_records().unwrap();
    assert_eq!((records.pending, records.established), (0, 0));

    // Nothing is attached to the pod's cgroup: the programs are at the cgroup root, once.
    let pod_cgroup = support::cgroup_programs(client_pod.cgroup.path());
    assert!(
        !pod_cgroup.contains("connect") && !pod_cgroup.contains("sock_ops"),
        "programs attached to the pod's cgroup: {pod_cgroup}"
    );
    let pin_root = support::redirection_config(&testbed, false).pin_root;
    let root_links = support::root_links(&pin_root);
    assert_eq!(root_links.len(), 3, "{root_links:?}");
    let root_cgroup = support::cgroup_programs(&node_agent::ebpf::cgroup2_root().unwrap());
    for link in &root_links {
        assert!(
            root_cgroup.contains(&format!("{}", link.program_id)),
            "program {} not at the cgroup root: {root_cgroup}",
            link.program_id
        );
    }

    // Un-enroll: plain networking, nothing left on the pod's netns.
    let netns_inode = support::netns_inode(&client_pod.netns);
    let on_netns = |links: &[serde_json::Value]| {
        links
            .iter()
            .filter(|l| l["netns_ino"].as_u64() == Some(netns_inode))
            .count()
    };
    assert_eq!(
        on_netns(&support::links()),
        1,
        "sk_lookup link on the pod netns"
    );

    redirection.unenroll(&pod.uid).unwrap();
    assert_eq!(
        on_netns(&support::links()),
        0,
        "a link is left on the pod netns"
    );
    assert!(redirection.enrolled().unwrap().is_empty());

    assert_eq!(
        support::curl(&testbed, "client", &url),
        (Some(0), "ok".into())
    );
    assert_eq!(agent.accepted().len(), 1, "captured after un-enrolling");
    let peers = server.peers();
    assert_eq!(peers.len(), 3);
    assert_eq!(peers[2].ip(), client_pod.ip);
    assert!(
        !agent
            .accepted()
            .iter()
            .any(|a| a.upstream == Some(peers[2]))
    );

    drop(agent);
    Arc::into_inner(redirection).unwrap().uninstall().unwrap();
    assert!(!pin_root.exists());
    let links = support::links();
    for link in &root_links {
        assert!(
            !links.iter().any(|l| l["id"].as_u64() == Some(link.id)),
            "link {} left at the cgroup root",
            link.id
        );
    }
}
