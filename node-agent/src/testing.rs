//! Fakes for tests of the agent and of what is built on it: the certificate manager signing with
//! an in-process CA, and an original-destination table filled by the test.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use weft_identity::CertificateAuthority;
use weft_proxy_core::certificates::{CertificateManager, LocalCa};

use crate::ebpf::{NetnsCookie, OriginalDst, RedirectionError};

/// Certificates from an in-process CA, through the manager the agent runs.
pub type LocalCertificates = CertificateManager<LocalCa>;

/// A certificate manager that has `ca` sign in process (certificates of an hour).
pub fn local_certificates(ca: Arc<CertificateAuthority>) -> LocalCertificates {
    CertificateManager::new(LocalCa(ca), Duration::from_secs(3600), None)
}

/// Original destinations set by the test: every connection accepted on the outbound listener
/// of the pod whose namespace has cookie `netns` gets the destination set for it.
#[derive(Default)]
pub struct FixedOriginalDestinations {
    by_netns: Mutex<HashMap<NetnsCookie, SocketAddr>>,
}

impl FixedOriginalDestinations {
    pub fn set(&self, netns: NetnsCookie, destination: SocketAddr) {
        self.by_netns.lock().unwrap().insert(netns, destination);
    }
}

impl OriginalDst for FixedOriginalDestinations {
    fn take_original_dst(
        &self,
        netns: NetnsCookie,
        _peer: SocketAddr,
    ) -> Result<Option<SocketAddr>, RedirectionError> {
        Ok(self.by_netns.lock().unwrap().get(&netns).copied())
    }
}

/// A meshed workload as tests declare it: uid `uid-<name>`, labels-derived names equal to
/// `name`, revision `v1`, healthy, no services.
pub fn workload(
    name: &str,
    namespace: &str,
    service_account: &str,
    node: &str,
    address: std::net::IpAddr,
    tunnel: crate::state::TunnelProtocol,
) -> crate::state::Workload {
    crate::state::Workload {
        uid: format!("uid-{name}"),
        name: name.into(),
        namespace: namespace.into(),
        addresses: vec![address],
        trust_domain: "cluster.local".into(),
        service_account: service_account.into(),
        node: node.into(),
        tunnel,
        waypoint: None,
        canonical_name: name.into(),
        canonical_revision: "v1".into(),
        workload_name: name.into(),
        cluster_id: "Kubernetes".into(),
        healthy: true,
        services: Default::default(),
        authorization_policies: vec![],
        capacity: 1,
        hostname: String::new(),
        locality: Default::default(),
    }
}

/// The enrollment of pod `name` (uid `uid-<name>`), as the CNI would send it.
pub fn enrolled_pod(
    name: &str,
    namespace: &str,
    netns: std::path::PathBuf,
    address: std::net::IpAddr,
) -> crate::enrollment::EnrolledPod {
    crate::enrollment::EnrolledPod {
        uid: format!("uid-{name}"),
        namespace: namespace.into(),
        name: name.into(),
        netns,
        addresses: vec![address],
        excluded_outbound_ports: vec![],
        excluded_inbound_ports: vec![],
        dns_capture: true,
    }
}
