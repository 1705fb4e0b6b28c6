//! The validating admission webhook (Istio's 15017): the API server sends an
//! `admission.k8s.io/v1` AdmissionReview for every create and update of the Istio kinds, over
//! TLS with the controller's serving certificate (issued by the mesh CA for `istiod.<ns>.svc`),
//! and gets back the same verdict and messages as `controller validate`: refused with every
//! error, or allowed with every warning (Istio's, fields accepted but not applied), so
//! `kubectl apply` of a bad resource fails at once.
//!
//! The API server trusts the webhook through the `caBundle` of the ValidatingWebhookConfiguration
//! the chart installs; as istiod patches its own, the controller writes the mesh root there and
//! keeps it there ([`keep_ca_bundle`]: a watch on that one object, so a `helm upgrade` that
//! resets the bundle is undone within moments).
//!
//! [`review`] is the decision, a pure function; [`serve`] the listener.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::model::{ISTIO_GROUP_SUFFIX, ResourceKind, UNREAD_ISTIO_KINDS};
use crate::source::kube::admit_value;

/// Where the API server sends reviews (Istio's path).
pub const PATH: &str = "/validate";
/// Reviews larger than this are refused (the API server's own limit on an object is 3 MiB).
const MAX_BODY: usize = 4 << 20;
/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; the API server needs few.
const MAX_CONNECTIONS: usize = 256;
/// What a refusal starts with (Istio's words).
const INVALID: &str = "configuration is invalid";

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    kind: String,
}

/// The part of an AdmissionRequest the decision reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionRequest {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    operation: String,
    #[serde(default)]
    object: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionReview {
    api_version: String,
    request: Option<AdmissionRequest>,
}

/// The verdict on one review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Why it was refused (empty when allowed).
    pub message: String,
    pub warnings: Vec<String>,
}

impl Verdict {
    fn allow(warnings: Vec<String>) -> Self {
        Self {
            allowed: true,
            message: String::new(),
            warnings,
        }
    }

    fn deny(message: String) -> Self {
        Self {
            allowed: false,
            message,
            warnings: Vec::new(),
        }
    }
}

/// The verdict on one AdmissionRequest, as Istio's webhook decides (`pkg/webhooks/validation`):
/// only creates and updates are judged; the version is not (every version has the same schema);
/// a type of an Istio group the model does not know is refused; top-level fields other than
/// `apiVersion`, `kind`, `metadata`, `spec` and `status` are refused.
fn decide(request: &AdmissionRequest) -> Verdict {
    if !matches!(request.operation.as_str(), "CREATE" | "UPDATE") {
        return Verdict::allow(Vec::new());
    }
    let group = request.kind.group.as_str();
    let kind_name = request.kind.kind.as_str();
    let Some(kind) = ResourceKind::ALL
        .into_iter()
        .find(|k| k.group() == group && k.kind() == kind_name)
    else {
        if UNREAD_ISTIO_KINDS.contains(&(group, kind_name)) {
            return Verdict::allow(vec![format!(
                "{kind_name} is not read by Weft: not validated, not applied"
            )]);
        }
        if group.ends_with(ISTIO_GROUP_SUFFIX) {
            return Verdict::deny(format!(
                "unrecognized type {group}/{}, Kind={kind_name}",
                request.kind.version
            ));
        }
        return Verdict::allow(Vec::new());
    };
    let Some(object) = &request.object else {
        return Verdict::deny(format!("{INVALID}: the review carries no object"));
    };
    let namespace = request.namespace.as_deref().unwrap_or("");
    let name = object["metadata"]["name"]
        .as_str()
        .or(request.name.as_deref())
        .unwrap_or("");
    if kind.is_istio()
        && let Some(field) = object.as_object().and_then(|o| {
            o.keys().find(|k| {
                !matches!(
                    k.as_str(),
                    "apiVersion" | "kind" | "metadata" | "spec" | "status"
                )
            })
        })
    {
        return Verdict::deny(format!(
            "unknown field {field:?} on {kind_name} resource {namespace}/{name}"
        ));
    }
    let mut object = object.clone();
    if kind.namespaced()
        && let Some(metadata) = object.get_mut("metadata").and_then(|m| m.as_object_mut())
        && !metadata.contains_key("namespace")
    {
        // A create in a namespace carries the namespace in the review, not always in the object.
        metadata.insert("namespace".to_owned(), namespace.into());
    }
    match admit_value(kind, object, namespace, name) {
        Ok((resource, warnings)) => {
            let key = crate::index::key(&resource);
            Verdict::allow(
                warnings
                    .iter()
                    .map(|w| format!("{kind} {key}: {w}"))
                    .collect(),
            )
        }
        Err(rejection) => Verdict::deny(format!("{INVALID}: {rejection}")),
    }
}

/// Answers one AdmissionReview body with an AdmissionReview of the same `apiVersion`
/// (`admission.k8s.io/v1` or `v1beta1`), the request's `uid` and the verdict.
pub fn review(body: &[u8]) -> serde_json::Value {
    let parsed: Result<AdmissionReview, _> = serde_json::from_slice(body);
    let (api_version, uid, verdict) = match parsed {
        Ok(AdmissionReview {
            api_version,
            request: Some(request),
        }) => {
            let verdict = decide(&request);
            (api_version, request.uid, verdict)
        }
        Ok(review) => (
            review.api_version,
            String::new(),
            Verdict::deny("could not decode object: the review carries no request".to_owned()),
        ),
        Err(error) => (
            "admission.k8s.io/v1".to_owned(),
            String::new(),
            Verdict::deny(format!("could not decode body: {error}")),
        ),
    };
    let mut response = serde_json::json!({"uid": uid, "allowed": verdict.allowed});
    if !verdict.allowed {
        response["status"] = serde_json::json!({
            "status": "Failure",
            "message": verdict.message,
            "reason": "BadRequest",
            "code": 400,
        });
    }
    if !verdict.warnings.is_empty() {
        response["warnings"] = serde_json::json!(verdict.warnings);
    }
    serde_json::json!({
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "response": response,
    })
}

type Body = Full<Bytes>;

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    response
}

async fn handle(request: Request<hyper::body::Incoming>) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path();
    if path != PATH && path != "/validate/" {
        return Ok(plain(StatusCode::NOT_FOUND, "not found"));
    }
    if request.method() != Method::POST {
        return Ok(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST an AdmissionReview",
        ));
    }
    let json = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !json {
        return Ok(plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid Content-Type, want `application/json`",
        ));
    }
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(plain(StatusCode::PAYLOAD_TOO_LARGE, "review too large")),
    };
    if body.is_empty() {
        return Ok(plain(StatusCode::BAD_REQUEST, "no body found"));
    }
    let answer = review(&body);
    let allowed = answer["response"]["allowed"].as_bool().unwrap_or(false);
    tracing::debug!(allowed, "admission review answered");
    let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Serves reviews on `listener` over TLS (`config`: the serving certificate, ALPN h2 and
/// http/1.1) until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    config: rustls::ServerConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut incoming = crate::tls::incoming(listener, config);
    loop {
        let stream = tokio::select! {
            stream = incoming.next() => stream,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Some(Ok(stream)) = stream else {
            return;
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!("webhook connection refused: too many open");
            continue;
        };
        tokio::spawn(async move {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let served = builder
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle))
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "webhook connection ended");
            }
            drop(permit);
        });
    }
}

/// The `caBundle` every webhook of a configuration should carry: the mesh root, base64 as the
/// API server stores bytes.
fn needs_bundle(configuration: &ValidatingWebhookConfiguration, root_pem: &str) -> bool {
    configuration.webhooks.iter().flatten().any(|w| {
        w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(root_pem.as_bytes())
    })
}

/// How often the configuration is looked at besides its watch (a missed event, a failed write).
const BUNDLE_CHECK: Duration = Duration::from_secs(30);

/// Writes the root into every webhook of the configuration if one lacks it; `Ok(true)` when
/// it wrote, `Ok(false)` when there was nothing to do (or no such configuration).
async fn ensure_bundle(
    api: &Api<ValidatingWebhookConfiguration>,
    name: &str,
    root_pem: &str,
) -> Result<bool, kube::Error> {
    let Some(mut configuration) = api.get_opt(name).await? else {
        return Ok(false);
    };
    if !needs_bundle(&configuration, root_pem) {
        return Ok(false);
    }
    for webhook in configuration.webhooks.iter_mut().flatten() {
        webhook.client_config.ca_bundle =
            Some(k8s_openapi::ByteString(root_pem.as_bytes().to_vec()));
    }
    // The object's resourceVersion rides along: a concurrent change makes this a conflict,
    // retried on the next event or check.
    api.replace(name, &PostParams::default(), &configuration)
        .await?;
    Ok(true)
}

/// Keeps the mesh root in the `caBundle` of every webhook of the ValidatingWebhookConfiguration
/// `name`, as istiod does for its own: whenever the object changes (a watch on it) and every
/// [`BUNDLE_CHECK`]. A missing configuration is waited for (the chart creates it).
pub async fn keep_ca_bundle(
    client: kube::Client,
    name: String,
    root_pem: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher::watcher(api.clone(), config).default_backoff();
    let mut events = std::pin::pin!(events);
    let mut check = tokio::time::interval(BUNDLE_CHECK);
    loop {
        tokio::select! {
            event = events.next() => match event {
                None => return,
                Some(Ok(watcher::Event::Apply(_) | watcher::Event::InitApply(_))) => {}
                Some(Ok(_)) => continue,
                Some(Err(error)) => {
                    tracing::debug!(%error, webhook_configuration = %name, "watch of the webhook configuration failed; retrying");
                    continue;
                }
            },
            _ = check.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match ensure_bundle(&api, &name, &root_pem).await {
            Ok(true) => {
                tracing::info!(webhook_configuration = %name, "mesh root written to the webhook configuration's caBundle")
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, webhook_configuration = %name, "writing the webhook configuration's caBundle failed; retrying")
            }
        }
    }
}

#[cfg(test)]
mod tests;
