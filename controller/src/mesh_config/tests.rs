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
            .map(|c| c.agents.outbound_traffic_policy())
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
        let served = &of_type[0];
        assert_eq!(&*served.name, weft_proto::MESH_CONFIG_NAME);
        MeshConfig::decode(served.body.value.as_slice())
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

const OTEL: &str = r#"
enableTracing: true
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  tracing: {sampling: 100}
defaultProviders:
  tracing: [otel]
extensionProviders:
- name: otel
  opentelemetry: {service: opentelemetry-collector.observability.svc.cluster.local, port: 4317}
- name: prometheus
  prometheus: {}
"#;

#[test]
fn the_default_opentelemetry_provider_and_sampling_are_read() {
    let tracing = parse("mesh", OTEL).unwrap().tracing;
    assert_eq!(
        tracing.provider,
        Some(TracingProvider {
            name: "otel".into(),
            field: "extensionProviders[0].opentelemetry".into(),
            service: "opentelemetry-collector.observability.svc.cluster.local".into(),
            port: 4317,
            http: None,
            grpc: None,
        })
    );
    assert_eq!(tracing.sampling, 100.0);
}

#[test]
fn an_opentelemetry_provider_over_http_keeps_its_path_timeout_and_headers() {
    let yaml = r#"
defaultProviders: {tracing: [otlp-http]}
extensionProviders:
- name: otlp-http
  opentelemetry:
    service: collector.observability.svc.cluster.local
    port: 4318
    http:
      path: v1/traces
      timeout: 10s
      headers:
      - {name: X-Tenant, value: team-a}
      - {name: authorization, value: Bearer t}
- name: defaults
  opentelemetry: {service: c, port: 4318, http: {}}
"#;
    let tracing = parse("mesh", yaml).unwrap().tracing;
    assert_eq!(
        tracing.provider.as_ref().unwrap().http,
        Some(OtlpHttp {
            path: "/v1/traces".into(),
            timeout: std::time::Duration::from_secs(10),
            headers: vec![
                ("x-tenant".into(), "team-a".into()),
                ("authorization".into(), "Bearer t".into()),
            ],
        })
    );
    assert_eq!(
        tracing.provider_named("defaults").unwrap().http,
        Some(OtlpHttp {
            path: "/".into(),
            timeout: DEFAULT_OTLP_HTTP_TIMEOUT,
            headers: Vec::new(),
        })
    );
}

#[test]
fn an_opentelemetry_providers_grpc_timeout_and_initial_metadata_are_kept() {
    let yaml = r#"
defaultProviders: {tracing: [otlp-grpc]}
extensionProviders:
- name: otlp-grpc
  opentelemetry:
    service: tracing.example.com
    port: 8090
    grpc:
      timeout: 250ms
      initialMetadata:
      - {name: Authentication, value: token-xxxxx}
      - {name: x-tenant, value: team-a}
- name: metadata-only
  opentelemetry: {service: c, port: 4317, grpc: {initialMetadata: [{name: x-a, value: b}]}}
"#;
    let tracing = parse("mesh", yaml).unwrap().tracing;
    let provider = tracing.provider.as_ref().unwrap();
    assert_eq!(provider.http, None);
    assert_eq!(
        provider.grpc,
        Some(OtlpGrpc {
            timeout: Some(std::time::Duration::from_millis(250)),
            metadata: vec![
                ("authentication".into(), "token-xxxxx".into()),
                ("x-tenant".into(), "team-a".into()),
            ],
        })
    );
    assert_eq!(
        tracing.provider_named("metadata-only").unwrap().grpc,
        Some(OtlpGrpc {
            timeout: None,
            metadata: vec![("x-a".into(), "b".into())],
        })
    );
}

#[test]
fn sampling_defaults_as_istio_reads_it() {
    for (yaml, expected) in [
        ("", 1.0),
        ("defaultConfig: {tracing: {sampling: 0}}", 1.0),
        ("defaultConfig: {tracing: {sampling: 0.5}}", 0.5),
        ("defaultConfig: {tracing: {sampling: 150}}", 1.0),
    ] {
        let tracing = parse("mesh", yaml).unwrap().tracing;
        assert_eq!(tracing.sampling, expected, "{yaml}");
        assert_eq!(tracing.provider, None);
    }
}

#[test]
fn bad_providers_are_refused_with_their_field() {
    for (yaml, field) in [
        (
            "defaultProviders: {tracing: [zipkin]}",
            "defaultProviders.tracing[0]",
        ),
        (
            "extensionProviders: [{name: a, opentelemetry: {service: c, port: 0}}]",
            "extensionProviders[0].opentelemetry.port",
        ),
        (
            "extensionProviders: [{name: a, opentelemetry: {port: 4317}}]",
            "extensionProviders[0].opentelemetry.service",
        ),
        (
            "extensionProviders: [{name: a, opentelemetry: {service: c, port: 4318, http: {timeout: ten}}}]",
            "extensionProviders[0].opentelemetry.http.timeout",
        ),
        (
            "extensionProviders: [{name: a, opentelemetry: {service: c, port: 4318, http: {timeout: -1s}}}]",
            "extensionProviders[0].opentelemetry.http.timeout",
        ),
        (
            "extensionProviders: [{name: a, opentelemetry: {service: c, port: 4318, http: {headers: [{name: x, value: y}, {name: 'bad name', value: y}]}}}]",
            "extensionProviders[0].opentelemetry.http.headers[1].name",
        ),
        (
            "extensionProviders: [{name: a, opentelemetry: {service: c, port: 4318, http: {headers: [{name: x, value: \"a\\nb\"}]}}}]",
            "extensionProviders[0].opentelemetry.http.headers[0].value",
        ),
        (
            "extensionProviders: [{name: a, opentelemetry: {service: c, port: 4318, http: {path: '/v1/traces?x=1'}}}]",
            "extensionProviders[0].opentelemetry.http.path",
        ),
        (
            "extensionProviders: [{name: a, opentelemetry: {service: c, port: 4317, http: {}, grpc: {}}}]",
            "extensionProviders[0].opentelemetry: provider \"a\": cannot specify both grpc and http",
        ),
        (
            "extensionProviders: [{name: a, opentelemetry: {service: c, port: 4317, grpc: {timeout: 0s}}}]",
            "extensionProviders[0].opentelemetry.grpc.timeout",
        ),
        (
            "extensionProviders: [{name: a, opentelemetry: {service: c, port: 4317, grpc: {initialMetadata: [{name: x, value: y}, {name: 'x:y', value: z}]}}}]",
            "extensionProviders[0].opentelemetry.grpc.initialMetadata[1].name: provider \"a\": \"x:y\" is not an HTTP header name",
        ),
        (
            "extensionProviders: [{name: a, opentelemetry: {service: c, port: 4317, grpc: {initialMetadata: [{name: x, value: \"a\\rb\"}]}}}]",
            "extensionProviders[0].opentelemetry.grpc.initialMetadata[0].value",
        ),
        (
            "extensionProviders: [{name: a, opentelemetry: {service: c, port: 4317, grpc: {initialMetadata: [{name: x, value: y, envName: Y}]}}}]",
            "extensionProviders[0].opentelemetry.grpc.initialMetadata[0]: provider \"a\": sets both value and envName",
        ),
        (
            "extensionProviders: [{name: a, prometheus: {}}, {name: a, prometheus: {}}]",
            "extensionProviders[1].name",
        ),
        (
            "defaultConfig: {tracing: {sampling: -1}}",
            "defaultConfig.tracing.sampling",
        ),
    ] {
        let error = parse("mesh", yaml).unwrap_err().to_string();
        assert!(error.contains(field), "{yaml}: {error}");
    }
}

#[test]
fn reads_the_gateways_trusted_proxies() {
    let cases: &[(&str, Result<u32, &str>)] = &[
        ("", Ok(0)),
        ("defaultConfig:\n  tracing: {sampling: 10}\n", Ok(0)),
        (
            "defaultConfig:\n  gatewayTopology:\n    numTrustedProxies: 2\n",
            Ok(2),
        ),
        (
            "defaultConfig:\n  gatewayTopology:\n    numTrustedProxies: -1\n",
            Err(
                "mesh: defaultConfig.gatewayTopology.numTrustedProxies: must be a number of proxies from 0, found -1",
            ),
        ),
    ];
    for (text, expected) in cases {
        let got = parse("mesh", text)
            .map(|c| c.gateway_trusted_proxies)
            .map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_owned), "{text:?}");
    }
}

/// `localityLbSetting`, the mesh's default locality load balancing, is read and validated as
/// istiod's `ValidateMeshConfig` validates it (`ValidateLocalityLbSetting`).
#[test]
fn the_default_locality_load_balancing_is_read_and_validated() {
    let mesh = parse(
        "mesh",
        "localityLbSetting:\n  distribute:\n  - from: eu/*\n    to: {eu/eu-1: 80, eu/eu-2: 20}\n",
    )
    .unwrap();
    let setting = mesh.locality_lb.expect("read");
    assert_eq!(setting.distribute[0].from, "eu/*");
    assert_eq!(setting.distribute[0].to.get("eu/eu-1"), Some(&80));
    let off = parse("mesh", "localityLbSetting: {enabled: false}\n").unwrap();
    assert_eq!(off.locality_lb.and_then(|s| s.enabled), Some(false));
    assert_eq!(parse("mesh", "").unwrap().locality_lb, None);
    let cases = [
        (
            "localityLbSetting:\n  distribute:\n  - from: eu/*\n    to: {eu/eu-1: 80, eu/eu-2: 10}\n",
            "mesh: localityLbSetting.distribute[0].to: total locality weight 90 != 100",
        ),
        (
            "localityLbSetting:\n  distribute:\n  - {from: eu, to: {us: 100}}\n  failover:\n  - {from: eu, to: us}\n",
            "mesh: localityLbSetting: can not simultaneously specify 'distribute' and 'failover'",
        ),
        (
            "localityLbSetting: [eu]\n",
            "mesh: localityLbSetting: invalid type: sequence, expected struct LocalityLbSetting",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(
            parse("mesh", text).map(|_| ()).map_err(|e| e.to_string()),
            Err(expected.to_owned()),
            "{text:?}"
        );
    }
}

/// `h2UpgradePolicy`, Istio's `MeshConfig.H2UpgradePolicy` (`DO_NOT_UPGRADE` by default); an
/// unknown value is refused as istiod's protobuf reading refuses it.
#[test]
fn the_default_h2_upgrade_policy_is_read() {
    assert!(!parse("mesh", "").unwrap().h2_upgrade);
    assert!(
        !parse("mesh", "h2UpgradePolicy: DO_NOT_UPGRADE\n")
            .unwrap()
            .h2_upgrade
    );
    assert!(
        parse("mesh", "h2UpgradePolicy: UPGRADE\n")
            .unwrap()
            .h2_upgrade
    );
    assert_eq!(
        parse("mesh", "h2UpgradePolicy: ALWAYS\n")
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(
            "mesh: h2UpgradePolicy: unknown value \"ALWAYS\" (DO_NOT_UPGRADE or UPGRADE)"
                .to_owned()
        )
    );
    assert_eq!(
        parse("mesh", "h2UpgradePolicy: [UPGRADE]\n")
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err("mesh: h2UpgradePolicy: must be a string".to_owned())
    );
}

/// The access-log providers: `envoyFileAccessLog` ones with their formats, Istio's built-in
/// `envoy` (which a declared one replaces), `defaultProviders.accessLogging`, and
/// `accessLogFile` with the mesh's format and encoding.
#[test]
fn access_log_providers_and_the_mesh_file_are_read() {
    let mesh = parse(
        "mesh",
        "accessLogFile: /var/log/a.log\naccessLogFormat: '%REQ(:PATH)% %RESPONSE_CODE%'\ndefaultProviders: {accessLogging: [file]}\nextensionProviders: [{name: file, envoyFileAccessLog: {path: /tmp/x.log, logFormat: {labels: {code: '%RESPONSE_CODE%'}}}}, {name: otel, opentelemetry: {service: otel.example.com, port: 4317}}]",
    )
    .unwrap()
    .access_logging;
    assert_eq!(mesh.file.as_deref(), Some("/var/log/a.log"));
    assert_eq!(
        mesh.format,
        LogFormat::Text("%REQ(:PATH)% %RESPONSE_CODE%".into())
    );
    assert_eq!(mesh.defaults(), ["file"]);
    let file = mesh.provider_named("FILE").unwrap().file.as_ref().unwrap();
    assert_eq!(file.path, "/tmp/x.log");
    assert_eq!(
        file.format,
        LogFormat::Json([("code".to_owned(), "%RESPONSE_CODE%".to_owned())].into())
    );
    assert!(mesh.provider_named("otel").unwrap().file.is_none());
    // The built-in provider: standard output, in the mesh's format.
    let envoy = mesh.provider_named("envoy").unwrap().file.as_ref().unwrap();
    assert_eq!(
        (envoy.path.as_str(), &envoy.format),
        (DEV_STDOUT, &mesh.format)
    );
    let unset = parse("mesh", "").unwrap().access_logging;
    // Istio's defaults: no default provider, no `accessLogFile` (no log at all).
    assert_eq!(unset.defaults(), Vec::<String>::new());
    assert_eq!(unset.file, None);
    let replaced = parse(
        "mesh",
        "extensionProviders: [{name: envoy, envoyFileAccessLog: {path: /tmp/e.log}}]",
    )
    .unwrap()
    .access_logging;
    assert_eq!(replaced.providers.len(), 1);
    assert_eq!(
        replaced
            .provider_named("envoy")
            .unwrap()
            .file
            .as_ref()
            .unwrap()
            .path,
        "/tmp/e.log"
    );
}

/// `omitEmptyValues` of an `envoyFileAccessLog` provider is read; Istio's built-in `envoy`
/// setting it without a format takes Istio's default TEXT format rather than the mesh's
/// (istio/istio `telemetry_logging.go` `telemetryAccessLog`, test `enable-omit-empty-values`).
#[test]
fn omit_empty_values_of_file_providers_is_read() {
    let mesh = parse(
        "mesh",
        "accessLogEncoding: JSON\nextensionProviders: [{name: envoy, envoyFileAccessLog: {path: /dev/stdout, omitEmptyValues: true}}, {name: json, envoyFileAccessLog: {logFormat: {labels: {}}, omitEmptyValues: true}}, {name: plain, envoyFileAccessLog: {}}]",
    )
    .unwrap()
    .access_logging;
    let file = |name: &str| mesh.provider_named(name).unwrap().file.clone().unwrap();
    let envoy = file("envoy");
    assert!(envoy.omit_empty_values);
    assert_eq!(envoy.format, LogFormat::istio_text());
    assert_ne!(mesh.format, LogFormat::istio_text());
    let json = file("json");
    assert!(json.omit_empty_values);
    assert_eq!(json.format, LogFormat::istio_json());
    assert!(!file("plain").omit_empty_values);
}

/// A format Envoy would refuse refuses the document, naming the field, as does an unknown
/// encoding; the message is Envoy's.
#[test]
fn access_log_formats_envoy_refuses_are_refused_naming_the_field() {
    let cases = [
        (
            "accessLogFormat: '%BOGUS%'",
            "mesh: accessLogFormat: Not supported field in StreamInfo: BOGUS",
        ),
        (
            "accessLogEncoding: XML",
            "mesh: accessLogEncoding: unknown value \"XML\" (TEXT or JSON)",
        ),
        (
            "extensionProviders: [{name: f, envoyFileAccessLog: {logFormat: {text: '50% off'}}}]",
            "mesh: extensionProviders[0].envoyFileAccessLog.logFormat.text: Incorrect configuration: 50% off. Couldn't find valid command at position 2",
        ),
        (
            "extensionProviders: [{name: f, envoyFileAccessLog: {logFormat: {labels: {a: '%NOPE%'}}}}]",
            "mesh: extensionProviders[0].envoyFileAccessLog.logFormat.labels: JSON label \"a\": Not supported field in StreamInfo: NOPE",
        ),
        (
            "accessLogEncoding: JSON\naccessLogFormat: 'not json'",
            "mesh: accessLogFormat: not a JSON object",
        ),
    ];
    for (text, expected) in cases {
        let error = parse("mesh", text).unwrap_err().to_string();
        assert!(error.starts_with(expected), "{text}: {error}");
    }
}

/// Istio's gRPC access-log service providers are read as such (istiod builds an access log
/// for them in `telemetryAccessLog`) with istiod's defaults (`http_envoy_accesslog`,
/// `tcp_envoy_accesslog`) and the headers to log, lowercase as Envoy looks them up; they are
/// applied, so nothing is reported as not applied.
#[test]
fn grpc_access_log_service_providers_are_read_and_applied() {
    let mesh = parse(
        "mesh",
        "extensionProviders: [{name: file, envoyFileAccessLog: {}}, {name: als, envoyHttpAls: {service: als.example.com, port: 9000, additionalRequestHeadersToLog: [X-Tenant], additionalResponseHeadersToLog: [x-cache], additionalResponseTrailersToLog: [grpc-message]}}, {name: zipkin, zipkin: {service: z.example.com, port: 9411}}, {name: tcp-als, envoyTcpAls: {service: ns/als.example.com, port: 9001, logName: conns}}]",
    )
    .unwrap();
    let logging = &mesh.access_logging;
    let als = |name: &str| logging.provider_named(name).unwrap().grpc_als.clone();
    let http = als("als").unwrap();
    assert_eq!(http.kind, GrpcAls::Http);
    assert_eq!(
        (http.service.as_str(), http.port),
        ("als.example.com", 9000)
    );
    assert_eq!(http.log_name, "http_envoy_accesslog");
    assert_eq!(http.request_headers, ["x-tenant"]);
    assert_eq!(http.response_headers, ["x-cache"]);
    assert_eq!(http.response_trailers, ["grpc-message"]);
    assert_eq!(http.field, "extensionProviders[1].envoyHttpAls");
    let tcp = als("tcp-als").unwrap();
    assert_eq!(tcp.kind, GrpcAls::Tcp);
    assert_eq!(
        (tcp.service.as_str(), tcp.port),
        ("ns/als.example.com", 9001)
    );
    assert_eq!(tcp.log_name, "conns");
    assert_eq!(als("file"), None);
    let writes = |name: &str| logging.provider_named(name).unwrap().writes_access_log();
    assert!(writes("als") && writes("tcp-als") && writes("file"));
    assert!(!writes("zipkin"));
    assert!(mesh.not_applied().is_empty(), "{:?}", mesh.not_applied());
    let tcp_default = parse(
        "mesh",
        "extensionProviders: [{name: t, envoyTcpAls: {service: als.example.com, port: 9000}}]",
    )
    .unwrap();
    assert_eq!(
        tcp_default.access_logging.providers[0]
            .grpc_als
            .as_ref()
            .unwrap()
            .log_name,
        "tcp_envoy_accesslog"
    );
}

/// Istio's `ValidateExtensionProviderEnvoyHttpAls` and `...TcpAls`: a service and a port, or
/// the document is refused naming the field.
#[test]
fn a_bad_grpc_access_log_service_provider_refuses_the_mesh_config() {
    for (provider, field) in [
        (
            "envoyHttpAls: {port: 9000}",
            "extensionProviders[0].envoyHttpAls.service",
        ),
        (
            "envoyTcpAls: {service: als.example.com}",
            "extensionProviders[0].envoyTcpAls.port",
        ),
        (
            "envoyHttpAls: {service: 'ns/', port: 9000}",
            "extensionProviders[0].envoyHttpAls.service",
        ),
    ] {
        let document = format!("extensionProviders: [{{name: als, {provider}}}]");
        match parse("mesh", &document) {
            Err(MeshConfigError::Field { field: named, .. }) => {
                assert_eq!(named, field, "{provider}")
            }
            other => panic!("{provider} was not refused: {other:?}"),
        }
    }
}

#[test]
fn a_mesh_config_without_providers_reports_nothing_not_applied() {
    assert!(
        parse("mesh", "accessLogFile: /dev/stdout")
            .unwrap()
            .not_applied()
            .is_empty()
    );
}
