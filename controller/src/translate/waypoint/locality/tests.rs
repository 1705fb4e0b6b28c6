use super::*;
use crate::model::networking::LocalityFailover;
use crate::translate::MeshSettings;
use crate::translate::waypoint::tests::validated;
use crate::translate::waypoint::waypoint_configs;

fn failover_priority(lb: &wp::LocalityLoadBalancing) -> Vec<&str> {
    lb.failover_priority.iter().map(String::as_str).collect()
}

/// istiod's `GetEffectiveLbSetting` and the conditions of `ApplyLocalityLoadBalancer`
/// (`pilot/pkg/networking/core/loadbalancer/loadbalancer.go`), case by case.
#[test]
fn the_effective_setting_is_istiods() {
    use TrafficDistribution::*;
    let setting = |f: fn(&mut LocalityLbSetting)| {
        let mut s = LocalityLbSetting::default();
        f(&mut s);
        s
    };
    let with_failover = setting(|s| {
        s.failover = vec![LocalityFailover {
            from: "eu".into(),
            to: "us".into(),
        }]
    });
    let with_priority =
        setting(|s| s.failover_priority = vec!["topology.kubernetes.io/zone".into()]);
    let disabled = setting(|s| {
        s.enabled = Some(false);
        s.failover_priority = vec!["a".into()];
    });
    let distributed = setting(|s| {
        s.distribute = vec![Default::default()];
        s.failover_priority = vec!["a".into()];
    });
    // (setting, distribution, outlier detection) -> failoverPriority, failover count; None: no
    // locality load balancing.
    type Expected<'a> = Option<(Vec<&'a str>, usize)>;
    type Case<'a> = (
        Option<&'a LocalityLbSetting>,
        TrafficDistribution,
        bool,
        Expected<'a>,
    );
    let cases: [Case<'_>; 11] = [
        // The mesh's default (enabled, nothing set): the default region/zone/subzone failover,
        // but only with outlier detection ("otherwise Envoy will never drop down").
        (None, Any, false, None),
        (None, Any, true, Some((vec![], 0))),
        // PreferClose / PreferSameZone: network, region, zone; forced, outlier detection or not.
        (
            None,
            PreferSameZone,
            false,
            Some((vec![NETWORK_LABEL, REGION_LABEL, ZONE_LABEL], 0)),
        ),
        (
            None,
            PreferSameNode,
            false,
            Some((
                vec![
                    NETWORK_LABEL,
                    REGION_LABEL,
                    ZONE_LABEL,
                    SUBZONE_LABEL,
                    HOSTNAME_LABEL,
                ],
                0,
            )),
        ),
        // The DestinationRule's setting wins over the service's traffic distribution, and is
        // not forced: without outlier detection it does nothing.
        (Some(&with_priority), PreferSameZone, false, None),
        (
            Some(&with_priority),
            PreferSameZone,
            true,
            Some((vec!["topology.kubernetes.io/zone"], 0)),
        ),
        (Some(&with_failover), Any, true, Some((vec![], 1))),
        // `enabled: false` turns locality load balancing off, the service's preference too.
        (Some(&disabled), PreferSameZone, true, None),
        (Some(&disabled), Any, true, None),
        // `distribute` excludes failover (and is not carried: waypoints do not weigh localities).
        (Some(&distributed), Any, true, None),
        (
            Some(&LocalityLbSetting::default()),
            Any,
            true,
            Some((vec![], 0)),
        ),
    ];
    for (i, (setting, distribution, outlier, expected)) in cases.into_iter().enumerate() {
        let got = locality_load_balancing(setting, distribution, outlier);
        let got = got
            .as_ref()
            .map(|lb| (failover_priority(lb), lb.failover.len()));
        assert_eq!(
            got, expected,
            "case {i}: {setting:?} {distribution:?} {outlier}"
        );
    }
}

const MESH: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {topology.kubernetes.io/region: eu, topology.kubernetes.io/zone: eu-1}}
---
apiVersion: v1
kind: Node
metadata: {name: n2, labels: {topology.kubernetes.io/region: eu, topology.kubernetes.io/zone: eu-2, topology.istio.io/subzone: rack-9}}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {nodeName: n1, serviceAccountName: waypoint, containers: [{name: w, image: w}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-1, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {nodeName: n2, serviceAccountName: waypoint, containers: [{name: w, image: w}]}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
  trafficDistribution: PreferClose
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec:
  clusterIP: 10.96.0.21
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: shop}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        failover: [{from: eu, to: us}]
    outlierDetection: {consecutive5xxErrors: 3}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: shop, labels: {app: reviews, version: v1}}
spec: {nodeName: n2, serviceAccountName: reviews, containers: [{name: r, image: r}]}
status: {podIP: 10.0.0.11}
"#;

/// The waypoint learns where it runs and where every endpoint runs, as istiod tells a
/// waypoint's Envoy: each of its pods with its node's locality and its labels with the
/// topology labels istiod adds (`AugmentLabels`), each endpoint's locality and topology
/// labels, and per cluster the locality load balancing in force.
#[test]
fn waypoints_know_their_localities_and_their_endpoints() {
    let index = validated(MESH);
    let mut problems = Vec::new();
    let config = waypoint_configs(&index, &MeshSettings::default(), &mut problems)
        .remove("shop/waypoint")
        .expect("the waypoint's config");
    let instances: Vec<_> = config
        .instances
        .iter()
        .map(|i| {
            let l = i.locality.clone().unwrap_or_default();
            (
                i.address.as_str(),
                l.zone,
                i.labels.get(HOSTNAME_LABEL).cloned(),
            )
        })
        .collect();
    assert_eq!(
        instances,
        [
            ("10.0.0.2", "eu-1".to_owned(), Some("n1".to_owned())),
            ("10.0.0.3", "eu-2".to_owned(), Some("n2".to_owned())),
        ]
    );
    assert_eq!(
        config.instances[0]
            .labels
            .get("gateway.networking.k8s.io/gateway-name"),
        Some(&"waypoint".to_owned()),
        "the pod's own labels are kept"
    );
    let cluster = |name: &str| {
        config
            .clusters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name} in {:?}", config.clusters))
    };
    let reviews = cluster("outbound|9080||reviews.shop.svc.cluster.local");
    let endpoint = &reviews.endpoints[0];
    assert_eq!(
        endpoint.locality,
        Some(wp::Locality {
            region: "eu".into(),
            zone: "eu-2".into(),
            subzone: "rack-9".into()
        })
    );
    let topology: Vec<_> = endpoint
        .topology_labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        topology,
        [
            (HOSTNAME_LABEL, "n2"),
            ("topology.istio.io/cluster", "Kubernetes"),
            (SUBZONE_LABEL, "rack-9"),
            (REGION_LABEL, "eu"),
            (ZONE_LABEL, "eu-2"),
        ]
    );
    assert!(
        !endpoint.labels.contains_key(ZONE_LABEL),
        "topology labels stay apart from the labels subsets select on"
    );
    // PreferClose: istiod's forced failoverPriority.
    let lb = reviews
        .locality_lb
        .as_ref()
        .expect("PreferClose ranks endpoints");
    assert_eq!(failover_priority(lb), PREFER_SAME_ZONE);
    // The DestinationRule's region failover, with the outlier detection it needs.
    let lb = cluster("outbound|9080||ratings.shop.svc.cluster.local")
        .locality_lb
        .as_ref()
        .expect("the DestinationRule's localityLbSetting");
    assert_eq!(
        (lb.failover[0].from.as_str(), lb.failover[0].to.as_str()),
        ("eu", "us")
    );
    assert!(lb.failover_priority.is_empty());
}
