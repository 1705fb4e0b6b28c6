//! The waypoint's certificate from the CA, with the bootstrap token.

use waypoint::testing::TestMesh;

use crate::harness::*;

mod fake_ca {
    use weft_identity::{CertificateAuthority, SpiffeId};
    use weft_proto::istio::ca::istio_certificate_service_server::IstioCertificateService;
    use weft_proto::istio::ca::{IstioCertificateRequest, IstioCertificateResponse};

    /// Signs for one identity, for callers presenting one token.
    pub struct FakeCa {
        pub ca: CertificateAuthority,
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
    use weft_proto::istio::ca::istio_certificate_service_server::IstioCertificateServiceServer;

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
    let mut settings = waypoint::ca_client::CaClientConfig {
        address: format!("http://{address}"),
        roots_pem: None,
        token: weft_identity::CaToken::Fixed("bootstrap-token-0123456789".to_owned()),
        node: Some("node-1".to_owned()),
    };
    let material = waypoint::ca_client::fetch_certificate(&settings, &identity)
        .await
        .unwrap();
    assert_eq!(material.identity(), &identity);
    assert!(!material.roots.is_empty());
    assert!(material.certificate.not_after() > std::time::SystemTime::now());
    assert_eq!(
        weft_identity::TrustRoots::from_pem(&root).unwrap().len(),
        material.roots.len()
    );

    settings.token = weft_identity::CaToken::Fixed("wrong-token-0123456789".to_owned());
    let error = waypoint::ca_client::fetch_certificate(&settings, &identity)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("Unauthenticated"), "{error}");
}
