//! The Helm chart (deploy/charts/weft), rendered for real: there is no `helm` binary on these
//! machines, so the templates go through `gtmpl` (Go's text/template for Rust) with the few
//! Sprig functions the chart uses (`quote`, `toYaml`, `nindent`) and Helm's `.Files.Get`
//! written here with Helm's semantics, and the values from values.yaml. Every rendered document must parse as YAML, and
//! what the controller and the agent rely on is checked against the code it must match.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use gtmpl::{Context, FuncError, Template, Value};
use serde_json::Value as Json;

use crate::workspace_root;

const NAMESPACE: &str = "istio-system";

fn chart() -> PathBuf {
    workspace_root().join("deploy/charts/weft")
}

fn to_gtmpl(value: &Json) -> Value {
    match value {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) => Value::from(f),
            _ => Value::Nil,
        },
        Json::String(s) => Value::String(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(to_gtmpl).collect()),
        Json::Object(map) => Value::Map(
            map.iter()
                .map(|(k, v)| (k.clone(), to_gtmpl(v)))
                .collect::<HashMap<_, _>>(),
        ),
    }
}

fn to_json(value: &Value) -> Json {
    match value {
        Value::NoValue | Value::Nil | Value::Function(_) => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.clone()),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Json::from(i),
            (None, Some(f)) => Json::from(f),
            _ => Json::Null,
        },
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Object(map) | Value::Map(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect::<serde_json::Map<_, _>>(),
        ),
    }
}

/// Go's `%v` of a scalar.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(_) => to_json(value).to_string(),
        Value::Nil | Value::NoValue => String::new(),
        other => to_json(other).to_string(),
    }
}

/// Sprig's `quote`: the argument as a double-quoted string.
fn quote(args: &[Value]) -> Result<Value, FuncError> {
    let [value] = args else {
        return Err(FuncError::ExactlyXArgs("quote".into(), 1));
    };
    Ok(Value::String(format!("{:?}", plain(value))))
}

/// Helm's `toYaml`: the value as YAML, without the final newline.
fn to_yaml(args: &[Value]) -> Result<Value, FuncError> {
    let [value] = args else {
        return Err(FuncError::ExactlyXArgs("toYaml".into(), 1));
    };
    let text = serde_yaml::to_string(&to_json(value))
        .map_err(|e| FuncError::Generic(format!("toYaml: {e}")))?;
    Ok(Value::String(text.trim_end_matches('\n').to_owned()))
}

/// Sprig's `nindent N TEXT`: a newline, then TEXT with every line indented by N spaces.
fn nindent(args: &[Value]) -> Result<Value, FuncError> {
    let [width, text] = args else {
        return Err(FuncError::ExactlyXArgs("nindent".into(), 2));
    };
    let width = plain(width)
        .parse::<usize>()
        .map_err(|_| FuncError::Generic("nindent: the width is not a number".into()))?;
    let pad = " ".repeat(width);
    let indented: Vec<String> = plain(text).lines().map(|l| format!("{pad}{l}")).collect();
    Ok(Value::String(format!("\n{}", indented.join("\n"))))
}

/// Sprig's `join SEP LIST`: the list's items as text, separated by SEP.
fn join(args: &[Value]) -> Result<Value, FuncError> {
    let [separator, Value::Array(items)] = args else {
        return Err(FuncError::Generic(
            "join: expected a separator and a list".into(),
        ));
    };
    let items: Vec<String> = items.iter().map(plain).collect();
    Ok(Value::String(items.join(&plain(separator))))
}

/// Helm's `.Files.Get PATH`: a file of the chart, as text, not rendered. gtmpl calls no method
/// with arguments, so [`render`] reads the templates' `.Files.Get` as this function. A missing
/// file is an error here (Helm renders it empty), so that a mistyped path fails the tests.
fn files_get(args: &[Value]) -> Result<Value, FuncError> {
    let [path] = args else {
        return Err(FuncError::ExactlyXArgs("Files.Get".into(), 1));
    };
    let path = plain(path);
    std::fs::read_to_string(chart().join(&path))
        .map(Value::String)
        .map_err(|e| FuncError::Generic(format!("Files.Get {path}: {e}")))
}

fn values(overrides: &[(&str, Json)]) -> Json {
    let text = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    let mut values: Json = serde_yaml::from_str(&text).expect("values.yaml is YAML");
    for (path, value) in overrides {
        let mut slot = &mut values;
        for part in path.split('.') {
            slot = &mut slot[part];
        }
        *slot = value.clone();
    }
    values
}

/// Every rendered document of every template, by template file.
fn render(values: &Json) -> BTreeMap<String, Vec<Json>> {
    let context = serde_json::json!({
        "Values": values,
        "Release": {"Name": "weft", "Namespace": NAMESPACE, "Service": "Helm"},
        "Chart": {"Name": "weft", "Version": "0.1.0", "AppVersion": "0.1.0"},
    });
    let mut out = BTreeMap::new();
    let dir = chart().join("templates");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(".Files.Get ", "filesGet ");
        let gated = text.starts_with("{{- if .Values.");
        let mut template = Template::default();
        template.add_funcs(&[
            ("quote", quote as gtmpl::Func),
            ("toYaml", to_yaml as gtmpl::Func),
            ("nindent", nindent as gtmpl::Func),
            ("join", join as gtmpl::Func),
            ("filesGet", files_get as gtmpl::Func),
        ]);
        template
            .parse(text)
            .unwrap_or_else(|e| panic!("{name} does not parse as a template: {e}"));
        let rendered = template
            .render(&Context::from(to_gtmpl(&context)))
            .unwrap_or_else(|e| panic!("{name} does not render: {e}"));
        let documents: Vec<Json> = serde_yaml::Deserializer::from_str(&rendered)
            .map(|document| {
                serde::Deserialize::deserialize(document)
                    .unwrap_or_else(|e| panic!("{name} renders invalid YAML: {e}\n{rendered}"))
            })
            .filter(|document: &Json| !document.is_null())
            .collect();
        // A template is empty only when a value turns it off.
        assert!(!documents.is_empty() || gated, "{name} renders nothing");
        out.insert(name, documents);
    }
    out
}

fn find<'a>(rendered: &'a BTreeMap<String, Vec<Json>>, kind: &str, name: &str) -> &'a Json {
    rendered
        .values()
        .flatten()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn env(container: &Json, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
        .map(str::to_owned)
}

fn container_ports(container: &Json) -> Vec<i64> {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .collect()
}

fn ports(service: &Json) -> Vec<i64> {
    service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect()
}

#[test]
fn the_chart_renders_to_valid_manifests_of_every_component() {
    let rendered = render(&values(&[]));
    let kinds: BTreeSet<String> = rendered
        .values()
        .flatten()
        .map(|d| {
            assert!(
                d["apiVersion"].is_string() && d["metadata"]["name"].is_string(),
                "{d}"
            );
            d["kind"].as_str().unwrap().to_owned()
        })
        .collect();
    let expected = [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ValidatingWebhookConfiguration",
    ];
    assert_eq!(kinds, expected.iter().map(|k| k.to_string()).collect());

    let deployment = find(&rendered, "Deployment", "weft-controller");
    let controller = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        controller["args"],
        serde_json::json!(["run", "--mode", "kubernetes"])
    );
    assert_eq!(
        env(controller, "WEFT_NODE_AGENT_SERVICE_ACCOUNTS").as_deref(),
        Some("istio-system/weft-node-agent")
    );
    assert_eq!(
        env(controller, "WEFT_GRPC_ADDRESS"),
        None,
        "no plaintext by default"
    );
    assert_eq!(controller["resources"]["limits"]["memory"], "512Mi");
    // Istio's mesh configuration: the `istio` ConfigMap's `mesh` key, mounted where the
    // controller is told to follow it.
    assert_eq!(
        env(controller, "WEFT_MESH_CONFIG").as_deref(),
        Some("/etc/istio/config/mesh")
    );
    assert_eq!(
        controller["volumeMounts"][0]["mountPath"],
        "/etc/istio/config"
    );
    // Istio's default: mirrors keep the request's Host.
    assert_eq!(
        env(controller, "DISABLE_SHADOW_HOST_SUFFIX").as_deref(),
        Some("true")
    );
    // istiod's default: ServiceEntry addresses are allocated, from its ranges.
    assert_eq!(
        env(controller, "PILOT_ENABLE_IP_AUTOALLOCATE").as_deref(),
        Some("true")
    );
    assert_eq!(
        env(controller, "PILOT_IP_AUTOALLOCATE_IPV4_PREFIX").as_deref(),
        Some("240.240.0.0/16")
    );
    assert_eq!(
        env(controller, "PILOT_IP_AUTOALLOCATE_IPV6_PREFIX").as_deref(),
        Some("2001:2::/48")
    );
    let mesh: serde_yaml::Value = serde_yaml::from_str(
        find(&rendered, "ConfigMap", "istio")["data"]["mesh"]
            .as_str()
            .expect("a mesh key"),
    )
    .expect("mesh configuration YAML");
    assert_eq!(mesh["outboundTrafficPolicy"]["mode"], "ALLOW_ANY");
    // No access log by default, as Istio's default profile (its demo profile sets the file).
    assert!(mesh.get("accessLogFile").is_none(), "{mesh:?}");
    assert!(mesh.get("defaultProviders").is_none(), "{mesh:?}");
    assert_eq!(
        ports(find(&rendered, "Service", "istiod")),
        [443, 15012, 15014]
    );

    // The agent reaches the controller under a name its serving certificate carries, with a
    // token for the audience the controller reviews.
    let daemonset = find(&rendered, "DaemonSet", "weft-node-agent");
    let pod = &daemonset["spec"]["template"]["spec"];
    let agent = &pod["containers"][0];
    let serving_name = &controller::server::default_serving_names(NAMESPACE, "cluster.local")[0];
    assert_eq!(
        env(agent, "XDS_ADDRESS"),
        Some(format!("https://{serving_name}:15012"))
    );
    let audience = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "token")
        .unwrap()["projected"]["sources"][0]["serviceAccountToken"]["audience"]
        .clone();
    assert_eq!(
        Some(audience.as_str().unwrap().to_owned()),
        env(controller, "WEFT_TOKEN_AUDIENCES")
    );
    assert_eq!(pod["hostNetwork"], false);
    assert_eq!(agent["securityContext"]["privileged"], false);
    assert_eq!(
        agent["securityContext"]["capabilities"]["add"],
        serde_json::json!(["BPF", "NET_ADMIN", "SYS_ADMIN"])
    );
    assert_eq!(env(agent, "ACCELERATION").as_deref(), Some("false"));
    // The node's own connections (the kubelet's probes) are known by the host's namespace.
    let node_netns = env(agent, "NODE_NETNS").expect("NODE_NETNS");
    let mount = agent["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == node_netns.as_str())
        .expect("NODE_NETNS is mounted");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["hostPath"]["path"], "/proc/1/ns/net");
    assert_eq!(
        env(agent, "CERTIFICATE_TTL_SECONDS").as_deref(),
        Some("86400")
    );
    // The agent drains until a little before the kubelet's SIGKILL: it is told when that is.
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    assert_eq!(
        env(agent, "TERMINATION_GRACE_PERIOD_SECONDS").as_deref(),
        Some("30")
    );
    // A rolling update starts the next agent beside the old one (it takes the pods over) and
    // stops the old one only once the next is ready: never a node without an agent.
    let rolling = &daemonset["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!(rolling["maxSurge"], 1, "{rolling}");
    assert_eq!(rolling["maxUnavailable"], 0, "{rolling}");
    assert!(
        agent["readinessProbe"]["httpGet"]["path"] == "/healthz/ready",
        "the rollout waits on the next agent's readiness"
    );
    assert_eq!(
        pod["serviceAccountName"], "weft-node-agent",
        "the service account the controller trusts as node agent"
    );

    // The CNI side: the plugin installed where the runtime looks, talking to the agent over
    // the socket the agent binds, allowed nothing but reading other processes' namespaces.
    let install = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "install-cni")
        .expect("an install-cni container");
    assert_eq!(install["command"], serde_json::json!(["weft-cni-node"]));
    assert_eq!(
        env(install, "ENROLLMENT_SOCKET"),
        env(agent, "ENROLLMENT_SOCKET")
    );
    assert_eq!(
        env(install, "HOST_CNI_NET_DIR").as_deref(),
        Some("/etc/cni/net.d")
    );
    assert_eq!(
        env(install, "EXCLUDE_NAMESPACES").as_deref(),
        Some("kube-system")
    );
    for name in [
        weft_cni::config::NODE_NAME,
        weft_cni::config::POD_NAMESPACE,
        weft_cni::config::CNI_NET_DIR,
        weft_cni::config::CNI_BIN_DIR,
        weft_cni::config::PLUGIN_BINARY,
        weft_cni::config::NODE_SOCKET,
        weft_cni::config::PROC_ROOT,
        weft_cni::config::NETNS_DIR,
    ] {
        assert!(
            install["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == name),
            "install-cni sets no {name}"
        );
    }
    assert_eq!(
        install["securityContext"]["capabilities"]["add"],
        serde_json::json!(["SYS_PTRACE"])
    );
    let mounts: BTreeSet<String> = install["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap().to_owned())
        .collect();
    for path in [
        "/host/opt/cni/bin",
        "/host/etc/cni/net.d",
        "/host/proc",
        "/var/run/netns",
        "/var/run/weft",
    ] {
        assert!(mounts.contains(path), "install-cni does not mount {path}");
    }
    let node_role = find(&rendered, "ClusterRole", "weft-node-agent");
    for verb in ["get", "list", "watch"] {
        let granted = granted(node_role, verb);
        for resource in ["pods", "namespaces"] {
            assert!(
                granted.contains(&(String::new(), resource.to_owned())),
                "the node agent may not {verb} {resource}"
            );
        }
    }

    // With plaintext on, 15010 appears on the container and the Service.
    let rendered = render(&values(&[("controller.plaintextGrpc", Json::Bool(true))]));
    assert_eq!(
        ports(find(&rendered, "Service", "istiod")),
        [15010, 443, 15012, 15014]
    );
    let deployment = find(&rendered, "Deployment", "weft-controller");
    let controller = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env(controller, "WEFT_GRPC_ADDRESS").as_deref(),
        Some("0.0.0.0:15010")
    );

    // Istio's older mirror Host, `-shadow` appended, when asked for.
    let rendered = render(&values(&[(
        "controller.disableShadowHostSuffix",
        Json::Bool(false),
    )]));
    let deployment = find(&rendered, "Deployment", "weft-controller");
    let controller = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env(controller, "DISABLE_SHADOW_HOST_SUFFIX").as_deref(),
        Some("false")
    );

    // Other address ranges, as istiod's variables set them.
    let rendered = render(&values(&[
        (
            "controller.ipAutoallocate.ipv4Prefix",
            Json::String("10.250.0.0/16".to_owned()),
        ),
        (
            "controller.ipAutoallocate.ipv6Prefix",
            Json::String("fd00:250::/64".to_owned()),
        ),
    ]));
    let deployment = find(&rendered, "Deployment", "weft-controller");
    let controller = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env(controller, "PILOT_IP_AUTOALLOCATE_IPV4_PREFIX").as_deref(),
        Some("10.250.0.0/16")
    );
    assert_eq!(
        env(controller, "PILOT_IP_AUTOALLOCATE_IPV6_PREFIX").as_deref(),
        Some("fd00:250::/64")
    );

    // The console on 20001 of the pod's loopback (where `weftctl dashboard` forwards; no peer
    // in the cluster reaches it), reading the Prometheus it is given; off, nothing of it.
    let rendered = render(&values(&[]));
    let deployment = find(&rendered, "Deployment", "weft-controller");
    let controller = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env(controller, "WEFT_CONSOLE_ADDRESS").as_deref(),
        Some("127.0.0.1:20001")
    );
    assert_eq!(
        env(controller, "WEFT_PROMETHEUS_URL").as_deref(),
        Some("http://prometheus.istio-system:9090")
    );
    assert!(!container_ports(controller).contains(&20001));
    let rendered = render(&values(&[(
        "controller.console.enabled",
        Json::Bool(false),
    )]));
    let deployment = find(&rendered, "Deployment", "weft-controller");
    let controller = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env(controller, "WEFT_CONSOLE_ADDRESS"), None);

    // Allocation switched off, as istiod's variable does.
    let rendered = render(&values(&[(
        "controller.ipAutoallocate.enabled",
        Json::Bool(false),
    )]));
    let deployment = find(&rendered, "Deployment", "weft-controller");
    let controller = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env(controller, "PILOT_ENABLE_IP_AUTOALLOCATE").as_deref(),
        Some("false")
    );
}

#[test]
fn the_webhook_is_registered_where_the_controller_serves_it() {
    let rendered = render(&values(&[]));
    let deployment = find(&rendered, "Deployment", "weft-controller");
    let controller = &deployment["spec"]["template"]["spec"]["containers"][0];
    let name = env(controller, "WEFT_WEBHOOK_CONFIGURATION").unwrap();
    assert_eq!(name, format!("weft-validator-{NAMESPACE}"));
    let listen: std::net::SocketAddr = env(controller, "WEFT_WEBHOOK_ADDRESS")
        .unwrap()
        .parse()
        .unwrap();
    let configuration = find(&rendered, "ValidatingWebhookConfiguration", &name);
    let webhook = &configuration["webhooks"][0];
    // The API server reaches the webhook through the istiod Service, under a name the serving
    // certificate carries, at the path the controller serves.
    let service = &webhook["clientConfig"]["service"];
    assert_eq!(service["name"], "istiod");
    assert_eq!(service["namespace"], NAMESPACE);
    assert_eq!(service["path"], controller::webhook::PATH);
    let serving_names = controller::server::default_serving_names(NAMESPACE, "cluster.local");
    assert!(serving_names.contains(&format!("istiod.{NAMESPACE}.svc")));
    let istiod = find(&rendered, "Service", "istiod");
    let https = istiod["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == 443)
        .expect("the Service serves the webhook on 443, the API server's default");
    assert_eq!(https["targetPort"], listen.port());
    // Its CA bundle is the controller's to write, and the controller may write exactly it.
    assert!(webhook["clientConfig"]["caBundle"].is_null());
    let cluster_role = find(&rendered, "ClusterRole", "weft-controller");
    let rule = cluster_role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resources"][0] == "validatingwebhookconfigurations")
        .unwrap();
    assert_eq!(rule["resourceNames"], serde_json::json!([name]));
    for verb in ["get", "watch", "update"] {
        assert!(
            rule["verbs"].as_array().unwrap().iter().any(|v| v == verb),
            "{verb}"
        );
    }
    // Every group of the installed CRDs is validated; reviews are v1; nothing stored unvalidated.
    let groups: Vec<&str> = webhook["rules"][0]["apiGroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    for crd in controller::crd::crds() {
        assert!(
            groups.contains(&crd.spec.group.as_str()),
            "{}",
            crd.spec.group
        );
    }
    assert_eq!(
        webhook["admissionReviewVersions"],
        serde_json::json!(["v1"])
    );
    assert_eq!(webhook["failurePolicy"], "Fail");
    assert_eq!(webhook["sideEffects"], "None");
}

/// (group, plural) pairs a role grants `verb` on.
fn granted(role: &Json, verb: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        let verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        if !verbs.contains(&verb) {
            continue;
        }
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                out.insert((
                    group.as_str().unwrap().to_owned(),
                    resource.as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

#[test]
fn rbac_grants_what_the_controller_watches_reviews_and_writes() {
    let rendered = render(&values(&[]));
    let cluster_role = find(&rendered, "ClusterRole", "weft-controller");
    for verb in ["list", "watch"] {
        let granted = granted(cluster_role, verb);
        for kind in controller::model::ResourceKind::ALL {
            let api = controller::source::kube::api_resource(kind);
            assert!(
                granted.contains(&(api.group.clone(), api.plural.clone())),
                "{verb} {}/{} is not granted",
                api.group,
                api.plural
            );
        }
    }
    assert!(
        granted(cluster_role, "create")
            .contains(&("authentication.k8s.io".into(), "tokenreviews".into()))
    );
    // What it deploys for Gateways (`source::kube::provision`).
    for (group, resource) in [
        ("", "services"),
        ("", "serviceaccounts"),
        ("apps", "deployments"),
    ] {
        for verb in ["create", "update"] {
            assert!(
                granted(cluster_role, verb).contains(&(group.into(), resource.into())),
                "{verb} {group}/{resource} is not granted"
            );
        }
    }
    // The root ConfigMap in every namespace, watched to be restored (`ca::kubernetes::namespaces`).
    for verb in ["get", "list", "watch", "create", "update"] {
        assert!(
            granted(cluster_role, verb).contains(&(String::new(), "configmaps".into())),
            "{verb} configmaps is not granted"
        );
    }
    // Gateways' credentials (`source::kube::secrets`), cluster-wide as istiod reads them.
    for verb in ["get", "list", "watch"] {
        assert!(
            granted(cluster_role, verb).contains(&(String::new(), "secrets".into())),
            "{verb} secrets is not granted"
        );
    }
    // The status of routes and ingress Gateways (`source::kube::route_status`).
    for kind in [
        "httproutes",
        "grpcroutes",
        "tcproutes",
        "tlsroutes",
        "gateways",
    ] {
        for verb in ["get", "patch"] {
            assert!(
                granted(cluster_role, verb)
                    .contains(&("gateway.networking.k8s.io".into(), format!("{kind}/status"))),
                "{verb} {kind}/status is not granted"
            );
        }
    }
    let role = find(&rendered, "Role", "weft-controller");
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    for (verb, resource) in [
        ("get", "secrets"),
        ("create", "secrets"),
        ("get", "configmaps"),
        ("create", "configmaps"),
        ("update", "configmaps"),
    ] {
        assert!(
            granted(role, verb).contains(&(String::new(), resource.into())),
            "{verb} {resource}"
        );
    }
    // Secrets only by name for reads: the CA's, nothing else of the namespace.
    let secret_reads: Vec<&Json> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["resources"][0] == "secrets" && r["verbs"][0] == "get")
        .collect();
    assert_eq!(
        secret_reads[0]["resourceNames"],
        serde_json::json!([
            controller::ca::kubernetes::PLUGGED_CA_SECRET,
            controller::ca::kubernetes::SELF_SIGNED_CA_SECRET
        ])
    );
    for binding in ["ClusterRoleBinding", "RoleBinding"] {
        let binding = find(&rendered, binding, "weft-controller");
        assert_eq!(binding["subjects"][0]["name"], "weft-controller");
        assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE);
    }
}

#[test]
fn the_charts_crds_are_the_generated_ones() {
    let generated = workspace_root().join("deploy/crds");
    let copied = chart().join("crds");
    let list = |dir: &PathBuf| -> BTreeMap<String, String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read_to_string(&p).unwrap(),
                )
            })
            .collect()
    };
    let generated = list(&generated);
    assert!(generated.len() >= 6);
    assert_eq!(generated, list(&copied), "run `cargo xtask crdgen`");
}

mod ingress_gateway;
mod prometheus;
