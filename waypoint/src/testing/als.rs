//! A fake gRPC access-log service (`envoy.service.accesslog.v3.AccessLogService`) that keeps
//! every message of every stream it is sent, served on a loopback port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_stream::StreamExt;
use weft_proto::envoy::data::accesslog::v3::HttpAccessLogEntry;
use weft_proto::envoy::service::accesslog::v3::access_log_service_server::{
    AccessLogService, AccessLogServiceServer,
};
use weft_proto::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use weft_proto::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
};

/// Every message received, stream by stream, in order.
#[derive(Clone, Default)]
pub struct AlsReceiver {
    streams: Arc<Mutex<Vec<Vec<StreamAccessLogsMessage>>>>,
    received: Arc<Notify>,
}

#[tonic::async_trait]
impl AccessLogService for AlsReceiver {
    async fn stream_access_logs(
        &self,
        request: tonic::Request<tonic::Streaming<StreamAccessLogsMessage>>,
    ) -> Result<tonic::Response<StreamAccessLogsResponse>, tonic::Status> {
        let mut messages = request.into_inner();
        let index = {
            let mut streams = self.streams.lock().unwrap();
            streams.push(Vec::new());
            streams.len() - 1
        };
        while let Some(message) = messages.next().await {
            let message = message?;
            self.streams.lock().unwrap()[index].push(message);
            self.received.notify_waiters();
        }
        Ok(tonic::Response::new(StreamAccessLogsResponse {}))
    }
}

impl AlsReceiver {
    /// Serves the receiver on a loopback port; its address.
    pub async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AccessLogServiceServer::new(self.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        address
    }

    /// The messages of each stream.
    pub fn streams(&self) -> Vec<Vec<StreamAccessLogsMessage>> {
        self.streams.lock().unwrap().clone()
    }

    /// Every HTTP entry received.
    pub fn http_entries(&self) -> Vec<HttpAccessLogEntry> {
        self.streams()
            .into_iter()
            .flatten()
            .filter_map(|m| match m.log_entries {
                Some(LogEntries::HttpLogs(logs)) => Some(logs.log_entry),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Waits until `done` holds of the messages received, at most `within`; whether it did.
    pub async fn wait_for(
        &self,
        within: std::time::Duration,
        done: impl Fn(&AlsReceiver) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let received = self.received.notified();
            if done(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, received).await.is_err() {
                return done(self);
            }
        }
    }
}
