//! The names an on-demand node agent finds an `istio.workload.Address` by, as istiod's
//! `Lookup` resolves a subscription: the workload at an IP (`<network>/<ip>`), the service
//! whose VIP it is together with the service's endpoints (which go by the VIP and by the
//! service's `namespace/hostname` too), and the workloads of a node with the services they
//! back (`node:<name>`). A service and its endpoints also go by the service's hostname alone
//! (`host:<hostname>`), which the agent's DNS proxy asks for a name whose namespace it cannot
//! tell (a ServiceEntry host).

use std::collections::{BTreeMap, BTreeSet};

use weft_proto::istio::workload::{self, Address, address::Type};
use weft_proto::{address_subscription, hostname_subscription, ip_from_bytes, node_subscription};

/// Every address's aliases, by resource name.
pub fn address_aliases(addresses: &BTreeMap<String, workload::Address>) -> AliasIndex<'_> {
    let mut endpoint_nodes: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for address in addresses.values() {
        if let Some(Type::Workload(w)) = &address.r#type
            && !w.node.is_empty()
        {
            for service in w.services.keys() {
                endpoint_nodes.entry(service).or_default().insert(&w.node);
            }
        }
    }
    AliasIndex {
        addresses,
        endpoint_nodes,
    }
}

/// Computes aliases over the whole set of addresses (a workload's depend on its services', a
/// service's on its endpoints').
pub struct AliasIndex<'a> {
    addresses: &'a BTreeMap<String, workload::Address>,
    /// The nodes each service (`namespace/hostname`) has endpoints on.
    endpoint_nodes: BTreeMap<&'a str, BTreeSet<&'a str>>,
}

impl AliasIndex<'_> {
    /// The aliases of `address`.
    pub fn of(&self, address: &workload::Address) -> Vec<String> {
        match &address.r#type {
            Some(Type::Workload(w)) => {
                let mut aliases: Vec<String> = w
                    .addresses
                    .iter()
                    .filter_map(|bytes| ip_from_bytes(bytes))
                    .map(|ip| address_subscription(&w.network, ip))
                    .collect();
                if !w.node.is_empty() {
                    aliases.push(node_subscription(&w.node));
                }
                for service in w.services.keys() {
                    aliases.push(service.clone());
                    if let Some(Address {
                        r#type: Some(Type::Service(s)),
                    }) = self.addresses.get(service)
                    {
                        aliases.extend(service_vips(s));
                        aliases.push(hostname_subscription(&s.hostname));
                    }
                }
                aliases
            }
            // The agent of a node with one of its endpoints holds it up front: inbound
            // connections are reported with the service they came through.
            Some(Type::Service(s)) => service_vips(s)
                .chain(std::iter::once(hostname_subscription(&s.hostname)))
                .chain(
                    self.endpoint_nodes
                        .get(format!("{}/{}", s.namespace, s.hostname).as_str())
                        .into_iter()
                        .flatten()
                        .map(|node| node_subscription(node)),
                )
                .collect(),
            None => Vec::new(),
        }
    }
}

fn service_vips(service: &workload::Service) -> impl Iterator<Item = String> + '_ {
    service
        .addresses
        .iter()
        .filter_map(|a| ip_from_bytes(&a.address).map(|ip| address_subscription(&a.network, ip)))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::translate::{MeshSettings, translate};

    #[test]
    fn workloads_go_by_their_ips_node_and_services_and_services_by_their_vips_and_hostname() {
        let index = crate::translate::tests::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/bookinfo"),
        );
        let translation = translate(&index, &MeshSettings::default());
        let aliases = address_aliases(&translation.addresses);
        let alias_of = |name: &str| {
            let mut found = aliases.of(&translation.addresses[name]);
            found.sort();
            found
        };
        let productpage = translation
            .addresses
            .iter()
            .find(
                |(_, a)| matches!(&a.r#type, Some(Type::Workload(w)) if w.name == "productpage-v1"),
            )
            .map(|(name, _)| name.clone())
            .expect("the productpage pod");
        assert_eq!(
            alias_of(&productpage),
            [
                "/10.244.1.10",
                "/10.96.10.10",
                "bookinfo/productpage.bookinfo.svc.cluster.local",
                "host:productpage.bookinfo.svc.cluster.local",
                "node:node-a",
            ]
        );
        assert_eq!(
            alias_of("bookinfo/productpage.bookinfo.svc.cluster.local"),
            [
                "/10.96.10.10",
                "host:productpage.bookinfo.svc.cluster.local",
                "node:node-a"
            ]
        );
    }
}
