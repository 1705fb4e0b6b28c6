//! DNS capture, as Istio's in-pod rules redirect a pod's port 53 to ztunnel's 15053: an
//! enrolled pod's TCP connects and UDP datagrams to port 53 of any address but loopback go to
//! the agent's DNS proxy at `127.0.0.1:15053` inside the pod. `connect4` (through
//! [`try_capture`]) rewrites TCP and connected UDP sockets, `sendmsg4` unconnected datagrams;
//! for UDP the nameserver the application addressed is recorded by socket cookie, and
//! `recvmsg4` puts it back as the source of the proxy's answers, so a resolver that checks
//! where its answer came from (glibc does) takes it. The agent's own sockets (its marks) and
//! a pod that excludes port 53 are left alone. IPv6 sockets are not captured yet.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use weft_ebpf_common::{
    AGENT_SOCKET_MARK, CLIENT_ADDRESS_MARK, SocketAddress, ipv4_mapped, ports, stats,
};

use crate::{
    outbound::{ALLOW, IPV4_LOCALHOST},
    state::{DNS_ORIGINAL_DST, IPPROTO_TCP, IPPROTO_UDP, bump, is_loopback, pod_config, port_listed},
};

#[cgroup_sock_addr(sendmsg4)]
pub fn capture_dns_sendmsg4(ctx: SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    // SAFETY: `sock_addr` points at the kernel's `bpf_sock_addr` for the whole program run;
    // `user_ip4` and `user_port` are readable from `sendmsg4`.
    let (protocol, ip4, raw_port) =
        unsafe { ((*addr).protocol, (*addr).user_ip4, (*addr).user_port) };
    if protocol == IPPROTO_UDP {
        try_capture(&ctx, protocol, ip4, raw_port);
    }
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn restore_dns_recvmsg4(ctx: SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    // SAFETY: as above; in `recvmsg4` the fields are the datagram's source, and writable.
    let (protocol, ip4, raw_port) =
        unsafe { ((*addr).protocol, (*addr).user_ip4, (*addr).user_port) };
    if protocol != IPPROTO_UDP
        || ip4 != IPV4_LOCALHOST
        || u16::from_be(raw_port as u16) != ports::DNS
    {
        return ALLOW;
    }
    // SAFETY: the helpers only read the socket behind the context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    if pod_config(netns_cookie).is_none() {
        return ALLOW;
    }
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let Some(original) = DNS_ORIGINAL_DST.get_ptr(cookie) else {
        return ALLOW;
    };
    // SAFETY: the pointer comes from a map lookup and stays valid for this run.
    let original = unsafe { *original };
    // SAFETY: `user_ip4`/`user_port` are the writable fields of the context.
    unsafe {
        (*addr).user_ip4 = original.address[3];
        (*addr).user_port = u32::from(original.port.to_be());
    }
    ALLOW
}

/// Sends a TCP connect or UDP datagram of an enrolled pod to port 53 to the DNS proxy;
/// whether it did.
pub fn try_capture(ctx: &SockAddrContext, protocol: u32, ip4: u32, raw_port: u32) -> bool {
    let port = u16::from_be(raw_port as u16);
    if port != ports::DNS_CAPTURED || (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP) {
        return false;
    }
    let destination = ipv4_mapped(ip4);
    if is_loopback(&destination) {
        return false;
    }
    let addr: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the helper only reads the socket behind the context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    let Some(config) = pod_config(netns_cookie) else {
        return false;
    };
    // SAFETY: `sk` of a `bpf_sock_addr` is the socket, never null in these hooks; `mark` is a
    // readable field of `bpf_sock`.
    let mark = unsafe { (*(*addr).__bindgen_anon_1.sk).mark };
    if mark == AGENT_SOCKET_MARK
        || mark == CLIENT_ADDRESS_MARK
        || port_listed(&config.excluded_outbound_ports, port)
    {
        return false;
    }
    if protocol == IPPROTO_UDP {
        // SAFETY: the helper only reads (and on first use assigns) the socket's cookie.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        let original = SocketAddress {
            address: destination,
            port,
            _pad: [0; 2],
        };
        // Without the record an answer keeps the proxy's address as source: the resolver
        // drops it and fails, which is closed, not open.
        let _ = DNS_ORIGINAL_DST.insert(cookie, original, 0);
    }
    // SAFETY: `user_ip4` and `user_port` are writable in `connect4` and `sendmsg4`.
    unsafe {
        (*addr).user_ip4 = IPV4_LOCALHOST;
        (*addr).user_port = u32::from(ports::DNS.to_be());
    }
    bump(stats::DNS_CAPTURED);
    true
}
