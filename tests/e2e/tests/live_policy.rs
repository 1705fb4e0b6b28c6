//! Istio's authorization tasks and the ambient getting-started's L4 and L7 policy steps,
//! replayed with the pages' YAML while connections are open, and what happens to open
//! connections when the mesh itself changes: a service gains or loses its waypoint, a pod
//! leaves the mesh, an endpoint leaves its service. A connection a policy no longer allows is
//! closed within a second of the agents applying it; a request on a connection that stays is
//! decided by the policy in force. Needs root.

use std::time::Duration;

use serde_json::Value;
use weft_e2e::{
    Mesh,
    bookinfo::{self, PRODUCTPAGE, PRODUCTPAGE_HOST, WAYPOINT, call, ratings},
    session::Session,
};

/// How fast an open connection must be closed once the agents applied a policy that denies it.
const CLOSED_WITHIN: Duration = Duration::from_secs(1);
/// Envoy's body for an RBAC refusal.
const ACCESS_DENIED: &str = "RBAC: access denied";

/// The answers of a session exchange.
fn answers(answer: &Value) -> Vec<Value> {
    answer["answers"].as_array().cloned().unwrap_or_default()
}

/// `kubectl apply` of L7 policy (or anything else the waypoint applies), awaited there.
fn apply_to_waypoint(mesh: &Mesh, yaml: &str) {
    mesh.await_waypoint(WAYPOINT, "kubectl apply", || mesh.kubectl_apply(yaml))
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// The policy `namespace/name` in an agent's store (`Null` when it has none).
fn agent_policy(state: &Value, namespace: &str, name: &str) -> Value {
    state["policies"]
        .as_array()
        .and_then(|policies| {
            policies
                .iter()
                .find(|p| p["namespace"] == namespace && p["name"] == name)
        })
        .cloned()
        .unwrap_or(Value::Null)
}

/// `kubectl apply` of an L4 policy `namespace/name`, awaited until every agent holds the new
/// version of it.
fn apply_to_agents(mesh: &Mesh, yaml: &str, namespace: &str, name: &str) {
    let before = agent_policy(&mesh.config_dump("node1")["state"], namespace, name);
    mesh.kubectl_apply(yaml).unwrap();
    mesh.await_agents(&format!("policy {namespace}/{name}"), |state| {
        let now = agent_policy(state, namespace, name);
        !now.is_null() && now != before
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
}

// ---------------------------------------------------------------------------------------------
// Authorization for HTTP (at the waypoint) and TCP (at the agents), and mutual TLS.

/// The HTTP task's policies, attached to the waypoint as ambient mode attaches L7 policy
/// (`targetRefs` where the sidecar page has `selector`); otherwise as the page writes them.
const ALLOW_NOTHING: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: default
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
"#;
const PRODUCTPAGE_VIEWER_GET: &str = r#"apiVersion: "security.istio.io/v1"
kind: "AuthorizationPolicy"
metadata:
  name: "productpage-viewer"
  namespace: default
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: productpage
  action: ALLOW
  rules:
  - to:
    - operation:
        methods: ["GET"]
"#;
const DETAILS_AND_REVIEWS_VIEWERS: &str = r#"apiVersion: "security.istio.io/v1"
kind: "AuthorizationPolicy"
metadata:
  name: "details-viewer"
  namespace: default
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: details
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]
    to:
    - operation:
        methods: ["GET"]
---
apiVersion: "security.istio.io/v1"
kind: "AuthorizationPolicy"
metadata:
  name: "reviews-viewer"
  namespace: default
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: reviews
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]
    to:
    - operation:
        methods: ["GET"]
"#;
const RATINGS_VIEWER: &str = r#"apiVersion: "security.istio.io/v1"
kind: "AuthorizationPolicy"
metadata:
  name: "ratings-viewer"
  namespace: default
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: ratings
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/bookinfo-reviews"]
    to:
    - operation:
        methods: ["GET"]
"#;

/// The TCP task's namespace and tcp-echo Service (with the address the API server would give
/// it; port 9002 is left out on purpose, as in Istio's sample).
const FOO: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: foo
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Service
metadata:
  name: tcp-echo
  namespace: foo
  labels:
    app: tcp-echo
    service: tcp-echo
spec:
  clusterIP: 10.96.2.10
  ports:
  - name: tcp
    port: 9000
  - name: tcp-other
    port: 9001
  selector:
    app: tcp-echo
"#;
const TCP_POLICY_PORTS: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: tcp-policy
  namespace: foo
spec:
  selector:
    matchLabels:
      app: tcp-echo
  action: ALLOW
  rules:
  - to:
    - operation:
        ports: ["9000", "9001"]
"#;
const TCP_POLICY_ALLOW_METHODS: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: tcp-policy
  namespace: foo
spec:
  selector:
    matchLabels:
      app: tcp-echo
  action: ALLOW
  rules:
  - to:
    - operation:
        methods: ["GET"]
        ports: ["9000"]
"#;
const TCP_POLICY_DENY_METHODS_AND_PORT: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: tcp-policy
  namespace: foo
spec:
  selector:
    matchLabels:
      app: tcp-echo
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["GET"]
        ports: ["9000"]
"#;
/// The mutual-TLS migration task's last step.
const STRICT: &str = r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: "default"
  namespace: "foo"
spec:
  mtls:
    mode: STRICT
"#;

/// A TCP session from `pod` to `target`, echoing once.
fn tcp_session(mesh: &Mesh, pod: &str, target: &str) -> Session {
    let mut session = mesh.tcp_session(pod, target).unwrap();
    assert_eq!(
        session.echo(&format!("{target} from {pod}")),
        Ok(format!("{target} from {pod}"))
    );
    session
}

/// Whether a new connection from `pod` to `target` carries an echo.
fn connects(mesh: &Mesh, pod: &str, target: &str) -> bool {
    mesh.tcp_session(pod, target).unwrap().echo("hello").is_ok()
}

#[test]
fn authorization_tasks_close_what_a_policy_no_longer_allows() {
    let tcp_echo = weft_e2e::PodSpec::app("tcp-echo", "node2", "foo", "tcp-echo", "v1")
        .with_echo_ports(&[9000, 9001, 9002]);
    let extra = vec![
        tcp_echo,
        weft_e2e::PodSpec::client("sleep", "node1", "foo"),
        weft_e2e::PodSpec::client("outsider", "node1", "foo").not_enrolled(),
    ];
    let mesh = bookinfo::start(extra, true, &format!("---\n{FOO}"));

    // HTTP, at the waypoint: the client's keep-alive connection and productpage's pooled ones
    // stay open through every step; each request is decided by the policies in force.
    let mut curl = mesh
        .http_session("curl", PRODUCTPAGE, PRODUCTPAGE_HOST)
        .unwrap();
    let page = |curl: &mut Session| answers(&curl.get("/productpage", &[], 6));
    let first = page(&mut curl);
    assert!(first.iter().all(|a| a["status"] == 200), "{first:?}");
    apply_to_waypoint(&mesh, ALLOW_NOTHING);
    for answer in page(&mut curl) {
        assert_eq!(
            (&answer["status"], &answer["body"]),
            (&Value::from(403), &Value::from(ACCESS_DENIED))
        );
    }
    apply_to_waypoint(&mesh, PRODUCTPAGE_VIEWER_GET);
    for answer in page(&mut curl) {
        assert_eq!(answer["status"], 200, "{answer}");
        for name in ["details", "reviews"] {
            let upstream = call(&answer["body"], name);
            assert_eq!(
                (upstream.status, upstream.error.as_str()),
                (403, ACCESS_DENIED),
                "{answer}"
            );
        }
    }
    apply_to_waypoint(&mesh, DETAILS_AND_REVIEWS_VIEWERS);
    let pages = page(&mut curl);
    for answer in &pages {
        assert_eq!(call(&answer["body"], "details").status, 200, "{answer}");
        let reviews = call(&answer["body"], "reviews");
        assert_eq!(reviews.status, 200, "{answer}");
        if reviews.version != "v1" {
            let ratings = ratings(&answer["body"]);
            assert_eq!(
                (ratings.status, ratings.error.as_str()),
                (403, ACCESS_DENIED),
                "{answer}"
            );
        }
    }
    apply_to_waypoint(&mesh, RATINGS_VIEWER);
    for answer in page(&mut curl) {
        let reviews = call(&answer["body"], "reviews");
        if reviews.version != "v1" {
            assert_eq!(ratings(&answer["body"]).status, 200, "{answer}");
        }
    }
    let connection = |answer: &Value| call(&answer["body"], "reviews").connection;
    assert_eq!(
        connection(&pages[0]),
        connection(&first[0]),
        "productpage's pooled connection to reviews changed"
    );

    // TCP, at the agents: connections opened while allowed are closed once a policy denies
    // them; those it still allows go on.
    let echo = "10.96.2.10";
    let pod = mesh.pod("tcp-echo").ip.to_string();
    let mut on_9000 = tcp_session(&mesh, "sleep", &format!("{echo}:9000"));
    let mut on_9001 = tcp_session(&mesh, "sleep", &format!("{echo}:9001"));
    let mut on_9002 = tcp_session(&mesh, "sleep", &format!("{pod}:9002"));
    apply_to_agents(&mesh, TCP_POLICY_PORTS, "foo", "tcp-policy");
    assert!(
        on_9002.closed_within(CLOSED_WITHIN),
        "port 9002 is denied but its open connection was not closed"
    );
    assert!(!connects(&mesh, "sleep", &format!("{pod}:9002")));
    assert_eq!(on_9000.echo("still 9000"), Ok("still 9000".into()));
    assert_eq!(on_9001.echo("still 9001"), Ok("still 9001".into()));
    // An ALLOW with an HTTP-only field never matches TCP: everything is denied now.
    apply_to_agents(&mesh, TCP_POLICY_ALLOW_METHODS, "foo", "tcp-policy");
    assert!(
        on_9000.closed_within(CLOSED_WITHIN),
        "port 9000 stayed open"
    );
    assert!(
        on_9001.closed_within(CLOSED_WITHIN),
        "port 9001 stayed open"
    );
    assert!(!connects(&mesh, "sleep", &format!("{echo}:9000")));
    // A DENY loses its HTTP-only fields: port 9000 is denied, 9001 allowed again.
    apply_to_agents(&mesh, TCP_POLICY_DENY_METHODS_AND_PORT, "foo", "tcp-policy");
    assert!(!connects(&mesh, "sleep", &format!("{echo}:9000")));
    let mut mesh_9001 = tcp_session(&mesh, "sleep", &format!("{echo}:9001"));

    // Mutual TLS: a plaintext connection from outside the mesh, accepted while PERMISSIVE, is
    // closed when the namespace turns STRICT; the mesh's own connection goes on.
    let mut plaintext = tcp_session(&mesh, "outsider", &format!("{pod}:9001"));
    mesh.kubectl_apply(STRICT).unwrap();
    mesh.await_agents("PeerAuthentication foo/default", |state| {
        state["policies"].as_array().is_some_and(|policies| {
            policies.iter().any(|p| {
                p["namespace"] == "foo"
                    && p["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("converted_peer_authentication_"))
            })
        })
    })
    .unwrap();
    assert!(
        plaintext.closed_within(CLOSED_WITHIN),
        "a plaintext connection outlived STRICT"
    );
    assert!(!connects(&mesh, "outsider", &format!("{pod}:9001")));
    assert_eq!(mesh_9001.echo("mutual tls"), Ok("mutual tls".into()));
}

// ---------------------------------------------------------------------------------------------
// The ambient getting-started's policy steps, as the waypoint comes and goes.

/// "Enforce Layer 4 authorization policy": only the ingress gateway may reach productpage.
const PRODUCTPAGE_ZTUNNEL: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: productpage-ztunnel
  namespace: default
spec:
  selector:
    matchLabels:
      app: productpage
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/bookinfo-gateway-istio
"#;
/// "Enforce Layer 7 authorization policy": curl may GET productpage, at the waypoint, and the
/// L4 policy lets the waypoint in.
const PRODUCTPAGE_VIEWER: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: productpage-viewer
  namespace: default
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: productpage
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/curl
    to:
    - operation:
        methods: ["GET"]
"#;
const PRODUCTPAGE_ZTUNNEL_AND_WAYPOINT: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: productpage-ztunnel
  namespace: default
spec:
  selector:
    matchLabels:
      app: productpage
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/bookinfo-gateway-istio
        - cluster.local/ns/default/sa/waypoint
"#;

/// One request on `session`: status and body.
fn one(session: &mut Session, method: &str) -> (u64, Value) {
    let answer = answers(&session.request(method, "/productpage", &[], 1)).remove(0);
    (
        answer["status"].as_u64().unwrap_or(0),
        answer["body"].clone(),
    )
}

/// Whether `pod`'s new connection to productpage gets an answer, and which.
fn fresh(mesh: &Mesh, pod: &str, method: &str) -> (u64, Value) {
    let mut session = mesh
        .http_session(pod, PRODUCTPAGE, PRODUCTPAGE_HOST)
        .unwrap();
    one(&mut session, method)
}

#[test]
fn ambient_policy_steps_follow_the_waypoint_as_it_comes_and_goes() {
    let extra = vec![
        weft_e2e::PodSpec::client("gateway", "node2", "default")
            .with_service_account("bookinfo-gateway-istio"),
        weft_e2e::PodSpec::client("notcurl", "node1", "default"),
    ];
    // The namespace is in the mesh; its services do not use the waypoint yet.
    let mesh = bookinfo::start(extra, false, "");
    let mut curl = mesh
        .http_session("curl", PRODUCTPAGE, PRODUCTPAGE_HOST)
        .unwrap();
    let mut gateway = mesh
        .http_session("gateway", PRODUCTPAGE, PRODUCTPAGE_HOST)
        .unwrap();
    assert_eq!(one(&mut curl, "GET").0, 200);
    assert_eq!(one(&mut gateway, "GET").0, 200);

    // L4: only the gateway. curl's open connection is closed; a new one is reset.
    apply_to_agents(&mesh, PRODUCTPAGE_ZTUNNEL, "default", "productpage-ztunnel");
    assert!(
        curl.closed_within(CLOSED_WITHIN),
        "curl's connection outlived the L4 policy"
    );
    assert_eq!(fresh(&mesh, "curl", "GET").0, 0, "curl reached productpage");
    assert_eq!(one(&mut gateway, "GET").0, 200);

    // The namespace gets its waypoint (`istioctl waypoint apply --enroll-namespace`). The
    // gateway's direct connection now bypasses it, and productpage accepts only the waypoint:
    // closed (Istio leaves such a connection open until it ends; see ARCHITECTURE.md).
    mesh.await_waypoint(WAYPOINT, "the namespace's waypoint", || {
        mesh.write_config("10-config.yaml", &bookinfo::config(true))
    })
    .unwrap();
    assert!(
        gateway.closed_within(CLOSED_WITHIN),
        "a connection bypassing the new waypoint stayed open"
    );
    // L7 at the waypoint: curl may GET, nothing else; the L4 policy lets the waypoint in.
    apply_to_waypoint(&mesh, PRODUCTPAGE_VIEWER);
    apply_to_agents(
        &mesh,
        PRODUCTPAGE_ZTUNNEL_AND_WAYPOINT,
        "default",
        "productpage-ztunnel",
    );
    let mut curl = mesh
        .http_session("curl", PRODUCTPAGE, PRODUCTPAGE_HOST)
        .unwrap();
    assert_eq!(one(&mut curl, "GET").0, 200);
    assert_eq!(one(&mut curl, "DELETE"), (403, Value::from(ACCESS_DENIED)));
    assert_eq!(
        fresh(&mesh, "notcurl", "GET"),
        (403, Value::from(ACCESS_DENIED))
    );
    gateway.reconnect();
    assert_eq!(one(&mut gateway, "GET"), (403, Value::from(ACCESS_DENIED)));

    // The waypoint goes. Its connections drain: curl's open one is closed, and curl's next
    // connection goes straight to productpage, where the L4 policy refuses it; the gateway's
    // does too, and is allowed (no L7 policy applies without a waypoint).
    mesh.await_waypoint(WAYPOINT, "the namespace without its waypoint", || {
        mesh.write_config("10-config.yaml", &bookinfo::config(false))
    })
    .unwrap();
    assert!(
        curl.closed_within(Duration::from_secs(2)),
        "the waypoint kept a connection to a service it no longer serves"
    );
    mesh.await_agents("productpage without a waypoint", |state| {
        state["services"].as_array().is_some_and(|services| {
            services
                .iter()
                .any(|s| s["name"] == "productpage" && s["waypoint"].is_null())
        })
    })
    .unwrap();
    assert_eq!(fresh(&mesh, "curl", "GET").0, 0, "curl reached productpage");
    gateway.reconnect();
    assert_eq!(one(&mut gateway, "GET").0, 200);
}

// ---------------------------------------------------------------------------------------------
// The mesh changes under open connections.

/// The reviews pod a request is in flight to at the waypoint, from its `/config_dump`.
fn reviews_pod_in_flight(mesh: &Mesh) -> Option<String> {
    let dump = mesh.waypoint_config_dump(WAYPOINT).ok()?;
    let busy: Vec<String> = dump["clusters"]
        .as_array()?
        .iter()
        .filter(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("|reviews.default.svc.cluster.local"))
        })
        .flat_map(|c| c["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["outlier"]["active_requests"].as_u64() > Some(0))
        .filter_map(|e| e["address"].as_str().map(String::from))
        .collect();
    ["reviews-v1", "reviews-v2", "reviews-v3"]
        .into_iter()
        .find(|pod| {
            let ip = format!("{}:", mesh.pod(pod).ip);
            busy.iter().any(|address| address.starts_with(&ip))
        })
        .map(String::from)
}

#[test]
fn endpoints_and_pods_that_leave_end_only_what_they_must() {
    let mut mesh = bookinfo::start(Vec::new(), true, "");
    let mut curl = mesh
        .http_session("curl", PRODUCTPAGE, PRODUCTPAGE_HOST)
        .unwrap();
    assert!(
        answers(&curl.get("/productpage", &[], 3))
            .iter()
            .all(|a| a["status"] == 200)
    );

    // An endpoint leaves its service while a request to it is in flight (its pod is relabelled
    // out of the selector): the request finishes there, the next ones go to the others.
    let mut direct = mesh
        .http_session("curl", "10.96.1.40:9080", "reviews:9080")
        .unwrap();
    let slow = std::thread::spawn(move || answers(&direct.get("/reviews/0?delay_ms=4000", &[], 1)));
    let mut leaving = None;
    assert!(
        mesh.eventually(Duration::from_secs(3), || {
            leaving = reviews_pod_in_flight(&mesh);
            leaving.is_some()
        }),
        "the slow request is not in flight at the waypoint"
    );
    let leaving = leaving.unwrap();
    let version = leaving.trim_start_matches("reviews-").to_owned();
    let before = mesh.waypoint_config_version(WAYPOINT);
    mesh.update_pod(&leaving, |pod| {
        pod.labels.insert("app".into(), "reviews-retired".into());
    })
    .unwrap();
    mesh.await_waypoint_since(WAYPOINT, &before, "a reviews pod relabelled")
        .unwrap();
    let after = answers(&curl.get("/productpage", &[], 30));
    for answer in &after {
        let reviews = call(&answer["body"], "reviews");
        assert_eq!(reviews.status, 200, "{answer}");
        assert_ne!(
            reviews.version, version,
            "a new request reached the endpoint that left"
        );
    }
    let finished = slow.join().unwrap();
    assert_eq!(
        (&finished[0]["status"], &finished[0]["body"]["version"]),
        (&Value::from(200), &Value::from(version.as_str())),
        "the request in flight did not finish where it was: {finished:?}"
    );

    // A server pod leaves the mesh: the connections into it end (the waypoint's to details);
    // the waypoint then reaches it in plaintext and productpage's calls keep working.
    let before = mesh.waypoint_config_version(WAYPOINT);
    mesh.update_pod("details-v1", |pod| pod.enrolled = false)
        .unwrap();
    mesh.await_waypoint_since(WAYPOINT, &before, "details left the mesh")
        .unwrap();
    for answer in answers(&curl.get("/productpage", &[], 10)) {
        assert_eq!(call(&answer["body"], "details").status, 200, "{answer}");
    }
    // The client pod leaves the mesh: its open connection, carried by its agent, ends.
    mesh.update_pod("curl", |pod| pod.enrolled = false).unwrap();
    assert!(
        curl.closed_within(CLOSED_WITHIN),
        "the connection of a pod that left the mesh stayed open"
    );
}
