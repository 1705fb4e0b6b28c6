use weft_policy::{
    PolicyAction, WildcardMatch,
    l4::{Authorization, ConnectionMatch, PolicyScope, ServiceAccountMatch},
};
use weft_proto::istio::security as sec;

use super::*;

fn exact(value: &str) -> sec::StringMatch {
    sec::StringMatch {
        match_type: Some(sec::string_match::MatchType::Exact(value.into())),
    }
}

fn address(bytes: &[u8], length: u32) -> sec::Address {
    sec::Address {
        address: bytes.to_vec(),
        length,
    }
}

fn account(namespace: &str, service_account: &str) -> sec::ServiceAccountMatch {
    sec::ServiceAccountMatch {
        namespace: namespace.into(),
        service_account: service_account.into(),
    }
}

fn policy_with(m: sec::Match) -> sec::Authorization {
    sec::Authorization {
        name: "p".into(),
        namespace: "shop".into(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Allow as i32,
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause { matches: vec![m] }],
        }],
        dry_run: true,
    }
}

fn only_match(policy: &Authorization) -> &ConnectionMatch {
    &policy.rules[0].clauses[0].matches[0]
}

/// Each proto field lands in its own model field, and nowhere else: a swapped pair
/// (`principals` read into `not_principals`, source into destination) fails here.
#[test]
fn every_match_field_lands_in_its_own_slot() {
    type Check = fn(&ConnectionMatch) -> bool;
    let cases: Vec<(&str, sec::Match, Check)> = vec![
        (
            "namespaces",
            sec::Match {
                namespaces: vec![exact("a")],
                ..Default::default()
            },
            |m| m.namespaces == [WildcardMatch::Exact("a".into())],
        ),
        (
            "not_namespaces",
            sec::Match {
                not_namespaces: vec![sec::StringMatch {
                    match_type: Some(sec::string_match::MatchType::Prefix("kube-".into())),
                }],
                ..Default::default()
            },
            |m| m.not_namespaces == [WildcardMatch::Prefix("kube-".into())],
        ),
        (
            "service_accounts",
            sec::Match {
                service_accounts: vec![account("shop", "cart")],
                ..Default::default()
            },
            |m| {
                m.service_accounts
                    == [ServiceAccountMatch {
                        namespace: "shop".into(),
                        service_account: "cart".into(),
                    }]
            },
        ),
        (
            "not_service_accounts",
            sec::Match {
                not_service_accounts: vec![account("shop", "legacy")],
                ..Default::default()
            },
            |m| m.not_service_accounts.len() == 1 && m.not_service_accounts[0].namespace == "shop",
        ),
        (
            "principals",
            sec::Match {
                principals: vec![sec::StringMatch {
                    match_type: Some(sec::string_match::MatchType::Suffix("/sa/cart".into())),
                }],
                ..Default::default()
            },
            |m| m.principals == [WildcardMatch::Suffix("/sa/cart".into())],
        ),
        (
            "not_principals",
            sec::Match {
                not_principals: vec![sec::StringMatch {
                    match_type: Some(sec::string_match::MatchType::Presence(())),
                }],
                ..Default::default()
            },
            |m| m.not_principals == [WildcardMatch::Presence],
        ),
        (
            "trust_domains",
            sec::Match {
                trust_domains: vec![exact("cluster.local")],
                ..Default::default()
            },
            |m| m.trust_domains == [WildcardMatch::Exact("cluster.local".into())],
        ),
        (
            "not_trust_domains",
            sec::Match {
                not_trust_domains: vec![sec::StringMatch {
                    match_type: Some(sec::string_match::MatchType::Suffix(".example.com".into())),
                }],
                ..Default::default()
            },
            |m| m.not_trust_domains == [WildcardMatch::Suffix(".example.com".into())],
        ),
        (
            "source_ips",
            sec::Match {
                source_ips: vec![address(&[10, 1, 0, 0], 16)],
                ..Default::default()
            },
            |m| m.source_ips.len() == 1 && m.source_ips[0].to_string() == "10.1.0.0/16",
        ),
        (
            "not_source_ips",
            sec::Match {
                not_source_ips: vec![address(&[10, 1, 2, 3], 32)],
                ..Default::default()
            },
            |m| m.not_source_ips.len() == 1 && m.not_source_ips[0].to_string() == "10.1.2.3/32",
        ),
        (
            "destination_ips",
            sec::Match {
                destination_ips: vec![address(
                    &[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    64,
                )],
                ..Default::default()
            },
            |m| m.destination_ips.len() == 1 && m.destination_ips[0].to_string() == "fd00::1/64",
        ),
        (
            "not_destination_ips",
            sec::Match {
                not_destination_ips: vec![address(&[192, 168, 0, 0], 24)],
                ..Default::default()
            },
            |m| m.not_destination_ips.len() == 1,
        ),
        (
            "destination_ports",
            sec::Match {
                destination_ports: vec![8080, 9090],
                ..Default::default()
            },
            |m| m.destination_ports == [8080, 9090],
        ),
        (
            "not_destination_ports",
            sec::Match {
                not_destination_ports: vec![22],
                ..Default::default()
            },
            |m| m.not_destination_ports == [22],
        ),
    ];
    for (field, proto_match, check) in cases {
        let policy = authorization_from_proto(policy_with(proto_match))
            .unwrap_or_else(|e| panic!("{field}: {e}"));
        let m = only_match(&policy);
        assert!(check(m), "{field}: {m:?}");
        // Exactly one field is set in the source, so exactly one is set in the result.
        let set = [
            !m.namespaces.is_empty(),
            !m.not_namespaces.is_empty(),
            !m.service_accounts.is_empty(),
            !m.not_service_accounts.is_empty(),
            !m.principals.is_empty(),
            !m.not_principals.is_empty(),
            !m.trust_domains.is_empty(),
            !m.not_trust_domains.is_empty(),
            !m.source_ips.is_empty(),
            !m.not_source_ips.is_empty(),
            !m.destination_ips.is_empty(),
            !m.not_destination_ips.is_empty(),
            !m.destination_ports.is_empty(),
            !m.not_destination_ports.is_empty(),
        ];
        assert_eq!(set.iter().filter(|s| **s).count(), 1, "{field}: {m:?}");
    }
}

#[test]
fn scope_action_and_dry_run_are_kept() {
    let cases = [
        (
            sec::Scope::Global,
            sec::Action::Allow,
            PolicyScope::Global,
            PolicyAction::Allow,
        ),
        (
            sec::Scope::Namespace,
            sec::Action::Deny,
            PolicyScope::Namespace,
            PolicyAction::Deny,
        ),
        (
            sec::Scope::WorkloadSelector,
            sec::Action::Allow,
            PolicyScope::WorkloadSelector,
            PolicyAction::Allow,
        ),
    ];
    for (scope, action, expected_scope, expected_action) in cases {
        let policy = authorization_from_proto(sec::Authorization {
            scope: scope as i32,
            action: action as i32,
            ..policy_with(sec::Match::default())
        })
        .unwrap();
        assert_eq!(policy.scope, expected_scope);
        assert_eq!(policy.action, expected_action);
        assert!(policy.dry_run);
        assert_eq!(policy.key(), "shop/p");
    }
}

#[test]
fn malformed_policies_are_refused_naming_the_field() {
    let cases: Vec<(sec::Authorization, &str)> = vec![
        (
            sec::Authorization {
                name: String::new(),
                ..policy_with(sec::Match::default())
            },
            "field name: empty",
        ),
        (
            sec::Authorization {
                scope: 7,
                ..policy_with(sec::Match::default())
            },
            "field scope: unknown value 7",
        ),
        (
            sec::Authorization {
                action: 3,
                ..policy_with(sec::Match::default())
            },
            "field action: unknown value 3",
        ),
        (
            policy_with(sec::Match {
                principals: vec![sec::StringMatch { match_type: None }],
                ..Default::default()
            }),
            "field rules.clauses.matches.principals: string match without a value",
        ),
        (
            policy_with(sec::Match {
                source_ips: vec![address(&[10, 0, 0], 8)],
                ..Default::default()
            }),
            "field rules.clauses.matches.source_ips: address is neither IPv4 nor IPv6",
        ),
        (
            policy_with(sec::Match {
                not_destination_ips: vec![address(&[10, 0, 0, 0], 33)],
                ..Default::default()
            }),
            "field rules.clauses.matches.not_destination_ips: prefix length 33",
        ),
        (
            policy_with(sec::Match {
                destination_ips: vec![address(&[0; 16], 129)],
                ..Default::default()
            }),
            "field rules.clauses.matches.destination_ips: prefix length 129",
        ),
        (
            policy_with(sec::Match {
                not_destination_ports: vec![65_536],
                ..Default::default()
            }),
            "field rules.clauses.matches.not_destination_ports: port 65536 > 65535",
        ),
    ];
    for (policy, expected) in cases {
        let error = authorization_from_proto(policy).unwrap_err().to_string();
        assert!(error.starts_with("authorization shop/"), "{error}");
        assert!(error.contains(expected), "{error:?} lacks {expected:?}");
    }
}
