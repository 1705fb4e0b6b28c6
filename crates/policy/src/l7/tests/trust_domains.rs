//! `trustDomains` / `notTrustDomains` and `source.trustDomain`: the trust domain of the peer's
//! identity, in Istio's wildcard syntax; a plaintext peer has none.

use super::*;

fn peer(req: Req, trust_domain: &str) -> Req {
    Req {
        identity: Some(SpiffeId::new(trust_domain, "default", "sleep").unwrap()),
        ..req
    }
}

fn trust_domains(values: &[&str]) -> Source {
    Source {
        trust_domains: w(values),
        ..Default::default()
    }
}

#[test]
fn trust_domains_decide_by_the_peer_identity() {
    use PolicyAction::{Allow as A, Deny as D};
    let allow_local = policy("allow-local", A, from(trust_domains(&["cluster.local"])));
    let allow_prefix = policy("allow-prefix", A, from(trust_domains(&["cluster.*"])));
    let allow_suffix = policy("allow-suffix", A, from(trust_domains(&["*.example.com"])));
    let allow_any = policy("allow-any", A, from(trust_domains(&["*"])));
    let deny_foreign = policy(
        "deny-foreign",
        D,
        from(Source {
            not_trust_domains: w(&["cluster.local", "*.example.com"]),
            ..Default::default()
        }),
    );
    let deny_when = policy(
        "deny-when",
        D,
        when(vec![cond("source.trustDomain", &["untrusted*"], &[])]),
    );
    let cases: Vec<(&str, &HttpAuthorization, Req, Want)> = vec![
        (
            "exact, same",
            &allow_local,
            peer(get("/"), "cluster.local"),
            Want::Allow,
        ),
        (
            "exact, other",
            &allow_local,
            peer(get("/"), "other.local"),
            Want::NoAllowMatched,
        ),
        // The trust domain is compared, not the principal: "cluster.local2" is another one.
        (
            "exact, longer",
            &allow_local,
            peer(get("/"), "cluster.local2"),
            Want::NoAllowMatched,
        ),
        (
            "exact, plaintext",
            &allow_local,
            get("/").plaintext(),
            Want::NoAllowMatched,
        ),
        (
            "prefix, match",
            &allow_prefix,
            peer(get("/"), "cluster.east"),
            Want::Allow,
        ),
        (
            "prefix, no match",
            &allow_prefix,
            peer(get("/"), "mesh.east"),
            Want::NoAllowMatched,
        ),
        (
            "suffix, match",
            &allow_suffix,
            peer(get("/"), "a.example.com"),
            Want::Allow,
        ),
        (
            "suffix, bare",
            &allow_suffix,
            peer(get("/"), "example.com"),
            Want::NoAllowMatched,
        ),
        (
            "any, identity",
            &allow_any,
            peer(get("/"), "anything.io"),
            Want::Allow,
        ),
        (
            "any, plaintext",
            &allow_any,
            get("/").plaintext(),
            Want::NoAllowMatched,
        ),
        (
            "not, listed",
            &deny_foreign,
            peer(get("/"), "cluster.local"),
            Want::Allow,
        ),
        (
            "not, listed suffix",
            &deny_foreign,
            peer(get("/"), "b.example.com"),
            Want::Allow,
        ),
        (
            "not, foreign",
            &deny_foreign,
            peer(get("/"), "evil.io"),
            Want::DeniedBy("deny-foreign"),
        ),
        // A plaintext peer holds no trust domain that could be excluded (Envoy's `not_id`).
        (
            "not, plaintext",
            &deny_foreign,
            get("/").plaintext(),
            Want::DeniedBy("deny-foreign"),
        ),
        (
            "when, match",
            &deny_when,
            peer(get("/"), "untrusted.io"),
            Want::DeniedBy("deny-when"),
        ),
        (
            "when, other",
            &deny_when,
            peer(get("/"), "cluster.local"),
            Want::Allow,
        ),
        (
            "when, plaintext",
            &deny_when,
            get("/").plaintext(),
            Want::Allow,
        ),
    ];
    for (name, policy, req, want) in cases {
        let got = req.decide(std::slice::from_ref(policy));
        let ok = match (&got, &want) {
            (Decision::Allow, Want::Allow) => true,
            (Decision::Deny(DenyReason::NoAllowPolicyMatched), Want::NoAllowMatched) => true,
            (Decision::Deny(DenyReason::DeniedBy(p)), Want::DeniedBy(n)) => p.name == *n,
            _ => false,
        };
        assert!(ok, "case {name}: got {got:?}, want {want:?}");
    }
}

/// Trust domains are a connection attribute: TCP through the waypoint is decided by them too.
#[test]
fn trust_domains_decide_tcp_connections() {
    let allow_local = policy(
        "allow-local",
        PolicyAction::Allow,
        from(trust_domains(&["cluster.local"])),
    );
    let local = SpiffeId::new("cluster.local", "default", "sleep").unwrap();
    let foreign = SpiffeId::new("other.local", "default", "sleep").unwrap();
    let connection = |identity: Option<&SpiffeId>| {
        let tcp = TcpAuthzRequest {
            source_identity: identity,
            source_ip: "10.1.0.5".parse().unwrap(),
            remote_ip: "10.1.0.5".parse().unwrap(),
            destination_ip: "10.2.0.9".parse().unwrap(),
            port: 9000,
        };
        evaluate_tcp(std::slice::from_ref(&allow_local), &tcp)
    };
    assert_eq!(connection(Some(&local)), Decision::Allow);
    assert_eq!(
        connection(Some(&foreign)),
        Decision::Deny(DenyReason::NoAllowPolicyMatched)
    );
    assert_eq!(
        connection(None),
        Decision::Deny(DenyReason::NoAllowPolicyMatched)
    );
}
