//! The status of ingress Gateways (class `istio`), as Istio's gateway controller writes it:
//! the Gateway's `Accepted` and `Programmed` (with the addresses of its Service,
//! `<name>-istio`, as Istio's deployment controller names it), and per listener `Accepted`,
//! `Programmed`, `ResolvedRefs` and `Conflicted`, its `supportedKinds` and `attachedRoutes`
//! (a terminating listener whose Secret is missing or unusable is `ResolvedRefs`
//! `InvalidCertificateRef` and not `Programmed`, as Istio checks the Secret); and the
//! `Accepted` condition of the GatewayClasses Istio's controllers handle.

use serde_json::{Value, json};

use super::ingress::{
    GATEWAY_CONTROLLER, IngressGateway, Listener, ListenerProblem, ListenerTls, ingress_gateways,
};
use super::status::MESH_CONTROLLER;
use super::status::{condition, conditions_json};
use super::{Condition, GATEWAY_GROUP, all_routes};
use crate::index::ConfigIndex;
use crate::translate::MeshSettings;
use crate::translate::credentials::listener_secret_problem;
use crate::translate::resolve::{self, name_of, namespace_of};

/// What one listener says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerStatus {
    pub name: String,
    pub attached_routes: i32,
    pub supported_kinds: Vec<&'static str>,
    pub conditions: Vec<Condition>,
}

/// One ingress Gateway's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayStatus {
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    /// `(type, value)`: `IPAddress` or `Hostname`.
    pub addresses: Vec<(&'static str, String)>,
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
}

impl GatewayStatus {
    /// The `status` object in the API's form; conditions that `previous` (the Gateway's
    /// current status) already holds with the same status keep their transition time.
    pub fn to_json(&self, previous: &Value, now: &str) -> Value {
        let conditions = |value: Option<&Value>, own: &[Condition]| {
            conditions_json(
                own,
                value
                    .and_then(|v| v.get("conditions"))
                    .and_then(Value::as_array),
                self.generation,
                now,
            )
        };
        let listeners: Vec<Value> = self
            .listeners
            .iter()
            .map(|l| {
                let old = previous
                    .get("listeners")
                    .and_then(Value::as_array)
                    .and_then(|all| {
                        all.iter()
                            .find(|o| o.get("name").and_then(Value::as_str) == Some(&l.name))
                    });
                json!({
                    "name": l.name,
                    "attachedRoutes": l.attached_routes,
                    "supportedKinds": l.supported_kinds.iter()
                        .map(|k| json!({"group": GATEWAY_GROUP, "kind": k}))
                        .collect::<Vec<_>>(),
                    "conditions": conditions(old, &l.conditions),
                })
            })
            .collect();
        json!({
            "addresses": self.addresses.iter()
                .map(|(t, v)| json!({"type": t, "value": v}))
                .collect::<Vec<_>>(),
            "conditions": conditions(Some(previous), &self.conditions),
            "listeners": listeners,
        })
    }
}

/// The status of every ingress Gateway.
pub fn gateway_statuses(index: &ConfigIndex, settings: &MeshSettings) -> Vec<GatewayStatus> {
    let routes = all_routes(index);
    ingress_gateways(index, &routes)
        .iter()
        .map(|gateway| gateway_status(index, settings, gateway))
        .collect()
}

fn gateway_status(
    index: &ConfigIndex,
    settings: &MeshSettings,
    gateway: &IngressGateway<'_>,
) -> GatewayStatus {
    let namespace = namespace_of(gateway.meta());
    let name = name_of(gateway.meta());
    let service_name = format!("{name}-istio");
    let service = index.services.get(&format!("{namespace}/{service_name}"));
    let mut addresses: Vec<(&'static str, String)> = Vec::new();
    let programmed = match service {
        Some(service) => {
            let ingress = service
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref());
            for entry in ingress.into_iter().flatten() {
                if let Some(ip) = &entry.ip {
                    addresses.push(("IPAddress", ip.clone()));
                } else if let Some(host) = &entry.hostname {
                    addresses.push(("Hostname", host.clone()));
                }
            }
            let hostname = resolve::hostname(service, settings);
            if addresses.is_empty() {
                addresses.push(("Hostname", hostname.clone()));
            }
            condition(
                "Programmed",
                true,
                "Programmed",
                format!("Resource programmed, assigned to service(s) {hostname}"),
            )
        }
        None => condition(
            "Programmed",
            false,
            "AddressNotAssigned",
            format!(
                "Failed to assign to any requested addresses: Service {namespace}/{service_name} not found"
            ),
        ),
    };
    GatewayStatus {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        generation: gateway.meta().generation,
        addresses,
        conditions: vec![
            condition("Accepted", true, "Accepted", "Resource accepted"),
            programmed,
        ],
        listeners: gateway
            .listeners
            .iter()
            .zip(&gateway.gateway.spec.listeners)
            .map(
                |(listener, spec)| match certificate_problem(index, listener, spec) {
                    Some(problem) => {
                        let mut listener = listener.clone();
                        listener.problems.push(problem);
                        listener_status(&listener)
                    }
                    None => listener_status(listener),
                },
            )
            .collect(),
    }
}

/// Why a terminating listener whose reference resolved cannot use the Secret it names, as
/// Istio reports it (`InvalidCertificateRef`, naming the reference as
/// `group/kind/name.namespace` and the reason). The proxy refuses TLS on such a listener: the
/// controller does not deliver the credential, or the proxy cannot build it.
fn certificate_problem(
    index: &ConfigIndex,
    listener: &Listener<'_>,
    spec: &crate::model::gateway_api::Listener,
) -> Option<ListenerProblem> {
    let ListenerTls::Terminate {
        secret: Some((namespace, name)),
    } = &listener.tls
    else {
        return None;
    };
    let reason = listener_secret_problem(index, namespace, name)?;
    let reference = spec
        .tls
        .as_ref()
        .and_then(|t| t.certificate_refs.as_ref())
        .and_then(|refs| refs.first())
        .map(|r| {
            format!(
                "{}/{}/{}.{}",
                r.group.as_deref().unwrap_or_default(),
                r.kind.as_deref().unwrap_or_default(),
                r.name,
                r.namespace.as_deref().unwrap_or_default()
            )
        })
        .unwrap_or_default();
    Some(ListenerProblem {
        condition_type: "ResolvedRefs",
        reason: "InvalidCertificateRef",
        message: format!("invalid certificate reference {reference}, {reason}"),
    })
}

/// One GatewayClass's status: `Accepted`, as Istio writes it for the classes its controllers
/// handle (`istio.io/gateway-controller`, and `istio.io/mesh-controller` for waypoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayClassStatus {
    pub name: String,
    pub generation: Option<i64>,
    pub conditions: Vec<Condition>,
}

impl GatewayClassStatus {
    /// The `status` object in the API's form (`previous`: the class's current status).
    pub fn to_json(&self, previous: &Value, now: &str) -> Value {
        json!({
            "conditions": conditions_json(
                &self.conditions,
                previous.get("conditions").and_then(Value::as_array),
                self.generation,
                now,
            ),
        })
    }
}

/// The status of every GatewayClass whose `controllerName` is one of Istio's.
pub fn gateway_class_statuses(index: &ConfigIndex) -> Vec<GatewayClassStatus> {
    index
        .gateway_classes
        .values()
        .filter(|class| {
            [GATEWAY_CONTROLLER, MESH_CONTROLLER].contains(&class.spec.controller_name.as_str())
        })
        .map(|class| GatewayClassStatus {
            name: name_of(&class.metadata).to_owned(),
            generation: class.metadata.generation,
            conditions: vec![condition(
                "Accepted",
                true,
                "Accepted",
                "Handled by Istio controller",
            )],
        })
        .collect()
}

fn listener_status(listener: &Listener<'_>) -> ListenerStatus {
    let problem = |kind: &str| listener.problems.iter().find(|p| p.condition_type == kind);
    let fine =
        |kind: &'static str, reason: &'static str| condition(kind, true, reason, "No errors found");
    let accepted = match problem("Accepted") {
        Some(p) => condition("Accepted", false, p.reason, p.message.clone()),
        None => fine("Accepted", "Accepted"),
    };
    let resolved = match problem("ResolvedRefs") {
        Some(p) => condition("ResolvedRefs", false, p.reason, p.message.clone()),
        None => fine("ResolvedRefs", "ResolvedRefs"),
    };
    let conflicted = if listener.conflicted {
        condition(
            "Conflicted",
            true,
            "ProtocolConflict",
            format!(
                "an earlier listener holds port {} with a protocol or hostname this one cannot share; it is not served",
                listener.port
            ),
        )
    } else {
        condition("Conflicted", false, "NoConflicts", "No errors found")
    };
    let bad_tls = listener
        .problems
        .iter()
        .any(|p| matches!(p.reason, "InvalidCertificateRef" | "RefNotPermitted"));
    let programmed = if listener.served() {
        fine("Programmed", "Programmed")
    } else if bad_tls {
        // Istio's words; the proxy refuses TLS on this listener, the others keep serving.
        condition("Programmed", false, "Invalid", "Bad TLS configuration")
    } else {
        condition(
            "Programmed",
            false,
            "Invalid",
            "the listener is not served: see its other conditions",
        )
    };
    ListenerStatus {
        name: listener.name.to_owned(),
        attached_routes: i32::try_from(listener.routes.len()).unwrap_or(i32::MAX),
        supported_kinds: listener.kinds.iter().map(|k| k.name()).collect(),
        conditions: vec![accepted, programmed, resolved, conflicted],
    }
}
