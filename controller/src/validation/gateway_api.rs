//! The Gateway API's Gateway: what the mesh depends on for waypoints (a class, listeners with
//! valid names, ports and protocols). The Gateway API's own rules live in its CRDs.

use super::Findings;
use super::common::check_port;
use super::names::{is_dns1123_label, is_dns1123_subdomain};
use crate::model::gateway_api::KubernetesGatewaySpec;

/// The Gateway API's protocol pattern: a name (`HTTP`, `HBONE`) or a domain-prefixed one
/// (`istio.io/PROXY`).
fn valid_protocol(protocol: &str) -> bool {
    match protocol.split_once('/') {
        None => is_dns1123_label(protocol),
        Some((domain, name)) => {
            is_dns1123_subdomain(domain)
                && !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric())
        }
    }
}

pub fn gateway(spec: &KubernetesGatewaySpec, findings: &mut Findings) {
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
        if !valid_protocol(&listener.protocol) {
            findings.error(
                format!("{path}.protocol"),
                format!("invalid protocol {:?}", listener.protocol),
            );
        }
    }
}
