use super::*;

fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

const AGENT: ProxyDefaults = ProxyDefaults {
    node_name_required: true,
    worker_threads: 2,
};
const WAYPOINT: ProxyDefaults = ProxyDefaults {
    node_name_required: false,
    worker_threads: 4,
};

fn parse(pairs: &[(&str, &str)], defaults: ProxyDefaults) -> Result<ProxyConfig, ConfigError> {
    ProxyConfig::from_settings(&Settings::new(&strings(pairs)), defaults)
}

#[test]
fn an_empty_variable_is_unset() {
    // Required: reported missing, not taken as an empty node name.
    assert_eq!(
        parse(&[(NODE_NAME, "")], AGENT).unwrap_err(),
        ConfigError::Missing(NODE_NAME)
    );
    let config = parse(
        &[
            (NODE_NAME, ""),
            (ROOT_CERT_FILE, ""),
            (TRUST_DOMAIN, ""),
            (WORKER_THREADS, ""),
            (ADMIN_ADDRESS, ""),
        ],
        WAYPOINT,
    )
    .unwrap();
    // Optional: unset. With a default: the default.
    assert_eq!(config.node_name, None);
    assert_eq!(config.root_cert_file, None);
    assert_eq!(config.trust_domain, "cluster.local");
    assert_eq!(config.worker_threads, 4);
    assert_eq!(config.admin_address, "127.0.0.1:15000".parse().unwrap());
}

#[test]
fn defaults_follow_istio() {
    let config = parse(&[(NODE_NAME, "node1")], AGENT).unwrap();
    assert_eq!(config.node_name.as_deref(), Some("node1"));
    assert_eq!(config.xds_address, DEFAULT_XDS_ADDRESS);
    assert_eq!(config.ca_address, config.xds_address);
    assert_eq!(config.admin_address.to_string(), "127.0.0.1:15000");
    assert_eq!(config.metrics_address.port(), 15020);
    assert_eq!(config.readiness_address.port(), 15021);
    assert_eq!(config.xds_backoff(), weft_xds::Backoff::default());
    assert_eq!(config.certificate_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(config.log_format, LogFormat::Text);
    assert_eq!(config.worker_threads, 2);
    assert_eq!(config.max_connections, None);
    assert_eq!(config.max_connections_per_source, 256);
    assert_eq!(
        config.compliance_policy,
        weft_identity::CompliancePolicy::Default
    );
    assert_eq!(parse(&[], WAYPOINT).unwrap().node_name, None);
    assert_eq!(
        parse(&[(COMPLIANCE_POLICY, "pqc")], WAYPOINT)
            .unwrap()
            .compliance_policy,
        weft_identity::CompliancePolicy::Pqc
    );
}

#[test]
fn flags_win_over_the_environment() {
    let environment = strings(&[(NODE_NAME, "from-env"), (TRUST_DOMAIN, "env.local")]);
    let layered = Layered::new(
        [
            (NODE_NAME, Some("from-flag".to_owned())),
            (TRUST_DOMAIN, None),
            (CLUSTER_ID, Some(String::new())),
        ],
        environment,
    );
    let config = ProxyConfig::from_settings(&Settings::new(&layered), AGENT).unwrap();
    assert_eq!(config.node_name.as_deref(), Some("from-flag"));
    // A flag not given leaves the variable in force; an empty flag means unset, like an empty
    // variable.
    assert_eq!(config.trust_domain, "env.local");
    assert_eq!(config.cluster_id, "Kubernetes");
}

#[test]
fn bad_settings_name_the_variable() {
    let cases = [
        (
            vec![(ADMIN_ADDRESS, "nowhere")],
            "ADMIN_ADDRESS=\"nowhere\"",
        ),
        // The admin port never leaves loopback.
        (
            vec![(ADMIN_ADDRESS, "0.0.0.0:15000")],
            "ADMIN_ADDRESS=\"0.0.0.0:15000\": the admin port shows the whole configuration",
        ),
        (vec![(CERTIFICATE_TTL_SECONDS, "5")], "at least 10 seconds"),
        (
            vec![(XDS_RETRY_INITIAL_MS, "0")],
            "XDS_RETRY_INITIAL_MS=\"0\": must be positive",
        ),
        (
            vec![(XDS_RETRY_MAX_MS, "50")],
            "XDS_RETRY_MAX_MS=\"50\": below XDS_RETRY_INITIAL_MS",
        ),
        (
            vec![(WORKER_THREADS, "0")],
            "WORKER_THREADS=\"0\": use a number of threads from 1 to 256",
        ),
        (
            vec![(WORKER_THREADS, "two")],
            "WORKER_THREADS=\"two\": use a number of threads from 1 to 256",
        ),
        (
            vec![(MAX_CONNECTIONS_PER_SOURCE, "0")],
            "MAX_CONNECTIONS_PER_SOURCE=\"0\": use a positive number of connections",
        ),
        (
            vec![(LOG_FORMAT, "yaml")],
            "LOG_FORMAT=\"yaml\": use text or json",
        ),
        (
            vec![(COMPLIANCE_POLICY, "fips")],
            "COMPLIANCE_POLICY=\"fips\": use pqc, or leave it unset",
        ),
        (
            vec![(CA_ADDRESS, "https://istiod.istio-system.svc:15012")],
            "ROOT_CERT_FILE (to verify an https:// XDS_ADDRESS or CA_ADDRESS) is required",
        ),
    ];
    for (pairs, expected) in cases {
        let error = parse(&pairs, WAYPOINT).unwrap_err().to_string();
        assert!(error.contains(expected), "{error:?} lacks {expected:?}");
    }
}

#[test]
fn switches_counts_and_addresses() {
    let given = strings(&[
        ("ON", "on"),
        ("OFF", "0"),
        ("MAYBE", "maybe"),
        ("COUNT", "12"),
        ("BAD_COUNT", "-1"),
        ("ADDRESS", "[::1]:15000"),
    ]);
    let settings = Settings::new(&given);
    assert!(settings.switch("ON", false).unwrap());
    assert!(!settings.switch("OFF", true).unwrap());
    assert!(settings.switch("UNSET", true).unwrap());
    assert_eq!(
        settings.switch("MAYBE", false).unwrap_err().to_string(),
        "MAYBE=\"maybe\": use true or false"
    );
    assert_eq!(settings.count("COUNT", "threads").unwrap(), Some(12));
    assert!(settings.count("BAD_COUNT", "threads").is_err());
    assert_eq!(
        settings
            .loopback_address("ADDRESS", "127.0.0.1:1", "why")
            .unwrap(),
        "[::1]:15000".parse().unwrap()
    );
}

#[test]
fn the_termination_deadline_follows_ztunnel() {
    let deadline = |pairs: &[(&str, &str)]| {
        let mut pairs = pairs.to_vec();
        pairs.push((NODE_NAME, "node1"));
        parse(&pairs, AGENT).map(|c| c.termination_deadline)
    };
    // Istio's terminationDrainDuration by default.
    assert_eq!(deadline(&[]), Ok(Duration::from_secs(5)));
    // From the pod's grace period: a margin before the kubelet's SIGKILL.
    assert_eq!(
        deadline(&[(TERMINATION_GRACE_PERIOD_SECONDS, "30")]),
        Ok(Duration::from_secs(25))
    );
    assert_eq!(
        deadline(&[(TERMINATION_GRACE_PERIOD_SECONDS, "10")]),
        Ok(Duration::from_secs(9))
    );
    assert_eq!(
        deadline(&[(TERMINATION_GRACE_PERIOD_SECONDS, "0")]),
        Ok(Duration::from_secs(1))
    );
    // An explicit deadline wins.
    assert_eq!(
        deadline(&[
            (TERMINATION_GRACE_PERIOD_SECONDS, "30"),
            (CONNECTION_TERMINATION_DEADLINE, "1500ms")
        ]),
        Ok(Duration::from_millis(1500))
    );
    assert_eq!(
        deadline(&[(CONNECTION_TERMINATION_DEADLINE, "2m")]),
        Ok(Duration::from_secs(120))
    );
    for bad in ["5", "5 s", "s", "-1s", "5d"] {
        let error = deadline(&[(CONNECTION_TERMINATION_DEADLINE, bad)]).unwrap_err();
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    name: CONNECTION_TERMINATION_DEADLINE,
                    ..
                }
            ),
            "{bad}: {error}"
        );
    }
    assert!(matches!(
        deadline(&[(TERMINATION_GRACE_PERIOD_SECONDS, "thirty")]),
        Err(ConfigError::Invalid {
            name: TERMINATION_GRACE_PERIOD_SECONDS,
            ..
        })
    ));
}
