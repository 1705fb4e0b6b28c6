//! A fake OpenTelemetry collector's `LogsService` that keeps every export request, and
//! readers of the LogRecords it received.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;

/// Every export request the collector received, in order.
#[derive(Clone, Default)]
pub struct LogsReceiver {
    requests: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
}

#[tonic::async_trait]
impl LogsService for LogsReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

impl LogsReceiver {
    /// The service to serve, sharing this receiver's requests.
    pub fn service(&self) -> LogsServiceServer<LogsReceiver> {
        LogsServiceServer::new(self.clone())
    }

    pub fn requests(&self) -> Vec<ExportLogsServiceRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Every record received, request by request.
    pub fn records(&self) -> Vec<LogRecord> {
        self.requests()
            .into_iter()
            .flat_map(|r| r.resource_logs)
            .flat_map(|r| r.scope_logs)
            .flat_map(|s| s.log_records)
            .collect()
    }
}

/// The text of a string value.
pub fn string_value(value: Option<&AnyValue>) -> Option<&str> {
    match value?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// The record's attribute `key`, when a string.
pub fn record_attribute<'r>(record: &'r LogRecord, key: &str) -> Option<&'r str> {
    record
        .attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| string_value(kv.value.as_ref()))
}
