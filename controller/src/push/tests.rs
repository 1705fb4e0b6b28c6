use weft_proto::envoy::config::core::v3::Node;

use weft_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use weft_xds::ResourceStore;

use super::*;

fn identity(id: &str, kind: Option<&str>) -> ProxyIdentity {
    let metadata = kind.map(|kind| prost_types::Struct {
        fields: [(
            PROXY_KIND.to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(kind.to_owned())),
            },
        )]
        .into(),
    });
    ProxyIdentity {
        id: id.to_owned(),
        node: Node {
            id: id.to_owned(),
            metadata,
            ..Default::default()
        },
        connection: 1,
        verified: None,
    }
}

#[test]
fn a_credential_goes_only_to_an_authenticated_identity_of_its_audience() {
    let spiffe =
        |ns: &str, sa: &str| weft_identity::SpiffeId::new("cluster.local", ns, sa).unwrap();
    let secret = |audience: Option<&[weft_identity::SpiffeId]>| {
        let resource = StoredResource::new(
            "kubernetes://shop/shop-cert",
            prost_types::Any {
                type_url: SECRET_TYPE_URL.to_owned(),
                value: Vec::new(),
            },
        );
        match audience {
            Some(ids) => resource.with_audience(std::sync::Arc::new(ids.iter().cloned().collect())),
            None => resource,
        }
    };
    // The gateway's pod claims its node id in every case: only the verified identity counts.
    let node = "router~10.0.0.9~gw-1.shop~shop.svc.cluster.local";
    let proxy = |verified: Option<weft_identity::SpiffeId>| ProxyIdentity {
        verified,
        ..identity(node, Some("gateway"))
    };
    let gateway = spiffe("shop", "gw");
    let cases = [
        (
            "the gateway's identity",
            Some(gateway.clone()),
            Some(vec![gateway.clone()]),
            true,
        ),
        (
            "another identity of its namespace",
            Some(spiffe("shop", "default")),
            Some(vec![gateway.clone()]),
            false,
        ),
        (
            "the same account name in another namespace",
            Some(spiffe("other", "gw")),
            Some(vec![gateway.clone()]),
            false,
        ),
        (
            "no authenticated identity (plaintext port)",
            None,
            Some(vec![gateway.clone()]),
            false,
        ),
        (
            "a credential without an audience",
            Some(gateway.clone()),
            None,
            false,
        ),
    ];
    for (case, verified, audience, visible) in cases {
        assert_eq!(
            ProxyScope.visible(
                &proxy(verified),
                SECRET_TYPE_URL,
                &secret(audience.as_deref())
            ),
            visible,
            "{case}"
        );
    }
}

#[test]
fn proxies_are_told_apart_by_their_node() {
    let waypoint = |namespace: &str, name: &str| Proxy::Waypoint {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    let cases = [
        // As the waypoint binary builds it.
        (
            "waypoint~0.0.0.0~waypoint.bookinfo~bookinfo.svc.cluster.local",
            None,
            waypoint("bookinfo", "waypoint"),
        ),
        // Gateway names may hold dots; namespaces may not.
        (
            "waypoint~10.0.0.2~reviews.v2.shop~shop.svc.cluster.local",
            Some("waypoint"),
            waypoint("shop", "reviews.v2"),
        ),
        // A gateway proxy names its pod, as Istio's gateways do.
        (
            "router~10.0.0.5~ingress-0.edge~edge.svc.cluster.local",
            Some("gateway"),
            waypoint("edge", "ingress-0"),
        ),
        (
            "router~10.0.0.5~ingress-0.edge~edge.svc.cluster.local",
            Some("node-agent"),
            Proxy::Other,
        ),
        ("node-agent~node1", Some("node-agent"), Proxy::Other),
        (
            "waypoint~10.0.0.2~waypoint.shop~shop.svc.cluster.local",
            Some("node-agent"),
            Proxy::Other,
        ),
        // The domain must name the same namespace.
        (
            "waypoint~10.0.0.2~waypoint.shop~other.svc.cluster.local",
            None,
            Proxy::Other,
        ),
        (
            "waypoint~10.0.0.2~waypoint~shop.svc.cluster.local",
            None,
            Proxy::Other,
        ),
        (
            "waypoint~10.0.0.2~.shop~shop.svc.cluster.local",
            None,
            Proxy::Other,
        ),
        (
            "ztunnel~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local",
            None,
            Proxy::Other,
        ),
        ("", None, Proxy::Other),
    ];
    for (id, kind, expected) in cases {
        assert_eq!(Proxy::of(&identity(id, kind)), expected, "{id} {kind:?}");
    }
}

#[test]
fn a_waypoint_sees_only_its_own_config_and_every_source_and_agents_none() {
    let resource = |name: &str| StoredResource::new(name, prost_types::Any::default());
    let waypoint = identity(
        "waypoint~0.0.0.0~waypoint.shop~shop.svc.cluster.local",
        None,
    );
    let agent = identity("node-agent~node1", Some("node-agent"));
    let scope = ProxyScope;
    assert!(scope.visible(
        &waypoint,
        WAYPOINT_CONFIG_TYPE_URL,
        &resource("shop/waypoint")
    ));
    for other in [
        "shop/other",
        "other/waypoint",
        "shop/waypoint/x",
        "waypoint",
    ] {
        assert!(
            !scope.visible(&waypoint, WAYPOINT_CONFIG_TYPE_URL, &resource(other)),
            "{other}"
        );
    }
    assert!(!scope.visible(&agent, WAYPOINT_CONFIG_TYPE_URL, &resource("shop/waypoint")));
    // Every waypoint sees every source workload; agents see none.
    assert!(scope.visible(&waypoint, SOURCE_WORKLOAD_TYPE_URL, &resource("10.0.0.1")));
    assert!(!scope.visible(&agent, SOURCE_WORKLOAD_TYPE_URL, &resource("10.0.0.1")));
    assert!(scope.visible(&agent, ADDRESS_TYPE_URL, &resource("uid-a")));
    assert!(scope.visible(&agent, AUTHORIZATION_TYPE_URL, &resource("shop/p")));
}

#[test]
fn publishing_the_same_translation_again_changes_nothing() {
    use crate::{index::ConfigIndex, loader, translate};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/bookinfo");
    let (index, rejections) = ConfigIndex::from_report(loader::load_paths(&[dir]), None);
    assert!(rejections.is_empty(), "{rejections:?}");
    let settings = translate::MeshSettings::default();
    let mut store = ResourceStore::new();
    let first = store.replace_all(translate::resources(&index, &settings));
    assert!(first.added > 0);
    let snapshot = store.snapshot();
    assert_eq!(
        snapshot
            .resources(WAYPOINT_CONFIG_TYPE_URL)
            .map(|r| r.keys().cloned().collect::<Vec<_>>()),
        Some(
            [
                "bookinfo/waypoint",
                "istio-system/istio-egressgateway-0",
                "istio-system/istio-ingressgateway-0"
            ]
            .map(str::to_owned)
            .to_vec()
        )
    );
    // A fresh translation of the same index: identical bytes, nothing to push.
    let again = store.replace_all(translate::resources(&index, &settings));
    assert!(again.is_empty(), "{again:?}");
}
