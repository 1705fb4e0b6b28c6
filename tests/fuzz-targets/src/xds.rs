//! Pushes to the node agent and to the waypoint, as they come off the wire: a
//! `DeltaDiscoveryResponse`, applied by the proxy's own handler first as the full state of a new
//! connection, then again as a delta. A malformed or hostile push is refused with an error (a
//! NACK) and leaves what is in force exactly as it was.

use std::sync::Arc;

use node_agent::state::WorkloadStore;
use node_agent::xds::{AddressHandler, AuthorizationHandler};
use prost::Message;
use waypoint::ConfigStore;
use weft_proto::AUTHORIZATION_TYPE_URL;
use weft_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use weft_xds::{Handler, Update};

/// The two updates of `response`: full state, then delta.
fn updates(response: &DeltaDiscoveryResponse) -> impl Iterator<Item = Update> + '_ {
    [true, false].into_iter().map(|full_state| Update {
        added: response.resources.clone(),
        removed: response.removed_resources.clone(),
        full_state,
    })
}

/// `istio.workload.Address` or `istio.security.Authorization` resources (by the response's
/// type URL) through the agent's handlers into a workload store.
pub fn agent(wire: &[u8]) {
    let Ok(response) = DeltaDiscoveryResponse::decode(wire) else {
        return;
    };
    let store = WorkloadStore::new();
    let mut handler: Box<dyn Handler> = if response.type_url == AUTHORIZATION_TYPE_URL {
        Box::new(AuthorizationHandler::new(store.clone()))
    } else {
        Box::new(AddressHandler::new(store.clone()))
    };
    let dump = || serde_json::to_string(&store.dump()).expect("the dump serializes");
    for update in updates(&response) {
        let before = dump();
        if let Err(error) = handler.apply(update) {
            assert!(!error.is_empty());
            assert_eq!(before, dump(), "a refused push changed the store");
        }
    }
}

/// `WaypointConfig` resources through the waypoint's handler (decode, `model::from_proto`, the
/// store).
pub fn waypoint(wire: &[u8]) {
    let Ok(response) = DeltaDiscoveryResponse::decode(wire) else {
        return;
    };
    let store = ConfigStore::default();
    let mut handler = store.xds_handler();
    for update in updates(&response) {
        let before = store.snapshot();
        if let Err(error) = handler.apply(update) {
            assert!(!error.is_empty());
            assert!(
                Arc::ptr_eq(&before, &store.snapshot()),
                "a refused configuration replaced the one in force"
            );
        }
    }
}
