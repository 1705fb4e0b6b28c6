//! gRPC services a test serves from inside a pod of the testbed (an OTLP collector's
//! `TraceService` or `LogsService`), reachable from the mesh at the pod's address.

use crate::Mesh;

impl Mesh {
    /// Serves `routes` on `port` in `pod`'s network namespace, on a runtime of its own that
    /// serves as long as the returned runtime lives.
    pub fn serve_grpc(
        &self,
        pod: &str,
        port: u16,
        routes: tonic::service::Routes,
    ) -> tokio::runtime::Runtime {
        let listener = self
            .pod(pod)
            .netns
            .run(|| std::net::TcpListener::bind(("0.0.0.0", port)))
            .expect("enter the pod's namespace")
            .expect("bind the service's port");
        listener.set_nonblocking(true).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
        runtime
    }
}
