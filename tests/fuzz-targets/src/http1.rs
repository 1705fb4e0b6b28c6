//! The waypoint's HTTP/1.1 framing guard and request conformance check.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use waypoint::{FramingGuard, conformance};

/// A reader that hands out `data` in reads of the given sizes, in turn.
struct Chunked<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    next: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let size = self.sizes[self.next % self.sizes.len()];
        self.next += 1;
        let n = size.min(buf.remaining()).min(self.data.len());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// Any byte stream through the framing guard, cut into reads of any sizes (the first four
/// bytes choose them). It may only ever replace the first byte of a `Transfer-Encoding` header
/// name with `(` (to make a conflicting head unparsable); anything else it passes unchanged,
/// byte for byte, whatever the cut.
pub fn framing(input: &[u8]) {
    let (cuts, stream) = input.split_at(input.len().min(4));
    let mut sizes: Vec<usize> = cuts.iter().map(|b| usize::from(*b) * 64 + 1).collect();
    if sizes.is_empty() {
        sizes.push(usize::MAX);
    }
    let reader = Chunked {
        data: stream,
        sizes,
        next: 0,
    };
    let mut guard = FramingGuard::new(reader);
    let mut out = Vec::new();
    crate::complete(guard.read_to_end(&mut out)).expect("in-memory reads never fail");
    assert_eq!(
        out.len(),
        stream.len(),
        "the guard changed the stream's length"
    );
    for (at, (sent, passed)) in stream.iter().zip(&out).enumerate() {
        if sent != passed {
            assert!(
                *passed == b'(' && sent.eq_ignore_ascii_case(&b't'),
                "byte {at} changed from {sent:#x} to {passed:#x}"
            );
        }
    }
}

/// Every request head an HTTP/1 parser (hyper's, httparse) accepts, through the conformance
/// check: what it admits has exactly one authority and no `h2c` upgrade left.
pub fn conformance(head: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(head) else {
        return;
    };
    let mut builder = http::Request::builder()
        .method(parsed.method.unwrap_or_default())
        .uri(parsed.path.unwrap_or_default())
        .version(match parsed.version {
            Some(0) => http::Version::HTTP_10,
            _ => http::Version::HTTP_11,
        });
    for header in parsed.headers.iter() {
        builder = builder.header(header.name, header.value);
    }
    // What hyper itself refuses never reaches the check.
    let Ok(mut request) = builder.body(()) else {
        return;
    };
    let upgrades = [String::from("websocket")];
    if conformance::admit(&mut request, &upgrades).is_err() {
        return;
    }
    let headers = request.headers();
    assert!(headers.get_all(http::header::HOST).iter().count() <= 1);
    let h2c = headers
        .get(http::header::UPGRADE)
        .is_some_and(|u| u.as_bytes().trim_ascii().eq_ignore_ascii_case(b"h2c"));
    let upgrade_token = headers.get_all(http::header::CONNECTION).iter().any(|c| {
        String::from_utf8_lossy(c.as_bytes())
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    });
    assert!(
        !(h2c && upgrade_token),
        "an h2c upgrade was admitted: {request:?}"
    );
}
