//! A reader of Prometheus (and OpenMetrics) text, for tests that assert what a `/metrics`
//! endpoint counted: each sample line becomes its name, its labels and its value.

use std::collections::BTreeMap;

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    /// The line as it was exposed.
    pub line: String,
}

impl Sample {
    /// Reads one sample line; `None` for comments, blank lines and what is not a sample.
    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let (labels, rest) = parse_labels(&line[open + 1..])?;
                (&line[..open], labels, rest)
            }
            None => {
                let (name, rest) = line.split_once(' ')?;
                (name, BTreeMap::new(), rest)
            }
        };
        // A timestamp may follow the value.
        let value = rest.split_whitespace().next()?.parse().ok()?;
        Some(Self {
            name: name.to_owned(),
            labels,
            value,
            line: line.to_owned(),
        })
    }

    /// The value of label `name`, if set.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }

    /// Whether every `(label, value)` pair of `labels` is set to exactly that value.
    pub fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// Reads `key="value",...}` (escapes `\\`, `\"` and `\n` undone); returns the labels and what
/// follows the closing brace.
fn parse_labels(text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    escaped => value.push(escaped),
                },
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim().to_owned(), value);
        rest = &after[end?..];
    }
}

/// Every sample of one exposition, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    samples: Vec<Sample>,
}

impl Exposition {
    pub fn parse(text: &str) -> Self {
        Self {
            samples: text.lines().filter_map(Sample::parse).collect(),
        }
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The samples of metric `name` carrying every one of `labels`.
    pub fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.has(labels))
            .collect()
    }

    /// The first sample of `name` carrying `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Sample> {
        self.samples
            .iter()
            .find(|s| s.name == name && s.has(labels))
    }

    /// The sum of the samples of `name` carrying `labels` (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).iter().map(|s| s.value).sum()
    }

    /// [`Exposition::sum`] of a counter, as a whole number.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        // Counters are whole numbers far below 2^53: the cast is exact.
        self.sum(name, labels) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_their_labels_and_values() {
        let text = "# HELP istio_requests_total Requests.\n\
            # TYPE istio_requests_total counter\n\
            istio_requests_total{reporter=\"waypoint\",source_workload=\"a,b\",path=\"x\\\"y\"} 12\n\
            istio_requests_total{reporter=\"destination\",path=\"a\\\\b\\nc\"} 3 1700000000\n\
            process_start_time_seconds 1.5e9\n\
            \n\
            # EOF\n";
        let metrics = Exposition::parse(text);
        assert_eq!(metrics.samples().len(), 3);
        let first = &metrics.samples()[0];
        assert_eq!(first.name, "istio_requests_total");
        assert_eq!(first.label("reporter"), Some("waypoint"));
        assert_eq!(first.label("source_workload"), Some("a,b"));
        assert_eq!(first.label("path"), Some("x\"y"));
        assert_eq!(first.value, 12.0);
        assert_eq!(metrics.samples()[1].label("path"), Some("a\\b\nc"));
        assert_eq!(metrics.samples()[2].labels.len(), 0);
        assert_eq!(metrics.samples()[2].value, 1.5e9);
        assert_eq!(metrics.count("istio_requests_total", &[]), 15);
        assert_eq!(
            metrics.count("istio_requests_total", &[("reporter", "destination")]),
            3
        );
        assert_eq!(
            metrics.count("istio_requests_total", &[("reporter", "x")]),
            0
        );
        assert!(metrics.find("istio_requests", &[]).is_none());
    }
}
