//! Traffic through the mesh, as tests send it: `curl` from inside pods (one request, many in
//! one process, with extra arguments) and from nodes, `mesh-client` runs inside pods, bulk TCP
//! with iperf3, and polling until a check holds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::*;

impl Mesh {
    /// Bulk TCP throughput from `client` to an `iperf3 -s` at `server_ip`, in Gbit/s (iperf3
    /// inside the pod, `seconds` long; retried twice while the server is busy with a previous test).
    pub fn iperf(
        &self,
        client: &str,
        server_ip: std::net::Ipv4Addr,
        seconds: u32,
    ) -> anyhow::Result<f64> {
        // The server runs one test at a time and may still be closing the previous one.
        let mut last = String::new();
        for _ in 0..3 {
            let output = self
                .testbed
                .pod_command(client, "iperf3")
                .args([
                    "-c",
                    &server_ip.to_string(),
                    "-t",
                    &seconds.to_string(),
                    "-J",
                ])
                .output()?;
            let report: serde_json::Value =
                serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
            if let Some(bps) = report["end"]["sum_received"]["bits_per_second"].as_f64() {
                return Ok(bps / 1e9);
            }
            last = format!(
                "{} {}",
                report["error"],
                String::from_utf8_lossy(&output.stderr)
            );
            // Only a busy server is worth another try; any other error is the result.
            if !last.contains("busy") {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        anyhow::bail!("iperf3 reported no throughput: {last}")
    }

    /// `curl` from inside `pod` with extra arguments (headers, methods, `--http2-prior-knowledge`,
    /// ...), the URL last: status, body and total time. Bounded by `--max-time 10`.
    pub fn curl_with(&self, pod: &str, args: &[&str]) -> CurlResult {
        curl::with(self.testbed.pod_command(pod, "curl"), args)
    }

    /// `count` requests from `pod` in one `curl` process (one keep-alive connection, URL
    /// globbing), each reporting `write_out` on its own line; extra `args` go before the URL.
    /// `url` must not contain curl's glob characters.
    pub fn curl_many(
        &self,
        pod: &str,
        url: &str,
        count: u32,
        write_out: &str,
        args: &[&str],
    ) -> anyhow::Result<Vec<String>> {
        curl::many(
            self.testbed.pod_command(pod, "curl"),
            url,
            count,
            write_out,
            args,
        )
    }

    /// `count` requests from the `client` pod to `url` in one `curl` process, like
    /// [`Mesh::curl_many`], counted by their status and `x-weft-version` response header (the
    /// sample app's version): `"200 v1" -> 7`. Panics with the mesh's logs if curl fails.
    pub fn versions(&self, url: &str, count: u32, args: &[&str]) -> BTreeMap<String, u32> {
        let lines = self
            .curl_many(
                "client",
                url,
                count,
                "%{http_code} %header{x-weft-version}",
                args,
            )
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()));
        let mut seen = BTreeMap::new();
        for line in lines {
            *seen.entry(line).or_insert(0) += 1;
        }
        seen
    }

    /// `count` requests from `pod` in one `curl` process, like [`Mesh::curl_many`], returning
    /// each response's status and body (bodies must be one line, as the sample app's JSON is).
    pub fn curl_bodies(
        &self,
        pod: &str,
        url: &str,
        count: u32,
        args: &[&str],
    ) -> anyhow::Result<Vec<(u16, String)>> {
        curl::bodies(self.testbed.pod_command(pod, "curl"), url, count, args)
    }

    /// Polls `check` for up to `timeout`; true once it held.
    pub fn eventually(&self, timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if check() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `curl` from inside `pod`: (HTTP status, body); status 0 when the connection failed.
    pub fn curl(&self, pod: &str, url: &str) -> (u16, String) {
        let output = self
            .testbed
            .pod_command(pod, "curl")
            .args(["-s", "--max-time", "5", "-w", "\n%{http_code}", url])
            .output()
            .expect("run curl");
        split_status(&output.stdout)
    }

    /// `curl` from the node's namespace (metrics, readiness, config dump).
    pub fn node_curl(&self, node: &str, url: &str) -> anyhow::Result<(u16, String)> {
        let output = self
            .testbed
            .node_command(node, "curl")
            .args(["-s", "--max-time", "5", "-w", "\n%{http_code}", url])
            .output()?;
        Ok(split_status(&output.stdout))
    }

    /// Runs `mesh-client` inside `pod` (so its connections are captured like an application's)
    /// and returns the JSON line it printed; panics when it could not run at all.
    pub fn mesh_client(&self, pod: &str, args: &[&str]) -> serde_json::Value {
        let binary = binary("mesh-client").expect("mesh-client is built");
        let output = self
            .testbed
            .pod_command(pod, binary.to_str().unwrap())
            .args(args)
            .output()
            .expect("run mesh-client");
        assert!(
            output.status.success(),
            "mesh-client {args:?}: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.logs()
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "mesh-client output {e}: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }
}
