//! HBONE tunnels: HTTP/2 `CONNECT` over TLS 1.3 mutual TLS on port 15008, as Istio speaks it.
//! Owns the client, its connection pool and the server side; knows nothing of policy or config.
