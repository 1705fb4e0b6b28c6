//! DestinationRule `tunnel`, as Istio's `tunnelingconfig.Apply` reads it for a TCP proxy: a
//! subset's cluster takes its subset's own settings (the rule's are not inherited), the whole
//! service's cluster the rule's; port-level settings have none. The waypoint applies them to
//! TCP and TLS-passthrough connections only, never to HTTP routes.

use weft_proto::waypoint as wp;

use super::MergedRule;

/// The tunnel of the cluster of `subset` (empty: the whole service) under `rule`.
pub(super) fn tcp_tunneling(rule: &MergedRule<'_>, subset: &str) -> Option<wp::TcpTunneling> {
    let policy = if subset.is_empty() {
        rule.traffic_policy
    } else {
        rule.subset(subset)?.traffic_policy.as_ref()
    };
    let tunnel = policy?.tunnel.as_ref()?;
    // Istio: `UsePost: Protocol == "POST"`; validation allows CONNECT, POST or nothing.
    let method = if tunnel.protocol.as_deref() == Some("POST") {
        wp::tcp_tunneling::Method::Post
    } else {
        wp::tcp_tunneling::Method::Connect
    };
    Some(wp::TcpTunneling {
        method: method as i32,
        target_host: tunnel.target_host.clone(),
        target_port: tunnel.target_port,
    })
}
