//! Telemetry's `accessLogging[].filter.expression`: a CEL expression over Envoy's attributes
//! (Envoy's `envoy.access_loggers.extension_filters.cel`, which Istio configures with it),
//! compiled once per configuration. At run time a result that is not `true`, or an error
//! (an attribute the request lacks, a type mismatch), writes no line: Envoy's
//! `CELAccessLogExtensionFilter::evaluate` answers `false` for both.

use std::sync::Arc;

use cel::{Context, Program, Value};

/// Why an expression is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(String);

/// The top-level attributes of Envoy's attribute vocabulary that a filter may read.
pub const ATTRIBUTES: &[&str] = &[
    "request",
    "response",
    "source",
    "destination",
    "connection",
    "upstream",
];

/// What a request offers a filter: each of Envoy's top-level attributes (`request`,
/// `response`, `source`, `destination`, `connection`, `upstream`) as a CEL map, built only
/// for those the expression reads.
pub trait Attributes {
    fn attribute(&self, name: &str) -> Option<Value>;
}

/// A compiled filter.
pub struct Filter {
    program: Program,
    /// The top-level attributes the expression reads, built per request.
    reads: Vec<&'static str>,
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
        let references = program.references();
        let variables = references.variables();
        let reads = ATTRIBUTES
            .iter()
            .copied()
            .filter(|a| variables.contains(a))
            .collect();
        Ok(Filter {
            program,
            reads,
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
        self.reads.contains(&name)
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the line of a request with these `attributes` is written.
    pub fn admits(&self, attributes: &impl Attributes) -> bool {
        let mut context = Context::with_env(Arc::clone(&self.env));
        for name in &self.reads {
            if let Some(value) = attributes.attribute(name) {
                context.add_variable_from_value(*name, value);
            }
        }
        matches!(self.program.execute(&context), Ok(Value::Bool(true)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Request {
        code: i64,
        path: &'static str,
    }

    impl Attributes for Request {
        fn attribute(&self, name: &str) -> Option<Value> {
            match name {
                "response" => Some(HashMap::from([("code", Value::Int(self.code))]).into()),
                "request" => Some(
                    HashMap::from([
                        ("path", Value::from(self.path)),
                        (
                            "headers",
                            HashMap::from([("x-debug", Value::from("1"))]).into(),
                        ),
                    ])
                    .into(),
                ),
                _ => None,
            }
        }
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
