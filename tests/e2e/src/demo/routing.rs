//! `canary`, `header-routing` and `fault`: the reviews VirtualService and DestinationRule at the
//! waypoint, measured through productpage's replies (which version of reviews answered, what
//! ratings said, on which pooled connection each call went out).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use anyhow::{Context, bail};

use super::{CLIENT, Demo, examples::text, say, upstream};

/// Counts of the reviews version productpage got, over `answers`.
fn reviews_versions(answers: &[(u16, serde_json::Value)]) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for (status, reply) in answers {
        let version = match upstream(reply, "reviews") {
            Some(r) if *status == 200 && r["status"] == 200 => {
                r["version"].as_str().unwrap_or("?").to_string()
            }
            Some(r) => format!("failed ({})", r["status"]),
            None => format!("productpage failed ({status})"),
        };
        *counts.entry(version).or_insert(0) += 1;
    }
    counts
}

/// The split the canary moves to while productpage's connections are open.
const MOVED_SPLIT: (u64, u64) = (50, 50);

/// The examples' file holding the reviews VirtualService, and that file with the canary
/// route's weights set to `split` (the edit an operator makes to move a canary).
fn with_canary_split(demo: &Demo, split: (u64, u64)) -> anyhow::Result<(String, String)> {
    for (file, content) in &demo.files {
        let mut documents = crate::split_documents(content);
        let Some(index) = documents.iter().position(|d| {
            serde_yaml::from_str::<serde_yaml::Value>(d).is_ok_and(|v| {
                text(&v, &["kind"]).as_deref() == Some("VirtualService")
                    && text(&v, &["metadata", "name"]).as_deref() == Some("reviews")
            })
        }) else {
            continue;
        };
        let mut rule: serde_yaml::Value = serde_yaml::from_str(&documents[index])?;
        let canary = rule["spec"]["http"]
            .as_sequence_mut()
            .and_then(|routes| {
                routes
                    .iter_mut()
                    .find(|r| r["route"].as_sequence().is_some_and(|d| d.len() == 2))
            })
            .context("the reviews VirtualService has no route split between two destinations")?;
        for (destination, weight) in canary["route"]
            .as_sequence_mut()
            .into_iter()
            .flatten()
            .zip([split.0, split.1])
        {
            destination["weight"] = serde_yaml::Value::from(weight);
        }
        documents[index] = serde_yaml::to_string(&rule)?;
        return Ok((file.clone(), documents.join("---\n")));
    }
    bail!("the examples have no reviews VirtualService")
}

/// One phase of the canary: `count` pages through the client's open session, with the reviews
/// versions they got, the client's connection and productpage's connections to reviews.
fn canary_phase(
    session: &mut crate::session::Session,
    count: u32,
) -> (BTreeMap<String, u32>, String, BTreeSet<String>) {
    let answer = session.get("/productpage", &[], count);
    let pages: Vec<(u16, serde_json::Value)> = answer["answers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| (a["status"].as_u64().unwrap_or(0) as u16, a["body"].clone()))
        .collect();
    let pooled = pages
        .iter()
        .filter_map(|(_, reply)| {
            upstream(reply, "reviews")?["connection"]
                .as_str()
                .map(String::from)
        })
        .collect();
    (
        reviews_versions(&pages),
        answer["connection"].as_str().unwrap_or_default().to_owned(),
        pooled,
    )
}

pub fn canary(demo: &Demo) -> anyhow::Result<()> {
    const REQUESTS: u32 = 500;
    let (ip, port) = demo.services["productpage"];
    let mut session = demo.http_session(
        CLIENT,
        &format!("{ip}:{port}"),
        &format!("productpage:{port}"),
    )?;
    let share = |counts: &BTreeMap<String, u32>, v: &str| {
        f64::from(counts.get(v).copied().unwrap_or(0)) * 100.0 / f64::from(REQUESTS)
    };
    let show = |counts: &BTreeMap<String, u32>| {
        counts
            .iter()
            .map(|(v, n)| {
                format!(
                    "{v} {n} ({:.1}%)",
                    f64::from(*n) * 100.0 / f64::from(REQUESTS)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let started = Instant::now();
    let (before, client, pooled) = canary_phase(&mut session, REQUESTS);
    say(&format!(
        "{REQUESTS} requests client -> productpage -> reviews on one keep-alive connection ({client}) in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        show(&before)
    ));
    let (file, moved) = with_canary_split(demo, MOVED_SPLIT)?;
    let original = demo
        .files
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, text)| text.clone())
        .unwrap_or_default();
    demo.apply_at_waypoint(&file, &moved, "the canary's new weights")?;
    say(&format!(
        "{file}: reviews canary moved to {}/{} while the connections stay open (waypoint applied it)",
        MOVED_SPLIT.0, MOVED_SPLIT.1
    ));
    let (after, client_after, pooled_after) = canary_phase(&mut session, REQUESTS);
    say(&format!(
        "the same {REQUESTS} requests again: {}",
        show(&after)
    ));
    say(&format!(
        "client connection {client_after}; productpage -> reviews on {} (before: {})",
        pooled_after.iter().cloned().collect::<Vec<_>>().join(", "),
        pooled.iter().cloned().collect::<Vec<_>>().join(", ")
    ));
    demo.apply_at_waypoint(&file, &original, "the canary's original weights")?;
    for counts in [&before, &after] {
        let served =
            counts.get("v1").copied().unwrap_or(0) + counts.get("v2").copied().unwrap_or(0);
        anyhow::ensure!(
            served == REQUESTS,
            "not every request was served by v1 or v2: {counts:?}"
        );
    }
    // 90/10 over 500 requests: v2 within about four standard deviations of 10%; 50/50 within
    // about four of 50%.
    anyhow::ensure!(
        (4.5..=15.5).contains(&share(&before, "v2")),
        "v2 got {:.1}%, not about 10%",
        share(&before, "v2")
    );
    anyhow::ensure!(
        (41.0..=59.0).contains(&share(&after, "v2")),
        "after the change v2 got {:.1}% on the open connections, not about {}%",
        share(&after, "v2"),
        MOVED_SPLIT.1
    );
    anyhow::ensure!(
        client_after == client,
        "the client's connection was replaced ({client} -> {client_after})"
    );
    anyhow::ensure!(
        pooled_after.is_subset(&pooled),
        "productpage opened new connections to reviews instead of using its open ones"
    );
    Ok(())
}

pub fn header_routing(demo: &Demo) -> anyhow::Result<()> {
    const REQUESTS: u32 = 20;
    let jason = reviews_versions(&demo.productpage(REQUESTS, &["-H", "end-user: jason"])?);
    let others = reviews_versions(&demo.productpage(REQUESTS, &["-H", "end-user: alice"])?);
    say(&format!("end-user: jason -> reviews {jason:?}"));
    say(&format!("end-user: alice -> reviews {others:?}"));
    anyhow::ensure!(
        jason.get("v3") == Some(&REQUESTS),
        "jason was not always routed to v3"
    );
    anyhow::ensure!(!others.contains_key("v3"), "alice reached v3");
    Ok(())
}

/// The ratings status as reviews reported it (reviews v1 does not call ratings).
fn ratings_statuses(answers: &[(u16, serde_json::Value)]) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for (_, reply) in answers {
        let key = match upstream(reply, "reviews").and_then(|r| r["upstreams"].as_array()) {
            Some(calls) => calls
                .iter()
                .find(|c| c["name"] == "ratings")
                .map_or("no ratings call".to_string(), |c| {
                    format!("HTTP {}", c["status"])
                }),
            None => "no ratings call".to_string(),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

pub fn fault(demo: &Demo) -> anyhow::Result<()> {
    const REQUESTS: u32 = 20;
    let jason = demo.productpage(REQUESTS, &["-H", "end-user: jason"])?;
    let alice = demo.productpage(REQUESTS, &["-H", "end-user: alice"])?;
    let jason_ratings = ratings_statuses(&jason);
    let alice_ratings = ratings_statuses(&alice);
    let aborted_body = jason
        .iter()
        .filter_map(|(_, r)| {
            upstream(r, "reviews")?["upstreams"]
                .as_array()?
                .first()
                .cloned()
        })
        .find_map(|c| c["error"].as_str().map(String::from))
        .unwrap_or_default();
    say(&format!(
        "jason: reviews -> ratings {jason_ratings:?}  (the waypoint answered {aborted_body:?})"
    ));
    say(&format!("alice: reviews -> ratings {alice_ratings:?}"));
    let productpage_ok = jason.iter().all(|(s, _)| *s == 200);
    say(&format!(
        "productpage still answered every request: {}",
        if productpage_ok { "yes" } else { "no" }
    ));
    anyhow::ensure!(
        jason_ratings.get("HTTP 500") == Some(&REQUESTS),
        "jason's calls to ratings were not all aborted with 500"
    );
    anyhow::ensure!(
        !alice_ratings.contains_key("HTTP 500"),
        "alice's calls were aborted too"
    );
    anyhow::ensure!(productpage_ok, "the fault spread beyond the ratings call");
    Ok(())
}
