//! `weftctl dashboard`: the service-graph console's address (istioctl dashboard kiali's role).
//! A local mesh (`--demo`, `--mesh-dir`) says where its console and Prometheus are reached from
//! this machine in `console.json`; otherwise the address is the one given.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::output::Format;

/// The file in a mesh's directory (the e2e harness and the demo write it).
pub const CONSOLE_FILE: &str = "console.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dashboard {
    pub console: String,
    #[serde(default)]
    pub prometheus: String,
}

/// Reads a local mesh's console addresses.
pub fn load(dir: &Path) -> anyhow::Result<Dashboard> {
    let path = dir.join(CONSOLE_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} has no console ({}): the mesh runs no Prometheus (the demo starts one)",
            dir.display(),
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
}

/// The page for `namespace`'s graph.
pub fn graph_url(console: &str, namespace: Option<&str>) -> String {
    let base = if console.ends_with('/') {
        console.to_owned()
    } else {
        format!("{console}/")
    };
    match namespace {
        Some(namespace) => format!("{base}#/graph/{namespace}"),
        None => base,
    }
}

/// Prints the addresses and, with `open`, hands the page to the desktop's browser.
pub fn run(
    dashboard: &Dashboard,
    namespace: Option<&str>,
    open: bool,
    format: Format,
) -> anyhow::Result<u8> {
    let url = graph_url(&dashboard.console, namespace);
    let shown = Dashboard {
        console: url.clone(),
        prometheus: dashboard.prometheus.clone(),
    };
    crate::output::emit(format, &shown, || {
        let mut table = crate::output::Table::new(&["WHAT", "ADDRESS"]);
        table.row(vec!["console".into(), url.clone()]);
        if !shown.prometheus.is_empty() {
            table.row(vec!["prometheus".into(), shown.prometheus.clone()]);
        }
        table
    })?;
    if open {
        std::process::Command::new("xdg-open")
            .arg(&url)
            .status()
            .context("opening the console with xdg-open (is a desktop browser installed?); the address is above")?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_graph_of_a_namespace_and_a_mesh_without_a_console() {
        assert_eq!(
            graph_url("http://127.0.0.1:4000/", Some("bookinfo")),
            "http://127.0.0.1:4000/#/graph/bookinfo"
        );
        assert_eq!(
            graph_url("http://127.0.0.1:4000", None),
            "http://127.0.0.1:4000/"
        );
        let dir = std::env::temp_dir().join(format!("weftctl-dashboard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let error = load(&dir).unwrap_err().to_string();
        assert!(error.contains("has no console"), "{error}");
        std::fs::write(
            dir.join(CONSOLE_FILE),
            r#"{"console": "http://127.0.0.1:4000/", "prometheus": "http://127.0.0.1:4001/"}"#,
        )
        .unwrap();
        assert_eq!(load(&dir).unwrap().prometheus, "http://127.0.0.1:4001/");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
