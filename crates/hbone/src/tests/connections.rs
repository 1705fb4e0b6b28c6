//! Connection lifetimes: the client pool's reuse, growth, idling and recovery, and the server's
//! drain and per-connection tunnel bound.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_recovers_after_server_closes_connection() -> Result<()> {
    bounded(async {
        let echo = start_echo().await?;
        let h = harness(Arc::new(ForwardingHandler::default())).await?;
        let pool = h.pool();
        let key = h.key();
        let round_trip = |tag: &'static [u8]| {
            let pool = pool.clone();
            async move {
                let mut tunnel = pool.connect(&key, &ConnectRequest::new(echo)).await?;
                tunnel.write_all(tag).await?;
                tunnel.shutdown().await?;
                let mut back = Vec::new();
                tunnel.read_to_end(&mut back).await?;
                anyhow::ensure!(back == tag, "echo mismatch");
                anyhow::Ok(())
            }
        };
        round_trip(b"before").await?;
        assert_eq!(h.server.accepted.load(Ordering::SeqCst), 1);

        // Reconnect right away, whether or not the pool has noticed the close yet: both the
        // dead-connection pruning and the retry-on-connection-failure path get exercised.
        for round in 1..=3 {
            h.server.kill_connections(1).await;
            round_trip(b"after").await?;
            round_trip(b"again").await?;
            assert_eq!(h.server.accepted.load(Ordering::SeqCst), 1 + round);
        }
        assert_eq!(
            pool.connection_count(&key),
            1,
            "the dead connection must be dropped"
        );
        Ok(())
    })
    .await
}

/// A draining server tells each connection to go away, but only with its first tunnel: every
/// tunnel the pool opens is carried, each on a new connection once the last one's GOAWAY came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_carries_the_first_tunnel_of_each_new_connection() -> Result<()> {
    bounded(async {
        const TUNNELS: usize = 30;
        let echo = start_echo().await?;
        let pki = test_pki()?;
        let server =
            TestServer::start_draining(Arc::new(ForwardingHandler::default()), server_tls(&pki)?)
                .await?;
        let h = Harness {
            server,
            client_tls: client_tls(&pki)?,
        };
        let pool = h.pool();
        let key = h.key();
        for round in 0..TUNNELS {
            let mut tunnel = pool
                .connect(&key, &ConnectRequest::new(echo))
                .await
                .with_context(|| format!("tunnel {round}"))?;
            tunnel.write_all(b"draining").await?;
            tunnel.shutdown().await?;
            let mut back = Vec::new();
            tunnel.read_to_end(&mut back).await?;
            anyhow::ensure!(back == b"draining", "echo mismatch");
        }
        assert!(
            h.server.accepted.load(Ordering::SeqCst) > 1,
            "the connections were never told to go away"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_opens_another_connection_when_one_is_full() -> Result<()> {
    bounded(async {
        const TUNNELS: usize = 10;
        const STREAMS_PER_CONNECTION: u32 = 4;
        let echo = start_echo().await?;
        let h = harness(Arc::new(ForwardingHandler::default())).await?;
        let pool = h.pool_with(PoolConfig {
            h2: H2Config {
                max_concurrent_streams: STREAMS_PER_CONNECTION,
                ..H2Config::default()
            },
            ..PoolConfig::default()
        });
        let key = h.key();
        let all_open = Arc::new(tokio::sync::Barrier::new(TUNNELS));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..TUNNELS {
            let (pool, all_open) = (pool.clone(), Arc::clone(&all_open));
            tasks.spawn(async move {
                let mut tunnel = pool.connect(&key, &ConnectRequest::new(echo)).await?;
                all_open.wait().await;
                let data = pattern(100 + i as u64, 4096);
                tunnel.write_all(&data).await?;
                tunnel.shutdown().await?;
                let mut back = Vec::new();
                tunnel.read_to_end(&mut back).await?;
                anyhow::ensure!(back == data, "tunnel {i} echo mismatch");
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        // Ten tunnels open at once, four per connection: three connections, no more.
        assert_eq!(h.server.accepted.load(Ordering::SeqCst), 3);
        assert_eq!(pool.connection_count(&key), 3);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_closes_idle_connections() -> Result<()> {
    bounded(async {
        let echo = start_echo().await?;
        let h = harness(Arc::new(ForwardingHandler::default())).await?;
        let pool = h.pool_with(PoolConfig {
            idle_timeout: Duration::from_millis(100),
            ..PoolConfig::default()
        });
        let key = h.key();
        let mut tunnel = pool.connect(&key, &ConnectRequest::new(echo)).await?;
        tunnel.write_all(b"ping").await?;
        tunnel.shutdown().await?;
        let mut back = Vec::new();
        tunnel.read_to_end(&mut back).await?;
        assert_eq!(back, b"ping");
        // While a tunnel is open the connection is not idle, however long it lasts: the time
        // under test, several idle timeouts (100 ms) with the tunnel open.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(pool.connection_count(&key), 1);
        drop(tunnel);

        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            h.server.connection_ended.lock().await.recv().await
        })
        .await;
        assert!(
            matches!(ended, Ok(Some(()))),
            "the server must see the idle connection close"
        );
        assert_eq!(pool.connection_count(&key), 0);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_gives_up_on_a_silent_peer() -> Result<()> {
    bounded(async {
        // Accepts TCP but never speaks TLS.
        let silent = TcpListener::bind((LOCALHOST, 0)).await?;
        let silent_addr = silent.local_addr()?;
        let held = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((tcp, _)) = silent.accept().await {
                sockets.push(tcp);
            }
        });
        let pki = test_pki()?;
        let tls = client_tls(&pki)?;
        let connector = move |key: &SocketAddr| dial(*key, Arc::clone(&tls));
        let pool = Pool::new(
            connector,
            PoolConfig {
                connect_timeout: Duration::from_millis(200),
                ..PoolConfig::default()
            },
        );
        let error = pool
            .connect(&silent_addr, &ConnectRequest::new(silent_addr))
            .await
            .expect_err("a peer that never answers must not yield a tunnel");
        assert!(matches!(error, ClientError::ConnectTimeout(_)), "{error}");
        assert_eq!(pool.connection_count(&silent_addr), 0);
        held.abort();
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_bounds_concurrent_tunnels_per_connection() -> Result<()> {
    bounded(async {
        let echo = start_echo().await?;
        let handler = Arc::new(ForwardingHandler::default());
        let server_config = H2Config {
            max_concurrent_streams: 2,
            ..H2Config::default()
        };
        let h = harness_with(Arc::clone(&handler), server_config).await?;
        let mut sender = h.raw_h2().await?;
        let connect_request = || {
            let mut request = Request::new(());
            *request.method_mut() = Method::CONNECT;
            *request.uri_mut() = echo.to_string().parse().expect("ip:port is a valid uri");
            request
        };
        let mut open = Vec::new();
        for _ in 0..2 {
            let (response, send) = sender.send_request(connect_request(), false)?;
            let response = response.await?;
            assert_eq!(response.status(), StatusCode::OK);
            open.push((send, response.into_body()));
            sender = sender.ready().await?;
        }
        // A third stream stays queued while two tunnels are open...
        let (third, _third_send) = sender.send_request(connect_request(), false)?;
        let mut third = Box::pin(third);
        let early = tokio::time::timeout(Duration::from_millis(300), &mut third).await;
        assert!(early.is_err(), "third tunnel must wait for a free stream");
        assert_eq!(handler.calls.load(Ordering::SeqCst), 2);
        // ...and is served as soon as one closes.
        let (mut send, _recv) = open.remove(0);
        send.send_reset(h2::Reason::CANCEL);
        let response = third.await?;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(handler.calls.load(Ordering::SeqCst), 3);
        Ok(())
    })
    .await
}
