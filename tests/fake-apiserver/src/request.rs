//! What a request names and asks (its path, query and selectors), and the JSON answers.

use std::collections::BTreeMap;
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use crate::ServedKind;

pub(crate) type Body = BoxBody<Bytes, Infallible>;

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

pub(crate) fn status_response(code: u16, reason: &str, message: &str) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &status_object(code, reason, message))
}

/// What a path names: a collection (optionally in one namespace) or one object in it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) kind_index: usize,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    /// `status`, for the status subresource.
    pub(crate) subresource: Option<String>,
}

pub(crate) fn parse_path(kinds: &[ServedKind], path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, plural, name, subresource) = match rest {
        ["namespaces", namespace, plural] => (Some(*namespace), *plural, None, None),
        ["namespaces", namespace, plural, name] => (Some(*namespace), *plural, Some(*name), None),
        ["namespaces", namespace, plural, name, "status"] => {
            (Some(*namespace), *plural, Some(*name), Some("status"))
        }
        [plural] => (None, *plural, None, None),
        [plural, name] => (None, *plural, Some(*name), None),
        [plural, name, "status"] => (None, *plural, Some(*name), Some("status")),
        _ => return None,
    };
    let kind_index = kinds
        .iter()
        .position(|k| k.group == group && k.version == version && k.plural == plural)?;
    if namespace.is_some() && !kinds[kind_index].namespaced {
        return None;
    }
    Some(Target {
        kind_index,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
        subresource: subresource.map(str::to_owned),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LabelTerm {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldTerm {
    Equals(String, String),
    NotEquals(String, String),
}

/// The subset of a request that picks objects.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selection {
    pub(crate) namespace: Option<String>,
    pub(crate) labels: Vec<LabelTerm>,
    pub(crate) fields: Vec<FieldTerm>,
}

pub(crate) fn parse_label_selector(selector: &str) -> Result<Vec<LabelTerm>, String> {
    let mut terms = Vec::new();
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if term.contains('(') || term.contains(' ') {
            return Err(format!(
                "set-based label selector {term:?} is not supported"
            ));
        }
        let parsed = if let Some((key, value)) = term.split_once("!=") {
            LabelTerm::NotEquals(key.to_owned(), value.to_owned())
        } else if let Some((key, value)) = term.split_once("==") {
            LabelTerm::Equals(key.to_owned(), value.to_owned())
        } else if let Some((key, value)) = term.split_once('=') {
            LabelTerm::Equals(key.to_owned(), value.to_owned())
        } else if let Some(key) = term.strip_prefix('!') {
            LabelTerm::Absent(key.to_owned())
        } else {
            LabelTerm::Exists(term.to_owned())
        };
        terms.push(parsed);
    }
    Ok(terms)
}

pub(crate) fn parse_field_selector(selector: &str) -> Result<Vec<FieldTerm>, String> {
    let mut terms = Vec::new();
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = term.split_once("==") {
            (f, v, true)
        } else if let Some((f, v)) = term.split_once('=') {
            (f, v, true)
        } else {
            return Err(format!("field selector {term:?} has no operator"));
        };
        // The generic fields, the one pod field node-local watchers select by and the Secret
        // field the controller's watch of Secrets selects by (the real API server supports
        // them on pods and Secrets only; the fake does not check the kind).
        if !matches!(
            field,
            "metadata.name" | "metadata.namespace" | "spec.nodeName" | "type"
        ) {
            return Err(format!("field label not supported: {field}"));
        }
        terms.push(if equal {
            FieldTerm::Equals(field.to_owned(), value.to_owned())
        } else {
            FieldTerm::NotEquals(field.to_owned(), value.to_owned())
        });
    }
    Ok(terms)
}

impl Selection {
    pub(crate) fn matches(&self, object: &Value) -> bool {
        let metadata = &object["metadata"];
        let namespace = metadata["namespace"].as_str().unwrap_or("");
        if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return false;
        }
        let label = |key: &str| metadata["labels"][key].as_str();
        let labels_match = self.labels.iter().all(|term| match term {
            LabelTerm::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelTerm::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelTerm::Exists(k) => label(k).is_some(),
            LabelTerm::Absent(k) => label(k).is_none(),
        });
        let field = |name: &str| match name.split_once('.') {
            None => object[name].as_str(),
            Some(("spec", rest)) => object["spec"][rest].as_str(),
            _ => metadata[name.trim_start_matches("metadata.")].as_str(),
        };
        let fields_match = self.fields.iter().all(|term| match term {
            FieldTerm::Equals(f, v) => field(f).unwrap_or("") == v,
            FieldTerm::NotEquals(f, v) => field(f).unwrap_or("") != v,
        });
        labels_match && fields_match
    }
}

pub(crate) fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
