//! The dialer and the acceptor over real sockets on 127.0.0.1, with certificates of a real CA.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weft_identity::{
    CertificateAuthority, CertificateFuture, TrustRoots, WorkloadCertificate, WorkloadKey,
};

use super::*;
use crate::admission::{ConnectionBudget, SourceLimit, accept_loop};
use crate::socket::PlainSocketFactory;

/// Issues from an in-process CA, once per identity; counts the roots asked for.
struct Issuing {
    ca: CertificateAuthority,
    roots: Arc<TrustRoots>,
    issued: Mutex<HashMap<SpiffeId, Arc<WorkloadCertificate>>>,
    roots_asked: AtomicUsize,
}

impl Issuing {
    fn new(ca: CertificateAuthority) -> Arc<Self> {
        let roots = Arc::new(TrustRoots::from_pem(ca.root_cert_pem()).unwrap());
        Arc::new(Self {
            ca,
            roots,
            issued: Mutex::default(),
            roots_asked: AtomicUsize::new(0),
        })
    }

    fn issue(&self, identity: &SpiffeId) -> Arc<WorkloadCertificate> {
        let key = WorkloadKey::generate().unwrap();
        let csr = key.csr_for(identity).unwrap();
        let chain = self
            .ca
            .sign_csr(&csr, identity, Duration::from_secs(3600))
            .unwrap();
        Arc::new(WorkloadCertificate::from_pem_chain(identity, &chain.to_pem_list(), key).unwrap())
    }
}

impl CertificateSource for Issuing {
    fn fetch<'a>(&'a self, identity: &'a SpiffeId) -> CertificateFuture<'a> {
        Box::pin(async move {
            let mut issued = self.issued.lock().unwrap();
            Ok(Arc::clone(
                issued
                    .entry(identity.clone())
                    .or_insert_with(|| self.issue(identity)),
            ))
        })
    }

    fn current(&self, identity: &SpiffeId) -> Option<Arc<WorkloadCertificate>> {
        self.issued.lock().unwrap().get(identity).cloned()
    }

    fn trust_roots(&self) -> Option<Arc<TrustRoots>> {
        self.roots_asked.fetch_add(1, Ordering::SeqCst);
        Some(Arc::clone(&self.roots))
    }
}

fn id(trust_domain: &str, service_account: &str) -> SpiffeId {
    SpiffeId::new(trust_domain, "default", service_account).unwrap()
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}

#[tokio::test]
async fn a_dialed_connection_is_accepted_with_both_identities_checked() {
    let certificates = Issuing::new(CertificateAuthority::generate().unwrap());
    let acceptor = HboneAcceptor::new(certificates.clone(), "cluster.local");
    let dialer = HboneDialer::new(certificates.clone());
    let (listener, address) = listener().await;
    let server = id("cluster.local", "server");
    let served = tokio::spawn({
        let server = server.clone();
        async move {
            let mut peers = Vec::new();
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut accepted = acceptor.accept(tcp, &server).await.unwrap();
                let mut byte = [0u8; 1];
                accepted.tls.read_exact(&mut byte).await.unwrap();
                accepted.tls.write_all(&byte).await.unwrap();
                accepted.tls.flush().await.unwrap();
                peers.push(accepted.peer);
            }
            peers
        }
    });
    for _ in 0..2 {
        let mut tls = dialer
            .dial(
                &PlainSocketFactory,
                address,
                &id("cluster.local", "client"),
                &server,
            )
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert!(tls.get_ref().0.get_ref().nodelay().unwrap(), "tuned");
        tls.write_all(b"x").await.unwrap();
        tls.flush().await.unwrap();
        let mut echo = [0u8; 1];
        tls.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"x");
    }
    let peers = served.await.unwrap();
    assert_eq!(
        peers,
        [id("cluster.local", "client"), id("cluster.local", "client")]
    );
    // The server configuration is built once for its certificate, not per connection (the
    // client side asks for roots on each dial).
    assert_eq!(certificates.roots_asked.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_peer_of_another_trust_domain_is_refused_though_the_root_signed_it() {
    let certificates = Issuing::new(CertificateAuthority::generate().unwrap());
    let acceptor = HboneAcceptor::new(certificates.clone(), "cluster.local");
    let (listener, address) = listener().await;
    let server = id("cluster.local", "server");
    let accepting = tokio::spawn({
        let server = server.clone();
        async move {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor.accept(tcp, &server).await.map(|a| a.peer)
        }
    });
    let _client = HboneDialer::new(certificates)
        .dial(
            &PlainSocketFactory,
            address,
            &id("evil.local", "client"),
            &server,
        )
        .await;
    let error = accepting.await.unwrap().unwrap_err().to_string();
    assert!(error.starts_with("peer identity: "), "{error}");
    assert!(error.contains("evil.local"), "{error}");
}

#[tokio::test]
async fn a_server_with_another_identity_than_expected_is_refused() {
    let certificates = Issuing::new(CertificateAuthority::generate().unwrap());
    let acceptor = HboneAcceptor::new(certificates.clone(), "cluster.local");
    let (listener, address) = listener().await;
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = acceptor.accept(tcp, &id("cluster.local", "impostor")).await;
    });
    let error = HboneDialer::new(certificates)
        .dial(
            &PlainSocketFactory,
            address,
            &id("cluster.local", "client"),
            &id("cluster.local", "server"),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, TlsError::Handshake(_)), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_holds_the_connection_for_the_handshake_timeout_only() {
    let certificates = Issuing::new(CertificateAuthority::generate().unwrap());
    let acceptor = HboneAcceptor::new(certificates, "cluster.local");
    let (listener, address) = listener().await;
    let _silent = tokio::net::TcpStream::connect(address).await.unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    let started = tokio::time::Instant::now();
    let error = acceptor
        .accept(tcp, &id("cluster.local", "server"))
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), HANDSHAKE_TIMEOUT);
    assert!(
        matches!(&error, TlsError::Handshake(e) if e.kind() == io::ErrorKind::TimedOut),
        "{error}"
    );
}

#[tokio::test]
async fn the_accept_loop_admits_by_source_and_stops_on_shutdown() {
    let (listener, address) = listener().await;
    let sources = SourceLimit::new(1, ConnectionBudget::new(10));
    let (served, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let looping = tokio::spawn(async move {
        accept_loop(
            &listener,
            |peer| sources.admit(peer.ip()),
            |stream, _, permit| {
                let _ = served.send((stream, permit));
            },
            async move {
                let _ = stopped.await;
            },
        )
        .await;
    });
    let _first = tokio::net::TcpStream::connect(address).await.unwrap();
    let held = accepted.recv().await.unwrap();
    // The same source again: closed at once, never served.
    let mut second = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), second.read(&mut byte))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(accepted.try_recv().is_err());
    // Its place is free again once the first connection is done with.
    drop(held);
    let _third = tokio::net::TcpStream::connect(address).await.unwrap();
    let _ = accepted.recv().await.unwrap();
    stop.send(()).unwrap();
    looping.await.unwrap();
}
