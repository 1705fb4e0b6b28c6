//! Writes the seed corpora of the xDS fuzz targets (`fuzz/seeds/agent_xds`,
//! `fuzz/seeds/waypoint_xds`): the pushes this controller makes for the bookinfo example, one
//! `DeltaDiscoveryResponse` per resource type as it goes on the wire, and one removal.
//!
//! `cargo run -p controller --example fuzz_seeds` (from the repository root).

use std::path::{Path, PathBuf};

use controller::{index::ConfigIndex, loader, translate};
use prost::Message;
use weft_proto::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the controller lives in the workspace")
        .to_path_buf();
    let report = loader::load_paths(&[root.join("deploy/examples/bookinfo")]);
    anyhow::ensure!(report.errors.is_empty(), "{:?}", report.errors);
    let (index, rejections) = ConfigIndex::from_report(report, None);
    anyhow::ensure!(rejections.is_empty(), "{rejections:?}");
    let resources = translate::resources(&index, &translate::MeshSettings::default());
    let seeds = root.join("fuzz/seeds");
    for (type_url, resources) in resources {
        // Gateway credentials: none in bookinfo, and no fuzz target reads them.
        if type_url == weft_proto::SECRET_TYPE_URL {
            continue;
        }
        let target = if type_url == weft_proto::WAYPOINT_CONFIG_TYPE_URL {
            "waypoint_xds"
        } else {
            "agent_xds"
        };
        let kind = type_url
            .rsplit('.')
            .next()
            .unwrap_or("resource")
            .to_lowercase();
        let response = |resources: Vec<Resource>, removed: Vec<String>| DeltaDiscoveryResponse {
            system_version_info: "1".into(),
            resources,
            type_url: type_url.clone(),
            removed_resources: removed,
            nonce: "1".into(),
            ..Default::default()
        };
        let pushed: Vec<Resource> = resources
            .iter()
            .map(|stored| Resource {
                name: stored.name.to_string(),
                version: "1".into(),
                resource: Some(stored.body.clone()),
                ..Default::default()
            })
            .collect();
        let names = pushed.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        write(
            &seeds,
            target,
            &format!("{kind}-bookinfo"),
            &response(pushed, Vec::new()),
        )?;
        write(
            &seeds,
            target,
            &format!("{kind}-removed"),
            &response(Vec::new(), names),
        )?;
    }
    Ok(())
}

fn write(
    seeds: &Path,
    target: &str,
    name: &str,
    response: &DeltaDiscoveryResponse,
) -> anyhow::Result<()> {
    let dir = seeds.join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), response.encode_to_vec())?;
    println!("{}/{name}: {} bytes", dir.display(), response.encoded_len());
    Ok(())
}
