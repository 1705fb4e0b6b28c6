use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, metadata::MetadataValue};
use weft_identity::{WorkloadCertificate, WorkloadKey};
use weft_proto::istio::ca::IMPERSONATED_IDENTITY;
use weft_proto::istio::ca::istio_certificate_service_client::IstioCertificateServiceClient;

use super::*;

const NODE1_TOKEN: &str = "node1-token-0123456789";
const NODE2_TOKEN: &str = "node2-token-0123456789";

struct Directory(HashMap<&'static str, Vec<SpiffeId>>);

impl NodeDirectory for Directory {
    fn runs_on(&self, node: &str, identity: &SpiffeId) -> bool {
        self.0.get(node).is_some_and(|ids| ids.contains(identity))
    }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", sa).unwrap()
}

async fn start() -> (
    IstioCertificateServiceClient<tonic::transport::Channel>,
    Arc<CertificateAuthority>,
) {
    let ca = Arc::new(CertificateAuthority::generate().unwrap());
    let tokens = BootstrapTokens::parse(
        "tokens",
        &format!("# node tokens\nnode1 {NODE1_TOKEN}\nnode2 {NODE2_TOKEN}\n"),
    )
    .unwrap();
    let directory = Directory(HashMap::from([
        ("node1", vec![id("cart")]),
        ("node2", vec![id("pay")]),
    ]));
    let service = CertificateService::new(ca.clone(), tokens, directory, "cluster.local".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let client = IstioCertificateServiceClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    (client, ca)
}

fn request(csr: String, token: &str, ttl: i64) -> tonic::Request<IstioCertificateRequest> {
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: ttl,
        metadata: None,
    });
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    request
}

#[tokio::test]
async fn issues_an_identity_of_the_callers_node_with_san_and_ttl() {
    let (mut client, ca) = start().await;
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_for(&id("cart")).unwrap();
    let response = client
        .create_certificate(request(csr, NODE1_TOKEN, 3600))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.cert_chain.len(), 2, "leaf and root");
    assert_eq!(response.cert_chain[1].trim(), ca.root_cert_pem().trim());
    // The chain verifies against the root and names exactly the identity; the key matches.
    let certificate = WorkloadCertificate::from_pem_chain(&id("cart"), &response.cert_chain, key)
        .expect("a valid workload certificate");
    let lifetime = certificate
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        lifetime > Duration::from_secs(3590) && lifetime <= Duration::from_secs(3600),
        "{lifetime:?}"
    );
}

#[tokio::test]
async fn refuses_what_the_caller_may_not_have() {
    let (mut client, _) = start().await;
    let key = WorkloadKey::generate().unwrap();
    let pay_csr = key.csr_for(&id("pay")).unwrap();

    let cases: Vec<(tonic::Request<IstioCertificateRequest>, Code, &str)> = vec![
        // Node 1 asking for an identity that only runs on node 2.
        (
            request(pay_csr.clone(), NODE1_TOKEN, 0),
            Code::PermissionDenied,
            "no pod on node node1 runs as spiffe://cluster.local/ns/shop/sa/pay",
        ),
        (
            request(pay_csr.clone(), "not-a-token-at-all-xx", 0),
            Code::Unauthenticated,
            "unknown bootstrap token",
        ),
        (
            tonic::Request::new(IstioCertificateRequest {
                csr: pay_csr.clone(),
                validity_duration: 0,
                metadata: None,
            }),
            Code::Unauthenticated,
            "missing `authorization",
        ),
        (
            request(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                    .into(),
                NODE2_TOKEN,
                0,
            ),
            Code::InvalidArgument,
            "malformed certificate request",
        ),
        (
            request("garbage".into(), NODE2_TOKEN, 0),
            Code::InvalidArgument,
            "malformed certificate request",
        ),
    ];
    for (req, code, message) in cases {
        let status = client.create_certificate(req).await.unwrap_err();
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(
            status.message().contains(message),
            "{:?} lacks {message:?}",
            status.message()
        );
    }

    // A node header that contradicts the token.
    let mut req = request(pay_csr.clone(), NODE2_TOKEN, 0);
    req.metadata_mut()
        .insert(NODE_HEADER, MetadataValue::from_static("node1"));
    let status = client.create_certificate(req).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // Impersonation metadata naming one identity with a CSR for another is refused.
    let mut req = request(pay_csr, NODE1_TOKEN, 0);
    req.get_mut().metadata = Some(prost_types::Struct {
        fields: [(
            IMPERSONATED_IDENTITY.to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(
                    id("cart").to_string(),
                )),
            },
        )]
        .into(),
    });
    let status = client.create_certificate(req).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
}

#[test]
fn token_file_errors_name_the_line() {
    let cases = [
        ("node1\n", "line 1: expected `<node> <token>`"),
        ("# c\nnode1 short\n", "line 2: token shorter than 16"),
        ("node1 a b c\n", "line 1: expected"),
    ];
    for (text, expected) in cases {
        let error = BootstrapTokens::parse("tokens.txt", text)
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{error}");
    }
}

#[test]
fn the_index_grants_identities_of_mesh_pods_and_waypoints_on_their_node() {
    use std::path::Path;
    let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: legacy}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: cart-0, namespace: shop, labels: {app: cart}}
spec: {nodeName: node1, serviceAccountName: cart, containers: [{name: c, image: c}]}
---
# A waypoint in a namespace outside the mesh: it still needs its certificate.
apiVersion: v1
kind: Pod
metadata: {name: waypoint-0, namespace: legacy, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {nodeName: node2, serviceAccountName: waypoint, containers: [{name: w, image: w}]}
---
# Claims to be a gateway's pod, but there is no such waypoint.
apiVersion: v1
kind: Pod
metadata: {name: fake-0, namespace: legacy, labels: {gateway.networking.k8s.io/gateway-name: fake}}
spec: {nodeName: node2, serviceAccountName: fake, containers: [{name: f, image: f}]}
---
apiVersion: v1
kind: Pod
metadata: {name: old-0, namespace: legacy}
spec: {nodeName: node2, serviceAccountName: old, containers: [{name: o, image: o}]}
---
apiVersion: v1
kind: Pod
metadata: {name: batch-0, namespace: shop, labels: {app: batch}}
spec: {nodeName: node1, serviceAccountName: batch, containers: [{name: b, image: b}]}
status: {phase: Succeeded}
---
apiVersion: v1
kind: Pod
metadata: {name: opted-out, namespace: shop, labels: {istio.io/dataplane-mode: none}}
spec: {nodeName: node1, serviceAccountName: outside, containers: [{name: o, image: o}]}
"#;
    let report = crate::loader::load_str(Path::new("ca.yaml"), text);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let (index, rejections) = ConfigIndex::from_report(report, None);
    assert!(rejections.is_empty(), "{rejections:?}");
    let identity = |td: &str, ns: &str, sa: &str| SpiffeId::new(td, ns, sa).unwrap();
    let cases = [
        ("node1", identity("cluster.local", "shop", "cart"), true),
        ("node2", identity("cluster.local", "shop", "cart"), false),
        (
            "node2",
            identity("cluster.local", "legacy", "waypoint"),
            true,
        ),
        (
            "node1",
            identity("cluster.local", "legacy", "waypoint"),
            false,
        ),
        (
            "node2",
            identity("example.org", "legacy", "waypoint"),
            false,
        ),
        ("node2", identity("cluster.local", "legacy", "fake"), false),
        ("node2", identity("cluster.local", "legacy", "old"), false),
        ("node1", identity("cluster.local", "shop", "batch"), false),
        ("node1", identity("cluster.local", "shop", "outside"), false),
        ("node1", identity("cluster.local", "shop", "default"), false),
    ];
    for (node, id, expected) in cases {
        assert_eq!(
            mesh_pod_runs_on(&index, node, &id, "cluster.local"),
            expected,
            "{node} {id}"
        );
    }
}

/// A caller that proved `identity` (a waypoint's or gateway's service-account token).
struct Proven(SpiffeId);

impl CallerAuthenticator for Proven {
    async fn authenticate(&self, _: &MetadataMap) -> Result<Caller, Status> {
        Ok(Caller {
            node: None,
            identity: Some(self.0.clone()),
        })
    }
}

fn claiming(id: &str, metadata: &[(&str, &str)]) -> ProxyIdentity {
    let metadata = prost_types::Struct {
        fields: metadata
            .iter()
            .map(|(key, value)| {
                let value = prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue((*value).to_owned())),
                };
                ((*key).to_owned(), value)
            })
            .collect(),
    };
    ProxyIdentity {
        id: id.to_owned(),
        node: weft_proto::envoy::config::core::v3::Node {
            id: id.to_owned(),
            metadata: Some(metadata),
            ..Default::default()
        },
        connection: 1,
        verified: None,
    }
}

#[tokio::test]
async fn a_stream_may_claim_only_the_namespace_and_service_account_its_credential_proves() {
    // As Istio's checkConnectionIdentity: the waypoint of `shop` proves shop/waypoint.
    let admission = XdsAdmission::new(Proven(
        SpiffeId::new("cluster.local", "shop", "waypoint").unwrap(),
    ));
    let own = "waypoint~10.0.0.9~waypoint.shop~shop.svc.cluster.local";
    let verified = admission
        .check(
            &MetadataMap::new(),
            &claiming(own, &[("SERVICE_ACCOUNT", "waypoint")]),
        )
        .await
        .unwrap();
    assert_eq!(verified.unwrap().namespace(), "shop");

    // Another namespace's waypoint, by its node id or by the NAMESPACE metadata.
    let other = "waypoint~10.0.0.9~waypoint.bank~bank.svc.cluster.local";
    let refused = admission
        .check(&MetadataMap::new(), &claiming(other, &[]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("claims namespace bank"),
        "{}",
        refused.message()
    );
    let refused = admission
        .check(
            &MetadataMap::new(),
            &claiming(own, &[("NAMESPACE", "bank")]),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    // Another service account of the same namespace.
    let refused = admission
        .check(
            &MetadataMap::new(),
            &claiming(own, &[("SERVICE_ACCOUNT", "cart")]),
        )
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("claims service account cart"),
        "{}",
        refused.message()
    );

    // A node id in no namespace (the node agent's) claims nothing to check.
    admission
        .check(&MetadataMap::new(), &claiming("node-agent~node1", &[]))
        .await
        .unwrap();
}
