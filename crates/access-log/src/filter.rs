//! Telemetry's `accessLogging[].filter.expression`: a CEL expression over Envoy's attributes
//! (Envoy's `envoy.access_loggers.extension_filters.cel`, which Istio configures with it),
//! compiled once per configuration. At run time a result that is not `true`, or an error
//! (an attribute the request lacks, a type mismatch), writes no line: Envoy's
//! `CELAccessLogExtensionFilter::evaluate` answers `false` for both.
//!
//! Evaluation builds only what the expression reads: compiling walks the expression for the
//! fields it selects of each attribute (`response.code` reads `code` of `response`, nothing
//! else) and the request headers it names (`request.headers['x-debug']`), so a request pays
//! for those values alone, and a request's headers are copied only when the expression reads
//! the whole header map.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::{Expr, IdedExpr, LiteralValue, operators};
use cel::{Context, Program, Value};

/// Why an expression is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(String);

/// The top-level attributes of Envoy's attribute vocabulary that a filter may read, each
/// with the fields a proxy offers of it.
pub const FIELDS: &[(&str, &[&str])] = &[
    (
        "request",
        &[
            "path",
            "url_path",
            "host",
            "method",
            "protocol",
            "id",
            "useragent",
            "size",
            "headers",
        ],
    ),
    ("response", &["code", "code_details", "size"]),
    ("source", &["address", "port"]),
    ("destination", &["address", "port"]),
    ("connection", &["mtls"]),
    ("upstream", &["address", "port"]),
];

/// The top-level attributes of Envoy's attribute vocabulary that a filter may read.
pub const ATTRIBUTES: &[&str] = &[
    "request",
    "response",
    "source",
    "destination",
    "connection",
    "upstream",
];

/// What a request offers a filter: Envoy's attributes one field at a time (`request.path`,
/// `response.code`, `request.headers` as a map of the headers kept), asked for only those
/// the expression reads. `None`: the request has no such value.
pub trait Attributes {
    fn field(&self, attribute: &str, field: &str) -> Option<Value>;
}

/// The request headers an expression reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderReads {
    /// Only these (lowercase), each named by a string literal: `request.headers['x-debug']`.
    Named(Vec<String>),
    /// The whole map (iterated, indexed by a computed key, compared).
    All,
}

/// What an expression reads of one attribute.
#[derive(Debug, Clone, PartialEq)]
struct AttributeReads {
    name: &'static str,
    fields: Vec<&'static str>,
}

/// A compiled filter.
pub struct Filter {
    program: Program,
    /// The attributes the expression reads, and of each the fields it selects.
    reads: Vec<AttributeReads>,
    /// The request headers it reads; `None` when it reads none.
    headers: Option<HeaderReads>,
    /// CEL's standard functions, built once.
    env: Arc<cel::Env>,
    source: String,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Filter").field(&self.source).finish()
    }
}

impl PartialEq for Filter {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Filter {
    /// Compiles `expression`; a syntax error is refused. A variable that is none of the
    /// attributes offered is kept: reading it is an evaluation error, so no line is written
    /// ([`Filter::unknown_attribute`] names it).
    pub fn compile(expression: &str) -> Result<Filter, FilterError> {
        let program = Program::compile(expression).map_err(|e| FilterError(e.to_string()))?;
        let mut walk = Walk::default();
        walk.visit(program.expression());
        let reads = FIELDS
            .iter()
            .filter_map(|(name, offered)| {
                let fields: Vec<&'static str> = if walk.whole.contains(name) {
                    offered.to_vec()
                } else {
                    offered
                        .iter()
                        .copied()
                        .filter(|f| walk.selected.contains(&(name, f)))
                        .collect()
                };
                let read =
                    walk.whole.contains(name) || walk.selected.iter().any(|(a, _)| a == name);
                read.then_some(AttributeReads { name, fields })
            })
            .collect::<Vec<_>>();
        let reads_headers = reads
            .iter()
            .any(|r| r.name == "request" && r.fields.contains(&"headers"));
        let headers = reads_headers.then(|| {
            if walk.whole.contains(&"request") || walk.all_headers {
                HeaderReads::All
            } else {
                HeaderReads::Named(walk.header_names.clone())
            }
        });
        Ok(Filter {
            program,
            reads,
            headers,
            env: Arc::new(cel::Env::stdlib()),
            source: expression.to_owned(),
        })
    }

    /// A variable the expression reads that is none of [`ATTRIBUTES`].
    pub fn unknown_attribute(&self) -> Option<String> {
        let references = self.program.references();
        references
            .variables()
            .into_iter()
            .filter(|v| !ATTRIBUTES.contains(v))
            .min()
            .map(str::to_owned)
    }

    /// Whether the expression reads the attribute `name`.
    pub fn reads(&self, name: &str) -> bool {
        self.reads.iter().any(|r| r.name == name)
    }

    /// The request headers the expression reads, `None` for none: what a proxy keeps of a
    /// request's headers for it.
    pub fn request_headers(&self) -> Option<&HeaderReads> {
        self.headers.as_ref()
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the line of a request with these `attributes` is written.
    pub fn admits(&self, attributes: &impl Attributes) -> bool {
        let mut context = Context::with_env(Arc::clone(&self.env));
        for read in &self.reads {
            let map: HashMap<&str, Value> = read
                .fields
                .iter()
                .filter_map(|f| Some((*f, attributes.field(read.name, f)?)))
                .collect();
            // An attribute of which the request has nothing is absent, so reading it is an
            // error (no line), as Envoy's missing attribute.
            if !map.is_empty() {
                context.add_variable_from_value(read.name, map);
            }
        }
        matches!(self.program.execute(&context), Ok(Value::Bool(true)))
    }
}

/// What a walk over an expression found it reads.
#[derive(Default)]
struct Walk {
    /// Attributes used otherwise than by selecting a field: every field is built.
    whole: Vec<&'static str>,
    /// `attribute.field` selections.
    selected: Vec<(&'static str, &'static str)>,
    /// Header names given as literals to `request.headers[...]`.
    header_names: Vec<String>,
    /// `request.headers` used otherwise than indexed by a literal.
    all_headers: bool,
}

/// The attribute `name` is, by its static name.
fn attribute(name: &str) -> Option<&'static str> {
    ATTRIBUTES.iter().copied().find(|a| *a == name)
}

/// The attribute and field `expr` selects (`request.path`), by their static names.
fn selection(expr: &Expr) -> Option<(&'static str, &'static str)> {
    let Expr::Select(select) = expr else {
        return None;
    };
    let Expr::Ident(name) = &select.operand.expr else {
        return None;
    };
    let attribute = attribute(name)?;
    let (_, offered) = FIELDS.iter().find(|(a, _)| *a == attribute)?;
    let field = offered.iter().copied().find(|f| *f == select.field)?;
    Some((attribute, field))
}

impl Walk {
    fn visit(&mut self, expr: &IdedExpr) {
        match &expr.expr {
            Expr::Ident(name) => {
                if let Some(attribute) = attribute(name)
                    && !self.whole.contains(&attribute)
                {
                    self.whole.push(attribute);
                }
            }
            Expr::Select(select) => match selection(&expr.expr) {
                Some(selected) => {
                    if selected == ("request", "headers") {
                        self.all_headers = true;
                    }
                    self.selected.push(selected);
                }
                // A field no proxy offers (`request.nope`): its attribute is still read
                // (an evaluation error, as Envoy's), and the operand's other reads.
                None => self.visit(&select.operand),
            },
            Expr::Call(call) => {
                let indexed_header = (call.func_name == operators::INDEX
                    || call.func_name == operators::OPT_INDEX)
                    && call.args.len() == 2
                    && selection(&call.args[0].expr) == Some(("request", "headers"));
                if indexed_header
                    && let Expr::Literal(LiteralValue::String(name)) = &call.args[1].expr
                {
                    self.selected.push(("request", "headers"));
                    self.header_names.push(name.inner().to_ascii_lowercase());
                    return;
                }
                if let Some(target) = &call.target {
                    self.visit(target);
                }
                for arg in &call.args {
                    self.visit(arg);
                }
            }
            Expr::Comprehension(comprehension) => {
                for part in [
                    &comprehension.iter_range,
                    &comprehension.accu_init,
                    &comprehension.loop_cond,
                    &comprehension.loop_step,
                    &comprehension.result,
                ] {
                    self.visit(part);
                }
            }
            Expr::List(list) => list.elements.iter().for_each(|e| self.visit(e)),
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(entry) = &entry.expr {
                        self.visit(&entry.key);
                        self.visit(&entry.value);
                    }
                }
            }
            Expr::Struct(object) => {
                for entry in &object.entries {
                    if let cel::common::ast::EntryExpr::StructField(field) = &entry.expr {
                        self.visit(&field.value);
                    }
                }
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::*;

    struct Request {
        code: i64,
        path: &'static str,
    }

    impl Attributes for Request {
        fn field(&self, attribute: &str, field: &str) -> Option<Value> {
            match (attribute, field) {
                ("response", "code") => Some(Value::Int(self.code)),
                ("request", "path") => Some(Value::from(self.path)),
                ("request", "headers") => {
                    Some(HashMap::from([("x-debug", Value::from("1"))]).into())
                }
                _ => None,
            }
        }
    }

    /// Records every field asked for.
    struct Asked(RefCell<Vec<(String, String)>>);

    impl Attributes for Asked {
        fn field(&self, attribute: &str, field: &str) -> Option<Value> {
            self.0
                .borrow_mut()
                .push((attribute.to_owned(), field.to_owned()));
            Some(Value::Int(1))
        }
    }

    fn asked(expression: &str) -> Vec<String> {
        let asked = Asked(RefCell::new(Vec::new()));
        Filter::compile(expression).unwrap().admits(&asked);
        let mut fields: Vec<String> = asked
            .0
            .into_inner()
            .into_iter()
            .map(|(a, f)| format!("{a}.{f}"))
            .collect();
        fields.sort();
        fields
    }

    /// A request pays for what the expression reads: the fields it selects, each once; an
    /// attribute used whole is built whole.
    #[test]
    fn only_the_fields_an_expression_reads_are_built() {
        assert_eq!(asked("response.code >= 400"), ["response.code"]);
        assert_eq!(
            asked("request.method == 'GET' && response.code == 1 || request.method == 'PUT'"),
            ["request.method", "response.code"]
        );
        assert_eq!(asked("has(upstream.port)"), ["upstream.port"]);
        assert_eq!(
            asked("size(response) > 0"),
            ["response.code", "response.code_details", "response.size"]
        );
        // A field no proxy offers reads its attribute whole (and is an evaluation error).
        assert_eq!(asked("connection.nope == 1"), ["connection.mtls"]);
        assert_eq!(asked("[1, 2].exists(x, x == source.port)"), ["source.port"]);
    }

    /// Headers named by literals are all a proxy keeps; a computed key or the whole map
    /// keeps them all; no header read keeps none.
    #[test]
    fn the_request_headers_an_expression_reads() {
        let headers = |e: &str| Filter::compile(e).unwrap().request_headers().cloned();
        assert_eq!(headers("response.code >= 400"), None);
        assert_eq!(headers("request.path == '/'"), None);
        assert_eq!(
            headers("request.headers['X-Debug'] == '1' && request.headers['x-b'] != ''"),
            Some(HeaderReads::Named(vec!["x-debug".into(), "x-b".into()]))
        );
        assert_eq!(
            headers("'x-debug' in request.headers"),
            Some(HeaderReads::All)
        );
        assert_eq!(
            headers("request.headers[request.path] == '1'"),
            Some(HeaderReads::All)
        );
        assert_eq!(headers("size(request) > 1"), Some(HeaderReads::All));
    }

    /// Every attribute has its fields.
    #[test]
    fn every_attribute_offers_fields() {
        let named: Vec<&str> = FIELDS.iter().map(|(a, _)| *a).collect();
        assert_eq!(named, ATTRIBUTES);
    }

    #[test]
    fn a_filter_admits_what_it_holds_true_for() {
        let filter = Filter::compile("response.code >= 400").unwrap();
        assert!(filter.admits(&Request {
            code: 503,
            path: "/"
        }));
        assert!(!filter.admits(&Request {
            code: 200,
            path: "/"
        }));
        let filter =
            Filter::compile("request.path.startsWith('/api') && request.headers['x-debug'] == '1'")
                .unwrap();
        assert!(filter.admits(&Request {
            code: 200,
            path: "/api/v1"
        }));
        assert!(!filter.admits(&Request {
            code: 200,
            path: "/web"
        }));
    }

    /// Envoy's CEL filter answers false for an evaluation error and for a result that is
    /// not a boolean.
    #[test]
    fn an_error_or_a_non_boolean_writes_no_line() {
        let request = Request {
            code: 500,
            path: "/",
        };
        for expression in [
            "upstream.address == '10.0.0.1'",
            "request.headers['missing'] == 'x'",
            "response.code",
            "response.code >= 'x'",
        ] {
            let filter = Filter::compile(expression).unwrap();
            assert!(!filter.admits(&request), "{expression}");
        }
    }

    #[test]
    fn syntax_errors_are_refused_and_unknown_attributes_named() {
        assert!(Filter::compile("response.code >=").is_err());
        let unknown = Filter::compile("respons.code == 200").unwrap();
        assert_eq!(unknown.unknown_attribute().as_deref(), Some("respons"));
        assert!(!unknown.admits(&Request {
            code: 200,
            path: "/"
        }));
        let known = Filter::compile("response.code == 200").unwrap();
        assert_eq!(known.unknown_attribute(), None);
    }
}
