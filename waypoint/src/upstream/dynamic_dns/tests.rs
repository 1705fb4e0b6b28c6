use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use weft_proxy_core::dns::Answer;

use super::*;

#[test]
fn names_under_a_wildcard_are_matched_as_envoy_matches_wildcard_domains() {
    let cases = [
        ("*.example.com", "a.example.com", true),
        ("*.example.com", "a.b.example.com", true),
        ("*.example.com", "A.Example.COM", true),
        ("*.example.com", "a.example.com.", true),
        ("*.example.com", "example.com", false),
        ("*.example.com", ".example.com", false),
        ("*.example.com", "aexample.com", false),
        ("*.example.com", "a.example.org", false),
        ("*.example.com", "a.example.com.evil.org", false),
        ("example.com", "example.com", false),
        ("*.example.com", "", false),
    ];
    for (pattern, name, expected) in cases {
        assert_eq!(under_wildcard(pattern, name), expected, "{pattern} {name}");
    }
}

#[test]
fn authorities_split_into_host_and_port() {
    assert_eq!(host_and_port("a.example.com"), ("a.example.com", None));
    assert_eq!(
        host_and_port("a.example.com:8080"),
        ("a.example.com", Some(8080))
    );
    assert_eq!(
        host_and_port("[2001:db8::1]:443"),
        ("2001:db8::1", Some(443))
    );
    assert_eq!(host_and_port("[2001:db8::1]"), ("2001:db8::1", None));
    assert_eq!(host_and_port("2001:db8::1"), ("2001:db8::1", None));
}

/// A cache whose lookups answer `answer(name)`, counting them.
fn counting_cache(
    answer: impl Fn(&str) -> Result<Answer, String> + Send + Sync + 'static,
) -> (DynamicDnsCache, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&count);
    let answer = Arc::new(answer);
    let cache = DynamicDnsCache::new(Arc::new(move |name: String| {
        counted.fetch_add(1, Ordering::SeqCst);
        let answer = Arc::clone(&answer);
        Box::pin(async move {
            // A lookup takes time: concurrent requests find it pending.
            tokio::time::sleep(Duration::from_millis(10)).await;
            answer(&name)
        })
    }));
    (cache, count)
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
}

fn answer(addresses: Vec<IpAddr>, ttl: u64) -> Result<Answer, String> {
    Ok(Answer {
        addresses,
        ttl: Duration::from_secs(ttl),
    })
}

#[tokio::test(start_paused = true)]
async fn an_answer_is_kept_for_its_ttl_and_asked_again_after() {
    let (cache, lookups) = counting_cache(|name| match name {
        "a.example.com" => answer(vec![v4(1), v4(2)], 30),
        _ => answer(vec![v4(9)], 30),
    });
    assert_eq!(cache.resolve("a.example.com").await, Ok(v4(1)));
    assert_eq!(cache.resolve("A.example.com.").await, Ok(v4(1)));
    assert_eq!(lookups.load(Ordering::SeqCst), 1, "a hit asks nothing");
    assert_eq!(cache.resolve("b.example.com").await, Ok(v4(9)));
    assert_eq!(lookups.load(Ordering::SeqCst), 2);
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(cache.resolve("a.example.com").await, Ok(v4(1)));
    assert_eq!(
        lookups.load(Ordering::SeqCst),
        3,
        "an expired answer is asked again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_zero_ttl_is_kept_for_the_minimum_refresh() {
    let (cache, lookups) = counting_cache(|_| answer(vec![v4(1)], 0));
    cache.resolve("a.example.com").await.unwrap();
    tokio::time::advance(MIN_REFRESH - Duration::from_millis(100)).await;
    cache.resolve("a.example.com").await.unwrap();
    assert_eq!(lookups.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_millis(200)).await;
    cache.resolve("a.example.com").await.unwrap();
    assert_eq!(lookups.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_for_one_name_share_one_lookup() {
    let (cache, lookups) = counting_cache(|_| answer(vec![v4(1)], 30));
    let all = futures::future::join_all((0..20).map(|_| cache.resolve("a.example.com"))).await;
    assert!(all.iter().all(|r| *r == Ok(v4(1))), "{all:?}");
    assert_eq!(lookups.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failure_fails_closed_and_is_not_asked_again_at_once() {
    let (cache, lookups) = counting_cache(|_| Err("NXDOMAIN".to_owned()));
    let error = cache.resolve("gone.example.com").await.unwrap_err();
    assert!(
        matches!(&error, DnsError::Failed { reason, .. } if reason == "NXDOMAIN"),
        "{error:?}"
    );
    assert!(cache.resolve("gone.example.com").await.is_err());
    assert_eq!(lookups.load(Ordering::SeqCst), 1);
    tokio::time::advance(FAILURE_RETRY + Duration::from_millis(1)).await;
    assert!(cache.resolve("gone.example.com").await.is_err());
    assert_eq!(lookups.load(Ordering::SeqCst), 2);
    // An empty answer is a failure too.
    let (empty, _) = counting_cache(|_| answer(Vec::new(), 30));
    assert!(empty.resolve("empty.example.com").await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_last_good_addresses() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let (cache, _) = counting_cache(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            answer(vec![v4(1)], 10)
        } else {
            Err("SERVFAIL".to_owned())
        }
    });
    assert_eq!(cache.resolve("a.example.com").await, Ok(v4(1)));
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(cache.resolve("a.example.com").await, Ok(v4(1)));
}

#[tokio::test(start_paused = true)]
async fn names_beyond_the_bound_overflow_until_unused_ones_age_out() {
    let (cache, _) = counting_cache(|_| answer(vec![v4(1)], 3600));
    for i in 0..MAX_HOSTS {
        cache.resolve(&format!("h{i}.example.com")).await.unwrap();
    }
    assert_eq!(cache.len(), MAX_HOSTS);
    assert_eq!(
        cache.resolve("one-more.example.com").await,
        Err(DnsError::Overflow("one-more.example.com".to_owned()))
    );
    // A name already held is still served.
    assert_eq!(cache.resolve("h0.example.com").await, Ok(v4(1)));
    tokio::time::advance(HOST_TTL).await;
    assert_eq!(cache.resolve("one-more.example.com").await, Ok(v4(1)));
    assert!(cache.len() <= 2, "{}", cache.len());
}

#[tokio::test(start_paused = true)]
async fn addresses_per_name_are_bounded() {
    let (cache, _) = counting_cache(|_| answer((1..=50).map(v4).collect(), 30));
    cache.resolve("many.example.com").await.unwrap();
    let entries = cache.entries();
    let Some(Entry::Resolved { addresses, .. }) = entries.get("many.example.com") else {
        panic!("not resolved");
    };
    assert_eq!(addresses.len(), MAX_ADDRESSES);
}

#[tokio::test(start_paused = true)]
async fn what_is_no_dns_name_is_never_looked_up() {
    let (cache, lookups) = counting_cache(|_| answer(vec![v4(1)], 30));
    for name in [
        "",
        "a..example.com",
        "a b.example.com",
        "-a.example.com",
        "a_b.example.com",
    ] {
        assert!(
            matches!(cache.resolve(name).await, Err(DnsError::Failed { .. })),
            "{name:?}"
        );
    }
    let long = format!("{}.example.com", "a".repeat(64));
    assert!(cache.resolve(&long).await.is_err());
    assert_eq!(lookups.load(Ordering::SeqCst), 0);
}

/// A record under the wildcard cannot point the waypoint at itself or at a link-local service
/// (a cloud's metadata endpoint): such addresses are dropped, and a name with nothing else
/// fails closed.
#[tokio::test(start_paused = true)]
async fn answers_pointing_at_the_proxy_itself_or_link_local_are_refused() {
    let (cache, _) = counting_cache(|name| match name {
        "mixed.example.com" => answer(
            vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
                v4(7),
            ],
            30,
        ),
        "metadata.example.com" => answer(
            vec![
                IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
                "::1".parse().unwrap(),
                "::ffff:127.0.0.1".parse().unwrap(),
                "fe80::1".parse().unwrap(),
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ],
            30,
        ),
        _ => answer(vec![], 30),
    });
    assert_eq!(cache.resolve("mixed.example.com").await, Ok(v4(7)));
    assert!(matches!(
        cache.resolve("metadata.example.com").await,
        Err(DnsError::Failed { .. })
    ));
}
