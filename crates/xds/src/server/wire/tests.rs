//! The shared response encodes byte for byte as the generated `DeltaDiscoveryResponse` with
//! the same content, which is what proxies decode.

use std::sync::Arc;

use prost::Message;
use prost_types::Any;
use weft_proto::envoy::config::core::v3::ControlPlane;
use weft_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;

use super::{DeltaResponse, SentResource};
use crate::StoredResource;

fn sent(name: &str, type_url: &str, value: Vec<u8>, aliases: &[&str]) -> SentResource {
    let body = Any {
        type_url: type_url.to_string(),
        value,
    };
    SentResource {
        resource: Arc::new(StoredResource::new(name, body)),
        aliases: aliases.iter().map(|alias| alias.to_string()).collect(),
    }
}

#[test]
fn encodes_as_the_generated_response() {
    let thing = "type.googleapis.com/test.Thing";
    let plane = Some(ControlPlane {
        identifier: "weft-controller".to_string(),
    });
    let cases: Vec<(&str, DeltaResponse)> = vec![
        ("empty", DeltaResponse::default()),
        (
            "first answer, nothing stored",
            DeltaResponse {
                system_version_info: "1".into(),
                type_url: thing.into(),
                nonce: "1".into(),
                control_plane: plane.clone(),
                ..DeltaResponse::default()
            },
        ),
        (
            "resources and removals",
            DeltaResponse {
                system_version_info: "42".into(),
                resources: vec![
                    sent("a", thing, b"one".to_vec(), &[]),
                    sent("ns/b", thing, vec![7; 300], &["/10.0.0.1", "node:x"]),
                    // Multi-byte lengths at every level.
                    sent(
                        &"n".repeat(200),
                        thing,
                        vec![9; 70_000],
                        &["x".repeat(130).as_str()],
                    ),
                ],
                type_url: thing.into(),
                removed_resources: vec!["gone".into(), "ns/also-gone".into()],
                nonce: "17".into(),
                control_plane: plane.clone(),
            },
        ),
        (
            "empty fields inside resources",
            DeltaResponse {
                resources: vec![
                    sent("", "", Vec::new(), &[""]),
                    sent("empty-value", thing, Vec::new(), &[]),
                ],
                removed_resources: vec![String::new()],
                control_plane: Some(ControlPlane::default()),
                ..DeltaResponse::default()
            },
        ),
    ];
    for (case, response) in cases {
        let generated = response.to_proto();
        let encoded = response.encode_to_vec();
        assert_eq!(encoded.len(), response.encoded_len(), "{case}: length");
        assert_eq!(encoded, generated.encode_to_vec(), "{case}: bytes");
        let decoded = DeltaDiscoveryResponse::decode(encoded.as_slice()).expect(case);
        assert_eq!(decoded, generated, "{case}: decoded");
    }
}
