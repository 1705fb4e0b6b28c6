//! The proxies of the scale section: node agents and waypoints as real delta ADS clients in this
//! process, each with its binary's own handlers (the agent's Address and Authorization handlers
//! over a `WorkloadStore`, the waypoint's `SourceWorkload` and `WaypointConfig` handlers over
//! its `ConfigStore`), so
//! every push is decoded, converted and applied, then ACKed or NACKed, as the proxies do. A
//! wrapper around each handler records when an update was applied (the client sends the ACK
//! as soon as the handler returns) and how many bytes it carried.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use prost::Message;
use weft_fake_apiserver::{FakeApiServer, TokenIdentity};
use weft_proto::envoy::config::core::v3::Node;
use weft_proto::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, SOURCE_WORKLOAD_TYPE_URL, WAYPOINT_CONFIG_TYPE_URL,
};
use weft_xds::{DeltaClient, Handler, Target, Update};

use super::cluster::{self, AGENT_ACCOUNT, SYSTEM_NAMESPACE, Size, WAYPOINT};

/// The audience the controller asks TokenReview for (its default).
const AUDIENCE: &str = "istio-ca";

/// One applied (or refused) update.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    pub at: Instant,
    /// Encoded size of the resources added plus the names removed.
    pub bytes: usize,
    /// Resources added or changed, and names removed.
    pub resources: usize,
    pub full_state: bool,
    pub accepted: bool,
}

/// What one proxy has applied so far.
#[derive(Debug, Default)]
pub struct ProxyLog {
    pub applied: Vec<Applied>,
}

/// Whether proxy `i` is a node agent or a waypoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Agent,
    Waypoint,
}

impl Kind {
    /// The resource types the proxy subscribes to.
    pub fn types(self) -> usize {
        match self {
            Self::Agent => 2,
            Self::Waypoint => 2,
        }
    }
}

/// Every proxy's log, by proxy index: agents first, then waypoints.
#[derive(Debug, Default)]
pub struct Fleet {
    pub kinds: Vec<Kind>,
    logs: Mutex<Vec<ProxyLog>>,
}

impl Fleet {
    pub fn logs(&self) -> MutexGuard<'_, Vec<ProxyLog>> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When every proxy had applied its first full state of every type it subscribes to.
    pub fn all_synced(&self) -> Option<Instant> {
        let logs = self.logs();
        let mut last = None;
        for (log, kind) in logs.iter().zip(&self.kinds) {
            let full: Vec<Instant> = log
                .applied
                .iter()
                .filter(|a| a.full_state && a.accepted)
                .map(|a| a.at)
                .collect();
            if full.len() < kind.types() {
                return None;
            }
            last = last.max(full.into_iter().max());
        }
        last
    }

    /// Refused updates so far (any is a failure of the run).
    pub fn refused(&self) -> usize {
        self.logs()
            .iter()
            .flat_map(|l| &l.applied)
            .filter(|a| !a.accepted)
            .count()
    }
}

/// Where proxy `proxy`'s handlers record.
struct Recorder {
    proxy: usize,
    fleet: Arc<Fleet>,
}

impl Recorder {
    fn wrap<H: Handler>(self, inner: H) -> Recording<H> {
        Recording {
            inner,
            proxy: self.proxy,
            fleet: self.fleet,
        }
    }
}

/// A proxy's own handler, recording each update it applies.
struct Recording<H> {
    inner: H,
    proxy: usize,
    fleet: Arc<Fleet>,
}

impl<H: Handler> Handler for Recording<H> {
    fn apply(&mut self, update: Update) -> Result<(), String> {
        let bytes = update.added.iter().map(Message::encoded_len).sum::<usize>()
            + update.removed.iter().map(String::len).sum::<usize>();
        let resources = update.added.len() + update.removed.len();
        let full_state = update.full_state;
        let result = self.inner.apply(update);
        let applied = Applied {
            at: Instant::now(),
            bytes,
            resources,
            full_state,
            accepted: result.is_ok(),
        };
        self.fleet.logs()[self.proxy].applied.push(applied);
        result
    }
}

fn string_value(value: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(value.to_owned())),
    }
}

fn bearer(token: String) -> weft_xds::TokenSource {
    Arc::new(move || Ok(token.clone()))
}

/// Node agent `a`'s client (its token registered with the API server, as a projected token
/// bound to its pod and node), recording into `fleet` as proxy `index`: every address of the
/// mesh, or `on_demand` only its node's (it asks for others through the client's `Demand`).
pub fn agent(
    api: &FakeApiServer,
    xds_uri: &str,
    root_pem: &str,
    (a, fleet): (usize, &Arc<Fleet>),
    on_demand: bool,
) -> anyhow::Result<DeltaClient> {
    let recording = |proxy| Recorder {
        proxy,
        fleet: fleet.clone(),
    };
    let node = cluster::node_name(a);
    let token = format!("agent-token-{node}");
    let pod = format!("{AGENT_ACCOUNT}-{node}");
    api.add_token(
        &token,
        TokenIdentity::bound(
            SYSTEM_NAMESPACE,
            AGENT_ACCOUNT,
            (&pod, &format!("uid-{pod}")),
            Some(&node),
            AUDIENCE,
        ),
    );
    let addresses = if on_demand {
        vec![weft_proto::node_subscription(&node)]
    } else {
        Vec::new()
    };
    // The agent's node and handlers, as `node_agent::xds::client` builds them.
    let store = node_agent::state::WorkloadStore::new();
    Ok(DeltaClient::new(
        Target::tls(xds_uri, root_pem)?,
        Node {
            id: format!("node-agent~{node}"),
            cluster: "Kubernetes".to_owned(),
            metadata: Some(prost_types::Struct {
                fields: [
                    ("NODE_NAME".to_owned(), string_value(&node)),
                    ("PROXY_KIND".to_owned(), string_value("node-agent")),
                ]
                .into(),
            }),
            ..Default::default()
        },
    )
    .with_bearer_token(bearer(token))
    .subscribe_names(
        ADDRESS_TYPE_URL,
        addresses,
        recording(a).wrap(node_agent::xds::AddressHandler::new(store.clone())),
    )
    .subscribe(
        AUTHORIZATION_TYPE_URL,
        recording(a).wrap(node_agent::xds::AuthorizationHandler::new(store)),
    ))
}

/// A fleet of `agents` node agents only.
pub fn agent_fleet(agents: usize) -> Arc<Fleet> {
    Arc::new(Fleet {
        logs: Mutex::new((0..agents).map(|_| ProxyLog::default()).collect()),
        kinds: vec![Kind::Agent; agents],
    })
}

/// Builds the clients of `size`'s agents and waypoints (their tokens registered with the API
/// server, as projected tokens bound to their pods and nodes), ready to run.
pub fn build(
    size: &Size,
    api: &FakeApiServer,
    xds_uri: &str,
    root_pem: &str,
) -> anyhow::Result<(Arc<Fleet>, Vec<DeltaClient>)> {
    let mut kinds = vec![Kind::Agent; size.agents];
    kinds.extend(std::iter::repeat_n(Kind::Waypoint, size.waypoints));
    let fleet = Arc::new(Fleet {
        logs: Mutex::new((0..kinds.len()).map(|_| ProxyLog::default()).collect()),
        kinds,
    });
    let recording = |proxy| Recorder {
        proxy,
        fleet: fleet.clone(),
    };
    let mut clients = Vec::new();
    for a in 0..size.agents {
        clients.push(agent(api, xds_uri, root_pem, (a, &fleet), false)?);
    }
    for w in 0..size.waypoints {
        let namespace = cluster::namespace_name(w);
        let token = format!("waypoint-token-{namespace}");
        let pod = format!("{WAYPOINT}-0");
        api.add_token(
            &token,
            TokenIdentity::bound(
                &namespace,
                WAYPOINT,
                (&pod, &format!("uid-{namespace}-{pod}")),
                None,
                AUDIENCE,
            ),
        );
        // The waypoint's node id and subscription, as the waypoint binary sends them.
        let store = waypoint::ConfigStore::default();
        let client = DeltaClient::new(
            Target::tls(xds_uri, root_pem)?,
            Node {
                id: format!(
                    "waypoint~{}~{WAYPOINT}.{namespace}~{namespace}.svc.cluster.local",
                    cluster::waypoint_ip(w)
                ),
                cluster: WAYPOINT.to_owned(),
                ..Default::default()
            },
        )
        .with_bearer_token(bearer(token))
        .subscribe(
            SOURCE_WORKLOAD_TYPE_URL,
            recording(size.agents + w).wrap(store.source_handler()),
        )
        .subscribe_names(
            WAYPOINT_CONFIG_TYPE_URL,
            vec![format!("{namespace}/{WAYPOINT}")],
            recording(size.agents + w).wrap(store.xds_handler()),
        );
        clients.push(client);
    }
    Ok((fleet, clients))
}
