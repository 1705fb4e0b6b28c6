//! The stream's pure parts: node metadata, the debounce, the diff, and the answer to a
//! subscription change from the alias index.

use prost_types::Any;
use tokio::time::Instant;

use super::stream::{
    NameChange, PendingPush, TypeDelta, TypeSubscription, changes_since, diff_changes,
    diff_subscription_change, diff_type,
};
use super::*;
use crate::ResourceStore;
use crate::store::TypeResources;
use crate::test_support::{sequence, stored};

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
            .map(|(name, value)| (Arc::from(*name), resource(name, value).version.clone()))
            .collect(),
        evaluated: None,
        ..TypeSubscription::default()
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
            !case.hidden.contains(&&*resource.name)
        });
        let added: Vec<&str> = delta.added.iter().map(|r| r.name()).collect();
        assert_eq!(added, case.added, "{}: added", case.name);
        assert_eq!(delta.removed, case.removed, "{}: removed", case.name);
    }
}

#[test]
fn the_diff_from_the_last_evaluation_equals_the_full_diff() {
    let mut next = sequence(0x2545_f491_4f6c_dd1d);
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
            incremental.record_sent(&expected);
            full.record_sent(&expected);
            incremental.evaluated = Some(Arc::clone(&changed));
            current = (*changed).clone();
        }
    }
}

/// A stream keeping up with the store takes a write's changed names from the write (found once
/// by the writer) instead of walking the type's two maps: per stream and push, the work is what
/// the write changed, the same with 100 and with 10,000 resources. A stream that skipped a write
/// walks, and finds the same names.
#[test]
fn a_push_after_a_write_looks_at_what_the_write_changed_not_at_the_whole_type() {
    const T: &str = "type.googleapis.com/test.Thing";
    let thing = |name: &str, value: &str| (*resource(name, value.as_bytes())).clone();
    let looked_at = |size: usize| -> Vec<usize> {
        let mut store = ResourceStore::new();
        store.replace_type(T, (0..size).map(|i| thing(&format!("r{i:05}"), "v0")));
        let mut counts = Vec::new();
        for write in 0..4 {
            let before = store.snapshot();
            match write {
                0 => {
                    store.set(T, "r00007", thing("r00007", "v1").body);
                }
                1 => {
                    store.remove(T, "r00003");
                }
                2 => {
                    let mut all = stored(&store, T);
                    all[0] = thing(&all[0].name.clone(), "v2");
                    all.push(thing("r99999", "v2"));
                    store.replace_type(T, all);
                }
                _ => {
                    let mut all = stored(&store, T);
                    all[1] = thing(&all[1].name.clone(), "v3");
                    store.replace_all([(T.to_string(), all)]);
                }
            }
            let after = store.snapshot();
            let previous = before.resources(T).expect("the type");
            let current = after.resources(T).expect("the type");
            crate::cost::take_looked_at();
            let changed: Vec<String> = changes_since(&after, T, previous, current)
                .into_iter()
                .cloned()
                .collect();
            counts.push(crate::cost::take_looked_at());
            // Without the write's list (a snapshot that is not the write's): the walk.
            let walked: Vec<String> = changes_since(&before, T, previous, current)
                .into_iter()
                .cloned()
                .collect();
            assert_eq!(changed, walked, "write {write}, {size} resources");
            assert!(crate::cost::take_looked_at() >= size, "walked");
        }
        counts
    };
    let small = looked_at(100);
    assert_eq!(small, [1, 1, 2, 1]);
    assert_eq!(looked_at(10_000), small);
}

/// How a subscription change was answered before the alias index: every resource of the type
/// visited per name asked, then the whole subscription diffed from scratch. The reference the
/// indexed answer must equal.
fn answer_from_scratch(
    subscription: &mut TypeSubscription,
    current: &TypeResources,
    asked: &[String],
    visible: impl Fn(&StoredResource) -> bool,
) -> TypeDelta {
    let asked: &[String] = if subscription.wildcard { &[] } else { asked };
    let unresolved: Vec<String> = asked
        .iter()
        .filter(|name| {
            !current
                .values()
                .any(|resource| resource.goes_by(name) && visible(resource))
        })
        .cloned()
        .collect();
    let covered = current
        .values()
        .filter(|r| visible(r) && asked.iter().any(|name| r.goes_by(name)));
    for resource in covered {
        subscription.sent.remove(&resource.name);
    }
    let mut delta = diff_type(subscription, current, visible);
    delta.removed.extend(unresolved);
    delta
}

/// A subscribe or unsubscribe by name is answered from the store's alias index and what the
/// stream already sent, keeping the subscription's last evaluation: over a long deterministic
/// run of store writes (names, bodies, aliases and visibility changing, some left unpushed),
/// pushes, subscription changes (names, aliases, names covering nothing, the wildcard on and
/// off) and a first request carrying `initial_resource_versions`, every response equals the
/// answer computed from scratch. A stale index (an alias added, moved or removed and not seen)
/// or a subscribe that re-sent what other names already delivered would differ.
#[test]
fn a_subscription_change_is_answered_from_the_index_as_from_scratch() {
    const T: &str = "type.googleapis.com/test.Thing";
    let mut next = sequence(0x51_7cc1_b727_220a);
    let aliases = [
        "node:a",
        "node:b",
        "/10.0.0.1",
        "/10.0.0.2",
        "ns/svc",
        "r03",
    ];
    let names: Vec<String> = (0..16)
        .map(|i| format!("r{i:02}"))
        .chain(aliases.iter().map(|a| a.to_string()))
        .chain(["/10.9.9.9".to_string()])
        .collect();
    let visible = |r: &StoredResource| !r.body.value.ends_with(b"hidden");
    let mut store = ResourceStore::new();
    let mut checked = (0, 0);
    let mut pending_answers = 0;
    // The proxy says it has two resources, one of them gone by the time it connects.
    let initial = [("r01", b"0".as_slice()), ("r15", b"gone".as_slice())];
    let mut indexed = subscription(false, &[], &initial);
    let mut reference = subscription(false, &[], &initial);
    for round in 0..2_000 {
        match next(10) {
            // A write, pushed or not before the next step.
            0..=3 => {
                let mut all = stored(&store, T);
                for _ in 0..=next(3) {
                    let name = format!("r{:02}", next(16));
                    all.retain(|r| *r.name != *name);
                    if next(5) == 0 {
                        continue; // removed
                    }
                    let body = match next(6) {
                        0 => "hidden".to_string(),
                        n => format!("v{}", n % 3),
                    };
                    let chosen = (0..next(3))
                        .map(|_| aliases[next(aliases.len() as u64) as usize].to_string())
                        .collect();
                    all.push(
                        StoredResource::new(name, resource("x", body.as_bytes()).body.clone())
                            .with_aliases(chosen),
                    );
                }
                store.replace_type(T, all);
            }
            // A push of whatever changed since the last evaluation.
            4..=5 => {
                let snapshot = store.snapshot();
                let current = snapshot.resources(T).cloned().unwrap_or_default();
                let Some(previous) = indexed.evaluated.clone() else {
                    continue;
                };
                let delta = diff_changes(&indexed, &previous, &current, visible);
                let expected = diff_type(&reference, &current, visible);
                assert_eq!(delta, expected, "round {round}: push");
                indexed.record_sent(&delta);
                reference.record_sent(&expected);
                indexed.evaluated = Some(current);
            }
            // A request changing the subscription.
            _ => {
                let mut asked: Vec<String> = (0..next(3))
                    .map(|_| names[next(names.len() as u64) as usize].clone())
                    .collect();
                let dropped: Vec<String> = (0..next(2))
                    .map(|_| names[next(names.len() as u64) as usize].clone())
                    .collect();
                let was_wildcard = indexed.wildcard;
                let wildcard = match next(12) {
                    0 => true,
                    1 => false,
                    _ => was_wildcard,
                };
                if wildcard && !was_wildcard {
                    asked.push(WILDCARD.to_string());
                }
                for subscription in [&mut indexed, &mut reference] {
                    subscription.wildcard = wildcard;
                    for name in asked.iter().filter(|n| *n != WILDCARD) {
                        subscription.names.insert(name.clone());
                    }
                    for name in &dropped {
                        subscription.names.remove(name);
                        subscription.sent.remove(name.as_str());
                    }
                }
                asked.retain(|n| n != WILDCARD);
                let snapshot = store.snapshot();
                let empty = Arc::new(TypeResources::new());
                let current = snapshot.resources(T).unwrap_or(&empty).clone();
                let change = NameChange {
                    asked: &asked,
                    dropped: &dropped,
                    wildcard_changed: wildcard != was_wildcard,
                };
                let answer =
                    diff_subscription_change(&mut indexed, &snapshot, T, &current, change, visible);
                indexed.record_sent(&answer.delta);
                indexed.evaluated = Some(answer.evaluated);
                // The answer leaves a write not yet pushed to the push: the two together are
                // what the answer from scratch carries at once.
                let mut delta = answer.delta;
                if let Some(previous) = indexed.evaluated.clone()
                    && !Arc::ptr_eq(&previous, &current)
                {
                    pending_answers += 1;
                    let pushed = diff_changes(&indexed, &previous, &current, visible);
                    indexed.record_sent(&pushed);
                    indexed.evaluated = Some(current.clone());
                    delta.added.extend(pushed.added);
                    delta.removed.extend(pushed.removed);
                }
                let mut expected = answer_from_scratch(&mut reference, &current, &asked, visible);
                reference.record_sent(&expected);
                // (A resource gone in the pending write that the proxy held and asked again
                // is removed once; the answer from scratch lists it twice, as the resource
                // and as the name covering nothing.)
                for answer in [&mut delta, &mut expected] {
                    answer.added.sort_by(|a, b| a.name().cmp(b.name()));
                    answer.removed.sort();
                    answer.removed.dedup();
                }
                assert_eq!(
                    delta, expected,
                    "round {round}: answer to {asked:?} - {dropped:?}"
                );
                checked.0 += 1;
                checked.1 += usize::from(!delta.added.is_empty());
            }
        }
        assert_eq!(indexed.sent, reference.sent, "round {round}: sent");
    }
    // The run exercised what it claims to: many answers, most of them carrying resources,
    // many with a write pending.
    assert!(checked.0 > 500 && checked.1 > checked.0 / 3, "{checked:?}");
    assert!(
        pending_answers > 100,
        "{pending_answers} answers with a write pending"
    );
}

/// A name subscribed after others is answered with what it covers and nothing the stream was
/// already sent for its other names; a later push carries only what changed.
#[test]
fn a_name_subscribed_later_is_answered_with_only_what_it_covers() {
    const T: &str = "type.googleapis.com/test.Thing";
    let mut store = ResourceStore::new();
    let address = |name: &str, value: &[u8], aliases: &[&str]| {
        StoredResource::new(name, resource(name, value).body.clone())
            .with_aliases(aliases.iter().map(|a| a.to_string()).collect())
    };
    store.replace_type(
        T,
        [
            address("local1", b"1", &["node:n1"]),
            address("local2", b"1", &["node:n1"]),
            address("ns/svc", b"1", &["/10.0.0.1"]),
            address("ep1", b"1", &["/10.0.0.1", "/10.1.0.1"]),
            address("far", b"1", &["/10.1.0.9"]),
        ],
    );
    let visible = |_: &StoredResource| true;
    let mut stream = subscription(false, &[], &[]);
    let ask = |stream: &mut TypeSubscription, store: &ResourceStore, name: &str| {
        stream.names.insert(name.to_string());
        let snapshot = store.snapshot();
        let current = snapshot.resources(T).unwrap().clone();
        let asked = [name.to_string()];
        let change = NameChange {
            asked: &asked,
            dropped: &[],
            wildcard_changed: false,
        };
        let answer = diff_subscription_change(stream, &snapshot, T, &current, change, visible);
        stream.record_sent(&answer.delta);
        stream.evaluated = Some(answer.evaluated);
        answer.delta
    };
    let added = |delta: &TypeDelta| -> Vec<(String, Vec<String>)> {
        delta
            .added
            .iter()
            .map(|r| (r.name().to_string(), r.aliases.clone()))
            .collect()
    };
    let first = ask(&mut stream, &store, "node:n1");
    assert_eq!(
        added(&first),
        [
            ("local1".to_string(), vec!["node:n1".to_string()]),
            ("local2".to_string(), vec!["node:n1".to_string()])
        ]
    );
    let answer = ask(&mut stream, &store, "/10.0.0.1");
    assert_eq!(
        added(&answer),
        [
            ("ep1".to_string(), vec!["/10.0.0.1".to_string()]),
            ("ns/svc".to_string(), vec!["/10.0.0.1".to_string()])
        ],
        "only what the new name covers"
    );
    assert!(answer.removed.is_empty());
    // The endpoint's other address: the endpoint again, by both names it was asked by.
    let again = ask(&mut stream, &store, "/10.1.0.1");
    assert_eq!(
        added(&again),
        [(
            "ep1".to_string(),
            vec!["/10.0.0.1".to_string(), "/10.1.0.1".to_string()]
        )]
    );
    // A write moving an alias: the next push has exactly that change.
    let current = store.snapshot().resources(T).unwrap().clone();
    let mut all: Vec<StoredResource> = current.values().map(|r| r.as_ref().clone()).collect();
    all.retain(|r| &*r.name != "far");
    all.push(address("far", b"1", &["/10.1.0.9", "node:n1"]));
    store.replace_type(T, all);
    let now = store.snapshot().resources(T).unwrap().clone();
    let pushed = diff_changes(&stream, &current, &now, visible);
    assert_eq!(
        added(&pushed),
        [("far".to_string(), vec!["node:n1".to_string()])]
    );
    assert!(pushed.removed.is_empty());
}

/// A subscription change costs what its names cover, not the type's size (a burst of on-demand
/// agents' first connections, `docs/benchmarks.md`): the same requests against a store with 100
/// and with 10,000 resources that no name of the stream covers look at the same number of
/// resources and get the same answers, each looking at a few times what it answers. Answered by
/// a pass over the type per name, or by diffing the whole subscription again (as before the
/// alias index), the count would grow with the store.
#[test]
fn a_subscription_change_looks_at_what_its_names_cover_not_at_the_whole_type() {
    const T: &str = "type.googleapis.com/test.Thing";
    let address = |name: String, aliases: Vec<String>| {
        StoredResource::new(name.as_str(), resource(&name, b"1").body.clone()).with_aliases(aliases)
    };
    // Per request: resources looked at, added, removed.
    let answers = |unrelated: usize| -> Vec<(usize, usize, usize)> {
        let mut all: Vec<StoredResource> = (0..5)
            .map(|i| address(format!("local{i}"), vec!["node:n1".into()]))
            .collect();
        all.push(address(
            "ns/svc".into(),
            vec!["/10.0.0.1".into(), "host:svc.ns.svc.cluster.local".into()],
        ));
        all.extend((0..10).map(|i| {
            let aliases = vec!["/10.0.0.1".into(), format!("/10.1.0.{i}"), "node:n2".into()];
            address(format!("ep{i}"), aliases)
        }));
        all.extend((0..unrelated).map(|i| {
            let aliases = vec![
                format!("/10.2.{}.{}", i >> 8, i & 0xff),
                format!("node:n{}", 3 + i % 50),
            ];
            address(format!("far{i:05}"), aliases)
        }));
        let mut store = ResourceStore::new();
        store.replace_type(T, all);
        let snapshot = store.snapshot();
        let current = snapshot.resources(T).unwrap().clone();
        let mut stream = subscription(false, &[], &[]);
        let mut request = |asked: &[&str], dropped: &[&str]| {
            let asked: Vec<String> = asked.iter().map(|n| n.to_string()).collect();
            let dropped: Vec<String> = dropped.iter().map(|n| n.to_string()).collect();
            stream.names.extend(asked.iter().cloned());
            for name in &dropped {
                stream.names.remove(name);
                stream.sent.remove(name.as_str());
            }
            let change = NameChange {
                asked: &asked,
                dropped: &dropped,
                wildcard_changed: false,
            };
            crate::cost::take_looked_at();
            let answer =
                diff_subscription_change(&mut stream, &snapshot, T, &current, change, |_| true);
            let looked_at = crate::cost::take_looked_at();
            stream.record_sent(&answer.delta);
            stream.evaluated = Some(answer.evaluated);
            let delta = answer.delta;
            (looked_at, delta.added.len(), delta.removed.len())
        };
        vec![
            // The agent's first request: its node.
            request(&["node:n1"], &[]),
            // A first connection to a service: its VIP, the service and its endpoints.
            request(&["/10.0.0.1"], &[]),
            // One endpoint's own address: sent again, by both names.
            request(&["/10.1.0.3"], &[]),
            // A name covering nothing: listed as removed.
            request(&["/10.9.9.9"], &[]),
            // The VIP released: what only it covered is removed.
            request(&[], &["/10.0.0.1"]),
        ]
    };
    let small = answers(100);
    let large = answers(10_000);
    assert_eq!(
        small, large,
        "resources looked at, added, removed per request"
    );
    let answered: Vec<(usize, usize)> = small.iter().map(|&(_, a, r)| (a, r)).collect();
    assert_eq!(answered, [(5, 0), (11, 0), (1, 0), (0, 1), (0, 10)]);
    for (looked_at, added, removed) in small {
        assert!(
            looked_at <= 4 * (added + removed) + 4,
            "{looked_at} resources looked at to answer {added} added and {removed} removed"
        );
    }
}

/// A subscription change arriving while a write is not yet pushed to the stream costs what its
/// names cover too: against 100 and against 10,000 resources no name covers, with a write
/// pending that changed one of them and one the stream holds, the request looks at the same
/// number of resources and is answered with what its name covers alone; the pending change
/// reaches the proxy with the push that follows. Finding the pending changes in the answer
/// (walking the type's two maps side by side, as before) grows with the store: 10,000 against
/// 100 steps.
#[test]
fn a_subscription_change_with_a_write_pending_looks_at_what_its_names_cover() {
    const T: &str = "type.googleapis.com/test.Thing";
    let address = |name: String, value: &[u8], aliases: Vec<String>| {
        StoredResource::new(name.as_str(), resource(&name, value).body.clone())
            .with_aliases(aliases)
    };
    let everything = |unrelated: usize, version: &[u8]| -> Vec<StoredResource> {
        let mut all = vec![address("local0".into(), version, vec!["node:n1".into()])];
        all.push(address("ns/svc".into(), b"1", vec!["/10.0.0.1".into()]));
        all.extend((0..10).map(|i| {
            address(
                format!("ep{i}"),
                b"1",
                vec!["/10.0.0.1".into(), "node:n2".into()],
            )
        }));
        all.extend((0..unrelated).map(|i| {
            let value = if i == 0 { version } else { b"1" };
            let aliases = vec![format!("/10.2.{}.{}", i >> 8, i & 0xff)];
            address(format!("far{i:05}"), value, aliases)
        }));
        all
    };
    // Per size: resources looked at by the request, its answer, and the push after it.
    let run = |unrelated: usize| -> (usize, Vec<String>, Vec<String>) {
        let mut store = ResourceStore::new();
        store.replace_type(T, everything(unrelated, b"1"));
        let mut stream = subscription(false, &["node:n1"], &[]);
        let first = store.snapshot();
        let change = NameChange {
            asked: &["node:n1".to_string()],
            dropped: &[],
            wildcard_changed: false,
        };
        let before = first.resources(T).unwrap().clone();
        let answer = diff_subscription_change(&mut stream, &first, T, &before, change, |_| true);
        stream.record_sent(&answer.delta);
        stream.evaluated = Some(answer.evaluated);
        // A write the stream has not pushed yet: the node's workload and an unrelated one.
        store.replace_type(T, everything(unrelated, b"2"));
        let snapshot = store.snapshot();
        let current = snapshot.resources(T).unwrap().clone();
        let asked = ["/10.0.0.1".to_string()];
        stream.names.insert(asked[0].clone());
        let change = NameChange {
            asked: &asked,
            dropped: &[],
            wildcard_changed: false,
        };
        crate::cost::take_looked_at();
        let answer =
            diff_subscription_change(&mut stream, &snapshot, T, &current, change, |_| true);
        let looked_at = crate::cost::take_looked_at();
        let names = |delta: &TypeDelta| -> Vec<String> {
            delta.added.iter().map(|r| r.name().to_string()).collect()
        };
        let answered = names(&answer.delta);
        stream.record_sent(&answer.delta);
        stream.evaluated = Some(answer.evaluated);
        let previous = stream.evaluated.clone().unwrap();
        let pushed = diff_changes(&stream, &previous, &current, |_| true);
        (looked_at, answered, names(&pushed))
    };
    let (small, large) = (run(100), run(10_000));
    assert_eq!(small, large, "looked at, answered and pushed");
    let (looked_at, answered, pushed) = small;
    let mut covered: Vec<String> = (0..10).map(|i| format!("ep{i}")).collect();
    covered.push("ns/svc".to_string());
    assert_eq!(answered, covered, "the answer carries what the name covers");
    assert_eq!(pushed, ["local0"], "the pending change comes with the push");
    assert!(looked_at <= 4 * answered.len() + 4, "{looked_at} looked at");
}

mod sharing;
