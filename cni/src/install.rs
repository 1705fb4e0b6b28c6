//! Installing the plugin on the node, as Istio's `install-cni` does: copy the binary into the
//! node's CNI bin directory, add the plugin at the end of the primary configuration list (the
//! first file the runtime reads; a single-plugin `.conf` becomes a `.conflist`), write the
//! plugin's kubeconfig, and check all of it again periodically (the primary plugin rewrites its
//! file when it restarts). Uninstalling removes the entry, the binary and the kubeconfig.
//!
//! Paths are as this process sees them (the host's directories mounted into its container);
//! what the plugin itself reads at run time is written as the host sees it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Map, Value, json};

/// The plugin's `type` (and binary name).
pub const PLUGIN_TYPE: &str = "weft-cni";
/// The kubeconfig's file name in the CNI configuration directory.
pub const KUBECONFIG_FILE: &str = "weft-cni-kubeconfig";

/// Where things go.
#[derive(Debug, Clone)]
pub struct InstallSettings {
    /// The node's CNI configuration directory, as mounted here.
    pub net_dir: PathBuf,
    /// The node's CNI binary directory, as mounted here.
    pub bin_dir: PathBuf,
    /// The plugin binary to copy.
    pub plugin_binary: PathBuf,
    /// The CNI configuration directory as the host (the plugin) sees it.
    pub host_net_dir: PathBuf,
    /// The node daemon's socket as the host sees it.
    pub node_socket: PathBuf,
    pub exclude_namespaces: Vec<String>,
}

/// Errors of installing.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{0}: {1}")]
    Config(PathBuf, String),
    #[error("no CNI configuration in {0} yet (the node's network plugin writes one)")]
    NoPrimaryConfig(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |e| InstallError::Io(path.to_path_buf(), e)
}

/// What a check changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub binary: bool,
    pub kubeconfig: bool,
    /// The configuration file our entry was (re)inserted into.
    pub config: Option<PathBuf>,
}

impl Changes {
    pub fn any(&self) -> bool {
        self.binary || self.kubeconfig || self.config.is_some()
    }
}

/// Puts everything in place, or checks that it still is: copies the binary when missing or
/// different, writes `kubeconfig` when it differs, and inserts the plugin into the primary
/// configuration when it is not there. Idempotent; the installer calls it periodically.
pub fn ensure(settings: &InstallSettings, kubeconfig: &str) -> Result<Changes, InstallError> {
    // Nothing is written before there is a configuration to chain into.
    let primary = primary_config(&settings.net_dir)?
        .ok_or_else(|| InstallError::NoPrimaryConfig(settings.net_dir.clone()))?;
    let mut changes = Changes::default();
    let binary = std::fs::read(&settings.plugin_binary).map_err(io(&settings.plugin_binary))?;
    let target = settings.bin_dir.join(PLUGIN_TYPE);
    if std::fs::read(&target).ok().as_deref() != Some(&binary[..]) {
        write_atomically(&target, &binary, 0o755)?;
        changes.binary = true;
    }
    let kubeconfig_path = settings.net_dir.join(KUBECONFIG_FILE);
    if std::fs::read_to_string(&kubeconfig_path).ok().as_deref() != Some(kubeconfig) {
        write_atomically(&kubeconfig_path, kubeconfig.as_bytes(), 0o600)?;
        changes.kubeconfig = true;
    }
    let text = std::fs::read_to_string(&primary).map_err(io(&primary))?;
    let entry = plugin_entry(settings);
    if let Some(updated) =
        with_plugin(&text, &entry).map_err(|e| InstallError::Config(primary.clone(), e))?
    {
        // A single-plugin .conf becomes a list: the runtime reads .conflist files as lists.
        let target = if primary.extension().is_some_and(|e| e == "conflist") {
            primary.clone()
        } else {
            primary.with_extension("conflist")
        };
        write_atomically(&target, updated.as_bytes(), 0o644)?;
        if target != primary {
            std::fs::remove_file(&primary).map_err(io(&primary))?;
        }
        changes.config = Some(target);
    }
    Ok(changes)
}

/// Removes the plugin from every configuration in the directory, its binary and kubeconfig.
pub fn uninstall(settings: &InstallSettings) -> Result<(), InstallError> {
    for path in config_files(&settings.net_dir)? {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        if let Ok(Some(updated)) = without_plugin(&text) {
            write_atomically(&path, updated.as_bytes(), 0o644)?;
        }
    }
    for path in [
        settings.bin_dir.join(PLUGIN_TYPE),
        settings.net_dir.join(KUBECONFIG_FILE),
    ] {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
            _ => {}
        }
    }
    Ok(())
}

/// The plugin's entry in a configuration list.
pub fn plugin_entry(settings: &InstallSettings) -> Value {
    json!({
        "type": PLUGIN_TYPE,
        "kubeconfig": settings.host_net_dir.join(KUBECONFIG_FILE),
        "node_socket": settings.node_socket,
        "exclude_namespaces": settings.exclude_namespaces,
    })
}

/// The configuration files of a directory, in the order the runtime considers them (by name;
/// `.conf`, `.conflist` and `.json`).
fn config_files(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| e == "conf" || e == "conflist" || e == "json")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The file the runtime uses: the first configuration file by name.
pub fn primary_config(dir: &Path) -> Result<Option<PathBuf>, InstallError> {
    Ok(config_files(dir)?.into_iter().next())
}

/// `text` with the plugin appended to its plugins (a single-plugin configuration becomes a
/// list), or `None` when an up-to-date entry is there already.
pub fn with_plugin(text: &str, entry: &Value) -> Result<Option<String>, String> {
    let mut config: Map<String, Value> =
        serde_json::from_str(text).map_err(|e| format!("not a CNI configuration: {e}"))?;
    let mut plugins = match config.remove("plugins") {
        Some(Value::Array(plugins)) => plugins,
        Some(_) => return Err("plugins is not a list".into()),
        None => {
            // A single plugin: the list keeps its name and version.
            let mut list = Map::new();
            for key in ["cniVersion", "name"] {
                if let Some(value) = config.get(key) {
                    list.insert(key.into(), value.clone());
                }
            }
            let plugin = Value::Object(std::mem::take(&mut config));
            config = list;
            vec![plugin]
        }
    };
    let ours = |p: &Value| p.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE);
    if plugins.last() == Some(entry) && plugins.iter().filter(|p| ours(p)).count() == 1 {
        return Ok(None);
    }
    plugins.retain(|p| !ours(p));
    plugins.push(entry.clone());
    config.insert("plugins".into(), Value::Array(plugins));
    Ok(Some(
        serde_json::to_string_pretty(&config).expect("JSON values serialize") + "\n",
    ))
}

/// `text` without the plugin, or `None` when it is not there.
pub fn without_plugin(text: &str) -> Result<Option<String>, String> {
    let mut config: Map<String, Value> =
        serde_json::from_str(text).map_err(|e| format!("not a CNI configuration: {e}"))?;
    let Some(Value::Array(plugins)) = config.get_mut("plugins") else {
        return Ok(None);
    };
    let before = plugins.len();
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    if plugins.len() == before {
        return Ok(None);
    }
    Ok(Some(
        serde_json::to_string_pretty(&config).expect("JSON values serialize") + "\n",
    ))
}

/// Writes through a temporary file and a rename, so the runtime never reads half a file (nor
/// executes half a binary).
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.weft-tmp"));
    std::fs::write(&temporary, contents).map_err(io(&temporary))?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode))
        .map_err(io(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io(path))
}

/// How often the installer checks its work.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests;
