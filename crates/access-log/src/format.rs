//! Envoy's substitution format (`%COMMAND(ARGS):MAX_LENGTH%`), in the text form and the JSON
//! form (labels whose values are format strings), as Envoy's `SubstitutionFormatParser`
//! reads them: an unknown command or a `%` that opens no command refuses the whole format,
//! as Envoy refuses the listener that carries it.

use std::fmt::Write as _;

/// Istio's default TEXT format (istio/istio `pilot/pkg/model/telemetry_logging.go`,
/// `EnvoyTextLogFormat`), without its final newline (every line ends with one).
pub const DEFAULT_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%";

/// Istio's default JSON labels (`EnvoyJSONLogFormatIstio`), by name.
pub const DEFAULT_JSON_LABELS: &[(&str, &str)] = &[
    ("authority", "%REQ(:AUTHORITY)%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("duration", "%DURATION%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("route_name", "%ROUTE_NAME%"),
    ("start_time", "%START_TIME%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
];

/// Why a format is refused; the message is Envoy's where Envoy has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("Not supported field in StreamInfo: {0}")]
    Unsupported(String),
    #[error(
        "Incorrect configuration: {format}. Couldn't find valid command at position {position}"
    )]
    NoCommand { format: String, position: usize },
    #[error("{command}: {reason}")]
    Argument { command: String, reason: String },
    #[error("JSON label {0:?}: {1}")]
    Label(String, Box<FormatError>),
}

/// A request or response header a `REQ`/`RESP` operator reads: the first name, else the
/// alternative (`X?Y`). Names are lower case; pseudo-headers keep their colon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderChoice {
    pub name: String,
    pub alternative: Option<String>,
}

/// One of Envoy's commands that the proxies render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    StartTime,
    Request(HeaderChoice),
    Response(HeaderChoice),
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    /// `UPSTREAM_CLUSTER` and `UPSTREAM_CLUSTER_RAW` (the proxies' cluster names are Istio's
    /// already, with no alternate stat name).
    UpstreamCluster,
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamPeerUriSan,
    RequestedServerName,
    RouteName,
}

impl Operator {
    /// The operator named `command` with `argument` (the text between parentheses).
    fn parse(command: &str, argument: Option<&str>) -> Result<Operator, FormatError> {
        let no_argument = |op: Operator| match argument {
            None => Ok(op),
            Some(_) => Err(FormatError::Argument {
                command: command.to_owned(),
                reason: "takes no argument".to_owned(),
            }),
        };
        let header = || -> Result<HeaderChoice, FormatError> {
            let argument = argument.unwrap_or_default();
            let mut parts = argument.split('?');
            let (name, alternative) = (parts.next().unwrap_or_default(), parts.next());
            if name.is_empty() || parts.next().is_some() || alternative == Some("") {
                return Err(FormatError::Argument {
                    command: command.to_owned(),
                    reason: format!("{argument:?} is not a header name or two separated by '?'"),
                });
            }
            Ok(HeaderChoice {
                name: name.to_ascii_lowercase(),
                alternative: alternative.map(str::to_ascii_lowercase),
            })
        };
        use Operator as O;
        match command {
            "REQ" => header().map(O::Request),
            "RESP" => header().map(O::Response),
            "START_TIME" => no_argument(O::StartTime),
            "PROTOCOL" => no_argument(O::Protocol),
            "RESPONSE_CODE" => no_argument(O::ResponseCode),
            "RESPONSE_FLAGS" => no_argument(O::ResponseFlags),
            "RESPONSE_CODE_DETAILS" => no_argument(O::ResponseCodeDetails),
            "CONNECTION_TERMINATION_DETAILS" => no_argument(O::ConnectionTerminationDetails),
            "UPSTREAM_TRANSPORT_FAILURE_REASON" => no_argument(O::UpstreamTransportFailureReason),
            "BYTES_RECEIVED" => no_argument(O::BytesReceived),
            "BYTES_SENT" => no_argument(O::BytesSent),
            "DURATION" => no_argument(O::Duration),
            "UPSTREAM_HOST" => no_argument(O::UpstreamHost),
            "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => no_argument(O::UpstreamCluster),
            "UPSTREAM_LOCAL_ADDRESS" => no_argument(O::UpstreamLocalAddress),
            "DOWNSTREAM_LOCAL_ADDRESS" => no_argument(O::DownstreamLocalAddress),
            "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => {
                no_argument(O::DownstreamLocalAddressWithoutPort)
            }
            "DOWNSTREAM_REMOTE_ADDRESS" => no_argument(O::DownstreamRemoteAddress),
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
                no_argument(O::DownstreamRemoteAddressWithoutPort)
            }
            "DOWNSTREAM_PEER_URI_SAN" => no_argument(O::DownstreamPeerUriSan),
            "REQUESTED_SERVER_NAME" => no_argument(O::RequestedServerName),
            "ROUTE_NAME" => no_argument(O::RouteName),
            other => Err(FormatError::Unsupported(other.to_owned())),
        }
    }
}

/// What a [`Record`] wrote for an operator: JSON keeps numbers as numbers and writes an
/// absent value as `null`; text writes it as `-`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Absent,
    Number,
    Text,
}

/// A request (or connection) as the operators read it. Each method writes the value to `out`
/// and says what it is, writing nothing for [`Kind::Absent`].
pub trait Record {
    /// Any operator but `REQ` and `RESP`.
    fn write(&self, operator: &Operator, out: &mut String) -> Kind;
    /// The request header `name` (lower case; pseudo-headers with their colon).
    fn request_header(&self, name: &str, out: &mut String) -> Kind;
    /// The response header `name`.
    fn response_header(&self, name: &str, out: &mut String) -> Kind;
}

/// `operator`'s value: a header choice falls back to its alternative, as Envoy's `X?Y`.
fn value(record: &impl Record, operator: &Operator, out: &mut String) -> Kind {
    let (choice, header): (_, fn(&_, &str, &mut String) -> Kind) = match operator {
        Operator::Request(choice) => (choice, |r: &_, n, o| Record::request_header(r, n, o)),
        Operator::Response(choice) => (choice, |r: &_, n, o| Record::response_header(r, n, o)),
        operator => return record.write(operator, out),
    };
    match (header(record, &choice.name, out), &choice.alternative) {
        (Kind::Absent, Some(alternative)) => header(record, alternative, out),
        (kind, _) => kind,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Field {
        operator: Operator,
        max_length: Option<usize>,
    },
}

/// A parsed format: render with [`Format::render`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    shape: Shape,
    /// Envoy's `omit_empty_values` ([`Format::omit_empty_values`]).
    omit_empty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Text(Vec<Segment>),
    /// Labels in name order, each a format string.
    Json(Vec<(String, Vec<Segment>)>),
}

impl Format {
    /// A text format; the newline Istio appends to a format that lacks one is the line's end.
    pub fn text(format: &str) -> Result<Format, FormatError> {
        let format = format.strip_suffix('\n').unwrap_or(format);
        parse(format).map(|s| Format::of(Shape::Text(s)))
    }

    fn of(shape: Shape) -> Format {
        Format {
            shape,
            omit_empty: false,
        }
    }

    /// Envoy's `SubstitutionFormatString.omit_empty_values` (Istio's `omitEmptyValues` of an
    /// `envoyFileAccessLog` provider): an absent value is written as nothing instead of `-`,
    /// and a JSON label whose value is one absent operator is left out instead of `null`
    /// (envoy `substitution_formatter.cc`: `empty_value_string_`, and `StructFormatter`
    /// dropping null fields).
    pub fn omit_empty_values(mut self, omit: bool) -> Format {
        self.omit_empty = omit;
        self
    }

    /// JSON labels, each value a format string.
    pub fn json<'a>(
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Format, FormatError> {
        let mut parsed = labels
            .into_iter()
            .map(|(name, value)| {
                parse(value)
                    .map(|segments| (name.to_owned(), segments))
                    .map_err(|e| FormatError::Label(name.to_owned(), Box::new(e)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        parsed.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Format::of(Shape::Json(parsed)))
    }

    /// Istio's default text format.
    pub fn istio_text() -> Format {
        Format::text(DEFAULT_TEXT_FORMAT).expect("Istio's default format parses")
    }

    /// Istio's default JSON labels.
    pub fn istio_json() -> Format {
        Format::json(DEFAULT_JSON_LABELS.iter().copied()).expect("Istio's default labels parse")
    }

    /// Every operator the format reads (a proxy captures the headers they name).
    pub fn operators(&self) -> impl Iterator<Item = &Operator> {
        let segments: Vec<&Segment> = match &self.shape {
            Shape::Text(segments) => segments.iter().collect(),
            Shape::Json(labels) => labels.iter().flat_map(|(_, s)| s).collect(),
        };
        segments.into_iter().filter_map(|s| match s {
            Segment::Field { operator, .. } => Some(operator),
            Segment::Literal(_) => None,
        })
    }

    /// Appends `record`'s line, ending with a newline, to `line`.
    pub fn render(&self, record: &impl Record, line: &mut String) {
        let absent = if self.omit_empty { "" } else { "-" };
        match &self.shape {
            Shape::Text(segments) => render_text(segments, record, line, absent),
            Shape::Json(labels) => {
                line.push('{');
                let mut buffer = String::new();
                let mut first = true;
                for (name, segments) in labels {
                    // Where the label starts, should it be left out.
                    let start = line.len();
                    if !first {
                        line.push(',');
                    }
                    json_string(name, line);
                    line.push(':');
                    match segments.as_slice() {
                        [
                            Segment::Field {
                                operator,
                                max_length,
                            },
                        ] => {
                            buffer.clear();
                            match value(record, operator, &mut buffer) {
                                Kind::Absent if self.omit_empty => {
                                    line.truncate(start);
                                    continue;
                                }
                                Kind::Absent => line.push_str("null"),
                                Kind::Number if max_length.is_none() => line.push_str(&buffer),
                                Kind::Number | Kind::Text => {
                                    truncate(&mut buffer, 0, *max_length);
                                    json_string(&buffer, line);
                                }
                            }
                        }
                        segments => {
                            buffer.clear();
                            render_text(segments, record, &mut buffer, absent);
                            json_string(&buffer, line);
                        }
                    }
                    first = false;
                }
                line.push('}');
            }
        }
        line.push('\n');
    }
}

/// The segments as text, `absent` written for a value that is absent.
fn render_text(segments: &[Segment], record: &impl Record, line: &mut String, absent: &str) {
    for segment in segments {
        match segment {
            Segment::Literal(text) => line.push_str(text),
            Segment::Field {
                operator,
                max_length,
            } => {
                let start = line.len();
                if value(record, operator, line) == Kind::Absent {
                    line.push_str(absent);
                }
                truncate(line, start, *max_length);
            }
        }
    }
}

/// Cuts what was written from `start` to `max` characters.
fn truncate(text: &mut String, start: usize, max: Option<usize>) {
    if let Some(max) = max
        && let Some((cut, _)) = text[start..].char_indices().nth(max)
    {
        text.truncate(start + cut);
    }
}

/// `text` as a JSON string: runs that need no escape are copied whole.
fn json_string(text: &str, out: &mut String) {
    out.push('"');
    let mut plain = 0;
    for (i, c) in text.char_indices() {
        let escaped = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if u32::from(c) < 0x20 || c == '\u{7f}' => "",
            _ => continue,
        };
        out.push_str(&text[plain..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push_str(escaped);
        }
        plain = i + c.len_utf8();
    }
    out.push_str(&text[plain..]);
    out.push('"');
}

/// Envoy's parser: literal text up to a `%`, which must open `%COMMAND%`,
/// `%COMMAND(ARGS)%` or either followed by `:MAX_LENGTH`.
fn parse(format: &str) -> Result<Vec<Segment>, FormatError> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut rest = format;
    while let Some(at) = rest.find('%') {
        literal.push_str(&rest[..at]);
        let position = format.len() - rest.len() + at;
        let no_command = || FormatError::NoCommand {
            format: format.to_owned(),
            position,
        };
        let command_text = &rest[at + 1..];
        let name_len = command_text
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(command_text.len());
        if name_len == 0 {
            return Err(no_command());
        }
        let command = &command_text[..name_len];
        let mut tail = &command_text[name_len..];
        let mut argument = None;
        if let Some(after) = tail.strip_prefix('(') {
            let close = after.find(')').ok_or_else(no_command)?;
            argument = Some(&after[..close]);
            tail = &after[close + 1..];
        }
        let mut max_length = None;
        if let Some(after) = tail.strip_prefix(':') {
            let digits = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            if digits == 0 {
                return Err(no_command());
            }
            max_length = Some(after[..digits].parse().map_err(|_| no_command())?);
            tail = &after[digits..];
        }
        tail = tail.strip_prefix('%').ok_or_else(no_command)?;
        let operator = Operator::parse(command, argument)?;
        if !literal.is_empty() {
            segments.push(Segment::Literal(std::mem::take(&mut literal)));
        }
        segments.push(Segment::Field {
            operator,
            max_length,
        });
        rest = tail;
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

#[cfg(test)]
mod tests;
