//! VirtualService, as Istio's `ValidateVirtualService` (`validation.go`) and `validateHTTPRoute`
//! (`virtualservice.go`) check it.

mod reachability;
mod routes;

use super::Findings;
use super::common::{ExportKind, check_export_to, check_labels, check_port};
use super::names::{
    host_is_subset, hosts_overlap, is_dns1123_label, is_ip, validate_fqdn, validate_ip_or_cidr,
    validate_wildcard_domain,
};
use crate::model::networking::*;

/// Istio's `ValidateVirtualService`.
pub fn validate(spec: &VirtualServiceSpec, namespace: &str, findings: &mut Findings) {
    let delegate = spec.hosts.is_empty();
    if delegate {
        if !spec.gateways.is_empty() {
            findings.error(
                "spec.gateways",
                "delegate virtual service must have no gateways specified",
            );
        }
        if !spec.tls.is_empty() {
            findings.error(
                "spec.tls",
                "delegate virtual service must have no tls route specified",
            );
        }
        if !spec.tcp.is_empty() {
            findings.error(
                "spec.tcp",
                "delegate virtual service must have no tcp route specified",
            );
        }
    }
    // Bound to gateways only when `gateways` is set and does not name `mesh`.
    let applies_to_gateway =
        !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == MESH_GATEWAY);
    if !spec.gateways.is_empty() {
        check_gateway_names(findings, "spec.gateways", &spec.gateways);
    }
    if !applies_to_gateway {
        check_jwt_claim_routes(findings, spec);
    }

    let sni = spec
        .tls
        .iter()
        .any(|t| t.matches.iter().any(|m| !m.sni_hosts.is_empty()));
    let mut all_hosts_valid = true;
    for (i, host) in spec.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        let valid = if applies_to_gateway {
            host_bound_to_gateway(sni, host)
        } else {
            validate_wildcard_domain(host)
        };
        match valid {
            Err(reason) if !is_ip(host) => {
                findings.error(&path, reason);
                all_hosts_valid = false;
            }
            Err(_) => {}
            Ok(()) if !applies_to_gateway && host == "*" => {
                findings.error(
                    &path,
                    "wildcard host * is not allowed for virtual services bound to the mesh gateway",
                );
                all_hosts_valid = false;
            }
            Ok(()) => {}
        }
    }
    if all_hosts_valid {
        for (i, a) in spec.hosts.iter().enumerate() {
            for b in &spec.hosts[i + 1..] {
                if hosts_overlap(a, b) {
                    findings.error(
                        format!("spec.hosts[{i}]"),
                        format!("duplicate hosts in virtual service: {a} & {b}"),
                    );
                }
            }
        }
    }
    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        findings.error(
            "spec",
            "http, tcp or tls must be provided in virtual service",
        );
    }
    for (i, route) in spec.http.iter().enumerate() {
        routes::http_route(findings, &format!("spec.http[{i}]"), route, delegate);
    }
    for (i, route) in spec.tls.iter().enumerate() {
        tls_route(
            findings,
            &format!("spec.tls[{i}]"),
            route,
            spec,
            applies_to_gateway,
        );
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        tcp_route(findings, &format!("spec.tcp[{i}]"), route);
    }
    check_export_to(findings, namespace, &spec.export_to, ExportKind::Config);
    reachability::report(findings, spec);
}

/// Istio's `ValidateWildcardDomainForVirtualServiceBoundToGateway`: with SNI routes, the names
/// Envoy generates for AUTO_PASSTHROUGH (`outbound_.80_._.reviews.default.svc.cluster.local`)
/// are hosts too.
fn host_bound_to_gateway(sni: bool, domain: &str) -> Result<(), String> {
    if sni && domain.starts_with("outbound_") && !domain.is_empty() && domain.len() <= 255 {
        let parts: Vec<&str> = domain.split('_').collect();
        if parts.len() < 4 {
            return Err(format!(
                "domain name {domain} invalid, should follow 'outbound_.<PORT>_._.<HOSTNAME>' format"
            ));
        }
        let port = parts[1].trim_matches('.');
        let hostname = parts[3].trim_matches('.');
        if !port.bytes().any(|b| b.is_ascii_digit()) {
            return Err(format!(
                "domain name {domain:?} invalid (label {port:?} invalid). should follow outbound_.<PORT>_._.<HOSTNAME> format"
            ));
        }
        if !hostname.bytes().any(|b| b.is_ascii_alphabetic()) {
            return Err(format!(
                "domain name {domain:?} invalid (label {hostname:?} invalid). should follow outbound_.<PORT>_._.<HOSTNAME> format"
            ));
        }
        return Ok(());
    }
    validate_wildcard_domain(domain)
}

/// Istio's `jwt.ToRoutingClaim`: `@request.auth.claims.<claim>` or `@request.auth.claims[<claim>]`.
pub fn is_jwt_claim_route(header: &str) -> bool {
    const PREFIX: &str = "@request.auth.claims";
    if !header.to_ascii_lowercase().starts_with(PREFIX) {
        return false;
    }
    let rest = &header[PREFIX.len()..];
    (rest.starts_with('.') && rest.len() > 1)
        || (rest.starts_with('[') && rest.ends_with(']') && rest.len() > 2)
}

/// Routing on JWT claims needs a gateway (Istio refuses it for the mesh).
fn check_jwt_claim_routes(findings: &mut Findings, spec: &VirtualServiceSpec) {
    for (i, route) in spec.http.iter().enumerate() {
        for (j, m) in route.matches.iter().enumerate() {
            for (field, map) in [
                ("headers", &m.headers),
                ("withoutHeaders", &m.without_headers),
            ] {
                for key in map.keys().filter(|k| is_jwt_claim_route(k)) {
                    findings.error(
                        format!("spec.http[{i}].match[{j}].{field}.{key}"),
                        format!(
                            "JWT claim based routing (key: {key}) is only supported for gateway, found no gateways: [{}]",
                            spec.gateways.join(" ")
                        ),
                    );
                }
            }
        }
    }
}

/// Istio's `validateGatewayNames`: `namespace/name`, or the legacy `name` / `name.namespace`
/// form (a warning); it stops at the first name without a `/`, as Istio's does.
pub fn check_gateway_names(findings: &mut Findings, path: &str, gateways: &[String]) {
    for (i, gateway) in gateways.iter().enumerate() {
        let field = format!("{path}[{i}]");
        let Some((namespace, name)) = gateway.split_once('/') else {
            if let Some((name, rest)) = gateway.split_once('.') {
                let namespace = rest.split('.').next().unwrap_or(rest);
                findings.warn(
                    &field,
                    format!(
                        "using legacy gatewayName format {gateway:?}; prefer the <namespace>/<name> format: \"{namespace}/{name}\""
                    ),
                );
            }
            findings.check(&field, validate_fqdn(gateway));
            return;
        };
        if namespace.is_empty() || name.is_empty() {
            findings.error(&field, "config namespace and gateway name cannot be empty");
        }
        if !is_dns1123_label(namespace) {
            findings.error(
                &field,
                format!("invalid value for namespace: {namespace:?}"),
            );
        }
        if !is_dns1123_label(name) {
            findings.error(&field, format!("invalid value for gateway name: {name:?}"));
        }
    }
}

/// Istio's `validateSubsetName`.
pub fn check_subset_name(findings: &mut Findings, path: impl std::fmt::Display, name: &str) {
    if name.is_empty() {
        findings.error(path, "subset name cannot be empty");
    } else if !is_dns1123_label(name) {
        findings.error(path, format!("subset name is invalid: {name}"));
    }
}

/// Istio's `validateDestination`.
pub fn check_destination(findings: &mut Findings, path: &str, destination: &Destination) {
    if destination.host == "*" {
        findings.error(format!("{path}.host"), "invalid destination host *");
    } else {
        findings.check(
            format!("{path}.host"),
            validate_wildcard_domain(&destination.host),
        );
    }
    if let Some(subset) = &destination.subset
        && !subset.is_empty()
    {
        check_subset_name(findings, format!("{path}.subset"), subset);
    }
    if let Some(port) = &destination.port {
        check_port(
            findings,
            format!("{path}.port.number"),
            u64::from(port.number),
        );
    }
}

/// Istio's `validateRouteDestinations` (TCP and TLS) and the destination half of
/// `validateHTTPRouteDestinations`: a destination each, weights ≥ 0 and, with several
/// destinations, not all zero.
pub fn check_weights<'a>(
    findings: &mut Findings,
    path: &str,
    routes: impl Iterator<Item = (Option<&'a Destination>, Option<i32>)>,
) {
    let mut total: i64 = 0;
    let mut count = 0;
    for (i, (destination, weight)) in routes.enumerate() {
        count += 1;
        let entry = format!("{path}[{i}]");
        match destination {
            Some(destination) => {
                check_destination(findings, &format!("{entry}.destination"), destination)
            }
            None => findings.error(format!("{entry}.destination"), "destination is required"),
        }
        let weight = weight.unwrap_or(0);
        if weight < 0 {
            findings.error(format!("{entry}.weight"), format!("weight {weight} < 0"));
        }
        total += i64::from(weight);
    }
    if count > 1 && total == 0 {
        findings.error(path, "total destination weight = 0");
    }
}

/// The match fields TCP and TLS matches share (`validateTCPMatch`, `validateTLSMatch`).
fn l4_match(
    findings: &mut Findings,
    match_path: &str,
    destination_subnets: &[String],
    port: Option<u32>,
    source_labels: &std::collections::BTreeMap<String, String>,
    gateways: &[String],
) {
    for (k, subnet) in destination_subnets.iter().enumerate() {
        findings.check(
            format!("{match_path}.destinationSubnets[{k}]"),
            validate_ip_or_cidr(subnet),
        );
    }
    if let Some(port) = port.filter(|p| *p != 0) {
        check_port(findings, format!("{match_path}.port"), u64::from(port));
    }
    check_labels(
        findings,
        &format!("{match_path}.sourceLabels"),
        source_labels,
    );
    check_gateway_names(findings, &format!("{match_path}.gateways"), gateways);
}

/// A TCP or TLS route's destinations: at least one, and their weights.
fn l4_destinations(
    findings: &mut Findings,
    path: &str,
    protocol: &str,
    route: &[crate::model::networking::RouteDestination],
) {
    if route.is_empty() {
        findings.error(
            format!("{path}.route"),
            format!("{protocol} route is required"),
        );
    }
    check_weights(
        findings,
        &format!("{path}.route"),
        route.iter().map(|r| (r.destination.as_ref(), r.weight)),
    );
}

/// Istio's `validateTCPRoute` and `validateTCPMatch`.
fn tcp_route(findings: &mut Findings, path: &str, route: &TcpRoute) {
    for (j, m) in route.matches.iter().enumerate() {
        l4_match(
            findings,
            &format!("{path}.match[{j}]"),
            &m.destination_subnets,
            m.port,
            &m.source_labels,
            &m.gateways,
        );
    }
    l4_destinations(findings, path, "TCP", &route.route);
}

/// Istio's `validateTLSRoute`, `validateTLSMatch` and `validateSniHost`.
fn tls_route(
    findings: &mut Findings,
    path: &str,
    route: &TlsRoute,
    spec: &VirtualServiceSpec,
    applies_to_gateway: bool,
) {
    if route.matches.is_empty() {
        findings.error(
            format!("{path}.match"),
            "TLS route must have at least one match condition",
        );
    }
    for (j, m) in route.matches.iter().enumerate() {
        let match_path = format!("{path}.match[{j}]");
        if m.sni_hosts.is_empty() {
            findings.error(
                format!("{match_path}.sniHosts"),
                "TLS match must have at least one SNI host",
            );
        }
        for (k, sni) in m.sni_hosts.iter().enumerate() {
            let sni_path = format!("{match_path}.sniHosts[{k}]");
            let valid = if applies_to_gateway {
                host_bound_to_gateway(true, sni)
            } else {
                validate_wildcard_domain(sni)
            };
            match valid {
                Err(_) if is_ip(sni) => findings.warn(
                    &sni_path,
                    format!(
                        "using an IP address ({sni:?}) goes against SNI spec and most clients do not support this"
                    ),
                ),
                Err(reason) => findings.error(&sni_path, reason),
                Ok(()) if !spec.hosts.iter().any(|h| host_is_subset(sni, h)) => findings.error(
                    &sni_path,
                    format!(
                        "SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{}]",
                        spec.hosts.join(", ")
                    ),
                ),
                Ok(()) => {}
            }
        }
        l4_match(
            findings,
            &match_path,
            &m.destination_subnets,
            m.port,
            &m.source_labels,
            &m.gateways,
        );
    }
    l4_destinations(findings, path, "TLS", &route.route);
}
