use std::sync::atomic::{AtomicU32, Ordering};

use weft_identity::CertificateAuthority;

use super::*;

/// Signs with an in-process CA; fails the first `fail_first` requests; counts requests.
struct FakeCa {
    ca: CertificateAuthority,
    fail_first: AtomicU32,
    requests: Arc<AtomicU32>,
    csrs: Arc<Mutex<Vec<String>>>,
}

impl CaClient for FakeCa {
    async fn sign(
        &self,
        identity: &SpiffeId,
        csr: String,
        ttl: Duration,
    ) -> Result<Vec<String>, String> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.csrs.lock().unwrap().push(csr.clone());
        if self
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err("CA unavailable".into());
        }
        // Let concurrent fetches pile up on the same request.
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.ca
            .sign_csr(&csr, identity, ttl)
            .map(|c| c.to_pem_list())
            .map_err(|e| e.to_string())
    }
}

/// The manager, its request counter and the CSRs it sent.
type Harness = (
    Arc<CertificateManager<FakeCa>>,
    Arc<AtomicU32>,
    Arc<Mutex<Vec<String>>>,
);

fn manager(ttl: Duration, fail_first: u32) -> Harness {
    let requests = Arc::new(AtomicU32::new(0));
    let csrs = Arc::new(Mutex::new(Vec::new()));
    let ca = FakeCa {
        ca: CertificateAuthority::generate().unwrap(),
        fail_first: AtomicU32::new(fail_first),
        requests: requests.clone(),
        csrs: csrs.clone(),
    };
    (CertificateManager::new(ca, ttl, None), requests, csrs)
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", sa).unwrap()
}

#[tokio::test]
async fn concurrent_fetches_share_one_request_and_roots_follow() {
    let (manager, requests, csrs) = manager(Duration::from_secs(3600), 0);
    let fetches = (0..10).map(|_| {
        let manager = manager.clone();
        tokio::spawn(async move { manager.fetch(&id("cart")).await.unwrap() })
    });
    let certificates: Vec<_> = futures::future::join_all(fetches)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    assert!(
        certificates
            .iter()
            .all(|c| Arc::ptr_eq(c, &certificates[0]))
    );
    assert_eq!(certificates[0].identity(), &id("cart"));
    assert_eq!(manager.trust_roots().unwrap().len(), 1);
    // The CSR carries a public key only.
    assert!(!csrs.lock().unwrap()[0].contains("PRIVATE KEY"));
    let dump = serde_json::to_string(&manager.describe()).unwrap();
    assert!(dump.contains("spiffe://cluster.local/ns/shop/sa/cart"));
    assert!(!dump.contains("PRIVATE"));
}

#[tokio::test]
async fn renews_at_half_life_and_keeps_the_old_one_until_then() {
    let (manager, requests, _) = manager(Duration::from_secs(2), 0);
    let first = manager.fetch(&id("cart")).await.unwrap();
    // Half life of a 2 s certificate whose start is backdated: renewal comes within ~1 s.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(Arc::ptr_eq(
        &first,
        &manager.fetch(&id("cart")).await.unwrap()
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let current = manager.fetch(&id("cart")).await.unwrap();
        if !Arc::ptr_eq(&first, &current) {
            assert!(current.not_after() > first.not_after());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never renewed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(requests.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn failures_are_retried_and_reported() {
    let (manager, requests, _) = manager(Duration::from_secs(3600), 2);
    let certificate = manager.fetch(&id("pay")).await.unwrap();
    assert_eq!(certificate.identity(), &id("pay"));
    assert_eq!(
        requests.load(Ordering::SeqCst),
        3,
        "two failures, then success"
    );
    assert!(manager.describe()[0].last_error.is_none());
    manager.forget(&id("pay"));
    assert!(manager.describe().is_empty());
}
