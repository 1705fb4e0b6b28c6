//! `sk_lookup` on an enrolled pod's netns: a new TCP connection to one of the pod's addresses on
//! an application port goes to the agent's inbound listener (15006) instead of the application.
//!
//! Left alone: non-TCP, connections from inside the pod (loopback interface, or a source address
//! that is the pod's own or loopback: the agent's own forwarding, made inside the pod), HBONE
//! (15008, the only port Istio's in-pod rules exempt), the pod's excluded ports, and connections
//! a socket of the node itself opened (recorded by `sockets` in `NODE_CONNECTIONS`: the
//! kubelet's health probes, which Istio also exempts; nothing the node merely forwards, even
//! when masqueraded to the node's own address). Istio's other numbers (15000, 15020, 15021)
//! are the application's inside a pod and are steered like any.
//! If the pod's inbound listener is missing (agent down), the connection is dropped: inbound
//! traffic of an enrolled pod never bypasses the agent.
use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use weft_ebpf_common::{NodeConnectionKey, ports, stats};

use crate::state::{
    AF_INET, INBOUND_LISTENERS, IPPROTO_TCP, NODE_CONNECTIONS, POD_BY_ADDRESS, address_of, bump,
    is_loopback, pod_config, port_listed, read_ip6, same_address,
};

/// `lo` has this index in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

#[sk_lookup]
pub fn steer_inbound(ctx: SkLookupContext) -> u32 {
    try_steer_inbound(&ctx)
}

fn try_steer_inbound(ctx: &SkLookupContext) -> u32 {
    let lookup = ctx.lookup;
    // SAFETY: `lookup` points at the kernel's `bpf_sk_lookup` for the whole program run.
    let (family, protocol, local_port, remote_port, ingress_ifindex) = unsafe {
        (
            (*lookup).family,
            (*lookup).protocol,
            (*lookup).local_port,
            (*lookup).remote_port,
            (*lookup).ingress_ifindex,
        )
    };
    if protocol != IPPROTO_TCP || ingress_ifindex == LOOPBACK_IFINDEX {
        return SK_PASS;
    }
    let local_port = local_port as u16;
    if local_port == ports::INBOUND_EXEMPT {
        return SK_PASS;
    }
    // SAFETY: as above; the IPv4 fields are read for IPv4 lookups, the IPv6 ones otherwise.
    let (local, remote) = unsafe {
        if family == AF_INET {
            (
                address_of(family, (*lookup).local_ip4, [0; 4]),
                address_of(family, (*lookup).remote_ip4, [0; 4]),
            )
        } else {
            (
                address_of(family, 0, read_ip6(&raw const (*lookup).local_ip6)),
                address_of(family, 0, read_ip6(&raw const (*lookup).remote_ip6)),
            )
        }
    };
    // From inside the pod (its own address or loopback as source): the kernel drops packets
    // with a local source address arriving from outside, so this is the pod talking to itself,
    // e.g. the agent forwarding an inbound connection it already accepted.
    if is_loopback(&remote) {
        return SK_PASS;
    }
    let Some(netns_cookie) = POD_BY_ADDRESS.get_ptr(local) else {
        return SK_PASS;
    };
    // SAFETY: pointer from a map lookup, valid for this run.
    let netns_cookie = unsafe { *netns_cookie };
    if let Some(config) = pod_config(netns_cookie) {
        if port_listed(&config.excluded_inbound_ports, local_port) {
            return SK_PASS;
        }
        let mut i = 0;
        while i < config.addresses.len() {
            if same_address(&config.addresses[i], &remote) {
                return SK_PASS;
            }
            i += 1;
        }
    }
    let node_connection = NodeConnectionKey {
        client_address: remote,
        server_address: local,
        client_port: u16::from_be(remote_port),
        server_port: local_port,
        _pad: [0; 4],
    };
    if NODE_CONNECTIONS.get_ptr(&node_connection).is_some() {
        bump(stats::NODE_CONNECTIONS_PASSED);
        return SK_PASS;
    }
    match INBOUND_LISTENERS.redirect_sk_lookup(ctx, netns_cookie, 0) {
        Ok(()) => {
            bump(stats::STEERED_INBOUND);
            SK_PASS
        }
        Err(_) => {
            bump(stats::INBOUND_WITHOUT_LISTENER);
            aya_log_ebpf::warn!(ctx, "no inbound listener for port {}: dropped", local_port);
            SK_DROP
        }
    }
}
