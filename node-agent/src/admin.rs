//! The agent's HTTP endpoints: `/config_dump` on the admin port (localhost only), Prometheus
//! `/metrics` on 15020, readiness `/healthz/ready` on 15021. Each is a thin listener that serves
//! what a closure returns, so the endpoints know nothing of the agent's internals.

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What an endpoint answers: status, content type, body.
pub type Answer = (StatusCode, &'static str, String);
/// Produces the answer for a path, or `None` for 404.
pub type Endpoints = Arc<dyn Fn(&str) -> Option<Answer> + Send + Sync>;

/// One HTTP listener serving `endpoints`.
pub struct AdminServer {
    listener: TcpListener,
    endpoints: Endpoints,
}

impl AdminServer {
    pub async fn bind(address: SocketAddr, endpoints: Endpoints) -> io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(address).await?,
            endpoints,
        })
    }

    pub fn address(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped.
    pub async fn run(self) {
        self.run_until(std::future::pending()).await;
    }

    /// Serves until `shutdown` completes; connections in flight finish on their own tasks.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => return,
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors, typically: back off instead of spinning.
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let endpoints = self.endpoints.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let endpoints = endpoints.clone();
                    async move {
                        let (status, content_type, body) = if request.method() == http::Method::GET
                        {
                            endpoints(request.uri().path()).unwrap_or((
                                StatusCode::NOT_FOUND,
                                "text/plain",
                                "not found\n".into(),
                            ))
                        } else {
                            (
                                StatusCode::METHOD_NOT_ALLOWED,
                                "text/plain",
                                "GET only\n".into(),
                            )
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .header(header::CONTENT_TYPE, content_type)
                                .body(Full::new(Bytes::from(body)))
                                .expect("a valid response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

/// `/metrics` (and Istio's `/stats/prometheus`): the registry in OpenMetrics text.
pub fn metrics_endpoints(registry: Arc<prometheus_client::registry::Registry>) -> Endpoints {
    Arc::new(move |path| {
        (path == "/metrics" || path == "/stats/prometheus").then(|| {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &registry) {
                Ok(()) => (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(error) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("encoding metrics: {error}\n"),
                ),
            }
        })
    })
}

/// `/healthz/ready`: 200 when `ready` says so, else 503 with its reason.
pub fn readiness_endpoints(
    ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
) -> Endpoints {
    Arc::new(move |path| {
        (path == "/healthz/ready").then(|| match ready() {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".into()),
            Err(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{reason}\n"),
            ),
        })
    })
}

/// `/config_dump` (pretty JSON of what `dump` returns) and `/healthz`.
pub fn config_dump_endpoints<D: serde::Serialize>(
    dump: impl Fn() -> D + Send + Sync + 'static,
) -> Endpoints {
    Arc::new(move |path| match path {
        "/config_dump" => Some(match serde_json::to_string_pretty(&dump()) {
            Ok(body) => (StatusCode::OK, "application/json", body),
            Err(error) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("config dump: {error}\n"),
            ),
        }),
        "/healthz" => Some((StatusCode::OK, "text/plain", "ok\n".into())),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Empty};

    use super::*;

    async fn get(address: SocketAddr, path: &str) -> (StatusCode, String) {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let response = sender
            .send_request(
                Request::get(path)
                    .header("host", "agent")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn serves_what_the_endpoints_answer() {
        let endpoints: Endpoints = Arc::new(|path| match path {
            "/healthz/ready" => Some((
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready\n".into(),
            )),
            "/metrics" => Some((
                StatusCode::OK,
                "text/plain",
                "istio_tcp_connections_opened_total 1\n".into(),
            )),
            _ => None,
        });
        let server = AdminServer::bind("127.0.0.1:0".parse().unwrap(), endpoints)
            .await
            .unwrap();
        let address = server.address().unwrap();
        tokio::spawn(server.run());
        assert_eq!(
            get(address, "/healthz/ready").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let (status, body) = get(address, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("istio_tcp_connections_opened_total"));
        assert_eq!(get(address, "/nope").await.0, StatusCode::NOT_FOUND);
    }

    async fn serve(endpoints: Endpoints) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let server = AdminServer::bind("127.0.0.1:0".parse().unwrap(), endpoints)
            .await
            .unwrap();
        let address = server.address().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run_until(async move {
            let _ = stopped.await;
        }));
        (address, stop)
    }

    #[tokio::test]
    async fn metrics_show_istio_families_with_labels() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = crate::metrics::Metrics::new(&mut registry);
        let guard = metrics.connection_opened(crate::metrics::ConnectionLabels {
            reporter: "source".into(),
            destination_service: "cart.shop.svc.cluster.local".into(),
            ..Default::default()
        });
        guard.add_received(12);
        drop(guard);
        let (address, _stop) = serve(metrics_endpoints(Arc::new(registry))).await;
        let (status, body) = get(address, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        for family in [
            "istio_tcp_connections_opened_total{reporter=\"source\"",
            "istio_tcp_connections_closed_total{reporter=\"source\"",
            "istio_tcp_received_bytes_total{",
            "istio_tcp_sent_bytes_total{",
            "destination_service=\"cart.shop.svc.cluster.local\"",
            "source_workload=\"unknown\"",
        ] {
            assert!(body.contains(family), "missing {family} in\n{body}");
        }
        assert!(body.trim_end().ends_with("# EOF"), "{body}");
        assert_eq!(get(address, "/stats/prometheus").await.1, body);
    }

    #[tokio::test]
    async fn readiness_follows_its_condition() {
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ready.clone();
        let (address, _stop) = serve(readiness_endpoints(move || {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                Ok(())
            } else {
                Err("waiting for configuration".into())
            }
        }))
        .await;
        let (status, body) = get(address, "/healthz/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("waiting for configuration"));
        ready.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(get(address, "/healthz/ready").await.0, StatusCode::OK);
    }

    /// Signs with an in-process CA.
    struct LocalCa(weft_identity::CertificateAuthority);

    impl crate::certificates::CaClient for LocalCa {
        async fn sign(
            &self,
            identity: &weft_identity::SpiffeId,
            csr: String,
            ttl: std::time::Duration,
        ) -> Result<Vec<String>, String> {
            self.0
                .sign_csr(&csr, identity, ttl)
                .map(|c| c.to_pem_list())
                .map_err(|e| e.to_string())
        }
    }

    #[tokio::test]
    async fn config_dump_shows_workloads_and_certificates_but_no_key() {
        use crate::certificates::{CertificateManager, CertificateSource};
        use weft_proto::istio::workload as proto;

        let store = crate::state::WorkloadStore::new();
        store.insert_workload(
            proto::Workload {
                uid: "Kubernetes//Pod/shop/cart-1".into(),
                name: "cart-1".into(),
                namespace: "shop".into(),
                addresses: vec![vec![10, 0, 0, 7]],
                service_account: "cart".into(),
                tunnel_protocol: proto::TunnelProtocol::Hbone as i32,
                ..Default::default()
            }
            .try_into()
            .unwrap(),
        );
        let certificates = CertificateManager::new(
            LocalCa(weft_identity::CertificateAuthority::generate().unwrap()),
            std::time::Duration::from_secs(3600),
            None,
        );
        let identity = weft_identity::SpiffeId::new("cluster.local", "shop", "cart").unwrap();
        let certificate = certificates.fetch(&identity).await.unwrap();
        let (address, stop) = serve(config_dump_endpoints(move || {
            serde_json::json!({
                "state": store.dump(),
                "certificates": certificates.describe(),
            })
        }))
        .await;
        let (status, body) = get(address, "/config_dump").await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            json["state"]["workloads"][0]["uid"],
            "Kubernetes//Pod/shop/cart-1"
        );
        assert_eq!(
            json["certificates"][0]["certificate"]["serial"],
            certificate.describe().serial.as_str()
        );
        assert!(!body.contains("PRIVATE KEY"), "{body}");
        assert!(!body.contains("BEGIN"), "no PEM at all: {body}");
        assert_eq!(get(address, "/healthz").await.0, StatusCode::OK);

        // After shutdown the listener is closed.
        stop.send(()).unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while tokio::net::TcpStream::connect(address).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still listening");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
