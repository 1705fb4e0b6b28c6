//! A rule's `sessionPersistence` as Envoy's stateful session filter. Istio's Gateway API
//! conversion does not read this field; istiod builds the same filter for a Service labelled
//! `istio.io/persistent-session` (`MaybeBuildStatefulSessionFilterConfig`), and its defaults
//! are kept here: the cookie's `Path` is `/`, and a session cookie (no `Max-Age`) unless the
//! rule asks for a permanent one.

use weft_proto::waypoint as wp;

use super::super::Compiler;
use crate::translate::TranslateProblem;
use crate::translate::gateway_api::{MeshRoute, SessionPersistence};

impl<'a> Compiler<'a, '_> {
    /// The stateful session of a rule compiled as `route_name`, whose name is the default
    /// cookie or header name (one per rule, so that two rules' sessions never read each
    /// other's); `None` (reported) when it cannot be applied.
    pub(super) fn stateful_session(
        &mut self,
        route: &MeshRoute<'a>,
        session: &SessionPersistence,
        path: &str,
        route_name: &str,
    ) -> Option<wp::StatefulSession> {
        let path = format!("{path}.sessionPersistence");
        let name = session
            .session_name
            .clone()
            .unwrap_or_else(|| route_name.to_owned());
        let unsupported = |compiler: &mut Self, field: &str, reason: String| {
            compiler.report_route(
                route,
                TranslateProblem::Unsupported {
                    path: format!("{path}{field}"),
                    reason,
                },
            );
        };
        let header = match session.persistence_type.as_deref() {
            None | Some("Cookie") => false,
            Some("Header") => true,
            Some(other) => {
                unsupported(
                    self,
                    ".type",
                    format!("{other:?} is neither Cookie nor Header; the rule keeps no session"),
                );
                return None;
            }
        };
        if !is_token(&name) || (header && http::HeaderName::from_bytes(name.as_bytes()).is_err()) {
            unsupported(
                self,
                ".sessionName",
                format!(
                    "{name:?} is not a valid {} name; the rule keeps no session",
                    if header { "header" } else { "cookie" }
                ),
            );
            return None;
        }
        // `idleTimeout` is in the not-applied catalog.
        let permanent = session
            .cookie_config
            .as_ref()
            .and_then(|c| c.lifetime_type.as_deref())
            == Some("Permanent");
        let cookie_ttl = match (&session.absolute_timeout, permanent && !header) {
            (Some(timeout), true) => {
                self.gateway_duration(route, format!("{path}.absoluteTimeout"), timeout)
            }
            (None, true) => {
                unsupported(
                    self,
                    ".absoluteTimeout",
                    "a Permanent cookie requires absoluteTimeout; a session cookie is set"
                        .to_owned(),
                );
                None
            }
            (Some(_), false) => {
                unsupported(
                    self,
                    ".absoluteTimeout",
                    "applied only as the Max-Age of a Permanent cookie; the session lasts as its cookie or header does".to_owned(),
                );
                None
            }
            (None, false) => None,
        };
        Some(wp::StatefulSession {
            kind: if header {
                wp::StatefulSessionKind::Header as i32
            } else {
                wp::StatefulSessionKind::Cookie as i32
            },
            cookie_path: if header {
                String::new()
            } else {
                "/".to_owned()
            },
            name: if header {
                name.to_ascii_lowercase()
            } else {
                name
            },
            cookie_ttl,
        })
    }
}

/// An HTTP token (RFC 9110), what a cookie's or header's name must be.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
