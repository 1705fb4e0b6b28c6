//! The CNI protocol as a plugin sees it (spec 0.4.0, 1.0.0 and 1.1.0): the command and its
//! environment, the network configuration on stdin, and the results and errors on stdout.
//! Pure parsing and formatting; nothing here touches the network or the node.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

/// Versions this plugin speaks; `VERSION` lists them. STATUS exists from 1.1.0 on.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The spec's well-known error codes this plugin uses.
pub mod codes {
    /// The configuration asks for a version this plugin does not speak.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A required environment variable is missing or invalid.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// Reading stdin or writing a result failed.
    pub const IO_FAILURE: u32 = 5;
    /// stdin is not the JSON the spec describes.
    pub const DECODING_FAILURE: u32 = 6;
    /// The network configuration is valid JSON but not a usable one.
    pub const INVALID_CONFIG: u32 = 7;
    /// Transient: the runtime should retry (the API server or the node agent was unreachable).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin-specific (100+): CHECK found a pod that should be in the mesh and is not.
    pub const NOT_ENROLLED: u32 = 100;
    /// Plugin-specific: the pod is in the mesh but its mesh annotations are invalid.
    pub const INVALID_POD: u32 = 101;
}

/// A CNI error result: printed on stdout, with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error as the spec prints it, in `version` (the configuration's, when it was read).
    pub fn to_json(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
}

/// The environment the runtime passes: what the plugin is asked to do, and for which container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    /// `CNI_CONTAINERID`: the sandbox (pause) container's id.
    pub container_id: String,
    /// `CNI_NETNS`: the sandbox's network namespace (may be empty on DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub interface: String,
    /// `CNI_ARGS`, `K=V;K=V` (the kubelet's `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, ...).
    pub args: BTreeMap<String, String>,
}

impl Invocation {
    /// Reads the invocation from environment variables (`get` returns a variable's value).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let missing = |name: &str| {
            CniError::new(
                codes::INVALID_ENVIRONMENT,
                format!("{name} is not set"),
                "the container runtime sets it for every call; weft-cni runs only as a CNI plugin",
            )
        };
        let command = match get("CNI_COMMAND")
            .ok_or_else(|| missing("CNI_COMMAND"))?
            .as_str()
        {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            other => {
                return Err(CniError::new(
                    codes::INVALID_ENVIRONMENT,
                    format!("CNI_COMMAND {other:?} is not a CNI command"),
                    "expected ADD, DEL, CHECK, VERSION or STATUS",
                ));
            }
        };
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let required = |name: &str| -> Result<String, CniError> {
            match get(name).filter(|v| !v.is_empty()) {
                Some(value) => Ok(value),
                None if per_container => Err(missing(name)),
                None => Ok(String::new()),
            }
        };
        let container_id = required("CNI_CONTAINERID")?;
        let interface = required("CNI_IFNAME")?;
        let netns = get("CNI_NETNS")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        if matches!(command, Command::Add | Command::Check) && netns.is_none() {
            return Err(missing("CNI_NETNS"));
        }
        let args = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(Self {
            command,
            container_id,
            netns,
            interface,
            args,
        })
    }

    /// The Kubernetes pod the call is for (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, and
    /// `K8S_POD_UID` when the runtime passes it), if the runtime named one.
    pub fn pod(&self) -> Option<PodRef> {
        Some(PodRef {
            namespace: self.args.get("K8S_POD_NAMESPACE")?.clone(),
            name: self.args.get("K8S_POD_NAME")?.clone(),
            uid: self.args.get("K8S_POD_UID").cloned(),
        })
    }
}

/// A pod named by the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

/// `CNI_ARGS`: `K=V` pairs separated by `;`.
fn parse_args(text: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut args = BTreeMap::new();
    for pair in text.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(CniError::new(
                codes::INVALID_ENVIRONMENT,
                format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
                format!("CNI_ARGS was {text:?}"),
            ));
        };
        args.insert(key.to_string(), value.to_string());
    }
    Ok(args)
}

/// This plugin's entry in the network configuration list.
/// The spec's own keys are camelCase; this plugin's are snake_case, as Istio's are.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The previous plugin's result (chained): passed through unchanged.
    #[serde(default, rename = "prevResult")]
    pub prev_result: Option<Value>,
    /// The kubeconfig the installer wrote, for reading pods and namespaces.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The node daemon's socket, where pods are enrolled.
    #[serde(default)]
    pub node_socket: Option<PathBuf>,
    /// Namespaces whose pods are never enrolled (and never looked up).
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
}

impl NetConf {
    /// Parses stdin, checks the version and, for ADD and CHECK, that there is a previous result
    /// (this plugin only ever runs chained after the node's network plugin).
    pub fn parse(stdin: &[u8], command: Command) -> Result<Self, CniError> {
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                codes::DECODING_FAILURE,
                "the network configuration on stdin is not valid",
                e.to_string(),
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                codes::INCOMPATIBLE_VERSION,
                format!("cniVersion {:?} is not supported", conf.cni_version),
                format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        if command == Command::Status && !version_at_least(&conf.cni_version, (1, 1)) {
            return Err(CniError::new(
                codes::INCOMPATIBLE_VERSION,
                "STATUS needs cniVersion 1.1.0 or later",
                format!("the configuration is {}", conf.cni_version),
            ));
        }
        if matches!(command, Command::Add | Command::Check) {
            match &conf.prev_result {
                Some(Value::Object(_)) => {}
                Some(_) => {
                    return Err(CniError::new(
                        codes::INVALID_CONFIG,
                        "prevResult is not an object",
                        "the previous plugin's result must be a CNI result",
                    ));
                }
                None => {
                    return Err(CniError::new(
                        codes::INVALID_CONFIG,
                        "weft-cni must be chained after the node's network plugin: no prevResult",
                        "add it at the end of the plugins of a .conflist, after the plugin that gives pods their addresses",
                    ));
                }
            }
        }
        Ok(conf)
    }

    /// What ADD prints: the previous result as it came, in this configuration's version.
    pub fn passthrough(&self) -> Value {
        let mut result = self.prev_result.clone().unwrap_or_else(|| json!({}));
        if let Value::Object(fields) = &mut result {
            fields.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        }
        result
    }
}

/// Addresses the previous plugin gave the pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodAddresses {
    pub ips: Vec<IpAddr>,
}

/// Reads `ips` of a CNI result (0.3.x to 1.x share the shape): the addresses on interfaces inside
/// the sandbox (an `interface` index pointing at an entry with a `sandbox`), or every address when
/// the result does not say.
pub fn pod_addresses(result: &Value) -> Result<PodAddresses, CniError> {
    let invalid = |what: String| {
        CniError::new(
            codes::INVALID_CONFIG,
            "prevResult is not a valid CNI result",
            what,
        )
    };
    let interfaces = result
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut addresses = PodAddresses::default();
    let Some(ips) = result.get("ips") else {
        return Ok(addresses);
    };
    let ips = ips
        .as_array()
        .ok_or_else(|| invalid("ips is not a list".into()))?;
    for (i, entry) in ips.iter().enumerate() {
        let in_sandbox = match entry.get("interface").and_then(Value::as_u64) {
            None => true,
            Some(index) => interfaces
                .get(index as usize)
                .and_then(|i| i.get("sandbox"))
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty()),
        };
        if !in_sandbox {
            continue;
        }
        let address = entry
            .get("address")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("ips[{i}].address is missing")))?;
        let ip = address
            .split_once('/')
            .map_or(address, |(ip, _)| ip)
            .parse::<IpAddr>()
            .map_err(|e| invalid(format!("ips[{i}].address {address:?}: {e}")))?;
        addresses.ips.push(ip);
    }
    Ok(addresses)
}

/// What VERSION prints.
pub fn version_result(requested: Option<&str>) -> Value {
    json!({
        "cniVersion": requested.unwrap_or("1.0.0"),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// The `cniVersion` of a configuration that may not parse as a whole (for error results).
pub fn requested_version(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Versioned {
        #[serde(rename = "cniVersion")]
        cni_version: String,
    }
    serde_json::from_slice::<Versioned>(stdin)
        .ok()
        .map(|v| v.cni_version)
}

fn version_at_least(version: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (v_major, v_minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (v_major, v_minor) >= (major, minor)
}

#[cfg(test)]
mod tests;
