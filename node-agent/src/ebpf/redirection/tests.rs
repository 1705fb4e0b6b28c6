use std::os::fd::AsFd;

use super::*;

#[test]
fn addresses_round_trip_and_ipv4_is_mapped() {
    let cases: [(&str, Address); 3] = [
        (
            "10.251.1.10",
            [
                0,
                0,
                u32::from_ne_bytes([0, 0, 0xff, 0xff]),
                u32::from_ne_bytes([10, 251, 1, 10]),
            ],
        ),
        ("::1", [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]),
        (
            "fd00::2",
            [
                u32::from_ne_bytes([0xfd, 0, 0, 0]),
                0,
                0,
                u32::from_ne_bytes([0, 0, 0, 2]),
            ],
        ),
    ];
    for (text, words) in cases {
        let ip: IpAddr = text.parse().unwrap();
        assert_eq!(address_words(ip), words, "{text}");
        assert_eq!(ip_from_words(words), ip, "{text}");
    }
    // A v4-mapped IPv6 peer (dual-stack listener) has the same key as its IPv4 form.
    let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
    assert_eq!(
        address_words(mapped),
        address_words("127.0.0.1".parse().unwrap())
    );
}

#[test]
fn enrollments_are_validated() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = || PodEnrollment {
        uid: "pod-1".into(),
        netns: "/ns".into(),
        addresses: vec!["10.0.0.5".parse().unwrap()],
        excluded_outbound_ports: vec![22],
        excluded_inbound_ports: vec![9000, 9001],
        dns_capture: true,
        inbound_listener: listener.as_fd(),
    };
    type Edit = fn(&mut PodEnrollment<'_>);
    let cases: [(&str, Edit, Option<&str>); 8] = [
        ("valid", |_| {}, None),
        ("empty uid", |p| p.uid.clear(), Some("invalid")),
        ("uid with slash", |p| p.uid = "a/b".into(), Some("invalid")),
        ("uid dot-dot", |p| p.uid = "..".into(), Some("invalid")),
        ("uid too long", |p| p.uid = "x".repeat(65), Some("invalid")),
        (
            "three addresses",
            |p| p.addresses = vec!["10.0.0.1".parse().unwrap(); 3],
            Some("at most 2"),
        ),
        (
            "loopback address",
            |p| p.addresses = vec!["127.0.0.1".parse().unwrap()],
            Some("not a pod address"),
        ),
        (
            "port zero",
            |p| p.excluded_inbound_ports = vec![0],
            Some("port 0"),
        ),
    ];
    for (name, edit, error) in cases {
        let mut pod = base();
        edit(&mut pod);
        match (pod_config(&pod), error) {
            (Ok(config), None) => {
                assert_eq!(config_uid(&config), "pod-1", "{name}");
                assert_eq!(config.excluded_outbound_ports[..2], [22, 0], "{name}");
                assert_eq!(
                    config.excluded_inbound_ports[..3],
                    [9000, 9001, 0],
                    "{name}"
                );
                assert_eq!(
                    config.addresses[0],
                    address_words("10.0.0.5".parse().unwrap()),
                    "{name}"
                );
                assert_eq!(config.addresses[1], [0; 4], "{name}");
                assert_eq!(config.flags & POD_FLAG_NO_DNS_CAPTURE, 0, "{name}");
            }
            (Err(e), Some(expected)) => {
                assert!(e.to_string().contains(expected), "{name}: {e}")
            }
            (result, expected) => panic!("{name}: {result:?}, expected error {expected:?}"),
        }
    }
}

#[test]
fn too_many_excluded_ports_are_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pod = PodEnrollment {
        uid: "p".into(),
        netns: "/ns".into(),
        addresses: vec![],
        excluded_outbound_ports: (1..=17).collect(),
        excluded_inbound_ports: vec![],
        dns_capture: true,
        inbound_listener: listener.as_fd(),
    };
    let error = pod_config(&pod).unwrap_err().to_string();
    assert!(error.contains("17 excluded outbound ports"), "{error}");
}

#[test]
fn a_pod_that_opts_out_of_dns_capture_is_flagged() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pod = PodEnrollment {
        uid: "p".into(),
        netns: "/ns".into(),
        addresses: vec![],
        excluded_outbound_ports: vec![],
        excluded_inbound_ports: vec![],
        dns_capture: false,
        inbound_listener: listener.as_fd(),
    };
    let config = pod_config(&pod).unwrap();
    assert_eq!(
        config.flags & POD_FLAG_NO_DNS_CAPTURE,
        POD_FLAG_NO_DNS_CAPTURE
    );
}
