//! The load generators the bench runs inside the pods: wrk (HTTP rps and closed-loop latency)
//! and this binary's own fixed-rate client (latency percentiles at a set request rate on one
//! keep-alive connection).

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::Context;
use weft_e2e::Mesh;

/// What one wrk run measured.
#[derive(Clone, Copy)]
pub(crate) struct WrkResult {
    pub(crate) rps: f64,
    pub(crate) p50_us: f64,
    pub(crate) requests: f64,
}

/// Runs wrk in `client`'s pod.
pub(crate) fn wrk(
    mesh: &Mesh,
    client: &str,
    url: &str,
    connections: u32,
    seconds: u32,
    close: bool,
) -> anyhow::Result<WrkResult> {
    let mut command = mesh.testbed.pod_command(client, "wrk");
    command.args([
        "-t",
        if connections > 1 { "2" } else { "1" },
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{seconds}s"),
        "--latency",
    ]);
    if close {
        command.args(["-H", "Connection: close"]);
    }
    let output = command.arg(url).output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("wrk output:\n{text}"))?;
    let p50 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("50%"))
        .and_then(|v| parse_duration_us(v.trim()))
        .with_context(|| format!("wrk latency:\n{text}"))?;
    // "  123456 requests in 10.00s, 12.34MB read"
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse::<f64>().ok())
        .with_context(|| format!("wrk request count:\n{text}"))?;
    Ok(WrkResult {
        rps,
        p50_us: p50,
        requests,
    })
}

pub(crate) fn parse_duration_us(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(v) = text.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1_000.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1_000_000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// `bench fixed-rate <host:port> <rps> <seconds>`, run inside a pod: GETs `/` on one keep-alive
/// connection at a fixed rate and prints `p50 p90 p99` in µs, each request's latency counted from
/// the moment it was due (so a stall shows up in the requests queued behind it).
pub(crate) fn fixed_rate_client(address: &str, rps: u32, seconds: u32) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(address).with_context(|| format!("connect {address}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let request = format!("GET / HTTP/1.1\r\nHost: {address}\r\n\r\n");
    let total = rps * seconds;
    let interval = Duration::from_secs(1) / rps;
    let mut latencies = Vec::with_capacity(total as usize);
    let mut buffer = vec![0u8; 16 * 1024];
    let start = Instant::now();
    for i in 0..total {
        let due = start + interval * i;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        stream.write_all(request.as_bytes())?;
        read_response(&mut stream, &mut buffer)?;
        latencies.push(due.elapsed().as_secs_f64() * 1e6);
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!("{:.1} {:.1} {:.1}", at(0.50), at(0.90), at(0.99));
    Ok(())
}

/// Reads one HTTP/1.1 response with a `Content-Length` body.
pub(crate) fn read_response(stream: &mut TcpStream, buffer: &mut [u8]) -> anyhow::Result<()> {
    let mut filled = 0;
    loop {
        if filled == buffer.len() {
            anyhow::bail!("response head over {} bytes", buffer.len());
        }
        let n = stream.read(&mut buffer[filled..])?;
        if n == 0 {
            anyhow::bail!("connection closed mid-response");
        }
        filled += n;
        let Some(end) = response_end(&buffer[..filled])? else {
            continue;
        };
        let mut body_left = end.saturating_sub(filled);
        let capacity = buffer.len();
        while body_left > 0 {
            let n = stream.read(&mut buffer[..body_left.min(capacity)])?;
            if n == 0 {
                anyhow::bail!("connection closed mid-body");
            }
            body_left -= n;
        }
        return Ok(());
    }
}

/// Where the HTTP/1.1 response starting `received` ends (head and `Content-Length` body), once
/// its head is complete; an error if it is not a 200 with a `Content-Length`.
pub(crate) fn response_end(received: &[u8]) -> anyhow::Result<Option<usize>> {
    let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&received[..end])?;
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!("unexpected response: {head}");
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .context("response without Content-Length")?;
    Ok(Some(end + 4 + length))
}

/// Runs the fixed-rate client in `client`'s pod against `address` (`host:port`): (p50, p90,
/// p99) µs.
pub(crate) fn fixed_rate(
    mesh: &Mesh,
    client: &str,
    address: &str,
    rps: u32,
    seconds: u32,
) -> anyhow::Result<[f64; 3]> {
    let exe = std::env::current_exe()?;
    let output = mesh
        .testbed
        .pod_command(client, exe.to_str().context("executable path")?)
        .args([
            "fixed-rate",
            address,
            &rps.to_string(),
            &seconds.to_string(),
        ])
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let values: Vec<f64> = text
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    match values[..] {
        [p50, p90, p99] => Ok([p50, p90, p99]),
        _ => anyhow::bail!(
            "fixed-rate client: {text} {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}
