//! YAML through what `controller validate` and the configuration directory do with it.

use std::path::Path;

use controller::{analysis, index::ConfigIndex, loader, translate, validation};

/// Decode, validate by Istio's rules, index, analyze, translate. What the controller accepts
/// and pushes must then be accepted by the proxies that receive it: a configuration the
/// controller validated is never NACKed by an agent or a waypoint.
pub fn yaml(text: &[u8]) {
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let report = loader::load_str(Path::new("fuzz.yaml"), text);
    for loaded in &report.resources {
        let _ = validation::validate(&loaded.resource);
    }
    let (index, _rejections) = ConfigIndex::from_report(report, None);
    let settings = translate::MeshSettings::default();
    let _ = analysis::analyze(&index, &settings);
    let translation = translate::translate(&index, &settings);
    for (name, address) in translation.addresses {
        if let Err(error) = node_agent::state::AddressResource::try_from(address) {
            panic!("the agent refuses address {name} the controller pushes: {error}");
        }
    }
    for (name, policy) in translation.authorizations {
        if let Err(error) = node_agent::state::authorization_from_proto(policy) {
            panic!("the agent refuses policy {name} the controller pushes: {error}");
        }
    }
    for (name, config) in translation.waypoints {
        if let Err(error) = waypoint::WaypointConfig::try_from(config) {
            panic!("the waypoint refuses the configuration {name} the controller pushes: {error}");
        }
    }
}
