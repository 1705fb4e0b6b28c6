//! The names an on-demand node agent finds an `istio.workload.Address` by, as istiod's
//! `Lookup` resolves a subscription: the workload at an IP (`<network>/<ip>`), the service
//! whose VIP it is together with the service's endpoints (which go by the VIP and by the
//! service's `namespace/hostname` too), and the workloads of a node (`node:<name>`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use weft_proto::istio::workload::{self, Address, address::Type};
use weft_proto::{address_subscription, node_subscription};

/// Every address's aliases, by resource name.
pub fn address_aliases(addresses: &BTreeMap<String, workload::Address>) -> AliasIndex<'_> {
    AliasIndex { addresses }
}

/// Computes aliases over the whole set of addresses (a workload's depend on its services').
pub struct AliasIndex<'a> {
    addresses: &'a BTreeMap<String, workload::Address>,
}

impl AliasIndex<'_> {
    /// The aliases of `address`.
    pub fn of(&self, address: &workload::Address) -> Vec<String> {
        match &address.r#type {
            Some(Type::Workload(w)) => {
                let mut aliases: Vec<String> = w
                    .addresses
                    .iter()
                    .filter_map(|bytes| ip(bytes))
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
                    }
                }
                aliases
            }
            Some(Type::Service(s)) => service_vips(s).collect(),
            None => Vec::new(),
        }
    }
}

fn service_vips(service: &workload::Service) -> impl Iterator<Item = String> + '_ {
    service
        .addresses
        .iter()
        .filter_map(|a| ip(&a.address).map(|ip| address_subscription(&a.network, ip)))
}

fn ip(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::translate::{MeshSettings, translate};

    #[test]
    fn workloads_go_by_their_ips_node_and_services_and_services_by_their_vips() {
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
                "node:node-a",
            ]
        );
        assert_eq!(
            alias_of("bookinfo/productpage.bookinfo.svc.cluster.local"),
            ["/10.96.10.10"]
        );
    }
}
