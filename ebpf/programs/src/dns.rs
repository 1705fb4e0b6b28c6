//! DNS capture, as Istio's in-pod rules redirect a pod's port 53 to ztunnel's 15053: an
//! enrolled pod's TCP connects and UDP datagrams to port 53 of any address but loopback go to
//! the agent's DNS proxy inside the pod, at `127.0.0.1:15053` for IPv4 sockets and IPv4-mapped
//! destinations of dual-stack ones (`::ffff:127.0.0.1`), at `[::1]:15053` for IPv6
//! nameservers. `connect4`/`connect6` (through [`try_capture`]) rewrite TCP and connected UDP
//! sockets, `sendmsg4`/`sendmsg6` unconnected datagrams; for UDP the nameserver the
//! application addressed is recorded by socket cookie, and `recvmsg4`/`recvmsg6` put it back
//! as the source of the proxy's answers, so a resolver that checks where its answer came from
//! (glibc does) takes it. The agent's own sockets (its marks), a pod that excludes port 53 and
//! a pod that opted out ([`weft_ebpf_common::POD_FLAG_NO_DNS_CAPTURE`]) are left alone.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use weft_ebpf_common::{
    AGENT_SOCKET_MARK, Address, CLIENT_ADDRESS_MARK, IPV4_MAPPED_PREFIX, POD_FLAG_NO_DNS_CAPTURE,
    SocketAddress, ipv4_mapped, ports, stats,
};

use crate::{
    outbound::{ALLOW, IPV4_LOCALHOST, IPV6_LOCALHOST},
    state::{
        AF_INET, DNS_ORIGINAL_DST, IPPROTO_TCP, IPPROTO_UDP, bump, is_loopback, pod_config,
        port_listed, read_ip6, same_address, write_ip6,
    },
};

#[cgroup_sock_addr(sendmsg4)]
pub fn capture_dns_sendmsg4(ctx: SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    // SAFETY: `sock_addr` points at the kernel's `bpf_sock_addr` for the whole program run;
    // `user_ip4` and `user_port` are readable from `sendmsg4`.
    let (protocol, ip4, raw_port) =
        unsafe { ((*addr).protocol, (*addr).user_ip4, (*addr).user_port) };
    if protocol == IPPROTO_UDP {
        try_capture(&ctx, AF_INET, protocol, ipv4_mapped(ip4), raw_port);
    }
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn capture_dns_sendmsg6(ctx: SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    // SAFETY: as above; `user_ip6` is readable from `sendmsg6`.
    let (protocol, ip6, raw_port) = unsafe {
        (
            (*addr).protocol,
            read_ip6(&raw const (*addr).user_ip6),
            (*addr).user_port,
        )
    };
    if protocol == IPPROTO_UDP {
        try_capture(&ctx, crate::state::AF_INET6, protocol, ip6, raw_port);
    }
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn restore_dns_recvmsg4(ctx: SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    // SAFETY: as above; in `recvmsg4` the fields are the datagram's source, and writable.
    let (protocol, ip4, raw_port) =
        unsafe { ((*addr).protocol, (*addr).user_ip4, (*addr).user_port) };
    if protocol != IPPROTO_UDP || ip4 != IPV4_LOCALHOST {
        return ALLOW;
    }
    if let Some(original) = original_nameserver(&ctx, raw_port) {
        // SAFETY: `user_ip4`/`user_port` are the writable fields of the context.
        unsafe {
            (*addr).user_ip4 = original.address[3];
            (*addr).user_port = u32::from(original.port.to_be());
        }
    }
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn restore_dns_recvmsg6(ctx: SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    // SAFETY: as above; in `recvmsg6` `user_ip6` is the datagram's source, and writable.
    let (protocol, ip6, raw_port) = unsafe {
        (
            (*addr).protocol,
            read_ip6(&raw const (*addr).user_ip6),
            (*addr).user_port,
        )
    };
    if protocol != IPPROTO_UDP
        || !(same_address(&ip6, &IPV6_LOCALHOST)
            || same_address(&ip6, &ipv4_mapped(IPV4_LOCALHOST)))
    {
        return ALLOW;
    }
    if let Some(original) = original_nameserver(&ctx, raw_port) {
        // SAFETY: `user_ip6`/`user_port` are the writable fields of the context.
        unsafe {
            write_ip6(&raw mut (*addr).user_ip6, original.address);
            (*addr).user_port = u32::from(original.port.to_be());
        }
    }
    ALLOW
}

/// The nameserver an enrolled pod's socket addressed, for a datagram that comes from the DNS
/// proxy's port.
fn original_nameserver(ctx: &SockAddrContext, raw_port: u32) -> Option<SocketAddress> {
    if u16::from_be(raw_port as u16) != ports::DNS {
        return None;
    }
    // SAFETY: the helpers only read the socket behind the context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    pod_config(netns_cookie)?;
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let original = DNS_ORIGINAL_DST.get_ptr(cookie)?;
    // SAFETY: the pointer comes from a map lookup and stays valid for this run.
    Some(unsafe { *original })
}

/// Sends a TCP connect or UDP datagram of an enrolled pod to port 53 to the DNS proxy;
/// whether it did. `destination` is IPv4-mapped for IPv4 (`family` is the hook's, `AF_INET`
/// for the `*4` hooks).
pub fn try_capture(
    ctx: &SockAddrContext,
    family: u32,
    protocol: u32,
    destination: Address,
    raw_port: u32,
) -> bool {
    let port = u16::from_be(raw_port as u16);
    if port != ports::DNS_CAPTURED || (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP) {
        return false;
    }
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
        || config.flags & POD_FLAG_NO_DNS_CAPTURE != 0
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
    let mapped = destination[0] == 0 && destination[1] == 0 && destination[2] == IPV4_MAPPED_PREFIX;
    // SAFETY: `user_ip4`/`user_ip6` (by the hook's family) and `user_port` are writable in
    // `connect4/6` and `sendmsg4/6`.
    unsafe {
        if family == AF_INET {
            (*addr).user_ip4 = IPV4_LOCALHOST;
        } else if mapped {
            // A dual-stack socket talking IPv4 reaches the IPv4 listener through the mapped
            // loopback, keeping its family.
            write_ip6(&raw mut (*addr).user_ip6, ipv4_mapped(IPV4_LOCALHOST));
        } else {
            write_ip6(&raw mut (*addr).user_ip6, IPV6_LOCALHOST);
        }
        (*addr).user_port = u32::from(ports::DNS.to_be());
    }
    bump(stats::DNS_CAPTURED);
    true
}
