//! The watch of the `istio` ConfigMap as the mesh configuration sees it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weft_proto::mesh::OutboundTrafficPolicy;

use super::*;

fn config_map(mesh: Option<&str>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            namespace: Some("istio-system".to_owned()),
            name: Some(CONFIG_MAP.to_owned()),
            ..Default::default()
        },
        data: Some(
            mesh.map(|m| (MESH_KEY.to_owned(), m.to_owned()))
                .into_iter()
                .chain([("meshNetworks".to_owned(), "networks: {}".to_owned())])
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

const REGISTRY_ONLY: &str = "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n";

#[test]
fn the_config_map_replaces_the_configuration_and_a_bad_one_keeps_the_last_good() {
    let mesh = MeshConfigWatch::default();
    let mut keeper = MeshConfigMap::new("istio-system");
    let mode = || mesh.current().outbound_traffic_policy();

    // A list decides once it ends.
    assert!(keeper.handle(Event::Init, &mesh).is_none());
    assert!(
        keeper
            .handle(Event::InitApply(config_map(Some(REGISTRY_ONLY))), &mesh)
            .is_none()
    );
    assert_eq!(mode(), OutboundTrafficPolicy::AllowAny);
    assert_eq!(keeper.handle(Event::InitDone, &mesh), Some(Ok(true)));
    assert_eq!(mode(), OutboundTrafficPolicy::RegistryOnly);

    // The same document again changes nothing.
    let mut changes = mesh.subscribe();
    changes.borrow_and_update();
    let same = Event::Apply(config_map(Some(REGISTRY_ONLY)));
    assert_eq!(keeper.handle(same, &mesh), Some(Ok(false)));
    assert!(!changes.has_changed().unwrap());

    // A bad one: refused, naming the ConfigMap, its key and the field; the last good stays.
    let bad = Event::Apply(config_map(Some(
        "outboundTrafficPolicy:\n  mode: registry_only\n",
    )));
    let error = keeper.handle(bad, &mesh).unwrap().unwrap_err().to_string();
    assert!(
        error.starts_with(
            "ConfigMap istio-system/istio (key mesh): outboundTrafficPolicy.mode: unknown value"
        ),
        "{error}"
    );
    assert_eq!(mode(), OutboundTrafficPolicy::RegistryOnly);
    assert!(!changes.has_changed().unwrap());

    // No `mesh` key, or no ConfigMap: Istio's defaults, as istiod has them.
    let allow_any = Event::Apply(config_map(Some(
        "outboundTrafficPolicy:\n  mode: ALLOW_ANY\n",
    )));
    assert_eq!(keeper.handle(allow_any, &mesh), Some(Ok(true)));
    assert_eq!(mode(), OutboundTrafficPolicy::AllowAny);
    let registry_only = Event::Apply(config_map(Some(REGISTRY_ONLY)));
    assert_eq!(keeper.handle(registry_only, &mesh), Some(Ok(true)));
    assert_eq!(
        keeper.handle(Event::Apply(config_map(None)), &mesh),
        Some(Ok(true))
    );
    assert_eq!(mode(), OutboundTrafficPolicy::AllowAny);
    let registry_only = Event::Apply(config_map(Some(REGISTRY_ONLY)));
    assert_eq!(keeper.handle(registry_only, &mesh), Some(Ok(true)));
    let deleted = Event::Delete(config_map(Some(REGISTRY_ONLY)));
    assert_eq!(keeper.handle(deleted, &mesh), Some(Ok(true)));
    assert_eq!(mode(), OutboundTrafficPolicy::AllowAny);

    // A relist that finds no ConfigMap is the defaults too.
    let registry_only = Event::Apply(config_map(Some(REGISTRY_ONLY)));
    assert_eq!(keeper.handle(registry_only, &mesh), Some(Ok(true)));
    assert!(keeper.handle(Event::Init, &mesh).is_none());
    assert_eq!(keeper.handle(Event::InitDone, &mesh), Some(Ok(true)));
    assert_eq!(mode(), OutboundTrafficPolicy::AllowAny);
}
