use super::*;

#[derive(Clone)]
struct Req {
    method: &'static str,
    scheme: &'static str,
    authority: &'static str,
    path: &'static str,
    headers: Vec<(String, String)>,
    port: u16,
    labels: Option<BTreeMap<String, String>>,
    namespace: Option<&'static str>,
}

fn get(path: &'static str) -> Req {
    Req {
        method: "GET",
        scheme: "http",
        authority: "reviews.default.svc.cluster.local",
        path,
        headers: Vec::new(),
        port: 9080,
        labels: None,
        namespace: None,
    }
}

impl Req {
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    fn scheme(mut self, s: &'static str) -> Self {
        self.scheme = s;
        self
    }
    fn authority(mut self, a: &'static str) -> Self {
        self.authority = a;
        self
    }
    fn header(mut self, n: &str, v: &str) -> Self {
        self.headers.push((n.to_owned(), v.to_owned()));
        self
    }
    fn port(mut self, p: u16) -> Self {
        self.port = p;
        self
    }
    fn labels(mut self, pairs: &[(&str, &str)]) -> Self {
        self.labels = Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        self
    }
    fn namespace(mut self, ns: &'static str) -> Self {
        self.namespace = Some(ns);
        self
    }
    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: self.method,
            scheme: self.scheme,
            authority: self.authority,
            path: self.path,
            query: None,
            headers: &self.headers,
            port: self.port,
            source_labels: self.labels.as_ref(),
            source_namespace: self.namespace,
        }
    }
}

fn exact(s: &str) -> Option<StringMatch> {
    Some(StringMatch::Exact(s.to_owned()))
}
fn prefix(s: &str) -> Option<StringMatch> {
    Some(StringMatch::Prefix(s.to_owned()))
}
fn regex(s: &str) -> Option<StringMatch> {
    Some(StringMatch::regex(s).unwrap())
}
fn uri(m: Option<StringMatch>) -> HttpMatch {
    HttpMatch {
        uri: m,
        ..Default::default()
    }
}
fn headers(list: Vec<KeyMatch>) -> HttpMatch {
    HttpMatch {
        headers: list,
        ..Default::default()
    }
}
fn without(list: Vec<KeyMatch>) -> HttpMatch {
    HttpMatch {
        without_headers: list,
        ..Default::default()
    }
}
fn query(list: Vec<KeyMatch>) -> HttpMatch {
    HttpMatch {
        query_params: list,
        ..Default::default()
    }
}

#[test]
fn http_match_table() {
    let cases: Vec<(&str, HttpMatch, Req, bool)> = vec![
        (
            "empty match accepts all",
            HttpMatch::default(),
            get("/anything"),
            true,
        ),
        ("uri exact", uri(exact("/ratings")), get("/ratings"), true),
        (
            "uri exact rejects longer",
            uri(exact("/ratings")),
            get("/ratings/1"),
            false,
        ),
        (
            "uri exact ignores query",
            uri(exact("/ratings")),
            get("/ratings?x=1"),
            true,
        ),
        (
            "uri exact ignores fragment",
            uri(exact("/ratings")),
            get("/ratings#top"),
            true,
        ),
        (
            "uri exact is case-sensitive",
            uri(exact("/ratings")),
            get("/Ratings"),
            false,
        ),
        (
            "uri prefix",
            uri(prefix("/api/")),
            get("/api/v1/users"),
            true,
        ),
        (
            "uri prefix not segment aware",
            uri(prefix("/api")),
            get("/apis"),
            true,
        ),
        (
            "uri prefix rejects",
            uri(prefix("/api/")),
            get("/web/api/"),
            false,
        ),
        (
            "uri prefix slash matches all",
            uri(prefix("/")),
            get("/x"),
            true,
        ),
        (
            "uri regex full match",
            uri(regex("/users/[0-9]+")),
            get("/users/42"),
            true,
        ),
        (
            "uri regex anchored at end",
            uri(regex("/users/[0-9]+")),
            get("/users/42/edit"),
            false,
        ),
        (
            "uri regex anchored at start",
            uri(regex("/users/[0-9]+")),
            get("/v1/users/42"),
            false,
        ),
        (
            "uri regex ignores query",
            uri(regex("/users/[0-9]+")),
            get("/users/42?edit=1"),
            true,
        ),
        (
            "ignoreUriCase exact",
            HttpMatch {
                ignore_uri_case: true,
                ..uri(exact("/Ratings"))
            },
            get("/rAtInGs"),
            true,
        ),
        (
            "ignoreUriCase prefix",
            HttpMatch {
                ignore_uri_case: true,
                ..uri(prefix("/API/"))
            },
            get("/api/x"),
            true,
        ),
        (
            "ignoreUriCase leaves regex alone",
            HttpMatch {
                ignore_uri_case: true,
                ..uri(regex("/api"))
            },
            get("/API"),
            false,
        ),
        (
            "regex with its own case flag",
            uri(regex("(?i)/api")),
            get("/API"),
            true,
        ),
        (
            "method exact",
            HttpMatch {
                method: exact("POST"),
                ..Default::default()
            },
            get("/").method("POST"),
            true,
        ),
        (
            "method case-sensitive",
            HttpMatch {
                method: exact("POST"),
                ..Default::default()
            },
            get("/").method("post"),
            false,
        ),
        (
            "method regex",
            HttpMatch {
                method: regex("GET|HEAD"),
                ..Default::default()
            },
            get("/").method("HEAD"),
            true,
        ),
        (
            "scheme exact",
            HttpMatch {
                scheme: exact("https"),
                ..Default::default()
            },
            get("/").scheme("https"),
            true,
        ),
        (
            "scheme mismatch",
            HttpMatch {
                scheme: exact("https"),
                ..Default::default()
            },
            get("/"),
            false,
        ),
        (
            "authority exact",
            HttpMatch {
                authority: exact("example.com"),
                ..Default::default()
            },
            get("/").authority("example.com"),
            true,
        ),
        (
            "authority exact keeps port",
            HttpMatch {
                authority: exact("example.com"),
                ..Default::default()
            },
            get("/").authority("example.com:8080"),
            false,
        ),
        (
            "authority prefix covers port",
            HttpMatch {
                authority: prefix("example.com"),
                ..Default::default()
            },
            get("/").authority("example.com:8080"),
            true,
        ),
        (
            "authority regex optional port",
            HttpMatch {
                authority: regex(r"example\.com(:\d+)?"),
                ..Default::default()
            },
            get("/").authority("example.com:80"),
            true,
        ),
        (
            "authority case-sensitive",
            HttpMatch {
                authority: exact("example.com"),
                ..Default::default()
            },
            get("/").authority("Example.com"),
            false,
        ),
        (
            "header exact",
            headers(vec![KeyMatch::header("end-user", exact("jason"))]),
            get("/").header("end-user", "jason"),
            true,
        ),
        (
            "header name case-insensitive",
            headers(vec![KeyMatch::header("End-User", exact("jason"))]),
            get("/").header("END-USER", "jason"),
            true,
        ),
        (
            "header value case-sensitive",
            headers(vec![KeyMatch::header("end-user", exact("jason"))]),
            get("/").header("end-user", "Jason"),
            false,
        ),
        (
            "header missing",
            headers(vec![KeyMatch::header("end-user", exact("jason"))]),
            get("/"),
            false,
        ),
        (
            "header prefix",
            headers(vec![KeyMatch::header("x-ver", prefix("v2"))]),
            get("/").header("x-ver", "v2.1"),
            true,
        ),
        (
            "header regex",
            headers(vec![KeyMatch::header("x-id", regex("[a-f0-9]{4}"))]),
            get("/").header("x-id", "beef"),
            true,
        ),
        (
            "header regex anchored",
            headers(vec![KeyMatch::header("x-id", regex("[a-f0-9]{4}"))]),
            get("/").header("x-id", "beefy"),
            false,
        ),
        (
            "header presence",
            headers(vec![KeyMatch::header("x-debug", None)]),
            get("/").header("x-debug", ""),
            true,
        ),
        (
            "header presence missing",
            headers(vec![KeyMatch::header("x-debug", None)]),
            get("/"),
            false,
        ),
        (
            "header repeated joined",
            headers(vec![KeyMatch::header("x-a", exact("1,2"))]),
            get("/").header("x-a", "1").header("X-A", "2"),
            true,
        ),
        (
            "headers anded",
            headers(vec![
                KeyMatch::header("a", exact("1")),
                KeyMatch::header("b", exact("2")),
            ]),
            get("/").header("a", "1"),
            false,
        ),
        (
            "without header absent value check",
            without(vec![KeyMatch::header("x-canary", exact("true"))]),
            get("/"),
            false,
        ),
        (
            "without header other value",
            without(vec![KeyMatch::header("x-canary", exact("true"))]),
            get("/").header("x-canary", "false"),
            true,
        ),
        (
            "without header same value",
            without(vec![KeyMatch::header("x-canary", exact("true"))]),
            get("/").header("x-canary", "true"),
            false,
        ),
        (
            "without header presence means absence",
            without(vec![KeyMatch::header("x-canary", None)]),
            get("/"),
            true,
        ),
        (
            "without header presence refuses present",
            without(vec![KeyMatch::header("X-Canary", None)]),
            get("/").header("x-canary", "no"),
            false,
        ),
        (
            "without header regex",
            without(vec![KeyMatch::header("user-agent", regex(".*curl.*"))]),
            get("/").header("user-agent", "Mozilla"),
            true,
        ),
        (
            "query exact",
            query(vec![KeyMatch::query("debug", exact("true"))]),
            get("/p?debug=true"),
            true,
        ),
        (
            "query exact mismatch",
            query(vec![KeyMatch::query("debug", exact("true"))]),
            get("/p?debug=false"),
            false,
        ),
        (
            "query decoded value",
            query(vec![KeyMatch::query("q", exact("a b/c"))]),
            get("/p?q=a%20b%2Fc"),
            true,
        ),
        (
            "query plus is space",
            query(vec![KeyMatch::query("q", exact("a b"))]),
            get("/p?q=a+b"),
            true,
        ),
        (
            "query first value wins",
            query(vec![KeyMatch::query("v", exact("1"))]),
            get("/p?v=1&v=2"),
            true,
        ),
        (
            "query later duplicate ignored",
            query(vec![KeyMatch::query("v", exact("2"))]),
            get("/p?v=1&v=2"),
            false,
        ),
        (
            "query key without value",
            query(vec![KeyMatch::query("flag", exact(""))]),
            get("/p?flag"),
            true,
        ),
        (
            "query presence",
            query(vec![KeyMatch::query("flag", None)]),
            get("/p?a=1&flag=x"),
            true,
        ),
        (
            "query missing",
            query(vec![KeyMatch::query("flag", None)]),
            get("/p?a=1"),
            false,
        ),
        (
            "query regex",
            query(vec![KeyMatch::query("id", regex("[0-9]+"))]),
            get("/p?id=123"),
            true,
        ),
        (
            "query prefix",
            query(vec![KeyMatch::query("lang", prefix("en"))]),
            get("/p?lang=en-US"),
            true,
        ),
        (
            "query name case-sensitive",
            query(vec![KeyMatch::query("Debug", None)]),
            get("/p?debug=1"),
            false,
        ),
        (
            "query ignores fragment",
            query(vec![KeyMatch::query("a", exact("1"))]),
            get("/p?a=1#frag"),
            true,
        ),
        (
            "port match",
            HttpMatch {
                port: Some(9080),
                ..Default::default()
            },
            get("/"),
            true,
        ),
        (
            "port mismatch",
            HttpMatch {
                port: Some(8080),
                ..Default::default()
            },
            get("/").port(9090),
            false,
        ),
        (
            "source labels subset",
            HttpMatch {
                source_labels: [("app".to_owned(), "web".to_owned())].into(),
                ..Default::default()
            },
            get("/").labels(&[("app", "web"), ("version", "v1")]),
            true,
        ),
        (
            "source labels value differs",
            HttpMatch {
                source_labels: [("app".to_owned(), "web".to_owned())].into(),
                ..Default::default()
            },
            get("/").labels(&[("app", "api")]),
            false,
        ),
        (
            "source labels unknown source",
            HttpMatch {
                source_labels: [("app".to_owned(), "web".to_owned())].into(),
                ..Default::default()
            },
            get("/"),
            false,
        ),
        (
            "source namespace",
            HttpMatch {
                source_namespace: Some("prod".to_owned()),
                ..Default::default()
            },
            get("/").namespace("prod"),
            true,
        ),
        (
            "source namespace differs",
            HttpMatch {
                source_namespace: Some("prod".to_owned()),
                ..Default::default()
            },
            get("/").namespace("dev"),
            false,
        ),
        (
            "source namespace unknown",
            HttpMatch {
                source_namespace: Some("prod".to_owned()),
                ..Default::default()
            },
            get("/"),
            false,
        ),
        (
            "all fields anded, one fails",
            HttpMatch {
                uri: prefix("/api"),
                method: exact("GET"),
                port: Some(1),
                ..Default::default()
            },
            get("/api"),
            false,
        ),
        (
            "all fields anded, all pass",
            HttpMatch {
                uri: prefix("/api"),
                method: exact("GET"),
                port: Some(9080),
                headers: vec![KeyMatch::header("x", None)],
                ..Default::default()
            },
            get("/api").header("x", "y"),
            true,
        ),
    ];
    assert!(cases.len() >= 50, "{}", cases.len());
    for (name, m, req, want) in cases {
        assert_eq!(m.matches(&req.view()), want, "case {name}");
    }
}

fn route(matches: Vec<HttpMatch>) -> HttpRoute {
    HttpRoute {
        name: None,
        matches,
    }
}

/// (case name, routes, request, expected (route index, match index)).
type SelectionCase<'a> = (
    &'a str,
    &'a [HttpRoute],
    Req,
    Option<(usize, Option<usize>)>,
);

#[test]
fn explicit_query_field_overrides_path() {
    let req = get("/p?a=1");
    let mut view = req.view();
    view.query = Some("a=2");
    assert!(query(vec![KeyMatch::query("a", exact("2"))]).matches(&view));
    assert!(!query(vec![KeyMatch::query("a", exact("1"))]).matches(&view));
}

#[test]
fn malformed_query_escapes_are_literal() {
    assert_eq!(first_query_value("a=%zz%4", "a").as_deref(), Some("%zz%4"));
    assert_eq!(first_query_value("a=%e2%82%ac", "a").as_deref(), Some("€"));
    assert_eq!(first_query_value("a%3Db=c", "a=b").as_deref(), Some("c"));
    assert_eq!(first_query_value("&&b=1", "b").as_deref(), Some("1"));
}

#[test]
fn istio_value_translation() {
    assert_eq!(IstioStringMatch::Unset.to_value_match().unwrap(), None);
    assert_eq!(IstioStringMatch::Regex("*").to_value_match().unwrap(), None);
    assert_eq!(
        IstioStringMatch::Exact("").to_value_match().unwrap(),
        Some(StringMatch::Exact(String::new()))
    );
    let m = IstioStringMatch::Regex("v[0-9]")
        .to_value_match()
        .unwrap()
        .unwrap();
    assert!(m.matches("v1") && !m.matches("v10"));
    assert!(matches!(
        IstioStringMatch::Regex("(").to_value_match(),
        Err(crate::PolicyError::InvalidRegex { .. })
    ));
    // A presence check from `regex: "*"` accepts any value, including an empty one.
    let presence = headers(vec![KeyMatch::header(
        "x-any",
        IstioStringMatch::Regex("*").to_value_match().unwrap(),
    )]);
    assert!(presence.matches(&get("/").header("x-any", "").view()));
}

#[test]
fn header_sources_agree() {
    let pairs = [("Content-Type", "text/plain"), ("x-a", "1"), ("X-A", "2")];
    let owned: Vec<(String, String)> = pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    let map: BTreeMap<String, String> =
        [("Content-Type".to_owned(), "text/plain".to_owned())].into();
    assert_eq!(pairs.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(owned.header("x-a").as_deref(), Some("1,2"));
    assert_eq!(map.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(map.header("x-a"), None);
}

#[test]
fn routes_round_trip_through_serde() {
    let routes = vec![route(vec![HttpMatch {
        uri: regex("/v[0-9]+/.*"),
        headers: vec![KeyMatch::header("x-user", exact("jason"))],
        query_params: vec![KeyMatch::query("debug", None)],
        ignore_uri_case: true,
        ..Default::default()
    }])];
    let json = serde_json::to_string(&routes).unwrap();
    let back: Vec<HttpRoute> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, routes);
    let req = get("/v2/x?debug").header("x-user", "jason");
    assert_eq!(
        select_route(&back, &req.view()).map(|s| s.route_index),
        Some(0)
    );
}

mod selection;
