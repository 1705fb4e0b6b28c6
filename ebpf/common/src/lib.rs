//! Types shared by the kernel programs (`ebpf/programs`) and the node agent's loader: map names,
//! `#[repr(C)]` keys and values with explicit padding, no `bool`. Builds `no_std` for the kernel
//! side; the `user` feature adds `aya::Pod` for user space. Holds no logic beyond the address
//! encoding both sides must agree on.
//!
//! Addresses are stored as four `u32` words in network byte order (as the kernel hands them to
//! programs); IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`) so that one key shape serves
//! both families and a dual-stack socket talking IPv4 matches its IPv4 peer.
#![no_std]

/// Map names, as they appear in the object file and under bpffs once pinned.
pub mod maps {
    /// Smoke-test counter: how many `connect()` calls the smoke program saw, by slot.
    pub const SMOKE_COUNTER: &str = "SMOKE_COUNTER";
    /// Enrolled pods' configuration, by netns cookie ([`crate::PodConfig`]).
    pub const POD_CONFIG: &str = "POD_CONFIG";
    /// Enrolled pods' addresses ([`crate::Address`]) to their netns cookie.
    pub const POD_BY_ADDRESS: &str = "POD_BY_ADDRESS";
    /// Original destinations of redirected connects not yet established, by socket cookie.
    pub const PENDING_ORIGINAL_DST: &str = "PENDING_ORIGINAL_DST";
    /// Original destinations of established redirected connections, by [`crate::ClientKey`].
    pub const ORIGINAL_DST: &str = "ORIGINAL_DST";
    /// The agent's inbound (15006) listener of each enrolled pod, by netns cookie (SOCKHASH).
    pub const INBOUND_LISTENERS: &str = "INBOUND_LISTENERS";
    /// Established same-netns TCP sockets, by [`crate::SocketPairKey`] (SOCKHASH).
    pub const LOCAL_SOCKETS: &str = "LOCAL_SOCKETS";
    /// Per-CPU counters of the redirection programs (slots in [`crate::stats`]).
    pub const REDIRECT_STATS: &str = "REDIRECT_STATS";
    /// Bytes each sending end of a same-netns pair has spliced so far, by its own
    /// [`crate::SocketPairKey`]; [`crate::SPLICE_STOPPED`] once it takes the normal path for good.
    pub const SPLICE_BUDGET: &str = "SPLICE_BUDGET";
    /// The node's own network namespace, by cookie (one slot, written by the agent at start):
    /// connections made from it to enrolled pods are the node's own, such as the kubelet's probes.
    pub const NODE_NETNS: &str = "NODE_NETNS";
    /// Connections the node itself is opening to enrolled pods, by [`crate::NodeConnectionKey`]:
    /// recorded when a socket of [`NODE_NETNS`] connects, removed when it closes. Inbound
    /// steering lets these through to the application (Istio exempts the node's own traffic).
    pub const NODE_CONNECTIONS: &str = "NODE_CONNECTIONS";
    /// Where captured DNS datagrams were going, by socket cookie ([`crate::SocketAddress`]):
    /// `recvmsg4`/`recvmsg6` give the answers that address as their source, so the
    /// application's resolver accepts them as its nameserver's.
    pub const DNS_ORIGINAL_DST: &str = "DNS_ORIGINAL_DST";
    /// The maps the agent pins, so that they outlive an agent restart.
    pub const PINNED: [&str; 11] = [
        POD_CONFIG,
        POD_BY_ADDRESS,
        PENDING_ORIGINAL_DST,
        ORIGINAL_DST,
        INBOUND_LISTENERS,
        LOCAL_SOCKETS,
        REDIRECT_STATS,
        SPLICE_BUDGET,
        NODE_NETNS,
        NODE_CONNECTIONS,
        DNS_ORIGINAL_DST,
    ];
}

/// Program names, as the loader looks them up in the object file.
pub mod programs {
    /// A `cgroup/connect4` program that only counts calls and lets every connect through.
    pub const SMOKE_CONNECT4: &str = "smoke_connect4";
    /// `cgroup/connect4`: redirects an enrolled pod's TCP connects to the outbound listener.
    pub const REDIRECT_CONNECT4: &str = "redirect_connect4";
    /// `cgroup/connect6`: the same for IPv6 sockets.
    pub const REDIRECT_CONNECT6: &str = "redirect_connect6";
    /// `sockops`: records original destinations by client port and same-netns socket pairs.
    pub const TRACK_SOCKETS: &str = "track_sockets";
    /// `sk_lookup`: steers inbound connections to the agent's inbound listener.
    pub const STEER_INBOUND: &str = "steer_inbound";
    /// `sk_msg`: splices payload between same-netns socket pairs.
    pub const SPLICE_LOCAL: &str = "splice_local";
    /// `cgroup/sendmsg4`: sends an enrolled pod's unconnected UDP datagrams to port 53 to the
    /// agent's DNS proxy (`connect4` does it for connected UDP sockets and TCP).
    pub const CAPTURE_DNS_SENDMSG4: &str = "capture_dns_sendmsg4";
    /// `cgroup/recvmsg4`: gives the DNS proxy's answers the nameserver's address as source.
    pub const RESTORE_DNS_RECVMSG4: &str = "restore_dns_recvmsg4";
    /// `cgroup/sendmsg6`: [`CAPTURE_DNS_SENDMSG4`] for IPv6 sockets (IPv6 nameservers, and
    /// IPv4-mapped ones of dual-stack sockets).
    pub const CAPTURE_DNS_SENDMSG6: &str = "capture_dns_sendmsg6";
    /// `cgroup/recvmsg6`: [`RESTORE_DNS_RECVMSG4`] for IPv6 sockets.
    pub const RESTORE_DNS_RECVMSG6: &str = "restore_dns_recvmsg6";
}

/// Slots of [`maps::SMOKE_COUNTER`].
pub mod smoke {
    /// Every IPv4 `connect()` seen.
    pub const CONNECTS: u32 = 0;
    /// Every IPv4 TCP `connect()` seen.
    pub const TCP_CONNECTS: u32 = 1;
    /// Number of slots.
    pub const SLOTS: u32 = 2;
}

/// Slots of [`maps::REDIRECT_STATS`].
pub mod stats {
    /// Connects rewritten to the outbound listener.
    pub const REDIRECTED_CONNECTS: u32 = 0;
    /// Inbound connections steered to the inbound listener.
    pub const STEERED_INBOUND: u32 = 1;
    /// Sockets added to the same-netns socket map.
    pub const LOCAL_SOCKETS_ADDED: u32 = 2;
    /// Messages spliced socket to socket.
    pub const SPLICED_MESSAGES: u32 = 3;
    /// Inbound connections dropped because the pod's inbound listener was missing.
    pub const INBOUND_WITHOUT_LISTENER: u32 = 4;
    /// Directions of same-netns pairs that used up their splice budget (see
    /// [`crate::SPLICE_BUDGET_BYTES`]) and went on by the normal path.
    pub const SPLICE_BUDGET_SPENT: u32 = 5;
    /// Connections of the node itself (its sockets, the kubelet's probes) let through to an
    /// enrolled pod's application unsteered.
    pub const NODE_CONNECTIONS_PASSED: u32 = 6;
    /// DNS connects and datagrams sent to the agent's DNS proxy.
    pub const DNS_CAPTURED: u32 = 7;
    /// Number of slots.
    pub const SLOTS: u32 = 8;
}

/// Istio's port numbers, which the programs treat specially.
pub mod ports {
    /// The agent's in-pod outbound listener (on loopback).
    pub const OUTBOUND: u16 = 15001;
    /// The agent's in-pod inbound plaintext listener.
    pub const INBOUND: u16 = 15006;
    /// HBONE.
    pub const HBONE: u16 = 15008;
    /// The agent's in-pod DNS proxy (UDP and TCP, on loopback), as ztunnel's.
    pub const DNS: u16 = 15053;
    /// DNS: connects and datagrams of a pod to this port are sent to [`DNS`].
    pub const DNS_CAPTURED: u16 = 53;
    /// The agent's in-pod listeners: never a destination of forwarded traffic (ztunnel's
    /// `illegal_ports`). Its admin, metrics and readiness ports live in the node's namespace, so
    /// inside a pod 15000, 15020 and 15021 are the application's.
    pub const AGENT_IN_POD: [u16; 3] = [OUTBOUND, INBOUND, HBONE];
    /// The only port inbound steering leaves alone: HBONE, as Istio's in-pod rules exempt only
    /// 15008. Any other port, Istio's numbers included, is the application's and is steered
    /// (so STRICT applies to it).
    pub const INBOUND_EXEMPT: u16 = HBONE;
}

/// Maximum entries of the per-pod maps (pods per node).
pub const MAX_PODS: u32 = 1024;
/// Maximum entries of the per-connection maps (LRU: bounded even if a cleanup is missed).
pub const MAX_CONNECTIONS: u32 = 65536;
/// Maximum excluded ports per direction and pod.
pub const MAX_EXCLUDED_PORTS: usize = 16;
/// Maximum length of a pod uid recorded in [`PodConfig`].
pub const MAX_UID_LEN: usize = 64;
/// Maximum addresses per pod.
pub const MAX_POD_ADDRESSES: usize = 2;

/// `SO_MARK` the agent puts on every socket it creates inside a pod (its upstream connections
/// from the pod's address): the connect programs leave such sockets alone, as they run for every
/// socket of an enrolled pod's network namespace. The value is the one Istio's in-pod ztunnel
/// marks its sockets with (`0x539`), so node rules written for it treat ours alike. Setting a
/// mark needs `CAP_NET_ADMIN` in the pod's network namespace, which pods in the mesh must not
/// have (a pod that has it can leave the mesh by other means too).
pub const AGENT_SOCKET_MARK: u32 = 0x539;

/// `SO_MARK` of the agent's connections to a pod's application made from the client's address
/// (as ztunnel's in-pod connections are, so the application sees who called it). The connect
/// programs leave these alone too. The pod's namespace routes packets with this mark to itself
/// (rule `fwmark 0x111 lookup 100`, route `local default dev lo table 100`: Istio's in-pod
/// numbers), and with `tcp_fwmark_accept` the application's accepted socket takes the mark of
/// the SYN that opened it, so its replies to the client's address come back to the agent
/// instead of leaving the pod.
pub const CLIENT_ADDRESS_MARK: u32 = 0x111;

/// [`PodConfig::flags`]: splice this pod's same-netns socket pairs with `sk_msg`.
pub const POD_FLAG_ACCELERATE: u32 = 1;
/// [`PodConfig::flags`]: leave this pod's DNS traffic alone (Istio's
/// `ambient.istio.io/dns-capture: "false"`); its other connections are still captured.
pub const POD_FLAG_NO_DNS_CAPTURE: u32 = 2;

/// How many bytes one direction of a same-netns pair may splice before it takes the normal TCP
/// path for the rest of its life. A spliced message lands in the peer's queue whether or not the
/// peer reads (the kernel applies no receive window to it), so without a bound a slow reader lets
/// the queue grow until TCP's global memory limit fails the sender's writes with `ENOMEM`. Capped
/// this way a direction holds at most this much unread, well under a normal TCP receive buffer
/// (`tcp_rmem` allows 6 MiB), and the switch is one-way so bytes are never reordered: the peer
/// reads its spliced queue before anything that arrived by TCP.
pub const SPLICE_BUDGET_BYTES: u64 = 4 << 20;
/// [`maps::SPLICE_BUDGET`] value of a direction that has left the spliced path.
pub const SPLICE_STOPPED: u64 = u64::MAX;

/// An IP address, four words in network byte order; IPv4 is stored IPv4-mapped.
pub type Address = [u32; 4];

/// The third word of an IPv4-mapped address (`0000:ffff`), in network byte order.
pub const IPV4_MAPPED_PREFIX: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The IPv4-mapped form of `ip4` (network byte order, as the kernel gives it).
pub const fn ipv4_mapped(ip4: u32) -> Address {
    [0, 0, IPV4_MAPPED_PREFIX, ip4]
}

/// A socket address as the agent needs it back: address and port.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketAddress {
    pub address: Address,
    /// Port, host byte order.
    pub port: u16,
    pub _pad: [u8; 2],
}

/// Key of [`maps::ORIGINAL_DST`]: the client end of a redirected connection, as the agent sees
/// it as the peer of the accepted socket, in the pod's network namespace.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientKey {
    pub netns_cookie: u64,
    pub address: Address,
    /// Port, host byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}

/// Key of [`maps::LOCAL_SOCKETS`]: one end of an established TCP connection inside one netns.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketPairKey {
    pub netns_cookie: u64,
    pub local_address: Address,
    pub remote_address: Address,
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
    pub _pad: [u8; 4],
}

/// Key of [`maps::NODE_CONNECTIONS`]: a TCP connection from a socket of the node's own network
/// namespace to an enrolled pod, as both ends see it (nothing rewrites addresses between the
/// node and its pods' interfaces, so the pod's `sk_lookup` sees the same four values).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeConnectionKey {
    /// The node's end.
    pub client_address: Address,
    /// The pod's end.
    pub server_address: Address,
    /// Host byte order.
    pub client_port: u16,
    /// Host byte order.
    pub server_port: u16,
    pub _pad: [u8; 4],
}

/// Value of [`maps::POD_CONFIG`]: what the programs need to know of an enrolled pod.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodConfig {
    /// The pod's own addresses; all-zero slots are unused.
    pub addresses: [Address; MAX_POD_ADDRESSES],
    /// Destination ports never redirected outbound; 0 marks an unused slot.
    pub excluded_outbound_ports: [u16; MAX_EXCLUDED_PORTS],
    /// Local ports never steered inbound; 0 marks an unused slot.
    pub excluded_inbound_ports: [u16; MAX_EXCLUDED_PORTS],
    /// `POD_FLAG_*` bits.
    pub flags: u32,
    /// Length of `uid` in bytes.
    pub uid_len: u32,
    /// The pod's uid (user space only: lets a restarted agent list what it enrolled).
    pub uid: [u8; MAX_UID_LEN],
}

#[cfg(feature = "user")]
#[allow(unsafe_code)]
mod user {
    use super::{ClientKey, NodeConnectionKey, PodConfig, SocketAddress, SocketPairKey};

    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and arrays of integers,
    // with every padding byte spelled out as a field: any bit pattern is a valid value.
    unsafe impl aya::Pod for SocketAddress {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ClientKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SocketPairKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PodConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NodeConnectionKey {}
}
