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

/// A CA certificate (CA:true) for `name`, signed by `parent`, with its key.
fn intermediate_of(parent: &CertificateAuthority, name: &str) -> (String, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let der = parent.sign_params_unchecked(&params, &key);
    (pem_of(&der), key.serialize_pem())
}

fn verify_server(
    root: &CertificateDer<'static>,
    chain: &[CertificateDer<'static>],
    usage: webpki::KeyUsage,
) -> Result<(), webpki::Error> {
    let anchor = webpki::anchor_from_trusted_cert(root).unwrap();
    let end_entity = webpki::EndEntityCert::try_from(&chain[0]).unwrap();
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &chain[1..],
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .map(|_| ())
}

fn ders(pems: &[String]) -> Vec<CertificateDer<'static>> {
    pems.iter()
        .flat_map(|pem| CertificateDer::pem_slice_iter(pem.as_bytes()).map(Result::unwrap))
        .collect()
}

#[test]
fn an_intermediate_ca_signs_chains_that_verify_up_to_the_root() {
    let root = CertificateAuthority::generate().unwrap();
    let (ca_cert, ca_key) = intermediate_of(&root, "weft intermediate");
    // cert-chain.pem as Istio's tooling writes it: the intermediate, then the root.
    let cert_chain = format!("{ca_cert}{}", root.root_cert_pem());
    let ca = CertificateAuthority::from_intermediate_pem(
        &ca_cert,
        &ca_key,
        &cert_chain,
        root.root_cert_pem(),
    )
    .unwrap();
    assert_eq!(
        ca.root_cert_pem(),
        root.root_cert_pem(),
        "peers trust the root"
    );

    let identity = spiffe("bookinfo", "reviews");
    let key = WorkloadKey::generate().unwrap();
    let chain = ca
        .sign_csr(
            &key.csr_for(&identity).unwrap(),
            &identity,
            Duration::from_secs(3600),
        )
        .unwrap();
    let list = chain.to_pem_list();
    assert_eq!(list.len(), 3, "leaf, intermediate, root");
    assert_eq!(list[1], ca_cert);
    let certificates = ders(&list);
    verify_server(
        root.root_cert_der(),
        &certificates[..2],
        webpki::KeyUsage::client_auth(),
    )
    .unwrap();
    // Without the intermediate the leaf does not verify: the chain really carries it.
    assert!(
        verify_server(
            root.root_cert_der(),
            &certificates[..1],
            webpki::KeyUsage::client_auth()
        )
        .is_err()
    );
    // The agent's parser keeps the intermediate in the presented chain.
    let workload = crate::WorkloadCertificate::from_pem_chain(&identity, &list, key).unwrap();
    assert_eq!(workload.chain().len(), 2);

    // A chain-less plug-in (only ca-cert.pem) gets the signing certificate put in front.
    let bare =
        CertificateAuthority::from_intermediate_pem(&ca_cert, &ca_key, "", root.root_cert_pem())
            .unwrap();
    let key = WorkloadKey::generate().unwrap();
    let chain = bare
        .sign_csr(
            &key.csr_for(&identity).unwrap(),
            &identity,
            Duration::from_secs(3600),
        )
        .unwrap();
    assert_eq!(chain.intermediates_pem, std::slice::from_ref(&ca_cert));

    // The root plugged in as its own "intermediate" is just a root.
    let itself = CertificateAuthority::from_intermediate_pem(
        root.root_cert_pem(),
        &root.signing_key_pem(),
        root.root_cert_pem(),
        root.root_cert_pem(),
    )
    .unwrap();
    let chain = itself
        .sign_csr(
            &WorkloadKey::generate().unwrap().csr_for(&identity).unwrap(),
            &identity,
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(chain.intermediates_pem.is_empty());
}

#[test]
fn an_intermediate_from_another_root_is_refused() {
    let root = CertificateAuthority::generate().unwrap();
    let other = CertificateAuthority::generate().unwrap();
    let (ca_cert, ca_key) = intermediate_of(&other, "foreign intermediate");
    let error = CertificateAuthority::from_intermediate_pem(
        &ca_cert,
        &ca_key,
        &ca_cert,
        root.root_cert_pem(),
    )
    .unwrap_err();
    assert!(
        matches!(&error, CaError::CertChain { reason } if reason.contains("is not signed by")),
        "{error}"
    );
    // A key that is not the signing certificate's.
    let (_, stray_key) = intermediate_of(&root, "stray");
    let (ca_cert, _) = intermediate_of(&root, "good");
    let error = CertificateAuthority::from_intermediate_pem(
        &ca_cert,
        &stray_key,
        &ca_cert,
        root.root_cert_pem(),
    )
    .unwrap_err();
    assert!(matches!(error, CaError::RootKeyMismatch), "{error}");
}

#[test]
fn serving_certificates_verify_for_their_dns_names_only() {
    let root = CertificateAuthority::generate().unwrap();
    let (ca_cert, ca_key) = intermediate_of(&root, "weft intermediate");
    let ca =
        CertificateAuthority::from_intermediate_pem(&ca_cert, &ca_key, "", root.root_cert_pem())
            .unwrap();
    let names = vec![
        "istiod.istio-system.svc".to_string(),
        "istiod.istio-system".to_string(),
    ];
    let serving = ca
        .issue_serving_certificate(&names, Duration::from_secs(3600))
        .unwrap();
    let chain = ders(&serving.chain_pem);
    assert_eq!(chain.len(), 2, "leaf and intermediate, no root");
    verify_server(
        root.root_cert_der(),
        &chain,
        webpki::KeyUsage::server_auth(),
    )
    .unwrap();
    let end_entity = webpki::EndEntityCert::try_from(&chain[0]).unwrap();
    let name = |n: &str| rustls_pki_types::ServerName::try_from(n.to_string()).unwrap();
    end_entity
        .verify_is_valid_for_subject_name(&name("istiod.istio-system.svc"))
        .unwrap();
    assert!(
        end_entity
            .verify_is_valid_for_subject_name(&name("evil.example"))
            .is_err()
    );
    // Not usable as a client certificate, and its key is the one handed back.
    assert!(
        verify_server(
            root.root_cert_der(),
            &chain,
            webpki::KeyUsage::client_auth()
        )
        .is_err()
    );
    let key = KeyPair::from_pem(&serving.key_pem).unwrap();
    let (_, leaf) = X509Certificate::from_der(chain[0].as_ref()).unwrap();
    assert_eq!(
        leaf.public_key().raw,
        key.subject_public_key_info().as_slice()
    );
    assert!(matches!(
        ca.issue_serving_certificate(&[], Duration::from_secs(60)),
        Err(CaError::NoServingNames)
    ));
    assert!(matches!(
        ca.issue_serving_certificate(&["bad name".into()], Duration::from_secs(60)),
        Err(CaError::ServingName { .. })
    ));
}

#[test]
fn serving_certificates_verify_for_their_ip_addresses() {
    let ca = CertificateAuthority::generate().unwrap();
    let names = vec![
        "istiod.istio-system.svc".to_string(),
        "10.96.0.15".to_string(),
        "fd00::15".to_string(),
    ];
    let serving = ca
        .issue_serving_certificate(&names, Duration::from_secs(3600))
        .unwrap();
    let chain = ders(&serving.chain_pem);
    let end_entity = webpki::EndEntityCert::try_from(&chain[0]).unwrap();
    let ip = |ip: &str| {
        rustls_pki_types::ServerName::IpAddress(ip.parse::<std::net::IpAddr>().unwrap().into())
    };
    for dialed in ["10.96.0.15", "fd00::15"] {
        end_entity
            .verify_is_valid_for_subject_name(&ip(dialed))
            .unwrap_or_else(|e| panic!("{dialed}: {e}"));
    }
    assert!(
        end_entity
            .verify_is_valid_for_subject_name(&ip("10.96.0.16"))
            .is_err()
    );
    // The DNS names stay alongside the addresses.
    let name = |n: &str| rustls_pki_types::ServerName::try_from(n.to_string()).unwrap();
    end_entity
        .verify_is_valid_for_subject_name(&name("istiod.istio-system.svc"))
        .unwrap();
}
