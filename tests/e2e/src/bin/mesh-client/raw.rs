//! Hand-written HTTP/1.x bytes, sent as they are: what a strict server refuses and a lenient one
//! serves (method case, Host, versions, framing).

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::TIMEOUT;

/// How long the server may stay silent before the answer is taken as complete.
const QUIET: Duration = Duration::from_secs(2);

/// `\r`, `\n`, `\t`, `\\` and `\xNN` escapes, so a shell argument can carry any byte.
pub fn unescape(text: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(byte) = bytes.next() {
        if byte != b'\\' {
            out.push(byte);
            continue;
        }
        match bytes.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                let hex = std::str::from_utf8(&hex).context("\\x escape")?;
                out.push(u8::from_str_radix(hex, 16).with_context(|| format!("\\x{hex}"))?);
            }
            other => bail!("unknown escape \\{:?}", other.map(char::from)),
        }
    }
    Ok(out)
}

/// Sends `payload` on a fresh connection and reads until the server closes or goes quiet.
/// Reports the status of every response head seen and the whole answer.
pub async fn send(target: &str, payload: &[u8]) -> anyhow::Result<serde_json::Value> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(target)
            .await
            .with_context(|| format!("connecting to {target}"))?;
        stream.write_all(payload).await?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let closed = loop {
            match tokio::time::timeout(QUIET, stream.read(&mut chunk)).await {
                Ok(Ok(0)) => break true,
                Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
                Ok(Err(_)) => break true,
                Err(_) => break false,
            }
        };
        anyhow::Ok((answer, closed))
    };
    let (answer, closed) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .context("the exchange timed out")??;
    Ok(report(&answer, closed))
}

/// Statuses of the HTTP/1 response heads in `answer` (`"400"`, ...), with the text.
pub fn report(answer: &[u8], closed: bool) -> serde_json::Value {
    let text = String::from_utf8_lossy(answer);
    let statuses: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("HTTP/1."))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    serde_json::json!({ "statuses": statuses, "closed": closed, "answer": text })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_carry_any_byte() {
        assert_eq!(
            unescape(r"GET / HTTP/1.1\r\nX: \x00\t\\\r\n").unwrap(),
            b"GET / HTTP/1.1\r\nX: \x00\t\\\r\n"
        );
        assert!(unescape(r"\q").is_err());
    }
}
