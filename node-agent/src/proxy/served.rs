//! The pods this agent serves, as the connection handlers read them: each pod's network
//! namespace (where its sockets are made) and the acceptor of its HBONE port.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use weft_hbone::HboneAcceptor;

use crate::{ebpf::NetnsCookie, netns::PodNetns};

/// A pod the agent serves: its uid (the key into the workload store) and namespace handle.
#[derive(Debug)]
pub struct ServedPod {
    pub uid: String,
    /// Where the pod's sockets are created (the HBONE transport's socket factory).
    pub netns: PodNetns,
    /// Tells this pod's namespace apart from every other (all have their own 127.0.0.1).
    pub netns_cookie: NetnsCookie,
    /// Mutual TLS on the pod's HBONE port, with the pod's certificate (its server
    /// configuration rebuilt only when the certificate changes).
    pub(crate) acceptor: HboneAcceptor,
}

/// The registry of served pods; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ServedPods(Arc<RwLock<HashMap<String, Arc<ServedPod>, foldhash::fast::RandomState>>>);

impl ServedPods {
    pub fn get(&self, uid: &str) -> Option<Arc<ServedPod>> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .cloned()
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(uid)
    }

    pub(crate) fn insert(&self, pod: Arc<ServedPod>) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pod.uid.clone(), pod);
    }

    pub(crate) fn remove(&self, uid: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }
}
