//! What the model says about itself beyond its Rust types, for the CRDs generated from it
//! ([`crate::crd`]): Istio's CEL rules (`x-kubernetes-validations`), its protobuf oneofs ("at
//! most one of these fields", which Istio's CRDs spell as `oneOf` of `required` clauses),
//! required fields, limits, and the free-form `status`. The same rules are enforced by [`crate::validation`] for documents that
//! never meet an API server (local mode, `controller validate`).

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Appends one CEL rule to a schema's `x-kubernetes-validations`.
pub fn cel(schema: &mut Schema, rule: &str, message: &str) {
    let rules = schema
        .ensure_object()
        .entry("x-kubernetes-validations")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    if let Some(rules) = rules.as_array_mut() {
        rules.push(serde_json::json!({"rule": rule, "message": message}));
    }
}

/// Marks fields required.
pub fn required(schema: &mut Schema, fields: &[&str]) {
    schema.insert("required".to_owned(), serde_json::json!(fields));
}

/// Records that at most one field of each group may be set (a protobuf oneof), as Istio's CRDs
/// write it: `oneOf` "none of them" or "exactly this one", under `allOf` for several groups.
pub fn one_of(schema: &mut Schema, groups: &[&[&str]]) {
    let group = |fields: &[&str]| {
        let required: Vec<serde_json::Value> = fields
            .iter()
            .map(|f| serde_json::json!({"required": [f]}))
            .collect();
        let mut one_of = vec![serde_json::json!({"not": {"anyOf": required.clone()}})];
        one_of.extend(required);
        serde_json::Value::Array(one_of)
    };
    match groups {
        [single] => {
            schema.insert("oneOf".to_owned(), group(single));
        }
        many => {
            let all: Vec<serde_json::Value> = many
                .iter()
                .map(|g| serde_json::json!({"oneOf": group(g)}))
                .collect();
            schema.insert("allOf".to_owned(), serde_json::Value::Array(all));
        }
    }
}

/// Istio's rule for every duration field that must be at least a millisecond.
pub const DURATION_RULE: &str = "duration(self) >= duration('1ms')";
pub const DURATION_MESSAGE: &str = "must be a valid duration greater than 1ms";

/// A duration string with Istio's `>= 1ms` CEL rule.
pub fn duration_1ms(generator: &mut SchemaGenerator) -> Schema {
    let _ = generator;
    let mut schema = json_schema!({"type": "string"});
    cel(&mut schema, DURATION_RULE, DURATION_MESSAGE);
    schema
}

/// A duration string without a rule (`connectionPool.tcp.idleTimeout`, where 0 disables).
pub fn duration(generator: &mut SchemaGenerator) -> Schema {
    let _ = generator;
    json_schema!({"type": "string"})
}

/// A port number with Istio's range rule.
pub fn port_number(generator: &mut SchemaGenerator) -> Schema {
    let _ = generator;
    let mut schema = json_schema!({"type": "integer", "maximum": 4294967295u64, "minimum": 0});
    cel(
        &mut schema,
        "0 < self && self <= 65535",
        "port must be between 1-65535",
    );
    schema
}

/// Map keys that are port names (ServiceEntry endpoints, WorkloadEntry) and values that are
/// port numbers.
pub fn port_map(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = json_schema!({
        "type": "object",
        "maxProperties": 128,
        "additionalProperties": port_number(generator),
    });
    cel(
        &mut schema,
        "self.all(key, size(key) < 63 && key.matches(\"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$\"))",
        "port name must be valid",
    );
    schema
}

/// `status` of the Istio kinds: Istio's `IstioStatus` (conditions, validation messages,
/// observedGeneration), kept as written; nothing in the mesh reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IstioStatus(pub serde_json::Value);

impl JsonSchema for IstioStatus {
    fn schema_name() -> Cow<'static, str> {
        "IstioStatus".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
    }
}
