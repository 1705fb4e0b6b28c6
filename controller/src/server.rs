//! The controller in local mode: watches a directory of YAML, keeps the index, translates it for
//! node agents and waypoints, serves delta ADS and the CA on one gRPC port, and its metrics on the
//! monitoring port. A change to the directory reaches connected proxies within a second; an invalid edit is
//! reported and the last good version of that resource keeps serving.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use tokio::sync::watch;
use weft_identity::{CertificateAuthority, SpiffeId};
use weft_xds::{DeltaAdsServer, ResourceStore, XdsCounters};

use crate::{
    ca::{BootstrapTokens, CertificateService, NodeDirectory},
    index::ConfigIndex,
    loader, push,
    translate::{self, MeshSettings},
};

/// How often the directory is checked for changes.
const RESCAN: Duration = Duration::from_millis(300);

/// Everything `controller run` is told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub config_dir: PathBuf,
    /// Plaintext gRPC (xDS and CA), 15010 in Istio's numbering.
    pub grpc_address: SocketAddr,
    /// Prometheus metrics, 15014.
    pub monitoring_address: SocketAddr,
    /// Where the root CA is kept (created on first start).
    pub ca_dir: PathBuf,
    /// `<node> <token>` lines.
    pub bootstrap_tokens: PathBuf,
    pub settings: MeshSettings,
}

/// Errors that stop the controller from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("certificate authority in {0}: {1}")]
    Ca(PathBuf, #[source] weft_identity::CaError),
    #[error(transparent)]
    Tokens(#[from] crate::ca::TokenFileError),
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error("grpc server: {0}")]
    Grpc(#[source] tonic::transport::Error),
}

/// The current index, shared with the CA (which pods run where).
#[derive(Clone, Default)]
pub struct SharedIndex(Arc<RwLock<Arc<ConfigIndex>>>);

impl SharedIndex {
    pub fn get(&self) -> Arc<ConfigIndex> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, index: ConfigIndex) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(index);
    }
}

/// The CA's view of which identities run on which node: pods scheduled there.
pub struct IndexDirectory {
    index: SharedIndex,
    trust_domain: String,
}

impl NodeDirectory for IndexDirectory {
    fn runs_on(&self, node: &str, identity: &SpiffeId) -> bool {
        crate::ca::mesh_pod_runs_on(&self.index.get(), node, identity, &self.trust_domain)
    }
}

/// Files and their modification times: what a change looks like.
fn fingerprint(dir: &std::path::Path) -> BTreeMap<PathBuf, (SystemTime, u64)> {
    let files = loader::collect_yaml_files(dir).unwrap_or_default();
    files
        .into_iter()
        .filter_map(|file| {
            let meta = std::fs::metadata(&file).ok()?;
            Some((file, (meta.modified().ok()?, meta.len())))
        })
        .collect()
}

/// Loads the directory and publishes the translation; returns the rejections' messages.
pub fn reload(
    config: &ServerConfig,
    index: &SharedIndex,
    store: &mut ResourceStore,
) -> Vec<String> {
    let report = loader::load_paths(&[&config.config_dir]);
    let previous = index.get();
    let (next, rejections) = ConfigIndex::from_report(report, Some(&previous));
    for rejection in &rejections {
        tracing::warn!(problem = %rejection.message, "configuration rejected");
    }
    let translation = translate::translate(&next, &config.settings);
    for problem in &translation.problems {
        tracing::warn!(%problem, "configuration not translated");
    }
    let changed = push::publish(store, &translation);
    tracing::info!(
        pods = next.pods.len(),
        services = next.services.len(),
        policies = next.authorization_policies.len(),
        waypoints = translation.waypoints.len(),
        rejected = rejections.len(),
        untranslated = translation.problems.len(),
        addresses = ?changed.addresses,
        authorizations = ?changed.authorizations,
        waypoint_configs = ?changed.waypoints,
        "configuration loaded"
    );
    index.set(next);
    rejections.into_iter().map(|r| r.message).collect()
}

/// Runs until `shutdown` turns true.
pub async fn run(config: ServerConfig, shutdown: watch::Receiver<bool>) -> Result<(), ServerError> {
    let ca = Arc::new(
        CertificateAuthority::load_or_create(&config.ca_dir)
            .map_err(|e| ServerError::Ca(config.ca_dir.clone(), e))?,
    );
    let tokens = BootstrapTokens::load(&config.bootstrap_tokens)?;
    let index = SharedIndex::default();
    let mut store = ResourceStore::new();
    reload(&config, &index, &mut store);
    let reader = store.reader();

    // The watcher owns the store: the only writer.
    let watch_config = config.clone();
    let watch_index = index.clone();
    let mut watch_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut seen = fingerprint(&watch_config.config_dir);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RESCAN) => {}
                _ = watch_shutdown.wait_for(|s| *s) => return,
            }
            let now = fingerprint(&watch_config.config_dir);
            if now != seen {
                seen = now;
                reload(&watch_config, &watch_index, &mut store);
            }
        }
    });

    let counters = Arc::new(XdsCounters::default());
    let ads = DeltaAdsServer::new(reader)
        .with_scope(push::ProxyScope)
        .with_metrics(counters.clone())
        .with_shutdown(shutdown.clone())
        .into_service();
    let certificates = CertificateService::new(
        ca,
        tokens,
        IndexDirectory {
            index: index.clone(),
            trust_domain: config.settings.trust_domain.clone(),
        },
        config.settings.trust_domain.clone(),
    )
    .into_server();

    let monitoring = tokio::net::TcpListener::bind(config.monitoring_address)
        .await
        .map_err(|e| ServerError::Bind(config.monitoring_address, e))?;
    let mut monitoring_shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = crate::monitoring::serve(monitoring, counters) => {}
            _ = monitoring_shutdown.wait_for(|s| *s) => {}
        }
    });

    let listener = tokio::net::TcpListener::bind(config.grpc_address)
        .await
        .map_err(|e| ServerError::Bind(config.grpc_address, e))?;
    tracing::info!(grpc = %config.grpc_address, monitoring = %config.monitoring_address, dir = %config.config_dir.display(), "controller serving");
    let mut grpc_shutdown = shutdown;
    tonic::transport::Server::builder()
        .add_service(ads)
        .add_service(certificates)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                let _ = grpc_shutdown.wait_for(|s| *s).await;
            },
        )
        .await
        .map_err(ServerError::Grpc)
}
