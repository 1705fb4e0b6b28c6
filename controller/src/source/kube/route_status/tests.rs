//! The route status writer against the fake API server: conditions appear on the object, follow
//! the configuration, and leave other controllers' entries alone.

use super::*;
use crate::source::kube::test_support::{Started, documents, eventually};
use weft_fake_apiserver::FakeApiServer;

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: shop, generation: 2}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}, {name: ingress}]
  rules:
  - backendRefs: [{name: reviews, port: 9080, weight: 90}, {name: reviews-v2, port: 9080, weight: 10}]
status:
  parents:
  - parentRef: {name: ingress}
    controllerName: example.com/ingress
    conditions: [{type: Accepted, status: "True", reason: Accepted, message: "", lastTransitionTime: "2030-01-01T00:00:00Z"}]
"#;

const REVIEWS_V2: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: shop}
spec:
  clusterIP: 10.96.0.21
  ports: [{name: http, port: 9080}]
"#;

/// The route's `status.parents` entry of `controller`: (type, status, reason) per condition.
fn conditions_of(fake: &FakeApiServer, controller: &str) -> Option<Vec<(String, String, String)>> {
    let route = fake.get("gateway.networking.k8s.io/v1", "HTTPRoute", "shop", "split")?;
    let parents = route["status"]["parents"].as_array()?.clone();
    let entry = parents
        .iter()
        .find(|p| p["controllerName"].as_str() == Some(controller))?;
    Some(
        entry["conditions"]
            .as_array()?
            .iter()
            .map(|c| {
                let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
                (text("type"), text("status"), text("reason"))
            })
            .collect(),
    )
}

fn triple(t: &str, s: &str, r: &str) -> (String, String, String) {
    (t.to_owned(), s.to_owned(), r.to_owned())
}

#[tokio::test]
async fn route_status_is_written_and_follows_the_configuration() {
    let mut started = Started::with(OBJECTS).await;
    started.run(|client, index, shutdown| {
        keep_route_statuses(client, index, MeshSettings::default(), shutdown)
    });
    let fake = &started.fake;

    eventually("BackendNotFound on the Service parent", || {
        conditions_of(fake, MESH_CONTROLLER)
            == Some(vec![
                triple("Accepted", "True", "Accepted"),
                triple("ResolvedRefs", "False", "BackendNotFound"),
            ])
    })
    .await;
    let route = fake
        .get("gateway.networking.k8s.io/v1", "HTTPRoute", "shop", "split")
        .unwrap();
    let ours = route["status"]["parents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["controllerName"] == MESH_CONTROLLER)
        .unwrap()
        .clone();
    assert_eq!(
        ours["parentRef"],
        json!({"group": "", "kind": "Service", "name": "reviews"})
    );
    assert_eq!(ours["conditions"][0]["observedGeneration"], 2);
    assert!(
        ours["conditions"][0]["lastTransitionTime"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{ours}"
    );
    assert_eq!(
        conditions_of(fake, "example.com/ingress"),
        Some(vec![triple("Accepted", "True", "Accepted")]),
        "another controller's entry is kept"
    );

    // The missing backend appears: the condition follows.
    for object in documents(REVIEWS_V2) {
        fake.create(object).expect("fake accepts the service");
    }
    eventually("ResolvedRefs once the backend exists", || {
        conditions_of(fake, MESH_CONTROLLER)
            == Some(vec![
                triple("Accepted", "True", "Accepted"),
                triple("ResolvedRefs", "True", "ResolvedRefs"),
            ])
    })
    .await;
    assert!(conditions_of(fake, "example.com/ingress").is_some());

    started.stop().await;
}

const INGRESS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: edge}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: public, namespace: edge, generation: 1}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: tls, port: 443, protocol: TLS, tls: {mode: Passthrough}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: edge}
spec:
  clusterIP: 10.96.0.50
  ports: [{name: http, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: edge}
spec:
  parentRefs: [{name: public, sectionName: http}, {name: public, sectionName: tls}]
  rules: [{backendRefs: [{name: web, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: secure, namespace: edge}
spec:
  parentRefs: [{name: public}]
  hostnames: [secure.example.com]
  rules: [{backendRefs: [{name: web, port: 8080}]}]
"#;

const PROVISIONED_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: public-istio, namespace: edge}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.60
  ports: [{name: http, port: 80}]
"#;

#[tokio::test]
async fn ingress_gateway_and_route_status_is_written() {
    let mut started = Started::with(INGRESS).await;
    started.run(|client, index, shutdown| {
        keep_route_statuses(client, index, MeshSettings::default(), shutdown)
    });
    let fake = &started.fake;

    let gateway = || fake.get("gateway.networking.k8s.io/v1", "Gateway", "edge", "public");
    let condition = |value: &Value, kind: &str| {
        value["conditions"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["type"] == kind))
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or_default().to_owned(),
                    c["reason"].as_str().unwrap_or_default().to_owned(),
                )
            })
    };
    // Gateways are written before routes: wait for the last route too.
    eventually("the Gateway's and the routes' status", || {
        gateway().is_some_and(|g| {
            g["status"]["listeners"]
                .as_array()
                .is_some_and(|l| l.len() == 2)
        }) && fake
            .get(
                "gateway.networking.k8s.io/v1alpha2",
                "TLSRoute",
                "edge",
                "secure",
            )
            .is_some_and(|r| {
                r["status"]["parents"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty())
            })
    })
    .await;
    let status = gateway().unwrap()["status"].clone();
    assert_eq!(
        condition(&status, "Accepted"),
        Some(("True".into(), "Accepted".into()))
    );
    assert_eq!(
        condition(&status, "Programmed"),
        Some(("False".into(), "AddressNotAssigned".into()))
    );
    let listeners = status["listeners"].as_array().unwrap();
    assert_eq!(listeners[0]["name"], "http");
    assert_eq!(listeners[0]["attachedRoutes"], 1);
    assert_eq!(listeners[0]["supportedKinds"][0]["kind"], "HTTPRoute");
    assert_eq!(listeners[1]["attachedRoutes"], 1, "the TLSRoute only");
    assert_eq!(
        condition(&listeners[1], "Programmed"),
        Some(("True".into(), "Programmed".into()))
    );

    // Per parent: the HTTP listener takes the HTTPRoute, the TLS one does not.
    let route = fake
        .get("gateway.networking.k8s.io/v1", "HTTPRoute", "edge", "web")
        .unwrap();
    let parents = route["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 2, "{route}");
    assert!(
        parents
            .iter()
            .all(|p| p["controllerName"] == "istio.io/gateway-controller")
    );
    assert_eq!(
        condition(&parents[0], "Accepted"),
        Some(("True".into(), "Accepted".into()))
    );
    assert_eq!(
        condition(&parents[1], "Accepted"),
        Some(("False".into(), "NotAllowedByListeners".into()))
    );
    let tls = fake
        .get(
            "gateway.networking.k8s.io/v1alpha2",
            "TLSRoute",
            "edge",
            "secure",
        )
        .unwrap();
    assert_eq!(
        condition(&tls["status"]["parents"][0], "ResolvedRefs"),
        Some(("True".into(), "ResolvedRefs".into()))
    );

    // The provisioned Service appears: the Gateway is programmed, at its address.
    for object in documents(PROVISIONED_SERVICE) {
        fake.create(object).expect("fake accepts the service");
    }
    eventually("Programmed once the Service exists", || {
        gateway().is_some_and(|g| {
            condition(&g["status"], "Programmed") == Some(("True".into(), "Programmed".into()))
        })
    })
    .await;
    assert_eq!(
        gateway().unwrap()["status"]["addresses"][0]["value"],
        "public-istio.edge.svc.cluster.local"
    );

    started.stop().await;
}

const CERTIFICATES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: edge}
---
apiVersion: v1
kind: Namespace
metadata: {name: certs}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio, generation: 3}
spec: {controllerName: istio.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio-waypoint}
spec: {controllerName: istio.io/mesh-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: other}
spec: {controllerName: example.com/gateway}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: public, namespace: edge}
spec:
  gatewayClassName: istio
  listeners:
  - {name: good, port: 443, protocol: HTTPS, hostname: good.example.com, tls: {certificateRefs: [{name: good-cert}]}}
  - {name: missing, port: 443, protocol: HTTPS, hostname: missing.example.com, tls: {certificateRefs: [{name: missing-cert}]}}
  - {name: opaque, port: 443, protocol: HTTPS, hostname: opaque.example.com, tls: {certificateRefs: [{kind: Secret, name: opaque}]}}
  - {name: garbled, port: 443, protocol: HTTPS, hostname: garbled.example.com, tls: {certificateRefs: [{name: garbled-cert}]}}
  - {name: foreign, port: 443, protocol: HTTPS, hostname: foreign.example.com, tls: {certificateRefs: [{name: good-cert, namespace: certs}]}}
"#;

/// A Secret as the API server holds it (`data` base64-encoded).
fn secret(namespace: &str, name: &str, kind: &str, data: &[(&str, &str)]) -> Value {
    use base64::Engine;
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(v);
            ((*k).to_owned(), Value::String(encoded))
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "type": kind,
           "metadata": {"name": name, "namespace": namespace}, "data": data})
}

/// The `(status, reason, message)` of condition `kind` of listener `name`.
fn listener_condition(gateway: &Value, name: &str, kind: &str) -> Option<(String, String, String)> {
    let listener = gateway["status"]["listeners"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == name)?;
    let condition = listener["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?;
    let text = |k: &str| condition[k].as_str().unwrap_or_default().to_owned();
    Some((text("status"), text("reason"), text("message")))
}

#[tokio::test]
async fn listeners_with_unusable_secrets_are_not_programmed_and_classes_are_accepted() {
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["good.example.com".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut started = Started::with(CERTIFICATES).await;
    let fake = &started.fake;
    for object in [
        secret(
            "edge",
            "good-cert",
            "kubernetes.io/tls",
            &[
                ("tls.crt", &certificate.pem()),
                ("tls.key", &key.serialize_pem()),
            ],
        ),
        secret("edge", "opaque", "Opaque", &[("password", "hunter2")]),
        // A certificate with a key that is not its own.
        secret(
            "edge",
            "garbled-cert",
            "kubernetes.io/tls",
            &[
                ("tls.crt", &certificate.pem()),
                ("tls.key", &other_key.serialize_pem()),
            ],
        ),
        secret(
            "certs",
            "good-cert",
            "kubernetes.io/tls",
            &[
                ("tls.crt", &certificate.pem()),
                ("tls.key", &key.serialize_pem()),
            ],
        ),
    ] {
        fake.create(object).expect("fake accepts the secret");
    }
    started.run(|client, index, shutdown| async move {
        let (listed, _) = watch::channel(false);
        tokio::join!(
            crate::source::kube::secrets::keep_secrets(
                client.clone(),
                index.clone(),
                listed,
                shutdown.clone()
            ),
            keep_route_statuses(client, index, MeshSettings::default(), shutdown),
        );
    });
    let fake = &started.fake;
    let gateway = || {
        fake.get("gateway.networking.k8s.io/v1", "Gateway", "edge", "public")
            .unwrap_or_default()
    };
    let state =
        |name: &str, kind: &str| listener_condition(&gateway(), name, kind).map(|(s, r, _)| (s, r));
    let pair = |s: &str, r: &str| Some((s.to_owned(), r.to_owned()));
    eventually(
        "the good listener programmed and the garbled one refused",
        || {
            state("good", "Programmed") == pair("True", "Programmed")
                && state("garbled", "ResolvedRefs") == pair("False", "InvalidCertificateRef")
        },
    )
    .await;
    let status = gateway();
    assert_eq!(state("good", "ResolvedRefs"), pair("True", "ResolvedRefs"));
    for (name, reason, says) in [
        (
            "missing",
            "InvalidCertificateRef",
            "invalid certificate reference //missing-cert., secret edge/missing-cert not found",
        ),
        (
            "opaque",
            "InvalidCertificateRef",
            "invalid certificate reference /Secret/opaque., secret edge/opaque: no",
        ),
        (
            "garbled",
            "InvalidCertificateRef",
            "invalid certificate reference //garbled-cert., the certificate is malformed: secret edge/garbled-cert: the private key does not match the certificate",
        ),
        (
            "foreign",
            "RefNotPermitted",
            "certificateRef certs/good-cert is not accessible",
        ),
    ] {
        let (resolved, why, message) = listener_condition(&status, name, "ResolvedRefs").unwrap();
        assert_eq!(
            (resolved.as_str(), why.as_str()),
            ("False", reason),
            "{name}: {message}"
        );
        assert!(message.starts_with(says), "{name}: {message}");
        assert_eq!(
            listener_condition(&status, name, "Programmed"),
            Some((
                "False".into(),
                "Invalid".into(),
                "Bad TLS configuration".into()
            )),
            "{name}"
        );
        assert_eq!(
            listener_condition(&status, name, "Accepted").map(|(s, _, _)| s),
            Some("True".into()),
            "{name}"
        );
    }

    // The missing Secret appears: that listener is programmed too.
    fake.create(secret(
        "edge",
        "missing-cert",
        "kubernetes.io/tls",
        &[
            ("tls.crt", &certificate.pem()),
            ("tls.key", &key.serialize_pem()),
        ],
    ))
    .expect("fake accepts the secret");
    eventually("the repaired listener programmed", || {
        state("missing", "Programmed") == pair("True", "Programmed")
            && state("missing", "ResolvedRefs") == pair("True", "ResolvedRefs")
    })
    .await;

    // Istio's classes are accepted, another controller's class is left alone.
    let class = |name: &str| {
        fake.get("gateway.networking.k8s.io/v1", "GatewayClass", "", name)
            .unwrap_or_default()
    };
    eventually("the classes accepted", || {
        ["istio", "istio-waypoint"]
            .iter()
            .all(|name| class(name)["status"]["conditions"][0]["reason"] == "Accepted")
    })
    .await;
    let accepted = &class("istio")["status"]["conditions"][0];
    assert_eq!(accepted["type"], "Accepted");
    assert_eq!(accepted["status"], "True");
    assert_eq!(accepted["message"], "Handled by Istio controller");
    assert_eq!(accepted["observedGeneration"], 3);
    assert!(class("other")["status"]["conditions"].is_null());

    started.stop().await;
}
