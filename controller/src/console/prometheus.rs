//! The console's one data source for traffic: Prometheus' HTTP API (`/api/v1/query` and
//! `/api/v1/query_range`), read as Kiali reads it. Answers are parsed into plain samples here so
//! that the graph and the pages are pure functions over them.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

/// How long one query may take, and the most an answer may hold.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// A query that could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("the Prometheus URL {0:?} is not an http:// URL")]
    Url(String),
    #[error("querying Prometheus at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("Prometheus answered {status} to {query:?}: {body}")]
    Status {
        status: u16,
        query: String,
        body: String,
    },
    #[error("Prometheus' answer to {query:?} is not what its API documents: {reason}")]
    Answer { query: String, reason: String },
    #[error("Prometheus refused {query:?}: {error_type}: {error}")]
    Refused {
        query: String,
        error_type: String,
        error: String,
    },
}

/// One series of an instant vector: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// A label's value; absent and empty read the same, as in PromQL.
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// One series of a range vector: its labels and `(unix seconds, value)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(f64, f64)>,
}

#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: String,
    #[serde(default)]
    error: String,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct VectorEntry {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

#[derive(Deserialize)]
struct MatrixEntry {
    metric: BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

fn number(text: &str) -> f64 {
    // Prometheus writes NaN and infinities as "NaN", "+Inf", "-Inf".
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => text.parse().unwrap_or(f64::NAN),
    }
}

fn data(query: &str, body: &[u8]) -> Result<Data, PrometheusError> {
    let answer = |reason: String| PrometheusError::Answer {
        query: query.to_owned(),
        reason,
    };
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| answer(e.to_string()))?;
    if envelope.status != "success" {
        return Err(PrometheusError::Refused {
            query: query.to_owned(),
            error_type: envelope.error_type,
            error: envelope.error,
        });
    }
    envelope
        .data
        .ok_or_else(|| answer("a success without data".into()))
}

/// An instant query's answer (`resultType` `vector`; a `scalar` reads as one unlabelled sample).
pub fn parse_vector(query: &str, body: &[u8]) -> Result<Vec<Sample>, PrometheusError> {
    let data = data(query, body)?;
    let answer = |reason: String| PrometheusError::Answer {
        query: query.to_owned(),
        reason,
    };
    match data.result_type.as_str() {
        "vector" => {
            let entries: Vec<VectorEntry> =
                serde_json::from_value(data.result).map_err(|e| answer(e.to_string()))?;
            Ok(entries
                .into_iter()
                .map(|e| Sample {
                    labels: e.metric,
                    value: number(&e.value.1),
                })
                .collect())
        }
        "scalar" => {
            let (_, value): (f64, String) =
                serde_json::from_value(data.result).map_err(|e| answer(e.to_string()))?;
            Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: number(&value),
            }])
        }
        other => Err(answer(format!("resultType {other}, not vector"))),
    }
}

/// A range query's answer (`resultType` `matrix`).
pub fn parse_matrix(query: &str, body: &[u8]) -> Result<Vec<Series>, PrometheusError> {
    let data = data(query, body)?;
    if data.result_type != "matrix" {
        return Err(PrometheusError::Answer {
            query: query.to_owned(),
            reason: format!("resultType {}, not matrix", data.result_type),
        });
    }
    let entries: Vec<MatrixEntry> =
        serde_json::from_value(data.result).map_err(|e| PrometheusError::Answer {
            query: query.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(entries
        .into_iter()
        .map(|e| Series {
            labels: e.metric,
            points: e.values.iter().map(|(t, v)| (*t, number(v))).collect(),
        })
        .collect())
}

/// Prometheus' HTTP API at one base URL.
#[derive(Clone)]
pub struct Prometheus {
    base: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Prometheus {
    /// `url` is Prometheus' base (`http://127.0.0.1:9090`, or with a path prefix).
    pub fn new(url: &str) -> Result<Self, PrometheusError> {
        let base = url.trim_end_matches('/').to_owned();
        let uri: http::Uri = base
            .parse()
            .map_err(|_| PrometheusError::Url(url.to_owned()))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(PrometheusError::Url(url.to_owned()));
        }
        Ok(Self {
            base,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    async fn get(&self, path: &str, params: &[(&str, &str)]) -> Result<Bytes, PrometheusError> {
        let query = params
            .iter()
            .find(|(k, _)| *k == "query")
            .map_or("", |(_, v)| *v);
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let url = format!("{}{path}?{encoded}", self.base);
        let unreachable = |reason: String| PrometheusError::Unreachable {
            url: self.base.clone(),
            reason,
        };
        let uri: http::Uri = url.parse().map_err(|_| PrometheusError::Url(url.clone()))?;
        let exchange = async {
            let response = self
                .client
                .get(uri)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, PrometheusError>((status, body))
        };
        let (status, body) = tokio::time::timeout(QUERY_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {QUERY_TIMEOUT:?}")))??;
        // Prometheus answers 400 and 422 with its JSON error envelope: let the parser say why.
        if !status.is_success() && status.as_u16() != 400 && status.as_u16() != 422 {
            return Err(PrometheusError::Status {
                status: status.as_u16(),
                query: query.to_owned(),
                body: String::from_utf8_lossy(&body).chars().take(200).collect(),
            });
        }
        Ok(body)
    }

    /// An instant query at the current time.
    pub async fn query(&self, query: &str) -> Result<Vec<Sample>, PrometheusError> {
        let body = self.get("/api/v1/query", &[("query", query)]).await?;
        parse_vector(query, &body)
    }

    /// A range query over the last `range`, a point every `step`.
    pub async fn query_range(
        &self,
        query: &str,
        range: Duration,
        step: Duration,
    ) -> Result<Vec<Series>, PrometheusError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let start = format!("{:.3}", now - range.as_secs_f64());
        let end = format!("{now:.3}");
        let step = format!("{}s", step.as_secs().max(1));
        let body = self
            .get(
                "/api/v1/query_range",
                &[
                    ("query", query),
                    ("start", &start),
                    ("end", &end),
                    ("step", &step),
                ],
            )
            .await?;
        parse_matrix(query, &body)
    }
}
