//! What each proxy receives: a [`Translation`] published into the xDS store, one type URL per
//! resource kind, and the [`ProxyScope`] deciding who sees what. Node agents and waypoints say
//! who they are in the `Node` of their stream's first request.

use weft_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, WAYPOINT_CONFIG_TYPE_URL};
use weft_xds::{ChangeSummary, ProxyIdentity, ResourceStore, Scope, StoredResource};

use crate::translate::Translation;

/// Node metadata key naming the kind of proxy (the node agent sends `node-agent`).
pub const PROXY_KIND: &str = "PROXY_KIND";

/// What changed in the store, per type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    pub addresses: ChangeSummary,
    pub authorizations: ChangeSummary,
    pub waypoints: ChangeSummary,
}

fn pack<M: prost::Name>(message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// Replaces the store's resources of every type with the translation's. Unchanged resources
/// keep their version, so only what changed is pushed.
pub fn publish(store: &mut ResourceStore, translation: &Translation) -> Published {
    Published {
        addresses: store.replace_type(
            ADDRESS_TYPE_URL,
            translation
                .addresses
                .iter()
                .map(|(name, r)| (name.clone(), pack(r))),
        ),
        authorizations: store.replace_type(
            AUTHORIZATION_TYPE_URL,
            translation
                .authorizations
                .iter()
                .map(|(name, r)| (name.clone(), pack(r))),
        ),
        waypoints: store.replace_type(
            WAYPOINT_CONFIG_TYPE_URL,
            translation
                .waypoints
                .iter()
                .map(|(name, r)| (name.clone(), pack(r))),
        ),
    }
}

/// Who is on the other end of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proxy {
    /// A waypoint, by its Gateway's namespace and name.
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
        let (Some("waypoint"), Some(_ip), Some(name_namespace), Some(domain), None) = (
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
            .is_some_and(|kind| kind != "waypoint")
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

/// A waypoint receives only its own `WaypointConfig`; nobody else receives any. The agents'
/// types go to every proxy that asks for them (every agent needs every address).
#[derive(Debug, Default, Clone, Copy)]
pub struct ProxyScope;

impl Scope for ProxyScope {
    fn visible(&self, proxy: &ProxyIdentity, type_url: &str, resource: &StoredResource) -> bool {
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
