//! What the Kubernetes source's writer tests share: a fake API server holding a fixture, the
//! source feeding a live index from it, and polling with a deadline.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_fake_apiserver::FakeApiServer;

use crate::index::LiveIndex;
use crate::source::kube::KubeSource;

pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// Polls until `done` holds, failing the test after [`WAIT`].
pub(crate) async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The documents of a YAML stream.
pub(crate) fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).expect("fixture is YAML"))
        .filter(|value| !value.is_null())
        .collect()
}

/// A fake API server, the source watching it into `index`, and one writer task.
pub(crate) struct Started {
    pub fake: FakeApiServer,
    pub client: ::kube::Client,
    pub index: Arc<LiveIndex>,
    source_task: JoinHandle<()>,
    writer: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl Started {
    /// Starts the fake with `fixture`, and the source, until every kind is listed.
    pub(crate) async fn with(fixture: &str) -> Self {
        let fake = FakeApiServer::start().await.unwrap();
        for object in documents(fixture) {
            fake.create(object).expect("fake accepts the fixture");
        }
        let client = fake.client().expect("client");
        let index = Arc::new(LiveIndex::default());
        let source = KubeSource::new(client.clone(), index.clone());
        let mut synced = source.synced();
        let source_task = tokio::spawn(source.run());
        tokio::time::timeout(
            WAIT,
            synced.wait_for(|kinds| kinds.len() == crate::model::ResourceKind::ALL.len()),
        )
        .await
        .expect("every kind listed")
        .expect("source running");
        Started {
            fake,
            client,
            index,
            source_task,
            writer: None,
        }
    }

    /// Runs the writer `start` makes from the client, the index and a shutdown signal.
    pub(crate) fn run<F>(
        &mut self,
        start: impl FnOnce(::kube::Client, Arc<LiveIndex>, watch::Receiver<bool>) -> F,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(start(self.client.clone(), self.index.clone(), shutdown));
        self.writer = Some((stop, task));
    }

    /// Stops the writer (which must stop on shutdown) and the source.
    pub(crate) async fn stop(mut self) {
        if let Some((stop, task)) = self.writer.take() {
            stop.send(true).unwrap();
            tokio::time::timeout(WAIT, task)
                .await
                .expect("the writer stops on shutdown")
                .unwrap();
        }
        self.source_task.abort();
    }
}
