//! DestinationRule: Istio's `ValidateDestinationRule`, `validateTrafficPolicy`,
//! `validateConnectionPool`, `validateLoadBalancer`, `validateOutlierDetection` (`validation.go`),
//! `ValidateTLS` and `ValidateLocalityLbSetting` (`agent/validation.go`) and the CRD's rules.

use super::*;

fn dr(spec: &str) -> String {
    doc(NET, "DestinationRule", spec)
}

fn policy(policy: &str) -> String {
    dr(&format!("{{host: reviews, trafficPolicy: {policy}}}"))
}

const NOT_APPLIED: &str = crate::validation::NOT_APPLIED;

#[test]
fn destination_rule_rules() {
    run(&[
        ok(
            "subsets and policy",
            "ValidateDestinationRule",
            dr(
                "{host: reviews, trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}, connectionPool: {tcp: {maxConnections: 100, connectTimeout: 30ms}, http: {http1MaxPendingRequests: 10, idleTimeout: 1h}}, outlierDetection: {consecutive5xxErrors: 7, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 50}}, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}}}}}]}",
            ),
        ),
        ok(
            "cookie without ttl",
            "validateLoadBalancer checks only the name",
            policy("{loadBalancer: {consistentHash: {httpCookie: {name: c}}}}"),
        ),
        ok(
            "hash without a key",
            "CRD oneOf allows none",
            policy("{loadBalancer: {consistentHash: {}}}"),
        ),
        ok(
            "port level settings",
            "validatePortTrafficPolicies",
            dr(
                "{host: '*.example.com', trafficPolicy: {portLevelSettings: [{port: {number: 80}, loadBalancer: {simple: ROUND_ROBIN}}], tls: {mode: ISTIO_MUTUAL}}}",
            ),
        ),
        ok(
            "upper case subset name",
            "validateSubsetName: labels.IsDNS1123Label",
            dr("{host: reviews, subsets: [{name: V1, labels: {version: v1}}]}"),
        ),
        ok(
            "zero tcp idle timeout",
            "validateConnectionPool: 0s disables the idle timeout",
            policy("{connectionPool: {tcp: {idleTimeout: 0s}}}"),
        ),
        bad(
            "zero http idle timeout",
            "validateConnectionPool: ValidateDuration",
            policy("{connectionPool: {http: {idleTimeout: 0s}}}"),
            "spec.trafficPolicy.connectionPool.http.idleTimeout",
            "greater than 1ms",
        ),
        ok(
            "warmup",
            "LoadBalancerSettings.warmup: applied as slow start",
            policy(
                "{loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 60s, minimumPercent: 10, aggression: 1.5}}}",
            ),
        ),
        ok(
            "warmup with its defaults, without simple",
            "validateLoadBalancer: only duration is required",
            policy("{loadBalancer: {warmup: {duration: 1ms}}}"),
        ),
        ok(
            "warmup aggression below 1",
            "validateLoadBalancer: aggression > 0 (not >= 1)",
            policy("{loadBalancer: {warmup: {duration: 10s, aggression: 0.5, minimumPercent: 0}}}"),
        ),
        ok(
            "deprecated warmupDurationSecs",
            "LoadBalancerSettings.warmupDurationSecs: applied as slow start",
            policy("{loadBalancer: {simple: LEAST_REQUEST, warmupDurationSecs: 30s}}"),
        ),
        bad(
            "warmup duration under 1ms",
            "validateLoadBalancer: agent.ValidateDuration",
            policy("{loadBalancer: {warmup: {duration: 0.0005s}}}"),
            "spec.trafficPolicy.loadBalancer.warmup.duration",
            "1ms",
        ),
        bad(
            "warmup in a subset",
            "validateSubset: validateTrafficPolicy: aggression > 0",
            dr(
                "{host: reviews, subsets: [{name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {warmup: {duration: 10s, aggression: 0}}}}]}",
            ),
            "spec.subsets[0].trafficPolicy.loadBalancer.warmup.aggression",
            "greater than 0",
        ),
        bad(
            "warmup without duration",
            "validateLoadBalancer: duration is required; CRD required",
            policy("{loadBalancer: {warmup: {minimumPercent: 5}}}"),
            "spec.trafficPolicy.loadBalancer.warmup.duration",
            "duration is required",
        ),
        bad(
            "warmup minimum percent",
            "validateLoadBalancer: minimumPercent <= 100",
            policy("{loadBalancer: {warmup: {duration: 300s, minimumPercent: 150}}}"),
            "spec.trafficPolicy.loadBalancer.warmup.minimumPercent",
            "less than or equal to 100",
        ),
        bad(
            "warmup aggression",
            "validateLoadBalancer: aggression > 0",
            policy("{loadBalancer: {warmup: {duration: 300s, aggression: -0.1}}}"),
            "spec.trafficPolicy.loadBalancer.warmup.aggression",
            "greater than 0",
        ),
        warns(
            "zone aware",
            "LoadBalancerSettings.zoneAwareLbSetting",
            policy(
                "{loadBalancer: {zoneAwareLbSetting: {enabled: true, minClusterSize: 3}}, outlierDetection: {consecutive5xxErrors: 5}}",
            ),
            "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting",
            NOT_APPLIED,
        ),
        bad(
            "locality and zone aware",
            "validateLoadBalancer: only one",
            policy(
                "{loadBalancer: {localityLbSetting: {enabled: true}, zoneAwareLbSetting: {enabled: true}}}",
            ),
            "spec.trafficPolicy.loadBalancer",
            "only one of localityLbSetting and zoneAwareLbSetting",
        ),
        ok(
            "http2 keepalive",
            "ConnectionPoolSettings.HTTPSettings.http2KeepAlive",
            policy("{connectionPool: {http: {http2KeepAlive: {interval: 10s, timeout: 5s}}}}"),
        ),
        bad(
            "http2 keepalive without timeout",
            "validateConnectionPool: http2 keepalive timeout is required",
            policy("{connectionPool: {http: {http2KeepAlive: {interval: 10s}}}}"),
            "spec.trafficPolicy.connectionPool.http.http2KeepAlive.timeout",
            "is required",
        ),
        bad(
            "maglev table not prime",
            "validateLoadBalancer: isPrime",
            policy(
                "{loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}}}",
            ),
            "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
            "must be a prime number",
        ),
        bad(
            "maglev table unset",
            "validateLoadBalancer: tableSize must be set",
            policy("{loadBalancer: {consistentHash: {useSourceIp: true, maglev: {}}}}"),
            "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
            "must be set",
        ),
        bad(
            "maglev table too large",
            "validateLoadBalancer: < 5000011",
            policy(
                "{loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 5000011}}}}",
            ),
            "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
            "must be less than 5000011",
        ),
        ok(
            "maglev prime table",
            "validateLoadBalancer; applied at waypoints",
            policy(
                "{loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}}",
            ),
        ),
        ok(
            "ring hash size",
            "validateLoadBalancer; applied at waypoints",
            policy(
                "{loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 2048}}}}",
            ),
        ),
        warns(
            "deprecated minimum ring size",
            "validateLoadBalancer: MinimumRingSize is deprecated",
            policy("{loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 1024}}}"),
            "spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize",
            "deprecated",
        ),
        bad(
            "minimum ring size with ring hash",
            "validateLoadBalancer",
            policy(
                "{loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 1024, ringHash: {minimumRingSize: 10}}}}",
            ),
            "spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize",
            "only one of MinimumRingSize or Maglev/Ringhash",
        ),
        bad(
            "duplicate cookie attribute",
            "validateLoadBalancer: duplicate cookie attribute name",
            policy(
                "{loadBalancer: {consistentHash: {httpCookie: {name: c, attributes: [{name: SameSite, value: Lax}, {name: SameSite}]}}}}",
            ),
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes[1].name",
            "duplicate cookie attribute",
        ),
        bad(
            "control character in a cookie attribute",
            "stricter than Istio: a generated Set-Cookie cannot carry it",
            policy(
                "{loadBalancer: {consistentHash: {httpCookie: {name: c, ttl: 10s, attributes: [{name: SameSite, value: \"Lax\\nX: y\"}]}}}}",
            ),
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes[0].value",
            "control character",
        ),
        warns(
            "deprecated consecutive errors",
            "validateOutlierDetection: consecutiveErrors deprecated",
            policy("{outlierDetection: {consecutiveErrors: 5}}"),
            "spec.trafficPolicy.outlierDetection.consecutiveErrors",
            "deprecated",
        ),
        bad(
            "local origin failures without split",
            "validateOutlierDetection",
            policy("{outlierDetection: {consecutiveLocalOriginFailures: 3}}"),
            "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
            "split external local origin errors is set to false",
        ),
        bad(
            "outlier error code",
            "CRD: outlierDetectionHttpErrorCodes 100..599",
            policy("{outlierDetection: {outlierDetectionHttpErrorCodes: [99]}}"),
            "spec.trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes[0]",
            "between 100 and 599",
        ),
        bad(
            "distribute and failover",
            "ValidateLocalityLbSetting",
            policy(
                "{loadBalancer: {localityLbSetting: {distribute: [{from: a, to: {b: 100}}], failover: [{from: a, to: b}]}}}",
            ),
            "spec.trafficPolicy.loadBalancer.localityLbSetting",
            "can not simultaneously specify 'distribute' and 'failover'",
        ),
        bad(
            "locality weights",
            "ValidateLocalityLbSetting: total locality weight != 100",
            policy(
                "{loadBalancer: {localityLbSetting: {distribute: [{from: a/*, to: {b/*: 50}}]}}}",
            ),
            "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to",
            "total locality weight 50 != 100",
        ),
        bad(
            "locality wildcard inside",
            "validateLocalities",
            policy(
                "{loadBalancer: {localityLbSetting: {distribute: [{from: 'a/*/c', to: {b: 100}}]}}}",
            ),
            "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute",
            "wildcard '*' number can not exceed 1 and must be in the end",
        ),
        warns(
            "failover without outlier detection",
            "ValidateLocalityLbSetting: warning",
            policy(
                "{loadBalancer: {localityLbSetting: {failover: [{from: us-east, to: us-west}]}}}",
            ),
            "spec.trafficPolicy.loadBalancer.localityLbSetting",
            "outlier detection policy must be provided",
        ),
        bad(
            "failover with topology priority",
            "ValidateLocalityLbSetting",
            policy(
                "{loadBalancer: {localityLbSetting: {failover: [{from: a, to: b}], failoverPriority: [topology.kubernetes.io/zone]}}, outlierDetection: {consecutive5xxErrors: 5}}",
            ),
            "spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority",
            "can not simultaneously set 'failover'",
        ),
        bad(
            "duplicate subset",
            "ValidateDestinationRule: duplicate subset names",
            dr(
                "{host: reviews, subsets: [{name: v1, labels: {version: v1}}, {name: v1, labels: {version: v2}}]}",
            ),
            "spec.subsets[1].name",
            "duplicate subset names",
        ),
        bad(
            "invalid subset label",
            "labels.Instance.Validate",
            dr("{host: reviews, subsets: [{name: v1, labels: {'bad key': v1}}]}"),
            "spec.subsets[0].labels.bad key",
            "invalid tag key",
        ),
        bad(
            "invalid subset name",
            "validateSubsetName",
            dr("{host: reviews, subsets: [{name: V_1}]}"),
            "spec.subsets[0].name",
            "subset name is invalid",
        ),
        bad(
            "unknown lb enum",
            "CRD enum",
            policy("{loadBalancer: {simple: FASTEST}}"),
            "spec.trafficPolicy.loadBalancer.simple",
            "unknown variant `FASTEST`",
        ),
        bad(
            "simple and hash",
            "CRD oneOf simple/consistentHash",
            policy("{loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}"),
            "spec.trafficPolicy.loadBalancer",
            "only one of simple or consistentHash",
        ),
        bad(
            "negative max connections",
            "validateConnectionPool",
            policy("{connectionPool: {tcp: {maxConnections: -1}}}"),
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
            "must be non-negative",
        ),
        bad(
            "bad outlier interval",
            "duration parse",
            policy("{outlierDetection: {interval: 5 minutes}}"),
            "spec.trafficPolicy.outlierDetection.interval",
            "invalid duration",
        ),
        bad(
            "ejection percent",
            "ValidatePercent",
            policy("{outlierDetection: {maxEjectionPercent: 150}}"),
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            "not in range 0..100",
        ),
        bad(
            "empty traffic policy",
            "validateTrafficPolicy",
            policy("{}"),
            "spec.trafficPolicy",
            "at least one field",
        ),
        bad(
            "tunnel with proxy protocol",
            "validateTrafficPolicy",
            policy(
                "{tunnel: {targetHost: a.example.com, targetPort: 443}, proxyProtocol: {version: V2}}",
            ),
            "spec.trafficPolicy",
            "tunnel and proxyProtocol must not be set together",
        ),
        ok(
            "proxy protocol v2",
            "validateProxyProtocol",
            policy("{proxyProtocol: {version: V2}}"),
        ),
        ok(
            "proxy protocol without a version",
            "validateProxyProtocol: 0 is V1",
            dr("{host: reviews, subsets: [{name: v1, trafficPolicy: {proxyProtocol: {}}}]}"),
        ),
        bad(
            "proxy protocol version",
            "CRD enum (validateProxyProtocol: V1 or V2)",
            policy("{proxyProtocol: {version: V3}}"),
            "spec.trafficPolicy.proxyProtocol.version",
            "unknown variant `V3`",
        ),
        bad(
            "proxy protocol per port",
            "PortTrafficPolicy has no proxyProtocol",
            policy("{portLevelSettings: [{port: {number: 80}, proxyProtocol: {version: V2}}]}"),
            "spec.trafficPolicy.portLevelSettings[0].proxyProtocol",
            "unknown field",
        ),
        bad(
            "tunnel protocol",
            "validateTunnelSettings",
            policy("{tunnel: {protocol: GET, targetHost: a.example.com, targetPort: 443}}"),
            "spec.trafficPolicy.tunnel.protocol",
            "must be \"CONNECT\" or \"POST\"",
        ),
        bad(
            "tunnel without a target host",
            "validateTunnelSettings (the CRD requires targetHost)",
            policy("{tunnel: {targetPort: 443}}"),
            "spec.trafficPolicy.tunnel.targetHost",
            "tunnel target host must be valid FQDN or IP address",
        ),
        bad(
            "tunnel target host",
            "validateTunnelSettings",
            dr(
                "{host: reviews, subsets: [{name: v1, trafficPolicy: {tunnel: {targetHost: 'a b', targetPort: 443}}}]}",
            ),
            "spec.subsets[0].trafficPolicy.tunnel.targetHost",
            "tunnel target host must be valid FQDN or IP address",
        ),
        bad(
            "tunnel target port zero",
            "validateTunnelSettings",
            policy("{tunnel: {targetHost: a.example.com, targetPort: 0}}"),
            "spec.trafficPolicy.tunnel.targetPort",
            "must be in the range 1..65535",
        ),
        bad(
            "tunnel target port above the range",
            "validateTunnelSettings",
            policy("{tunnel: {targetHost: 10.0.0.9, targetPort: 65536}}"),
            "spec.trafficPolicy.tunnel.targetPort",
            "must be in the range 1..65535",
        ),
        ok(
            "tunnel by POST to an address",
            "validateTunnelSettings",
            policy("{tunnel: {protocol: POST, targetHost: 10.0.0.9, targetPort: 65535}}"),
        ),
        bad(
            "port policy without port",
            "validatePortTrafficPolicies",
            policy("{portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}"),
            "spec.trafficPolicy.portLevelSettings[0].port",
            "must have valid port",
        ),
        bad(
            "mutual tls without certificate",
            "ValidateTLS",
            policy("{tls: {mode: MUTUAL, privateKey: /k}}"),
            "spec.trafficPolicy.tls.clientCertificate",
            "client certificate required",
        ),
        bad(
            "credential name with files",
            "ValidateTLS: credentialName excludes files",
            policy("{tls: {mode: SIMPLE, credentialName: c, caCertificates: /ca}}"),
            "spec.trafficPolicy.tls",
            "If credentialName is set",
        ),
        bad(
            "insecure skip verify with CA",
            "ValidateTLS: InsecureSkipVerify",
            policy("{tls: {mode: SIMPLE, insecureSkipVerify: true, caCertificates: /ca}}"),
            "spec.trafficPolicy.tls",
            "InsecureSkipVerify is set true",
        ),
        bad(
            "bad host",
            "ValidateWildcardDomain",
            dr("{host: 'a.*.com'}"),
            "spec.host",
            "invalid",
        ),
        bad(
            "unknown field",
            "istioctl validate: ApplyJSONStrict",
            dr("{host: reviews, subset: []}"),
            "spec.subset",
            "unknown field",
        ),
        bad(
            "selector with foreign export",
            "validateExportTo: workload selector",
            dr("{host: reviews, workloadSelector: {matchLabels: {app: a}}, exportTo: ['*']}"),
            "spec.exportTo",
            "cannot have exportTo beyond current namespace",
        ),
        warns(
            "selector",
            "DestinationRule.workloadSelector",
            dr(
                "{host: reviews, workloadSelector: {matchLabels: {app: a}}, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}",
            ),
            "spec.workloadSelector",
            NOT_APPLIED,
        ),
        warns(
            "empty selector",
            "validateWorkloadSelector: warning",
            dr("{host: reviews, workloadSelector: {}, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}"),
            "spec.workloadSelector",
            "without labels",
        ),
        bad(
            "wildcard selector",
            "validateWorkloadSelector",
            dr("{host: reviews, workloadSelector: {matchLabels: {app: '*'}}}"),
            "spec.workloadSelector.matchLabels.app",
            "wildcard is not supported",
        ),
        bad(
            "missing host",
            "CRD required: host",
            dr("{subsets: [{name: v1}]}"),
            "spec.host",
            "empty domain name",
        ),
    ]);
}

/// `proxyProtocol` is applied (the waypoint writes the header): nothing reports it otherwise.
#[test]
fn proxy_protocol_is_accepted_without_a_warning() {
    let (errors, warnings) = findings(&dr(
        "{host: reviews, trafficPolicy: {proxyProtocol: {version: V2}}, subsets: [{name: v1, trafficPolicy: {proxyProtocol: {version: V1}}}]}",
    ));
    assert_eq!(errors, Vec::<(String, String)>::new());
    assert_eq!(warnings, Vec::<(String, String)>::new());
}

/// `tunnel` and `insecureSkipVerify` are applied (the waypoint tunnels TCP, and skips the
/// server's verification when the user says so): nothing reports them otherwise.
#[test]
fn tunnel_and_insecure_skip_verify_are_accepted_without_a_warning() {
    let (errors, warnings) = findings(&dr(
        "{host: db.example.com, trafficPolicy: {tunnel: {targetHost: db.internal, targetPort: 5432}, tls: {mode: SIMPLE, insecureSkipVerify: true}}, subsets: [{name: v1, trafficPolicy: {tunnel: {protocol: POST, targetHost: 10.0.0.9, targetPort: 8443}}}]}",
    ));
    assert_eq!(errors, Vec::<(String, String)>::new());
    assert_eq!(warnings, Vec::<(String, String)>::new());
}

/// SIMPLE and MUTUAL `tls` are applied to every host, in the mesh too (the waypoint originates
/// them inside the HBONE tunnel, as Istio's waypoint does), at every level: nothing reports
/// them.
#[test]
fn simple_and_mutual_tls_are_accepted_without_a_warning() {
    let (errors, warnings) = findings(&dr(
        "{host: reviews, trafficPolicy: {tls: {mode: SIMPLE, sni: reviews.tls.example}, portLevelSettings: [{port: {number: 9081}, tls: {mode: MUTUAL, clientCertificate: /c, privateKey: /k}}]}, subsets: [{name: v1, trafficPolicy: {tls: {mode: MUTUAL, credentialName: reviews-client}}}]}",
    ));
    assert_eq!(errors, Vec::<(String, String)>::new());
    assert_eq!(warnings, Vec::<(String, String)>::new());
}
