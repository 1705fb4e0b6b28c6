//! Streams refused by the server's admission before anything is sent on them.

use super::*;

/// Admits a stream whose bearer token is `node=<its node id>`.
struct TokenPerNode;

impl crate::Admission for TokenPerNode {
    fn admit(
        &self,
        metadata: tonic::metadata::MetadataMap,
        proxy: ProxyIdentity,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<Option<weft_identity::SpiffeId>, tonic::Status>>
                + Send
                + '_,
        >,
    > {
        Box::pin(async move {
            let expected = format!("Bearer node={}", proxy.id);
            match metadata.get("authorization").and_then(|v| v.to_str().ok()) {
                None => Err(tonic::Status::unauthenticated("no token")),
                Some(token) if token == expected => Ok(None),
                Some(_) => Err(tonic::Status::permission_denied(format!(
                    "token is not {}'s",
                    proxy.id
                ))),
            }
        })
    }
}

#[tokio::test]
async fn admission_refuses_streams_before_sending_anything() -> Result<()> {
    let mut store = ResourceStore::new();
    store.set(THING, "a", thing("a1"));
    let counters = Arc::new(XdsCounters::default());
    let server = RunningServer::bind(
        DeltaAdsServer::new(store.reader())
            .with_config(fast_config())
            .with_metrics(counters.clone())
            .with_admission(Arc::new(TokenPerNode)),
    )
    .await?;
    let token = |value: &'static str| -> crate::TokenSource { Arc::new(move || Ok(value.into())) };
    let mut anonymous = RunningClient::start(server.target()?, "proxy-1", Vec::new());
    let mut impostor = RunningClient::start_with(
        server.target()?,
        "proxy-1",
        Vec::new(),
        Some(token("node=proxy-2")),
    );
    let mut admitted = RunningClient::start_with(
        server.target()?,
        "proxy-1",
        Vec::new(),
        Some(token("node=proxy-1")),
    );
    assert_eq!(names(&admitted.next_update().await?), ["a"]);
    anonymous
        .wait_state(|s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("no token"))
        })
        .await?;
    impostor
        .wait_state(|s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("token is not proxy-1's"))
        })
        .await?;
    anonymous.expect_quiet().await?;
    impostor.expect_quiet().await?;
    // Only the admitted stream counts as a connected proxy.
    assert_eq!(counters.connected(), 1);

    // A token that cannot be read fails the attempt on the client, which retries.
    let mut unreadable = RunningClient::start_with(
        server.target()?,
        "proxy-1",
        Vec::new(),
        Some(Arc::new(|| Err("reading /var/run/token: gone".to_string()))),
    );
    unreadable
        .wait_state(|s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("/var/run/token"))
        })
        .await?;
    drop((anonymous, impostor, admitted, unreadable));
    drop(store);
    server.stop().await
}
