//! VirtualService: Istio's `ValidateVirtualService` (`validation.go`), `validateHTTPRoute`
//! (`virtualservice.go`), `ValidateHTTPRetry` (`agent/validation.go`) and the CRD's rules.

use super::*;

fn vs(spec: &str) -> String {
    doc(NET, "VirtualService", spec)
}

/// A VirtualService with one HTTP route to `reviews` plus the given route fields.
fn route(fields: &str) -> String {
    vs(&format!(
        "{{hosts: [reviews], http: [{{route: [{{destination: {{host: reviews}}}}], {fields}}}]}}"
    ))
}

/// A VirtualService with one HTTP route matching the given match.
fn matching(m: &str) -> String {
    vs(&format!(
        "{{hosts: [reviews], http: [{{match: [{m}], route: [{{destination: {{host: reviews}}}}]}}]}}"
    ))
}

#[test]
fn virtual_service_rules() {
    run(&[
        ok(
            "canary split",
            "validateHTTPRouteDestinations",
            vs(
                "{hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v1}, weight: 90}, {destination: {host: reviews, subset: v2}, weight: 10}]}]}",
            ),
        ),
        ok(
            "header match with regex",
            "validateHTTPRouteMatchRequest",
            matching("{headers: {end-user: {exact: jason}}, uri: {regex: '^/api/v[0-9]+/.*'}}"),
        ),
        ok(
            "wildcard host and timeout",
            "ValidateWildcardDomain",
            route("timeout: 1.5s").replace("[reviews]", "['*.example.com']"),
        ),
        ok(
            "upper case host and subset",
            "labels.IsDNS1123Label allows upper case",
            vs(
                "{hosts: [Reviews.Bookinfo.svc.cluster.local], http: [{route: [{destination: {host: Reviews, subset: V1}}]}]}",
            ),
        ),
        ok(
            "retries with status codes",
            "ValidateHTTPRetry: http.StatusText",
            route(
                "retries: {attempts: 3, perTryTimeout: 500ms, retryOn: 'gateway-error,connect-failure,503'}",
            ),
        ),
        ok(
            "fault delay and abort",
            "validateHTTPFaultInjection",
            route(
                "fault: {delay: {fixedDelay: 7s, percentage: {value: 100}}, abort: {httpStatus: 500, percentage: {value: 10}}}",
            ),
        ),
        ok(
            "fault delay with no type",
            "validateHTTPFaultInjectionDelay has no default case",
            route("fault: {delay: {percentage: {value: 5}}}"),
        ),
        ok(
            "grpc abort",
            "validateGRPCStatus",
            route("fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 5}}}"),
        ),
        ok(
            "redirect",
            "validateHTTPRedirect",
            vs("{hosts: [reviews], http: [{redirect: {uri: /v2, redirectCode: 301}}]}"),
        ),
        ok(
            "redirect prefixRewrite",
            "validateHTTPRedirect: prefix_rewrite",
            vs(
                "{hosts: [reviews], http: [{match: [{uri: {prefix: /old}}], redirect: {prefixRewrite: /new}}]}",
            ),
        ),
        bad(
            "redirect prefixRewrite with exact match",
            "validateHTTPRedirect: prefix_rewrite requires prefix matches",
            vs(
                "{hosts: [reviews], http: [{match: [{uri: {exact: /old}}], redirect: {prefixRewrite: /new}}]}",
            ),
            "spec.http[0].redirect",
            "requires all URI matches to use prefix match type",
        ),
        bad(
            "redirect uri and prefixRewrite",
            "validateHTTPRedirect",
            vs("{hosts: [reviews], http: [{redirect: {uri: /a, prefixRewrite: /b}}]}"),
            "spec.http[0].redirect",
            "only specify one of uri or prefix_rewrite",
        ),
        bad(
            "redirect port and derivePort",
            "CRD oneOf port/derivePort",
            vs(
                "{hosts: [reviews], http: [{redirect: {port: 8080, derivePort: FROM_REQUEST_PORT}}]}",
            ),
            "spec.http[0].redirect",
            "only one of port or derivePort",
        ),
        ok(
            "direct response",
            "validateHTTPDirectResponse",
            vs(
                "{hosts: [reviews], http: [{directResponse: {status: 503, body: {string: unavailable}}}]}",
            ),
        ),
        ok(
            "direct response status 600",
            "validateHTTPStatus accepts 200..600",
            vs("{hosts: [reviews], http: [{directResponse: {status: 600}}]}"),
        ),
        warns(
            "direct response over 100KB",
            "validateHTTPDirectResponse: warning above 100KB",
            vs(&format!(
                "{{hosts: [reviews], http: [{{directResponse: {{status: 200, body: {{string: '{}'}}}}}}]}}",
                "a".repeat(100 * 1024 + 1)
            )),
            "spec.http[0].directResponse.body",
            "may impact control plane performance",
        ),
        ok(
            "regex rewrite, mirror, cors",
            "validateHTTPRewrite, validateCORSPolicy",
            route(
                "rewrite: {uriRegexRewrite: {match: '^/old/(.*)', rewrite: '/new/\\1'}}, mirror: {host: mirror}, mirrorPercentage: {value: 50}, corsPolicy: {allowOrigins: [{exact: 'https://a.example'}], allowMethods: [GET, POST, '*'], allowHeaders: ['*', x-b3], maxAge: 24h}",
            ),
        ),
        ok(
            "tcp and tls routes",
            "validateTCPRoute, validateTLSRoute",
            vs(
                "{hosts: ['*.example.com'], tcp: [{match: [{port: 9000, destinationSubnets: [10.0.0.0/8]}], route: [{destination: {host: db}}]}], tls: [{match: [{sniHosts: [a.example.com]}], route: [{destination: {host: a}}]}]}",
            ),
        ),
        ok(
            "empty uri prefix",
            "validateHTTPRouteMatchRequest: uri allows an empty prefix",
            matching("{uri: {prefix: ''}}"),
        ),
        bad(
            "empty header prefix",
            "validateStringMatch: prefix string match should not be empty",
            matching("{headers: {x: {prefix: ''}}}"),
            "spec.http[0].match[0].headers.x.prefix",
            "should not be empty",
        ),
        bad(
            "empty method prefix",
            "validateStringMatch",
            matching("{method: {prefix: ''}}"),
            "spec.http[0].match[0].method.prefix",
            "should not be empty",
        ),
        ok(
            "withoutHeaders star",
            "validateHTTPRouteMatchRequest: `*` means present",
            matching("{withoutHeaders: {x-legacy: {regex: '*'}}}"),
        ),
        bad(
            "bad header name",
            "ValidateHTTPHeaderNameOrJwtClaimRoute",
            matching("{headers: {'bad header': {exact: a}}}"),
            "spec.http[0].match[0].headers.bad header",
            "not a valid header name",
        ),
        ok(
            "pseudo header match",
            "ValidateHTTPHeaderNameOrJwtClaimRoute: pseudo headers",
            matching("{headers: {':authority': {exact: a}}}"),
        ),
        bad(
            "jwt claim route for the mesh",
            "ValidateVirtualService: JWT claim routing only for gateways",
            matching("{headers: {'@request.auth.claims.group': {exact: admin}}}"),
            "spec.http[0].match[0].headers.@request.auth.claims.group",
            "only supported for gateway",
        ),
        ok(
            "jwt claim route at a gateway",
            "ValidateVirtualService: JWT claim routing at gateways",
            vs(
                "{hosts: [a.example.com], gateways: [gw], http: [{match: [{headers: {'@request.auth.claims[group]': {exact: admin}}}], route: [{destination: {host: reviews}}]}]}",
            ),
        ),
        bad(
            "source namespace",
            "validateHTTPRouteMatchRequest: IsDNS1123Label",
            matching("{sourceNamespace: 'a.b'}"),
            "spec.http[0].match[0].sourceNamespace",
            "is invalid",
        ),
        bad(
            "negative weight",
            "validateWeight",
            vs(
                "{hosts: [reviews], http: [{route: [{destination: {host: reviews}, weight: 110}, {destination: {host: reviews, subset: v2}, weight: -10}]}]}",
            ),
            "spec.http[0].route[1].weight",
            "weight -10 < 0",
        ),
        bad(
            "weights sum to zero",
            "validateHTTPRouteDestinations: total destination weight = 0",
            vs(
                "{hosts: [reviews], http: [{route: [{destination: {host: a}, weight: 0}, {destination: {host: b}, weight: 0}]}]}",
            ),
            "spec.http[0].route",
            "total destination weight = 0",
        ),
        bad(
            "invalid regex",
            "validateStringRegexp",
            matching("{uri: {regex: '(unclosed'}}"),
            "spec.http[0].match[0].uri.regex",
            "invalid regex",
        ),
        bad(
            "oversized regex",
            "validateStringRegexp: max length 1024",
            matching(&format!(
                "{{headers: {{x: {{regex: '{}'}}}}}}",
                "a".repeat(1100)
            )),
            "spec.http[0].match[0].headers.x.regex",
            "regex is too large",
        ),
        bad(
            "bad timeout",
            "duration parse",
            route("timeout: '10'"),
            "spec.http[0].timeout",
            "missing unit",
        ),
        bad(
            "zero timeout",
            "ValidateDuration; CRD CEL duration(self) >= duration('1ms')",
            route("timeout: 0s"),
            "spec.http[0].timeout",
            "greater than 1ms",
        ),
        bad(
            "sub-millisecond timeout",
            "ValidateDuration",
            route("timeout: 500us"),
            "spec.http[0].timeout",
            "greater than 1ms",
        ),
        bad(
            "negative attempts",
            "ValidateHTTPRetry",
            route("retries: {attempts: -1}"),
            "spec.http[0].retries.attempts",
            "attempts cannot be negative",
        ),
        bad(
            "retry policy with zero attempts",
            "ValidateHTTPRetry",
            route("retries: {attempts: 0, retryOn: 5xx}"),
            "spec.http[0].retries.attempts",
            "attempts are set to 0",
        ),
        bad(
            "unknown retryOn",
            "ValidateHTTPRetry: supportedRetryOnPolicies",
            route("retries: {attempts: 2, retryOn: '5xx,bogus'}"),
            "spec.http[0].retries.retryOn",
            "\"bogus\" is not a valid retryOn policy",
        ),
        bad(
            "retryOn with unknown status",
            "ValidateHTTPRetry: http.StatusText",
            route("retries: {attempts: 2, retryOn: '599'}"),
            "spec.http[0].retries.retryOn",
            "not a valid retryOn policy",
        ),
        ok(
            "retryIgnorePreviousHosts",
            "HTTPRetry.retryIgnorePreviousHosts",
            route("retries: {attempts: 2, retryIgnorePreviousHosts: false}"),
        ),
        bad(
            "fault without delay or abort",
            "validateHTTPFaultInjection",
            route("fault: {}"),
            "spec.http[0].fault",
            "must have an abort and/or a delay",
        ),
        bad(
            "abort status out of range",
            "validateHTTPStatus",
            route("fault: {abort: {httpStatus: 700}}"),
            "spec.http[0].fault.abort.httpStatus",
            "not in range 200-599",
        ),
        bad(
            "abort unknown grpc status",
            "validateGRPCStatus",
            route("fault: {abort: {grpcStatus: NOPE}}"),
            "spec.http[0].fault.abort.grpcStatus",
            "is not supported",
        ),
        warns(
            "abort without a type",
            "validateHTTPFaultInjectionAbort: abort configured, but error type not set",
            route("fault: {abort: {percentage: {value: 1}}}"),
            "spec.http[0].fault.abort",
            "error type not set",
        ),
        bad(
            "fault percentage over 100",
            "validatePercentage",
            route("fault: {delay: {fixedDelay: 1s, percentage: {value: 150}}}"),
            "spec.http[0].fault.delay.percentage.value",
            "neither 0.0, nor in range",
        ),
        bad(
            "exponential delay",
            "validateHTTPFaultInjectionDelay: exponentialDelay not supported yet",
            route("fault: {delay: {exponentialDelay: 1s}}"),
            "spec.http[0].fault.delay.exponentialDelay",
            "not supported yet",
        ),
        bad(
            "mirror percentage over 100",
            "validateHTTPRoute: mirror_percentage",
            route("mirror: {host: m}, mirrorPercentage: {value: 101}"),
            "spec.http[0].mirrorPercentage.value",
            "max value of 100",
        ),
        warns(
            "deprecated mirrorPercent",
            "validateHTTPRoute: deprecated mirrorPercent",
            route("mirror: {host: m}, mirrorPercent: 50"),
            "spec.http[0].mirrorPercent",
            "deprecated",
        ),
        ok(
            "mirror_percent spelling",
            "CRD: mirror_percent",
            route("mirror: {host: m}, mirror_percent: 50"),
        ),
        bad(
            "mirror and mirrors",
            "validateHTTPRouteConflict",
            route("mirror: {host: m}, mirrors: [{destination: {host: n}}]"),
            "spec.http[0].mirrors",
            "both mirror and mirrors",
        ),
        bad(
            "redirect with route",
            "validateHTTPRouteConflict",
            route("redirect: {uri: /x}"),
            "spec.http[0].redirect",
            "cannot contain both route and redirect",
        ),
        bad(
            "direct response with route",
            "validateHTTPRouteConflict",
            route("directResponse: {status: 200}"),
            "spec.http[0].directResponse",
            "both route and direct_response",
        ),
        bad(
            "direct response bad status",
            "validateHTTPStatus",
            vs("{hosts: [reviews], http: [{directResponse: {status: 99}}]}"),
            "spec.http[0].directResponse.status",
            "not in range 200-599",
        ),
        bad(
            "no action",
            "validateHTTPRouteConflict",
            matching("{uri: {prefix: /}}")
                .replace("route: [{destination: {host: reviews}}]", "name: r"),
            "spec.http[0]",
            "route, redirect or direct_response is required",
        ),
        bad(
            "rewrite without anything",
            "validateHTTPRewrite",
            route("rewrite: {}"),
            "spec.http[0].rewrite",
            "must specify at least one",
        ),
        bad(
            "authority set twice",
            "validateAuthorityRewrite",
            route("rewrite: {authority: a}, headers: {request: {set: {host: b}}}"),
            "spec.http[0].headers.request",
            "cannot be set multiple times",
        ),
        bad(
            "bad header value",
            "ValidateHTTPHeaderValue: Envoy's header parser",
            route("headers: {request: {set: {x: 'a%b'}}}"),
            "spec.http[0].headers.request.set.x",
            "header value configuration",
        ),
        ok(
            "envoy variable in header value",
            "ValidateHTTPHeaderValue",
            route("headers: {request: {set: {x-host: '%HOSTNAME%', x-pct: '100%%'}}}"),
        ),
        bad(
            "remove host header",
            "ValidateHTTPHeaderOperationName",
            route("headers: {request: {remove: [host]}}"),
            "spec.http[0].headers.request.remove[0]",
            "cannot set Host header",
        ),
        bad(
            "host with trailing wildcard",
            "ValidateWildcardDomain",
            route("timeout: 1s").replace("[reviews]", "['foo.*']"),
            "spec.hosts[0]",
            "invalid",
        ),
        bad(
            "star host for mesh",
            "ValidateVirtualService: * not for the mesh gateway",
            route("timeout: 1s").replace("[reviews]", "['*']"),
            "spec.hosts[0]",
            "wildcard host * is not allowed",
        ),
        bad(
            "duplicate hosts",
            "ValidateVirtualService: host.Name.Matches",
            vs("{hosts: ['*.foo.com', 'a.foo.com'], http: [{route: [{destination: {host: a}}]}]}"),
            "spec.hosts[0]",
            "duplicate hosts",
        ),
        bad(
            "star destination",
            "validateDestination",
            vs("{hosts: [reviews], http: [{route: [{destination: {host: '*'}}]}]}"),
            "spec.http[0].route[0].destination.host",
            "invalid destination host",
        ),
        bad(
            "unknown field",
            "istioctl validate: ApplyJSONStrict",
            route("retrys: {attempts: 1}"),
            "spec.http[0].retrys",
            "unknown field",
        ),
        bad(
            "empty",
            "ValidateVirtualService",
            vs("{hosts: [reviews]}"),
            "spec",
            "http, tcp or tls must be provided",
        ),
        bad(
            "tls sni not in hosts",
            "validateSniHost",
            vs(
                "{hosts: [a.example.com], tls: [{match: [{sniHosts: [b.example.com]}], route: [{destination: {host: b}}]}]}",
            ),
            "spec.tls[0].match[0].sniHosts[0]",
            "not a compatible subset",
        ),
        warns(
            "tls sni is an IP",
            "validateSniHost: IP address warning",
            vs(
                "{hosts: [a.example.com], tls: [{match: [{sniHosts: [10.0.0.1]}], route: [{destination: {host: b}}]}]}",
            ),
            "spec.tls[0].match[0].sniHosts[0]",
            "goes against SNI spec",
        ),
        warns(
            "tls routes",
            "VirtualService.tls",
            vs(
                "{hosts: [a.example.com], tls: [{match: [{sniHosts: [a.example.com]}], route: [{destination: {host: b}}]}]}",
            ),
            "spec.tls",
            NOT_APPLIED,
        ),
        bad(
            "unknown cors method",
            "validateCORSHTTPMethod",
            route("corsPolicy: {allowMethods: [FETCH]}"),
            "spec.http[0].corsPolicy.allowMethods[0]",
            "not a supported HTTP method",
        ),
        bad(
            "cors max age below a second",
            "validateCORSPolicy: seconds precision",
            route("corsPolicy: {maxAge: 1500ms}"),
            "spec.http[0].corsPolicy.maxAge",
            "seconds precision",
        ),
        ok(
            "unmatched preflights spelling",
            "CRD enum UNSPECIFIED, FORWARD, IGNORE",
            route("corsPolicy: {unmatchedPreflights: UNSPECIFIED}"),
        ),
        ok(
            "unmatched preflights answered",
            "CorsPolicy_IGNORE: forwardNotMatchingPreflights false",
            route(
                "corsPolicy: {allowOrigins: [{exact: 'https://a.example'}], unmatchedPreflights: IGNORE}",
            ),
        ),
        bad(
            "unmatched preflights misspelled",
            "CRD enum UNSPECIFIED, FORWARD, IGNORE",
            route("corsPolicy: {unmatchedPreflights: DROP}"),
            "spec.http[0].corsPolicy.unmatchedPreflights",
            "unknown variant",
        ),
        bad(
            "bad gateway name",
            "validateGatewayNames",
            vs(
                "{hosts: [a.example.com], gateways: ['ns/Bad_Name'], http: [{route: [{destination: {host: a}}]}]}",
            ),
            "spec.gateways[0]",
            "invalid value for gateway name",
        ),
        warns(
            "legacy gateway name",
            "validateGatewayNames: legacy FQDN warning",
            vs(
                "{hosts: [a.example.com], gateways: [gw.istio-system], http: [{route: [{destination: {host: a}}]}]}",
            ),
            "spec.gateways[0]",
            "prefer the <namespace>/<name> format",
        ),
        ok(
            "gateway-only routes (applied by gateway proxies)",
            "VirtualService.gateways without mesh",
            vs(
                "{hosts: [a.example.com], gateways: [istio-system/gw], http: [{route: [{destination: {host: a}}]}]}",
            ),
        ),
        bad(
            "delegate with gateways",
            "ValidateVirtualService: delegate",
            vs("{gateways: [gw], http: [{route: [{destination: {host: a}}]}]}"),
            "spec.gateways",
            "delegate virtual service must have no gateways",
        ),
        bad(
            "root route with redirect and delegate",
            "validateHTTPRouteConflict: RootRoute",
            vs("{hosts: [a], http: [{delegate: {name: d}, redirect: {uri: /x}}]}"),
            "spec.http[0].redirect",
            "must not specify redirect",
        ),
        bad(
            "export to none",
            "visibility.Instance.Validate",
            route("timeout: 1s").replace("http:", "exportTo: ['~'], http:"),
            "spec.exportTo[0]",
            "exportTo ~ (none) is not allowed",
        ),
        bad(
            "export to dot and own namespace",
            "validateExportTo: duplicate . and namespace",
            route("timeout: 1s").replace("http:", "exportTo: [ns, '.'], http:"),
            "spec.exportTo[1]",
            "duplicate entries in exportTo: . and current namespace",
        ),
        warns(
            "unreachable rule",
            "analyzeUnreachableHTTPRules (IST0130)",
            vs(
                "{hosts: [a], http: [{route: [{destination: {host: a}}]}, {match: [{uri: {exact: /x}}], route: [{destination: {host: a}}]}]}",
            ),
            "spec.http[1]",
            "route without matches defined before",
        ),
        warns(
            "duplicate match",
            "analyzeUnreachableHTTPRules (IST0131)",
            vs(
                "{hosts: [a], http: [{match: [{uri: {exact: /x}}], route: [{destination: {host: a}}]}, {match: [{uri: {exact: /x}}, {uri: {exact: /y}}], route: [{destination: {host: b}}]}]}",
            ),
            "spec.http[1].match[0]",
            "is not used (duplicate/overlapping match in rule #0)",
        ),
        warns(
            "overlapping prefix",
            "coveredValidation (IST0131)",
            vs(
                "{hosts: [a], http: [{match: [{uri: {prefix: /debug}}], route: [{destination: {host: a}}]}, {match: [{uri: {prefix: /debugs}}], route: [{destination: {host: b}}]}]}",
            ),
            "spec.http[1].match[0]",
            "of prefix /debugs is not used",
        ),
    ]);
}

const NOT_APPLIED: &str = crate::validation::NOT_APPLIED;

#[test]
fn reachability_warnings_carry_istioctl_codes() {
    let yaml = vs(
        "{hosts: [a], http: [{route: [{destination: {host: a}}]}, {route: [{destination: {host: b}}]}]}",
    );
    let report = crate::loader::load_str(std::path::Path::new("x.yaml"), &yaml);
    let result = crate::validation::validate(&report.resources[0].resource);
    let codes: Vec<&str> = result
        .warnings
        .iter()
        .filter_map(|w| w.code.map(|c| c.code))
        .collect();
    assert_eq!(codes, ["IST0130"], "{:?}", result.warnings);
}
