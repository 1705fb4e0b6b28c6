//! The HTTP version a cluster's requests go upstream in, as Istio decides a waypoint's
//! `inbound-vip` cluster's (`buildWaypointInboundVIPCluster`) and a gateway's outbound
//! cluster's: `setUpstreamProtocol` first (HTTP/2 on a port declared HTTP2 or GRPC; the
//! client's version on an undeclared port, for a waypoint), then the DestinationRule's
//! `useClientProtocol` (`applyConnectionPool`, which sets the client's version whatever came
//! before), then `applyH2Upgrade` (`shouldH2Upgrade`), whose `setH2Options` sets HTTP/2 only
//! where nothing was set yet.

use weft_proto::waypoint as wp;

use crate::model::networking::{H2UpgradePolicy, HttpSettings};
use crate::translate::waypoint::{
    Compiler, entries, port_number, port_protocol, tcp_service_ports,
};

impl Compiler<'_, '_> {
    /// The protocol `host`'s port `port` is declared with (a Service's or a ServiceEntry's).
    pub(super) fn declared_protocol(&self, host: &str, port: u32) -> wp::Protocol {
        if let Some(service) = self.services.get(host) {
            return tcp_service_ports(service)
                .find(|p| port_number(p) == port)
                .map_or(wp::Protocol::Unspecified, port_protocol);
        }
        self.entries
            .iter()
            .find(|(h, _)| h == host)
            .and_then(|(_, e)| e.spec.ports.iter().find(|p| p.number == port))
            .map_or(wp::Protocol::Unspecified, entries::entry_protocol)
    }
}

/// The cluster's upstream version: `http` is its effective `connectionPool.http`, `port` the
/// declared protocol of its port, `mesh_upgrade` MeshConfig `h2UpgradePolicy: UPGRADE`, and
/// `gateway` whether the cluster is a gateway's.
pub(in crate::translate::waypoint) fn upstream_protocol(
    http: Option<&HttpSettings>,
    port: wp::Protocol,
    mesh_upgrade: bool,
    gateway: bool,
) -> wp::UpstreamHttpProtocol {
    use wp::Protocol as P;
    use wp::UpstreamHttpProtocol as U;
    if http.and_then(|h| h.use_client_protocol) == Some(true) {
        return U::Client;
    }
    // Opaque ports carry no HTTP: there is nothing to upgrade.
    if matches!(port, P::Tcp | P::Tls) {
        return U::Default;
    }
    // An undeclared port of a waypoint's cluster already keeps the client's version
    // (`use_downstream_protocol`), which `setH2Options` leaves in place; a gateway's has none.
    let sniffed_at_waypoint = port == P::Unspecified && !gateway;
    let upgrade = match http.and_then(|h| h.h2_upgrade_policy) {
        Some(H2UpgradePolicy::Upgrade) => true,
        Some(H2UpgradePolicy::DoNotUpgrade) => false,
        // `shouldH2Upgrade` upgrades by the mesh's policy only ports declared HTTP.
        Some(H2UpgradePolicy::Default) | None => {
            mesh_upgrade && matches!(port, P::Http | P::Http2 | P::Grpc)
        }
    };
    if upgrade && !sniffed_at_waypoint {
        U::Http2
    } else {
        U::Default
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wp::Protocol as P;
    use wp::UpstreamHttpProtocol as U;

    fn http(yaml: &str) -> HttpSettings {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn follows_istios_cluster_protocol_decision() {
        // (connectionPool.http, port, mesh UPGRADE, gateway, expected)
        let cases = [
            // Nothing set: the waypoint's own default.
            (None, P::Http, false, false, U::Default),
            (None, P::Unspecified, false, false, U::Default),
            // UPGRADE on a declared HTTP port, at a waypoint and at a gateway.
            (
                Some("h2UpgradePolicy: UPGRADE"),
                P::Http,
                false,
                false,
                U::Http2,
            ),
            (
                Some("h2UpgradePolicy: UPGRADE"),
                P::Http,
                false,
                true,
                U::Http2,
            ),
            (
                Some("h2UpgradePolicy: UPGRADE"),
                P::Grpc,
                false,
                false,
                U::Http2,
            ),
            // An undeclared port keeps the client's version at a waypoint, not at a gateway.
            (
                Some("h2UpgradePolicy: UPGRADE"),
                P::Unspecified,
                false,
                false,
                U::Default,
            ),
            (
                Some("h2UpgradePolicy: UPGRADE"),
                P::Unspecified,
                false,
                true,
                U::Http2,
            ),
            // Opaque ports carry no HTTP.
            (
                Some("h2UpgradePolicy: UPGRADE"),
                P::Tcp,
                false,
                false,
                U::Default,
            ),
            // DO_NOT_UPGRADE wins over the mesh's UPGRADE; DEFAULT follows it.
            (
                Some("h2UpgradePolicy: DO_NOT_UPGRADE"),
                P::Http,
                true,
                false,
                U::Default,
            ),
            (
                Some("h2UpgradePolicy: DEFAULT"),
                P::Http,
                true,
                false,
                U::Http2,
            ),
            (None, P::Http, true, false, U::Http2),
            (None, P::Http2, true, true, U::Http2),
            // The mesh's policy upgrades only ports declared HTTP.
            (None, P::Unspecified, true, true, U::Default),
            (None, P::Tcp, true, false, U::Default),
            // useClientProtocol: the client's version, even on a port declared GRPC and with
            // the mesh's UPGRADE.
            (
                Some("useClientProtocol: true"),
                P::Grpc,
                false,
                false,
                U::Client,
            ),
            (
                Some("useClientProtocol: true"),
                P::Http,
                true,
                false,
                U::Client,
            ),
            (
                Some("useClientProtocol: true\nh2UpgradePolicy: DO_NOT_UPGRADE"),
                P::Http2,
                false,
                true,
                U::Client,
            ),
            (
                Some("useClientProtocol: false\nh2UpgradePolicy: UPGRADE"),
                P::Http,
                false,
                false,
                U::Http2,
            ),
            // Other HTTP settings change nothing.
            (Some("maxRetries: 3"), P::Http, false, false, U::Default),
        ];
        for (yaml, port, mesh, gateway, expected) in cases {
            let settings = yaml.map(http);
            assert_eq!(
                upstream_protocol(settings.as_ref(), port, mesh, gateway),
                expected,
                "{yaml:?} on {port:?}, mesh upgrade {mesh}, gateway {gateway}"
            );
        }
    }
}
