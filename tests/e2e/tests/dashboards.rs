//! The Grafana dashboards (`deploy/grafana`) and the Prometheus alerting rules
//! (`deploy/prometheus/alerts.yaml`) against a real mesh: bookinfo runs as the demo runs it,
//! Debian's `prometheus` scrapes its agents, waypoint and controller and evaluates the rules
//! (a copy whose `for:` is 1s), and bounded traffic goes through it: pages through the
//! waypoint, jason's pages whose ratings calls the waypoint aborts with 500, the client's TCP
//! calls to details agent to agent, the client's calls to reviews that the waypoint denies, and
//! its calls to details once an L4 policy denies them at details' agent. Then every query of
//! every panel target, with the template variables filled in as Grafana fills them from the
//! same Prometheus, must answer at least one series; so must the series every alert judges
//! (its expression without its comparison), every rule must evaluate without error
//! (`/api/v1/rules` health `ok`), and the denied-requests alert must fire for reviews
//! (`/api/v1/alerts`). Every agent, waypoint and the controller report their process figures
//! and `istio_build`, and the controller its push-time histogram. Then the test breaks the mesh
//! as the availability and certificate alerts describe: it kills one node agent (the agent-down
//! alert fires for that agent alone), then stops the controller, so that the agents and the
//! waypoint, asking for certificates of [`CERTIFICATE_TTL`], can renew none (the controller-down
//! alert fires, and the certificate-expiry alert once a quarter of a lifetime is left). Needs
//! root.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::Duration,
};

use serde_json::Value;
use weft_e2e::{
    dashboards::{self, Dashboard, Variable},
    demo::{CLIENT, Demo, eventually, examples},
    observability::Observability,
};

/// The value each template variable is given where one is chosen (the others take every value
/// Prometheus has, as Grafana's "All").
const CHOSEN: &[(&str, &str)] = &[
    ("namespace", "bookinfo"),
    // The Deployment reviews-v3 (workloads are named as Istio names them): jason's pages reach
    // it and it calls ratings, so its incoming and outgoing panels both have data.
    ("workload", "reviews-v3"),
    ("service", "reviews.bookinfo.svc.cluster.local"),
];

/// An L4 policy (a selector, no HTTP attributes): details' agent refuses the client's
/// connections.
const DENY_CLIENT_TO_DETAILS: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: details-deny-client
  namespace: bookinfo
spec:
  selector:
    matchLabels:
      app: details
  action: DENY
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/bookinfo/sa/client]
";

/// How many of the client's calls to reviews the waypoint denies once their series exists:
/// against the 60 pages' calls, well over the alert's tenth.
const DENIED_REVIEWS: u32 = 20;

/// The workload certificates' lifetime the agents ask for. The CA starts each certificate a
/// minute in the past (peers' clock skew), so the lifetime the alert judges is 3 minutes: the
/// agents renew with a third of it left (at half of what they asked for) while the CA answers;
/// once it stops, a quarter is left at most 75 s after the last renewal.
const CERTIFICATE_TTL: Duration = Duration::from_secs(120);

/// How long an alert may take to fire once its condition holds: the test copy's `for:` and
/// evaluation interval are a second, scrapes every second, a rate needs two samples in its
/// window; the certificate alert waits for three quarters of [`CERTIFICATE_TTL`] on top.
const ALERT_FIRES_WITHIN: Duration = Duration::from_secs(60);

/// The certificate-expiry alert.
const EXPIRING_SOON: &str = "WeftWorkloadCertificateExpiringSoon";

/// The series a query answers, or why it answers none.
fn answer(observability: &Observability, expr: &str) -> Result<usize, String> {
    if expr.contains('$') {
        return Err(format!("a variable left unfilled in {expr}"));
    }
    match observability.query(expr) {
        Ok(series) if series.is_empty() => Err(format!("no data for {expr}")),
        Ok(series) => Ok(series.len()),
        Err(error) => Err(format!("{error:#}")),
    }
}

/// The IPv4 addresses `name` resolves to in the client pod through the C library's resolver,
/// whose `/etc/resolv.conf` (bind-mounted in a mount namespace of its own) names `nameserver`.
fn resolve_in_client(demo: &Demo, nameserver: Ipv4Addr, name: &str) -> Vec<IpAddr> {
    let resolv_conf = demo.cluster.dir().join("client-resolv.conf");
    std::fs::write(&resolv_conf, format!("nameserver {nameserver}\n")).unwrap();
    let output = demo
        .cluster
        .pod_command(CLIENT, "unshare")
        .args([
            "--mount",
            "sh",
            "-c",
            r#"mount --bind "$0" /etc/resolv.conf && exec getent ahostsv4 "$1""#,
        ])
        .arg(&resolv_conf)
        .arg(name)
        .output()
        .expect("run getent");
    let mut addresses: Vec<IpAddr> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    addresses.dedup();
    addresses
}

/// Grafana's values for `dashboard`'s variables, each from its own query on Prometheus.
fn variable_values(
    observability: &Observability,
    dashboard: &Dashboard,
) -> Result<BTreeMap<String, String>, String> {
    let mut values = BTreeMap::new();
    for variable in dashboard.variables() {
        match variable {
            Variable::Datasource => {}
            Variable::Custom { name, current } => {
                values.insert(name, current);
            }
            Variable::Query {
                name,
                definition,
                all,
            } => {
                let (query, label) = dashboards::label_values_query(&definition)
                    .ok_or_else(|| format!("{name}: {definition} is not label_values(...)"))?;
                let query = dashboards::substitute(&query, &values);
                let found: Vec<String> = observability
                    .query(&query)
                    .map_err(|e| format!("{name}: {e:#}"))?
                    .iter()
                    .filter_map(|s| s["metric"][&label].as_str().map(str::to_owned))
                    .collect();
                let value = match CHOSEN.iter().find(|(n, _)| *n == name) {
                    Some((_, chosen)) if found.iter().any(|f| f == chosen) => chosen.to_string(),
                    Some((_, chosen)) => {
                        return Err(format!("{name}: {chosen} not among {found:?} ({query})"));
                    }
                    None if all && !found.is_empty() => found.join("|"),
                    None => return Err(format!("{name}: no value to choose in {found:?}")),
                };
                values.insert(name, value);
            }
        }
    }
    Ok(values)
}

#[test]
fn every_dashboard_query_and_alert_rule_answers_from_prometheus_scraping_bookinfo() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/bookinfo");
    let examples = examples::load(&dir).expect("the bookinfo examples");
    let mut demo =
        Demo::on_testbed_with_certificate_ttl(&examples, CERTIFICATE_TTL).expect("bookinfo starts");
    let observability = demo
        .observability
        .as_ref()
        .expect("the testbed runs Prometheus");

    // The shipped rules, every alert's `for:` shortened, in place of the shipped copy.
    let rules = dashboards::rules(&dashboards::alert_rules_file()).expect("the rules file");
    let shipped = std::fs::read_to_string(dashboards::alert_rules_file()).unwrap();
    let copy = dashboards::with_for(&shipped, "1s").unwrap();
    observability
        .replace_rules("alerts.yaml", &copy, |loaded| {
            let alerts: Vec<&Value> = loaded["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            // `health` is `unknown` until a rule's first evaluation after the reload.
            alerts.len() == rules.len()
                && alerts
                    .iter()
                    .all(|a| a["duration"] == 1 && a["health"] != "unknown")
        })
        .expect("Prometheus loads the test copy of the rules");

    // Waits until Prometheus has scraped `count` of `series` and every one of them twice since
    // it appeared (a rate needs two samples in its window; an increase before a series' first
    // sample is not in any rate).
    let scraped = |series: &str, count: u32| {
        observability
            .wait_for_value(&format!("sum({series})"), f64::from(count))
            .expect("Prometheus scrapes the traffic");
        observability
            .wait_for_value(&format!("min(count_over_time({series}[1m]))"), 2.0)
            .expect("Prometheus scrapes the traffic twice");
    };
    const DENIED: &str = "istio_requests_total{reporter=\"waypoint\",destination_service_name=\"reviews\",response_code=\"403\"}";

    // Traffic, each loop bounded. The first denied call creates its series; the rest, once it
    // is scraped, are what the alert's rate measures.
    let reviews = demo.url("reviews", "/reviews/0");
    assert_eq!(demo.curl_with(CLIENT, &[&reviews]).status, 403);
    let pages = demo.productpage(50, &[]).expect("productpage");
    assert!(pages.iter().all(|(status, _)| *status == 200));
    let jason = demo
        .productpage(10, &["-H", "end-user: jason"])
        .expect("jason's pages");
    assert!(jason.iter().all(|(status, _)| *status == 200));
    let details = demo.url("details", "/details/0");
    for _ in 0..5 {
        assert_eq!(demo.curl_with(CLIENT, &[&details]).status, 200);
    }
    scraped(DENIED, 1);
    for _ in 0..DENIED_REVIEWS {
        assert_eq!(demo.curl_with(CLIENT, &[&reviews]).status, 403);
    }
    demo.cluster
        .apply("90-deny-client-to-details.yaml", DENY_CLIENT_TO_DETAILS)
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || demo
            .curl_with(CLIENT, &[&details])
            .status
            != 200),
        "details' agent never denied the client"
    );
    for _ in 0..3 {
        assert_ne!(demo.curl_with(CLIENT, &[&details]).status, 200);
    }
    // DNS: the client's nameserver is another pod of the mesh, which serves no DNS; the
    // client's agent captures the queries before they reach it.
    let nameserver = demo.cluster.pod_ip(&demo.pod_of("details").name);
    let (reviews_vip, _) = demo.services["reviews"];
    assert_eq!(
        resolve_in_client(&demo, nameserver, "reviews.bookinfo.svc.cluster.local."),
        vec![IpAddr::V4(reviews_vip)],
        "the client's agent does not answer for reviews\n{}",
        demo.cluster.logs()
    );
    assert!(resolve_in_client(&demo, nameserver, "partner.example.org.").is_empty());
    scraped(DENIED, 1 + DENIED_REVIEWS);
    scraped("istio_dns_requests_total{job=\"weft-node-agent\"}", 2);
    scraped(
        "istio_dns_upstream_failures_total{job=\"weft-node-agent\"}",
        1,
    );
    scraped(
        "istio_requests_total{reporter=\"waypoint\",response_flags=\"FI\"}",
        1,
    );
    scraped(
        "istio_tcp_connections_closed_total{reporter=\"destination\",destination_workload=\"details-v1\",response_flags=\"DENY\"}",
        4,
    );

    // Every panel target of every dashboard answers.
    let mut failures = Vec::new();
    let mut answered = 0;
    let all = dashboards::dashboards().expect("the dashboards");
    assert_eq!(all.len(), 6);
    for dashboard in &all {
        let values = match variable_values(observability, dashboard) {
            Ok(values) => values,
            Err(error) => {
                failures.push(format!("{}: variable {error}", dashboard.file));
                continue;
            }
        };
        for query in dashboard.queries() {
            let expr = dashboards::substitute(&query.expr, &values);
            match answer(observability, &expr) {
                Ok(_) => answered += 1,
                Err(error) => {
                    failures.push(format!("{} {:?}: {error}", dashboard.file, query.panel))
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(answered >= 100, "only {answered} panel queries");
    // The check tells a mistyped label from a real one.
    let mistyped = "sum(rate(istio_requests_total{reporter=\"waypoint\",destination_servce=~\"reviews.bookinfo.svc.cluster.local\"}[1m]))";
    assert!(answer(observability, mistyped).is_err());
    assert!(answer(observability, &mistyped.replace("servce", "service")).is_ok());

    // Every rule loaded and evaluates without error; the series each alert judges exist.
    let loaded = observability.api("/api/v1/rules").expect("the rules");
    let loaded: Vec<&Value> = loaded["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    for rule in &rules {
        let state = loaded
            .iter()
            .find(|l| l["name"] == rule.name.as_str())
            .unwrap_or_else(|| panic!("{} not loaded: {loaded:#?}", rule.name));
        assert_eq!(
            state["health"], "ok",
            "{} does not evaluate: {state:#}",
            rule.name
        );
        let operand = dashboards::without_comparison(&rule.expr);
        if let Err(error) = answer(observability, operand) {
            failures.push(format!("rule {} ({}): {error}", rule.name, rule.group));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // The denied-requests alert fires for reviews; no agent is down, no certificate is late.
    let firing = wait_firing(observability, ALERT_FIRES_WITHIN, |alerts| {
        alerts.iter().any(|a| {
            a["labels"]["alertname"] == "WeftRequestsDenied"
                && a["labels"]["destination_service_name"] == "reviews"
        })
    });
    assert!(
        firing.iter().all(|a| !matches!(
            a["labels"]["alertname"].as_str(),
            Some("WeftNodeAgentDown" | "WeftWaypointDown" | "WeftControllerDown" | EXPIRING_SOON)
        )),
        "{firing:#?}"
    );

    process_figures_and_builds(observability);

    // An agent killed: its alert fires, naming it, and no other agent's.
    let node = demo.node_of(CLIENT).to_owned();
    let (_, node_ip) = demo.cluster.agent(&node);
    let instance = format!("{node_ip}:15020");
    demo.cluster.kill_agent(&node).expect("the agent killed");
    let agent_down = |alert: &Value| alert["labels"]["alertname"] == "WeftNodeAgentDown";
    let firing = wait_firing(observability, ALERT_FIRES_WITHIN, |alerts| {
        alerts
            .iter()
            .any(|a| agent_down(a) && a["labels"]["instance"] == instance.as_str())
    });
    let down: Vec<&Value> = firing.iter().filter(|a| agent_down(a)).collect();
    assert_eq!(down.len(), 1, "only {instance}'s agent is down: {down:#?}");

    // The controller stopped: no certificate is renewed, so the certificates the agents and the
    // waypoints hold (all of the same lifetime) reach their last quarter.
    let held = observability
        .query("weft_workload_certificate_expiry_timestamp_seconds")
        .expect("the certificates held");
    let identities: Vec<&str> = held
        .iter()
        .filter_map(|s| s["metric"]["identity"].as_str())
        .collect();
    assert!(
        held.iter().any(|s| s["metric"]["job"] == "weft-node-agent"),
        "the agents hold no certificate: {held:#?}"
    );
    // Renewed in time so far: no certificate is in its last quarter.
    let condition = &rules
        .iter()
        .find(|r| r.name == EXPIRING_SOON)
        .expect("the shipped certificate alert")
        .expr;
    let renewed = observability
        .query(condition)
        .expect("the certificate alert's expression");
    assert!(renewed.is_empty(), "{renewed:#?}");
    demo.cluster
        .stop_controller()
        .expect("the controller stopped");
    let expiring = |alert: &Value| alert["labels"]["alertname"] == EXPIRING_SOON;
    let within = ALERT_FIRES_WITHIN + CERTIFICATE_TTL * 3 / 4;
    let firing = wait_firing(observability, within, |alerts| {
        alerts.iter().any(expiring)
            && alerts
                .iter()
                .any(|a| a["labels"]["alertname"] == "WeftControllerDown")
    });
    for alert in firing.iter().filter(|a| expiring(a)) {
        let identity = alert["labels"]["identity"].as_str().unwrap_or_default();
        assert!(identities.contains(&identity), "{alert:#}");
    }
}

/// Waits (for up to `within`) until `fired` holds of the firing alerts; returns them.
fn wait_firing(
    observability: &Observability,
    within: Duration,
    fired: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut firing = Vec::new();
    let done = eventually(within, || {
        let alerts = observability.api("/api/v1/alerts").expect("the alerts");
        firing = alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing")
            .cloned()
            .collect();
        fired(&firing)
    });
    assert!(done, "not fired within {within:?}: {firing:#?}");
    firing
}

/// Every agent, waypoint and the controller report the process collector's figures and
/// `istio_build` with their Istio component and version; the controller its push-time
/// histogram in istiod's buckets, with the pushes that configured the mesh counted.
fn process_figures_and_builds(observability: &Observability) {
    let by_job = |query: &str| -> BTreeMap<String, f64> {
        observability
            .query(query)
            .unwrap_or_else(|e| panic!("{query}: {e:#}"))
            .iter()
            .map(|s| {
                let job = s["metric"]["job"].as_str().unwrap_or_default().to_owned();
                let value = s["value"][1].as_str().and_then(|v| v.parse().ok());
                (job, value.unwrap_or(f64::NAN))
            })
            .collect()
    };
    let targets = by_job("count by (job) (up == 1)");
    assert_eq!(targets.len(), 3, "{targets:?}");
    for metric in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert_eq!(
            by_job(&format!("count by (job) ({metric} > 0)")),
            targets,
            "{metric} from every target"
        );
    }
    // Each process's figures are its own: a start time within the last hours, descriptors
    // below their limit, some CPU used.
    assert_eq!(
        by_job("count by (job) (time() - process_start_time_seconds < 3600)"),
        targets
    );
    assert_eq!(
        by_job("count by (job) (process_open_fds < process_max_fds)"),
        targets
    );
    assert_eq!(
        by_job("count by (job) (rate(process_cpu_seconds_total[1m]) >= 0)"),
        targets
    );
    let version = env!("CARGO_PKG_VERSION");
    for (job, component) in [
        ("weft-node-agent", "ztunnel"),
        ("weft-waypoint", "proxy"),
        ("weft-controller", "pilot"),
    ] {
        let query = format!(
            "count(istio_build{{job=\"{job}\",component=\"{component}\",tag=\"{version}\"}} == 1)"
        );
        let count = observability.value(&query).expect("istio_build");
        assert_eq!(Some(&count), targets.get(job), "{query}");
    }
    let buckets = observability
        .query("pilot_proxy_convergence_time_bucket{job=\"weft-controller\"}")
        .expect("the convergence buckets");
    let mut bounds: Vec<&str> = buckets
        .iter()
        .filter_map(|s| s["metric"]["le"].as_str())
        .collect();
    bounds.sort_by(|a, b| {
        let bound = |s: &str| s.parse::<f64>().unwrap_or(f64::INFINITY);
        bound(a).total_cmp(&bound(b))
    });
    assert_eq!(
        bounds,
        [
            "0.1", "0.5", "1.0", "3.0", "5.0", "10.0", "20.0", "30.0", "+Inf"
        ]
    );
    // One query, so both series come from the same scrape.
    let untimed = observability
        .query("sum(pilot_xds_pushes{job=\"weft-controller\"}) - sum(pilot_proxy_convergence_time_count{job=\"weft-controller\"})")
        .expect("the pushes");
    // Convergence is observed once per push to a proxy, which sends a response per type it
    // changed; a subscription's first responses are no push.
    assert_eq!(untimed.len(), 1, "{untimed:#?}");
    let responses_beyond = untimed[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .expect("a number");
    assert!(
        responses_beyond >= 0.0,
        "more convergences than responses: {untimed:#?}"
    );
    assert!(
        observability
            .value("pilot_proxy_convergence_time_count{job=\"weft-controller\"}")
            .expect("the pushes timed")
            > 0.0
    );
    // Pushes by istiod's `type`: the agents' workloads (`wds`) and the waypoint's configuration
    // were pushed, and every type is one of the names the controller documents.
    let pushed = observability
        .query("pilot_xds_pushes{job=\"weft-controller\"} > 0")
        .expect("the pushes by type");
    let types: BTreeSet<&str> = pushed
        .iter()
        .filter_map(|s| s["metric"]["type"].as_str())
        .collect();
    assert!(
        types.contains("wds") && types.contains("waypoint_config"),
        "{pushed:#?}"
    );
    let named = [
        "wds",
        "wads",
        "sds",
        "waypoint_config",
        "mesh_config",
        "source_workload",
    ];
    assert!(types.iter().all(|t| named.contains(t)), "{pushed:#?}");
}
