//! Client certificates at the edge: OPTIONAL_MUTUAL verifies one when presented, ISTIO_MUTUAL
//! requires one the mesh's CA issued and presents the gateway's own mesh certificate; the
//! verified SPIFFE identity becomes the requests' principal.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::ServerName;

use super::*;
use crate::model::gateway::EdgeProtocol;
use crate::testing::TestMesh;
use crate::upstream::Unverified;

/// A client's certificate chain and key.
pub(super) type ClientCertificate = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Completes a TLS handshake in memory against `config`, the client presenting `client` (or
/// nothing); the server's side when it accepted.
pub(super) fn handshake(
    config: Arc<ServerConfig>,
    client: Option<ClientCertificate>,
) -> Option<rustls::ServerConnection> {
    let provider = weft_identity::crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified(provider)));
    let mut client_config = match client {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    client_config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from("gateway.example.com").unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
    let mut server = rustls::ServerConnection::new(config).unwrap();
    for _ in 0..10 {
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        if server.read_tls(&mut wire.as_slice()).is_err() || server.process_new_packets().is_err() {
            return None;
        }
        let mut wire = Vec::new();
        server.write_tls(&mut wire).unwrap();
        if client.read_tls(&mut wire.as_slice()).is_err() || client.process_new_packets().is_err() {
            return None;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return Some(server);
        }
    }
    None
}

/// The error the client's side of a handshake against `config` ends with, the client
/// presenting `client`: `AlertReceived` when the server refused it with a TLS alert; `None`
/// when the handshake completed.
pub(super) fn client_refusal(
    config: Arc<ServerConfig>,
    client: ClientCertificate,
) -> Option<rustls::Error> {
    let provider = weft_identity::crypto_provider();
    let client_config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
        .with_client_auth_cert(client.0, client.1)
        .unwrap();
    let name = ServerName::try_from("gateway.example.com").unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
    let mut server = rustls::ServerConnection::new(config).unwrap();
    for _ in 0..10 {
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        // A refusing server keeps its alert to write below.
        let _ = server
            .read_tls(&mut wire.as_slice())
            .map(|_| server.process_new_packets());
        let mut wire = Vec::new();
        server.write_tls(&mut wire).unwrap();
        client.read_tls(&mut wire.as_slice()).unwrap();
        if let Err(error) = client.process_new_packets() {
            return Some(error);
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return None;
        }
    }
    panic!("the handshake neither completed nor failed");
}

/// The PEM of `issuer`'s own certificate.
fn client_ca_pem(issuer: &Issuer<'static, KeyPair>) -> String {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.self_signed(issuer.key()).unwrap().pem()
}

/// A CA for client certificates: its PEM and its issuer.
pub(super) fn client_ca() -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let certificate = params.self_signed(&key).unwrap();
    (certificate.pem(), Issuer::new(params, key))
}

/// A client certificate `issuer` signs, with `uri` as its URI SAN when given.
pub(super) fn client_certificate(
    issuer: &Issuer<'static, KeyPair>,
    uri: Option<&str>,
) -> ClientCertificate {
    serial_client_certificate(issuer, uri, None)
}

/// [`client_certificate`] with serial number `serial` when given.
fn serial_client_certificate(
    issuer: &Issuer<'static, KeyPair>,
    uri: Option<&str>,
    serial: Option<u64>,
) -> ClientCertificate {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["client.example.com".to_owned()]).unwrap();
    params.serial_number = serial.map(rcgen::SerialNumber::from);
    if let Some(uri) = uri {
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().unwrap()));
    }
    let certificate = params.signed_by(&key, issuer).unwrap();
    (
        vec![certificate.der().clone()],
        PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
    )
}

pub(super) fn edge_server(mode: ServerTlsMode, credential: &str) -> EdgeServer {
    EdgeServer {
        gateway: "edge/gw".to_owned(),
        name: format!("https.443.{credential}"),
        protocol: EdgeProtocol::Https,
        hosts: vec!["*".to_owned()],
        tls: Some(ServerTls {
            mode,
            https_redirect: false,
            credential_name: credential.to_owned(),
            credential_resource: String::new(),
            min_version: TlsVersion::Auto,
            max_version: TlsVersion::Auto,
            cipher_suites: Vec::new(),
            subject_alt_names: Vec::new(),
            verify_certificate_spki: Vec::new(),
            verify_certificate_hash: Vec::new(),
            additional_credentials: Vec::new(),
            files: None,
        }),
        virtual_hosts: Vec::new(),
        domains: Default::default(),
        sni_routes: Vec::new(),
        tcp: None,
        limits: Default::default(),
        connection_rate_limit: None,
    }
}

#[test]
fn optional_mutual_accepts_clients_without_a_certificate_and_verifies_those_with_one() {
    let dir = std::env::temp_dir().join(format!("weft-mutual-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let own = dir.join("shop-cert");
    std::fs::create_dir_all(&own).unwrap();
    let server_certificate = rcgen::generate_simple_self_signed(vec!["shop".to_owned()]).unwrap();
    std::fs::write(own.join(CERTIFICATE_FILE), server_certificate.cert.pem()).unwrap();
    std::fs::write(
        own.join(KEY_FILE),
        server_certificate.signing_key.serialize_pem(),
    )
    .unwrap();
    let (ca, issuer) = client_ca();
    std::fs::write(own.join(CA_FILE), ca).unwrap();
    let (_, foreign) = client_ca();
    let store = CredentialStore::new(CredentialSource::directory(dir.clone()));

    let optional = edge_server(ServerTlsMode::OptionalMutual, "shop-cert");
    let config = store.server_config(&optional).unwrap();
    let anonymous = handshake(Arc::clone(&config), None).expect("no certificate is fine");
    assert_eq!(store.client_identity(&optional, &anonymous).unwrap(), None);
    let uri = "spiffe://example.org/ns/shop/sa/buyer";
    let verified = handshake(
        Arc::clone(&config),
        Some(client_certificate(&issuer, Some(uri))),
    )
    .expect("a certificate the CA signed");
    assert_eq!(
        store
            .client_identity(&optional, &verified)
            .unwrap()
            .map(|id| id.to_string()),
        Some(uri.to_owned()),
        "the verified identity is the principal"
    );
    assert!(
        handshake(config, Some(client_certificate(&foreign, None))).is_none(),
        "a certificate another CA signed is refused"
    );

    // MUTUAL, from the same credential, requires one.
    let mutual = edge_server(ServerTlsMode::Mutual, "shop-cert");
    let config = store.server_config(&mutual).unwrap();
    assert!(handshake(Arc::clone(&config), None).is_none());
    assert!(handshake(config, Some(client_certificate(&issuer, None))).is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn istio_mutual_presents_the_mesh_certificate_and_requires_a_mesh_client() {
    let mesh = TestMesh::new();
    let gateway = mesh.material("edge", "ingress");
    let store = CredentialStore::new(CredentialSource::default())
        .with_mesh_identity(gateway.identity().clone(), gateway.source());
    let server = edge_server(ServerTlsMode::IstioMutual, "");
    let config = store.terminating_config(&server).await.unwrap();
    let mesh_client = |material: &crate::testing::TestIdentity| {
        let source = material.source();
        let identity = material.identity().clone();
        async move {
            let certificate = source.fetch(&identity).await.unwrap();
            (certificate.chain().to_vec(), certificate.private_key())
        }
    };

    // A client with a certificate the mesh's CA issued: its identity is the principal.
    let client = mesh.material("shop", "buyer");
    let accepted = handshake(Arc::clone(&config), Some(mesh_client(&client).await))
        .expect("a mesh client is accepted");
    let presented = accepted.peer_certificates().unwrap()[0].clone();
    let server_side = weft_identity::identity_from_certificate(
        &gateway
            .source()
            .fetch(gateway.identity())
            .await
            .unwrap()
            .chain()[0],
    )
    .unwrap();
    assert_eq!(&server_side, gateway.identity());
    assert_eq!(
        weft_identity::identity_from_certificate(&presented).unwrap(),
        *client.identity()
    );
    assert_eq!(
        store.client_identity(&server, &accepted).unwrap().as_ref(),
        Some(client.identity())
    );
    assert_eq!(
        accepted.alpn_protocol(),
        Some(&b"h2"[..]),
        "HTTP ALPN, not HBONE's"
    );

    // No certificate, or one of another mesh: refused.
    assert!(handshake(Arc::clone(&config), None).is_none());
    let foreign = TestMesh::new().material("shop", "buyer");
    assert!(handshake(Arc::clone(&config), Some(mesh_client(&foreign).await)).is_none());
    // The mesh's root signing for another trust domain: the handshake completes, the
    // identity is refused (the connection is closed).
    let other_domain = mesh.material_in("other.domain", "shop", "buyer");
    let signed =
        handshake(config, Some(mesh_client(&other_domain).await)).expect("the root signed it");
    assert!(store.client_identity(&server, &signed).is_err());
}

#[tokio::test]
async fn istio_mutual_without_a_mesh_identity_refuses_the_server() {
    let store = CredentialStore::new(CredentialSource::default());
    let server = edge_server(ServerTlsMode::IstioMutual, "");
    assert!(matches!(
        store.terminating_config(&server).await,
        Err(CredentialError::MeshCertificate(_))
    ));
}

/// A list `issuer` signs revoking the certificates of `serials`.
fn revocation_list(issuer: &Issuer<'static, KeyPair>, serials: &[u64]) -> String {
    let params = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2020, 1, 1),
        next_update: rcgen::date_time_ymd(2100, 1, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|serial| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(*serial),
                revocation_time: rcgen::date_time_ymd(2020, 1, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    params.signed_by(issuer).unwrap().pem().unwrap()
}

#[test]
fn a_mutual_servers_revocation_list_refuses_the_client_certificates_it_revokes() {
    let dir = std::env::temp_dir().join(format!("weft-mutual-crl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let own = dir.join("shop-cert");
    std::fs::create_dir_all(&own).unwrap();
    let server_certificate = rcgen::generate_simple_self_signed(vec!["shop".to_owned()]).unwrap();
    std::fs::write(own.join(CERTIFICATE_FILE), server_certificate.cert.pem()).unwrap();
    std::fs::write(
        own.join(KEY_FILE),
        server_certificate.signing_key.serialize_pem(),
    )
    .unwrap();
    let (ca, issuer) = client_ca();
    std::fs::write(own.join(CA_FILE), ca).unwrap();
    let store = CredentialStore::new(CredentialSource::directory(dir.clone()));
    let mutual = edge_server(ServerTlsMode::Mutual, "shop-cert");
    let revoked = || serial_client_certificate(&issuer, None, Some(7));
    let valid = || serial_client_certificate(&issuer, None, Some(8));
    let config = store.server_config(&mutual).unwrap();
    assert!(handshake(config, Some(revoked())).is_some(), "no list yet");

    // `ca.crl` beside `ca.crt`, Istio's key: read with the credential's next change.
    std::fs::write(own.join(CRL_FILE), revocation_list(&issuer, &[7])).unwrap();
    let config = store.server_config(&mutual).unwrap();
    assert!(
        handshake(Arc::clone(&config), Some(revoked())).is_none(),
        "the list revokes the client's certificate"
    );
    assert!(handshake(config, Some(valid())).is_some());

    // Delivered by the controller: the CA resource's `crl`.
    let delivered = xds::XdsCredentials::default();
    let resource = "kubernetes://shop/shop-cert";
    let data = |text: String| {
        Some(weft_proto::envoy::config::core::v3::DataSource {
            specifier: Some(
                weft_proto::envoy::config::core::v3::data_source::Specifier::InlineBytes(
                    text.into_bytes(),
                ),
            ),
        })
    };
    use weft_proto::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, Secret, TlsCertificate, secret,
    };
    use weft_xds::Handler;
    let any =
        |name: &str, kind: secret::Type| weft_proto::envoy::service::discovery::v3::Resource {
            name: name.to_owned(),
            version: "1".to_owned(),
            resource: Some(
                prost_types::Any::from_msg(&Secret {
                    name: name.to_owned(),
                    r#type: Some(kind),
                })
                .unwrap(),
            ),
            ..Default::default()
        };
    delivered
        .handler()
        .apply(weft_xds::Update {
            added: vec![
                any(
                    resource,
                    secret::Type::TlsCertificate(TlsCertificate {
                        certificate_chain: data(server_certificate.cert.pem()),
                        private_key: data(server_certificate.signing_key.serialize_pem()),
                    }),
                ),
                any(
                    &format!("{resource}{CA_SECRET_SUFFIX}"),
                    secret::Type::ValidationContext(CertificateValidationContext {
                        trusted_ca: data(client_ca_pem(&issuer)),
                        crl: data(revocation_list(&issuer, &[7])),
                    }),
                ),
            ],
            removed: Vec::new(),
            full_state: false,
        })
        .unwrap();
    let store = CredentialStore::new(CredentialSource {
        directory: None,
        xds: delivered,
    });
    let mut from_controller = edge_server(ServerTlsMode::Mutual, "shop-cert");
    from_controller.tls.as_mut().unwrap().credential_resource = resource.to_owned();
    let config = store.server_config(&from_controller).unwrap();
    assert!(handshake(Arc::clone(&config), Some(revoked())).is_none());
    assert!(handshake(config, Some(valid())).is_some());
    let _ = std::fs::remove_dir_all(&dir);
}
