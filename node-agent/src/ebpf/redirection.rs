//! The redirection loader: loads the programs, pins maps and links, enrolls pods.
//!
//! `connect4`, `connect6`, `sockops`, `sendmsg4`/`sendmsg6` and `recvmsg4`/`recvmsg6` are attached once, at the cgroup v2 root, and act only on
//! sockets whose network namespace is in `POD_CONFIG` (by netns cookie): enrolling a pod is a
//! map insert plus an `sk_lookup` link on its netns, un-enrolling the reverse. Nothing depends on
//! a pod's cgroup, which a CNI plugin never learns (it differs by cgroup driver and QoS class).
//! Every agent has its own maps, so its programs never touch pods another agent enrolled (the
//! tests run many agents on one machine).
//!
//! Pin layout under [`RedirectionConfig::pin_root`]:
//!
//! ```text
//! maps/<MAP_NAME>              every map in weft_ebpf_common::maps::PINNED
//! connect4|connect6|sockops    links at the cgroup v2 root
//! sendmsg4|sendmsg6            links at the cgroup v2 root (DNS capture)
//! recvmsg4|recvmsg6
//! pods/<uid>/sk_lookup         the pod's inbound steering link
//! ```
//!
//! The node's own network namespace is written into `NODE_NETNS` at every start: connections
//! its sockets open to enrolled pods (the kubelet's probes) reach the application unsteered.
//!
//! Links stay attached while the agent is down (pins hold them), which is what makes redirection
//! fail closed: a pod's connects still go to `127.0.0.1:15001`, refused while nobody listens.
//! [`Redirection::open`] on restart reuses the pinned maps and links (adoption).
use std::{
    fs::File,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, SockHash},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SkLookup, SkMsg, SockOps,
        links::{FdLink, PinnedLink},
    },
};
use weft_ebpf_common::{
    Address, ClientKey, MAX_EXCLUDED_PORTS, MAX_POD_ADDRESSES, MAX_UID_LEN, NodeConnectionKey,
    POD_FLAG_ACCELERATE, POD_FLAG_NO_DNS_CAPTURE, PodConfig, SocketAddress, SocketPairKey,
    ipv4_mapped, maps, programs, stats,
};

use super::{
    EbpfError, EnrolledPod, Enroller, NetnsCookie, OBJECT, OriginalDst, PodEnrollment,
    RedirectionError, check_kernel_features, log_bridge::LogDrain, netns_cookie,
};

/// Where nodes' pins go by default: `<DEFAULT_PIN_BASE>/<node>`.
pub const DEFAULT_PIN_BASE: &str = "/sys/fs/bpf/weft";

/// The links at the cgroup root: pin name, program.
const ROOT_LINKS: [(&str, &str); 7] = [
    ("connect4", programs::REDIRECT_CONNECT4),
    ("connect6", programs::REDIRECT_CONNECT6),
    ("sockops", programs::TRACK_SOCKETS),
    ("sendmsg4", programs::CAPTURE_DNS_SENDMSG4),
    ("recvmsg4", programs::RESTORE_DNS_RECVMSG4),
    ("sendmsg6", programs::CAPTURE_DNS_SENDMSG6),
    ("recvmsg6", programs::RESTORE_DNS_RECVMSG6),
];
/// A pod's link, under `pods/<uid>/`.
const POD_LINK: &str = "sk_lookup";

/// How redirection is set up on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectionConfig {
    /// bpffs directory for this node's pins (must be on bpffs).
    pub pin_root: PathBuf,
    /// Splice same-netns socket pairs with `sk_msg` (Merbridge-style).
    pub acceleration: bool,
    /// The root of the cgroup v2 hierarchy, where the connect and sockops programs attach
    /// (see [`super::cgroup2_root`]).
    pub cgroup_root: PathBuf,
    /// The node's own network namespace (the kubelet's): connections its sockets open to
    /// enrolled pods are let through to the application, as Istio lets the node's own traffic
    /// through (see [`super::netns_cookie_of`]).
    pub node_netns: NetnsCookie,
}

impl RedirectionConfig {
    /// Defaults for `node`: pins under `/sys/fs/bpf/weft/<node>`, acceleration on.
    pub fn for_node(node: &str, cgroup_root: PathBuf, node_netns: NetnsCookie) -> Self {
        Self {
            pin_root: Path::new(DEFAULT_PIN_BASE).join(node),
            acceleration: true,
            cgroup_root,
            node_netns,
        }
    }
}

/// Counters of the redirection programs, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedirectionStats {
    pub redirected_connects: u64,
    pub steered_inbound: u64,
    pub local_sockets_added: u64,
    pub spliced_messages: u64,
    pub inbound_without_listener: u64,
    /// Pair directions that spent their splice budget and left the spliced path.
    pub splice_budget_spent: u64,
    /// Connections of the node's own sockets let through to a pod's application unsteered.
    pub node_connections_passed: u64,
    /// DNS connects and datagrams sent to the agent's DNS proxy.
    pub dns_captured: u64,
}

/// Per-connection records currently held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionRecords {
    /// Connects redirected but not yet established.
    pub pending: usize,
    /// Established connections not yet looked up by the agent.
    pub established: usize,
    /// Connections the node's own sockets hold open to enrolled pods.
    pub node: usize,
}

/// The loaded redirection programs and their pinned state. Safe to share between threads.
pub struct Redirection {
    config: RedirectionConfig,
    ebpf: Mutex<Ebpf>,
    _log: Option<LogDrain>,
}

impl std::fmt::Debug for Redirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirection")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Redirection {
    /// Checks the kernel, loads the programs and opens the pinned maps, creating them on first
    /// start and adopting them (and every pod enrolled earlier, whose links are still pinned)
    /// after a restart.
    #[doc(alias = "adopt")]
    pub fn open(config: RedirectionConfig) -> Result<Self, RedirectionError> {
        let features = check_kernel_features(&config.cgroup_root);
        if !features.is_complete() {
            return Err(RedirectionError::KernelFeatures(features));
        }
        let maps_dir = config.pin_root.join("maps");
        for dir in [&maps_dir, &config.pin_root.join("pods")] {
            std::fs::create_dir_all(dir)
                .map_err(|e| RedirectionError::PinDirectory(dir.clone(), e))?;
        }
        let mut loader = EbpfLoader::new();
        // The programs use no CO-RE relocations, so the kernel's BTF (several MB once parsed,
        // and kept in the heap afterwards) is not needed to load them.
        loader.btf(None);
        for name in maps::PINNED {
            loader.map_pin_path(name, maps_dir.join(name));
        }
        let mut ebpf = loader.load(OBJECT).map_err(EbpfError::Load)?;
        for name in [
            programs::REDIRECT_CONNECT4,
            programs::REDIRECT_CONNECT6,
            programs::CAPTURE_DNS_SENDMSG4,
            programs::RESTORE_DNS_RECVMSG4,
            programs::CAPTURE_DNS_SENDMSG6,
            programs::RESTORE_DNS_RECVMSG6,
        ] {
            program::<CgroupSockAddr>(&mut ebpf, name)?
                .load()
                .map_err(|e| EbpfError::Program(name, e))?;
        }
        program::<SockOps>(&mut ebpf, programs::TRACK_SOCKETS)?
            .load()
            .map_err(|e| EbpfError::Program(programs::TRACK_SOCKETS, e))?;
        program::<SkLookup>(&mut ebpf, programs::STEER_INBOUND)?
            .load()
            .map_err(|e| EbpfError::Program(programs::STEER_INBOUND, e))?;
        program::<SkMsg>(&mut ebpf, programs::SPLICE_LOCAL)?
            .load()
            .map_err(|e| EbpfError::Program(programs::SPLICE_LOCAL, e))?;
        // After the programs are loaded: the logger finds its buffer through them.
        let log = LogDrain::start(&mut ebpf);

        if config.acceleration {
            let map_fd = sock_hash::<SocketPairKey>(&ebpf, maps::LOCAL_SOCKETS)?
                .fd()
                .try_clone()
                .map_err(|e| {
                    EbpfError::Map(
                        maps::LOCAL_SOCKETS,
                        aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                            call: "dup",
                            io_error: e,
                        }),
                    )
                })?;
            // Attached through the map (not a bpf_link): it lasts as long as this `Ebpf`, and a
            // restarted agent attaches its own.
            program::<SkMsg>(&mut ebpf, programs::SPLICE_LOCAL)?
                .attach(&map_fd)
                .map_err(|e| EbpfError::Program(programs::SPLICE_LOCAL, e))?;
        }

        let name = maps::NODE_NETNS;
        Array::<_, u64>::try_from(ebpf.map_mut(name).ok_or(EbpfError::MissingMap(name))?)
            .and_then(|mut node| node.set(0, config.node_netns.0, 0))
            .map_err(|e| EbpfError::Map(name, e))?;
        attach_at_root(&mut ebpf, &config)?;
        let redirection = Self {
            config,
            ebpf: Mutex::new(ebpf),
            _log: log,
        };
        redirection.remove_partial_enrollments()?;
        tracing::info!(
            pin_root = %redirection.config.pin_root.display(),
            acceleration = redirection.config.acceleration,
            node_netns = redirection.config.node_netns.0,
            adopted = redirection.enrolled()?.len(),
            "redirection loaded"
        );
        Ok(redirection)
    }

    pub fn config(&self) -> &RedirectionConfig {
        &self.config
    }

    /// The program counters, summed over CPUs.
    pub fn stats(&self) -> Result<RedirectionStats, RedirectionError> {
        let ebpf = self.lock();
        let name = maps::REDIRECT_STATS;
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(ebpf.map(name).ok_or(EbpfError::MissingMap(name))?)
                .map_err(|e| EbpfError::Map(name, e))?;
        let get = |slot: u32| -> Result<u64, RedirectionError> {
            Ok(map
                .get(&slot, 0)
                .map_err(|e| EbpfError::Map(name, e))?
                .iter()
                .sum())
        };
        Ok(RedirectionStats {
            redirected_connects: get(stats::REDIRECTED_CONNECTS)?,
            steered_inbound: get(stats::STEERED_INBOUND)?,
            local_sockets_added: get(stats::LOCAL_SOCKETS_ADDED)?,
            spliced_messages: get(stats::SPLICED_MESSAGES)?,
            inbound_without_listener: get(stats::INBOUND_WITHOUT_LISTENER)?,
            splice_budget_spent: get(stats::SPLICE_BUDGET_SPENT)?,
            node_connections_passed: get(stats::NODE_CONNECTIONS_PASSED)?,
            dns_captured: get(stats::DNS_CAPTURED)?,
        })
    }

    /// How many per-connection records the maps hold.
    pub fn connection_records(&self) -> Result<ConnectionRecords, RedirectionError> {
        let ebpf = self.lock();
        let pending = hash_map::<u64, SocketAddress>(&ebpf, maps::PENDING_ORIGINAL_DST)?
            .keys()
            .count();
        let established = hash_map::<ClientKey, SocketAddress>(&ebpf, maps::ORIGINAL_DST)?
            .keys()
            .count();
        let node = hash_map::<NodeConnectionKey, u8>(&ebpf, maps::NODE_CONNECTIONS)?
            .keys()
            .count();
        Ok(ConnectionRecords {
            pending,
            established,
            node,
        })
    }

    /// Un-enrolls every pod and removes every pin, the programs at the cgroup root among them:
    /// the node is left as if the agent had never run (for uninstalling, and for tests).
    pub fn uninstall(self) -> Result<(), RedirectionError> {
        for pod in self.enrolled()? {
            self.unenroll(&pod.uid)?;
        }
        for (pin, _) in ROOT_LINKS {
            let pin = self.config.pin_root.join(pin);
            if pin.exists() {
                unpin_link(&pin)?;
            }
        }
        let pin_root = self.config.pin_root.clone();
        drop(self);
        std::fs::remove_dir_all(&pin_root).map_err(|e| RedirectionError::PinDirectory(pin_root, e))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ebpf> {
        // A panic while holding the lock leaves the maps as the kernel has them: still usable.
        self.ebpf.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.config.pin_root.join("pods").join(uid)
    }

    /// Pod directories without configuration are left over from an enrollment interrupted by a
    /// crash: detach them. (Configuration without a link is kept: the pod stays captured, and
    /// [`Enroller::adopt`] attaches the link when the pod is enrolled again.)
    fn remove_partial_enrollments(&self) -> Result<(), RedirectionError> {
        let enrolled: Vec<String> = self.enrolled()?.into_iter().map(|p| p.uid).collect();
        let pods = self.config.pin_root.join("pods");
        let entries = std::fs::read_dir(&pods)
            .map_err(|e| RedirectionError::PinDirectory(pods.clone(), e))?;
        for entry in entries.flatten() {
            let uid = entry.file_name().to_string_lossy().into_owned();
            if !enrolled.contains(&uid) {
                tracing::warn!(%uid, "removing a partial enrollment");
                self.remove_pod_links(&uid)?;
            }
        }
        Ok(())
    }

    fn remove_pod_links(&self, uid: &str) -> Result<bool, RedirectionError> {
        let dir = self.pod_dir(uid);
        if !dir.exists() {
            return Ok(false);
        }
        let pin = dir.join(POD_LINK);
        if pin.exists() {
            unpin_link(&pin)?;
        }
        std::fs::remove_dir(&dir).map_err(|e| RedirectionError::PinDirectory(dir, e))?;
        Ok(true)
    }

    fn find_pod(ebpf: &Ebpf, uid: &str) -> Result<Option<NetnsCookie>, RedirectionError> {
        let configs = hash_map::<u64, PodConfig>(ebpf, maps::POD_CONFIG)?;
        for entry in configs.iter() {
            let (cookie, config) = entry.map_err(|e| EbpfError::Map(maps::POD_CONFIG, e))?;
            if config_uid(&config) == uid {
                return Ok(Some(NetnsCookie(cookie)));
            }
        }
        Ok(None)
    }

    /// Attaches inbound steering to the pod's netns, unless a link of an earlier run is pinned.
    fn attach_pod(&self, ebpf: &mut Ebpf, pod: &PodEnrollment<'_>) -> Result<(), RedirectionError> {
        let dir = self.pod_dir(&pod.uid);
        std::fs::create_dir_all(&dir)
            .map_err(|e| RedirectionError::PinDirectory(dir.clone(), e))?;
        let pin = dir.join(POD_LINK);
        if pin.exists() {
            return Ok(());
        }
        let netns = open_path(&pod.uid, &pod.netns)?;
        let name = programs::STEER_INBOUND;
        let program = program::<SkLookup>(ebpf, name)?;
        let id = program
            .attach(netns.as_fd())
            .map_err(|e| EbpfError::Program(name, e))?;
        let link = program
            .take_link(id)
            .map_err(|e| EbpfError::Program(name, e))?;
        pin_link(FdLink::from(link), &pin)
    }

    /// Writes the pod's configuration, addresses and inbound listener: from the first write on,
    /// the programs capture the pod's connects.
    fn configure_pod(
        ebpf: &mut Ebpf,
        pod: &PodEnrollment<'_>,
        cookie: NetnsCookie,
        config: PodConfig,
    ) -> Result<(), RedirectionError> {
        hash_map_mut::<u64, PodConfig>(ebpf, maps::POD_CONFIG)?
            .insert(cookie.0, config, 0)
            .map_err(|e| EbpfError::Map(maps::POD_CONFIG, e))?;
        let mut by_address = hash_map_mut::<Address, u64>(ebpf, maps::POD_BY_ADDRESS)?;
        for address in &pod.addresses {
            by_address
                .insert(address_words(*address), cookie.0, 0)
                .map_err(|e| EbpfError::Map(maps::POD_BY_ADDRESS, e))?;
        }
        sock_hash_mut::<u64>(ebpf, maps::INBOUND_LISTENERS)?
            .insert(cookie.0, pod.inbound_listener.as_raw_fd(), 0)
            .map_err(|e| EbpfError::Map(maps::INBOUND_LISTENERS, e))?;
        Ok(())
    }

    /// The validated configuration of `pod` and its netns cookie (its inbound listener's).
    fn prepare(
        &self,
        pod: &PodEnrollment<'_>,
    ) -> Result<(PodConfig, NetnsCookie), RedirectionError> {
        let mut config = pod_config(pod)?;
        if self.config.acceleration {
            config.flags |= POD_FLAG_ACCELERATE;
        }
        let cookie = netns_cookie(pod.inbound_listener).map_err(|source| {
            RedirectionError::ListenerNetns {
                uid: pod.uid.clone(),
                source,
            }
        })?;
        Ok((config, cookie))
    }

    fn forget_pod(ebpf: &mut Ebpf, cookie: NetnsCookie) -> Result<(), RedirectionError> {
        let mut configs = hash_map_mut::<u64, PodConfig>(ebpf, maps::POD_CONFIG)?;
        let _ = configs.remove(&cookie.0);
        let mut by_address = hash_map_mut::<Address, u64>(ebpf, maps::POD_BY_ADDRESS)?;
        let addresses: Vec<Address> = by_address
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, c)| *c == cookie.0)
            .map(|(a, _)| a)
            .collect();
        for address in addresses {
            let _ = by_address.remove(&address);
        }
        let mut listeners = sock_hash_mut::<u64>(ebpf, maps::INBOUND_LISTENERS)?;
        let _ = listeners.remove(&cookie.0);
        let mut original = hash_map_mut::<ClientKey, SocketAddress>(ebpf, maps::ORIGINAL_DST)?;
        let stale: Vec<ClientKey> = original
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.netns_cookie == cookie.0)
            .collect();
        for key in stale {
            let _ = original.remove(&key);
        }
        let mut local = sock_hash_mut::<SocketPairKey>(ebpf, maps::LOCAL_SOCKETS)?;
        let stale: Vec<SocketPairKey> = local
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.netns_cookie == cookie.0)
            .collect();
        for key in stale {
            let _ = local.remove(&key);
        }
        Ok(())
    }
}

impl Enroller for Redirection {
    fn enroll(&self, pod: &PodEnrollment<'_>) -> Result<EnrolledPod, RedirectionError> {
        let (config, cookie) = self.prepare(pod)?;
        let mut ebpf = self.lock();
        if self.pod_dir(&pod.uid).exists() || Self::find_pod(&ebpf, &pod.uid)?.is_some() {
            return Err(RedirectionError::AlreadyEnrolled(pod.uid.clone()));
        }
        // Configuration first, the link second: inbound steering never runs for a pod it cannot
        // place.
        let result = Self::configure_pod(&mut ebpf, pod, cookie, config)
            .and_then(|()| self.attach_pod(&mut ebpf, pod));
        if let Err(error) = result {
            let _ = self.remove_pod_links(&pod.uid);
            let _ = Self::forget_pod(&mut ebpf, cookie);
            return Err(error);
        }
        tracing::info!(uid = %pod.uid, netns_cookie = cookie.0, "pod enrolled");
        Ok(EnrolledPod {
            uid: pod.uid.clone(),
            netns_cookie: cookie,
        })
    }

    fn adopt(&self, pod: &PodEnrollment<'_>) -> Result<EnrolledPod, RedirectionError> {
        let (config, cookie) = self.prepare(pod)?;
        let mut ebpf = self.lock();
        match Self::find_pod(&ebpf, &pod.uid)? {
            None => return Err(RedirectionError::NotEnrolled(pod.uid.clone())),
            Some(known) if known != cookie => {
                return Err(RedirectionError::NetnsChanged {
                    uid: pod.uid.clone(),
                    enrolled: known.0,
                    listener: cookie.0,
                });
            }
            Some(_) => {}
        }
        // Rewritten in place: the pod stays captured throughout.
        Self::configure_pod(&mut ebpf, pod, cookie, config)?;
        self.attach_pod(&mut ebpf, pod)?;
        Ok(EnrolledPod {
            uid: pod.uid.clone(),
            netns_cookie: cookie,
        })
    }

    fn unenroll(&self, uid: &str) -> Result<(), RedirectionError> {
        validate_uid(uid)?;
        let mut ebpf = self.lock();
        // The link first, configuration second (the reverse of enrolling).
        let had_links = self.remove_pod_links(uid)?;
        let cookie = Self::find_pod(&ebpf, uid)?;
        if let Some(cookie) = cookie {
            Self::forget_pod(&mut ebpf, cookie)?;
        }
        if !had_links && cookie.is_none() {
            return Err(RedirectionError::NotEnrolled(uid.to_string()));
        }
        tracing::info!(%uid, "pod un-enrolled");
        Ok(())
    }

    fn set_dns_capture(&self, uid: &str, capture: bool) -> Result<(), RedirectionError> {
        validate_uid(uid)?;
        let mut ebpf = self.lock();
        let cookie =
            Self::find_pod(&ebpf, uid)?.ok_or_else(|| RedirectionError::NotEnrolled(uid.into()))?;
        let mut configs = hash_map_mut::<u64, PodConfig>(&mut ebpf, maps::POD_CONFIG)?;
        let mut config = configs
            .get(&cookie.0, 0)
            .map_err(|e| EbpfError::Map(maps::POD_CONFIG, e))?;
        if capture {
            config.flags &= !POD_FLAG_NO_DNS_CAPTURE;
        } else {
            config.flags |= POD_FLAG_NO_DNS_CAPTURE;
        }
        // One whole value, written in place: the pod stays captured throughout.
        configs
            .insert(cookie.0, config, 0)
            .map_err(|e| EbpfError::Map(maps::POD_CONFIG, e))?;
        tracing::info!(%uid, dns_capture = capture, "pod's dns capture changed");
        Ok(())
    }

    fn enrolled(&self) -> Result<Vec<EnrolledPod>, RedirectionError> {
        let ebpf = self.lock();
        let configs = hash_map::<u64, PodConfig>(&ebpf, maps::POD_CONFIG)?;
        let mut pods = Vec::new();
        for entry in configs.iter() {
            let (cookie, config) = entry.map_err(|e| EbpfError::Map(maps::POD_CONFIG, e))?;
            pods.push(EnrolledPod {
                uid: config_uid(&config),
                netns_cookie: NetnsCookie(cookie),
            });
        }
        pods.sort_by(|a, b| a.uid.cmp(&b.uid));
        Ok(pods)
    }
}

impl OriginalDst for Redirection {
    fn take_original_dst(
        &self,
        netns: NetnsCookie,
        peer: SocketAddr,
    ) -> Result<Option<SocketAddr>, RedirectionError> {
        let key = ClientKey {
            netns_cookie: netns.0,
            address: address_words(peer.ip()),
            port: peer.port(),
            _pad: [0; 6],
        };
        let mut ebpf = self.lock();
        let mut map = hash_map_mut::<ClientKey, SocketAddress>(&mut ebpf, maps::ORIGINAL_DST)?;
        let original = match map.get(&key, 0) {
            Ok(original) => original,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(EbpfError::Map(maps::ORIGINAL_DST, e).into()),
        };
        // Gone already (closed meanwhile) is fine: the answer stands.
        let _ = map.remove(&key);
        Ok(Some(SocketAddr::new(
            ip_from_words(original.address),
            original.port,
        )))
    }
}

/// Validates an enrollment and turns it into what the programs read.
pub(crate) fn pod_config(pod: &PodEnrollment<'_>) -> Result<PodConfig, RedirectionError> {
    validate_uid(&pod.uid)?;
    let invalid = |reason: String| RedirectionError::InvalidEnrollment {
        uid: pod.uid.clone(),
        reason,
    };
    let mut config = PodConfig {
        addresses: [[0; 4]; MAX_POD_ADDRESSES],
        excluded_outbound_ports: [0; MAX_EXCLUDED_PORTS],
        excluded_inbound_ports: [0; MAX_EXCLUDED_PORTS],
        flags: 0,
        uid_len: pod.uid.len() as u32,
        uid: [0; MAX_UID_LEN],
    };
    if pod.addresses.len() > MAX_POD_ADDRESSES {
        return Err(invalid(format!(
            "{} addresses, at most {MAX_POD_ADDRESSES}",
            pod.addresses.len()
        )));
    }
    for (slot, address) in config.addresses.iter_mut().zip(&pod.addresses) {
        if address.is_unspecified() || address.is_loopback() {
            return Err(invalid(format!("{address} is not a pod address")));
        }
        *slot = address_words(*address);
    }
    for (direction, ports, slots) in [
        (
            "outbound",
            &pod.excluded_outbound_ports,
            &mut config.excluded_outbound_ports,
        ),
        (
            "inbound",
            &pod.excluded_inbound_ports,
            &mut config.excluded_inbound_ports,
        ),
    ] {
        if ports.len() > MAX_EXCLUDED_PORTS {
            return Err(invalid(format!(
                "{} excluded {direction} ports, at most {MAX_EXCLUDED_PORTS}",
                ports.len()
            )));
        }
        if ports.contains(&0) {
            return Err(invalid(format!("excluded {direction} port 0")));
        }
        slots[..ports.len()].copy_from_slice(ports);
    }
    if !pod.dns_capture {
        config.flags |= POD_FLAG_NO_DNS_CAPTURE;
    }
    config.uid[..pod.uid.len()].copy_from_slice(pod.uid.as_bytes());
    Ok(config)
}

fn validate_uid(uid: &str) -> Result<(), RedirectionError> {
    Ok(crate::enrollment::check_pod_uid(uid)?)
}

fn config_uid(config: &PodConfig) -> String {
    let len = (config.uid_len as usize).min(MAX_UID_LEN);
    String::from_utf8_lossy(&config.uid[..len]).into_owned()
}

/// An address as the programs store it: network-order words, IPv4 mapped into IPv6.
pub(crate) fn address_words(ip: IpAddr) -> Address {
    match ip {
        IpAddr::V4(v4) => ipv4_mapped(u32::from_ne_bytes(v4.octets())),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            std::array::from_fn(|i| {
                u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            })
        }
    }
}

/// The inverse of [`address_words`]; IPv4-mapped addresses come back as IPv4.
pub(crate) fn ip_from_words(words: Address) -> IpAddr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(octets);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, EbpfError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(EbpfError::MissingProgram(name))?
        .try_into()
        .map_err(|e| EbpfError::Program(name, e))
}

fn hash_map<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a MapData, K, V>, EbpfError> {
    HashMap::try_from(ebpf.map(name).ok_or(EbpfError::MissingMap(name))?)
        .map_err(|e| EbpfError::Map(name, e))
}

fn hash_map_mut<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a mut MapData, K, V>, EbpfError> {
    HashMap::try_from(ebpf.map_mut(name).ok_or(EbpfError::MissingMap(name))?)
        .map_err(|e| EbpfError::Map(name, e))
}

fn sock_hash<'a, K: aya::Pod>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<SockHash<&'a MapData, K>, EbpfError> {
    SockHash::try_from(ebpf.map(name).ok_or(EbpfError::MissingMap(name))?)
        .map_err(|e| EbpfError::Map(name, e))
}

fn sock_hash_mut<'a, K: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<SockHash<&'a mut MapData, K>, EbpfError> {
    SockHash::try_from(ebpf.map_mut(name).ok_or(EbpfError::MissingMap(name))?)
        .map_err(|e| EbpfError::Map(name, e))
}

fn open_path(uid: &str, path: &Path) -> Result<File, RedirectionError> {
    File::open(path).map_err(|source| RedirectionError::OpenPodPath {
        uid: uid.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

/// Attaches the connect and sockops programs at the cgroup root, unless an earlier run's links
/// are pinned (they stay attached across restarts; that is what keeps pods failing closed).
/// Attached through bpf links, which the kernel always attaches as `BPF_F_ALLOW_MULTI` (aya's
/// `Single` mode passes no flags, which is what `link_create` accepts): other agents' (and other
/// software's) programs at the root keep running beside ours.
fn attach_at_root(ebpf: &mut Ebpf, config: &RedirectionConfig) -> Result<(), RedirectionError> {
    let mut root = None;
    for (pin, name) in ROOT_LINKS {
        let pin = config.pin_root.join(pin);
        if pin.exists() {
            continue;
        }
        let root = match &root {
            Some(root) => root,
            None => root.insert(
                File::open(&config.cgroup_root)
                    .map_err(|e| EbpfError::Cgroup(config.cgroup_root.display().to_string(), e))?,
            ),
        };
        let link = if name == programs::TRACK_SOCKETS {
            let program = program::<SockOps>(ebpf, name)?;
            let id = program
                .attach(root.as_fd(), CgroupAttachMode::Single)
                .map_err(|e| EbpfError::Program(name, e))?;
            FdLink::try_from(
                program
                    .take_link(id)
                    .map_err(|e| EbpfError::Program(name, e))?,
            )
        } else {
            let program = program::<CgroupSockAddr>(ebpf, name)?;
            let id = program
                .attach(root.as_fd(), CgroupAttachMode::Single)
                .map_err(|e| EbpfError::Program(name, e))?;
            FdLink::try_from(
                program
                    .take_link(id)
                    .map_err(|e| EbpfError::Program(name, e))?,
            )
        };
        pin_link(link.map_err(|e| RedirectionError::Link(name, e))?, &pin)?;
    }
    Ok(())
}

fn pin_link(link: FdLink, pin: &Path) -> Result<(), RedirectionError> {
    // Dropping the returned handle closes our fd; the pin keeps the link attached.
    link.pin(pin)
        .map_err(|e| RedirectionError::PinLink(pin.to_path_buf(), e))?;
    Ok(())
}

/// Removes a pinned link; the kernel detaches it as the last reference (our fd) goes.
fn unpin_link(pin: &Path) -> Result<(), RedirectionError> {
    let link = PinnedLink::from_pin(pin)
        .map_err(|e| RedirectionError::OpenPinnedLink(pin.to_path_buf(), e))?;
    let link = link
        .unpin()
        .map_err(|e| RedirectionError::Unpin(pin.to_path_buf(), e))?;
    drop(link);
    Ok(())
}

#[cfg(test)]
mod tests;
