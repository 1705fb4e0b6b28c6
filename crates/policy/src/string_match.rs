//! The two string matchers of the Istio API: the wildcard form used by authorization policies
//! (`exact`, `prefix*`, `*suffix`, `*`) and the `StringMatch` of VirtualService routing
//! (`exact`, `prefix`, `regex`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::PolicyError;

/// Authorization-policy string match, as ztunnel and Envoy's RBAC evaluate it.
///
/// `Presence` (Istio's `"*"`) matches any *non-empty* value: a plaintext peer has an empty
/// principal, so `principals: ["*"]` means "any mTLS peer".
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WildcardMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

impl WildcardMatch {
    /// Parses Istio's authorization value syntax: `"*"` is presence, a leading `*` a suffix match,
    /// a trailing `*` a prefix match, anything else exact.
    pub fn parse_istio(value: &str) -> Self {
        if value == "*" {
            WildcardMatch::Presence
        } else if let Some(suffix) = value.strip_prefix('*') {
            WildcardMatch::Suffix(suffix.to_owned())
        } else if let Some(prefix) = value.strip_suffix('*') {
            WildcardMatch::Prefix(prefix.to_owned())
        } else {
            WildcardMatch::Exact(value.to_owned())
        }
    }

    pub fn matches(&self, candidate: &str) -> bool {
        match self {
            WildcardMatch::Exact(exact) => candidate == exact,
            WildcardMatch::Prefix(prefix) => candidate.starts_with(prefix.as_str()),
            WildcardMatch::Suffix(suffix) => candidate.ends_with(suffix.as_str()),
            WildcardMatch::Presence => !candidate.is_empty(),
        }
    }

    /// ASCII case-insensitive variant, used for `hosts` (Envoy `ignore_case: true`).
    pub fn matches_ignore_ascii_case(&self, candidate: &str) -> bool {
        fn starts_with_ci(s: &str, p: &str) -> bool {
            s.len() >= p.len() && s.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
        }
        fn ends_with_ci(s: &str, p: &str) -> bool {
            s.len() >= p.len()
                && s.as_bytes()[s.len() - p.len()..].eq_ignore_ascii_case(p.as_bytes())
        }
        match self {
            WildcardMatch::Exact(exact) => candidate.eq_ignore_ascii_case(exact),
            WildcardMatch::Prefix(prefix) => starts_with_ci(candidate, prefix),
            WildcardMatch::Suffix(suffix) => ends_with_ci(candidate, suffix),
            WildcardMatch::Presence => !candidate.is_empty(),
        }
    }
}

/// A regular expression that must match the *whole* input, as Envoy's `safe_regex` (RE2) does.
/// Compiled once when the resource is accepted; serialized as its source text.
#[derive(Clone)]
pub struct FullRegex {
    source: String,
    compiled: regex::Regex,
}

impl FullRegex {
    pub fn new(pattern: &str) -> Result<Self, PolicyError> {
        let compiled = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|source| {
            PolicyError::InvalidRegex {
                pattern: pattern.to_owned(),
                source: Box::new(source),
            }
        })?;
        Ok(FullRegex {
            source: pattern.to_owned(),
            compiled,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, candidate: &str) -> bool {
        self.compiled.is_match(candidate)
    }
}

impl fmt::Debug for FullRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FullRegex").field(&self.source).finish()
    }
}

impl PartialEq for FullRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for FullRegex {}

impl Serialize for FullRegex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for FullRegex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        FullRegex::new(&source).map_err(serde::de::Error::custom)
    }
}

/// VirtualService `StringMatch`: case-sensitive `exact`, `prefix` or full-match `regex`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(FullRegex),
}

impl StringMatch {
    pub fn regex(pattern: &str) -> Result<Self, PolicyError> {
        FullRegex::new(pattern).map(StringMatch::Regex)
    }

    pub fn matches(&self, candidate: &str) -> bool {
        match self {
            StringMatch::Exact(exact) => candidate == exact,
            StringMatch::Prefix(prefix) => candidate.starts_with(prefix.as_str()),
            StringMatch::Regex(regex) => regex.is_match(candidate),
        }
    }

    /// `ignoreUriCase`: Istio lowers case only for `exact` and `prefix`; a regex is left as
    /// written (it can carry its own `(?i)`).
    pub fn matches_ignore_ascii_case(&self, candidate: &str) -> bool {
        match self {
            StringMatch::Exact(exact) => candidate.eq_ignore_ascii_case(exact),
            StringMatch::Prefix(prefix) => {
                candidate.len() >= prefix.len()
                    && candidate.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            }
            StringMatch::Regex(regex) => regex.is_match(candidate),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_wildcard_syntax() {
        let cases = [
            ("*", "anything", true),
            ("*", "", false),
            ("cluster.local/*", "cluster.local/ns/a/sa/b", true),
            ("cluster.local/*", "other/ns/a/sa/b", false),
            ("*/sa/admin", "cluster.local/ns/a/sa/admin", true),
            ("*/sa/admin", "cluster.local/ns/a/sa/admins", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ];
        for (pattern, candidate, want) in cases {
            assert_eq!(
                WildcardMatch::parse_istio(pattern).matches(candidate),
                want,
                "{pattern} vs {candidate}"
            );
        }
    }

    #[test]
    fn regex_is_anchored_and_round_trips_through_serde() {
        let m = StringMatch::regex("/api/v[0-9]+").unwrap();
        assert!(m.matches("/api/v12"));
        assert!(!m.matches("/api/v12/extra"));
        assert!(!m.matches("x/api/v1"));
        let json = serde_json::to_string(&m).unwrap();
        let back: StringMatch = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert!(back.matches("/api/v3"));
        assert!(serde_json::from_str::<StringMatch>(r#"{"regex":"("}"#).is_err());
    }

    #[test]
    fn alternation_is_anchored_as_a_whole() {
        let m = StringMatch::regex("a|b").unwrap();
        assert!(m.matches("a"));
        assert!(!m.matches("ab"));
    }
}
