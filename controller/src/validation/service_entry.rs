//! ServiceEntry and WorkloadEntry, as Istio's `ValidateServiceEntry`, `ValidateWorkloadEntry`
//! (`validation.go`) and the CEL rules of Istio's CRDs check them.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weft_istio::labels::{ENABLE_AUTOALLOCATE_IP, USE_WAYPOINT};

use super::common::{
    ExportKind, Protocol, check_export_to, check_labels, check_port, check_port_name,
    check_protocol,
};
use super::names::{
    is_dns1123_label, is_ip, validate_fqdn, validate_ip_or_cidr, validate_partial_wildcard,
    validate_service_account, validate_wildcard_domain,
};
use super::{Findings, codes};
use crate::model::networking::*;

pub fn validate(
    spec: &ServiceEntrySpec,
    meta: &ObjectMeta,
    namespace: &str,
    findings: &mut Findings,
) {
    let resolution = spec.resolution.unwrap_or(ServiceEntryResolution::None);
    if let Some(selector) = &spec.workload_selector {
        for (key, value) in &selector.labels {
            if key.is_empty() {
                findings.error(
                    format!("spec.workloadSelector.labels.{key}"),
                    format!("empty key is not supported in selector: \"{key}={value}\""),
                );
            }
            if key.contains('*') || value.contains('*') {
                findings.error(
                    format!("spec.workloadSelector.labels.{key}"),
                    format!("wildcard is not supported in selector: \"{key}={value}\""),
                );
            }
        }
        if selector.labels.is_empty() {
            findings.warn(
                "spec.workloadSelector",
                "service entry: workload selector specified without labels, will be applied to all services in namespace",
            );
        }
        if spec.endpoints.is_some() {
            findings.error(
                "spec.workloadSelector",
                "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
            );
        }
    }
    hosts(findings, spec, resolution);
    let mut cidr_found = false;
    for (i, address) in spec.addresses.iter().enumerate() {
        cidr_found |= address.contains('/');
        findings.check(format!("spec.addresses[{i}]"), validate_ip_or_cidr(address));
    }
    if cidr_found
        && !matches!(
            resolution,
            ServiceEntryResolution::None | ServiceEntryResolution::Static
        )
    {
        findings.error(
            "spec.addresses",
            "CIDR addresses are allowed only for NONE/STATIC resolution types",
        );
    }
    let port_names = ports(findings, spec, meta, resolution);
    let endpoints = spec.endpoints.as_deref().unwrap_or_default();
    match resolution {
        ServiceEntryResolution::None => {
            if spec.endpoints.is_some() {
                findings.error(
                    "spec.endpoints",
                    "no endpoints should be provided for resolution type none",
                );
            }
            if spec.workload_selector.is_some() {
                findings.warn(
                    "spec.workloadSelector",
                    "workloadSelector should not be set when resolution mode is NONE",
                );
            }
        }
        ServiceEntryResolution::Static => {
            for (i, endpoint) in endpoints.iter().enumerate() {
                workload_entry_fields(
                    findings,
                    &format!("spec.endpoints[{i}]"),
                    endpoint,
                    Some(&port_names),
                    false,
                );
            }
        }
        ServiceEntryResolution::Dns | ServiceEntryResolution::DnsRoundRobin => {
            dns_resolution(findings, spec, resolution, &port_names);
        }
        ServiceEntryResolution::DynamicDns => dynamic_dns(findings, spec, meta),
    }
    if resolution != ServiceEntryResolution::None
        && spec.hosts.len() > 1
        && spec.ports.iter().any(|p| {
            let protocol = Protocol::parse(p.protocol.as_deref().unwrap_or(""));
            !protocol.is_http() && !protocol.is_tls()
        })
    {
        findings.error(
            "spec.ports",
            "multiple hosts provided with non-HTTP, non-TLS ports",
        );
    }
    check_export_to(
        findings,
        namespace,
        &spec.export_to,
        ExportKind::ServiceEntry,
    );
}

fn hosts(findings: &mut Findings, spec: &ServiceEntrySpec, resolution: ServiceEntryResolution) {
    if spec.hosts.is_empty() {
        findings.error("spec.hosts", "service entry must have at least one host");
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if host == "*" {
            findings.error(&path, "invalid host *");
            continue;
        }
        findings.check(&path, validate_wildcard_domain(host));
        if resolution != ServiceEntryResolution::DynamicDns
            && let Err(reason) = validate_partial_wildcard(host)
        {
            findings.warn(&path, reason);
        }
    }
}

/// The ports' names, and Istio's rules on them.
fn ports(
    findings: &mut Findings,
    spec: &ServiceEntrySpec,
    meta: &ObjectMeta,
    resolution: ServiceEntryResolution,
) -> BTreeSet<String> {
    let opted_out = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(ENABLE_AUTOALLOCATE_IP))
        .is_some_and(|v| v.eq_ignore_ascii_case("false"));
    let auto_allocation =
        resolution != ServiceEntryResolution::None && !opted_out && spec.addresses.is_empty();
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        if !names.insert(port.name.clone()) {
            findings.error(
                format!("{path}.name"),
                format!("service entry port name {:?} already defined", port.name),
            );
        }
        if !numbers.insert(port.number) {
            findings.error(
                format!("{path}.number"),
                format!("service entry port {} already defined", port.number),
            );
        }
        if let Some(target) = port.target_port {
            check_port(findings, format!("{path}.targetPort"), u64::from(target));
        }
        let protocol = port.protocol.as_deref().unwrap_or("");
        if spec.addresses.is_empty()
            && !auto_allocation
            && (protocol.is_empty() || protocol == "TCP")
        {
            findings.warn_code(
                &path,
                codes::SERVICE_ENTRY_ADDRESSES_REQUIRED,
                "addresses are required for ports serving TCP (or unset) protocol when IP Autoallocation is not enabled",
            );
        }
        check_port_name(findings, format!("{path}.name"), &port.name);
        check_protocol(findings, format!("{path}.protocol"), protocol);
        check_port(findings, format!("{path}.number"), u64::from(port.number));
    }
    names
}

fn dns_resolution(
    findings: &mut Findings,
    spec: &ServiceEntrySpec,
    resolution: ServiceEntryResolution,
    port_names: &BTreeSet<String>,
) {
    let endpoints = spec.endpoints.as_deref().unwrap_or_default();
    if endpoints.is_empty()
        && let Some((i, reason)) = spec
            .hosts
            .iter()
            .enumerate()
            .find_map(|(i, h)| validate_fqdn(h).err().map(|e| (i, e)))
    {
        findings.error(
            format!("spec.hosts[{i}]"),
            format!(
                "hosts must be FQDN or contain only prefix wildcards if no endpoints are provided for resolution mode {}, {reason}",
                resolution.as_str()
            ),
        );
    }
    if resolution == ServiceEntryResolution::DnsRoundRobin && endpoints.len() > 1 {
        findings.error(
            "spec.endpoints",
            format!(
                "there must only be 0 or 1 endpoint for resolution mode {}",
                resolution.as_str()
            ),
        );
    }
    for (i, endpoint) in endpoints.iter().enumerate() {
        let path = format!("spec.endpoints[{i}]");
        let address = endpoint.address.as_deref().unwrap_or("");
        if !is_ip(address) && validate_fqdn(address).is_err() {
            findings.error(
                format!("{path}.address"),
                format!("endpoint address {address:?} is not a valid FQDN or an IP address"),
            );
        }
        check_labels(findings, &format!("{path}.labels"), &endpoint.labels);
        endpoint_ports(findings, &path, endpoint, Some(port_names));
    }
    if !spec.addresses.is_empty()
        && spec.hosts.len() > 1
        && spec
            .ports
            .iter()
            .any(|p| Protocol::parse(p.protocol.as_deref().unwrap_or("")).is_tcp())
    {
        findings.warn(
            "spec.hosts",
            "service entry can not have more than one host specified simultaneously with address and tcp port",
        );
    }
}

fn dynamic_dns(findings: &mut Findings, spec: &ServiceEntrySpec, meta: &ObjectMeta) {
    let mode = ServiceEntryResolution::DynamicDns.as_str();
    for (i, host) in spec.hosts.iter().enumerate() {
        if !host.starts_with('*') {
            findings.error(
                format!("spec.hosts[{i}]"),
                format!("host must be wildcarded for resolution mode {mode}"),
            );
        }
    }
    if !spec.addresses.is_empty() {
        findings.error(
            "spec.addresses",
            format!("addresses cannot be set for resolution type {mode}. HTTP route domains will only be generatedfrom the hosts field values"),
        );
    }
    if !spec.endpoints.as_deref().unwrap_or_default().is_empty() {
        findings.error(
            "spec.endpoints",
            format!("endpoints cannot be set for resolution type {mode}. Destination IP address determined from hostsfield values"),
        );
    }
    for (i, port) in spec.ports.iter().enumerate() {
        let protocol = Protocol::parse(port.protocol.as_deref().unwrap_or(""));
        if !matches!(
            protocol,
            Protocol::Http | Protocol::Tls | Protocol::Grpc | Protocol::Http2
        ) {
            findings.error(
                format!("spec.ports[{i}].protocol"),
                format!("only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type {mode}"),
            );
        }
    }
    let uses_waypoint = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(USE_WAYPOINT))
        .is_some_and(|v| !v.is_empty() && !v.eq_ignore_ascii_case("none"));
    if spec.location == Some(ServiceEntryLocation::MeshInternal) && uses_waypoint {
        findings.error(
            "spec.location",
            format!("location MESH_INTERNAL with resolution type {mode} is not supported when using waypoints"),
        );
    }
}

/// Istio's `ValidateWorkloadEntry`.
pub fn workload_entry(spec: &WorkloadEntrySpec, findings: &mut Findings) {
    workload_entry_fields(findings, "spec", spec, None, true);
}

/// Istio's `ValidateUnixAddress`.
fn unix_address(address: &str) -> Result<(), String> {
    if address.is_empty() {
        return Err("unix address must not be empty".to_owned());
    }
    if address.starts_with('@') {
        return Ok(());
    }
    if !address.starts_with('/') || address.ends_with('/') {
        return Err(format!("{address} is not an absolute path to a file"));
    }
    Ok(())
}

/// Istio's `validateWorkloadEntry`, for a WorkloadEntry (`service_ports` none, FQDN addresses
/// allowed) and for a STATIC ServiceEntry's endpoints.
fn workload_entry_fields(
    findings: &mut Findings,
    path: &str,
    entry: &WorkloadEntrySpec,
    service_ports: Option<&BTreeSet<String>>,
    allow_fqdn: bool,
) {
    let address = entry.address.as_deref().unwrap_or("");
    let network = entry.network.as_deref().unwrap_or("");
    if address.is_empty() {
        if network.is_empty() {
            findings.error(format!("{path}.address"), "address is required");
            return;
        }
        findings.warn(
            format!("{path}.address"),
            format!("address is unset with network {network:?}"),
        );
    }
    let unix = address.strip_prefix("unix://");
    if let Some(socket) = unix {
        findings.check(format!("{path}.address"), unix_address(socket));
        if entry.ports.as_ref().is_some_and(|p| !p.is_empty()) {
            findings.error(
                format!("{path}.ports"),
                format!("unix endpoint {address} must not include ports"),
            );
        }
    } else if !address.is_empty() && !is_ip(address) {
        if !allow_fqdn {
            findings.error(
                format!("{path}.address"),
                format!("endpoint address {address:?} is not a valid IP address"),
            );
        } else if validate_fqdn(address).is_err() {
            findings.error(
                format!("{path}.address"),
                format!("endpoint address {address:?} is not a valid FQDN or an IP address"),
            );
        }
    }
    endpoint_ports(findings, path, entry, service_ports);
    check_labels(findings, &format!("{path}.labels"), &entry.labels);
    // Stricter than Istio, which takes any string here: the account names a Kubernetes
    // ServiceAccount and becomes a segment of the endpoint's SPIFFE identity, so a name no
    // ServiceAccount can have would give the endpoint an identity no certificate carries.
    if let Some(account) = entry.service_account.as_deref()
        && !account.is_empty()
    {
        findings.check(
            format!("{path}.serviceAccount"),
            validate_service_account(account),
        );
    }
    if unix.is_some()
        && let Some(service_ports) = service_ports
        && service_ports.len() != 1
    {
        findings.error(path, "exactly 1 service port required for unix endpoints");
    }
}

/// An endpoint's ports: named after one of the ServiceEntry's ports, numbers in range.
fn endpoint_ports(
    findings: &mut Findings,
    path: &str,
    entry: &WorkloadEntrySpec,
    service_ports: Option<&BTreeSet<String>>,
) {
    let empty = BTreeMap::new();
    for (name, port) in entry.ports.as_ref().unwrap_or(&empty) {
        let port_path = format!("{path}.ports.{name}");
        if service_ports.is_some_and(|names| !names.contains(name)) {
            findings.error(
                &port_path,
                format!("endpoint port {port} is not defined by the service entry"),
            );
        }
        if !is_dns1123_label(name) {
            findings.error(&port_path, format!("invalid port name: {name}"));
        }
        check_port(findings, &port_path, u64::from(*port));
    }
}
