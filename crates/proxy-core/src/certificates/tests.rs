use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use weft_identity::{CaToken, CertificateAuthority};

use super::*;

/// Signs with an in-process CA; fails the first `fail_first` requests; counts requests.
struct FakeCa {
    ca: CertificateAuthority,
    fail_first: AtomicU32,
    /// While set, every request fails.
    failing: Arc<AtomicBool>,
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
            || self.failing.load(Ordering::SeqCst)
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
    CertificateManager<FakeCa>,
    Arc<AtomicU32>,
    Arc<Mutex<Vec<String>>>,
);

fn manager(ttl: Duration, fail_first: u32) -> Harness {
    let requests = Arc::new(AtomicU32::new(0));
    let csrs = Arc::new(Mutex::new(Vec::new()));
    let ca = FakeCa {
        ca: CertificateAuthority::generate().unwrap(),
        fail_first: AtomicU32::new(fail_first),
        failing: Arc::default(),
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
    // Nothing held, and asking what is held asks the CA for nothing.
    assert!(manager.current(&id("cart")).is_none());
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
    assert!(Arc::ptr_eq(
        &manager.current(&id("cart")).unwrap(),
        &certificates[0]
    ));
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

/// Bounded wait for `condition`, polling.
async fn eventually(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A CA that fails every request while its switch is on, with its request counter.
fn switchable_ca(failing: bool) -> (FakeCa, Arc<AtomicBool>, Arc<AtomicU32>) {
    let switch = Arc::new(AtomicBool::new(failing));
    let requests = Arc::new(AtomicU32::new(0));
    let ca = FakeCa {
        ca: CertificateAuthority::generate().unwrap(),
        fail_first: AtomicU32::new(0),
        failing: switch.clone(),
        requests: requests.clone(),
        csrs: Arc::default(),
    };
    (ca, switch, requests)
}

#[tokio::test]
async fn a_failing_renewal_keeps_serving_the_old_certificate_then_recovers() {
    let (ca, failing, requests) = switchable_ca(false);
    // A 2 s certificate is renewed about 1 s after issue.
    let manager = CertificateManager::new(ca, Duration::from_secs(2), None);
    let first = manager.fetch(&id("cart")).await.unwrap();
    failing.store(true, Ordering::SeqCst);

    // The renewal and at least one retry fail; the first certificate is still served.
    eventually("two failed renewals", Duration::from_secs(5), || {
        requests.load(Ordering::SeqCst) >= 3
    })
    .await;
    let during = manager.fetch(&id("cart")).await.unwrap();
    assert!(Arc::ptr_eq(&first, &during), "the old certificate stays");
    let state = &manager.describe()[0];
    assert_eq!(state.last_error.as_deref(), Some("CA unavailable"));
    assert_eq!(
        state.certificate.as_ref().unwrap().serial,
        first.describe().serial
    );

    // Retries are spaced out (backoff), not a tight loop: a few in the next 300 ms, not dozens.
    let before = requests.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        requests.load(Ordering::SeqCst) - before <= 2,
        "retries back off"
    );

    failing.store(false, Ordering::SeqCst);
    let mut renewed = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while renewed.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        let current = manager.fetch(&id("cart")).await.unwrap();
        if !Arc::ptr_eq(&first, &current) {
            renewed = Some(current);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(renewed.unwrap().not_after() > first.not_after());
    assert!(manager.describe()[0].last_error.is_none());
}

/// A certificate the CA could not issue (the controller unreachable) is asked for again as soon
/// as the controller's stream reconnects, not when the backoff would next try.
#[tokio::test]
async fn a_reconnected_controller_is_asked_at_once_not_after_the_backoff() {
    let (ca, failing, requests) = switchable_ca(true);
    let manager = CertificateManager::new(ca, Duration::from_secs(3600), None);
    let (state, receiver) = watch::channel(weft_xds::ConnectionState::default());
    tokio::spawn(retry_on_reconnect(manager.source(), receiver));
    // Starts the identity's requests; the first fetch gives up while the CA fails.
    let _ = tokio::time::timeout(Duration::from_millis(50), manager.fetch(&id("cart"))).await;
    // Five failures: 200 + 400 + 800 + 1,600 ms of backoff behind, the next wait is 3.2 s
    // (at least 2.4 s with the jitter).
    eventually("five failed requests", Duration::from_secs(6), || {
        requests.load(Ordering::SeqCst) >= 5
    })
    .await;
    failing.store(false, Ordering::SeqCst);
    let reconnected = tokio::time::Instant::now();
    state.send_modify(|state| {
        state.connected = true;
        state.connections += 1;
    });
    eventually(
        "a certificate within 1.8 s of the reconnection",
        Duration::from_millis(1800),
        || manager.current(&id("cart")).is_some(),
    )
    .await;
    assert!(reconnected.elapsed() < Duration::from_millis(2400));
    assert!(manager.describe()[0].last_error.is_none());
}

mod grpc {
    //! `GrpcCaClient` against a real `IstioCertificateService` on 127.0.0.1.

    use rustls::pki_types::{CertificateSigningRequestDer, pem::PemObject};
    use weft_test_support::ca::FakeCa;

    use super::*;

    /// The private scalar of a PKCS#8 P-256 key: the 32 bytes after `version 1, OCTET STRING(32)`.
    fn private_scalar(pkcs8: &[u8]) -> &[u8] {
        let marker = [0x02, 0x01, 0x01, 0x04, 0x20];
        let at = pkcs8
            .windows(marker.len())
            .position(|w| w == marker)
            .expect("an ECPrivateKey in the PKCS#8 document");
        &pkcs8[at + marker.len()..at + marker.len() + 32]
    }

    #[tokio::test]
    async fn issues_over_grpc_with_istio_and_weft_credentials_and_never_sends_the_key() {
        let ca = CertificateAuthority::generate().unwrap();
        let root_pem = ca.root_cert_pem().to_string();
        let service = FakeCa::new(Arc::new(ca));
        let seen = service.seen();
        let server = service.serve().await;

        let client = GrpcCaClient::new(&server.url(), "bootstrap-secret".into(), "node-a".into())
            .unwrap()
            .with_cluster_id("Kubernetes");
        let manager = CertificateManager::new(client, Duration::from_secs(3600), None);
        let certificate = manager.fetch(&id("cart")).await.unwrap();
        assert_eq!(certificate.identity(), &id("cart"));
        let lifetime = certificate
            .not_after()
            .duration_since(certificate.not_before())
            .unwrap();
        // The requested TTL, plus the CA's backdating for clock skew.
        assert_eq!(
            lifetime,
            Duration::from_secs(3600) + weft_identity::LEAF_BACKDATE
        );
        // The root that came back is now trusted, and it is the CA's.
        assert_eq!(manager.trust_roots().unwrap().len(), 1);
        assert_eq!(
            certificate.ca_roots(),
            [rustls::pki_types::CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap()]
        );

        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        let call = &seen[0];
        assert_eq!(
            call.authorization.as_deref(),
            Some("Bearer bootstrap-secret")
        );
        assert_eq!(call.node.as_deref(), Some("node-a"));
        assert_eq!(call.cluster_id.as_deref(), Some("Kubernetes"));
        assert_eq!(
            call.impersonated.as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/cart")
        );
        assert_eq!(call.validity_seconds, 3600);

        // What crossed the wire is a CSR: no private key block, and not the key's secret bytes.
        assert!(call.csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(!call.csr.contains("PRIVATE KEY"));
        let csr_der = CertificateSigningRequestDer::from_pem_slice(call.csr.as_bytes()).unwrap();
        let key = certificate.private_key();
        let scalar = private_scalar(key.secret_der());
        assert!(
            !csr_der
                .as_ref()
                .windows(scalar.len())
                .any(|window| window == scalar),
            "the CSR carries the private key"
        );
    }

    #[tokio::test]
    async fn a_refusal_is_reported_with_the_status() {
        let server = FakeCa::new(Arc::new(CertificateAuthority::generate().unwrap()))
            .serve()
            .await;
        let client = GrpcCaClient::new(&server.url(), "t".into(), "node-a".into()).unwrap();
        let key = WorkloadKey::generate().unwrap();
        // A CSR for one identity with another asked for: the CA refuses it.
        let csr = key.csr_for(&id("cart")).unwrap();
        let error = client
            .sign(&id("payments"), csr, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(error.contains("InvalidArgument"), "{error}");
    }

    #[tokio::test]
    async fn speaks_tls_to_the_controller_and_rereads_a_rotated_token() {
        let ca = CertificateAuthority::generate().unwrap();
        // The controller's serving certificate: the mesh CA's, for the name the agent dials.
        let serving = ca
            .issue_serving_certificate(&["localhost".to_string()], Duration::from_secs(600))
            .unwrap();
        let identity = tonic::transport::Identity::from_pem(
            serving.chain_pem.concat(),
            serving.key_pem.clone(),
        );
        let service = FakeCa::new(Arc::new(
            CertificateAuthority::from_pem(ca.root_cert_pem(), &ca.signing_key_pem()).unwrap(),
        ));
        let seen = service.seen();
        let server = service
            .serve_tls(tonic::transport::ServerTlsConfig::new().identity(identity))
            .await;
        let dir = weft_test_support::temp::TempDir::new("ca-token");
        let token_file = dir.join("istio-token");
        std::fs::write(&token_file, "first-token\n").unwrap();
        let address = format!("https://localhost:{}", server.address().port());

        let client = GrpcCaClient::connect(
            &address,
            Some(ca.root_cert_pem()),
            CaToken::File(token_file.clone()),
            Some("node-a".into()),
        )
        .unwrap();
        let csr = |id: &SpiffeId| {
            weft_identity::WorkloadKey::generate()
                .unwrap()
                .csr_for(id)
                .unwrap()
        };
        let chain = client
            .sign(&id("cart"), csr(&id("cart")), Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(chain.len(), 2);
        // The kubelet rotates the projected token in place: the next call sends the new one.
        std::fs::write(&token_file, "second-token\n").unwrap();
        client
            .sign(&id("cart"), csr(&id("cart")), Duration::from_secs(600))
            .await
            .unwrap();
        let tokens: Vec<Option<String>> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|call| call.authorization.clone())
            .collect();
        assert_eq!(
            tokens,
            [
                Some("Bearer first-token".to_string()),
                Some("Bearer second-token".to_string())
            ]
        );

        // A client trusting another root refuses the controller's certificate.
        let stranger = CertificateAuthority::generate().unwrap();
        let refused = GrpcCaClient::connect(
            &address,
            Some(stranger.root_cert_pem()),
            CaToken::Fixed("t".into()),
            Some("node-a".into()),
        )
        .unwrap()
        .sign(&id("cart"), csr(&id("cart")), Duration::from_secs(600))
        .await
        .unwrap_err();
        assert!(refused.contains("Unavailable"), "{refused}");
        // An https address without roots is refused up front.
        let missing =
            GrpcCaClient::connect(&address, None, CaToken::Fixed("t".into()), Some("n".into()))
                .err()
                .unwrap();
        assert!(missing.contains("ROOT_CERT_FILE"), "{missing}");
        assert_eq!(
            seen.lock().unwrap().len(),
            2,
            "no call got through untrusted"
        );
    }
}

#[tokio::test]
async fn the_issue_and_expiry_of_each_certificate_held_are_gauges_until_it_is_forgotten() {
    let (manager, _, _) = manager(Duration::from_secs(3600), 0);
    let mut registry = prometheus_client::registry::Registry::default();
    crate::metrics::register_certificate_expiry(&mut registry, manager.source());
    let scrape = |registry: &prometheus_client::registry::Registry| {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    };
    // Asked for, not yet held: no sample.
    assert!(!scrape(&registry).contains("identity="));
    let cart = manager.fetch(&id("cart")).await.unwrap();
    manager.fetch(&id("orders")).await.unwrap();
    let text = scrape(&registry);
    let expected = cart
        .not_after()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let line = text
        .lines()
        .find(|l| l.starts_with(crate::metrics::CERTIFICATE_EXPIRY) && l.contains("/sa/cart"))
        .unwrap_or_else(|| panic!("{text}"));
    let value: f64 = line.rsplit_once(' ').unwrap().1.parse().unwrap();
    assert_eq!(value, expected, "{line}");
    // About an hour from now (the requested lifetime).
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((value - now - 3600.0).abs() < 120.0, "{line}");
    assert!(text.contains("# TYPE weft_workload_certificate_expiry_timestamp_seconds gauge"));
    let issued = text
        .lines()
        .find(|l| l.starts_with(crate::metrics::CERTIFICATE_ISSUE) && l.contains("/sa/cart"))
        .unwrap_or_else(|| panic!("{text}"));
    let issued: f64 = issued.rsplit_once(' ').unwrap().1.parse().unwrap();
    let not_before = cart
        .not_before()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(issued, not_before);
    assert!(text.contains("/sa/orders"), "{text}");
    manager.forget(&id("orders"));
    assert!(!scrape(&registry).contains("/sa/orders"));
}
