use std::net::SocketAddr;

use clap::Parser;
use weft_sample_app::{App, Identity, StaticFile, Upstream, start_app};

/// A small versioned HTTP/gRPC service that can fail or delay on request.
#[derive(Debug, Parser)]
#[command(name = "sample-app", version, about, long_about = None)]
struct Args {
    /// Service name it reports.
    #[arg(long, env = "SERVICE", default_value = "sample")]
    service: String,
    /// Version it reports (v1, v2, ...).
    #[arg(long = "app-version", env = "VERSION", default_value = "v1")]
    app_version: String,
    /// Pod name it reports.
    #[arg(long, env = "POD_NAME", default_value = "sample")]
    pod: String,
    /// HTTP (1.1 and h2c) listen address.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http: SocketAddr,
    /// gRPC listen address.
    #[arg(long, default_value = "0.0.0.0:9090")]
    grpc: SocketAddr,
    /// Raw TCP echo listen address (bytes in, same bytes out); repeatable.
    #[arg(long)]
    echo: Vec<SocketAddr>,
    /// A service called on every request, `name=http://host:port[/path]` (repeatable).
    #[arg(long = "upstream")]
    upstreams: Vec<Upstream>,
    /// A file served to GET requests for a path, `/path=FILE` (repeatable).
    #[arg(long = "file")]
    files: Vec<StaticFile>,
    /// Log one line per request (method, path, host, request id, status).
    #[arg(long, env = "LOG_REQUESTS")]
    log_requests: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let args = Args::parse();
    let echo = args.echo.clone();
    let app = App::with_files(
        Identity {
            service: args.service,
            version: args.app_version,
            pod: args.pod,
        },
        args.upstreams,
        args.log_requests,
        args.files,
    );
    let (http, grpc, task) = start_app(app, args.http, args.grpc).await?;
    for address in &echo {
        let listener = tokio::net::TcpListener::bind(address).await?;
        tokio::spawn(weft_sample_app::serve_echo(listener));
    }
    tracing::info!(%http, %grpc, echo = ?echo, "sample app serving");
    task.await?;
    Ok(())
}
