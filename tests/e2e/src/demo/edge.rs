//! What the `ingress` and `egress` scenarios need of the mesh's edge, and how it starts on
//! either runtime ([`Site`]): the external server outside the cluster, whose address and CA the
//! examples leave to the demo, the in-mesh TLS server behind the PASSTHROUGH server, and the
//! gateways' credentials, a certificate per `credentialName`. The gateways themselves (the
//! waypoint binary in the gateway role) run as the runtime runs proxies: on the testbed as
//! processes reading the credentials from files laid out as Istio's Secrets ([`start`]), on
//! containerd as pods whose credentials the controller serves from the Secrets.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::Context;

use super::examples::{EXTERNAL, TLS_SERVER_APP, field, is_gateway, text};
use crate::{Mesh, PodSpec, WAYPOINT_METRICS_PORT, gateway::GatewayProcess};

/// The address the examples give the external server's endpoint (TEST-NET-3, RFC 5737): the
/// demo puts its external server's address in its place.
pub const EXTERNAL_PLACEHOLDER: &str = "203.0.113.10";
/// The external host, its ServiceEntry VIP and the port its server speaks TLS on, as
/// `deploy/examples/bookinfo/72-egress.yaml` declares them.
pub const EXTERNAL_HOST: &str = "catalogue.external.example";
pub const EXTERNAL_VIP: &str = "10.96.20.10";
pub const EXTERNAL_TLS_PORT: u16 = 8443;
/// The external server's files, under the run's directory.
pub const EXTERNAL_DIR: &str = "external";
/// The ingress gateway's hosts, as `70-gateway.yaml` declares them.
pub const INGRESS_HOST: &str = "bookinfo.example.com";
pub const PASSTHROUGH_HOST: &str = "secure.bookinfo.example.com";

/// The edge of a running demo.
pub struct Edge {
    /// The pods of the ingress and egress gateways.
    pub ingress: String,
    pub egress: String,
    /// The CA that signed the ingress gateway's certificate (its credential `bookinfo-cert`).
    pub ingress_ca: PathBuf,
    /// The CA that signed the in-mesh TLS server's own certificate.
    pub passthrough_ca: PathBuf,
    pub external: Ipv4Addr,
}

impl Edge {
    /// The gateways' pods, ingress then egress.
    pub fn gateways(&self) -> [&str; 2] {
        [&self.ingress, &self.egress]
    }

    /// Every gateway's metrics address (Istio's 15020 in its pod), as Prometheus scrapes it.
    pub fn metrics_addresses(&self, pod_ip: impl Fn(&str) -> Ipv4Addr) -> Vec<SocketAddr> {
        self.gateways()
            .iter()
            .map(|pod| SocketAddr::from((pod_ip(pod), WAYPOINT_METRICS_PORT)))
            .collect()
    }
}

/// A process in a pod, stopped when dropped, and killed by the kernel if the thread that
/// started it ends first ([`Server::spawn`]).
pub struct Server(Child);

impl Server {
    /// Starts `command` with its output piped, bound to the life of the calling thread: it runs
    /// under `setpriv --pdeathsig KILL`, which has the kernel send it SIGKILL when its parent
    /// ends, kept across `exec` (the `sh` and `nsenter` that enter a pod's cgroup and namespace
    /// exec into the program). A shell between them exits instead of starting the program if
    /// its parent is no longer this process (it ended before the signal was armed). A demo
    /// killed before its cleanup (`Drop`) runs leaves no server behind; the demo starts its
    /// servers on its main thread.
    pub fn spawn(command: &Command) -> std::io::Result<Self> {
        let mut bound = Command::new("setpriv");
        bound
            .args(["--pdeathsig", "KILL", "--", "sh", "-c"])
            .arg(r#"[ "$PPID" = "$0" ] && exec "$@""#)
            .arg(std::process::id().to_string())
            .arg(command.get_program())
            .args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => bound.env(key, value),
                None => bound.env_remove(key),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            bound.current_dir(dir);
        }
        bound
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map(Self)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The edge's processes on the testbed; stopped when dropped, before the mesh.
pub struct RunningEdge {
    pub edge: Edge,
    _gateways: Vec<GatewayProcess>,
    _servers: Vec<Server>,
}

/// A file of the examples that names the external server: its endpoint at the placeholder
/// address.
pub fn names_external(yaml: &str) -> bool {
    yaml.contains(EXTERNAL_PLACEHOLDER)
}

/// `yaml` with the external server's `address` in place of the placeholder, and its `ca` as
/// the `caCertificates` of every TLS setting of the DestinationRules for [`EXTERNAL_HOST`] (the
/// real host's certificate would be verified against the system's roots; the demo's test CA
/// is not one).
pub fn place_external(yaml: &str, address: Ipv4Addr, ca: &Path) -> anyhow::Result<String> {
    let mut documents = Vec::new();
    for document in crate::split_documents(yaml) {
        let mut value: serde_yaml::Value = serde_yaml::from_str(&document)?;
        match text(&value, &["kind"]).as_deref() {
            Some("ServiceEntry") => {
                for endpoint in value["spec"]["endpoints"]
                    .as_sequence_mut()
                    .into_iter()
                    .flatten()
                {
                    if endpoint["address"].as_str() == Some(EXTERNAL_PLACEHOLDER) {
                        endpoint["address"] = address.to_string().into();
                    }
                }
            }
            Some("DestinationRule")
                if text(&value, &["spec", "host"]).as_deref() == Some(EXTERNAL_HOST) =>
            {
                set_ca(&mut value["spec"], ca);
            }
            _ => {}
        }
        documents.push(serde_yaml::to_string(&value)?);
    }
    Ok(documents.join("---\n"))
}

/// `caCertificates: ca` in every `tls` setting under `value`.
fn set_ca(value: &mut serde_yaml::Value, ca: &Path) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    serde_yaml::Value::Mapping(tls) if key.as_str() == Some("tls") => {
                        tls.insert("caCertificates".into(), ca.display().to_string().into());
                    }
                    value => set_ca(value, ca),
                }
            }
        }
        serde_yaml::Value::Sequence(items) => items.iter_mut().for_each(|v| set_ca(v, ca)),
        _ => {}
    }
}

/// What starting the edge needs of the runtime: the run's directory, a command in a pod's (or
/// an outside host's) network namespace, a pod's address, and `kubectl apply`.
pub trait Site {
    fn dir(&self) -> &Path;
    fn command(&self, pod: &str, program: &str) -> Command;
    fn ip(&self, pod: &str) -> Ipv4Addr;
    fn apply(&self, file: &str, yaml: &str) -> anyhow::Result<()>;
}

impl Site for Mesh {
    fn dir(&self) -> &Path {
        Mesh::dir(self)
    }

    fn command(&self, pod: &str, program: &str) -> Command {
        self.testbed.pod_command(pod, program)
    }

    fn ip(&self, pod: &str) -> Ipv4Addr {
        self.pod(pod).ip
    }

    fn apply(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        self.write_config(file, yaml)
    }
}

/// The edge's servers and what the gateways' pods need to start.
pub struct Servers {
    pub external: Ipv4Addr,
    /// The CA of the external server (the egress DestinationRule's `caCertificates`).
    pub external_ca: PathBuf,
    pub passthrough_ca: PathBuf,
    servers: Vec<Server>,
}

/// A gateway's credential: the certificate for the first host of the server naming it, from a
/// CA of its own.
pub struct Credential {
    pub name: String,
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// The `(ingress, egress)` gateways' pods: the pods labelled `istio: ingressgateway` and
/// `istio: egressgateway`.
pub fn gateways(pods: &[PodSpec]) -> anyhow::Result<(&PodSpec, &PodSpec)> {
    let gateway = |role: &str| {
        pods.iter()
            .find(|p| is_gateway(p) && p.labels.get("istio").map(String::as_str) == Some(role))
            .with_context(|| format!("no pod labelled istio: {role}"))
    };
    Ok((gateway("ingressgateway")?, gateway("egressgateway")?))
}

/// The credentials the Istio Gateways of `files` name, each a certificate for the server's first
/// host from a CA of its own.
pub fn credentials(files: &[(String, String)]) -> anyhow::Result<Vec<Credential>> {
    let mut made = Vec::new();
    for (_, yaml) in files {
        for document in crate::split_documents(yaml) {
            let value: serde_yaml::Value = serde_yaml::from_str(&document)?;
            if text(&value, &["kind"]).as_deref() != Some("Gateway") {
                continue;
            }
            for server in field(&value, &["spec", "servers"])
                .and_then(|s| s.as_sequence())
                .into_iter()
                .flatten()
            {
                let (Some(name), Some(host)) = (
                    text(server, &["tls", "credentialName"]),
                    field(server, &["hosts"])
                        .and_then(|h| h.get(0))
                        .and_then(|h| h.as_str()),
                ) else {
                    continue;
                };
                let host = host.rsplit('/').next().unwrap_or(host);
                let (ca, cert, key) = crate::server_certificate(host);
                made.push(Credential {
                    name,
                    ca,
                    cert,
                    key,
                });
            }
        }
    }
    Ok(made)
}

/// The CA file of the ingress gateway's credential (the first one), written under `dir` for
/// the outside client to verify the gateway against.
pub fn ingress_ca(credentials: &[Credential], dir: &Path) -> anyhow::Result<PathBuf> {
    let credential = credentials
        .first()
        .context("no Gateway names a credential")?;
    let file = dir.join(format!("{}-ca.pem", credential.name));
    std::fs::write(&file, &credential.ca)?;
    Ok(file)
}

/// The credentials written as Istio's Secret keys (`<dir>/<name>/tls.crt`, `tls.key`), as the
/// gateways read them in local mode.
fn write_credentials(credentials: &[Credential], dir: &Path) -> anyhow::Result<()> {
    for credential in credentials {
        std::fs::create_dir_all(dir.join(&credential.name))?;
        std::fs::write(dir.join(&credential.name).join("tls.crt"), &credential.cert)?;
        std::fs::write(dir.join(&credential.name).join("tls.key"), &credential.key)?;
    }
    Ok(())
}

/// `openssl s_server -quiet -www` in `pod` on `port` with `args`, once it listens.
fn s_server(site: &dyn Site, pod: &str, port: u16, args: &[String]) -> anyhow::Result<Server> {
    let mut command = site.command(pod, "openssl");
    command
        .args(["s_server", "-quiet", "-www", "-accept", &port.to_string()])
        .args(args);
    let server = Server::spawn(&command).with_context(|| format!("openssl s_server in {pod}"))?;
    // The pod's socket table (`ss`): no probe connection reaches a server that counts clients.
    let listening = super::eventually(crate::STARTUP, || {
        site.command(pod, "ss")
            .args(["-Hltn", &format!("sport = :{port}")])
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.trim_ascii().is_empty())
    });
    anyhow::ensure!(listening, "nothing listens on {pod}:{port}");
    Ok(server)
}

/// Writes `files` (name, PEM) under `dir`.
fn pem_files(dir: &Path, files: &[(&str, &str)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (file, content) in files {
        std::fs::write(dir.join(file), content)?;
    }
    Ok(())
}

/// The external server: `openssl s_server -www` on [`EXTERNAL_TLS_PORT`] that presents the
/// certificate its CA signed for [`EXTERNAL_HOST`] only to a client whose SNI names that host
/// (`-servername`, with a fatal alert for another name); without SNI it presents a decoy from
/// another CA, which the CA does not verify. Returns the server and its CA's file.
fn start_external(site: &dyn Site) -> anyhow::Result<(Server, PathBuf)> {
    let dir = site.dir().join(EXTERNAL_DIR);
    let (ca, cert, key) = crate::server_certificate(EXTERNAL_HOST);
    let (_, decoy_cert, decoy_key) = crate::server_certificate("no-sni.invalid");
    pem_files(
        &dir,
        &[
            ("ca.pem", &ca),
            ("cert.pem", &cert),
            ("key.pem", &key),
            ("decoy-cert.pem", &decoy_cert),
            ("decoy-key.pem", &decoy_key),
        ],
    )?;
    let path = |file: &str| dir.join(file).display().to_string();
    let args = [
        "-cert".into(),
        path("decoy-cert.pem"),
        "-key".into(),
        path("decoy-key.pem"),
        "-servername".into(),
        EXTERNAL_HOST.into(),
        "-servername_fatal".into(),
        "-cert2".into(),
        path("cert.pem"),
        "-key2".into(),
        path("key.pem"),
    ];
    let server = s_server(site, EXTERNAL, EXTERNAL_TLS_PORT, &args)?;
    Ok((server, dir.join("ca.pem")))
}

/// The in-mesh TLS server behind the PASSTHROUGH server: `openssl s_server -www` in `pod` on
/// `port` with a certificate for [`PASSTHROUGH_HOST`] from a CA of its own; returns it and the
/// CA's file.
fn start_passthrough(site: &dyn Site, pod: &str, port: u16) -> anyhow::Result<(Server, PathBuf)> {
    let dir = site.dir().join(format!("tls-{pod}-{port}"));
    let (ca, cert, key) = crate::server_certificate(PASSTHROUGH_HOST);
    pem_files(
        &dir,
        &[("ca.pem", &ca), ("cert.pem", &cert), ("key.pem", &key)],
    )?;
    let path = |file: &str| dir.join(file).display().to_string();
    let args = [
        "-cert".into(),
        path("cert.pem"),
        "-key".into(),
        path("key.pem"),
    ];
    let server = s_server(site, pod, port, &args)?;
    Ok((server, dir.join("ca.pem")))
}

/// Starts the edge's servers once the mesh runs: the external server, then the held-back files
/// of the examples with its address and CA in place, then the in-mesh TLS server (its pod must
/// run).
pub fn start_servers(
    site: &dyn Site,
    pods: &[PodSpec],
    held_back: &[(String, String)],
) -> anyhow::Result<Servers> {
    let (external_server, external_ca) = start_external(site).context("the external server")?;
    let external = site.ip(EXTERNAL);
    for (file, yaml) in held_back {
        site.apply(file, &place_external(yaml, external, &external_ca)?)?;
    }
    let tls_server = pods
        .iter()
        .find(|p| p.labels.get("app").map(String::as_str) == Some(TLS_SERVER_APP))
        .context("no in-mesh TLS server")?;
    let (passthrough, passthrough_ca) =
        start_passthrough(site, &tls_server.name, tls_server.http_port)
            .context("the in-mesh TLS server")?;
    Ok(Servers {
        external,
        external_ca,
        passthrough_ca,
        servers: vec![external_server, passthrough],
    })
}

impl Servers {
    /// The edge once the gateways' pods run; the servers stopped when the result is dropped.
    pub fn edge(self, ingress: &str, egress: &str, ingress_ca: PathBuf) -> (Edge, Vec<Server>) {
        let edge = Edge {
            ingress: ingress.to_owned(),
            egress: egress.to_owned(),
            ingress_ca,
            passthrough_ca: self.passthrough_ca,
            external: self.external,
        };
        (edge, self.servers)
    }
}

/// Starts the edge on a started mesh: its servers, then the gateways with their credentials as
/// files.
pub fn start(
    mesh: &Mesh,
    pods: &[PodSpec],
    files: &[(String, String)],
    held_back: &[(String, String)],
) -> anyhow::Result<RunningEdge> {
    let servers = start_servers(mesh, pods, held_back)?;
    let dir = mesh.dir().join("credentials");
    std::fs::create_dir_all(&dir)?;
    let credentials = credentials(files)?;
    write_credentials(&credentials, &dir)?;
    let ingress_ca = ingress_ca(&credentials, &dir)?;
    let (ingress, egress) = gateways(pods)?;
    let mut gateways = Vec::new();
    for pod in [ingress, egress] {
        gateways.push(mesh.start_gateway(&pod.name, &dir)?);
    }
    let (edge, servers) = servers.edge(&ingress.name, &egress.name, ingress_ca);
    Ok(RunningEdge {
        edge,
        _gateways: gateways,
        _servers: servers,
    })
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader, Read as _},
        time::{Duration, Instant},
    };

    use super::*;

    /// Set in the environment of the process [`a_server_dies_with_the_demo`] starts and kills.
    const SERVER_PARENT: &str = "WEFT_TEST_SERVER_PARENT";

    /// In the process [`a_server_dies_with_the_demo`] starts (and only there): starts a server
    /// as the demo does, says its pid once it runs, and waits on its standard input, which
    /// never closes.
    #[test]
    fn server_parent() {
        if std::env::var_os(SERVER_PARENT).is_none() {
            return;
        }
        let mut sleep = Command::new("sleep");
        sleep.arg("600");
        let server = Server::spawn(&sleep).unwrap();
        // Once the program runs, as the demo's servers listen before it goes on.
        let comm = format!("/proc/{}/comm", server.0.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&comm).unwrap().trim() != "sleep" {
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        println!("server pid {}", server.0.id());
        let _ = std::io::stdin().read(&mut [0]);
        drop(server);
    }

    /// Whether `pid` is gone: no such process, or a zombie not yet reaped by its new parent.
    fn gone(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        })
    }

    /// A server of the edge does not outlive a demo killed with SIGKILL (no `Drop` runs): this
    /// test binary, rerun as [`server_parent`], starts one, and is killed.
    #[test]
    fn a_server_dies_with_the_demo() {
        let mut parent = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "demo::edge::tests::server_parent", "--nocapture"])
            .env(SERVER_PARENT, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(parent.stdout.take().unwrap()).lines();
        let pid: u32 = lines
            .find_map(|line| line.ok()?.strip_prefix("server pid ")?.parse().ok())
            .expect("the parent says its server's pid");
        assert!(!gone(pid), "the server {pid} runs");
        parent.kill().unwrap();
        parent.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone(pid) {
            assert!(
                Instant::now() < deadline,
                "the server {pid} outlived its parent killed with SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn the_external_server_is_put_in_place_of_the_placeholder() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/bookinfo");
        let yaml = std::fs::read_to_string(dir.join("72-egress.yaml")).unwrap();
        assert!(names_external(&yaml));
        for fact in [EXTERNAL_HOST, EXTERNAL_VIP, &EXTERNAL_TLS_PORT.to_string()] {
            assert!(yaml.contains(fact), "{fact}");
        }
        let placed =
            place_external(&yaml, Ipv4Addr::new(10, 1, 2, 3), Path::new("/run/ca.pem")).unwrap();
        assert!(!names_external(
            &placed.replace("caCertificates: /run/ca.pem", "")
        ));
        assert!(placed.contains("address: 10.1.2.3"));
        assert!(placed.contains("caCertificates: /run/ca.pem"));
        let gateway = std::fs::read_to_string(dir.join("70-gateway.yaml")).unwrap();
        assert!(gateway.contains(INGRESS_HOST) && gateway.contains(PASSTHROUGH_HOST));
        assert!(!names_external(&gateway));
    }
}
