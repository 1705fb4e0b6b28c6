//! A request's room: what its tunnel knows (identity and addresses, per connection), what the
//! configuration in force when it arrived makes of it (target, per request), and the record the
//! access log and metrics are written from.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::forwarded::X_FORWARDED_FOR;
use super::{BoxError, ProxyBody, ProxyShared, TunnelContext};
use crate::metrics::{Peer, RecordText, RequestRecord};
use crate::model::{Cluster, Endpoint, StatefulSession, Target, WaypointConfig};
use crate::upstream::{GeneratedCookie, HashInput};

pub(super) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub(super) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// One request on its way through the pipeline.
pub(super) struct RequestContext<'a> {
    pub shared: &'a ProxyShared,
    /// The configuration in force when the request arrived: routes, clusters and policies are
    /// read from it, never from a later one, so one request sees one configuration.
    pub config: &'a WaypointConfig,
    /// The connection: peer identity and addresses, fixed while it is open.
    pub tunnel: &'a TunnelContext,
    /// What `config` makes of the tunnel's `:authority`.
    pub target: Target<'a>,
    /// The access-log line and metrics of this request, written when its response ends.
    pub record: RequestRecord,
    /// The normalized path, once the pipeline has normalized it.
    pub path: String,
    /// The query, without a fragment.
    pub query: Option<String>,
    /// The client's address as authorization's `remoteIpBlocks`, rate limits and
    /// `x-envoy-external-address` see it: the peer's, or at the edge the trusted client
    /// address ([`super::forwarded::trusted_client`]).
    pub remote_ip: IpAddr,
    /// At the edge, the limits of the connection's server in `config`, found once per request
    /// (the default elsewhere: no limit of a server's own).
    pub edge_limits: crate::model::gateway::EdgeLimits,
    /// The hash cookie generated for this request, which lacked it: consistent hashing reads
    /// its value and the upstream's response carries its `Set-Cookie`.
    pub generated_cookie: Option<GeneratedCookie>,
    /// The route's stateful session, when it keeps one.
    pub session: Option<StatefulSession>,
    /// The endpoint the request's session names, if any ([`Self::read_session`]).
    pub session_endpoint: Option<SocketAddr>,
}

impl<'a> RequestContext<'a> {
    pub fn new(
        shared: &'a ProxyShared,
        config: &'a WaypointConfig,
        tunnel: &'a TunnelContext,
        target: Target<'a>,
        record: RequestRecord,
    ) -> Self {
        RequestContext {
            shared,
            config,
            tunnel,
            target,
            record,
            path: String::new(),
            query: None,
            remote_ip: tunnel.source_ip,
            // Set by the caller at the edge, from the server it found for the request.
            edge_limits: crate::model::gateway::EdgeLimits::default(),
            generated_cookie: None,
            session: None,
            session_endpoint: None,
        }
    }

    /// Takes the route's stateful session and the endpoint the request's cookie or header
    /// names, from the headers as the client sent them (Envoy's filter runs before the
    /// router's header operations).
    pub fn read_session(&mut self, session: Option<&StatefulSession>, headers: &http::HeaderMap) {
        self.session = session.cloned();
        self.session_endpoint = session.and_then(|s| crate::upstream::session_endpoint(s, headers));
    }

    /// Adds to the upstream's response the cookie or header naming the endpoint that answered,
    /// when the request named another or none (Envoy's `onUpdate`).
    pub fn update_session(&self, headers: &mut http::HeaderMap) {
        let (Some(session), Some(chosen)) = (&self.session, self.record.upstream_host) else {
            return;
        };
        match crate::upstream::session_update(session, self.session_endpoint, chosen) {
            Some((name, value)) if name == header::SET_COOKIE => {
                headers.append(name, value);
            }
            Some((name, value)) => {
                headers.insert(name, value);
            }
            None => {}
        }
    }

    /// What consistent hashing reads for this request, with `headers` as they go upstream.
    pub fn hash_input<'h>(&'h self, headers: &'h http::HeaderMap) -> HashInput<'h> {
        HashInput {
            session_endpoint: self.session_endpoint,
            headers,
            query: self.query.as_deref(),
            source_ip: self.tunnel.source_ip,
            generated_cookie: self.generated_cookie.as_ref().map(|c| c.value.as_str()),
        }
    }

    /// Generates the hash cookie `cluster` keys on for a request with `headers` that lacks
    /// it, from the connection's addresses (the peer's and the one it reached), as Envoy's
    /// router does from the downstream connection's ([`crate::upstream::generate_cookie`]).
    pub fn generate_cookie(&mut self, cluster: &Cluster, headers: &http::HeaderMap) {
        self.generated_cookie = crate::upstream::generate_cookie(
            cluster,
            headers,
            self.tunnel.peer_address,
            self.tunnel.destination,
        );
    }

    /// Adds the generated cookie's `Set-Cookie` to the upstream's response headers, beside any
    /// the upstream set (Envoy's router appends it before the route's response header
    /// operations).
    pub fn set_generated_cookie(&self, headers: &mut http::HeaderMap) {
        if let Some(cookie) = &self.generated_cookie {
            headers.append(header::SET_COOKIE, cookie.set_cookie.clone());
        }
    }

    /// Records the endpoint an attempt goes to.
    pub fn record_endpoint(&mut self, endpoint: &Endpoint) {
        self.record.upstream_host = Some(endpoint.address);
        self.record.destination.workload = Some(Arc::clone(&endpoint.workload));
        self.record.destination.principal = endpoint
            .principal
            .as_ref()
            .map(|principal| RecordText::Shared(Arc::clone(principal)));
    }

    /// Hands the record over to the response, which writes it once its body ends.
    pub fn finish(self, response: Response<ProxyBody>) -> Response<ProxyBody> {
        finish(response, self.record)
    }
}

/// Fills what the record knows before the pipeline runs. The record shares what it keeps
/// with the request (header values, the URI) and the configuration (names): nothing is copied.
pub(super) fn describe_request(
    record: &mut RequestRecord,
    config: &WaypointConfig,
    tunnel: &TunnelContext,
    target: Option<&Target<'_>>,
    request: &Request<Incoming>,
) {
    let headers = request.headers();
    record.method = request.method().clone();
    record.path = match request.uri().path_and_query() {
        Some(path) => RecordText::PathAndQuery(path.clone()),
        None => RecordText::Static("/"),
    };
    record.protocol = match request.version() {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    record.authority = authority_text(request);
    record.request_id = RecordText::header(headers.get(&X_REQUEST_ID));
    record.user_agent = RecordText::header(headers.get(header::USER_AGENT));
    record.forwarded_for = RecordText::header(headers.get(&X_FORWARDED_FOR));
    record.mtls = tunnel.peer.is_some();
    record.source = Peer {
        // At the edge the source is the gateway itself (see `super::handle`).
        workload: if tunnel.edge.is_none() {
            config.workload(tunnel.source_ip)
        } else {
            None
        },
        principal: tunnel
            .peer_names
            .as_ref()
            .map(|p| RecordText::Shared(Arc::clone(&p.principal))),
        namespace: tunnel
            .peer_names
            .as_ref()
            .map(|p| RecordText::Shared(Arc::clone(&p.namespace))),
    };
    // A workload addressed directly was not addressed through a service: its service labels
    // stay unknown, its workload labels come from the endpoint.
    record.destination.namespace = match target {
        Some(Target::Service(target)) => {
            let names = &target.service.names;
            record.destination_service = Some(Arc::clone(names));
            Some(RecordText::Shared(Arc::clone(&names.namespace)))
        }
        Some(target) => Some(RecordText::Owned(target.namespace().to_owned())),
        None => None,
    };
    record.downstream_local = Some(tunnel.destination);
    record.downstream_remote = Some(tunnel.peer_address);
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        record.bytes_received = length;
    }
}

pub(super) fn authority_of<B>(request: &Request<B>) -> &str {
    request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or_default()
}

/// [`authority_of`], shared with the request.
fn authority_text<B>(request: &Request<B>) -> RecordText {
    match request.uri().authority() {
        Some(authority) => RecordText::Authority(authority.clone()),
        None => RecordText::header(request.headers().get(header::HOST)),
    }
}

/// A random UUID v4 for `x-request-id`, kept inline (no allocation): as the record keeps it,
/// and its bytes.
pub(super) fn request_id() -> (RecordText, [u8; 36]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes: [u8; 16] = rand::random();
    // Version 4, variant 10xx (RFC 9562).
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut id = [0u8; 36];
    let mut at = 0;
    for (index, byte) in bytes.iter().enumerate() {
        if matches!(index, 4 | 6 | 8 | 10) {
            id[at] = b'-';
            at += 1;
        }
        id[at] = HEX[usize::from(byte >> 4)];
        id[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    (RecordText::RequestId(id), id)
}

/// A response body that counts the bytes sent and releases the request's record (access log
/// and metrics) when the body ends or is dropped.
struct RecordedBody {
    inner: ProxyBody,
    record: Option<RequestRecord>,
}

impl Body for RecordedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(record)) = (frame.data_ref(), self.record.as_mut()) {
                    record.bytes_sent += data.len() as u64;
                }
                if let (Some(trailers), Some(record)) = (frame.trailers_ref(), self.record.as_mut())
                {
                    record.capture_response_trailers(trailers);
                    if let Some(status) = trailers.get(&GRPC_STATUS).and_then(|v| v.to_str().ok()) {
                        record.grpc_status = Some(status.to_owned());
                    }
                }
            }
            Poll::Ready(Some(Err(error))) => {
                // The stream is reset after the response began: by a breach of the request's
                // limits, or by the upstream. The record says why, as Envoy's does.
                if let Some(record) = self.record.as_mut() {
                    match error.downcast_ref::<super::request_limits::BreachError>() {
                        Some(breach) => record.response_code_details = breach.0.details().into(),
                        None => {
                            let (flags, details) = super::reply::late_upstream_reset(&**error);
                            record.response_flags.insert(flags);
                            record.response_code_details = details.into();
                        }
                    }
                }
                self.record = None;
            }
            Poll::Ready(None) => {
                self.record = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Writes the response's status into `record`, which is emitted when the body ends.
pub(super) fn finish(
    response: Response<ProxyBody>,
    mut record: RequestRecord,
) -> Response<ProxyBody> {
    record.status = response.status().as_u16();
    record.capture_response_headers(response.headers());
    if let Some(grpc) = response
        .headers()
        .get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
    {
        record.grpc_status = Some(grpc.to_owned());
    }
    let (parts, body) = response.into_parts();
    if body.is_end_stream() {
        drop(record);
        return Response::from_parts(parts, body);
    }
    let body = RecordedBody {
        inner: body,
        record: Some(record),
    };
    Response::from_parts(parts, body.boxed())
}

#[cfg(test)]
mod tests {
    use super::request_id;

    #[test]
    fn request_ids_are_uuid_v4() {
        let (id, _) = request_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(
            matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{id}"
        );
        assert_ne!(id, request_id().0);
    }
}
