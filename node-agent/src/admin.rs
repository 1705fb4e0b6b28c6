//! What the agent serves on its admin (`/config_dump`, 127.0.0.1:15000), metrics (15020) and
//! readiness (15021) ports, with `weft_proxy_core::admin`'s server: the configuration, the xDS
//! state, the store and the certificates (never keys); Istio's metrics; ready once the first
//! configuration arrived and every captured pod is served, unready from the start of the drain.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;
use weft_proxy_core::{
    admin::{
        AdminError, AdminServer, Endpoints, READINESS_PATH, combine, config_dump_endpoints,
        metrics_endpoints, readiness_endpoints,
    },
    certificates::CertificateState,
    drain::DrainStatus,
};
use weft_xds::ConnectionState;

use crate::{
    config::Config,
    state::{StoreDump, WorkloadStore},
};

/// What `/config_dump` shows: configuration, xDS state, the store and certificates (no keys).
#[derive(Debug, Serialize)]
pub struct ConfigDump<'a> {
    pub config: &'a Config,
    pub xds: XdsDump,
    pub state: StoreDump,
    pub certificates: Vec<CertificateState>,
}

/// The xDS client's state as the dump shows it.
#[derive(Debug, Serialize)]
pub struct XdsDump {
    pub connected: bool,
    pub synced: bool,
    pub last_error: Option<String>,
}

impl From<&ConnectionState> for XdsDump {
    fn from(state: &ConnectionState) -> Self {
        Self {
            connected: state.connected,
            synced: state.synced,
            last_error: state.last_error.clone(),
        }
    }
}

/// The certificates held, as the dump shows them.
pub type DescribeCertificates = Arc<dyn Fn() -> Vec<CertificateState> + Send + Sync>;

/// How many pods the capture holds that this process does not serve yet (see
/// [`crate::pods::PodManager::unserved`]).
pub type UnservedPods = Arc<dyn Fn() -> usize + Send + Sync>;

/// The endpoints of the admin, metrics and readiness ports, in that order. Ready once the
/// first configuration arrived and every pod the capture holds is served by this process: a
/// next agent started beside a running one (a rolling update) is ready only once it took every
/// pod over, which is when the old one may be told to drain.
pub fn endpoints(
    config: Config,
    store: WorkloadStore,
    certificates: DescribeCertificates,
    xds: watch::Receiver<ConnectionState>,
    registry: Arc<Registry>,
    drain: DrainStatus,
    unserved: UnservedPods,
) -> [Endpoints; 3] {
    let ready = {
        let xds = xds.clone();
        move || {
            if drain.is_draining() {
                // Load balancers stop sending before the listeners close.
                return Err("draining".to_owned());
            }
            if !xds.borrow().synced {
                return Err("waiting for configuration".to_owned());
            }
            match unserved() {
                0 => Ok(()),
                n => Err(format!(
                    "waiting for the enrollment snapshot: {n} captured pods not served yet"
                )),
            }
        }
    };
    let readiness = readiness_endpoints(READINESS_PATH, ready);
    let dump = config_dump_endpoints(move || {
        let xds = XdsDump::from(&*xds.borrow());
        serde_json::to_value(ConfigDump {
            config: &config,
            xds,
            state: store.dump(),
            certificates: certificates(),
        })
        .unwrap_or_else(|error| serde_json::Value::String(format!("config dump: {error}")))
    });
    [
        dump,
        // Istio's 15020 answers readiness too.
        combine([metrics_endpoints(registry), readiness.clone()]),
        readiness,
    ]
}

/// Binds the admin, metrics and readiness ports of `config` and serves them until the process
/// ends.
pub async fn serve(config: &Config, endpoints: [Endpoints; 3]) -> Result<(), AdminError> {
    let addresses = [
        config.proxy.admin_address,
        config.proxy.metrics_address,
        config.proxy.readiness_address,
    ];
    for (address, endpoints) in addresses.into_iter().zip(endpoints) {
        let server = AdminServer::bind(address, endpoints).await?;
        tokio::spawn(server.run());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
