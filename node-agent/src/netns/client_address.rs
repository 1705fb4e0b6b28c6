//! The client's address toward the application, as ztunnel gives it: the agent connects to a
//! pod's application from the address of the client it carries the connection for (an
//! `IP_TRANSPARENT` socket bound to it), so the application's logs and IP-based rules see the
//! caller, not the pod itself.
//!
//! The replies need a way back: the application answers the client's address, which the pod's
//! routes would send out of the pod. Inside each served pod's namespace, once, at enrollment:
//! - `net.ipv4.tcp_fwmark_accept = 1` (for IPv6 too): an accepted socket whose listener has no
//!   mark takes the mark of the SYN that opened it. Only the agent's connections carry one (a
//!   SYN from outside the pod arrives unmarked: marks do not cross namespaces). The CNI
//!   plugin sets it at ADD (it runs privileged in the pod's namespace); the agent sets it only
//!   when it is not set yet, so a read-only `/proc/sys` in its container is no obstacle;
//! - a rule `fwmark 0x111/0xfff lookup 100` and a route `local default dev lo table 100`
//!   (Istio's in-pod numbers), for each family: the application's replies on such a socket,
//!   and the agent's SYN itself, are delivered inside the pod, to the agent's socket.
//!
//! Istio installs the same rule and route and gets the mark onto the replies with conntrack
//! (`CONNMARK`); taking it from the SYN needs neither iptables nor conntrack in the pod.

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
    rule::{RuleAction, RuleAttribute, RuleHeader, RuleMessage},
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use socket2::SockRef;
use tokio::net::TcpStream;
use weft_ebpf_common::CLIENT_ADDRESS_MARK;

use super::PodNetns;

/// The routing table the marked packets are looked up in (Istio's in-pod table).
const REPLY_TABLE: u8 = 100;
/// The rule's priority: before the main table's (32766), as Istio's in-pod rule.
const RULE_PRIORITY: u32 = 32764;
/// The bits of the mark the rule compares (Istio's mask).
const MARK_MASK: u32 = 0xfff;
/// The loopback interface's index in every namespace.
const LOOPBACK_INDEX: u32 = 1;
/// How many ports the kernel may choose before [`PodNetns::connect_from`] gives up on finding
/// one other than the client's own.
const PORT_ATTEMPTS: u32 = 4;

/// Which address families of a pod's namespace route the replies back (see the module).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientAddressRoutes {
    pub ipv4: bool,
    pub ipv6: bool,
}

impl ClientAddressRoutes {
    fn covers(self, address: IpAddr) -> bool {
        match address {
            IpAddr::V4(_) => self.ipv4,
            IpAddr::V6(_) => self.ipv6,
        }
    }
}

/// Sets up the current thread's network namespace as the module says. A family the namespace
/// does not have (IPv6 disabled) is reported not covered; connections of that family then come
/// from the pod's own address.
pub(super) fn install() -> io::Result<ClientAddressRoutes> {
    super::enable_sysctl("net/ipv4/tcp_fwmark_accept")?;
    add_routes(AddressFamily::Inet)?;
    let ipv6 = match add_routes(AddressFamily::Inet6) {
        Ok(()) => true,
        Err(error) => {
            tracing::debug!(%error, "no IPv6 routes in the pod's namespace: IPv6 clients connect from the pod's address");
            false
        }
    };
    Ok(ClientAddressRoutes { ipv4: true, ipv6 })
}

/// The rule and the route of one family; already present counts as done.
fn add_routes(family: AddressFamily) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    let mut rule = RuleMessage::default();
    rule.header = RuleHeader {
        family,
        table: REPLY_TABLE,
        action: RuleAction::ToTable,
        ..RuleHeader::default()
    };
    rule.attributes = vec![
        RuleAttribute::Priority(RULE_PRIORITY),
        RuleAttribute::FwMark(CLIENT_ADDRESS_MARK),
        RuleAttribute::FwMask(MARK_MASK),
        RuleAttribute::Table(u32::from(REPLY_TABLE)),
    ];
    request(&socket, RouteNetlinkMessage::NewRule(rule))?;
    let mut route = RouteMessage::default();
    route.header = RouteHeader {
        address_family: family,
        table: REPLY_TABLE,
        protocol: RouteProtocol::Boot,
        scope: RouteScope::Host,
        kind: RouteType::Local,
        ..RouteHeader::default()
    };
    route.attributes = vec![
        RouteAttribute::Table(u32::from(REPLY_TABLE)),
        RouteAttribute::Oif(LOOPBACK_INDEX),
    ];
    request(&socket, RouteNetlinkMessage::NewRoute(route))
}

/// Sends one creating request and reads its acknowledgement; `EEXIST` is success.
fn request(socket: &Socket, message: RouteNetlinkMessage) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    message.finalize();
    let mut buffer = vec![0; message.buffer_len()];
    message.serialize(&mut buffer);
    socket.send(&buffer, 0)?;
    let mut reply = vec![0; 8192];
    let length = socket.recv(&mut &mut reply[..], 0)?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..length])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match reply.payload {
        NetlinkPayload::Error(error) => match error.code {
            None => Ok(()),
            Some(code) if -code.get() == libc::EEXIST => Ok(()),
            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
        },
        _ => Ok(()),
    }
}

impl PodNetns {
    /// Connects to the application at `target` from `client`'s address when the pod's
    /// namespace routes the replies back for its family ([`ClientAddressRoutes`]), and from
    /// the pod's own address otherwise (and for the pod calling itself).
    ///
    /// `client_port` is the port of the client's own connection when it ends in this pod's
    /// namespace (a plaintext connection the agent accepted in the pod): the connection to the
    /// application must use another, or the two would share one address pair and the
    /// application's SYN would reach the agent's accepted socket.
    pub async fn connect_from(
        &self,
        client: IpAddr,
        client_port: Option<u16>,
        target: SocketAddr,
    ) -> io::Result<TcpStream> {
        let transparent = self.client_address_routes.covers(client)
            && client.is_ipv4() == target.is_ipv4()
            && client != target.ip()
            && !client.is_loopback()
            && !client.is_unspecified();
        if !transparent {
            return weft_hbone::connect_tcp(self, target).await;
        }
        let mut attempts = 0;
        let socket = loop {
            let socket = self.run(|| weft_hbone::new_tcp_socket(target))??;
            let raw = SockRef::from(&socket);
            raw.set_mark(CLIENT_ADDRESS_MARK)?;
            if client.is_ipv4() {
                raw.set_ip_transparent_v4(true)?;
            } else {
                raw.set_ip_transparent_v6(true)?;
            }
            socket.bind(SocketAddr::new(client, 0))?;
            // The port is chosen at bind: one in a few tens of thousands is the client's, so
            // a second draw almost always differs. A namespace whose ephemeral range holds
            // (nearly) only that port would loop for ever: give up after a few draws.
            let port = socket.local_addr()?.port();
            if Some(port) != client_port {
                break socket;
            }
            attempts += 1;
            if attempts == PORT_ATTEMPTS {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "connecting from the client's address {client} to {target}: the kernel chose the client's own port {port} {PORT_ATTEMPTS} times (the pod's ip_local_port_range is too narrow)"
                    ),
                ));
            }
        };
        let stream = socket.connect(target).await?;
        weft_hbone::tune_tcp(&stream)?;
        Ok(stream)
    }
}
