//! The value expressions of Telemetry's metric `tagOverrides` that Weft evaluates: a subset of
//! the CEL Envoy's stats filter evaluates per request, parsed once here so that the proxies
//! receive typed sources and never parse CEL. What is not in the subset is reported by
//! validation as not applied (naming the expression) and is not sent.
//!
//! Accepted: a string literal (`'v'` or `"v"`, no escapes); one of Envoy's request attributes
//! ([`Attribute::NAMES`]); `request.headers['name']`; and `has(x) ? x : y`, where `x` is a
//! header or an attribute and `y` any accepted expression (the value of `x` when present,
//! else `y`'s).

/// An attribute of the request, its connection or its response, by its CEL name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    RequestHost,
    RequestMethod,
    RequestPath,
    RequestUrlPath,
    RequestProtocol,
    RequestId,
    RequestUserAgent,
    ResponseCode,
    SourceAddress,
    SourcePort,
    DestinationAddress,
    DestinationPort,
    ConnectionMtls,
    ConnectionPeerPrincipal,
    UpstreamAddress,
    ClusterName,
    RouteName,
}

impl Attribute {
    /// Each attribute under its CEL name (Envoy's attribute reference).
    pub const NAMES: &[(&str, Attribute)] = &[
        ("request.host", Attribute::RequestHost),
        ("request.method", Attribute::RequestMethod),
        ("request.path", Attribute::RequestPath),
        ("request.url_path", Attribute::RequestUrlPath),
        ("request.protocol", Attribute::RequestProtocol),
        ("request.id", Attribute::RequestId),
        ("request.useragent", Attribute::RequestUserAgent),
        ("response.code", Attribute::ResponseCode),
        ("source.address", Attribute::SourceAddress),
        ("source.port", Attribute::SourcePort),
        ("destination.address", Attribute::DestinationAddress),
        ("destination.port", Attribute::DestinationPort),
        ("connection.mtls", Attribute::ConnectionMtls),
        (
            "connection.uri_san_peer_certificate",
            Attribute::ConnectionPeerPrincipal,
        ),
        ("upstream.address", Attribute::UpstreamAddress),
        ("xds.cluster_name", Attribute::ClusterName),
        ("xds.route_name", Attribute::RouteName),
    ];

    fn named(name: &str) -> Option<Attribute> {
        Self::NAMES
            .iter()
            .find_map(|(n, attribute)| (*n == name).then_some(*attribute))
    }
}

/// Where a tag's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagSource {
    Literal(String),
    Attribute(Attribute),
    /// The request header of this name (lowercase).
    RequestHeader(String),
}

/// Parses a tag value expression into the sources tried in order (the first with a value
/// gives it); an error says why the expression is not one Weft evaluates.
pub fn parse(expression: &str) -> Result<Vec<TagSource>, String> {
    let expression = expression.trim();
    if let Some(rest) = expression.strip_prefix("has(") {
        let (tested, rest) = rest
            .split_once(')')
            .ok_or_else(|| "an unclosed has(".to_owned())?;
        let tested = single(tested.trim())?;
        if matches!(tested, TagSource::Literal(_)) {
            return Err("has() of a literal".to_owned());
        }
        let rest = rest
            .trim_start()
            .strip_prefix('?')
            .ok_or_else(|| "has() outside of `has(x) ? x : y`".to_owned())?;
        let (then, otherwise) = split_conditional(rest)?;
        if single(then.trim())? != tested {
            return Err("`has(x) ? y : z` where y is not x".to_owned());
        }
        let mut sources = vec![tested];
        sources.extend(parse(otherwise)?);
        return Ok(sources);
    }
    single(expression).map(|source| vec![source])
}

/// `then : otherwise` of a conditional, split at the first `:` outside a quoted string.
fn split_conditional(text: &str) -> Result<(&str, &str), String> {
    let mut quote = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ':') => return Ok((&text[..i], &text[i + 1..])),
            _ => {}
        }
    }
    Err("a conditional without `:`".to_owned())
}

/// One literal, attribute or header.
fn single(expression: &str) -> Result<TagSource, String> {
    if let Some(text) = quoted(expression) {
        return Ok(TagSource::Literal(text.to_owned()));
    }
    if let Some(inner) = expression
        .strip_prefix("request.headers[")
        .and_then(|rest| rest.strip_suffix(']'))
    {
        let name = quoted(inner.trim())
            .ok_or_else(|| "a header index that is not a string literal".to_owned())?;
        if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("{name:?} is not a header name"));
        }
        return Ok(TagSource::RequestHeader(name.to_ascii_lowercase()));
    }
    Attribute::named(expression)
        .map(TagSource::Attribute)
        .ok_or_else(|| "not a literal, a request header or an attribute Weft evaluates".to_owned())
}

/// The text of a `'...'` or `"..."` literal without escapes.
fn quoted(expression: &str) -> Option<&str> {
    let quote = expression
        .chars()
        .next()
        .filter(|c| matches!(c, '\'' | '"'))?;
    let inner = expression.strip_prefix(quote)?.strip_suffix(quote)?;
    (!inner.contains(quote) && !inner.contains('\\')).then_some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_expressions_become_sources_in_order() {
        use TagSource::*;
        let header = |n: &str| RequestHeader(n.to_owned());
        let cases: &[(&str, Vec<TagSource>)] = &[
            ("'literal'", vec![Literal("literal".into())]),
            ("\"two words\"", vec![Literal("two words".into())]),
            (
                "request.host",
                vec![Attribute(super::Attribute::RequestHost)],
            ),
            (
                " response.code ",
                vec![Attribute(super::Attribute::ResponseCode)],
            ),
            (
                "request.url_path",
                vec![Attribute(super::Attribute::RequestUrlPath)],
            ),
            ("request.headers['User-Agent']", vec![header("user-agent")]),
            ("request.headers[\"x-user\"]", vec![header("x-user")]),
            (
                "has(request.headers['x-user']) ? request.headers['x-user'] : 'anonymous'",
                vec![header("x-user"), Literal("anonymous".into())],
            ),
            (
                "has(request.headers['a']) ? request.headers['a'] : has(request.headers['b']) ? request.headers['b'] : 'c:d'",
                vec![header("a"), header("b"), Literal("c:d".into())],
            ),
            (
                "has(request.host) ? request.host : request.method",
                vec![
                    Attribute(super::Attribute::RequestHost),
                    Attribute(super::Attribute::RequestMethod),
                ],
            ),
        ];
        for (expression, expected) in cases {
            assert_eq!(parse(expression).as_ref(), Ok(expected), "{expression}");
        }
    }

    #[test]
    fn other_expressions_are_refused_with_a_reason() {
        for expression in [
            "upstream_peer.istio_version",
            "filter_state['wasm.upstream_peer']",
            "request.host + '-x'",
            "'unterminated",
            "'esc\\'aped'",
            "request.headers[name]",
            "request.headers['bad header']",
            "has(request.headers['a']) ? request.headers['b'] : 'c'",
            "has(request.headers['a']) ? request.headers['a']",
            "has('x') ? 'x' : 'y'",
            "size(request.path)",
            "",
        ] {
            assert!(parse(expression).is_err(), "{expression} was accepted");
        }
    }
}
