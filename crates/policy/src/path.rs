//! Request path normalization for routing and authorization.
//!
//! Istio lets operators pick how much of the path the proxy normalizes before authorization
//! (`meshConfig.pathNormalization`: NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES). We
//! implement the strictest, DECODE_AND_MERGE_SLASHES, always, because it is the only one under
//! which a rule on `/admin` cannot be walked around with encoded or doubled separators:
//!
//! 1. the fragment (`#...`) and query (`?...`) are cut off;
//! 2. the path must be absolute (`/`...), and may not hold control characters or malformed
//!    `%` escapes: such a request is refused (400), never guessed at;
//! 3. escapes of unreserved characters (`ALPHA DIGIT - . _ ~`) are decoded (`%61` -> `a`,
//!    `%2e` -> `.`), escaped slashes and backslashes (`%2F`, `%2f`, `%5C`, `%5c`) become `/`,
//!    every other escape is kept with upper-case hex (`%3a` -> `%3A`), and bytes outside
//!    printable ASCII, and the space, are escaped;
//! 4. backslashes become `/` (BASE);
//! 5. runs of `/` are merged (MERGE_SLASHES);
//! 6. `.` and `..` segments are removed as RFC 3986 section 5.2.4 says, never climbing above `/`.
//!
//! Steps 3 to 6 run in that order so that a dot or slash smuggled in an escape is treated like a
//! literal one: `/a/..%2Fadmin` and `/%2e%2e/admin` both become `/admin`. The result is stable
//! (normalizing it again changes nothing), and the waypoint forwards this same path upstream, so
//! the application sees the path that was authorized. Case is not folded: `/ADMIN` and `/admin`
//! are different paths, as in Istio.

use crate::error::PathError;
use crate::route::split_path_and_query;

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn push_escaped(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0x0f)]]);
}

/// Whether `path` is already what [`normalize_path`] makes of it: absolute, without query or
/// fragment, escapes, backslashes, bytes outside printable ASCII or spaces, dot segments, or
/// empty segments but a trailing one. Most requests' paths are; checking costs no allocation.
pub fn is_normalized(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let plain = |b: &u8| matches!(b, 0x21..=0x7e) && !matches!(b, b'%' | b'\\' | b'?' | b'#');
    if !rest.as_bytes().iter().all(plain) {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// Normalizes the `:path` of a request (see the module documentation); returns the path without
/// query string or fragment.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    let (path, _) = split_path_and_query(raw);
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute {
            path: raw.to_owned(),
        });
    }
    if is_normalized(path) {
        return Ok(path.to_owned());
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let value = bytes
                    .get(i + 1)
                    .and_then(|h| hex_value(*h))
                    .zip(bytes.get(i + 2).and_then(|l| hex_value(*l)))
                    .map(|(hi, lo)| (hi << 4) | lo)
                    .ok_or_else(|| PathError::BadPercentEscape {
                        path: raw.to_owned(),
                        offset: i,
                    })?;
                match value {
                    b'/' | b'\\' => decoded.push(b'/'),
                    v if is_unreserved(v) => decoded.push(v),
                    v => push_escaped(&mut decoded, v),
                }
                i += 3;
                continue;
            }
            b'\\' => decoded.push(b'/'),
            0x00..=0x1f | 0x7f => {
                return Err(PathError::ControlCharacter {
                    path: raw.to_owned(),
                    offset: i,
                });
            }
            b' ' | 0x80..=0xff => push_escaped(&mut decoded, b),
            _ => decoded.push(b),
        }
        i += 1;
    }
    // Only ASCII was pushed above, so this cannot fail; still, no unwrap on request data.
    let decoded = String::from_utf8_lossy(&decoded);

    let merged: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = merged.len().saturating_sub(1);
    let mut output: Vec<&str> = Vec::with_capacity(merged.len());
    for (index, segment) in merged.iter().enumerate() {
        let is_last = index == last;
        match *segment {
            // Empty segments come from repeated slashes: merged away, except a trailing one.
            "" | "." => {
                if is_last {
                    output.push("");
                }
            }
            ".." => {
                output.pop();
                if is_last {
                    output.push("");
                }
            }
            other => output.push(other),
        }
    }
    let mut normalized = String::with_capacity(decoded.len());
    if output.is_empty() {
        normalized.push('/');
    }
    for segment in output {
        normalized.push('/');
        normalized.push_str(segment);
    }
    Ok(normalized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_table() {
        let cases = [
            ("/", "/"),
            ("/admin", "/admin"),
            ("//admin", "/admin"),
            ("///admin//x", "/admin/x"),
            ("/./admin", "/admin"),
            ("/a/../admin", "/admin"),
            ("/a/b/../../admin", "/admin"),
            ("/../../admin", "/admin"),
            ("/%2Fadmin", "/admin"),
            ("/%2fadmin", "/admin"),
            ("/%5Cadmin", "/admin"),
            ("/\\admin", "/admin"),
            ("/a/..%2Fadmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/%2E/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/admin#frag", "/admin"),
            ("/admin?x=1", "/admin"),
            ("/admin?x=/../y#z", "/admin"),
            ("/admin/", "/admin/"),
            ("/admin/.", "/admin/"),
            ("/admin/x/..", "/admin/"),
            ("/a%3ab", "/a%3Ab"),
            ("/a%25b", "/a%25b"),
            ("/a b", "/a%20b"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/..", "/"),
            ("/...", "/..."),
            ("/a/.b/..c", "/a/.b/..c"),
        ];
        for (raw, want) in cases {
            let got = normalize_path(raw).unwrap();
            assert_eq!(got, want, "normalize({raw:?})");
            assert_eq!(normalize_path(&got).unwrap(), got, "stable for {raw:?}");
            // Never claimed of a path normalization changes; claimed of every plain one.
            let plain = !raw.contains(['%', '\\', ' ', '?', '#']) && raw.is_ascii();
            assert_eq!(is_normalized(raw), plain && raw == want, "{raw:?}");
        }
    }

    #[test]
    fn unnormalizable_paths_are_refused() {
        for raw in [
            "admin",
            "\\admin",
            "*",
            "",
            "/a%",
            "/a%2",
            "/a%zz",
            "/a\0b",
            "/a\nb",
            "?x=/admin",
        ] {
            assert!(normalize_path(raw).is_err(), "{raw:?}");
        }
    }
}
