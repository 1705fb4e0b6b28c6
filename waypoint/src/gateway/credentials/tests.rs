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
            min_version: TlsVersion::Auto,
            max_version: TlsVersion::Auto,
            cipher_suites: Vec::new(),
        }),
        virtual_hosts: Vec::new(),
        sni_routes: Vec::new(),
        tcp: None,
    }
}

#[test]
fn a_credential_is_read_from_its_directory_and_again_when_it_changes() {
    let dir = directory("rotation");
    write_credential(&dir, "shop-cert", &certificate("shop.example.com"));
    let store = CredentialStore::new(CredentialSource::Directory(dir.clone()));
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
    let store = CredentialStore::new(CredentialSource::Directory(dir.clone()));
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
        min_version: min,
        max_version: max,
        cipher_suites: ciphers.iter().map(|c| (*c).to_owned()).collect(),
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
