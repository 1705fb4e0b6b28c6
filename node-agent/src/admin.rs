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
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                continue;
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
}
