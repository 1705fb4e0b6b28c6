//! `curl` run where a test points it (a pod's network namespace, wherever the pod runs: the
//! testbed or a container runtime), and its reports read back. Every run is bounded by curl's
//! `--max-time`.

use std::process::Command;

/// What one `curl` reported.
#[derive(Debug, Clone, PartialEq)]
pub struct CurlResult {
    /// HTTP status; 0 when no response arrived.
    pub status: u16,
    pub body: String,
    /// `time_total`, in seconds.
    pub seconds: f64,
}

/// The pods that answered `answers` (as [`bodies`] returns them), by the sample app's `pod`
/// field; every answer must be a 200.
pub fn answering_pods(answers: &[(u16, String)]) -> std::collections::BTreeSet<String> {
    answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            let reply: serde_json::Value = serde_json::from_str(body).expect("a JSON reply");
            reply["pod"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

impl CurlResult {
    /// The body as the sample app's JSON (Null when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One request by `curl` (a command for the curl program) with extra arguments, the URL last:
/// status, body and total time. Bounded by `--max-time 10`.
pub fn with(mut curl: Command, args: &[&str]) -> CurlResult {
    let output = curl
        .args([
            "-s",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{time_total}",
        ])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout);
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut fields = tail.split_whitespace();
    CurlResult {
        status: fields.next().and_then(|c| c.parse().ok()).unwrap_or(0),
        seconds: fields.next().and_then(|t| t.parse().ok()).unwrap_or(0.0),
        body: body.to_string(),
    }
}

/// `count` requests in one `curl` process (one keep-alive connection, URL globbing), each
/// reporting `write_out` on its own line; extra `args` go before the URL. `url` must not
/// contain curl's glob characters.
pub fn many(
    mut curl: Command,
    url: &str,
    count: u32,
    write_out: &str,
    args: &[&str],
) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(count > 0, "curl_many: count must be positive");
    let separator = if url.contains('?') { '&' } else { '?' };
    let output = curl
        .args(["-s", "-o", "/dev/null", "--max-time", "120", "-w"])
        .arg(format!("{write_out}\n"))
        .args(args)
        .arg(format!("{url}{separator}n=[1-{count}]"))
        .output()?;
    let lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    every_request(url, count, lines, &output)
}

/// `reports`, when curl reported each of the `count` requests.
fn every_request<T>(
    url: &str,
    count: u32,
    reports: Vec<T>,
    output: &std::process::Output,
) -> anyhow::Result<Vec<T>> {
    anyhow::ensure!(
        reports.len() == count as usize,
        "curl {url}: {} of {count} requests reported ({})",
        reports.len(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(reports)
}

/// `count` requests in one `curl` process, like [`many`], returning each response's status
/// and body (bodies must be one line, as the sample app's JSON is).
pub fn bodies(
    mut curl: Command,
    url: &str,
    count: u32,
    args: &[&str],
) -> anyhow::Result<Vec<(u16, String)>> {
    anyhow::ensure!(count > 0, "curl_bodies: count must be positive");
    let separator = if url.contains('?') { '&' } else { '?' };
    let output = curl
        .args(["-s", "--max-time", "300", "-w", "\n\u{1}%{http_code}\n"])
        .args(args)
        .arg(format!("{url}{separator}n=[1-{count}]"))
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut answers = Vec::new();
    let mut body = String::new();
    for line in text.lines() {
        match line.strip_prefix('\u{1}') {
            Some(code) => {
                answers.push((code.trim().parse().unwrap_or(0), body.trim().to_string()));
                body.clear();
            }
            None => body.push_str(line),
        }
    }
    every_request(url, count, answers, &output)
}
