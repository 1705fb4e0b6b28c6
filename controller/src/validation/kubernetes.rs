//! Validation of the Kubernetes kinds the mesh reads: the parts the mesh depends on (ports,
//! addresses, container names), not all of Kubernetes' rules; names and labels are in
//! `metadata`.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Findings;
use super::common::check_port;
use super::names::{is_dns1123_subdomain, is_ip, is_k8s_dns1123_label, validate_service_account};

pub fn pod(pod: &Pod, findings: &mut Findings) {
    let Some(spec) = &pod.spec else {
        findings.error("spec", "pod spec is required");
        return;
    };
    // The account names the workload's SPIFFE identity: a name Kubernetes itself would refuse
    // never reaches a proxy.
    for (field, account) in [
        ("spec.serviceAccountName", &spec.service_account_name),
        ("spec.serviceAccount", &spec.service_account),
    ] {
        if let Some(account) = account
            && !account.is_empty()
        {
            findings.check(field, validate_service_account(account));
        }
    }
    if spec.containers.is_empty() {
        findings.error("spec.containers", "a pod must have at least one container");
    }
    for (i, container) in spec.containers.iter().enumerate() {
        if !is_k8s_dns1123_label(&container.name) {
            findings.error(
                format!("spec.containers[{i}].name"),
                format!("invalid container name {:?}", container.name),
            );
        }
        for (j, port) in container.ports.iter().flatten().enumerate() {
            check_port(
                findings,
                format!("spec.containers[{i}].ports[{j}].containerPort"),
                port.container_port.max(0) as u64,
            );
        }
    }
    if let Some(status) = &pod.status
        && let Some(ip) = &status.pod_ip
        && !is_ip(ip)
    {
        findings.error("status.podIP", format!("{ip} is not a valid IP"));
    }
}

pub fn service(service: &Service, findings: &mut Findings) {
    let Some(spec) = &service.spec else {
        return;
    };
    let ports = spec.ports.as_deref().unwrap_or_default();
    let mut names = std::collections::BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        check_port(findings, format!("{path}.port"), port.port.max(0) as u64);
        match &port.name {
            None if ports.len() > 1 => findings.error(
                format!("{path}.name"),
                "port name is required when a service has several ports",
            ),
            Some(name) if !names.insert(name.as_str()) => findings.error(
                format!("{path}.name"),
                format!("duplicate port name {name:?}"),
            ),
            _ => {}
        }
        if let Some(IntOrString::Int(target)) = &port.target_port {
            check_port(
                findings,
                format!("{path}.targetPort"),
                (*target).max(0) as u64,
            );
        }
        if let Some(IntOrString::String(target)) = &port.target_port
            && !is_k8s_dns1123_label(target)
        {
            findings.error(
                format!("{path}.targetPort"),
                format!("invalid named target port {target:?}"),
            );
        }
    }
    for (field, ip) in [("clusterIP", &spec.cluster_ip)] {
        if let Some(ip) = ip
            && ip != "None"
            && !ip.is_empty()
            && !is_ip(ip)
        {
            findings.error(format!("spec.{field}"), format!("{ip} is not a valid IP"));
        }
    }
}

pub fn endpoint_slice(slice: &EndpointSlice, findings: &mut Findings) {
    let address_type = slice.address_type.as_str();
    if !matches!(address_type, "IPv4" | "IPv6" | "FQDN") {
        findings.error(
            "addressType",
            format!("unknown address type {address_type:?} (IPv4, IPv6 or FQDN)"),
        );
    }
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        if endpoint.addresses.is_empty() {
            findings.error(
                format!("endpoints[{i}].addresses"),
                "an endpoint must have at least one address",
            );
        }
        for (j, address) in endpoint.addresses.iter().enumerate() {
            let valid = match address_type {
                "IPv4" => address.parse::<std::net::Ipv4Addr>().is_ok(),
                "IPv6" => address.parse::<std::net::Ipv6Addr>().is_ok(),
                _ => is_dns1123_subdomain(address),
            };
            if !valid {
                findings.error(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!("{address:?} is not a valid {address_type} address"),
                );
            }
        }
    }
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        if let Some(number) = port.port {
            check_port(findings, format!("ports[{i}].port"), number.max(0) as u64);
        }
    }
}
