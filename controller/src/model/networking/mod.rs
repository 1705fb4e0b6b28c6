//! `networking.istio.io` (served as `v1`, `v1beta1` and `v1alpha3`, one schema): VirtualService,
//! DestinationRule, ServiceEntry, WorkloadEntry and Gateway, with every field of Istio's API
//! (istio/api `networking/v1alpha3/*.proto` and its published CRDs), their field names, nesting
//! and enum spellings. Fields a document sets that the model does not know are found by the
//! loader (`serde_ignored`), not refused here, so each caller decides what an unknown field means.

mod destination_rule;
mod gateway;
mod service_entry;
mod virtual_service;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use destination_rule::*;
pub use gateway::*;
pub use service_entry::*;
pub use virtual_service::*;

use super::schema;

/// Exactly one of `exact`, `prefix` or `regex` (a protobuf oneof); none is a presence match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::one_of(s, &[&["exact", "prefix", "regex"]]))]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["host"]))]
pub struct Destination {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<PortSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct PortSelector {
    #[schemars(range(min = 0, max = 4294967295u64))]
    pub number: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Percent {
    #[schemars(extend("format" = "double"))]
    pub value: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Headers {
    pub request: Option<HeaderOperations>,
    pub response: Option<HeaderOperations>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderOperations {
    pub set: BTreeMap<String, String>,
    pub add: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

/// `istio.type.v1beta1.WorkloadSelector`: `matchLabels`, as DestinationRule and the security
/// kinds write it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadSelector {
    #[schemars(schema_with = "match_labels")]
    pub match_labels: BTreeMap<String, String>,
}

fn match_labels(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut value = schemars::json_schema!({"type": "string", "maxLength": 63});
    schema::cel(
        &mut value,
        "!self.contains(\"*\")",
        "wildcard not allowed in label value match",
    );
    let mut labels = schemars::json_schema!({
        "type": "object",
        "maxProperties": 4096,
        "additionalProperties": value,
    });
    schema::cel(
        &mut labels,
        "self.all(key, !key.contains(\"*\"))",
        "wildcard not allowed in label key match",
    );
    schema::cel(
        &mut labels,
        "self.all(key, key.size() != 0)",
        "key must not be empty",
    );
    labels
}

/// `istio.networking.v1.WorkloadSelector`: `labels`, as ServiceEntry writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LabelSelector {
    #[schemars(schema_with = "selector_labels")]
    pub labels: BTreeMap<String, String>,
}

fn selector_labels(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut value = schemars::json_schema!({"type": "string", "maxLength": 63});
    schema::cel(
        &mut value,
        "!self.contains(\"*\")",
        "wildcard is not supported in selector",
    );
    schemars::json_schema!({"type": "object", "maxProperties": 256, "additionalProperties": value})
}
