//! ServiceEntry and WorkloadEntry (`networking.istio.io`): every field of Istio's API. A
//! ServiceEntry's `endpoints` are WorkloadEntry specs, so both kinds share [`WorkloadEntrySpec`].

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::LabelSelector;
use crate::model::schema::{self, IstioStatus};

/// Services outside the platform's registry, added to the mesh's view.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "ServiceEntry",
    plural = "serviceentries",
    shortname = "se",
    category = "istio-io",
    category = "networking-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Hosts","type":"string","description":"The hosts associated with the ServiceEntry","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Location","type":"string","description":"Whether the service is external to the mesh or part of the mesh (MESH_EXTERNAL or MESH_INTERNAL)","jsonPath":".spec.location"}"#,
    printcolumn = r#"{"name":"Resolution","type":"string","description":"Service resolution mode for the hosts (NONE, STATIC, or DNS)","jsonPath":".spec.resolution"}"#,
    printcolumn = r#"{"name":"Age","type":"date","description":"CreationTimestamp is a timestamp representing the server time when this object was created.","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = service_entry_rules)]
pub struct ServiceEntrySpec {
    #[schemars(transform = service_entry_hosts)]
    pub hosts: Vec<String>,
    #[schemars(length(max = 256), inner(length(max = 64)))]
    pub addresses: Vec<String>,
    #[schemars(transform = service_entry_ports)]
    pub ports: Vec<ServicePort>,
    pub location: Option<ServiceEntryLocation>,
    pub resolution: Option<ServiceEntryResolution>,
    /// `None` (absent) and `Some([])` differ: Istio's rules test for the field's presence.
    #[schemars(length(max = 4096))]
    pub endpoints: Option<Vec<WorkloadEntrySpec>>,
    pub workload_selector: Option<LabelSelector>,
    pub export_to: Vec<String>,
    pub subject_alt_names: Vec<String>,
}

fn service_entry_rules(schema: &mut schemars::Schema) {
    schema.insert("required".into(), serde_json::json!(["hosts"]));
    schema::cel(
        schema,
        "(has(self.workloadSelector) ? 1 : 0) + (has(self.endpoints) ? 1 : 0) <= 1",
        "only one of WorkloadSelector or Endpoints can be set",
    );
    schema::cel(
        schema,
        "!((has(self.addresses) ? self.addresses : []).exists(k, k.contains(\"/\")) && !((has(self.resolution) ? self.resolution : \"NONE\") in [\"STATIC\", \"NONE\"]))",
        "CIDR addresses are allowed only for NONE/STATIC resolution types",
    );
    schema::cel(
        schema,
        "((has(self.resolution) ? self.resolution : \"NONE\") == \"NONE\") ? !has(self.endpoints) : true",
        "NONE mode cannot set endpoints",
    );
    schema::cel(
        schema,
        "((has(self.resolution) ? self.resolution : \"\") == \"DNS_ROUND_ROBIN\") ? ((has(self.endpoints) ? self.endpoints : []).size() <= 1) : true",
        "DNS_ROUND_ROBIN mode cannot have multiple endpoints",
    );
}

fn service_entry_hosts(schema: &mut schemars::Schema) {
    schema.insert("minItems".into(), 1.into());
    schema.insert("maxItems".into(), 256.into());
    if let Some(items) = schema
        .get_mut("items")
        .and_then(|i| <&mut schemars::Schema>::try_from(i).ok())
    {
        schema::cel(items, "self != \"*\"", "hostname cannot be wildcard");
    }
}

fn service_entry_ports(schema: &mut schemars::Schema) {
    schema.insert("maxItems".into(), 256.into());
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["name"]),
    );
    schema::cel(
        schema,
        "self.all(l1, self.exists_one(l2, l1.number == l2.number))",
        "port number cannot be duplicated",
    );
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["number", "name"]))]
pub struct ServicePort {
    #[schemars(schema_with = "schema::port_number")]
    pub number: u32,
    #[schemars(length(max = 256))]
    pub protocol: Option<String>,
    #[schemars(length(max = 256))]
    pub name: String,
    #[schemars(schema_with = "schema::port_number")]
    pub target_port: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceEntryLocation {
    MeshExternal,
    MeshInternal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceEntryResolution {
    None,
    Static,
    Dns,
    DnsRoundRobin,
    DynamicDns,
}

impl ServiceEntryResolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Static => "STATIC",
            Self::Dns => "DNS",
            Self::DnsRoundRobin => "DNS_ROUND_ROBIN",
            Self::DynamicDns => "DYNAMIC_DNS",
        }
    }
}

/// A workload outside Kubernetes (a VM, a bare-metal host), as its own resource.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "WorkloadEntry",
    plural = "workloadentries",
    shortname = "we",
    category = "istio-io",
    category = "networking-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Age","type":"date","description":"CreationTimestamp is a timestamp representing the server time when this object was created.","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Address","type":"string","description":"Address associated with the network endpoint.","jsonPath":".spec.address"}"#
)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = workload_entry_rules)]
pub struct WorkloadEntrySpec {
    #[schemars(length(max = 256), extend("x-kubernetes-validations" = [
        {"rule": "self.startsWith(\"unix://\") ? (self.substring(7, 8) == \"/\" || self.substring(7, 8) == \"@\") : true", "message": "UDS must be an absolute path or abstract socket"},
        {"rule": "self.startsWith(\"unix://\") ? !self.endsWith(\"/\") : true", "message": "UDS may not be a dir"},
    ]))]
    pub address: Option<String>,
    #[schemars(schema_with = "schema::port_map")]
    pub ports: Option<BTreeMap<String, u32>>,
    #[schemars(transform = |s: &mut schemars::Schema| { s.insert("maxProperties".into(), 256.into()); })]
    pub labels: BTreeMap<String, String>,
    #[schemars(length(max = 2048))]
    pub network: Option<String>,
    #[schemars(length(max = 2048))]
    pub locality: Option<String>,
    #[schemars(range(min = 0, max = 4294967295u64))]
    pub weight: Option<u32>,
    #[schemars(length(max = 253))]
    pub service_account: Option<String>,
}

fn workload_entry_rules(schema: &mut schemars::Schema) {
    schema::cel(
        schema,
        "has(self.address) || has(self.network)",
        "Address is required",
    );
    schema::cel(
        schema,
        "(has(self.address) ? self.address : \"\").startsWith(\"unix://\") ? !has(self.ports) : true",
        "UDS may not include ports",
    );
}
