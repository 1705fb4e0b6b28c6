//! The pods this agent serves and, for each, its three listeners inside the pod's network
//! namespace.

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, SocketAddr, TcpListener as StdListener},
    os::fd::{AsFd, BorrowedFd},
    sync::{Arc, Mutex, RwLock},
};

use socket2::{Domain, Socket, Type};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::Instrument;
use weft_hbone::admission::{AcceptBackoff, Permit, Refused, SourceLimit};
use weft_identity::WorkloadCertificate;

use super::{
    HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, ProxyContext,
    connections::{POD_LEFT, PodConnections},
    inbound, outbound,
};
use crate::{
    certificates::CertificateSource,
    ebpf::{NetnsCookie, netns_cookie},
    netns::PodNetns,
};

/// Listen backlog: connection bursts from a pod must not be refused by the kernel.
const BACKLOG: i32 = 1024;

/// A pod the agent serves: its uid (the key into the workload store) and namespace handle.
#[derive(Debug)]
pub struct ServedPod {
    pub uid: String,
    pub netns: PodNetns,
    /// Tells this pod's namespace apart from every other (all have their own 127.0.0.1).
    pub netns_cookie: NetnsCookie,
    /// The HBONE server configuration for the pod's current certificate, rebuilt only when the
    /// certificate changes (not per connection).
    pub(crate) server_tls: Mutex<Option<(Arc<WorkloadCertificate>, Arc<rustls::ServerConfig>)>>,
}

/// The registry of served pods; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ServedPods(Arc<RwLock<HashMap<String, Arc<ServedPod>, foldhash::fast::RandomState>>>);

impl ServedPods {
    pub fn get(&self, uid: &str) -> Option<Arc<ServedPod>> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .cloned()
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(uid)
    }

    fn insert(&self, pod: Arc<ServedPod>) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pod.uid.clone(), pod);
    }

    fn remove(&self, uid: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }
}

/// One served pod's listeners. Dropping it (the pod left the mesh) closes them, forgets the pod
/// and closes every connection the pod has, in and out, as ztunnel closes a removed pod's.
pub struct PodProxy {
    uid: String,
    pods: ServedPods,
    connections: PodConnections,
    inbound_plaintext: Arc<TcpListener>,
    tasks: Vec<JoinHandle<()>>,
}

impl PodProxy {
    /// Opens 15001 (outbound, loopback only), 15006 and 15008 inside the pod's namespace, one
    /// set per worker (in one `SO_REUSEPORT` group per port, so the kernel spreads connections
    /// over the workers), and starts serving them, each set on its own worker.
    pub fn start<C: CertificateSource>(
        context: Arc<ProxyContext<C>>,
        uid: String,
        netns: PodNetns,
    ) -> io::Result<Self> {
        let workers = context.workers.handles();
        let reuse_port = workers.len() > 1;
        let sets = netns.run(|| {
            workers
                .iter()
                .map(|_| {
                    io::Result::Ok([
                        listen(
                            SocketAddr::from((Ipv4Addr::LOCALHOST, OUTBOUND_PORT)),
                            reuse_port,
                        )?,
                        listen(
                            SocketAddr::from((Ipv4Addr::UNSPECIFIED, INBOUND_PLAINTEXT_PORT)),
                            reuse_port,
                        )?,
                        listen(
                            SocketAddr::from((Ipv4Addr::UNSPECIFIED, HBONE_PORT)),
                            reuse_port,
                        )?,
                    ])
                })
                .collect::<io::Result<Vec<_>>>()
        })??;
        let netns_cookie = netns_cookie(&sets[0][1])?;
        let pod = Arc::new(ServedPod {
            uid: uid.clone(),
            netns,
            netns_cookie,
            server_tls: Mutex::new(None),
        });
        context.pods.insert(pod.clone());

        let span = |direction: &'static str| tracing::info_span!("listener", pod = %uid, direction);
        // Every listener draws on the agent's connection budget; the HBONE port, which anyone
        // can reach before proving anything, also limits each source address.
        let budget = &context.connection_limits.budget;
        let hbone_sources =
            SourceLimit::new(context.connection_limits.per_source, Arc::clone(budget));
        let mut tasks = Vec::with_capacity(3 * workers.len());
        let mut inbound_plaintext = None;
        for (worker, [outbound_listener, plaintext_listener, hbone_listener]) in
            workers.iter().zip(sets)
        {
            // Registers the sockets with this worker's reactor.
            let _entered = worker.enter();
            let outbound_listener = Arc::new(TcpListener::from_std(outbound_listener)?);
            let plaintext_listener = Arc::new(TcpListener::from_std(plaintext_listener)?);
            let hbone_listener = Arc::new(TcpListener::from_std(hbone_listener)?);
            inbound_plaintext.get_or_insert_with(|| plaintext_listener.clone());
            let any_source = {
                let budget = Arc::clone(budget);
                move |_: SocketAddr| budget.admit()
            };
            tasks.push(
                worker.spawn(
                    accept_loop(outbound_listener, any_source.clone(), {
                        let (context, pod) = (context.clone(), pod.clone());
                        move |stream, peer| {
                            outbound::handle(context.clone(), pod.clone(), stream, peer)
                        }
                    })
                    .instrument(span("outbound")),
                ),
            );
            tasks.push(
                worker.spawn(
                    accept_loop(plaintext_listener, any_source, {
                        let (context, pod) = (context.clone(), pod.clone());
                        move |stream, peer| {
                            inbound::handle_plaintext(context.clone(), pod.clone(), stream, peer)
                        }
                    })
                    .instrument(span("inbound_plaintext")),
                ),
            );
            tasks.push(
                worker.spawn(
                    accept_loop(
                        hbone_listener,
                        {
                            let sources = Arc::clone(&hbone_sources);
                            move |peer: SocketAddr| sources.admit(peer.ip())
                        },
                        {
                            let (context, pod) = (context.clone(), pod.clone());
                            move |stream, peer| {
                                inbound::handle_hbone(context.clone(), pod.clone(), stream, peer)
                            }
                        },
                    )
                    .instrument(span("inbound_hbone")),
                ),
            );
        }
        let inbound_plaintext = inbound_plaintext
            .ok_or_else(|| io::Error::other("the proxy has no worker to serve the pod on"))?;
        Ok(Self {
            uid,
            pods: context.pods.clone(),
            connections: context.connections.clone(),
            inbound_plaintext,
            tasks,
        })
    }

    /// The inbound plaintext listener, for the eBPF `sk_lookup` program to steer connections to.
    pub fn inbound_plaintext_listener(&self) -> BorrowedFd<'_> {
        self.inbound_plaintext.as_fd()
    }
}

impl Drop for PodProxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.pods.remove(&self.uid);
        let closed = self.connections.revoke_group(&self.uid, POD_LEFT);
        tracing::info!(pod = %self.uid, closed, "pod no longer served: its connections are closed");
    }
}

fn listen(address: SocketAddr, reuse_port: bool) -> io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Accepts connections, admits each by `admit` (a refused one is closed at once) and serves it
/// with `handle` for as long as its permit is held.
async fn accept_loop<A, F, Fut>(listener: Arc<TcpListener>, admit: A, handle: F)
where
    A: Fn(SocketAddr) -> Result<Permit, Refused>,
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = AcceptBackoff::default();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff.succeeded();
                let Ok(permit) = admit(peer) else {
                    continue;
                };
                let serve = handle(stream, peer);
                // On this worker: the connection never leaves the thread that accepted it.
                tokio::spawn(
                    async move {
                        serve.await;
                        drop(permit);
                    }
                    .in_current_span(),
                );
            }
            Err(error) => {
                // Out of descriptors, mostly: the pending connection keeps the listener
                // readable, so wait instead of spinning.
                tokio::time::sleep(backoff.failed(&error)).await;
            }
        }
    }
}
