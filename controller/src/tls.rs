//! gRPC over TLS (Istio's 15012): a serving certificate for the controller's DNS names and the
//! addresses it is reached at, issued
//! by the mesh CA itself so that every proxy holding the root can verify it, renewed at half its
//! lifetime without restarting the listener, and an accept loop that hands tonic finished TLS
//! streams (handshakes run concurrently and are bounded in time).

use std::io;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use weft_identity::{CaError, CertificateAuthority};

/// Lifetime of the serving certificate; it is renewed at half of it.
pub const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the serving certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("issuing the serving certificate: {0}")]
    Issue(#[from] CaError),
    #[error("the issued serving certificate cannot be used: {0}")]
    Unusable(String),
}

/// The current serving certificate, swapped in place on renewal.
#[derive(Debug)]
pub struct ServingCertificates {
    ca: Arc<CertificateAuthority>,
    names: Vec<String>,
    current: RwLock<(Arc<CertifiedKey>, SystemTime)>,
}

fn certified_key(
    ca: &CertificateAuthority,
    names: &[String],
    ttl: Duration,
) -> Result<(Arc<CertifiedKey>, SystemTime), ServingError> {
    let issued = ca.issue_serving_certificate(names, ttl)?;
    let chain = issued
        .chain_pem
        .iter()
        .flat_map(|pem| CertificateDer::pem_slice_iter(pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServingError::Unusable(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .map_err(|e| ServingError::Unusable(e.to_string()))?;
    let certified = CertifiedKey::from_der(chain, key, &weft_identity::crypto_provider())
        .map_err(|e| ServingError::Unusable(e.to_string()))?;
    Ok((Arc::new(certified), issued.not_after))
}

impl ServingCertificates {
    /// Issues the first certificate for `names` (the first name is the common name).
    pub fn new(
        ca: Arc<CertificateAuthority>,
        names: Vec<String>,
    ) -> Result<Arc<Self>, ServingError> {
        let current = certified_key(&ca, &names, SERVING_TTL)?;
        Ok(Arc::new(Self {
            ca,
            names,
            current: RwLock::new(current),
        }))
    }

    /// When the current certificate should be replaced: half way through its life.
    fn refresh_at(&self) -> SystemTime {
        let (_, not_after) = *self.current.read().unwrap_or_else(|p| p.into_inner());
        let left = not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        SystemTime::now() + left / 2
    }

    /// Renews the certificate at half life until `shutdown`; a failed renewal is retried in a
    /// minute while the old certificate keeps serving.
    pub async fn renew(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let wait = self
                .refresh_at()
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_secs(1));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            match certified_key(&self.ca, &self.names, SERVING_TTL) {
                Ok(next) => {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
                    tracing::info!(names = ?self.names, "serving certificate renewed");
                }
                Err(error) => {
                    tracing::warn!(%error, "serving certificate renewal failed; retrying in 60s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(60)) => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }
}

impl ResolvesServerCert for ServingCertificates {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .clone(),
        )
    }
}

/// ALPN of the gRPC port.
pub const GRPC_ALPN: &[&[u8]] = &[b"h2"];
/// ALPN of the webhook port: the API server speaks either.
pub const WEBHOOK_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The TLS configuration of a port: the serving certificate, `alpn`, no client certificates
/// (gRPC callers authenticate with their token; the API server is not asked for one).
pub fn server_config(
    certificates: Arc<ServingCertificates>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, rustls::Error> {
    // The mesh's key exchanges (X25519MLKEM768 first; only it under `COMPLIANCE_POLICY=pqc`):
    // ztunnel under that policy dials 15012 with nothing else.
    let mut config = rustls::ServerConfig::builder_with_provider(weft_identity::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Accepts on `listener` and yields TLS streams once their handshake completes. Handshakes run
/// on their own tasks, so one slow client holds up no one else.
pub fn incoming(
    listener: TcpListener,
    config: rustls::ServerConfig,
) -> ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // Ends (closing the listener) as soon as the server drops the stream.
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = sender.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "tls handshake failed"),
                    Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}

/// The addresses a listener bound to `listen` is reached at, as serving-certificate names
/// (ztunnel and istioctl dial the controller by address and verify it with no name override):
/// the address itself when the listener is bound to one, else every address of `local` of its
/// family (`::` takes both), except IPv6 link-local ones (unusable without a zone).
pub fn reached_at(listen: IpAddr, local: impl IntoIterator<Item = IpAddr>) -> Vec<String> {
    let mut addresses: Vec<IpAddr> = if listen.is_unspecified() {
        local
            .into_iter()
            .filter(|ip| match ip {
                IpAddr::V4(_) => true,
                IpAddr::V6(v6) => listen.is_ipv6() && !v6.is_unicast_link_local(),
            })
            .collect()
    } else {
        vec![listen]
    };
    addresses.sort();
    addresses.dedup();
    addresses.iter().map(ToString::to_string).collect()
}

/// Every address of this host's (this network namespace's) interfaces; none, with a warning,
/// when they cannot be listed.
pub fn local_addresses() -> Vec<IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(interfaces) => interfaces
            .filter_map(|interface| {
                let address = interface.address?;
                address
                    .as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            })
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "listing the interface addresses for the serving certificate");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier;

    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    #[test]
    fn a_listener_is_reached_at_its_own_address_or_every_local_one_of_its_family() {
        let local = ips(&[
            "127.0.0.1",
            "10.0.0.7",
            "::1",
            "fe80::1",
            "fd00::7",
            "10.0.0.7",
        ]);
        let cases: [(&str, &[&str]); 4] = [
            ("10.0.0.7", &["10.0.0.7"]),
            ("fd00::7", &["fd00::7"]),
            ("0.0.0.0", &["10.0.0.7", "127.0.0.1"]),
            ("::", &["10.0.0.7", "127.0.0.1", "::1", "fd00::7"]),
        ];
        for (listen, expected) in cases {
            assert_eq!(
                reached_at(listen.parse().unwrap(), local.clone()),
                expected.to_vec(),
                "{listen}"
            );
        }
    }

    #[test]
    fn this_host_has_at_least_its_loopback_address() {
        assert!(local_addresses().contains(&IpAddr::from([127, 0, 0, 1])));
    }

    #[test]
    fn the_serving_certificate_verifies_for_a_dialled_address() {
        let ca = Arc::new(CertificateAuthority::generate().unwrap());
        let mut names = vec!["istiod.istio-system.svc".to_owned()];
        names.extend(reached_at(
            IpAddr::from([0, 0, 0, 0]),
            ips(&["127.0.0.1", "10.0.0.7"]),
        ));
        let serving = ServingCertificates::new(ca.clone(), names).unwrap();
        let resolved = serving.current.read().unwrap().0.clone();
        let roots = {
            let mut roots = rustls::RootCertStore::empty();
            let root = CertificateDer::from_pem_slice(ca.root_cert_pem().as_bytes()).unwrap();
            roots.add(root).unwrap();
            Arc::new(roots)
        };
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots,
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .unwrap();
        let now = rustls_pki_types::UnixTime::now();
        for (dialled, valid) in [("10.0.0.7", true), ("127.0.0.1", true), ("10.0.0.8", false)] {
            let name =
                rustls_pki_types::ServerName::IpAddress(dialled.parse::<IpAddr>().unwrap().into());
            let verified = verifier.verify_server_cert(
                &resolved.cert[0],
                &resolved.cert[1..],
                &name,
                &[],
                now,
            );
            assert_eq!(verified.is_ok(), valid, "{dialled}: {verified:?}");
        }
    }
}
