use super::*;

/// The bookinfo example as the controller indexes it.
fn bookinfo() -> ConfigIndex {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/bookinfo");
    let (index, rejections) = ConfigIndex::from_report(crate::loader::load_paths(&[dir]), None);
    assert!(rejections.is_empty(), "{rejections:?}");
    index
}

#[test]
fn a_service_page_has_its_routes_waypoint_and_policies_as_applied() {
    let index = bookinfo();
    let reviews = service(&index, "bookinfo", "reviews", "istio-system");
    assert!(reviews.exists);
    assert_eq!(reviews.waypoint.as_deref(), Some("waypoint"));
    let routes: Vec<(&str, &str)> = reviews
        .routes
        .iter()
        .map(|r| (r.kind, r.name.as_str()))
        .collect();
    assert_eq!(routes, [("VirtualService", "reviews")]);
    // The canary's weights, as written.
    let weights: Vec<i64> = reviews.routes[0].spec["http"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["route"].as_array().unwrap())
        .filter_map(|d| d["weight"].as_i64())
        .collect();
    assert!(
        weights.contains(&90) && weights.contains(&10),
        "{weights:?}"
    );
    let policies: Vec<&str> = reviews.policies.iter().map(|p| p.name.as_str()).collect();
    assert!(policies.contains(&"reviews-viewer"), "{policies:?}");
    assert!(
        !policies.contains(&"productpage-deny-admin"),
        "{policies:?}"
    );
    assert_eq!(reviews.destination_rules.len(), 1);
    let missing = service(&index, "bookinfo", "nothing", "istio-system");
    assert!(!missing.exists && missing.routes.is_empty());
}

#[test]
fn a_workload_page_has_its_pods_nodes_identities_and_enrollment() {
    let index = bookinfo();
    // A workload is the pods' Deployment as Istio names it, not their `app` label.
    let reviews = workload(&index, "bookinfo", "reviews-v2", "cluster.local");
    let versions: Vec<&str> = reviews.pods.iter().map(|p| p.version.as_str()).collect();
    assert_eq!(versions, ["v2"]);
    assert!(
        workload(&index, "bookinfo", "reviews", "cluster.local")
            .pods
            .is_empty()
    );
    let v2 = &reviews.pods[0];
    assert_eq!(
        v2.identity,
        "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"
    );
    assert!(v2.enrolled);
    assert!(!v2.node.is_empty());
    let waypoints = waypoints(&index);
    assert_eq!(waypoints.len(), 1, "{waypoints:?}");
    assert!(
        workload(
            &index,
            "bookinfo",
            &waypoints.iter().next().unwrap().1,
            "cluster.local"
        )
        .pods
        .is_empty()
    );
    assert!(namespaces(&index).contains(&"bookinfo".to_owned()));
}
