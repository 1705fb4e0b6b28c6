//! The controller: ingests Kubernetes and Istio configuration (from the API server or a local
//! directory), validates and translates it, pushes it to node agents and waypoints over delta ADS,
//! and is the mesh's certificate authority. It carries no application traffic.
