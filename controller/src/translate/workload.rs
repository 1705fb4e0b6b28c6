//! Pods and Services to `istio.workload.Address`, following istiod's ambient index
//! (`pilot/pkg/serviceregistry/kube/controller/ambient/workloads.go`, `services.go`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use weft_proto::istio::workload::{
    Address, GatewayAddress, NetworkAddress, Port, PortList, Service as WorkloadService,
    TunnelProtocol, Workload, WorkloadStatus, WorkloadType, address, gateway_address,
};

use super::{
    GATEWAY_NAME_LABEL, HBONE_PORT, TranslateConfig, TranslateError, TranslateProblem, WaypointFor,
    WaypointRef, authorization, find_waypoint, ip_bytes, label, labels, meta_key, pod_enrolled,
    pod_healthy, pod_ips, pod_service_account, pod_terminated, requested_waypoint,
    resolve_target_port, selector_matches, service_selector, service_vips,
};
use crate::index::Snapshot;
use crate::model::ResourceKind;

/// istiod's workload uid for a pod: `<cluster>//Pod/<namespace>/<name>`. It is also the
/// resource name of the workload's Address.
pub fn pod_uid(config: &TranslateConfig, namespace: &str, name: &str) -> String {
    format!("{}//Pod/{namespace}/{name}", config.cluster_id)
}

/// Resource name of a service's Address: `<namespace>/<hostname>`.
pub fn service_resource_name(namespace: &str, hostname: &str) -> String {
    format!("{namespace}/{hostname}")
}

pub(super) fn addresses(
    snapshot: &Snapshot,
    config: &TranslateConfig,
    errors: &mut Vec<TranslateError>,
) -> BTreeMap<String, Address> {
    let mut out = BTreeMap::new();
    for service in snapshot.services() {
        match service_address(snapshot, config, service, errors) {
            Ok(svc) => {
                let name = service_resource_name(&svc.namespace, &svc.hostname);
                out.insert(
                    name,
                    Address {
                        r#type: Some(address::Type::Service(svc)),
                    },
                );
            }
            Err(problem) => errors.push(TranslateError::new(
                ResourceKind::Service,
                &service.metadata,
                problem,
            )),
        }
    }
    for pod in snapshot.pods() {
        if pod_terminated(pod) {
            continue;
        }
        match pod_workload(snapshot, config, pod, errors) {
            Ok(workload) => {
                out.insert(
                    workload.uid.clone(),
                    Address {
                        r#type: Some(address::Type::Workload(workload)),
                    },
                );
            }
            Err(problem) => errors.push(TranslateError::new(
                ResourceKind::Pod,
                &pod.metadata,
                problem,
            )),
        }
    }
    out
}

fn service_address(
    snapshot: &Snapshot,
    config: &TranslateConfig,
    service: &Service,
    errors: &mut Vec<TranslateError>,
) -> Result<WorkloadService, TranslateProblem> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let (namespace, name) = meta_key(&service.metadata);
    let hostname = config.service_hostname(namespace, name);
    let addresses = service_vips(service)?
        .into_iter()
        .map(|ip| NetworkAddress {
            network: String::new(),
            address: ip_bytes(ip),
        })
        .collect();
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|port| {
            let service_port = u32::try_from(port.port).ok()?;
            // Named target ports differ per pod; agents read them from each workload's map.
            let target_port = match &port.target_port {
                None => service_port,
                Some(IntOrString::Int(n)) => u32::try_from(*n).unwrap_or(0),
                Some(IntOrString::String(s)) => s.parse().unwrap_or(0),
            };
            Some(Port {
                service_port,
                target_port,
            })
        })
        .collect();
    let waypoint = match requested_waypoint(snapshot, &service.metadata) {
        None => None,
        Some(wref) => {
            resolve_waypoint(snapshot, config, &wref, Attach::Service).unwrap_or_else(|problem| {
                errors.push(TranslateError::new(
                    ResourceKind::Service,
                    &service.metadata,
                    problem,
                ));
                None
            })
        }
    };
    let subject_alt_names = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SERVICE_ACCOUNTS_ANNOTATION))
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|sa| !sa.is_empty())
                .map(|sa| config.spiffe_id(namespace, sa))
                .collect()
        })
        .unwrap_or_default();
    Ok(WorkloadService {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        hostname,
        addresses,
        ports,
        subject_alt_names,
        waypoint,
        ..Default::default()
    })
}

/// Istio's annotation listing the service accounts a service's endpoints run as; they become
/// the service's subject alternative names.
pub const SERVICE_ACCOUNTS_ANNOTATION: &str = "alpha.istio.io/kubernetes-serviceaccounts";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attach {
    Service,
    Workload,
}

/// The address of a waypoint as workloads and services carry it. `Ok(None)` when the waypoint
/// exists but does not take this kind of traffic (`istio.io/waypoint-for`).
pub(super) fn resolve_waypoint(
    snapshot: &Snapshot,
    config: &TranslateConfig,
    wref: &WaypointRef,
    attach: Attach,
) -> Result<Option<GatewayAddress>, TranslateProblem> {
    let Some(gateway) = find_waypoint(snapshot, &wref.namespace, &wref.name) else {
        return Err(TranslateProblem::UnknownWaypoint {
            namespace: wref.namespace.clone(),
            name: wref.name.clone(),
        });
    };
    let serves = WaypointFor::of(gateway);
    let accepted = match attach {
        Attach::Service => serves.serves_services(),
        Attach::Workload => serves.serves_workloads(),
    };
    if !accepted {
        return Ok(None);
    }
    let destination = match waypoint_ip(snapshot, wref) {
        Some(ip) => gateway_address::Destination::Address(NetworkAddress {
            network: String::new(),
            address: ip_bytes(ip),
        }),
        None => gateway_address::Destination::Hostname(
            weft_proto::istio::workload::NamespacedHostname {
                namespace: wref.namespace.clone(),
                hostname: config.service_hostname(&wref.namespace, &wref.name),
            },
        ),
    };
    Ok(Some(GatewayAddress {
        destination: Some(destination),
        hbone_mtls_port: HBONE_PORT,
    }))
}

/// The waypoint's address: the VIP of its Service (named after the Gateway, or labelled with
/// the gateway name), else the IP of its pod.
pub(super) fn waypoint_ip(snapshot: &Snapshot, wref: &WaypointRef) -> Option<std::net::IpAddr> {
    let belongs = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.namespace.as_deref() == Some(wref.namespace.as_str())
            && (label(meta, GATEWAY_NAME_LABEL) == Some(wref.name.as_str()))
    };
    let by_name = snapshot
        .services()
        .find(|s| meta_key(&s.metadata) == (wref.namespace.as_str(), wref.name.as_str()));
    let service = by_name.or_else(|| snapshot.services().find(|s| belongs(&s.metadata)));
    if let Some(ip) = service.and_then(|s| service_vips(s).ok()?.into_iter().next()) {
        return Some(ip);
    }
    snapshot
        .pods()
        .filter(|p| belongs(&p.metadata))
        .find_map(|p| pod_ips(p).ok()?.into_iter().next())
}

fn workload_name(pod: &Pod) -> String {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let Some(owner) = pod
        .metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.iter().find(|o| o.controller == Some(true)).or(o.first()))
    else {
        return name;
    };
    match owner.kind.as_str() {
        // Deployments own pods through a ReplicaSet named `<deployment>-<hash>`.
        "ReplicaSet" => owner
            .name
            .rsplit_once('-')
            .map_or(owner.name.clone(), |(deployment, _)| deployment.to_owned()),
        _ => owner.name.clone(),
    }
}

fn first_label(pod: &Pod, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| label(&pod.metadata, k))
        .map(str::to_owned)
}

fn pod_workload(
    snapshot: &Snapshot,
    config: &TranslateConfig,
    pod: &Pod,
    errors: &mut Vec<TranslateError>,
) -> Result<Workload, TranslateProblem> {
    let (namespace, name) = meta_key(&pod.metadata);
    let ips = pod_ips(pod)?;
    let enrolled = pod_enrolled(snapshot, pod);
    let pod_labels = labels(&pod.metadata);
    let workload_name = workload_name(pod);
    let canonical_name = first_label(
        pod,
        &[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ],
    )
    .unwrap_or_else(|| workload_name.clone());
    let canonical_revision = first_label(
        pod,
        &[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ],
    )
    .unwrap_or_else(|| "latest".to_owned());

    let mut services = BTreeMap::new();
    for service in snapshot.services() {
        if service.metadata.namespace.as_deref() != Some(namespace)
            || !selector_matches(&service_selector(service), &pod_labels)
        {
            continue;
        }
        let hostname = config.service_hostname(namespace, meta_key(&service.metadata).1);
        let ports = service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|port| {
                Some(Port {
                    service_port: u32::try_from(port.port).ok()?,
                    target_port: resolve_target_port(port, pod)?,
                })
            })
            .collect();
        services.insert(
            service_resource_name(namespace, &hostname),
            PortList { ports },
        );
    }

    let waypoint = match requested_waypoint(snapshot, &pod.metadata) {
        Some(wref) => {
            resolve_waypoint(snapshot, config, &wref, Attach::Workload).unwrap_or_else(|problem| {
                errors.push(TranslateError::new(
                    ResourceKind::Pod,
                    &pod.metadata,
                    problem,
                ));
                None
            })
        }
        None => None,
    };

    let authorization_policies =
        authorization::policies_selecting(snapshot, config, namespace, &pod_labels);

    Ok(Workload {
        uid: pod_uid(config, namespace, name),
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        addresses: ips.into_iter().map(ip_bytes).collect(),
        tunnel_protocol: if enrolled {
            TunnelProtocol::Hbone
        } else {
            TunnelProtocol::None
        } as i32,
        trust_domain: config.trust_domain.clone(),
        service_account: pod_service_account(pod).to_owned(),
        waypoint,
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        canonical_name,
        canonical_revision,
        workload_type: WorkloadType::Pod as i32,
        workload_name,
        services: services.into_iter().collect(),
        authorization_policies,
        status: if pod_healthy(pod) {
            WorkloadStatus::Healthy
        } else {
            WorkloadStatus::Unhealthy
        } as i32,
        cluster_id: config.cluster_id.clone(),
        ..Default::default()
    })
}
