//! The `DeltaDiscoveryResponse` a stream sends, holding the store's resources themselves: every
//! stream sending a resource refers to the one `Arc<StoredResource>` the store holds, and its
//! packed message is copied only into the gRPC frame being written, never into a response
//! of its own. With the generated type each proxy's response owned a copy of every resource's
//! name, version, type URL and bytes (proxies x resources bytes per full push, queued up to
//! the response buffer per stream).
//!
//! The encoding is that of prost's generated `DeltaDiscoveryResponse`, byte for byte: fields
//! in tag order, proto3 defaults left out, `Resource.resource` always present.

use std::sync::Arc;

use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use weft_proto::envoy::config::core::v3::ControlPlane;

use crate::store::StoredResource;

/// One resource as a response carries it: the store's resource, shared with every other
/// stream sending it, and the aliases this subscription asked it by.
#[derive(Debug, Clone, PartialEq)]
pub struct SentResource {
    /// The resource as the store holds it.
    pub resource: Arc<StoredResource>,
    /// `Resource.aliases`: the names of the subscription covering it (none on a wildcard one).
    pub aliases: Vec<String>,
}

impl SentResource {
    /// The resource's name.
    pub fn name(&self) -> &str {
        &self.resource.name
    }

    /// The encoded `Resource` message, without its length delimiter: `version` (1),
    /// `resource` (2, an `Any`: `type_url` 1, `value` 2), `name` (3), `aliases` (4).
    fn encoded_len(&self) -> usize {
        let resource = &self.resource;
        let any = any_len(resource);
        text_len(1, resource.version.as_bytes())
            + key_len(2)
            + encoded_len_varint(any as u64)
            + any
            + text_len(3, resource.name.as_bytes())
            + repeated_len(4, &self.aliases)
    }

    fn encode(&self, buf: &mut impl BufMut) {
        let resource = &self.resource;
        put_text(1, resource.version.as_bytes(), buf);
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(any_len(resource) as u64, buf);
        put_text(1, resource.body.type_url.as_bytes(), buf);
        put_text(2, &resource.body.value, buf);
        put_text(3, resource.name.as_bytes(), buf);
        put_repeated(4, &self.aliases, buf);
    }
}

/// `envoy.service.discovery.v3.DeltaDiscoveryResponse` with shared resources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeltaResponse {
    /// `system_version_info` (1).
    pub system_version_info: String,
    /// `resources` (2).
    pub resources: Vec<SentResource>,
    /// `type_url` (4).
    pub type_url: String,
    /// `removed_resources` (6).
    pub removed_resources: Vec<String>,
    /// `nonce` (5).
    pub nonce: String,
    /// `control_plane` (7).
    pub control_plane: Option<ControlPlane>,
}

impl DeltaResponse {
    /// Length of the encoded message, without a length delimiter.
    pub fn encoded_len(&self) -> usize {
        text_len(1, self.system_version_info.as_bytes())
            + self
                .resources
                .iter()
                .map(|resource| {
                    let len = resource.encoded_len();
                    key_len(2) + encoded_len_varint(len as u64) + len
                })
                .sum::<usize>()
            + text_len(4, self.type_url.as_bytes())
            + text_len(5, self.nonce.as_bytes())
            + repeated_len(6, &self.removed_resources)
            + self
                .control_plane
                .as_ref()
                .map_or(0, |plane| prost::encoding::message::encoded_len(7, plane))
    }

    /// Writes the encoded message (without a length delimiter) to `buf`, which must have room
    /// for [`Self::encoded_len`] bytes (tonic's encode buffer grows as needed).
    pub fn encode(&self, buf: &mut impl BufMut) {
        put_text(1, self.system_version_info.as_bytes(), buf);
        for resource in &self.resources {
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(resource.encoded_len() as u64, buf);
            resource.encode(buf);
        }
        put_text(4, self.type_url.as_bytes(), buf);
        put_text(5, self.nonce.as_bytes(), buf);
        put_repeated(6, &self.removed_resources, buf);
        if let Some(plane) = &self.control_plane {
            prost::encoding::message::encode(7, plane, buf);
        }
    }

    /// The encoded message.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        buf
    }
}

/// Length of `google.protobuf.Any { type_url, value }` of `resource`, without its delimiter.
fn any_len(resource: &StoredResource) -> usize {
    text_len(1, resource.body.type_url.as_bytes()) + text_len(2, &resource.body.value)
}

/// Length of a proto3 `string` or `bytes` field: nothing when empty.
fn text_len(tag: u32, value: &[u8]) -> usize {
    if value.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
    }
}

/// Length of a `repeated string` field: every element, empty ones too.
fn repeated_len(tag: u32, values: &[String]) -> usize {
    values
        .iter()
        .map(|value| key_len(tag) + encoded_len_varint(value.len() as u64) + value.len())
        .sum()
}

fn put_text(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    if !value.is_empty() {
        put_delimited(tag, value, buf);
    }
}

fn put_repeated(tag: u32, values: &[String], buf: &mut impl BufMut) {
    for value in values {
        put_delimited(tag, value.as_bytes(), buf);
    }
}

fn put_delimited(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.put_slice(value);
}

/// The gRPC codec of the stream: requests decoded by prost, responses encoded as above.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct AdsCodec;

impl tonic::codec::Codec for AdsCodec {
    type Encode = DeltaResponse;
    type Decode = weft_proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    type Encoder = ResponseEncoder;
    type Decoder = tonic_prost::ProstDecoder<Self::Decode>;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// Writes each [`DeltaResponse`] into tonic's frame buffer.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ResponseEncoder;

impl tonic::codec::Encoder for ResponseEncoder {
    type Item = DeltaResponse;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: DeltaResponse,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        let len = item.encoded_len();
        dst.reserve(len);
        item.encode(dst);
        Ok(())
    }
}

/// The generated message with the same content: what the proxy decodes. Owns a copy of every
/// resource, so only tests build it.
#[cfg(test)]
impl DeltaResponse {
    pub(crate) fn to_proto(
        &self,
    ) -> weft_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse {
        use weft_proto::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
        DeltaDiscoveryResponse {
            system_version_info: self.system_version_info.clone(),
            resources: self
                .resources
                .iter()
                .map(|sent| Resource {
                    name: sent.resource.name.to_string(),
                    version: sent.resource.version.to_string(),
                    resource: Some(sent.resource.body.clone()),
                    aliases: sent.aliases.clone(),
                    ..Resource::default()
                })
                .collect(),
            type_url: self.type_url.clone(),
            removed_resources: self.removed_resources.clone(),
            nonce: self.nonce.clone(),
            control_plane: self.control_plane.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
