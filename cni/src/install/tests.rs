use super::*;

const BRIDGE_LIST: &str = r#"{"cniVersion":"1.0.0","name":"pods","plugins":[
    {"type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.251.1.0/24"}},
    {"type":"portmap","capabilities":{"portMappings":true}}]}"#;
const BRIDGE_CONF: &str = r#"{"cniVersion":"0.4.0","name":"pods","type":"bridge","bridge":"cni0"}"#;

fn settings(root: &Path) -> InstallSettings {
    let (net, bin) = (root.join("net.d"), root.join("bin"));
    std::fs::create_dir_all(&net).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let binary = root.join("weft-cni-source");
    std::fs::write(&binary, b"#!plugin v1").unwrap();
    InstallSettings {
        net_dir: net,
        bin_dir: bin,
        plugin_binary: binary,
        host_net_dir: "/etc/cni/net.d".into(),
        node_socket: "/var/run/weft/cni.sock".into(),
        exclude_namespaces: vec!["kube-system".into()],
    }
}

fn temp_root(test: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("weft-cni-install-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

fn types(text: &str) -> Vec<String> {
    let value: Value = serde_json::from_str(text).unwrap();
    value["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_entry_goes_last_once_and_comes_out_again() {
    let entry = json!({"type": PLUGIN_TYPE, "node_socket": "/s"});
    let added = with_plugin(BRIDGE_LIST, &entry).unwrap().unwrap();
    assert_eq!(types(&added), ["bridge", "portmap", PLUGIN_TYPE]);
    assert_eq!(with_plugin(&added, &entry).unwrap(), None, "already there");
    // A stale entry (other settings) is replaced, not duplicated.
    let newer = json!({"type": PLUGIN_TYPE, "node_socket": "/t"});
    let replaced = with_plugin(&added, &newer).unwrap().unwrap();
    assert_eq!(types(&replaced), ["bridge", "portmap", PLUGIN_TYPE]);
    assert!(replaced.contains("\"/t\""));
    // A single plugin becomes a list with its name and version.
    let listed: Value =
        serde_json::from_str(&with_plugin(BRIDGE_CONF, &entry).unwrap().unwrap()).unwrap();
    assert_eq!(listed["cniVersion"], "0.4.0");
    assert_eq!(listed["name"], "pods");
    assert_eq!(listed["plugins"][0]["bridge"], "cni0");
    let removed = without_plugin(&added).unwrap().unwrap();
    assert_eq!(types(&removed), ["bridge", "portmap"]);
    assert_eq!(without_plugin(BRIDGE_LIST).unwrap(), None);
    assert!(
        with_plugin("{not json", &entry)
            .unwrap_err()
            .contains("not a CNI configuration")
    );
    assert!(
        with_plugin(r#"{"plugins": 3}"#, &entry)
            .unwrap_err()
            .contains("not a list")
    );
}

#[test]
fn install_check_again_after_a_rewrite_and_uninstall() {
    let root = temp_root("cycle");
    let settings = settings(&root);
    // Nothing to chain after yet: said so, and nothing written.
    let error = ensure(&settings, "kubeconfig v1").unwrap_err();
    assert!(matches!(error, InstallError::NoPrimaryConfig(_)), "{error}");
    assert!(!settings.bin_dir.join(PLUGIN_TYPE).exists());

    let primary = settings.net_dir.join("10-bridge.conflist");
    std::fs::write(&primary, BRIDGE_LIST).unwrap();
    std::fs::write(settings.net_dir.join("99-other.conflist"), BRIDGE_LIST).unwrap();
    let changes = ensure(&settings, "kubeconfig v1").unwrap();
    assert!(changes.binary && changes.kubeconfig);
    assert_eq!(changes.config, Some(primary.clone()));
    let installed = std::fs::read_to_string(&primary).unwrap();
    assert_eq!(types(&installed), ["bridge", "portmap", PLUGIN_TYPE]);
    assert!(
        installed.contains("/etc/cni/net.d/weft-cni-kubeconfig"),
        "{installed}"
    );
    assert_eq!(
        std::fs::read(settings.bin_dir.join(PLUGIN_TYPE)).unwrap(),
        b"#!plugin v1"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(settings.bin_dir.join(PLUGIN_TYPE)), 0o755);
    assert_eq!(mode(settings.net_dir.join(KUBECONFIG_FILE)), 0o600);
    assert!(
        !ensure(&settings, "kubeconfig v1").unwrap().any(),
        "a second check changes nothing"
    );

    // The primary plugin rewrites its file; the token rotates; the binary is upgraded.
    std::fs::write(&primary, BRIDGE_LIST).unwrap();
    std::fs::write(&settings.plugin_binary, b"#!plugin v2").unwrap();
    let changes = ensure(&settings, "kubeconfig v2").unwrap();
    assert_eq!(
        changes,
        Changes {
            binary: true,
            kubeconfig: true,
            config: Some(primary.clone())
        }
    );
    assert_eq!(
        types(&std::fs::read_to_string(&primary).unwrap()),
        ["bridge", "portmap", PLUGIN_TYPE]
    );

    uninstall(&settings).unwrap();
    assert_eq!(
        types(&std::fs::read_to_string(&primary).unwrap()),
        ["bridge", "portmap"]
    );
    assert!(!settings.bin_dir.join(PLUGIN_TYPE).exists());
    assert!(!settings.net_dir.join(KUBECONFIG_FILE).exists());
    uninstall(&settings).unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_single_plugin_conf_becomes_a_conflist() {
    let root = temp_root("conf");
    let settings = settings(&root);
    let conf = settings.net_dir.join("10-bridge.conf");
    std::fs::write(&conf, BRIDGE_CONF).unwrap();
    let changes = ensure(&settings, "k").unwrap();
    let list = settings.net_dir.join("10-bridge.conflist");
    assert_eq!(changes.config, Some(list.clone()));
    assert!(!conf.exists());
    assert_eq!(
        types(&std::fs::read_to_string(&list).unwrap()),
        ["bridge", PLUGIN_TYPE]
    );
    let _ = std::fs::remove_dir_all(&root);
}
