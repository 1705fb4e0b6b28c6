//! SPIFFE identities (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`), workload certificates and the
//! rustls client and server configurations that verify them. No I/O beyond what rustls does.
