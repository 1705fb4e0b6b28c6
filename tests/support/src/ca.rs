//! A fake Istio CA: the real `IstioCertificateService` over gRPC on 127.0.0.1, signing with an
//! in-process [`CertificateAuthority`], and recording what each call carried (credentials, node,
//! cluster, impersonated identity, validity, CSR) for tests to assert on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Request, Response, Status};
use weft_identity::{CertificateAuthority, SpiffeId};
use weft_proto::istio::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use weft_proto::istio::ca::{
    CLUSTER_ID_HEADER, IstioCertificateRequest, IstioCertificateResponse, NODE_HEADER,
};

/// What the CA saw of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenCall {
    pub authorization: Option<String>,
    pub node: Option<String>,
    pub cluster_id: Option<String>,
    pub impersonated: Option<String>,
    pub validity_seconds: i64,
    pub csr: String,
}

/// The fake's behaviour, set before it serves.
pub struct FakeCa {
    ca: Arc<CertificateAuthority>,
    /// When set, a call without `authorization: Bearer <token>` is refused (Unauthenticated).
    token: Option<String>,
    /// When set, every certificate is for this identity; otherwise for the impersonated one
    /// (a call without it is refused, InvalidArgument).
    identity: Option<SpiffeId>,
    seen: Arc<Mutex<Vec<SeenCall>>>,
}

impl FakeCa {
    /// Signs for the identity each call impersonates, whatever its credentials.
    pub fn new(ca: Arc<CertificateAuthority>) -> Self {
        Self {
            ca,
            token: None,
            identity: None,
            seen: Arc::default(),
        }
    }

    /// Refuses calls that do not present `token`.
    pub fn requiring_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// Signs every certificate for `identity`.
    pub fn signing_for(mut self, identity: SpiffeId) -> Self {
        self.identity = Some(identity);
        self
    }

    /// The calls seen so far (shared with the served fake).
    pub fn seen(&self) -> Arc<Mutex<Vec<SeenCall>>> {
        Arc::clone(&self.seen)
    }

    /// Serves plaintext gRPC on 127.0.0.1 (a free port) until the returned value is dropped.
    pub async fn serve(self) -> RunningCa {
        self.serve_with(None).await
    }

    /// Serves gRPC over TLS with `tls` on 127.0.0.1 (a free port).
    pub async fn serve_tls(self, tls: ServerTlsConfig) -> RunningCa {
        weft_identity::install_default_provider();
        self.serve_with(Some(tls)).await
    }

    async fn serve_with(self, tls: Option<ServerTlsConfig>) -> RunningCa {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake CA on 127.0.0.1");
        let address = listener.local_addr().expect("the fake CA's address");
        let mut server = Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).expect("the fake CA's TLS settings");
        }
        let router = server.add_service(IstioCertificateServiceServer::new(self));
        let task = tokio::spawn(async move {
            let _ = router
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        RunningCa { address, task }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for FakeCa {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let body = request.get_ref();
        let impersonated = body.impersonated_identity().map(str::to_owned);
        let seen = SeenCall {
            authorization: header("authorization"),
            node: header(NODE_HEADER),
            // gRPC metadata names are lowercase on the wire: Istio reads `ClusterID` as this.
            cluster_id: header(CLUSTER_ID_HEADER),
            impersonated: impersonated.clone(),
            validity_seconds: body.validity_duration,
            csr: body.csr.clone(),
        };
        let authorization = seen.authorization.clone();
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(seen);
        if let Some(token) = &self.token
            && authorization.as_deref() != Some(format!("Bearer {token}").as_str())
        {
            return Err(Status::unauthenticated("bad token"));
        }
        let identity = match &self.identity {
            Some(identity) => identity.clone(),
            None => impersonated
                .ok_or_else(|| Status::invalid_argument("no ImpersonatedIdentity"))?
                .parse()
                .map_err(|_| Status::invalid_argument("bad identity"))?,
        };
        let ttl = Duration::from_secs(u64::try_from(body.validity_duration).unwrap_or(0));
        let chain = self
            .ca
            .sign_csr(&body.csr, &identity, ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain.to_pem_list(),
            root_cert: None,
        }))
    }
}

/// A served fake CA; stops serving when dropped.
#[derive(Debug)]
pub struct RunningCa {
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl RunningCa {
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://<address>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for RunningCa {
    fn drop(&mut self) {
        self.task.abort();
    }
}
