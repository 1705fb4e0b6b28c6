//! The first flight of a TLS connection at the edge, read before anything is decided: the
//! ClientHello's SNI chooses the server (and so the certificate, or the PASSTHROUGH route), and
//! the bytes read are replayed to the TLS acceptor or to the upstream untouched. Bounded in
//! size and time: a peer that is not yet anyone may hold no more.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest first flight read (a ClientHello with many extensions fits many times over).
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;
/// How long a client has to send its ClientHello.
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection's first bytes are not a usable ClientHello.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelloError {
    #[error("not a TLS handshake")]
    NotTls,
    #[error("malformed ClientHello")]
    Malformed,
    #[error("ClientHello larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("no ClientHello within {CLIENT_HELLO_TIMEOUT:?}")]
    Timeout,
    #[error("connection closed before the ClientHello")]
    Closed,
}

/// What the first flight said, and its bytes.
#[derive(Debug)]
pub struct ClientHello {
    /// The server name asked for, lower case.
    pub sni: Option<String>,
    pub bytes: Vec<u8>,
}

/// Reads until the ClientHello is complete.
pub async fn read_client_hello<IO: AsyncRead + Unpin>(
    io: &mut IO,
) -> Result<ClientHello, HelloError> {
    let mut bytes = Vec::with_capacity(1024);
    let read = async {
        loop {
            match parse(&bytes) {
                Ok(Some(sni)) => return Ok(sni),
                Ok(None) if bytes.len() >= MAX_CLIENT_HELLO => return Err(HelloError::TooLarge),
                Ok(None) => {}
                Err(error) => return Err(error),
            }
            let mut chunk = [0u8; 2048];
            let want = chunk.len().min(MAX_CLIENT_HELLO - bytes.len());
            match io.read(&mut chunk[..want]).await {
                Ok(0) | Err(_) => return Err(HelloError::Closed),
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let sni = tokio::time::timeout(CLIENT_HELLO_TIMEOUT, read)
        .await
        .map_err(|_| HelloError::Timeout)??;
    Ok(ClientHello { sni, bytes })
}

/// `Ok(Some(sni))` once `bytes` hold a whole ClientHello, `Ok(None)` while more are needed.
pub fn parse(bytes: &[u8]) -> Result<Option<Option<String>>, HelloError> {
    // The handshake message, reassembled from its records.
    let mut message = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = bytes.get(at..at + 5) else {
            return if bytes.first().is_some_and(|b| *b != 22) {
                Err(HelloError::NotTls)
            } else {
                Ok(None)
            };
        };
        if header[0] != 22 || header[1] != 3 {
            return Err(HelloError::NotTls);
        }
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let Some(fragment) = bytes.get(at + 5..at + 5 + length) else {
            return Ok(None);
        };
        message.extend_from_slice(fragment);
        at += 5 + length;
        if message.len() >= 4 {
            if message[0] != 1 {
                return Err(HelloError::NotTls);
            }
            let body = usize::from(message[1]) << 16
                | usize::from(message[2]) << 8
                | usize::from(message[3]);
            if message.len() >= 4 + body {
                return sni(&message[4..4 + body]).map(Some);
            }
        }
    }
}

/// A cursor over a ClientHello body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        if self.0.len() < n {
            return Err(HelloError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8_prefixed(&mut self) -> Result<&'a [u8], HelloError> {
        let n = usize::from(self.take(1)?[0]);
        self.take(n)
    }

    fn u16(&mut self) -> Result<usize, HelloError> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u16_prefixed(&mut self) -> Result<&'a [u8], HelloError> {
        let n = self.u16()?;
        self.take(n)
    }
}

fn sni(body: &[u8]) -> Result<Option<String>, HelloError> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // version, random
    r.u8_prefixed()?; // session id
    r.u16_prefixed()?; // cipher suites
    r.u8_prefixed()?; // compression methods
    if r.0.is_empty() {
        return Ok(None);
    }
    let mut extensions = Reader(r.u16_prefixed()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let mut data = Reader(extensions.u16_prefixed()?);
        if kind != 0 {
            continue;
        }
        let mut names = Reader(data.u16_prefixed()?);
        while !names.0.is_empty() {
            let name_type = names.take(1)?[0];
            let name = names.u16_prefixed()?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).map_err(|_| HelloError::Malformed)?;
                return Ok(Some(name.to_ascii_lowercase()));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A real ClientHello, as rustls sends it for `server_name`.
    fn client_hello(server_name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(weft_identity::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
        let mut connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut bytes = Vec::new();
        connection.write_tls(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn the_server_name_is_read_from_a_whole_client_hello_only() {
        let hello = client_hello("Shop.Example.com");
        assert_eq!(parse(&hello), Ok(Some(Some("shop.example.com".to_owned()))));
        // Every prefix asks for more.
        for cut in [0, 1, 5, 40, hello.len() - 1] {
            assert_eq!(parse(&hello[..cut]), Ok(None), "cut at {cut}");
        }
        // An IP address is no server name: rustls sends none.
        let hello = client_hello("10.0.0.1");
        assert_eq!(parse(&hello), Ok(Some(None)));
    }

    #[test]
    fn what_is_not_a_client_hello_is_refused() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotTls));
        assert_eq!(
            parse(&[22, 3, 1, 0, 4, 2, 0, 0, 0]),
            Err(HelloError::NotTls)
        );
        // A ClientHello whose body ends early.
        assert_eq!(
            parse(&[22, 3, 1, 0, 8, 1, 0, 0, 4, 3, 3, 0, 0]),
            Err(HelloError::Malformed)
        );
    }

    #[tokio::test]
    async fn the_bytes_read_are_kept_for_replay() {
        let hello = client_hello("secure.internal");
        let mut input = hello.clone();
        input.extend_from_slice(b"after");
        let mut io = std::io::Cursor::new(input);
        let read = read_client_hello(&mut io).await.unwrap();
        assert_eq!(read.sni.as_deref(), Some("secure.internal"));
        assert!(read.bytes.starts_with(&hello));
    }
}
