//! The PROXY protocol header written first on a new upstream connection of a cluster whose
//! DestinationRule sets `proxyProtocol` (Envoy's `envoy.transport_sockets.upstream_proxy_protocol`,
//! which Istio wraps around every transport socket of such a cluster).
//!
//! The header carries the downstream connection as the waypoint saw it, as Envoy's
//! `ProxyProtocolFilterState` does: the client's address (the HBONE peer's, or at the edge the
//! TCP client's) and the address the connection was made to (the CONNECT authority, or the
//! listener's own address). The bytes are those of Envoy's `generateV1Header` and
//! `generateV2Header` (source/extensions/common/proxy_protocol/proxy_protocol_header.cc), with
//! no TLVs (Istio configures none).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// The PROXY protocol versions (Envoy's `ProxyProtocolConfig.Version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyProtocolVersion {
    /// The text header.
    V1,
    /// The binary header.
    V2,
}

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const V2_VERSION_PROXY: u8 = 0x21;
/// AF_INET or AF_INET6 (high nibble) over a stream (low nibble).
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;

/// The downstream connection a request or stream is forwarded for, as the upstream needs it:
/// the addresses a PROXY header carries and, once a cluster that writes one has pooled a
/// connection for it, the [`Owner`] that lets go of that connection when the downstream
/// connection's context ends. Nothing is allocated for a downstream connection whose requests
/// go to no such cluster.
#[derive(Debug, Clone)]
pub struct Downstream {
    /// The client's address.
    pub source: SocketAddr,
    /// The address the client's connection was made to.
    pub destination: SocketAddr,
    /// Shared by the clones made after it was set ([`Self::shared_for`]).
    owner: OnceLock<Arc<Owner>>,
}

impl Downstream {
    pub fn new(source: SocketAddr, destination: SocketAddr) -> Self {
        Downstream {
            source,
            destination,
            owner: OnceLock::new(),
        }
    }

    /// A copy for a request sent to `cluster` apart from the connection's own (a mirror):
    /// where the cluster writes a PROXY header, it shares the connection's [`Owner`], so that
    /// what it pools lives as long as the connection, as the connection's own requests' does.
    pub fn shared_for(&self, cluster: &crate::model::Cluster) -> Self {
        if cluster.proxy_protocol.is_some() {
            self.owner.get_or_init(Arc::default);
        }
        self.clone()
    }

    /// What keys the pool of its connections (Envoy hashes the header's addresses into the
    /// pool's key: `UpstreamProxyProtocolSocketFactory::hashKey`).
    pub(super) fn key(&self) -> DownstreamKey {
        DownstreamKey {
            source: self.source,
            destination: self.destination,
        }
    }

    /// The owner of the connections pooled for it, made on first use.
    pub(super) fn owner(&self) -> &Arc<Owner> {
        self.owner.get_or_init(Arc::default)
    }
}

/// Where the idle connections that carry a downstream connection's PROXY header were pooled:
/// (the upstream, its worker, the pool key). When the downstream connection's context ends, the
/// owner drops, and each of those pools lets go of the connections whose last user is gone,
/// looking only at that key's connections. Envoy keeps them until its upstream idle timeout,
/// for a later downstream connection with the same addresses (a later tunnel of the same HBONE
/// connection to the same destination); here that one opens its own, with the same header.
#[derive(Default)]
pub(super) struct Owner {
    pooled: Mutex<HashMap<PoolSlot, Weak<super::UpstreamInner>>>,
}

#[derive(PartialEq, Eq, Hash)]
struct PoolSlot {
    /// The upstream's address, telling two upstreams apart.
    upstream: usize,
    worker: usize,
    key: super::PoolKey,
}

impl Owner {
    /// Notes that a connection of `key` in worker `worker`'s pools of `upstream` is used by this
    /// owner's downstream connection (once per slot); the handle the connection keeps.
    pub(super) fn pooled_in(
        self: &Arc<Self>,
        upstream: &Arc<super::UpstreamInner>,
        worker: usize,
        key: &super::PoolKey,
    ) -> Weak<Owner> {
        let slot = PoolSlot {
            upstream: Arc::as_ptr(upstream) as usize,
            worker,
            key: key.clone(),
        };
        super::lock(&self.pooled)
            .entry(slot)
            .or_insert_with(|| Arc::downgrade(upstream));
        Arc::downgrade(self)
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let pooled = std::mem::take(self.pooled.get_mut().unwrap_or_else(|p| p.into_inner()));
        for (slot, upstream) in pooled {
            if let Some(upstream) = upstream.upgrade() {
                upstream.pools[slot.worker].forget_gone(&slot.key);
            }
        }
    }
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner").finish_non_exhaustive()
    }
}

/// The addresses of a downstream connection, in a pool key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct DownstreamKey {
    source: SocketAddr,
    destination: SocketAddr,
}

/// The header for a connection from `source` to `destination`, as Envoy writes it.
///
/// Envoy's listeners report an IPv4 client of a dual-stack socket as IPv4, so an IPv4-mapped
/// address is written as the IPv4 address. Should the two addresses still differ in family
/// (which Envoy's generator does not handle), both are written as IPv6, the IPv4 one mapped.
pub fn header(
    version: ProxyProtocolVersion,
    source: SocketAddr,
    destination: SocketAddr,
) -> Vec<u8> {
    let (source_ip, destination_ip) =
        match (source.ip().to_canonical(), destination.ip().to_canonical()) {
            (IpAddr::V4(s), IpAddr::V6(d)) => (IpAddr::V6(s.to_ipv6_mapped()), IpAddr::V6(d)),
            (IpAddr::V6(s), IpAddr::V4(d)) => (IpAddr::V6(s), IpAddr::V6(d.to_ipv6_mapped())),
            same => same,
        };
    match version {
        ProxyProtocolVersion::V1 => {
            let family = if source_ip.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {source_ip} {destination_ip} {} {}\r\n",
                source.port(),
                destination.port()
            )
            .into_bytes()
        }
        ProxyProtocolVersion::V2 => {
            let mut out = Vec::with_capacity(52);
            out.extend_from_slice(&V2_SIGNATURE);
            out.push(V2_VERSION_PROXY);
            match (source_ip, destination_ip) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.push(V2_TCP4);
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    let v6 = |ip: IpAddr| match ip {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                        IpAddr::V6(v6) => v6,
                    };
                    out.push(V2_TCP6);
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&v6(s).octets());
                    out.extend_from_slice(&v6(d).octets());
                }
            }
            out.extend_from_slice(&source.port().to_be_bytes());
            out.extend_from_slice(&destination.port().to_be_bytes());
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProxyProtocolVersion::{V1, V2};

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// Envoy's `ProxyProtocolHeaderTest` (test/extensions/common/proxy_protocol/
    /// proxy_protocol_header_test.cc) and the transport socket's downstream-address cases.
    #[test]
    fn v1_headers_are_envoys() {
        assert_eq!(
            header(V1, addr("174.2.2.222:50000"), addr("172.0.0.1:80")),
            b"PROXY TCP4 174.2.2.222 172.0.0.1 50000 80\r\n"
        );
        assert_eq!(
            header(V1, addr("202.168.0.13:52000"), addr("174.2.2.222:80")),
            b"PROXY TCP4 202.168.0.13 174.2.2.222 52000 80\r\n"
        );
        assert_eq!(
            header(V1, addr("[1::2:3]:50000"), addr("[a:b:c:d::]:80")),
            b"PROXY TCP6 1::2:3 a:b:c:d:: 50000 80\r\n"
        );
    }

    #[test]
    fn v2_headers_are_envoys() {
        assert_eq!(
            header(V2, addr("1.2.3.4:773"), addr("0.1.1.2:513")),
            [
                0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11,
                0x00, 0x0c, 0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x01, 0x02, 0x03, 0x05, 0x02, 0x01,
            ]
        );
        assert_eq!(
            header(V2, addr("[1:2:3::4]:8"), addr("[1:100:200:3::]:2")),
            [
                0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x21,
                0x00, 0x24, 0x00, 0x01, 0x00, 0x02, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x04, 0x00, 0x01, 0x01, 0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x02,
            ]
        );
    }

    #[test]
    fn ipv4_mapped_addresses_are_written_as_ipv4_and_mixed_families_as_ipv6() {
        assert_eq!(
            header(V1, addr("[::ffff:10.0.0.1]:4000"), addr("10.96.0.10:80")),
            b"PROXY TCP4 10.0.0.1 10.96.0.10 4000 80\r\n"
        );
        assert_eq!(
            header(V1, addr("10.0.0.1:4000"), addr("[fd00::10]:80")),
            b"PROXY TCP6 ::ffff:10.0.0.1 fd00::10 4000 80\r\n"
        );
        let v2 = header(V2, addr("10.0.0.1:4000"), addr("[fd00::10]:80"));
        assert_eq!(v2.len(), 52);
        assert_eq!(&v2[12..16], [0x21, 0x21, 0x00, 0x24]);
        assert_eq!(
            &v2[16..32],
            "::ffff:10.0.0.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }
}
