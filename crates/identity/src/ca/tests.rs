use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, UnixTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;
use crate::WorkloadKey;
use crate::test_support::{TestDir, spiffe};

fn csr_pem_with_sans(key: &KeyPair, sans: Vec<SanType>) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn uri(text: &str) -> SanType {
    SanType::URI(Ia5String::try_from(text).unwrap())
}

fn leaf_der(chain: &CertificateChain) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(chain.leaf_pem.as_bytes()).unwrap()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

#[test]
fn signed_leaf_verifies_and_carries_exactly_the_identity() {
    let ca = CertificateAuthority::generate().unwrap();
    let identity = spiffe("bookinfo", "reviews");
    let key = WorkloadKey::generate().unwrap();
    let ttl = Duration::from_secs(2 * 3600);
    let chain = ca
        .sign_csr(&key.csr_for(&identity).unwrap(), &identity, ttl)
        .unwrap();
    let issued_at = unix_now();
    assert_eq!(chain.root_pem, ca.root_cert_pem());
    let der = leaf_der(&chain);

    // Chains to the root under webpki, for both directions of mTLS.
    let anchor = webpki::anchor_from_trusted_cert(ca.root_cert_der()).unwrap();
    let end_entity = webpki::EndEntityCert::try_from(&der).unwrap();
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                std::slice::from_ref(&anchor),
                &[],
                UnixTime::now(),
                usage,
                None,
                None,
            )
            .unwrap();
    }

    let (_, leaf) = X509Certificate::from_der(der.as_ref()).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "SAN must be critical with an empty subject");
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI(
            "spiffe://cluster.local/ns/bookinfo/sa/reviews"
        )]
    );
    assert!(leaf.subject().iter_attributes().next().is_none());
    assert!(!leaf.is_ca());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!eku.any && !eku.code_signing && eku.other.is_empty());
    let key_usage = leaf.key_usage().unwrap().unwrap().value;
    assert!(key_usage.digital_signature() && key_usage.key_encipherment());
    assert!(!key_usage.key_cert_sign());

    let not_after = leaf.validity().not_after.timestamp();
    let expected = issued_at + i64::try_from(ttl.as_secs()).unwrap();
    assert!(
        (not_after - expected).abs() <= 1,
        "not_after {not_after} should be within a second of {expected}"
    );
    let not_before = leaf.validity().not_before.timestamp();
    assert!(not_before < issued_at, "not_before must be backdated");
    assert!(issued_at - not_before <= 61);
    assert_eq!(leaf.public_key().raw, key.public_key_der().as_slice());
}

#[test]
fn requested_dns_and_ip_sans_are_dropped() {
    let ca = CertificateAuthority::generate().unwrap();
    let identity = spiffe("default", "sleep");
    let key = KeyPair::generate().unwrap();
    let csr = csr_pem_with_sans(
        &key,
        vec![
            uri(&identity.to_string()),
            SanType::DnsName("evil.example.com".try_into().unwrap()),
            SanType::IpAddress("10.0.0.1".parse().unwrap()),
        ],
    );
    let chain = ca
        .sign_csr(&csr, &identity, Duration::from_secs(60))
        .unwrap();
    let der = leaf_der(&chain);
    let (_, leaf) = X509Certificate::from_der(der.as_ref()).unwrap();
    let names = &leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(
        names,
        &vec![GeneralName::URI(
            "spiffe://cluster.local/ns/default/sa/sleep"
        )]
    );
}

#[test]
fn csr_for_another_identity_is_refused_naming_it() {
    let ca = CertificateAuthority::generate().unwrap();
    let authorized = spiffe("default", "sleep");
    let key = KeyPair::generate().unwrap();
    let csr = csr_pem_with_sans(
        &key,
        vec![uri("spiffe://cluster.local/ns/kube-system/sa/admin")],
    );
    let error = ca
        .sign_csr(&csr, &authorized, Duration::from_secs(60))
        .unwrap_err();
    match &error {
        CaError::CsrIdentityMismatch {
            requested,
            authorized: named,
        } => {
            assert_eq!(requested, "spiffe://cluster.local/ns/kube-system/sa/admin");
            assert_eq!(named, &authorized);
        }
        other => panic!("unexpected error {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains("kube-system/sa/admin"), "{message}");
    assert!(message.contains("default/sa/sleep"), "{message}");
}

#[test]
fn csr_without_sans_gets_the_authorized_identity() {
    let ca = CertificateAuthority::generate().unwrap();
    let identity = spiffe("default", "sleep");
    let key = KeyPair::generate().unwrap();
    let csr = csr_pem_with_sans(&key, vec![]);
    let chain = ca
        .sign_csr(&csr, &identity, Duration::from_secs(60))
        .unwrap();
    let found = crate::identity_from_certificate(&leaf_der(&chain)).unwrap();
    assert_eq!(found, identity);
}

#[test]
fn garbage_and_truncated_csrs_are_refused_clearly() {
    let ca = CertificateAuthority::generate().unwrap();
    let identity = spiffe("default", "sleep");
    let good = WorkloadKey::generate().unwrap().csr_for(&identity).unwrap();
    let ttl = Duration::from_secs(60);

    for garbage in [
        "",
        "not a csr at all",
        "-----BEGIN CERTIFICATE REQUEST-----\n",
    ] {
        let error = ca.sign_csr(garbage, &identity, ttl).unwrap_err();
        assert!(
            matches!(error, CaError::CsrPem { .. }),
            "{garbage:?}: {error:?}"
        );
        assert!(error.to_string().contains("CSR is not PEM"), "{error}");
    }

    // Cut in the middle of the base64 body: the END line is gone.
    let truncated_text = &good[..good.len() / 2];
    let error = ca.sign_csr(truncated_text, &identity, ttl).unwrap_err();
    assert!(matches!(error, CaError::CsrPem { .. }), "{error:?}");

    // Well-formed PEM around a DER request that stops short.
    let der = CertificateSigningRequestDer::from_pem_slice(good.as_bytes()).unwrap();
    let short = &der.as_ref()[..der.as_ref().len() - 20];
    let reencoded = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64_encode(short)
    );
    let error = ca.sign_csr(&reencoded, &identity, ttl).unwrap_err();
    assert!(matches!(error, CaError::CsrMalformed { .. }), "{error:?}");
    assert!(
        error.to_string().starts_with("CSR is malformed DER"),
        "{error}"
    );
}

#[test]
fn csr_with_broken_signature_is_refused() {
    let ca = CertificateAuthority::generate().unwrap();
    let identity = spiffe("default", "sleep");
    let good = WorkloadKey::generate().unwrap().csr_for(&identity).unwrap();
    let der = CertificateSigningRequestDer::from_pem_slice(good.as_bytes()).unwrap();
    let mut bytes = der.as_ref().to_vec();
    // The last byte belongs to the ECDSA `s` integer: the DER still parses, the math fails.
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let tampered = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64_encode(&bytes)
    );
    let error = ca
        .sign_csr(&tampered, &identity, Duration::from_secs(60))
        .unwrap_err();
    assert!(matches!(error, CaError::CsrSignature), "{error:?}");
}

#[test]
fn zero_ttl_is_refused() {
    let ca = CertificateAuthority::generate().unwrap();
    let identity = spiffe("default", "sleep");
    let csr = WorkloadKey::generate().unwrap().csr_for(&identity).unwrap();
    assert!(matches!(
        ca.sign_csr(&csr, &identity, Duration::ZERO),
        Err(CaError::ZeroTtl)
    ));
}

#[test]
fn serials_differ_between_certificates_for_the_same_key() {
    let ca = CertificateAuthority::generate().unwrap();
    let identity = spiffe("default", "sleep");
    let csr = WorkloadKey::generate().unwrap().csr_for(&identity).unwrap();
    let serial = |chain: &CertificateChain| {
        let der = leaf_der(chain);
        let (_, leaf) = X509Certificate::from_der(der.as_ref()).unwrap();
        leaf.raw_serial().to_vec()
    };
    let first = ca
        .sign_csr(&csr, &identity, Duration::from_secs(60))
        .unwrap();
    let second = ca
        .sign_csr(&csr, &identity, Duration::from_secs(60))
        .unwrap();
    assert_ne!(serial(&first), serial(&second));
}

#[test]
fn root_is_a_ten_year_p256_ca_naming_the_mesh() {
    let ca = CertificateAuthority::generate().unwrap();
    let (_, root) = X509Certificate::from_der(ca.root_cert_der().as_ref()).unwrap();
    assert!(root.is_ca());
    assert_eq!(root.subject().to_string(), "O=weft, CN=weft mesh root CA");
    assert_eq!(root.subject(), root.issuer());
    let lifetime = root.validity().not_after.timestamp() - unix_now();
    let ten_years = 10 * 365 * 24 * 3600;
    assert!((lifetime - ten_years).abs() <= 2, "{lifetime}");
    assert_eq!(
        root.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    assert!(root.key_usage().unwrap().unwrap().value.key_cert_sign());
}

#[test]
fn load_or_create_persists_and_reloads_the_same_root() {
    let dir = TestDir::new("ca");
    let created = CertificateAuthority::load_or_create(dir.path()).unwrap();
    let key_mode = fs::metadata(dir.path().join(ROOT_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let reloaded = CertificateAuthority::load_or_create(dir.path()).unwrap();
    assert_eq!(created.root_cert_pem(), reloaded.root_cert_pem());

    // The reloaded CA signs with the same key: its leaf verifies against the first root.
    let identity = spiffe("default", "sleep");
    let csr = WorkloadKey::generate().unwrap().csr_for(&identity).unwrap();
    let chain = reloaded
        .sign_csr(&csr, &identity, Duration::from_secs(60))
        .unwrap();
    let anchor = webpki::anchor_from_trusted_cert(created.root_cert_der()).unwrap();
    let der = leaf_der(&chain);
    webpki::EndEntityCert::try_from(&der)
        .unwrap()
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .unwrap();
}

#[test]
fn half_written_ca_directory_is_not_overwritten() {
    let dir = TestDir::new("partial");
    fs::create_dir_all(dir.path()).unwrap();
    fs::write(dir.path().join(ROOT_KEY_FILE), "key").unwrap();
    let error = CertificateAuthority::load_or_create(dir.path()).unwrap_err();
    assert!(
        matches!(error, CaError::PartialCaDirectory { .. }),
        "{error:?}"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join(ROOT_KEY_FILE)).unwrap(),
        "key"
    );
}

#[test]
fn operator_root_is_checked() {
    let first = KeyPair::generate().unwrap();
    let second = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = params.self_signed(&first).unwrap();

    let ca = CertificateAuthority::from_pem(&root.pem(), &first.serialize_pem()).unwrap();
    assert_eq!(ca.root_cert_der(), root.der());

    assert!(matches!(
        CertificateAuthority::from_pem(&root.pem(), &second.serialize_pem()),
        Err(CaError::RootKeyMismatch)
    ));
    let leaf_params = CertificateParams::new(vec!["not-a-ca.example".to_owned()]).unwrap();
    let not_ca = leaf_params.self_signed(&first).unwrap();
    assert!(matches!(
        CertificateAuthority::from_pem(&not_ca.pem(), &first.serialize_pem()),
        Err(CaError::RootNotCa)
    ));
    assert!(matches!(
        CertificateAuthority::from_pem("nope", &first.serialize_pem()),
        Err(CaError::RootCertificatePem { .. })
    ));
}

#[test]
fn pem_encoding_round_trips_every_padding_length() {
    // Up to 100 bytes: every padding length and bodies longer than one 64-column line.
    for len in 1..100u8 {
        let bytes: Vec<u8> = (0..len)
            .map(|i| i.wrapping_mul(37).wrapping_add(200))
            .collect();
        let der = CertificateDer::from(bytes.clone());
        let decoded = CertificateDer::from_pem_slice(pem_of(&der).as_bytes()).unwrap();
        assert_eq!(decoded.as_ref(), bytes.as_slice(), "length {len}");
    }
}
