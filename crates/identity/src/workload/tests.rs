use std::time::Duration;

use super::*;
use crate::CertificateAuthority;
use crate::test_support::{issue, spiffe};

#[test]
fn certificate_from_ca_answer_is_checked_and_split() {
    let ca = CertificateAuthority::generate().unwrap();
    let identity = spiffe("default", "sleep");
    let certificate = issue(&ca, &identity);
    assert_eq!(certificate.identity(), &identity);
    assert_eq!(certificate.chain().len(), 1, "the root is not presented");
    assert_eq!(
        certificate.ca_roots(),
        std::slice::from_ref(ca.root_cert_der())
    );

    let lifetime = certificate
        .not_after()
        .duration_since(certificate.not_before())
        .unwrap();
    assert_eq!(lifetime, Duration::from_secs(3600) + crate::LEAF_BACKDATE);
    // Half of what was left on arrival, not half of the backdated lifetime.
    let received = SystemTime::now();
    let refresh = certificate.refresh_at();
    assert!(refresh > certificate.not_before() + lifetime / 2);
    let left = certificate.not_after().duration_since(received).unwrap();
    assert!(
        refresh <= received + left / 2 && refresh + Duration::from_secs(2) > received + left / 2
    );
    assert!(!certificate.is_expired_at(SystemTime::now()));
    assert!(certificate.is_expired_at(certificate.not_after()));

    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified = certificate.certified_key(&provider).unwrap();
    certified.keys_match().unwrap();
}

#[test]
fn summary_shows_no_key_material() {
    let ca = CertificateAuthority::generate().unwrap();
    let identity = spiffe("default", "sleep");
    let certificate = issue(&ca, &identity);
    let summary = certificate.describe();
    assert_eq!(summary.identity, identity);
    assert_eq!(summary.issuer, "O=weft, CN=weft mesh root CA");
    assert_eq!(summary.serial.len(), 32, "16 random bytes in hex");
    assert!(summary.not_after.ends_with('Z'), "{}", summary.not_after);
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(
        json["identity"],
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    let text = json.to_string();
    assert!(!text.to_lowercase().contains("key"), "{text}");
    assert!(!format!("{certificate:?}").contains("PRIVATE"));
}

#[test]
fn mismatched_identity_key_or_chain_is_refused() {
    let ca = CertificateAuthority::generate().unwrap();
    let identity = spiffe("default", "sleep");
    let key = WorkloadKey::generate().unwrap();
    let chain = ca
        .sign_csr(
            &key.csr_for(&identity).unwrap(),
            &identity,
            Duration::from_secs(60),
        )
        .unwrap()
        .to_pem_list();

    let other = spiffe("default", "httpbin");
    match WorkloadCertificate::from_pem_chain(&other, &chain, WorkloadKey::generate().unwrap()) {
        Err(WorkloadCertificateError::LeafIdentityMismatch { expected, found }) => {
            assert_eq!(expected, other);
            assert_eq!(found, vec![identity.to_string()]);
        }
        other => panic!("unexpected {other:?}"),
    }

    let stranger_key = WorkloadKey::generate().unwrap();
    assert!(matches!(
        WorkloadCertificate::from_pem_chain(&identity, &chain, stranger_key),
        Err(WorkloadCertificateError::KeyMismatch)
    ));

    let empty: [&str; 0] = [];
    assert!(matches!(
        WorkloadCertificate::from_pem_chain(&identity, &empty, WorkloadKey::generate().unwrap()),
        Err(WorkloadCertificateError::EmptyChain)
    ));

    // Only the root, no leaf: a CA certificate is never a workload certificate.
    assert!(matches!(
        WorkloadCertificate::from_pem_chain(
            &identity,
            &[ca.root_cert_pem()],
            WorkloadKey::generate().unwrap()
        ),
        Err(WorkloadCertificateError::LeafIdentityMismatch { .. })
    ));
}

#[test]
fn chain_in_one_pem_string_is_accepted() {
    let ca = CertificateAuthority::generate().unwrap();
    let identity = spiffe("default", "sleep");
    let key = WorkloadKey::generate().unwrap();
    let chain = ca
        .sign_csr(
            &key.csr_for(&identity).unwrap(),
            &identity,
            Duration::from_secs(60),
        )
        .unwrap();
    let joined = format!("{}{}", chain.leaf_pem, chain.root_pem);
    let certificate = WorkloadCertificate::from_pem_chain(&identity, &[joined], key).unwrap();
    assert_eq!(certificate.chain().len(), 1);
    assert_eq!(certificate.ca_roots().len(), 1);
}

#[test]
fn csr_carries_the_identity_and_verifies() {
    let identity = spiffe("default", "sleep");
    let key = WorkloadKey::generate().unwrap();
    let pem = key.csr_for(&identity).unwrap();
    let der = <rustls_pki_types::CertificateSigningRequestDer as PemObject>::from_pem_slice(
        pem.as_bytes(),
    )
    .unwrap();
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .unwrap();
    csr.verify_signature().unwrap();
    let uris: Vec<String> = csr
        .requested_extensions()
        .into_iter()
        .flatten()
        .filter_map(|extension| match extension {
            x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => Some(san),
            _ => None,
        })
        .flat_map(|san| san.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, vec![identity.to_string()]);
    assert_eq!(
        csr.certification_request_info.subject_pki.raw,
        key.public_key_der().as_slice()
    );
}
