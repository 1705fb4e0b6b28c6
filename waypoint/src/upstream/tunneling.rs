//! TCP carried through a tunnel proxy (DestinationRule `tunnel`): Envoy's tcp_proxy
//! `tunneling_config`, as Istio's `tunnelingconfig.Apply` sets it for TCP and TLS-passthrough
//! routes. The chosen endpoint is the tunnel proxy: on the stream to it (HBONE, plain TCP, or
//! the TLS the waypoint originates) the waypoint sends an HTTP/1.1 `CONNECT target:port` (or
//! `POST /` with the target as `host`, Envoy's `use_post` with its default `post_path`), waits
//! for the head of the answer, and relays bytes once it is a 2xx; anything else fails the
//! connection as a connect failure (Envoy's `HttpUpstream::isValidResponse` for HTTP/1; its
//! pool failure is `UF`). Bytes the proxy sends after the head belong to the tunnel and are
//! kept. HTTP routes never tunnel: only [`crate::tcp`] calls [`TcpTunneling::establish`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{BoxedIo, UpstreamError};
use crate::listener::PrefixedIo;

/// The most a tunnel proxy's answer head may take (Envoy's default
/// `max_response_headers_kb` is 60).
const MAX_RESPONSE_HEAD: usize = 60 * 1024;
/// How many headers an answer head may carry.
const MAX_RESPONSE_HEADERS: usize = 100;

/// What a cluster's TCP connections tunnel through its endpoint with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpTunneling {
    /// `host:port` (an IPv6 address in brackets), as Istio joins `targetHost` and
    /// `targetPort`: the CONNECT target, or the POST's `host`.
    pub authority: String,
    /// POST instead of CONNECT.
    pub use_post: bool,
}

impl TcpTunneling {
    /// The tunnel to `target_host:target_port`; an error says which part cannot be sent.
    pub fn new(target_host: &str, target_port: u32, use_post: bool) -> Result<Self, String> {
        if target_host.is_empty() {
            return Err("tunnel target_host is empty".to_owned());
        }
        let port = u16::try_from(target_port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("tunnel target_port {target_port} is not in 1..65535"))?;
        let authority = if target_host.contains(':') {
            format!("[{target_host}]:{port}")
        } else {
            format!("{target_host}:{port}")
        };
        authority
            .parse::<http::uri::Authority>()
            .map_err(|e| format!("tunnel target {authority:?}: {e}"))?;
        Ok(TcpTunneling {
            authority,
            use_post,
        })
    }

    /// The request head, as Envoy's HTTP/1 codec writes a tunneling request: no body framing
    /// (the stream's bytes follow as they are).
    pub fn request_head(&self) -> String {
        let authority = &self.authority;
        if self.use_post {
            format!("POST / HTTP/1.1\r\nhost: {authority}\r\n\r\n")
        } else {
            format!("CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n\r\n")
        }
    }

    /// Opens the tunnel on `io`, the stream to the tunnel proxy at `endpoint`, within
    /// `timeout`: the stream to relay on, or why the proxy refused.
    pub async fn establish(
        &self,
        mut io: BoxedIo,
        endpoint: SocketAddr,
        timeout: Duration,
    ) -> Result<BoxedIo, UpstreamError> {
        let failure = |reason: String| UpstreamError::ConnectFailure {
            endpoint,
            reason: format!("tunnel to {}: {reason}", self.authority),
        };
        let handshake = async {
            io.write_all(self.request_head().as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            io.flush().await.map_err(|e| e.to_string())?;
            read_answer(&mut io).await
        };
        let rest = match tokio::time::timeout(timeout, handshake).await {
            Err(_) => return Err(failure("no answer in time".to_owned())),
            Ok(Err(reason)) => return Err(failure(reason)),
            Ok(Ok(rest)) => rest,
        };
        Ok(Box::new(PrefixedIo::new(rest, io)))
    }
}

/// Reads the proxy's answer head: `Ok` with the bytes read past it when it is a 2xx.
async fn read_answer(io: &mut BoxedIo) -> Result<Vec<u8>, String> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let read = io.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("the proxy closed the connection before answering".to_owned());
        }
        buffer.extend_from_slice(&chunk[..read]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buffer) {
            Ok(httparse::Status::Complete(length)) => {
                let status = response.code.unwrap_or_default();
                if !(200..300).contains(&status) {
                    return Err(format!("the proxy answered {status}"));
                }
                return Ok(buffer.split_off(length));
            }
            Ok(httparse::Status::Partial) if buffer.len() < MAX_RESPONSE_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(format!("answer head over {MAX_RESPONSE_HEAD} bytes"));
            }
            Err(error) => return Err(format!("not an HTTP/1.1 answer: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_joined_as_istio_joins_them() {
        let connect = TcpTunneling::new("api.example.com", 443, false).unwrap();
        assert_eq!(
            connect.request_head(),
            "CONNECT api.example.com:443 HTTP/1.1\r\nhost: api.example.com:443\r\n\r\n"
        );
        let post = TcpTunneling::new("2001:db8::1", 8443, true).unwrap();
        assert_eq!(
            post.request_head(),
            "POST / HTTP/1.1\r\nhost: [2001:db8::1]:8443\r\n\r\n"
        );
        for (host, port) in [("", 443), ("a.example.com", 0), ("a.example.com", 70000)] {
            assert!(
                TcpTunneling::new(host, port, false).is_err(),
                "{host}:{port}"
            );
        }
        assert!(TcpTunneling::new("a b\r\n", 443, false).is_err());
    }

    /// The answer's status decides; bytes after its head stay in the stream.
    #[tokio::test]
    async fn a_2xx_opens_the_tunnel_and_keeps_the_bytes_after_the_head() {
        let tunneling = TcpTunneling::new("db.example.com", 5432, false).unwrap();
        let endpoint: SocketAddr = "192.0.2.1:3128".parse().unwrap();
        let answer = |bytes: &'static [u8]| {
            let (near, mut far) = tokio::io::duplex(1024);
            tokio::spawn(async move {
                let mut head = vec![0u8; tunneling_head_len()];
                far.read_exact(&mut head).await.unwrap();
                far.write_all(bytes).await.unwrap();
                // Kept open: the waypoint's side decides from the head alone.
                std::future::pending::<()>().await;
            });
            Box::new(near) as BoxedIo
        };
        fn tunneling_head_len() -> usize {
            TcpTunneling::new("db.example.com", 5432, false)
                .unwrap()
                .request_head()
                .len()
        }
        let timeout = Duration::from_secs(5);
        let mut io = tunneling
            .establish(
                answer(b"HTTP/1.1 204 OK\r\nx: y\r\n\r\nearly"),
                endpoint,
                timeout,
            )
            .await
            .unwrap();
        let mut early = [0u8; 5];
        io.read_exact(&mut early).await.unwrap();
        assert_eq!(&early, b"early");
        for refused in [
            &b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"[..],
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            let error = tunneling
                .establish(answer(refused), endpoint, timeout)
                .await
                .err()
                .unwrap();
            assert!(
                matches!(error, UpstreamError::ConnectFailure { .. }),
                "{error}"
            );
        }
    }
}
