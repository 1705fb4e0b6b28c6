//! Attacks on the waypoint: a stolen node identity claiming another source address, a
//! certificate of another trust domain signed by the mesh's root, `h2c` and unknown upgrades to
//! get past L7 policy, lenient HTTP (method case, Host, HTTP/1.0, CONNECT in a tunnel); and, kept
//! failing, path normalization variants over HTTP/1.1 and HTTP/2, request smuggling variants,
//! HTTP/2 floods, and certificates of every wrong kind.

use std::net::IpAddr;

use weft_e2e::{Mesh, PodSpec, waypoint_resources};

use weft_e2e::h2flood::{Kind, frames, opening};

use crate::attacker::{Connect, flood_tunnel, hbone, in_netns};
use crate::certs::{issued, unacceptable};
use crate::{CLIENT, Checks, NODE1, app_saw, http_service, start, status, wait_for};

const VIP: &str = "10.96.0.20";
const UPGRADER_VIP: &str = "10.96.0.40";
const APPS: [&str; 2] = ["reviews-v1", "reviews-v2"];

fn config() -> String {
    format!(
        r#"
{reviews}---
{upgrader}---
{waypoint}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny, namespace: shop}}
spec:
  targetRefs:
  - {{kind: Service, group: "", name: reviews}}
  - {{kind: Service, group: "", name: upgrader}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: [/admin, /admin/*]}}}}]
  - to: [{{operation: {{methods: [DELETE]}}}}]
  - from: [{{source: {{ipBlocks: ["{NODE1}/32"]}}}}]
"#,
        reviews = http_service("reviews", VIP, true),
        upgrader = http_service("upgrader", UPGRADER_VIP, true),
        waypoint = waypoint_resources("shop"),
    )
}

fn waypoint_mesh() -> Mesh {
    let mut mesh = start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
            PodSpec::app("reviews-v2", "node2", "shop", "reviews", "v2"),
            PodSpec::client("upgrader", "node2", "shop"),
            PodSpec::waypoint("waypoint", "node2", "shop"),
        ],
        config(),
    );
    mesh.start_in_pod(
        "upgrader",
        "upgrade-server",
        &["upgrade-server", "--listen", "0.0.0.0:8080"],
        8080,
    )
    .expect("start the upgrade server");
    wait_for(&mesh, "client", &format!("http://{VIP}/ready"));
    wait_for(&mesh, "client", &format!("http://{UPGRADER_VIP}/ready"));
    mesh
}

fn raw(mesh: &Mesh, target: &str, payload: &str) -> serde_json::Value {
    mesh.mesh_client("client", &["raw", "--target", target, "--payload", payload])
}

fn no_app_saw(mesh: &Mesh, needle: &str) -> bool {
    APPS.iter().all(|pod| !app_saw(mesh, pod, needle))
}

#[test]
fn the_waypoint_refuses_what_its_peers_may_not_do() {
    let mesh = waypoint_mesh();
    let mut checks = Checks::default();
    let node1 = mesh.testbed.node("node1").netns.clone();
    let waypoint = IpAddr::V4(mesh.pod("waypoint").ip);
    let url = |path: &str| format!("http://{VIP}{path}");
    let target = format!("{VIP}:80");

    // A claimed source address is not believed: a stolen node identity stays denied by an
    // ipBlocks rule however it names itself.
    let stolen = issued(&mesh, "node1", CLIENT);
    for forwarded in [None, Some("8.8.8.8")] {
        let mut connect = Connect::to(waypoint, format!("{VIP}:80")).get("/from-node1", "reviews");
        if let Some(source) = forwarded {
            connect = connect.forwarded_for(source);
        }
        let outcome = in_netns(&node1, || async { hbone(&stolen, &connect).await });
        checks.equal(
            (outcome.status, outcome.http_status()),
            (Some(200), Some(403)),
            format_args!("ipBlocks DENY at the waypoint, forwarded {forwarded:?}"),
        );
    }
    checks.check(
        no_app_saw(&mesh, "/from-node1"),
        "a source the waypoint's ipBlocks DENY names was served",
    );
    checks.equal(
        status(&mesh, "client", &[&url("/served")]),
        200,
        "client to reviews",
    );

    // Certificates the mesh must not accept, another trust domain signed by the mesh's own root
    // among them, get no HTTP/2 connection at all.
    let mut probe = Connect::to(waypoint, format!("{VIP}:80"));
    probe.payload = None;
    for (what, credential) in unacceptable(&mesh) {
        let outcome = in_netns(&node1, || async { hbone(&credential, &probe).await });
        checks.check(
            outcome.refused.is_some(),
            format_args!("a certificate with {what} at the waypoint: {outcome:?}"),
        );
    }

    // Upgrades: `h2c` is not one the waypoint forwards, so the request is served as plain
    // HTTP/1.1 without its upgrade headers and nothing is smuggled over a switched connection;
    // an unknown upgrade is refused; WebSocket still works.
    let upgrade = |protocol: &str| {
        mesh.mesh_client(
            "client",
            &[
                "upgrade",
                "--target",
                &format!("{UPGRADER_VIP}:80"),
                "--host",
                "upgrader",
                "--protocol",
                protocol,
                "--hidden-path",
                "/admin",
            ],
        )
    };
    let h2c = upgrade("h2c");
    checks.check(
        h2c["upgraded"] == false && h2c["status"] == 200,
        format_args!("an h2c upgrade through the waypoint: {h2c}"),
    );
    let echoed: serde_json::Value =
        serde_json::from_str(h2c["body"].as_str().unwrap_or_default()).unwrap_or_default();
    let headers = &echoed["headers"];
    checks.check(
        headers.is_object()
            && headers.get("upgrade").is_none()
            && headers.get("http2-settings").is_none(),
        format_args!("the h2c upgrade headers reached the backend: {h2c}"),
    );
    let unknown = upgrade("weft-tunnel");
    checks.check(
        unknown["upgraded"] == false && unknown["status"] == 403,
        format_args!("an unknown upgrade through the waypoint: {unknown}"),
    );
    checks.equal(
        status(&mesh, "client", &[&format!("http://{UPGRADER_VIP}/admin")]),
        403,
        "client to the upgrader's /admin",
    );
    let websocket = mesh.mesh_client(
        "client",
        &[
            "websocket",
            "--url",
            &format!("ws://{VIP}/ws"),
            "--count",
            "3",
        ],
    );
    checks.equal(websocket["echoed"].as_u64(), Some(3), "a WebSocket echo");

    // HTTP as Envoy accepts it: methods are case-sensitive tokens of a known set (`delete` is
    // not `DELETE` and does not slip past a DENY on DELETE), exactly one non-empty Host,
    // HTTP/1.1 or later, no CONNECT inside a tunnel.
    for (what, payload, expected) in [
        (
            "a lower-case method",
            "delete /leniency-lower HTTP/1.1\\r\\nHost: reviews\\r\\n\\r\\n",
            "400",
        ),
        (
            "a mixed-case method",
            "Delete /leniency-mixed HTTP/1.1\\r\\nHost: reviews\\r\\n\\r\\n",
            "400",
        ),
        (
            "the DELETE denied",
            "DELETE /leniency-upper HTTP/1.1\\r\\nHost: reviews\\r\\n\\r\\n",
            "403",
        ),
        (
            "no Host",
            "GET /leniency-no-host HTTP/1.1\\r\\n\\r\\n",
            "400",
        ),
        (
            "an empty Host",
            "GET /leniency-empty-host HTTP/1.1\\r\\nHost:\\r\\n\\r\\n",
            "400",
        ),
        (
            "two Hosts",
            "GET /leniency-two-hosts HTTP/1.1\\r\\nHost: reviews\\r\\nHost: elsewhere\\r\\n\\r\\n",
            "400",
        ),
        (
            "HTTP/1.0",
            "GET /leniency-http10 HTTP/1.0\\r\\n\\r\\n",
            "426",
        ),
        (
            "CONNECT",
            "CONNECT reviews:80 HTTP/1.1\\r\\nHost: reviews:80\\r\\n\\r\\n",
            "403",
        ),
    ] {
        let answer = raw(&mesh, &target, payload);
        checks.equal(
            answer["statuses"].clone(),
            serde_json::json!([expected]),
            format_args!("{what} ({answer})"),
        );
    }
    let h2_lower = status(
        &mesh,
        "client",
        &[
            "--http2-prior-knowledge",
            "-X",
            "delete",
            &url("/leniency-h2-lower"),
        ],
    );
    checks.equal(h2_lower, 400, "a lower-case method over HTTP/2");
    checks.check(
        no_app_saw(&mesh, "leniency"),
        "a lenient request reached a pod",
    );
    checks.check(no_app_saw(&mesh, "CONNECT"), "a CONNECT reached a pod");

    // Kept failing: encodings of a denied path, over HTTP/1.1 and HTTP/2.
    let variants = [
        "/admin",
        "//admin",
        "/%2Fadmin",
        "/%2fadmin",
        "/%5Cadmin",
        "/%5cadmin",
        "/./admin",
        "/x/../admin",
        "/%2e%2e/admin",
        "/%2E%2E/admin",
        "/x/..%2Fadmin",
        "/adm%69n",
        "/admin/",
        "/admin/users",
        "/admin?x=1",
        "/%61dmin",
    ];
    for protocol in ["--http1.1", "--http2-prior-knowledge"] {
        for path in variants {
            let answer = mesh.curl_with("client", &[protocol, "--path-as-is", &url(path)]);
            checks.equal(answer.status, 403, format_args!("{protocol} {path}"));
        }
    }
    let fragment = raw(
        &mesh,
        &target,
        "GET /admin#x HTTP/1.1\\r\\nHost: reviews\\r\\n\\r\\n",
    );
    checks.check(
        matches!(fragment["statuses"][0].as_str(), Some("400" | "403")),
        format_args!("a fragment after a denied path: {fragment}"),
    );
    checks.check(no_app_saw(&mesh, "admin"), "a denied path reached a pod");
    checks.equal(
        status(&mesh, "client", &[&url("/after-paths")]),
        200,
        "client after the path variants",
    );

    // Kept failing: framing conflicts (request smuggling). The front request is refused and
    // the request hidden in its body (`@`) never reaches a pod.
    let smuggling = [
        (
            "Content-Length: 48\\r\\nTransfer-Encoding: chunked",
            "0\\r\\n\\r\\n@",
        ),
        (
            "Transfer-Encoding: chunked\\r\\nContent-Length: 48",
            "0\\r\\n\\r\\n@",
        ),
        (
            "Transfer-Encoding: chunked\\r\\nTransfer-Encoding: identity",
            "0\\r\\n\\r\\n@",
        ),
        ("Transfer-Encoding: xchunked", "0\\r\\n\\r\\n@"),
        ("Transfer-Encoding : chunked", "0\\r\\n\\r\\n@"),
        ("Transfer-Encoding:\\r\\n chunked", "0\\r\\n\\r\\n@"),
        ("Content-Length: 5\\r\\nContent-Length: 48", "hello@"),
        ("Content-Length: +5", "hello@"),
        (
            "Transfer-Encoding: chunked",
            "10000000000000030\\r\\n@\\r\\n0\\r\\n\\r\\n",
        ),
        (
            "Transfer-Encoding: chunked",
            "0x30\\r\\n@\\r\\n0\\r\\n\\r\\n",
        ),
    ]
    .iter()
    .enumerate()
    .map(|(n, (headers, body))| {
        let hidden = format!("GET /smuggled-{n} HTTP/1.1\\r\\nHost: reviews\\r\\n\\r\\n");
        format!(
            "POST /front HTTP/1.1\\r\\nHost: reviews\\r\\n{headers}\\r\\n\\r\\n{}",
            body.replace('@', &hidden)
        )
    })
    .collect::<Vec<_>>();
    for (n, payload) in smuggling.iter().enumerate() {
        let answer = raw(&mesh, &target, payload);
        println!("smuggling variant {}: {}", n + 1, answer["statuses"]);
        let statuses = answer["statuses"].as_array().cloned().unwrap_or_default();
        checks.check(
            statuses.len() <= 1
                && statuses.iter().all(|s| {
                    s.as_str()
                        .is_some_and(|s| s.starts_with('4') || s.starts_with('5'))
                }),
            format_args!("smuggling variant {}: {answer}", n + 1),
        );
    }
    checks.check(
        no_app_saw(&mesh, "/smuggled-"),
        "a smuggled request reached a pod",
    );
    checks.equal(
        status(&mesh, "client", &[&url("/after-smuggling")]),
        200,
        "client after the smuggling attempts",
    );

    // Kept failing: HTTP/2 floods. From a pod through the mesh, an endless header block and
    // streams past the limit end the connection. Straight into a tunnel (whose flow control
    // leaves nothing else to queue in), SETTINGS and PING frames whose acknowledgements are
    // never read stop being read once the acknowledgements back up, instead of queueing
    // without bound: the sender stalls. The service keeps answering others.
    for kind in ["continuation", "streams"] {
        let flood = mesh.mesh_client(
            "client",
            &[
                "h2-flood",
                "--target",
                &target,
                "--authority",
                "reviews",
                "--kind",
                kind,
                "--count",
                "20000",
            ],
        );
        println!("{kind} flood: {flood}");
        checks.check(
            flood["closed"] == true || flood["seen"]["goaway"].is_u64(),
            format_args!("{kind} flood: {flood}"),
        );
    }
    for kind in [Kind::Settings, Kind::Ping] {
        let connect = Connect::to(waypoint, format!("{VIP}:80"));
        let flood = in_netns(&node1, || async {
            flood_tunnel(
                &stolen,
                &connect,
                opening(),
                frames(kind, "reviews", 2_000_000),
            )
            .await
        });
        println!("{kind:?} flood into a tunnel: {flood:?}");
        checks.check(
            flood.status == Some(200) && (flood.stalled || flood.ended.is_some()),
            format_args!("{kind:?} flood into a tunnel: {flood:?}"),
        );
    }
    checks.equal(
        status(&mesh, "client", &[&url("/after-the-floods")]),
        200,
        "client after the floods",
    );
    checks.finish(&mesh);
}
