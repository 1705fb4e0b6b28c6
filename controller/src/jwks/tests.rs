use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;

use super::*;

/// What the fake key server answers, changeable while it runs.
#[derive(Clone)]
struct KeyServer {
    address: SocketAddr,
    answer: Arc<Mutex<(StatusCode, String)>>,
    requests: Arc<AtomicUsize>,
}

impl KeyServer {
    async fn start(body: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = KeyServer {
            address: listener.local_addr().unwrap(),
            answer: Arc::new(Mutex::new((StatusCode::OK, body.to_owned()))),
            requests: Arc::new(AtomicUsize::new(0)),
        };
        let shared = server.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: http::Request<_>| {
                        let shared = shared.clone();
                        async move {
                            shared.requests.fetch_add(1, Ordering::SeqCst);
                            let (status, body) = shared.answer.lock().unwrap().clone();
                            // The discovery document points at this server's key set.
                            let body = if request.uri().path().ends_with("openid-configuration") {
                                format!(r#"{{"jwks_uri":"http://{}/keys"}}"#, shared.address)
                            } else {
                                body
                            };
                            let mut response = Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() = status;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        server
    }

    fn url(&self) -> String {
        format!("http://{}/keys", self.address)
    }

    fn answer(&self, status: StatusCode, body: &str) {
        *self.answer.lock().unwrap() = (status, body.to_owned());
    }
}

use bytes::Bytes;
use serde_json::Value;

const KEYS: &str =
    r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

/// Waits (bounded) until what is known of `source` (asked for with `timeout`) is `done`.
async fn wait_for(
    resolver: &JwksResolver,
    source: &JwksSource,
    timeout: Duration,
    done: impl Fn(&Keys) -> bool,
) -> Keys {
    let mut changed = resolver.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let keys = resolver.keys(source, timeout);
        if done(&keys) {
            return keys;
        }
        tokio::time::timeout_at(deadline, changed.changed())
            .await
            .expect("the resolver changed in time")
            .unwrap();
    }
}

#[tokio::test]
async fn keys_are_fetched_kept_on_failure_and_refetched() {
    let server = KeyServer::start(KEYS).await;
    let resolver = Arc::new(JwksResolver::default());
    let (_stop, shutdown) = watch::channel(false);
    let source = JwksSource::Uri(server.url());
    assert_eq!(
        resolver.keys(&source, DEFAULT_FETCH_TIMEOUT),
        Keys::Missing { error: None }
    );
    tokio::spawn(resolver.clone().run(shutdown));
    let keys = wait_for(&resolver, &source, DEFAULT_FETCH_TIMEOUT, |k| {
        matches!(k, Keys::Fetched { .. })
    })
    .await;
    let Keys::Fetched { jwks, stale: None } = keys else {
        panic!("{keys:?}");
    };
    assert_eq!(
        serde_json::from_str::<Value>(&jwks).unwrap(),
        serde_json::from_str::<Value>(KEYS).unwrap()
    );

    // A failed refresh keeps the last good keys and says why.
    server.answer(StatusCode::INTERNAL_SERVER_ERROR, "");
    resolver.lock().entries.get_mut(&source).unwrap().next_fetch = Instant::now();
    resolver.wanted.notify_one();
    let keys = wait_for(&resolver, &source, DEFAULT_FETCH_TIMEOUT, |k| {
        matches!(k, Keys::Fetched { stale: Some(_), .. })
    })
    .await;
    let Keys::Fetched {
        jwks: kept,
        stale: Some(error),
    } = keys
    else {
        panic!("{keys:?}");
    };
    assert_eq!(kept, jwks);
    assert!(error.contains("500"), "{error}");
    // Retried with backoff, not at the refresh interval.
    let next = resolver.lock().entries[&source].next_fetch;
    assert!(
        next <= Instant::now() + FIRST_RETRY * 2,
        "retry is due soon"
    );

    // Recovery: the next retry fetches the new keys.
    let rotated = r#"{"keys":[]}"#;
    server.answer(StatusCode::OK, rotated);
    let keys = wait_for(
        &resolver,
        &source,
        DEFAULT_FETCH_TIMEOUT,
        |k| matches!(k, Keys::Fetched { jwks, stale: None } if jwks == rotated),
    )
    .await;
    assert!(matches!(keys, Keys::Fetched { stale: None, .. }));
}

#[tokio::test]
async fn discovery_finds_the_key_set_of_an_issuer() {
    let server = KeyServer::start(KEYS).await;
    let resolver = Arc::new(JwksResolver::default());
    let (_stop, shutdown) = watch::channel(false);
    let source = JwksSource::Discovery {
        issuer: format!("http://{}/", server.address),
    };
    resolver.keys(&source, DEFAULT_FETCH_TIMEOUT);
    tokio::spawn(resolver.clone().run(shutdown));
    let keys = wait_for(&resolver, &source, DEFAULT_FETCH_TIMEOUT, |k| {
        matches!(k, Keys::Fetched { .. })
    })
    .await;
    assert!(
        matches!(keys, Keys::Fetched { stale: None, .. }),
        "{keys:?}"
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn bad_answers_are_errors_and_never_keys() {
    let server = KeyServer::start("").await;
    let client = fetch::Client::new().unwrap();
    let source = JwksSource::Uri(server.url());
    let too_large = format!(r#"{{"keys":[],"pad":"{}"}}"#, "x".repeat(MAX_JWKS_BYTES));
    for (status, body, want) in [
        (StatusCode::NOT_FOUND, "{}", "answered 404"),
        (StatusCode::OK, "not json", "not a JSON Web Key Set"),
        (StatusCode::OK, r#"{"keys":3}"#, "not a JSON Web Key Set"),
        (StatusCode::OK, too_large.as_str(), "larger than"),
    ] {
        server.answer(status, body);
        let error = client
            .jwks(&source, DEFAULT_FETCH_TIMEOUT)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(want), "{status} {error}");
    }
    let unsupported = JwksSource::Uri("ftp://example.com/keys".to_owned());
    assert!(matches!(
        client.jwks(&unsupported, DEFAULT_FETCH_TIMEOUT).await,
        Err(fetch::FetchError::Url(_))
    ));
    // Nothing listens on a port just released: a connection error, quickly.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let refused = JwksSource::Uri(format!("http://{address}/keys"));
    assert!(matches!(
        client.jwks(&refused, DEFAULT_FETCH_TIMEOUT).await,
        Err(fetch::FetchError::Connect(_))
    ));
}

/// A key server that accepts the connection and never answers: the fetch gives up after the
/// rule's timeout, not after the default.
#[tokio::test]
async fn a_silent_server_fails_the_fetch_after_the_rules_timeout() {
    // Connections complete in the kernel's backlog; nothing ever reads or answers them.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let source = JwksSource::Uri(format!("http://{}/keys", silent.local_addr().unwrap()));
    let timeout = Duration::from_millis(300);

    let client = fetch::Client::new().unwrap();
    let started = Instant::now();
    // Well under the default: with the default in force, this bound fails the test.
    let result = tokio::time::timeout(Duration::from_secs(2), client.jwks(&source, timeout))
        .await
        .expect("the fetch gave up after the rule's timeout, not the default");
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(fetch::FetchError::Timeout(t)) if t == timeout),
        "{result:?}"
    );
    assert!(elapsed >= timeout, "gave up early: {elapsed:?}");

    // Through the resolver: the timeout the translation asked with bounds its fetches.
    let resolver = Arc::new(JwksResolver::default());
    let (_stop, shutdown) = watch::channel(false);
    assert_eq!(
        resolver.keys(&source, timeout),
        Keys::Missing { error: None }
    );
    tokio::spawn(resolver.clone().run(shutdown));
    let keys = wait_for(&resolver, &source, timeout, |k| {
        matches!(k, Keys::Missing { error: Some(_) })
    })
    .await;
    let Keys::Missing { error: Some(error) } = keys else {
        panic!("{keys:?}");
    };
    assert_eq!(error, "no answer within 300ms");
    drop(silent);
}

#[test]
fn sources_no_translation_asks_for_are_forgotten() {
    let resolver = JwksResolver::default();
    let kept = JwksSource::Uri("http://a.example/keys".to_owned());
    let dropped = JwksSource::Uri("http://b.example/keys".to_owned());
    let epoch = resolver.begin();
    resolver.keys(&kept, DEFAULT_FETCH_TIMEOUT);
    resolver.keys(&dropped, DEFAULT_FETCH_TIMEOUT);
    resolver.finish(epoch);
    assert_eq!(resolver.lock().entries.len(), 2);
    let epoch = resolver.begin();
    resolver.keys(&kept, DEFAULT_FETCH_TIMEOUT);
    resolver.finish(epoch);
    let state = resolver.lock();
    assert!(state.entries.contains_key(&kept));
    assert!(!state.entries.contains_key(&dropped));
}
