//! TLS origination settings and credentials, checked when the configuration arrives.

use super::*;

#[test]
fn tls_origination_settings_are_checked_when_the_configuration_arrives() {
    let mut config = by_name("api.example.com");
    config.clusters[0].tls = Some(proto::UpstreamTls::default());
    // The Mozilla roots, the host as SNI.
    let converted = WaypointConfig::try_from(config.clone()).unwrap();
    assert!(converted.cluster(CLUSTER).unwrap().tls.is_some());

    let cases = [
        (
            proto::UpstreamTls {
                ca_certificates: "/nonexistent/ca.pem".to_owned(),
                ..Default::default()
            },
            "/nonexistent/ca.pem",
        ),
        (
            proto::UpstreamTls {
                sni: "not a name".to_owned(),
                ..Default::default()
            },
            "not a name",
        ),
        (
            proto::UpstreamTls {
                client_certificate: "/nonexistent/cert.pem".to_owned(),
                ..Default::default()
            },
            "/nonexistent/cert.pem",
        ),
    ];
    for (tls, named) in cases {
        config.clusters[0].tls = Some(tls);
        let error = WaypointConfig::try_from(config.clone())
            .unwrap_err()
            .to_string();
        assert!(error.contains(CLUSTER) && error.contains(named), "{error}");
    }
}

#[test]
fn a_tls_credential_name_is_read_from_the_credentials_and_fails_only_its_cluster() {
    let dir = std::env::temp_dir().join(format!("weft-origination-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let certified = rcgen::generate_simple_self_signed(vec!["api.example.com".to_owned()]).unwrap();
    let (cert, key) = (certified.cert.pem(), certified.signing_key.serialize_pem());
    // Istio's layouts: the CA in the credential, or in its `-cacert` companion; a client pair.
    std::fs::create_dir_all(dir.join("full")).unwrap();
    for (file, text) in [("ca.crt", &cert), ("tls.crt", &cert), ("tls.key", &key)] {
        std::fs::write(dir.join("full").join(file), text).unwrap();
    }
    std::fs::create_dir_all(dir.join("split-cacert")).unwrap();
    std::fs::write(dir.join("split-cacert").join("ca.crt"), &cert).unwrap();

    let tls = |name: &str, mutual: bool| proto::UpstreamTls {
        credential_name: name.to_owned(),
        mutual,
        // Ignored with a credential, as Istio ignores them.
        ca_certificates: "/nonexistent/ca.pem".to_owned(),
        ..Default::default()
    };
    let unusable = |settings: proto::UpstreamTls, credentials: Option<&std::path::Path>| {
        let mut config = by_name("api.example.com");
        config.clusters[0].tls = Some(settings);
        // Never a rejected configuration: the cluster is built, failing closed if it must.
        let converted = WaypointConfig::from_proto_with(
            config,
            &ResolvedNames::default(),
            &crate::upstream::OriginationCredentials::directory(credentials),
        )
        .expect("a credential problem does not reject the configuration");
        let cluster = converted.cluster(CLUSTER).unwrap();
        cluster
            .tls
            .as_ref()
            .unwrap()
            .unusable()
            .map(|r| r.to_string())
    };
    assert_eq!(unusable(tls("full", true), Some(&dir)), None);
    assert_eq!(unusable(tls("full", false), Some(&dir)), None);
    assert_eq!(unusable(tls("split", false), Some(&dir)), None);
    let cases = [
        (tls("missing", false), Some(dir.as_path()), "missing Secret"),
        // MUTUAL needs the client pair: `split` has only a CA.
        (tls("split", true), Some(dir.as_path()), "tls.crt"),
        (
            tls("../full", false),
            Some(dir.as_path()),
            "one path component",
        ),
        (tls("full", false), None, "CREDENTIALS_DIR"),
    ];
    for (settings, credentials, reason) in cases {
        let name = settings.credential_name.clone();
        let why = unusable(settings, credentials).unwrap_or_else(|| panic!("{name} is usable"));
        assert!(why.contains(reason) && why.contains(&name), "{name}: {why}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
