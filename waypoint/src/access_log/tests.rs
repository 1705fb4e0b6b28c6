use std::collections::BTreeMap;

use prometheus_client::registry::Registry;
use weft_test_support::temp::TempDir;

use super::*;
use crate::metrics::{Metrics, RequestRecord};

fn json_file_log(path: &str, labels: &[(&str, &str)], filter: &str) -> proto::AccessLog {
    proto::AccessLog {
        provider: "file".to_owned(),
        path: path.to_owned(),
        format: Some(proto::access_log::Format::Json(proto::JsonLogFormat {
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        })),
        filter: filter.to_owned(),
        otel: None,
        omit_empty_values: false,
        grpc: None,
    }
}

fn text_file_log(path: &std::path::Path, format: &str) -> proto::AccessLog {
    proto::AccessLog {
        provider: "p".to_owned(),
        path: path.to_str().unwrap().to_owned(),
        format: Some(proto::access_log::Format::Text(format.to_owned())),
        filter: String::new(),
        otel: None,
        omit_empty_values: false,
        grpc: None,
    }
}

/// A request through a waypoint, recorded and dropped (which writes its lines).
fn request(metrics: &Arc<Metrics>, logs: &Arc<AccessLogs>, path: &str, status: u16) {
    let mut record = RequestRecord::new(Arc::clone(metrics));
    record.path = path.to_owned().into();
    record.authority = "echo.shop:80".to_owned().into();
    record.downstream_remote = Some("10.0.0.7:40000".parse().unwrap());
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("blue"));
    record.set_access_logs(logs, &headers);
    let mut response = HeaderMap::new();
    response.insert("x-served-by", HeaderValue::from_static("v2"));
    record.capture_response_headers(&response);
    record.status = status;
}

/// Istio's Telemetry selecting a file provider with JSON labels and the filter
/// `response.code >= 400`: only the failing request is written to the file, with each label.
#[test]
fn a_filtered_json_file_log_has_only_the_failing_request() {
    let dir = TempDir::new("access-log");
    let path = dir.join("access.json");
    let logs = AccessLogs::compile(
        &[json_file_log(
            path.to_str().unwrap(),
            &[
                ("code", "%RESPONSE_CODE%"),
                ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
                ("tenant", "%REQ(X-TENANT)%"),
                ("served_by", "%RESP(X-SERVED-BY)%"),
                ("peer", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
                ("upstream", "%UPSTREAM_HOST%"),
            ],
            "response.code >= 400 && request.headers['x-tenant'] == 'blue'",
        )],
        "access_logs",
    )
    .unwrap()
    .unwrap();
    let metrics = Arc::new(Metrics::new(&mut Registry::default()));
    request(&metrics, &logs, "/ok", 200);
    request(&metrics, &logs, "/fails", 503);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        "{\"code\":503,\"path\":\"/fails\",\"peer\":\"10.0.0.7\",\"served_by\":\"v2\",\"tenant\":\"blue\",\"upstream\":null}\n"
    );
}

/// Two providers each write their own line; the file is appended to, never truncated.
#[test]
fn each_provider_writes_its_own_line_and_files_are_appended_to() {
    let dir = TempDir::new("access-log");
    let (a, b) = (dir.join("a.log"), dir.join("b.log"));
    std::fs::write(&a, "earlier\n").unwrap();
    let logs = AccessLogs::compile(
        &[
            text_file_log(&a, "%REQ(:AUTHORITY)% %RESPONSE_CODE%"),
            text_file_log(&b, "%REQ(:PATH)% %UPSTREAM_CLUSTER%"),
        ],
        "access_logs",
    )
    .unwrap()
    .unwrap();
    let metrics = Arc::new(Metrics::new(&mut Registry::default()));
    request(&metrics, &logs, "/one", 200);
    assert_eq!(
        std::fs::read_to_string(&a).unwrap(),
        "earlier\necho.shop:80 200\n"
    );
    assert_eq!(std::fs::read_to_string(&b).unwrap(), "/one -\n");
}

/// A format or a filter the waypoint cannot apply, or a file it cannot open, refuses the
/// configuration (the last good one stays), naming the log.
#[test]
fn bad_formats_filters_and_paths_are_refused_naming_the_log() {
    let dir = TempDir::new("access-log");
    let path = dir.join("x.log");
    let path = path.to_str().unwrap();
    let cases = [
        (
            json_file_log(path, &[("a", "%NOPE%")], ""),
            "Not supported field in StreamInfo: NOPE",
        ),
        (
            json_file_log(path, &[("a", "%DURATION%")], "response.code >="),
            "filter:",
        ),
        (
            json_file_log("/nonexistent-dir/x.log", &[("a", "%DURATION%")], ""),
            "cannot open for appending",
        ),
    ];
    for (log, expected) in cases {
        let error = AccessLogs::compile(&[log], "access_logs").unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("access_logs[0] (provider \"file\")"),
            "{message}"
        );
        assert!(message.contains(expected), "{message}");
    }
}

/// A log sent with `omit_empty_values` (Istio's `omitEmptyValues`) writes nothing for what
/// is absent: its JSON has no `null` label, its text no `-`.
#[test]
fn a_log_omitting_empty_values_writes_no_dash_and_no_null() {
    let dir = TempDir::new("access-log");
    let (json_path, text_path) = (dir.join("a.json"), dir.join("a.log"));
    let mut json = json_file_log(
        json_path.to_str().unwrap(),
        &[("code", "%RESPONSE_CODE%"), ("upstream", "%UPSTREAM_HOST%")],
        "",
    );
    json.omit_empty_values = true;
    let mut text = text_file_log(&text_path, "%RESPONSE_CODE% [%UPSTREAM_HOST%]");
    text.omit_empty_values = true;
    let logs = AccessLogs::compile(&[json, text], "access_logs")
        .unwrap()
        .unwrap();
    let metrics = Arc::new(Metrics::new(&mut Registry::default()));
    request(&metrics, &logs, "/", 200);
    assert_eq!(
        std::fs::read_to_string(&json_path).unwrap(),
        "{\"code\":200}\n"
    );
    assert_eq!(std::fs::read_to_string(&text_path).unwrap(), "200 []\n");
}
