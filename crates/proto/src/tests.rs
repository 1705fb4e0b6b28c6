use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use prost::{Message, Name};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::envoy::config::core::v3::Node;
use crate::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crate::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use crate::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use crate::istio::{ca, security, workload};
use crate::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, MESH_CONFIG_TYPE_URL, WAYPOINT_CONFIG_TYPE_URL, mesh,
    waypoint,
};

/// Bound on every wait in the loopback test, so a broken stream fails instead of hanging.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

fn sample_workload() -> workload::Workload {
    workload::Workload {
        uid: "cluster1//Pod/default/reviews-v1-7d8f".into(),
        name: "reviews-v1-7d8f".into(),
        namespace: "default".into(),
        addresses: vec![vec![10, 1, 2, 3]],
        network: "net1".into(),
        tunnel_protocol: workload::TunnelProtocol::Hbone as i32,
        trust_domain: "cluster.local".into(),
        service_account: "bookinfo-reviews".into(),
        waypoint: Some(workload::GatewayAddress {
            destination: Some(workload::gateway_address::Destination::Hostname(
                workload::NamespacedHostname {
                    namespace: "default".into(),
                    hostname: "waypoint.default.svc.cluster.local".into(),
                },
            )),
            hbone_mtls_port: 15008,
        }),
        node: "node-a".into(),
        canonical_name: "reviews".into(),
        canonical_revision: "v1".into(),
        workload_type: workload::WorkloadType::Deployment as i32,
        workload_name: "reviews-v1".into(),
        services: BTreeMap::from([(
            "default/reviews.default.svc.cluster.local".to_string(),
            workload::PortList {
                ports: vec![workload::Port {
                    service_port: 9080,
                    target_port: 9080,
                }],
            },
        )]),
        authorization_policies: vec!["default/allow-productpage".into()],
        status: workload::WorkloadStatus::Healthy as i32,
        cluster_id: "cluster1".into(),
        locality: Some(workload::Locality {
            region: "eu".into(),
            zone: "eu-1a".into(),
            subzone: String::new(),
        }),
        capacity: Some(2),
        ..Default::default()
    }
}

fn sample_authorization() -> security::Authorization {
    use security::string_match::MatchType;
    security::Authorization {
        name: "allow-productpage".into(),
        namespace: "default".into(),
        scope: security::Scope::WorkloadSelector as i32,
        action: security::Action::Allow as i32,
        rules: vec![security::Rule {
            clauses: vec![security::Clause {
                matches: vec![security::Match {
                    principals: vec![security::StringMatch {
                        match_type: Some(MatchType::Exact(
                            "cluster.local/ns/default/sa/bookinfo-productpage".into(),
                        )),
                    }],
                    not_namespaces: vec![security::StringMatch {
                        match_type: Some(MatchType::Presence(())),
                    }],
                    service_accounts: vec![security::ServiceAccountMatch {
                        namespace: "default".into(),
                        service_account: "bookinfo-productpage".into(),
                    }],
                    source_ips: vec![security::Address {
                        address: vec![10, 0, 0, 0],
                        length: 8,
                    }],
                    destination_ports: vec![9080],
                    ..Default::default()
                }],
            }],
        }],
        dry_run: true,
    }
}

#[test]
fn address_with_workload_round_trips_through_bytes_and_any() {
    let address = workload::Address {
        r#type: Some(workload::address::Type::Workload(sample_workload())),
    };

    let decoded = workload::Address::decode(address.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded, address);

    let any = prost_types::Any::from_msg(&address).unwrap();
    assert_eq!(any.type_url, ADDRESS_TYPE_URL);
    let unpacked: workload::Address = any.to_msg().unwrap();
    let Some(workload::address::Type::Workload(unpacked_workload)) = unpacked.r#type else {
        panic!("address lost its workload: {unpacked:?}");
    };
    assert_eq!(unpacked_workload, sample_workload());
}

#[test]
fn authorization_round_trips_through_bytes_and_any() {
    let policy = sample_authorization();

    let decoded = security::Authorization::decode(policy.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded, policy);

    let any = prost_types::Any::from_msg(&policy).unwrap();
    assert_eq!(any.type_url, AUTHORIZATION_TYPE_URL);
    assert_eq!(any.to_msg::<security::Authorization>().unwrap(), policy);
}

#[test]
fn waypoint_config_round_trips_through_any() {
    let config = waypoint::WaypointConfig {
        name: "waypoint".into(),
        namespace: "default".into(),
        services: vec![waypoint::WaypointService {
            hostname: "reviews.default.svc.cluster.local".into(),
            vips: vec!["10.96.0.10".into()],
            http_routes: vec![waypoint::HttpRoute {
                r#match: vec![waypoint::HttpMatchRequest {
                    uri: Some(waypoint::StringMatch {
                        match_type: Some(waypoint::string_match::MatchType::Prefix("/api".into())),
                    }),
                    ..Default::default()
                }],
                route: vec![waypoint::HttpRouteDestination {
                    destination: Some(waypoint::Destination {
                        host: "reviews.default.svc.cluster.local".into(),
                        subset: "v2".into(),
                        port: 9080,
                        cluster: "outbound|9080|v2|reviews.default.svc.cluster.local".into(),
                    }),
                    weight: 100,
                    headers: None,
                }],
                timeout: Some(prost_types::Duration {
                    seconds: 2,
                    nanos: 0,
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };

    let any = prost_types::Any::from_msg(&config).unwrap();
    assert_eq!(any.type_url, WAYPOINT_CONFIG_TYPE_URL);
    assert_eq!(any.to_msg::<waypoint::WaypointConfig>().unwrap(), config);
}

#[test]
fn type_url_constants_name_their_messages() {
    let cases = [
        (
            ADDRESS_TYPE_URL,
            workload::Address::type_url(),
            workload::Address::full_name(),
        ),
        (
            AUTHORIZATION_TYPE_URL,
            security::Authorization::type_url(),
            security::Authorization::full_name(),
        ),
        (
            WAYPOINT_CONFIG_TYPE_URL,
            waypoint::WaypointConfig::type_url(),
            waypoint::WaypointConfig::full_name(),
        ),
        (
            MESH_CONFIG_TYPE_URL,
            mesh::MeshConfig::type_url(),
            mesh::MeshConfig::full_name(),
        ),
    ];
    for (constant, type_url, full_name) in cases {
        assert_eq!(constant, type_url);
        assert_eq!(constant, format!("type.googleapis.com/{full_name}"));
    }
    assert_eq!(
        ca::IstioCertificateRequest::full_name(),
        "istio.v1.auth.IstioCertificateRequest"
    );
    assert_eq!(
        DeltaDiscoveryRequest::full_name(),
        "envoy.service.discovery.v3.DeltaDiscoveryRequest"
    );
}

/// Field numbers are the wire contract with Istio: encode one field and compare the exact bytes
/// (tag = field number << 3 | wire type) against the numbers of the public definitions.
#[test]
fn field_numbers_match_the_public_definitions() {
    let cases: [(&str, Vec<u8>, Vec<u8>); 10] = [
        (
            "Workload.uid = 20",
            workload::Workload {
                uid: "a".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0xA2, 0x01, 0x01, b'a'],
        ),
        (
            "Workload.services = 22",
            workload::Workload {
                services: BTreeMap::from([(
                    "k".to_string(),
                    workload::PortList {
                        ports: vec![workload::Port {
                            service_port: 1,
                            target_port: 0,
                        }],
                    },
                )]),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![
                0xB2, 0x01, 0x09, 0x0A, 0x01, b'k', 0x12, 0x04, 0x0A, 0x02, 0x08, 0x01,
            ],
        ),
        (
            "Service.canonical = 11",
            workload::Service {
                canonical: true,
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x58, 0x01],
        ),
        (
            "GatewayAddress.hbone_mtls_port = 3",
            workload::GatewayAddress {
                hbone_mtls_port: 15008,
                destination: None,
            }
            .encode_to_vec(),
            vec![0x18, 0xA0, 0x75],
        ),
        (
            "Authorization.dry_run = 6",
            security::Authorization {
                dry_run: true,
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x30, 0x01],
        ),
        (
            "Match.service_accounts = 11",
            security::Match {
                service_accounts: vec![security::ServiceAccountMatch {
                    namespace: "n".into(),
                    service_account: "s".into(),
                }],
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x5A, 0x06, 0x0A, 0x01, b'n', 0x12, 0x01, b's'],
        ),
        (
            "Resource.name = 3",
            Resource {
                name: "r".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x1A, 0x01, b'r'],
        ),
        (
            "DeltaDiscoveryRequest.response_nonce = 6",
            DeltaDiscoveryRequest {
                response_nonce: "x".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x32, 0x01, b'x'],
        ),
        (
            "DeltaDiscoveryResponse.nonce = 5",
            DeltaDiscoveryResponse {
                nonce: "x".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x2A, 0x01, b'x'],
        ),
        (
            "IstioCertificateRequest.validity_duration = 3",
            ca::IstioCertificateRequest {
                validity_duration: 1,
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x18, 0x01],
        ),
    ];
    for (field, encoded, expected) in cases {
        assert_eq!(encoded, expected, "{field}");
    }
}

/// A delta ADS server that answers each request with one response: the subscribed names as
/// resources, the ACKed nonce in `system_version_info`, and a fresh nonce.
struct EchoAds;

#[tonic::async_trait]
impl AggregatedDiscoveryService for EchoAds {
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut requests = request.into_inner();
        let (responses, stream) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut sequence = 0u32;
            while let Some(Ok(request)) = requests.next().await {
                sequence += 1;
                let response = DeltaDiscoveryResponse {
                    system_version_info: request.response_nonce,
                    type_url: request.type_url,
                    resources: request
                        .resource_names_subscribe
                        .into_iter()
                        .map(|name| Resource {
                            name,
                            version: sequence.to_string(),
                            ..Default::default()
                        })
                        .collect(),
                    nonce: format!("nonce-{sequence}"),
                    ..Default::default()
                };
                if responses.send(Ok(response)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

#[tokio::test]
async fn delta_ads_stream_exchanges_messages_over_loopback() {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(EchoAds))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let mut client = tokio::time::timeout(
        STEP_TIMEOUT,
        AggregatedDiscoveryServiceClient::connect(format!("http://{address}")),
    )
    .await
    .unwrap()
    .unwrap();

    let (requests, request_stream) = mpsc::channel(4);
    requests
        .send(DeltaDiscoveryRequest {
            node: Some(Node {
                id: "ztunnel~10.0.0.1~node-a~istio-system".into(),
                ..Default::default()
            }),
            type_url: ADDRESS_TYPE_URL.into(),
            resource_names_subscribe: vec!["*".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut responses = tokio::time::timeout(
        STEP_TIMEOUT,
        client.delta_aggregated_resources(ReceiverStream::new(request_stream)),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();

    let first = tokio::time::timeout(STEP_TIMEOUT, responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.type_url, ADDRESS_TYPE_URL);
    assert_eq!(first.nonce, "nonce-1");
    assert_eq!(first.resources.len(), 1);
    assert_eq!(first.resources[0].name, "*");
    assert_eq!(first.system_version_info, "", "first request ACKs nothing");

    requests
        .send(DeltaDiscoveryRequest {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            response_nonce: first.nonce.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let second = tokio::time::timeout(STEP_TIMEOUT, responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.type_url, AUTHORIZATION_TYPE_URL);
    assert_eq!(second.nonce, "nonce-2");
    assert_eq!(
        second.system_version_info, "nonce-1",
        "server saw the ACK of the first response"
    );
    assert!(second.resources.is_empty());

    drop(requests);
    let end = tokio::time::timeout(STEP_TIMEOUT, responses.message())
        .await
        .unwrap()
        .unwrap();
    assert!(end.is_none(), "stream ends once the client closes its side");
    server.abort();
}

/// A CA that signs nothing but proves the request arrived intact: it echoes the CSR as the chain.
struct EchoCa;

#[tonic::async_trait]
impl ca::istio_certificate_service_server::IstioCertificateService for EchoCa {
    async fn create_certificate(
        &self,
        request: Request<ca::IstioCertificateRequest>,
    ) -> Result<Response<ca::IstioCertificateResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(ca::IstioCertificateResponse {
            cert_chain: vec![request.csr, request.validity_duration.to_string()],
            root_cert: None,
        }))
    }
}

#[tokio::test]
async fn certificate_service_answers_over_loopback() {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                ca::istio_certificate_service_server::IstioCertificateServiceServer::new(EchoCa),
            )
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let mut client = tokio::time::timeout(
        STEP_TIMEOUT,
        ca::istio_certificate_service_client::IstioCertificateServiceClient::connect(format!(
            "http://{address}"
        )),
    )
    .await
    .unwrap()
    .unwrap();
    let response = tokio::time::timeout(
        STEP_TIMEOUT,
        client.create_certificate(ca::IstioCertificateRequest {
            csr: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            validity_duration: 86400,
            metadata: None,
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();

    assert_eq!(
        response.cert_chain,
        ["-----BEGIN CERTIFICATE REQUEST-----", "86400"]
    );
    server.abort();
}
