//! TLS credentials in Kubernetes mode: a gateway's Secrets reach its own identity only, and a
//! DestinationRule's credential reaches the waypoint that originates TLS with it.

use super::*;

/// A Secret as the API server holds it (`data` base64-encoded).
fn tls_secret(namespace: &str, name: &str, certificate: &str) -> Value {
    use base64::Engine;
    let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": {"name": name, "namespace": namespace},
           "data": {"tls.crt": encode(certificate), "tls.key": encode("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")}})
}

/// Every credential update a gateway's stream receives, as `(name, certificate chain)`.
type Credentials = Arc<Mutex<Vec<Vec<(String, Vec<u8>)>>>>;

/// A stream as the gateway pod `edge/ingress-0` builds it, with `token`, asking for
/// `names` of the SDS type (none: every credential it may have).
fn gateway_stream(
    channel: Channel,
    token: &'static str,
    names: Vec<String>,
) -> (
    Credentials,
    tokio::task::JoinHandle<Result<(), weft_xds::ClientError>>,
) {
    use prost::Message;
    use weft_proto::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
    let node = Node {
        id: "router~10.0.0.5~ingress-0.edge~edge.svc.cluster.local".to_owned(),
        ..Default::default()
    };
    let seen: Credentials = Arc::default();
    let recorder = seen.clone();
    let client = DeltaClient::new(Target::Channel(channel), node)
        .with_bearer_token(Arc::new(move || Ok(token.to_string())))
        .subscribe_names(
            weft_proto::SECRET_TYPE_URL,
            names,
            move |update: Update| -> Result<(), String> {
                let received = update
                    .added
                    .iter()
                    .map(|r| {
                        let secret = Secret::decode(r.resource.as_ref().unwrap().value.as_slice())
                            .unwrap();
                        let Some(secret::Type::TlsCertificate(tls)) = secret.r#type else {
                            panic!("{} is not a certificate", r.name);
                        };
                        let chain = match tls.certificate_chain.and_then(|d| d.specifier) {
                            Some(weft_proto::envoy::config::core::v3::data_source::Specifier::InlineBytes(b)) => b,
                            other => panic!("not inline: {other:?}"),
                        };
                        (r.name.clone(), chain)
                    })
                    .collect();
                recorder.lock().unwrap().push(received);
                Ok(())
            },
        );
    (
        seen,
        tokio::spawn(client.run_until(std::future::pending::<()>())),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateways_credentials_go_to_its_identity_only_and_follow_its_secrets() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "edge"}}))
        .unwrap();
    fake.create(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ingress-0", "namespace": "edge", "labels": {"istio": "ingressgateway"}},
        "spec": {"nodeName": "node1", "serviceAccountName": "ingress",
                 "containers": [{"name": "istio-proxy", "image": "weft"}]},
        "status": {"podIP": "10.0.0.5"}}))
        .unwrap();
    fake.create(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
        "metadata": {"name": "shop", "namespace": "edge"},
        "spec": {"selector": {"istio": "ingressgateway"},
                 "servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                              "hosts": ["*"],
                              "tls": {"mode": "SIMPLE", "credentialName": "shop-cert"}}]}}),
    )
    .unwrap();
    let first = weft_identity::CertificateAuthority::generate().unwrap();
    fake.create(tls_secret("edge", "shop-cert", first.root_cert_pem()))
        .unwrap();
    // The same name in another namespace, and an unrelated Secret: never served.
    fake.create(tls_secret("other", "shop-cert", first.root_cert_pem()))
        .unwrap();
    let gateway_uid = uid(&fake, "Pod", "edge", "ingress-0");
    fake.add_token(
        "gateway-token",
        TokenIdentity::bound(
            "edge",
            "ingress",
            ("ingress-0", &gateway_uid),
            None,
            "istio-ca",
        ),
    );
    // Another identity of the same namespace, claiming the gateway's node id.
    fake.add_token(
        "neighbour-token",
        TokenIdentity {
            username: "system:serviceaccount:edge:default".to_owned(),
            audiences: vec!["istio-ca".to_owned()],
            ..Default::default()
        },
    );

    let (_dir, kubeconfig) = write_kubeconfig(&fake, "kube-credentials");
    let tls = free_port();
    let monitoring = free_port();
    let _controller = start_controller(&kubeconfig, tls, monitoring);
    let root = ready_with_root(&fake, monitoring).await;

    // The gateway's identity receives its credential, asking for all it may have.
    let (gateway, gateway_task) =
        gateway_stream(tls_channel(tls, &root), "gateway-token", Vec::new());
    let received = eventually("the gateway's credential", Duration::from_secs(20), || {
        gateway.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(
        received,
        [(
            "kubernetes://edge/shop-cert".to_owned(),
            first.root_cert_pem().as_bytes().to_vec()
        )]
    );
    // Another identity gets nothing, not even asking by name for this credential or another
    // namespace's.
    let (neighbour, neighbour_task) = gateway_stream(
        tls_channel(tls, &root),
        "neighbour-token",
        vec![
            "kubernetes://edge/shop-cert".to_owned(),
            "kubernetes://other/shop-cert".to_owned(),
        ],
    );
    let full_state = eventually(
        "the neighbour's first response",
        Duration::from_secs(20),
        || neighbour.lock().unwrap().first().cloned(),
    )
    .await;
    assert!(full_state.is_empty(), "{full_state:?}");

    // The Secret rotates: the gateway's stream carries the new certificate.
    let rotated = weft_identity::CertificateAuthority::generate().unwrap();
    fake.update(tls_secret("edge", "shop-cert", rotated.root_cert_pem()))
        .unwrap();
    let update = eventually("the rotated credential", Duration::from_secs(10), || {
        gateway.lock().unwrap().get(1).cloned()
    })
    .await;
    assert_eq!(
        update,
        [(
            "kubernetes://edge/shop-cert".to_owned(),
            rotated.root_cert_pem().as_bytes().to_vec()
        )]
    );
    assert_eq!(
        neighbour.lock().unwrap().len(),
        1,
        "the neighbour was sent nothing more"
    );
    // The gateway's namespace has the mesh root its proxy mounts, as istiod publishes it.
    let published = eventually(
        "the root in the gateway's namespace",
        Duration::from_secs(10),
        || fake.get("v1", "ConfigMap", "edge", "istio-ca-root-cert"),
    )
    .await;
    assert_eq!(
        published["data"]["root-cert.pem"].as_str(),
        Some(root.as_str())
    );
    assert_eq!(published["metadata"]["labels"]["istio.io/config"], "true");
    // Secrets are watched without the kinds that never hold credentials.
    assert!(fake.requests().iter().any(|r| {
        r.is_watch_of("/api/v1/secrets")
            && r.query
                .get("fieldSelector")
                .is_some_and(|f| f.contains("type!=helm.sh/release.v1"))
    }));
    gateway_task.abort();
    neighbour_task.abort();
}

/// A stream as the waypoint pod `egress/waypoint-0` builds it, with `token`, subscribed to
/// its own `WaypointConfig` and to every credential it may have.
fn waypoint_stream(
    channel: Channel,
    token: &'static str,
) -> (
    Received,
    Received,
    tokio::task::JoinHandle<Result<(), weft_xds::ClientError>>,
) {
    let node = Node {
        id: "waypoint~10.0.0.7~waypoint.egress~egress.svc.cluster.local".to_owned(),
        ..Default::default()
    };
    let recorder = |seen: &Received| {
        let seen = seen.clone();
        move |update: Update| -> Result<(), String> {
            let received = update
                .added
                .iter()
                .map(|r| (r.name.clone(), r.resource.as_ref().unwrap().value.clone()))
                .collect();
            seen.lock().unwrap().push(received);
            Ok(())
        }
    };
    let (configs, secrets): (Received, Received) = (Arc::default(), Arc::default());
    let client = DeltaClient::new(Target::Channel(channel), node)
        .with_bearer_token(Arc::new(move || Ok(token.to_string())))
        .subscribe_names(
            weft_proto::WAYPOINT_CONFIG_TYPE_URL,
            vec!["egress/waypoint".to_owned()],
            recorder(&configs),
        )
        .subscribe(weft_proto::SECRET_TYPE_URL, recorder(&secrets));
    (
        configs,
        secrets,
        tokio::spawn(client.run_until(std::future::pending::<()>())),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_rules_credential_goes_to_the_waypoint_that_originates_tls_with_it() {
    use base64::Engine;
    use prost::Message;
    use weft_proto::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
    let fake = FakeApiServer::start().await.unwrap();
    fake.create(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "egress", "labels": {"istio.io/dataplane-mode": "ambient"}}}))
        .unwrap();
    fake.create(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "waypoint", "namespace": "egress"},
        "spec": {"gatewayClassName": "istio-waypoint",
                 "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}),
    )
    .unwrap();
    fake.create(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "waypoint-0", "namespace": "egress",
                     "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}},
        "spec": {"nodeName": "node1", "serviceAccountName": "waypoint",
                 "containers": [{"name": "istio-proxy", "image": "weft"}]},
        "status": {"podIP": "10.0.0.7"}}))
        .unwrap();
    fake.create(json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "api", "namespace": "egress", "labels": {"istio.io/use-waypoint": "waypoint"}},
        "spec": {"hosts": ["api.example.com"], "addresses": ["240.0.0.1"],
                 "location": "MESH_EXTERNAL", "resolution": "STATIC",
                 "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                 "endpoints": [{"address": "192.0.2.10", "ports": {"http": 8443}}]}}))
        .unwrap();
    fake.create(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "api", "namespace": "egress"},
        "spec": {"host": "api.example.com",
                 "trafficPolicy": {"tls": {"mode": "SIMPLE", "credentialName": "api-ca"}}}}),
    )
    .unwrap();
    let waypoint_uid = uid(&fake, "Pod", "egress", "waypoint-0");
    fake.add_token(
        "waypoint-token",
        TokenIdentity::bound(
            "egress",
            "waypoint",
            ("waypoint-0", &waypoint_uid),
            None,
            "istio-ca",
        ),
    );
    let (_dir, kubeconfig) = write_kubeconfig(&fake, "kube-origination");
    let tls = free_port();
    let monitoring = free_port();
    let _controller = start_controller(&kubeconfig, tls, monitoring);
    let root = ready_with_root(&fake, monitoring).await;

    let (configs, secrets, task) = waypoint_stream(tls_channel(tls, &root), "waypoint-token");
    // The cluster names the resource, in the waypoint's namespace.
    let config = eventually("the waypoint's config", Duration::from_secs(20), || {
        configs.lock().unwrap().iter().flatten().last().cloned()
    })
    .await;
    let config = weft_proto::waypoint::WaypointConfig::decode(config.1.as_slice()).unwrap();
    let tls_of = config
        .clusters
        .iter()
        .find(|c| c.host == "api.example.com")
        .and_then(|c| c.tls.clone())
        .expect("TLS origination to the entry's host");
    assert_eq!(tls_of.credential_resource, "kubernetes://egress/api-ca");

    // The Secret appears after the controller started (read once, then watched): the waypoint
    // receives the CA it verifies the server with, and then its rotation.
    let generic = |ca: &str| {
        let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": "api-ca", "namespace": "egress"},
               "data": {"ca.crt": encode(ca)}})
    };
    let trusted_ca = |delivered: &[(String, Vec<u8>)]| -> Option<Vec<u8>> {
        let (name, bytes) = delivered.last()?;
        assert_eq!(name, "kubernetes://egress/api-ca-cacert");
        match Secret::decode(bytes.as_slice()).unwrap().r#type {
            Some(secret::Type::ValidationContext(context)) => {
                match context.trusted_ca.and_then(|d| d.specifier) {
                    Some(
                        weft_proto::envoy::config::core::v3::data_source::Specifier::InlineBytes(b),
                    ) => Some(b),
                    other => panic!("not inline: {other:?}"),
                }
            }
            other => panic!("not a CA: {other:?}"),
        }
    };
    let first = weft_identity::CertificateAuthority::generate().unwrap();
    fake.create(generic(first.root_cert_pem())).unwrap();
    let received = eventually("the waypoint's CA", Duration::from_secs(20), || {
        secrets
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|u| trusted_ca(u))
    })
    .await;
    assert_eq!(received, first.root_cert_pem().as_bytes());
    let rotated = weft_identity::CertificateAuthority::generate().unwrap();
    fake.update(generic(rotated.root_cert_pem())).unwrap();
    eventually("the rotated CA", Duration::from_secs(10), || {
        secrets
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|u| trusted_ca(u))
            .filter(|ca| ca == rotated.root_cert_pem().as_bytes())
    })
    .await;
    task.abort();
}
