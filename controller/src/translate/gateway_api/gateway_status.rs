//! The status of ingress Gateways (class `istio`), as Istio's gateway controller writes it:
//! the Gateway's `Accepted` and `Programmed` (with the addresses of its Service,
//! `<name>-istio`, as Istio's deployment controller names it), and per listener `Accepted`,
//! `Programmed`, `ResolvedRefs` and `Conflicted`, its `supportedKinds` and `attachedRoutes`.

use serde_json::{Value, json};

use super::ingress::{IngressGateway, Listener, ingress_gateways};
use super::status::{condition, conditions_json};
use super::{Condition, GATEWAY_GROUP, all_routes};
use crate::index::ConfigIndex;
use crate::translate::MeshSettings;
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
        listeners: gateway.listeners.iter().map(listener_status).collect(),
    }
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
    let programmed = if listener.served() {
        fine("Programmed", "Programmed")
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
