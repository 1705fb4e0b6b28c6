use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

const ADD_ENV: [(&str, &str); 6] = [
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "abc123"),
    ("CNI_NETNS", "/var/run/netns/cni-1"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_PATH", "/opt/cni/bin"),
    (
        "CNI_ARGS",
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1;K8S_POD_UID=u-1",
    ),
];

#[test]
fn invocations_are_read_and_bad_environments_named() {
    let add = Invocation::from_env(env(&ADD_ENV)).unwrap();
    assert_eq!(add.command, Command::Add);
    assert_eq!(add.container_id, "abc123");
    assert_eq!(add.netns, Some(PathBuf::from("/var/run/netns/cni-1")));
    assert_eq!(
        add.pod(),
        Some(PodRef {
            namespace: "shop".into(),
            name: "cart-1".into(),
            uid: Some("u-1".into()),
        })
    );
    // DEL may come without a netns (the sandbox is gone); VERSION needs nothing but the command.
    let del = Invocation::from_env(env(&[
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_IFNAME", "eth0"),
    ]))
    .unwrap();
    assert_eq!((del.command, &del.netns), (Command::Del, &None));
    assert_eq!(del.pod(), None);
    let version = Invocation::from_env(env(&[("CNI_COMMAND", "VERSION")])).unwrap();
    assert_eq!(version.command, Command::Version);

    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[], "CNI_COMMAND is not set"),
        (&[("CNI_COMMAND", "FROB")], "\"FROB\" is not a CNI command"),
        (
            &[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")],
            "CNI_CONTAINERID is not set",
        ),
        (
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "x"),
                ("CNI_IFNAME", "eth0"),
            ],
            "CNI_NETNS is not set",
        ),
        (
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "x"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "K8S_POD_NAME"),
            ],
            "\"K8S_POD_NAME\" is not KEY=VALUE",
        ),
    ];
    for (pairs, expected) in cases {
        let error = Invocation::from_env(env(pairs)).unwrap_err();
        assert_eq!(error.code, codes::INVALID_ENVIRONMENT, "{pairs:?}");
        assert!(error.msg.contains(expected), "{pairs:?}: {error}");
    }
}

#[test]
fn configurations_are_checked() {
    let chained = br#"{"cniVersion":"1.0.0","name":"net","type":"weft-cni",
        "kubeconfig":"/etc/cni/net.d/weft-cni-kubeconfig","node_socket":"/var/run/weft/cni.sock",
        "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24","gateway":"10.1.0.1"}]}}"#;
    let conf = NetConf::parse(chained, Command::Add).unwrap();
    assert_eq!(
        conf.node_socket,
        Some(PathBuf::from("/var/run/weft/cni.sock"))
    );
    // Passed through unchanged, in the configuration's version.
    let out = conf.passthrough();
    assert_eq!(out["ips"][0]["address"], "10.1.0.5/24");
    assert_eq!(out["cniVersion"], "1.0.0");

    let cases: [(&[u8], Command, u32, &str); 6] = [
        (
            b"not json",
            Command::Add,
            codes::DECODING_FAILURE,
            "not valid",
        ),
        (b"{}", Command::Add, codes::DECODING_FAILURE, "not valid"),
        (
            br#"{"cniVersion":"2.0.0","type":"weft-cni"}"#,
            Command::Add,
            codes::INCOMPATIBLE_VERSION,
            "\"2.0.0\" is not supported",
        ),
        (
            br#"{"cniVersion":"1.0.0","type":"weft-cni"}"#,
            Command::Add,
            codes::INVALID_CONFIG,
            "must be chained",
        ),
        (
            br#"{"cniVersion":"1.0.0","type":"weft-cni","prevResult":[1]}"#,
            Command::Check,
            codes::INVALID_CONFIG,
            "not an object",
        ),
        (
            br#"{"cniVersion":"1.0.0","type":"weft-cni"}"#,
            Command::Status,
            codes::INCOMPATIBLE_VERSION,
            "STATUS needs cniVersion 1.1.0",
        ),
    ];
    for (stdin, command, code, expected) in cases {
        let error = NetConf::parse(stdin, command).unwrap_err();
        let text = String::from_utf8_lossy(stdin);
        assert_eq!(error.code, code, "{text}: {error}");
        assert!(error.msg.contains(expected), "{text}: {error}");
    }
    // DEL and STATUS need no previous result.
    NetConf::parse(br#"{"cniVersion":"0.4.0","type":"weft-cni"}"#, Command::Del).unwrap();
    NetConf::parse(
        br#"{"cniVersion":"1.1.0","type":"weft-cni"}"#,
        Command::Status,
    )
    .unwrap();
}

#[test]
fn pod_addresses_come_from_sandbox_interfaces() {
    let result = json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa"},
            {"name": "veth1", "mac": "bb"},
            {"name": "eth0", "mac": "cc", "sandbox": "/var/run/netns/cni-1"}
        ],
        "ips": [
            {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2},
            {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
            {"address": "10.1.0.1/24", "interface": 0}
        ]
    });
    let addresses = pod_addresses(&result).unwrap();
    assert_eq!(
        addresses.ips,
        vec![
            "10.1.0.5".parse::<IpAddr>().unwrap(),
            "fd00::5".parse().unwrap()
        ]
    );
    // 0.4.0 results without interface indexes: every address is the pod's.
    let plain = json!({"ips": [{"version": "4", "address": "10.1.0.6/24"}]});
    assert_eq!(pod_addresses(&plain).unwrap().ips.len(), 1);
    assert!(pod_addresses(&json!({})).unwrap().ips.is_empty());
    let bad = json!({"ips": [{"address": "ten/24"}]});
    let error = pod_addresses(&bad).unwrap_err();
    assert!(
        error.details.contains("ips[0].address \"ten/24\""),
        "{error}"
    );
}

#[test]
fn version_and_errors_print_as_the_spec_says() {
    let version = version_result(Some("0.4.0"));
    assert_eq!(version["cniVersion"], "0.4.0");
    assert!(
        version["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("1.0.0"))
    );
    let error = CniError::new(7, "bad", "why").to_json("1.0.0");
    assert_eq!(
        error,
        json!({"cniVersion": "1.0.0", "code": 7, "msg": "bad", "details": "why"})
    );
    assert_eq!(
        requested_version(br#"{"cniVersion":"0.4.0","x":"#),
        None,
        "a truncated document has no version"
    );
    assert_eq!(
        requested_version(br#"{"cniVersion":"0.4.0"}"#),
        Some("0.4.0".into())
    );
}
