//! The HBONE connections the agent's pods' outbound connections ride: one pool per worker,
//! keyed by source pod, the two identities and the gateway; each connection dialed from a
//! socket inside the source pod's namespace (so it carries the pod's address), presenting the
//! source's certificate and accepting only the expected destination.

use std::{io, net::SocketAddr};

use weft_hbone::{ClientTls, Connector, HboneDialer, Pool, PoolConfig};
use weft_identity::SpiffeId;

use super::served::ServedPods;

/// HBONE connections are shared per source pod (its address), the two identities and the
/// destination gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub source_uid: String,
    pub source_identity: SpiffeId,
    pub destination_identity: SpiffeId,
    pub gateway: SocketAddr,
}

pub(crate) type HbonePool = Pool<PoolKey, PodDialer>;

pub(crate) fn new_pool(dialer: HboneDialer, pods: ServedPods) -> HbonePool {
    Pool::new(PodDialer { dialer, pods }, PoolConfig::default())
}

/// Dials from inside the source pod's namespace.
pub(crate) struct PodDialer {
    dialer: HboneDialer,
    pods: ServedPods,
}

impl Connector<PoolKey> for PodDialer {
    type Io = ClientTls;

    async fn connect(&self, key: &PoolKey) -> io::Result<ClientTls> {
        let pod = self.pods.get(&key.source_uid).ok_or_else(|| {
            io::Error::other(format!("source pod {} is no longer served", key.source_uid))
        })?;
        Ok(self
            .dialer
            .dial(
                &pod.netns,
                key.gateway,
                &key.source_identity,
                &key.destination_identity,
            )
            .await?)
    }
}
