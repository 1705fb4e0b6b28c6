//! The CONNECT request as HBONE puts it on the wire, and its validation on the server side.
//!
//! Pure functions over plain data: no I/O happens here.

use std::net::{IpAddr, SocketAddr, SocketAddrV6};

use http::header::{FORWARDED, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};

/// W3C baggage header, passed through the tunnel untouched.
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
/// W3C trace context header, passed through the tunnel untouched.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// One HBONE tunnel request: where the bytes go, who sent them, and any extra headers.
///
/// The client builds it to open a tunnel; the server hands the parsed form to its
/// [`ConnectHandler`](crate::ConnectHandler).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The original destination `ip:port` (`:authority` of the CONNECT).
    pub authority: SocketAddr,
    /// The original source address (`forwarded: for=...`), when the sender stated it.
    pub forwarded_for: Option<IpAddr>,
    /// Further request headers (`baggage`, `traceparent`, ...). On the server this holds every
    /// header the client sent, `forwarded` included.
    pub headers: HeaderMap,
}

impl ConnectRequest {
    /// A request for `authority` with no source and no extra headers.
    pub fn new(authority: SocketAddr) -> Self {
        Self {
            authority,
            forwarded_for: None,
            headers: HeaderMap::new(),
        }
    }

    /// Sets the original source address sent as `forwarded: for=...`.
    pub fn with_forwarded_for(mut self, source: IpAddr) -> Self {
        self.forwarded_for = Some(source);
        self
    }

    /// Adds a header passed through to the server (for example [`BAGGAGE`] or [`TRACEPARENT`]).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// The `baggage` header, if present.
    pub fn baggage(&self) -> Option<&HeaderValue> {
        self.headers.get(BAGGAGE)
    }

    /// The `traceparent` header, if present.
    pub fn traceparent(&self) -> Option<&HeaderValue> {
        self.headers.get(TRACEPARENT)
    }

    /// The HTTP/2 request for this tunnel: `CONNECT` with only `:method` and `:authority`
    /// pseudo-headers (an authority-form URI has no scheme and no path).
    pub(crate) fn to_http(&self) -> Request<()> {
        let mut request = Request::new(());
        *request.method_mut() = Method::CONNECT;
        *request.uri_mut() = authority_uri(self.authority);
        if !self.headers.is_empty() {
            *request.headers_mut() = self.headers.clone();
        }
        if let Some(source) = self.forwarded_for {
            request
                .headers_mut()
                .insert(FORWARDED, forwarded_for_value(source));
        }
        request
    }
}

/// The authority-form URI `ip:port` (`[ip]:port` for IPv6). An IPv6 zone id has no place in an
/// authority and is dropped.
fn authority_uri(authority: SocketAddr) -> Uri {
    let authority = match authority {
        SocketAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(*v6.ip(), v6.port(), 0, 0)),
        v4 => v4,
    };
    // `ip:port` always parses as an authority; the fallback only exists to avoid a panic path.
    Uri::try_from(authority.to_string()).unwrap_or_default()
}

/// `for=192.0.2.1`, or `for="[2001:db8::1]"`: RFC 7239 requires IPv6 to be bracketed and
/// quoted.
pub(crate) fn forwarded_for_value(source: IpAddr) -> HeaderValue {
    let text = match source {
        IpAddr::V4(v4) => format!("for={v4}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    };
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("for=unknown"))
}

/// The original source from a `forwarded` header: the `for=` of its first element (the one the
/// original sender added). Obfuscated or unknown nodes (`for=unknown`, `for=_hidden`) and
/// malformed values give `None`.
pub(crate) fn parse_forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let value = headers.get(FORWARDED)?.to_str().ok()?;
    let first_element = value.split(',').next()?;
    let node = first_element.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    parse_forwarded_node(node)
}

fn parse_forwarded_node(node: &str) -> Option<IpAddr> {
    let node = node
        .strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or(node);
    if let Some(bracketed) = node.strip_prefix('[') {
        let (ip, _port) = bracketed.split_once(']')?;
        return ip.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    node.parse::<IpAddr>()
        .ok()
        .or_else(|| node.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
}

/// Why the server answers a request without consulting its handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedRequest {
    #[error("method {0} is not allowed, only CONNECT")]
    MethodNotAllowed(Method),
    #[error("authority {0:?} is not an ip:port")]
    BadAuthority(String),
}

impl MalformedRequest {
    /// The status the server answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadAuthority(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// The server's reading of an incoming request: its destination and stated source, with every
/// header the client sent; or why it is refused before any [`ConnectHandler`](crate::ConnectHandler)
/// sees it. Everything here comes from a peer that may be hostile.
pub fn parse_connect_request(
    parts: http::request::Parts,
) -> Result<ConnectRequest, MalformedRequest> {
    let authority = parse_connect_target(&parts.method, &parts.uri)?;
    Ok(ConnectRequest {
        authority,
        forwarded_for: parse_forwarded_for(&parts.headers),
        headers: parts.headers,
    })
}

/// Checks method and authority of an incoming request and returns the destination.
pub(crate) fn parse_connect_target(
    method: &Method,
    uri: &Uri,
) -> Result<SocketAddr, MalformedRequest> {
    if method != Method::CONNECT {
        return Err(MalformedRequest::MethodNotAllowed(method.clone()));
    }
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    match authority.parse::<SocketAddr>() {
        Ok(target) if target.port() != 0 && !target.ip().is_unspecified() => Ok(target),
        _ => Err(MalformedRequest::BadAuthority(authority.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_value_quotes_ipv6_only() {
        let cases: &[(&str, &str)] = &[
            ("10.1.2.3", "for=10.1.2.3"),
            ("2001:db8::1", "for=\"[2001:db8::1]\""),
            ("::ffff:10.0.0.1", "for=\"[::ffff:10.0.0.1]\""),
        ];
        for (ip, expected) in cases {
            let value = forwarded_for_value(ip.parse().unwrap());
            assert_eq!(value, *expected, "source {ip}");
        }
    }

    #[test]
    fn forwarded_for_parsing() {
        let cases: &[(&str, Option<&str>)] = &[
            ("for=10.1.2.3", Some("10.1.2.3")),
            ("For=10.1.2.3", Some("10.1.2.3")),
            ("for=\"[2001:db8::1]\"", Some("2001:db8::1")),
            ("for=\"[2001:db8::1]:4711\"", Some("2001:db8::1")),
            ("for=\"10.1.2.3:4711\"", Some("10.1.2.3")),
            ("proto=http;for=10.9.9.9;by=10.0.0.1", Some("10.9.9.9")),
            ("for=10.1.1.1, for=10.2.2.2", Some("10.1.1.1")),
            ("for=unknown", None),
            ("for=_hidden", None),
            ("by=10.0.0.1", None),
            ("for=\"[not-an-ip]\"", None),
            ("for=2001:db8::1", Some("2001:db8::1")),
            ("", None),
        ];
        for (header, expected) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(FORWARDED, HeaderValue::from_str(header).unwrap());
            let expected = expected.map(|ip| ip.parse::<IpAddr>().unwrap());
            assert_eq!(parse_forwarded_for(&headers), expected, "header {header:?}");
        }
        assert_eq!(parse_forwarded_for(&HeaderMap::new()), None);
    }

    #[test]
    fn forwarded_round_trips() {
        for ip in ["192.0.2.7", "2001:db8::42", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut headers = HeaderMap::new();
            headers.insert(FORWARDED, forwarded_for_value(ip));
            assert_eq!(parse_forwarded_for(&headers), Some(ip));
        }
    }

    #[test]
    fn connect_target_validation() {
        let cases: &[(Method, &str, Result<&str, StatusCode>)] = &[
            (Method::CONNECT, "10.0.0.1:8080", Ok("10.0.0.1:8080")),
            (
                Method::CONNECT,
                "[2001:db8::1]:443",
                Ok("[2001:db8::1]:443"),
            ),
            (
                Method::CONNECT,
                "example.com:80",
                Err(StatusCode::BAD_REQUEST),
            ),
            (Method::CONNECT, "10.0.0.1:0", Err(StatusCode::BAD_REQUEST)),
            (Method::CONNECT, "0.0.0.0:80", Err(StatusCode::BAD_REQUEST)),
            (Method::CONNECT, "10.0.0.1", Err(StatusCode::BAD_REQUEST)),
            (
                Method::GET,
                "10.0.0.1:8080",
                Err(StatusCode::METHOD_NOT_ALLOWED),
            ),
            (
                Method::POST,
                "10.0.0.1:8080",
                Err(StatusCode::METHOD_NOT_ALLOWED),
            ),
        ];
        for (method, authority, expected) in cases {
            let uri: Uri = authority.parse().unwrap();
            let got = parse_connect_target(method, &uri).map_err(|e| e.status());
            let expected = expected.map(|a| a.parse::<SocketAddr>().unwrap());
            assert_eq!(got, expected, "{method} {authority}");
        }
    }

    #[test]
    fn http_request_has_only_authority_and_forwarded() {
        let request = ConnectRequest::new("[2001:db8::5]:9080".parse().unwrap())
            .with_forwarded_for("2001:db8::9".parse().unwrap())
            .with_header(
                BAGGAGE,
                HeaderValue::from_static("k8s.namespace.name=default"),
            );
        let http = request.to_http();
        assert_eq!(http.method(), Method::CONNECT);
        assert_eq!(http.uri().scheme(), None);
        assert_eq!(http.uri().path_and_query(), None);
        assert_eq!(
            http.uri().authority().unwrap().as_str(),
            "[2001:db8::5]:9080"
        );
        assert_eq!(http.headers()[FORWARDED], "for=\"[2001:db8::9]\"");
        assert_eq!(http.headers()[BAGGAGE], "k8s.namespace.name=default");
        assert_eq!(http.headers().len(), 2);
    }
}
