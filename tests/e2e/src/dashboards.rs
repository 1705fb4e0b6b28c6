//! The Grafana dashboards (`deploy/grafana/*.json`) and the Prometheus rules
//! (`deploy/prometheus/alerts.yaml`) as data: every query a panel target or a rule runs, the
//! dashboards' template variables and how Grafana fills them in, and what Grafana needs of a
//! dashboard to import it. `tests/dashboards.rs` runs every query against the Prometheus
//! scraping a running mesh.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Context;
use serde_json::Value;

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// The shipped alerting rules.
pub fn alert_rules_file() -> PathBuf {
    deploy_dir().join("prometheus/alerts.yaml")
}

/// One dashboard file.
pub struct Dashboard {
    pub file: String,
    pub json: Value,
}

/// A query of a panel's target.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub panel: String,
    pub expr: String,
}

/// A template variable, as Grafana fills it in.
#[derive(Debug, Clone, PartialEq)]
pub enum Variable {
    /// The Prometheus data source: chosen by the user, not part of any query.
    Datasource,
    /// `label_values(SELECTOR, LABEL)`: one choice per value Prometheus holds.
    Query {
        name: String,
        definition: String,
        all: bool,
    },
    /// A fixed list; its current value.
    Custom { name: String, current: String },
}

/// Every `deploy/grafana/*.json`, sorted by file name.
pub fn dashboards() -> anyhow::Result<Vec<Dashboard>> {
    let dir = deploy_dir().join("grafana");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "json"));
    files.sort();
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)?;
            let json = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            Ok(Dashboard {
                file: path.file_name().unwrap().to_string_lossy().into_owned(),
                json,
            })
        })
        .collect()
}

impl Dashboard {
    pub fn uid(&self) -> &str {
        self.json["uid"].as_str().unwrap_or_default()
    }

    pub fn title(&self) -> &str {
        self.json["title"].as_str().unwrap_or_default()
    }

    fn panels(&self) -> impl Iterator<Item = &Value> {
        self.json["panels"].as_array().into_iter().flatten()
    }

    /// What Grafana needs to import the dashboard and run its panels on the user's
    /// Prometheus; each problem named.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut problem = |what: String| problems.push(format!("{}: {what}", self.file));
        for field in ["uid", "title"] {
            if self.json[field].as_str().is_none_or(str::is_empty) {
                problem(format!("no {field}"));
            }
        }
        if !self.json["schemaVersion"].is_u64() {
            problem("no schemaVersion".into());
        }
        let variables = self.json["templating"]["list"].as_array();
        if !variables.is_some_and(|list| {
            list.iter()
                .any(|v| v["type"] == "datasource" && v["name"] == "datasource")
        }) {
            problem("no `datasource` variable in templating.list".into());
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut queries = 0;
        for panel in self.panels() {
            let title = panel["title"].as_str().unwrap_or_default();
            if !panel["id"].as_u64().is_some_and(|id| ids.insert(id)) {
                problem(format!("panel {title:?}: missing or repeated id"));
            }
            if !panel["gridPos"]["w"].is_u64() || !panel["gridPos"]["h"].is_u64() {
                problem(format!("panel {title:?}: no gridPos"));
            }
            if panel["type"] == "row" {
                continue;
            }
            let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
            if targets.is_empty() {
                problem(format!("panel {title:?}: no targets"));
            }
            for target in targets {
                if target["datasource"]["uid"] != "${datasource}" {
                    problem(format!("panel {title:?}: a target not on ${{datasource}}"));
                }
                match target["expr"].as_str() {
                    None | Some("") => problem(format!("panel {title:?}: a target without expr")),
                    // A fallback answers whatever the query's own series are: a typo would
                    // read as zero instead of as no data.
                    Some(expr) if expr.contains("or vector(") => {
                        problem(format!("panel {title:?}: `or vector(...)` hides no data"))
                    }
                    Some(_) => queries += 1,
                }
            }
        }
        if queries == 0 {
            problem("no queries".into());
        }
        problems
    }

    /// Every panel target's query, as written (variables not filled in).
    pub fn queries(&self) -> Vec<PanelQuery> {
        self.panels()
            .flat_map(|panel| {
                let title = panel["title"].as_str().unwrap_or_default().to_owned();
                panel["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(move |t| {
                        Some(PanelQuery {
                            panel: title.clone(),
                            expr: t["expr"].as_str()?.to_owned(),
                        })
                    })
            })
            .collect()
    }

    /// The template variables, in Grafana's order (a later one may use an earlier one).
    pub fn variables(&self) -> Vec<Variable> {
        self.json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| {
                let name = v["name"].as_str()?.to_owned();
                match v["type"].as_str()? {
                    "datasource" => Some(Variable::Datasource),
                    "query" => Some(Variable::Query {
                        name,
                        definition: v["definition"].as_str()?.to_owned(),
                        all: v["includeAll"] == true,
                    }),
                    "custom" => Some(Variable::Custom {
                        name,
                        current: v["current"]["value"].as_str()?.to_owned(),
                    }),
                    _ => None,
                }
            })
            .collect()
    }
}

/// `label_values(SELECTOR, LABEL)` as a query answering one series per value of LABEL, and
/// LABEL.
pub fn label_values_query(definition: &str) -> Option<(String, String)> {
    let inner = definition
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    let label = label.trim();
    Some((
        format!("count by ({label}) ({})", selector.trim()),
        label.to_owned(),
    ))
}

/// `expr` with Grafana's `$name` and `${name}` replaced by `values` (longest names first, so
/// that `$namespace` is not read as `$name` followed by text).
pub fn substitute(expr: &str, values: &BTreeMap<String, String>) -> String {
    let mut names: Vec<&String> = values.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = expr.to_owned();
    for name in names {
        out = out
            .replace(&format!("${{{name}}}"), &values[name])
            .replace(&format!("${name}"), &values[name]);
    }
    out
}

/// One rule of a rules file.
#[derive(Debug, Clone)]
pub struct Rule {
    pub group: String,
    /// The alert's name, or the recording rule's.
    pub name: String,
    pub alert: bool,
    pub expr: String,
}

/// Every rule of a Prometheus rules file.
pub fn rules(path: &Path) -> anyhow::Result<Vec<Rule>> {
    let text = std::fs::read_to_string(path)?;
    let file: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("{} is not YAML", path.display()))?;
    let mut rules = Vec::new();
    for group in file["groups"].as_sequence().into_iter().flatten() {
        let group_name = group["name"].as_str().unwrap_or_default();
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            let (name, alert) = match (rule["alert"].as_str(), rule["record"].as_str()) {
                (Some(alert), _) => (alert, true),
                (None, Some(record)) => (record, false),
                (None, None) => anyhow::bail!("a rule of {group_name} has no alert nor record"),
            };
            rules.push(Rule {
                group: group_name.to_owned(),
                name: name.to_owned(),
                alert,
                expr: rule["expr"].as_str().unwrap_or_default().trim().to_owned(),
            });
        }
    }
    Ok(rules)
}

/// The rules file `text` with every alert's `for:` set to `duration`, so that a test sees an
/// alert fire as soon as its condition holds.
pub fn with_for(text: &str, duration: &str) -> anyhow::Result<String> {
    let mut file: serde_yaml::Value = serde_yaml::from_str(text)?;
    for group in file["groups"].as_sequence_mut().into_iter().flatten() {
        for rule in group["rules"].as_sequence_mut().into_iter().flatten() {
            if rule.get("alert").is_some() {
                rule["for"] = duration.into();
            }
        }
    }
    Ok(serde_yaml::to_string(&file)?)
}

/// The operand of an alert expression's top-level comparison (`A > 0.1` gives `A`): the
/// series the alert judges, which exist whether or not it fires. An expression without a
/// top-level comparison is returned whole.
pub fn without_comparison(expr: &str) -> &str {
    let bytes = expr.as_bytes();
    let mut depth = 0i32;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'"' | b'\'' | b'`' => quote = Some(b),
                b'(' | b'{' | b'[' => depth += 1,
                b')' | b'}' | b']' => depth -= 1,
                b'=' | b'!' if depth == 0 && bytes.get(i + 1) == Some(&b'=') => {
                    return expr[..i].trim();
                }
                b'<' | b'>' if depth == 0 => return expr[..i].trim(),
                _ => {}
            },
        }
        i += 1;
    }
    expr.trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dashboard_has_what_grafana_needs_and_a_uid_of_its_own() {
        let dashboards = dashboards().unwrap();
        let files: Vec<&str> = dashboards.iter().map(|d| d.file.as_str()).collect();
        assert_eq!(
            files,
            [
                "weft-control-plane.json",
                "weft-mesh.json",
                "weft-node-agent.json",
                "weft-service.json",
                "weft-waypoint.json",
                "weft-workload.json",
            ]
        );
        let problems: Vec<String> = dashboards.iter().flat_map(Dashboard::problems).collect();
        assert!(problems.is_empty(), "{problems:#?}");
        let mut uids: Vec<&str> = dashboards.iter().map(Dashboard::uid).collect();
        uids.sort_unstable();
        uids.dedup();
        assert_eq!(uids.len(), dashboards.len(), "repeated uid");
    }

    #[test]
    fn a_dashboard_without_targets_or_datasource_variable_is_named() {
        let broken = Dashboard {
            file: "broken.json".into(),
            json: serde_json::json!({
                "uid": "x", "title": "X", "schemaVersion": 39, "templating": {"list": []},
                "panels": [{"id": 1, "type": "stat", "title": "Empty", "gridPos": {"w": 6, "h": 5}},
                           {"id": 1, "type": "stat", "title": "Zero", "gridPos": {"w": 6, "h": 5},
                            "targets": [{"datasource": {"uid": "${datasource}"},
                                         "expr": "sum(x) or vector(0)"}]}],
            }),
        };
        let problems = broken.problems().join("\n");
        for expected in [
            "no `datasource` variable",
            "\"Empty\": no targets",
            "\"Zero\": missing or repeated id",
            "hides no data",
            "no queries",
        ] {
            assert!(problems.contains(expected), "{expected} in {problems}");
        }
    }

    #[test]
    fn variables_are_filled_in_as_grafana_does() {
        let values = BTreeMap::from([
            ("namespace".to_owned(), "bookinfo".to_owned()),
            ("name".to_owned(), "x".to_owned()),
        ]);
        assert_eq!(
            substitute("a{ns=~\"$namespace\",n=\"${name}\",m=\"$name\"}", &values),
            "a{ns=~\"bookinfo\",n=\"x\",m=\"x\"}"
        );
        assert_eq!(
            label_values_query("label_values(up{job=\"a,b\"}, instance)"),
            Some((
                "count by (instance) (up{job=\"a,b\"})".to_owned(),
                "instance".to_owned()
            ))
        );
    }

    #[test]
    fn an_alert_judges_the_operand_of_its_top_level_comparison() {
        for (expr, operand) in [
            ("up{job=\"a\"} == 0", "up{job=\"a\"}"),
            (
                "min by (identity) (m) - time() < 4 * 3600",
                "min by (identity) (m) - time()",
            ),
            (
                "sum(rate(x{code!=\"5\",r=~\"a|b\"}[5m])) / sum(rate(x[5m])) > 0.1",
                "sum(rate(x{code!=\"5\",r=~\"a|b\"}[5m])) / sum(rate(x[5m]))",
            ),
            ("sum(x{a=\">\"}) >= 1", "sum(x{a=\">\"})"),
            ("sum(x)", "sum(x)"),
        ] {
            assert_eq!(without_comparison(expr), operand, "{expr}");
        }
    }

    #[test]
    fn promtool_accepts_the_rules() {
        let output = std::process::Command::new("promtool")
            .args(["check", "rules"])
            .arg(alert_rules_file())
            .output()
            .expect("promtool, from Debian's prometheus package (`cargo xtask setup`)");
        assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn the_shipped_rules_name_every_alert_and_the_test_copy_fires_at_once() {
        let rules = rules(&alert_rules_file()).unwrap();
        let alerts: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        for expected in [
            "WeftWorkloadCertificateExpiringSoon",
            "WeftProxyRejectedConfiguration",
            "WeftRequestsDenied",
            "WeftConnectionsDenied",
            "WeftNodeAgentDown",
        ] {
            assert!(alerts.contains(&expected), "{expected} in {alerts:?}");
        }
        assert!(rules.iter().all(|r| r.alert && !r.expr.is_empty()));
        let text = std::fs::read_to_string(alert_rules_file()).unwrap();
        let copy = with_for(&text, "1s").unwrap();
        let parsed: serde_yaml::Value = serde_yaml::from_str(&copy).unwrap();
        let fors: Vec<&str> = parsed["groups"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_sequence().unwrap())
            .map(|r| r["for"].as_str().unwrap())
            .collect();
        assert_eq!(fors.len(), rules.len());
        assert!(fors.iter().all(|f| *f == "1s"), "{fors:?}");
    }
}
