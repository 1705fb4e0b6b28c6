//! Under `COMPLIANCE_POLICY=pqc` the libraries' TLS follows the policy too: tonic's server and
//! client (the controller's 15012 and the proxies' CA and xDS streams to it) accept and offer
//! X25519MLKEM768 only, as ours do. A test binary of its own, because a process has one policy.

use std::{io::Write as _, sync::Arc, time::Duration};

use rustls::pki_types::{CertificateDer, pem::PemObject};
use weft_identity::{CaToken, CertificateAuthority, CompliancePolicy, SpiffeId, WorkloadKey};
use weft_proxy_core::certificates::{CaClient, GrpcCaClient};
use weft_test_support::ca::FakeCa;

#[tokio::test]
async fn under_pqc_the_controllers_grpc_offers_and_accepts_only_the_hybrid_exchange() {
    CompliancePolicy::Pqc.install().unwrap();
    let default = rustls::crypto::CryptoProvider::get_default().expect("installed with the policy");
    let groups: Vec<_> = default.kx_groups.iter().map(|g| g.name()).collect();
    assert_eq!(groups, [rustls::NamedGroup::X25519MLKEM768]);

    let ca = CertificateAuthority::generate().unwrap();
    let serving = ca
        .issue_serving_certificate(&["localhost".to_string()], Duration::from_secs(600))
        .unwrap();
    let identity =
        tonic::transport::Identity::from_pem(serving.chain_pem.concat(), serving.key_pem.clone());
    let server = FakeCa::new(Arc::new(
        CertificateAuthority::from_pem(ca.root_cert_pem(), &ca.signing_key_pem()).unwrap(),
    ))
    .serve_tls(tonic::transport::ServerTlsConfig::new().identity(identity))
    .await;
    let port = server.address().port();

    // tonic's server, on the default provider, refuses a classical-only client.
    let root = CertificateDer::from_pem_slice(ca.root_cert_pem().as_bytes()).unwrap();
    let refused = tokio::task::spawn_blocking(move || classical_handshake(port, root))
        .await
        .unwrap();
    let error = refused.expect_err("a classical-only handshake must be refused");
    assert!(error.contains("HandshakeFailure"), "{error}");

    // tonic's client, on the default provider, gets its certificate from that server.
    let client = GrpcCaClient::connect(
        &format!("https://localhost:{port}"),
        Some(ca.root_cert_pem()),
        CaToken::Fixed("token".into()),
        Some("node-a".into()),
    )
    .unwrap();
    let id = SpiffeId::new("cluster.local", "shop", "cart").unwrap();
    let csr = WorkloadKey::generate().unwrap().csr_for(&id).unwrap();
    let chain = client
        .sign(&id, csr, Duration::from_secs(600))
        .await
        .expect("a post-quantum handshake with the pqc-only server");
    assert_eq!(chain.len(), 2);
}

/// A TLS handshake to 127.0.0.1:`port` offering the classical X25519 only: the error, if
/// refused.
fn classical_handshake(port: u16, root: CertificateDer<'static>) -> Result<(), String> {
    let provider = rustls::crypto::CryptoProvider {
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut connection =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap())
            .map_err(|e| e.to_string())?;
    let mut socket =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    while connection.is_handshaking() {
        connection
            .complete_io(&mut socket)
            .map_err(|e| format!("{e:?}"))?;
    }
    socket.flush().map_err(|e| e.to_string())
}
