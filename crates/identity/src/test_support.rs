//! Helpers shared by the unit tests of this crate.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::{CertificateAuthority, SpiffeId, WorkloadCertificate, WorkloadKey};

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TestDir(PathBuf);

impl TestDir {
    pub(crate) fn new(label: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "weft-identity-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        TestDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn spiffe(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa).unwrap()
}

/// A certificate for `identity` issued by `ca` over a fresh key, the way a node agent gets one.
pub(crate) fn issue(ca: &CertificateAuthority, identity: &SpiffeId) -> WorkloadCertificate {
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_for(identity).unwrap();
    let chain = ca
        .sign_csr(&csr, identity, Duration::from_secs(3600))
        .unwrap();
    WorkloadCertificate::from_pem_chain(identity, &chain.to_pem_list(), key).unwrap()
}
