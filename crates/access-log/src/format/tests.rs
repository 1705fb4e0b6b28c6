use super::*;

/// A request with a few values known, the others absent.
struct Sample;

impl Record for Sample {
    fn write(&self, operator: &Operator, out: &mut String) -> Kind {
        match operator {
            Operator::ResponseCode => {
                out.push_str("503");
                Kind::Number
            }
            Operator::Protocol => {
                out.push_str("HTTP/1.1");
                Kind::Text
            }
            _ => Kind::Absent,
        }
    }

    fn request_header(&self, name: &str, out: &mut String) -> Kind {
        let text = match name {
            ":method" => "GET",
            ":path" => "/api \"v1\"",
            "user-agent" => "curl/8",
            _ => return Kind::Absent,
        };
        out.push_str(text);
        Kind::Text
    }

    fn response_header(&self, _: &str, _: &mut String) -> Kind {
        Kind::Absent
    }
}

fn line(format: &Format) -> String {
    let mut line = String::new();
    format.render(&Sample, &mut line);
    line
}

#[test]
fn text_renders_each_operator_and_a_dash_for_what_is_absent() {
    let format = Format::text(
        "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% %UPSTREAM_HOST% 100%%",
    )
    .err();
    // `%%` opens no command: Envoy refuses it.
    assert!(
        matches!(format, Some(FormatError::NoCommand { position: 85, .. })),
        "{format:?}"
    );
    let format =
        Format::text("%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% %UPSTREAM_HOST% [%REQ(USER-AGENT):4%]\n")
            .unwrap();
    assert_eq!(line(&format), "GET /api \"v1\" 503 - [curl]\n");
}

#[test]
fn istio_default_text_format_reads_in_istio_order() {
    let format = Format::istio_text();
    assert_eq!(
        line(&format),
        "[-] \"GET /api \"v1\" HTTP/1.1\" 503 - - - \"-\" - - - - \"-\" \"curl/8\" \"-\" \"-\" \"-\" - - - - - -\n"
    );
    assert_eq!(format.operators().count(), 24);
}

#[test]
fn json_keeps_numbers_writes_null_for_absent_and_escapes_text() {
    let format = Format::json([
        ("code", "%RESPONSE_CODE%"),
        ("path", "%REQ(:PATH)%"),
        ("host", "%UPSTREAM_HOST%"),
        ("both", "%REQ(:METHOD)% %UPSTREAM_HOST%"),
        ("short", "%RESPONSE_CODE%:2"),
        ("cut", "%RESPONSE_CODE:2%"),
    ])
    .unwrap();
    assert_eq!(
        line(&format),
        "{\"both\":\"GET -\",\"code\":503,\"cut\":\"50\",\"host\":null,\"path\":\"/api \\\"v1\\\"\",\"short\":\"503:2\"}\n"
    );
    let istio = line(&Format::istio_json());
    assert!(istio.starts_with("{\"authority\":null,"), "{istio}");
    assert!(istio.contains("\"response_code\":503,"), "{istio}");
}

/// Envoy's `omit_empty_values` (Istio's `omitEmptyValues`, istio/istio
/// `telemetry_logging_test.go` `enable-omit-empty-values`): text writes nothing for an absent
/// value; JSON leaves out a label whose lone operator is absent (the first or the last one
/// too, the commas still right) and writes nothing for an absent part of a longer label.
#[test]
fn omit_empty_values_writes_nothing_for_what_is_absent() {
    let text = Format::text("%REQ(:METHOD)% [%UPSTREAM_HOST%] %RESPONSE_CODE%")
        .unwrap()
        .omit_empty_values(true);
    assert_eq!(line(&text), "GET [] 503\n");
    let json = Format::json([
        ("a_absent", "%UPSTREAM_HOST%"),
        ("both", "%REQ(:METHOD)% %UPSTREAM_HOST%"),
        ("code", "%RESPONSE_CODE%"),
        ("path", "%REQ(:PATH)%"),
        ("z_absent", "%REQ(X-MISSING)%"),
    ])
    .unwrap();
    assert_eq!(
        line(&json),
        "{\"a_absent\":null,\"both\":\"GET -\",\"code\":503,\"path\":\"/api \\\"v1\\\"\",\"z_absent\":null}\n"
    );
    assert_eq!(
        line(&json.omit_empty_values(true)),
        "{\"both\":\"GET \",\"code\":503,\"path\":\"/api \\\"v1\\\"\"}\n"
    );
    let nothing = Format::json([("host", "%UPSTREAM_HOST%")])
        .unwrap()
        .omit_empty_values(true);
    assert_eq!(line(&nothing), "{}\n");
    assert_eq!(
        line(&Format::istio_json().omit_empty_values(true)),
        "{\"method\":\"GET\",\"path\":\"/api \\\"v1\\\"\",\"protocol\":\"HTTP/1.1\",\"response_code\":503,\"user_agent\":\"curl/8\"}\n"
    );
}

/// Envoy refuses a format naming a command it does not know, or a `%` that opens none.
#[test]
fn unknown_commands_and_stray_percent_signs_are_refused() {
    assert_eq!(
        Format::text("%START_TIME% %NOT_A_COMMAND%")
            .unwrap_err()
            .to_string(),
        "Not supported field in StreamInfo: NOT_A_COMMAND"
    );
    assert_eq!(
        Format::text("50% off").unwrap_err().to_string(),
        "Incorrect configuration: 50% off. Couldn't find valid command at position 2"
    );
    assert!(Format::text("%REQ(:PATH%").is_err());
    assert!(Format::text("%REQ()%").is_err());
    assert!(Format::text("%DURATION(x)%").is_err());
    let label = Format::json([("a", "%BOGUS%")]).unwrap_err();
    assert_eq!(
        label.to_string(),
        "JSON label \"a\": Not supported field in StreamInfo: BOGUS"
    );
}
