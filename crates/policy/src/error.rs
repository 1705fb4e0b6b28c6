use thiserror::Error;

/// A policy or route resource that cannot be turned into matchers. The controller reports it as a
/// validation message and a proxy NACKs the resource that carried it; nothing here panics.
#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("invalid regex {pattern:?}: {source}")]
    InvalidRegex {
        pattern: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error("invalid path template {template:?}: {reason}")]
    InvalidPathTemplate {
        template: String,
        reason: &'static str,
    },
    #[error("unsupported condition key {key:?}")]
    UnsupportedConditionKey { key: String },
    #[error("invalid value {value:?} for condition key {key:?}: {reason}")]
    InvalidConditionValue {
        key: String,
        value: String,
        reason: &'static str,
    },
    #[error("condition on {key:?} has neither values nor notValues")]
    EmptyCondition { key: String },
}

/// A request path the waypoint must refuse (HTTP 400) rather than route or authorize, because no
/// single normalized form can be given to it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("path {path:?} does not start with '/'")]
    NotAbsolute { path: String },
    #[error("path {path:?} has a malformed percent escape at byte {offset}")]
    BadPercentEscape { path: String, offset: usize },
    #[error("path {path:?} has a control character at byte {offset}")]
    ControlCharacter { path: String, offset: usize },
}
