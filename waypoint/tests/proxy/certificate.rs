//! The waypoint's certificate from the CA, with the bootstrap token.

use waypoint::testing::TestMesh;

use crate::harness::*;

mod fake_ca {
    use weft_identity::{CertificateAuthority, SpiffeId};
    use weft_proto::istio::ca::istio_certificate_service_server::IstioCertificateService;
    use weft_proto::istio::ca::{IstioCertificateRequest, IstioCertificateResponse};

    /// Signs for one identity, for callers presenting one token.
    pub struct FakeCa {
        pub ca: std::sync::Arc<CertificateAuthority>,
        pub token: String,
        pub identity: SpiffeId,
    }

    #[tonic::async_trait]
    impl IstioCertificateService for FakeCa {
        async fn create_certificate(
            &self,
            request: tonic::Request<IstioCertificateRequest>,
        ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
            let expected = format!("Bearer {}", self.token);
            if request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                != Some(expected.as_str())
            {
                return Err(tonic::Status::unauthenticated("bad token"));
            }
            let chain = self
                .ca
                .sign_csr(
                    &request.get_ref().csr,
                    &self.identity,
                    std::time::Duration::from_secs(3600),
                )
                .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            let mut cert_chain = chain.to_pem_list();
            cert_chain.push(self.ca.root_cert_pem().to_owned());
            Ok(tonic::Response::new(IstioCertificateResponse {
                cert_chain,
                root_cert: None,
            }))
        }
    }
}

#[tokio::test]
async fn certificate_comes_from_the_ca_with_the_bootstrap_token() {
    use weft_identity::CertificateSource;
    use weft_proto::istio::ca::istio_certificate_service_server::IstioCertificateServiceServer;
    use weft_proxy_core::certificates::CaClient;

    let identity = TestMesh::spiffe("default", "waypoint");
    let mesh = TestMesh::new();
    let root = mesh.ca.root_cert_pem().to_owned();
    let service = fake_ca::FakeCa {
        ca: mesh.ca,
        token: "bootstrap-token-0123456789".to_owned(),
        identity: identity.clone(),
    };
    let (address, _stop) = serve_grpc(
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(service)),
    )
    .await;
    // The waypoint is a manager of its one identity, with the node agent's CA client.
    let client = |token: &str| {
        weft_proxy_core::certificates::GrpcCaClient::connect(
            &format!("http://{address}"),
            None,
            weft_identity::CaToken::Fixed(token.to_owned()),
            Some("node-1".to_owned()),
        )
        .unwrap()
    };
    let manager = weft_proxy_core::certificates::CertificateManager::new(
        client("bootstrap-token-0123456789"),
        std::time::Duration::from_secs(24 * 3600),
        None,
    );
    let certificate = manager.fetch(&identity).await.unwrap();
    let roots = manager.trust_roots().unwrap();
    assert_eq!(certificate.identity(), &identity);
    assert!(!roots.is_empty());
    assert!(certificate.not_after() > std::time::SystemTime::now());
    assert_eq!(
        weft_identity::TrustRoots::from_pem(&root).unwrap().len(),
        roots.len()
    );

    let csr = weft_identity::WorkloadKey::generate()
        .unwrap()
        .csr_for(&identity)
        .unwrap();
    let error = client("wrong-token-0123456789")
        .sign(&identity, csr, std::time::Duration::from_secs(3600))
        .await
        .unwrap_err();
    assert!(error.contains("Unauthenticated"), "{error}");
}
