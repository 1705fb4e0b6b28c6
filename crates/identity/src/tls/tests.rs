//! Real mutual-TLS handshakes over TCP on 127.0.0.1.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use super::*;
use crate::test_support::{issue, spiffe};
use crate::{CertificateAuthority, peer_identity};

const STEP_TIMEOUT: Duration = Duration::from_secs(10);

struct Mesh {
    ca: CertificateAuthority,
    roots: TrustRoots,
}

impl Mesh {
    fn new() -> Self {
        let ca = CertificateAuthority::generate().unwrap();
        let roots = TrustRoots::from_pem(ca.root_cert_pem()).unwrap();
        Mesh { ca, roots }
    }

    fn certificate(&self, ns: &str, sa: &str) -> WorkloadCertificate {
        issue(&self.ca, &spiffe(ns, sa))
    }
}

type Handshake = (
    io::Result<server::TlsStream<TcpStream>>,
    io::Result<client::TlsStream<TcpStream>>,
);

async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Handshake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server);
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        acceptor.accept(tcp).await
    });
    let tcp = TcpStream::connect(address).await.unwrap();
    let client_side = timeout(
        STEP_TIMEOUT,
        TlsConnector::from(client).connect(hbone_server_name(address.ip()), tcp),
    )
    .await
    .expect("client handshake timed out");
    let server_side = timeout(STEP_TIMEOUT, server_side)
        .await
        .expect("server handshake timed out")
        .unwrap();
    (server_side, client_side)
}

fn rustls_error(error: &io::Error) -> &rustls::Error {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {error:?}"))
}

/// Both test meshes name their root alike, so webpki finds the foreign chain's issuer by name
/// and then fails its signature; a differently named CA gives `UnknownIssuer`. Either refuses.
fn foreign_issuer(error: &rustls::Error) -> bool {
    matches!(
        error,
        rustls::Error::InvalidCertificate(
            CertificateError::BadSignature | CertificateError::UnknownIssuer
        )
    )
}

#[tokio::test]
async fn mutual_tls_succeeds_and_each_side_sees_the_other() {
    let mesh = Mesh::new();
    let server_cert = mesh.certificate("bookinfo", "reviews");
    let client_cert = mesh.certificate("bookinfo", "productpage");
    let server_config = server_config(&server_cert, &mesh.roots).unwrap();
    let client_config =
        client_config(&client_cert, &mesh.roots, server_cert.identity().clone()).unwrap();

    let (server, client) = handshake(server_config, client_config).await;
    let mut server = server.unwrap();
    let mut client = client.unwrap();

    assert_eq!(
        peer_identity(server.get_ref().1).unwrap(),
        spiffe("bookinfo", "productpage")
    );
    assert_eq!(
        peer_identity(client.get_ref().1).unwrap(),
        spiffe("bookinfo", "reviews")
    );
    assert_eq!(
        client.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(client.get_ref().1.alpn_protocol(), Some(HBONE_ALPN));
    assert_eq!(server.get_ref().1.alpn_protocol(), Some(HBONE_ALPN));
    assert_eq!(server.get_ref().1.server_name(), None, "no SNI is sent");

    // Bytes flow both ways over the established session.
    client.write_all(b"ping").await.unwrap();
    client.flush().await.unwrap();
    let mut buffer = [0u8; 4];
    timeout(STEP_TIMEOUT, server.read_exact(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buffer, b"ping");
    server.write_all(b"pong").await.unwrap();
    server.flush().await.unwrap();
    timeout(STEP_TIMEOUT, client.read_exact(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buffer, b"pong");
}

#[tokio::test]
async fn any_of_several_expected_identities_is_accepted() {
    let mesh = Mesh::new();
    let server_cert = mesh.certificate("bookinfo", "waypoint");
    let client_cert = mesh.certificate("bookinfo", "productpage");
    let expected: ExpectedServerIdentities = [
        spiffe("bookinfo", "reviews"),
        spiffe("bookinfo", "waypoint"),
    ]
    .into_iter()
    .collect();
    let (server, client) = handshake(
        server_config(&server_cert, &mesh.roots).unwrap(),
        client_config(&client_cert, &mesh.roots, expected).unwrap(),
    )
    .await;
    server.unwrap();
    let client = client.unwrap();
    assert_eq!(
        peer_identity(client.get_ref().1).unwrap(),
        spiffe("bookinfo", "waypoint")
    );
}

#[tokio::test]
async fn client_expecting_another_identity_refuses_the_server() {
    let mesh = Mesh::new();
    let server_cert = mesh.certificate("bookinfo", "ratings");
    let client_cert = mesh.certificate("bookinfo", "productpage");
    let expected = spiffe("bookinfo", "reviews");
    let (server, client) = handshake(
        server_config(&server_cert, &mesh.roots).unwrap(),
        client_config(&client_cert, &mesh.roots, expected.clone()).unwrap(),
    )
    .await;
    let client_error = client.unwrap_err();
    let rustls::Error::InvalidCertificate(CertificateError::Other(other)) =
        rustls_error(&client_error)
    else {
        panic!("unexpected client error {client_error:?}");
    };
    let identity_error = other
        .0
        .downcast_ref::<ServerIdentityError>()
        .expect("the error names the identity found");
    assert_eq!(
        identity_error,
        &ServerIdentityError::Unexpected {
            found: spiffe("bookinfo", "ratings"),
            expected: vec![expected],
        }
    );
    assert!(
        client_error.to_string().contains("ns/bookinfo/sa/ratings"),
        "{client_error}"
    );
    // The client's alert aborts the server's handshake too.
    assert!(server.is_err());
}

#[tokio::test]
async fn client_refuses_a_server_from_a_foreign_ca() {
    let mesh = Mesh::new();
    let foreign = Mesh::new();
    let server_cert = foreign.certificate("bookinfo", "reviews");
    let client_cert = mesh.certificate("bookinfo", "productpage");
    let (_, client) = handshake(
        server_config(&server_cert, &foreign.roots).unwrap(),
        client_config(&client_cert, &mesh.roots, spiffe("bookinfo", "reviews")).unwrap(),
    )
    .await;
    let error = client.unwrap_err();
    assert!(foreign_issuer(rustls_error(&error)), "{error:?}");
}

#[tokio::test]
async fn server_refuses_a_client_from_a_foreign_ca() {
    let mesh = Mesh::new();
    let foreign = Mesh::new();
    let server_cert = mesh.certificate("bookinfo", "reviews");
    let client_cert = foreign.certificate("bookinfo", "productpage");
    let (server, client) = handshake(
        server_config(&server_cert, &mesh.roots).unwrap(),
        client_config(&client_cert, &mesh.roots, spiffe("bookinfo", "reviews")).unwrap(),
    )
    .await;
    let error = server.unwrap_err();
    assert!(foreign_issuer(rustls_error(&error)), "{error:?}");
    // In TLS 1.3 the client finishes first; it learns of the refusal on its first read.
    if let Ok(mut client) = client {
        let mut buffer = [0u8; 1];
        let read = timeout(STEP_TIMEOUT, client.read(&mut buffer))
            .await
            .expect("client read timed out");
        assert!(
            matches!(read, Err(_) | Ok(0)),
            "client must not get data: {read:?}"
        );
    }
}

#[tokio::test]
async fn server_refuses_a_client_without_certificate() {
    let mesh = Mesh::new();
    let server_cert = mesh.certificate("bookinfo", "reviews");
    let provider = crypto_provider();
    let verifier =
        SpiffeServerVerifier::new(&mesh.roots, spiffe("bookinfo", "reviews"), provider.clone())
            .unwrap();
    let mut anonymous = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS13_ONLY)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![HBONE_ALPN.to_vec()];
    let (server, _) = handshake(
        server_config(&server_cert, &mesh.roots).unwrap(),
        Arc::new(anonymous),
    )
    .await;
    let error = server.unwrap_err();
    assert_eq!(
        rustls_error(&error),
        &rustls::Error::NoCertificatesPresented
    );
}

#[tokio::test]
async fn tls12_only_client_is_refused() {
    let mesh = Mesh::new();
    let server_cert = mesh.certificate("bookinfo", "reviews");
    let client_cert = mesh.certificate("bookinfo", "productpage");
    let provider = crypto_provider();
    let verifier =
        SpiffeServerVerifier::new(&mesh.roots, spiffe("bookinfo", "reviews"), provider.clone())
            .unwrap();
    let mut tls12 = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(client_cert.chain().to_vec(), client_cert.private_key())
        .unwrap();
    tls12.alpn_protocols = vec![HBONE_ALPN.to_vec()];
    let (server, client) = handshake(
        server_config(&server_cert, &mesh.roots).unwrap(),
        Arc::new(tls12),
    )
    .await;
    let server_error = server.unwrap_err();
    assert!(
        matches!(
            rustls_error(&server_error),
            rustls::Error::PeerIncompatible(_)
        ),
        "{server_error:?}"
    );
    let client_error = client.unwrap_err();
    assert!(
        matches!(
            rustls_error(&client_error),
            rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion)
        ),
        "{client_error:?}"
    );
}

#[tokio::test]
async fn client_without_h2_is_refused() {
    let mesh = Mesh::new();
    let server_cert = mesh.certificate("bookinfo", "reviews");
    let client_cert = mesh.certificate("bookinfo", "productpage");
    let config = client_config(&client_cert, &mesh.roots, spiffe("bookinfo", "reviews")).unwrap();
    let mut http1 = (*config).clone();
    http1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let (server, _) = handshake(
        server_config(&server_cert, &mesh.roots).unwrap(),
        Arc::new(http1),
    )
    .await;
    let error = server.unwrap_err();
    assert_eq!(rustls_error(&error), &rustls::Error::NoApplicationProtocol);
}

#[test]
fn configuration_errors_are_reported() {
    let mesh = Mesh::new();
    let certificate = mesh.certificate("bookinfo", "reviews");
    let none: Vec<SpiffeId> = Vec::new();
    assert!(matches!(
        client_config(&certificate, &mesh.roots, none),
        Err(TlsConfigError::NoExpectedIdentity)
    ));
    assert!(matches!(
        TrustRoots::from_pem(""),
        Err(TlsConfigError::NoTrustRoots)
    ));
    assert!(matches!(
        TrustRoots::from_der([CertificateDer::from(vec![1u8, 2, 3])]),
        Err(TlsConfigError::TrustRoot { index: 0, .. })
    ));
    let both = format!(
        "{}{}",
        mesh.ca.root_cert_pem(),
        Mesh::new().ca.root_cert_pem()
    );
    assert_eq!(TrustRoots::from_pem(&both).unwrap().len(), 2);
}

/// A certificate chained to the mesh root with arbitrary content, and its key.
fn unchecked_certificate(
    mesh: &Mesh,
    configure: impl FnOnce(&mut rcgen::CertificateParams),
) -> (
    CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    configure(&mut params);
    let der = mesh.ca.sign_params_unchecked(&params, &key);
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    (der, key_der)
}

fn spiffe_san(identity: &SpiffeId) -> rcgen::SanType {
    rcgen::SanType::URI(identity.to_string().try_into().unwrap())
}

fn raw_server_config(
    mesh: &Mesh,
    (der, key): (
        CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
) -> Arc<ServerConfig> {
    let provider = crypto_provider();
    finish_server(
        server_builder(&provider, &mesh.roots)
            .unwrap()
            .with_single_cert(vec![der], key)
            .unwrap(),
    )
}

#[tokio::test]
async fn client_refuses_a_mesh_server_certificate_without_spiffe_id() {
    let mesh = Mesh::new();
    let server = raw_server_config(
        &mesh,
        unchecked_certificate(&mesh, |params| {
            params.subject_alt_names = vec![rcgen::SanType::DnsName(
                "reviews.bookinfo".try_into().unwrap(),
            )];
        }),
    );
    let client_cert = mesh.certificate("bookinfo", "productpage");
    let (_, client) = handshake(
        server,
        client_config(&client_cert, &mesh.roots, spiffe("bookinfo", "reviews")).unwrap(),
    )
    .await;
    let error = client.unwrap_err();
    let rustls::Error::InvalidCertificate(CertificateError::Other(other)) = rustls_error(&error)
    else {
        panic!("unexpected {error:?}");
    };
    assert_eq!(
        other.0.downcast_ref::<ServerIdentityError>(),
        Some(&ServerIdentityError::Missing {
            source: PeerIdentityError::NoUriSan
        })
    );
}

#[tokio::test]
async fn client_refuses_an_expired_server_certificate() {
    let mesh = Mesh::new();
    let identity = spiffe("bookinfo", "reviews");
    let server = raw_server_config(
        &mesh,
        unchecked_certificate(&mesh, |params| {
            let now = std::time::SystemTime::now();
            params.not_before = (now - Duration::from_secs(7200)).into();
            params.not_after = (now - Duration::from_secs(3600)).into();
            params.subject_alt_names = vec![spiffe_san(&identity)];
        }),
    );
    let client_cert = mesh.certificate("bookinfo", "productpage");
    let (_, client) = handshake(
        server,
        client_config(&client_cert, &mesh.roots, identity).unwrap(),
    )
    .await;
    let error = client.unwrap_err();
    assert_eq!(
        rustls_error(&error),
        &rustls::Error::InvalidCertificate(CertificateError::Expired)
    );
}

#[tokio::test]
async fn server_refuses_a_mesh_client_certificate_without_spiffe_id() {
    let mesh = Mesh::new();
    let server_cert = mesh.certificate("bookinfo", "reviews");
    let (der, key) = unchecked_certificate(&mesh, |params| {
        params.subject_alt_names = vec![rcgen::SanType::DnsName("client".try_into().unwrap())];
    });
    let provider = crypto_provider();
    let verifier =
        SpiffeServerVerifier::new(&mesh.roots, spiffe("bookinfo", "reviews"), provider.clone())
            .unwrap();
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS13_ONLY)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![der], key)
        .unwrap();
    client.alpn_protocols = vec![HBONE_ALPN.to_vec()];
    let (server, _) = handshake(
        server_config(&server_cert, &mesh.roots).unwrap(),
        Arc::new(client),
    )
    .await;
    let error = server.unwrap_err();
    let rustls::Error::InvalidCertificate(CertificateError::Other(other)) = rustls_error(&error)
    else {
        panic!("unexpected {error:?}");
    };
    assert_eq!(
        other.0.downcast_ref::<PeerIdentityError>(),
        Some(&PeerIdentityError::NoUriSan)
    );
}

#[derive(Debug)]
struct FixedResolver(Arc<rustls::sign::CertifiedKey>);

impl ResolvesServerCert for FixedResolver {
    fn resolve(
        &self,
        _client_hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[tokio::test]
async fn resolver_based_server_presents_the_resolved_workload() {
    let mesh = Mesh::new();
    let server_cert = mesh.certificate("bookinfo", "details");
    let resolver = FixedResolver(server_cert.certified_key(&crypto_provider()).unwrap());
    let client_cert = mesh.certificate("bookinfo", "productpage");
    let (server, client) = handshake(
        server_config_with_resolver(Arc::new(resolver), &mesh.roots).unwrap(),
        client_config(&client_cert, &mesh.roots, spiffe("bookinfo", "details")).unwrap(),
    )
    .await;
    let server = server.unwrap();
    assert_eq!(
        peer_identity(client.unwrap().get_ref().1).unwrap(),
        spiffe("bookinfo", "details")
    );
    assert_eq!(
        peer_identity(server.get_ref().1).unwrap(),
        spiffe("bookinfo", "productpage")
    );
}

#[tokio::test]
async fn a_client_of_another_trust_domain_is_refused_even_when_the_root_signed_it() {
    let mesh = Mesh::new();
    let server_cert = mesh.certificate("bookinfo", "reviews");
    let server_config = server_config(&server_cert, &mesh.roots).unwrap();
    for (identity, accepted) in [
        (spiffe("bookinfo", "productpage"), true),
        (
            SpiffeId::new("evil.example", "bookinfo", "productpage").unwrap(),
            false,
        ),
    ] {
        let client_cert = issue(&mesh.ca, &identity);
        let client_config =
            client_config(&client_cert, &mesh.roots, server_cert.identity().clone()).unwrap();
        let (server, client) = handshake(server_config.clone(), client_config).await;
        client.unwrap();
        let server = server.expect("the root signed it: TLS accepts it");
        let verified = crate::peer_identity_in(server.get_ref().1, "cluster.local");
        assert_eq!(verified.is_ok(), accepted, "{identity}: {verified:?}");
    }
}

/// Istio's ztunnel under `COMPLIANCE_POLICY=pqc` offers X25519MLKEM768 alone; by default both
/// ends prefer it and still accept a classical peer; under `pqc` a classical peer is refused.
#[tokio::test]
async fn key_exchange_is_post_quantum_and_the_pqc_policy_requires_it() {
    use rustls::NamedGroup;
    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};

    let mesh = Mesh::new();
    let server_cert = mesh.certificate("bookinfo", "reviews");
    let client_cert = mesh.certificate("bookinfo", "productpage");
    let classical = || CryptoProvider {
        kx_groups: vec![kx_group::X25519],
        ..default_provider()
    };
    let connect = |server: CryptoProvider, client: CryptoProvider| {
        let server = server_config_with(Arc::new(server), &server_cert, &mesh.roots).unwrap();
        let client = client_config_with(
            Arc::new(client),
            &client_cert,
            &mesh.roots,
            server_cert.identity().clone(),
        )
        .unwrap();
        handshake(server, client)
    };
    let cases = [
        (
            CompliancePolicy::Default.provider(),
            CompliancePolicy::Default.provider(),
            NamedGroup::X25519MLKEM768,
        ),
        (
            CompliancePolicy::Default.provider(),
            CompliancePolicy::Pqc.provider(),
            NamedGroup::X25519MLKEM768,
        ),
        (
            CompliancePolicy::Pqc.provider(),
            CompliancePolicy::Default.provider(),
            NamedGroup::X25519MLKEM768,
        ),
        (
            CompliancePolicy::Default.provider(),
            classical(),
            NamedGroup::X25519,
        ),
    ];
    for (index, (server, client, group)) in cases.into_iter().enumerate() {
        let (server, client) = connect(server, client).await;
        server.unwrap_or_else(|e| panic!("case {index}: {e:?}"));
        let client = client.unwrap_or_else(|e| panic!("case {index}: {e:?}"));
        assert_eq!(
            client
                .get_ref()
                .1
                .negotiated_key_exchange_group()
                .map(|g| g.name()),
            Some(group),
            "case {index}"
        );
    }

    // A classical-only peer (what the ring provider offered) meets a pqc end: no common group.
    let (server, client) = connect(CompliancePolicy::Pqc.provider(), classical()).await;
    let server_error = server.unwrap_err();
    assert!(
        matches!(
            rustls_error(&server_error),
            rustls::Error::PeerIncompatible(rustls::PeerIncompatible::NoKxGroupsInCommon)
        ),
        "{server_error:?}"
    );
    assert!(client.is_err());
    let (server, client) = connect(classical(), CompliancePolicy::Pqc.provider()).await;
    assert!(
        server.is_err() && client.is_err(),
        "a pqc client reached a classical server"
    );
}

#[test]
fn compliance_policy_is_read_as_ztunnel_reads_it() {
    assert_eq!("".parse(), Ok(CompliancePolicy::Default));
    assert_eq!("pqc".parse(), Ok(CompliancePolicy::Pqc));
    assert_eq!(
        "PQC".parse::<CompliancePolicy>(),
        Err(UnknownCompliancePolicy("PQC".into()))
    );
    assert_eq!(CompliancePolicy::Pqc.kx_groups().len(), 1);
}

/// Two connections with the same configurations, each reading a byte after its handshake (a
/// server's tickets come before it: reading it makes the client process them): the kind of
/// the second handshake.
async fn second_handshake(
    server_config: Arc<ServerConfig>,
    client_config: Arc<ClientConfig>,
) -> Option<rustls::HandshakeKind> {
    let mut kind = None;
    for _ in 0..2 {
        let (server, client) = handshake(server_config.clone(), client_config.clone()).await;
        let (mut server, mut client) = (server.unwrap(), client.unwrap());
        kind = client.get_ref().1.handshake_kind();
        server.write_all(b"x").await.unwrap();
        server.flush().await.unwrap();
        let mut byte = [0u8; 1];
        timeout(STEP_TIMEOUT, client.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
    }
    kind
}

/// The server sends no ticket and keeps no session: a client that would resume makes a full
/// handshake again.
#[tokio::test]
async fn the_server_offers_no_session_to_resume() {
    let mesh = Mesh::new();
    let server_cert = mesh.certificate("bookinfo", "reviews");
    let client_cert = mesh.certificate("bookinfo", "productpage");
    let server_config = server_config(&server_cert, &mesh.roots).unwrap();
    let mut resuming = (*client_config(&client_cert, &mesh.roots, server_cert.identity().clone())
        .unwrap())
    .clone();
    resuming.resumption = rustls::client::Resumption::in_memory_sessions(8);
    assert_eq!(
        second_handshake(server_config, Arc::new(resuming)).await,
        Some(rustls::HandshakeKind::Full)
    );
}

/// A client configuration keeps no session: a second connection with the same configuration
/// is a full handshake, even to a server that offers tickets (with rustls's default cache it
/// resumes).
#[tokio::test]
async fn the_client_keeps_no_session_to_resume() {
    let mesh = Mesh::new();
    let server_cert = mesh.certificate("bookinfo", "reviews");
    let client_cert = mesh.certificate("bookinfo", "productpage");
    let mut offering = (*server_config(&server_cert, &mesh.roots).unwrap()).clone();
    offering.send_tls13_tickets = 2;
    offering.session_storage = rustls::server::ServerSessionMemoryCache::new(8);
    let client_config =
        client_config(&client_cert, &mesh.roots, server_cert.identity().clone()).unwrap();
    assert_eq!(
        second_handshake(Arc::new(offering), client_config).await,
        Some(rustls::HandshakeKind::Full)
    );
}
