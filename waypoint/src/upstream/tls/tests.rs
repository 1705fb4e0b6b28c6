//! TLS origination with a credential the controller delivers: real handshakes with a TLS
//! server on loopback that requires a client certificate.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use weft_proto::envoy::config::core::v3::{DataSource, data_source::Specifier};
use weft_proto::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use weft_proto::envoy::service::discovery::v3::Resource;
use weft_xds::{Handler, Update};

use super::*;

const RESOURCE: &str = "kubernetes://egress/api-client";
const CA_RESOURCE: &str = "kubernetes://egress/api-client-cacert";
const HOST: &str = "api.example.com";

fn certificate(host: &str) -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap();
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

fn bytes(pem: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(pem.as_bytes().to_vec())),
    })
}

fn resource(name: &str, version: &str, kind: secret::Type) -> Resource {
    let secret = Secret {
        name: name.to_owned(),
        r#type: Some(kind),
    };
    Resource {
        name: name.to_owned(),
        version: version.to_owned(),
        resource: Some(prost_types::Any::from_msg(&secret).unwrap()),
        ..Default::default()
    }
}

fn deliver(credentials: &XdsCredentials, added: Vec<Resource>, removed: &[&str]) {
    credentials
        .handler()
        .apply(Update {
            added,
            removed: removed.iter().map(|r| (*r).to_owned()).collect(),
            full_state: false,
        })
        .unwrap();
}

fn ca(version: &str, pem: &str) -> Resource {
    resource(
        CA_RESOURCE,
        version,
        secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: bytes(pem),
            crl: None,
        }),
    )
}

fn pair(version: &str, (cert, key): &(String, String)) -> Resource {
    resource(
        RESOURCE,
        version,
        secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: bytes(cert),
            private_key: bytes(key),
        }),
    )
}

/// A TLS server on loopback presenting `server` for [`HOST`] and requiring a client
/// certificate `client_ca` signed, if any; each handshake's outcome is sent on the channel.
async fn server(
    server: &(String, String),
    client_ca: Option<&str>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<bool>,
) {
    let provider = weft_identity::crypto_provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(client_ca) => {
            let mut roots = RootCertStore::empty();
            for certificate in CertificateDer::pem_slice_iter(client_ca.as_bytes()) {
                roots.add(certificate.unwrap()).unwrap();
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let chain = CertificateDer::pem_slice_iter(server.0.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(server.1.as_bytes()).unwrap();
    let config = builder.with_single_cert(chain, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (outcomes, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let outcome = acceptor.accept(tcp).await.is_ok();
            if outcomes.send(outcome).is_err() {
                return;
            }
        }
    });
    (address, received)
}

#[tokio::test]
async fn a_delivered_credential_is_used_when_it_arrives_and_again_when_it_changes() {
    let server_cert = certificate(HOST);
    let client_cert = certificate("client.egress");
    let (address, mut accepted) = server(&server_cert, Some(&client_cert.0)).await;
    let delivered = XdsCredentials::default();
    let credentials = OriginationCredentials {
        // A directory holding nothing: a delivered credential is never looked for there.
        directory: Some(Arc::from(std::path::Path::new("/nonexistent"))),
        delivered: delivered.clone(),
    };
    let settings = proto::UpstreamTls {
        credential_name: "api-client".to_owned(),
        credential_resource: RESOURCE.to_owned(),
        mutual: true,
        ..Default::default()
    };
    let tls = OriginatedTls::new(&settings, HOST, &credentials).expect("settings");
    assert!(tls.is_delivered());
    let connect = || async {
        let tcp = TcpStream::connect(address).await.unwrap();
        tls.connect(tcp, None).await
    };

    // Before the controller delivers the credential: no connection.
    let why = tls.unusable().expect("not delivered yet").to_string();
    assert!(
        why.contains(CA_RESOURCE) && why.contains("not delivered"),
        "{why}"
    );
    assert!(connect().await.is_err());
    assert_eq!(
        accepted.recv().await,
        Some(false),
        "no handshake was attempted"
    );

    // Delivered: the server is verified with the CA, and the client pair is presented.
    deliver(
        &delivered,
        vec![ca("1", &server_cert.0), pair("1", &client_cert)],
        &[],
    );
    assert_eq!(tls.unusable(), None);
    let mut stream = connect()
        .await
        .expect("handshake with the delivered credential");
    // TLS 1.3: the server's verdict on the client certificate comes after the client's
    // handshake; it is read from the server.
    assert_eq!(
        accepted.recv().await,
        Some(true),
        "the client pair was presented"
    );
    tokio::io::AsyncWriteExt::shutdown(&mut stream).await.ok();

    // The CA rotated to one that did not sign the server: the next connection fails.
    let unrelated = certificate(HOST);
    deliver(&delivered, vec![ca("2", &unrelated.0)], &[]);
    let error = connect()
        .await
        .expect_err("the server is verified with the new CA");
    assert!(error.to_string().contains("certificate"), "{error}");
    assert_eq!(accepted.recv().await, Some(false));

    // Back to the right CA, with a client pair the server does not accept.
    let stranger = certificate("stranger.egress");
    deliver(
        &delivered,
        vec![ca("3", &server_cert.0), pair("2", &stranger)],
        &[],
    );
    let _ = connect().await;
    assert_eq!(
        accepted.recv().await,
        Some(false),
        "the rotated client pair is presented"
    );

    // Withdrawn: connections fail again, before any is opened.
    deliver(&delivered, Vec::new(), &[RESOURCE]);
    let why = tls.unusable().expect("withdrawn").to_string();
    assert!(
        why.contains(RESOURCE) && why.contains("not delivered"),
        "{why}"
    );
}

#[tokio::test]
async fn a_delivered_credential_that_is_not_a_ca_fails_its_connections() {
    let delivered = XdsCredentials::default();
    let credentials = OriginationCredentials {
        directory: None,
        delivered: delivered.clone(),
    };
    let settings = proto::UpstreamTls {
        credential_name: "api-client".to_owned(),
        credential_resource: RESOURCE.to_owned(),
        ..Default::default()
    };
    let tls = OriginatedTls::new(&settings, HOST, &credentials).unwrap();
    // SIMPLE: only the CA is needed, and a resource under its name that holds a pair is no CA.
    let mut pair_as_ca = pair("1", &certificate(HOST));
    pair_as_ca.name = CA_RESOURCE.to_owned();
    deliver(&delivered, vec![pair_as_ca], &[]);
    let why = tls.unusable().expect("no CA").to_string();
    assert!(why.contains("holds no CA"), "{why}");
}

/// A CA that signs [`HOST`]'s certificate with serial number 7, and revocation lists it signs.
struct RevokingCa {
    ca: String,
    server: (String, String),
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl RevokingCa {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&key).unwrap().pem();
        let issuer = Issuer::new(params, key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec![HOST.to_owned()]).unwrap();
        leaf.serial_number = Some(rcgen::SerialNumber::from(7u64));
        let server = (
            leaf.signed_by(&leaf_key, &issuer).unwrap().pem(),
            leaf_key.serialize_pem(),
        );
        RevokingCa { ca, server, issuer }
    }

    /// A list revoking the certificates of `serials`.
    fn crl(&self, serials: &[u64]) -> String {
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
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }
}

#[tokio::test]
async fn a_revocation_list_refuses_the_server_certificates_it_revokes() {
    let authority = RevokingCa::new();
    let (address, _accepted) = server(&authority.server, None).await;
    let connects = |tls: OriginatedTls| async move {
        let tcp = TcpStream::connect(address).await.unwrap();
        tls.connect(tcp, None)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let dir = std::env::temp_dir().join(format!("weft-crl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let write = |path: &str, text: &str| {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("files/ca.pem", &authority.ca);
    write("files/revoked.crl", &authority.crl(&[7]));
    write("files/other.crl", &authority.crl(&[8]));
    // DestinationRule `caCertificates` and `caCrl` files.
    let files = |crl: &str| proto::UpstreamTls {
        ca_certificates: dir.join("files/ca.pem").display().to_string(),
        ca_crl: if crl.is_empty() {
            String::new()
        } else {
            dir.join("files").join(crl).display().to_string()
        },
        ..Default::default()
    };
    let none = OriginationCredentials::default();
    let tls = |settings: &proto::UpstreamTls, credentials: &OriginationCredentials| {
        OriginatedTls::new(settings, HOST, credentials).expect("settings")
    };
    connects(tls(&files(""), &none)).await.expect("no list");
    connects(tls(&files("other.crl"), &none))
        .await
        .expect("a list revoking another certificate");
    let refused = connects(tls(&files("revoked.crl"), &none))
        .await
        .expect_err("the list revokes the server's certificate");
    assert!(refused.contains("Revoked"), "{refused}");

    // A credential directory: `ca.crl` beside the CA, in the credential or its `-cacert`.
    write("credentials/own/ca.crt", &authority.ca);
    write("credentials/own/ca.crl", &authority.crl(&[7]));
    write("credentials/split-cacert/ca.crt", &authority.ca);
    write("credentials/split-cacert/ca.crl", &authority.crl(&[7]));
    write("credentials/clean/ca.crt", &authority.ca);
    let directory = OriginationCredentials::directory(Some(&dir.join("credentials")));
    let credential = |name: &str| proto::UpstreamTls {
        credential_name: name.to_owned(),
        ..Default::default()
    };
    connects(tls(&credential("clean"), &directory))
        .await
        .expect("no list in the credential");
    for name in ["own", "split"] {
        let refused = connects(tls(&credential(name), &directory))
            .await
            .expect_err(name);
        assert!(refused.contains("Revoked"), "{name}: {refused}");
    }

    // Delivered by the controller: the CA resource's `crl`.
    let delivered = XdsCredentials::default();
    let credentials = OriginationCredentials {
        directory: None,
        delivered: delivered.clone(),
    };
    let settings = proto::UpstreamTls {
        credential_name: "api-client".to_owned(),
        credential_resource: RESOURCE.to_owned(),
        ..Default::default()
    };
    let from_controller = tls(&settings, &credentials);
    let with_crl = |version: &str, crl: Option<String>| {
        resource(
            CA_RESOURCE,
            version,
            secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: bytes(&authority.ca),
                crl: crl.as_deref().and_then(bytes),
            }),
        )
    };
    deliver(&delivered, vec![with_crl("1", None)], &[]);
    connects(from_controller.clone())
        .await
        .expect("no list delivered");
    deliver(
        &delivered,
        vec![with_crl("2", Some(authority.crl(&[7])))],
        &[],
    );
    let refused = connects(from_controller.clone())
        .await
        .expect_err("the delivered list revokes the server's certificate");
    assert!(refused.contains("Revoked"), "{refused}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A file replaced as Kubernetes replaces a mounted Secret's: written beside it, then renamed
/// over it.
fn replace(path: &std::path::Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let staged = path.with_extension("staged");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

#[tokio::test]
async fn files_that_change_are_used_by_the_next_connection_without_a_new_configuration() {
    let authority = RevokingCa::new();
    let other = RevokingCa::new();
    let (address, _accepted) = server(&authority.server, None).await;
    let connects = |tls: OriginatedTls| async move {
        let tcp = TcpStream::connect(address).await.unwrap();
        tls.connect(tcp, None)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let dir = std::env::temp_dir().join(format!("weft-rotate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    // A credential directory (local mode): its CA rotates, a revocation list arrives beside it.
    let ca = dir.join("credentials/api/ca.crt");
    let crl = dir.join("credentials/api/ca.crl");
    replace(&ca, &authority.ca);
    let directory = OriginationCredentials::directory(Some(&dir.join("credentials")));
    let settings = proto::UpstreamTls {
        credential_name: "api".to_owned(),
        ..Default::default()
    };
    let tls = OriginatedTls::new(&settings, HOST, &directory).expect("settings");
    connects(tls.clone()).await.expect("the CA as configured");
    replace(&ca, &other.ca);
    let refused = connects(tls.clone())
        .await
        .expect_err("a CA that did not sign the server's certificate");
    // The other CA bears the same name: the server's signature does not verify with its key.
    assert!(refused.contains("BadSignature"), "{refused}");
    replace(&ca, &authority.ca);
    connects(tls.clone()).await.expect("the CA back");
    replace(&crl, &authority.crl(&[7]));
    let refused = connects(tls.clone())
        .await
        .expect_err("the list revokes the server's certificate");
    assert!(refused.contains("Revoked"), "{refused}");
    std::fs::remove_file(&crl).unwrap();
    connects(tls.clone()).await.expect("the list withdrawn");
    // A change that cannot be used fails closed, never falling back to the last good CA.
    replace(&ca, "not a certificate");
    assert!(tls.unusable().is_some(), "an unparsable CA is unusable");
    connects(tls.clone()).await.expect_err("an unparsable CA");
    std::fs::remove_file(&ca).unwrap();
    let why = tls.unusable().expect("a missing CA").to_string();
    assert!(why.contains("ca.crt"), "{why}");

    // The settings' own `caCertificates` file.
    let file = dir.join("files/ca.pem");
    replace(&file, &authority.ca);
    let settings = proto::UpstreamTls {
        ca_certificates: file.display().to_string(),
        ..Default::default()
    };
    let none = OriginationCredentials::default();
    let tls = OriginatedTls::new(&settings, HOST, &none).expect("settings");
    connects(tls.clone()).await.expect("the CA as configured");
    replace(&file, &other.ca);
    connects(tls.clone())
        .await
        .expect_err("the CA rotated away");
    replace(&file, &authority.ca);
    connects(tls).await.expect("the CA back");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TLS server on loopback presenting `server`, which sends the SNI of each handshake it
/// completes (`None`: the handshake failed).
async fn naming_server(
    server: &(String, String),
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Option<String>>,
) {
    let chain = CertificateDer::pem_slice_iter(server.0.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(server.1.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(weft_identity::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (names, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let name = match acceptor.accept(tcp).await {
                Ok(tls) => Some(tls.get_ref().1.server_name().unwrap_or("").to_owned()),
                Err(_) => None,
            };
            if names.send(name).is_err() {
                return;
            }
        }
    });
    (address, received)
}

#[tokio::test]
async fn a_wildcard_host_presents_and_verifies_each_endpoint_host_unless_the_settings_name_one() {
    let served = certificate("a.wild.example");
    let (address, mut seen) = naming_server(&served).await;
    let dir = std::env::temp_dir().join(format!("weft-auto-sni-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &served.0).unwrap();
    let none = OriginationCredentials::default();
    let settings = |sni: &str, subject_alt_names: &[&str]| proto::UpstreamTls {
        ca_certificates: ca.display().to_string(),
        sni: sni.to_owned(),
        subject_alt_names: subject_alt_names.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    };
    let connect = |tls: OriginatedTls, host: Option<&'static str>| async move {
        let tcp = TcpStream::connect(address).await.unwrap();
        tls.connect(tcp, host)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };

    // No `sni`: each endpoint's host is sent and the certificate must be valid for it.
    let auto = OriginatedTls::new(&settings("", &[]), "*.wild.example", &none).unwrap();
    assert!(auto.names_endpoint_hosts());
    connect(auto.clone(), Some("a.wild.example"))
        .await
        .expect("the certificate is a.wild.example's");
    assert_eq!(seen.recv().await, Some(Some("a.wild.example".to_owned())));
    let refused = connect(auto.clone(), Some("b.wild.example"))
        .await
        .expect_err("the certificate is not b.wild.example's");
    assert!(
        refused.contains("not valid for name \"b.wild.example\""),
        "{refused}"
    );
    assert_eq!(seen.recv().await, Some(None));
    // A wildcard names no server of its own: without an endpoint host, no connection.
    let refused = connect(auto, None).await.expect_err("no name");
    assert!(refused.contains("no server name"), "{refused}");
    assert_eq!(seen.recv().await, Some(None), "no handshake");

    // `subjectAltNames` are verified in place of the host, which is still sent.
    let pinned =
        OriginatedTls::new(&settings("", &["a.wild.example"]), "*.wild.example", &none).unwrap();
    connect(pinned, Some("b.wild.example"))
        .await
        .expect("the certificate holds a subject alt name");
    assert_eq!(seen.recv().await, Some(Some("b.wild.example".to_owned())));

    // An `sni` of the settings is every connection's, whatever the endpoint's host.
    let named =
        OriginatedTls::new(&settings("a.wild.example", &[]), "*.wild.example", &none).unwrap();
    assert!(!named.names_endpoint_hosts());
    connect(named, Some("b.wild.example"))
        .await
        .expect("the settings' name");
    assert_eq!(seen.recv().await, Some(Some("a.wild.example".to_owned())));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `insecureSkipVerify`: a server no CA vouches for, under a name that is not the SNI, is
/// refused by default and accepted when the settings say so; for MUTUAL the delivered client
/// pair is still presented, and no CA needs to be delivered.
#[tokio::test]
async fn insecure_skip_verify_accepts_a_server_nothing_vouches_for() {
    let untrusted = certificate("other.example.net");
    let (address, mut accepted) = server(&untrusted, None).await;
    let connect = |settings: proto::UpstreamTls, credentials: OriginationCredentials| async move {
        let tls = OriginatedTls::new(&settings, HOST, &credentials).expect("settings");
        let tcp = TcpStream::connect(address).await.unwrap();
        tls.connect(tcp, None).await.map(drop)
    };
    let verified = proto::UpstreamTls::default();
    let error = connect(verified.clone(), OriginationCredentials::default())
        .await
        .expect_err("the Mozilla roots do not vouch for it");
    assert!(error.to_string().contains("certificate"), "{error}");
    assert_eq!(accepted.recv().await, Some(false));
    let skipping = proto::UpstreamTls {
        insecure_skip_verify: true,
        ..verified
    };
    connect(skipping, OriginationCredentials::default())
        .await
        .expect("not verified");
    assert_eq!(accepted.recv().await, Some(true));

    let client_cert = certificate("client.egress");
    let (address, mut accepted) = server(&untrusted, Some(&client_cert.0)).await;
    let delivered = XdsCredentials::default();
    deliver(&delivered, vec![pair("1", &client_cert)], &[]);
    let credentials = OriginationCredentials {
        directory: None,
        delivered,
    };
    let mutual = proto::UpstreamTls {
        credential_name: "api-client".to_owned(),
        credential_resource: RESOURCE.to_owned(),
        mutual: true,
        insecure_skip_verify: true,
        ..Default::default()
    };
    let tls = OriginatedTls::new(&mutual, HOST, &credentials).expect("settings");
    assert_eq!(tls.unusable(), None, "no CA is needed");
    let tcp = TcpStream::connect(address).await.unwrap();
    tls.connect(tcp, None).await.expect("not verified");
    assert_eq!(
        accepted.recv().await,
        Some(true),
        "the client pair was presented"
    );
    // Verifying, the same credential needs its CA.
    let verifying = OriginatedTls::new(
        &proto::UpstreamTls {
            insecure_skip_verify: false,
            ..mutual
        },
        HOST,
        &credentials,
    )
    .expect("settings");
    assert!(verifying.unusable().is_some());
}
