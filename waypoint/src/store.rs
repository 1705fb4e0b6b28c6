//! The current configuration, swapped whole: readers take a cheap `Arc` snapshot per tunnel or
//! request and never hold the lock across an await; the only writer is [`ConfigStore::apply`].

use std::sync::{Arc, RwLock};

use prost::Message;
use tokio::sync::watch;
use tracing::{info, warn};
use weft_proto::waypoint as proto;
use weft_xds::{Handler, Update};

use crate::model::{ConfigError, WaypointConfig};

/// Holds the last good configuration.
#[derive(Debug, Clone)]
pub struct ConfigStore {
    current: Arc<RwLock<Arc<WaypointConfig>>>,
    version: Arc<watch::Sender<u64>>,
}

impl Default for ConfigStore {
    fn default() -> Self {
        let (version, _) = watch::channel(0);
        ConfigStore {
            current: Arc::new(RwLock::new(Arc::new(WaypointConfig::default()))),
            version: Arc::new(version),
        }
    }
}

impl ConfigStore {
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
        let name = format!("{}/{}", config.namespace, config.name);
        let converted = Arc::new(WaypointConfig::try_from(config)?);
        let services = converted.services.len();
        let clusters = converted.clusters.len();
        match self.current.write() {
            Ok(mut guard) => *guard = converted,
            Err(poisoned) => *poisoned.into_inner() = converted,
        }
        self.version.send_modify(|v| *v += 1);
        info!(waypoint = %name, services, clusters, "waypoint configuration applied");
        Ok(())
    }

    /// Number of configurations applied so far; wakes on every change.
    pub fn version(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// An xDS handler for `WaypointConfig` resources that feeds this store.
    pub fn xds_handler(&self) -> WaypointConfigHandler {
        WaypointConfigHandler {
            store: self.clone(),
            resource: None,
        }
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
            let config = proto::WaypointConfig::decode(any.value.as_slice())
                .map_err(|e| format!("resource {}: {e}", resource.name))?;
            self.store.apply(config).map_err(|e| {
                warn!(resource = %resource.name, error = %e, "rejecting waypoint configuration");
                format!("resource {}: {e}", resource.name)
            })?;
            self.resource = Some(resource.name.clone());
            return Ok(());
        }
        if self
            .resource
            .as_ref()
            .is_some_and(|name| update.removed.contains(name))
        {
            self.store
                .apply(proto::WaypointConfig::default())
                .map_err(|e| e.to_string())?;
            self.resource = None;
        }
        Ok(())
    }
}
