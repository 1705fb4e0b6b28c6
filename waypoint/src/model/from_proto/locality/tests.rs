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
