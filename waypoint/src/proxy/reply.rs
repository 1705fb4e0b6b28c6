//! Every answer the waypoint gives itself instead of an upstream's, as one type, and the one
//! function that turns it into the status, body, `response_flags` and `response_code_details`
//! Envoy gives in the same case (linkerd's `errors::respond`, the agent's `proxy::error`).
//! What a refusal looks like to clients, metrics and the access log is decided here and
//! nowhere else.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use weft_policy::{ACCESS_DENIED_BODY, ACCESS_DENIED_STATUS, DenyReason};

use super::context::GRPC_STATUS;
use super::{ProxyBody, full};
use crate::authn::JwtError;
use crate::conformance::Nonconforming;
use crate::metrics::{RequestRecord, ResponseFlag};
use crate::model::AbortKind;
use crate::upstream::dynamic_dns::DnsError;
use crate::upstream::{ResetReason, UpstreamError};

static X_ENVOY_RATELIMITED: header::HeaderName =
    header::HeaderName::from_static("x-envoy-ratelimited");

/// Why the waypoint answers a request itself.
#[derive(Debug)]
pub(crate) enum LocalReply {
    /// Not an HTTP request the waypoint accepts ([`crate::conformance`]).
    Nonconforming(Nonconforming),
    /// The tunnel's destination is no longer served here: its service stopped using the
    /// waypoint while the connection was open. An HTTP/1 connection closes after the answer,
    /// so that the client's agent carries the next one without the waypoint.
    NotServed { close_connection: bool },
    /// The path has no normalized form.
    InvalidPath,
    /// The request's JWT was refused by request authentication; `realm` is the request's URL
    /// without its query, for `www-authenticate`.
    Unauthenticated { error: JwtError, realm: String },
    /// Refused by an authorization policy.
    Denied(DenyReason),
    /// No route matched and the service has no default cluster for the port.
    RouteNotFound,
    /// The route's weights picked no destination.
    NoDestination,
    /// The route names a cluster that does not exist (an undefined subset, host or port, an
    /// invalid Gateway API backend), answered with the route's status for it.
    ClusterNotFound(StatusCode),
    /// A CORS preflight the route's policy allows, with its `access-control-*` headers.
    CorsPreflight(HeaderMap),
    /// The route's fault injection aborted the request.
    FaultAbort(AbortKind),
    /// The route's `directResponse`.
    DirectResponse { status: StatusCode, body: Bytes },
    /// The route's `redirect`; `location` is `None` when it is not a valid header value.
    Redirect {
        status: StatusCode,
        location: Option<HeaderValue>,
    },
    /// The route's local rate limit has no token left for the request.
    RateLimited,
    /// The request's headers are over its gateway server's limit (one lowered while the
    /// connection was open: the connection's codec refuses what is over the limit it began
    /// with).
    HeadersTooLarge,
    /// The request's body is over its gateway server's `maxRequestBytes`: declared so, or
    /// grown so before the response began. An HTTP/1 connection closes after the answer (the
    /// rest of the body is not read).
    PayloadTooLarge { close_connection: bool },
    /// The request had not arrived whole within its gateway server's `requestTimeout` when
    /// the response had not begun yet.
    RequestTimeout { close_connection: bool },
    /// The client went away or broke the body while it was being read.
    DownstreamDisconnect,
    /// The route's timeout ran out before a response.
    RouteTimeout,
    /// The last attempt's `perTryTimeout` ran out.
    PerTryTimeout,
    /// No endpoint could be chosen or the last attempt failed.
    Upstream(UpstreamError),
}

impl From<UpstreamError> for LocalReply {
    fn from(error: UpstreamError) -> Self {
        LocalReply::Upstream(error)
    }
}

impl From<Nonconforming> for LocalReply {
    fn from(refusal: Nonconforming) -> Self {
        LocalReply::Nonconforming(refusal)
    }
}

/// A local reply as it goes out and as the record says it.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// `None`: the reply sets no flag (one set earlier, such as `DI`, stays).
    pub response_flags: Option<ResponseFlag>,
    /// `None`: the reply sets no details.
    pub details: Option<Cow<'static, str>>,
}

impl LocalReply {
    /// The status, headers, body, `response_flags` and `response_code_details` of this reply.
    pub(crate) fn reply(self) -> Reply {
        use LocalReply as L;
        use ResponseFlag as F;
        match self {
            L::Nonconforming(Nonconforming::UnknownMethod(_)) => {
                Reply::text(StatusCode::BAD_REQUEST, "Bad Request").details("invalid_method")
            }
            L::Nonconforming(Nonconforming::LowVersion(_)) => {
                Reply::text(StatusCode::UPGRADE_REQUIRED, "Upgrade Required").details("low_version")
            }
            L::Nonconforming(Nonconforming::MissingHost) => {
                Reply::text(StatusCode::BAD_REQUEST, "Bad Request").details("missing_host_header")
            }
            L::Nonconforming(Nonconforming::DuplicateHost) => {
                Reply::text(StatusCode::BAD_REQUEST, "Bad Request").details("duplicate_host_header")
            }
            L::Nonconforming(Nonconforming::UpgradeRefused(_)) => {
                Reply::text(StatusCode::FORBIDDEN, "Forbidden").details("upgrade_failed")
            }
            L::NotServed { close_connection } => {
                let reply = Reply::text(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream")
                    .flags(F::NoRoute)
                    .details("filter_chain_not_found");
                if close_connection {
                    reply.header(header::CONNECTION, HeaderValue::from_static("close"))
                } else {
                    reply
                }
            }
            L::InvalidPath | L::Denied(DenyReason::InvalidPath) => {
                Reply::text(StatusCode::BAD_REQUEST, "Bad Request").details("invalid_path")
            }
            L::Unauthenticated { error, realm } => {
                let message = error.to_string();
                // Envoy's jwt_authn: the reason as body and details, and the bearer challenge.
                let details = format!("jwt_authn_access_denied{{{}}}", message.replace(' ', "_"));
                let challenge = format!("Bearer realm=\"{realm}\", error=\"invalid_token\"");
                let reply = Reply {
                    body: Bytes::from(message),
                    ..Reply::empty(error.status()).details(details)
                }
                .header(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                match HeaderValue::from_str(&challenge) {
                    Ok(value) => reply.header(header::WWW_AUTHENTICATE, value),
                    Err(_) => reply,
                }
            }
            L::Denied(reason) => Reply::text(
                StatusCode::from_u16(ACCESS_DENIED_STATUS).unwrap_or(StatusCode::FORBIDDEN),
                ACCESS_DENIED_BODY,
            )
            .details(rbac_details(&reason)),
            L::RouteNotFound => Reply::empty(StatusCode::NOT_FOUND)
                .flags(F::NoRoute)
                .details("route_not_found"),
            L::NoDestination => {
                Reply::text(StatusCode::SERVICE_UNAVAILABLE, "no destination").flags(F::NoRoute)
            }
            // Envoy's answer: the route's status (503 unless set) with no body.
            L::ClusterNotFound(status) => Reply::empty(status)
                .flags(F::NoCluster)
                .details("cluster_not_found"),
            L::CorsPreflight(headers) => Reply {
                headers,
                ..Reply::empty(StatusCode::OK).details("cors_response")
            },
            L::FaultAbort(AbortKind::Http(status)) => Reply::text(status, "fault filter abort")
                .flags(F::FaultInjected)
                .details("fault_filter_abort"),
            L::FaultAbort(AbortKind::Grpc(code)) => {
                let reply = Reply::empty(StatusCode::OK)
                    .flags(F::FaultInjected)
                    .details("fault_filter_abort")
                    .header(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc"),
                    );
                match HeaderValue::from_str(&code.to_string()) {
                    Ok(code) => reply.header(GRPC_STATUS.clone(), code),
                    Err(_) => reply,
                }
            }
            L::DirectResponse { status, body } => Reply {
                body,
                ..Reply::empty(status).details("direct_response")
            },
            L::Redirect { status, location } => {
                let reply = Reply::empty(status).details("redirect");
                match location {
                    Some(location) => reply.header(header::LOCATION, location),
                    None => reply,
                }
            }
            // Envoy's local_ratelimit filter: its body and details, and `x-envoy-ratelimited`
            // (which Envoy's routers downstream do not retry unless told to).
            L::RateLimited => Reply::text(StatusCode::TOO_MANY_REQUESTS, "local_rate_limited")
                .flags(F::RateLimited)
                .details("local_rate_limited")
                .header(
                    X_ENVOY_RATELIMITED.clone(),
                    HeaderValue::from_static("true"),
                ),
            // Envoy's HTTP/1 codec's answer and details.
            L::HeadersTooLarge => Reply::text(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "Request Header Fields Too Large",
            )
            .details("http1.headers_too_large"),
            // Envoy's local replies (no response flag): the buffer filter's and the connection
            // manager's `request_timeout`.
            L::PayloadTooLarge { close_connection } => {
                Reply::text(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large")
                    .details("request_payload_too_large")
                    .closing(close_connection)
            }
            L::RequestTimeout { close_connection } => {
                Reply::text(StatusCode::REQUEST_TIMEOUT, "request timeout")
                    .details("request_overall_timeout")
                    .closing(close_connection)
            }
            L::DownstreamDisconnect => {
                Reply::empty(StatusCode::BAD_REQUEST).flags(F::DownstreamTerminated)
            }
            L::RouteTimeout => Reply::text(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
                .flags(F::UpstreamTimeout)
                .details("upstream_response_timeout"),
            L::PerTryTimeout => {
                Reply::text(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
                    .flags(F::UpstreamTimeout)
                    .details("upstream_per_try_timeout")
            }
            L::Upstream(error) => upstream_failure(error),
        }
    }

    /// The response to send, after writing the reply's flags and details into `record`.
    pub(crate) fn respond(self, record: &mut RequestRecord) -> Response<ProxyBody> {
        let reply = self.reply();
        if let Some(flags) = reply.response_flags {
            record.response_flags.insert(flags);
        }
        if let Some(details) = reply.details {
            record.response_code_details = details;
        }
        let mut response = Response::new(full(reply.body));
        *response.status_mut() = reply.status;
        *response.headers_mut() = reply.headers;
        response
    }
}

impl Reply {
    /// A reply without a body.
    fn empty(status: StatusCode) -> Self {
        Reply {
            status,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            response_flags: None,
            details: None,
        }
    }

    /// A plain-text reply (`text/plain` when the body is not empty).
    fn text(status: StatusCode, body: &'static str) -> Self {
        let reply = Reply {
            body: Bytes::from_static(body.as_bytes()),
            ..Reply::empty(status)
        };
        if body.is_empty() {
            reply
        } else {
            reply.header(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))
        }
    }

    fn flags(mut self, flags: ResponseFlag) -> Self {
        self.response_flags = Some(flags);
        self
    }

    fn details(mut self, details: impl Into<Cow<'static, str>>) -> Self {
        self.details = Some(details.into());
        self
    }

    fn header(mut self, name: http::HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// With `connection: close` when `close` (an HTTP/1 connection whose request was not read
    /// to its end cannot carry another).
    fn closing(self, close: bool) -> Self {
        if close {
            self.header(header::CONNECTION, HeaderValue::from_static("close"))
        } else {
            self
        }
    }
}

/// The `response_code_details` of a response the upstream produced, retried or not: Envoy's
/// router records `ResponseCodeDetailValues::ViaUpstream` when the upstream's response head
/// arrives (`envoy/stream_info/stream_info.h`, set in `Filter::onUpstreamHeaders`).
pub(crate) const VIA_UPSTREAM: &str = "via_upstream";

/// The reply to a request whose last attempt failed before any response head: Envoy's router's
/// local reply for the failure (`Filter::onUpstreamReset` before `downstream_response_started_`:
/// the flag of the reset's reason, `upstream_reset_before_response_started{reason}`, and 502
/// for a protocol error, 503 otherwise).
fn upstream_failure(error: UpstreamError) -> Reply {
    use ResponseFlag as F;
    let (status, flags, body, details) = match error {
        UpstreamError::NoHealthyUpstream(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            F::NoHealthyUpstream,
            "no healthy upstream",
            "no_healthy_upstream",
        ),
        UpstreamError::Overflow(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            F::UpstreamOverflow,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            "upstream_reset_before_response_started{overflow}",
        ),
        UpstreamError::ConnectFailure { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            F::UpstreamConnectFailure,
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            "upstream_reset_before_response_started{connection_failure}",
        ),
        // Envoy's dynamic forward proxy: no flag for a full cache.
        UpstreamError::Dns(DnsError::Overflow(_)) => {
            return Reply::text(StatusCode::SERVICE_UNAVAILABLE, "DNS cache overflow")
                .details("dns_cache_overflow");
        }
        UpstreamError::Dns(DnsError::Failed { .. }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            F::DnsResolutionFailed,
            "DNS resolution failure",
            "dns_resolution_failure",
        ),
        UpstreamError::RefusedStream { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            F::UpstreamReset,
            "upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset",
            "upstream_reset_before_response_started{remote_refused_stream_reset}",
        ),
        UpstreamError::Reset { cause, .. } => match cause {
            ResetReason::RemoteReset => (
                StatusCode::SERVICE_UNAVAILABLE,
                F::UpstreamReset,
                "upstream connect error or disconnect/reset before headers. reset reason: remote reset",
                "upstream_reset_before_response_started{remote_reset}",
            ),
            ResetReason::ConnectionTermination => (
                StatusCode::SERVICE_UNAVAILABLE,
                F::UpstreamConnectionTermination,
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                "upstream_reset_before_response_started{connection_termination}",
            ),
            ResetReason::ProtocolError => (
                StatusCode::BAD_GATEWAY,
                F::UpstreamProtocolError,
                "upstream connect error or disconnect/reset before headers. reset reason: protocol error",
                "upstream_reset_before_response_started{protocol_error}",
            ),
        },
    };
    Reply::text(status, body).flags(flags).details(details)
}

/// The `response_flags` and `response_code_details` of a response whose body failed upstream
/// after its head went downstream. The stream is reset and the status stays the upstream's,
/// as Envoy's router does (`Filter::onUpstreamReset` once `downstream_response_started_`: the
/// `upstream_reset_after_response_started` details and the flag of the reset's reason, the
/// reason as [`ResetReason::of`] tells it).
pub(crate) fn late_upstream_reset(
    error: &(dyn std::error::Error + 'static),
) -> (ResponseFlag, &'static str) {
    match ResetReason::of(error, true) {
        ResetReason::RemoteReset => (
            ResponseFlag::UpstreamReset,
            "upstream_reset_after_response_started{remote_reset}",
        ),
        ResetReason::ConnectionTermination => (
            ResponseFlag::UpstreamConnectionTermination,
            "upstream_reset_after_response_started{connection_termination}",
        ),
        ResetReason::ProtocolError => (
            ResponseFlag::UpstreamProtocolError,
            "upstream_reset_after_response_started{protocol_error}",
        ),
    }
}

/// Envoy's RBAC details for a refusal: the request's `response_code_details`, a refused L4
/// connection's termination details.
pub(crate) fn rbac_details(reason: &DenyReason) -> String {
    match reason {
        DenyReason::DeniedBy(policy) => format!(
            "rbac_access_denied_matched_policy[ns[{}]-policy[{}]-rule[0]]",
            policy.namespace, policy.name
        ),
        _ => "rbac_access_denied_matched_policy[none]".to_owned(),
    }
}

#[cfg(test)]
mod tests;
