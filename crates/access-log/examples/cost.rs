//! What a configured access log costs per request, as ratios to the hand-written default line
//! measured in the same run: Istio's default text format and JSON labels rendered by
//! [`Format`], and a filter (`response.code >= 400`) evaluated per request. Run with
//! `cargo run --release -p weft-access-log --example cost` (under the bench lock).

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use cel::Value;
use weft_access_log::{Attributes, Filter, Format, Kind, Operator, Record};

const ROUNDS: u32 = 200_000;

/// A request as a waypoint records it.
struct Request {
    method: &'static str,
    path: &'static str,
    authority: &'static str,
    user_agent: &'static str,
    request_id: &'static str,
    status: u16,
    bytes_received: u64,
    bytes_sent: u64,
    duration_ms: u64,
    upstream: &'static str,
    cluster: &'static str,
    local: &'static str,
    remote: &'static str,
}

const REQUEST: Request = Request {
    method: "GET",
    path: "/reviews/0?user=jason",
    authority: "reviews.shop:9080",
    user_agent: "curl/8.5.0",
    request_id: "0f6c9b0e-2d1c-4c8e-9f3a-7d2b1a0c9e8f",
    status: 200,
    bytes_received: 0,
    bytes_sent: 358,
    duration_ms: 3,
    upstream: "10.244.1.7:9080",
    cluster: "outbound|9080||reviews.shop.svc.cluster.local",
    local: "10.244.1.9:15008",
    remote: "10.244.2.4:41234",
};

impl Record for Request {
    fn write(&self, operator: &Operator, out: &mut String) -> Kind {
        let text = match operator {
            Operator::StartTime => "2026-01-01T00:00:00.000Z",
            Operator::Protocol => "HTTP/1.1",
            Operator::ResponseCode => {
                let _ = write!(out, "{}", self.status);
                return Kind::Number;
            }
            Operator::BytesReceived => {
                let _ = write!(out, "{}", self.bytes_received);
                return Kind::Number;
            }
            Operator::BytesSent => {
                let _ = write!(out, "{}", self.bytes_sent);
                return Kind::Number;
            }
            Operator::Duration => {
                let _ = write!(out, "{}", self.duration_ms);
                return Kind::Number;
            }
            Operator::ResponseFlags | Operator::ResponseCodeDetails => "-",
            Operator::UpstreamHost => self.upstream,
            Operator::UpstreamCluster => self.cluster,
            Operator::DownstreamLocalAddress => self.local,
            Operator::DownstreamRemoteAddress => self.remote,
            Operator::RouteName => "default",
            _ => return Kind::Absent,
        };
        out.push_str(text);
        Kind::Text
    }

    fn request_header(&self, name: &str, out: &mut String) -> Kind {
        let text = match name {
            ":method" => self.method,
            ":path" => self.path,
            ":authority" => self.authority,
            "user-agent" => self.user_agent,
            "x-request-id" => self.request_id,
            _ => return Kind::Absent,
        };
        out.push_str(text);
        Kind::Text
    }

    fn response_header(&self, _: &str, _: &mut String) -> Kind {
        Kind::Absent
    }
}

impl Attributes for Request {
    fn field(&self, attribute: &str, field: &str) -> Option<Value> {
        match (attribute, field) {
            ("response", "code") => Some(Value::Int(i64::from(self.status))),
            ("response", "size") => Some(Value::Int(self.bytes_sent as i64)),
            ("response", "code_details") => Some(Value::from("via_upstream")),
            ("request", "method") => Some(Value::from(self.method)),
            ("request", "path") => Some(Value::from(self.path)),
            _ => None,
        }
    }
}

/// The default line as the waypoint writes it by hand (`metrics::AccessLogLine`).
fn hand_written(r: &Request, line: &mut String) {
    let _ = writeln!(
        line,
        "[2026-01-01T00:00:00.000Z] \"{} {} HTTP/1.1\" {} - - - \"-\" {} {} {} - \"-\" \"{}\" \"{}\" \"{}\" \"{}\" {} - {} {} - default",
        r.method,
        r.path,
        r.status,
        r.bytes_received,
        r.bytes_sent,
        r.duration_ms,
        r.user_agent,
        r.request_id,
        r.authority,
        r.upstream,
        r.cluster,
        r.local,
        r.remote,
    );
}

fn nanos_per_round(mut round: impl FnMut()) -> f64 {
    for _ in 0..ROUNDS / 10 {
        round();
    }
    let start = Instant::now();
    for _ in 0..ROUNDS {
        round();
    }
    start.elapsed().as_nanos() as f64 / f64::from(ROUNDS)
}

fn main() {
    let text = Format::istio_text();
    let json = Format::istio_json();
    let filter = Filter::compile("response.code >= 400").expect("a valid filter");
    let mut line = String::with_capacity(512);
    let mut render = |f: &dyn Fn(&mut String)| {
        nanos_per_round(|| {
            line.clear();
            f(&mut line);
            black_box(&line);
        })
    };
    let baseline = render(&|l| hand_written(black_box(&REQUEST), l));
    let istio_text = render(&|l| text.render(black_box(&REQUEST), l));
    let istio_json = render(&|l| json.render(black_box(&REQUEST), l));
    let filtered = nanos_per_round(|| {
        black_box(filter.admits(black_box(&REQUEST)));
    });
    println!("hand-written default line: {baseline:.0} ns (1.00)");
    for (name, cost) in [
        ("Istio's default text format", istio_text),
        ("Istio's default JSON labels", istio_json),
        ("filter response.code >= 400", filtered),
    ] {
        println!("{name}: {cost:.0} ns ({:.2})", cost / baseline);
    }
}
