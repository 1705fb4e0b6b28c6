//! Validation of the Kubernetes kinds the mesh reads: the parts the mesh depends on (names,
//! labels, the ambient enrolment labels, ports and addresses), not all of Kubernetes' rules.

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::names::{is_dns1123_label, is_dns1123_subdomain, is_ip};
use super::{Findings, check_labels, check_port};
use crate::model::Resource;
use crate::model::gateway_api::KubernetesGatewaySpec;

pub use crate::translate::resolve::{
    DATAPLANE_MODE as DATAPLANE_MODE_LABEL, USE_WAYPOINT as USE_WAYPOINT_LABEL,
    USE_WAYPOINT_NAMESPACE as USE_WAYPOINT_NAMESPACE_LABEL,
};

const GATEWAY_PROTOCOLS: &[&str] = &["HTTP", "HTTPS", "TLS", "TCP", "UDP", "HBONE"];

/// Name and label rules common to every kind, plus the mesh's own labels.
pub(crate) fn object_meta(resource: &Resource, findings: &mut Findings) {
    let meta = resource.metadata();
    let name = resource.name();
    let name_ok = match resource {
        // Namespaces and Services are DNS labels; most other objects DNS subdomains.
        Resource::Namespace(_) | Resource::Service(_) => is_dns1123_label(name),
        _ => is_dns1123_subdomain(name),
    };
    if !name_ok {
        findings.error(
            "metadata.name",
            format!("invalid name {name:?}: must be a lower-case RFC 1123 name"),
        );
    }
    if let Some(namespace) = &meta.namespace
        && !is_dns1123_label(namespace)
    {
        findings.error(
            "metadata.namespace",
            format!("invalid namespace {namespace:?}: must be a DNS label"),
        );
    }
    if let Some(labels) = &meta.labels {
        check_labels(findings, "metadata.labels", labels);
        if let Some(mode) = labels.get(DATAPLANE_MODE_LABEL)
            && mode != "ambient"
            && mode != "none"
        {
            findings.error(
                format!("metadata.labels.{DATAPLANE_MODE_LABEL}"),
                format!("unknown data plane mode {mode:?} (expected \"ambient\" or \"none\")"),
            );
        }
        if let Some(waypoint) = labels.get(USE_WAYPOINT_LABEL)
            && waypoint != "#none"
            && !is_dns1123_label(waypoint)
        {
            findings.error(
                format!("metadata.labels.{USE_WAYPOINT_LABEL}"),
                format!("waypoint name {waypoint:?} must be a DNS label or \"#none\""),
            );
        }
        if let Some(namespace) = labels.get(USE_WAYPOINT_NAMESPACE_LABEL)
            && !is_dns1123_label(namespace)
        {
            findings.error(
                format!("metadata.labels.{USE_WAYPOINT_NAMESPACE_LABEL}"),
                format!("waypoint namespace {namespace:?} must be a DNS label"),
            );
        }
    }
}

pub(crate) fn namespace(_namespace: &Namespace, _findings: &mut Findings) {
    // Everything a Namespace carries for the mesh is in its metadata (see `object_meta`).
}

pub(crate) fn pod(pod: &Pod, findings: &mut Findings) {
    let Some(spec) = &pod.spec else {
        findings.error("spec", "pod spec is required");
        return;
    };
    if spec.containers.is_empty() {
        findings.error("spec.containers", "a pod must have at least one container");
    }
    for (i, container) in spec.containers.iter().enumerate() {
        if !is_dns1123_label(&container.name) {
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

pub(crate) fn service(service: &Service, findings: &mut Findings) {
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
            && !is_dns1123_label(target)
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

pub(crate) fn endpoint_slice(slice: &EndpointSlice, findings: &mut Findings) {
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

pub(crate) fn gateway(spec: &KubernetesGatewaySpec, findings: &mut Findings) {
    if spec.gateway_class_name.is_empty() {
        findings.error("spec.gatewayClassName", "gatewayClassName is required");
    }
    if spec.listeners.is_empty() {
        findings.error(
            "spec.listeners",
            "a gateway must have at least one listener",
        );
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, listener) in spec.listeners.iter().enumerate() {
        let path = format!("spec.listeners[{i}]");
        if !is_dns1123_subdomain(&listener.name) {
            findings.error(
                format!("{path}.name"),
                format!("invalid listener name {:?}", listener.name),
            );
        } else if !names.insert(listener.name.as_str()) {
            findings.error(
                format!("{path}.name"),
                format!("duplicate listener name {:?}", listener.name),
            );
        }
        check_port(
            findings,
            format!("{path}.port"),
            listener.port.max(0) as u64,
        );
        if !GATEWAY_PROTOCOLS.contains(&listener.protocol.as_str()) {
            findings.error(
                format!("{path}.protocol"),
                format!(
                    "unsupported protocol {:?} (one of {})",
                    listener.protocol,
                    GATEWAY_PROTOCOLS.join(", ")
                ),
            );
        }
    }
}
