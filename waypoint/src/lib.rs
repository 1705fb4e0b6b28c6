//! The waypoint: an L7 proxy that receives the traffic of the services that use it over HBONE,
//! applies their VirtualService, DestinationRule and L7 AuthorizationPolicy configuration, and
//! sends each request on over HBONE. It owns request-level behaviour; it never loads eBPF.
