//! PeerAuthentication, as Istio's `ValidatePeerAuthentication` (`validation.go`) and the CEL rules
//! of its CRD check it.

use super::Findings;
use super::common::check_workload_selector;
use crate::model::security::*;

pub fn validate(spec: &PeerAuthenticationSpec, findings: &mut Findings) {
    let empty_selector = spec
        .selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty());
    if let Some(port_level) = &spec.port_level_mtls {
        if empty_selector {
            findings.error(
                "spec.portLevelMtls",
                "mesh/namespace peer authentication cannot have port level mTLS",
            );
        }
        if port_level.is_empty() {
            findings.error(
                "spec.portLevelMtls",
                "port level mTLS, if defined, must have at least one element",
            );
        }
        for port in port_level.keys() {
            if !(1..=65535).contains(port) {
                findings.error(
                    format!("spec.portLevelMtls.{port}"),
                    "port must be in range 1..65535",
                );
            }
        }
    }
    if let Some(selector) = &spec.selector {
        check_workload_selector(findings, "spec.selector", selector);
    }
}
