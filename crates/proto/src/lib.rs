//! Generated protobuf and gRPC code for the mesh's wire protocols: the delta ADS stream, Istio's
//! workload and authorization resources, the certificate service and the waypoint's L7 resource.
//! This crate holds generated code only; domain types and their validation live with their users.
