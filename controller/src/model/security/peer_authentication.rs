//! PeerAuthentication (`security.istio.io`): every field of Istio's API.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::WorkloadSelector;
use crate::model::schema::{self, IstioStatus};

/// Mutual TLS requirements of workloads.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    plural = "peerauthentications",
    shortname = "pa",
    category = "istio-io",
    category = "security-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Mode","type":"string","description":"Defines the mTLS mode used for peer authentication.","jsonPath":".spec.mtls.mode"}"#,
    printcolumn = r#"{"name":"Age","type":"date","description":"CreationTimestamp is a timestamp representing the server time when this object was created.","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::cel(s,
    "has(self.portLevelMtls) ? (((has(self.selector) && has(self.selector.matchLabels)) ? self.selector.matchLabels : {}).size() > 0) : true",
    "portLevelMtls requires selector"))]
pub struct PeerAuthenticationSpec {
    pub selector: Option<WorkloadSelector>,
    pub mtls: Option<MutualTls>,
    /// Keys are ports; Kubernetes stores them as strings (JSON object keys), YAML files often
    /// as integers: both are accepted.
    #[serde(deserialize_with = "port_keyed")]
    #[schemars(schema_with = "port_level_mtls")]
    pub port_level_mtls: Option<BTreeMap<u32, MutualTls>>,
}

fn port_level_mtls(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = schemars::json_schema!({
        "type": "object",
        "minProperties": 1,
        "additionalProperties": generator.subschema_for::<MutualTls>(),
    });
    schema::cel(
        &mut schema,
        "self.all(key, 0 < int(key) && int(key) <= 65535)",
        "port must be between 1-65535",
    );
    schema
}

fn port_keyed<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BTreeMap<u32, MutualTls>>, D::Error> {
    /// A map key that is a port number, written as an integer or as a string.
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct PortKey(u32);

    impl<'de> Deserialize<'de> for PortKey {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl serde::de::Visitor<'_> for Visitor {
                type Value = PortKey;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a port number")
                }
                fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortKey, E> {
                    u32::try_from(v)
                        .map(PortKey)
                        .map_err(|_| E::custom(format!("port {v} is out of range")))
                }
                fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortKey, E> {
                    u32::try_from(v)
                        .map(PortKey)
                        .map_err(|_| E::custom(format!("port {v} is out of range")))
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortKey, E> {
                    v.parse()
                        .map(PortKey)
                        .map_err(|_| E::custom(format!("port key {v:?} is not a number")))
                }
            }
            deserializer.deserialize_any(Visitor)
        }
    }

    let map: Option<BTreeMap<PortKey, MutualTls>> = Option::deserialize(deserializer)?;
    Ok(map.map(|m| m.into_iter().map(|(k, v)| (k.0, v)).collect()))
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct MutualTls {
    pub mode: Option<MtlsMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    Unset,
    Disable,
    Permissive,
    Strict,
}
