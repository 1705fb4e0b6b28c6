//! Which access logs a waypoint writes: the providers Telemetry selects (istiod's `mergeLogs`),
//! resolved against the mesh config's providers, and the mesh's `accessLogFile` otherwise.

use weft_proto::waypoint as wp;

use super::super::tests::{telemetry, waypoint_config};

const PROVIDERS: &str = "extensionProviders: [{name: json-file, envoyFileAccessLog: {path: /var/log/access.json, logFormat: {labels: {code: '%RESPONSE_CODE%', path: '%REQ(:PATH)%'}}}}, {name: text-file, envoyFileAccessLog: {path: /var/log/access.log, logFormat: {text: '%REQ(:METHOD)% %RESPONSE_CODE%'}}}, {name: plain, envoyFileAccessLog: {}}, {name: otel, opentelemetry: {service: otel.example.com, port: 4317}}]";

/// The waypoint's access logs under `mesh_config`: whether none is written, and each as
/// (provider, path, format summary, filter).
fn applied(
    mesh_config: &str,
    telemetries: &[String],
) -> (bool, Vec<(String, String, String, String)>) {
    let config = waypoint_config(mesh_config, &telemetries.concat());
    let logs = config
        .access_logs
        .into_iter()
        .map(|l| {
            let format = match l.format {
                Some(wp::access_log::Format::Text(text)) => format!("text {text}"),
                Some(wp::access_log::Format::Json(json)) => {
                    format!(
                        "json {}",
                        json.labels.keys().cloned().collect::<Vec<_>>().join(",")
                    )
                }
                None => "none".to_owned(),
            };
            (l.provider, l.path, format, l.filter)
        })
        .collect();
    (config.access_log_disabled, logs)
}

fn log(provider: &str, path: &str, format: &str, filter: &str) -> (String, String, String, String) {
    (provider.into(), path.into(), format.into(), filter.into())
}

/// Nothing configured: no access log at all, as Istio's proxies write none without an
/// `accessLogFile`, a default provider or a Telemetry (istio/istio
/// `pilot/pkg/networking/core/accesslog.go`); the built-in `envoy` provider selected by a
/// Telemetry writes Istio's default TEXT format to standard output.
#[test]
fn with_nothing_configured_no_access_log_is_written() {
    assert_eq!(applied("", &[]), (true, vec![]));
    let envoy = telemetry(
        "logs",
        "shop",
        1,
        "{accessLogging: [{providers: [{name: envoy}]}]}",
    );
    assert_eq!(
        applied("", &[envoy]),
        (
            false,
            vec![log(
                "envoy",
                "/dev/stdout",
                &format!("text {}", weft_access_log::DEFAULT_TEXT_FORMAT),
                ""
            )]
        )
    );
    let off = telemetry("logs", "shop", 1, "{accessLogging: [{disabled: true}]}");
    assert_eq!(applied("", &[off]), (true, vec![]));
    // `accessLogFile` alone turns the log on, in the mesh's format.
    assert_eq!(
        applied("accessLogFile: /dev/stdout", &[]),
        (
            false,
            vec![log(
                "",
                "/dev/stdout",
                &format!("text {}", weft_access_log::DEFAULT_TEXT_FORMAT),
                ""
            )]
        )
    );
}

/// A Telemetry selecting a file provider with a filter: that provider alone, with its path,
/// format and filter; the providers named are those of the last Telemetry naming any.
#[test]
fn telemetry_selects_providers_with_their_filters() {
    let root = telemetry(
        "mesh",
        "istio-system",
        1,
        "{accessLogging: [{providers: [{name: text-file}]}]}",
    );
    let waypoint = telemetry(
        "waypoint",
        "shop",
        2,
        "{targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}], accessLogging: [{providers: [{name: json-file}, {name: Plain}], filter: {expression: 'response.code >= 400'}}]}",
    );
    assert_eq!(
        applied(PROVIDERS, std::slice::from_ref(&root)),
        (
            false,
            vec![log(
                "text-file",
                "/var/log/access.log",
                "text %REQ(:METHOD)% %RESPONSE_CODE%",
                ""
            )]
        )
    );
    let default_text = format!("text {}", weft_access_log::DEFAULT_TEXT_FORMAT);
    assert_eq!(
        applied(PROVIDERS, &[root, waypoint]),
        (
            false,
            vec![
                log(
                    "json-file",
                    "/var/log/access.json",
                    "json code,path",
                    "response.code >= 400"
                ),
                // Named without case, as istiod's `fetchProvider` finds it; no format: Istio's.
                log(
                    "plain",
                    "/dev/stdout",
                    &default_text,
                    "response.code >= 400"
                ),
            ]
        )
    );
}

/// istiod's `mergeLogs`: `disabled: true` turns off the providers in scope (the previous
/// entry's, or the defaults); a provider the mesh does not declare, or one that writes no
/// file (OpenTelemetry), writes nothing; `match.mode: CLIENT` is not a waypoint's side.
#[test]
fn disabled_unknown_and_other_side_entries() {
    let mesh = format!("{PROVIDERS}\ndefaultProviders: {{accessLogging: [text-file, json-file]}}");
    assert_eq!(applied(&mesh, &[]).1.len(), 2);
    let off = telemetry(
        "off",
        "shop",
        1,
        "{accessLogging: [{providers: [{name: json-file}]}, {disabled: true}]}",
    );
    assert_eq!(applied(&mesh, &[off]), (true, vec![]));
    let client = telemetry(
        "client",
        "shop",
        1,
        "{accessLogging: [{match: {mode: CLIENT}, disabled: true}]}",
    );
    // Istio's quirk, kept: an entry for the other side only leaves `mergeLogs` with no
    // provider, and istiod then falls back to `accessLogFile` (unset here: no log).
    assert_eq!(
        applied(&mesh, std::slice::from_ref(&client)),
        (true, vec![])
    );
    // With an `accessLogFile` that fallback writes: the mesh file in place of the default
    // provider the entry dropped (the same line to the same file, another source).
    let with_file = "accessLogFile: /dev/stdout\ndefaultProviders: {accessLogging: [envoy]}";
    let default_text = format!("text {}", weft_access_log::DEFAULT_TEXT_FORMAT);
    assert_eq!(
        applied(with_file, &[]),
        (false, vec![log("envoy", "/dev/stdout", &default_text, "")])
    );
    assert_eq!(
        applied(with_file, &[client]),
        (false, vec![log("", "/dev/stdout", &default_text, "")])
    );
    let client_and_server = telemetry(
        "both",
        "shop",
        1,
        "{accessLogging: [{match: {mode: CLIENT}, disabled: true}, {match: {mode: SERVER}, providers: [{name: text-file}]}]}",
    );
    assert_eq!(
        applied(&mesh, &[client_and_server]).1,
        [log(
            "text-file",
            "/var/log/access.log",
            "text %REQ(:METHOD)% %RESPONSE_CODE%",
            ""
        )]
    );
    let otel = telemetry(
        "otel",
        "shop",
        1,
        "{accessLogging: [{providers: [{name: otel}]}]}",
    );
    assert_eq!(applied(&mesh, &[otel]), (true, vec![]));
    // Unknown providers only: as if no Telemetry applied (the mesh's accessLogFile, none).
    let unknown = telemetry(
        "unknown",
        "shop",
        1,
        "{accessLogging: [{providers: [{name: nope}]}]}",
    );
    assert_eq!(applied(PROVIDERS, &[unknown]), (true, vec![]));
}

/// istiod's `telemetryAccessLog` (`pilot/pkg/model/telemetry_logging.go`) builds no access
/// log for a tracing or metrics provider, so `Telemetries.AccessLogging` keeps none for it and
/// `setHTTPAccessLog` (`pilot/pkg/networking/core/accesslog.go`) falls back to the mesh's
/// `accessLogFile`: a Telemetry (or default provider) naming only such providers leaves the
/// mesh's line written. A provider that does log, selected with them, is written alone; one
/// selected and disabled keeps the file off; a gRPC access-log service provider is a log
/// (istiod builds one), streamed to its service.
#[test]
fn selecting_only_providers_that_write_no_access_log_falls_back_to_the_access_log_file() {
    let mesh = format!(
        "accessLogFile: /dev/stdout\n{}, {{name: zipkin, zipkin: {{service: zipkin.example.com, port: 9411}}}}, {{name: prometheus, prometheus: {{}}}}, {{name: als, envoyHttpAls: {{service: als.example.com, port: 9000}}}}]",
        PROVIDERS.strip_suffix(']').unwrap()
    );
    let mesh_line = log(
        "",
        "/dev/stdout",
        &format!("text {}", weft_access_log::DEFAULT_TEXT_FORMAT),
        "",
    );
    let naming = |providers: &str| {
        telemetry(
            "logs",
            "shop",
            1,
            &format!("{{accessLogging: [{{providers: [{providers}]}}]}}"),
        )
    };
    for providers in [
        "{name: zipkin}",
        "{name: otel}",
        "{name: prometheus}",
        "{name: zipkin}, {name: Prometheus}, {name: nope}",
    ] {
        assert_eq!(
            applied(&mesh, &[naming(providers)]),
            (false, vec![mesh_line.clone()]),
            "{providers}"
        );
    }
    // The same as the mesh's default providers, with no Telemetry.
    assert_eq!(
        applied(
            &format!("{mesh}\ndefaultProviders: {{accessLogging: [zipkin]}}"),
            &[]
        ),
        (false, vec![mesh_line.clone()])
    );
    // A provider that writes a log, named with them: that log alone, no fallback.
    assert_eq!(
        applied(&mesh, &[naming("{name: zipkin}, {name: text-file}")]),
        (
            false,
            vec![log(
                "text-file",
                "/var/log/access.log",
                "text %REQ(:METHOD)% %RESPONSE_CODE%",
                ""
            )]
        )
    );
    let text_file_off = telemetry(
        "logs",
        "shop",
        1,
        "{accessLogging: [{providers: [{name: zipkin}, {name: text-file}], disabled: true}]}",
    );
    assert_eq!(applied(&mesh, &[text_file_off]), (true, vec![]));
    assert_eq!(
        applied(&mesh, &[naming("{name: als}")]),
        (false, vec![log("als", "", "none", "")])
    );
    // Without an `accessLogFile` there is nothing to fall back to.
    assert_eq!(
        applied(PROVIDERS, &[naming("{name: otel}")]),
        (true, vec![])
    );
}

/// The mesh's `accessLogFile` when no Telemetry entry or default provider applies, in the
/// mesh's format and encoding; the built-in `envoy` provider follows that format too.
#[test]
fn the_mesh_access_log_file_and_the_builtin_provider_follow_the_mesh_format() {
    let mesh = "accessLogFile: /var/log/mesh.log\naccessLogEncoding: JSON\naccessLogFormat: '{\"status\": \"%RESPONSE_CODE%\"}'";
    assert_eq!(
        applied(mesh, &[]),
        (false, vec![log("", "/var/log/mesh.log", "json status", "")])
    );
    let envoy = telemetry(
        "logs",
        "shop",
        1,
        "{accessLogging: [{providers: [{name: envoy}]}]}",
    );
    assert_eq!(
        applied(mesh, &[envoy]),
        (false, vec![log("envoy", "/dev/stdout", "json status", "")])
    );
    let istio_json = "accessLogFile: /dev/stdout\naccessLogEncoding: JSON";
    let (_, logs) = applied(istio_json, &[]);
    assert!(
        logs[0].2.starts_with("json authority,bytes_received,"),
        "{logs:?}"
    );
}

/// `omitEmptyValues` reaches the waypoint with its provider's log (here the built-in `envoy`
/// provider redefined with it and made the mesh's default).
#[test]
fn omit_empty_values_is_sent_with_the_provider_log() {
    let config = waypoint_config(
        "extensionProviders: [{name: envoy, envoyFileAccessLog: {path: /dev/stdout, omitEmptyValues: true}}]\n\
         defaultProviders: {accessLogging: [envoy]}",
        "",
    );
    let [log] = config.access_logs.as_slice() else {
        panic!("one log: {:?}", config.access_logs);
    };
    assert_eq!(
        (
            log.provider.as_str(),
            log.path.as_str(),
            log.omit_empty_values
        ),
        ("envoy", "/dev/stdout", true)
    );
    assert_eq!(
        log.format,
        Some(wp::access_log::Format::Text(
            weft_access_log::DEFAULT_TEXT_FORMAT.to_owned()
        ))
    );
}
