//! Each served pod's listeners inside its network namespace (15001 outbound on loopback, 15006
//! inbound plaintext, 15008 HBONE; one set per worker), admitting connections and handing them
//! to the handlers; and its DNS proxy (15053 on loopback, on one worker).

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Weak, atomic::Ordering},
};

use tokio::{net::TcpListener, task::JoinHandle};
use tracing::Instrument;
use weft_ebpf_common::ports::{HBONE, INBOUND, OUTBOUND};
use weft_hbone::{
    HboneAcceptor, SocketFactory,
    admission::{Permit, Refused, accept_loop},
};
use weft_proxy_core::drain::DrainWatch;

use super::{
    connections::PodConnections,
    context::ProxyContext,
    error::POD_LEFT,
    inbound, outbound,
    served::{ServedPod, ServedPods},
};
use crate::{
    dns_proxy::{
        self,
        server::{DnsSettings, PodDns},
    },
    ebpf::netns_cookie,
    netns::PodNetns,
};

/// One served pod's listeners. Dropping it (the pod left the mesh) closes them, forgets the pod
/// and closes every connection the pod has, in and out, as ztunnel closes a removed pod's.
/// When the agent drains, the listeners close (the capture then fails closed) and the
/// connections finish on their own, the pod staying served.
pub struct PodProxy {
    uid: String,
    pods: ServedPods,
    connections: PodConnections,
    /// Held by its accept loop alone, so that the socket closes when the loop ends.
    inbound_plaintext: Weak<TcpListener>,
    tasks: Vec<JoinHandle<()>>,
    /// The pod's DNS proxy (127.0.0.1:15053), stopped with the rest.
    _dns: PodDns,
}

impl PodProxy {
    /// Opens 15001 (outbound, loopback only), 15006 and 15008 inside the pod's namespace, one
    /// set per worker, and starts serving them, each set on its own worker. Each port is one
    /// `SO_REUSEPORT` group: the kernel spreads connections over the workers, and over two
    /// agents while the next one takes the pod over from a draining one (ztunnel's in-pod
    /// listeners do the same for its rolling updates); a listener that closes hands the
    /// connections queued on it to the group ([`PodNetns::migrate_queued_connections`]).
    pub fn start(
        context: Arc<ProxyContext>,
        uid: String,
        netns: PodNetns,
        drain: DrainWatch,
        dns: Arc<DnsSettings>,
    ) -> io::Result<Self> {
        let workers = context.workers.handles();
        if let Err(error) = netns.migrate_queued_connections() {
            // The hand-over still works; a connection queued on the draining agent's listener
            // at the moment it closes is reset instead of moving to the next agent's.
            tracing::warn!(pod = %uid, %error, "connections queued on a closing listener will not migrate");
        }
        let sets = workers
            .iter()
            .map(|_| {
                io::Result::Ok([
                    netns.listen(SocketAddr::from((Ipv4Addr::LOCALHOST, OUTBOUND)), true)?,
                    netns.listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, INBOUND)), true)?,
                    netns.listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, HBONE)), true)?,
                ])
            })
            .collect::<io::Result<Vec<_>>>()?;
        let netns_cookie = netns_cookie(&sets[0][1])?;
        let pod = Arc::new(ServedPod {
            uid: uid.clone(),
            netns,
            netns_cookie,
            acceptor: HboneAcceptor::new(
                Arc::clone(&context.certificates),
                context.trust_domain.clone(),
            ),
        });
        context.pods.insert(pod.clone());

        let span = |direction: &'static str| tracing::info_span!("listener", pod = %uid, direction);
        // Every listener draws on the agent's connection budget; the HBONE port, which anyone
        // can reach before proving anything, also limits each source address.
        let budget = &context.connection_limits.budget;
        let hbone_sources = context.connection_limits.sources();
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
            inbound_plaintext.get_or_insert_with(|| Arc::downgrade(&plaintext_listener));
            let any_source = {
                let budget = Arc::clone(budget);
                move |_: SocketAddr| budget.admit()
            };
            tasks.push(
                worker.spawn(
                    accept_loop_on(
                        outbound_listener,
                        any_source.clone(),
                        {
                            let (context, pod) = (context.clone(), pod.clone());
                            move |stream, peer, _| {
                                outbound::handle(context.clone(), pod.clone(), stream, peer)
                            }
                        },
                        drain.clone(),
                    )
                    .instrument(span("outbound")),
                ),
            );
            tasks.push(
                worker.spawn(
                    accept_loop_on(
                        plaintext_listener,
                        any_source,
                        {
                            let (context, pod) = (context.clone(), pod.clone());
                            move |stream, peer, _| {
                                inbound::handle_plaintext(
                                    context.clone(),
                                    pod.clone(),
                                    stream,
                                    peer,
                                )
                            }
                        },
                        drain.clone(),
                    )
                    .instrument(span("inbound_plaintext")),
                ),
            );
            tasks.push(
                worker.spawn(
                    accept_loop_on(
                        hbone_listener,
                        {
                            let sources = Arc::clone(&hbone_sources);
                            move |peer: SocketAddr| sources.admit(peer.ip())
                        },
                        {
                            let (context, pod) = (context.clone(), pod.clone());
                            move |stream, peer, drain| {
                                inbound::handle_hbone(
                                    context.clone(),
                                    pod.clone(),
                                    stream,
                                    peer,
                                    drain,
                                )
                            }
                        },
                        drain.clone(),
                    )
                    .instrument(span("inbound_hbone")),
                ),
            );
        }
        let inbound_plaintext = inbound_plaintext
            .ok_or_else(|| io::Error::other("the proxy has no worker to serve the pod on"))?;
        // DNS is light: one worker serves a pod's, the pods spread over the workers.
        let dns_worker =
            &workers[context.round_robin.fetch_add(1, Ordering::Relaxed) % workers.len()];
        let dns = dns_proxy::server::start(
            context.store.clone(),
            dns,
            context.metrics.clone(),
            &pod,
            dns_worker,
        )?;
        Ok(Self {
            uid,
            pods: context.pods.clone(),
            connections: context.connections.clone(),
            inbound_plaintext,
            tasks,
            _dns: dns,
        })
    }

    /// The inbound plaintext listener, for the eBPF `sk_lookup` program to steer connections
    /// to; `None` once it closed (the agent is draining).
    pub fn inbound_plaintext_listener(&self) -> Option<Arc<TcpListener>> {
        self.inbound_plaintext.upgrade()
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

/// Accepts on `listener` until the task is aborted or the drain starts (the listener then
/// closes), admitting each connection by `admit` and serving it with `handle` on this worker
/// (a connection never leaves the thread that accepted it) for as long as its permit is held;
/// each connection holds a drain watch until it ends.
async fn accept_loop_on<A, F, Fut>(
    listener: Arc<TcpListener>,
    admit: A,
    handle: F,
    drain: DrainWatch,
) where
    A: Fn(SocketAddr) -> Result<Permit, Refused>,
    F: Fn(tokio::net::TcpStream, SocketAddr, DrainWatch) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let serve = |stream, peer, permit: Permit| {
        let connection_drain = drain.clone();
        let serve = handle(stream, peer, connection_drain.clone());
        tokio::spawn(
            async move {
                serve.await;
                drop(permit);
                drop(connection_drain);
            }
            .in_current_span(),
        );
    };
    accept_loop(&listener, admit, serve, drain.signaled()).await;
    tracing::info!("listener closed: draining");
}
