//! `trustDomains` / `notTrustDomains` at the node agent: the trust domain of the peer's
//! certificate identity decides; a plaintext peer has none.

use super::*;

fn peer_in(trust_domain: &str) -> ConnectionContext {
    ConnectionContext {
        src_identity: Some(SpiffeId::new(trust_domain, "default", "sleep").unwrap()),
        ..mtls("default", "sleep", 8080)
    }
}

fn trust_domains(values: &[&str]) -> ConnectionMatch {
    ConnectionMatch {
        trust_domains: values.iter().map(|v| w(v)).collect(),
        ..Default::default()
    }
}

#[test]
fn allow_by_trust_domain() {
    let exact = [allow("exact", when(trust_domains(&["cluster.local"])))];
    check(
        "exact, same",
        &exact,
        &peer_in("cluster.local"),
        Want::Allow,
    );
    check(
        "exact, other",
        &exact,
        &peer_in("other.local"),
        Want::NoAllowMatched,
    );
    check(
        "exact, longer",
        &exact,
        &peer_in("cluster.local2"),
        Want::NoAllowMatched,
    );
    check(
        "exact, plaintext",
        &exact,
        &plaintext(8080),
        Want::NoAllowMatched,
    );

    let prefix = [allow("prefix", when(trust_domains(&["cluster.*"])))];
    check(
        "prefix, match",
        &prefix,
        &peer_in("cluster.east"),
        Want::Allow,
    );
    check(
        "prefix, other",
        &prefix,
        &peer_in("mesh.east"),
        Want::NoAllowMatched,
    );

    let suffix = [allow("suffix", when(trust_domains(&["*.example.com"])))];
    check(
        "suffix, match",
        &suffix,
        &peer_in("a.example.com"),
        Want::Allow,
    );
    check(
        "suffix, bare",
        &suffix,
        &peer_in("example.com"),
        Want::NoAllowMatched,
    );

    let any = [allow("any", when(trust_domains(&["*"])))];
    check("any, identity", &any, &peer_in("anything.io"), Want::Allow);
    check(
        "any, plaintext",
        &any,
        &plaintext(8080),
        Want::NoAllowMatched,
    );
}

#[test]
fn deny_by_not_trust_domains() {
    let policies = [deny(
        "foreign",
        when(ConnectionMatch {
            not_trust_domains: vec![w("cluster.local"), w("*.example.com")],
            ..Default::default()
        }),
    )];
    check("listed", &policies, &peer_in("cluster.local"), Want::Allow);
    check(
        "listed suffix",
        &policies,
        &peer_in("b.example.com"),
        Want::Allow,
    );
    check(
        "foreign",
        &policies,
        &peer_in("evil.io"),
        Want::DeniedBy("foreign"),
    );
    // A plaintext peer holds no trust domain that could be excluded (Envoy's `not_id`).
    check(
        "plaintext",
        &policies,
        &plaintext(8080),
        Want::DeniedBy("foreign"),
    );
}

/// Within one match, trust domains AND with the other fields.
#[test]
fn trust_domains_and_with_principals() {
    let policies = [allow(
        "both",
        when(ConnectionMatch {
            principals: vec![w("*/ns/default/sa/sleep")],
            trust_domains: vec![w("cluster.local")],
            ..Default::default()
        }),
    )];
    check("both", &policies, &peer_in("cluster.local"), Want::Allow);
    check(
        "principal only",
        &policies,
        &peer_in("other.local"),
        Want::NoAllowMatched,
    );
}
