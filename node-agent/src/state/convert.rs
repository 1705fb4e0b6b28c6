//! `TryFrom` the pushed protobuf resources into the store's types. Anything malformed is a
//! typed error naming the field, which the xDS handler sends back as a NACK.

use std::collections::BTreeMap;

use weft_proto::ip_from_bytes;
use weft_proto::istio::workload as proto;

use super::{
    GatewayAddress, GatewayDestination, HBONE_PORT, LoadBalancingMode, Locality,
    NamespacedHostname, RoutingPreference, Service, TunnelProtocol, Workload,
};

/// A pushed resource the agent cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    #[error("{resource}: field {field}: {reason}")]
    Field {
        resource: String,
        field: &'static str,
        reason: String,
    },
    #[error("address resource holds neither a workload nor a service")]
    EmptyAddress,
}

fn field_error(resource: &str, field: &'static str, reason: impl Into<String>) -> ConversionError {
    ConversionError::Field {
        resource: resource.to_string(),
        field,
        reason: reason.into(),
    }
}

fn port(resource: &str, field: &'static str, value: u32) -> Result<u16, ConversionError> {
    u16::try_from(value).map_err(|_| field_error(resource, field, format!("port {value} > 65535")))
}

fn gateway(
    resource: &str,
    field: &'static str,
    gateway: Option<proto::GatewayAddress>,
) -> Result<Option<GatewayAddress>, ConversionError> {
    let Some(gateway) = gateway else {
        return Ok(None);
    };
    let destination = match gateway.destination {
        None => return Err(field_error(resource, field, "no destination")),
        Some(proto::gateway_address::Destination::Address(address)) => GatewayDestination::Address(
            ip_from_bytes(&address.address)
                .ok_or_else(|| field_error(resource, field, "address is neither IPv4 nor IPv6"))?,
        ),
        Some(proto::gateway_address::Destination::Hostname(host)) => {
            if host.hostname.is_empty() {
                return Err(field_error(resource, field, "empty hostname"));
            }
            GatewayDestination::Service(NamespacedHostname {
                namespace: host.namespace,
                hostname: host.hostname,
            })
        }
    };
    let hbone_port = match gateway.hbone_mtls_port {
        0 => HBONE_PORT,
        p => port(resource, field, p)?,
    };
    Ok(Some(GatewayAddress {
        destination,
        hbone_port,
    }))
}

impl TryFrom<proto::Workload> for Workload {
    type Error = ConversionError;

    fn try_from(w: proto::Workload) -> Result<Self, Self::Error> {
        let resource = format!("workload {}", w.uid);
        if w.uid.is_empty() {
            return Err(field_error(&resource, "uid", "empty"));
        }
        let addresses = w
            .addresses
            .iter()
            .map(|a| {
                ip_from_bytes(a).ok_or_else(|| {
                    field_error(
                        &resource,
                        "addresses",
                        format!("{} bytes is not an IP", a.len()),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tunnel = match proto::TunnelProtocol::try_from(w.tunnel_protocol) {
            Ok(proto::TunnelProtocol::None) => TunnelProtocol::None,
            Ok(proto::TunnelProtocol::Hbone) => TunnelProtocol::Hbone,
            Err(_) => {
                return Err(field_error(
                    &resource,
                    "tunnel_protocol",
                    format!("unknown value {}", w.tunnel_protocol),
                ));
            }
        };
        let healthy = match proto::WorkloadStatus::try_from(w.status) {
            Ok(proto::WorkloadStatus::Healthy) => true,
            Ok(proto::WorkloadStatus::Unhealthy) => false,
            Err(_) => {
                return Err(field_error(
                    &resource,
                    "status",
                    format!("unknown value {}", w.status),
                ));
            }
        };
        let mut services = BTreeMap::new();
        for (key, ports) in w.services {
            let Some((namespace, hostname)) = key.split_once('/') else {
                return Err(field_error(
                    &resource,
                    "services",
                    format!("key {key:?} is not namespace/hostname"),
                ));
            };
            let mut mapping = BTreeMap::new();
            for p in ports.ports {
                mapping.insert(
                    port(&resource, "services.ports.service_port", p.service_port)?,
                    port(&resource, "services.ports.target_port", p.target_port)?,
                );
            }
            services.insert(
                NamespacedHostname {
                    namespace: namespace.to_string(),
                    hostname: hostname.to_string(),
                },
                mapping,
            );
        }
        let waypoint = gateway(&resource, "waypoint", w.waypoint)?;
        let workload = Workload {
            uid: w.uid,
            name: w.name,
            namespace: w.namespace,
            addresses,
            trust_domain: if w.trust_domain.is_empty() {
                weft_istio::defaults::DEFAULT_TRUST_DOMAIN.to_string()
            } else {
                w.trust_domain
            },
            service_account: if w.service_account.is_empty() {
                "default".to_string()
            } else {
                w.service_account
            },
            node: w.node,
            tunnel,
            waypoint,
            canonical_name: w.canonical_name,
            canonical_revision: w.canonical_revision,
            workload_name: w.workload_name,
            cluster_id: w.cluster_id,
            healthy,
            services,
            authorization_policies: w.authorization_policies,
            hostname: w.hostname,
            // ztunnel: unset is 1. Zero would take the endpoint out of every pick; Istio's
            // API rejects it, so it counts as unset.
            capacity: w.capacity.filter(|c| *c > 0).unwrap_or(1),
            locality: Box::new(
                w.locality
                    .map(|l| Locality {
                        region: l.region,
                        zone: l.zone,
                        subzone: l.subzone,
                    })
                    .unwrap_or_default(),
            ),
        };
        if tunnel == TunnelProtocol::Hbone {
            workload
                .identity()
                .map_err(|e| field_error(&resource, "service_account", e.to_string()))?;
        }
        Ok(workload)
    }
}

impl TryFrom<proto::Service> for Service {
    type Error = ConversionError;

    fn try_from(s: proto::Service) -> Result<Self, Self::Error> {
        let resource = format!("service {}/{}", s.namespace, s.hostname);
        if s.hostname.is_empty() {
            return Err(field_error(&resource, "hostname", "empty"));
        }
        let vips = s
            .addresses
            .iter()
            .map(|a| {
                ip_from_bytes(&a.address).ok_or_else(|| {
                    field_error(&resource, "addresses", "address is neither IPv4 nor IPv6")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut ports = BTreeMap::new();
        for p in &s.ports {
            ports.insert(
                port(&resource, "ports.service_port", p.service_port)?,
                port(&resource, "ports.target_port", p.target_port)?,
            );
        }
        let (load_balancing, routing_preferences, allow_unhealthy) = match &s.load_balancing {
            None => (LoadBalancingMode::Standard, Vec::new(), false),
            Some(lb) => {
                use proto::load_balancing::{HealthPolicy, Mode, Scope};
                let mode = match Mode::try_from(lb.mode) {
                    Ok(Mode::UnspecifiedMode) => LoadBalancingMode::Standard,
                    Ok(Mode::Strict) => LoadBalancingMode::Strict,
                    Ok(Mode::Failover) => LoadBalancingMode::Failover,
                    Ok(Mode::Passthrough) => LoadBalancingMode::Passthrough,
                    Err(_) => {
                        return Err(field_error(
                            &resource,
                            "load_balancing.mode",
                            format!("unknown value {}", lb.mode),
                        ));
                    }
                };
                let preferences = lb
                    .routing_preference
                    .iter()
                    .map(|scope| match Scope::try_from(*scope) {
                        Ok(Scope::Region) => Ok(Some(RoutingPreference::Region)),
                        Ok(Scope::Zone) => Ok(Some(RoutingPreference::Zone)),
                        Ok(Scope::Subzone) => Ok(Some(RoutingPreference::Subzone)),
                        Ok(Scope::Node) => Ok(Some(RoutingPreference::Node)),
                        Ok(Scope::Cluster) => Ok(Some(RoutingPreference::Cluster)),
                        Ok(Scope::Network) => Ok(Some(RoutingPreference::Network)),
                        Ok(Scope::UnspecifiedScope) => Ok(None),
                        Err(_) => Err(field_error(
                            &resource,
                            "load_balancing.routing_preference",
                            format!("unknown value {scope}"),
                        )),
                    })
                    .filter_map(Result::transpose)
                    .collect::<Result<Vec<_>, _>>()?;
                let allow_unhealthy =
                    HealthPolicy::try_from(lb.health_policy) == Ok(HealthPolicy::AllowAll);
                (mode, preferences, allow_unhealthy)
            }
        };
        let waypoint = gateway(&resource, "waypoint", s.waypoint)?;
        Ok(Service {
            name: s.name,
            namespace: s.namespace,
            hostname: s.hostname,
            vips,
            ports,
            subject_alt_names: s.subject_alt_names,
            waypoint,
            load_balancing,
            routing_preferences,
            allow_unhealthy,
        })
    }
}

/// One `istio.workload.Address` resource: a workload or a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressResource {
    Workload(Workload),
    Service(Service),
}

impl TryFrom<proto::Address> for AddressResource {
    type Error = ConversionError;

    fn try_from(address: proto::Address) -> Result<Self, Self::Error> {
        match address.r#type {
            Some(proto::address::Type::Workload(w)) => Ok(Self::Workload(w.try_into()?)),
            Some(proto::address::Type::Service(s)) => Ok(Self::Service(s.try_into()?)),
            None => Err(ConversionError::EmptyAddress),
        }
    }
}

/// Converts a pushed `istio.security.Authorization` into the policy crate's model.
pub fn authorization_from_proto(
    p: weft_proto::istio::security::Authorization,
) -> Result<weft_policy::l4::Authorization, ConversionError> {
    use weft_policy::{
        PolicyAction, WildcardMatch,
        l4::{Authorization, Clause, ConnectionMatch, PolicyScope, Rule, ServiceAccountMatch},
    };
    use weft_proto::istio::security;

    let resource = format!("authorization {}/{}", p.namespace, p.name);
    if p.name.is_empty() {
        return Err(field_error(&resource, "name", "empty"));
    }
    let scope = match security::Scope::try_from(p.scope) {
        Ok(security::Scope::Global) => PolicyScope::Global,
        Ok(security::Scope::Namespace) => PolicyScope::Namespace,
        Ok(security::Scope::WorkloadSelector) => PolicyScope::WorkloadSelector,
        Err(_) => {
            return Err(field_error(
                &resource,
                "scope",
                format!("unknown value {}", p.scope),
            ));
        }
    };
    let action = match security::Action::try_from(p.action) {
        Ok(security::Action::Allow) => PolicyAction::Allow,
        Ok(security::Action::Deny) => PolicyAction::Deny,
        Err(_) => {
            return Err(field_error(
                &resource,
                "action",
                format!("unknown value {}", p.action),
            ));
        }
    };
    let strings = |field: &'static str, list: Vec<security::StringMatch>| {
        list.into_iter()
            .map(|m| match m.match_type {
                Some(security::string_match::MatchType::Exact(s)) => Ok(WildcardMatch::Exact(s)),
                Some(security::string_match::MatchType::Prefix(s)) => Ok(WildcardMatch::Prefix(s)),
                Some(security::string_match::MatchType::Suffix(s)) => Ok(WildcardMatch::Suffix(s)),
                Some(security::string_match::MatchType::Presence(_)) => Ok(WildcardMatch::Presence),
                None => Err(field_error(
                    &resource,
                    field,
                    "string match without a value",
                )),
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let networks = |field: &'static str, list: Vec<security::Address>| {
        list.into_iter()
            .map(|a| {
                let ip = ip_from_bytes(&a.address).ok_or_else(|| {
                    field_error(&resource, field, "address is neither IPv4 nor IPv6")
                })?;
                let length = u8::try_from(a.length).map_err(|_| {
                    field_error(&resource, field, format!("prefix length {}", a.length))
                })?;
                ipnet::IpNet::new(ip, length).map_err(|_| {
                    field_error(&resource, field, format!("prefix length {length} for {ip}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let ports = |field: &'static str, list: Vec<u32>| {
        list.into_iter()
            .map(|p| port(&resource, field, p))
            .collect::<Result<Vec<_>, _>>()
    };
    let accounts = |list: Vec<security::ServiceAccountMatch>| {
        list.into_iter()
            .map(|a| ServiceAccountMatch {
                namespace: a.namespace,
                service_account: a.service_account,
            })
            .collect::<Vec<_>>()
    };
    let mut rules = Vec::with_capacity(p.rules.len());
    for rule in p.rules {
        let mut clauses = Vec::with_capacity(rule.clauses.len());
        for clause in rule.clauses {
            let mut matches = Vec::with_capacity(clause.matches.len());
            for m in clause.matches {
                matches.push(ConnectionMatch {
                    namespaces: strings("rules.clauses.matches.namespaces", m.namespaces)?,
                    not_namespaces: strings(
                        "rules.clauses.matches.not_namespaces",
                        m.not_namespaces,
                    )?,
                    service_accounts: accounts(m.service_accounts),
                    not_service_accounts: accounts(m.not_service_accounts),
                    principals: strings("rules.clauses.matches.principals", m.principals)?,
                    not_principals: strings(
                        "rules.clauses.matches.not_principals",
                        m.not_principals,
                    )?,
                    trust_domains: strings("rules.clauses.matches.trust_domains", m.trust_domains)?,
                    not_trust_domains: strings(
                        "rules.clauses.matches.not_trust_domains",
                        m.not_trust_domains,
                    )?,
                    source_ips: networks("rules.clauses.matches.source_ips", m.source_ips)?,
                    not_source_ips: networks(
                        "rules.clauses.matches.not_source_ips",
                        m.not_source_ips,
                    )?,
                    destination_ips: networks(
                        "rules.clauses.matches.destination_ips",
                        m.destination_ips,
                    )?,
                    not_destination_ips: networks(
                        "rules.clauses.matches.not_destination_ips",
                        m.not_destination_ips,
                    )?,
                    destination_ports: ports(
                        "rules.clauses.matches.destination_ports",
                        m.destination_ports,
                    )?,
                    not_destination_ports: ports(
                        "rules.clauses.matches.not_destination_ports",
                        m.not_destination_ports,
                    )?,
                });
            }
            clauses.push(Clause { matches });
        }
        rules.push(Rule { clauses });
    }
    Ok(Authorization {
        name: p.name,
        namespace: p.namespace,
        scope,
        action,
        rules,
        dry_run: p.dry_run,
    })
}

#[cfg(test)]
mod tests;
