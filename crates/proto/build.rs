//! Generates the Rust types and gRPC stubs from the `.proto` files under `proto/`.

use std::io;

/// Every file compiled; imports between them resolve against the `proto/` include root.
const PROTO_FILES: &[&str] = &[
    "proto/google/rpc/status.proto",
    "proto/envoy/config/core/v3/base.proto",
    "proto/envoy/config/core/v3/address.proto",
    "proto/envoy/data/accesslog/v3/accesslog.proto",
    "proto/envoy/service/accesslog/v3/als.proto",
    "proto/envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "proto/envoy/service/discovery/v3/discovery.proto",
    "proto/envoy/service/discovery/v3/ads.proto",
    "proto/istio/workload/workload.proto",
    "proto/istio/security/authorization.proto",
    "proto/istio/v1/auth/ca.proto",
    "proto/weft/waypoint/v1/waypoint.proto",
    "proto/weft/mesh/v1/mesh.proto",
    "proto/weft/sample/v1/echo.proto",
    "proto/runtime/v1/api.proto",
];

const INCLUDE_DIRS: &[&str] = &["proto"];

fn main() -> io::Result<()> {
    let mut config = tonic_prost_build::Config::new();
    // `prost::Name` on every message gives `full_name()` and `type_url()` for packing into Any.
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");
    // Ordered maps in the resources the controller serves: prost encodes map entries in
    // iteration order, and the controller's store versions a resource by the hash of its bytes,
    // so a HashMap would make an unchanged resource look changed on every translation.
    config.btree_map([".istio", ".weft"]);

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, PROTO_FILES, INCLUDE_DIRS)?;

    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
