//! `cgroup/connect4` and `cgroup/connect6`, attached once at the cgroup v2 root: rewrite a TCP
//! `connect()` made inside an enrolled pod's network namespace to the agent's in-pod outbound
//! listener and remember where it was going, by socket cookie (`sockets` moves the record to a
//! key the agent can compute once the client port is known).
//!
//! At the root the programs run for every process of the node, so the first question is whether
//! the socket's netns is one this agent enrolled (`POD_CONFIG`, keyed by netns cookie); any
//! other connect is left exactly as it was, at the cost of one hash lookup. Both first offer
//! the connect to the DNS capture (`dns`), which takes TCP and UDP to port 53.
//!
//! Left alone in an enrolled pod: non-TCP sockets, the agent's own sockets (created inside the
//! pod and marked [`weft_ebpf_common::AGENT_SOCKET_MARK`]), loopback destinations, the pod's own
//! addresses (that traffic never leaves the pod and arrives on `lo`, where inbound steering
//! ignores it too), and the pod's excluded ports.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use weft_ebpf_common::{AGENT_SOCKET_MARK, Address, CLIENT_ADDRESS_MARK, SocketAddress, ipv4_mapped, ports, stats};

use crate::state::{
    AF_INET, IPPROTO_TCP, PENDING_ORIGINAL_DST, bump, is_loopback, is_unspecified, pod_config,
    port_listed, read_ip6, same_address, write_ip6,
};

/// `1` lets the `connect()` proceed (with whatever address the program left in the context).
pub const ALLOW: i32 = 1;
/// `127.0.0.1`, network byte order.
pub const IPV4_LOCALHOST: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// `::1`, network byte order.
pub const IPV6_LOCALHOST: Address = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

#[cgroup_sock_addr(connect4)]
pub fn redirect_connect4(ctx: SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    // SAFETY: `sock_addr` points at the kernel's `bpf_sock_addr` for the whole program run;
    // `user_ip4` is readable from `connect4`.
    let (protocol, ip4, raw_port) =
        unsafe { ((*addr).protocol, (*addr).user_ip4, (*addr).user_port) };
    if crate::dns::try_capture(&ctx, AF_INET, protocol, ipv4_mapped(ip4), raw_port) {
        return ALLOW;
    }
    if protocol == IPPROTO_TCP {
        try_redirect(&ctx, AF_INET, ipv4_mapped(ip4), raw_port);
    }
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn redirect_connect6(ctx: SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    // SAFETY: as above; `user_ip6` is readable from `connect6`.
    let (protocol, ip6, raw_port) = unsafe {
        (
            (*addr).protocol,
            read_ip6(&raw const (*addr).user_ip6),
            (*addr).user_port,
        )
    };
    if crate::dns::try_capture(&ctx, crate::state::AF_INET6, protocol, ip6, raw_port) {
        return ALLOW;
    }
    if protocol == IPPROTO_TCP {
        try_redirect(&ctx, crate::state::AF_INET6, ip6, raw_port);
    }
    ALLOW
}

fn try_redirect(ctx: &SockAddrContext, family: u32, destination: Address, raw_port: u32) {
    let addr: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the helper only reads the socket behind the context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    let Some(config) = pod_config(netns_cookie) else {
        return;
    };
    // SAFETY: `sk` of a `bpf_sock_addr` is the connecting socket, never null in `connect4/6`;
    // `mark` is a readable field of `bpf_sock`.
    let mark = unsafe { (*(*addr).__bindgen_anon_1.sk).mark };
    if mark == AGENT_SOCKET_MARK || mark == CLIENT_ADDRESS_MARK {
        return;
    }
    let port = u16::from_be(raw_port as u16);
    if is_loopback(&destination) || is_unspecified(&destination) {
        return;
    }
    if port_listed(&config.excluded_outbound_ports, port) {
        return;
    }
    let mut i = 0;
    while i < config.addresses.len() {
        if same_address(&config.addresses[i], &destination) {
            return;
        }
        i += 1;
    }
    // SAFETY: the helper only reads (and on first use assigns) the socket's cookie.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let original = SocketAddress {
        address: destination,
        port,
        _pad: [0; 2],
    };
    if PENDING_ORIGINAL_DST.insert(cookie, original, 0).is_err() {
        // Without a record the agent could not serve the connection; still redirect (fail
        // closed): the agent refuses a connection it cannot place.
        aya_log_ebpf::warn!(
            ctx,
            "original destination not recorded for cookie {}",
            cookie
        );
    }
    let rewritten_port = u32::from(ports::OUTBOUND.to_be());
    // SAFETY: `user_ip4`/`user_ip6` and `user_port` are the writable fields of the context.
    unsafe {
        if family == AF_INET {
            // IPv4 sockets and IPv4-mapped destinations of dual-stack sockets go to the IPv4
            // listener; the latter keep their family by staying mapped.
            (*addr).user_ip4 = IPV4_LOCALHOST;
        } else if destination[2] == weft_ebpf_common::IPV4_MAPPED_PREFIX
            && destination[0] == 0
            && destination[1] == 0
        {
            write_ip6(&raw mut (*addr).user_ip6, ipv4_mapped(IPV4_LOCALHOST));
        } else {
            write_ip6(&raw mut (*addr).user_ip6, IPV6_LOCALHOST);
        }
        (*addr).user_port = rewritten_port;
    }
    bump(stats::REDIRECTED_CONNECTS);
}
