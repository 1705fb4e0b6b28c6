//! What every connected proxy was sent and what it answered, per resource type: the controller's
//! `/debug/syncz` (istiod's debug endpoint of the same name, which `istioctl proxy-status`
//! reads). [`SyncStatus`] is the discovery server's metrics sink: it forwards the totals to
//! [`XdsCounters`] and keeps, per stream, the last nonce sent, the last ACKed and the last NACKed
//! with the proxy's error.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use weft_proxy_core::admin::Endpoints;
use weft_xds::server::ProxyIdentity;
use weft_xds::{Rejection, StreamEvent, XdsCounters, XdsMetrics};

/// The controller's version, as `/debug/syncz` and `/version` report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where one resource type stands on one stream, as `istioctl proxy-status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TypeStatus {
    /// Nothing sent yet.
    NotSent,
    /// The last response sent was ACKed.
    Synced,
    /// The last response sent was NACKed: the proxy keeps its previous configuration.
    Nacked,
    /// The last response sent is not answered yet.
    Stale,
}

/// One resource type on one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeSync {
    pub type_url: String,
    /// Nonce of the last response sent.
    pub sent: Option<String>,
    /// Nonce of the last response the proxy ACKed.
    pub acked: Option<String>,
    /// Nonce of the last response the proxy NACKed, and its error.
    pub nacked: Option<String>,
    pub nack_error: Option<String>,
}

impl TypeSync {
    pub fn status(&self) -> TypeStatus {
        match &self.sent {
            None => TypeStatus::NotSent,
            Some(sent) if self.acked.as_ref() == Some(sent) => TypeStatus::Synced,
            Some(sent) if self.nacked.as_ref() == Some(sent) => TypeStatus::Nacked,
            Some(_) => TypeStatus::Stale,
        }
    }
}

/// One connected proxy (one discovery stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxySync {
    /// `Node.id`.
    pub proxy: String,
    /// `node-agent` or `waypoint` (the node's `PROXY_KIND` metadata, else the id's first field).
    pub kind: String,
    /// `Node.cluster`.
    pub cluster: String,
    /// The version the proxy reported (`Node.user_agent_version`), empty when it reported none.
    pub version: String,
    /// Number of the stream on this controller.
    pub connection: u64,
    pub types: Vec<TypeSync>,
}

/// The body of `/debug/syncz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Syncz {
    pub controller_version: String,
    pub proxies: Vec<ProxySync>,
}

/// The discovery server's metrics sink that also tracks every stream's sync state.
#[derive(Debug)]
pub struct SyncStatus {
    counters: Arc<XdsCounters>,
    streams: Mutex<BTreeMap<u64, ProxySync>>,
}

fn kind_of(proxy: &ProxyIdentity) -> String {
    proxy
        .metadata_string("PROXY_KIND")
        .or_else(|| proxy.id.split('~').next())
        .unwrap_or_default()
        .to_owned()
}

fn reported_version(proxy: &ProxyIdentity) -> String {
    use weft_proto::envoy::config::core::v3::node::UserAgentVersionType;
    match &proxy.node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentVersion(version)) => version.clone(),
        _ => String::new(),
    }
}

impl SyncStatus {
    pub fn new(counters: Arc<XdsCounters>) -> Self {
        Self {
            counters,
            streams: Mutex::default(),
        }
    }

    /// Every connected proxy, by id.
    pub fn snapshot(&self) -> Syncz {
        let mut proxies: Vec<ProxySync> = self
            .streams
            .lock()
            .map(|streams| streams.values().cloned().collect())
            .unwrap_or_default();
        proxies.sort_by(|a, b| (&a.proxy, a.connection).cmp(&(&b.proxy, b.connection)));
        Syncz {
            controller_version: VERSION.to_owned(),
            proxies,
        }
    }

    fn update(&self, connection: u64, type_url: &str, change: impl FnOnce(&mut TypeSync)) {
        let Ok(mut streams) = self.streams.lock() else {
            return;
        };
        let Some(stream) = streams.get_mut(&connection) else {
            return;
        };
        let position = match stream.types.iter().position(|t| t.type_url == type_url) {
            Some(position) => position,
            None => {
                stream.types.push(TypeSync {
                    type_url: type_url.to_owned(),
                    ..TypeSync::default()
                });
                stream.types.len() - 1
            }
        };
        change(&mut stream.types[position]);
    }
}

/// `/debug/syncz` (JSON) and `/version`.
pub fn endpoints(sync: Arc<SyncStatus>) -> Endpoints {
    Arc::new(move |path| match path {
        "/debug/syncz" => Some(match serde_json::to_string_pretty(&sync.snapshot()) {
            Ok(body) => (StatusCode::OK, "application/json", body),
            Err(error) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("syncz: {error}\n"),
            ),
        }),
        "/version" => Some((StatusCode::OK, "text/plain", format!("{VERSION}\n"))),
        _ => None,
    })
}

impl XdsMetrics for SyncStatus {
    fn proxy_connected(&self, proxy_id: &str) {
        self.counters.proxy_connected(proxy_id);
    }

    fn proxy_disconnected(&self, proxy_id: &str) {
        self.counters.proxy_disconnected(proxy_id);
    }

    fn pushed(&self, type_url: &str, latency: Duration) {
        self.counters.pushed(type_url, latency);
    }

    fn converged(&self, latency: Duration) {
        self.counters.converged(latency);
    }

    fn rejected(&self, rejection: &Rejection) {
        self.counters.rejected(rejection);
    }

    fn stream_event(&self, proxy: &ProxyIdentity, event: StreamEvent<'_>) {
        match event {
            StreamEvent::Opened => {
                if let Ok(mut streams) = self.streams.lock() {
                    streams.insert(
                        proxy.connection,
                        ProxySync {
                            proxy: proxy.id.clone(),
                            kind: kind_of(proxy),
                            cluster: proxy.node.cluster.clone(),
                            version: reported_version(proxy),
                            connection: proxy.connection,
                            types: Vec::new(),
                        },
                    );
                }
            }
            StreamEvent::Closed => {
                if let Ok(mut streams) = self.streams.lock() {
                    streams.remove(&proxy.connection);
                }
            }
            StreamEvent::Sent { type_url, nonce } => {
                self.update(proxy.connection, type_url, |sync| {
                    sync.sent = Some(nonce.to_owned());
                });
            }
            StreamEvent::Answered {
                type_url,
                nonce,
                error,
            } => self.update(proxy.connection, type_url, |sync| match error {
                None => sync.acked = Some(nonce.to_owned()),
                Some(error) => {
                    sync.nacked = Some(nonce.to_owned());
                    sync.nack_error = Some(error.to_owned());
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(connection: u64, id: &str) -> ProxyIdentity {
        ProxyIdentity {
            id: id.to_owned(),
            node: weft_proto::envoy::config::core::v3::Node {
                id: id.to_owned(),
                ..Default::default()
            },
            connection,
            verified: None,
        }
    }

    #[test]
    fn tracks_sent_acked_and_nacked_per_stream_and_type() {
        let status = SyncStatus::new(Arc::default());
        let agent = proxy(1, "node-agent~node-a");
        let waypoint = proxy(
            2,
            "waypoint~10.0.0.5~waypoint.default~default.svc.cluster.local",
        );
        status.stream_event(&agent, StreamEvent::Opened);
        status.stream_event(&waypoint, StreamEvent::Opened);
        let (address, policy) = ("type/Address", "type/Authorization");
        for (type_url, nonce) in [(address, "1"), (policy, "2")] {
            status.stream_event(&agent, StreamEvent::Sent { type_url, nonce });
        }
        status.stream_event(
            &agent,
            StreamEvent::Answered {
                type_url: address,
                nonce: "1",
                error: None,
            },
        );
        status.stream_event(
            &agent,
            StreamEvent::Answered {
                type_url: policy,
                nonce: "2",
                error: Some("bad rule"),
            },
        );
        status.stream_event(
            &waypoint,
            StreamEvent::Sent {
                type_url: "type/Waypoint",
                nonce: "1",
            },
        );
        let syncz = status.snapshot();
        assert_eq!(syncz.proxies.len(), 2);
        let agent_sync = &syncz.proxies[0];
        assert_eq!(agent_sync.kind, "node-agent");
        assert_eq!(agent_sync.types[0].status(), TypeStatus::Synced);
        assert_eq!(agent_sync.types[1].status(), TypeStatus::Nacked);
        assert_eq!(agent_sync.types[1].nack_error.as_deref(), Some("bad rule"));
        assert_eq!(syncz.proxies[1].kind, "waypoint");
        assert_eq!(syncz.proxies[1].types[0].status(), TypeStatus::Stale);

        // A newer push after the NACK, not yet answered, is stale again.
        status.stream_event(
            &agent,
            StreamEvent::Sent {
                type_url: policy,
                nonce: "3",
            },
        );
        assert_eq!(
            status.snapshot().proxies[0].types[1].status(),
            TypeStatus::Stale
        );
        status.stream_event(&agent, StreamEvent::Closed);
        assert_eq!(status.snapshot().proxies.len(), 1);

        let endpoints = endpoints(Arc::new(status));
        let (code, content_type, body) = endpoints("/debug/syncz").expect("served");
        assert_eq!((code, content_type), (StatusCode::OK, "application/json"));
        let syncz: Syncz = serde_json::from_str(&body).unwrap();
        assert_eq!(syncz.proxies[0].kind, "waypoint");
        assert_eq!(endpoints("/version").unwrap().2, format!("{VERSION}\n"));
        assert!(endpoints("/nope").is_none());
    }
}
