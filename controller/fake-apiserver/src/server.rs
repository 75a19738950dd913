//! The HTTP side: a request's route and parameters, the write it asks for, and the response
//! (JSON, a Status for a refusal, or a stream of watch events).

use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::client::Body;
use serde_json::{Value, json};

use crate::fields::{self, Applied};
use crate::selector::Filter;
use crate::store::{Key, Refusal, Store, resource};
use crate::watch::WatchRequest;
use crate::{FakeApi, Logged};

type ResponseBody = BoxBody<Bytes, Infallible>;

const APPLY: &str = "application/apply-patch+yaml";

/// A request path: collection, namespace (None: every namespace, empty: cluster-scoped), name
/// and subresource.
struct Route {
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (prefix, rest) = match parts.as_slice() {
            ["api", v, rest @ ..] => (format!("api/{v}"), rest),
            ["apis", g, v, rest @ ..] => (format!("apis/{g}/{v}"), rest),
            _ => return None,
        };
        let owned = |s: Option<&&str>| s.map(|s| s.to_string());
        let (namespace, resource, tail) = match rest {
            ["namespaces", ns, resource, tail @ ..] => (Some(ns.to_string()), *resource, tail),
            [resource] => (None, *resource, &[][..]),
            [resource, tail @ ..] => (Some(String::new()), *resource, tail),
            [] => return None,
        };
        Some(Route {
            collection: format!("{prefix}/{resource}"),
            namespace,
            name: owned(tail.first()),
            subresource: owned(tail.get(1)),
        })
    }

    fn key(&self, name: &str) -> Key {
        (self.collection.clone(), self.namespace.clone().unwrap_or_default(), name.to_string())
    }

    fn status(&self) -> bool {
        self.subresource.as_deref() == Some("status")
    }
}

fn respond(code: u16, body: &Value) -> Response<ResponseBody> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).expect("JSON"))).boxed())
        .expect("a response")
}

fn refuse(refusal: Refusal) -> Response<ResponseBody> {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": refusal.message, "reason": refusal.reason, "code": refusal.code});
    respond(refusal.code, &status)
}

/// The request's verb, as RBAC names it.
fn verb(method: &Method, route: &Route, params: &HashMap<String, String>) -> &'static str {
    match *method {
        Method::GET if route.name.is_some() => "get",
        Method::GET if params.get("watch").is_some_and(|w| w == "true" || w == "1") => "watch",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

impl Logged {
    /// The request's verb as RBAC names it: get, list, watch, create, update, patch, delete.
    pub fn verb(&self) -> &'static str {
        let params: HashMap<String, String> = form_urlencoded::parse(self.query().as_bytes()).into_owned().collect();
        let method = Method::from_bytes(self.method.as_bytes()).unwrap_or(Method::GET);
        Route::parse(&self.path).map_or("unknown", |route| verb(&method, &route, &params))
    }
}

impl FakeApi {
    pub(crate) async fn handle(&self, request: Request<Body>) -> Response<ResponseBody> {
        let (parts, body) = request.into_parts();
        let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let query = parts.uri.query().map(String::from);
        let params: HashMap<String, String> =
            form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes()).into_owned().collect();
        let content_type = parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let mut state = self.state();
        let logged_body = if state.forget_bodies { Value::Null } else { body.clone() };
        state.log.push(Logged {
            method: parts.method.to_string(),
            path: parts.uri.path().into(),
            query,
            content_type: content_type.into(),
            body: logged_body,
        });
        let Some(route) = Route::parse(parts.uri.path()) else {
            return refuse(Refusal::new(404, "NotFound", format!("the server could not find {}", parts.uri.path())));
        };
        let verb = verb(&parts.method, &route, &params);
        if verb == "create" {
            let token = parts.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            let token = token.and_then(|v| v.strip_prefix("Bearer "));
            if let Some(answer) = state.reviews.answer(&route.collection, &body, token) {
                return answer.map_or_else(refuse, |review| respond(201, &review));
            }
        }
        let store = &mut state.store;
        let manager = params.get("fieldManager").map_or("unknown", String::as_str);
        let result = match (verb, &route.name) {
            ("watch", _) => return watch(store, route, &params),
            ("list", _) => Ok((200, list(store, &route, &params))),
            ("get", Some(name)) => store
                .get(&route.key(name))
                .cloned()
                .ok_or_else(|| Refusal::not_found(&route.key(name)))
                .map(|o| (200, o)),
            ("create", None) => create(store, &route, body, manager).map(|o| (201, o)),
            ("update", Some(name)) => replace(store, &route.key(name), route.status(), body, manager).map(|o| (200, o)),
            ("patch", Some(name)) => {
                let force = params.get("force").is_some_and(|f| f == "true");
                let write = Write { key: route.key(name), status: route.status(), manager, force };
                patch(store, &write, content_type, body).map(|o| (200, o))
            }
            ("delete", Some(name)) => store.delete(&route.key(name), true).map(|o| (200, o)),
            (verb, _) => Err(Refusal::new(405, "MethodNotAllowed", format!("{verb} {}", parts.uri.path()))),
        };
        match result {
            Ok((code, object)) => respond(code, &object),
            Err(refusal) => refuse(refusal),
        }
    }
}

fn filter(route: &Route, params: &HashMap<String, String>) -> Filter {
    let param = |name: &str| params.get(name).map_or("", String::as_str);
    Filter::new(route.namespace.clone(), param("labelSelector"), param("fieldSelector"))
}

/// The objects `params` select, in pages of `limit` when asked (as kube-runtime's watcher lists):
/// the `continue` token names the last object of the page before. Pages are cut from the current
/// objects, not from a snapshot taken at the first page as etcd's are.
fn list(store: &Store, route: &Route, params: &HashMap<String, String>) -> Value {
    let filter = filter(route, params);
    let position = |o: &Value| {
        let field = |name: &str| o["metadata"][name].as_str().unwrap_or_default().to_string();
        (field("namespace"), field("name"))
    };
    let after =
        params.get("continue").and_then(|token| token.split_once('/')).map(|(ns, name)| (ns.into(), name.into()));
    let limit = params.get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let mut items = store
        .objects(&route.collection)
        .filter(|o| filter.matches(o))
        .filter(|o| after.as_ref().is_none_or(|after: &(String, String)| position(o) > *after));
    let page: Vec<&Value> = items.by_ref().take(limit).collect();
    let mut metadata = json!({"resourceVersion": store.version.to_string()});
    if let Some(last) = page.last().filter(|_| items.next().is_some()) {
        let (namespace, name) = position(last);
        metadata["continue"] = json!(format!("{namespace}/{name}"));
    }
    json!({"apiVersion": "v1", "kind": "List", "metadata": metadata, "items": page})
}

fn watch(store: &mut Store, route: Route, params: &HashMap<String, String>) -> Response<ResponseBody> {
    let request = WatchRequest {
        filter: filter(&route, params),
        since: params.get("resourceVersion").and_then(|v| v.parse().ok()),
        bookmarks: params.get("allowWatchBookmarks").is_some_and(|b| b == "true"),
        collection: route.collection,
    };
    let mut events = store.watch(request);
    let stream = futures::stream::poll_fn(move |cx| events.poll_recv(cx)).map(|bytes| Ok(Frame::data(bytes)));
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("a response")
}

fn create(store: &mut Store, route: &Route, mut object: Value, manager: &str) -> Result<Value, Refusal> {
    let name = match (object["metadata"]["name"].as_str(), object["metadata"]["generateName"].as_str()) {
        (Some(name), _) => name.to_string(),
        (None, Some(prefix)) => format!("{prefix}{:05}", store.version + 1),
        (None, None) => return Err(Refusal::new(422, "Invalid", "metadata.name: Required value")),
    };
    let key = route.key(&name);
    if store.get(&key).is_some() {
        return Err(Refusal::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", resource(&key.0))));
    }
    // The server sets these, whatever the client sent.
    for server_set in ["resourceVersion", "uid", "creationTimestamp", "generation", "deletionTimestamp"] {
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove(server_set);
        }
    }
    Ok(store.write(&key, object, manager, None, true))
}

/// What a write through the status subresource keeps of `new`: its status and nothing else;
/// through the main resource: everything but the status.
fn scoped(old: &Value, mut new: Value, status: bool) -> Value {
    if status {
        let status = new["status"].take();
        new = old.clone();
        new["status"] = status;
    } else {
        new["status"] = old["status"].clone();
    }
    if new["status"].is_null() {
        new.as_object_mut().expect("an object").remove("status");
    }
    new
}

fn replace(store: &mut Store, key: &Key, status: bool, object: Value, manager: &str) -> Result<Value, Refusal> {
    let old = store.get(key).cloned().ok_or_else(|| Refusal::not_found(key))?;
    store.precondition(key, &object["metadata"]["resourceVersion"])?;
    let new = scoped(&old, object, status);
    Ok(store.write(key, new, manager, None, true))
}

/// A patch's target and parameters.
struct Write<'a> {
    key: Key,
    /// Through the status subresource.
    status: bool,
    manager: &'a str,
    force: bool,
}

fn patch(store: &mut Store, write: &Write, content_type: &str, body: Value) -> Result<Value, Refusal> {
    let key = &write.key;
    if content_type == APPLY {
        return apply(store, write, body);
    }
    let old = store.get(key).cloned().ok_or_else(|| Refusal::not_found(key))?;
    let mut new = old.clone();
    match content_type {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            store.precondition(key, &body["metadata"]["resourceVersion"])?;
            json_patch::merge(&mut new, &body);
        }
        "application/json-patch+json" => {
            // Like the API server, a test for null passes on a missing path.
            let ops: Vec<Value> = body
                .as_array()
                .into_iter()
                .flatten()
                .filter(|op| {
                    let path = op["path"].as_str().unwrap_or_default();
                    !(op["op"] == "test" && op["value"].is_null() && old.pointer(path).is_none())
                })
                .cloned()
                .collect();
            let ops: json_patch::Patch = serde_json::from_value(Value::Array(ops))
                .map_err(|e| Refusal::new(400, "BadRequest", e.to_string()))?;
            json_patch::patch(&mut new, &ops).map_err(|e| Refusal::new(422, "Invalid", e.to_string()))?;
        }
        other => return Err(Refusal::new(415, "UnsupportedMediaType", other)),
    }
    let new = scoped(&old, new, write.status);
    if new == old {
        return Ok(old);
    }
    Ok(store.write(key, new, write.manager, None, true))
}

/// Server-side apply; on the main resource it creates a missing object.
fn apply(store: &mut Store, write: &Write, body: Value) -> Result<Value, Refusal> {
    let key = &write.key;
    store.precondition(key, &body["metadata"]["resourceVersion"])?;
    let old = match store.get(key) {
        Some(old) => old.clone(),
        None if write.status => return Err(Refusal::not_found(key)),
        None => json!({"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": {}}),
    };
    let mut owners = store.owners(key);
    match fields::apply(&mut owners, &old, &body, write.manager, write.force, write.status) {
        Applied::Conflicts(conflicts) => {
            let listed: Vec<String> = conflicts
                .iter()
                .map(|(manager, field)| format!("conflict with \"{manager}\": .{}", field.join(".")))
                .collect();
            let message = format!("Apply failed with {} conflict(s): {}", conflicts.len(), listed.join(", "));
            Err(Refusal::new(409, "Conflict", message))
        }
        Applied::Object(new) if new == old => Ok(old),
        Applied::Object(new) => Ok(store.write(key, new, write.manager, Some(owners), true)),
    }
}
