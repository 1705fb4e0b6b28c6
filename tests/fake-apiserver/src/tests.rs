use std::time::Duration;

use serde_json::{Value, json};

use crate::request::{
    Selection, Target, parse_field_selector, parse_label_selector, parse_path, parse_query,
};
use crate::{FakeApiServer, ServedKind};

#[test]
fn paths_name_collections_and_objects() {
    let kinds = ServedKind::mesh_kinds();
    let index = |kind: &str, group: &str| {
        kinds
            .iter()
            .position(|k| k.kind == kind && k.group == group)
            .unwrap()
    };
    let cases = [
        ("/api/v1/pods", Some((index("Pod", ""), None, None))),
        (
            "/api/v1/namespaces/a/pods",
            Some((index("Pod", ""), Some("a"), None)),
        ),
        (
            "/api/v1/namespaces/a/pods/p",
            Some((index("Pod", ""), Some("a"), Some("p"))),
        ),
        (
            "/api/v1/namespaces",
            Some((index("Namespace", ""), None, None)),
        ),
        (
            "/api/v1/namespaces/a",
            Some((index("Namespace", ""), None, Some("a"))),
        ),
        (
            "/apis/networking.istio.io/v1/virtualservices",
            Some((index("VirtualService", "networking.istio.io"), None, None)),
        ),
        (
            "/apis/gateway.networking.k8s.io/v1/namespaces/x/gateways",
            Some((
                index("Gateway", "gateway.networking.k8s.io"),
                Some("x"),
                None,
            )),
        ),
        ("/apis/networking.istio.io/v1alpha3/virtualservices", None),
        ("/api/v1/namespaces/a/namespaces", None),
        ("/healthz", None),
    ];
    for (path, expected) in cases {
        let expected = expected.map(
            |(kind_index, ns, name): (usize, Option<&str>, Option<&str>)| Target {
                kind_index,
                namespace: ns.map(str::to_owned),
                name: name.map(str::to_owned),
                subresource: None,
            },
        );
        assert_eq!(parse_path(&kinds, path), expected, "{path}");
    }
}

#[test]
fn selectors_pick_objects() {
    let object = json!({"metadata": {"name": "p", "namespace": "a", "labels": {"app": "x"}}});
    let cases = [
        ("", "", true),
        ("app=x", "", true),
        ("app==x", "", true),
        ("app!=x", "", false),
        ("app", "", true),
        ("!app", "", false),
        ("app=y", "", false),
        ("", "metadata.name=p", true),
        ("", "metadata.namespace!=a", false),
        ("app=x", "metadata.name=q", false),
    ];
    for (labels, fields, expected) in cases {
        let selection = Selection {
            namespace: None,
            labels: parse_label_selector(labels).unwrap(),
            fields: parse_field_selector(fields).unwrap(),
        };
        assert_eq!(
            selection.matches(&object),
            expected,
            "{labels:?} {fields:?}"
        );
    }
    assert!(parse_label_selector("app in (a,b)").is_err());
    assert!(parse_field_selector("status.phase=Running").is_err());
}

#[test]
fn query_strings_are_decoded() {
    let query = parse_query(Some("labelSelector=app%3Dx%2Cb&watch=true&x"));
    assert_eq!(query["labelSelector"], "app=x,b");
    assert_eq!(query["watch"], "true");
    assert_eq!(query["x"], "");
}

fn pod(name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "a", "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
    })
}

#[tokio::test]
async fn pages_come_from_one_snapshot_and_expire_with_the_history() {
    use ::kube::api::{Api, ListParams};
    use k8s_openapi::api::core::v1::Pod;

    let fake = FakeApiServer::start().await.unwrap();
    for name in ["p1", "p2", "p3"] {
        fake.create(pod(name, "x")).unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(fake.client().unwrap(), "a");
    let first = pods.list(&ListParams::default().limit(2)).await.unwrap();
    let names = |list: &::kube::core::ObjectList<Pod>| -> Vec<String> {
        list.items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect()
    };
    assert_eq!(names(&first), ["p1", "p2"]);
    let token = first.metadata.continue_.clone().expect("a continue token");
    // Changes after the first page do not leak into the next one.
    fake.create(pod("p0", "x")).unwrap();
    fake.delete("v1", "Pod", "a", "p3").unwrap();
    let second = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&second), ["p3"]);
    assert_eq!(second.metadata.continue_, None);
    assert_eq!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );

    let selected = pods
        .list(
            &ListParams::default()
                .labels("app=x")
                .fields("metadata.name=p0"),
        )
        .await
        .unwrap();
    assert_eq!(names(&selected), ["p0"]);

    fake.compact();
    let expired = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap_err();
    assert!(
        matches!(&expired, ::kube::Error::Api(status) if status.code == 410),
        "{expired:?}"
    );
    let requests = fake.requests();
    assert_eq!(requests.last().unwrap().status, 410);
    assert_eq!(
        requests[0].query.get("limit").map(String::as_str),
        Some("2")
    );
}

#[tokio::test]
async fn streaming_lists_end_with_the_initial_events_bookmark() {
    use ::kube::api::Api;
    use ::kube::runtime::watcher::{self, Event};
    use k8s_openapi::api::core::v1::Pod;

    let fake = FakeApiServer::start().await.unwrap();
    fake.create(pod("p1", "x")).unwrap();
    fake.create(pod("p2", "y")).unwrap();
    let pods: Api<Pod> = Api::all(fake.client().unwrap());
    let config = watcher::Config::default().streaming_lists().labels("app=x");
    let mut events = std::pin::pin!(watcher::watcher(pods, config));
    let mut listed = Vec::new();
    let collect = async {
        while let Some(event) = futures::StreamExt::next(&mut events).await {
            match event.unwrap() {
                Event::InitApply(pod) => listed.push(pod.metadata.name.unwrap()),
                Event::InitDone => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), collect)
        .await
        .expect("initial events end within 10s");
    assert_eq!(listed, ["p1"]);
    let request = &fake.requests()[0];
    assert!(request.is_watch_of("/api/v1/pods"));
    assert_eq!(
        request.query.get("sendInitialEvents").map(String::as_str),
        Some("true")
    );
}

#[tokio::test]
async fn port_forward_carries_bytes_to_the_registered_address_and_reports_refusals() {
    use k8s_openapi::api::core::v1::Pod;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let fake = FakeApiServer::start().await.unwrap();
    fake.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "echo", "namespace": "a"},
    }))
    .unwrap();
    // An echo server standing in for the pod's port 8080.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    fake.forward_pod_port("a", "echo", 8080, listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut connection, _) = listener.accept().await.unwrap();
        let mut buffer = [0u8; 64];
        let read = connection.read(&mut buffer).await.unwrap();
        connection.write_all(&buffer[..read]).await.unwrap();
    });
    let pods: ::kube::Api<Pod> = ::kube::Api::namespaced(fake.client().unwrap(), "a");

    let mut forwarder = pods.portforward("echo", &[8080]).await.unwrap();
    let mut stream = forwarder.take_stream(8080).unwrap();
    stream
        .write_all(b"ping through the API server")
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"ping through the API server");

    // A port nothing listens on: the refusal comes on the port's error channel.
    let mut forwarder = pods.portforward("echo", &[9090]).await.unwrap();
    let error = forwarder.take_error(9090).unwrap().await.unwrap();
    assert!(
        error.contains("error forwarding port 9090 to pod a/echo"),
        "{error}"
    );
    // A pod that does not exist, and a refusal (RBAC) are answered before the upgrade.
    assert!(pods.portforward("gone", &[8080]).await.is_err());
    fake.fail_next("/api/v1/namespaces/a/pods/echo/portforward", 1, 403);
    let refused = pods.portforward("echo", &[8080]).await.err().unwrap();
    assert!(refused.to_string().contains("403"), "{refused}");
    let upgraded = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/namespaces/a/pods/echo/portforward" && r.status == 101)
        .count();
    assert_eq!(upgraded, 2);
}

/// A paged list costs the fake its objects once, not once per page (a real server resumes its
/// range read at the continue token): 4 times the objects cost about 4 times the work. Each
/// page rebuilt from the history costs objects x pages: 16 times.
#[tokio::test]
async fn a_paged_list_costs_its_objects_once_not_once_per_page() {
    use ::kube::api::{Api, ListParams};
    use k8s_openapi::api::core::v1::Pod;

    async fn work_to_list(pods: usize) -> u64 {
        let fake = FakeApiServer::start().await.unwrap();
        for n in 0..pods {
            fake.create(pod(&format!("p{n}"), "x")).unwrap();
        }
        let api: Api<Pod> = Api::all(fake.client().unwrap());
        let before = fake.served_work();
        let (mut token, mut listed) = (None::<String>, 0);
        loop {
            let mut params = ListParams::default().limit(50);
            if let Some(token) = &token {
                params = params.continue_token(token);
            }
            let page = api.list(&params).await.unwrap();
            listed += page.items.len();
            token = page.metadata.continue_.filter(|c| !c.is_empty());
            if token.is_none() {
                break;
            }
        }
        assert_eq!(listed, pods, "every pod listed once");
        fake.served_work() - before
    }
    let small = work_to_list(200).await;
    let large = work_to_list(800).await;
    assert!(
        large * 2 <= small * 4 * 3,
        "200 pods: {small}, 800 pods: {large} objects looked at"
    );
}
