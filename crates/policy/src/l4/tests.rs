use super::*;

fn w(pattern: &str) -> WildcardMatch {
    WildcardMatch::parse_istio(pattern)
}

fn net(cidr: &str) -> IpNet {
    cidr.parse().unwrap()
}

fn policy(name: &str, action: PolicyAction, rules: Vec<Rule>) -> Authorization {
    Authorization {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        scope: PolicyScope::Namespace,
        action,
        rules,
        dry_run: false,
    }
}

fn allow(name: &str, rules: Vec<Rule>) -> Authorization {
    policy(name, PolicyAction::Allow, rules)
}

fn deny(name: &str, rules: Vec<Rule>) -> Authorization {
    policy(name, PolicyAction::Deny, rules)
}

/// One rule of one clause of one match: the common shape of a `from`/`to` pair.
fn when(m: ConnectionMatch) -> Vec<Rule> {
    vec![Rule {
        clauses: vec![Clause { matches: vec![m] }],
    }]
}

fn mtls(ns: &str, sa: &str, port: u16) -> ConnectionContext {
    ConnectionContext {
        src_identity: Some(SpiffeId::new("cluster.local", ns, sa).unwrap()),
        src_ip: "10.0.0.5".parse().unwrap(),
        dst_ip: "10.0.1.7".parse().unwrap(),
        dst_port: port,
    }
}

fn plaintext(port: u16) -> ConnectionContext {
    ConnectionContext {
        src_identity: None,
        ..mtls("x", "y", port)
    }
}

fn from_ip(mut ctx: ConnectionContext, ip: &str) -> ConnectionContext {
    ctx.src_ip = ip.parse().unwrap();
    ctx
}

#[derive(Debug, PartialEq)]
enum Want {
    Allow,
    DeniedBy(&'static str),
    NoAllowMatched,
}

fn check(name: &str, policies: &[Authorization], ctx: &ConnectionContext, want: Want) {
    let got = evaluate(policies, ctx);
    let ok = match (&got, &want) {
        (Decision::Allow, Want::Allow) => true,
        (Decision::Deny(DenyReason::NoAllowPolicyMatched), Want::NoAllowMatched) => true,
        (Decision::Deny(DenyReason::DeniedBy(p)), Want::DeniedBy(policy)) => {
            p.namespace == "default" && p.name == *policy
        }
        _ => false,
    };
    assert!(ok, "case {name}: got {got:?}, want {want:?}");
}

fn strict_pa(mode: MtlsMode, ports: &[(u16, MtlsMode)]) -> Authorization {
    peer_authentication_policy(&EffectivePeerAuthentication {
        name: "pa".to_owned(),
        namespace: "default".to_owned(),
        scope: PolicyScope::WorkloadSelector,
        mode,
        port_level: ports.iter().copied().collect(),
    })
    .expect("a STRICT mode somewhere yields a policy")
}

#[test]
fn l4_authorization_table() {
    let sleep_only = allow(
        "sleep-only",
        when(ConnectionMatch {
            principals: vec![w("cluster.local/ns/default/sa/sleep")],
            ..Default::default()
        }),
    );
    let deny_bad_ns = deny(
        "deny-bad",
        when(ConnectionMatch {
            namespaces: vec![w("bad")],
            ..Default::default()
        }),
    );
    let allow_all = allow("allow-all", vec![Rule::default()]);
    let allow_nothing = allow("allow-nothing", vec![]);
    let deny_nothing = deny("deny-nothing", vec![]);
    let deny_all = deny("deny-all", vec![Rule::default()]);
    let port_80 = allow(
        "port-80",
        when(ConnectionMatch {
            destination_ports: vec![80],
            ..Default::default()
        }),
    );
    let not_port_22 = allow(
        "not-22",
        when(ConnectionMatch {
            not_destination_ports: vec![22],
            ..Default::default()
        }),
    );
    let ip_block = allow(
        "from-10-0-0",
        when(ConnectionMatch {
            source_ips: vec![net("10.0.0.0/24")],
            not_source_ips: vec![net("10.0.0.66/32")],
            ..Default::default()
        }),
    );
    let dst_ip = deny(
        "dst-ip",
        when(ConnectionMatch {
            destination_ips: vec![net("10.0.1.0/24")],
            not_destination_ips: vec![net("10.0.1.8/32")],
            ..Default::default()
        }),
    );
    let any_mtls = allow(
        "any-mtls",
        when(ConnectionMatch {
            principals: vec![WildcardMatch::Presence],
            ..Default::default()
        }),
    );
    let not_admin = allow(
        "not-admin",
        when(ConnectionMatch {
            not_principals: vec![w("*/sa/admin")],
            ..Default::default()
        }),
    );
    let prefix_ns = allow(
        "team-ns",
        when(ConnectionMatch {
            namespaces: vec![w("team-*")],
            not_namespaces: vec![w("team-untrusted")],
            ..Default::default()
        }),
    );
    let not_ns = allow(
        "not-ns",
        when(ConnectionMatch {
            not_namespaces: vec![w("blocked")],
            ..Default::default()
        }),
    );
    let sa_match = allow(
        "sa",
        when(ConnectionMatch {
            service_accounts: vec![ServiceAccountMatch {
                namespace: "default".to_owned(),
                service_account: "sleep".to_owned(),
            }],
            ..Default::default()
        }),
    );
    // principal AND port in one match; two clauses ANDed; two matches ORed.
    let and_fields = allow(
        "and-fields",
        when(ConnectionMatch {
            principals: vec![w("cluster.local/ns/default/sa/sleep")],
            destination_ports: vec![8080],
            ..Default::default()
        }),
    );
    let two_clauses = allow(
        "two-clauses",
        vec![Rule {
            clauses: vec![
                Clause {
                    matches: vec![ConnectionMatch {
                        namespaces: vec![w("default")],
                        ..Default::default()
                    }],
                },
                Clause {
                    matches: vec![
                        ConnectionMatch {
                            destination_ports: vec![80],
                            ..Default::default()
                        },
                        ConnectionMatch {
                            destination_ports: vec![443],
                            ..Default::default()
                        },
                    ],
                },
            ],
        }],
    );
    let empty_match_only = allow(
        "empty-match",
        vec![Rule {
            clauses: vec![Clause {
                matches: vec![ConnectionMatch::default()],
            }],
        }],
    );
    let mut dry_deny = deny_all.clone();
    dry_deny.name = "dry".to_owned();
    dry_deny.dry_run = true;
    let td_suffix = allow(
        "td-suffix",
        when(ConnectionMatch {
            principals: vec![w("*/ns/default/sa/sleep")],
            ..Default::default()
        }),
    );
    let strict = strict_pa(MtlsMode::Strict, &[]);
    let strict_except_9090 = strict_pa(MtlsMode::Strict, &[(9090, MtlsMode::Permissive)]);
    let permissive_strict_8443 = strict_pa(MtlsMode::Permissive, &[(8443, MtlsMode::Strict)]);
    let strict_unset_port = strict_pa(MtlsMode::Strict, &[(9090, MtlsMode::Unset)]);

    use Want::*;
    let cases: Vec<(&str, Vec<Authorization>, ConnectionContext, Want)> = vec![
        (
            "no policies allow",
            vec![],
            mtls("default", "sleep", 80),
            Allow,
        ),
        ("no policies allow plaintext", vec![], plaintext(80), Allow),
        (
            "allow principal match",
            vec![sleep_only.clone()],
            mtls("default", "sleep", 80),
            Allow,
        ),
        (
            "allow principal mismatch",
            vec![sleep_only.clone()],
            mtls("default", "other", 80),
            NoAllowMatched,
        ),
        (
            "allow principal plaintext",
            vec![sleep_only.clone()],
            plaintext(80),
            NoAllowMatched,
        ),
        (
            "deny beats allow",
            vec![allow_all.clone(), deny_bad_ns.clone()],
            mtls("bad", "x", 80),
            DeniedBy("deny-bad"),
        ),
        (
            "deny beats allow order independent",
            vec![deny_bad_ns.clone(), allow_all.clone()],
            mtls("bad", "x", 80),
            DeniedBy("deny-bad"),
        ),
        (
            "deny not matching, no allow",
            vec![deny_bad_ns.clone()],
            mtls("good", "x", 80),
            Allow,
        ),
        (
            "deny not matching plaintext",
            vec![deny_bad_ns.clone()],
            plaintext(80),
            Allow,
        ),
        (
            "empty allow denies all",
            vec![allow_nothing.clone()],
            mtls("default", "sleep", 80),
            NoAllowMatched,
        ),
        (
            "empty allow plus matching allow",
            vec![allow_nothing.clone(), sleep_only.clone()],
            mtls("default", "sleep", 80),
            Allow,
        ),
        (
            "empty deny denies nothing",
            vec![deny_nothing],
            mtls("default", "sleep", 80),
            Allow,
        ),
        (
            "deny with empty rule denies all",
            vec![deny_all.clone()],
            plaintext(80),
            DeniedBy("deny-all"),
        ),
        (
            "allow with empty rule allows all",
            vec![allow_all.clone()],
            plaintext(1),
            Allow,
        ),
        (
            "port match",
            vec![port_80.clone()],
            mtls("a", "b", 80),
            Allow,
        ),
        (
            "port mismatch",
            vec![port_80.clone()],
            mtls("a", "b", 81),
            NoAllowMatched,
        ),
        (
            "not port allows others",
            vec![not_port_22.clone()],
            plaintext(80),
            Allow,
        ),
        (
            "not port refuses listed",
            vec![not_port_22.clone()],
            plaintext(22),
            NoAllowMatched,
        ),
        (
            "source cidr inside",
            vec![ip_block.clone()],
            from_ip(plaintext(80), "10.0.0.9"),
            Allow,
        ),
        (
            "source cidr excluded host",
            vec![ip_block.clone()],
            from_ip(plaintext(80), "10.0.0.66"),
            NoAllowMatched,
        ),
        (
            "source cidr outside",
            vec![ip_block.clone()],
            from_ip(plaintext(80), "10.0.9.9"),
            NoAllowMatched,
        ),
        (
            "source cidr v6 never in v4 block",
            vec![ip_block.clone()],
            from_ip(plaintext(80), "fd00::1"),
            NoAllowMatched,
        ),
        (
            "destination cidr deny",
            vec![dst_ip.clone()],
            mtls("a", "b", 80),
            DeniedBy("dst-ip"),
        ),
        (
            "destination not cidr exempt",
            vec![dst_ip.clone()],
            ConnectionContext {
                dst_ip: "10.0.1.8".parse().unwrap(),
                ..mtls("a", "b", 80)
            },
            Allow,
        ),
        (
            "presence principal needs mtls",
            vec![any_mtls.clone()],
            plaintext(80),
            NoAllowMatched,
        ),
        (
            "presence principal any mtls",
            vec![any_mtls.clone()],
            mtls("q", "r", 80),
            Allow,
        ),
        (
            "not principals matches plaintext",
            vec![not_admin.clone()],
            plaintext(80),
            Allow,
        ),
        (
            "not principals excludes suffix",
            vec![not_admin.clone()],
            mtls("ops", "admin", 80),
            NoAllowMatched,
        ),
        (
            "not principals allows others",
            vec![not_admin.clone()],
            mtls("ops", "viewer", 80),
            Allow,
        ),
        (
            "namespace prefix",
            vec![prefix_ns.clone()],
            mtls("team-a", "s", 80),
            Allow,
        ),
        (
            "namespace prefix minus excluded",
            vec![prefix_ns.clone()],
            mtls("team-untrusted", "s", 80),
            NoAllowMatched,
        ),
        (
            "namespace requires identity",
            vec![prefix_ns.clone()],
            plaintext(80),
            NoAllowMatched,
        ),
        (
            "not namespaces matches plaintext",
            vec![not_ns.clone()],
            plaintext(80),
            Allow,
        ),
        (
            "not namespaces excludes",
            vec![not_ns.clone()],
            mtls("blocked", "s", 80),
            NoAllowMatched,
        ),
        (
            "service account match",
            vec![sa_match.clone()],
            mtls("default", "sleep", 80),
            Allow,
        ),
        (
            "service account other ns",
            vec![sa_match.clone()],
            mtls("other", "sleep", 80),
            NoAllowMatched,
        ),
        (
            "service account plaintext",
            vec![sa_match.clone()],
            plaintext(80),
            NoAllowMatched,
        ),
        (
            "fields anded both",
            vec![and_fields.clone()],
            mtls("default", "sleep", 8080),
            Allow,
        ),
        (
            "fields anded port wrong",
            vec![and_fields.clone()],
            mtls("default", "sleep", 80),
            NoAllowMatched,
        ),
        (
            "clauses anded, matches ored 443",
            vec![two_clauses.clone()],
            mtls("default", "z", 443),
            Allow,
        ),
        (
            "clauses anded, matches ored 8080",
            vec![two_clauses.clone()],
            mtls("default", "z", 8080),
            NoAllowMatched,
        ),
        (
            "clauses anded, ns wrong",
            vec![two_clauses.clone()],
            mtls("other", "z", 80),
            NoAllowMatched,
        ),
        (
            "an empty match matches nothing",
            vec![empty_match_only],
            mtls("default", "sleep", 80),
            NoAllowMatched,
        ),
        (
            "dry run deny not enforced",
            vec![dry_deny],
            mtls("default", "sleep", 80),
            Allow,
        ),
        (
            "principal with any trust domain",
            vec![td_suffix.clone()],
            ConnectionContext {
                src_identity: Some(SpiffeId::new("other.td", "default", "sleep").unwrap()),
                ..mtls("a", "b", 80)
            },
            Allow,
        ),
        (
            "exact principal pins trust domain",
            vec![sleep_only.clone()],
            ConnectionContext {
                src_identity: Some(SpiffeId::new("other.td", "default", "sleep").unwrap()),
                ..mtls("a", "b", 80)
            },
            NoAllowMatched,
        ),
        (
            "strict refuses plaintext",
            vec![strict.clone()],
            plaintext(80),
            DeniedBy("converted_peer_authentication_pa"),
        ),
        (
            "strict accepts mtls",
            vec![strict.clone()],
            mtls("a", "b", 80),
            Allow,
        ),
        (
            "strict port exemption lets plaintext through",
            vec![strict_except_9090.clone()],
            plaintext(9090),
            Allow,
        ),
        (
            "strict port exemption only that port",
            vec![strict_except_9090.clone()],
            plaintext(9091),
            DeniedBy("converted_peer_authentication_pa"),
        ),
        (
            "permissive with strict port refuses there",
            vec![permissive_strict_8443.clone()],
            plaintext(8443),
            DeniedBy("converted_peer_authentication_pa"),
        ),
        (
            "permissive with strict port allows elsewhere",
            vec![permissive_strict_8443.clone()],
            plaintext(80),
            Allow,
        ),
        (
            "permissive with strict port accepts mtls",
            vec![permissive_strict_8443],
            mtls("a", "b", 8443),
            Allow,
        ),
        (
            "unset port inherits strict",
            vec![strict_unset_port],
            plaintext(9090),
            DeniedBy("converted_peer_authentication_pa"),
        ),
        (
            "strict and allow policy compose",
            vec![strict.clone(), sleep_only.clone()],
            mtls("default", "other", 80),
            NoAllowMatched,
        ),
        (
            "strict before allow-all",
            vec![allow_all, strict],
            plaintext(80),
            DeniedBy("converted_peer_authentication_pa"),
        ),
    ];
    assert!(cases.len() >= 30);
    for (name, policies, ctx, want) in cases {
        check(name, &policies, &ctx, want);
    }
}

#[test]
fn permissive_everywhere_yields_no_policy() {
    let pa = EffectivePeerAuthentication {
        name: "pa".to_owned(),
        namespace: "default".to_owned(),
        scope: PolicyScope::Namespace,
        mode: MtlsMode::Permissive,
        port_level: [(80, MtlsMode::Disable), (81, MtlsMode::Unset)].into(),
    };
    assert_eq!(peer_authentication_policy(&pa), None);
}

#[test]
fn scope_selects_policies() {
    let mut p = allow("p", vec![]);
    p.scope = PolicyScope::Global;
    assert!(p.applies_to("anything", &[]));
    p.scope = PolicyScope::Namespace;
    assert!(p.applies_to("default", &[]));
    assert!(!p.applies_to("other", &[]));
    p.scope = PolicyScope::WorkloadSelector;
    assert!(!p.applies_to("default", &[]));
    assert!(p.applies_to("other", &["default/p".to_owned()]));
}

#[test]
fn authorization_round_trips_through_serde() {
    let p = strict_pa(MtlsMode::Strict, &[(9090, MtlsMode::Permissive)]);
    let json = serde_json::to_string(&p).unwrap();
    let back: Authorization = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    assert_eq!(
        evaluate([&back], &plaintext(9090)),
        evaluate([&p], &plaintext(9090))
    );
}

mod trust_domains;
