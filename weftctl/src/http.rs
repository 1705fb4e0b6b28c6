//! A small HTTP/1.1 GET client for the controller's monitoring port and the agents' admin port
//! (both plain HTTP on a trusted address), bounded in time and size.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};

const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest body read (a big node's config dump is a few MiB).
const MAX_BODY: u64 = 64 << 20;

/// `host:port` of an address given as `host:port` or `http://host:port[/]`.
pub fn authority(address: &str) -> &str {
    let address = address.strip_prefix("http://").unwrap_or(address);
    address.trim_end_matches('/')
}

/// GETs `path` from `address`: the body of a 200 answer, an error naming the address otherwise.
pub fn get(address: &str, path: &str) -> anyhow::Result<String> {
    let authority = authority(address);
    let target = authority
        .to_socket_addrs()
        .with_context(|| format!("{authority} is not host:port"))?
        .next()
        .with_context(|| format!("{authority} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)
        .with_context(|| format!("connecting to {authority}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .take(MAX_BODY)
        .read_to_end(&mut raw)
        .with_context(|| format!("reading {path} from {authority}"))?;
    let (status, body) =
        parse_response(&raw).with_context(|| format!("{path} from {authority}"))?;
    if status != 200 {
        bail!("{authority}{path} answered {status}: {}", body.trim());
    }
    Ok(body)
}

/// The status and body of an HTTP/1.1 response (plain or chunked).
fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the answer is not HTTP (no end of headers)")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("the answer has no HTTP status")?;
    let chunked = head.lines().any(|line| {
        line.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("truncated chunk")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("truncated chunk")?);
        body = rest.get(size..).unwrap_or("").trim_start_matches("\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(parse_response(plain).unwrap(), (200, "ok".to_owned()));
        let chunked =
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nnot\r\n6\r\n found\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (404, "not found".to_owned())
        );
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn authority_accepts_urls() {
        assert_eq!(authority("http://10.0.0.1:15014/"), "10.0.0.1:15014");
        assert_eq!(authority("127.0.0.1:15000"), "127.0.0.1:15000");
    }
}
