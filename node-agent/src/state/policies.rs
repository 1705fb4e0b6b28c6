//! The L4 authorization policies indexed by what they apply to, so that authorizing a
//! connection reads the policies of its destination only: the mesh-wide ones, those of the
//! destination's namespace and those its selectors name. Before this index every connection
//! walked every policy of the mesh (and formatted each selector-scoped policy's key to compare
//! it), a cost that grew with policies that had nothing to do with the connection.

use std::sync::Arc;

use weft_policy::l4::{Authorization, PolicyScope};

use super::FastMap;

/// Every policy in evaluation order (namespace, name), and where each applies. Rebuilt whole
/// on every policy change (a change is rare, a connection is not); readers share it.
#[derive(Debug, Default)]
pub struct PolicyIndex {
    sorted: Vec<Arc<Authorization>>,
    /// Positions in `sorted` of the mesh-wide policies, ascending.
    global: Vec<usize>,
    /// Positions of the namespace-wide policies, by namespace, ascending.
    by_namespace: FastMap<String, Vec<usize>>,
    /// Position of each selector-scoped policy, by its key (`namespace/name`, what a workload's
    /// `authorization_policies` lists).
    by_selector_key: FastMap<String, usize>,
}

impl PolicyIndex {
    /// Indexes `policies` (in any order).
    pub fn new(policies: impl IntoIterator<Item = Arc<Authorization>>) -> Self {
        let mut sorted: Vec<_> = policies.into_iter().collect();
        sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut index = PolicyIndex::default();
        for (position, policy) in sorted.iter().enumerate() {
            match policy.scope {
                PolicyScope::Global => index.global.push(position),
                PolicyScope::Namespace => index
                    .by_namespace
                    .entry(policy.namespace.clone())
                    .or_default()
                    .push(position),
                PolicyScope::WorkloadSelector => {
                    index.by_selector_key.insert(policy.key(), position);
                }
            }
        }
        index.sorted = sorted;
        index
    }

    /// Every policy, in evaluation order.
    pub fn all(&self) -> &[Arc<Authorization>] {
        &self.sorted
    }

    /// The policies that apply to a workload of `namespace` whose selector-scoped policies are
    /// `selected`, in evaluation order: exactly those for which
    /// [`Authorization::applies_to`] holds, found without looking at any other.
    pub fn applicable(&self, namespace: &str, selected: &[String]) -> Vec<&Authorization> {
        let in_namespace = self
            .by_namespace
            .get(namespace)
            .map_or(&[][..], Vec::as_slice);
        let mut positions: Vec<usize> =
            Vec::with_capacity(self.global.len() + in_namespace.len() + selected.len());
        positions.extend_from_slice(&self.global);
        positions.extend_from_slice(in_namespace);
        positions.extend(
            selected
                .iter()
                .filter_map(|key| self.by_selector_key.get(key.as_str())),
        );
        // Evaluation order decides which DENY a refusal names; a selector listed twice applies
        // once.
        positions.sort_unstable();
        positions.dedup();
        positions.iter().map(|&p| self.sorted[p].as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_policy::PolicyAction;

    fn policy(namespace: &str, name: &str, scope: PolicyScope) -> Arc<Authorization> {
        Arc::new(Authorization {
            name: name.to_string(),
            namespace: namespace.to_string(),
            scope,
            action: PolicyAction::Allow,
            rules: vec![],
            dry_run: false,
        })
    }

    /// What a connection's authorization took before the index: a walk over every policy.
    fn scanned<'a>(
        index: &'a PolicyIndex,
        namespace: &str,
        selected: &[String],
    ) -> Vec<&'a Authorization> {
        index
            .all()
            .iter()
            .filter(|p| p.applies_to(namespace, selected))
            .map(|p| p.as_ref())
            .collect()
    }

    /// Policies of every scope over three namespaces (one of them the root's), inserted out of
    /// order, and names chosen so that a selector-scoped policy's key could be mistaken for
    /// another namespace's.
    fn mesh_policies() -> Vec<Arc<Authorization>> {
        let mut policies = Vec::new();
        for namespace in ["istio-system", "b", "a", "a-b"] {
            for (name, scope) in [
                ("z-ns", PolicyScope::Namespace),
                ("sel-1", PolicyScope::WorkloadSelector),
                ("sel-2", PolicyScope::WorkloadSelector),
                ("m-ns", PolicyScope::Namespace),
            ] {
                policies.push(policy(namespace, name, scope));
            }
        }
        policies.push(policy("istio-system", "mesh-wide", PolicyScope::Global));
        policies.push(policy("istio-system", "a-mesh-wide", PolicyScope::Global));
        policies
    }

    #[test]
    fn finds_what_a_walk_over_every_policy_finds_in_the_same_order() {
        let index = PolicyIndex::new(mesh_policies());
        let selections: Vec<Vec<String>> = vec![
            vec![],
            vec!["a/sel-1".into()],
            vec!["b/sel-2".into(), "a/sel-1".into()],
            vec!["a/sel-1".into(), "a/sel-1".into()],
            vec!["a/z-ns".into()],
            vec!["a/unknown".into(), "istio-system/sel-2".into()],
            vec!["a-b/sel-1".into(), "a/sel-2".into(), "b/sel-1".into()],
        ];
        for namespace in ["a", "b", "a-b", "istio-system", "elsewhere"] {
            for selected in &selections {
                let names = |found: Vec<&Authorization>| -> Vec<String> {
                    found.iter().map(|p| p.key()).collect()
                };
                assert_eq!(
                    names(index.applicable(namespace, selected)),
                    names(scanned(&index, namespace, selected)),
                    "namespace {namespace}, selected {selected:?}"
                );
            }
        }
    }

    #[test]
    fn takes_nothing_from_other_scopes() {
        let index = PolicyIndex::new(mesh_policies());
        let found: Vec<String> = index
            .applicable("a", &["a/sel-2".to_string(), "a/z-ns".to_string()])
            .iter()
            .map(|p| p.key())
            .collect();
        // The namespace-wide `a/z-ns` applies as such, not because a selector names it; no
        // policy of `b` or `a-b` applies.
        assert_eq!(
            found,
            [
                "a/m-ns",
                "a/sel-2",
                "a/z-ns",
                "istio-system/a-mesh-wide",
                "istio-system/mesh-wide"
            ]
        );
    }
}
