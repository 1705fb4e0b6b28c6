//! The CA's Kubernetes side against the fake API server, with `kube`'s real client in between:
//! Secrets, the root ConfigMap and TokenReview.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};
use tonic::{Code, metadata::MetadataValue};
use weft_identity::WorkloadKey;
use weft_proto::istio::ca::IstioCertificateRequest;

use super::*;
use crate::ca::{CertificateService, NODE_HEADER};
use crate::model::Resource;
use crate::server::IndexDirectory;
use crate::source::kube::ResourceSink;
use weft_fake_apiserver::{FakeApiServer, TokenIdentity};

const NAMESPACE: &str = "istio-system";

fn b64(text: &str) -> String {
    serde_json::to_value(ByteString(text.as_bytes().to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

fn secret_text(fake: &FakeApiServer, name: &str, key: &str) -> Option<String> {
    let secret: Secret =
        serde_json::from_value(fake.get("v1", "Secret", NAMESPACE, name)?).unwrap();
    let ByteString(bytes) = secret.data?.get(key)?.clone();
    Some(String::from_utf8(bytes).unwrap())
}

#[tokio::test]
async fn the_root_is_created_once_in_a_secret_and_reused_after_a_restart() {
    let fake = FakeApiServer::start().await.unwrap();
    let (first, origin) = load_or_create(fake.client().unwrap(), NAMESPACE)
        .await
        .unwrap();
    assert_eq!(origin, CaOrigin::Created);
    assert_eq!(
        secret_text(&fake, SELF_SIGNED_CA_SECRET, CA_CERT_KEY).as_deref(),
        Some(first.root_cert_pem())
    );
    assert_eq!(
        secret_text(&fake, SELF_SIGNED_CA_SECRET, CA_KEY_KEY),
        Some(first.signing_key_pem())
    );
    // A restarted controller (a new client) loads the same root and signs with the same key.
    let (second, origin) = load_or_create(fake.client().unwrap(), NAMESPACE)
        .await
        .unwrap();
    assert_eq!(origin, CaOrigin::Loaded);
    assert_eq!(second.root_cert_pem(), first.root_cert_pem());
    assert_eq!(second.signing_key_pem(), first.signing_key_pem());
    let creates = fake
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/secrets"))
        .count();
    assert_eq!(creates, 1, "the second start creates nothing");

    // The root for proxies: created, left alone when equal, replaced when not.
    publish_root(fake.client().unwrap(), NAMESPACE, first.root_cert_pem())
        .await
        .unwrap();
    publish_root(fake.client().unwrap(), NAMESPACE, first.root_cert_pem())
        .await
        .unwrap();
    let map = |fake: &FakeApiServer| -> Value {
        fake.get("v1", "ConfigMap", NAMESPACE, ROOT_CONFIG_MAP)
            .expect("root ConfigMap")
    };
    assert_eq!(map(&fake)["data"][ROOT_CERT_KEY], first.root_cert_pem());
    let version = map(&fake)["metadata"]["resourceVersion"].clone();
    publish_root(fake.client().unwrap(), NAMESPACE, first.root_cert_pem())
        .await
        .unwrap();
    assert_eq!(
        map(&fake)["metadata"]["resourceVersion"],
        version,
        "unchanged"
    );
    let other = CertificateAuthority::generate().unwrap();
    publish_root(fake.client().unwrap(), NAMESPACE, other.root_cert_pem())
        .await
        .unwrap();
    assert_eq!(map(&fake)["data"][ROOT_CERT_KEY], other.root_cert_pem());
}

#[tokio::test]
async fn a_broken_secret_is_reported_by_name_and_key_and_never_overwritten() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.create(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": SELF_SIGNED_CA_SECRET, "namespace": NAMESPACE},
        "data": {CA_CERT_KEY: b64("not a certificate")},
    }))
    .unwrap();
    let error = load_or_create(fake.client().unwrap(), NAMESPACE)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        error, "Secret istio-system/istio-ca-secret has no key ca-key.pem",
        "{error}"
    );
    assert_eq!(
        secret_text(&fake, SELF_SIGNED_CA_SECRET, CA_CERT_KEY).as_deref(),
        Some("not a certificate")
    );
}

/// A root and an intermediate it signed, as an operator makes them for `cacerts`.
fn operator_ca() -> (String, String, String) {
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut root_params = CertificateParams::default();
    root_params
        .distinguished_name
        .push(DnType::CommonName, "operator root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = rcgen::Issuer::new(root_params, root_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "cluster intermediate");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let intermediate = params.signed_by(&key, &issuer).unwrap();
    (root.pem(), intermediate.pem(), key.serialize_pem())
}

#[tokio::test]
async fn an_operator_cacerts_secret_is_used_and_nothing_is_created() {
    let fake = FakeApiServer::start().await.unwrap();
    let (root, ca_cert, ca_key) = operator_ca();
    fake.create(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": PLUGGED_CA_SECRET, "namespace": NAMESPACE},
        "data": {
            CA_CERT_KEY: b64(&ca_cert),
            CA_KEY_KEY: b64(&ca_key),
            ROOT_CERT_KEY: b64(&root),
            CERT_CHAIN_KEY: b64(&format!("{ca_cert}{root}")),
        },
    }))
    .unwrap();
    let (ca, origin) = load_or_create(fake.client().unwrap(), NAMESPACE)
        .await
        .unwrap();
    assert_eq!(origin, CaOrigin::Plugged);
    assert_eq!(ca.root_cert_pem(), root);
    let identity = SpiffeId::new("cluster.local", "shop", "cart").unwrap();
    let key = WorkloadKey::generate().unwrap();
    let chain = ca
        .sign_csr(
            &key.csr_for(&identity).unwrap(),
            &identity,
            Duration::from_secs(600),
        )
        .unwrap()
        .to_pem_list();
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[1], ca_cert);
    assert!(
        fake.get("v1", "Secret", NAMESPACE, SELF_SIGNED_CA_SECRET)
            .is_none()
    );
}

fn pod(namespace: &str, name: &str, uid: &str, node: &str, account: &str) -> Resource {
    Resource::Pod(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "spec": {"nodeName": node, "serviceAccountName": account, "containers": []},
        }))
        .unwrap(),
    )
}

struct Fixture {
    _fake: FakeApiServer,
    service: CertificateService<TokenReviewAuthenticator, IndexDirectory>,
}

const AUDIENCE: &str = "istio-ca";

async fn fixture() -> Fixture {
    let fake = FakeApiServer::start().await.unwrap();
    let index = Arc::new(LiveIndex::default());
    for resource in [
        pod(
            NAMESPACE,
            "weft-node-agent-a",
            "uid-agent-a",
            "node1",
            "weft-node-agent",
        ),
        // The workloads' namespace is in the mesh: only pods it serves get certificates.
        Resource::Namespace(
            serde_json::from_value(json!({
                "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}},
            }))
            .unwrap(),
        ),
        pod("shop", "cart-1", "uid-cart", "node1", "cart"),
        pod("shop", "pay-1", "uid-pay", "node2", "pay"),
    ] {
        index.apply(resource, Vec::new());
    }
    // The agent on node1: a pod-bound token without the node extra (Kubernetes before 1.30),
    // so its node comes from its pod.
    fake.add_token(
        "agent-node1",
        TokenIdentity::bound(
            NAMESPACE,
            "weft-node-agent",
            ("weft-node-agent-a", "uid-agent-a"),
            None,
            AUDIENCE,
        ),
    );
    // The agent on node2 with a 1.30+ token naming the node.
    fake.add_token(
        "agent-node2",
        TokenIdentity::bound(
            NAMESPACE,
            "weft-node-agent",
            ("weft-node-agent-b", "uid-agent-b"),
            Some("node2"),
            AUDIENCE,
        ),
    );
    // A token of a pod that was replaced (same name, another uid).
    fake.add_token(
        "agent-stale",
        TokenIdentity::bound(
            NAMESPACE,
            "weft-node-agent",
            ("weft-node-agent-a", "uid-old"),
            None,
            AUDIENCE,
        ),
    );
    fake.add_token(
        "pay-workload",
        TokenIdentity::bound("shop", "pay", ("pay-1", "uid-pay"), Some("node2"), AUDIENCE),
    );
    fake.add_token(
        "other-audience",
        TokenIdentity::bound(
            NAMESPACE,
            "weft-node-agent",
            ("weft-node-agent-a", "uid-agent-a"),
            None,
            "kube-apiserver",
        ),
    );
    let authenticator = TokenReviewAuthenticator::new(
        fake.client().unwrap(),
        vec![AUDIENCE.to_owned()],
        "cluster.local".into(),
        [(NAMESPACE.to_owned(), "weft-node-agent".to_owned())],
        index.clone(),
    );
    let service = CertificateService::new(
        Arc::new(CertificateAuthority::generate().unwrap()),
        authenticator,
        IndexDirectory::new(index, "cluster.local".into()),
        "cluster.local".into(),
    );
    Fixture {
        _fake: fake,
        service,
    }
}

fn request(account: &str, token: &str) -> (tonic::metadata::MetadataMap, IstioCertificateRequest) {
    let identity = SpiffeId::new("cluster.local", "shop", account).unwrap();
    let csr = WorkloadKey::generate().unwrap().csr_for(&identity).unwrap();
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    (
        metadata,
        IstioCertificateRequest {
            csr,
            validity_duration: 3600,
            metadata: None,
        },
    )
}

#[tokio::test]
async fn service_account_tokens_are_reviewed_and_agents_get_only_their_nodes_pods() {
    let fixture = fixture().await;
    let create = |account: &'static str, token: &'static str| {
        let service = &fixture.service;
        async move {
            let (metadata, request) = request(account, token);
            service.create(&metadata, &request).await
        }
    };
    // The node1 agent: node from its bound pod; cart runs on node1.
    let chain = create("cart", "agent-node1").await.unwrap();
    assert_eq!(chain.len(), 2);
    // Another node's identity.
    let refused = create("pay", "agent-node1").await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        refused.message(),
        "no pod on node node1 runs as spiffe://cluster.local/ns/shop/sa/pay"
    );
    // The node2 agent: node from the token's node-name extra.
    create("pay", "agent-node2").await.unwrap();
    assert_eq!(
        create("cart", "agent-node2").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // Unknown token, token for another audience.
    let unknown = create("cart", "no-such-token").await.unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert!(
        unknown.message().contains("invalid bearer token"),
        "{}",
        unknown.message()
    );
    let audience = create("cart", "other-audience").await.unwrap_err();
    assert_eq!(
        audience.code(),
        Code::Unauthenticated,
        "{}",
        audience.message()
    );
    // A token bound to a pod that no longer exists under that uid.
    let stale = create("cart", "agent-stale").await.unwrap_err();
    assert_eq!(stale.code(), Code::PermissionDenied);
    assert!(
        stale.message().contains("no longer exists"),
        "{}",
        stale.message()
    );
    // A workload obtains its own identity, and nothing else.
    create("pay", "pay-workload").await.unwrap();
    let other = create("cart", "pay-workload").await.unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    assert_eq!(
        other.message(),
        "spiffe://cluster.local/ns/shop/sa/pay may obtain only its own identity, not spiffe://cluster.local/ns/shop/sa/cart"
    );
    // A node header that contradicts the token.
    let (mut metadata, request) = request("cart", "agent-node1");
    metadata.insert(NODE_HEADER, MetadataValue::from_static("node2"));
    let claimed = fixture
        .service
        .create(&metadata, &request)
        .await
        .unwrap_err();
    assert_eq!(claimed.code(), Code::PermissionDenied);
    assert_eq!(claimed.message(), "token belongs to node node1, not node2");
}
