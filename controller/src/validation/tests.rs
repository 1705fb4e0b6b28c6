//! One table of documents across every kind: valid ones must load and validate clean; invalid ones
//! must fail at the expected field path with the expected reason.

use std::path::Path;

use crate::loader::{LoadError, load_str};

const NET: &str = "networking.istio.io/v1";
const SEC: &str = "security.istio.io/v1";

fn doc(api_version: &str, kind: &str, spec: &str) -> String {
    format!(
        "apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: t, namespace: ns}}\nspec: {spec}\n"
    )
}
fn vs(spec: &str) -> String {
    doc(NET, "VirtualService", spec)
}
fn dr(spec: &str) -> String {
    doc(NET, "DestinationRule", spec)
}
fn se(spec: &str) -> String {
    doc(NET, "ServiceEntry", spec)
}
fn gw(spec: &str) -> String {
    doc(NET, "Gateway", spec)
}
fn ap(spec: &str) -> String {
    doc(SEC, "AuthorizationPolicy", spec)
}
fn pa(spec: &str) -> String {
    doc(SEC, "PeerAuthentication", spec)
}
/// A VirtualService with one HTTP route to `reviews` plus the given route fields.
fn route(fields: &str) -> String {
    vs(&format!(
        "{{hosts: [reviews], http: [{{route: [{{destination: {{host: reviews}}}}], {fields}}}]}}"
    ))
}

struct Case {
    name: &'static str,
    yaml: String,
    /// `None` for valid documents; else the field path and a substring of the reason.
    expect: Option<(&'static str, &'static str)>,
}

fn ok(name: &'static str, yaml: String) -> Case {
    Case {
        name,
        yaml,
        expect: None,
    }
}
fn bad(name: &'static str, yaml: String, path: &'static str, reason: &'static str) -> Case {
    Case {
        name,
        yaml,
        expect: Some((path, reason)),
    }
}

fn cases() -> Vec<Case> {
    vec![
        // VirtualService
        ok("vs canary split", vs("{hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v1}, weight: 90}, {destination: {host: reviews, subset: v2}, weight: 10}]}]}")),
        ok("vs header match with regex", vs("{hosts: [reviews], http: [{match: [{headers: {end-user: {exact: jason}}, uri: {regex: '^/api/v[0-9]+/.*'}}], route: [{destination: {host: reviews}}]}]}")),
        ok("vs wildcard host and timeout", route("timeout: 1.5s").replace("[reviews]", "['*.example.com']")),
        ok("vs retries with status codes", route("retries: {attempts: 3, perTryTimeout: 500ms, retryOn: 'gateway-error,connect-failure,503'}")),
        ok("vs fault delay and abort", route("fault: {delay: {fixedDelay: 7s, percentage: {value: 100}}, abort: {httpStatus: 500, percentage: {value: 10}}}")),
        ok("vs grpc abort", route("fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 5}}}")),
        ok("vs redirect", vs("{hosts: [reviews], http: [{redirect: {uri: /v2, redirectCode: 301}}]}")),
        ok("vs direct response", vs("{hosts: [reviews], http: [{directResponse: {status: 503, body: {string: unavailable}}}]}")),
        ok("vs regex rewrite, mirror, cors", route("rewrite: {uriRegexRewrite: {match: '^/old/(.*)', rewrite: '/new/\\1'}}, mirror: {host: mirror}, mirrorPercentage: {value: 50}, corsPolicy: {allowOrigins: [{exact: 'https://a.example'}], allowMethods: [GET, POST], maxAge: 24h}")),
        ok("vs tcp and tls routes", vs("{hosts: ['*.example.com'], tcp: [{match: [{port: 9000, destinationSubnets: [10.0.0.0/8]}], route: [{destination: {host: db}}]}], tls: [{match: [{sniHosts: [a.example.com]}], route: [{destination: {host: a}}]}]}")),
        bad("vs negative weight", vs("{hosts: [reviews], http: [{route: [{destination: {host: reviews}, weight: 110}, {destination: {host: reviews, subset: v2}, weight: -10}]}]}"), "spec.http[0].route[1].weight", "weight -10 < 0"),
        bad("vs weights sum to zero", vs("{hosts: [reviews], http: [{route: [{destination: {host: a}, weight: 0}, {destination: {host: b}, weight: 0}]}]}"), "spec.http[0].route", "total destination weight = 0"),
        bad("vs invalid regex", vs("{hosts: [reviews], http: [{match: [{uri: {regex: '(unclosed'}}], route: [{destination: {host: reviews}}]}]}"), "spec.http[0].match[0].uri.regex", "invalid regex"),
        bad("vs oversized regex", vs(&format!("{{hosts: [reviews], http: [{{match: [{{headers: {{x: {{regex: '{}'}}}}}}], route: [{{destination: {{host: reviews}}}}]}}]}}", "a".repeat(1100))), "spec.http[0].match[0].headers.x.regex", "regex is too large"),
        bad("vs regex program too large", vs("{hosts: [reviews], http: [{match: [{uri: {regex: '(\\w{100}){100}'}}], route: [{destination: {host: reviews}}]}]}"), "spec.http[0].match[0].uri.regex", "too large"),
        bad("vs bad timeout", route("timeout: '10'"), "spec.http[0].timeout", "missing unit"),
        bad("vs sub-millisecond timeout", route("timeout: 500us"), "spec.http[0].timeout", "greater than 1ms"),
        bad("vs negative attempts", route("retries: {attempts: -1}"), "spec.http[0].retries.attempts", "attempts cannot be negative"),
        bad("vs bad perTryTimeout", route("retries: {attempts: 2, perTryTimeout: 2x}"), "spec.http[0].retries.perTryTimeout", "unknown unit"),
        bad("vs unknown retryOn", route("retries: {attempts: 2, retryOn: '5xx,bogus'}"), "spec.http[0].retries.retryOn", "\"bogus\" is not a valid retryOn policy"),
        bad("vs fault without delay or abort", route("fault: {}"), "spec.http[0].fault", "must have an abort and/or a delay"),
        bad("vs abort status out of range", route("fault: {abort: {httpStatus: 700}}"), "spec.http[0].fault.abort.httpStatus", "not in range 200-599"),
        bad("vs abort unknown grpc status", route("fault: {abort: {grpcStatus: NOPE}}"), "spec.http[0].fault.abort.grpcStatus", "not a gRPC status code name"),
        bad("vs fault percentage over 100", route("fault: {delay: {fixedDelay: 1s, percentage: {value: 150}}}"), "spec.http[0].fault.delay.percentage.value", "neither 0.0, nor in range"),
        bad("vs mirror percentage over 100", route("mirror: {host: m}, mirrorPercentage: {value: 101}"), "spec.http[0].mirrorPercentage.value", "max value of 100"),
        bad("vs redirect with route", route("redirect: {uri: /x}"), "spec.http[0].redirect", "cannot contain both route and redirect"),
        bad("vs direct response with route", route("directResponse: {status: 200}"), "spec.http[0].directResponse", "cannot contain both route and directResponse"),
        bad("vs direct response bad status", vs("{hosts: [reviews], http: [{directResponse: {status: 99}}]}"), "spec.http[0].directResponse.status", "not in range 200-599"),
        bad("vs no action", vs("{hosts: [reviews], http: [{match: [{uri: {prefix: /}}]}]}"), "spec.http[0]", "route, redirect or directResponse is required"),
        bad("vs host with trailing wildcard", route("timeout: 1s").replace("[reviews]", "['foo.*']"), "spec.hosts[0]", "invalid"),
        bad("vs star host for mesh", route("timeout: 1s").replace("[reviews]", "['*']"), "spec.hosts[0]", "wildcard host * is not allowed"),
        bad("vs star destination", vs("{hosts: [reviews], http: [{route: [{destination: {host: '*'}}]}]}"), "spec.http[0].route[0].destination.host", "invalid destination host"),
        bad("vs unknown field", route("retrys: {attempts: 1}"), "spec.http[0].retrys", "unknown field `retrys`"),
        bad("vs empty", vs("{hosts: [reviews]}"), "spec", "http, tcp or tls must be provided"),
        bad("vs tls sni not in hosts", vs("{hosts: [a.example.com], tls: [{match: [{sniHosts: [b.example.com]}], route: [{destination: {host: b}}]}]}"), "spec.tls[0].match[0].sniHosts[0]", "not a compatible subset"),
        bad("vs unknown cors method", route("corsPolicy: {allowMethods: [FETCH]}"), "spec.http[0].corsPolicy.allowMethods[0]", "not a supported HTTP method"),
        // DestinationRule
        ok("dr subsets and policy", dr("{host: reviews, trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}, connectionPool: {tcp: {maxConnections: 100, connectTimeout: 30ms}, http: {http1MaxPendingRequests: 10, idleTimeout: 1h}}, outlierDetection: {consecutive5xxErrors: 7, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 50}}, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}}}}}]}")),
        ok("dr port level settings", dr("{host: '*.example.com', trafficPolicy: {portLevelSettings: [{port: {number: 80}, loadBalancer: {simple: ROUND_ROBIN}}], tls: {mode: ISTIO_MUTUAL}}}")),
        bad("dr duplicate subset", dr("{host: reviews, subsets: [{name: v1, labels: {version: v1}}, {name: v1, labels: {version: v2}}]}"), "spec.subsets[1].name", "duplicate subset name"),
        bad("dr invalid subset label", dr("{host: reviews, subsets: [{name: v1, labels: {'bad key': v1}}]}"), "spec.subsets[0].labels.bad key", "invalid label key"),
        bad("dr invalid subset name", dr("{host: reviews, subsets: [{name: V_1}]}"), "spec.subsets[0].name", "subset name is invalid"),
        bad("dr unknown lb enum", dr("{host: reviews, trafficPolicy: {loadBalancer: {simple: FASTEST}}}"), "spec.trafficPolicy.loadBalancer.simple", "unknown variant `FASTEST`"),
        bad("dr simple and hash", dr("{host: reviews, trafficPolicy: {loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}}"), "spec.trafficPolicy.loadBalancer", "only one of simple or consistentHash"),
        bad("dr cookie without ttl", dr("{host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: c}}}}}"), "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl", "ttl required"),
        bad("dr negative max connections", dr("{host: reviews, trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}}"), "spec.trafficPolicy.connectionPool.tcp.maxConnections", "must be non-negative"),
        bad("dr bad outlier interval", dr("{host: reviews, trafficPolicy: {outlierDetection: {interval: 5 minutes}}}"), "spec.trafficPolicy.outlierDetection.interval", "invalid duration"),
        bad("dr ejection percent", dr("{host: reviews, trafficPolicy: {outlierDetection: {maxEjectionPercent: 150}}}"), "spec.trafficPolicy.outlierDetection.maxEjectionPercent", "not in range 0..100"),
        bad("dr empty traffic policy", dr("{host: reviews, trafficPolicy: {}}"), "spec.trafficPolicy", "at least one field"),
        bad("dr port policy without port", dr("{host: reviews, trafficPolicy: {portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}}"), "spec.trafficPolicy.portLevelSettings[0].port", "must have valid port"),
        bad("dr bad host", dr("{host: 'a.*.com'}"), "spec.host", "invalid"),
        bad("dr unknown field", dr("{host: reviews, subset: []}"), "spec.subset", "unknown field `subset`"),
        // ServiceEntry
        ok("se external dns", se("{hosts: [api.example.com], ports: [{number: 443, name: https, protocol: TLS}], location: MESH_EXTERNAL, resolution: DNS}")),
        ok("se static endpoints", se("{hosts: [db.internal], addresses: [10.1.0.0/16], ports: [{number: 5432, name: tcp, protocol: TCP}], resolution: STATIC, endpoints: [{address: 10.1.2.3, ports: {tcp: 5432}}]}")),
        bad("se no hosts", se("{ports: [{number: 80, name: http}]}"), "spec.hosts", "at least one host"),
        bad("se bad resolution enum", se("{hosts: [a.example.com], resolution: DYNAMIC}"), "spec.resolution", "unknown variant `DYNAMIC`"),
        bad("se duplicate port", se("{hosts: [a.example.com], ports: [{number: 80, name: http}, {number: 80, name: http2}]}"), "spec.ports[1].number", "already defined"),
        bad("se cidr with dns", se("{hosts: [a.example.com], addresses: [10.0.0.0/8], resolution: DNS}"), "spec.addresses", "only for NONE/STATIC"),
        bad("se bad protocol", se("{hosts: [a.example.com], ports: [{number: 80, name: http, protocol: HTTP3000}]}"), "spec.ports[0].protocol", "unrecognized protocol"),
        // Gateway
        ok("gw https", gw("{selector: {istio: ingressgateway}, servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['bookinfo/*.example.com'], tls: {mode: SIMPLE, credentialName: bookinfo-cert}}]}")),
        bad("gw https without tls", gw("{servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.example.com]}]}"), "spec.servers[0].tls", "must have TLS settings"),
        bad("gw short host", gw("{servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [reviews]}]}"), "spec.servers[0].hosts[0]", "short names"),
        bad("gw bad tls mode", gw("{servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.example.com], tls: {mode: SOMETIMES}}]}"), "spec.servers[0].tls.mode", "unknown variant `SOMETIMES`"),
        bad("gw no servers", gw("{}"), "spec.servers", "at least one server"),
        // AuthorizationPolicy
        ok("ap deny all with empty spec", ap("{}")),
        ok("ap deny path", ap("{selector: {matchLabels: {app: reviews}}, action: DENY, rules: [{to: [{operation: {paths: ['/admin*'], ports: ['9080']}}]}]}")),
        ok("ap allow principals", ap("{targetRefs: [{kind: Service, group: '', name: reviews}], rules: [{from: [{source: {principals: ['cluster.local/ns/default/sa/productpage', '*/sa/admin'], namespaces: ['prod-*']}}], when: [{key: 'request.headers[version]', values: [v1]}]}]}")),
        ok("ap custom with provider", ap("{action: CUSTOM, provider: {name: ext-authz}, rules: [{to: [{operation: {paths: ['/api/{*}/items/{**}']}}]}]}")),
        bad("ap selector with targetRefs", ap("{selector: {matchLabels: {app: a}}, targetRefs: [{kind: Service, name: a}]}"), "spec.selector", "only one of targetRefs or workloadSelector"),
        bad("ap custom without provider", ap("{action: CUSTOM, rules: [{}]}"), "spec.provider.name", "`provider.name` must not be empty"),
        bad("ap deny with provider", ap("{action: DENY, provider: {name: x}, rules: [{}]}"), "spec.provider", "must not be with non CUSTOM action, found DENY"),
        bad("ap deny without rules", ap("{action: DENY}"), "spec.rules", "DENY action without `rules`"),
        bad("ap unknown action", ap("{action: BLOCK}"), "spec.action", "unknown variant `BLOCK`"),
        bad("ap principal wildcard in middle", ap("{rules: [{from: [{source: {principals: ['cluster.local/*/sa/x']}}]}]}"), "spec.rules[0].from[0].source.principals[0]", "only as a prefix or a suffix"),
        bad("ap namespace malformed", ap("{rules: [{from: [{source: {namespaces: ['Bad_NS']}}]}]}"), "spec.rules[0].from[0].source.namespaces[0]", "not a valid namespace"),
        bad("ap empty source", ap("{rules: [{from: [{source: {}}]}]}"), "spec.rules[0].from[0].source", "must not be empty"),
        bad("ap bad port", ap("{rules: [{to: [{operation: {ports: ['70000']}}]}]}"), "spec.rules[0].to[0].operation.ports[0]", "bad port"),
        bad("ap bad condition key", ap("{rules: [{when: [{key: 'destination.labels[app]', values: [a]}]}]}"), "spec.rules[0].when[0].key", "replaced by the workload selector"),
        bad("ap bad ip block", ap("{rules: [{from: [{source: {ipBlocks: ['10.0.0.0/40']}}]}]}"), "spec.rules[0].from[0].source.ipBlocks[0]", "not a valid CIDR"),
        bad("ap bad path template", ap("{rules: [{to: [{operation: {paths: ['/a/{**}/b/{*}']}}]}]}"), "spec.rules[0].to[0].operation.paths[0]", "{**} is not the last operator"),
        bad("ap bad targetRef kind", ap("{targetRef: {kind: Deployment, name: x}}"), "spec.targetRef.kind", "not supported"),
        // PeerAuthentication
        ok("pa strict", pa("{mtls: {mode: STRICT}}")),
        ok("pa port level with selector", pa("{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}")),
        bad("pa port level without selector", pa("{mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: PERMISSIVE}}}"), "spec.portLevelMtls", "cannot have port level mTLS"),
        bad("pa unknown mode", pa("{mtls: {mode: SOMETIMES}}"), "spec.mtls.mode", "unknown variant `SOMETIMES`"),
        bad("pa port zero", pa("{selector: {matchLabels: {app: a}}, portLevelMtls: {0: {mode: STRICT}}}"), "spec.portLevelMtls.0", "port must be in range"),
        bad("pa wildcard selector", pa("{selector: {matchLabels: {app: '*'}}}"), "spec.selector.matchLabels.app", "wildcard is not supported"),
        // Kubernetes kinds
        ok("namespace ambient", "apiVersion: v1\nkind: Namespace\nmetadata: {name: bookinfo, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}\n".to_owned()),
        bad("namespace bad dataplane mode", "apiVersion: v1\nkind: Namespace\nmetadata: {name: bookinfo, labels: {istio.io/dataplane-mode: sidecar}}\n".to_owned(), "metadata.labels.istio.io/dataplane-mode", "unknown data plane mode"),
        bad("namespace bad name", "apiVersion: v1\nkind: Namespace\nmetadata: {name: Book_Info}\n".to_owned(), "metadata.name", "invalid name"),
        ok("service", "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, labels: {istio.io/use-waypoint: waypoint}}\nspec: {selector: {app: reviews}, ports: [{name: http, port: 9080, targetPort: 9080}]}\n".to_owned()),
        bad("service port out of range", "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec: {ports: [{name: http, port: 70000}]}\n".to_owned(), "spec.ports[0].port", "must be in the range 1..65535"),
        bad("service port wrong type", "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec: {ports: [{name: http, port: [1]}]}\n".to_owned(), "spec.ports[0].port", "invalid type"),
        bad("service bad waypoint label", "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, labels: {istio.io/use-waypoint: Way.Point}}\nspec: {ports: [{port: 80}]}\n".to_owned(), "metadata.labels.istio.io/use-waypoint", "must be a DNS label"),
        ok("pod", "apiVersion: v1\nkind: Pod\nmetadata: {name: reviews-v1-abc, labels: {app: reviews, version: v1}}\nspec: {serviceAccountName: bookinfo-reviews, containers: [{name: reviews, image: reviews:v1, ports: [{containerPort: 9080}]}]}\n".to_owned()),
        bad("pod without containers", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n".to_owned(), "spec.containers", "at least one container"),
        ok("service account", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: bookinfo-reviews}\n".to_owned()),
        ok("endpoint slice", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: reviews-abc}\naddressType: IPv4\nendpoints: [{addresses: [10.0.0.5]}]\nports: [{name: http, port: 9080}]\n".to_owned()),
        bad("endpoint slice bad address", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: reviews-abc}\naddressType: IPv4\nendpoints: [{addresses: [10.0.0.500]}]\n".to_owned(), "endpoints[0].addresses[0]", "not a valid IPv4 address"),
        ok("waypoint gateway", "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n".to_owned()),
        bad("waypoint gateway bad protocol", "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: QUIC}]}\n".to_owned(), "spec.listeners[0].protocol", "unsupported protocol"),
    ]
}

/// Loads and validates one document; returns every (path, reason) found.
fn findings(yaml: &str) -> Vec<(String, String)> {
    let (resources, errors) = load_str(Path::new("case.yaml"), yaml);
    let mut found: Vec<(String, String)> = errors
        .into_iter()
        .map(|e| match e {
            LoadError::Document { path, problem, .. } => (path, problem.to_string()),
            LoadError::Read { path, source } => (path.display().to_string(), source.to_string()),
        })
        .collect();
    for loaded in resources {
        found.extend(
            super::validate(&loaded.resource)
                .into_iter()
                .map(|e| (e.path, e.reason)),
        );
    }
    found
}

#[test]
fn table_of_documents() {
    let cases = cases();
    assert!(cases.len() >= 60, "table has {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let found = findings(&case.yaml);
        match case.expect {
            None if !found.is_empty() => {
                failures.push(format!("{}: expected valid, got {found:?}", case.name))
            }
            None => {}
            Some((path, reason)) => {
                let hit = found.iter().any(|(p, r)| p == path && r.contains(reason));
                if !hit {
                    failures.push(format!(
                        "{}: expected {path}: ...{reason}..., got {found:?}",
                        case.name
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing case(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_error_names_a_path() {
    for case in cases() {
        for (path, reason) in findings(&case.yaml) {
            assert!(
                !path.is_empty() && !reason.is_empty(),
                "{}: {path:?} {reason:?}",
                case.name
            );
        }
    }
}

#[test]
fn http_attributes_in_policies_node_agents_enforce_are_warned_about() {
    let warnings = |spec: &str| -> Vec<(String, String)> {
        let (resources, errors) = load_str(Path::new("t.yaml"), &ap(spec));
        assert!(errors.is_empty(), "{errors:?}");
        resources
            .iter()
            .flat_map(|r| super::warnings(&r.resource))
            .map(|w| (w.path, w.reason))
            .collect()
    };
    let deny = warnings(
        "{selector: {matchLabels: {app: a}}, action: DENY, rules: [{to: [{operation: {paths: [/admin], ports: ['80']}}]}]}",
    );
    assert_eq!(deny.len(), 1, "{deny:?}");
    assert_eq!(deny[0].0, "spec.rules[0].to[0].operation.paths");
    assert!(deny[0].1.contains("refuses every connection"), "{deny:?}");
    let allow = warnings(
        "{rules: [{from: [{source: {requestPrincipals: ['*']}}], when: [{key: 'request.auth.claims[iss]', values: [x]}]}]}",
    );
    assert_eq!(
        allow.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        [
            "spec.rules[0].from[0].source.requestPrincipals",
            "spec.rules[0].when[0] (request.auth.claims[iss])"
        ]
    );
    assert!(allow[0].1.contains("allow nothing"), "{allow:?}");
    // Enforced per request by a waypoint, or without HTTP attributes: nothing to say.
    assert!(
        warnings(
            "{targetRefs: [{kind: Service, group: '', name: s}], action: DENY, rules: [{to: [{operation: {paths: [/x]}}]}]}"
        )
        .is_empty()
    );
    assert!(warnings("{action: DENY, rules: [{to: [{operation: {ports: ['80']}}]}]}").is_empty());
}
