//! `ingress`: a client outside the mesh and the cluster (a namespace that is not enrolled)
//! reaches bookinfo through the ingress gateway (Istio `Gateway` bookinfo-gateway): HTTPS with
//! the certificate of the credential `bookinfo-cert` (a Secret's keys as files), verified
//! against the CA that signed it; plain HTTP redirected to HTTPS; the reviews canary and
//! jason's header route applied to the pages it gets; and TLS for another host passed through
//! to the in-mesh TLS server untouched (the client verifies that server's own certificate).

use std::{collections::BTreeMap, time::Duration};

use super::{
    Demo,
    edge::{INGRESS_HOST, PASSTHROUGH_HOST},
    eventually,
    examples::OUTSIDE,
    say, upstream,
};
use crate::curl;

/// The reviews versions productpage got, over `answers` (HTTP status, body).
fn reviews_versions(answers: &[(u16, String)]) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for (status, body) in answers {
        let reply: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let version = match upstream(&reply, "reviews") {
            Some(r) if *status == 200 && r["status"] == 200 => {
                r["version"].as_str().unwrap_or("?").to_string()
            }
            _ => format!("failed ({status})"),
        };
        *counts.entry(version).or_insert(0) += 1;
    }
    counts
}

pub fn ingress(demo: &Demo) -> anyhow::Result<()> {
    const PAGES: u32 = 100;
    const JASON: u32 = 20;
    let edge = demo.cluster.edge();
    let gateway = demo.cluster.pod_ip(&edge.ingress);
    let outside = || demo.cluster.pod_command(OUTSIDE, "curl");
    let ca = edge.ingress_ca.display().to_string();
    let https_resolve = format!("{INGRESS_HOST}:443:{gateway}");
    let page = format!("https://{INGRESS_HOST}/productpage");
    let https = |extra: &[&str]| {
        let mut args = vec!["--cacert", &ca, "--resolve", &https_resolve];
        args.extend_from_slice(extra);
        args.push(&page);
        curl::with(outside(), &args)
    };
    let served = eventually(Duration::from_secs(15), || https(&[]).status == 200);
    let first = https(&[]);
    say(&format!(
        "{OUTSIDE} (not in the mesh) -> {page} at the ingress gateway {} ({gateway}): HTTP {}, its certificate verified against the CA of credential bookinfo-cert",
        edge.ingress, first.status
    ));
    anyhow::ensure!(
        served,
        "HTTPS through the ingress gateway failed: {first:?}"
    );

    let http_resolve = format!("{INGRESS_HOST}:80:{gateway}");
    let http_page = format!("http://{INGRESS_HOST}/productpage");
    let redirect = curl::with(
        outside(),
        &[
            "--resolve",
            &http_resolve,
            "-D",
            "-",
            "-o",
            "/dev/null",
            &http_page,
        ],
    );
    let location = redirect
        .body
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("location:")
                .then(|| l[9..].trim().to_string())
        })
        .unwrap_or_default();
    say(&format!(
        "{http_page}: HTTP {} to {location:?} (httpsRedirect)",
        redirect.status
    ));
    anyhow::ensure!(
        redirect.status == 301 && location == page,
        "plain HTTP was not redirected to {page}"
    );

    let base = ["--cacert", ca.as_str(), "--resolve", https_resolve.as_str()];
    let everyone = reviews_versions(&curl::bodies(outside(), &page, PAGES, &base)?);
    let mut jason_args = base.to_vec();
    jason_args.extend(["-H", "end-user: jason"]);
    let jason = reviews_versions(&curl::bodies(outside(), &page, JASON, &jason_args)?);
    say(&format!(
        "{PAGES} pages over HTTPS from outside: reviews {everyone:?} (the 90/10 canary)"
    ));
    say(&format!(
        "{JASON} pages with end-user: jason: reviews {jason:?} (jason's route)"
    ));
    let served =
        everyone.get("v1").copied().unwrap_or(0) + everyone.get("v2").copied().unwrap_or(0);
    anyhow::ensure!(
        served == PAGES && everyone.get("v2").copied().unwrap_or(0) >= 1,
        "the canary did not apply from the edge: {everyone:?}"
    );
    anyhow::ensure!(
        jason.get("v3") == Some(&JASON),
        "jason's route did not apply from the edge: {jason:?}"
    );

    let secure_resolve = format!("{PASSTHROUGH_HOST}:443:{gateway}");
    let secure = format!("https://{PASSTHROUGH_HOST}/");
    let passthrough_ca = edge.passthrough_ca.display().to_string();
    let passed = curl::with(
        outside(),
        &[
            "--cacert",
            &passthrough_ca,
            "--resolve",
            &secure_resolve,
            &secure,
        ],
    );
    let with_gateway_ca = curl::with(
        outside(),
        &["--cacert", &ca, "--resolve", &secure_resolve, &secure],
    );
    say(&format!(
        "{secure} (PASSTHROUGH): HTTP {} verified against the in-mesh server's own CA; against the gateway's CA: {}",
        passed.status,
        if with_gateway_ca.status == 0 {
            "refused (the gateway did not terminate it)"
        } else {
            "accepted"
        }
    ));
    anyhow::ensure!(
        passed.status == 200 && passed.body.contains("s_server"),
        "TLS was not passed through to the in-mesh server: {passed:?}"
    );
    anyhow::ensure!(
        with_gateway_ca.status == 0,
        "the passthrough host presented the gateway's certificate"
    );
    Ok(())
}
