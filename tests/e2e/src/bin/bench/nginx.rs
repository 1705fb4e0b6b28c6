//! nginx as the L7 proxy the waypoint and the ingress gateway are held against: the same routes
//! (for the waypoint a header match and a weighted split over two backends, [`config`]; for the
//! gateway [`super::ingress`]'s TLS server), keep-alive on both sides, an access-log line per
//! request, running in a pod of its own.
//!
//! Its configuration, pid file, logs and temporary directories live in the mesh's run directory;
//! it listens only on its pod's address, inside the pod's network namespace.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use weft_e2e::Mesh;

/// The port nginx listens on in its pod (the sample app's, so that Services look alike).
pub const PORT: u16 = 8080;

/// What nginx is told to do.
pub struct NginxRoutes {
    /// Worker processes: the same number as the waypoint's worker threads.
    pub workers: usize,
    /// The backend of subset v1 and of subset v2 (`ip:port`).
    pub v1: String,
    pub v2: String,
    /// Requests with `end-user: <this>` go to v2; the rest are split by `v1_percent`.
    pub header_user: &'static str,
    pub v1_percent: u32,
}

/// nginx.conf for `routes`, listening on `listen`, with every path under `dir`.
///
/// What it shares with the waypoint's route: `end-user: jason` to v2, the rest split at random
/// per request (`split_clients` over nginx's random `$request_id`, as Envoy draws a random
/// number per request). The rest is [`proxy_config`]'s.
pub fn config(routes: &NginxRoutes, listen: Ipv4Addr, dir: &Path) -> String {
    let http = format!(
        r#"    split_clients "${{request_id}}" $split {{
        {v1_percent}% v1;
        * v2;
    }}
    map $http_end_user $backend {{
        {user} v2;
        default $split;
    }}
    server {{
        listen {listen}:{PORT};
        location / {{
{proxy}
        }}
    }}
"#,
        v1_percent = routes.v1_percent,
        user = routes.header_user,
        proxy = proxy_to("$backend"),
    );
    proxy_config(
        routes.workers,
        &[("v1", &routes.v1), ("v2", &routes.v2)],
        &http,
        dir,
    )
}

/// A whole nginx.conf: `workers` worker processes, the `upstreams` (name, `ip:port`) and the
/// `http` block's own directives (servers, maps), every path under `dir`.
///
/// What every proxying configuration here shares with the waypoint: HTTP/1.1 to the backends
/// over kept-alive connections (`keepalive`, as the waypoint pools its upstream connections),
/// and the downstream connection kept for as many requests as the client sends (nginx closes
/// one after 1,000 by default; the waypoint never does). One access-log line per request, to a
/// file, as the waypoint writes one per request.
pub fn proxy_config(workers: usize, upstreams: &[(&str, &str)], http: &str, dir: &Path) -> String {
    let path = |name: &str| dir.join(name).display().to_string();
    let mut conf = String::new();
    let _ = write!(
        conf,
        r#"worker_processes {workers};
pid {pid};
error_log {error_log} warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log {access_log};
    client_body_temp_path {body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    map $http_x_request_id $forwarded_request_id {{
        "" $request_id;
        default $http_x_request_id;
    }}
"#,
        pid = path("nginx.pid"),
        error_log = path("nginx-error.log"),
        access_log = path("nginx-access.log"),
        body = path("nginx-body"),
        proxy = path("nginx-proxy"),
        fastcgi = path("nginx-fastcgi"),
        uwsgi = path("nginx-uwsgi"),
        scgi = path("nginx-scgi"),
    );
    for (name, server) in upstreams {
        let _ = write!(
            conf,
            r#"    upstream {name} {{
        server {server};
        keepalive 128;
        keepalive_requests 1000000000;
    }}
"#
        );
    }
    conf.push_str(http);
    conf.push_str("}\n");
    conf
}

/// The directives of a `location` that proxies to `upstream`, adding the headers the waypoint
/// adds: `x-forwarded-for` (appended), `x-forwarded-proto`, `x-request-id` when the request
/// has none; `Host` is passed on as it came.
pub fn proxy_to(upstream: &str) -> String {
    format!(
        r#"            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-Id $forwarded_request_id;"#
    )
}

/// nginx running in a pod; stopped (SIGTERM to the master, which stops its workers) on drop.
pub struct Nginx {
    master: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Writes the configuration `config` gives for the pod's address and a directory of the
    /// mesh's run directory, starts nginx in `pod` and waits until it accepts connections on
    /// `port`.
    pub fn start(
        mesh: &Mesh,
        pod: &str,
        port: u16,
        config: impl FnOnce(Ipv4Addr, &Path) -> String,
    ) -> anyhow::Result<Self> {
        let dir = mesh.dir().join("nginx");
        std::fs::create_dir_all(&dir)?;
        let ip = mesh.pod(pod).ip;
        let file = dir.join("nginx.conf");
        std::fs::write(&file, config(ip, &dir))?;
        let master = mesh
            .testbed
            .pod_command(pod, "nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .arg("-c")
            .arg(&file)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (installed by `cargo xtask setup`)")?;
        let mut nginx = Self { master, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = nginx.master.try_wait()? {
                anyhow::bail!(
                    "nginx exited ({status}): {}",
                    std::fs::read_to_string(nginx.dir.join("nginx-error.log")).unwrap_or_default()
                );
            }
            let up = mesh
                .testbed
                .pod_command(pod, "bash")
                .args(["-c", &format!("exec 3<>/dev/tcp/{ip}/{port}")])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if up {
                return Ok(nginx);
            }
            anyhow::ensure!(Instant::now() < deadline, "nginx not listening after 10 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The testbed kills whatever is left in the pod's cgroup when it goes.
        weft_e2e::terminate(&mut self.master);
    }
}
