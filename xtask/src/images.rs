//! `cargo xtask images [--debug]`: OCI image archives of the mesh's components, built from
//! scratch (nothing can be pulled on these machines) with umoci: each image is one layer holding
//! the binaries in `/usr/local/bin` and exactly the shared libraries `ldd` lists for them, at
//! the paths the binaries look for them. The archives (`target/images/<profile>/<name>.tar`, an
//! OCI image layout whose `org.opencontainers.image.ref.name` is the full reference) load with
//! `ctr images import` and `kind load image-archive` under the tags the chart uses.
//! `images.json` beside them lists each image's reference and archive.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

use crate::{build_ebpf, cargo, run_command, setup, step, workspace_root};

/// One image: the binaries it carries and the one it runs.
pub struct ImageSpec {
    /// Short name: the archive's file name and the repository's last component.
    pub name: &'static str,
    pub binaries: &'static [&'static str],
    pub entrypoint: &'static str,
}

/// Every image, with the packages that build its binaries.
pub const IMAGES: [ImageSpec; 5] = [
    ImageSpec {
        name: "controller",
        binaries: &["controller"],
        entrypoint: "controller",
    },
    // The node agent and the node's CNI side (the DaemonSet's install-cni container runs
    // weft-cni-node, which copies weft-cni onto the node).
    ImageSpec {
        name: "node-agent",
        binaries: &["node-agent", "weft-cni", "weft-cni-node"],
        entrypoint: "node-agent",
    },
    ImageSpec {
        name: "waypoint",
        binaries: &["waypoint"],
        entrypoint: "waypoint",
    },
    ImageSpec {
        name: "sample-app",
        binaries: &["sample-app"],
        entrypoint: "sample-app",
    },
    // The pod sandbox's image (the kubelet's pause).
    ImageSpec {
        name: "pause",
        binaries: &["pause"],
        entrypoint: "pause",
    },
];

/// The packages whose binaries the images carry.
const PACKAGES: [&str; 6] = [
    "controller",
    "node-agent",
    "weft-cni",
    "waypoint",
    "weft-sample-app",
    "weft-pause",
];

/// `cargo xtask images`: builds the binaries, then the archives.
pub fn run(release: bool) -> anyhow::Result<()> {
    setup::ensure()?;
    build_ebpf::run(true)?;
    step(if release {
        "images: building release binaries"
    } else {
        "images: building debug binaries"
    });
    let mut build = cargo();
    build.arg("build");
    if release {
        build.arg("--release");
    }
    for package in PACKAGES {
        build.args(["-p", package]);
    }
    run_command(&mut build)?;
    let dir = package(release)?;
    eprintln!("    archives in {}", dir.display());
    Ok(())
}

/// The references of the images: the chart's, and for the images it does not name the same
/// registry and version as the node agent's.
pub fn references() -> anyhow::Result<BTreeMap<&'static str, String>> {
    let text = std::fs::read_to_string(workspace_root().join("deploy/charts/weft/values.yaml"))?;
    let values: serde_yaml::Value = serde_yaml::from_str(&text).context("values.yaml")?;
    let image = |component: &str| -> anyhow::Result<String> {
        values[component]["image"]
            .as_str()
            .map(String::from)
            .with_context(|| format!("values.yaml has no {component}.image"))
    };
    let agent = image("nodeAgent")?;
    let (repository, tag) = agent
        .rsplit_once(':')
        .context("nodeAgent.image has no tag")?;
    let registry = repository
        .rsplit_once('/')
        .map_or("", |(registry, _)| registry);
    let mut references = BTreeMap::new();
    for spec in &IMAGES {
        let reference = match spec.name {
            "controller" => image("controller")?,
            "node-agent" => agent.clone(),
            other => format!("{registry}/{other}:{tag}"),
        };
        references.insert(spec.name, reference);
    }
    Ok(references)
}

/// Packages the images from the binaries already built for the profile; returns the directory
/// of the archives. Skips an archive whose binaries did not change since it was made.
pub fn package(release: bool) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let profile = if release { "release" } else { "debug" };
    let bin_dir = root.join("target").join(profile);
    let out = root.join("target/images").join(profile);
    std::fs::create_dir_all(&out)?;
    let references = references()?;
    let mut listing = serde_json::Map::new();
    for spec in &IMAGES {
        let reference = &references[spec.name];
        let archive = out.join(format!("{}.tar", spec.name));
        let binaries: Vec<PathBuf> = spec.binaries.iter().map(|b| bin_dir.join(b)).collect();
        if !up_to_date(&archive, &binaries)? {
            step(&format!("images: {reference}"));
            build_image(spec, reference, &binaries, &archive)?;
        }
        listing.insert(
            spec.name.into(),
            serde_json::json!({"reference": reference, "archive": archive}),
        );
    }
    std::fs::write(
        out.join("images.json"),
        serde_json::to_string_pretty(&listing)?,
    )?;
    Ok(out)
}

fn up_to_date(archive: &Path, binaries: &[PathBuf]) -> anyhow::Result<bool> {
    let Ok(made) = std::fs::metadata(archive).and_then(|m| m.modified()) else {
        return Ok(false);
    };
    for binary in binaries {
        let built = std::fs::metadata(binary)
            .and_then(|m| m.modified())
            .with_context(|| format!("{} is not built", binary.display()))?;
        if built > made {
            return Ok(false);
        }
    }
    Ok(true)
}

fn build_image(
    spec: &ImageSpec,
    reference: &str,
    binaries: &[PathBuf],
    archive: &Path,
) -> anyhow::Result<()> {
    let work = archive.with_extension("work");
    let _ = std::fs::remove_dir_all(&work);
    let rootfs = work.join("rootfs");
    let layout = work.join("layout");
    std::fs::create_dir_all(rootfs.join("usr/local/bin"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let tmp = rootfs.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))?;
    }
    for binary in binaries {
        let name = binary.file_name().context("binary without a name")?;
        std::fs::copy(binary, rootfs.join("usr/local/bin").join(name))
            .with_context(|| format!("copying {}", binary.display()))?;
        for library in shared_libraries(binary)? {
            let target = rootfs.join(library.strip_prefix("/")?);
            std::fs::create_dir_all(target.parent().context("library at the root")?)?;
            // The file itself, not a link to it: the image has no other copy.
            std::fs::copy(&library, &target)
                .with_context(|| format!("copying {}", library.display()))?;
        }
    }
    let image = format!("{}:build", layout.display());
    let umoci = |args: &[&str]| -> anyhow::Result<()> {
        run_command(
            Command::new("umoci")
                .args(args)
                .stdout(std::process::Stdio::null()),
        )
    };
    umoci(&["init", "--layout", &layout.to_string_lossy()])?;
    umoci(&["new", "--image", &image])?;
    umoci(&["insert", "--image", &image, &rootfs.to_string_lossy(), "/"])?;
    let entrypoint = format!("/usr/local/bin/{}", spec.entrypoint);
    umoci(&[
        "config",
        "--image",
        &image,
        "--architecture",
        "amd64",
        "--os",
        "linux",
        "--config.entrypoint",
        &entrypoint,
        "--config.env",
        "PATH=/usr/local/bin",
        "--config.workingdir",
        "/",
        "--history.created_by",
        "cargo xtask images",
    ])?;
    umoci(&["tag", "--image", &image, reference])?;
    umoci(&["rm", "--image", &image])?;
    umoci(&["gc", "--layout", &layout.to_string_lossy()])?;
    let partial = archive.with_extension("tar.partial");
    run_command(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-cf",
            ])
            .arg(&partial)
            .arg("."),
    )?;
    std::fs::rename(&partial, archive)?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// The shared libraries (and the dynamic loader) `binary` needs, as `ldd` resolves them.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // A static binary needs nothing.
        anyhow::ensure!(
            text.contains("not a dynamic executable")
                || String::from_utf8_lossy(&output.stderr).contains("not a dynamic executable"),
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        return Ok(Vec::new());
    }
    parse_ldd(&text)
}

/// Library paths of `ldd` output: `name => /path (0x...)` and `/path (0x...)` lines; the vDSO has
/// no file. A library `ldd` cannot find is an error: the image would not start.
fn parse_ldd(text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        anyhow::ensure!(!line.contains("not found"), "ldd: {line}");
        let path = match line.split_once("=>") {
            Some((_, resolved)) => resolved.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_names_the_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        let error = parse_ldd("\tlibfoo.so => not found\n").unwrap_err();
        assert!(
            error.to_string().contains("libfoo.so => not found"),
            "{error}"
        );
    }

    #[test]
    fn references_follow_the_chart() {
        let references = references().unwrap();
        assert_eq!(
            references["node-agent"],
            "ghcr.io/weft-mesh/node-agent:0.1.0"
        );
        assert_eq!(
            references["controller"],
            "ghcr.io/weft-mesh/controller:0.1.0"
        );
        assert_eq!(references["pause"], "ghcr.io/weft-mesh/pause:0.1.0");
    }
}
