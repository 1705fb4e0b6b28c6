//! Shared pieces of the redirection tests: a stand-in agent (outbound 15001 listener that looks
//! up original destinations, inbound 15006 listener), destination servers, and a TCP client that
//! runs inside a pod (this test binary, re-executed in the pod's netns and cgroup).
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use node_agent::ebpf::{
    EnrolledPod, Enroller, NetnsCookie, OriginalDst, PodEnrollment, Redirection, RedirectionConfig,
};
use weft_testbed::{Netns, Testbed};

pub mod client;

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Redirection pinned under a directory named after the testbed, so parallel tests never share
/// pins, and swept with the testbed's other resources when this process is gone (a failed test
/// skips `uninstall`; the sweep unpins its programs at the cgroup root). The node is the
/// testbed's first: its namespace's connections to enrolled pods are the node's own.
pub fn redirection_config(testbed: &Testbed, acceleration: bool) -> RedirectionConfig {
    let node = &testbed.nodes()[0];
    RedirectionConfig {
        pin_root: testbed.pin_dir(PIN_BASE),
        acceleration,
        cgroup_root: node_agent::ebpf::cgroup2_root().expect("the cgroup v2 root"),
        node_netns: node_agent::ebpf::netns_cookie_of(&node.netns.path())
            .expect("the node's netns cookie"),
    }
}

/// Where these tests pin (one directory per testbed below it).
const PIN_BASE: &str = "weft-test";

pub fn open_redirection(testbed: &Testbed, acceleration: bool) -> Arc<Redirection> {
    Arc::new(
        Redirection::open(redirection_config(testbed, acceleration)).expect("load redirection"),
    )
}

/// Connects to `destination` from the current thread's netns, as the agent does: marked as the
/// agent's own socket, which the capture programs leave alone.
pub fn connect_as_agent(destination: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(destination),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_mark(weft_ebpf_common::AGENT_SOCKET_MARK)?;
    socket.connect_timeout(&destination.into(), PATIENCE)?;
    Ok(socket.into())
}

/// Runs `f` on a new thread inside `netns`; threads it spawns stay in the namespace too.
pub fn spawn_in_netns<F, R>(netns: &Netns, f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let file = netns.open().expect("open netns");
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// Binds a TCP listener inside `netns`.
pub fn listen_in(netns: &Netns, address: &str) -> TcpListener {
    let address = address.to_string();
    netns
        .run(move || TcpListener::bind(&address))
        .expect("enter netns")
        .expect("bind")
}

/// Enrolls `pod` with a fresh inbound listener on `0.0.0.0:15006` in its netns (returned: the
/// caller keeps it open as long as inbound steering should work).
pub fn enroll(
    redirection: &Redirection,
    testbed: &Testbed,
    pod: &str,
    excluded_outbound_ports: Vec<u16>,
    excluded_inbound_ports: Vec<u16>,
) -> (EnrolledPod, TcpListener) {
    let ports = (excluded_outbound_ports, excluded_inbound_ports);
    enroll_with(redirection, testbed, pod, ports, true)
}

/// [`enroll`] with its excluded ports (outbound, inbound) and whether its DNS is captured
/// (`ambient.istio.io/dns-capture`).
pub fn enroll_with(
    redirection: &Redirection,
    testbed: &Testbed,
    pod: &str,
    (excluded_outbound_ports, excluded_inbound_ports): (Vec<u16>, Vec<u16>),
    dns_capture: bool,
) -> (EnrolledPod, TcpListener) {
    let pod = testbed.pod(pod);
    let inbound = listen_in(&pod.netns, "0.0.0.0:15006");
    use std::os::fd::AsFd;
    let enrolled = redirection
        .enroll(&PodEnrollment {
            uid: format!("uid-{}", pod.name),
            netns: pod.netns.path(),
            addresses: vec![pod.ip.into()],
            excluded_outbound_ports,
            excluded_inbound_ports,
            dns_capture,
            inbound_listener: inbound.as_fd(),
        })
        .expect("enroll");
    (enrolled, inbound)
}

/// What the stand-in agent does with an accepted outbound connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentMode {
    /// Look up the original destination and pipe bytes to it (from inside the pod's netns).
    Forward,
    /// Look up the original destination, then echo bytes back (measures the app <-> agent hop).
    Echo,
    /// Echo without looking up (leaves the record to the close cleanup).
    EchoWithoutLookup,
    /// A reader that falls behind: reads nothing for [`SINK_STALL`], then reads to the end,
    /// checking the `flood` pattern, and answers with the number of bytes it received.
    SlowSink,
}

/// How long [`AgentMode::SlowSink`] leaves its socket unread.
pub const SINK_STALL: Duration = Duration::from_millis(1500);

/// Byte `offset` of the pattern the pod client's `bulk` and `flood` send.
pub fn pattern_byte(offset: usize) -> u8 {
    (offset % (64 * 1024) % 251) as u8
}

/// One connection the stand-in agent accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub peer: SocketAddr,
    pub original: Option<SocketAddr>,
    /// The agent's upstream socket (Forward mode), as the destination sees it.
    pub upstream: Option<SocketAddr>,
}

/// The stand-in agent's outbound side: a listener on `127.0.0.1:15001` inside one pod's netns.
pub struct OutboundAgent {
    listener: TcpListener,
    accepted: Arc<Mutex<Vec<Accepted>>>,
    thread: Option<JoinHandle<()>>,
}

impl OutboundAgent {
    pub fn start(
        netns: &Netns,
        redirection: Arc<Redirection>,
        cookie: NetnsCookie,
        mode: AgentMode,
    ) -> Self {
        let listener = listen_in(netns, "127.0.0.1:15001");
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let (thread_listener, thread_accepted) = (listener.try_clone().unwrap(), accepted.clone());
        let thread = spawn_in_netns(netns, move || {
            // Ends when the listener is shut down, and only once every connection it accepted
            // is served: the connections hold the redirection, which the tests take back after
            // dropping the agent.
            let mut connections = Vec::new();
            for stream in thread_listener.incoming() {
                let Ok(stream) = stream else { break };
                let redirection = redirection.clone();
                let accepted = thread_accepted.clone();
                connections.push(std::thread::spawn(move || {
                    serve(stream, &redirection, cookie, mode, &accepted)
                }));
                connections.retain(|connection| !connection.is_finished());
            }
            let deadline = Instant::now() + PATIENCE;
            while connections.iter().any(|c| !c.is_finished()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            listener,
            accepted,
            thread: Some(thread),
        }
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        self.accepted.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` connections were accepted.
    pub fn wait_for(&self, n: usize) -> Vec<Accepted> {
        let deadline = Instant::now() + PATIENCE;
        while self.accepted.lock().unwrap().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.accepted()
    }

    /// Closes the listener: the agent is down.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // shutdown() on a listening socket wakes a blocked accept().
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for OutboundAgent {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(
    stream: TcpStream,
    redirection: &Redirection,
    cookie: NetnsCookie,
    mode: AgentMode,
    accepted: &Mutex<Vec<Accepted>>,
) {
    let peer = stream.peer_addr().unwrap();
    let original = match mode {
        AgentMode::EchoWithoutLookup => None,
        _ => redirection.take_original_dst(cookie, peer).unwrap(),
    };
    match (mode, original) {
        (AgentMode::Forward, Some(destination)) => {
            let upstream = connect_as_agent(destination);
            let upstream_addr = upstream.as_ref().ok().map(|u| u.local_addr().unwrap());
            accepted.lock().unwrap().push(Accepted {
                peer,
                original,
                upstream: upstream_addr,
            });
            if let Ok(upstream) = upstream {
                pipe(stream, upstream);
            }
        }
        (AgentMode::SlowSink, _) => {
            accepted.lock().unwrap().push(Accepted {
                peer,
                original,
                upstream: None,
            });
            std::thread::sleep(SINK_STALL);
            sink(stream);
        }
        (AgentMode::Forward, None) => accepted.lock().unwrap().push(Accepted {
            peer,
            original,
            upstream: None,
        }),
        (_, _) => {
            accepted.lock().unwrap().push(Accepted {
                peer,
                original,
                upstream: None,
            });
            echo(stream);
        }
    }
}

/// Reads to the end, checking the pattern, then answers `<bytes received>\n` (0 on corruption).
fn sink(stream: TcpStream) {
    let mut writer = stream.try_clone().unwrap();
    let (mut received, mut intact) = (0usize, true);
    read_chunks(stream, |chunk| {
        intact &= chunk
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern_byte(received + i));
        received += chunk.len();
        true
    });
    let _ = writeln!(writer, "{}", if intact { received } else { 0 });
}

/// Hands each chunk read from `stream` to `each` until the end, an error, or `each` says stop.
/// Spliced sockets can report EAGAIN while blocking (see the client): such reads are retried.
pub fn read_chunks(mut stream: TcpStream, mut each: impl FnMut(&[u8]) -> bool) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut retries = 0u32;
    loop {
        match stream.read(&mut buffer) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && retries < 100_000 => {
                retries += 1;
                std::thread::yield_now();
            }
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if !each(&buffer[..n]) {
                    return;
                }
            }
        }
    }
}

/// Copies both ways until both sides are done.
pub fn pipe(a: TcpStream, b: TcpStream) {
    let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let forward = std::thread::spawn(move || copy_then_close(a, b2));
    copy_then_close(b, a2);
    let _ = forward.join();
}

fn copy_then_close(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

pub fn echo(stream: TcpStream) {
    let mut writer = stream.try_clone().unwrap();
    read_chunks(stream, |chunk| writer.write_all(chunk).is_ok());
    let _ = writer.shutdown(Shutdown::Write);
}

/// A destination server inside a pod: records each peer address; answers HTTP (`GET`) with
/// `ok`, anything else by echoing lines.
pub struct Server {
    listener: TcpListener,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(netns: &Netns, address: &str) -> Self {
        let listener = listen_in(netns, address);
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (thread_listener, thread_peers) = (listener.try_clone().unwrap(), peers.clone());
        let thread = spawn_in_netns(netns, move || {
            for stream in thread_listener.incoming() {
                let Ok(stream) = stream else { break };
                thread_peers
                    .lock()
                    .unwrap()
                    .push(stream.peer_addr().unwrap());
                std::thread::spawn(move || answer(stream));
            }
        });
        Self {
            listener,
            peers,
            thread: Some(thread),
        }
    }

    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(stream: TcpStream) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut http = false;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.starts_with("GET ") {
            http = true;
            continue;
        }
        if http {
            if line == "\r\n" {
                let _ = writer.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
                break;
            }
            continue;
        }
        if writer.write_all(line.as_bytes()).is_err() {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Write);
}

/// A UDP echo server inside a pod; records each peer.
pub struct UdpEcho {
    socket: std::net::UdpSocket,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl UdpEcho {
    pub fn start(netns: &Netns, address: &str) -> Self {
        let address = address.to_string();
        let socket = netns
            .run(move || std::net::UdpSocket::bind(&address))
            .unwrap()
            .expect("bind udp");
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (thread_socket, thread_peers) = (socket.try_clone().unwrap(), peers.clone());
        thread_socket.set_read_timeout(Some(PATIENCE)).unwrap();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 1500];
            // One datagram is all a test sends; the timeout bounds the wait.
            if let Ok((n, peer)) = thread_socket.recv_from(&mut buffer) {
                thread_peers.lock().unwrap().push(peer);
                let _ = thread_socket.send_to(&buffer[..n], peer);
            }
        });
        Self { socket, peers }
    }

    pub fn peers(&self) -> Vec<SocketAddr> {
        let _ = &self.socket;
        self.peers.lock().unwrap().clone()
    }
}

/// Runs `curl` in `pod` against `url`; its exit code and body.
pub fn curl(testbed: &Testbed, pod: &str, url: &str) -> (Option<i32>, String) {
    let output = testbed
        .pod_command(pod, "curl")
        .args(["-s", "--max-time", "5", url])
        .output()
        .expect("run curl");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Program ids attached to a cgroup, as bpftool reports them (effective: attached right there).
pub fn cgroup_programs(path: &std::path::Path) -> String {
    let output = std::process::Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(path)
        .output()
        .expect("run bpftool");
    assert!(output.status.success(), "bpftool cgroup show failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A link pinned by a redirection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedLink {
    pub id: u64,
    pub program_id: u64,
}

/// The links a redirection pinned at the cgroup root (`connect4`, `connect6`, `sockops` under
/// its pin root), as bpftool reports them.
pub fn root_links(pin_root: &std::path::Path) -> Vec<PinnedLink> {
    ["connect4", "connect6", "sockops"]
        .iter()
        .filter_map(|name| {
            let output = std::process::Command::new("bpftool")
                .args(["-j", "link", "show", "pinned"])
                .arg(pin_root.join(name))
                .output()
                .expect("run bpftool");
            let link: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
            Some(PinnedLink {
                id: link["id"].as_u64()?,
                program_id: link["prog_id"].as_u64()?,
            })
        })
        .collect()
}

/// Every link the kernel holds, as bpftool's JSON.
pub fn links() -> Vec<serde_json::Value> {
    let output = std::process::Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .expect("run bpftool");
    assert!(output.status.success(), "bpftool link show failed");
    serde_json::from_slice(&output.stdout).expect("bpftool json")
}

/// The inode of a netns file (what bpftool reports as `netns_ino`).
pub fn netns_inode(netns: &Netns) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(netns.path()).unwrap().ino()
}
