//! Trace context on the wire: W3C `traceparent` and Zipkin's B3 (the `x-b3-*` headers and the
//! single `b3` header), read from a request and written on what goes upstream. Plain functions
//! over header maps; nothing here samples or exports.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub(super) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static B3: HeaderName = HeaderName::from_static("b3");
static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
static B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// Which B3 encoding a request carried: the waypoint answers in the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3Style {
    None,
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`; `short` for a 64-bit trace id.
    Multi {
        short: bool,
    },
    /// One `b3: {trace}-{span}-{sampled}-{parent}` header.
    Single {
        short: bool,
    },
}

/// What a request says about the trace it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingContext {
    /// The trace to join; `None` starts a new one.
    pub parent: Option<(TraceId, SpanId)>,
    /// The caller's sampling decision, if it made one.
    pub sampled: Option<bool>,
    pub b3: B3Style,
}

impl IncomingContext {
    /// `traceparent` first (as Envoy's OpenTelemetry tracer reads it), else B3.
    pub fn read(headers: &HeaderMap) -> Self {
        let b3 = read_b3(headers);
        match headers
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent)
        {
            Some((trace, span, sampled)) => IncomingContext {
                parent: Some((trace, span)),
                sampled: Some(sampled),
                b3: b3.b3,
            },
            None => b3,
        }
    }
}

/// The context the waypoint's span gives what it sends upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub sampled: bool,
    pub b3: B3Style,
}

impl OutgoingContext {
    /// Writes `traceparent` (always) and the B3 headers (in the encoding the request used, if
    /// it used one), naming this span as the parent of what follows.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let flags = if self.sampled { "01" } else { "00" };
        let traceparent = format!("00-{}-{}-{flags}", hex(&self.trace_id), hex(&self.span_id));
        insert(headers, &TRACEPARENT, &traceparent);
        let sampled = if self.sampled { "1" } else { "0" };
        match self.b3 {
            B3Style::None => {}
            B3Style::Multi { short } => {
                insert(headers, &B3_TRACE_ID, &self.b3_trace_id(short));
                insert(headers, &B3_SPAN_ID, &hex(&self.span_id));
                match &self.parent_span_id {
                    Some(parent) => insert(headers, &B3_PARENT_SPAN_ID, &hex(parent)),
                    None => {
                        headers.remove(&B3_PARENT_SPAN_ID);
                    }
                }
                insert(headers, &B3_SAMPLED, sampled);
            }
            B3Style::Single { short } => {
                let mut value = format!(
                    "{}-{}-{sampled}",
                    self.b3_trace_id(short),
                    hex(&self.span_id)
                );
                if let Some(parent) = &self.parent_span_id {
                    value.push('-');
                    value.push_str(&hex(parent));
                }
                insert(headers, &B3, &value);
            }
        }
    }

    fn b3_trace_id(&self, short: bool) -> String {
        if short {
            hex(&self.trace_id[8..])
        } else {
            hex(&self.trace_id)
        }
    }
}

fn insert(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name.clone(), value);
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Lower- or upper-case hex of exactly `N` bytes.
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
pub(super) fn unhex_for_tests(text: &str) -> Vec<u8> {
    unhex::<8>(text).unwrap().to_vec()
}

fn nonzero<const N: usize>(id: [u8; N]) -> Option<[u8; N]> {
    id.iter().any(|b| *b != 0).then_some(id)
}

/// `{version}-{trace id}-{parent id}-{flags}` (W3C Trace Context). Version `ff` and all-zero
/// ids are invalid; a later version is read by its version-00 prefix, as the spec asks.
fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, bool)> {
    let value = value.trim();
    let mut parts = value.splitn(5, '-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    let rest = parts.next();
    if version.len() != 2 || version.eq_ignore_ascii_case("ff") || unhex::<1>(version).is_none() {
        return None;
    }
    if version == "00" && rest.is_some() {
        return None;
    }
    let trace = nonzero(unhex::<16>(trace)?)?;
    let span = nonzero(unhex::<8>(span)?)?;
    let flags = unhex::<1>(flags)?[0];
    Some((trace, span, flags & 1 == 1))
}

/// A 64- or 128-bit B3 trace id, as 128 bits, and whether it was 64.
fn b3_trace_id(text: &str) -> Option<(TraceId, bool)> {
    match text.len() {
        16 => {
            let low = unhex::<8>(text)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            Some((nonzero(id)?, true))
        }
        32 => Some((nonzero(unhex::<16>(text)?)?, false)),
        _ => None,
    }
}

fn b3_sampled(text: &str) -> Option<bool> {
    match text {
        "1" | "true" | "d" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

fn read_b3(headers: &HeaderMap) -> IncomingContext {
    let get = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(single) = get(&B3) {
        let mut parts = single.trim().split('-');
        let first = parts.next().unwrap_or_default();
        if let Some(sampled) = parts.clone().next().is_none().then(|| b3_sampled(first)) {
            // `b3: 0`, `b3: 1`, `b3: d`: a decision without a trace.
            return IncomingContext {
                parent: None,
                sampled,
                b3: B3Style::Single { short: false },
            };
        }
        let span = parts.next().and_then(unhex::<8>).and_then(nonzero);
        if let (Some((trace, short)), Some(span)) = (b3_trace_id(first), span) {
            return IncomingContext {
                parent: Some((trace, span)),
                sampled: parts.next().and_then(b3_sampled),
                b3: B3Style::Single { short },
            };
        }
    }
    let debug = get(&B3_FLAGS) == Some("1");
    let sampled = if debug {
        Some(true)
    } else {
        get(&B3_SAMPLED).and_then(b3_sampled)
    };
    let trace = get(&B3_TRACE_ID).and_then(b3_trace_id);
    let span = get(&B3_SPAN_ID).and_then(unhex::<8>).and_then(nonzero);
    match (trace, span) {
        (Some((trace, short)), Some(span)) => IncomingContext {
            parent: Some((trace, span)),
            sampled,
            b3: B3Style::Multi { short },
        },
        _ => IncomingContext {
            parent: None,
            sampled,
            b3: if sampled.is_some() {
                B3Style::Multi { short: false }
            } else {
                B3Style::None
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn traceparent_is_read_as_the_spec_says() {
        let cases: &[(&str, Option<bool>)] = &[
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Some(true),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                Some(false),
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-03",
                Some(true),
            ),
            // A later version: read by its prefix.
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                Some(true),
            ),
            // Invalid: version ff, zero ids, short ids, trailing data on version 00.
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                None,
            ),
            ("garbage", None),
        ];
        for (value, sampled) in cases {
            let read = IncomingContext::read(&headers(&[("traceparent", value)]));
            assert_eq!(read.sampled, *sampled, "{value}");
            assert_eq!(read.parent.is_some(), sampled.is_some(), "{value}");
            if let Some((trace, span)) = read.parent {
                assert_eq!(hex(&trace), TRACE);
                assert_eq!(hex(&span), SPAN);
            }
        }
    }

    #[test]
    fn b3_multi_and_single_are_read() {
        let multi = IncomingContext::read(&headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "1"),
        ]));
        let (trace, span) = multi.parent.unwrap();
        assert_eq!(hex(&trace), "0000000000000000a3ce929d0e0e4736");
        assert_eq!(hex(&span), SPAN);
        assert_eq!(multi.sampled, Some(true));
        assert_eq!(multi.b3, B3Style::Multi { short: true });

        let undecided =
            IncomingContext::read(&headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)]));
        assert_eq!(undecided.sampled, None);
        let debug = IncomingContext::read(&headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-flags", "1"),
        ]));
        assert_eq!(debug.sampled, Some(true));

        let single = IncomingContext::read(&headers(&[("b3", &format!("{TRACE}-{SPAN}-0"))]));
        assert_eq!(single.parent.map(|(t, _)| hex(&t)), Some(TRACE.to_owned()));
        assert_eq!(single.sampled, Some(false));
        assert_eq!(single.b3, B3Style::Single { short: false });

        let decision_only = IncomingContext::read(&headers(&[("b3", "d")]));
        assert_eq!(decision_only.parent, None);
        assert_eq!(decision_only.sampled, Some(true));

        assert_eq!(
            IncomingContext::read(&HeaderMap::new()),
            IncomingContext {
                parent: None,
                sampled: None,
                b3: B3Style::None
            }
        );
    }

    #[test]
    fn traceparent_wins_over_b3() {
        let read = IncomingContext::read(&headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-00")),
            ("x-b3-traceid", "1111111111111111"),
            ("x-b3-spanid", "2222222222222222"),
            ("x-b3-sampled", "1"),
        ]));
        assert_eq!(read.parent.map(|(t, _)| hex(&t)), Some(TRACE.to_owned()));
        assert_eq!(read.sampled, Some(false));
        assert_eq!(read.b3, B3Style::Multi { short: true });
    }

    #[test]
    fn injection_names_the_new_span_as_parent_in_every_encoding() {
        let trace = unhex::<16>(TRACE).unwrap();
        let context = |b3| OutgoingContext {
            trace_id: trace,
            span_id: [0x11; 8],
            parent_span_id: unhex::<8>(SPAN),
            sampled: true,
            b3,
        };
        let mut map = headers(&[("traceparent", "stale"), ("x-b3-spanid", SPAN)]);
        context(B3Style::Multi { short: false }).inject(&mut map);
        assert_eq!(
            map["traceparent"],
            format!("00-{TRACE}-1111111111111111-01").as_str()
        );
        assert_eq!(map["x-b3-traceid"], TRACE);
        assert_eq!(map["x-b3-spanid"], "1111111111111111");
        assert_eq!(map["x-b3-parentspanid"], SPAN);
        assert_eq!(map["x-b3-sampled"], "1");

        let mut map = HeaderMap::new();
        context(B3Style::Single { short: true }).inject(&mut map);
        assert_eq!(
            map["b3"],
            format!("a3ce929d0e0e4736-1111111111111111-1-{SPAN}").as_str()
        );

        let mut map = HeaderMap::new();
        OutgoingContext {
            sampled: false,
            ..context(B3Style::None)
        }
        .inject(&mut map);
        assert_eq!(map.len(), 1, "{map:?}");
        assert!(map["traceparent"].to_str().unwrap().ends_with("-00"));
    }
}
