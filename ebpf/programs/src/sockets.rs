//! `sockops`, attached once at the cgroup v2 root: it sees every TCP socket of the node, the
//! pods' and the agent's alike, and acts only on sockets in a network namespace this agent
//! enrolled (`POD_CONFIG`, keyed by netns cookie); the agent's own sockets inside a pod are
//! among them, which is what lets it clean records and splice both directions.
//!
//! - A redirected connect (recorded by socket cookie in `outbound`) that becomes established
//!   moves its original destination to a key the agent can compute from the accepted socket:
//!   (netns cookie, client address, client port). A connect that fails drops its record.
//! - The agent's end of a redirected connection (accepted on the outbound port) removes the
//!   record when it closes, whether or not the agent asked for it.
//! - Established TCP sockets whose two ends share an address (so live in one netns) of a pod
//!   enrolled with acceleration go into `LOCAL_SOCKETS`, where `splice` finds the peer.
//! - A socket of the node's own network namespace (`NODE_NETNS`) connecting to an enrolled
//!   pod's address (the kubelet probing it, say) records its connection in `NODE_CONNECTIONS`
//!   until it closes: the pod's `sk_lookup` lets exactly those connections through to the
//!   application, as Istio lets the node's own connections through (its CNI SNATs sockets of
//!   the host namespace to `169.254.7.127`). A connection the node only forwards, masqueraded
//!   or not, has no socket there and is never recorded.
use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use weft_ebpf_common::{
    CLIENT_ADDRESS_MARK, ClientKey, NodeConnectionKey, POD_FLAG_ACCELERATE, SocketPairKey, ports,
    stats,
};

use crate::state::{
    AF_INET, AF_INET6, LOCAL_SOCKETS, NODE_CONNECTIONS, ORIGINAL_DST, PENDING_ORIGINAL_DST,
    POD_BY_ADDRESS, SPLICE_BUDGET, address_of, bump, is_node_netns, pod_config, read_ip6,
    remote_port_from_context, same_address,
};

#[sock_ops]
pub fn track_sockets(ctx: SockOpsContext) -> u32 {
    try_track_sockets(&ctx);
    1
}

struct Ends {
    netns_cookie: u64,
    key: SocketPairKey,
}

fn ends(ctx: &SockOpsContext) -> Option<Ends> {
    let family = ctx.family();
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let (local_ip4, remote_ip4, local_ip6, remote_ip6) = if family == AF_INET {
        (ctx.local_ip4(), ctx.remote_ip4(), [0; 4], [0; 4])
    } else {
        // SAFETY: `ops` points at the kernel's `bpf_sock_ops` for the whole program run.
        unsafe {
            (
                0,
                0,
                read_ip6(&raw const (*ctx.ops).local_ip6),
                read_ip6(&raw const (*ctx.ops).remote_ip6),
            )
        }
    };
    // SAFETY: the helper only reads the socket behind the context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    Some(Ends {
        netns_cookie,
        key: SocketPairKey {
            netns_cookie,
            local_address: address_of(family, local_ip4, local_ip6),
            remote_address: address_of(family, remote_ip4, remote_ip6),
            local_port: ctx.local_port() as u16,
            remote_port: remote_port_from_context(ctx.remote_port()),
            _pad: [0; 4],
        },
    })
}

fn try_track_sockets(ctx: &SockOpsContext) {
    let op = ctx.op();
    match op {
        BPF_SOCK_OPS_TCP_CONNECT_CB
        | BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        | BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            // SAFETY: the helper only reads the socket behind the context.
            let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
            if pod_config(netns_cookie).is_none() {
                if op == BPF_SOCK_OPS_TCP_CONNECT_CB && is_node_netns(netns_cookie) {
                    record_node_connection(ctx);
                }
                return;
            }
        }
        // Only sockets flagged below hear about state changes: they are enrolled pods' (or
        // were, and their records must still go).
        BPF_SOCK_OPS_STATE_CB => {}
        // Every other callback (RTO, receive window, ECN...) of every socket of the node: none
        // of ours, and no lookup.
        _ => return,
    }
    match op {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            if socket_mark(ctx) == CLIENT_ADDRESS_MARK {
                // The agent connecting to the pod's application from a client's address: let
                // the SYN through to the application like a connection of the node's own.
                record_node_connection(ctx);
                return;
            }
            // SAFETY: the helper only reads the socket's cookie.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            if PENDING_ORIGINAL_DST.get_ptr(cookie).is_some() {
                // Hear about the close of a connect that never gets established.
                let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
            }
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            let Some(ends) = ends(ctx) else { return };
            // SAFETY: the helper only reads the socket's cookie.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            if let Some(original) = PENDING_ORIGINAL_DST.get_ptr(cookie) {
                // SAFETY: pointer from a map lookup, valid for this run.
                let original = unsafe { *original };
                let client = ClientKey {
                    netns_cookie: ends.netns_cookie,
                    address: ends.key.local_address,
                    port: ends.key.local_port,
                    _pad: [0; 6],
                };
                let _ = ORIGINAL_DST.insert(client, original, 0);
                let _ = PENDING_ORIGINAL_DST.remove(cookie);
                let _ = ctx.set_cb_flags((ctx.cb_flags() & !BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
            }
            add_local_socket(ctx, &ends);
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            let Some(ends) = ends(ctx) else { return };
            if ends.key.local_port == ports::OUTBOUND && pod_config(ends.netns_cookie).is_some() {
                // The agent's end of a redirected connection: clean up when it closes.
                let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
            }
            add_local_socket(ctx, &ends);
        }
        BPF_SOCK_OPS_STATE_CB => {
            if ctx.arg(1) != BPF_TCP_CLOSE {
                return;
            }
            // SAFETY: the helper only reads the socket's cookie.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let _ = PENDING_ORIGINAL_DST.remove(cookie);
            let Some(ends) = ends(ctx) else { return };
            if is_node_netns(ends.netns_cookie) || socket_mark(ctx) == CLIENT_ADDRESS_MARK {
                let _ = NODE_CONNECTIONS.remove(&node_connection_key(&ends));
                return;
            }
            if ends.key.local_port == ports::OUTBOUND {
                let client = ClientKey {
                    netns_cookie: ends.netns_cookie,
                    address: ends.key.remote_address,
                    port: ends.key.remote_port,
                    _pad: [0; 6],
                };
                let _ = ORIGINAL_DST.remove(client);
            }
        }
        _ => {}
    }
}

/// The socket's `SO_MARK` (0 when the context has no full socket).
fn socket_mark(ctx: &SockOpsContext) -> u32 {
    // SAFETY: `ops` points at the kernel's `bpf_sock_ops` for the whole program run; `sk` is
    // checked for null before its `mark` is read.
    unsafe {
        let sk = (*ctx.ops).__bindgen_anon_2.sk;
        if sk.is_null() { 0 } else { (*sk).mark }
    }
}

fn node_connection_key(ends: &Ends) -> NodeConnectionKey {
    NodeConnectionKey {
        client_address: ends.key.local_address,
        server_address: ends.key.remote_address,
        client_port: ends.key.local_port,
        server_port: ends.key.remote_port,
        _pad: [0; 4],
    }
}

/// A socket of the node's own namespace connecting: recorded (and told about its close, when
/// the record goes) if it connects to a pod this agent enrolled. Its addresses and ports are
/// final here: `connect()` chose them before sending the SYN this callback precedes.
fn record_node_connection(ctx: &SockOpsContext) {
    let Some(ends) = ends(ctx) else { return };
    if POD_BY_ADDRESS.get_ptr(&ends.key.remote_address).is_none() {
        return;
    }
    if NODE_CONNECTIONS
        .insert(&node_connection_key(&ends), &1, 0)
        .is_ok()
    {
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
}

fn add_local_socket(ctx: &SockOpsContext, ends: &Ends) {
    // Both ends inside the pod: one address (the pod's own, or loopback), or the agent's
    // connection to the application from a client's address, whose two sockets (the agent's and
    // the application's accepted one) carry its mark.
    if !same_address(&ends.key.local_address, &ends.key.remote_address)
        && socket_mark(ctx) != CLIENT_ADDRESS_MARK
    {
        return;
    }
    let Some(config) = pod_config(ends.netns_cookie) else {
        return;
    };
    if config.flags & POD_FLAG_ACCELERATE == 0 {
        return;
    }
    let mut key = ends.key;
    // A new connection starts with its whole budget, whatever an earlier one on the same
    // addresses and ports left behind.
    let _ = SPLICE_BUDGET.remove(&key);
    // SAFETY: `ops` is the kernel's `bpf_sock_ops` for this run, which the helper takes.
    if LOCAL_SOCKETS
        .update(&mut key, unsafe { &mut *ctx.ops }, u64::from(BPF_ANY))
        .is_ok()
    {
        bump(stats::LOCAL_SOCKETS_ADDED);
    }
}
