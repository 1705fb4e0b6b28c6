//! The waypoint's certificate from the CA, with the bootstrap token.

use waypoint::testing::TestMesh;

#[tokio::test]
async fn certificate_comes_from_the_ca_with_the_bootstrap_token() {
    use weft_identity::CertificateSource;
    use weft_proxy_core::certificates::CaClient;
    use weft_test_support::ca::FakeCa;

    let identity = TestMesh::spiffe("default", "waypoint");
    let mesh = TestMesh::new();
    let root = mesh.ca.root_cert_pem().to_owned();
    let ca = FakeCa::new(mesh.ca)
        .requiring_token("bootstrap-token-0123456789")
        .signing_for(identity.clone())
        .serve()
        .await;
    // The waypoint is a manager of its one identity, with the node agent's CA client.
    let client = |token: &str| {
        weft_proxy_core::certificates::GrpcCaClient::connect(
            &ca.url(),
            None,
            weft_identity::CaToken::Fixed(token.to_owned()),
            Some("node-1".to_owned()),
        )
        .unwrap()
    };
    let manager = weft_proxy_core::certificates::CertificateManager::new(
        client("bootstrap-token-0123456789"),
        std::time::Duration::from_secs(24 * 3600),
        None,
    );
    let certificate = manager.fetch(&identity).await.unwrap();
    let roots = manager.trust_roots().unwrap();
    assert_eq!(certificate.identity(), &identity);
    assert!(!roots.is_empty());
    assert!(certificate.not_after() > std::time::SystemTime::now());
    assert_eq!(
        weft_identity::TrustRoots::from_pem(&root).unwrap().len(),
        roots.len()
    );

    let csr = weft_identity::WorkloadKey::generate()
        .unwrap()
        .csr_for(&identity)
        .unwrap();
    let error = client("wrong-token-0123456789")
        .sign(&identity, csr, std::time::Duration::from_secs(3600))
        .await
        .unwrap_err();
    assert!(error.contains("Unauthenticated"), "{error}");
}
