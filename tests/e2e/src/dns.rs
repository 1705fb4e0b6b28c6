//! DNS in tests: commands run in a pod with the pod's own resolver configuration (as the
//! kubelet writes a pod's `/etc/resolv.conf`: its namespace's search domains and a
//! nameserver), and a small upstream resolver a test starts in a namespace of its own, so
//! that no query ever leaves the machine.

use std::{
    net::{IpAddr, Ipv4Addr, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::{Mesh, curl::CurlResult};

impl Mesh {
    /// Writes a resolver configuration for pods of `namespace` (Kubernetes' search domains,
    /// `ndots:5`) naming `nameserver`, and returns its path.
    pub fn pod_resolv_conf(&self, namespace: &str, nameserver: IpAddr) -> PathBuf {
        let path = self.dir().join(format!("resolv-{namespace}.conf"));
        std::fs::write(
            &path,
            format!(
                "search {namespace}.svc.cluster.local svc.cluster.local cluster.local\nnameserver {nameserver}\noptions ndots:5\n"
            ),
        )
        .expect("write the pod's resolv.conf");
        path
    }

    /// `program` inside `pod` with `resolv_conf` as its `/etc/resolv.conf` (bind-mounted in a
    /// mount namespace of its own, so nothing else sees it).
    fn with_resolver(&self, pod: &str, resolv_conf: &Path, program: &str) -> Command {
        let mut command = self.testbed.pod_command(pod, "unshare");
        command.args([
            "--mount",
            "sh",
            "-c",
            r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#,
        ]);
        command.arg(resolv_conf).arg(program);
        command
    }

    /// The IPv4 addresses `name` resolves to in `pod` through the C library's resolver
    /// (`getent ahostsv4`), with `resolv_conf` as the pod's configuration.
    pub fn resolve(&self, pod: &str, resolv_conf: &Path, name: &str) -> Vec<IpAddr> {
        let output = self
            .with_resolver(pod, resolv_conf, "getent")
            .args(["ahostsv4", name])
            .output()
            .expect("run getent");
        let mut addresses: Vec<IpAddr> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        addresses.dedup();
        addresses
    }

    /// `curl` from `pod` (as [`Mesh::curl_with`]) resolving names with `resolv_conf`.
    pub fn curl_resolving(&self, pod: &str, resolv_conf: &Path, args: &[&str]) -> CurlResult {
        crate::curl::with(self.with_resolver(pod, resolv_conf, "curl"), args)
    }
}

/// A resolver on UDP port 53 of a test's namespace that knows some names (A records, TTL
/// 60 s) and answers NXDOMAIN to everything else, recording the names it is asked. Stops when
/// dropped.
pub struct UpstreamResolver {
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UpstreamResolver {
    /// Starts it in `pod`'s network namespace, answering `name` with `address`.
    pub fn start(mesh: &Mesh, pod: &str, name: &str, address: Ipv4Addr) -> Self {
        Self::with_records(mesh, pod, &[(name, address)])
    }

    /// Starts it in `pod`'s network namespace, answering each name of `records` with its
    /// address.
    pub fn with_records(mesh: &Mesh, pod: &str, records: &[(&str, Ipv4Addr)]) -> Self {
        let socket = mesh
            .pod(pod)
            .netns
            .run(|| UdpSocket::bind("0.0.0.0:53"))
            .expect("enter the namespace")
            .expect("bind port 53");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let (asked, stop) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let (recorded, stopped) = (asked.clone(), stop.clone());
        let records: Vec<(String, Ipv4Addr)> = records
            .iter()
            .map(|(name, address)| (name.to_ascii_lowercase(), *address))
            .collect();
        let thread = std::thread::spawn(move || {
            let mut buffer = [0u8; 1500];
            while !stopped.load(Ordering::SeqCst) {
                let Ok((length, from)) = socket.recv_from(&mut buffer) else {
                    continue;
                };
                let Some((name, answer)) = answer(&buffer[..length], &records) else {
                    continue;
                };
                recorded.lock().unwrap().push(name);
                let _ = socket.send_to(&answer, from);
            }
        });
        Self {
            asked,
            stop,
            thread: Some(thread),
        }
    }

    /// How many queries it received.
    pub fn queries(&self) -> usize {
        self.asked.lock().unwrap().len()
    }

    /// Whether it was asked about `name` (any type).
    pub fn asked(&self, name: &str) -> bool {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }
}

impl Drop for UpstreamResolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The name asked and the response to one query: the address of a known name for an A query,
/// no record (NOERROR) for its other types, NXDOMAIN for an unknown name.
fn answer(query: &[u8], records: &[(String, Ipv4Addr)]) -> Option<(String, Vec<u8>)> {
    // The question: labels from offset 12, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let length = usize::from(*query.get(at)?);
        at += 1;
        if length == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + length)?).to_ascii_lowercase());
        at += length;
    }
    let question_end = at + 4;
    let record_type = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let name = labels.join(".");
    let known = records.iter().find(|(n, _)| *n == name).map(|(_, a)| *a);
    let address = known.filter(|_| record_type == 1);
    let mut response = query.get(..question_end)?.to_vec();
    // QR, RD copied, RA; NXDOMAIN when unknown; one question, no other section.
    response[2] = 0x80 | (query[2] & 0x01);
    response[3] = if known.is_some() { 0x80 } else { 0x83 };
    response[4..12].copy_from_slice(&[0, 1, 0, u8::from(address.is_some()), 0, 0, 0, 0]);
    if let Some(address) = address {
        response.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        response.extend_from_slice(&address.octets());
    }
    Some((name, response))
}
