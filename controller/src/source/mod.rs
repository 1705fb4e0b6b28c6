//! Where configuration comes from: the API server ([`kube`]) or a directory of YAML
//! ([`directory`]). Both feed the one [`LiveIndex`](crate::index::LiveIndex).

pub mod directory;
pub mod kube;
