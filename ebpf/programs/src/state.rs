//! The maps shared by the redirection programs (pinned by the agent) and small helpers over them.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, SockHash},
};
use weft_ebpf_common::{
    Address, ClientKey, MAX_CONNECTIONS, MAX_PODS, NodeConnectionKey, PodConfig, SocketAddress,
    SocketPairKey, ipv4_mapped, stats,
};

pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

#[map(name = "POD_CONFIG")]
pub static POD_CONFIG: HashMap<u64, PodConfig> = HashMap::with_max_entries(MAX_PODS, 0);

#[map(name = "POD_BY_ADDRESS")]
pub static POD_BY_ADDRESS: HashMap<Address, u64> =
    HashMap::with_max_entries(MAX_PODS * weft_ebpf_common::MAX_POD_ADDRESSES as u32, 0);

#[map(name = "PENDING_ORIGINAL_DST")]
pub static PENDING_ORIGINAL_DST: LruHashMap<u64, SocketAddress> =
    LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

#[map(name = "ORIGINAL_DST")]
pub static ORIGINAL_DST: LruHashMap<ClientKey, SocketAddress> =
    LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

#[map(name = "INBOUND_LISTENERS")]
pub static INBOUND_LISTENERS: SockHash<u64> = SockHash::with_max_entries(MAX_PODS, 0);

#[map(name = "LOCAL_SOCKETS")]
pub static LOCAL_SOCKETS: SockHash<SocketPairKey> = SockHash::with_max_entries(MAX_CONNECTIONS, 0);

#[map(name = "SPLICE_BUDGET")]
pub static SPLICE_BUDGET: LruHashMap<SocketPairKey, u64> =
    LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

#[map(name = "NODE_NETNS")]
pub static NODE_NETNS: Array<u64> = Array::with_max_entries(1, 0);

#[map(name = "NODE_CONNECTIONS")]
pub static NODE_CONNECTIONS: LruHashMap<NodeConnectionKey, u8> =
    LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// A quarter of the connection maps' size: only sockets that send DNS hold an entry, and
/// one evicted early only loses the source rewrite of its answers (the resolver retries).
#[map(name = "DNS_ORIGINAL_DST")]
pub static DNS_ORIGINAL_DST: LruHashMap<u64, SocketAddress> =
    LruHashMap::with_max_entries(MAX_CONNECTIONS / 4, 0);

#[map(name = "REDIRECT_STATS")]
pub static REDIRECT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::SLOTS, 0);

/// The configuration of the pod whose network namespace has this cookie, if it is enrolled.
pub fn pod_config(netns_cookie: u64) -> Option<&'static PodConfig> {
    let config = POD_CONFIG.get_ptr(netns_cookie)?;
    // SAFETY: the pointer comes from a map lookup and stays valid for this program run; the
    // agent writes whole values, and a torn read only affects this one decision.
    Some(unsafe { &*config })
}

/// Whether `netns_cookie` is the node's own network namespace (never true before the agent
/// wrote it: cookies start at 1).
pub fn is_node_netns(netns_cookie: u64) -> bool {
    NODE_NETNS
        .get(0)
        .is_some_and(|node| *node != 0 && *node == netns_cookie)
}

pub fn bump(slot: u32) {
    if let Some(counter) = REDIRECT_STATS.get_ptr_mut(slot) {
        // SAFETY: the pointer comes from the map and stays valid for this run; the slot is this
        // CPU's own, and a program run is not preempted on its CPU.
        unsafe { *counter += 1 };
    }
}

/// Compares word by word (no `memcmp`: eBPF has none).
pub fn same_address(a: &Address, b: &Address) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}

pub fn is_unspecified(a: &Address) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == 0
}

/// 127.0.0.0/8 (IPv4-mapped) or `::1`.
pub fn is_loopback(a: &Address) -> bool {
    let ipv4_loopback = a[0] == 0
        && a[1] == 0
        && a[2] == weft_ebpf_common::IPV4_MAPPED_PREFIX
        && a[3].to_ne_bytes()[0] == 127;
    let ipv6_loopback =
        a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == u32::from_ne_bytes([0, 0, 0, 1]);
    ipv4_loopback || ipv6_loopback
}

/// The address of a socket of `family` from its IPv4 and IPv6 fields.
pub fn address_of(family: u32, ip4: u32, ip6: [u32; 4]) -> Address {
    if family == AF_INET {
        ipv4_mapped(ip4)
    } else {
        ip6
    }
}

pub fn port_listed(ports: &[u16], port: u16) -> bool {
    let mut i = 0;
    while i < ports.len() {
        if ports[i] != 0 && ports[i] == port {
            return true;
        }
        i += 1;
    }
    false
}

/// A remote port as `sock_ops` and `sk_msg` expose it (network byte order in the upper half of
/// the word on little-endian machines), in host byte order.
pub fn remote_port_from_context(raw: u32) -> u16 {
    u16::from_be((raw >> 16) as u16)
}

/// Reads an IPv6 address field of a program context word by word: the verifier accepts only
/// loads at constant offsets from the context pointer, never through a pointer derived from it.
///
/// # Safety
/// `field` must point at a readable 4-word address field of the program's context.
#[inline(always)]
pub unsafe fn read_ip6(field: *const [u32; 4]) -> [u32; 4] {
    let words = field.cast::<u32>();
    // SAFETY: per the contract, the four words are readable.
    unsafe {
        [
            core::ptr::read_volatile(words),
            core::ptr::read_volatile(words.add(1)),
            core::ptr::read_volatile(words.add(2)),
            core::ptr::read_volatile(words.add(3)),
        ]
    }
}

/// Writes an IPv6 address field of a program context word by word (see [`read_ip6`]).
///
/// # Safety
/// `field` must point at a writable 4-word address field of the program's context.
#[inline(always)]
pub unsafe fn write_ip6(field: *mut [u32; 4], value: [u32; 4]) {
    let words = field.cast::<u32>();
    // SAFETY: per the contract, the four words are writable.
    unsafe {
        core::ptr::write_volatile(words, value[0]);
        core::ptr::write_volatile(words.add(1), value[1]);
        core::ptr::write_volatile(words.add(2), value[2]);
        core::ptr::write_volatile(words.add(3), value[3]);
    }
}
