//! The whole request bounded in time (`requestTimeout`) and size (`maxRequestBytes`) over
//! HTTP/1.1 and HTTP/2.

use super::*;

/// The app's count of the requests it read (`GET /control/requests`, through the gateway).
fn app_tally(mesh: &Mesh, shop_resolve: &str) -> serde_json::Value {
    let tally = mesh.curl_with(
        "outside",
        &[
            "--resolve",
            shop_resolve,
            "http://shop.example.com/control/requests",
        ],
    );
    assert_eq!(tally.status, 200, "{tally:?}");
    tally.json()
}

#[test]
fn the_whole_request_is_bounded_in_time_and_size_over_http1_and_http2() {
    // One MiB of body, two seconds for the whole request.
    const CAP: u64 = 1024 * 1024;
    let (mesh, gateway, gw) =
        mesh_with_limited_gateway(&format!("{{requestTimeout: 2s, maxRequestBytes: {CAP}}}"));
    let shop_resolve = format!("shop.example.com:80:{gw}");
    let post = |version: &str, extra: &[&str]| {
        let mut args = vec!["--resolve", shop_resolve.as_str(), version, "-X", "POST"];
        args.extend_from_slice(extra);
        args.push("http://shop.example.com/reviews");
        mesh.curl_with("outside", &args)
    };
    assert!(
        mesh.eventually(Duration::from_secs(15), || post("--http1.1", &[]).status
            == 200),
        "the gateway never served shop.example.com\n{}",
        mesh.logs()
    );
    // Over HTTP/1.1, curl; over HTTP/2, a client that sends the body piece by piece and reads
    // an early answer as one (curl 7.88 reports a stream the server ends early as a failure).
    let target = format!("{gw}:80");
    let upload = |version: &str, curl: &[&str], h2: &[&str]| {
        if version == "--http1.1" {
            return post(version, curl);
        }
        let mut args = vec![
            "h2-upload",
            "--target",
            target.as_str(),
            "--authority",
            "shop.example.com",
            "--path",
            "/reviews",
        ];
        args.extend_from_slice(h2);
        let answer = mesh.mesh_client("outside", &args);
        weft_e2e::curl::CurlResult {
            status: u16::try_from(answer["status"].as_u64().unwrap_or(0)).unwrap_or(0),
            body: answer["body"].as_str().unwrap_or_default().to_owned(),
            seconds: answer["ms"].as_f64().unwrap_or(0.0) / 1000.0,
        }
    };
    let body_file = |name: &str, bytes: u64| {
        let path = mesh.dir().join(name);
        std::fs::write(&path, vec![b'x'; usize::try_from(bytes).unwrap()]).unwrap();
        format!("@{}", path.display())
    };
    let within = body_file("within", CAP / 4);
    let trickled = body_file("trickled", CAP / 2);
    let over = body_file("over", 2 * CAP);
    let counted = |tally: &serde_json::Value| {
        (
            tally["completed"].as_u64().unwrap_or(u64::MAX),
            tally["broken"].as_u64().unwrap_or(u64::MAX),
        )
    };
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let before = counted(&app_tally(&mesh, &shop_resolve));

        // Within both limits: the app reads the whole body.
        let fits = post(version, &["--data-binary", &within]);
        assert_eq!(fits.status, 200, "{version}: {fits:?}");
        assert_eq!(fits.json()["body_bytes"], CAP / 4, "{version}: {fits:?}");

        // Headers, then a body trickling at 16 KiB/s (32 s for all of it): 408 at the
        // request timeout, and the app never gets the request whole.
        let slow = upload(
            version,
            &["--limit-rate", "16K", "--data-binary", &trickled],
            &[
                "--content-length",
                "524288",
                "--pieces",
                "32",
                "--interval-ms",
                "1000",
            ],
        );
        assert_eq!(slow.status, 408, "{version}: {slow:?}");
        assert_eq!(slow.body, "request timeout", "{version}: {slow:?}");
        assert!(
            (1.5..6.0).contains(&slow.seconds),
            "{version}: answered after {}s, not at the 2s timeout",
            slow.seconds
        );

        // A declared length over the cap: 413 before anything goes upstream.
        let declared = upload(
            version,
            &["--data-binary", &over],
            &["--content-length", "2097152", "--pieces", "1"],
        );
        assert_eq!(declared.status, 413, "{version}: {declared:?}");
        assert_eq!(
            declared.body, "Payload Too Large",
            "{version}: {declared:?}"
        );

        // A body of no declared length far over the cap (endless, over HTTP/1.1): cut at the
        // cap, 413.
        let endless = upload(
            version,
            &["-T", "/dev/zero"],
            &["--piece-bytes", "65536", "--pieces", "64"],
        );
        assert_eq!(endless.status, 413, "{version}: {endless:?}");

        // The app read one request whole (the one within the limits); the trickled and the
        // endless ones broke off, the declared one never came; none gave it more than the cap.
        let settled = || {
            let tally = app_tally(&mesh, &shop_resolve);
            (counted(&tally) == (before.0 + 1, before.1 + 2)).then_some(tally)
        };
        let mut tally = None;
        assert!(
            mesh.eventually(Duration::from_secs(10), || {
                tally = settled();
                tally.is_some()
            }),
            "{version}: the app's requests are not one whole and two broken off: {} (before: {before:?})",
            app_tally(&mesh, &shop_resolve)
        );
        let largest = tally.unwrap()["largest_body"].as_u64().unwrap();
        assert!(largest <= CAP, "{version}: the app got {largest} bytes");
    }

    // Counted and logged as Envoy's local replies: no response flag, Envoy's details.
    let metrics = mesh.waypoint_metrics(&gateway.pod);
    for code in ["408", "413"] {
        assert!(
            metrics.lines().any(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains(&format!("response_code=\"{code}\""))
                    && l.contains("response_flags=\"-\"")
            }),
            "no {code} counted:\n{metrics}"
        );
    }
    let log = mesh.log_of("gateway-ingress");
    assert!(log.contains(" 408 - request_overall_timeout "), "{log}");
    assert!(log.contains(" 413 - request_payload_too_large "), "{log}");

    drop(gateway);
}
