//! Translation: from the index to the resources each kind of proxy consumes. Pure functions over
//! an index snapshot; no I/O.

pub mod agent;

use prost::Name;
use weft_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

use crate::index::ConfigIndex;
use agent::MeshSettings;

/// Resources of one type: (name, body) pairs.
pub type TypeResources = Vec<(String, prost_types::Any)>;

fn any<M: Name>(message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// Everything the controller serves, by type URL: the whole translation of one index snapshot.
/// Every type is always listed (possibly empty), so a type whose last resource went away is
/// emptied. A new kind of proxy resource is one more entry here.
pub fn resources(index: &ConfigIndex, settings: &MeshSettings) -> Vec<(String, TypeResources)> {
    let addresses = agent::addresses(index, settings)
        .into_iter()
        .map(|(name, address)| (name, any(&address)))
        .collect();
    let authorizations = agent::authorizations(index, settings)
        .into_iter()
        .map(|(name, policy)| (name, any(&policy)))
        .collect();
    vec![
        (ADDRESS_TYPE_URL.to_owned(), addresses),
        (AUTHORIZATION_TYPE_URL.to_owned(), authorizations),
    ]
}
