use std::sync::{Arc, Mutex};

use prometheus_client::{encoding::text::encode, registry::Registry};

use super::*;

/// One event: the response flags, bytes sent and received, and why it was revoked.
type Event = (String, u64, u64, Option<String>);

/// Records what the record asks to log.
#[derive(Default, Clone)]
struct Logged(Arc<Mutex<Vec<Event>>>, Option<String>);

impl AccessLog for Logged {
    fn revoked(&mut self, reason: &str) -> Option<ResponseFlag> {
        self.1 = Some(reason.to_owned());
        Some(ResponseFlag::Denied)
    }

    fn write(&self, end: &ConnectionEnd<'_>) {
        self.0.lock().unwrap().push((
            end.labels.response_flags.to_string(),
            end.sent,
            end.received,
            self.1.clone(),
        ));
    }
}

fn labels(reporter: Reporter, principal: &str) -> TcpLabels {
    TcpLabels::new(
        PeerLabels::new(
            reporter,
            &Peer {
                principal,
                ..Peer::default()
            },
            &Peer::default(),
            &Service::default(),
        ),
        SecurityPolicy::Unknown,
    )
}

fn text(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).unwrap();
    text
}

fn line(text: &str, prefix: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .to_string()
}

#[test]
fn a_connection_is_counted_with_every_label_and_its_bytes() {
    let mut registry = Registry::default();
    let metrics = TcpMetrics::new(&mut registry);
    let log = Logged::default();
    let mut connection = metrics.open(
        labels(Reporter::Destination, "spiffe://cluster.local/ns/a/sa/b"),
        log.clone(),
    );
    connection.add_sent(300);
    connection.add_received(20);
    connection.add_received(22);
    connection.set_response_flags(ResponseFlag::Denied);
    drop(connection);
    let text = text(&registry);
    for expected in [
        "istio_tcp_connections_opened_total{reporter=\"destination\"",
        "istio_tcp_connections_closed_total{reporter=\"destination\"",
        "response_flags=\"DENY\"",
        "request_protocol=\"tcp\"",
        "source_principal=\"spiffe://cluster.local/ns/a/sa/b\"",
        "destination_workload=\"unknown\"",
        "connection_security_policy=\"unknown\"",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    assert!(line(&text, "istio_tcp_received_bytes_total{").ends_with(" 42"));
    assert!(line(&text, "istio_tcp_sent_bytes_total{").ends_with(" 300"));
    // One access-log event, with the bytes and the flags the connection closed with.
    assert_eq!(*log.0.lock().unwrap(), [("DENY".to_owned(), 300, 42, None)]);
}

#[test]
fn bytes_are_visible_while_the_connection_is_open() {
    let mut registry = Registry::default();
    let metrics = TcpMetrics::new(&mut registry);
    let connection = metrics.open(labels(Reporter::Source, ""), Logged::default());
    connection.add_received(1000);
    connection.add_sent(7);
    let open = text(&registry);
    assert!(line(&open, "istio_tcp_received_bytes_total{").ends_with(" 1000"));
    assert!(line(&open, "istio_tcp_sent_bytes_total{").ends_with(" 7"));
    assert!(
        !open.contains("istio_tcp_connections_closed_total{"),
        "{open}"
    );
    drop(connection);
    let closed = text(&registry);
    assert!(line(&closed, "istio_tcp_connections_closed_total{").ends_with(" 1"));
    // Counted once: closing does not add the bytes again.
    assert!(line(&closed, "istio_tcp_received_bytes_total{").ends_with(" 1000"));
}

#[test]
fn a_revoked_connection_closes_with_the_flag_and_reason_its_log_gives() {
    let mut registry = Registry::default();
    let metrics = TcpMetrics::new(&mut registry);
    let log = Logged::default();
    let mut connection = metrics.open(labels(Reporter::Waypoint, ""), log.clone());
    weft_hbone::ByteMeter::revoked(&mut connection, "connection closed due to policy change");
    assert_eq!(connection.labels().response_flags, ResponseFlag::Denied);
    drop(connection);
    assert_eq!(
        log.0.lock().unwrap()[0].3.as_deref(),
        Some("connection closed due to policy change")
    );
    let text = text(&registry);
    assert!(
        line(&text, "istio_tcp_connections_closed_total{").contains("response_flags=\"DENY\""),
        "{text}"
    );
    assert!(
        line(&text, "istio_tcp_connections_opened_total{").contains("response_flags=\"-\""),
        "opened with the labels it started with: {text}"
    );
}

#[test]
fn one_key_resolves_its_labels_once() {
    let mut registry = Registry::default();
    let metrics = TcpMetrics::new(&mut registry);
    let record = Arc::new("a record the labels were built from");
    let key = LabelKey {
        records: [Arc::as_ptr(&record) as usize, 0, 0],
        discriminant: 1,
    };
    let mut built = 0;
    for _ in 0..3 {
        let connection = metrics.open_cached(
            key,
            || {
                built += 1;
                (labels(Reporter::Source, "p"), record.clone())
            },
            Logged::default(),
        );
        connection.add_received(10);
    }
    assert_eq!((built, metrics.cached_label_sets()), (1, 1));
    // The cache keeps the records it names by address alive.
    assert_eq!(Arc::strong_count(&record), 2);
    let text = text(&registry);
    assert!(line(&text, "istio_tcp_connections_opened_total{").ends_with(" 3"));
    assert!(line(&text, "istio_tcp_connections_closed_total{").ends_with(" 3"));
    assert!(line(&text, "istio_tcp_received_bytes_total{").ends_with(" 30"));
}

#[test]
fn typed_labels_print_istio_s_values() {
    let cases = [
        (ResponseFlag::None.as_str(), "-"),
        (ResponseFlag::Denied.as_str(), "DENY"),
        (ResponseFlag::ConnectFailure.as_str(), "CONNECT"),
        (ResponseFlag::NoRoute.as_str(), "NR"),
        (ResponseFlag::NoCluster.as_str(), "NC"),
        (ResponseFlag::DelayInjected.as_str(), "DI"),
        (ResponseFlag::FaultInjected.as_str(), "FI"),
        (ResponseFlag::DownstreamTerminated.as_str(), "DC"),
        (ResponseFlag::UpstreamTimeout.as_str(), "UT"),
        (ResponseFlag::NoHealthyUpstream.as_str(), "UH"),
        (ResponseFlag::UpstreamOverflow.as_str(), "UO"),
        (ResponseFlag::UpstreamConnectFailure.as_str(), "UF"),
        (ResponseFlag::UpstreamReset.as_str(), "UR"),
        (ResponseFlag::UpstreamConnectionTermination.as_str(), "UC"),
        (ResponseFlag::UpstreamProtocolError.as_str(), "UPE"),
        (ResponseFlag::RateLimited.as_str(), "RL"),
        (SecurityPolicy::MutualTls.as_str(), "mutual_tls"),
        (SecurityPolicy::None.as_str(), "none"),
        (SecurityPolicy::Unknown.as_str(), "unknown"),
        (Reporter::Source.direction(), "outbound"),
        (Reporter::Destination.direction(), "inbound"),
        (RequestProtocol::Grpc.as_str(), "grpc"),
    ];
    for (printed, expected) in cases {
        assert_eq!(printed, expected);
    }
}

#[test]
fn access_log_texts_escape_terminal_control_characters() {
    let cases = [
        ("/api/bench?q=1", "/api/bench?q=1"),
        ("/a\u{1b}[31mred", "/a\\u{1b}[31mred"),
        ("bell\u{7}", "bell\\u{7}"),
        ("del\u{7f}", "del\\u{7f}"),
        ("c1\u{9b}31m", "c1\\u{9b}31m"),
        ("/caf\u{e9}", "/caf\u{e9}"),
        ("tab\there", "tab\\u{9}here"),
    ];
    for (text, written) in cases {
        assert_eq!(super::LogText(text).to_string(), written, "{text:?}");
    }
}

/// The pairs Telemetry overrides rewrite are the labels the derived encoding writes, in its
/// order: an override that changes nothing exposes the same series.
#[test]
fn request_label_pairs_encode_as_the_label_set_does() {
    use prometheus_client::metrics::{counter::Counter, family::Family};
    let labels = RequestLabels {
        peers: PeerLabels::new(
            Reporter::Waypoint,
            &Peer {
                workload: "reviews-v1",
                principal: "spiffe://cluster.local/ns/shop/sa/reviews",
                ..Peer::default()
            },
            &Peer::default(),
            &Service {
                hostname: "reviews.shop.svc.cluster.local",
                ..Service::default()
            },
        ),
        request_protocol: RequestProtocol::Http,
        response_code: 503,
        grpc_response_status: String::new(),
        response_flags: flags(&[
            ResponseFlag::UpstreamOverflow,
            ResponseFlag::UpstreamRetryLimitExceeded,
        ]),
        connection_security_policy: SecurityPolicy::MutualTls,
    };
    let exposed = |register: &dyn Fn(&mut Registry)| {
        let mut registry = Registry::default();
        register(&mut registry);
        line(&text(&registry), "requests_total{")
    };
    let derived = exposed(&|registry| {
        let family = Family::<RequestLabels, Counter>::default();
        family.get_or_create(&labels).inc();
        registry.register("requests", "", family);
    });
    let paired = exposed(&|registry| {
        let family = Family::<Vec<(&'static str, String)>, Counter>::default();
        family.get_or_create(&labels.pairs()).inc();
        registry.register("requests", "", family);
    });
    assert_eq!(derived, paired);
    assert!(
        derived.contains("source_workload=\"reviews-v1\""),
        "{derived}"
    );
    assert!(derived.contains("response_flags=\"UO,URX\""), "{derived}");
}

/// A set of flags.
fn flags(set: &[ResponseFlag]) -> ResponseFlags {
    let mut flags = ResponseFlags::NONE;
    for flag in set {
        flags.insert(*flag);
    }
    flags
}

/// Every flag set is printed, comma separated, in the order of Envoy's flag table
/// (`ALL_RESPONSE_STRINGS_FLAGS`, `source/common/stream_info/utility.h`), whatever the order
/// they were set in: `URX` after `UF`, `UC`, `UT`, ... and before `UPE`, `NC`, `DF`; `UO` of a
/// refused retry after `UT`, `UR`, `UF`, `UC`; an injected delay after the failure that
/// followed it (`UT,DI`) and before an abort (`DI,FI`).
#[test]
fn flags_are_printed_in_envoys_flag_order() {
    use ResponseFlag as F;
    let cases: &[(&[F], &str)] = &[
        (&[], "-"),
        (&[F::None], "-"),
        (&[F::UpstreamConnectFailure], "UF"),
        (&[F::UpstreamRetryLimitExceeded], "URX"),
        (
            &[F::UpstreamRetryLimitExceeded, F::NoHealthyUpstream],
            "UH,URX",
        ),
        (
            &[F::UpstreamTimeout, F::UpstreamRetryLimitExceeded],
            "UT,URX",
        ),
        (&[F::UpstreamReset, F::UpstreamRetryLimitExceeded], "UR,URX"),
        (
            &[F::UpstreamConnectFailure, F::UpstreamRetryLimitExceeded],
            "UF,URX",
        ),
        (
            &[
                F::UpstreamConnectionTermination,
                F::UpstreamRetryLimitExceeded,
            ],
            "UC,URX",
        ),
        (
            &[F::UpstreamRetryLimitExceeded, F::DownstreamTerminated],
            "DC,URX",
        ),
        (
            &[F::UpstreamProtocolError, F::UpstreamRetryLimitExceeded],
            "URX,UPE",
        ),
        (&[F::NoCluster, F::UpstreamRetryLimitExceeded], "URX,NC"),
        (
            &[F::DnsResolutionFailed, F::UpstreamRetryLimitExceeded],
            "URX,DF",
        ),
        (&[F::UpstreamOverflow], "UO"),
        (&[F::UpstreamTimeout, F::UpstreamOverflow], "UT,UO"),
        (&[F::UpstreamOverflow, F::UpstreamReset], "UR,UO"),
        (&[F::UpstreamConnectFailure, F::UpstreamOverflow], "UF,UO"),
        (
            &[F::UpstreamConnectionTermination, F::UpstreamOverflow],
            "UC,UO",
        ),
        (&[F::UpstreamProtocolError, F::UpstreamOverflow], "UO,UPE"),
        (&[F::DelayInjected, F::UpstreamTimeout], "UT,DI"),
        (&[F::DelayInjected, F::FaultInjected], "DI,FI"),
        (
            &[F::FaultInjected, F::DelayInjected, F::DownstreamTerminated],
            "DI,FI,DC",
        ),
    ];
    for (set, printed) in cases {
        let flags = flags(set);
        assert_eq!(flags.as_str(), *printed, "{set:?}");
        assert_eq!(flags.to_string(), *printed, "{set:?}");
        // The joined name is kept: the same string each time.
        assert!(std::ptr::eq(flags.as_str(), flags.as_str()), "{set:?}");
    }
}

/// The set holds what was inserted and nothing else; `set` adds only when asked.
#[test]
fn a_set_of_flags_holds_what_was_inserted() {
    use ResponseFlag as F;
    let mut flags = ResponseFlags::from(F::UpstreamReset);
    assert!(flags.contains(F::UpstreamReset) && !flags.contains(F::UpstreamTimeout));
    assert!(!flags.contains(F::None) && !flags.is_empty());
    flags.set(F::UpstreamRetryLimitExceeded, false);
    assert_eq!(flags, ResponseFlags::from(F::UpstreamReset));
    flags.set(F::UpstreamRetryLimitExceeded, true);
    assert_eq!(
        flags.iter().collect::<Vec<_>>(),
        [F::UpstreamReset, F::UpstreamRetryLimitExceeded]
    );
    assert!(ResponseFlags::from(F::None).is_empty());
    assert_eq!(ResponseFlags::default(), ResponseFlags::NONE);
}

#[test]
fn label_names_are_those_prometheus_accepts_and_istio_does_not_reserve() {
    for good in ["request_host", "_x", "A9"] {
        assert!(is_label_name(good), "{good}");
    }
    for bad in ["", "9a", "my-tag", "le", "__name__", "a.b"] {
        assert!(!is_label_name(bad), "{bad}");
    }
}

/// Keeps only `reporter` and `response_flags` of every metric but the sent bytes, which it
/// disables.
#[derive(Debug)]
struct FlagsOnly;

impl TcpSeriesOverride for FlagsOnly {
    fn series(&self, metric: TcpMetric, labels: &TcpLabels) -> Option<Series<TcpLabels>> {
        (metric != TcpMetric::Sent).then(|| {
            Series::Overridden(
                labels
                    .pairs()
                    .into_iter()
                    .filter(|(name, _)| matches!(*name, "reporter" | "response_flags"))
                    .map(|(name, value)| (name.into(), value))
                    .collect(),
            )
        })
    }
}

#[test]
fn an_overridden_connection_counts_in_its_series_and_closes_with_its_flag() {
    let mut registry = Registry::default();
    let metrics = TcpMetrics::new(&mut registry);
    let mut connection = metrics.open_overridden(
        labels(Reporter::Waypoint, "spiffe://x"),
        Box::new(FlagsOnly),
        Logged::default(),
    );
    connection.add_sent(7);
    connection.add_received(3);
    weft_hbone::ByteMeter::revoked(&mut connection, "policy");
    drop(connection);
    let text = text(&registry);
    assert_eq!(
        line(&text, "istio_tcp_connections_opened_total{"),
        "istio_tcp_connections_opened_total{reporter=\"waypoint\",response_flags=\"-\"} 1"
    );
    assert_eq!(
        line(&text, "istio_tcp_received_bytes_total{"),
        "istio_tcp_received_bytes_total{reporter=\"waypoint\",response_flags=\"-\"} 3"
    );
    // Its series made again as it closes, with the flag it closed with.
    assert_eq!(
        line(&text, "istio_tcp_connections_closed_total{"),
        "istio_tcp_connections_closed_total{reporter=\"waypoint\",response_flags=\"DENY\"} 1"
    );
    assert!(!text.contains("istio_tcp_sent_bytes_total{"), "{text}");
}
