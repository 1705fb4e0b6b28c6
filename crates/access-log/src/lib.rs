//! Access-log lines as Istio configures them for Envoy: a log format (Envoy's substitution
//! format string, or JSON labels whose values are such strings), parsed once per
//! configuration into [`Format`], and a filter (a CEL expression over Envoy's attributes),
//! compiled once into [`Filter`]. The controller uses both to refuse a bad format or filter
//! naming its field; the waypoint to render and filter its requests' lines.
//!
//! This crate owns no I/O and knows no request type: a proxy answers each operator through
//! [`Record`] and each filter attribute through [`Attributes`].

mod filter;
mod format;

pub use filter::{ATTRIBUTES, Attributes, FIELDS, Filter, FilterError, HeaderReads};
pub use format::{
    DEFAULT_JSON_LABELS, DEFAULT_TEXT_FORMAT, Format, FormatError, HeaderChoice, Kind, Operator,
    Record,
};
