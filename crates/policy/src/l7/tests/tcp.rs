//! Authorization of TCP through the waypoint: only L4 attributes decide.

use super::*;

/// TCP through the waypoint, as Istio's task "TCP Traffic" describes it: L4 attributes decide;
/// an ALLOW rule with an HTTP-only field is ignored (so it allows nothing); a DENY rule loses
/// its HTTP-only fields (so it denies more).
#[test]
fn tcp_authorization_table() {
    use PolicyAction::{Allow as A, Deny as D};
    let client = SpiffeId::new("cluster.local", "default", "sleep").unwrap();
    let other = SpiffeId::new("cluster.local", "other", "job").unwrap();
    fn connection(identity: &SpiffeId, port: u16) -> TcpAuthzRequest<'_> {
        TcpAuthzRequest {
            source_identity: Some(identity),
            source_ip: "10.1.0.5".parse().unwrap(),
            remote_ip: "10.1.0.5".parse().unwrap(),
            destination_ip: "10.2.0.9".parse().unwrap(),
            port,
        }
    }
    let op = |ports: &[u16], methods: &[&str]| Operation {
        ports: ports.to_vec(),
        methods: w(methods),
        ..Default::default()
    };
    let allow_ports = policy("allow-ports", A, to(op(&[9000, 9001], &[])));
    let allow_get_9000 = policy("allow-get-9000", A, to(op(&[9000], &["GET"])));
    let deny_get = policy("deny-get", D, to(op(&[], &["GET"])));
    let deny_get_9000 = policy("deny-get-9000", D, to(op(&[9000], &["GET"])));
    let deny_header = policy(
        "deny-header",
        D,
        when(vec![cond("request.headers[x-user]", &["admin"], &[])]),
    );
    let allow_header = policy(
        "allow-header",
        A,
        when(vec![cond("request.headers[x-user]", &["admin"], &[])]),
    );
    let deny_client_on_7000 = policy(
        "deny-client-7000",
        D,
        vec![HttpRule {
            from: vec![Source {
                principals: w(&["cluster.local/ns/default/sa/sleep"]),
                ..Default::default()
            }],
            to: vec![op(&[7000], &[])],
            when: Vec::new(),
        }],
    );
    let allow_namespace = policy(
        "allow-default-ns",
        A,
        when(vec![cond("source.namespace", &["default"], &[])]),
    );
    let cases: Vec<(&str, Vec<HttpAuthorization>, TcpAuthzRequest<'_>, Want)> = vec![
        ("no policy", vec![], connection(&client, 9002), Want::Allow),
        (
            "allowed port",
            vec![allow_ports.clone()],
            connection(&client, 9000),
            Want::Allow,
        ),
        (
            "other port",
            vec![allow_ports.clone()],
            connection(&client, 9002),
            Want::NoAllowMatched,
        ),
        (
            "allow rule with methods is ignored",
            vec![allow_get_9000.clone()],
            connection(&client, 9000),
            Want::NoAllowMatched,
        ),
        (
            "allow rule with a header condition is ignored",
            vec![allow_header],
            connection(&client, 9000),
            Want::NoAllowMatched,
        ),
        (
            "deny with methods only denies every port",
            vec![deny_get.clone()],
            connection(&client, 9001),
            Want::DeniedBy("deny-get"),
        ),
        (
            "deny with methods and a port denies that port",
            vec![deny_get_9000.clone()],
            connection(&client, 9000),
            Want::DeniedBy("deny-get-9000"),
        ),
        (
            "deny with methods and a port leaves other ports",
            vec![deny_get_9000.clone()],
            connection(&client, 9001),
            Want::Allow,
        ),
        (
            "deny with a header condition denies all",
            vec![deny_header],
            connection(&client, 80),
            Want::DeniedBy("deny-header"),
        ),
        (
            "deny by principal and port",
            vec![deny_client_on_7000.clone()],
            connection(&client, 7000),
            Want::DeniedBy("deny-client-7000"),
        ),
        (
            "another principal passes",
            vec![deny_client_on_7000.clone()],
            connection(&other, 7000),
            Want::Allow,
        ),
        (
            "the same principal on another port passes",
            vec![deny_client_on_7000],
            connection(&client, 80),
            Want::Allow,
        ),
        (
            "source.namespace condition",
            vec![allow_namespace.clone()],
            connection(&client, 80),
            Want::Allow,
        ),
        (
            "source.namespace condition, other namespace",
            vec![allow_namespace],
            connection(&other, 80),
            Want::NoAllowMatched,
        ),
        (
            "deny first",
            vec![allow_ports, deny_get],
            connection(&client, 9000),
            Want::DeniedBy("deny-get"),
        ),
    ];
    for (name, policies, req, want) in cases {
        let got = evaluate_tcp(&policies, &req);
        let ok = match (&got, &want) {
            (Decision::Allow, Want::Allow) => true,
            (Decision::Deny(DenyReason::NoAllowPolicyMatched), Want::NoAllowMatched) => true,
            (Decision::Deny(DenyReason::DeniedBy(p)), Want::DeniedBy(n)) => p.name == *n,
            _ => false,
        };
        assert!(ok, "case {name}: got {got:?}, want {want:?}");
    }
}
