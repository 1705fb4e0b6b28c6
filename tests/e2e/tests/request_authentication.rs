//! RequestAuthentication at the waypoint, end to end, with an AuthorizationPolicy on the
//! request principals: keys inline (`jwks`), then at a `jwksUri` that a testbed pod serves over
//! HTTP, which the controller fetches (as istiod does) and inlines in the waypoint's
//! configuration. Needs root.

use std::time::Duration;

use waypoint::testing::TestIssuer;
use weft_e2e::fixtures::{REVIEWS_VIP as VIP, reviews_service};
use weft_e2e::{Mesh, MeshOptions, PodSpec, waypoint_resources};

const WAYPOINT: &str = "waypoint";
const ISSUER: &str = "https://issuer.example";

/// The RequestAuthentication with `keys` (`jwks: ...` or `jwksUri: ...`) and an ALLOW policy on
/// its request principals with `when`, both bound to the service (targetRefs), as an Istio user
/// writes them for a waypoint.
fn require_jwt(mesh: &Mesh, keys: &str, when: &str) {
    let yaml = format!(
        r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: reviews-jwt, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: reviews}}]
  jwtRules:
  - issuer: {ISSUER}
    {keys}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reviews-require-jwt, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: reviews}}]
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/*"]}}}}]
    {when}
"#
    );
    mesh.write_waypoint_config(WAYPOINT, "40-jwt.yaml", &yaml)
        .unwrap_or_else(|e| panic!("{e:#}"));
}

fn claims() -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::json!({"sub": "alice", "exp": now + 600, "groups": ["readers"]})
}

fn bearer(issuer: &TestIssuer) -> String {
    format!("Authorization: Bearer {}", issuer.token(claims()))
}

/// A token of a key the rule does not have is 401; no token passes authentication and is
/// refused by the policy, 403.
fn refused_without_a_valid_token(mesh: &Mesh, url: &str, forger: &TestIssuer) {
    let forged = mesh.curl_with("client", &["-H", &bearer(forger), url]);
    assert_eq!(forged.status, 401, "{}", forged.body);
    assert_eq!(forged.body, "Jwt verification fails");
    let missing = mesh.curl_with("client", &[url]);
    assert_eq!(missing.status, 403, "{}", missing.body);
    assert_eq!(missing.body, "RBAC: access denied");
}

#[test]
fn tokens_are_checked_against_inline_keys_and_keys_a_pod_serves() {
    let issuer = TestIssuer::es256(ISSUER, "k1");
    let forger = TestIssuer::es256(ISSUER, "k1");
    let served = TestIssuer::es256(ISSUER, "k2");
    // The issuer's key server: a plain pod outside the mesh serving this file.
    let file = std::env::temp_dir().join(format!("weft-e2e-jwks-{}.json", std::process::id()));
    std::fs::write(&file, served.jwks()).expect("write the JWKS document");
    let mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
            PodSpec::waypoint(WAYPOINT, "node2", "shop"),
            PodSpec::app("keys", "node2", "auth", "keys", "v1")
                .not_enrolled()
                .with_file("/jwks.json", &file),
        ],
        MeshOptions {
            config: format!(
                "{}---\n{}",
                reviews_service(false),
                waypoint_resources("shop")
            ),
            log_requests: true,
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    let url = format!("http://{VIP}/jwt");
    mesh.await_reachable("client", &url)
        .expect("the service is reachable through the waypoint");

    // Inline keys, and a claim condition.
    require_jwt(
        &mesh,
        &format!("jwks: '{}'", issuer.jwks()),
        r#"when: [{key: "request.auth.claims[groups]", values: [readers]}]"#,
    );
    let valid = mesh.curl_with("client", &["-H", &bearer(&issuer), &url]);
    assert_eq!(valid.status, 200, "{}\n{}", valid.body, mesh.logs());
    // The token is validated and removed before the request goes on (forwardOriginalToken unset).
    assert!(
        !valid.body.to_lowercase().contains("authorization"),
        "{}",
        valid.body
    );
    refused_without_a_valid_token(&mesh, &url, &forger);

    // Keys at a jwksUri the pod serves. Until the controller's first fetch lands the rule has
    // no key and refuses every token (as istiod's); then the served key validates, and the
    // inline key of before no longer does, nor another key with the served key's id.
    let jwks_uri = format!("http://{}:8080/jwks.json", mesh.pod("keys").ip);
    require_jwt(&mesh, &format!("jwksUri: {jwks_uri}"), "");
    assert!(
        mesh.eventually(Duration::from_secs(20), || mesh
            .curl_with("client", &["-H", &bearer(&served), &url])
            .status
            == 200),
        "a token signed with the served key was not accepted\n{}",
        mesh.logs()
    );
    assert!(
        mesh.log_of("app-keys").contains("/jwks.json"),
        "the key set was not fetched from the pod\n{}",
        mesh.log_of("app-keys")
    );
    let old = mesh.curl_with("client", &["-H", &bearer(&issuer), &url]);
    assert_eq!(old.status, 401, "{}", old.body);
    refused_without_a_valid_token(&mesh, &url, &TestIssuer::es256(ISSUER, "k2"));
    drop(mesh);
    let _ = std::fs::remove_file(&file);
}
