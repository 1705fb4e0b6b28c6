//! What the `ingress` and `egress` scenarios need of the mesh's edge, and how the testbed runs
//! it: the gateways' pods (the waypoint binary in the gateway role, credentials from files laid
//! out as Istio's Secrets), the in-mesh TLS server behind the PASSTHROUGH server, and the
//! external server outside the cluster, whose address and CA the examples leave to the demo.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Child,
};

use anyhow::Context;

use super::examples::{EXTERNAL, TLS_SERVER_APP, field, is_gateway, text};
use crate::{Mesh, PodSpec, gateway::GatewayProcess};

/// The address the examples give the external server's endpoint (TEST-NET-3, RFC 5737): the
/// demo puts its external server's address in its place.
pub const EXTERNAL_PLACEHOLDER: &str = "203.0.113.10";
/// The external host, its ServiceEntry VIP and the port its server speaks TLS on, as
/// `deploy/examples/bookinfo/72-egress.yaml` declares them.
pub const EXTERNAL_HOST: &str = "catalogue.external.example";
pub const EXTERNAL_VIP: &str = "10.96.20.10";
pub const EXTERNAL_TLS_PORT: u16 = 8443;
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

/// A process in a pod, stopped when dropped.
struct Server(Child);

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

/// The credentials the Istio Gateways of `files` name, each a certificate for the server's first
/// host from a CA of its own, written as Istio's Secret keys (`<dir>/<name>/tls.crt`,
/// `tls.key`); returns `(credential, CA file)`.
fn write_credentials(
    files: &[(String, String)],
    dir: &Path,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut written = Vec::new();
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
                std::fs::create_dir_all(dir.join(&name))?;
                std::fs::write(dir.join(&name).join("tls.crt"), cert)?;
                std::fs::write(dir.join(&name).join("tls.key"), key)?;
                let ca_file = dir.join(format!("{name}-ca.pem"));
                std::fs::write(&ca_file, ca)?;
                written.push((name, ca_file));
            }
        }
    }
    Ok(written)
}

/// The external server: `openssl s_server -www` on [`EXTERNAL_TLS_PORT`] that presents the
/// certificate its CA signed for [`EXTERNAL_HOST`] only to a client whose SNI names that host
/// (`-servername`, with a fatal alert for another name); without SNI it presents a decoy from
/// another CA, which the CA does not verify. Returns the server and its CA's file.
fn start_external(mesh: &Mesh) -> anyhow::Result<(Server, PathBuf)> {
    let dir = mesh.dir().join("external");
    std::fs::create_dir_all(&dir)?;
    let (ca, cert, key) = crate::server_certificate(EXTERNAL_HOST);
    let (_, decoy_cert, decoy_key) = crate::server_certificate("no-sni.invalid");
    for (file, content) in [
        ("ca.pem", &ca),
        ("cert.pem", &cert),
        ("key.pem", &key),
        ("decoy-cert.pem", &decoy_cert),
        ("decoy-key.pem", &decoy_key),
    ] {
        std::fs::write(dir.join(file), content)?;
    }
    let path = |file: &str| dir.join(file).display().to_string();
    let port = EXTERNAL_TLS_PORT.to_string();
    let server = mesh.spawn_in_pod(
        EXTERNAL,
        "openssl",
        &[
            "s_server",
            "-quiet",
            "-accept",
            &port,
            "-cert",
            &path("decoy-cert.pem"),
            "-key",
            &path("decoy-key.pem"),
            "-servername",
            EXTERNAL_HOST,
            "-servername_fatal",
            "-cert2",
            &path("cert.pem"),
            "-key2",
            &path("key.pem"),
            "-www",
        ],
    )?;
    let server = Server(server);
    mesh.wait_listening(EXTERNAL, EXTERNAL_TLS_PORT)?;
    Ok((server, dir.join("ca.pem")))
}

/// Starts the edge on a started mesh: the external server, then the held-back files of the
/// examples with its address and CA in place, the in-mesh TLS server, the gateways.
pub fn start(
    mesh: &Mesh,
    pods: &[PodSpec],
    files: &[(String, String)],
    held_back: &[(String, String)],
) -> anyhow::Result<RunningEdge> {
    let (external_server, external_ca) = start_external(mesh).context("the external server")?;
    let external = mesh.pod(EXTERNAL).ip;
    for (file, yaml) in held_back {
        mesh.write_config(file, &place_external(yaml, external, &external_ca)?)?;
    }
    let tls_server = pods
        .iter()
        .find(|p| p.labels.get("app").map(String::as_str) == Some(TLS_SERVER_APP))
        .context("no in-mesh TLS server")?;
    let (passthrough, passthrough_ca) = mesh
        .start_tls_server(&tls_server.name, tls_server.http_port, PASSTHROUGH_HOST)
        .context("the in-mesh TLS server")?;
    let credentials = mesh.dir().join("credentials");
    std::fs::create_dir_all(&credentials)?;
    let written = write_credentials(files, &credentials)?;
    let ingress_ca = written
        .first()
        .map(|(_, ca)| ca.clone())
        .context("no Gateway names a credential")?;
    let gateway = |role: &str| {
        pods.iter()
            .find(|p| is_gateway(p) && p.labels.get("istio").map(String::as_str) == Some(role))
            .map(|p| p.name.clone())
            .with_context(|| format!("no pod labelled istio: {role}"))
    };
    let (ingress, egress) = (gateway("ingressgateway")?, gateway("egressgateway")?);
    let mut gateways = Vec::new();
    for pod in [&ingress, &egress] {
        gateways.push(mesh.start_gateway(pod, &credentials)?);
    }
    Ok(RunningEdge {
        edge: Edge {
            ingress,
            egress,
            ingress_ca,
            passthrough_ca,
            external,
        },
        _gateways: gateways,
        _servers: vec![external_server, Server(passthrough)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
