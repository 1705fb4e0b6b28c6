//! The stream's pure parts: node metadata, the debounce and the diff.

use prost_types::Any;
use tokio::time::Instant;

use super::stream::{PendingPush, TypeSubscription, diff_changes, diff_type};
use super::*;
use crate::store::TypeResources;

fn resource(name: &str, value: &[u8]) -> Arc<StoredResource> {
    Arc::new(StoredResource::new(
        name,
        Any {
            type_url: "type.googleapis.com/test.Thing".into(),
            value: value.to_vec(),
        },
    ))
}

fn resources(entries: &[(&str, &[u8])]) -> TypeResources {
    entries
        .iter()
        .map(|(name, value)| (name.to_string(), resource(name, value)))
        .collect()
}

fn subscription(wildcard: bool, names: &[&str], sent: &[(&str, &[u8])]) -> TypeSubscription {
    TypeSubscription {
        wildcard,
        names: names.iter().map(|name| name.to_string()).collect(),
        sent: sent
            .iter()
            .map(|(name, value)| (name.to_string(), resource(name, value).version.clone()))
            .collect(),
        evaluated: None,
    }
}

#[test]
fn node_metadata_strings_are_read_and_other_kinds_ignored() {
    use prost_types::value::Kind;
    use prost_types::{Struct, Value};
    let field = |kind| Value { kind: Some(kind) };
    let proxy = ProxyIdentity {
        id: "node-a".to_string(),
        node: Node {
            id: "node-a".to_string(),
            metadata: Some(Struct {
                fields: [
                    (
                        "NAMESPACE".to_string(),
                        field(Kind::StringValue("default".into())),
                    ),
                    ("CAPACITY".to_string(), field(Kind::NumberValue(2.0))),
                ]
                .into(),
            }),
            ..Node::default()
        },
        connection: 1,
        verified: None,
    };
    let cases = [
        ("NAMESPACE", Some("default")),
        ("CAPACITY", None),
        ("MISSING", None),
    ];
    for (key, expected) in cases {
        assert_eq!(proxy.metadata_string(key), expected, "{key}");
    }
}

#[test]
fn debounce_waits_for_quiet_but_not_beyond_the_maximum() {
    let config = ServerConfig {
        debounce: Duration::from_millis(100),
        debounce_max: Duration::from_millis(250),
        ..ServerConfig::default()
    };
    let start = Instant::now();
    let ms = Duration::from_millis;
    // (changes seen at these offsets, expected deadline offset)
    let cases: [(&[u64], u64); 5] = [
        (&[0], 100),
        (&[0, 50], 150),
        (&[0, 50, 120], 220),
        (&[0, 50, 120, 200], 250),
        (&[0, 240], 250),
    ];
    for (changes, expected) in cases {
        let mut pending = None;
        for offset in changes {
            pending = Some(PendingPush::after_change(
                pending,
                start + ms(*offset),
                &config,
            ));
        }
        let push = pending.unwrap();
        assert_eq!(push.first_change, start, "{changes:?}");
        assert_eq!(push.deadline, start + ms(expected), "{changes:?}");
    }
}

#[test]
fn diff_sends_only_what_changed_for_what_is_wanted() {
    struct Case {
        name: &'static str,
        subscription: TypeSubscription,
        current: TypeResources,
        hidden: &'static [&'static str],
        added: &'static [&'static str],
        removed: &'static [&'static str],
    }
    let cases = [
        Case {
            name: "wildcard full state",
            subscription: subscription(true, &[], &[]),
            current: resources(&[("a", b"1"), ("b", b"1")]),
            hidden: &[],
            added: &["a", "b"],
            removed: &[],
        },
        Case {
            name: "only the updated resource",
            subscription: subscription(true, &[], &[("a", b"1"), ("b", b"1")]),
            current: resources(&[("a", b"1"), ("b", b"2")]),
            hidden: &[],
            added: &["b"],
            removed: &[],
        },
        Case {
            name: "removal",
            subscription: subscription(true, &[], &[("a", b"1"), ("b", b"1")]),
            current: resources(&[("a", b"1")]),
            hidden: &[],
            added: &[],
            removed: &["b"],
        },
        Case {
            name: "explicit names only",
            subscription: subscription(false, &["b", "missing"], &[]),
            current: resources(&[("a", b"1"), ("b", b"1")]),
            hidden: &[],
            added: &["b"],
            removed: &[],
        },
        Case {
            name: "scope hides, and removes what became hidden",
            subscription: subscription(true, &[], &[("a", b"1")]),
            current: resources(&[("a", b"1"), ("b", b"1"), ("c", b"1")]),
            hidden: &["a", "c"],
            added: &["b"],
            removed: &["a"],
        },
        Case {
            name: "initial versions already current",
            subscription: subscription(true, &[], &[("a", b"1"), ("gone", b"1")]),
            current: resources(&[("a", b"1")]),
            hidden: &[],
            added: &[],
            removed: &["gone"],
        },
    ];
    for case in cases {
        let delta = diff_type(&case.subscription, &case.current, |resource| {
            !case.hidden.contains(&resource.name.as_str())
        });
        let added: Vec<&str> = delta.added.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(added, case.added, "{}: added", case.name);
        assert_eq!(delta.removed, case.removed, "{}: removed", case.name);
    }
}

#[test]
fn the_diff_from_the_last_evaluation_equals_the_full_diff() {
    // A small deterministic generator: the same sequence on every run.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    };
    let names: Vec<String> = (0..40).map(|i| format!("r{i:02}")).collect();
    for wildcard in [true, false] {
        let mut incremental = subscription(wildcard, &[], &[]);
        let mut full = subscription(wildcard, &[], &[]);
        for name in names.iter().step_by(3) {
            incremental.names.insert(name.clone());
            full.names.insert(name.clone());
        }
        // Hidden by the scope: a pure function of the resource.
        let visible = |r: &StoredResource| !r.body.value.ends_with(b"hidden");
        let mut current = TypeResources::new();
        for round in 0..200 {
            // The next map shares every entry it keeps, as the store's does.
            let mut changed = current.clone();
            for _ in 0..next(6) {
                let name = &names[next(names.len() as u64) as usize];
                match next(4) {
                    0 => {
                        changed.remove(name);
                    }
                    1 => {
                        changed.insert(name.clone(), resource(name, b"hidden"));
                    }
                    _ => {
                        let value = format!("v{round}-{}", next(3));
                        changed.insert(name.clone(), resource(name, value.as_bytes()));
                    }
                }
            }
            let expected = diff_type(&full, &changed, visible);
            let delta = match &incremental.evaluated {
                Some(previous) => diff_changes(&incremental, previous, &changed, visible),
                None => diff_type(&incremental, &changed, visible),
            };
            assert_eq!(delta, expected, "round {round}, wildcard {wildcard}");
            let changed = Arc::new(changed);
            for subscription in [&mut incremental, &mut full] {
                for resource in &expected.added {
                    subscription
                        .sent
                        .insert(resource.name.clone(), resource.version.clone());
                }
                for name in &expected.removed {
                    subscription.sent.remove(name);
                }
            }
            incremental.evaluated = Some(Arc::clone(&changed));
            current = (*changed).clone();
        }
    }
}
