//! A route's stateful session as read from the controller's configuration.

use super::*;

fn with_session(session: proto::StatefulSession) -> Result<WaypointConfig, ConfigError> {
    let mut c = base();
    c.services[0].http_routes[0].stateful_session = Some(session);
    WaypointConfig::try_from(c)
}

#[test]
fn a_stateful_session_is_read_and_an_unwritable_one_refused() {
    let cookie = proto::StatefulSession {
        kind: proto::StatefulSessionKind::Cookie as i32,
        name: "sticky".to_owned(),
        cookie_path: "/".to_owned(),
        cookie_ttl: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
    };
    let config = with_session(cookie.clone()).unwrap();
    assert_eq!(
        config.services[0].http_routes[0].session,
        Some(StatefulSession::Cookie {
            name: "sticky".to_owned(),
            template: CookieTemplate {
                max_age: 60,
                path: "/".to_owned(),
                attributes: Vec::new(),
            },
        })
    );
    let header = proto::StatefulSession {
        kind: proto::StatefulSessionKind::Header as i32,
        name: "X-Session".to_owned(),
        ..Default::default()
    };
    assert_eq!(
        with_session(header.clone()).unwrap().services[0].http_routes[0].session,
        Some(StatefulSession::Header {
            name: http::HeaderName::from_static("x-session"),
        })
    );
    let refused = [
        proto::StatefulSession {
            name: "a b".to_owned(),
            ..cookie.clone()
        },
        proto::StatefulSession {
            name: String::new(),
            ..cookie.clone()
        },
        proto::StatefulSession {
            cookie_path: "/; Domain=evil.example".to_owned(),
            ..cookie.clone()
        },
        proto::StatefulSession {
            name: "x\nsession".to_owned(),
            ..header
        },
        proto::StatefulSession { kind: 7, ..cookie },
    ];
    for session in refused {
        let error = with_session(session.clone()).expect_err(&format!("{session:?}"));
        assert!(
            error.to_string().contains("stateful_session"),
            "{session:?}: {error}"
        );
    }
}
