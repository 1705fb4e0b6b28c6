//! What each proxy receives of the store's resources: the [`ProxyScope`] deciding who sees what.
//! Node agents and waypoints say who they are in the `Node` of their stream's first request.

use weft_proto::{SECRET_TYPE_URL, WAYPOINT_CONFIG_TYPE_URL};
use weft_xds::{ProxyIdentity, Scope, StoredResource};

/// Node metadata key naming the kind of proxy (the node agent sends `node-agent`).
pub const PROXY_KIND: &str = "PROXY_KIND";

/// Who is on the other end of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proxy {
    /// A waypoint, by its Gateway's namespace and name; or a gateway proxy, by its pod's.
    Waypoint { namespace: String, name: String },
    /// Anything else: node agents (and ztunnels), which receive no waypoint configuration.
    Other,
}

impl Proxy {
    /// Reads the waypoint's node id, which the waypoint builds the way Istio's proxies do:
    /// `waypoint~<ip>~<name>.<namespace>~<namespace>.svc.<domain>`. A namespace has no dots, so
    /// the name is everything before the last one; the fourth field must agree.
    pub fn of(proxy: &ProxyIdentity) -> Self {
        let mut fields = proxy.id.split('~');
        // A gateway proxy (the waypoint binary in the gateway role) names its pod, as Istio's
        // gateways (`router~...`) do; its configuration is `namespace/pod`.
        let (Some("waypoint" | "router"), Some(_ip), Some(name_namespace), Some(domain), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Self::Other;
        };
        if proxy
            .metadata_string(PROXY_KIND)
            .is_some_and(|kind| kind != "waypoint" && kind != "gateway")
        {
            return Self::Other;
        }
        match name_namespace.rsplit_once('.') {
            Some((name, namespace))
                if !name.is_empty()
                    && !namespace.is_empty()
                    && domain
                        .strip_prefix(namespace)
                        .is_some_and(|rest| rest.starts_with(".svc.")) =>
            {
                Self::Waypoint {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                }
            }
            _ => Self::Other,
        }
    }
}

/// A waypoint receives only its own `WaypointConfig`; nobody else receives any. A gateway
/// credential (an SDS `Secret`) goes only to a stream whose authenticated identity is in its
/// audience, the identities of the pods of the Gateways that may use it: never by what a proxy
/// claims, and never to a stream without an authenticated identity (local mode's plaintext
/// port). The agents' types go to every proxy that asks for them (every agent needs every
/// address).
#[derive(Debug, Default, Clone, Copy)]
pub struct ProxyScope;

impl Scope for ProxyScope {
    fn visible(&self, proxy: &ProxyIdentity, type_url: &str, resource: &StoredResource) -> bool {
        if type_url == SECRET_TYPE_URL {
            return match (&proxy.verified, &resource.audience) {
                (Some(identity), Some(audience)) => audience.contains(identity),
                _ => false,
            };
        }
        if type_url != WAYPOINT_CONFIG_TYPE_URL {
            return true;
        }
        match Proxy::of(proxy) {
            Proxy::Waypoint { namespace, name } => resource
                .name
                .split_once('/')
                .is_some_and(|(ns, n)| ns == namespace && n == name),
            Proxy::Other => false,
        }
    }
}

#[cfg(test)]
mod tests;
