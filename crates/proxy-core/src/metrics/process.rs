//! What every Weft process reports about itself, under the names Istio's proxies and istiod
//! export: Prometheus's standard process collector (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`) and `istio_build{component, tag}`.
//!
//! The process figures are read from `/proc/self` at each scrape and at no other time, so
//! they cost nothing between scrapes; a figure that cannot be read is left out of that scrape
//! rather than reported as zero.

use std::path::Path;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds";
pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
pub const PROCESS_VIRTUAL_MEMORY: &str = "process_virtual_memory_bytes";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
pub const ISTIO_BUILD: &str = "istio_build";

/// Istio's `component` label of `istio_build` for each Weft binary, as the process in Istio
/// that plays its part reports it (ztunnel, the Envoy proxy, istiod), so that Istio's
/// dashboards find them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The node agent, ztunnel's part.
    NodeAgent,
    /// The waypoint and the gateways, Envoy's part.
    Waypoint,
    /// The controller, istiod's part.
    Controller,
}

impl Component {
    pub fn istio_name(self) -> &'static str {
        match self {
            Self::NodeAgent => "ztunnel",
            Self::Waypoint => "proxy",
            Self::Controller => "pilot",
        }
    }
}

/// The version every Weft binary reports (`istio_build`'s `tag`, `/version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The process figures at one moment, each absent when it could not be read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: Option<f64>,
    pub resident_memory_bytes: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

/// The fields of `/proc/<pid>/stat` the collector needs, in their own units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// User and system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, in clock ticks.
    pub start_ticks: u64,
    pub virtual_bytes: u64,
    pub resident_pages: u64,
}

/// Parses `/proc/<pid>/stat` (proc(5)). The command name, in parentheses, may hold spaces and
/// parentheses itself: fields are counted from after its last closing parenthesis, where the
/// third field (`state`) is the first.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    // Field n of proc(5) (1-based) is fields[n - 3].
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        cpu_ticks: field(14)?.checked_add(field(15)?)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// The soft limit of "Max open files" in `/proc/<pid>/limits`; `None` when unlimited.
pub fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The boot time (`btime`) in `/proc/stat`, in seconds since the epoch.
pub fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The figures from `proc` (a procfs mount, `/proc` in production), for the process
/// `/proc/self` names there.
pub fn sample(proc: &Path) -> ProcessSample {
    let own = proc.join("self");
    let stat = std::fs::read_to_string(own.join("stat"))
        .ok()
        .and_then(|text| parse_stat(&text));
    let sysconf = |var| {
        nix::unistd::sysconf(var)
            .ok()
            .flatten()
            .and_then(|v| u64::try_from(v).ok())
    };
    let ticks = sysconf(nix::unistd::SysconfVar::CLK_TCK).filter(|&t| t > 0);
    let page = sysconf(nix::unistd::SysconfVar::PAGE_SIZE);
    let boot = std::fs::read_to_string(proc.join("stat"))
        .ok()
        .and_then(|text| parse_boot_time(&text));
    ProcessSample {
        cpu_seconds: stat.zip(ticks).map(|(s, t)| s.cpu_ticks as f64 / t as f64),
        resident_memory_bytes: stat.zip(page).map(|(s, p)| s.resident_pages * p),
        virtual_memory_bytes: stat.map(|s| s.virtual_bytes),
        open_fds: std::fs::read_dir(own.join("fd"))
            .ok()
            .map(|entries| entries.count() as u64),
        max_fds: std::fs::read_to_string(own.join("limits"))
            .ok()
            .and_then(|text| parse_max_open_files(&text)),
        start_time_seconds: stat
            .zip(ticks)
            .zip(boot)
            .map(|((s, t), b)| b as f64 + s.start_ticks as f64 / t as f64),
    }
}

/// One value under its own name and type.
#[derive(Debug)]
struct Value(MetricType, f64);

impl EncodeMetric for Value {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        match self.0 {
            MetricType::Counter => encoder
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&self.1, None),
            _ => encoder.encode_gauge(&self.1),
        }
    }

    fn metric_type(&self) -> MetricType {
        self.0
    }
}

#[derive(Debug)]
struct ProcessCollector {
    component: Component,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = sample(Path::new("/proc"));
        let as_f64 = |v: Option<u64>| v.map(|v| v as f64);
        let figures = [
            (
                PROCESS_CPU_SECONDS,
                "Total user and system CPU time spent in seconds",
                MetricType::Counter,
                now.cpu_seconds,
            ),
            (
                PROCESS_RESIDENT_MEMORY,
                "Resident memory size in bytes",
                MetricType::Gauge,
                as_f64(now.resident_memory_bytes),
            ),
            (
                PROCESS_VIRTUAL_MEMORY,
                "Virtual memory size in bytes",
                MetricType::Gauge,
                as_f64(now.virtual_memory_bytes),
            ),
            (
                PROCESS_OPEN_FDS,
                "Number of open file descriptors",
                MetricType::Gauge,
                as_f64(now.open_fds),
            ),
            (
                PROCESS_MAX_FDS,
                "Maximum number of open file descriptors",
                MetricType::Gauge,
                as_f64(now.max_fds),
            ),
            (
                PROCESS_START_TIME,
                "Start time of the process since unix epoch in seconds",
                MetricType::Gauge,
                now.start_time_seconds,
            ),
        ];
        for (name, help, kind, value) in figures {
            if let Some(value) = value {
                let metric = Value(kind, value);
                metric.encode(encoder.encode_descriptor(name, help, None, kind)?)?;
            }
        }
        let mut build = encoder.encode_descriptor(
            ISTIO_BUILD,
            "Istio component build info",
            None,
            MetricType::Gauge,
        )?;
        let labels = [("component", self.component.istio_name()), ("tag", VERSION)];
        build.encode_family(&labels)?.encode_gauge(&1i64)
    }
}

/// Reports the process figures of this process and `istio_build` for `component` in
/// `registry`.
pub fn register_process_metrics(registry: &mut Registry, component: Component) {
    registry.register_collector(Box::new(ProcessCollector { component }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis, as a process may name itself.
        let stat = "4242 (weft (node) agent) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                    250 50 0 0 20 0 9 0 123456 987654321 2048 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                cpu_ticks: 300,
                start_ticks: 123456,
                virtual_bytes: 987654321,
                resident_pages: 2048,
            })
        );
        assert_eq!(parse_stat("4242 (truncated) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn limits_and_boot_time() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95000                95000                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_open_files(unlimited), None);
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1700000000)
        );
        assert_eq!(parse_boot_time("cpu  1 2 3\n"), None);
    }

    #[test]
    fn this_process_is_read_from_proc() {
        let before = sample(Path::new("/proc"));
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let after = sample(Path::new("/proc"));
        drop(file);
        assert_eq!(after.open_fds, before.open_fds.map(|n| n + 1));
        assert!(after.resident_memory_bytes.unwrap() > 1 << 20, "{after:?}");
        assert!(after.virtual_memory_bytes >= after.resident_memory_bytes);
        assert!(after.max_fds.unwrap() >= after.open_fds.unwrap());
        // CPU time counts in clock ticks: spinning (at most 5 s) must move it.
        let spun = std::time::Instant::now();
        let mut spin = 0u64;
        while sample(Path::new("/proc")).cpu_seconds <= after.cpu_seconds
            && spun.elapsed() < std::time::Duration::from_secs(5)
        {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        assert!(sample(Path::new("/proc")).cpu_seconds > after.cpu_seconds);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = after.start_time_seconds.unwrap();
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
        // Another procfs without these files: nothing to report, no invented zeros.
        assert_eq!(sample(Path::new("/nonexistent")), ProcessSample::default());
    }

    #[test]
    fn exported_under_the_process_collector_s_names_and_istio_build() {
        let mut registry = Registry::default();
        register_process_metrics(&mut registry, Component::NodeAgent);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_resident_memory_bytes") > 0.0);
        assert!(value("process_virtual_memory_bytes") > 0.0);
        assert!(value("process_open_fds") > 0.0);
        assert!(value("process_max_fds") > 0.0);
        assert!(value("process_start_time_seconds") > 1.6e9);
        assert!(
            text.contains("# TYPE process_cpu_seconds counter"),
            "{text}"
        );
        let build = format!("istio_build{{component=\"ztunnel\",tag=\"{VERSION}\"}} 1");
        assert!(text.lines().any(|l| l == build), "no {build} in\n{text}");
    }
}
