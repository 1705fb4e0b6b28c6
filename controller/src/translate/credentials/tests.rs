//! Which credentials gateways are served, to whom, and what is reported when a Secret is
//! missing, broken or out of reach.

use weft_proto::envoy::extensions::transport_sockets::tls::v3::secret::Type;

use super::*;
use crate::model::credential::CredentialSecret;
use crate::translate::translate;
use crate::translate::waypoint::tests::validated;

const EDGE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: ingress-0, namespace: edge, labels: {istio: ingressgateway}}
spec: {nodeName: n1, serviceAccountName: ingress, containers: [{name: g, image: g}]}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: edge-istio-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: edge}}
spec: {nodeName: n1, serviceAccountName: edge-istio, containers: [{name: g, image: g}]}
status: {podIP: 10.0.0.6}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop-gateway, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*.example.com"]
    tls: {mode: SIMPLE, credentialName: shop-cert}
  - port: {number: 8443, name: mtls, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: MUTUAL, credentialName: mtls-cert}
  - port: {number: 9443, name: missing, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: missing-cert}
  - port: {number: 9444, name: elsewhere, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: "kubernetes://shop/shop-cert"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: istio
  listeners:
  - {name: api, port: 443, protocol: HTTPS, hostname: api.example.com, tls: {certificateRefs: [{name: api-cert}]}}
  - {name: far, port: 443, protocol: HTTPS, hostname: far.example.com, tls: {certificateRefs: [{name: far-cert, namespace: certs}]}}
  - {name: denied, port: 443, protocol: HTTPS, hostname: denied.example.com, tls: {certificateRefs: [{name: nogrant-cert, namespace: certs}]}}
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: gateways, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: shop}]
  to: [{group: "", kind: Secret, name: far-cert}]
"#;

const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";
const CRL: &str = "-----BEGIN X509 CRL-----\nMIIB\n-----END X509 CRL-----\n";

fn secret(pairs: &[(&str, &str)]) -> CredentialSecret {
    CredentialSecret {
        data: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect(),
    }
}

fn index() -> ConfigIndex {
    let mut index = validated(EDGE);
    for (key, credential) in [
        (
            "edge/shop-cert",
            secret(&[("tls.crt", CERT), ("tls.key", KEY)]),
        ),
        (
            "edge/mtls-cert",
            secret(&[("tls.crt", CERT), ("tls.key", KEY)]),
        ),
        ("edge/mtls-cert-cacert", secret(&[("cacert", CERT)])),
        (
            "shop/shop-cert",
            secret(&[("tls.crt", CERT), ("tls.key", KEY)]),
        ),
        ("shop/api-cert", secret(&[("cert", CERT), ("key", KEY)])),
        (
            "certs/far-cert",
            secret(&[("tls.crt", CERT), ("tls.key", KEY)]),
        ),
        (
            "certs/nogrant-cert",
            secret(&[("tls.crt", CERT), ("tls.key", KEY)]),
        ),
    ] {
        index.secrets.insert(key.to_owned(), credential);
    }
    index.secrets_watched = true;
    index
}

fn spiffe(namespace: &str, account: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", namespace, account).unwrap()
}

#[test]
fn only_the_secrets_gateways_may_use_are_kept() {
    let wanted = referenced_secrets(&index());
    let expected = [
        // credentialName, in the namespace of the pods the Gateway selects, with its CA.
        "edge/shop-cert",
        "edge/shop-cert-cacert",
        "edge/mtls-cert",
        "edge/mtls-cert-cacert",
        "edge/missing-cert",
        "edge/missing-cert-cacert",
        // certificateRefs, in the Gateway's namespace or granted.
        "shop/api-cert",
        "shop/api-cert-cacert",
        "certs/far-cert",
        "certs/far-cert-cacert",
    ];
    assert_eq!(
        wanted,
        expected
            .iter()
            .map(|k| (*k).to_owned())
            .collect::<BTreeSet<_>>(),
        "another namespace's Secret named by credentialName, and one no ReferenceGrant opens, are never kept"
    );
}

#[test]
fn credentials_go_to_the_identities_of_the_gateways_pods() {
    let translation = translate(&index(), &MeshSettings::default());
    let audience = |resource: &str| -> Vec<SpiffeId> {
        translation.credentials[resource]
            .audience
            .iter()
            .cloned()
            .collect()
    };
    let istio = vec![spiffe("edge", "ingress")];
    let kubernetes = vec![spiffe("shop", "edge-istio")];
    assert_eq!(audience("kubernetes://edge/shop-cert"), istio);
    assert_eq!(audience("kubernetes://edge/mtls-cert"), istio);
    assert_eq!(audience("kubernetes://edge/mtls-cert-cacert"), istio);
    assert_eq!(audience("kubernetes-gateway://shop/api-cert"), kubernetes);
    assert_eq!(audience("kubernetes-gateway://certs/far-cert"), kubernetes);
    assert_eq!(
        translation.credentials.keys().collect::<Vec<_>>(),
        [
            "kubernetes-gateway://certs/far-cert",
            "kubernetes-gateway://shop/api-cert",
            "kubernetes://edge/mtls-cert",
            "kubernetes://edge/mtls-cert-cacert",
            "kubernetes://edge/shop-cert",
        ],
        "nothing else is served: not the Secret of the Gateway's own namespace shop (the pod runs in edge), not the ungranted one"
    );
    // The Secret's keys in both layouts, and the CA from its `-cacert` Secret.
    let Some(Type::TlsCertificate(generic)) =
        &translation.credentials["kubernetes-gateway://shop/api-cert"]
            .secret
            .r#type
    else {
        panic!("not a certificate");
    };
    assert_eq!(
        generic
            .certificate_chain
            .as_ref()
            .and_then(|d| d.specifier.clone()),
        Some(Specifier::InlineBytes(CERT.as_bytes().to_vec()))
    );
    assert!(matches!(
        translation.credentials["kubernetes://edge/mtls-cert-cacert"]
            .secret
            .r#type,
        Some(Type::ValidationContext(_))
    ));
    // The gateway's servers name their resources.
    let config = &translation.waypoints["edge/ingress-0"];
    let resources: Vec<&str> = config
        .gateway
        .as_ref()
        .unwrap()
        .listeners
        .iter()
        .flat_map(|l| &l.servers)
        .filter_map(|s| s.tls.as_ref())
        .map(|t| t.credential_resource.as_str())
        .collect();
    assert_eq!(
        resources,
        [
            "kubernetes://edge/shop-cert",
            "kubernetes://edge/mtls-cert",
            "kubernetes://edge/missing-cert",
            "kubernetes://shop/shop-cert",
        ]
    );
}

#[test]
fn a_missing_broken_or_foreign_secret_is_reported_naming_the_gateway_server_and_secret() {
    let mut index = index();
    index.secrets.insert(
        "edge/mtls-cert-cacert".to_owned(),
        secret(&[("password", "x")]),
    );
    index.secrets.insert(
        "edge/mtls-cert".to_owned(),
        secret(&[("tls.crt", "not pem"), ("tls.key", KEY)]),
    );
    let translation = translate(&index, &MeshSettings::default());
    let problems: Vec<String> = translation
        .problems
        .iter()
        .filter(|p| matches!(p.problem, TranslateProblem::Credential { .. }))
        .map(ToString::to_string)
        .collect();
    let expected = [
        "Gateway shop/shop-gateway: server https.8443.mtls.shop-gateway.shop: credential kubernetes://edge/mtls-cert: Secret edge/mtls-cert: certificate: no PEM CERTIFICATE; the server refuses TLS",
        "Gateway shop/shop-gateway: server https.8443.mtls.shop-gateway.shop: credential kubernetes://edge/mtls-cert-cacert: Secret edge/mtls-cert-cacert: MUTUAL needs a CA: no \"cacert\" nor \"ca.crt\" (found: password); the server refuses TLS",
        "Gateway shop/shop-gateway: server https.9443.missing.shop-gateway.shop: credential kubernetes://edge/missing-cert: Secret edge/missing-cert not found; the server refuses TLS",
        "Gateway shop/shop-gateway: server https.9444.elsewhere.shop-gateway.shop: credential kubernetes://shop/shop-cert: credentialName names a Secret of namespace shop; the gateway's pod edge/ingress-0 may use only Secrets of its own namespace; the server refuses TLS",
    ];
    assert_eq!(problems, expected);
    assert!(
        !translation
            .credentials
            .contains_key("kubernetes://edge/mtls-cert")
    );
    assert!(
        !translation
            .credentials
            .contains_key("kubernetes://shop/shop-cert")
    );
    // The others are still served.
    assert!(
        translation
            .credentials
            .contains_key("kubernetes://edge/shop-cert")
    );
}

/// In local mode there are no Secrets: the gateways read their credentials from files, so no
/// credential is served and none is reported missing.
#[test]
fn local_mode_reports_no_secret_missing() {
    let mut index = index();
    index.secrets.clear();
    index.secrets_watched = false;
    let translation = translate(&index, &MeshSettings::default());
    let credential_problems: Vec<String> = translation
        .problems
        .iter()
        .filter(|p| matches!(p.problem, TranslateProblem::Credential { .. }))
        .map(ToString::to_string)
        .collect();
    assert_eq!(credential_problems, Vec::<String>::new());
    assert!(translation.credentials.is_empty());
}

/// A waypoint (two pods, one service account) serving two external hosts whose
/// DestinationRules originate TLS with credentials, and one naming another namespace's.
const ORIGINATION: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: egress, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: egress, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-0, namespace: egress, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {nodeName: n1, serviceAccountName: waypoint, containers: [{name: w, image: w}]}
status: {podIP: 10.0.0.7}
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-1, namespace: egress, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {nodeName: n2, serviceAccountName: waypoint, containers: [{name: w, image: w}]}
status: {podIP: 10.0.0.8}
---
apiVersion: v1
kind: Pod
metadata: {name: app-0, namespace: egress}
spec: {nodeName: n1, serviceAccountName: app, containers: [{name: a, image: a}]}
status: {podIP: 10.0.0.9}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: egress, labels: {istio.io/use-waypoint: waypoint}}
spec:
  hosts: [api.example.com]
  addresses: [240.0.0.1]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 192.0.2.10, ports: {http: 8443}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pay, namespace: egress, labels: {istio.io/use-waypoint: waypoint}}
spec:
  hosts: [pay.example.com]
  addresses: [240.0.0.2]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 192.0.2.11, ports: {http: 8443}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: far, namespace: egress, labels: {istio.io/use-waypoint: waypoint}}
spec:
  hosts: [far.example.com]
  addresses: [240.0.0.3]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 192.0.2.12, ports: {http: 8443}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: egress}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {mode: SIMPLE, credentialName: api-ca}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pay, namespace: egress}
spec:
  host: pay.example.com
  trafficPolicy:
    portLevelSettings:
    - port: {number: 80}
      tls: {mode: MUTUAL, credentialName: pay-client}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: far, namespace: egress}
spec:
  host: far.example.com
  trafficPolicy:
    tls: {mode: SIMPLE, credentialName: "kubernetes://certs/far-ca"}
"#;

fn origination_index() -> ConfigIndex {
    let mut index = validated(ORIGINATION);
    for (key, credential) in [
        (
            "egress/api-ca",
            secret(&[("ca.crt", CERT), ("ca.crl", CRL)]),
        ),
        (
            "egress/pay-client",
            secret(&[("tls.crt", CERT), ("tls.key", KEY)]),
        ),
        ("egress/pay-client-cacert", secret(&[("ca.crt", CERT)])),
        ("certs/far-ca", secret(&[("ca.crt", CERT)])),
    ] {
        index.secrets.insert(key.to_owned(), credential);
    }
    index.secrets_watched = true;
    index
}

#[test]
fn destination_rule_credentials_go_to_the_identities_of_the_waypoints_pods() {
    let index = origination_index();
    let wanted = referenced_secrets(&index);
    for kept in [
        "egress/api-ca-cacert",
        "egress/pay-client",
        "egress/pay-client-cacert",
    ] {
        assert!(wanted.contains(kept), "{kept} is kept: {wanted:?}");
    }
    assert!(
        !wanted.contains("certs/far-ca"),
        "another namespace's Secret is never kept for the waypoint: {wanted:?}"
    );
    let translation = translate(&index, &MeshSettings::default());
    let waypoint = BTreeSet::from([spiffe("egress", "waypoint")]);
    // SIMPLE: the CA only, from the credential's own `ca.crt` (istiod's `GetCaCert`).
    let api = &translation.credentials["kubernetes://egress/api-ca-cacert"];
    assert_eq!(
        api.audience, waypoint,
        "the waypoint's pods, never the app's"
    );
    let Some(Type::ValidationContext(context)) = &api.secret.r#type else {
        panic!("not a CA: {api:?}");
    };
    assert!(
        context.crl.is_some(),
        "the Secret's `ca.crl` goes with its CA, as istiod serves it"
    );
    assert!(
        !translation
            .credentials
            .contains_key("kubernetes://egress/api-ca"),
        "SIMPLE presents no client certificate"
    );
    // MUTUAL: the client pair and the CA from the `-cacert` Secret.
    let pair = &translation.credentials["kubernetes://egress/pay-client"];
    assert_eq!(pair.audience, waypoint);
    assert!(matches!(pair.secret.r#type, Some(Type::TlsCertificate(_))));
    assert!(
        translation
            .credentials
            .contains_key("kubernetes://egress/pay-client-cacert")
    );
    assert!(
        !translation.credentials.keys().any(|k| k.contains("far-ca")),
        "{:?}",
        translation.credentials.keys()
    );
    // Each cluster names the resource it reads.
    let config = &translation.waypoints["egress/waypoint"];
    let resource = |host: &str| {
        config
            .clusters
            .iter()
            .find(|c| c.host == host)
            .and_then(|c| c.tls.as_ref())
            .map(|t| t.credential_resource.clone())
            .unwrap_or_else(|| panic!("TLS for {host}"))
    };
    assert_eq!(resource("api.example.com"), "kubernetes://egress/api-ca");
    assert_eq!(
        resource("pay.example.com"),
        "kubernetes://egress/pay-client"
    );
    assert_eq!(resource("far.example.com"), "kubernetes://certs/far-ca");
    let reported: Vec<String> = translation
        .problems
        .iter()
        .filter(|p| matches!(p.problem, TranslateProblem::OriginationCredential { .. }))
        .map(ToString::to_string)
        .collect();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert!(
        reported[0].contains("egress/far")
            && reported[0].contains("spec.trafficPolicy.tls.credentialName")
            && reported[0].contains("kubernetes://certs/far-ca-cacert")
            && reported[0].contains("only Secrets of its own namespace"),
        "{}",
        reported[0]
    );
}

#[test]
fn a_missing_destination_rule_credential_is_reported_and_local_mode_serves_none() {
    let mut index = origination_index();
    index.secrets.remove("egress/api-ca");
    let translation = translate(&index, &MeshSettings::default());
    assert!(
        !translation
            .credentials
            .contains_key("kubernetes://egress/api-ca-cacert")
    );
    assert!(
        translation.problems.iter().any(|p| {
            let text = p.to_string();
            text.starts_with("DestinationRule egress/api: ")
                && text.contains("no CA to verify the server: neither Secret egress/api-ca-cacert nor egress/api-ca exists")
                && text.contains("api.example.com")
        }),
        "{:?}",
        translation.problems
    );
    index.secrets_watched = false;
    let local = translate(&index, &MeshSettings::default());
    assert!(local.credentials.is_empty());
    assert!(
        local.waypoints["egress/waypoint"]
            .clusters
            .iter()
            .filter_map(|c| c.tls.as_ref())
            .all(|t| t.credential_resource.is_empty()),
        "local mode: the waypoint reads its credentials directory"
    );
}

const TWO_CERTIFICATES: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: ingress-0, namespace: edge, labels: {istio: ingressgateway}}
spec: {nodeName: n1, serviceAccountName: ingress, containers: [{name: g, image: g}]}
status: {podIP: 10.0.0.5}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop-gateway, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: MUTUAL, credentialNames: [rsa-cert, ecdsa-cert], subjectAltNames: [spiffe://example.org/ns/shop/sa/buyer]}
  - port: {number: 8443, name: files, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, serverCertificate: /etc/istio/certs/tls.crt, privateKey: /etc/istio/certs/tls.key}
"#;

#[test]
fn every_credential_name_is_served_and_file_mounted_servers_name_their_files() {
    let mut index = validated(TWO_CERTIFICATES);
    for (key, credential) in [
        (
            "edge/rsa-cert",
            secret(&[("tls.crt", CERT), ("tls.key", KEY)]),
        ),
        (
            "edge/ecdsa-cert",
            secret(&[("tls.crt", CERT), ("tls.key", KEY)]),
        ),
        ("edge/rsa-cert-cacert", secret(&[("cacert", CERT)])),
    ] {
        index.secrets.insert(key.to_owned(), credential);
    }
    index.secrets_watched = true;
    let wanted = referenced_secrets(&index);
    assert!(wanted.contains("edge/rsa-cert") && wanted.contains("edge/ecdsa-cert"));

    let translation = translate(&index, &MeshSettings::default());
    assert_eq!(
        translation.credentials.keys().collect::<Vec<_>>(),
        [
            "kubernetes://edge/ecdsa-cert",
            "kubernetes://edge/rsa-cert",
            "kubernetes://edge/rsa-cert-cacert",
        ],
        "both certificates, and the first one's CA (Istio's rule for credentialNames)"
    );
    let config = &translation.waypoints["edge/ingress-0"];
    let servers: Vec<&wp::ServerTls> = config
        .gateway
        .as_ref()
        .unwrap()
        .listeners
        .iter()
        .flat_map(|l| &l.servers)
        .filter_map(|s| s.tls.as_ref())
        .collect();
    let [named, files] = servers.as_slice() else {
        panic!("two servers: {servers:?}");
    };
    assert_eq!(named.credential_resource, "kubernetes://edge/rsa-cert");
    assert_eq!(
        named.additional_credentials,
        [wp::GatewayCredential {
            name: "ecdsa-cert".to_owned(),
            resource: "kubernetes://edge/ecdsa-cert".to_owned(),
        }]
    );
    assert_eq!(
        named.subject_alt_names,
        ["spiffe://example.org/ns/shop/sa/buyer"]
    );
    assert!(files.credential_name.is_empty());
    assert_eq!(
        files
            .files
            .as_ref()
            .map(|f| f.certificates[0].certificate_chain.as_str()),
        Some("/etc/istio/certs/tls.crt")
    );
    assert!(
        translation.problems.is_empty(),
        "{:?}",
        translation.problems
    );
}
