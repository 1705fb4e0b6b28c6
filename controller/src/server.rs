//! The running controller, in either mode, as one pipeline:
//!
//! source (a directory of YAML, or the API server's watches) -> [`LiveIndex`] -> translation
//! ([`translate::translate`], a pure function of an index snapshot: node agents' resources and
//! every waypoint's `WaypointConfig`) -> the `weft-xds` store -> delta ADS to every connected
//! proxy, scoped by [`push::ProxyScope`].
//!
//! The index's generation watch wakes the publisher; changes are debounced (100 ms of quiet, at
//! most 1 s) before one translation replaces the store's whole state, which the ADS server turns
//! into deltas. The CA signs with the root of the mode (a directory, or Secrets) and asks the same
//! index which pods run where. gRPC (ADS and CA) is served in plaintext (15010, local mode) and/or
//! over TLS (15012) with a serving certificate from the mesh CA; metrics on 15014; the
//! validating webhook over TLS on 15017 with the same certificate.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;
use weft_identity::{CertificateAuthority, SpiffeId};
use weft_xds::{DeltaAdsServer, ResourceStore, XdsCounters};

use crate::{
    ca::{
        Authenticator, BootstrapTokens, CertificateService, NodeDirectory, XdsAdmission,
        kubernetes::{self as kube_ca, TokenReviewAuthenticator},
    },
    index::{ConfigIndex, LiveIndex},
    monitoring::TranslationGauges,
    push,
    source::{directory::DirectorySource, kube::KubeSource},
    tls::{self, ServingCertificates},
    translate::{self, MeshSettings},
};

/// While the Kubernetes source has not listed every kind, the missing ones are logged this often.
const SYNC_REPORT: Duration = Duration::from_secs(10);

/// Local mode: configuration, root and node credentials from files.
#[derive(Debug, Clone)]
pub struct LocalMode {
    pub config_dir: PathBuf,
    /// Where the root CA is kept (created on first start).
    pub ca_dir: PathBuf,
    /// `<node> <token>` lines.
    pub bootstrap_tokens: PathBuf,
}

/// Kubernetes mode: configuration from the API server, the root in Secrets, callers
/// authenticated by TokenReview.
#[derive(Clone)]
pub struct KubernetesMode {
    pub client: kube::Client,
    /// The controller's own namespace: its CA Secrets and the root ConfigMap live there.
    pub namespace: String,
    /// Audiences the callers' tokens must carry (none: the API server's default).
    pub token_audiences: Vec<String>,
    /// `(namespace, service account)` of the node agents, which may obtain the identities of
    /// their node's pods.
    pub node_agents: Vec<(String, String)>,
    /// How the proxies of Gateways are deployed; `None`: they are not (deployed by hand).
    pub provision: Option<crate::translate::provision::ProvisionSettings>,
}

impl std::fmt::Debug for KubernetesMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesMode")
            .field("namespace", &self.namespace)
            .field("token_audiences", &self.token_audiences)
            .field("node_agents", &self.node_agents)
            .field("provision", &self.provision)
            .finish_non_exhaustive()
    }
}

/// Where configuration, the root and callers' credentials come from.
#[derive(Debug, Clone)]
pub enum Mode {
    Local(LocalMode),
    Kubernetes(KubernetesMode),
}

/// Everything `controller run` is told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub mode: Mode,
    /// Plaintext gRPC (xDS and CA), 15010 in Istio's numbering; `None` for none.
    pub grpc_address: Option<SocketAddr>,
    /// gRPC over TLS, 15012; `None` for none.
    pub tls_address: Option<SocketAddr>,
    /// DNS names and IP addresses of the TLS serving certificate (the first is its common name).
    pub serving_names: Vec<String>,
    /// The validating admission webhook over TLS, 15017; `None` for none.
    pub webhook_address: Option<SocketAddr>,
    /// The ValidatingWebhookConfiguration whose `caBundle` the controller keeps (Kubernetes
    /// mode); `None` to leave it alone.
    pub webhook_configuration: Option<String>,
    /// Prometheus metrics, 15014.
    pub monitoring_address: SocketAddr,
    /// The service-graph console; `None` for none.
    pub console: Option<crate::console::ConsoleConfig>,
    pub settings: MeshSettings,
}

/// The DNS names istiod's serving certificate carries, for a controller in `namespace`.
pub fn default_serving_names(namespace: &str, domain_suffix: &str) -> Vec<String> {
    vec![
        format!("istiod.{namespace}.svc"),
        "istiod".to_owned(),
        format!("istiod.{namespace}"),
        format!("istiod.{namespace}.svc.{domain_suffix}"),
    ]
}

/// Errors that stop the controller from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("certificate authority in {0}: {1}")]
    Ca(PathBuf, #[source] weft_identity::CaError),
    #[error("certificate authority: {0}")]
    KubeCa(#[from] kube_ca::KubeCaError),
    #[error(transparent)]
    Tokens(#[from] crate::ca::TokenFileError),
    #[error("serving certificate: {0}")]
    Serving(#[from] tls::ServingError),
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("no gRPC listener: give a plaintext or a TLS address")]
    NoListener,
    #[error(transparent)]
    Console(crate::console::ConsoleStartError),
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error("grpc server on {0}: {1}")]
    Grpc(SocketAddr, #[source] tonic::transport::Error),
    #[error("mesh configuration: {0}")]
    MeshConfig(#[from] crate::mesh_config::MeshConfigError),
}

/// The CA's view of which identities run on which node: pods scheduled there.
pub struct IndexDirectory {
    index: Arc<LiveIndex>,
    trust_domain: String,
}

impl IndexDirectory {
    pub fn new(index: Arc<LiveIndex>, trust_domain: String) -> Self {
        Self {
            index,
            trust_domain,
        }
    }
}

impl NodeDirectory for IndexDirectory {
    fn runs_on(&self, node: &str, identity: &SpiffeId) -> bool {
        crate::ca::mesh_pod_runs_on(&self.index.snapshot(), node, identity, &self.trust_domain)
    }
}

/// What has been logged about the configuration: translation problems, and the warnings
/// resources were accepted with (Istio's, and fields not applied), as `<kind> <key>: <warning>`.
#[derive(Debug, Default)]
pub struct Reported {
    problems: Vec<translate::TranslateError>,
    warnings: std::collections::BTreeSet<String>,
}

impl Reported {
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty() && self.warnings.is_empty()
    }
}

/// Every warning of the index, as logged, the cross-resource findings `controller validate`
/// prints (`istioctl analyze`'s codes), as istiod reports them with `PILOT_ENABLE_ANALYSIS`,
/// and the mesh config's extension providers whose collector is not in the registry (logged
/// again as resolved once it appears).
fn warning_lines(
    index: &ConfigIndex,
    settings: &MeshSettings,
) -> std::collections::BTreeSet<String> {
    let analysis = crate::analysis::analyze(index, settings)
        .into_iter()
        .map(|m| {
            let key = crate::index::key_of(m.kind, &m.namespace, &m.name);
            format!("{} {key}: {}", m.kind, m.warning)
        });
    let collectors = crate::translate::waypoint::collector_warnings(index, settings)
        .into_iter()
        .map(|w| format!("MeshConfig: {w}"));
    index
        .warnings
        .iter()
        .flat_map(|((kind, key), warnings)| {
            warnings.iter().map(move |w| format!("{kind} {key}: {w}"))
        })
        .chain(analysis)
        .chain(collectors)
        .collect()
}

/// Translates `index` and replaces the store's whole state with it (one push, if anything
/// changed). Problems and warnings are logged when they appear and when they go away, not on
/// every publish: `reported` holds the ones logged so far.
pub fn publish(
    index: &ConfigIndex,
    settings: &MeshSettings,
    store: &mut ResourceStore,
    reported: &mut Reported,
    gauges: &TranslationGauges,
) {
    let epoch = settings.jwks.begin();
    let translation = translate::translate(index, settings);
    settings.jwks.finish(epoch);
    let without_http = translation
        .problems
        .iter()
        .filter(|p| {
            matches!(
                p.problem,
                translate::TranslateProblem::HttpAttributesAtNodeAgent { .. }
            )
        })
        .count();
    gauges
        .policies_without_http_attributes
        .store(without_http as u64, std::sync::atomic::Ordering::Relaxed);
    for problem in &translation.problems {
        if !reported.problems.contains(problem) {
            tracing::warn!(%problem, "translation problem");
        }
    }
    for problem in reported.problems.iter() {
        if !translation.problems.contains(problem) {
            tracing::info!(%problem, "translation problem resolved");
        }
    }
    reported.problems.clone_from(&translation.problems);
    let warnings = warning_lines(index, settings);
    for warning in warnings.difference(&reported.warnings) {
        tracing::warn!(%warning, "configuration warning");
    }
    for warning in reported.warnings.difference(&warnings) {
        tracing::info!(%warning, "configuration warning resolved");
    }
    reported.warnings = warnings;
    let changes = store.replace_all(translation.resources());
    tracing::info!(
        pods = index.pods.len(),
        services = index.services.len(),
        endpoint_slices = index.endpoint_slices.len(),
        policies = index.authorization_policies.len(),
        waypoints = translation.waypoints.len(),
        problems = translation.problems.len(),
        added = changes.added,
        updated = changes.updated,
        removed = changes.removed,
        "configuration published"
    );
}

/// The store's only writer: republishes after every (debounced) change of the index.
async fn publish_changes(
    index: Arc<LiveIndex>,
    mut store: ResourceStore,
    mut reported: Reported,
    gauges: Arc<TranslationGauges>,
    settings: MeshSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = index.subscribe();
    changes.borrow_and_update();
    // A fetched key set changes the waypoints' configuration as a resource change does.
    let mut keys = settings.jwks.subscribe();
    keys.borrow_and_update();
    // So does a change of the mesh configuration file.
    let mut mesh = settings.mesh.subscribe();
    mesh.borrow_and_update();
    loop {
        tokio::select! {
            settled = crate::index::settled_change(&mut changes, &mut shutdown) => if !settled { return },
            changed = keys.changed() => if changed.is_err() { return },
            changed = mesh.changed() => if changed.is_err() { return },
        }
        publish(
            &index.snapshot(),
            &settings,
            &mut store,
            &mut reported,
            &gauges,
        );
    }
}

/// Starts the Kubernetes source and waits until every kind has been listed once, so that the
/// first push is the cluster's whole state (a partial one would make proxies drop workloads).
async fn start_kubernetes_source(
    client: kube::Client,
    index: Arc<LiveIndex>,
    mut shutdown: watch::Receiver<bool>,
) {
    let source = KubeSource::new(client, index);
    let kinds = source.kinds().to_vec();
    let mut synced = source.synced();
    let mut source_shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = source.run() => {}
            _ = source_shutdown.wait_for(|s| *s) => {}
        }
    });
    loop {
        let done = {
            let all = synced.wait_for(|listed| listed.len() == kinds.len());
            tokio::select! {
                done = tokio::time::timeout(SYNC_REPORT, all) => done.is_ok(),
                _ = shutdown.wait_for(|s| *s) => return,
            }
        };
        if done {
            break;
        }
        let listed = synced.borrow().clone();
        let missing: Vec<String> = kinds
            .iter()
            .filter(|k| !listed.contains(k))
            .map(ToString::to_string)
            .collect();
        tracing::warn!(?missing, "still waiting for the API server to list");
    }
    tracing::info!(kinds = kinds.len(), "kubernetes source synced");
}

/// Starts keeping the Secrets Gateways name and waits for their first list, so that the first
/// push carries the gateways' credentials.
async fn start_secrets(
    client: kube::Client,
    index: Arc<LiveIndex>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (listed, mut first_list) = watch::channel(false);
    tokio::spawn(crate::source::kube::secrets::keep_secrets(
        client,
        index.clone(),
        listed,
        shutdown.clone(),
    ));
    loop {
        tokio::select! {
            done = tokio::time::timeout(SYNC_REPORT, first_list.wait_for(|l| *l)) => match done {
                Ok(_) => break,
                Err(_) => tracing::warn!("still waiting for the API server to list Secrets"),
            },
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
    tracing::info!(
        secrets = index.snapshot().secrets.len(),
        "gateway credential Secrets listed"
    );
}

/// Runs until `shutdown` turns true.
pub async fn run(config: ServerConfig, shutdown: watch::Receiver<bool>) -> Result<(), ServerError> {
    if config.grpc_address.is_none() && config.tls_address.is_none() {
        return Err(ServerError::NoListener);
    }
    let index = Arc::new(LiveIndex::default());
    let trust_domain = config.settings.trust_domain.clone();
    let (ca, authenticator) = match &config.mode {
        Mode::Local(local) => {
            let ca = CertificateAuthority::load_or_create(&local.ca_dir)
                .map_err(|e| ServerError::Ca(local.ca_dir.clone(), e))?;
            let tokens = BootstrapTokens::load(&local.bootstrap_tokens)?;
            let mut directory = DirectorySource::new(local.config_dir.clone(), index.clone());
            directory.load();
            tokio::spawn(directory.run(shutdown.clone()));
            (ca, Authenticator::Bootstrap(tokens))
        }
        Mode::Kubernetes(kube) => {
            let (ca, origin) =
                kube_ca::load_or_create(kube.client.clone(), &kube.namespace).await?;
            tracing::info!(?origin, namespace = %kube.namespace, "mesh CA ready");
            kube_ca::publish_root(kube.client.clone(), &kube.namespace, ca.root_cert_pem()).await?;
            if let Some(name) = &config.webhook_configuration {
                tokio::spawn(crate::webhook::keep_ca_bundle(
                    kube.client.clone(),
                    name.clone(),
                    ca.root_cert_pem().to_owned(),
                    shutdown.clone(),
                ));
            }
            // Without a mesh file, the `istio` ConfigMap, read before the first push so that
            // it already carries the mesh's outbound traffic policy.
            if !config.settings.mesh.follows_file() {
                use crate::source::kube::mesh_config;
                mesh_config::load(kube.client.clone(), &kube.namespace, &config.settings.mesh)
                    .await?;
                tokio::spawn(mesh_config::keep_mesh_config(
                    kube.client.clone(),
                    kube.namespace.clone(),
                    config.settings.mesh.clone(),
                    shutdown.clone(),
                ));
            }
            start_kubernetes_source(kube.client.clone(), index.clone(), shutdown.clone()).await;
            start_secrets(kube.client.clone(), index.clone(), shutdown.clone()).await;
            tokio::spawn(kube_ca::namespaces::keep_root_published(
                kube.client.clone(),
                index.clone(),
                ca.root_cert_pem().to_owned(),
                shutdown.clone(),
            ));
            tokio::spawn(crate::source::kube::route_status::keep_route_statuses(
                kube.client.clone(),
                index.clone(),
                config.settings.clone(),
                shutdown.clone(),
            ));
            // With allocation off, istiod runs no allocation controller: entries' statuses are
            // left as they are (and their addresses unused).
            if let Some(ranges) = config.settings.auto_allocate {
                tokio::spawn(crate::source::kube::entry_status::keep_entry_addresses(
                    kube.client.clone(),
                    index.clone(),
                    ranges,
                    shutdown.clone(),
                ));
            }
            if let Some(provision) = &kube.provision {
                tokio::spawn(crate::source::kube::provision::keep_provisioned(
                    kube.client.clone(),
                    index.clone(),
                    provision.clone(),
                    shutdown.clone(),
                ));
            }
            let authenticator = TokenReviewAuthenticator::new(
                kube.client.clone(),
                kube.token_audiences.clone(),
                trust_domain.clone(),
                kube.node_agents.clone(),
                index.clone(),
            );
            (ca, Authenticator::TokenReview(authenticator))
        }
    };
    let ca = Arc::new(ca);
    let authenticator = Arc::new(authenticator);

    let mut store = ResourceStore::new();
    let mut reported = Reported::default();
    let gauges = Arc::new(TranslationGauges {
        provider_lookup_failures: config.settings.provider_lookup_failures.clone(),
        ..Default::default()
    });
    publish(
        &index.snapshot(),
        &config.settings,
        &mut store,
        &mut reported,
        &gauges,
    );
    let reader = store.reader();
    tokio::spawn(config.settings.jwks.clone().run(shutdown.clone()));
    tokio::spawn(config.settings.mesh.clone().run(shutdown.clone()));
    tokio::spawn(publish_changes(
        index.clone(),
        store,
        reported,
        gauges.clone(),
        config.settings.clone(),
        shutdown.clone(),
    ));

    let counters = Arc::new(XdsCounters::default());
    let sync = Arc::new(crate::syncz::SyncStatus::new(counters.clone()));
    let mut ads = DeltaAdsServer::new(reader)
        .with_scope(push::ProxyScope)
        .with_metrics(sync.clone())
        .with_shutdown(shutdown.clone());
    // Kubernetes mode: a discovery stream needs the same credential as the CA. Local mode's
    // plaintext port is for a trusted network, as istiod's 15010.
    if matches!(config.mode, Mode::Kubernetes(_)) {
        ads = ads.with_admission(Arc::new(XdsAdmission::new(authenticator.clone())));
    }
    let ads = ads.into_service();
    let certificates = CertificateService::new(
        ca.clone(),
        authenticator,
        IndexDirectory {
            index: index.clone(),
            trust_domain: trust_domain.clone(),
        },
        trust_domain,
    )
    .into_server();

    let monitoring = tokio::net::TcpListener::bind(config.monitoring_address)
        .await
        .map_err(|e| ServerError::Bind(config.monitoring_address, e))?;
    let mut monitoring_shutdown = shutdown.clone();
    let monitored_index = index.clone();
    let (ready, ready_watch) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            () = crate::monitoring::serve(monitoring, counters, sync, gauges, monitored_index, ready_watch) => {}
            _ = monitoring_shutdown.wait_for(|s| *s) => {}
        }
    });

    if let Some(console) = &config.console {
        let serving = crate::console::bind(console, index.clone(), &config.settings)
            .await
            .map_err(ServerError::Console)?;
        let mut console_shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = serving => {}
                _ = console_shutdown.wait_for(|s| *s) => {}
            }
        });
    }

    let router = tonic::transport::Server::builder()
        .add_service(ads)
        .add_service(certificates);
    let stopped = |mut shutdown: watch::Receiver<bool>| async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    let plaintext = match config.grpc_address {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| ServerError::Bind(address, e))?;
            let router = router.clone();
            let shutdown = shutdown.clone();
            Some(async move {
                router
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        stopped(shutdown),
                    )
                    .await
                    .map_err(|e| ServerError::Grpc(address, e))
            })
        }
        None => None,
    };
    // One serving certificate for every TLS port, renewed in place.
    let serving = if config.tls_address.is_some() || config.webhook_address.is_some() {
        let serving = ServingCertificates::new(ca.clone(), config.serving_names.clone())?;
        tokio::spawn(serving.clone().renew(shutdown.clone()));
        Some(serving)
    } else {
        None
    };
    if let (Some(address), Some(serving)) = (config.webhook_address, &serving) {
        let tls_config = tls::server_config(serving.clone(), tls::WEBHOOK_ALPN)?;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| ServerError::Bind(address, e))?;
        tokio::spawn(crate::webhook::serve(
            listener,
            tls_config,
            shutdown.clone(),
        ));
    }
    let secure = match (config.tls_address, serving) {
        (Some(address), Some(serving)) => {
            let tls_config = tls::server_config(serving, tls::GRPC_ALPN)?;
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| ServerError::Bind(address, e))?;
            let shutdown = shutdown.clone();
            Some(async move {
                router
                    .serve_with_incoming_shutdown(
                        tls::incoming(listener, tls_config),
                        stopped(shutdown),
                    )
                    .await
                    .map_err(|e| ServerError::Grpc(address, e))
            })
        }
        _ => None,
    };
    tracing::info!(
        grpc = ?config.grpc_address,
        grpc_tls = ?config.tls_address,
        webhook = ?config.webhook_address,
        serving_names = ?config.serving_names,
        monitoring = %config.monitoring_address,
        "controller serving"
    );
    // Every listener is bound: connections queue in their backlogs until the servers accept.
    ready.send_replace(true);
    let plaintext = async move {
        match plaintext {
            Some(server) => server.await,
            None => Ok(()),
        }
    };
    let secure = async move {
        match secure {
            Some(server) => server.await,
            None => Ok(()),
        }
    };
    futures::future::try_join(plaintext, secure).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use weft_test_support::logs::LogCapture;

    use super::*;
    use crate::loader;

    #[test]
    fn problems_and_warnings_are_logged_once_and_when_resolved() {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/translate/testdata/translation_errors.yaml");
        let (broken, _) = ConfigIndex::from_report(loader::load_paths(&[&fixture]), None);
        let settings = MeshSettings::default();
        let captured = LogCapture::new();
        let mut store = ResourceStore::new();
        let mut reported = Reported::default();
        let gauges = TranslationGauges::default();
        tracing::subscriber::with_default(captured.subscriber(), || {
            publish(&broken, &settings, &mut store, &mut reported, &gauges);
            publish(&broken, &settings, &mut store, &mut reported, &gauges);
            publish(
                &ConfigIndex::default(),
                &settings,
                &mut store,
                &mut reported,
                &gauges,
            );
        });
        let log = captured.text();
        let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
        let problems = translate::translate(&broken, &settings).problems.len();
        assert!(problems > 0, "the fixture translates without problems");
        assert_eq!(count("translation problem resolved"), problems, "{log}");
        assert_eq!(
            count("translation problem") - count("translation problem resolved"),
            problems,
            "{log}"
        );
        // The warnings resources were accepted with (fields not applied, Istio's warnings):
        // logged once each, and again when they go away.
        let warnings = warning_lines(&broken, &settings).len();
        assert!(warnings > 0, "the fixture has no warning");
        assert_eq!(count("configuration warning resolved"), warnings, "{log}");
        assert_eq!(
            count("configuration warning") - count("configuration warning resolved"),
            warnings,
            "{log}"
        );
        assert!(
            log.contains(crate::validation::NOT_APPLIED),
            "not-applied fields are logged: {log}"
        );
        assert!(
            log.contains("[IST0101 ReferencedResourceNotFound]"),
            "cross-resource findings are logged: {log}"
        );
        assert!(reported.is_empty());
    }
}
