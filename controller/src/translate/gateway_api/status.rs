//! The status each route's parents get, as the Gateway API defines it and Istio reports it:
//! for the mesh (controller `istio.io/mesh-controller`, Service and waypoint parents) and for
//! ingress Gateways (`istio.io/gateway-controller`): `Accepted` (the parent exists and takes
//! the route) and `ResolvedRefs` (every backend resolves); and the status of the ingress
//! Gateways themselves (`gateway_status`). Pure functions of the index.

use serde::Serialize;
use serde_json::{Value, json};

use super::ingress::{self, GATEWAY_CONTROLLER};
use super::{BackendProblem, MeshRoute, Parent, ParentRef, RouteKind, all_routes, backend, parent};
use crate::index::ConfigIndex;
use crate::translate::MeshSettings;
use crate::translate::resolve::{self, name_of, service_waypoint};

/// The controller name Istio writes for mesh (Service) parents.
pub const MESH_CONTROLLER: &str = "istio.io/mesh-controller";

/// One condition of one parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    pub condition_type: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What one parent says of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentStatus {
    pub parent_ref: ParentRef,
    /// `istio.io/mesh-controller` or `istio.io/gateway-controller`.
    pub controller: &'static str,
    pub conditions: Vec<Condition>,
}

/// A route's status: its parents that are ours (Services and waypoints), in `parentRefs` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteStatus {
    pub kind: RouteKind,
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub parents: Vec<ParentStatus>,
}

impl RouteStatus {
    /// The `status.parents` entries of this controller, in the API's form. `now` is the
    /// `lastTransitionTime` of conditions that `previous` (the object's current status) does
    /// not already hold with the same status.
    pub fn parents_json(&self, previous: &Value, now: &str) -> Vec<Value> {
        self.parents
            .iter()
            .map(|parent| {
                let previous_conditions = previous_parent(previous, parent);
                json!({
                    "parentRef": parent.parent_ref,
                    "controllerName": parent.controller,
                    "conditions": conditions_json(&parent.conditions, previous_conditions, self.generation, now),
                })
            })
            .collect()
    }
}

/// Conditions in the API's form; `now` is the `lastTransitionTime` of those that `previous`
/// does not already hold with the same status.
pub(super) fn conditions_json(
    conditions: &[Condition],
    previous: Option<&Vec<Value>>,
    generation: Option<i64>,
    now: &str,
) -> Vec<Value> {
    conditions
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let since = previous
                .and_then(|p| {
                    p.iter().find(|old| {
                        old.get("type").and_then(Value::as_str) == Some(c.condition_type)
                    })
                })
                .filter(|old| old.get("status").and_then(Value::as_str) == Some(status))
                .and_then(|old| old.get("lastTransitionTime").and_then(Value::as_str));
            json!({
                "type": c.condition_type,
                "status": status,
                "reason": c.reason,
                "message": c.message,
                "observedGeneration": generation.unwrap_or(0),
                "lastTransitionTime": since.unwrap_or(now),
            })
        })
        .collect()
}

/// The conditions `previous` (a route's current status) holds for `parent`.
fn previous_parent<'v>(previous: &'v Value, parent: &ParentStatus) -> Option<&'v Vec<Value>> {
    previous
        .get("parents")?
        .as_array()?
        .iter()
        .find(|p| {
            p.get("controllerName").and_then(Value::as_str) == Some(parent.controller)
                && p.get("parentRef")
                    .and_then(|r| serde_json::from_value::<ParentRef>(r.clone()).ok())
                    .as_ref()
                    == Some(&parent.parent_ref)
        })?
        .get("conditions")?
        .as_array()
}

pub(super) fn condition(
    condition_type: &'static str,
    status: bool,
    reason: &'static str,
    message: impl Into<String>,
) -> Condition {
    Condition {
        condition_type,
        status,
        reason,
        message: message.into(),
    }
}

/// The first backend of the route (its rules' backends, then mirrors) that does not resolve.
fn first_backend_problem(
    index: &ConfigIndex,
    settings: &MeshSettings,
    route: &MeshRoute<'_>,
) -> Option<BackendProblem> {
    route.spec.rules.iter().find_map(|rule| {
        let mirrors = rule
            .filters
            .iter()
            .filter_map(|f| f.request_mirror.as_ref())
            .map(|m| &m.backend_ref);
        rule.backend_refs
            .iter()
            .chain(mirrors)
            .find_map(|b| backend(index, settings, route.kind, route.namespace(), b).err())
    })
}

/// The status of every route that names a Service, a waypoint or an ingress Gateway among its
/// parents.
pub fn route_statuses(index: &ConfigIndex, settings: &MeshSettings) -> Vec<RouteStatus> {
    all_routes(index)
        .iter()
        .filter_map(|route| {
            let resolved = match first_backend_problem(index, settings, route) {
                None => condition("ResolvedRefs", true, "ResolvedRefs", "all references resolved"),
                Some(problem) => {
                    condition("ResolvedRefs", false, problem.reason(), problem.message())
                }
            };
            let parents: Vec<ParentStatus> = route
                .spec
                .parent_refs
                .iter()
                .filter_map(|parent_ref| {
                    let mut controller = MESH_CONTROLLER;
                    let accepted = match parent(index, settings, route.namespace(), parent_ref) {
                        Parent::Other => return None,
                        // TLSRoutes are for ingress Gateways only.
                        _ if route.kind == RouteKind::Tls
                            && !parent_ref.is_gateway() => return None,
                        Parent::Ingress(gateway) => {
                            controller = GATEWAY_CONTROLLER;
                            let listeners = ingress::resolve_gateway(index, gateway, &[]);
                            match ingress::attach(index, &listeners, route, parent_ref) {
                                Ok(_) => condition("Accepted", true, "Accepted", "Route was valid"),
                                Err(refused) => {
                                    condition("Accepted", false, refused.reason, refused.message)
                                }
                            }
                        }
                        Parent::Service { service, .. } => {
                            match service_waypoint(index, service) {
                                Some(waypoint) => condition(
                                    "Accepted",
                                    true,
                                    "Accepted",
                                    format!("applied at waypoint {waypoint}"),
                                ),
                                None => condition(
                                    "Accepted",
                                    true,
                                    "Accepted",
                                    format!(
                                        "Service {}/{} uses no waypoint (istio.io/use-waypoint): the route applies nowhere until it does",
                                        resolve::namespace_of(&service.metadata),
                                        name_of(&service.metadata),
                                    ),
                                ),
                            }
                        }
                        Parent::MissingService { namespace, name } => condition(
                            "Accepted",
                            false,
                            "NoMatchingParent",
                            format!("parent Service {namespace}/{name} not found"),
                        ),
                        Parent::Waypoint => condition(
                            "Accepted",
                            false,
                            "NotAllowedByListeners",
                            "a waypoint Gateway takes no routes (as in Istio): attach the route to a Service the waypoint serves",
                        ),
                    };
                    Some(ParentStatus {
                        parent_ref: parent_ref.clone(),
                        controller,
                        conditions: vec![accepted, resolved.clone()],
                    })
                })
                .collect();
            (!parents.is_empty()).then(|| RouteStatus {
                kind: route.kind,
                namespace: route.namespace().to_owned(),
                name: name_of(route.meta).to_owned(),
                generation: route.meta.generation,
                parents,
            })
        })
        .collect()
}
