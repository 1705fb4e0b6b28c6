//! Object metadata: the name and label rules Kubernetes applies to every object, the mesh's own
//! labels, and Istio's `validateMetadata` (`validation.go`): the `istio.io/dry-run` annotation
//! (AuthorizationPolicy only, ALLOW or DENY, a boolean) and annotations users may not set.

use weft_istio::labels::{
    DATAPLANE_MODE, DATAPLANE_MODE_AMBIENT, DRY_RUN, USE_WAYPOINT, USE_WAYPOINT_NAMESPACE,
};

use super::Findings;
use super::names::{
    is_dns1123_subdomain, is_k8s_dns1123_label, validate_label_key, validate_label_value,
};
use crate::model::Resource;
use crate::model::security::AuthorizationAction;
const ALWAYS_REJECT_ANNOTATION: &str = "internal.istio.io/webhook-always-reject";
const INTERNAL_ANNOTATIONS: &[&str] = &[
    "internal.istio.io/parent-namespace",
    "internal.istio.io/parents",
];

/// Go's `strconv.ParseBool`.
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

pub fn validate(resource: &Resource, findings: &mut Findings) {
    kubernetes(resource, findings);
    edge_annotations(resource, findings);
    if resource.kind().is_istio() {
        istio(resource, findings);
    }
}

/// The annotations of [`crate::model::edge`]: a local rate limit on the resources whose HTTP
/// routes it limits and edge limits on a Gateway (errors: the resource is refused, the last
/// good one keeps serving), and Istio's `proxy.istio.io/config` on a pod (a warning: the pod
/// stays in the mesh and its gateway, if it is one, takes the mesh default).
fn edge_annotations(resource: &Resource, findings: &mut Findings) {
    use crate::model::edge::{
        EDGE_LIMITS, LOCAL_RATE_LIMIT, edge_limits, local_rate_limit, pod_num_trusted_proxies,
    };
    let annotations = resource.metadata().annotations.as_ref();
    match resource {
        Resource::Gateway(_) | Resource::KubernetesGateway(_) => {
            if let Some(Err(error)) = edge_limits(annotations) {
                findings.error(error.path, error.reason);
            }
        }
        _ => {
            if annotations.is_some_and(|a| a.contains_key(EDGE_LIMITS)) {
                findings.error(
                    format!("metadata.annotations.{EDGE_LIMITS}"),
                    "edge limits apply to the servers of an Istio Gateway or the listeners of a Gateway API Gateway only",
                );
            }
        }
    }
    match resource {
        Resource::VirtualService(_) | Resource::HTTPRoute(_) | Resource::GRPCRoute(_) => {
            if let Some(Err(error)) = local_rate_limit(annotations) {
                findings.error(error.path, error.reason);
            }
        }
        Resource::Pod(_) => {
            if let Err(error) = pod_num_trusted_proxies(annotations) {
                findings.warn(error.path, error.reason);
            }
        }
        _ => {
            if annotations.is_some_and(|a| a.contains_key(LOCAL_RATE_LIMIT)) {
                findings.error(
                    format!("metadata.annotations.{LOCAL_RATE_LIMIT}"),
                    "a local rate limit applies to the HTTP routes of a VirtualService, HTTPRoute or GRPCRoute only",
                );
            }
        }
    }
}

fn istio(resource: &Resource, findings: &mut Findings) {
    let Some(annotations) = &resource.metadata().annotations else {
        return;
    };
    let path = |key: &str| format!("metadata.annotations.{key}");
    if let Some(value) = annotations.get(DRY_RUN) {
        match resource {
            Resource::AuthorizationPolicy(policy) => {
                let action = policy.spec.action.unwrap_or_default();
                if !matches!(
                    action,
                    AuthorizationAction::Allow | AuthorizationAction::Deny
                ) {
                    findings.error(
                        path(DRY_RUN),
                        format!(
                            "the annotation {DRY_RUN} currently only supports action ALLOW/DENY, found action {}",
                            action.as_str()
                        ),
                    );
                } else if parse_bool(value).is_none() {
                    findings.error(
                        path(DRY_RUN),
                        format!("annotation {DRY_RUN} with invalid value ({value}): not a boolean"),
                    );
                }
            }
            _ => findings.error(
                path(DRY_RUN),
                format!("unsupported annotation {DRY_RUN}, please remove the annotation"),
            ),
        }
    }
    if annotations.contains_key(ALWAYS_REJECT_ANNOTATION) {
        findings.error(
            path(ALWAYS_REJECT_ANNOTATION),
            format!("{ALWAYS_REJECT_ANNOTATION:?} annotation found, rejecting"),
        );
    }
    for key in INTERNAL_ANNOTATIONS {
        if annotations.contains_key(*key) {
            findings.error(
                path(key),
                format!("{key:?} annotation found, this may not be set by users"),
            );
        }
    }
}

/// What the API server checks of every object's metadata, and the mesh's labels.
fn kubernetes(resource: &Resource, findings: &mut Findings) {
    let meta = resource.metadata();
    let name = resource.name();
    let name_ok = match resource {
        // Namespaces and Services are DNS labels; other objects DNS subdomains.
        Resource::Namespace(_) | Resource::Service(_) => is_k8s_dns1123_label(name),
        _ => is_dns1123_subdomain(name),
    };
    if !name_ok {
        findings.error(
            "metadata.name",
            format!("invalid name {name:?}: must be a lower-case RFC 1123 name"),
        );
    }
    if let Some(namespace) = &meta.namespace
        && !is_k8s_dns1123_label(namespace)
    {
        findings.error(
            "metadata.namespace",
            format!("invalid namespace {namespace:?}: must be a DNS label"),
        );
    }
    let Some(labels) = &meta.labels else { return };
    for (key, value) in labels {
        findings.check(format!("metadata.labels.{key}"), validate_label_key(key));
        findings.check(
            format!("metadata.labels.{key}"),
            validate_label_value(value),
        );
    }
    if let Some(mode) = labels.get(DATAPLANE_MODE)
        && mode != DATAPLANE_MODE_AMBIENT
        && mode != "none"
    {
        findings.error(
            format!("metadata.labels.{DATAPLANE_MODE}"),
            format!("unknown data plane mode {mode:?} (expected \"ambient\" or \"none\")"),
        );
    }
    if let Some(waypoint) = labels.get(USE_WAYPOINT)
        && waypoint != "#none"
        && waypoint != "none"
        && !is_k8s_dns1123_label(waypoint)
    {
        findings.error(
            format!("metadata.labels.{USE_WAYPOINT}"),
            format!("waypoint name {waypoint:?} must be a DNS label or \"none\""),
        );
    }
    if let Some(namespace) = labels.get(USE_WAYPOINT_NAMESPACE)
        && !is_k8s_dns1123_label(namespace)
    {
        findings.error(
            format!("metadata.labels.{USE_WAYPOINT_NAMESPACE}"),
            format!("waypoint namespace {namespace:?} must be a DNS label"),
        );
    }
}
