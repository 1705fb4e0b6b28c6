use std::collections::BTreeMap;

use super::*;
use crate::request_auth::RequestAuth;

struct Req {
    method: &'static str,
    authority: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    port: u16,
    identity: Option<SpiffeId>,
    source_ip: IpAddr,
    remote_ip: IpAddr,
    sni: Option<&'static str>,
    auth: Option<RequestAuth>,
}

fn get(path: &'static str) -> Req {
    Req {
        method: "GET",
        authority: "httpbin.default.svc.cluster.local",
        path,
        headers: Vec::new(),
        port: 8000,
        identity: Some(SpiffeId::new("cluster.local", "default", "sleep").unwrap()),
        source_ip: "10.1.0.5".parse().unwrap(),
        remote_ip: "10.1.0.5".parse().unwrap(),
        sni: None,
        auth: None,
    }
}

impl Req {
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    fn authority(mut self, a: &'static str) -> Self {
        self.authority = a;
        self
    }
    fn header(mut self, n: &'static str, v: &'static str) -> Self {
        self.headers.push((n, v));
        self
    }
    fn port(mut self, p: u16) -> Self {
        self.port = p;
        self
    }
    fn from(mut self, ns: &str, sa: &str) -> Self {
        self.identity = Some(SpiffeId::new("cluster.local", ns, sa).unwrap());
        self
    }
    fn plaintext(mut self) -> Self {
        self.identity = None;
        self
    }
    fn source_ip(mut self, ip: &str) -> Self {
        self.source_ip = ip.parse().unwrap();
        self
    }
    fn remote_ip(mut self, ip: &str) -> Self {
        self.remote_ip = ip.parse().unwrap();
        self
    }
    fn jwt(mut self, principal: &str, claims: serde_json::Value) -> Self {
        let claims = claims.as_object().cloned().unwrap_or_default();
        self.auth = Some(RequestAuth {
            principal: principal.to_owned(),
            audiences: claims
                .get("aud")
                .and_then(|a| a.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            presenter: claims
                .get("azp")
                .and_then(|a| a.as_str())
                .map(str::to_owned),
            claims,
        });
        self
    }
    fn sni(mut self, sni: &'static str) -> Self {
        self.sni = Some(sni);
        self
    }
    fn decide(&self, policies: &[HttpAuthorization]) -> Decision {
        let request = RequestView {
            method: self.method,
            scheme: "http",
            authority: self.authority,
            path: self.path,
            query: None,
            headers: &self.headers,
            port: self.port,
            source_labels: None::<&BTreeMap<String, String>>,
            source_namespace: self.identity.as_ref().map(SpiffeId::namespace),
        };
        evaluate_http(
            policies,
            &HttpAuthzRequest {
                request,
                source_identity: self.identity.as_ref(),
                source_ip: self.source_ip,
                remote_ip: self.remote_ip,
                destination_ip: "10.2.0.9".parse().unwrap(),
                sni: self.sni,
                auth: self.auth.as_ref(),
            },
        )
    }
}

fn w(values: &[&str]) -> Vec<WildcardMatch> {
    values
        .iter()
        .map(|v| WildcardMatch::parse_istio(v))
        .collect()
}

fn paths(values: &[&str]) -> Vec<PathPattern> {
    values
        .iter()
        .map(|v| PathPattern::parse(v).unwrap())
        .collect()
}

fn nets(values: &[&str]) -> Vec<IpNet> {
    values.iter().map(|v| v.parse().unwrap()).collect()
}

fn cond(key: &str, values: &[&str], not_values: &[&str]) -> Condition {
    let own = |list: &[&str]| list.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>();
    Condition::parse(key, &own(values), &own(not_values)).unwrap()
}

fn policy(name: &str, action: PolicyAction, rules: Vec<HttpRule>) -> HttpAuthorization {
    HttpAuthorization {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        action,
        rules,
        dry_run: false,
    }
}

fn to(op: Operation) -> Vec<HttpRule> {
    vec![HttpRule {
        to: vec![op],
        ..Default::default()
    }]
}

fn from(src: Source) -> Vec<HttpRule> {
    vec![HttpRule {
        from: vec![src],
        ..Default::default()
    }]
}

fn when(conditions: Vec<Condition>) -> Vec<HttpRule> {
    vec![HttpRule {
        when: conditions,
        ..Default::default()
    }]
}

/// What a case expects of the decision.
#[derive(Debug)]
enum Want {
    Allow,
    DeniedBy(&'static str),
    NoAllowMatched,
    InvalidPath,
}

#[test]
fn condition_parsing_rejects_what_cannot_be_enforced() {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    assert!(matches!(
        Condition::parse("request.auth.claims[]", &s(&["a"]), &[]),
        Err(PolicyError::UnsupportedConditionKey { .. })
    ));
    assert!(matches!(
        Condition::parse("request.headers[]", &s(&["a"]), &[]),
        Err(PolicyError::UnsupportedConditionKey { .. })
    ));
    assert!(matches!(
        Condition::parse("source.ip", &s(&["not-an-ip"]), &[]),
        Err(PolicyError::InvalidConditionValue { .. })
    ));
    assert!(matches!(
        Condition::parse("destination.port", &[], &s(&["70000"])),
        Err(PolicyError::InvalidConditionValue { .. })
    ));
    assert!(matches!(
        Condition::parse("source.namespace", &[], &[]),
        Err(PolicyError::EmptyCondition { .. })
    ));
    let single_ip = Condition::parse("source.ip", &s(&["10.0.0.1"]), &[]).unwrap();
    assert_eq!(
        single_ip.values,
        vec![ConditionValue::Cidr("10.0.0.1/32".parse().unwrap())]
    );
}

#[test]
fn path_templates_must_be_whole_segments() {
    for bad in ["/a/{**}/b", "/a/x{*}", "a/{*}", "/a/{*}.png"] {
        assert!(PathPattern::parse(bad).is_err(), "{bad}");
    }
    assert!(matches!(
        PathPattern::parse("/a/*").unwrap(),
        PathPattern::Wildcard(WildcardMatch::Prefix(_))
    ));
}

#[test]
fn deny_response_constants_are_istios() {
    assert_eq!(crate::ACCESS_DENIED_STATUS, 403);
    assert_eq!(crate::ACCESS_DENIED_BODY, "RBAC: access denied");
}

#[test]
fn policies_round_trip_through_serde() {
    let p = policy(
        "p",
        PolicyAction::Deny,
        vec![HttpRule {
            from: vec![Source {
                not_principals: w(&["*"]),
                ..Default::default()
            }],
            to: vec![Operation {
                paths: paths(&["/admin/{**}"]),
                ..Default::default()
            }],
            when: vec![cond("request.headers[x-a]", &["b*"], &[])],
        }],
    );
    let json = serde_json::to_string(&p).unwrap();
    let back: HttpAuthorization = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    let req = get("/admin/x").plaintext().header("x-a", "bc");
    assert_eq!(
        req.decide(std::slice::from_ref(&back)),
        Decision::Deny(DenyReason::DeniedBy(back.policy_ref()))
    );
}

mod request_auth;
mod table;
mod tcp;
mod trust_domains;
