//! Golden tests of the whole translation: YAML in `testdata/<name>.yaml`, everything the
//! controller serves (addresses, authorizations, waypoint configs) and every problem it reports
//! in `testdata/<name>.golden`.
//!
//! Regenerate after an intended change with
//! `WEFT_UPDATE_GOLDEN=1 cargo test -p controller --lib translate::tests`, then review the diff.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use weft_proto::istio::security::{self as sec, string_match::MatchType};
use weft_proto::istio::workload::{self as wl, address, gateway_address};

use super::*;
use crate::loader;

const UPDATE_ENV: &str = "WEFT_UPDATE_GOLDEN";

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/translate/testdata")
}

/// Every golden input: the fixtures and the bookinfo example.
pub(super) fn golden_inputs() -> Vec<(&'static str, PathBuf)> {
    let mut inputs: Vec<(&'static str, PathBuf)> = GOLDENS
        .iter()
        .map(|name| (*name, testdata().join(format!("{name}.yaml"))))
        .collect();
    inputs.push((
        "bookinfo",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/bookinfo"),
    ));
    inputs
}

const GOLDENS: [&str; 3] = [
    "waypoint_config",
    "waypoint_assignment",
    "translation_errors",
];

/// Loads YAML, insisting every document loads and validates: fixtures are real configuration.
pub(super) fn load(path: &Path) -> ConfigIndex {
    let report = loader::load_paths(&[path]);
    assert!(
        report.errors.is_empty(),
        "{} does not load: {:?}",
        path.display(),
        report.errors
    );
    let (index, rejections) = ConfigIndex::from_report(report, None);
    assert!(
        rejections.is_empty(),
        "{} is invalid: {rejections:?}",
        path.display()
    );
    index
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default()).to_string(),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).unwrap_or_default()).to_string(),
        _ => format!("<{} bytes>", bytes.len()),
    }
}

fn gateway_text(gateway: &Option<wl::GatewayAddress>) -> String {
    let Some(gateway) = gateway else {
        return "none".to_owned();
    };
    let destination = match &gateway.destination {
        Some(gateway_address::Destination::Address(a)) => ip_text(&a.address),
        Some(gateway_address::Destination::Hostname(h)) => {
            format!("{}/{}", h.namespace, h.hostname)
        }
        None => "<none>".to_owned(),
    };
    format!("{destination}:{}", gateway.hbone_mtls_port)
}

fn render_address(out: &mut String, name: &str, address: &wl::Address) {
    match &address.r#type {
        Some(address::Type::Workload(w)) => {
            let tunnel = wl::TunnelProtocol::try_from(w.tunnel_protocol)
                .map_or("?".to_owned(), |t| t.as_str_name().to_owned());
            let status = wl::WorkloadStatus::try_from(w.status)
                .map_or("?".to_owned(), |s| s.as_str_name().to_owned());
            let ips: Vec<String> = w.addresses.iter().map(|a| ip_text(a)).collect();
            let _ = writeln!(out, "workload {name}");
            let _ = writeln!(out, "  name: {}/{}", w.namespace, w.name);
            let _ = writeln!(out, "  addresses: {}", ips.join(", "));
            let _ = writeln!(out, "  tunnel: {tunnel}  status: {status}");
            let _ = writeln!(
                out,
                "  identity: spiffe://{}/ns/{}/sa/{}",
                w.trust_domain, w.namespace, w.service_account
            );
            let _ = writeln!(out, "  node: {}  cluster: {}", w.node, w.cluster_id);
            let _ = writeln!(
                out,
                "  workload: {}  canonical: {}/{}",
                w.workload_name, w.canonical_name, w.canonical_revision
            );
            let _ = writeln!(out, "  waypoint: {}", gateway_text(&w.waypoint));
            for (service, ports) in &w.services {
                let ports: Vec<String> = ports
                    .ports
                    .iter()
                    .map(|p| format!("{}->{}", p.service_port, p.target_port))
                    .collect();
                let _ = writeln!(out, "  service {service}: [{}]", ports.join(", "));
            }
            let _ = writeln!(out, "  policies: [{}]", w.authorization_policies.join(", "));
        }
        Some(address::Type::Service(s)) => {
            let vips: Vec<String> = s.addresses.iter().map(|a| ip_text(&a.address)).collect();
            let ports: Vec<String> = s
                .ports
                .iter()
                .map(|p| format!("{}->{}", p.service_port, p.target_port))
                .collect();
            let _ = writeln!(out, "service {name}");
            let _ = writeln!(
                out,
                "  name: {}/{}  hostname: {}",
                s.namespace, s.name, s.hostname
            );
            let _ = writeln!(
                out,
                "  vips: [{}]  ports: [{}]",
                vips.join(", "),
                ports.join(", ")
            );
            let _ = writeln!(out, "  waypoint: {}", gateway_text(&s.waypoint));
        }
        None => {
            let _ = writeln!(out, "address {name}: empty");
        }
    }
}

fn string_match_text(m: &sec::StringMatch) -> String {
    match &m.match_type {
        Some(MatchType::Exact(v)) => format!("exact:{v}"),
        Some(MatchType::Prefix(v)) => format!("prefix:{v}"),
        Some(MatchType::Suffix(v)) => format!("suffix:{v}"),
        Some(MatchType::Presence(())) => "presence".to_owned(),
        None => "<none>".to_owned(),
    }
}

fn render_match(m: &sec::Match) -> String {
    let mut parts = Vec::new();
    let mut strings = |label: &str, values: &[sec::StringMatch]| {
        if !values.is_empty() {
            let v: Vec<String> = values.iter().map(string_match_text).collect();
            parts.push(format!("{label}=[{}]", v.join(", ")));
        }
    };
    strings("namespaces", &m.namespaces);
    strings("not_namespaces", &m.not_namespaces);
    strings("principals", &m.principals);
    strings("not_principals", &m.not_principals);
    let mut ips = |label: &str, values: &[sec::Address]| {
        if !values.is_empty() {
            let v: Vec<String> = values
                .iter()
                .map(|a| format!("{}/{}", ip_text(&a.address), a.length))
                .collect();
            parts.push(format!("{label}=[{}]", v.join(", ")));
        }
    };
    ips("source_ips", &m.source_ips);
    ips("not_source_ips", &m.not_source_ips);
    if !m.destination_ports.is_empty() {
        parts.push(format!("destination_ports={:?}", m.destination_ports));
    }
    if !m.not_destination_ports.is_empty() {
        parts.push(format!(
            "not_destination_ports={:?}",
            m.not_destination_ports
        ));
    }
    if parts.is_empty() {
        "<empty>".to_owned()
    } else {
        parts.join(" ")
    }
}

fn render_authorization(out: &mut String, name: &str, auth: &sec::Authorization) {
    let scope = sec::Scope::try_from(auth.scope).map_or("?", |s| s.as_str_name());
    let action = sec::Action::try_from(auth.action).map_or("?", |a| a.as_str_name());
    let _ = writeln!(
        out,
        "authorization {name}\n  scope: {scope}  action: {action}  rules: {}",
        auth.rules.len()
    );
    for (i, rule) in auth.rules.iter().enumerate() {
        for clause in &rule.clauses {
            let matches: Vec<String> = clause.matches.iter().map(render_match).collect();
            let _ = writeln!(out, "  rule {i}: any-of {{ {} }}", matches.join(" | "));
        }
    }
}

/// `{:#?}` without the lines that only state a default (`None`, `""`, `[]`, `{}`, `0`,
/// `false`): an absent field is a default one. `tunnel: None` is the enum value (plain TCP),
/// not an absent option, and stays.
fn compact_debug(value: &impl std::fmt::Debug) -> String {
    let text = format!("{value:#?}");
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        let is_default = trimmed.split_once(": ").is_some_and(|(field, value)| {
            !field.starts_with('"')
                && field != "tunnel"
                && matches!(value, "None," | "\"\"," | "[]," | "{}," | "0," | "false,")
        });
        if !is_default {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn render(index: &ConfigIndex, settings: &MeshSettings) -> String {
    let translation = translate(index, settings);
    let mut out = String::new();
    let _ = writeln!(out, "# addresses");
    for (name, address) in &translation.addresses {
        render_address(&mut out, name, address);
    }
    let _ = writeln!(out, "\n# authorizations");
    for (name, auth) in &translation.authorizations {
        render_authorization(&mut out, name, auth);
    }
    let _ = writeln!(out, "\n# waypoints");
    for (name, waypoint) in &translation.waypoints {
        let _ = writeln!(out, "waypoint {name}");
        out.push_str(&compact_debug(waypoint));
    }
    let _ = writeln!(out, "\n# source workloads");
    for (name, source) in &translation.source_workloads {
        let _ = writeln!(out, "source {name}");
        out.push_str(&compact_debug(source));
    }
    let _ = writeln!(out, "\n# problems");
    for problem in &translation.problems {
        let _ = writeln!(out, "{problem}");
    }
    out
}

fn check_golden(name: &str, input: &Path) {
    let index = load(input);
    let settings = MeshSettings::default();
    let actual = render(&index, &settings);
    // A pure function: the same index gives the same text.
    assert_eq!(
        actual,
        render(&index, &settings),
        "{name} is not deterministic"
    );
    let golden = testdata().join(format!("{name}.golden"));
    if std::env::var_os(UPDATE_ENV).is_some() {
        std::fs::write(&golden, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with {UPDATE_ENV}=1 to create it",
            golden.display()
        )
    });
    if actual != expected {
        let first_difference = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .unwrap_or_else(|| actual.lines().count().min(expected.lines().count()));
        panic!(
            "{name}: output differs from {} at line {}:\n  actual:   {:?}\n  expected: {:?}\n\
             (if intended, run with {UPDATE_ENV}=1 and review the diff)",
            golden.display(),
            first_difference + 1,
            actual.lines().nth(first_difference),
            expected.lines().nth(first_difference),
        );
    }
}

#[test]
fn waypoint_config() {
    check_golden("waypoint_config", &testdata().join("waypoint_config.yaml"));
}

#[test]
fn waypoint_assignment() {
    check_golden(
        "waypoint_assignment",
        &testdata().join("waypoint_assignment.yaml"),
    );
}

#[test]
fn translation_errors() {
    check_golden(
        "translation_errors",
        &testdata().join("translation_errors.yaml"),
    );
}

#[test]
fn bookinfo_example() {
    let (_, path) = golden_inputs()
        .into_iter()
        .find(|(name, _)| *name == "bookinfo")
        .unwrap();
    check_golden("bookinfo", &path);
}

/// The control plane's cost per edit: a pod that backs no service a waypoint serves changes no
/// waypoint's configuration, only the source workloads (one more) and the agents' addresses.
#[test]
fn a_pod_added_elsewhere_changes_no_waypoint_config_only_its_source_workload() {
    let (_, path) = golden_inputs()
        .into_iter()
        .find(|(name, _)| *name == "bookinfo")
        .unwrap();
    let index = load(&path);
    let settings = MeshSettings::default();
    let before = translate(&index, &settings);
    let mut added = index.clone();
    let (key, template) = index
        .pods
        .iter()
        .find(|(_, pod)| crate::translate::resolve::enrolled(&index, pod))
        .expect("bookinfo has an enrolled pod");
    let mut pod = template.clone();
    pod.metadata.name = Some("batch-job".to_owned());
    pod.metadata.uid = Some("uid-batch-job".to_owned());
    pod.metadata.labels = Some([("app".to_owned(), "batch-job".to_owned())].into());
    let status = pod.status.as_mut().unwrap();
    status.pod_ip = Some("10.244.9.99".to_owned());
    status.pod_ips = None;
    let key = format!("{}/batch-job", key.split_once('/').unwrap().0);
    added.pods.insert(key, pod);
    let after = translate(&added, &settings);
    assert!(!before.waypoints.is_empty());
    assert_eq!(after.waypoints, before.waypoints);
    let new_sources: Vec<&String> = after
        .source_workloads
        .keys()
        .filter(|k| !before.source_workloads.contains_key(*k))
        .collect();
    assert_eq!(new_sources, ["10.244.9.99"]);
    assert_eq!(
        after.source_workloads["10.244.9.99"].labels["app"],
        "batch-job"
    );
    assert_eq!(
        after.source_workloads.len(),
        before.source_workloads.len() + 1
    );
}

#[test]
fn golden_waypoint_configs_are_accepted_by_the_waypoint() {
    let settings = MeshSettings::default();
    let mut checked = 0;
    for (name, input) in golden_inputs() {
        let translation = translate(&load(&input), &settings);
        for (resource, config) in translation.waypoints {
            let services = config.services.len();
            let converted = ::waypoint::model::WaypointConfig::try_from(config)
                .unwrap_or_else(|e| panic!("{name}: waypoint {resource} refuses its config: {e}"));
            assert_eq!(converted.services.len(), services, "{name}: {resource}");
            checked += 1;
        }
    }
    // The fixtures hold waypoints: an empty loop would prove nothing.
    assert!(checked >= 4, "only {checked} waypoint configs checked");
}

/// The waypoint serves directly exactly the pods whose agent accepts only it: a pod addressed
/// directly is carried by HBONE to its waypoint, which must know it (or the traffic has
/// nowhere to go), and must not claim a pod that does not route through it.
#[test]
fn each_waypoint_serves_directly_the_pods_that_require_it() {
    let settings = MeshSettings::default();
    let mut compared = 0;
    for (name, input) in golden_inputs() {
        let index = load(&input);
        let translation = translate(&index, &settings);
        for gateway in resolve::waypoint_gateways(&index) {
            let waypoint = resolve::WaypointRef::of(gateway);
            let address = resolve::waypoint_address(&index, &settings, &waypoint);
            let mut required: Vec<String> = translation
                .addresses
                .values()
                .filter_map(|a| match &a.r#type {
                    Some(address::Type::Workload(w)) if w.waypoint.as_ref() == Some(&address) => {
                        Some(w.addresses.iter().map(|a| ip_text(a)).collect::<Vec<_>>())
                    }
                    _ => None,
                })
                .flatten()
                .collect();
            required.sort();
            let config = &translation.waypoints[&waypoint.to_string()];
            let mut served: Vec<String> =
                config.workloads.iter().map(|w| w.address.clone()).collect();
            served.sort();
            assert_eq!(served, required, "{name}: waypoint {waypoint}");
            compared += served.len();
        }
    }
    assert!(compared >= 4, "only {compared} workloads compared");
}

#[test]
fn compact_debug_drops_only_default_lines() {
    #[derive(Debug)]
    #[allow(dead_code)]
    struct Sample {
        empty: String,
        zero: u32,
        flag: bool,
        set: u32,
        text: &'static str,
        map: std::collections::BTreeMap<&'static str, u32>,
    }
    let text = compact_debug(&Sample {
        empty: String::new(),
        zero: 0,
        flag: false,
        set: 7,
        text: "x",
        map: [("k", 0)].into(),
    });
    assert_eq!(
        text,
        "Sample {\n    set: 7,\n    text: \"x\",\n    map: {\n        \"k\": 0,\n    },\n}\n"
    );
}
