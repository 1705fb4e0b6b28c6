//! `deny`: the waypoint's L7 policy and the ALLOW policy on reviews, through the client's calls.

use super::{CLIENT, Demo, say, upstream};

pub fn deny(demo: &Demo) -> anyhow::Result<()> {
    let admin = demo.curl_with(CLIENT, &[&demo.url("productpage", "/admin")]);
    say(&format!(
        "client -> productpage /admin: HTTP {} {:?}   (DENY productpage-deny-admin, at the waypoint)",
        admin.status,
        admin.body.trim()
    ));
    let page = demo.curl_with(CLIENT, &[&demo.url("productpage", "/productpage")]);
    say(&format!(
        "client -> productpage /productpage: HTTP {}",
        page.status
    ));
    let reviews = demo.curl_with(CLIENT, &[&demo.url("reviews", "/reviews/0")]);
    say(&format!(
        "client -> reviews directly: HTTP {} {:?}   (ALLOW reviews-viewer admits only productpage)",
        reviews.status,
        reviews.body.trim()
    ));
    let via_productpage = upstream(&page.json(), "reviews").map(|r| r["status"].clone());
    say(&format!(
        "productpage -> reviews: HTTP {}",
        via_productpage.clone().unwrap_or(serde_json::Value::Null)
    ));
    anyhow::ensure!(admin.status == 403, "/admin was not denied");
    anyhow::ensure!(page.status == 200, "/productpage was refused");
    anyhow::ensure!(reviews.status == 403, "the client reached reviews");
    anyhow::ensure!(
        via_productpage == Some(serde_json::json!(200)),
        "productpage could not call reviews"
    );
    Ok(())
}
