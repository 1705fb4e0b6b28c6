//! The L7 authorization decision, case by case: which policy allows or denies which request.

use super::*;

#[test]
fn l7_authorization_table() {
    use PolicyAction::{Allow as A, Deny as D};
    let deny_admin = policy(
        "deny-admin",
        D,
        to(Operation {
            paths: paths(&["/admin", "/admin/*"]),
            ..Default::default()
        }),
    );
    let allow_not_admin = policy(
        "allow-not-admin",
        A,
        to(Operation {
            not_paths: paths(&["/admin"]),
            ..Default::default()
        }),
    );
    let allow_get_from_sleep = policy(
        "get-from-sleep",
        A,
        vec![HttpRule {
            from: vec![Source {
                principals: w(&["cluster.local/ns/default/sa/sleep"]),
                ..Default::default()
            }],
            to: vec![Operation {
                methods: w(&["GET", "HEAD"]),
                ..Default::default()
            }],
            when: vec![],
        }],
    );
    let allow_all = policy("allow-all", A, vec![HttpRule::default()]);
    let allow_nothing = policy("allow-nothing", A, vec![]);
    let not_principal = policy(
        "not-admin-sa",
        A,
        from(Source {
            not_principals: w(&["*/sa/admin"]),
            ..Default::default()
        }),
    );
    let ns_policy = policy(
        "ns",
        A,
        from(Source {
            namespaces: w(&["prod-*"]),
            not_namespaces: w(&["prod-legacy"]),
            ..Default::default()
        }),
    );
    let ip_policy = policy(
        "ips",
        A,
        from(Source {
            ip_blocks: nets(&["10.1.0.0/16"]),
            not_ip_blocks: nets(&["10.1.9.0/24"]),
            remote_ip_blocks: nets(&["192.0.2.0/24", "10.1.0.0/16"]),
            ..Default::default()
        }),
    );
    let hosts_policy = policy(
        "hosts",
        A,
        to(Operation {
            hosts: w(&[
                "api.example.com",
                "*.internal.example.com",
                "web.example.com:*",
            ]),
            not_hosts: w(&["secret.internal.example.com"]),
            ..Default::default()
        }),
    );
    let ports_policy = policy(
        "ports",
        A,
        to(Operation {
            ports: vec![8000, 8080],
            not_methods: w(&["DELETE"]),
            ..Default::default()
        }),
    );
    let header_policy = policy(
        "header",
        A,
        when(vec![cond(
            "request.headers[X-Tenant]",
            &["acme", "globex-*"],
            &["acme-test"],
        )]),
    );
    let no_debug = policy(
        "no-debug-header",
        D,
        when(vec![cond("request.headers[x-debug]", &["*"], &[])]),
    );
    let not_values = policy(
        "not-values",
        A,
        when(vec![cond("request.headers[x-env]", &[], &["prod"])]),
    );
    let conditions = policy(
        "conditions",
        A,
        when(vec![
            cond("source.ip", &["10.1.0.0/16"], &[]),
            cond("remote.ip", &["10.1.0.5"], &[]),
            cond("source.namespace", &["default"], &[]),
            cond("source.principal", &["cluster.local/ns/default/*"], &[]),
            cond("destination.port", &["8000"], &[]),
            cond("destination.ip", &["10.2.0.0/24"], &[]),
        ]),
    );
    let sni_policy = policy(
        "sni",
        A,
        when(vec![cond("connection.sni", &["*.example.com"], &[])]),
    );
    let template = policy(
        "template",
        A,
        to(Operation {
            paths: paths(&["/users/{*}/profile", "/static/{**}"]),
            ..Default::default()
        }),
    );
    let two_rules = policy(
        "two-rules",
        A,
        vec![
            HttpRule {
                to: vec![Operation {
                    methods: w(&["POST"]),
                    ..Default::default()
                }],
                ..Default::default()
            },
            HttpRule {
                to: vec![
                    Operation {
                        paths: paths(&["/a"]),
                        ..Default::default()
                    },
                    Operation {
                        paths: paths(&["/b*"]),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
        ],
    );
    let mut dry_deny = policy("dry", D, vec![HttpRule::default()]);
    dry_deny.dry_run = true;

    use Want::*;
    let cases: Vec<(&str, Vec<HttpAuthorization>, Req, Want)> = vec![
        ("no policy allows", vec![], get("/admin"), Allow),
        (
            "deny exact path",
            vec![deny_admin.clone()],
            get("/admin"),
            DeniedBy("deny-admin"),
        ),
        (
            "deny prefix path",
            vec![deny_admin.clone()],
            get("/admin/users"),
            DeniedBy("deny-admin"),
        ),
        (
            "bypass double slash",
            vec![deny_admin.clone()],
            get("//admin"),
            DeniedBy("deny-admin"),
        ),
        (
            "bypass dot segment",
            vec![deny_admin.clone()],
            get("/./admin"),
            DeniedBy("deny-admin"),
        ),
        (
            "bypass dot-dot",
            vec![deny_admin.clone()],
            get("/a/../admin"),
            DeniedBy("deny-admin"),
        ),
        (
            "bypass encoded slash upper",
            vec![deny_admin.clone()],
            get("/%2Fadmin"),
            DeniedBy("deny-admin"),
        ),
        (
            "bypass encoded slash lower",
            vec![deny_admin.clone()],
            get("/%2fadmin"),
            DeniedBy("deny-admin"),
        ),
        (
            "bypass fragment",
            vec![deny_admin.clone()],
            get("/admin#frag"),
            DeniedBy("deny-admin"),
        ),
        (
            "bypass query",
            vec![deny_admin.clone()],
            get("/admin?x=1"),
            DeniedBy("deny-admin"),
        ),
        (
            "bypass backslash",
            vec![deny_admin.clone()],
            get("/\\admin"),
            DeniedBy("deny-admin"),
        ),
        (
            "bypass encoded backslash",
            vec![deny_admin.clone()],
            get("/%5cadmin"),
            DeniedBy("deny-admin"),
        ),
        (
            "bypass encoded dots",
            vec![deny_admin.clone()],
            get("/x/%2e%2e/admin"),
            DeniedBy("deny-admin"),
        ),
        (
            "bypass dot-dot with encoded slash",
            vec![deny_admin.clone()],
            get("/x/..%2fadmin"),
            DeniedBy("deny-admin"),
        ),
        (
            "bypass encoded letter",
            vec![deny_admin.clone()],
            get("/%61dmin"),
            DeniedBy("deny-admin"),
        ),
        (
            "bypass encoded trailing slash",
            vec![deny_admin.clone()],
            get("/admin%2Fusers"),
            DeniedBy("deny-admin"),
        ),
        (
            "unnormalizable path denied",
            vec![deny_admin.clone()],
            get("/adm%in"),
            InvalidPath,
        ),
        (
            "unnormalizable path denied without policies",
            vec![],
            get("admin"),
            InvalidPath,
        ),
        (
            "other path passes deny",
            vec![deny_admin.clone()],
            get("/administrator"),
            Allow,
        ),
        (
            "case differs is another path",
            vec![deny_admin.clone()],
            get("/ADMIN"),
            Allow,
        ),
        (
            "allow notPaths refuses normalized admin",
            vec![allow_not_admin.clone()],
            get("//admin/"),
            Allow,
        ),
        (
            "allow notPaths refuses dot-dot admin",
            vec![allow_not_admin.clone()],
            get("/x/../admin"),
            NoAllowMatched,
        ),
        (
            "allow notPaths allows others",
            vec![allow_not_admin.clone()],
            get("/status"),
            Allow,
        ),
        (
            "deny beats allow",
            vec![allow_all.clone(), deny_admin.clone()],
            get("/admin"),
            DeniedBy("deny-admin"),
        ),
        (
            "empty allow denies all",
            vec![allow_nothing.clone()],
            get("/"),
            NoAllowMatched,
        ),
        (
            "empty rule allows all",
            vec![allow_all.clone()],
            get("/").plaintext(),
            Allow,
        ),
        ("dry-run deny not enforced", vec![dry_deny], get("/"), Allow),
        (
            "principal and method",
            vec![allow_get_from_sleep.clone()],
            get("/x"),
            Allow,
        ),
        (
            "method not listed",
            vec![allow_get_from_sleep.clone()],
            get("/x").method("POST"),
            NoAllowMatched,
        ),
        (
            "method case-sensitive",
            vec![allow_get_from_sleep.clone()],
            get("/x").method("get"),
            NoAllowMatched,
        ),
        (
            "principal mismatch",
            vec![allow_get_from_sleep.clone()],
            get("/x").from("default", "other"),
            NoAllowMatched,
        ),
        (
            "principal needs identity",
            vec![allow_get_from_sleep.clone()],
            get("/x").plaintext(),
            NoAllowMatched,
        ),
        (
            "notPrincipals matches plaintext",
            vec![not_principal.clone()],
            get("/").plaintext(),
            Allow,
        ),
        (
            "notPrincipals excludes",
            vec![not_principal.clone()],
            get("/").from("ops", "admin"),
            NoAllowMatched,
        ),
        (
            "namespace prefix",
            vec![ns_policy.clone()],
            get("/").from("prod-eu", "s"),
            Allow,
        ),
        (
            "namespace excluded",
            vec![ns_policy.clone()],
            get("/").from("prod-legacy", "s"),
            NoAllowMatched,
        ),
        (
            "namespace needs identity",
            vec![ns_policy.clone()],
            get("/").plaintext(),
            NoAllowMatched,
        ),
        ("ip blocks", vec![ip_policy.clone()], get("/"), Allow),
        (
            "not ip blocks",
            vec![ip_policy.clone()],
            get("/").source_ip("10.1.9.1"),
            NoAllowMatched,
        ),
        (
            "remote ip blocks",
            vec![ip_policy.clone()],
            get("/").remote_ip("192.0.2.44"),
            Allow,
        ),
        (
            "remote ip outside",
            vec![ip_policy.clone()],
            get("/").remote_ip("198.51.100.1"),
            NoAllowMatched,
        ),
        (
            "host exact case-insensitive",
            vec![hosts_policy.clone()],
            get("/").authority("API.Example.com"),
            Allow,
        ),
        (
            "host exact does not cover port",
            vec![hosts_policy.clone()],
            get("/").authority("api.example.com:8000"),
            NoAllowMatched,
        ),
        (
            "host wildcard prefix with port",
            vec![hosts_policy.clone()],
            get("/").authority("web.example.com:8443"),
            Allow,
        ),
        (
            "host suffix wildcard",
            vec![hosts_policy.clone()],
            get("/").authority("db.internal.example.com"),
            Allow,
        ),
        (
            "host notHosts",
            vec![hosts_policy.clone()],
            get("/").authority("secret.internal.EXAMPLE.com"),
            NoAllowMatched,
        ),
        (
            "port listed",
            vec![ports_policy.clone()],
            get("/").port(8080),
            Allow,
        ),
        (
            "port not listed",
            vec![ports_policy.clone()],
            get("/").port(9000),
            NoAllowMatched,
        ),
        (
            "notMethods",
            vec![ports_policy.clone()],
            get("/").method("DELETE"),
            NoAllowMatched,
        ),
        (
            "header value exact, name any case",
            vec![header_policy.clone()],
            get("/").header("x-tenant", "acme"),
            Allow,
        ),
        (
            "header value prefix",
            vec![header_policy.clone()],
            get("/").header("X-TENANT", "globex-1"),
            Allow,
        ),
        (
            "header notValues",
            vec![header_policy.clone()],
            get("/").header("x-tenant", "acme-test"),
            NoAllowMatched,
        ),
        (
            "header missing",
            vec![header_policy.clone()],
            get("/"),
            NoAllowMatched,
        ),
        (
            "header presence even empty",
            vec![no_debug.clone()],
            get("/").header("x-debug", ""),
            DeniedBy("no-debug-header"),
        ),
        (
            "header presence absent",
            vec![no_debug.clone()],
            get("/"),
            Allow,
        ),
        (
            "header only notValues, absent",
            vec![not_values.clone()],
            get("/"),
            Allow,
        ),
        (
            "header only notValues, hit",
            vec![not_values.clone()],
            get("/").header("x-env", "prod"),
            NoAllowMatched,
        ),
        (
            "all conditions hold",
            vec![conditions.clone()],
            get("/"),
            Allow,
        ),
        (
            "condition source.ip fails",
            vec![conditions.clone()],
            get("/").source_ip("10.9.0.1"),
            NoAllowMatched,
        ),
        (
            "condition remote.ip fails",
            vec![conditions.clone()],
            get("/").remote_ip("10.1.0.6"),
            NoAllowMatched,
        ),
        (
            "condition principal fails",
            vec![conditions.clone()],
            get("/").from("other", "sleep"),
            NoAllowMatched,
        ),
        (
            "condition port fails",
            vec![conditions.clone()],
            get("/").port(8001),
            NoAllowMatched,
        ),
        (
            "condition plaintext fails",
            vec![conditions.clone()],
            get("/").plaintext(),
            NoAllowMatched,
        ),
        (
            "sni suffix",
            vec![sni_policy.clone()],
            get("/").sni("api.example.com"),
            Allow,
        ),
        (
            "sni absent",
            vec![sni_policy.clone()],
            get("/"),
            NoAllowMatched,
        ),
        (
            "template one segment",
            vec![template.clone()],
            get("/users/42/profile"),
            Allow,
        ),
        (
            "template one segment only",
            vec![template.clone()],
            get("/users/42/x/profile"),
            NoAllowMatched,
        ),
        (
            "template empty segment merged away",
            vec![template.clone()],
            get("/users//profile"),
            NoAllowMatched,
        ),
        (
            "template rest",
            vec![template.clone()],
            get("/static/css/site.css"),
            Allow,
        ),
        (
            "template rest empty",
            vec![template.clone()],
            get("/static/"),
            Allow,
        ),
        (
            "template rest needs separator",
            vec![template.clone()],
            get("/static"),
            NoAllowMatched,
        ),
        (
            "rules ored, first",
            vec![two_rules.clone()],
            get("/z").method("POST"),
            Allow,
        ),
        (
            "rules ored, second to-list",
            vec![two_rules.clone()],
            get("/bee"),
            Allow,
        ),
        (
            "rules ored, none",
            vec![two_rules.clone()],
            get("/c"),
            NoAllowMatched,
        ),
    ];
    assert!(cases.len() >= 25);
    for (name, policies, req, want) in cases {
        let got = req.decide(&policies);
        let ok = match (&got, &want) {
            (Decision::Allow, Want::Allow) => true,
            (Decision::Deny(DenyReason::NoAllowPolicyMatched), Want::NoAllowMatched) => true,
            (Decision::Deny(DenyReason::InvalidPath), Want::InvalidPath) => true,
            (Decision::Deny(DenyReason::DeniedBy(p)), Want::DeniedBy(n)) => p.name == *n,
            _ => false,
        };
        assert!(ok, "case {name}: got {got:?}, want {want:?}");
    }
}
