//! Credentials from files: read, rotated, broken, and what each server is given.

use std::path::PathBuf;

use super::*;
use crate::model::gateway::{EdgeProtocol, EdgeServer};

/// A fresh directory of this test process.
fn directory(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-credentials-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A self-signed certificate for `host`: (certificate PEM, key PEM).
fn certificate(host: &str) -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap();
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

fn write_credential(dir: &std::path::Path, name: &str, (cert, key): &(String, String)) {
    let own = dir.join(name);
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(own.join(CERTIFICATE_FILE), cert).unwrap();
    std::fs::write(own.join(KEY_FILE), key).unwrap();
}

fn server(credential: &str, mode: ServerTlsMode) -> EdgeServer {
    EdgeServer {
        gateway: "shop/gw".to_owned(),
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
fn a_credential_is_read_from_its_directory_and_again_when_it_changes() {
    let dir = directory("rotation");
    write_credential(&dir, "shop-cert", &certificate("shop.example.com"));
    let store = CredentialStore::new(CredentialSource::directory(dir.clone()));
    let simple = server("shop-cert", ServerTlsMode::Simple);
    let first = store.server_config(&simple).expect("a usable credential");
    assert_eq!(first.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    // Unchanged files: the same configuration, not rebuilt per handshake.
    assert!(Arc::ptr_eq(&first, &store.server_config(&simple).unwrap()));
    // A rotated certificate (a different length, as a new key always gives): a new one.
    write_credential(&dir, "shop-cert", &certificate("shop-rotated.example.com"));
    let second = store.server_config(&simple).unwrap();
    assert!(!Arc::ptr_eq(&first, &second));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_or_broken_credential_fails_only_its_servers() {
    let dir = directory("broken");
    write_credential(&dir, "good", &certificate("good.example.com"));
    let (cert, _) = certificate("bad.example.com");
    let (_, other_key) = certificate("bad.example.com");
    write_credential(&dir, "mismatched", &(cert, other_key));
    std::fs::create_dir_all(dir.join("garbage")).unwrap();
    std::fs::write(
        dir.join("garbage").join(CERTIFICATE_FILE),
        "not a certificate",
    )
    .unwrap();
    std::fs::write(dir.join("garbage").join(KEY_FILE), "not a key").unwrap();
    let store = CredentialStore::new(CredentialSource::directory(dir.clone()));
    assert!(matches!(
        store.server_config(&server("missing", ServerTlsMode::Simple)),
        Err(CredentialError::Read(..))
    ));
    assert!(matches!(
        store.server_config(&server("mismatched", ServerTlsMode::Simple)),
        Err(CredentialError::KeyMismatch(_))
    ));
    assert!(
        store
            .server_config(&server("garbage", ServerTlsMode::Simple))
            .is_err()
    );
    // A name that would leave the directory is no credential.
    assert!(matches!(
        store.server_config(&server("../good", ServerTlsMode::Simple)),
        Err(CredentialError::Settings(_))
    ));
    // MUTUAL needs a CA: in the credential, or as `<name>-cacert`.
    assert_eq!(
        store
            .server_config(&server("good", ServerTlsMode::Mutual))
            .err(),
        Some(CredentialError::NoCa)
    );
    let (ca, _) = certificate("clients");
    std::fs::create_dir_all(dir.join("good-cacert")).unwrap();
    std::fs::write(dir.join("good-cacert").join(CA_FILE), ca).unwrap();
    assert!(
        store
            .server_config(&server("good", ServerTlsMode::Mutual))
            .is_ok()
    );
    // The good one serves throughout.
    assert!(
        store
            .server_config(&server("good", ServerTlsMode::Simple))
            .is_ok()
    );
    // Broken, then repaired: served again without a restart.
    write_credential(&dir, "mismatched", &certificate("bad.example.com"));
    assert!(
        store
            .server_config(&server("mismatched", ServerTlsMode::Simple))
            .is_ok()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn versions_and_cipher_suites_follow_the_server_settings() {
    let tls = |min, max, ciphers: &[&str]| ServerTls {
        mode: ServerTlsMode::Simple,
        https_redirect: false,
        credential_name: "c".to_owned(),
        credential_resource: String::new(),
        min_version: min,
        max_version: max,
        cipher_suites: ciphers.iter().map(|c| (*c).to_owned()).collect(),
        subject_alt_names: Vec::new(),
        verify_certificate_spki: Vec::new(),
        verify_certificate_hash: Vec::new(),
        additional_credentials: Vec::new(),
        files: None,
    };
    let names = |tls: &ServerTls| -> Vec<String> {
        versions(tls)
            .unwrap()
            .iter()
            .map(|v| format!("{:?}", v.version))
            .collect()
    };
    use TlsVersion as V;
    assert_eq!(names(&tls(V::Auto, V::Auto, &[])), ["TLSv1_2", "TLSv1_3"]);
    assert_eq!(names(&tls(V::V1_3, V::Auto, &[])), ["TLSv1_3"]);
    assert_eq!(names(&tls(V::V1_0, V::V1_2, &[])), ["TLSv1_2"]);
    assert!(versions(&tls(V::V1_0, V::V1_1, &[])).is_err());
    let base = weft_identity::crypto_provider();
    let chosen = provider_for(
        &base,
        &tls(V::Auto, V::Auto, &["ECDHE-RSA-AES128-GCM-SHA256"]),
    )
    .unwrap();
    let suites: Vec<String> = chosen
        .cipher_suites
        .iter()
        .filter(|s| s.version() == &rustls::version::TLS12)
        .map(|s| format!("{:?}", s.suite()))
        .collect();
    assert_eq!(suites, ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]);
    assert!(provider_for(&base, &tls(V::Auto, V::Auto, &["RC4-MD5"])).is_err());
}

// Credentials delivered over xDS (Kubernetes mode).

use weft_proto::envoy::config::core::v3::{DataSource, data_source::Specifier};
use weft_proto::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use weft_proto::envoy::service::discovery::v3::Resource;
use weft_xds::{Handler, Update};
use xds::XdsCredentials;

const RESOURCE: &str = "kubernetes://shop/shop-cert";

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

fn tls_resource(name: &str, version: &str, (cert, key): &(String, String)) -> Resource {
    resource(
        name,
        version,
        secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: bytes(cert),
            private_key: bytes(key),
        }),
    )
}

fn update(added: Vec<Resource>, removed: &[&str]) -> Update {
    Update {
        added,
        removed: removed.iter().map(|r| (*r).to_owned()).collect(),
        full_state: false,
    }
}

fn delivered_server(resource: &str, mode: ServerTlsMode) -> EdgeServer {
    let mut server = server("shop-cert", mode);
    server.tls.as_mut().unwrap().credential_resource = resource.to_owned();
    server
}

/// Completes a TLS handshake in memory against `config` with a client that trusts only
/// `trusted` for `host`: the server presents that certificate.
fn presents(config: Arc<ServerConfig>, trusted: &str, host: &str) -> bool {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(trusted.as_bytes()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let client_config =
        rustls::ClientConfig::builder_with_provider(weft_identity::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
    let mut server = rustls::ServerConnection::new(config).unwrap();
    for _ in 0..10 {
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        if server.read_tls(&mut wire.as_slice()).is_err() || server.process_new_packets().is_err() {
            return false;
        }
        let mut wire = Vec::new();
        server.write_tls(&mut wire).unwrap();
        if client.read_tls(&mut wire.as_slice()).is_err() || client.process_new_packets().is_err() {
            return false;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return true;
        }
    }
    false
}

#[test]
fn a_delivered_credential_serves_and_a_new_version_serves_the_next_handshake() {
    let credentials = XdsCredentials::default();
    let mut handler = credentials.handler();
    // No directory: Kubernetes mode, the controller's credentials only.
    let store = CredentialStore::new(CredentialSource {
        directory: None,
        xds: credentials.clone(),
    });
    let simple = delivered_server(RESOURCE, ServerTlsMode::Simple);
    assert_eq!(
        store.server_config(&simple).err(),
        Some(CredentialError::NotDelivered(RESOURCE.to_owned())),
        "nothing delivered yet: the server refuses TLS"
    );
    let first_cert = certificate("shop.example.com");
    handler
        .apply(update(vec![tls_resource(RESOURCE, "1", &first_cert)], &[]))
        .unwrap();
    let first = store
        .server_config(&simple)
        .expect("the delivered credential");
    assert!(presents(
        Arc::clone(&first),
        &first_cert.0,
        "shop.example.com"
    ));
    assert!(
        Arc::ptr_eq(&first, &store.server_config(&simple).unwrap()),
        "cached while unchanged"
    );
    // The Secret rotated: the controller's next version serves the next handshake.
    let rotated_cert = certificate("shop.example.com");
    handler
        .apply(update(
            vec![tls_resource(RESOURCE, "2", &rotated_cert)],
            &[],
        ))
        .unwrap();
    let rotated = store.server_config(&simple).unwrap();
    assert!(presents(
        Arc::clone(&rotated),
        &rotated_cert.0,
        "shop.example.com"
    ));
    assert!(
        !presents(rotated, &first_cert.0, "shop.example.com"),
        "the old certificate is gone"
    );
    // Withdrawn (the Secret was deleted, or the gateway may no longer use it): refused again.
    handler.apply(update(Vec::new(), &[RESOURCE])).unwrap();
    assert!(matches!(
        store.server_config(&simple),
        Err(CredentialError::NotDelivered(_))
    ));
}

#[test]
fn a_broken_delivered_credential_fails_only_its_server_until_it_is_repaired() {
    let credentials = XdsCredentials::default();
    let mut handler = credentials.handler();
    let store = CredentialStore::new(CredentialSource {
        directory: None,
        xds: credentials.clone(),
    });
    let other = "kubernetes://shop/other-cert";
    let (cert, _) = certificate("shop.example.com");
    let (_, wrong_key) = certificate("shop.example.com");
    handler
        .apply(update(
            vec![
                tls_resource(RESOURCE, "1", &(cert, wrong_key)),
                tls_resource(other, "1", &certificate("other.example.com")),
            ],
            &[],
        ))
        .unwrap();
    let broken = delivered_server(RESOURCE, ServerTlsMode::Simple);
    assert!(matches!(
        store.server_config(&broken),
        Err(CredentialError::KeyMismatch(_))
    ));
    assert!(
        store
            .server_config(&delivered_server(other, ServerTlsMode::Simple))
            .is_ok()
    );
    // MUTUAL without the `-cacert` resource: no CA; with it, served.
    let mutual = delivered_server(other, ServerTlsMode::Mutual);
    assert_eq!(
        store.server_config(&mutual).err(),
        Some(CredentialError::NoCa)
    );
    let (ca, _) = certificate("clients");
    let ca_resource = resource(
        &format!("{other}{CA_SECRET_SUFFIX}"),
        "1",
        secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: bytes(&ca),
            crl: None,
        }),
    );
    handler.apply(update(vec![ca_resource], &[])).unwrap();
    assert!(store.server_config(&mutual).is_ok());
    // Repaired by the next version: served without a restart.
    handler
        .apply(update(
            vec![tls_resource(
                RESOURCE,
                "2",
                &certificate("shop.example.com"),
            )],
            &[],
        ))
        .unwrap();
    assert!(store.server_config(&broken).is_ok());
}

#[test]
fn a_credential_naming_a_path_is_refused_and_the_last_good_ones_stay() {
    let credentials = XdsCredentials::default();
    let mut handler = credentials.handler();
    handler
        .apply(update(
            vec![tls_resource(
                RESOURCE,
                "1",
                &certificate("shop.example.com"),
            )],
            &[],
        ))
        .unwrap();
    let from_file = resource(
        RESOURCE,
        "2",
        secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(DataSource {
                specifier: Some(Specifier::Filename("/etc/shadow".to_owned())),
            }),
            private_key: bytes("key"),
        }),
    );
    let error = handler.apply(update(vec![from_file], &[])).unwrap_err();
    assert!(error.contains("only inline"), "{error}");
    assert_eq!(credentials.names(), [(RESOURCE.to_owned(), "1".to_owned())]);
}

#[test]
fn a_directory_serves_what_the_controller_does_not_deliver() {
    let dir = directory("fallback");
    write_credential(&dir, "shop-cert", &certificate("shop.example.com"));
    let store = CredentialStore::new(CredentialSource::directory(dir.clone()));
    // Local mode: the server names a resource nobody delivered; its directory serves.
    assert!(
        store
            .server_config(&delivered_server(RESOURCE, ServerTlsMode::Simple))
            .is_ok()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
