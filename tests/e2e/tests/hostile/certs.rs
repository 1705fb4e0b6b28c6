//! Certificates an attacker holds: one the controller's CA issues to a node's bootstrap token
//! (what stealing a node's credentials gives), and ones the CA would never issue, signed with the
//! mesh root anyway (other trust domains, odd SPIFFE forms, expired) or with a root of the
//! attacker's own.

use std::time::{Duration, SystemTime};

use rcgen::{SanType, string::Ia5String};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use weft_e2e::Mesh;
use weft_identity::{CertificateAuthority, SpiffeId, WorkloadCertificate, WorkloadKey};
use weft_proxy_core::certificates::{CaClient, GrpcCaClient};

use crate::attacker::{Credential, in_netns};

/// A certificate for `identity` from the controller's CA, asked for from `node`'s namespace with
/// that node's bootstrap token, as its agent asks.
pub fn issued(mesh: &Mesh, node: &str, identity: &str) -> Credential {
    let id: SpiffeId = identity.parse().expect("a SPIFFE ID");
    let key = WorkloadKey::generate().expect("a key");
    let csr = key.csr_for(&id).expect("a CSR");
    let chain = ca_request(mesh, node, node, &id, csr)
        .unwrap_or_else(|e| panic!("the CA refused {identity} to {node}: {e}"));
    let certificate = WorkloadCertificate::from_pem_chain(&id, &chain, key).expect("the chain");
    Credential {
        chain: certificate.chain().to_vec(),
        key: certificate.private_key(),
    }
}

/// Asks the CA, from `node`'s namespace with `node`'s token but claiming to be `claimed_node`,
/// to sign `csr` as `identity`.
pub fn ca_request(
    mesh: &Mesh,
    node: &str,
    claimed_node: &str,
    identity: &SpiffeId,
    csr: String,
) -> Result<Vec<String>, String> {
    let token = mesh.node_token(node).map_err(|e| e.to_string())?;
    let address = mesh.controller_address();
    let netns = &mesh.testbed.node(node).netns;
    in_netns(netns, || async move {
        let client = GrpcCaClient::new(&address, token, claimed_node.to_owned())?;
        client.sign(identity, csr, Duration::from_secs(3600)).await
    })
}

/// A CSR for `identity` over a fresh key.
pub fn csr(identity: &SpiffeId) -> String {
    WorkloadKey::generate()
        .and_then(|key| key.csr_for(identity))
        .expect("a CSR")
}

/// Signs a leaf carrying `uris` as URI SANs (none: a certificate with a DNS name and no SPIFFE
/// ID), valid from `not_before` to `not_after`, with `ca`.
pub fn forged(
    ca: &CertificateAuthority,
    uris: &[&str],
    not_before: SystemTime,
    not_after: SystemTime,
) -> Credential {
    let mut sans: Vec<SanType> = uris
        .iter()
        .map(|uri| SanType::URI(Ia5String::try_from(*uri).expect("an IA5 URI")))
        .collect();
    if sans.is_empty() {
        sans.push(SanType::DnsName(
            "client.shop.svc".try_into().expect("a DNS name"),
        ));
    }
    let (leaf, key) = ca.sign_leaf_unchecked(sans, not_before, not_after);
    Credential {
        chain: vec![leaf],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// [`forged`] valid from an hour ago for a day.
pub fn forged_now(ca: &CertificateAuthority, uris: &[&str]) -> Credential {
    let now = SystemTime::now();
    forged(
        ca,
        uris,
        now - Duration::from_secs(3600),
        now + Duration::from_secs(24 * 3600),
    )
}

/// The mesh's own CA, read from the controller's directory.
pub fn mesh_ca(mesh: &Mesh) -> CertificateAuthority {
    CertificateAuthority::load(&mesh.ca_dir()).expect("the mesh CA")
}

/// Certificates no peer of the mesh may be accepted with, by what is wrong with them; each is
/// signed by the mesh root unless it says otherwise.
pub fn unacceptable(mesh: &Mesh) -> Vec<(&'static str, Credential)> {
    let ca = mesh_ca(mesh);
    let rogue = CertificateAuthority::generate().expect("a rogue root");
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    let client = "spiffe://cluster.local/ns/shop/sa/client";
    vec![
        ("a rogue root", forged_now(&rogue, &[client])),
        ("expired", forged(&ca, &[client], now - 2 * day, now - day)),
        (
            "not yet valid",
            forged(&ca, &[client], now + day, now + 2 * day),
        ),
        (
            "another trust domain",
            forged_now(&ca, &["spiffe://evil.example/ns/shop/sa/client"]),
        ),
        ("no SPIFFE ID", forged_now(&ca, &[])),
        (
            "two SPIFFE IDs",
            forged_now(&ca, &[client, "spiffe://cluster.local/ns/shop/sa/cart"]),
        ),
        (
            "a path too long",
            forged_now(&ca, &["spiffe://cluster.local/ns/shop/sa/client/extra"]),
        ),
        (
            "no service account",
            forged_now(&ca, &["spiffe://cluster.local/ns/shop"]),
        ),
        (
            "an empty service account",
            forged_now(&ca, &["spiffe://cluster.local/ns/shop/sa/"]),
        ),
        (
            "an upper-case scheme",
            forged_now(&ca, &["SPIFFE://cluster.local/ns/shop/sa/client"]),
        ),
        (
            "a dot-dot namespace",
            forged_now(&ca, &["spiffe://cluster.local/ns/../sa/client"]),
        ),
        (
            "a percent-encoded namespace",
            forged_now(&ca, &["spiffe://cluster.local/ns/sh%6fp/sa/client"]),
        ),
        (
            "a port in the trust domain",
            forged_now(&ca, &["spiffe://cluster.local:443/ns/shop/sa/client"]),
        ),
    ]
}
