//! On-demand addresses (ztunnel's `XDS_ON_DEMAND`): an agent that subscribes only to its own
//! node's workloads asks the controller for a destination it does not know at the first
//! connection to it, and the connection waits (bounded) for the answer before it is planned.

use std::net::IpAddr;
use std::time::Duration;

use weft_proto::{ADDRESS_TYPE_URL, address_subscription};
use weft_xds::Demand;

use super::{GatewayAddress, GatewayDestination, WorkloadStore};

/// How long a connection to an address the agent does not know waits for the controller's
/// answer; then it is planned with what the agent knows (as for an address outside the mesh).
pub const ON_DEMAND_WAIT: Duration = Duration::from_secs(5);

/// The network of every address the controller serves (a single network).
const NETWORK: &str = "";

impl WorkloadStore {
    /// Asks the controller through `demand` for addresses the store does not hold (on-demand
    /// mode). Set once, before connections are served.
    pub fn set_demand(&self, demand: Demand) {
        let _ = self.demand.set(demand);
    }

    /// Whether the store asks for what it does not hold.
    pub fn on_demand(&self) -> bool {
        self.demand.get().is_some()
    }

    /// Makes sure the store holds what a connection to `ip` needs, in on-demand mode: the
    /// workload or service at `ip` (with the service's endpoints) and its waypoint, each
    /// asked for if missing and waited for up to [`ON_DEMAND_WAIT`]. Without on-demand, or
    /// when everything is known, returns at once.
    pub async fn fetch_destination(&self, ip: IpAddr) {
        let Some(demand) = self.demand.get() else {
            return;
        };
        if !self.knows_address(ip) {
            ask(demand, address_subscription(NETWORK, ip)).await;
        }
        let waypoint = self
            .service_by_vip(ip)
            .and_then(|s| s.waypoint.clone())
            .or_else(|| self.workload_by_ip(ip).and_then(|w| w.waypoint.clone()));
        match waypoint {
            Some(GatewayAddress {
                destination: GatewayDestination::Address(waypoint),
                ..
            }) if !self.knows_address(waypoint) => {
                ask(demand, address_subscription(NETWORK, waypoint)).await;
            }
            Some(GatewayAddress {
                destination: GatewayDestination::Service(key),
                ..
            }) if self.service(&key).is_none() => ask(demand, key.to_string()).await,
            _ => {}
        }
    }

    /// The workload or service at `ip`, asked for first if the store lacks it in on-demand
    /// mode (an inbound connection's source, as ztunnel fetches it for its metrics).
    pub async fn fetch_address(&self, ip: IpAddr) {
        if let Some(demand) = self.demand.get()
            && !self.knows_address(ip)
        {
            ask(demand, address_subscription(NETWORK, ip)).await;
        }
    }

    fn knows_address(&self, ip: IpAddr) -> bool {
        let indexes = self.read();
        indexes.workloads_by_ip.contains_key(&ip) || indexes.services_by_vip.contains_key(&ip)
    }
}

async fn ask(demand: &Demand, name: String) {
    match tokio::time::timeout(ON_DEMAND_WAIT, demand.request(ADDRESS_TYPE_URL, &name)).await {
        Ok(Ok(())) => tracing::debug!(%name, "address fetched on demand"),
        Ok(Err(error)) => tracing::warn!(%name, %error, "address not fetched on demand"),
        Err(_) => tracing::warn!(
            %name,
            wait_ms = ON_DEMAND_WAIT.as_millis() as u64,
            "no answer for an address fetched on demand"
        ),
    }
}

#[cfg(test)]
mod tests;
