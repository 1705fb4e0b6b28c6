//! `weftctl`, the mesh's command line: each command in its own module, printing through
//! [`output`] (tables, JSON, YAML) and reading the controller's monitoring port and the agents'
//! admin ports through [`http`], on a local mesh ([`mesh`]) or a cluster ([`cluster`]: pods found
//! through the API server and reached through its port-forward).

pub mod analyze;
pub mod cluster;
pub mod dashboard;
pub mod http;
pub mod mesh;
pub mod node_config;
pub mod output;
pub mod precheck;
pub mod status;
pub mod waypoint;
