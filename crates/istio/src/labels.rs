//! Labels and annotations with a meaning in the mesh (Istio's `istio.io/api` `label` and
//! `annotation` packages, and the Gateway API label Istio relies on).

/// Label that enrolls a namespace or pod ([`DATAPLANE_MODE_AMBIENT`]) or opts a pod out
/// (`none`, or any other value).
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
/// The [`DATAPLANE_MODE`] value that puts a namespace or pod in the ambient mesh.
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
/// Label naming the waypoint a namespace, service or pod uses; `none` opts out.
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
/// Label naming the namespace of that waypoint, when it is not the object's own.
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
/// On a Service or its namespace, `"true"`: gateways reach the service through its waypoint
/// instead of its pods (Istio's label, read the same way).
pub const INGRESS_USE_WAYPOINT: &str = "istio.io/ingress-use-waypoint";
/// Label on a waypoint saying which traffic it takes: `service` (default), `workload`, `all`,
/// `none`.
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
/// Label the Gateway API puts on a gateway's (waypoint's) pods and Service.
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
/// Label naming a workload's canonical service.
pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
/// Label naming a workload's canonical revision.
pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
/// Label naming a pod's workload, in place of the name derived from its controller (Istio's
/// `label.ServiceWorkloadName`).
pub const WORKLOAD_NAME: &str = "service.istio.io/workload-name";
/// Annotation naming the WorkloadGroup a WorkloadEntry was registered from: the entry's
/// workload name (Istio's `annotation.IoIstioAutoRegistrationGroup`).
pub const AUTO_REGISTRATION_GROUP: &str = "istio.io/autoRegistrationGroup";
/// Annotation that puts a workload's traffic through the mesh's tunnel (HBONE) though it has no
/// enrollment label of its own (Istio's `annotation.AmbientRedirection`), when `enabled`.
pub const AMBIENT_REDIRECTION: &str = "ambient.istio.io/redirection";
/// Label the Deployment controller puts on a ReplicaSet's pods: the hash its name ends with.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Label Argo Rollouts puts on a ReplicaSet's pods, as [`POD_TEMPLATE_HASH`] for a Rollout.
pub const ROLLOUTS_POD_TEMPLATE_HASH: &str = "rollouts-pod-template-hash";
/// Label OpenShift puts on a DeploymentConfig's pods: the DeploymentConfig's name.
pub const DEPLOYMENT_CONFIG: &str = "deploymentconfig";
/// Where a workload's canonical service is read from, first found wins (Istio's
/// `CanonicalServiceName`).
pub const CANONICAL_NAME_LABELS: &[&str] = &[CANONICAL_NAME, "app.kubernetes.io/name", "app"];
/// Where a workload's canonical revision is read from, first found wins.
pub const CANONICAL_REVISION_LABELS: &[&str] =
    &[CANONICAL_REVISION, "app.kubernetes.io/version", "version"];

/// Label that opts a ServiceEntry out of automatic address allocation (`false`).
pub const ENABLE_AUTOALLOCATE_IP: &str = "networking.istio.io/enable-autoallocate-ip";

/// Annotation on a Service limiting the namespaces it is visible to (as `exportTo` does).
pub const EXPORT_TO: &str = "networking.istio.io/exportTo";
/// Annotation that makes an AuthorizationPolicy log instead of enforce.
pub const DRY_RUN: &str = "istio.io/dry-run";
/// Annotation Istio's injector puts on pods with a sidecar.
pub const SIDECAR_STATUS: &str = "sidecar.istio.io/status";
/// Annotation listing destination ports whose connections bypass capture.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// Annotation listing pod ports whose inbound connections bypass capture.
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// Annotation turning a pod's DNS capture off (`"false"`) or on (`"true"`); unset means on.
pub const DNS_CAPTURE: &str = "ambient.istio.io/dns-capture";
