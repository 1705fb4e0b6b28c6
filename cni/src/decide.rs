//! Whether a pod belongs in the mesh, decided as Istio's CNI decides it, from the pod and its
//! namespace. Pure: the plugin and the node daemon's watcher both ask here.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

// On a pod, a `DATAPLANE_MODE` other than `ambient` (`none`) keeps it out whatever its namespace
// says.
pub use weft_istio::labels::{
    DATAPLANE_MODE, DATAPLANE_MODE_AMBIENT, DNS_CAPTURE, EXCLUDE_INBOUND_PORTS,
    EXCLUDE_OUTBOUND_PORTS, SIDECAR_STATUS,
};

/// The sidecar container's name.
pub const SIDECAR_CONTAINER: &str = "istio-proxy";

/// The verdict on one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// In the mesh, with the ports it keeps out of capture.
    Enroll(Exclusions),
    /// Not in the mesh, and why (logged).
    Skip(&'static str),
}

/// What a pod keeps out of capture, from its annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusions {
    pub outbound_ports: Vec<u16>,
    pub inbound_ports: Vec<u16>,
    /// Whether its DNS is captured (`ambient.istio.io/dns-capture`).
    pub dns_capture: bool,
}

impl Default for Exclusions {
    fn default() -> Self {
        Self {
            outbound_ports: Vec::new(),
            inbound_ports: Vec::new(),
            dns_capture: true,
        }
    }
}

/// Decides for `pod` in a namespace with `namespace_labels`. `excluded_namespaces` are never in
/// the mesh (the mesh's own components, `kube-system`).
pub fn decide(
    pod: &Pod,
    namespace_labels: &BTreeMap<String, String>,
    excluded_namespaces: &[String],
) -> Result<Decision, String> {
    let meta = &pod.metadata;
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    if excluded_namespaces.iter().any(|n| n == namespace) {
        return Ok(Decision::Skip("its namespace is excluded"));
    }
    let pod_mode = meta.labels.as_ref().and_then(|l| l.get(DATAPLANE_MODE));
    let namespace_mode = namespace_labels.get(DATAPLANE_MODE);
    match (
        pod_mode.map(String::as_str),
        namespace_mode.map(String::as_str),
    ) {
        (Some(DATAPLANE_MODE_AMBIENT), _) | (None, Some(DATAPLANE_MODE_AMBIENT)) => {}
        (Some(_), _) => return Ok(Decision::Skip("the pod opts out (istio.io/dataplane-mode)")),
        (None, _) => {
            return Ok(Decision::Skip(
                "neither the pod nor its namespace is ambient",
            ));
        }
    }
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return Ok(Decision::Skip(
            "host-network pods share the node's network namespace",
        ));
    }
    let annotations = meta.annotations.clone().unwrap_or_default();
    let sidecar_container = spec.is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == SIDECAR_CONTAINER)
    });
    if annotations.contains_key(SIDECAR_STATUS) || sidecar_container {
        return Ok(Decision::Skip("the pod has an Istio sidecar"));
    }
    Ok(Decision::Enroll(Exclusions {
        outbound_ports: ports(&annotations, EXCLUDE_OUTBOUND_PORTS)?,
        inbound_ports: ports(&annotations, EXCLUDE_INBOUND_PORTS)?,
        // Istio's CNI reads it with Go's `strconv.ParseBool`; a value it cannot parse counts
        // as absent (the default, captured), as Istio's `CheckBooleanAnnotation` has it.
        dns_capture: annotations
            .get(DNS_CAPTURE)
            .and_then(|value| go_bool(value))
            .unwrap_or(true),
    }))
}

/// A boolean as Go's `strconv.ParseBool` reads it.
fn go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A comma-separated port list annotation; a bad entry is an error naming the annotation (the
/// pod must not join the mesh with exclusions other than those it asked for).
fn ports(annotations: &BTreeMap<String, String>, key: &str) -> Result<Vec<u16>, String> {
    let Some(text) = annotations.get(key) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|&port| port != 0)
                .ok_or_else(|| format!("annotation {key}: {p:?} is not a port (1-65535)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Pod {
        let map = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("shop".into()),
                labels: map(labels),
                annotations: map(annotations),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn istio_rules() {
        let ambient_ns: BTreeMap<String, String> = [(
            DATAPLANE_MODE.to_string(),
            DATAPLANE_MODE_AMBIENT.to_string(),
        )]
        .into();
        let plain_ns = BTreeMap::new();
        let host_network = {
            let mut p = pod(&[], &[]);
            p.spec.as_mut().unwrap().host_network = Some(true);
            p
        };
        let sidecar_container = {
            let mut p = pod(&[], &[]);
            p.spec.as_mut().unwrap().containers.push(Container {
                name: SIDECAR_CONTAINER.into(),
                ..Container::default()
            });
            p
        };
        let enroll = Decision::Enroll(Exclusions::default());
        let cases: Vec<(&str, Pod, &BTreeMap<String, String>, Decision)> = vec![
            (
                "ambient namespace",
                pod(&[], &[]),
                &ambient_ns,
                enroll.clone(),
            ),
            (
                "ambient pod in a plain namespace",
                pod(&[(DATAPLANE_MODE, DATAPLANE_MODE_AMBIENT)], &[]),
                &plain_ns,
                enroll.clone(),
            ),
            (
                "plain pod, plain namespace",
                pod(&[], &[]),
                &plain_ns,
                Decision::Skip("neither the pod nor its namespace is ambient"),
            ),
            (
                "opted out",
                pod(&[(DATAPLANE_MODE, "none")], &[]),
                &ambient_ns,
                Decision::Skip("the pod opts out (istio.io/dataplane-mode)"),
            ),
            (
                "host network",
                host_network,
                &ambient_ns,
                Decision::Skip("host-network pods share the node's network namespace"),
            ),
            (
                "sidecar annotation",
                pod(&[], &[(SIDECAR_STATUS, "{}")]),
                &ambient_ns,
                Decision::Skip("the pod has an Istio sidecar"),
            ),
            (
                "sidecar container",
                sidecar_container,
                &ambient_ns,
                Decision::Skip("the pod has an Istio sidecar"),
            ),
            (
                "exclusions",
                pod(
                    &[],
                    &[
                        (EXCLUDE_OUTBOUND_PORTS, "5432, 6379"),
                        (EXCLUDE_INBOUND_PORTS, "9000"),
                    ],
                ),
                &ambient_ns,
                Decision::Enroll(Exclusions {
                    outbound_ports: vec![5432, 6379],
                    inbound_ports: vec![9000],
                    dns_capture: true,
                }),
            ),
            (
                "dns capture off (Istio's annotation, read as Go's ParseBool)",
                pod(&[], &[(DNS_CAPTURE, "False")]),
                &ambient_ns,
                Decision::Enroll(Exclusions {
                    dns_capture: false,
                    ..Exclusions::default()
                }),
            ),
            (
                "dns capture on explicitly",
                pod(&[], &[(DNS_CAPTURE, "true")]),
                &ambient_ns,
                Decision::Enroll(Exclusions::default()),
            ),
            (
                "dns capture annotation Istio cannot parse: as if absent, captured",
                pod(&[], &[(DNS_CAPTURE, "no")]),
                &ambient_ns,
                Decision::Enroll(Exclusions::default()),
            ),
        ];
        for (name, pod, labels, expected) in cases {
            assert_eq!(decide(&pod, labels, &[]).unwrap(), expected, "{name}");
        }
        assert_eq!(
            decide(&pod(&[], &[]), &ambient_ns, &["shop".to_string()]).unwrap(),
            Decision::Skip("its namespace is excluded")
        );
        let error = decide(
            &pod(&[], &[(EXCLUDE_INBOUND_PORTS, "9000,http")]),
            &ambient_ns,
            &[],
        )
        .unwrap_err();
        assert_eq!(
            error,
            "annotation traffic.sidecar.istio.io/excludeInboundPorts: \"http\" is not a port (1-65535)"
        );
    }
}
