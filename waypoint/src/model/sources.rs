//! The mesh's workloads as request sources, served apart from the configuration as
//! `weft.waypoint.v1.SourceWorkload` resources (one per address): a pod added or removed anywhere
//! in the mesh changes one entry here, not the waypoint's whole configuration. Every
//! configuration the store puts in force shares the one table; a request's source is looked up
//! in the configuration's own workloads (endpoints, direct workloads) first, then here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use weft_proto::waypoint as proto;

use super::from_proto::source_workload_info;
use super::{ConfigError, WorkloadInfo, invalid};

/// Workload facts by address, shared by every configuration of one store.
#[derive(Debug, Clone, Default)]
pub struct SourceTable(Arc<RwLock<HashMap<IpAddr, Arc<WorkloadInfo>>>>);

impl SourceTable {
    /// The workload at `ip`, if the controller described one.
    pub fn get(&self, ip: IpAddr) -> Option<Arc<WorkloadInfo>> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .cloned()
    }

    /// How many addresses are described.
    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no address is described.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Converts every resource of one update first, then applies the update whole: on error
    /// nothing changes (the update is rejected). A resource is named by its address, which its
    /// body must repeat; `removed` are names of resources the server withdrew.
    pub fn apply(
        &self,
        added: &[(String, proto::SourceWorkload)],
        removed: &[String],
    ) -> Result<(), ConfigError> {
        let mut converted = Vec::with_capacity(added.len());
        for (name, w) in added {
            let context = format!("source workload {name}");
            if w.address != *name {
                return Err(invalid(
                    &context,
                    format!("its address {:?} is not its name", w.address),
                ));
            }
            let address = name
                .parse::<IpAddr>()
                .map_err(|_| invalid(&context, "the name is not an IP address"))?;
            converted.push((address, source_workload_info(w, &context)?));
        }
        // A removed name that is no address was never accepted: nothing to remove.
        let removed: Vec<IpAddr> = removed.iter().filter_map(|n| n.parse().ok()).collect();
        let mut table = self.0.write().unwrap_or_else(|p| p.into_inner());
        for address in removed {
            table.remove(&address);
        }
        table.extend(converted);
        Ok(())
    }
}
