//! What a validated JWT tells authorization about a request: Istio's `request.auth.*`
//! attributes. The waypoint's JWT filter builds it; an L7 policy reads it.
//!
//! - `principal` is `iss/sub`, as Istio's request principal (`requestPrincipals`,
//!   `request.auth.principal`).
//! - `audiences` are the token's `aud` (a string or a list), `presenter` its `azp`.
//! - `claims[a][b]` names a nested claim; a claim matches a value when it is that string or a
//!   list holding it (Istio matches only string and string-list claims: a number, a boolean or
//!   an object never matches). Space-delimited claims (`scope`, `permission` and a rule's
//!   `spaceDelimitedClaims`) are split into lists when the token is validated, as Envoy's
//!   `normalize_payload_in_metadata` does, so they match word by word here.

use serde_json::{Map, Value};

use crate::string_match::WildcardMatch;

/// The request's authenticated JWT: absent when the request carried none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestAuth {
    /// `iss/sub`.
    pub principal: String,
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    /// The payload, space-delimited claims already split.
    pub claims: Map<String, Value>,
}

impl RequestAuth {
    /// The claim at `path` (one name per `[...]` level), if present.
    pub fn claim(&self, path: &[String]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        let mut value = self.claims.get(first)?;
        for name in rest {
            value = value.as_object()?.get(name)?;
        }
        Some(value)
    }

    /// Whether the claim at `path` is a string `m` matches, or a list with such a string.
    pub fn claim_matches(&self, path: &[String], m: &WildcardMatch) -> bool {
        match self.claim(path) {
            Some(Value::String(s)) => m.matches(s),
            Some(Value::Array(items)) => items
                .iter()
                .any(|item| item.as_str().is_some_and(|s| m.matches(s))),
            _ => false,
        }
    }
}

/// The claim names of a `request.auth.claims[...]` key: `[a][b]` gives `a`, `b`. `None` when
/// the key is not well formed (empty brackets, text outside them).
pub fn parse_claim_path(brackets: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut rest = brackets;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = &inner[..end];
        if name.is_empty() || name.contains('[') {
            return None;
        }
        names.push(name.to_owned());
        rest = &inner[end + 1..];
    }
    (!names.is_empty()).then_some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(claims: Value) -> RequestAuth {
        RequestAuth {
            principal: "issuer/subject".to_owned(),
            claims: claims.as_object().cloned().unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn claim_paths_are_bracketed_names() {
        assert_eq!(parse_claim_path("[iss]"), Some(vec!["iss".to_owned()]));
        assert_eq!(
            parse_claim_path("[a][b.c]"),
            Some(vec!["a".to_owned(), "b.c".to_owned()])
        );
        for bad in ["", "[]", "iss", "[a]b", "[a", "[a][", "[[a]]"] {
            assert_eq!(parse_claim_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn strings_and_string_lists_match_other_types_never() {
        let a = auth(serde_json::json!({
            "group": "admin",
            "groups": ["dev", "ops"],
            "level": 3,
            "admin": true,
            "nested": {"key": {"deep": "v"}, "list": ["x"]},
        }));
        let exact = |v: &str| WildcardMatch::parse_istio(v);
        let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(a.claim_matches(&path(&["group"]), &exact("admin")));
        assert!(a.claim_matches(&path(&["group"]), &exact("adm*")));
        assert!(!a.claim_matches(&path(&["group"]), &exact("dev")));
        assert!(a.claim_matches(&path(&["groups"]), &exact("ops")));
        assert!(!a.claim_matches(&path(&["groups"]), &exact("admin")));
        assert!(!a.claim_matches(&path(&["level"]), &exact("3")));
        assert!(!a.claim_matches(&path(&["admin"]), &exact("true")));
        assert!(a.claim_matches(&path(&["nested", "key", "deep"]), &exact("v")));
        assert!(a.claim_matches(&path(&["nested", "list"]), &exact("x")));
        assert!(!a.claim_matches(&path(&["nested", "key"]), &exact("*")));
        assert!(!a.claim_matches(&path(&["missing"]), &exact("*")));
        assert!(!a.claim_matches(&path(&["group", "x"]), &exact("*")));
    }
}
