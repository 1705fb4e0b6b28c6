//! Priorities as istiod computes them for an Envoy (the cases of its `loadbalancer_test.go`
//! reduced to what decides them).

use super::*;
use proto::locality_load_balancing::Failover;

fn locality(l: &str) -> proto::Locality {
    let mut parts = l.split('/').map(str::to_owned);
    proto::Locality {
        region: parts.next().unwrap_or_default(),
        zone: parts.next().unwrap_or_default(),
        subzone: parts.next().unwrap_or_default(),
    }
}

fn endpoint(l: &str, labels: &[(&str, &str)]) -> proto::Endpoint {
    proto::Endpoint {
        locality: (!l.is_empty()).then(|| locality(l)),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }
}

fn local(l: &str, labels: &[(&str, &str)]) -> LocalInstance {
    LocalInstance {
        locality: locality(l),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn lb(failover_priority: &[&str], failover: &[(&str, &str)]) -> proto::LocalityLoadBalancing {
    proto::LocalityLoadBalancing {
        failover_priority: failover_priority.iter().map(|s| (*s).to_owned()).collect(),
        failover: failover
            .iter()
            .map(|(from, to)| Failover {
                from: (*from).to_owned(),
                to: (*to).to_owned(),
            })
            .collect(),
        distribute: Vec::new(),
    }
}

/// The default ranking (`LbPriority`): same subzone 0, same zone 1, same region 2, another
/// region 3; compacted so that priorities nobody has are skipped.
#[test]
fn the_default_ranks_by_region_zone_and_subzone() {
    let endpoints = [
        endpoint("eu/eu-1/a", &[]),
        endpoint("eu/eu-1/b", &[]),
        endpoint("eu/eu-2/a", &[]),
        endpoint("us/us-1/a", &[]),
        endpoint("", &[]),
    ];
    let me = local("eu/eu-1/a", &[]);
    assert_eq!(
        priorities(&lb(&[], &[]), Some(&me), &endpoints),
        [0, 1, 2, 3, 3]
    );
    // Nothing in the proxy's own subzone or zone: the closest there is becomes priority 0.
    assert_eq!(
        priorities(&lb(&[], &[]), Some(&me), &endpoints[2..]),
        [0, 1, 1]
    );
    // A proxy of no known locality: only endpoints of no locality are "the same".
    assert_eq!(priorities(&lb(&[], &[]), None, &endpoints), [1, 1, 1, 1, 0]);
}

/// `failover`: from the proxy's region, the named region comes before every other one.
#[test]
fn region_failover_puts_the_named_region_before_the_others() {
    let endpoints = [
        endpoint("eu/eu-1/a", &[]),
        endpoint("ap/ap-1/a", &[]),
        endpoint("us/us-1/a", &[]),
    ];
    let me = local("eu/eu-1/a", &[]);
    assert_eq!(
        priorities(&lb(&[], &[("eu", "us")]), Some(&me), &endpoints),
        [0, 2, 1]
    );
    // A rule from another region does not apply.
    assert_eq!(
        priorities(&lb(&[], &[("ap", "us")]), Some(&me), &endpoints),
        [0, 1, 1]
    );
}

/// `failoverPriority`: the first label that differs from the proxy's decides (the earlier
/// the label, the lower the priority); `label=value` compares with the value given;
/// endpoints' topology labels count, over their own.
#[test]
fn failover_priority_ranks_by_the_first_differing_label() {
    let labels = [
        "topology.istio.io/network",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ];
    let me = local(
        "eu/eu-1",
        &[
            ("topology.kubernetes.io/region", "eu"),
            ("topology.kubernetes.io/zone", "eu-1"),
        ],
    );
    let mut same_zone = endpoint("eu/eu-1", &[]);
    same_zone
        .topology_labels
        .insert("topology.kubernetes.io/region".into(), "eu".into());
    same_zone
        .topology_labels
        .insert("topology.kubernetes.io/zone".into(), "eu-1".into());
    let mut other_zone = same_zone.clone();
    other_zone
        .topology_labels
        .insert("topology.kubernetes.io/zone".into(), "eu-2".into());
    let mut other_region = other_zone.clone();
    other_region
        .topology_labels
        .insert("topology.kubernetes.io/region".into(), "us".into());
    let mut other_network = same_zone.clone();
    other_network
        .labels
        .insert("topology.istio.io/network".into(), "far".into());
    let endpoints = [same_zone, other_zone, other_region, other_network];
    // Raw ranks 0, 1, 2, 3: four priorities.
    assert_eq!(
        priorities(&lb(&labels, &[]), Some(&me), &endpoints),
        [0, 1, 2, 3]
    );
    // An override: the proxy counts as being in zone eu-2.
    let overridden = [labels[0], labels[1], "topology.kubernetes.io/zone=eu-2"];
    assert_eq!(
        priorities(&lb(&overridden, &[]), Some(&me), &endpoints),
        [1, 0, 2, 3]
    );
    // A proxy without labels: istiod applies no failover priority at all.
    assert_eq!(
        priorities(&lb(&labels, &[]), None, &endpoints),
        [0, 0, 0, 0]
    );
}

/// Both: the label priority first, the locality ranking within it (multiplied by five).
#[test]
fn failover_priority_with_failover_composes() {
    let me = local("eu/eu-1", &[("app", "a")]);
    let endpoints = [
        endpoint("us/us-1", &[("app", "a")]),
        endpoint("eu/eu-1", &[("app", "a")]),
        endpoint("eu/eu-1", &[("app", "b")]),
        endpoint("ap/ap-1", &[("app", "a")]),
    ];
    // Raw: 4, 0, 5, 3 -> 0, 3, 4, 5 in order.
    assert_eq!(
        priorities(&lb(&["app"], &[("eu", "ap")]), Some(&me), &endpoints),
        [2, 0, 3, 1]
    );
}

/// The proxy finds itself among the instances by its IP.
#[test]
fn the_local_instance_is_found_by_address() {
    let instances = [
        proto::ProxyInstance {
            address: "10.0.0.2".into(),
            locality: Some(locality("eu/eu-1")),
            labels: [("a".to_owned(), "b".to_owned())].into(),
        },
        proto::ProxyInstance {
            address: "10.0.0.3".into(),
            locality: Some(locality("eu/eu-2")),
            labels: Default::default(),
        },
    ];
    let found = LocalInstance::find(&instances, "10.0.0.3".parse().unwrap()).unwrap();
    assert_eq!(found.locality.zone, "eu-2");
    assert!(LocalInstance::find(&instances, "10.0.0.9".parse().unwrap()).is_none());
}

fn distribute(from: &str, to: &[(&str, u32)]) -> proto::LocalityLoadBalancing {
    proto::LocalityLoadBalancing {
        distribute: vec![proto::locality_load_balancing::Distribute {
            from: from.to_owned(),
            to: to.iter().map(|(l, w)| ((*l).to_owned(), *w)).collect(),
        }],
        ..Default::default()
    }
}

/// istiod's "distribution between subzones" case (`TestApplyLocalitySetting`): from
/// `region1/zone1/subzone1`, 80% stays in it, 15% and 5% go to two other subzones, and the
/// localities not named are left out. istiod keeps two `LocalityLbEndpoints` of the same
/// locality apart (40 and 40); grouped by locality here they are one of 80, whose two
/// endpoints share it alike.
#[test]
fn distribute_weighs_localities_as_istiod_does() {
    let endpoints = [
        endpoint("region1/zone1/subzone1", &[]),
        endpoint("region1/zone1/subzone1", &[]),
        endpoint("region1/zone1/subzone2", &[]),
        endpoint("region1/zone1/subzone3", &[]),
        endpoint("region1/zone2", &[]),
        endpoint("region2", &[]),
        endpoint("region3", &[]),
    ];
    let me = local("region1/zone1/subzone1", &[]);
    let lb = distribute(
        "region1/zone1/subzone1",
        &[
            ("region1/zone1/subzone1", 80),
            ("region1/zone1/subzone2", 15),
            ("region1/zone1/subzone3", 5),
        ],
    );
    let weighed = locality_weights(&lb, Some(&me), &endpoints).expect("from matches");
    assert_eq!(weighed.weights, [80, 15, 5]);
    assert_eq!(
        weighed.of_endpoint,
        [Some(0), Some(0), Some(1), Some(2), None, None, None]
    );
    // `distribute` excludes failover: one priority for all.
    assert_eq!(priorities(&lb, Some(&me), &endpoints), [0; 7]);
}

/// `from` is matched against the proxy's locality with `*` wildcards and missing parts
/// matching anything; no matching entry changes nothing (no weights, nobody left out).
#[test]
fn distribute_applies_from_the_matching_locality_only() {
    let endpoints = [endpoint("eu/eu-1", &[]), endpoint("eu/eu-2", &[])];
    let lb = distribute("eu/eu-1/*", &[("eu/eu-1", 80), ("eu/eu-2", 20)]);
    for (me, matches) in [
        ("eu/eu-1/rack-1", true),
        ("eu/eu-1", true),
        ("eu/eu-2", false),
        ("us/eu-1", false),
    ] {
        let got = locality_weights(&lb, Some(&local(me, &[])), &endpoints);
        assert_eq!(got.is_some(), matches, "{me}");
    }
    let region = distribute("eu", &[("eu/eu-1", 80), ("eu/eu-2", 20)]);
    assert!(locality_weights(&region, Some(&local("eu/eu-9/x", &[])), &endpoints).is_some());
    let any = distribute("*", &[("eu/eu-1", 80), ("eu/eu-2", 20)]);
    assert!(locality_weights(&any, None, &endpoints).is_some());
    // A proxy of no known locality matches only `*`.
    assert_eq!(locality_weights(&region, None, &endpoints), None);
    // The first entry whose `from` matches decides.
    let mut two = distribute("us", &[("eu/eu-2", 100)]);
    two.distribute
        .extend(distribute("eu/*", &[("eu/eu-1", 100)]).distribute);
    let got = locality_weights(&two, Some(&local("eu/eu-2", &[])), &endpoints).unwrap();
    assert_eq!(got.weights, [100]);
    assert_eq!(got.of_endpoint, [Some(0), None]);
}

/// A wildcard `to` shares its weight among the localities it matches in proportion to their
/// own weights (their endpoints' weights summed), rounded up; a locality an earlier pattern
/// took is not taken again.
#[test]
fn a_wildcard_destination_shares_its_weight_by_the_localities_weights() {
    let weighted = |l: &str, weight: u32| proto::Endpoint {
        weight,
        ..endpoint(l, &[])
    };
    let endpoints = [
        weighted("eu/eu-1/a", 1),
        weighted("eu/eu-1/b", 2),
        weighted("eu/eu-1/b", 1),
        weighted("us/us-1", 1),
    ];
    let lb = distribute("eu", &[("eu/eu-1/*", 50), ("us", 50)]);
    let got = locality_weights(&lb, Some(&local("eu/eu-1/a", &[])), &endpoints).unwrap();
    // eu-1/a weighs 1 and eu-1/b 3 of 4: ceil(50 / 4) and ceil(150 / 4).
    assert_eq!(got.weights, [13, 38, 50]);
    assert_eq!(got.of_endpoint, [Some(0), Some(1), Some(1), Some(2)]);
    // Overlapping patterns (in the map's order, `*` first): `*` takes all five weights, and
    // nothing is left for `us`.
    let overlap = distribute("eu", &[("*", 60), ("us", 40)]);
    let got = locality_weights(&overlap, Some(&local("eu", &[])), &endpoints).unwrap();
    assert_eq!(got.weights, [12, 36, 12]);
}

/// istiod's "match network label" case: with `failoverPriority` naming the network, the
/// endpoints on the proxy's network (their topology labels, as the controller sends them)
/// come first, the others next, whatever their locality.
#[test]
fn failover_priority_ranks_by_network() {
    let on = |l: &str, network: &str| proto::Endpoint {
        topology_labels: [("topology.istio.io/network".to_owned(), network.to_owned())].into(),
        ..endpoint(l, &[])
    };
    let endpoints = [
        on("region1/zone1/subzone1", "n1"),
        on("region1/zone1/subzone1", "n2"),
        on("region2/zone2/subzone2", "n1"),
        on("region2/zone2/subzone2", "n2"),
        endpoint("region3/zone3/subzone3", &[]),
    ];
    let me = local(
        "region1/zone1/subzone1",
        &[
            ("topology.istio.io/network", "n1"),
            ("topology.istio.io/cluster", "test"),
        ],
    );
    let lb = lb(
        &["topology.istio.io/network", "topology.istio.io/cluster"],
        &[],
    );
    assert_eq!(priorities(&lb, Some(&me), &endpoints), [0, 1, 0, 1, 1]);
}
