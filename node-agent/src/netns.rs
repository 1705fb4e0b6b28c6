//! Entering a pod's network namespace for as long as it takes to create a socket.
//!
//! A socket belongs to the namespace of the thread that created it, and stays there. The agent
//! lives in its node's namespace; to listen and connect *inside* a pod (so listeners see which pod
//! a connection came from and upstream connections carry the pod's address), the creating thread
//! switches into the pod's namespace, creates the socket and switches back. `setns` is a cheap
//! syscall, so this is done on the calling thread, not on a helper thread. A [`PodNetns`] is the
//! HBONE transport's socket factory for the pod's connections and listeners.

use std::{
    fs::File,
    io,
    net::SocketAddr,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::Arc,
};

use nix::sched::{CloneFlags, setns};
use tokio::net::TcpSocket;

mod client_address;
pub use client_address::ClientAddressRoutes;

/// A handle on a pod's network namespace, able to run code inside it.
#[derive(Debug, Clone)]
pub struct PodNetns {
    pod: Arc<File>,
    home: Arc<File>,
    path: PathBuf,
    /// Whether connections to the application may come from the client's address.
    client_address_routes: ClientAddressRoutes,
}

impl PodNetns {
    /// Opens the namespace at `path`; `home` is the agent's own namespace to come back to.
    pub fn open(path: &Path, home: Arc<File>) -> io::Result<Self> {
        let pod = File::open(path)?;
        Ok(Self {
            pod: Arc::new(pod),
            home,
            path: path.to_path_buf(),
            client_address_routes: ClientAddressRoutes::default(),
        })
    }

    /// Routes the application's replies to its clients' addresses back to the agent inside
    /// the pod (see [`client_address`]), so that [`PodNetns::connect_from`] can connect from
    /// them. Without it, every connection to the application comes from the pod's address.
    pub fn keep_client_addresses(mut self) -> io::Result<Self> {
        self.client_address_routes = self.run(client_address::install)??;
        Ok(self)
    }

    /// The agent's own namespace, opened once at start.
    pub fn current() -> io::Result<Arc<File>> {
        File::open("/proc/thread-self/ns/net").map(Arc::new)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets `net.ipv4.tcp_migrate_req` in the pod's namespace: when a listener of a
    /// `SO_REUSEPORT` group closes, the kernel moves the connections queued on it (handshake
    /// done or under way, not yet accepted) to another listener of the group instead of
    /// resetting them. This is what makes a draining agent's listeners close without losing a
    /// connection while the next agent's listen beside them. It changes nothing for sockets
    /// outside such a group (an application's own reuse-port listeners gain the same).
    pub fn migrate_queued_connections(&self) -> io::Result<()> {
        self.run(|| enable_sysctl("net/ipv4/tcp_migrate_req"))?
    }

    /// Runs `f` inside the pod's namespace on the current thread, then returns home, also when
    /// `f` panics. Keep `f` short and free of `.await`: it should only create sockets.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> io::Result<R> {
        setns(self.pod.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let _home = ReturnHome(&self.home);
        Ok(f())
    }
}

/// The pod's sockets: a connection made from it carries the pod's address, a listener in it
/// receives what is sent to the pod. A connecting socket is marked as the agent's own
/// ([`weft_ebpf_common::AGENT_SOCKET_MARK`]): the capture programs run for every socket of an
/// enrolled pod's namespace and must leave the agent's connections where they go.
impl weft_hbone::SocketFactory for PodNetns {
    fn new_tcp(&self, target: SocketAddr) -> io::Result<TcpSocket> {
        let socket = self.run(|| weft_hbone::new_tcp_socket(target))??;
        socket2::SockRef::from(&socket).set_mark(weft_ebpf_common::AGENT_SOCKET_MARK)?;
        Ok(socket)
    }

    fn listen(&self, address: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
        self.run(|| weft_hbone::listen_socket(address, reuse_port))?
    }
}

/// Sets the current thread's namespace's boolean sysctl `key` (under `/proc/sys`) to 1, unless
/// it is 1 already: the CNI plugin sets the per-pod ones at ADD, where the agent's container
/// may see `/proc/sys` read-only. `/proc/sys/net` shows the namespace of the thread that
/// opens it.
fn enable_sysctl(key: &str) -> io::Result<()> {
    let path = Path::new("/proc/sys").join(key);
    if std::fs::read_to_string(&path).is_ok_and(|value| value.trim() == "1") {
        return Ok(());
    }
    std::fs::write(&path, "1")
        .map_err(|e| io::Error::new(e.kind(), format!("setting {}: {e}", path.display())))
}

struct ReturnHome<'a>(&'a File);

impl Drop for ReturnHome<'_> {
    fn drop(&mut self) {
        // Failing to return would leave this runtime thread creating sockets in a pod: there is
        // no safe way to continue.
        if let Err(error) = setns(self.0.as_fd(), CloneFlags::CLONE_NEWNET) {
            panic!("cannot return to the agent's network namespace: {error}");
        }
    }
}
