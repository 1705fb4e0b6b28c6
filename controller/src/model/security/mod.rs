//! `security.istio.io` (served as `v1` and `v1beta1`, one schema): AuthorizationPolicy,
//! PeerAuthentication and RequestAuthentication, with every field of Istio's API (istio/api
//! `security/v1beta1/*.proto` and its published CRDs), Istio's field names and enum spellings.

mod authorization_policy;
mod peer_authentication;
mod request_authentication;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::networking::WorkloadSelector;
pub use authorization_policy::*;
pub use peer_authentication::*;
pub use request_authentication::*;

use super::schema;

/// `istio.type.v1beta1.PolicyTargetReference`: what a policy attaches to (a Gateway, a
/// GatewayClass, a Service or a ServiceEntry), in the policy's own namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["kind", "name"]))]
pub struct PolicyTargetReference {
    #[schemars(
        length(max = 253),
        regex(pattern = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub group: Option<String>,
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
    )]
    pub kind: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.size() == 0", "message": "cross namespace referencing is not currently supported"}]))]
    pub namespace: Option<String>,
}

/// The rule every policy kind with `selector`, `targetRef` and `targetRefs` carries.
pub(crate) fn selection_rules(schema: &mut schemars::Schema) {
    schema::cel(
        schema,
        "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1",
        "only one of targetRefs or selector can be set",
    );
}
