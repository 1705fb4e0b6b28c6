//! Istio's traffic-management tasks replayed on bookinfo with the tasks' own YAML (request
//! routing, traffic shifting, request timeouts, fault injection, circuit breaking, mirroring),
//! each change made while connections are in use: the client's keep-alive connection to
//! productpage (one `mesh-client http-session`), and the apps' pooled connections
//! (productpage -> reviews -> ratings, whose local addresses the sample app reports). Every
//! step asserts what the task's page says happens, on those same connections. Needs root.

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;
use weft_e2e::{
    Mesh, MeshOptions, PodSpec,
    bookinfo::{self, PRODUCTPAGE, PRODUCTPAGE_HOST, WAYPOINT, call, pages, ratings},
    session::Session,
    waypoint_resources,
};

/// `samples/bookinfo/networking/destination-rule-all.yaml`.
const DESTINATION_RULE_ALL: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: productpage
spec:
  host: productpage
  subsets:
  - name: v1
    labels:
      version: v1
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ratings
spec:
  host: ratings
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v2-mysql
    labels:
      version: v2-mysql
  - name: v2-mysql-vm
    labels:
      version: v2-mysql-vm
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: details
spec:
  host: details
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
"#;

/// `samples/bookinfo/networking/virtual-service-all-v1.yaml`.
const VIRTUAL_SERVICE_ALL_V1: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: productpage
spec:
  hosts:
  - productpage
  http:
  - route:
    - destination:
        host: productpage
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - route:
    - destination:
        host: ratings
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: details
spec:
  hosts:
  - details
  http:
  - route:
    - destination:
        host: details
        subset: v1
---
"#;

/// `samples/bookinfo/networking/virtual-service-reviews-test-v2.yaml`.
const REVIEWS_TEST_V2: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
"#;

/// `samples/bookinfo/networking/virtual-service-reviews-50-v3.yaml`.
const REVIEWS_50_V3: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 50
    - destination:
        host: reviews
        subset: v3
      weight: 50
"#;

/// `samples/bookinfo/networking/virtual-service-reviews-v3.yaml`.
const REVIEWS_V3: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v3
"#;

/// The request-timeouts task: reviews to v2, then ratings delayed by 2 s, then a 0.5 s timeout
/// on reviews.
const TIMEOUTS_REVIEWS_V2: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v2
"#;
const TIMEOUTS_RATINGS_DELAY: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - fault:
      delay:
        percentage:
          value: 100
        fixedDelay: 2s
    route:
    - destination:
        host: ratings
        subset: v1
"#;
const TIMEOUTS_REVIEWS_HALF_SECOND: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v2
    timeout: 0.5s
"#;

/// `samples/bookinfo/networking/virtual-service-ratings-test-delay.yaml`.
const RATINGS_TEST_DELAY: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      delay:
        percentage:
          value: 100.0
        fixedDelay: 7s
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"#;

/// `samples/bookinfo/networking/virtual-service-ratings-test-abort.yaml`.
const RATINGS_TEST_ABORT: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      abort:
        percentage:
          value: 100.0
        httpStatus: 500
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"#;

/// `kubectl apply` of a task's YAML, and a wait until the waypoint applied what follows.
fn apply(mesh: &Mesh, yaml: &str) {
    mesh.await_waypoint(WAYPOINT, "kubectl apply", || mesh.kubectl_apply(yaml))
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// productpage through the client's open session: the pages, all answered 200 on the same
/// client connection as before (`client`, set by the first call).
fn productpage(
    curl: &mut Session,
    client: &mut Option<String>,
    headers: &[(&str, &str)],
    count: u32,
) -> Vec<(Value, f64)> {
    let answer = curl.get("/productpage", headers, count);
    let connection = answer["connection"].as_str().unwrap_or_default().to_owned();
    match client {
        Some(known) => assert_eq!(
            *known, connection,
            "the client's keep-alive connection was replaced"
        ),
        None => *client = Some(connection),
    }
    pages(&answer)
}

/// How many pages got each reviews version.
fn reviews_versions(pages: &[(Value, f64)]) -> BTreeMap<String, u32> {
    let mut seen = BTreeMap::new();
    for (reply, _) in pages {
        let reviews = call(reply, "reviews");
        let key = if reviews.status == 200 {
            reviews.version
        } else {
            format!("HTTP {} {}", reviews.status, reviews.error)
        };
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

/// The pooled connections productpage used for reviews over `pages`.
fn reviews_connections(pages: &[(Value, f64)]) -> Vec<String> {
    let mut connections: Vec<String> = pages
        .iter()
        .map(|(reply, _)| call(reply, "reviews").connection)
        .collect();
    connections.dedup();
    connections
}

#[test]
fn request_routing_traffic_shifting_and_timeouts_reach_open_connections() {
    let mesh = bookinfo::start(Vec::new(), true, "");
    let mut curl = mesh
        .http_session("curl", PRODUCTPAGE, PRODUCTPAGE_HOST)
        .unwrap();
    let mut client = None;
    // Before any rule: reviews round robin over v1, v2 and v3.
    let before = productpage(&mut curl, &mut client, &[], 30);
    assert_eq!(
        reviews_versions(&before).len(),
        3,
        "{:?}",
        reviews_versions(&before)
    );
    let pooled = reviews_connections(&before);
    assert_eq!(
        pooled.len(),
        1,
        "productpage -> reviews is not one pooled connection: {pooled:?}"
    );

    // Request routing: everything to v1, on the connections already open.
    apply(&mesh, DESTINATION_RULE_ALL);
    apply(&mesh, VIRTUAL_SERVICE_ALL_V1);
    let all_v1 = productpage(&mut curl, &mut client, &[], 30);
    assert_eq!(
        reviews_versions(&all_v1),
        BTreeMap::from([("v1".into(), 30)])
    );
    assert_eq!(
        reviews_connections(&all_v1),
        pooled,
        "productpage's pooled connection changed"
    );

    // jason to v2, everyone else still v1.
    apply(&mesh, REVIEWS_TEST_V2);
    let jason = productpage(&mut curl, &mut client, &[("end-user", "jason")], 20);
    assert_eq!(
        reviews_versions(&jason),
        BTreeMap::from([("v2".into(), 20)])
    );
    let others = productpage(&mut curl, &mut client, &[("end-user", "alice")], 20);
    assert_eq!(
        reviews_versions(&others),
        BTreeMap::from([("v1".into(), 20)])
    );
    assert_eq!(reviews_connections(&jason), pooled);

    // Traffic shifting: all to v1, then 50/50 between v1 and v3, then all to v3.
    apply(&mesh, VIRTUAL_SERVICE_ALL_V1);
    apply(&mesh, REVIEWS_50_V3);
    let split = reviews_versions(&productpage(&mut curl, &mut client, &[], 200));
    let share = |v: &str| f64::from(split.get(v).copied().unwrap_or(0)) / 2.0;
    assert_eq!(
        split.get("v1").copied().unwrap_or(0) + split.get("v3").copied().unwrap_or(0),
        200,
        "{split:?}"
    );
    // 50/50 over 200 requests: within about four standard deviations.
    assert!(
        (36.0..=64.0).contains(&share("v3")),
        "v3 got {}%: {split:?}",
        share("v3")
    );
    apply(&mesh, REVIEWS_V3);
    let v3 = productpage(&mut curl, &mut client, &[], 30);
    assert_eq!(reviews_versions(&v3), BTreeMap::from([("v3".into(), 30)]));
    assert_eq!(reviews_connections(&v3), pooled);

    // Request timeouts: reviews v2 waits 2 s for ratings; a 0.5 s timeout on reviews turns that
    // into 504 in half a second.
    apply(&mesh, TIMEOUTS_REVIEWS_V2);
    apply(&mesh, TIMEOUTS_RATINGS_DELAY);
    let slow = productpage(&mut curl, &mut client, &[], 2);
    for (reply, ms) in &slow {
        assert_eq!(call(reply, "reviews").version, "v2", "{reply}");
        assert_eq!(ratings(reply).status, 200, "{reply}");
        assert!(*ms >= 2000.0, "the 2 s delay was not applied: {ms} ms");
    }
    apply(&mesh, TIMEOUTS_REVIEWS_HALF_SECOND);
    let timed_out = productpage(&mut curl, &mut client, &[], 3);
    for (reply, ms) in &timed_out {
        let reviews = call(reply, "reviews");
        assert_eq!(
            (reviews.status, reviews.error.as_str()),
            (504, "upstream request timeout"),
            "{reply}"
        );
        assert!(*ms < 1500.0, "the timeout took {ms} ms");
    }
    assert_eq!(reviews_connections(&timed_out), pooled);
}

#[test]
fn fault_injection_reaches_open_connections() {
    let mesh = bookinfo::start(Vec::new(), true, "");
    let mut curl = mesh
        .http_session("curl", PRODUCTPAGE, PRODUCTPAGE_HOST)
        .unwrap();
    let mut client = None;
    apply(&mesh, DESTINATION_RULE_ALL);
    apply(&mesh, VIRTUAL_SERVICE_ALL_V1);
    apply(&mesh, REVIEWS_TEST_V2);
    // jason reaches reviews v2, which calls ratings on its pooled connection.
    let before = productpage(&mut curl, &mut client, &[("end-user", "jason")], 3);
    let pooled = ratings(&before[0].0).connection;
    for (reply, _) in &before {
        assert_eq!(ratings(reply).status, 200, "{reply}");
    }

    // A 7 s delay for jason's calls to ratings; everyone else is not delayed.
    apply(&mesh, RATINGS_TEST_DELAY);
    for (reply, ms) in productpage(&mut curl, &mut client, &[("end-user", "jason")], 2) {
        assert_eq!(ratings(&reply).status, 200, "{reply}");
        assert!(
            (7000.0..9500.0).contains(&ms),
            "jason's page took {ms} ms, not the 7 s delay"
        );
        assert_eq!(
            ratings(&reply).connection,
            pooled,
            "reviews' pooled connection changed"
        );
    }
    for (_, ms) in productpage(&mut curl, &mut client, &[("end-user", "alice")], 5) {
        assert!(ms < 2000.0, "alice was delayed: {ms} ms");
    }

    // An HTTP 500 abort for jason instead, then no fault at all: each on the open connections.
    apply(&mesh, RATINGS_TEST_ABORT);
    for (reply, ms) in productpage(&mut curl, &mut client, &[("end-user", "jason")], 5) {
        let ratings = ratings(&reply);
        assert_eq!(
            (ratings.status, ratings.error.as_str()),
            (500, "fault filter abort"),
            "{reply}"
        );
        assert!(ms < 2000.0, "the abort took {ms} ms");
        assert_eq!(ratings.connection, pooled);
    }
    mesh.await_waypoint(WAYPOINT, "kubectl delete", || {
        mesh.kubectl_delete("VirtualService", "default", "ratings")
    })
    .unwrap();
    for (reply, _) in productpage(&mut curl, &mut client, &[("end-user", "jason")], 5) {
        assert_eq!(
            ratings(&reply).status,
            200,
            "the abort outlived its rule: {reply}"
        );
    }
}

/// The mirroring task's httpbin Service, with the address the API server would give it.
const HTTPBIN: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: httpbin
  labels:
    app: httpbin
spec:
  clusterIP: 10.96.1.50
  ports:
  - name: http
    port: 8000
    targetPort: 80
  selector:
    app: httpbin
"#;
const HTTPBIN_ADDRESS: &str = "10.96.1.50:8000";

/// The circuit-breaking task's DestinationRule.
const CIRCUIT_BREAKER: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"#;

/// The mirroring task: all traffic to v1, then mirrored to v2.
const HTTPBIN_V1: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
    - httpbin
  http:
  - route:
    - destination:
        host: httpbin
        subset: v1
      weight: 100
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
"#;
const HTTPBIN_MIRRORED: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - httpbin
  http:
  - route:
    - destination:
        host: httpbin
        subset: v1
      weight: 100
    mirror:
      host: httpbin
      subset: v2
    mirrorPercentage:
      value: 100.0
"#;

/// `count` requests for `path` on each of `sessions` at once: every answer.
fn concurrently(sessions: &mut [Session], path: &str, count: u32) -> Vec<Value> {
    std::thread::scope(|scope| {
        let running: Vec<_> = sessions
            .iter_mut()
            .map(|session| scope.spawn(move || session.get(path, &[], count)))
            .collect();
        running
            .into_iter()
            .flat_map(|r| {
                r.join().unwrap()["answers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    })
}

/// How many of `answers` had each status.
fn statuses(answers: &[Value]) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    for answer in answers {
        *seen
            .entry(answer["status"].as_u64().unwrap_or(0))
            .or_insert(0) += 1;
    }
    seen
}

/// Mirror copies the httpbin v2 pod answered, from its log: only copies bring it `/headers`
/// (every route of that path goes to v1), their Host kept as istiod keeps it since 1.28.
fn mirrored(mesh: &Mesh) -> usize {
    mesh.log_of("app-httpbin-v2")
        .lines()
        .filter(|l| l.contains("request") && l.contains("/headers") && !l.contains("-shadow"))
        .count()
}

#[test]
fn circuit_breaking_and_mirroring_apply_to_open_connections() {
    let mesh = Mesh::start(
        vec![
            PodSpec::client("curl", "node1", "default"),
            PodSpec::app("httpbin-v1", "node1", "default", "httpbin", "v1").with_http_port(80),
            PodSpec::app("httpbin-v2", "node2", "default", "httpbin", "v2").with_http_port(80),
            PodSpec::waypoint(WAYPOINT, "node2", "default"),
        ],
        MeshOptions {
            config: format!(
                "{}---\n{HTTPBIN}---\n{}",
                bookinfo::namespace(true),
                waypoint_resources("default")
            ),
            log_requests: true,
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    mesh.await_reachable("curl", &format!("http://{HTTPBIN_ADDRESS}/get"))
        .unwrap();
    // Three clients, each on its own keep-alive connection, every request held 300 ms.
    let mut clients: Vec<Session> = (0..3)
        .map(|_| {
            mesh.http_session("curl", HTTPBIN_ADDRESS, "httpbin:8000")
                .unwrap()
        })
        .collect();
    let slow = "/get?delay_ms=300";
    let unlimited = statuses(&concurrently(&mut clients, slow, 4));
    assert_eq!(unlimited, BTreeMap::from([(200, 12)]));

    // Circuit breaking: one connection, one pending request. The same clients now overflow.
    apply(&mesh, CIRCUIT_BREAKER);
    let answers = concurrently(&mut clients, slow, 4);
    let limited = statuses(&answers);
    assert!(
        limited.get(&503).is_some_and(|n| *n >= 1) && limited.get(&200).is_some_and(|n| *n >= 1),
        "{limited:?}"
    );
    assert!(
        answers
            .iter()
            .filter(|a| a["status"] == 503)
            .all(|a| a["body"]
                .as_str()
                .is_some_and(|b| b.ends_with("reset reason: overflow"))),
        "{answers:?}"
    );
    // Its outlier detection applies to the pool in use: v2 starts failing, one 500 ejects it.
    let fail = format!(
        "http://{}:80/control/fail?status=500",
        mesh.pod("httpbin-v2").ip
    );
    assert_eq!(mesh.curl_with("curl", &["-X", "POST", &fail]).status, 200);
    let answers = clients[0].get("/get", &[], 8)["answers"]
        .as_array()
        .cloned()
        .unwrap();
    let failed = answers.iter().filter(|a| a["status"] == 500).count();
    assert!(failed <= 1, "v2 was not ejected after one 5xx: {answers:?}");
    let after = answers
        .iter()
        .position(|a| a["status"] == 500)
        .map_or(0, |i| i + 1);
    assert!(
        answers[after..]
            .iter()
            .all(|a| a["status"] == 200 && a["body"]["version"] == "v1"),
        "{answers:?}"
    );
    let recover = format!("http://{}:80/control/recover", mesh.pod("httpbin-v2").ip);
    assert_eq!(
        mesh.curl_with("curl", &["-X", "POST", &recover]).status,
        200
    );

    // Mirroring: everything to v1, then a copy of every request to v2, then no copy.
    apply(&mesh, HTTPBIN_V1);
    let client = &mut clients[1];
    let v1 = client.get("/headers", &[], 10)["answers"]
        .as_array()
        .cloned()
        .unwrap();
    assert!(v1.iter().all(|a| a["body"]["version"] == "v1"), "{v1:?}");
    assert_eq!(mirrored(&mesh), 0);
    apply(&mesh, HTTPBIN_MIRRORED);
    let primary = client.get("/headers", &[], 20)["answers"]
        .as_array()
        .cloned()
        .unwrap();
    assert!(
        primary.iter().all(|a| a["body"]["version"] == "v1"),
        "{primary:?}"
    );
    assert!(
        mesh.eventually(Duration::from_secs(10), || mirrored(&mesh) >= 20),
        "the mirror received {} of 20 requests",
        mirrored(&mesh)
    );
    apply(&mesh, HTTPBIN_V1);
    client.get("/headers", &[], 10);
    // One more exchange on every client: a copy in flight would have landed by now.
    concurrently(&mut clients, "/get", 1);
    assert_eq!(mirrored(&mesh), 20, "the mirror outlived its rule");
}
