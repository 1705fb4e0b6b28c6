//! The node agent's L4 authorization of one connection as the mesh's policies grow, in this
//! process with the agent's own store and its own check (`authorize_connection`): the
//! destination pod is selected by two policies and its namespace has one, the mesh one; every
//! other policy belongs to other namespaces' workloads. The baseline row walks every policy,
//! as the check did before the store indexed them, in the same run.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use node_agent::proxy::plan::authorize_connection;
use node_agent::state::{TunnelProtocol, Workload, WorkloadStore};
use weft_identity::SpiffeId;
use weft_policy::l4::{
    Authorization, Clause, ConnectionContext, ConnectionMatch, PolicyScope, Rule, evaluate,
};
use weft_policy::{Decision, PolicyAction, WildcardMatch};

/// Policy counts of the curve; a quick run takes the first two.
pub const POLICIES: [usize; 3] = [10, 100, 1000];
/// Namespaces the other policies are spread over.
pub const NAMESPACES_OF_OTHERS: usize = 50;
pub const DECISIONS: usize = 200_000;
const DECISION_BUDGET: Duration = Duration::from_secs(2);

/// What one policy count measured.
#[derive(Debug)]
pub struct PolicyFigures {
    pub policies: usize,
    /// Mean nanoseconds per connection's check, indexed (the agent's) and walking every policy.
    pub indexed_ns: f64,
    pub scan_ns: f64,
}

fn allow(namespace: &str, name: &str, scope: PolicyScope, principal: &str) -> Authorization {
    Authorization {
        name: name.to_string(),
        namespace: namespace.to_string(),
        scope,
        action: PolicyAction::Allow,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![ConnectionMatch {
                    principals: vec![WildcardMatch::parse_istio(principal)],
                    ..Default::default()
                }],
            }],
        }],
        dry_run: false,
    }
}

/// A store with `count` policies, the destination's four among them, and the destination.
fn store(count: usize) -> (WorkloadStore, Workload) {
    let store = WorkloadStore::new();
    let mut destination = node_agent::testing::workload(
        "server",
        "app",
        "server",
        "node1",
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        TunnelProtocol::Hbone,
    );
    destination.authorization_policies = vec!["app/server-a".into(), "app/server-b".into()];
    store.insert_workload(destination.clone());
    store.insert_policy(allow(
        "istio-system",
        "mesh",
        PolicyScope::Global,
        "cluster.local/ns/istio-system/*",
    ));
    store.insert_policy(allow(
        "app",
        "namespace",
        PolicyScope::Namespace,
        "cluster.local/ns/other/*",
    ));
    for name in ["server-a", "server-b"] {
        store.insert_policy(allow(
            "app",
            name,
            PolicyScope::WorkloadSelector,
            "cluster.local/ns/client/sa/client",
        ));
    }
    for i in 0..count.saturating_sub(4) {
        let namespace = format!("ns-{}", i % NAMESPACES_OF_OTHERS);
        let scope = if i % 5 == 0 {
            PolicyScope::Namespace
        } else {
            PolicyScope::WorkloadSelector
        };
        store.insert_policy(allow(
            &namespace,
            &format!("policy-{i}"),
            scope,
            &format!("cluster.local/ns/{namespace}/sa/caller"),
        ));
    }
    (store, destination)
}

/// The check as it was: every policy walked, each selector-scoped one's key formatted.
fn scanned(store: &WorkloadStore, destination: &Workload, context: &ConnectionContext) -> bool {
    let policies = store.policies();
    let applicable = policies
        .iter()
        .filter(|p| p.applies_to(&destination.namespace, &destination.authorization_policies))
        .map(|p| p.as_ref());
    evaluate(applicable, context) == Decision::Allow
}

fn mean_ns(mut decide: impl FnMut() -> bool) -> f64 {
    let started = Instant::now();
    let mut done = 0;
    while done < DECISIONS && started.elapsed() < DECISION_BUDGET {
        for _ in 0..1000 {
            black_box(decide());
        }
        done += 1000;
    }
    started.elapsed().as_secs_f64() * 1e9 / done as f64
}

fn measure(count: usize) -> anyhow::Result<PolicyFigures> {
    let (store, destination) = store(count);
    let peer = SpiffeId::new("cluster.local", "client", "client")?;
    let source = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 7));
    let target = SocketAddr::new(destination.addresses[0], 8080);
    let context = ConnectionContext {
        src_identity: Some(peer.clone()),
        src_ip: source,
        dst_ip: target.ip(),
        dst_port: target.port(),
    };
    let indexed =
        || authorize_connection(&store, &destination, Some(&peer), source, target).is_ok();
    // The client is allowed by a selector-scoped policy of its destination: both checks must
    // say so, and both must refuse a peer no policy allows.
    anyhow::ensure!(indexed() && scanned(&store, &destination, &context));
    let stranger = SpiffeId::new("cluster.local", "ns-1", "caller")?;
    let refused = ConnectionContext {
        src_identity: Some(stranger.clone()),
        ..context.clone()
    };
    anyhow::ensure!(
        authorize_connection(&store, &destination, Some(&stranger), source, target).is_err()
            && !scanned(&store, &destination, &refused)
    );
    Ok(PolicyFigures {
        policies: store.policies().len(),
        indexed_ns: mean_ns(indexed),
        scan_ns: mean_ns(|| scanned(&store, &destination, &context)),
    })
}

/// Runs the authorization part at its policy counts.
pub fn run(quick: bool) -> anyhow::Result<Vec<PolicyFigures>> {
    let counts: &[usize] = if quick { &POLICIES[..2] } else { &POLICIES };
    counts
        .iter()
        .map(|&count| {
            eprintln!("node: authorization with {count} policies");
            measure(count)
        })
        .collect()
}
