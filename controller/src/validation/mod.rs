//! Semantic validation following Istio's code rule by rule (istio/istio
//! `pkg/config/validation`: `validation.go`, `virtualservice.go`, `agent/validation.go`, and the
//! CEL rules of Istio's CRDs), one file per kind as Istio has them. Where Weft and Istio differ,
//! Istio's code decides.
//!
//! A resource gets errors (it is refused: the last good version keeps serving) and warnings (it
//! is accepted): Istio's own warnings, fields Weft accepts but does not apply
//! ([`not_applied`]), and, from [`crate::analysis`], cross-resource findings with `istioctl
//! analyze` codes. Each finding names the field path (`spec.http[0].route[1].weight`).

mod authorization_policy;
mod cel;
mod common;
mod destination_rule;
mod gateway;
mod gateway_api;
mod kubernetes;
mod metadata;
pub mod names;
pub mod not_applied;
mod peer_authentication;
mod request_authentication;
mod service_entry;
mod telemetry;
mod virtual_service;

use std::fmt;

use crate::model::Resource;

pub use common::{MAX_REGEX_LENGTH, MAX_REGEX_PROGRAM_BYTES, compile_regex, duration_at_least_ms};

// Defined beside the model, whose decoding reports schema errors the same way.
pub use crate::model::FieldError;

/// An `istioctl analyze` message type: its code and name (istio/istio
/// `pkg/config/analysis/msg/messages.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Code {
    pub code: &'static str,
    pub name: &'static str,
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.name)
    }
}

/// The analysis codes Weft reports.
pub mod codes {
    use super::Code;

    pub const DEPRECATED: Code = Code {
        code: "IST0002",
        name: "Deprecated",
    };
    pub const REFERENCED_RESOURCE_NOT_FOUND: Code = Code {
        code: "IST0101",
        name: "ReferencedResourceNotFound",
    };
    pub const CONFLICTING_MESH_GATEWAY_VIRTUAL_SERVICE_HOSTS: Code = Code {
        code: "IST0109",
        name: "ConflictingMeshGatewayVirtualServiceHosts",
    };
    pub const VIRTUAL_SERVICE_DESTINATION_PORT_SELECTOR_REQUIRED: Code = Code {
        code: "IST0112",
        name: "VirtualServiceDestinationPortSelectorRequired",
    };
    pub const NO_MATCHING_WORKLOADS_FOUND: Code = Code {
        code: "IST0127",
        name: "NoMatchingWorkloadsFound",
    };
    pub const VIRTUAL_SERVICE_UNREACHABLE_RULE: Code = Code {
        code: "IST0130",
        name: "VirtualServiceUnreachableRule",
    };
    pub const VIRTUAL_SERVICE_INEFFECTIVE_MATCH: Code = Code {
        code: "IST0131",
        name: "VirtualServiceIneffectiveMatch",
    };
    pub const VIRTUAL_SERVICE_HOST_NOT_FOUND_IN_GATEWAY: Code = Code {
        code: "IST0132",
        name: "VirtualServiceHostNotFoundInGateway",
    };
    pub const SCHEMA_WARNING: Code = Code {
        code: "IST0133",
        name: "SchemaWarning",
    };
    pub const SERVICE_ENTRY_ADDRESSES_REQUIRED: Code = Code {
        code: "IST0134",
        name: "ServiceEntryAddressesRequired",
    };
    pub const JWT_CLAIM_BASED_ROUTING_WITHOUT_REQUEST_AUTHN: Code = Code {
        code: "IST0149",
        name: "JwtClaimBasedRoutingWithoutRequestAuthN",
    };
    pub const INEFFECTIVE_POLICY: Code = Code {
        code: "IST0167",
        name: "IneffectivePolicy",
    };
    pub const DESTINATION_RULE_SUBSET_NOT_SELECT_PODS: Code = Code {
        code: "IST0173",
        name: "DestinationRuleSubsetNotSelectPods",
    };
    pub const UNKNOWN_DESTINATION_RULE_HOST: Code = Code {
        code: "IST0174",
        name: "UnknownDestinationRuleHost",
    };
}

/// A finding that does not refuse the resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldWarning {
    pub path: String,
    pub reason: String,
    /// The `istioctl analyze` message type, where Istio has one for this finding.
    pub code: Option<Code>,
}

impl fmt::Display for FieldWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)?;
        if let Some(code) = self.code {
            write!(f, " [{code}]")?;
        }
        Ok(())
    }
}

/// What validating one resource found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validation {
    pub errors: Vec<FieldError>,
    pub warnings: Vec<FieldWarning>,
}

impl Validation {
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Checks a resource against Istio's (or Kubernetes') rules, and reports what it sets that Weft
/// does not apply.
pub fn validate(resource: &Resource) -> Validation {
    let mut findings = Findings::default();
    let namespace = resource.namespace();
    match resource {
        Resource::VirtualService(r) => virtual_service::validate(&r.spec, namespace, &mut findings),
        Resource::DestinationRule(r) => {
            destination_rule::validate(&r.spec, namespace, &mut findings)
        }
        Resource::ServiceEntry(r) => {
            service_entry::validate(&r.spec, &r.metadata, namespace, &mut findings)
        }
        Resource::WorkloadEntry(r) => service_entry::workload_entry(&r.spec, &mut findings),
        Resource::Gateway(r) => gateway::validate(&r.spec, resource.name(), &mut findings),
        Resource::AuthorizationPolicy(r) => authorization_policy::validate(&r.spec, &mut findings),
        Resource::PeerAuthentication(r) => peer_authentication::validate(&r.spec, &mut findings),
        Resource::RequestAuthentication(r) => {
            request_authentication::validate(&r.spec, &mut findings)
        }
        Resource::Telemetry(r) => telemetry::validate(&r.spec, &mut findings),
        Resource::KubernetesGateway(r) => gateway_api::gateway(&r.spec, &mut findings),
        Resource::GatewayClass(_)
        | Resource::HTTPRoute(_)
        | Resource::GRPCRoute(_)
        | Resource::TCPRoute(_)
        | Resource::TLSRoute(_)
        | Resource::ReferenceGrant(_) => {}
        Resource::Namespace(_) => {}
        Resource::Pod(r) => kubernetes::pod(r, &mut findings),
        Resource::Service(r) => kubernetes::service(r, &mut findings),
        Resource::ServiceAccount(_) | Resource::Node(_) => {}
        Resource::EndpointSlice(r) => kubernetes::endpoint_slice(r, &mut findings),
    }
    metadata::validate(resource, &mut findings);
    not_applied::report(resource, &mut findings);
    Validation {
        errors: findings.errors,
        warnings: findings.warnings,
    }
}

/// Istio's `ValidateLocalityLbSetting` as its `ValidateMeshConfig` applies it to the mesh's
/// default, `meshConfig.localityLbSetting` (with outlier detection taken as given: that is a
/// DestinationRule's). The first error, its path under `localityLbSetting`.
pub fn mesh_locality_lb_setting(
    lb: &crate::model::networking::LocalityLbSetting,
) -> Result<(), FieldError> {
    let mut findings = Findings::default();
    destination_rule::locality_lb_setting(
        &mut findings,
        "localityLbSetting",
        lb,
        Some(&Default::default()),
    );
    match findings.errors.into_iter().next() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Collects errors and warnings as the validators walk a resource.
#[derive(Debug, Default)]
pub struct Findings {
    errors: Vec<FieldError>,
    warnings: Vec<FieldWarning>,
}

impl Findings {
    pub fn error(&mut self, path: impl fmt::Display, reason: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.to_string(),
            reason: reason.into(),
        });
    }

    pub fn check(&mut self, path: impl fmt::Display, result: Result<(), String>) {
        if let Err(reason) = result {
            self.error(path, reason);
        }
    }

    /// A warning Istio gives too (or one of Weft's own, beside Istio's rules).
    pub fn warn(&mut self, path: impl fmt::Display, reason: impl Into<String>) {
        self.warnings.push(FieldWarning {
            path: path.to_string(),
            reason: reason.into(),
            code: None,
        });
    }

    /// A warning with its `istioctl analyze` code.
    pub fn warn_code(&mut self, path: impl fmt::Display, code: Code, reason: impl Into<String>) {
        self.warnings.push(FieldWarning {
            path: path.to_string(),
            reason: reason.into(),
            code: Some(code),
        });
    }

    /// A field that is accepted and valid but that Weft does not apply (yet).
    pub fn not_applied(&mut self, path: impl fmt::Display, reason: impl fmt::Display) {
        self.warn(path, format!("{NOT_APPLIED}: {reason}"));
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }
}

/// How every not-applied warning starts.
pub const NOT_APPLIED: &str = "accepted but not applied by Weft";

#[cfg(test)]
mod tests;
