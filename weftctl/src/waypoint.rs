//! `weftctl waypoint`: the waypoint `Gateway` as `istioctl waypoint` writes it (class
//! `istio-waypoint`, an HBONE listener on 15008, `istio.io/waypoint-for`), written to stdout or
//! into a live configuration directory (the controller's `--config-dir`, the demo's), listed
//! from that directory, and checked against the controller's connected waypoints.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_yaml::Value;

pub use controller::translate::resolve::WaypointFor;

use crate::output::{self, Format, Table};
use crate::status;

/// The waypoint's Gateway, as `istioctl waypoint generate` prints it.
pub fn gateway_yaml(namespace: &str, name: &str, waypoint_for: WaypointFor) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\n\
         kind: Gateway\n\
         metadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    istio.io/waypoint-for: {}\n\
         spec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE\n",
        waypoint_for.name()
    )
}

/// The file `apply` writes in a configuration directory.
pub fn file_name(namespace: &str, name: &str) -> String {
    format!("waypoint-{namespace}-{name}.yaml")
}

/// What an object needs to use the waypoint (`istio.io/use-waypoint`), as a hint to print.
fn enroll_hint(namespace: &str, name: &str) -> String {
    format!(
        "to send namespace {namespace}'s traffic through it, label its Namespace \
         `istio.io/use-waypoint: {name}` (or a Service or Pod, for just that one)"
    )
}

pub fn apply(
    namespace: &str,
    name: &str,
    waypoint_for: WaypointFor,
    config_dir: Option<&Path>,
) -> anyhow::Result<u8> {
    let yaml = gateway_yaml(namespace, name, waypoint_for);
    let Some(dir) = config_dir else {
        print!("{yaml}");
        return Ok(0);
    };
    if !dir.is_dir() {
        bail!(
            "{} is not a directory: pass the controller's --config-dir (the demo prints it)",
            dir.display()
        );
    }
    let path = dir.join(file_name(namespace, name));
    // Written beside and renamed, so the controller's watch never reads half a file.
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, &yaml)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, &path)
        .with_context(|| format!("renaming to {}", path.display()))?;
    println!("waypoint {namespace}/{name} applied: {}", path.display());
    println!("{}", enroll_hint(namespace, name));
    Ok(0)
}

pub fn delete(namespace: &str, names: &[String], config_dir: &Path) -> anyhow::Result<u8> {
    for name in names {
        let path = config_dir.join(file_name(namespace, name));
        match std::fs::remove_file(&path) {
            Ok(()) => println!(
                "waypoint {namespace}/{name} deleted ({} removed)",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let defined = list_waypoints(config_dir)?
                    .into_iter()
                    .find(|w| w.namespace == namespace && &w.name == name);
                match defined {
                    Some(waypoint) => bail!(
                        "waypoint {namespace}/{name} was not applied by weftctl: remove it from {}",
                        waypoint.file
                    ),
                    None => bail!("no waypoint {namespace}/{name} in {}", config_dir.display()),
                }
            }
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(0)
}

/// One waypoint Gateway found in a configuration directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waypoint {
    pub namespace: String,
    pub name: String,
    pub waypoint_for: String,
    pub file: String,
    /// Waypoint proxies of this Gateway connected to the controller (with `status`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxies: Option<Vec<WaypointProxy>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaypointProxy {
    pub proxy: String,
    pub status: String,
}

/// The waypoint Gateways (class `istio-waypoint`) in the YAML under `dir`.
pub fn list_waypoints(dir: &Path) -> anyhow::Result<Vec<Waypoint>> {
    let files = controller::loader::collect_yaml_files(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut waypoints = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        waypoints.extend(waypoints_in(&text, &file));
    }
    waypoints.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(waypoints)
}

fn waypoints_in(text: &str, file: &Path) -> Vec<Waypoint> {
    let str_at = |doc: &Value, path: &[&str]| -> String {
        path.iter()
            .try_fold(doc, |value, key| value.get(*key))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|document| Value::deserialize(document).ok())
        .filter(|doc| {
            str_at(doc, &["kind"]) == "Gateway"
                && str_at(doc, &["apiVersion"]).starts_with("gateway.networking.k8s.io/")
                && str_at(doc, &["spec", "gatewayClassName"]) == "istio-waypoint"
        })
        .map(|doc| Waypoint {
            namespace: match str_at(&doc, &["metadata", "namespace"]) {
                namespace if namespace.is_empty() => "default".into(),
                namespace => namespace,
            },
            name: str_at(&doc, &["metadata", "name"]),
            waypoint_for: {
                let label = str_at(&doc, &["metadata", "labels", "istio.io/waypoint-for"]);
                if label.is_empty() {
                    "service".into()
                } else {
                    label
                }
            },
            file: file.display().to_string(),
            proxies: None,
        })
        .collect()
}

/// Whether waypoint proxy `id` (`waypoint~<ip>~<name>.<namespace>~...`) serves `waypoint`.
fn serves(id: &str, waypoint: &Waypoint) -> bool {
    id.split('~').nth(2) == Some(&format!("{}.{}", waypoint.name, waypoint.namespace))
}

pub fn list(
    config_dir: &Path,
    namespace: Option<&str>,
    controller: Option<&str>,
    format: Format,
) -> anyhow::Result<u8> {
    let mut waypoints: Vec<Waypoint> = list_waypoints(config_dir)?
        .into_iter()
        .filter(|w| namespace.is_none_or(|ns| w.namespace == ns))
        .collect();
    if let Some(controller) = controller {
        let syncz = status::syncz(controller)?;
        for waypoint in &mut waypoints {
            waypoint.proxies = Some(
                syncz
                    .proxies
                    .iter()
                    .filter(|p| serves(&p.proxy, waypoint))
                    .map(|p| WaypointProxy {
                        proxy: p.proxy.clone(),
                        status: format!("{:?}", status::overall(&p.types)).to_uppercase(),
                    })
                    .collect(),
            );
        }
    }
    output::emit(format, &waypoints, || {
        let mut header = vec!["NAMESPACE", "NAME", "FOR", "FILE"];
        if controller.is_some() {
            header.extend(["PROXIES", "STATUS"]);
        }
        let mut table = Table::new(&header);
        for w in &waypoints {
            let mut row = vec![
                w.namespace.clone(),
                w.name.clone(),
                w.waypoint_for.clone(),
                w.file.clone(),
            ];
            if let Some(proxies) = &w.proxies {
                row.push(proxies.len().to_string());
                let statuses: Vec<&str> = proxies.iter().map(|p| p.status.as_str()).collect();
                row.push(if statuses.is_empty() {
                    "NOT CONNECTED".into()
                } else {
                    statuses.join(",")
                });
            }
            table.row(row);
        }
        table
    })?;
    if waypoints.is_empty() && format == Format::Table {
        println!(
            "no waypoints{} in {}: create one with `weftctl waypoint apply -n NAMESPACE --config-dir {}`",
            namespace
                .map(|ns| format!(" in namespace {ns}"))
                .unwrap_or_default(),
            config_dir.display(),
            config_dir.display()
        );
    }
    Ok(0)
}

/// The directory `apply`, `list` and `delete` work on, with what to do when none is given.
pub fn require_dir(config_dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    config_dir.context(
        "no configuration directory: pass --config-dir DIR (WEFT_CONFIG_DIR), the directory the \
         controller serves (`cargo xtask demo` prints the demo's)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_gateway_is_a_valid_waypoint_and_is_listed() {
        let yaml = gateway_yaml("shop", "waypoint", WaypointFor::All);
        let report = controller::loader::load_str(Path::new("w.yaml"), &yaml);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.resources.len(), 1);
        for loaded in &report.resources {
            assert!(controller::validation::validate(&loaded.resource).is_valid());
        }
        let found = waypoints_in(
            &format!("kind: Namespace\napiVersion: v1\nmetadata: {{name: shop}}\n---\n{yaml}"),
            Path::new("w.yaml"),
        );
        assert_eq!(found.len(), 1);
        assert_eq!(
            (
                found[0].namespace.as_str(),
                found[0].name.as_str(),
                found[0].waypoint_for.as_str()
            ),
            ("shop", "waypoint", "all")
        );
    }

    #[test]
    fn proxy_ids_name_their_gateway() {
        let waypoint = Waypoint {
            namespace: "shop".into(),
            name: "waypoint".into(),
            waypoint_for: "service".into(),
            file: String::new(),
            proxies: None,
        };
        assert!(serves(
            "waypoint~10.1.0.9~waypoint.shop~shop.svc.cluster.local",
            &waypoint
        ));
        assert!(!serves(
            "waypoint~10.1.0.9~waypoint.other~other.svc.cluster.local",
            &waypoint
        ));
    }
}
