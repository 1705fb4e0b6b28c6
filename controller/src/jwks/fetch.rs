//! One bounded fetch of a key set over HTTP or HTTPS (public roots): no redirects, the whole
//! exchange within the rule's timeout, at most [`MAX_JWKS_BYTES`] read.

use std::time::Duration;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{JwksSource, MAX_JWKS_BYTES, discovery_url};

#[derive(Debug, thiserror::Error)]
pub(super) enum FetchError {
    #[error("invalid URL {0:?}")]
    Url(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    #[error("tls: {0}")]
    Tls(#[source] std::io::Error),
    #[error("http: {0}")]
    Http(String),
    #[error("answered {0}")]
    Status(http::StatusCode),
    #[error("larger than {MAX_JWKS_BYTES} bytes, or broken: {0}")]
    Body(String),
    #[error("not a JSON Web Key Set: {0}")]
    NotJwks(&'static str),
    #[error("the discovery document has no jwks_uri")]
    NoJwksUri,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Aborts the connection's task however the fetch ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) struct Client {
    tls: TlsConnector,
}

impl Client {
    pub fn new() -> Result<Self, rustls::Error> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let config = rustls::ClientConfig::builder_with_provider(weft_identity::crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Client {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// The key set of `source`, compact JSON `{"keys": [...]}`, all of it within `timeout`.
    pub async fn jwks(&self, source: &JwksSource, timeout: Duration) -> Result<String, FetchError> {
        tokio::time::timeout(timeout, self.resolve(source))
            .await
            .map_err(|_| FetchError::Timeout(timeout))?
    }

    async fn resolve(&self, source: &JwksSource) -> Result<String, FetchError> {
        let uri = match source {
            JwksSource::Uri(uri) => uri.clone(),
            JwksSource::Discovery { issuer } => {
                let document: Value =
                    serde_json::from_slice(&self.get(&discovery_url(issuer)).await?)
                        .map_err(|_| FetchError::NoJwksUri)?;
                document
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or(FetchError::NoJwksUri)?
                    .to_owned()
            }
        };
        jwks_set(&self.get(&uri).await?)
    }

    async fn get(&self, url: &str) -> Result<Bytes, FetchError> {
        let uri: Uri = url.parse().map_err(|_| FetchError::Url(url.to_owned()))?;
        let (https, default_port) = match uri.scheme_str() {
            Some("http") => (false, 80),
            Some("https") => (true, 443),
            _ => return Err(FetchError::Url(url.to_owned())),
        };
        let host = uri
            .host()
            .ok_or_else(|| FetchError::Url(url.to_owned()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(default_port);
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(FetchError::Connect)?;
        let io: Box<dyn Io> = if https {
            let name =
                ServerName::try_from(host.clone()).map_err(|_| FetchError::Url(url.to_owned()))?;
            Box::new(self.tls.connect(name, tcp).await.map_err(FetchError::Tls)?)
        } else {
            Box::new(tcp)
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let _connection = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or(host);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let request = Request::get(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|e| FetchError::Body(e.to_string()))
    }
}

/// The body as a key set: a JSON object with a `keys` array, compact.
pub(super) fn jwks_set(body: &[u8]) -> Result<String, FetchError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| FetchError::NotJwks("not JSON"))?;
    if !value.get("keys").is_some_and(Value::is_array) {
        return Err(FetchError::NotJwks("no \"keys\" array"));
    }
    Ok(value.to_string())
}
