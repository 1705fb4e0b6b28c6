//! Authorization: the client's address is its connection's, other trust domains are refused,
//! trust-domain rules decide by the client's identity, and a path policy covers every form of
//! its path.

use http::StatusCode;
use weft_proto::waypoint as proto;

use waypoint::testing::hbone_tunnel;

use crate::harness::*;

#[tokio::test]
async fn a_claimed_source_address_does_not_escape_an_ip_block_rule() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let mut cfg = config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]);
    cfg.authorization_policies.push(proto::L7Authorization {
        name: "deny-loopback".to_owned(),
        namespace: "default".to_owned(),
        action: proto::l7_authorization::Action::Deny as i32,
        rules: vec![proto::Rule {
            from: vec![proto::rule::From {
                source: Some(proto::Source {
                    ip_blocks: vec!["127.0.0.0/8".to_owned()],
                    ..Default::default()
                }),
            }],
            to: Vec::new(),
            when: Vec::new(),
        }],
        dry_run: false,
        target_services: vec![HOST.to_owned()],
    });
    harness.waypoint.apply_config(cfg).unwrap();
    // The client connects from 127.0.0.1 and claims `forwarded: for=10.0.0.7`.
    let (status, _, _) = harness.get("/from-loopback").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(v1.request_count(), 0);
}

#[tokio::test]
async fn a_client_of_another_trust_domain_is_refused() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let foreign = mesh.material_in("evil.example", "default", "sleep");
    let harness = Harness::start(mesh, &[&v1]).await;
    harness
        .waypoint
        .apply_config(config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]))
        .unwrap();
    let refused = hbone_tunnel(
        &foreign,
        harness.address,
        &harness.waypoint_identity,
        service_addr(),
        CLIENT_IP,
    )
    .await;
    assert!(refused.is_err(), "a foreign trust domain got a tunnel");
    let (status, _, _) = harness.get("/still-served").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn deny_policy_on_a_path_also_covers_its_encoded_and_doubled_forms() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let mut cfg = config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]);
    cfg.authorization_policies
        .push(deny_paths(&["/admin", "/admin/*"], &[]));
    harness.waypoint.apply_config(cfg).unwrap();
    for path in [
        "/admin",
        "//admin",
        "/%2Fadmin",
        "/x/..%2Fadmin",
        "/admin/users",
        "/%61dmin",
    ] {
        let (status, _, body) = harness.get(path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(body, weft_policy::ACCESS_DENIED_BODY, "{path}");
    }
    assert_eq!(v1.request_count(), 0);
    let (status, _, _) = harness.get("/productpage").await;
    assert_eq!(status, StatusCode::OK);
}

/// An ALLOW policy on trust domains lets the mesh's client (`cluster.local`) through when its
/// trust domain is listed and refuses it when it is not; a DENY on `notTrustDomains` follows.
#[tokio::test]
async fn trust_domain_policies_decide_by_the_clients_identity() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let policy = |name: &str, action: proto::l7_authorization::Action, source: proto::Source| {
        proto::L7Authorization {
            name: name.to_owned(),
            namespace: "default".to_owned(),
            action: action as i32,
            rules: vec![proto::Rule {
                from: vec![proto::rule::From {
                    source: Some(source),
                }],
                to: Vec::new(),
                when: Vec::new(),
            }],
            dry_run: false,
            target_services: vec![HOST.to_owned()],
        }
    };
    let domains = |values: &[&str]| values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>();
    use proto::l7_authorization::Action::{Allow, Deny};
    let cases = [
        (
            "allow the mesh's domain by prefix",
            policy(
                "allow",
                Allow,
                proto::Source {
                    trust_domains: domains(&["cluster.*"]),
                    ..Default::default()
                },
            ),
            StatusCode::OK,
        ),
        (
            "allow another domain only",
            policy(
                "allow",
                Allow,
                proto::Source {
                    trust_domains: domains(&["partner.example"]),
                    ..Default::default()
                },
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            "deny all but the mesh's domain",
            policy(
                "deny",
                Deny,
                proto::Source {
                    not_trust_domains: domains(&["cluster.local"]),
                    ..Default::default()
                },
            ),
            StatusCode::OK,
        ),
        (
            "deny all but another domain",
            policy(
                "deny",
                Deny,
                proto::Source {
                    not_trust_domains: domains(&["*.example"]),
                    ..Default::default()
                },
            ),
            StatusCode::FORBIDDEN,
        ),
    ];
    for (name, policy, want) in cases {
        let mut cfg = config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]);
        cfg.authorization_policies.push(policy);
        harness.waypoint.apply_config(cfg).unwrap();
        let (status, _, _) = harness.get("/productpage").await;
        assert_eq!(status, want, "{name}");
    }
}
