//! The chart's Prometheus scrape configuration (templates/prometheus.yaml): its jobs are the
//! ones the alert rules and dashboards name, and its relabelling, applied here as Prometheus
//! applies it to what pod discovery reports, keeps each component's pods (and no other) and
//! scrapes them where they serve their metrics. `promtool check config` accepts the rest of it:
//! Debian's Prometheus is built without Kubernetes discovery ("Kubernetes support has been
//! completely removed", its NEWS.Debian), so its promtool checks a copy whose jobs discover
//! targets from a file in place of the Kubernetes API. The alert rules ship in the same
//! ConfigMap, the shipped file as it is, and `promtool check rules` accepts them.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::{NAMESPACE, find, render, values};

/// A key of the `weft-prometheus` ConfigMap the chart renders.
fn prometheus_file(key: &str) -> String {
    let rendered = render(&values(&[]));
    let config_map = find(&rendered, "ConfigMap", "weft-prometheus");
    assert_eq!(config_map["metadata"]["namespace"], NAMESPACE);
    config_map["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in weft-prometheus"))
        .to_owned()
}

/// The `prometheus.yml` the chart renders, parsed.
fn scrape_config() -> (String, Json) {
    let text = prometheus_file("prometheus.yml");
    let parsed = serde_yaml::from_str(&text).expect("prometheus.yml is YAML");
    (text, parsed)
}

/// Runs `promtool` with `args`, and panics with its output unless it succeeds.
fn promtool(args: &[&std::ffi::OsStr]) -> String {
    let output = std::process::Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool, from Debian's prometheus package (`cargo xtask setup`)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}: {text}");
    text
}

/// The labels Kubernetes pod discovery gives a pod's container port, as Prometheus names them.
fn discovered(namespace: &str, pod_template: &Json, port: u64) -> BTreeMap<String, String> {
    let sanitize = |name: &str| {
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect::<String>()
    };
    let mut labels = BTreeMap::from([
        ("__address__".to_owned(), format!("10.1.2.3:{port}")),
        ("__metrics_path__".to_owned(), "/metrics".to_owned()),
        (
            "__meta_kubernetes_namespace".to_owned(),
            namespace.to_owned(),
        ),
        ("__meta_kubernetes_pod_name".to_owned(), "pod-1".to_owned()),
        ("__meta_kubernetes_pod_ip".to_owned(), "10.1.2.3".to_owned()),
        (
            "__meta_kubernetes_pod_node_name".to_owned(),
            "node-1".to_owned(),
        ),
    ]);
    for (kind, prefix) in [("labels", "label"), ("annotations", "annotation")] {
        for (key, value) in pod_template["metadata"][kind]
            .as_object()
            .into_iter()
            .flatten()
        {
            labels.insert(
                format!("__meta_kubernetes_pod_{prefix}_{}", sanitize(key)),
                value.as_str().unwrap_or_default().to_owned(),
            );
        }
    }
    labels
}

/// Prometheus' `keep` and `replace` relabelling of `labels`; `None` when a `keep` drops them.
fn relabel(rules: &Json, mut labels: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    for rule in rules.as_array().expect("relabel_configs") {
        let source: Vec<String> = rule["source_labels"]
            .as_array()
            .expect("source_labels")
            .iter()
            .map(|l| labels.get(l.as_str().unwrap()).cloned().unwrap_or_default())
            .collect();
        let source = source.join(";");
        let pattern = rule["regex"].as_str().unwrap_or("(.*)");
        // Prometheus anchors its regular expressions at both ends.
        let regex = regex::Regex::new(&format!("^(?:{pattern})$")).expect("a valid regex");
        match rule["action"].as_str().unwrap_or("replace") {
            "keep" if !regex.is_match(&source) => return None,
            "keep" => {}
            "replace" => {
                if let Some(captures) = regex.captures(&source) {
                    let mut value = String::new();
                    captures.expand(rule["replacement"].as_str().unwrap_or("$1"), &mut value);
                    labels.insert(rule["target_label"].as_str().unwrap().to_owned(), value);
                }
            }
            other => panic!("relabel action {other} is not applied here"),
        }
    }
    Some(labels)
}

fn job<'a>(config: &'a Json, name: &str) -> &'a Json {
    config["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == name)
        .unwrap_or_else(|| panic!("no job {name}"))
}

/// Where the job scrapes a pod found by its container port `port`: `(address, path)`, or
/// `None` when it leaves the pod alone.
fn scraped(job: &Json, namespace: &str, pod: &Json, port: u64) -> Option<(String, String)> {
    let labels = relabel(&job["relabel_configs"], discovered(namespace, pod, port))?;
    assert_eq!(labels["namespace"], namespace);
    assert_eq!(labels["pod"], "pod-1");
    Some((
        labels["__address__"].clone(),
        labels["__metrics_path__"].clone(),
    ))
}

fn container_ports(pod: &Json) -> Vec<u64> {
    pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["containerPort"].as_u64())
        .collect()
}

#[test]
fn the_scrape_jobs_are_the_ones_the_alerts_and_dashboards_name() {
    let (_, config) = scrape_config();
    let jobs: Vec<&str> = config["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        jobs,
        ["weft-node-agent", "weft-controller", "weft-waypoint"]
    );
    let root = crate::workspace_root();
    let mut named =
        vec![std::fs::read_to_string(root.join("deploy/prometheus/alerts.yaml")).unwrap()];
    for entry in std::fs::read_dir(root.join("deploy/grafana")).unwrap() {
        named.push(std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    let quoted = regex::Regex::new(r#"job(?:=~?)\\?"([a-z.*-]+)\\?""#).unwrap();
    let mut referenced = std::collections::BTreeSet::new();
    for text in &named {
        for captures in quoted.captures_iter(text) {
            referenced.insert(captures[1].to_owned());
        }
    }
    assert!(referenced.contains("weft-node-agent"), "{referenced:?}");
    for name in &referenced {
        let pattern = regex::Regex::new(&format!("^(?:{name})$")).unwrap();
        assert!(
            jobs.iter().any(|job| pattern.is_match(job)),
            "job {name} is queried but not scraped"
        );
    }
    assert_eq!(
        config["rule_files"],
        serde_json::json!(["alerting_rules.yml", "/etc/prometheus/rules/*.yaml"])
    );
}

#[test]
fn the_alert_rules_ship_beside_the_configuration_as_the_one_file_they_are() {
    let root = crate::workspace_root();
    let shipped = root.join("deploy/prometheus/alerts.yaml");
    // One file: deploy/prometheus/alerts.yaml is the chart's, through a link, so the two
    // cannot drift apart.
    assert_eq!(
        std::fs::canonicalize(&shipped).unwrap(),
        std::fs::canonicalize(root.join("deploy/charts/weft/files/alerts.yaml")).unwrap(),
        "deploy/prometheus/alerts.yaml must link to the chart's files/alerts.yaml"
    );
    let rules = prometheus_file("alerting_rules.yml");
    assert_eq!(
        rules,
        std::fs::read_to_string(&shipped).unwrap(),
        "the ConfigMap's alerting_rules.yml differs from deploy/prometheus/alerts.yaml"
    );
    let dir = std::env::temp_dir().join(format!("weft-chart-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("alerting_rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let checked = promtool(&["check".as_ref(), "rules".as_ref(), file.as_os_str()]);
    std::fs::remove_dir_all(&dir).unwrap();
    let groups: Json = serde_yaml::from_str(&rules).unwrap();
    let count: usize = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["rules"].as_array().unwrap().len())
        .sum();
    assert!(count > 0);
    assert!(
        checked.contains(&format!("SUCCESS: {count} rules found")),
        "{checked}"
    );
}

#[test]
fn each_job_keeps_its_component_s_pods_and_scrapes_their_metrics_port() {
    let (_, config) = scrape_config();
    let rendered = render(&values(&[]));
    let agent = &find(&rendered, "DaemonSet", "weft-node-agent")["spec"]["template"];
    let controller = &find(&rendered, "Deployment", "weft-controller")["spec"]["template"];
    // A waypoint's pod as the controller deploys it for a Gateway.
    let waypoint = serde_json::json!({
        "metadata": {
            "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint"},
            "annotations": std::collections::BTreeMap::from(
                controller::translate::provision::PROMETHEUS_ANNOTATIONS,
            ),
        },
        "spec": {"containers": [{"ports": [{"containerPort": 15020}, {"containerPort": 15008}]}]},
    });
    // The chart's classic gateway, for the Istio API (istio: ingressgateway, no Gateway name).
    let classic = render(&values(&[(
        "ingressGateway.enabled",
        serde_json::json!(true),
    )]));
    let classic = &find(&classic, "Deployment", "istio-ingressgateway")["spec"]["template"];
    // Another pod labelled by Istio's `istio` key is not a gateway.
    let mut not_a_gateway = classic.clone();
    not_a_gateway["metadata"]["labels"]["istio"] = serde_json::json!("pilot");
    assert_eq!(
        scraped(
            job(&config, "weft-waypoint"),
            NAMESPACE,
            &not_a_gateway,
            15020
        ),
        None
    );
    let cases = [
        (
            "weft-node-agent",
            NAMESPACE,
            agent,
            "10.1.2.3:15020",
            "/metrics",
        ),
        (
            "weft-controller",
            NAMESPACE,
            controller,
            "10.1.2.3:15014",
            "/metrics",
        ),
        (
            "weft-waypoint",
            "bookinfo",
            &waypoint,
            "10.1.2.3:15020",
            "/stats/prometheus",
        ),
        (
            "weft-waypoint",
            NAMESPACE,
            classic,
            "10.1.2.3:15020",
            "/stats/prometheus",
        ),
    ];
    for (name, namespace, pod, address, path) in cases {
        let ports = container_ports(pod);
        assert!(
            ports.contains(&address.rsplit(':').next().unwrap().parse().unwrap()),
            "{name}: the annotated port is not among {ports:?}"
        );
        // Found once per container port, scraped at the annotated one every time (Prometheus
        // keeps one target of identical labels).
        for port in ports {
            assert_eq!(
                scraped(job(&config, name), namespace, pod, port),
                Some((address.to_owned(), path.to_owned())),
                "{name} via port {port}"
            );
        }
        // No other component's pod is taken for this one.
        for (other, other_namespace, other_pod, _, _) in cases {
            if other != name {
                assert_eq!(
                    scraped(job(&config, name), other_namespace, other_pod, 15020),
                    None,
                    "{name} scrapes {other}'s pod"
                );
            }
        }
    }
    // A pod without the scrape annotation is left alone.
    let mut unannotated = agent.clone();
    unannotated["metadata"]["annotations"] = serde_json::json!({});
    assert_eq!(
        scraped(
            job(&config, "weft-node-agent"),
            NAMESPACE,
            &unannotated,
            15020
        ),
        None
    );
    // An IPv6 pod is addressed in brackets.
    let mut labels = discovered(NAMESPACE, agent, 15020);
    labels.insert("__meta_kubernetes_pod_ip".into(), "fd00::1:2".into());
    let relabelled = relabel(&job(&config, "weft-node-agent")["relabel_configs"], labels).unwrap();
    assert_eq!(relabelled["__address__"], "[fd00::1:2]:15020");
}

#[test]
fn promtool_accepts_the_rendered_configuration() {
    let (_, mut config) = scrape_config();
    let dir = std::env::temp_dir().join(format!("weft-chart-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let targets = dir.join("targets.json");
    std::fs::write(&targets, "[]").unwrap();
    for job in config["scrape_configs"].as_array_mut().unwrap() {
        let job = job.as_object_mut().unwrap();
        assert!(job.remove("kubernetes_sd_configs").is_some(), "{job:?}");
        job.insert(
            "file_sd_configs".into(),
            serde_json::json!([{"files": [targets.to_str().unwrap()]}]),
        );
    }
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, serde_yaml::to_string(&config).unwrap()).unwrap();
    // The ConfigMap mounted as one directory: the rules beside the configuration, found
    // through its relative `rule_files` entry.
    let rules = dir.join("alerting_rules.yml");
    std::fs::write(&rules, prometheus_file("alerting_rules.yml")).unwrap();
    let checked = promtool(&["check".as_ref(), "config".as_ref(), file.as_os_str()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        checked.contains(&format!("Checking {}", rules.display())),
        "promtool did not load the rules beside the configuration: {checked}"
    );
}
