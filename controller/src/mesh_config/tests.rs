use super::*;

#[test]
fn reads_the_outbound_traffic_policy_and_refuses_what_istio_refuses() {
    let cases: &[(&str, Result<OutboundTrafficPolicy, &str>)] = &[
        ("", Ok(OutboundTrafficPolicy::AllowAny)),
        (
            "accessLogFile: /dev/stdout\n",
            Ok(OutboundTrafficPolicy::AllowAny),
        ),
        (
            "outboundTrafficPolicy:\n  mode: ALLOW_ANY\n",
            Ok(OutboundTrafficPolicy::AllowAny),
        ),
        (
            "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n",
            Ok(OutboundTrafficPolicy::RegistryOnly),
        ),
        (
            "outboundTrafficPolicy: {}\n",
            Ok(OutboundTrafficPolicy::AllowAny),
        ),
        (
            "outboundTrafficPolicy:\n  mode: registry_only\n",
            Err(
                "mesh: outboundTrafficPolicy.mode: unknown value \"registry_only\" (ALLOW_ANY or REGISTRY_ONLY)",
            ),
        ),
        (
            "outboundTrafficPolicy:\n  mode: 1\n",
            Err("mesh: outboundTrafficPolicy.mode: must be a string"),
        ),
        (
            "outboundTrafficPolicy: REGISTRY_ONLY\n",
            Err("mesh: outboundTrafficPolicy: must be a mapping"),
        ),
    ];
    for (text, expected) in cases {
        let got = parse("mesh", text)
            .map(|c| c.outbound_traffic_policy())
            .map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_owned), "{text:?}");
    }
    assert!(matches!(
        parse("mesh", "outboundTrafficPolicy: [\n"),
        Err(MeshConfigError::Syntax { .. })
    ));
}

#[test]
fn a_changed_file_replaces_the_configuration_and_an_invalid_one_keeps_the_last_good() {
    let dir = weft_test_support::temp::TempDir::new("mesh-config");
    let path = dir.join("mesh");
    std::fs::write(&path, "outboundTrafficPolicy:\n  mode: ALLOW_ANY\n").unwrap();
    let watch = MeshConfigWatch::load(path.clone()).unwrap();
    let mut changes = watch.subscribe();
    changes.borrow_and_update();
    assert_eq!(watch.reload(), Ok(false));
    assert!(!changes.has_changed().unwrap());

    std::fs::write(&path, "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n").unwrap();
    assert_eq!(watch.reload(), Ok(true));
    assert!(changes.has_changed().unwrap());
    assert_eq!(
        watch.current().outbound_traffic_policy(),
        OutboundTrafficPolicy::RegistryOnly
    );

    std::fs::write(&path, "outboundTrafficPolicy:\n  mode: NONE\n").unwrap();
    let error = watch.reload().unwrap_err().to_string();
    assert!(error.contains("outboundTrafficPolicy.mode"), "{error}");
    assert_eq!(
        watch.current().outbound_traffic_policy(),
        OutboundTrafficPolicy::RegistryOnly
    );
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(watch.reload(), Err(MeshConfigError::Read { .. })));
    assert_eq!(
        watch.current().outbound_traffic_policy(),
        OutboundTrafficPolicy::RegistryOnly
    );
}

#[test]
fn a_missing_or_invalid_file_stops_the_start() {
    let dir = weft_test_support::temp::TempDir::new("mesh-config");
    assert!(matches!(
        MeshConfigWatch::load(dir.join("absent")),
        Err(MeshConfigError::Read { .. })
    ));
    let path = dir.join("mesh");
    std::fs::write(&path, "outboundTrafficPolicy:\n  mode: DENY\n").unwrap();
    assert!(matches!(
        MeshConfigWatch::load(path),
        Err(MeshConfigError::Field { .. })
    ));
}

#[test]
fn node_agents_are_served_the_mode_in_force() {
    use prost::Message;
    let served = |mesh: MeshConfigWatch| {
        let settings = crate::translate::MeshSettings {
            mesh: Arc::new(mesh),
            ..Default::default()
        };
        let resources = crate::translate::resources(&Default::default(), &settings);
        let (_, of_type) = resources
            .into_iter()
            .find(|(type_url, _)| type_url == weft_proto::MESH_CONFIG_TYPE_URL)
            .expect("the MeshConfig type is served");
        assert_eq!(of_type.len(), 1);
        let resource = &of_type[0];
        assert_eq!(resource.name, weft_proto::MESH_CONFIG_NAME);
        MeshConfig::decode(resource.body.value.as_slice())
            .unwrap()
            .outbound_traffic_policy()
    };
    assert_eq!(
        served(MeshConfigWatch::default()),
        OutboundTrafficPolicy::AllowAny
    );
    let mut registry_only = MeshConfig::default();
    registry_only.set_outbound_traffic_policy(OutboundTrafficPolicy::RegistryOnly);
    assert_eq!(
        served(MeshConfigWatch::fixed(registry_only)),
        OutboundTrafficPolicy::RegistryOnly
    );
}
