//! Serving: port-forwards (in [`crate::portforward`]), failures injected, writes, status merge patches, TokenReview, gets, paginated lists and watches.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::request::{
    Body, Selection, Target, json_response, parse_field_selector, parse_label_selector, parse_path,
    parse_query, status_object, status_response,
};
use crate::{
    EventType, FakeApiError, HistoryEntry, LoggedRequest, ServedKind, Shared, Store, StoreKey,
};

/// Request bodies above this are refused.
const MAX_BODY: usize = 1 << 20;

pub(crate) async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = parse_query(request.uri().query());
    if let Some((namespace, pod)) = crate::portforward::target(&path) {
        let response = if method == Method::GET || method == Method::POST {
            crate::portforward::serve(&shared, request, &namespace, &pod, query.get("ports"))
        } else {
            status_response(405, "MethodNotAllowed", &format!("{method} {path}"))
        };
        shared.store().log.push(LoggedRequest {
            method: method.to_string(),
            path,
            query,
            status: response.status().as_u16(),
        });
        return response;
    }
    let body = http_body_util::Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|collected| collected.to_bytes());
    let response = match body {
        Ok(body) => respond(&shared, &method, &path, &query, &body),
        Err(_) => status_response(413, "RequestEntityTooLarge", "request body too large"),
    };
    shared.store().log.push(LoggedRequest {
        method: method.to_string(),
        path,
        query,
        status: response.status().as_u16(),
    });
    response
}

fn respond(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &BTreeMap<String, String>,
    body: &[u8],
) -> Response<Body> {
    if let Some(status) = shared.take_failure(path) {
        return status_response(status, "InternalError", "injected failure");
    }
    if path == TOKEN_REVIEWS {
        return match *method {
            Method::POST => token_review(shared, body),
            _ => status_response(405, "MethodNotAllowed", "tokenreviews are only created"),
        };
    }
    let Some(target) = parse_path(&shared.kinds, path) else {
        return status_response(
            404,
            "NotFound",
            &format!("the server could not find {path}"),
        );
    };
    if target.subresource.is_some() {
        return match *method {
            Method::PATCH => patch_status(shared, &target, body),
            _ => status_response(405, "MethodNotAllowed", &format!("{method} {path}")),
        };
    }
    match *method {
        Method::GET => {}
        Method::POST if target.name.is_none() => {
            return write(shared, &target, body, EventType::Added);
        }
        Method::PUT if target.name.is_some() => {
            return write(shared, &target, body, EventType::Modified);
        }
        _ => return status_response(405, "MethodNotAllowed", &format!("{method} {path}")),
    }
    let labels = match parse_label_selector(query.get("labelSelector").map_or("", String::as_str)) {
        Ok(labels) => labels,
        Err(message) => return status_response(400, "BadRequest", &message),
    };
    let fields = match parse_field_selector(query.get("fieldSelector").map_or("", String::as_str)) {
        Ok(fields) => fields,
        Err(message) => return status_response(400, "BadRequest", &message),
    };
    let selection = Selection {
        namespace: target.namespace.clone(),
        labels,
        fields,
    };
    if let Some(name) = &target.name {
        return get(shared, target.kind_index, &selection, name);
    }
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    if watching {
        watch(shared, target.kind_index, selection, query)
    } else {
        list(shared, target.kind_index, &selection, query)
    }
}

const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// A create (POST to the collection) or replace (PUT to the object), as the API server answers
/// it: 201 or 200 with the stored object, 409 when it exists, 404 when it does not.
fn write(shared: &Shared, target: &Target, body: &[u8], event: EventType) -> Response<Body> {
    let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
        return status_response(400, "BadRequest", "the body is not a JSON object");
    };
    let served = &shared.kinds[target.kind_index];
    let Some(map) = object.as_object_mut() else {
        return status_response(400, "BadRequest", "the body is not a JSON object");
    };
    map.insert("apiVersion".to_owned(), served.api_version().into());
    map.insert("kind".to_owned(), served.kind.clone().into());
    let metadata = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(namespace) = &target.namespace {
        metadata["namespace"] = Value::from(namespace.clone());
    }
    if let Some(name) = &target.name
        && metadata["name"].as_str() != Some(name.as_str())
    {
        return status_response(
            400,
            "BadRequest",
            "the name in the body differs from the URL",
        );
    }
    match shared.mutate(object, event) {
        Ok((_, stored)) => {
            let status = if event == EventType::Added {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json_response(status, &stored)
        }
        Err(error @ FakeApiError::AlreadyExists { .. }) => {
            status_response(409, "AlreadyExists", &error.to_string())
        }
        Err(error @ FakeApiError::NotFound { .. }) => {
            status_response(404, "NotFound", &error.to_string())
        }
        Err(error) => status_response(400, "BadRequest", &error.to_string()),
    }
}

/// A JSON merge patch (RFC 7386) of an object's `status`, as the status subresource takes it:
/// everything but `status` in the patch is ignored.
fn patch_status(shared: &Shared, target: &Target, body: &[u8]) -> Response<Body> {
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return status_response(400, "BadRequest", "the body is not a JSON merge patch");
    };
    let key = (
        target.kind_index,
        target.namespace.clone().unwrap_or_default(),
        target.name.clone().unwrap_or_default(),
    );
    let Some(mut object) = shared.store().objects.get(&key).cloned() else {
        return status_response(404, "NotFound", &format!("{} not found", key.2));
    };
    if let Some(status) = patch.get("status")
        && let Some(object) = object.as_object_mut()
    {
        merge_patch(object.entry("status").or_insert(Value::Null), status);
    }
    match shared.mutate(object, EventType::Modified) {
        Ok((_, stored)) => json_response(StatusCode::OK, &stored),
        Err(error) => status_response(400, "BadRequest", &error.to_string()),
    }
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// TokenReview: authenticated when the token is known and (if the review names audiences) was
/// issued for one of them.
fn token_review(shared: &Shared, body: &[u8]) -> Response<Body> {
    let Ok(review) = serde_json::from_slice::<Value>(body) else {
        return status_response(400, "BadRequest", "the body is not a TokenReview");
    };
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let known = shared.store().tokens.get(token).cloned();
    let status = match known {
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
        Some(identity) => {
            let audiences: Vec<String> = if wanted.is_empty() {
                identity.audiences.clone()
            } else {
                wanted
                    .iter()
                    .filter(|a| identity.audiences.contains(a))
                    .cloned()
                    .collect()
            };
            if audiences.is_empty() {
                json!({"authenticated": false, "error": "token audiences are invalid for the requested audiences"})
            } else {
                json!({
                    "authenticated": true,
                    "audiences": audiences,
                    "user": {
                        "username": identity.username,
                        "uid": format!("uid-{}", identity.username),
                        "groups": ["system:serviceaccounts", "system:authenticated"],
                        "extra": identity.extra,
                    },
                })
            }
        }
    };
    let answer = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "metadata": {"creationTimestamp": null},
        "spec": review["spec"],
        "status": status,
    });
    json_response(StatusCode::CREATED, &answer)
}

fn get(shared: &Shared, kind_index: usize, selection: &Selection, name: &str) -> Response<Body> {
    let namespace = selection.namespace.clone().unwrap_or_default();
    let key = (kind_index, namespace, name.to_owned());
    match shared.store().objects.get(&key) {
        Some(object) => json_response(StatusCode::OK, object),
        None => status_response(404, "NotFound", &format!("{name} not found")),
    }
}

/// The history entries after `version` (the history is in version order).
fn history_after(store: &Store, version: u64) -> &[HistoryEntry] {
    let first = store
        .history
        .partition_point(|e| e.resource_version <= version);
    &store.history[first..]
}

/// The objects of one kind as they were at `version`, rebuilt from the history: only for a
/// page of a list whose kind changed since the list's first page.
fn snapshot_at(store: &mut Store, kind_index: usize, version: u64) -> BTreeMap<StoreKey, Value> {
    let mut objects = BTreeMap::new();
    let mut visited = 0;
    for entry in store
        .history
        .iter()
        .filter(|e| e.kind_index == kind_index && e.resource_version <= version)
    {
        visited += 1;
        let metadata = &entry.object["metadata"];
        let key = (
            kind_index,
            metadata["namespace"].as_str().unwrap_or("").to_owned(),
            metadata["name"].as_str().unwrap_or("").to_owned(),
        );
        match entry.event {
            EventType::Added | EventType::Modified => {
                objects.insert(key, entry.object.clone());
            }
            EventType::Deleted => {
                objects.remove(&key);
            }
        }
    }
    store.served_work += visited + store.history.len() as u64;
    objects
}

fn without_type(mut object: Value) -> Value {
    // As the real server does for typed lists: items carry no apiVersion/kind of their own.
    if let Some(map) = object.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    object
}

fn list(
    shared: &Shared,
    kind_index: usize,
    selection: &Selection,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let served = &shared.kinds[kind_index];
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => None,
        Some(Ok(0)) => None,
        Some(Ok(limit)) => Some(limit),
        Some(Err(_)) => return status_response(400, "BadRequest", "limit is not a number"),
    };
    let mut store = shared.store();
    // A continue token is "<list version>/<items already returned>[/<namespace>/<name> of the
    // last one]": the next page resumes after that key, as the real server's token resumes
    // its range read, unless the kind changed since the list's first page.
    let (version, offset, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        None => (store.resource_version, 0, None),
        Some(token) => {
            let mut parts = token.splitn(4, '/');
            let parsed = (|| {
                let version = parts.next()?.parse::<u64>().ok()?;
                let offset = parts.next()?.parse::<usize>().ok()?;
                let after = match (parts.next(), parts.next()) {
                    (Some(namespace), Some(name)) => {
                        Some((kind_index, namespace.to_owned(), name.to_owned()))
                    }
                    (None, None) => None,
                    _ => return None,
                };
                Some((version, offset, after))
            })();
            let Some((version, offset, after)) = parsed else {
                return status_response(400, "BadRequest", "malformed continue token");
            };
            if version < store.oldest_served_version {
                return status_response(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result.",
                );
            }
            (version, offset, after)
        }
    };
    let changed_since = history_after(&store, version)
        .iter()
        .any(|e| e.kind_index == kind_index);
    let (page, last, more): (Vec<Value>, Option<StoreKey>, bool) = if changed_since {
        // Rebuilt from the history: a consistent page of the list's version.
        let matching: Vec<(StoreKey, Value)> = snapshot_at(&mut store, kind_index, version)
            .into_iter()
            .filter(|(_, object)| selection.matches(object))
            .collect();
        let total = matching.len();
        let page: Vec<(StoreKey, Value)> = matching
            .into_iter()
            .skip(offset)
            .take(limit.unwrap_or(usize::MAX))
            .collect();
        let more = offset + page.len() < total;
        let last = page.last().map(|(key, _)| key.clone());
        (page.into_iter().map(|(_, o)| o).collect(), last, more)
    } else {
        // The kind as it is now is the kind at the list's version: the page is read from
        // where the last one ended, so a list costs its objects once, not once per page.
        let start = after.map_or(
            Bound::Included((kind_index, String::new(), String::new())),
            Bound::Excluded,
        );
        let end = Bound::Excluded((kind_index + 1, String::new(), String::new()));
        let mut visited = 0u64;
        let mut matching = store
            .objects
            .range((start, end))
            .inspect(|_| visited += 1)
            .filter(|(_, object)| selection.matches(object));
        let page: Vec<(StoreKey, Value)> = matching
            .by_ref()
            .take(limit.unwrap_or(usize::MAX))
            .map(|(key, object)| (key.clone(), object.clone()))
            .collect();
        let more = matching.next().is_some();
        store.served_work += visited;
        let last = page.last().map(|(key, _)| key.clone());
        (page.into_iter().map(|(_, o)| o).collect(), last, more)
    };
    let next = offset + page.len();
    let page: Vec<Value> = page.into_iter().map(without_type).collect();
    let mut metadata = json!({ "resourceVersion": version.to_string() });
    if more && let Some((_, namespace, name)) = last {
        metadata["continue"] = Value::from(format!("{version}/{next}/{namespace}/{name}"));
    }
    let body = json!({
        "apiVersion": served.api_version(),
        "kind": format!("{}List", served.kind),
        "metadata": metadata,
        "items": page,
    });
    json_response(StatusCode::OK, &body)
}

fn watch_line(event_type: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({ "type": event_type, "object": object })).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(served: &ServedKind, version: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({ "resourceVersion": version.to_string() });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    let object = json!({
        "apiVersion": served.api_version(),
        "kind": served.kind,
        "metadata": metadata,
    });
    watch_line("BOOKMARK", &object)
}

fn too_old(requested: u64, oldest: u64) -> Bytes {
    let message = format!("too old resource version: {requested} ({oldest})");
    watch_line("ERROR", &status_object(410, "Expired", &message))
}

/// Where a watch starts: after version N, or (for `0`, none, or `sendInitialEvents`) with the
/// current objects as `ADDED` events.
enum WatchStart {
    After(u64),
    CurrentState { initial_events_end: bool },
}

fn watch(
    shared: &Arc<Shared>,
    kind_index: usize,
    selection: Selection,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let send_initial_events = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let start = match query.get("resourceVersion").map(String::as_str) {
        _ if send_initial_events => WatchStart::CurrentState {
            initial_events_end: true,
        },
        None | Some("" | "0") => WatchStart::CurrentState {
            initial_events_end: false,
        },
        Some(version) => match version.parse::<u64>() {
            Ok(version) => WatchStart::After(version),
            Err(_) => return status_response(400, "BadRequest", "resourceVersion is not a number"),
        },
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);

    let (lines, receiver) = mpsc::channel::<Bytes>(64);
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(
            timeout,
            stream_events(&shared, kind_index, &selection, start, bookmarks, &lines),
        )
        .await;
    });
    let body = StreamBody::new(ReceiverStream::new(receiver).map(|line| Ok(Frame::data(line))));
    let mut response = Response::new(BodyExt::boxed(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The first lines of a watch, the version it continues from (`None` when it must end at
/// once), and the expiry epoch it started in.
fn initial_events(
    shared: &Shared,
    kind_index: usize,
    selection: &Selection,
    start: WatchStart,
) -> (Vec<Bytes>, Option<u64>, u64) {
    let served = &shared.kinds[kind_index];
    let store = shared.store();
    let epoch = store.expiry_epoch;
    match start {
        WatchStart::After(version) if version < store.oldest_served_version => (
            vec![too_old(version, store.oldest_served_version)],
            None,
            epoch,
        ),
        WatchStart::After(version) => (Vec::new(), Some(version), epoch),
        WatchStart::CurrentState { initial_events_end } => {
            let version = store.resource_version;
            let mut initial: Vec<Bytes> = store
                .objects
                .iter()
                .filter(|((k, _, _), object)| *k == kind_index && selection.matches(object))
                .map(|(_, object)| watch_line("ADDED", object))
                .collect();
            if initial_events_end {
                initial.push(bookmark(served, version, true));
            }
            (initial, Some(version), epoch)
        }
    }
}

/// Feeds one watch until the client goes away, the history expires, or the caller's timeout.
async fn stream_events(
    shared: &Shared,
    kind_index: usize,
    selection: &Selection,
    start: WatchStart,
    bookmarks: bool,
    lines: &mpsc::Sender<Bytes>,
) {
    let served = &shared.kinds[kind_index];
    let mut changes = shared.changed.subscribe();
    changes.borrow_and_update();
    let close_epoch = shared.store().close_epoch;
    let (initial, cursor, epoch) = initial_events(shared, kind_index, selection, start);
    let Some(mut cursor) = cursor else {
        // Too old: the ERROR event is all this watch says.
        for line in initial {
            let _ = lines.send(line).await;
        }
        return;
    };
    for line in initial {
        if lines.send(line).await.is_err() {
            return;
        }
    }
    loop {
        let pending: Vec<Bytes> = {
            let mut store = shared.store();
            if store.expiry_epoch != epoch {
                vec![too_old(cursor, store.oldest_served_version), Bytes::new()]
            } else if store.close_epoch != close_epoch {
                vec![Bytes::new()]
            } else if store.watches_held {
                Vec::new()
            } else {
                let tail = history_after(&store, cursor);
                let visited = tail.len() as u64;
                let lines = tail
                    .iter()
                    .filter(|e| e.kind_index == kind_index)
                    .filter(|e| selection.matches(&e.object))
                    .map(|e| watch_line(e.event.as_str(), &e.object))
                    .collect();
                store.served_work += visited;
                cursor = store.resource_version;
                lines
            }
        };
        for line in pending {
            if line.is_empty() {
                // The stream ends here (after its ERROR event, if it expired).
                return;
            }
            if lines.send(line).await.is_err() {
                return;
            }
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                changes.borrow_and_update();
            }
            () = tokio::time::sleep(shared.bookmark_interval) => {
                let held = shared.store().watches_held;
                if bookmarks && !held && lines.send(bookmark(served, cursor, false)).await.is_err() {
                    return;
                }
                if lines.is_closed() {
                    return;
                }
            }
        }
    }
}
