//! Fakes for tests of the agent and of what is built on it: a certificate source that signs
//! locally with an in-process CA, and an original-destination table filled by the test.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use weft_identity::{CertificateAuthority, SpiffeId, TrustRoots, WorkloadCertificate, WorkloadKey};

use crate::{
    certificates::{CertificateError, CertificateSource},
    ebpf::{NetnsCookie, OriginalDst, RedirectionError},
};

/// Issues certificates from an in-process CA, caching one per identity.
pub struct LocalCertificates {
    ca: Arc<CertificateAuthority>,
    roots: Arc<TrustRoots>,
    issued: Mutex<HashMap<SpiffeId, Arc<WorkloadCertificate>>>,
}

impl LocalCertificates {
    pub fn new(ca: Arc<CertificateAuthority>) -> Self {
        let roots =
            Arc::new(TrustRoots::from_pem(ca.root_cert_pem()).expect("the CA's own root parses"));
        Self {
            ca,
            roots,
            issued: Mutex::default(),
        }
    }

    fn issue(&self, identity: &SpiffeId) -> Result<WorkloadCertificate, String> {
        let key = WorkloadKey::generate().map_err(|e| e.to_string())?;
        let csr = key.csr_for(identity).map_err(|e| e.to_string())?;
        let chain = self
            .ca
            .sign_csr(&csr, identity, Duration::from_secs(3600))
            .map_err(|e| e.to_string())?;
        WorkloadCertificate::from_pem_chain(identity, &chain.to_pem_list(), key)
            .map_err(|e| e.to_string())
    }
}

impl CertificateSource for LocalCertificates {
    async fn fetch(
        &self,
        identity: &SpiffeId,
    ) -> Result<Arc<WorkloadCertificate>, CertificateError> {
        if let Some(certificate) = self.issued.lock().unwrap().get(identity) {
            return Ok(certificate.clone());
        }
        let certificate = Arc::new(self.issue(identity).map_err(|reason| CertificateError {
            identity: identity.to_string(),
            reason,
        })?);
        self.issued
            .lock()
            .unwrap()
            .insert(identity.clone(), certificate.clone());
        Ok(certificate)
    }

    fn trust_roots(&self) -> Option<Arc<TrustRoots>> {
        Some(self.roots.clone())
    }
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
    }
}
