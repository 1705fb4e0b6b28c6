//! HTTP/2 floods written frame by frame (no client library would send them): endless
//! CONTINUATION frames, SETTINGS and PING frames whose acknowledgements are never read, and
//! streams opened far past the advertised limit; and a reader of what the server sent back.
//! `mesh-client h2-flood` sends them from a pod through the mesh, the hostile tests also
//! straight into a tunnel of their own.

/// What is flooded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// One request whose header block never ends.
    Continuation,
    /// SETTINGS frames, acknowledgements unread.
    Settings,
    /// PING frames, acknowledgements unread.
    Ping,
    /// Complete GET requests on new streams, responses unread.
    Streams,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A literal header without indexing and with a literal name (HPACK, no Huffman).
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00, name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
    out
}

/// `GET http://<authority><path>`: `:method GET` and `:scheme http` from the static table.
fn request_block(authority: &str, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86];
    block.extend(literal(":path", path));
    block.extend(literal(":authority", authority));
    block
}

/// The client preface, empty SETTINGS, and the acknowledgement of the server's (a server may
/// close a connection that never acknowledges them, which would hide what a flood does).
pub fn opening() -> Vec<u8> {
    let mut opening = PREFACE.to_vec();
    opening.extend(frame(SETTINGS, 0, 0, &[]));
    opening.extend(frame(SETTINGS, ACK, 0, &[]));
    opening
}

/// The flood's frames, `count` of them after whatever opens it, made as they are taken.
pub fn frames(kind: Kind, authority: &str, count: u32) -> Box<dyn Iterator<Item = Vec<u8>> + Send> {
    let authority = authority.to_owned();
    match kind {
        Kind::Continuation => {
            let first = frame(HEADERS, END_STREAM, 1, &request_block(&authority, "/flood"));
            let pad = literal("x-pad", &"a".repeat(100));
            Box::new(
                std::iter::once(first)
                    .chain((0..count).map(move |_| frame(CONTINUATION, 0, 1, &pad))),
            )
        }
        // SETTINGS_ENABLE_PUSH = 0, the value a client sends anyway.
        Kind::Settings => Box::new((0..count).map(|_| frame(SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 0]))),
        Kind::Ping => Box::new((0..count).map(|i| frame(PING, 0, 0, &u64::from(i).to_be_bytes()))),
        Kind::Streams => Box::new((0..count).map(move |i| {
            let block = request_block(&authority, &format!("/flood/{i}"));
            frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, &block)
        })),
    }
}

/// What came back, frame type by frame type.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Seen {
    pub settings_acks: u64,
    pub ping_acks: u64,
    pub headers: u64,
    pub data_frames: u64,
    pub rst_streams: u64,
    /// The error code of the GOAWAY the server sent, if it did.
    pub goaway: Option<u32>,
}

impl Seen {
    /// Consumes the complete frames at the start of `buffer`.
    pub fn parse(&mut self, buffer: &mut Vec<u8>) {
        let mut offset = 0;
        while buffer.len() - offset >= 9 {
            let header = &buffer[offset..offset + 9];
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            if buffer.len() - offset < 9 + length {
                break;
            }
            let (kind, flags) = (header[3], header[4]);
            let payload = &buffer[offset + 9..offset + 9 + length];
            match kind {
                SETTINGS if flags & ACK != 0 => self.settings_acks += 1,
                PING if flags & ACK != 0 => self.ping_acks += 1,
                HEADERS => self.headers += 1,
                DATA => self.data_frames += 1,
                RST_STREAM => self.rst_streams += 1,
                GOAWAY if payload.len() >= 8 => {
                    self.goaway = Some(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]));
                }
                _ => {}
            }
            offset += 9 + length;
        }
        buffer.drain(..offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_as_written() {
        let mut bytes: Vec<u8> = frames(Kind::Ping, "a", 3)
            .chain(frames(Kind::Streams, "a", 2))
            .flatten()
            .collect();
        bytes.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 11]));
        let tail = bytes.split_off(bytes.len() - 4);
        let mut seen = Seen::default();
        seen.parse(&mut bytes);
        assert_eq!(
            (seen.headers, seen.goaway),
            (2, None),
            "the GOAWAY is incomplete"
        );
        bytes.extend(tail);
        seen.parse(&mut bytes);
        assert_eq!(seen.goaway, Some(11));
        assert!(bytes.is_empty());
    }
}
