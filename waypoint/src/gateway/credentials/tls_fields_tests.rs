//! Istio's `ServerTLSSettings` beyond one credential: two certificates chosen by the client's
//! signature schemes (`credentialNames`, `tlsCertificates`), the SANs a client certificate must
//! carry (`subjectAltNames`), and certificates mounted as files in the gateway's pod
//! (`serverCertificate`, `privateKey`, `caCertificates`).

use rcgen::{CertificateParams, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::mutual_tests::{
    ClientCertificate, client_ca, client_certificate, client_refusal, edge_server, handshake,
};
use super::*;
use crate::model::gateway::{CertificateFiles, NamedCredential, TlsFiles};
use crate::testing::TestMesh;
use crate::upstream::Unverified;

/// A fresh directory of this test process.
fn directory(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-tls-fields-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A self-signed certificate for `shop.example.com` with an RSA or an ECDSA (P-256) key:
/// (certificate PEM, key PEM, certificate DER).
fn certificate(rsa: bool) -> (String, String, CertificateDer<'static>) {
    let key = if rsa {
        KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap()
    } else {
        KeyPair::generate().unwrap()
    };
    let params = CertificateParams::new(vec!["shop.example.com".to_owned()]).unwrap();
    let certificate = params.self_signed(&key).unwrap();
    (
        certificate.pem(),
        key.serialize_pem(),
        certificate.der().clone(),
    )
}

fn write_credential(dir: &Path, name: &str, (cert, key, _): &(String, String, CertificateDer)) {
    let own = dir.join(name);
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(own.join(CERTIFICATE_FILE), cert).unwrap();
    std::fs::write(own.join(KEY_FILE), key).unwrap();
}

const ECDSA_ONLY: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
];
const RSA_ONLY: &[SignatureScheme] = &[
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
];

/// A client that verifies no server certificate ([`Unverified`]) and offers only some signature
/// schemes.
#[derive(Debug)]
struct Offers(&'static [SignatureScheme], Unverified);

impl ServerCertVerifier for Offers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.1
            .verify_server_cert(end_entity, intermediates, name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.1.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.1.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.to_vec()
    }
}

/// The certificate `config` presents to a client offering only `schemes`; `None` when the
/// handshake fails.
fn presented(
    config: Arc<ServerConfig>,
    schemes: &'static [SignatureScheme],
) -> Option<CertificateDer<'static>> {
    let provider = weft_identity::crypto_provider();
    let client_config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Offers(schemes, Unverified(provider))))
        .with_no_client_auth();
    let name = ServerName::try_from("shop.example.com").unwrap();
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
            return client
                .peer_certificates()
                .map(|c| c[0].clone().into_owned());
        }
    }
    None
}

#[test]
fn two_credential_names_present_the_certificate_the_client_can_verify() {
    let dir = directory("credential-names");
    let rsa = certificate(true);
    let ecdsa = certificate(false);
    write_credential(&dir, "shop-rsa", &rsa);
    write_credential(&dir, "shop-ecdsa", &ecdsa);
    let store = CredentialStore::new(CredentialSource::directory(dir.clone()));
    // RSA first: an ECDSA-capable client still gets the ECDSA one.
    let mut server = edge_server(ServerTlsMode::Simple, "shop-rsa");
    server.tls.as_mut().unwrap().additional_credentials = vec![NamedCredential {
        name: "shop-ecdsa".to_owned(),
        resource: String::new(),
    }];
    let config = store.server_config(&server).unwrap();
    assert_eq!(
        presented(Arc::clone(&config), ECDSA_ONLY),
        Some(ecdsa.2.clone()),
        "an ECDSA-only client gets the ECDSA certificate"
    );
    assert_eq!(
        presented(Arc::clone(&config), RSA_ONLY),
        Some(rsa.2.clone()),
        "an RSA-only client gets the RSA certificate"
    );
    let both: &'static [SignatureScheme] = &[
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::ECDSA_NISTP256_SHA256,
    ];
    assert_eq!(presented(config, both), Some(ecdsa.2.clone()));

    // The second credential broken: the server refuses TLS, as with a broken first one.
    std::fs::remove_file(dir.join("shop-ecdsa").join(KEY_FILE)).unwrap();
    assert!(matches!(
        store.server_config(&server),
        Err(CredentialError::Read(..))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A MUTUAL (or OPTIONAL_MUTUAL) server of credential `shop-cert` under `dir`, whose CA
/// `issuer` signs clients, requiring `names`.
fn mutual_with_names(mode: ServerTlsMode, names: &[&str]) -> EdgeServer {
    let mut server = edge_server(mode, "shop-cert");
    server.tls.as_mut().unwrap().subject_alt_names = names.iter().map(|n| n.to_string()).collect();
    server
}

#[test]
fn subject_alt_names_refuse_client_certificates_without_one_of_them() {
    let dir = directory("subject-alt-names");
    let server_certificate = certificate(false);
    write_credential(&dir, "shop-cert", &server_certificate);
    let (ca, issuer) = client_ca();
    std::fs::write(dir.join("shop-cert").join(CA_FILE), ca).unwrap();
    let store = CredentialStore::new(CredentialSource::directory(dir.clone()));
    let buyer = "spiffe://example.org/ns/shop/sa/buyer";
    let other = "spiffe://example.org/ns/shop/sa/other";

    let mutual = mutual_with_names(ServerTlsMode::Mutual, &[buyer]);
    let config = store.server_config(&mutual).unwrap();
    assert!(
        handshake(
            Arc::clone(&config),
            Some(client_certificate(&issuer, Some(buyer)))
        )
        .is_some(),
        "a client certificate with the URI SAN is accepted"
    );
    assert!(
        handshake(
            Arc::clone(&config),
            Some(client_certificate(&issuer, Some(other)))
        )
        .is_none(),
        "the CA signed it, but it carries none of the SANs: refused"
    );
    assert!(handshake(config, Some(client_certificate(&issuer, None))).is_none());

    // A DNS SAN matches too (the client certificates carry client.example.com).
    let by_dns = mutual_with_names(ServerTlsMode::Mutual, &["client.example.com"]);
    let config = store.server_config(&by_dns).unwrap();
    assert!(handshake(config, Some(client_certificate(&issuer, None))).is_some());

    // OPTIONAL_MUTUAL: no certificate passes; one presented must carry a SAN.
    let optional = mutual_with_names(ServerTlsMode::OptionalMutual, &[buyer]);
    let config = store.server_config(&optional).unwrap();
    assert!(handshake(Arc::clone(&config), None).is_some());
    assert!(handshake(config, Some(client_certificate(&issuer, Some(other)))).is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn istio_mutual_refuses_a_mesh_client_without_one_of_the_subject_alt_names() {
    let mesh = TestMesh::new();
    let gateway = mesh.material("edge", "ingress");
    let store = CredentialStore::new(CredentialSource::default())
        .with_mesh_identity(gateway.identity().clone(), gateway.source());
    let buyer = mesh.material("shop", "buyer");
    let other = mesh.material("shop", "other");
    let mut server = edge_server(ServerTlsMode::IstioMutual, "");
    server.tls.as_mut().unwrap().subject_alt_names = vec![buyer.identity().to_string()];
    let config = store.terminating_config(&server).await.unwrap();
    let chain = |material: &crate::testing::TestIdentity| {
        let source = material.source();
        let identity = material.identity().clone();
        async move {
            let certificate = source.fetch(&identity).await.unwrap();
            let client: ClientCertificate =
                (certificate.chain().to_vec(), certificate.private_key());
            client
        }
    };
    let accepted = handshake(Arc::clone(&config), Some(chain(&buyer).await)).unwrap();
    assert_eq!(
        store.client_identity(&server, &accepted).unwrap().as_ref(),
        Some(buyer.identity())
    );
    // Refused during the handshake, as Envoy's `match_subject_alt_names` refuses it: the
    // client is told why with an alert, not left with a closed connection.
    assert_eq!(
        client_refusal(Arc::clone(&config), chain(&other).await),
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateUnknown
        ))
    );
    assert_eq!(client_refusal(config, chain(&buyer).await), None);
}

/// A server of Istio's file-mounted gateway: certificates and CA from files of the pod.
fn file_server(
    mode: ServerTlsMode,
    certificates: &[(&Path, &Path)],
    ca: Option<&Path>,
) -> EdgeServer {
    let mut server = edge_server(mode, "");
    server.tls.as_mut().unwrap().files = Some(TlsFiles {
        certificates: certificates
            .iter()
            .map(|(chain, key)| CertificateFiles {
                certificate_chain: chain.display().to_string(),
                private_key: key.display().to_string(),
            })
            .collect(),
        ca_certificates: ca.map(|p| p.display().to_string()),
        ca_crl: None,
    });
    server
}

#[test]
fn file_mounted_certificates_are_served_reloaded_and_fail_only_their_server() {
    let dir = directory("files");
    let write = |name: &str, (cert, key, _): &(String, String, CertificateDer)| {
        let chain = dir.join(format!("{name}.crt"));
        let private = dir.join(format!("{name}.key"));
        std::fs::write(&chain, cert).unwrap();
        std::fs::write(&private, key).unwrap();
        (chain, private)
    };
    let first = certificate(false);
    let (chain, key) = write("server", &first);
    // No credentials directory, nothing delivered: the files are all there is.
    let store = CredentialStore::new(CredentialSource::default());
    let server = file_server(ServerTlsMode::Simple, &[(&chain, &key)], None);
    let config = store.server_config(&server).unwrap();
    assert_eq!(presented(config, ECDSA_ONLY), Some(first.2.clone()));

    // Replaced as Kubernetes replaces a mounted file (a rename): the next handshake presents
    // the new certificate.
    let second = certificate(false);
    let (new_chain, new_key) = write("server-next", &second);
    std::fs::rename(new_chain, &chain).unwrap();
    std::fs::rename(new_key, &key).unwrap();
    let config = store.server_config(&server).unwrap();
    assert_eq!(presented(config, ECDSA_ONLY), Some(second.2.clone()));

    // tlsCertificates: an RSA and an ECDSA certificate, chosen per client.
    let rsa = certificate(true);
    let (rsa_chain, rsa_key) = write("rsa", &rsa);
    let pair = file_server(
        ServerTlsMode::Simple,
        &[(&rsa_chain, &rsa_key), (&chain, &key)],
        None,
    );
    let config = store.server_config(&pair).unwrap();
    assert_eq!(
        presented(Arc::clone(&config), RSA_ONLY),
        Some(rsa.2.clone())
    );
    assert_eq!(presented(config, ECDSA_ONLY), Some(second.2.clone()));

    // MUTUAL with caCertificates: clients the CA signed only.
    let (ca, issuer) = client_ca();
    let ca_path = dir.join("ca.crt");
    std::fs::write(&ca_path, ca).unwrap();
    let mutual = file_server(ServerTlsMode::Mutual, &[(&chain, &key)], Some(&ca_path));
    let config = store.server_config(&mutual).unwrap();
    assert!(handshake(Arc::clone(&config), None).is_none());
    assert!(handshake(config, Some(client_certificate(&issuer, None))).is_some());

    // A missing file refuses that server only.
    std::fs::remove_file(&rsa_key).unwrap();
    assert!(matches!(
        store.server_config(&pair),
        Err(CredentialError::Read(..))
    ));
    assert!(store.server_config(&server).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client certificate `issuer` signs and its key's DER SubjectPublicKeyInfo.
fn client_with_spki(issuer: &rcgen::Issuer<'static, KeyPair>) -> (ClientCertificate, Vec<u8>) {
    use rcgen::PublicKeyData;
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["client.example.com".to_owned()]).unwrap();
    let certificate = params.signed_by(&key, issuer).unwrap();
    let spki = key.subject_public_key_info();
    (
        (
            vec![certificate.der().clone()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        ),
        spki,
    )
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

#[test]
fn pinned_client_certificates_pass_and_others_of_the_same_ca_are_refused() {
    use base64::Engine;
    let dir = directory("pins");
    write_credential(&dir, "shop-cert", &certificate(false));
    let (ca, issuer) = client_ca();
    std::fs::write(dir.join("shop-cert").join(CA_FILE), ca).unwrap();
    let store = CredentialStore::new(CredentialSource::directory(dir.clone()));
    let (pinned, pinned_spki) = client_with_spki(&issuer);
    let (other, _) = client_with_spki(&issuer);
    let clone = |c: &ClientCertificate| (c.0.clone(), c.1.clone_key());
    let spki_pin = base64::engine::general_purpose::STANDARD.encode(sha256(&pinned_spki));
    // Envoy's form of a certificate hash: upper-case hex pairs separated by colons.
    let hash_pin = sha256(pinned.0[0].as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let pinned_by = |spki: Vec<String>, hash: Vec<String>| {
        let mut server = edge_server(ServerTlsMode::Mutual, "shop-cert");
        let tls = server.tls.as_mut().unwrap();
        tls.verify_certificate_spki = spki;
        tls.verify_certificate_hash = hash;
        store.server_config(&server).unwrap()
    };
    let unrelated = "ab".repeat(32);
    for (what, config) in [
        ("SPKI", pinned_by(vec![spki_pin.clone()], Vec::new())),
        ("hash", pinned_by(Vec::new(), vec![hash_pin.clone()])),
        // Both lists set: a match in either suffices, as in Envoy.
        (
            "hash beside an unmatched SPKI",
            pinned_by(
                vec![base64::engine::general_purpose::STANDARD.encode([0u8; 32])],
                vec![unrelated.clone(), hash_pin.clone()],
            ),
        ),
        (
            "SPKI beside an unmatched hash",
            pinned_by(vec![spki_pin.clone()], vec![unrelated.clone()]),
        ),
    ] {
        assert!(
            handshake(Arc::clone(&config), Some(clone(&pinned))).is_some(),
            "{what}: the pinned certificate is accepted"
        );
        assert_eq!(
            client_refusal(config, clone(&other)),
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateUnknown
            )),
            "{what}: the same CA signed the other certificate, but it is not pinned"
        );
    }

    // A pin that is no SHA-256 refuses the server, as Envoy refuses the listener.
    let mut server = edge_server(ServerTlsMode::Mutual, "shop-cert");
    server.tls.as_mut().unwrap().verify_certificate_hash = vec!["abcd".to_owned()];
    assert!(matches!(
        store.server_config(&server),
        Err(CredentialError::Settings(reason)) if reason.contains("verifyCertificateHash")
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
