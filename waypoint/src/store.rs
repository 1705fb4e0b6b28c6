//! The current configuration, swapped whole: readers take a cheap `Arc` snapshot per tunnel or
//! request and never hold the lock across an await; the only writer is [`ConfigStore::apply`].
//! The xDS handler also records which version it applied or rejected last, for the admin page.

use crate::upstream::OriginationCredentials;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use prost::Message;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};
use weft_proto::waypoint as proto;
use weft_xds::{Handler, Update};

use crate::model::{ConfigError, ResolvedNames, SourceTable, WaypointConfig};

/// A resource version the xDS handler applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedVersion {
    pub resource: String,
    /// The server's version of the resource; `removed` when the server withdrew it.
    pub version: String,
    /// RFC 3339, UTC.
    pub at: String,
}

/// A resource version the xDS handler rejected (NACKed), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedVersion {
    pub resource: String,
    pub version: String,
    pub error: String,
    /// RFC 3339, UTC.
    pub at: String,
}

/// The last version applied and the last one rejected over xDS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct XdsHistory {
    pub last_applied: Option<AppliedVersion>,
    pub last_rejected: Option<RejectedVersion>,
}

/// Told of every configuration once it is in force (the upstream forgets what it dropped).
pub type ApplyObserver = Arc<dyn Fn(&WaypointConfig) + Send + Sync>;

/// Holds the last good configuration.
#[derive(Clone)]
pub struct ConfigStore {
    current: Arc<RwLock<Arc<WaypointConfig>>>,
    version: Arc<watch::Sender<u64>>,
    history: Arc<Mutex<XdsHistory>>,
    observers: Arc<RwLock<Vec<ApplyObserver>>>,
    /// Endpoint names: the addresses last resolved ([`crate::dns`]), and the last configuration
    /// applied when it has endpoints by name, to convert again when their addresses change.
    names: Arc<Mutex<NamedEndpoints>>,
    /// The mesh's workloads as request sources (`SourceWorkload` resources), shared by every
    /// configuration put in force.
    sources: SourceTable,
    /// Where `credentialName` credentials for TLS origination are found.
    origination_credentials: OriginationCredentials,
    /// This pod's IP: which of the configuration's instances it is, for locality priorities.
    instance: Option<std::net::IpAddr>,
}

#[derive(Debug, Default)]
struct NamedEndpoints {
    resolved: ResolvedNames,
    config: Option<proto::WaypointConfig>,
}

impl std::fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigStore")
            .field("version", &*self.version.borrow())
            .finish_non_exhaustive()
    }
}

impl Default for ConfigStore {
    fn default() -> Self {
        let (version, _) = watch::channel(0);
        let sources = SourceTable::default();
        let mut empty = WaypointConfig::default();
        empty.sources = sources.clone();
        ConfigStore {
            current: Arc::new(RwLock::new(Arc::new(empty))),
            version: Arc::new(version),
            history: Arc::default(),
            observers: Arc::default(),
            names: Arc::default(),
            sources,
            origination_credentials: OriginationCredentials::default(),
            instance: None,
        }
    }
}

impl ConfigStore {
    /// The store, finding TLS origination credentials (`credentialName`) in `credentials`.
    pub fn with_origination_credentials(mut self, credentials: OriginationCredentials) -> Self {
        self.origination_credentials = credentials;
        self
    }

    /// The store of the proxy whose pod has the IP `instance`: clusters with locality load
    /// balancing rank their endpoints relative to that pod.
    pub fn with_instance(mut self, instance: Option<std::net::IpAddr>) -> Self {
        self.instance = instance;
        self
    }

    fn convert(
        &self,
        config: proto::WaypointConfig,
        names: &ResolvedNames,
    ) -> Result<WaypointConfig, ConfigError> {
        WaypointConfig::from_proto_at(config, names, &self.origination_credentials, self.instance)
    }

    /// The configuration now in force.
    pub fn snapshot(&self) -> Arc<WaypointConfig> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Validates `config` completely, then replaces the current one; on error the current one
    /// stays (what a NACK means).
    pub fn apply(&self, config: proto::WaypointConfig) -> Result<(), ConfigError> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let by_name = config
            .clusters
            .iter()
            .flat_map(|c| &c.endpoints)
            .any(|e| !e.hostname.is_empty());
        let kept = by_name.then(|| config.clone());
        self.publish(self.convert(config, &names.resolved)?);
        names.config = kept;
        Ok(())
    }

    /// The addresses of endpoint names now in use.
    pub fn resolved_names(&self) -> ResolvedNames {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names.resolved.clone()
    }

    /// New addresses for endpoint names: the last configuration is converted again with them
    /// (it was valid, so it still is: a failure keeps the current one).
    pub fn set_resolved_names(&self, resolved: ResolvedNames) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names.resolved = resolved;
        if let Some(config) = names.config.clone() {
            match self.convert(config, &names.resolved) {
                Ok(converted) => self.publish(converted),
                Err(error) => warn!(%error, "endpoint names resolved, configuration not converted"),
            }
        }
    }

    /// Puts `converted` in force and tells the observers.
    fn publish(&self, mut converted: WaypointConfig) {
        converted.sources = self.sources.clone();
        let name = format!("{}/{}", converted.namespace, converted.name);
        // Balancing plans (hash tables included) are built before the configuration is in
        // force, so that no request waits for one.
        for cluster in converted.clusters.values() {
            cluster.plan();
        }
        let converted = Arc::new(converted);
        let services = converted.services.len();
        let clusters = converted.clusters.len();
        match self.current.write() {
            Ok(mut guard) => *guard = Arc::clone(&converted),
            Err(poisoned) => *poisoned.into_inner() = Arc::clone(&converted),
        }
        for observer in self
            .observers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            observer(&converted);
        }
        self.version.send_modify(|v| *v += 1);
        info!(waypoint = %name, services, clusters, "waypoint configuration applied");
    }

    /// Calls `observer` with every configuration applied from now on, once it is in force.
    pub fn on_apply(&self, observer: ApplyObserver) {
        self.observers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(observer);
    }

    /// Number of configurations applied so far; wakes on every change.
    pub fn version(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// What the xDS handler applied and rejected last.
    pub fn xds_history(&self) -> XdsHistory {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record(&self, update: impl FnOnce(&mut XdsHistory)) {
        update(&mut self.history.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// An xDS handler for `WaypointConfig` resources that feeds this store.
    pub fn xds_handler(&self) -> WaypointConfigHandler {
        WaypointConfigHandler {
            store: self.clone(),
            resource: None,
        }
    }

    /// The mesh's workloads as request sources, as the configurations in force see them.
    pub fn sources(&self) -> &SourceTable {
        &self.sources
    }

    /// An xDS handler for `SourceWorkload` resources (every one, by wildcard) that feeds this
    /// store's source table.
    pub fn source_handler(&self) -> SourceWorkloadHandler {
        SourceWorkloadHandler {
            sources: self.sources.clone(),
        }
    }
}

/// Delta ADS handler for the `weft.waypoint.v1.SourceWorkload` type: the mesh's workloads, one
/// resource per address. An update is converted whole before it changes anything; a bad one is
/// rejected and the table stays as it was.
#[derive(Debug)]
pub struct SourceWorkloadHandler {
    sources: SourceTable,
}

impl Handler for SourceWorkloadHandler {
    fn apply(&mut self, update: Update) -> Result<(), String> {
        let added = update
            .added
            .iter()
            .map(|resource| {
                let any = resource
                    .resource
                    .as_ref()
                    .ok_or_else(|| format!("resource {} has no body", resource.name))?;
                let workload = proto::SourceWorkload::decode(any.value.as_slice())
                    .map_err(|e| format!("resource {}: {e}", resource.name))?;
                Ok((resource.name.clone(), workload))
            })
            .collect::<Result<Vec<_>, String>>()?;
        self.sources
            .apply(&added, &update.removed)
            .map_err(|error| {
                warn!(%error, "rejecting source workloads");
                error.to_string()
            })
    }
}

/// Delta ADS handler for the `weft.waypoint.v1.WaypointConfig` type: the waypoint holds one
/// resource (its own); a removal empties the configuration.
#[derive(Debug)]
pub struct WaypointConfigHandler {
    store: ConfigStore,
    resource: Option<String>,
}

impl Handler for WaypointConfigHandler {
    fn apply(&mut self, update: Update) -> Result<(), String> {
        if let Some(resource) = update.added.last() {
            let any = resource
                .resource
                .as_ref()
                .ok_or_else(|| format!("resource {} has no body", resource.name))?;
            let applied = proto::WaypointConfig::decode(any.value.as_slice())
                .map_err(|e| e.to_string())
                .and_then(|config| self.store.apply(config).map_err(|e| e.to_string()));
            let at = crate::metrics::humantime_utc(SystemTime::now());
            if let Err(error) = applied {
                warn!(resource = %resource.name, version = %resource.version, %error, "rejecting waypoint configuration");
                self.store.record(|h| {
                    h.last_rejected = Some(RejectedVersion {
                        resource: resource.name.clone(),
                        version: resource.version.clone(),
                        error: error.clone(),
                        at,
                    });
                });
                return Err(format!("resource {}: {error}", resource.name));
            }
            self.store.record(|h| {
                h.last_applied = Some(AppliedVersion {
                    resource: resource.name.clone(),
                    version: resource.version.clone(),
                    at,
                });
            });
            self.resource = Some(resource.name.clone());
            return Ok(());
        }
        if let Some(name) = self
            .resource
            .clone()
            .filter(|name| update.removed.contains(name))
        {
            self.store
                .apply(proto::WaypointConfig::default())
                .map_err(|e| e.to_string())?;
            self.store.record(|h| {
                h.last_applied = Some(AppliedVersion {
                    resource: name,
                    version: "removed".to_owned(),
                    at: crate::metrics::humantime_utc(SystemTime::now()),
                });
            });
            self.resource = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source_resource(
        name: &str,
        address: &str,
        app: &str,
    ) -> weft_proto::envoy::service::discovery::v3::Resource {
        let workload = proto::SourceWorkload {
            address: address.to_owned(),
            identity: format!("spiffe://cluster.local/ns/default/sa/{app}"),
            labels: [("app".to_owned(), app.to_owned())].into(),
            workload_uid: format!("uid-{app}"),
            workload_name: format!("{app}-v1"),
        };
        weft_proto::envoy::service::discovery::v3::Resource {
            name: name.to_owned(),
            version: "1".to_owned(),
            resource: Some(prost_types::Any::from_msg(&workload).unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn source_workloads_served_apart_describe_sources_for_every_configuration() {
        let store = ConfigStore::default();
        let mut sources = store.source_handler();
        let app = |store: &ConfigStore, ip: &str| {
            store
                .snapshot()
                .workload(ip.parse().unwrap())
                .and_then(|w| w.canonical_service().map(str::to_owned))
        };
        sources
            .apply(Update {
                added: vec![
                    source_resource("10.0.0.9", "10.0.0.9", "productpage"),
                    source_resource("fd00::9", "fd00::9", "ratings"),
                ],
                removed: Vec::new(),
                full_state: true,
            })
            .unwrap();
        // Sources arriving before or after a configuration describe requests under it.
        assert_eq!(app(&store, "10.0.0.9").as_deref(), Some("productpage"));
        store
            .apply(proto::WaypointConfig {
                name: "waypoint".to_owned(),
                namespace: "default".to_owned(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(app(&store, "fd00::9").as_deref(), Some("ratings"));
        // A bad resource rejects the whole update, and nothing of it is applied.
        for bad in [
            source_resource("10.0.0.10", "10.0.0.11", "mismatch"),
            source_resource("not-an-ip", "not-an-ip", "noip"),
        ] {
            let error = sources
                .apply(Update {
                    added: vec![source_resource("10.0.0.12", "10.0.0.12", "fine"), bad],
                    removed: vec!["10.0.0.9".to_owned()],
                    full_state: false,
                })
                .unwrap_err();
            assert!(error.contains("source workload"), "{error}");
            assert_eq!(app(&store, "10.0.0.12"), None);
            assert_eq!(app(&store, "10.0.0.9").as_deref(), Some("productpage"));
        }
        // Changes and removals reach the configuration in force without a new one.
        sources
            .apply(Update {
                added: vec![source_resource("fd00::9", "fd00::9", "ratings-v2")],
                removed: vec!["10.0.0.9".to_owned()],
                full_state: false,
            })
            .unwrap();
        assert_eq!(app(&store, "10.0.0.9"), None);
        assert_eq!(app(&store, "fd00::9").as_deref(), Some("ratings-v2"));
        assert_eq!(store.sources().len(), 1);
    }

    #[test]
    fn new_answers_for_endpoint_names_convert_the_last_configuration_again() {
        let endpoint = proto::Endpoint {
            hostname: "api.example.com".to_owned(),
            port: 443,
            tunnel: proto::EndpointTunnel::None as i32,
            healthy: true,
            ..Default::default()
        };
        let config = proto::WaypointConfig {
            name: "waypoint".to_owned(),
            namespace: "egress".to_owned(),
            clusters: vec![proto::Cluster {
                name: "outbound|443||api.example.com".to_owned(),
                host: "api.example.com".to_owned(),
                port: 443,
                endpoints: vec![endpoint],
                ..Default::default()
            }],
            ..Default::default()
        };
        let store = ConfigStore::default();
        store.apply(config).unwrap();
        let endpoints = |store: &ConfigStore| -> Vec<String> {
            store.snapshot().clusters["outbound|443||api.example.com"]
                .endpoints
                .iter()
                .map(|e| e.address.to_string())
                .collect()
        };
        assert!(endpoints(&store).is_empty());
        let version = *store.version().borrow();
        store.set_resolved_names(ResolvedNames::from([(
            "api.example.com".to_owned(),
            vec!["192.0.2.7".parse().unwrap()],
        )]));
        assert_eq!(endpoints(&store), ["192.0.2.7:443"]);
        assert_eq!(*store.version().borrow(), version + 1, "readers are woken");
        // A configuration without names is not kept: new answers change nothing.
        store.apply(proto::WaypointConfig::default()).unwrap();
        let version = *store.version().borrow();
        store.set_resolved_names(ResolvedNames::new());
        assert_eq!(*store.version().borrow(), version);
    }
}
