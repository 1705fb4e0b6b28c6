//! `weft-cni-node`: the CNI container of the node agent's DaemonSet (Istio's `install-cni` in
//! ambient mode). It finds the node's running mesh pods, hands them to the node agent, serves
//! the `weft-cni` plugin, watches pods and namespaces, and installs the plugin on the node.
//!
//! `weft-cni-node` runs until SIGTERM; `weft-cni-node uninstall` removes the plugin from the
//! node and exits.

use std::{process::ExitCode, time::Duration};

use anyhow::Context;
use k8s_openapi::api::apps::v1::DaemonSet;
use weft_cni::{
    config::NodeConfig,
    daemon::{AgentLink, PluginServer},
    install::{self, InstallError},
    kube::daemon_client,
    watch::{NodeWatch, WatchSettings},
};

fn main() -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    let config = match NodeConfig::from_lookup(env) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("weft-cni-node: configuration: {error}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let uninstall_only = std::env::args().nth(1).as_deref() == Some("uninstall");
    let result = if uninstall_only {
        install::uninstall(&config.install_settings()).context("uninstalling")
    } else {
        runtime.block_on(run(config))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("weft-cni-node: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: NodeConfig) -> anyhow::Result<()> {
    tracing::info!(node = %config.node_name, agent = %config.enrollment_socket.display(), "weft-cni-node starting");
    let client = daemon_client(config.kubeconfig.as_deref())
        .await
        .map_err(anyhow::Error::msg)?;
    let mut watch = NodeWatch::new(
        client.clone(),
        WatchSettings {
            node_name: config.node_name.clone(),
            excluded_namespaces: config.exclude_namespaces.clone(),
            finder: config.finder(),
        },
    );
    // The first snapshot holds every running pod of the mesh: an agent that outlived this
    // daemon keeps them all.
    let initial = watch.initial().await;
    tracing::info!(pods = initial.len(), "running pods of the mesh found");
    let link = AgentLink::start(config.enrollment_socket.clone(), initial);
    let server = PluginServer::bind(&config.node_socket, link.clone())
        .with_context(|| format!("binding {}", config.node_socket.display()))?;
    tokio::spawn(async move {
        if let Err(error) = server.run().await {
            tracing::error!(%error, "the plugin socket failed");
        }
    });
    tokio::spawn(watch.run(link));

    let settings = config.install_settings();
    let mut checks = tokio::time::interval(install::CHECK_EVERY);
    let mut waiting_for_primary = false;
    let env = |name: &str| std::env::var(name).ok();
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("a SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("a SIGINT handler")?;
    loop {
        tokio::select! {
            _ = checks.tick() => {}
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
        let result = config
            .plugin_kubeconfig(env)
            .map_err(|e| anyhow::anyhow!("the plugin's kubeconfig: {e}"))
            .and_then(|kubeconfig| Ok(install::ensure(&settings, &kubeconfig)?));
        match result {
            Ok(changes) if changes.any() => {
                waiting_for_primary = false;
                tracing::info!(?changes, "plugin installed");
            }
            Ok(_) => {}
            Err(error) => match error.downcast_ref::<InstallError>() {
                Some(InstallError::NoPrimaryConfig(_)) if waiting_for_primary => {}
                _ => {
                    waiting_for_primary = matches!(
                        error.downcast_ref::<InstallError>(),
                        Some(InstallError::NoPrimaryConfig(_))
                    );
                    tracing::warn!("{error:#}");
                }
            },
        }
    }
    if daemonset_going(&client, &config).await {
        tracing::info!("the DaemonSet is being removed: uninstalling the plugin");
        install::uninstall(&settings)?;
    } else {
        tracing::info!(
            "restarting: the plugin stays installed, so mesh pods wait for this daemon instead of starting uncaptured"
        );
    }
    Ok(())
}

/// Whether this daemon's DaemonSet is gone or being deleted (then the plugin goes too). When the
/// API cannot say, the plugin stays: failing closed.
async fn daemonset_going(client: &kube::Client, config: &NodeConfig) -> bool {
    let api = kube::Api::<DaemonSet>::namespaced(client.clone(), &config.pod_namespace);
    match tokio::time::timeout(Duration::from_secs(5), api.get_opt(&config.daemonset_name)).await {
        Ok(Ok(None)) => true,
        Ok(Ok(Some(daemonset))) => daemonset.metadata.deletion_timestamp.is_some(),
        Ok(Err(error)) => {
            tracing::warn!(%error, "reading the DaemonSet; keeping the plugin");
            false
        }
        Err(_) => false,
    }
}
