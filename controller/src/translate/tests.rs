//! Golden tests: YAML fixtures in `testdata/*.yaml`, expected output in `testdata/*.golden`.
//! Regenerate with `WEFT_UPDATE_GOLDEN=1 cargo test -p controller --lib translate`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use weft_proto::istio::security::{self as sec, string_match::MatchType};
use weft_proto::istio::workload::{self as wl, address, gateway_address};

use super::*;
use crate::loader;
use crate::model::Resource;
use crate::validation;

const UPDATE_ENV: &str = "WEFT_UPDATE_GOLDEN";

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/translate/testdata")
}

/// Loads YAML files, insisting every document loads and validates: fixtures are real config.
fn load(paths: &[PathBuf]) -> Snapshot {
    let report = loader::load_paths(paths);
    assert!(
        report.errors.is_empty(),
        "fixture does not load: {:?}",
        report.errors
    );
    let mut resources: Vec<Resource> = Vec::new();
    for loaded in report.resources {
        let findings = validation::validate(&loaded.resource);
        assert!(
            findings.is_empty(),
            "{} is invalid: {findings:?}",
            loaded.location
        );
        resources.push(loaded.resource);
    }
    Snapshot::from_resources(resources)
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
            writeln!(out, "workload {name}").unwrap();
            writeln!(out, "  name: {}/{}", w.namespace, w.name).unwrap();
            writeln!(out, "  addresses: {}", ips.join(", ")).unwrap();
            writeln!(out, "  tunnel: {tunnel}  status: {status}").unwrap();
            writeln!(
                out,
                "  identity: spiffe://{}/ns/{}/sa/{}",
                w.trust_domain, w.namespace, w.service_account
            )
            .unwrap();
            writeln!(out, "  node: {}  cluster: {}", w.node, w.cluster_id).unwrap();
            writeln!(
                out,
                "  workload: {}  canonical: {}/{}",
                w.workload_name, w.canonical_name, w.canonical_revision
            )
            .unwrap();
            writeln!(out, "  waypoint: {}", gateway_text(&w.waypoint)).unwrap();
            let mut services: Vec<_> = w.services.iter().collect();
            services.sort_by(|a, b| a.0.cmp(b.0));
            for (service, ports) in services {
                let ports: Vec<String> = ports
                    .ports
                    .iter()
                    .map(|p| format!("{}->{}", p.service_port, p.target_port))
                    .collect();
                writeln!(out, "  service {service}: [{}]", ports.join(", ")).unwrap();
            }
            writeln!(out, "  policies: [{}]", w.authorization_policies.join(", ")).unwrap();
        }
        Some(address::Type::Service(s)) => {
            let vips: Vec<String> = s.addresses.iter().map(|a| ip_text(&a.address)).collect();
            let ports: Vec<String> = s
                .ports
                .iter()
                .map(|p| format!("{}->{}", p.service_port, p.target_port))
                .collect();
            writeln!(out, "service {name}").unwrap();
            writeln!(
                out,
                "  name: {}/{}  hostname: {}",
                s.namespace, s.name, s.hostname
            )
            .unwrap();
            writeln!(
                out,
                "  vips: [{}]  ports: [{}]",
                vips.join(", "),
                ports.join(", ")
            )
            .unwrap();
            writeln!(out, "  waypoint: {}", gateway_text(&s.waypoint)).unwrap();
            writeln!(
                out,
                "  subject_alt_names: [{}]",
                s.subject_alt_names.join(", ")
            )
            .unwrap();
        }
        None => writeln!(out, "address {name}: empty").unwrap(),
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
    let mut accounts = |label: &str, values: &[sec::ServiceAccountMatch]| {
        if !values.is_empty() {
            let v: Vec<String> = values
                .iter()
                .map(|sa| format!("{}/{}", sa.namespace, sa.service_account))
                .collect();
            parts.push(format!("{label}=[{}]", v.join(", ")));
        }
    };
    accounts("service_accounts", &m.service_accounts);
    accounts("not_service_accounts", &m.not_service_accounts);
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
    ips("destination_ips", &m.destination_ips);
    ips("not_destination_ips", &m.not_destination_ips);
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
    writeln!(
        out,
        "authorization {name}\n  name: {}/{}  scope: {scope}  action: {action}  dry_run: {}",
        auth.namespace, auth.name, auth.dry_run
    )
    .unwrap();
    if auth.rules.is_empty() {
        writeln!(out, "  rules: none").unwrap();
    }
    for (i, rule) in auth.rules.iter().enumerate() {
        writeln!(
            out,
            "  rule {i}:{}",
            if rule.clauses.is_empty() { " any" } else { "" }
        )
        .unwrap();
        for clause in &rule.clauses {
            let matches: Vec<String> = clause.matches.iter().map(render_match).collect();
            writeln!(out, "    all-of: any-of {{ {} }}", matches.join(" | ")).unwrap();
        }
    }
}

/// Sorts the entries of map blocks in `{:#?}` output (protobuf maps are `HashMap`s), so the
/// text is stable. A block is a line ending in `{`, `[` or `(` up to the line that closes it at
/// the same indentation; a map block is a `{` block whose entries start with a quoted key.
fn canonical_debug(text: &str) -> String {
    fn indent(line: &str) -> usize {
        line.len() - line.trim_start().len()
    }
    fn block(lines: &[&str], start: usize) -> (String, usize) {
        let open = lines[start];
        let opens = open.ends_with('{') || open.ends_with('[') || open.ends_with('(');
        if !opens {
            return (format!("{open}\n"), start + 1);
        }
        let depth = indent(open);
        let mut children = Vec::new();
        let mut i = start + 1;
        while i < lines.len() && (indent(lines[i]) != depth || lines[i].trim().is_empty()) {
            let (child, next) = block(lines, i);
            children.push(child);
            i = next;
        }
        let is_map = open.ends_with('{')
            && !children.is_empty()
            && children.iter().all(|c| c.trim_start().starts_with('"'));
        if is_map {
            children.sort();
        }
        let close = lines.get(i).copied().unwrap_or("");
        (format!("{open}\n{}{close}\n", children.concat()), i + 1)
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        let (chunk, next) = block(&lines, i);
        out.push_str(&chunk);
        i = next;
    }
    out
}

fn render(snapshot: &Snapshot, config: &TranslateConfig) -> String {
    let mut out = String::new();
    let agent = for_agent(snapshot, config, &AgentScope::All);
    writeln!(out, "# addresses").unwrap();
    for (name, address) in &agent.addresses {
        render_address(&mut out, name, address);
    }
    writeln!(out, "\n# authorizations").unwrap();
    for (name, auth) in &agent.authorizations {
        render_authorization(&mut out, name, auth);
    }
    let waypoints = for_waypoints(snapshot, config);
    writeln!(out, "\n# waypoints").unwrap();
    for (name, waypoint) in &waypoints.configs {
        writeln!(out, "waypoint {name}").unwrap();
        out.push_str(&canonical_debug(&format!("{waypoint:#?}")));
    }
    writeln!(out, "\n# errors").unwrap();
    let mut errors: Vec<String> = agent
        .errors
        .iter()
        .chain(&waypoints.errors)
        .map(ToString::to_string)
        .collect();
    errors.sort();
    errors.dedup();
    for error in errors {
        writeln!(out, "{error}").unwrap();
    }
    out
}

fn check_golden(name: &str, inputs: &[PathBuf]) {
    let snapshot = load(inputs);
    let actual = render(&snapshot, &TranslateConfig::default());
    // Translation is a pure function: a second run must give the same text.
    assert_eq!(actual, render(&snapshot, &TranslateConfig::default()));
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
             (run with {UPDATE_ENV}=1 to accept)",
            golden.display(),
            first_difference + 1,
            actual.lines().nth(first_difference),
            expected.lines().nth(first_difference),
        );
    }
}

macro_rules! golden {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check_golden(
                    stringify!($name),
                    &[testdata().join(concat!(stringify!($name), ".yaml"))],
                );
            }
        )*
    };
}

golden!(
    enrollment,
    waypoint_assignment,
    authorization_policies,
    peer_authentication,
    waypoint_config,
);

#[test]
fn bookinfo_example() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/bookinfo");
    check_golden("bookinfo", &[dir]);
}

#[test]
fn qualify_host_follows_istio_short_names() {
    let config = TranslateConfig::default();
    let cases = [
        ("reviews", "shop", "reviews.shop.svc.cluster.local"),
        ("reviews.other", "shop", "reviews.other.svc.cluster.local"),
        ("reviews.other.svc", "shop", "reviews.other.svc"),
        (
            "reviews.other.svc.cluster.local",
            "shop",
            "reviews.other.svc.cluster.local",
        ),
        ("api.example.com", "shop", "api.example.com"),
        ("*.example.com", "shop", "*.example.com"),
    ];
    for (host, namespace, expected) in cases {
        assert_eq!(
            config.qualify_host(host, namespace),
            expected,
            "{host} in {namespace}"
        );
    }
}

#[test]
fn canonical_debug_sorts_map_entries_only() {
    let text = "A {\n    m: {\n        \"b\": 2,\n        \"a\": 1,\n    },\n    v: [\n        3,\n        1,\n    ],\n}";
    let expected = "A {\n    m: {\n        \"a\": 1,\n        \"b\": 2,\n    },\n    v: [\n        3,\n        1,\n    ],\n}\n";
    assert_eq!(canonical_debug(text), expected);
}

#[test]
fn node_scope_keeps_only_policies_that_can_apply_on_the_node() {
    let snapshot = load(&[testdata().join("authorization_policies.yaml")]);
    let config = TranslateConfig::default();
    let all = for_agent(&snapshot, &config, &AgentScope::All);
    let node = for_agent(&snapshot, &config, &AgentScope::Node("node-b".to_owned()));
    assert_eq!(node.addresses, all.addresses, "addresses are never scoped");
    let names: Vec<&str> = node.authorizations.keys().map(String::as_str).collect();
    // node-b runs only the `other` namespace's pod: global and its namespace's policies remain,
    // while selector policies of pods elsewhere and other namespaces' policies go.
    assert!(
        names.contains(&"istio-system/global-deny-plaintext-ip"),
        "{names:?}"
    );
    assert!(names.contains(&"other/other-namespace-wide"), "{names:?}");
    assert!(!names.contains(&"shop/namespace-wide"), "{names:?}");
    assert!(!names.contains(&"shop/selector-allow"), "{names:?}");
    assert!(names.len() < all.authorizations.len());
}

#[test]
fn untranslatable_resources_are_reported_and_skipped() {
    // Bypasses validation on purpose: translation must cope with whatever the index holds.
    let (loaded, errors) = loader::load_str(
        Path::new("broken.yaml"),
        r#"
apiVersion: v1
kind: Service
metadata: {name: bad-vip, namespace: shop}
spec:
  clusterIP: not-an-ip
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: bad-ip, namespace: shop}
spec:
  containers: [{name: c, image: i}]
status: {podIP: 999.1.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: good, namespace: shop}
spec:
  containers: [{name: c, image: i}]
status: {podIP: 10.0.0.1}
"#,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let snapshot = Snapshot::from_resources(loaded.into_iter().map(|l| l.resource));
    let agent = for_agent(&snapshot, &TranslateConfig::default(), &AgentScope::All);
    let names: Vec<&str> = agent.addresses.keys().map(String::as_str).collect();
    assert_eq!(names, vec!["Kubernetes//Pod/shop/good"]);
    let reported: Vec<(ResourceKind, &str, &TranslateProblem)> = agent
        .errors
        .iter()
        .map(|e| (e.kind, e.name.as_str(), &e.problem))
        .collect();
    assert_eq!(
        reported,
        vec![
            (
                ResourceKind::Service,
                "bad-vip",
                &TranslateProblem::InvalidIp("not-an-ip".to_owned())
            ),
            (
                ResourceKind::Pod,
                "bad-ip",
                &TranslateProblem::InvalidIp("999.1.1.1".to_owned())
            ),
        ]
    );
}

#[test]
fn for_waypoint_finds_only_waypoint_gateways() {
    let snapshot = load(&[testdata().join("waypoint_assignment.yaml")]);
    let config = TranslateConfig::default();
    let (shared, errors) = for_waypoint(&snapshot, &config, "infra", "shared").unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let hosts: Vec<&str> = shared
        .services
        .iter()
        .map(|s| s.hostname.as_str())
        .collect();
    assert_eq!(hosts, vec!["payments.shop.svc.cluster.local"]);
    // `ingress` is a Gateway of another class; `missing` does not exist.
    assert!(for_waypoint(&snapshot, &config, "infra", "ingress").is_none());
    assert!(for_waypoint(&snapshot, &config, "shop", "missing").is_none());
    assert_eq!(
        for_waypoints(&snapshot, &config)
            .configs
            .keys()
            .collect::<Vec<_>>(),
        vec!["infra/shared", "shop/shop-waypoint"]
    );
}
