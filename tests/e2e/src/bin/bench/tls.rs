//! The TLS section: rustls with aws-lc-rs (the mesh's provider) against ring, in the same run,
//! in memory (no sockets: only the cryptography and rustls's record layer are measured).
//!
//! - Full handshakes per second, mutual TLS 1.3 as HBONE does it (ECDSA P-256 certificates of a
//!   test CA, both sides verifying), one thread, no resumption: aws-lc-rs with X25519 and with
//!   X25519MLKEM768 (the post-quantum hybrid, which ring does not have), ring with X25519.
//! - Bulk: MB/s of application data through an established session, 16 KiB records, the
//!   client's encryption and the server's decryption, with the provider's first TLS 1.3 suite
//!   (AES-256-GCM).

use std::{
    fmt::Write as _,
    io::{Read, Write},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
    client::Resumption,
    crypto::{CryptoProvider, SupportedKxGroup, aws_lc_rs, ring},
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
    server::WebPkiClientVerifier,
};

use crate::Settings;

/// The name the server's certificate carries.
const SERVER_NAME: &str = "bench.weft.test";
/// Application data per write in the bulk figure (a full TLS record).
const CHUNK: usize = 16 * 1024;

/// One configuration measured.
struct Case {
    name: &'static str,
    provider: fn() -> CryptoProvider,
    group: &'static dyn SupportedKxGroup,
}

const AWS_LC_X25519: Case = Case {
    name: "aws-lc-rs, X25519",
    provider: aws_lc_rs::default_provider,
    group: aws_lc_rs::kx_group::X25519,
};
const AWS_LC_MLKEM: Case = Case {
    name: "aws-lc-rs, X25519MLKEM768",
    provider: aws_lc_rs::default_provider,
    group: aws_lc_rs::kx_group::X25519MLKEM768,
};
const RING_X25519: Case = Case {
    name: "ring, X25519",
    provider: ring::default_provider,
    group: ring::kx_group::X25519,
};

/// Medians over the rounds.
pub struct Figures {
    /// Handshakes per second of each case, in the order above.
    handshakes: Vec<(&'static str, f64)>,
    /// Bulk MB/s of aws-lc-rs and of ring.
    bulk: (f64, f64),
    suite: String,
    per_measurement: Duration,
    rounds: usize,
}

/// A CA, and a certificate of it for each side.
struct Credentials {
    roots: Arc<RootCertStore>,
    server: (Vec<CertificateDer<'static>>, PrivatePkcs8KeyDer<'static>),
    client: (Vec<CertificateDer<'static>>, PrivatePkcs8KeyDer<'static>),
}

fn credentials() -> anyhow::Result<Credentials> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bench CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone())?;
    let leaf = |name: &str| -> anyhow::Result<_> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((
            vec![cert.der().clone()],
            PrivatePkcs8KeyDer::from(key.serialize_der()),
        ))
    };
    Ok(Credentials {
        roots: Arc::new(roots),
        server: leaf(SERVER_NAME)?,
        client: leaf("client.weft.test")?,
    })
}

/// Client and server configurations of `case`: TLS 1.3 only, mutual, one key exchange group,
/// no resumption and no tickets (every handshake is a full one).
fn configs(
    case: &Case,
    credentials: &Credentials,
) -> anyhow::Result<(Arc<ClientConfig>, Arc<ServerConfig>)> {
    let provider = Arc::new(CryptoProvider {
        kx_groups: vec![case.group],
        ..(case.provider)()
    });
    let verifier =
        WebPkiClientVerifier::builder_with_provider(credentials.roots.clone(), provider.clone())
            .build()?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            credentials.server.0.clone(),
            PrivateKeyDer::Pkcs8(credentials.server.1.clone_key()),
        )?;
    server.send_tls13_tickets = 0;
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(credentials.roots.clone())
        .with_client_auth_cert(
            credentials.client.0.clone(),
            PrivateKeyDer::Pkcs8(credentials.client.1.clone_key()),
        )?;
    client.resumption = Resumption::disabled();
    Ok((Arc::new(client), Arc::new(server)))
}

/// Moves every TLS byte `from` has to send into `to`.
fn transfer(from: &mut Connection, to: &mut Connection) -> anyhow::Result<()> {
    let mut wire = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut wire)?;
    }
    let mut pending = &wire[..];
    while !pending.is_empty() {
        to.read_tls(&mut pending)?;
        to.process_new_packets()?;
    }
    Ok(())
}

/// One full handshake, in memory.
fn handshake(
    client: &Arc<ClientConfig>,
    server: &Arc<ServerConfig>,
) -> anyhow::Result<(Connection, Connection)> {
    let name = ServerName::try_from(SERVER_NAME)?;
    let mut client = Connection::Client(ClientConnection::new(client.clone(), name)?);
    let mut server = Connection::Server(ServerConnection::new(server.clone())?);
    while client.is_handshaking() || server.is_handshaking() {
        transfer(&mut client, &mut server)?;
        transfer(&mut server, &mut client)?;
    }
    Ok((client, server))
}

fn handshakes_per_second(
    case: &Case,
    credentials: &Credentials,
    time: Duration,
) -> anyhow::Result<f64> {
    let (client, server) = configs(case, credentials)?;
    // Outside the clock: the provider's one-time set-up (CPU feature detection, tables).
    handshake(&client, &server).with_context(|| case.name)?;
    let started = Instant::now();
    let mut done = 0u32;
    while started.elapsed() < time {
        handshake(&client, &server).with_context(|| case.name)?;
        done += 1;
    }
    Ok(f64::from(done) / started.elapsed().as_secs_f64())
}

/// MB/s from client to server on one session, and the suite it used.
fn bulk_mb_per_second(
    case: &Case,
    credentials: &Credentials,
    time: Duration,
) -> anyhow::Result<(f64, String)> {
    let (client, server) = configs(case, credentials)?;
    let (mut client, mut server) = handshake(&client, &server)?;
    let suite = client
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    let chunk = vec![0x5a; CHUNK];
    let mut sink = vec![0; CHUNK];
    let started = Instant::now();
    let mut carried = 0u64;
    while started.elapsed() < time {
        client.writer().write_all(&chunk)?;
        transfer(&mut client, &mut server)?;
        let mut received = 0;
        while received < CHUNK {
            let n = server.reader().read(&mut sink)?;
            anyhow::ensure!(n > 0, "{}: the server read nothing", case.name);
            received += n;
        }
        carried += CHUNK as u64;
    }
    Ok((
        carried as f64 / 1e6 / started.elapsed().as_secs_f64(),
        suite,
    ))
}

pub fn run(settings: &Settings) -> anyhow::Result<Figures> {
    // A quarter of the figures' time each: five measurements per round, 1.25 s in `--quick`.
    let per_measurement = Duration::from_millis(250 * u64::from(settings.seconds));
    let credentials = credentials()?;
    let cases = [AWS_LC_X25519, AWS_LC_MLKEM, RING_X25519];
    let mut handshakes = vec![Vec::new(); cases.len()];
    let (mut aws_lc, mut ring_bulk) = (Vec::new(), Vec::new());
    let mut suite = String::new();
    for _ in 0..settings.rounds {
        for (i, case) in cases.iter().enumerate() {
            handshakes[i].push(handshakes_per_second(case, &credentials, per_measurement)?);
        }
        let (mb, used) = bulk_mb_per_second(&AWS_LC_X25519, &credentials, per_measurement)?;
        aws_lc.push(mb);
        suite = used;
        ring_bulk.push(bulk_mb_per_second(&RING_X25519, &credentials, per_measurement)?.0);
    }
    Ok(Figures {
        handshakes: cases
            .iter()
            .zip(handshakes)
            .map(|(case, samples)| (case.name, crate::median(samples)))
            .collect(),
        bulk: (crate::median(aws_lc), crate::median(ring_bulk)),
        suite,
        per_measurement,
        rounds: settings.rounds,
    })
}

pub fn report(out: &mut String, figures: &Figures) -> std::fmt::Result {
    writeln!(
        out,
        "\n## TLS providers\n\nrustls with aws-lc-rs (the mesh's) against ring, in memory on one \
         thread, {:?} per figure, median of {} round(s). Handshakes: full mutual TLS 1.3 (ECDSA \
         P-256, no resumption); bulk: {} on one session, 16 KiB records, encryption and \
         decryption.\n",
        figures.per_measurement, figures.rounds, figures.suite
    )?;
    writeln!(out, "| figure | aws-lc-rs | ring | aws-lc-rs / ring |")?;
    writeln!(out, "|---|---:|---:|---:|")?;
    let ring_handshakes = figures
        .handshakes
        .iter()
        .find(|(name, _)| *name == RING_X25519.name)
        .map_or(f64::NAN, |(_, v)| *v);
    for (name, value) in &figures.handshakes {
        if *name == RING_X25519.name {
            continue;
        }
        writeln!(
            out,
            "| handshakes / s ({name}; ring: X25519) | {value:.0} | {ring_handshakes:.0} | {:.2} |",
            value / ring_handshakes
        )?;
    }
    let (aws_lc, ring) = figures.bulk;
    writeln!(
        out,
        "| bulk MB/s | {aws_lc:.0} | {ring:.0} | {:.2} |",
        aws_lc / ring
    )
}
