//! Durations as Istio's CRDs accept them.
//!
//! Istio's API types hold `google.protobuf.Duration`, but the Kubernetes resources are decoded with
//! Go's `time.ParseDuration`, so users write `10s`, `1.5s`, `500ms`, `1h2m` or `300us`. We keep the
//! string as written (so it round-trips and shows up unchanged in errors) and parse it on demand.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A duration string exactly as written in a resource, e.g. `"1.5s"` or `"1h2m"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct DurationString(pub String);

impl DurationString {
    /// Parses the string with Go's `time.ParseDuration` syntax.
    pub fn parse(&self) -> Result<SignedDuration, DurationError> {
        parse_duration(&self.0)
    }
}

impl From<&str> for DurationString {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Display for DurationString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed duration that remembers its sign: Go durations may be negative, and Istio rejects
/// them with a message of its own rather than a syntax error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedDuration {
    pub negative: bool,
    pub magnitude: Duration,
}

/// Why a duration string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration {0:?}: empty")]
    Empty(String),
    #[error("invalid duration {0:?}: missing unit (one of ns, us, µs, ms, s, m, h)")]
    MissingUnit(String),
    #[error("invalid duration {input:?}: unknown unit {unit:?} (one of ns, us, µs, ms, s, m, h)")]
    UnknownUnit { input: String, unit: String },
    #[error("invalid duration {0:?}: expected a number")]
    ExpectedNumber(String),
    #[error("invalid duration {0:?}: out of range")]
    Overflow(String),
}

const NANOS_PER_UNIT: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Go's `time.ParseDuration` caps durations at about 290 years (i64 nanoseconds).
const MAX_NANOS: u128 = i64::MAX as u128;

/// Parses a Go duration: an optional sign, then one or more `<decimal><unit>` terms, e.g. `1h2m`,
/// `1.5s`, `-300ms`; the bare string `0` is also accepted.
pub fn parse_duration(input: &str) -> Result<SignedDuration, DurationError> {
    let owned = || input.to_owned();
    let (negative, mut rest) = match input.as_bytes().first() {
        Some(b'-') => (true, &input[1..]),
        Some(b'+') => (false, &input[1..]),
        Some(_) => (false, input),
        None => return Err(DurationError::Empty(owned())),
    };
    if rest == "0" {
        return Ok(SignedDuration {
            negative,
            magnitude: Duration::ZERO,
        });
    }
    if rest.is_empty() {
        return Err(DurationError::Empty(owned()));
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let integer_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let integer = &rest[..integer_len];
        rest = &rest[integer_len..];
        let mut fraction = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let fraction_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            fraction = &after_dot[..fraction_len];
            rest = &after_dot[fraction_len..];
        }
        if integer.is_empty() && fraction.is_empty() {
            return Err(DurationError::ExpectedNumber(owned()));
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(owned()));
        }
        let scale = NANOS_PER_UNIT
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(|| DurationError::UnknownUnit {
                input: owned(),
                unit: unit.to_owned(),
            })?;
        let whole: u128 = if integer.is_empty() {
            0
        } else {
            integer
                .parse()
                .map_err(|_| DurationError::Overflow(owned()))?
        };
        let mut term = whole
            .checked_mul(scale)
            .ok_or_else(|| DurationError::Overflow(owned()))?;
        // Go truncates fractional nanoseconds; so do we.
        let mut divisor: u128 = 1;
        let mut fractional_value: u128 = 0;
        for digit in fraction.bytes().take(30) {
            fractional_value = fractional_value * 10 + u128::from(digit - b'0');
            divisor *= 10;
        }
        term += fractional_value * scale / divisor;
        total = total
            .checked_add(term)
            .ok_or_else(|| DurationError::Overflow(owned()))?;
        if total > MAX_NANOS {
            return Err(DurationError::Overflow(owned()));
        }
    }
    let secs =
        u64::try_from(total / 1_000_000_000).map_err(|_| DurationError::Overflow(owned()))?;
    let nanos =
        u32::try_from(total % 1_000_000_000).map_err(|_| DurationError::Overflow(owned()))?;
    Ok(SignedDuration {
        negative,
        magnitude: Duration::new(secs, nanos),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str) -> (bool, Duration) {
        let parsed = parse_duration(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        (parsed.negative, parsed.magnitude)
    }

    #[test]
    fn accepts_go_durations() {
        let cases: &[(&str, bool, Duration)] = &[
            ("10s", false, Duration::from_secs(10)),
            ("1.5s", false, Duration::from_millis(1500)),
            ("500ms", false, Duration::from_millis(500)),
            ("1h2m", false, Duration::from_secs(3720)),
            ("1h2m3.5s", false, Duration::from_millis(3_723_500)),
            ("300us", false, Duration::from_micros(300)),
            ("300µs", false, Duration::from_micros(300)),
            ("7ns", false, Duration::from_nanos(7)),
            (".5s", false, Duration::from_millis(500)),
            ("2.s", false, Duration::from_secs(2)),
            ("0", false, Duration::ZERO),
            ("0s", false, Duration::ZERO),
            ("-1s", true, Duration::from_secs(1)),
            ("+2m", false, Duration::from_secs(120)),
        ];
        for (input, negative, expected) in cases {
            assert_eq!(ok(input), (*negative, *expected), "{input}");
        }
    }

    #[test]
    fn rejects_malformed_durations() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("-", "empty"),
            ("10", "missing unit"),
            ("1x", "unknown unit"),
            ("1d", "unknown unit"),
            ("s", "expected a number"),
            ("1.2.3s", "missing unit"),
            ("abc", "expected a number"),
            ("99999999999999999999h", "out of range"),
            ("3000000h", "out of range"),
        ];
        for (input, reason) in cases {
            let err = parse_duration(input).expect_err(input).to_string();
            assert!(err.contains(reason), "{input}: {err}");
        }
    }
}
