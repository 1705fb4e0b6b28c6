//! What the waypoint accepts as an HTTP request before routing or policy sees it: Envoy's
//! defaults, which follow RFC 9110 and 9112 where Envoy enforces them. A proxy that is more
//! lenient than the policies written for it lets requests past them: `delete` is not `DELETE`
//! to a `methods: [DELETE]` rule but is to many applications; two Host headers are two
//! authorities; a protocol switched after a `101` carries requests nobody checks.
//!
//! - The method is one Envoy's HTTP/1 codec knows, in its registered (upper) case; Envoy refuses
//!   anything else unless custom methods are allowed, and so does this, over HTTP/2 too.
//! - HTTP/1.0 and older get `426 Upgrade Required` (Envoy's `accept_http_10: false`, Istio's
//!   default).
//! - Exactly one authority: a non-empty `Host` (or `:authority`), never two `Host` lines.
//! - CONNECT, plain or extended, is an upgrade nobody configured: `403 upgrade_failed`.
//! - `Upgrade: h2c` is not performed, as Envoy does not: the request is served as HTTP/1.1
//!   without `Upgrade`, `HTTP2-Settings` and their `Connection` tokens. Any other upgrade must
//!   be one of the configured protocols (WebSocket by default, as Istio configures Envoy), else
//!   `403 upgrade_failed`.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Version};

/// The protocol upgrades forwarded unless configured otherwise (Istio's: WebSocket).
pub const DEFAULT_UPGRADES: [&str; 1] = ["websocket"];

/// The methods Envoy's HTTP/1 codec accepts when custom methods are not allowed.
const KNOWN_METHODS: [&str; 34] = [
    "DELETE",
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "COPY",
    "LOCK",
    "MKCOL",
    "MOVE",
    "PROPFIND",
    "PROPPATCH",
    "SEARCH",
    "UNLOCK",
    "BIND",
    "REBIND",
    "UNBIND",
    "ACL",
    "REPORT",
    "MKACTIVITY",
    "CHECKOUT",
    "MERGE",
    "M-SEARCH",
    "NOTIFY",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "PATCH",
    "PURGE",
    "MKCALENDAR",
    "LINK",
    "UNLINK",
    "SOURCE",
];

static HTTP2_SETTINGS: header::HeaderName = header::HeaderName::from_static("http2-settings");

/// Why a request is answered by the waypoint itself (the reply: `proxy::reply`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Nonconforming {
    #[error("method {0:?} is not one the waypoint accepts (methods are case-sensitive)")]
    UnknownMethod(String),
    #[error("{0:?} is not accepted: HTTP/1.1 or later is required")]
    LowVersion(Version),
    #[error("the request names no authority (Host)")]
    MissingHost,
    #[error("the request carries more than one Host")]
    DuplicateHost,
    #[error("upgrade to {0:?} is not configured")]
    UpgradeRefused(String),
}

/// Checks `request` (see the module documentation) and removes an `h2c` upgrade from it.
/// `upgrades` are the protocols forwarded, lower case.
pub fn admit<B>(request: &mut Request<B>, upgrades: &[String]) -> Result<(), Nonconforming> {
    let method = request.method();
    if !KNOWN_METHODS.contains(&method.as_str()) {
        return Err(Nonconforming::UnknownMethod(method.as_str().to_owned()));
    }
    if request.version() < Version::HTTP_11 {
        return Err(Nonconforming::LowVersion(request.version()));
    }
    if *method == Method::CONNECT {
        return Err(Nonconforming::UpgradeRefused("CONNECT".to_owned()));
    }
    check_authority(request)?;
    let Some(protocol) = upgrade_requested(request.headers()) else {
        return Ok(());
    };
    if protocol.eq_ignore_ascii_case("h2c") {
        strip_h2c(request.headers_mut());
        return Ok(());
    }
    if upgrades.iter().any(|u| u.eq_ignore_ascii_case(&protocol)) {
        Ok(())
    } else {
        Err(Nonconforming::UpgradeRefused(protocol))
    }
}

fn check_authority<B>(request: &Request<B>) -> Result<(), Nonconforming> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Nonconforming::DuplicateHost);
    }
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| host.map(|h| h.to_str().unwrap_or("")))
        .unwrap_or("");
    if authority.trim().is_empty() {
        return Err(Nonconforming::MissingHost);
    }
    Ok(())
}

/// The protocol an HTTP/1.1 request asks to switch to: its `Upgrade` value, when `Connection`
/// carries the `upgrade` token (Envoy's `isUpgrade`).
fn upgrade_requested(headers: &HeaderMap) -> Option<String> {
    let upgrade = headers.get(header::UPGRADE)?;
    connection_tokens(headers)
        .any(|t| t.eq_ignore_ascii_case(b"upgrade"))
        .then(|| {
            String::from_utf8_lossy(upgrade.as_bytes())
                .trim()
                .to_owned()
        })
}

/// The tokens of every `Connection` value, as bytes: a value that is not ASCII (obs-text)
/// still names its tokens, as a lenient upstream would read them.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Envoy's handling of `h2c`: the upgrade headers go, the request stays.
fn strip_h2c(headers: &mut HeaderMap) {
    headers.remove(header::UPGRADE);
    headers.remove(&HTTP2_SETTINGS);
    let kept: Vec<&[u8]> = connection_tokens(headers)
        .filter(|t| {
            !t.eq_ignore_ascii_case(b"upgrade") && !t.eq_ignore_ascii_case(b"http2-settings")
        })
        .collect();
    let value = (!kept.is_empty())
        .then(|| HeaderValue::from_bytes(&kept.join(&b", "[..])).ok())
        .flatten();
    headers.remove(header::CONNECTION);
    if let Some(value) = value {
        headers.insert(header::CONNECTION, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &[(&str, &str)], method: &str, uri: &str, version: Version) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri).version(version);
        for (name, value) in head {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn requests_are_admitted_as_envoy_admits_them() {
        let upgrades = vec!["websocket".to_owned()];
        let h11 = Version::HTTP_11;
        let host = [("host", "reviews")];
        let cases: Vec<(&str, Request<()>, Result<(), Nonconforming>)> = vec![
            ("plain", request(&host, "GET", "/", h11), Ok(())),
            (
                "a WebDAV method",
                request(&host, "PROPFIND", "/", h11),
                Ok(()),
            ),
            (
                "lower case",
                request(&host, "delete", "/", h11),
                Err(Nonconforming::UnknownMethod("delete".into())),
            ),
            (
                "mixed case",
                request(&host, "Delete", "/", h11),
                Err(Nonconforming::UnknownMethod("Delete".into())),
            ),
            (
                "an unregistered method",
                request(&host, "BREW", "/", h11),
                Err(Nonconforming::UnknownMethod("BREW".into())),
            ),
            (
                "HTTP/1.0",
                request(&host, "GET", "/", Version::HTTP_10),
                Err(Nonconforming::LowVersion(Version::HTTP_10)),
            ),
            (
                "no Host",
                request(&[], "GET", "/", h11),
                Err(Nonconforming::MissingHost),
            ),
            (
                "an empty Host",
                request(&[("host", "")], "GET", "/", h11),
                Err(Nonconforming::MissingHost),
            ),
            (
                "two Hosts",
                request(&[("host", "a"), ("host", "b")], "GET", "/", h11),
                Err(Nonconforming::DuplicateHost),
            ),
            (
                "an absolute URI without Host",
                request(&[], "GET", "http://reviews/x", h11),
                Ok(()),
            ),
            (
                "HTTP/2 with :authority",
                request(&[], "GET", "http://reviews/x", Version::HTTP_2),
                Ok(()),
            ),
            (
                "HTTP/2 with two Hosts",
                request(
                    &[("host", "a"), ("host", "b")],
                    "GET",
                    "http://reviews/x",
                    Version::HTTP_2,
                ),
                Err(Nonconforming::DuplicateHost),
            ),
            (
                "CONNECT",
                request(&[("host", "reviews:80")], "CONNECT", "reviews:80", h11),
                Err(Nonconforming::UpgradeRefused("CONNECT".into())),
            ),
            (
                "WebSocket",
                request(
                    &[
                        ("host", "r"),
                        ("connection", "Upgrade"),
                        ("upgrade", "websocket"),
                    ],
                    "GET",
                    "/",
                    h11,
                ),
                Ok(()),
            ),
            (
                "another upgrade",
                request(
                    &[
                        ("host", "r"),
                        ("connection", "upgrade"),
                        ("upgrade", "spdy/3"),
                    ],
                    "GET",
                    "/",
                    h11,
                ),
                Err(Nonconforming::UpgradeRefused("spdy/3".into())),
            ),
            (
                "several protocols at once",
                request(
                    &[
                        ("host", "r"),
                        ("connection", "upgrade"),
                        ("upgrade", "websocket, spdy/3"),
                    ],
                    "GET",
                    "/",
                    h11,
                ),
                Err(Nonconforming::UpgradeRefused("websocket, spdy/3".into())),
            ),
            (
                "Upgrade without the Connection token is no upgrade",
                request(&[("host", "r"), ("upgrade", "spdy/3")], "GET", "/", h11),
                Ok(()),
            ),
        ];
        for (what, mut request, expected) in cases {
            assert_eq!(admit(&mut request, &upgrades), expected, "{what}");
        }
    }

    #[test]
    fn an_h2c_upgrade_with_a_connection_value_beyond_ascii_is_still_stripped() {
        // Found by the `http1_conformance` fuzz target
        // (fuzz/regressions/http1_conformance/connection-obs-text).
        let mut request = Request::builder()
            .method("GET")
            .uri("/")
            .header("host", "httpbin")
            .header(
                "connection",
                HeaderValue::from_bytes(b"Upgrade,\x82 HTTP2-Settings").unwrap(),
            )
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
            .body(())
            .unwrap();
        admit(&mut request, &[]).unwrap();
        let headers = request.headers();
        assert!(headers.get(header::UPGRADE).is_none());
        assert!(headers.get(&HTTP2_SETTINGS).is_none());
        assert_eq!(
            headers[header::CONNECTION].as_bytes(),
            b"\x82 HTTP2-Settings"
        );
    }

    #[test]
    fn an_h2c_upgrade_is_served_as_plain_http() {
        let mut request = request(
            &[
                ("host", "reviews"),
                ("connection", "keep-alive, Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABk"),
            ],
            "GET",
            "/",
            Version::HTTP_11,
        );
        assert_eq!(admit(&mut request, &[]), Ok(()));
        let headers = request.headers();
        assert!(!headers.contains_key(header::UPGRADE));
        assert!(!headers.contains_key("http2-settings"));
        assert_eq!(headers[header::CONNECTION], "keep-alive");
    }

    #[test]
    fn configured_upgrades_are_forwarded() {
        let mut request = request(
            &[
                ("host", "r"),
                ("connection", "upgrade"),
                ("upgrade", "SPDY/3"),
            ],
            "GET",
            "/",
            Version::HTTP_11,
        );
        assert_eq!(admit(&mut request, &["spdy/3".to_owned()]), Ok(()));
        assert_eq!(request.headers()[header::UPGRADE], "SPDY/3");
    }
}
