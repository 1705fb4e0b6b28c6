//! What the controller's integration tests share: a controller in local mode on free loopback
//! ports, started and stopped, and a GET of its monitoring endpoint.
#![allow(dead_code)] // each test file uses its own part

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use controller::{
    server::{LocalMode, Mode, ServerConfig, run},
    translate::MeshSettings,
};

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A controller in local mode over `dir`: its configuration in `dir/config` (created), its CA
/// in `dir/ca`, its bootstrap tokens (`tokens`, lines of `node token`) in `dir/tokens`; gRPC and
/// monitoring on free loopback ports, nothing else served.
pub fn local_config(dir: &Path, tokens: &str) -> ServerConfig {
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(dir.join("tokens"), tokens).unwrap();
    ServerConfig {
        mode: Mode::Local(LocalMode {
            config_dir: dir.join("config"),
            ca_dir: dir.join("ca"),
            bootstrap_tokens: dir.join("tokens"),
        }),
        grpc_address: Some(free_port()),
        tls_address: None,
        serving_names: Vec::new(),
        webhook_address: None,
        webhook_configuration: None,
        monitoring_address: free_port(),
        console: None,
        settings: MeshSettings::default(),
    }
}

/// The gRPC address of a controller started with `config`.
pub fn grpc_url(config: &ServerConfig) -> String {
    format!("http://{}", config.grpc_address.expect("gRPC is served"))
}

pub struct Controller {
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Controller {
    /// Stops the controller and waits until it has.
    pub async fn stop(self) {
        self.shutdown.send(true).unwrap();
        let _ = self.task.await;
    }
}

/// Starts the controller and waits until its `/ready` answers 200: every gRPC port accepts.
pub async fn start(config: &ServerConfig) -> Controller {
    let (shutdown, receiver) = tokio::sync::watch::channel(false);
    let ready = format!("http://{}/ready", config.monitoring_address);
    let config = config.clone();
    let task = tokio::spawn(async move {
        run(config, receiver).await.expect("controller runs");
    });
    wait_for_text(&ready, "ready\n", Duration::from_secs(10)).await;
    Controller { shutdown, task }
}

/// Polls `url` until its body contains `needle`.
pub async fn wait_for_text(url: &str, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let text = get(url).await;
        if text.contains(needle) && !text.contains("not ready") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never showed {needle:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET over plain HTTP/1.1 with hyper (the monitoring endpoint); empty if nothing listens yet.
pub async fn get(url: &str) -> String {
    use http_body_util::{BodyExt, Empty};
    let uri: http::Uri = url.parse().unwrap();
    let address = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
    let Ok(stream) = tokio::net::TcpStream::connect(address).await else {
        return String::new();
    };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(
            http::Request::get(uri.path())
                .header("host", "controller")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    String::from_utf8_lossy(&response.into_body().collect().await.unwrap().to_bytes()).into_owned()
}
