//! `weftctl proxy-status` and `weftctl version`: read the controller's `/debug/syncz` (what every
//! connected agent and waypoint was sent and what it answered) on its monitoring port.

use controller::syncz::{ProxySync, Syncz, TypeStatus, TypeSync};
use serde::Serialize;

use crate::http;
use crate::output::{self, Format, Table};

/// The controller's sync view, with a hint on what to do when it cannot be read. `controllers`
/// is one address or several, comma-separated (a cluster's replicas, each holding the streams
/// of the proxies connected to it, as istioctl asks every istiod): their proxies are merged.
pub fn syncz(controllers: &str) -> anyhow::Result<Syncz> {
    let mut merged: Option<Syncz> = None;
    for controller in controllers.split(',').filter(|c| !c.is_empty()) {
        let one = syncz_of(controller)?;
        merged = Some(match merged {
            None => one,
            Some(mut merged) => {
                if !merged
                    .controller_version
                    .split(", ")
                    .any(|v| v == one.controller_version)
                {
                    merged.controller_version =
                        format!("{}, {}", merged.controller_version, one.controller_version);
                }
                merged.proxies.extend(one.proxies);
                merged
            }
        });
    }
    merged
        .ok_or_else(|| anyhow::anyhow!("no controller address given: pass --controller HOST:PORT"))
}

fn syncz_of(controller: &str) -> anyhow::Result<Syncz> {
    let body = http::get(controller, "/debug/syncz").map_err(|error| {
        anyhow::anyhow!(
            "{error:#}\nThe controller's monitoring port (15014) must be reachable: pass \
             --controller HOST:PORT or set WEFT_CONTROLLER."
        )
    })?;
    serde_json::from_str(&body).map_err(|e| anyhow::anyhow!("{controller}/debug/syncz: {e}"))
}

/// The last segment of a type URL (`type.googleapis.com/istio.workload.Address` -> `Address`).
pub fn short_type(type_url: &str) -> &str {
    type_url.rsplit(['/', '.']).next().unwrap_or(type_url)
}

fn status_name(status: TypeStatus) -> &'static str {
    match status {
        TypeStatus::NotSent => "NOT SENT",
        TypeStatus::Synced => "SYNCED",
        TypeStatus::Nacked => "NACKED",
        TypeStatus::Stale => "STALE",
    }
}

/// A proxy's status over all its types: the worst one (NACKED, STALE, NOT SENT, SYNCED).
pub fn overall(types: &[TypeSync]) -> TypeStatus {
    let rank = |s: TypeStatus| match s {
        TypeStatus::Nacked => 3,
        TypeStatus::Stale => 2,
        TypeStatus::NotSent => 1,
        TypeStatus::Synced => 0,
    };
    types
        .iter()
        .map(TypeSync::status)
        .max_by_key(|s| rank(*s))
        .unwrap_or(TypeStatus::NotSent)
}

#[derive(Debug, Serialize)]
struct ProxyStatus<'a> {
    #[serde(flatten)]
    proxy: &'a ProxySync,
    status: TypeStatus,
}

pub fn proxy_status_table(proxies: &[ProxySync]) -> Table {
    let mut table = Table::new(&["NAME", "KIND", "CLUSTER", "STATUS", "TYPES", "NACK"]);
    for proxy in proxies {
        let types: Vec<String> = proxy
            .types
            .iter()
            .map(|t| {
                format!(
                    "{} {} (sent {}, acked {})",
                    short_type(&t.type_url),
                    status_name(t.status()),
                    t.sent.as_deref().unwrap_or("-"),
                    t.acked.as_deref().unwrap_or("-")
                )
            })
            .collect();
        let nacks: Vec<String> = proxy
            .types
            .iter()
            .filter_map(|t| {
                Some(format!(
                    "{} nonce {}: {}",
                    short_type(&t.type_url),
                    t.nacked.as_deref()?,
                    t.nack_error.as_deref()?
                ))
            })
            .collect();
        table.row(vec![
            proxy.proxy.clone(),
            output::or_dash(&proxy.kind),
            output::or_dash(&proxy.cluster),
            status_name(overall(&proxy.types)).to_owned(),
            output::or_dash(&types.join(", ")),
            output::or_dash(&nacks.join("; ")),
        ]);
    }
    table
}

pub fn proxy_status(controller: &str, proxy: Option<&str>, format: Format) -> anyhow::Result<u8> {
    let syncz = syncz(controller)?;
    let proxies: Vec<ProxySync> = syncz
        .proxies
        .into_iter()
        .filter(|p| proxy.is_none_or(|wanted| p.proxy.contains(wanted)))
        .collect();
    if let Some(wanted) = proxy
        && proxies.is_empty()
    {
        anyhow::bail!(
            "no connected proxy matches {wanted:?}: run `weftctl proxy-status` to list them"
        );
    }
    let rows: Vec<ProxyStatus> = proxies
        .iter()
        .map(|p| ProxyStatus {
            proxy: p,
            status: overall(&p.types),
        })
        .collect();
    output::emit(format, &rows, || proxy_status_table(&proxies))?;
    Ok(0)
}

#[derive(Debug, Serialize)]
pub struct Versions {
    pub client: String,
    pub controller: Option<String>,
    pub proxies: Vec<ProxyVersion>,
}

#[derive(Debug, Serialize)]
pub struct ProxyVersion {
    pub proxy: String,
    pub kind: String,
    /// As the proxy reported it in its xDS node (`user_agent_version`); `None` when it did not.
    pub version: Option<String>,
}

/// Versions of weftctl, the controller (shown as `shown_as`) and its proxies.
pub fn version(
    controller: &str,
    shown_as: &str,
    client_only: bool,
    format: Format,
) -> anyhow::Result<u8> {
    let client = env!("CARGO_PKG_VERSION").to_owned();
    let mut versions = Versions {
        client,
        controller: None,
        proxies: Vec::new(),
    };
    let mut unreachable = None;
    if !client_only {
        match syncz(controller) {
            Ok(syncz) => {
                versions.controller = Some(syncz.controller_version);
                versions.proxies = syncz
                    .proxies
                    .into_iter()
                    .map(|p| ProxyVersion {
                        proxy: p.proxy,
                        kind: p.kind,
                        version: (!p.version.is_empty()).then_some(p.version),
                    })
                    .collect();
            }
            Err(error) => unreachable = Some(error),
        }
    }
    output::emit(format, &versions, || {
        let mut table = Table::new(&["COMPONENT", "KIND", "VERSION"]);
        table.row(vec![
            "weftctl".into(),
            "client".into(),
            versions.client.clone(),
        ]);
        if let Some(controller_version) = &versions.controller {
            table.row(vec![
                shown_as.to_owned(),
                "controller".into(),
                controller_version.clone(),
            ]);
        }
        for proxy in &versions.proxies {
            table.row(vec![
                proxy.proxy.clone(),
                output::or_dash(&proxy.kind),
                proxy
                    .version
                    .clone()
                    .unwrap_or_else(|| "not reported".into()),
            ]);
        }
        table
    })?;
    match unreachable {
        Some(error) => Err(error.context("the controller's and proxies' versions are unknown")),
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(
        type_url: &str,
        sent: &str,
        acked: Option<&str>,
        nack: Option<(&str, &str)>,
    ) -> TypeSync {
        TypeSync {
            type_url: type_url.into(),
            sent: Some(sent.into()),
            acked: acked.map(Into::into),
            nacked: nack.map(|n| n.0.into()),
            nack_error: nack.map(|n| n.1.into()),
        }
    }

    #[test]
    fn short_type_names() {
        assert_eq!(
            short_type("type.googleapis.com/istio.workload.Address"),
            "Address"
        );
        assert_eq!(short_type("Plain"), "Plain");
    }

    #[test]
    fn worst_type_decides_and_nack_errors_are_shown() {
        let proxy = ProxySync {
            proxy: "node-agent~node1".into(),
            kind: "node-agent".into(),
            cluster: "Kubernetes".into(),
            version: String::new(),
            connection: 1,
            types: vec![
                sync("t/istio.workload.Address", "1", Some("1"), None),
                sync(
                    "t/istio.security.Authorization",
                    "2",
                    Some("1"),
                    Some(("2", "bad port")),
                ),
            ],
        };
        assert_eq!(overall(&proxy.types), TypeStatus::Nacked);
        let text = proxy_status_table(std::slice::from_ref(&proxy)).render();
        assert!(text.contains("NACKED"), "{text}");
        assert!(text.contains("Address SYNCED (sent 1, acked 1)"), "{text}");
        assert!(text.contains("Authorization nonce 2: bad port"), "{text}");
        assert_eq!(overall(&proxy.types[..1]), TypeStatus::Synced);
        assert_eq!(overall(&[]), TypeStatus::NotSent);
    }
}
