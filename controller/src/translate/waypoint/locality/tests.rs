use super::*;
use crate::model::networking::{LocalityDistribute, LocalityFailover};
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
        s.distribute = vec![LocalityDistribute {
            from: "eu/*".into(),
            to: [("eu/eu-1".to_owned(), 80), ("eu/eu-2".to_owned(), 20)].into(),
        }];
        s.failover_priority = vec!["a".into()];
    });
    let mesh_off = setting(|s| s.enabled = Some(false));
    let mesh_priority = setting(|s| s.failover_priority = vec!["mesh".into()]);
    // (setting, distribution, mesh, outlier detection) -> failoverPriority, failover count,
    // distribute count; None: no locality load balancing.
    type Expected<'a> = Option<(Vec<&'a str>, usize, usize)>;
    type Case<'a> = (
        Option<&'a LocalityLbSetting>,
        TrafficDistribution,
        Option<&'a LocalityLbSetting>,
        bool,
        Expected<'a>,
    );
    let cases: [Case<'_>; 19] = [
        // The mesh's default (enabled, nothing set): the default region/zone/subzone failover,
        // but only with outlier detection ("otherwise Envoy will never drop down").
        (None, Any, None, false, None),
        (None, Any, None, true, Some((vec![], 0, 0))),
        // PreferClose / PreferSameZone: network, region, zone; forced, outlier detection or not.
        (
            None,
            PreferSameZone,
            None,
            false,
            Some((vec![NETWORK_LABEL, REGION_LABEL, ZONE_LABEL], 0, 0)),
        ),
        (
            None,
            PreferSameNode,
            None,
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
                0,
            )),
        ),
        // The DestinationRule's setting wins over the service's traffic distribution, and is
        // not forced: without outlier detection it does nothing.
        (Some(&with_priority), PreferSameZone, None, false, None),
        (
            Some(&with_priority),
            PreferSameZone,
            None,
            true,
            Some((vec!["topology.kubernetes.io/zone"], 0, 0)),
        ),
        (Some(&with_failover), Any, None, true, Some((vec![], 1, 0))),
        // `enabled: false` turns locality load balancing off, the service's preference too.
        (Some(&disabled), PreferSameZone, None, true, None),
        (Some(&disabled), Any, None, true, None),
        // ... and the mesh's default.
        (Some(&disabled), Any, Some(&mesh_priority), true, None),
        // `distribute` excludes failover and needs no outlier detection.
        (Some(&distributed), Any, None, true, Some((vec![], 0, 1))),
        (Some(&distributed), Any, None, false, Some((vec![], 0, 1))),
        (
            Some(&LocalityLbSetting::default()),
            Any,
            None,
            true,
            Some((vec![], 0, 0)),
        ),
        // The mesh's `localityLbSetting` when neither the DestinationRule nor the service says
        // anything: its `distribute`, its failover (with outlier detection), or nothing at all
        // when it is disabled.
        (None, Any, Some(&distributed), false, Some((vec![], 0, 1))),
        (
            None,
            Any,
            Some(&mesh_priority),
            true,
            Some((vec!["mesh"], 0, 0)),
        ),
        (None, Any, Some(&mesh_priority), false, None),
        (None, Any, Some(&mesh_off), true, None),
        // The DestinationRule's setting and the service's distribution win over the mesh's.
        (
            Some(&with_priority),
            Any,
            Some(&distributed),
            true,
            Some((vec!["topology.kubernetes.io/zone"], 0, 0)),
        ),
        (
            None,
            PreferSameZone,
            Some(&mesh_off),
            false,
            Some((vec![NETWORK_LABEL, REGION_LABEL, ZONE_LABEL], 0, 0)),
        ),
    ];
    for (i, (setting, distribution, mesh, outlier, expected)) in cases.into_iter().enumerate() {
        let got = locality_load_balancing(setting, distribution, mesh, outlier);
        let got = got.as_ref().map(|lb| {
            (
                failover_priority(lb),
                lb.failover.len(),
                lb.distribute.len(),
            )
        });
        assert_eq!(
            got, expected,
            "case {i}: {setting:?} {distribution:?} {mesh:?} {outlier}"
        );
    }
    // The weights go through as they are.
    let lb = locality_load_balancing(Some(&distributed), Any, None, false).expect("distribute");
    assert_eq!(lb.distribute[0].from, "eu/*");
    assert_eq!(lb.distribute[0].to.get("eu/eu-1"), Some(&80));
    assert_eq!(lb.distribute[0].to.get("eu/eu-2"), Some(&20));
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

/// The mesh's `localityLbSetting` is the default of a cluster whose DestinationRule sets none
/// and whose service has no traffic distribution; `ratings`' own setting wins over it.
#[test]
fn the_mesh_default_applies_where_nothing_else_does() {
    let index = validated(&format!(
        "{MESH}---\napiVersion: v1\nkind: Service\nmetadata: {{name: details, namespace: shop}}\n\
         spec: {{clusterIP: 10.96.0.22, selector: {{app: reviews}}, ports: [{{name: http, port: 9080}}]}}\n"
    ));
    let mesh = crate::mesh_config::parse(
        "mesh",
        "localityLbSetting:\n  distribute:\n  - from: eu/*\n    to: {eu/eu-1: 80, eu/eu-2: 20}\n",
    )
    .unwrap();
    let settings = MeshSettings {
        mesh: std::sync::Arc::new(crate::mesh_config::MeshConfigWatch::fixed(mesh)),
        ..Default::default()
    };
    let mut problems = Vec::new();
    let config = waypoint_configs(&index, &settings, &mut problems)
        .remove("shop/waypoint")
        .expect("the waypoint's config");
    let lb = |name: &str| {
        config
            .clusters
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.locality_lb.clone())
    };
    // `reviews` is PreferClose: its traffic distribution wins over the mesh's default.
    let reviews = lb("outbound|9080||reviews.shop.svc.cluster.local").unwrap();
    assert!(reviews.distribute.is_empty());
    assert_eq!(failover_priority(&reviews), PREFER_SAME_ZONE);
    let ratings = lb("outbound|9080||ratings.shop.svc.cluster.local").unwrap();
    assert!(ratings.distribute.is_empty(), "the DestinationRule's own");
    assert_eq!(ratings.failover.len(), 1);
    // `details` has neither: the mesh's `distribute`, from the waypoint pod's point of view.
    let details = lb("outbound|9080||details.shop.svc.cluster.local").expect("the mesh's");
    assert_eq!(details.distribute.len(), 1);
    assert_eq!(details.distribute[0].to.get("eu/eu-1"), Some(&80));
    assert!(details.failover_priority.is_empty() && details.failover.is_empty());
}

/// The network a workload is on is among its topology labels, as istiod's `AugmentLabels`
/// adds it, so that `failoverPriority` can rank by `topology.istio.io/network`: the pod's
/// label, else its namespace's, else the root namespace's (the cluster's network); a
/// WorkloadEntry's `network` first.
#[test]
fn the_network_is_a_topology_label() {
    let index = validated(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: istio-system, labels: {topology.istio.io/network: cluster-net}}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint, topology.istio.io/network: shop-net}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {istio.io/dataplane-mode: ambient}}
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
spec: {serviceAccountName: waypoint, containers: [{name: w, image: w}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-1, namespace: shop, labels: {app: reviews}}
spec: {serviceAccountName: reviews, containers: [{name: r, image: r}]}
status: {podIP: 10.0.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-2, namespace: shop, labels: {app: reviews, topology.istio.io/network: pod-net}}
spec: {serviceAccountName: reviews, containers: [{name: r, image: r}]}
status: {podIP: 10.0.0.12}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm, namespace: shop}
spec: {address: 10.0.1.1, network: vm-net, labels: {app: reviews}}
"#,
    );
    let mut problems = Vec::new();
    let config = waypoint_configs(&index, &MeshSettings::default(), &mut problems)
        .remove("shop/waypoint")
        .expect("the waypoint's config");
    let network = |labels: &std::collections::BTreeMap<String, String>| {
        labels.get(NETWORK_LABEL).cloned().unwrap_or_default()
    };
    assert_eq!(network(&config.instances[0].labels), "shop-net");
    let reviews = config
        .clusters
        .iter()
        .find(|c| c.name == "outbound|9080||reviews.shop.svc.cluster.local")
        .expect("reviews");
    let mut networks: Vec<(String, String)> = reviews
        .endpoints
        .iter()
        .map(|e| (e.address.clone(), network(&e.topology_labels)))
        .collect();
    networks.sort();
    assert_eq!(
        networks,
        [
            ("10.0.0.11".to_owned(), "shop-net".to_owned()),
            ("10.0.0.12".to_owned(), "pod-net".to_owned()),
            ("10.0.1.1".to_owned(), "vm-net".to_owned()),
        ]
    );
    // Without a label of its own or its namespace's: the root namespace's.
    let pod: k8s_openapi::api::core::v1::Pod = serde_yaml::from_str(
        "metadata: {name: p, namespace: other}\nspec: {containers: []}\nstatus: {podIP: 10.0.0.30}",
    )
    .unwrap();
    let (_, labels) = pod_topology(&index, &MeshSettings::default(), &pod);
    assert_eq!(network(&labels), "cluster-net");
}
