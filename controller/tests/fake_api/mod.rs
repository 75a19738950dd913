//! An in-memory Kubernetes API server behind `kube::Client`: the REST calls the reconciler makes
//! (get, list with label selectors, create, delete with finalizers and owner-reference garbage
//! collection, merge / JSON / server-side-apply patches, the status subresource), answered from a
//! map of JSON objects. Server-side apply tracks owners per top-level status field, enough to see
//! a field written by another manager survive the controller's applies.
#![allow(dead_code)] // each test binary uses part of it

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};

/// (collection, namespace, name); collection is e.g. `apis/palisade.dev/v1alpha1/policyrollouts`.
type Key = (String, String, String);

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

#[derive(Default)]
struct Store {
    objects: BTreeMap<Key, Value>,
    /// Top-level status field → the manager that last wrote it.
    status_owners: HashMap<Key, BTreeMap<String, String>>,
    version: u64,
    log: Vec<Logged>,
}

#[derive(Clone, Default)]
pub struct FakeApi(Arc<Mutex<Store>>);

struct Route {
    collection: String,
    namespace: String,
    name: Option<String>,
    status: bool,
}

fn route(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (prefix, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (format!("api/{v}"), rest),
        ["apis", g, v, rest @ ..] => (format!("apis/{g}/{v}"), rest),
        _ => return None,
    };
    match rest {
        ["namespaces", ns, resource, tail @ ..] => Some(Route {
            collection: format!("{prefix}/{resource}"),
            namespace: ns.to_string(),
            name: tail.first().map(|s| s.to_string()),
            status: tail.get(1) == Some(&"status"),
        }),
        _ => None,
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    respond(code, &body)
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| decode(v))
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 3 <= bytes.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// `k=v,k2=v2,k3` (equality and existence), the forms the controller uses.
fn selects(selector: &str, labels: &Value) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| match term.split_once('=') {
        Some((k, v)) => labels.get(k).and_then(Value::as_str) == Some(v),
        None => labels.get(term).is_some(),
    })
}

impl FakeApi {
    pub fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(request).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Puts an object in the store as a client with full rights would create it.
    pub fn insert(&self, collection: &str, mut object: Value) {
        let mut store = self.0.lock().unwrap();
        let ns = object["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        store.stamp(&mut object, true);
        store.objects.insert((collection.into(), ns, name), object);
    }

    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        self.0.lock().unwrap().objects.get(&(collection.into(), namespace.into(), name.into())).cloned()
    }

    pub fn list(&self, collection: &str, namespace: &str) -> Vec<Value> {
        let store = self.0.lock().unwrap();
        store
            .objects
            .iter()
            .filter(|((c, ns, _), _)| c == collection && ns == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Changes an object as another client would (a spec edit, an annotation, an agent's report, an
    /// approval).
    pub fn update(&self, collection: &str, namespace: &str, name: &str, change: impl FnOnce(&mut Value)) {
        let mut store = self.0.lock().unwrap();
        let key = (collection.to_string(), namespace.to_string(), name.to_string());
        let mut object = store.objects.get(&key).cloned().expect("object to update");
        let before = object.clone();
        change(&mut object);
        if object.get("spec") != before.get("spec") {
            let generation = object["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            object["metadata"]["generation"] = json!(generation);
        }
        // Status fields written here belong to another client, e.g. `palisade promote`.
        let owners = store.status_owners.entry(key.clone()).or_default();
        for (field, value) in object["status"].as_object().into_iter().flatten() {
            if before["status"].get(field) != Some(value) {
                owners.insert(field.clone(), "other-client".into());
            }
        }
        store.stamp(&mut object, false);
        store.objects.insert(key, object);
    }

    /// Requests logged so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.0.lock().unwrap().log.clone()
    }

    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        let query = parts.uri.query().unwrap_or_default().to_string();
        let content_type =
            parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let mut store = self.0.lock().unwrap();
        store.log.push(Logged {
            path: parts.uri.path().into(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: body.clone(),
        });
        let Some(route) = route(parts.uri.path()) else {
            return status(StatusCode::NOT_FOUND, "NotFound", format!("no route {}", parts.uri.path()));
        };
        let manager = query_param(&query, "fieldManager").unwrap_or_else(|| "unknown".into());
        match (parts.method.clone(), route.name.clone()) {
            (Method::GET, None) => store.list_response(&route, &query),
            (Method::GET, Some(name)) => match store.objects.get(&store.key(&route, &name)) {
                Some(object) => respond(StatusCode::OK, object),
                None => status(StatusCode::NOT_FOUND, "NotFound", format!("{name} not found")),
            },
            (Method::POST, None) => store.create(&route, body),
            (Method::PUT, Some(name)) => store.replace(&route, &name, body),
            (Method::PATCH, Some(name)) => {
                let force = query_param(&query, "force").as_deref() == Some("true");
                store.patch(&route, &name, &content_type, body, &manager, force)
            }
            (Method::DELETE, Some(name)) => store.delete(&route, &name),
            (method, _) => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", format!("{method}")),
        }
    }
}

impl Store {
    fn key(&self, route: &Route, name: &str) -> Key {
        (route.collection.clone(), route.namespace.clone(), name.to_string())
    }

    /// New resourceVersion; uid, creationTimestamp and generation on creation. Creation times
    /// advance one second per write, so "newest" is well defined within a test.
    fn stamp(&mut self, object: &mut Value, created: bool) {
        self.version += 1;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(self.version.to_string());
        if created {
            meta["uid"] = json!(format!("uid-{}", self.version));
            let time = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + self.version as i64).unwrap();
            meta["creationTimestamp"] = json!(time.to_string());
            meta["generation"] = json!(1);
        }
    }

    fn list_response(&self, route: &Route, query: &str) -> Response<Body> {
        let selector = query_param(query, "labelSelector").unwrap_or_default();
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|((c, ns, _), _)| *c == route.collection && *ns == route.namespace)
            .map(|(_, v)| v)
            .filter(|v| selects(&selector, &v["metadata"]["labels"]))
            .cloned()
            .collect();
        respond(StatusCode::OK, &json!({"metadata": {"resourceVersion": self.version.to_string()}, "items": items}))
    }

    fn create(&mut self, route: &Route, mut object: Value) -> Response<Body> {
        let Some(name) = object["metadata"]["name"].as_str().map(String::from) else {
            return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name is required".into());
        };
        let key = self.key(route, &name);
        if self.objects.contains_key(&key) {
            return status(StatusCode::CONFLICT, "AlreadyExists", format!("{name} already exists"));
        }
        object["metadata"]["namespace"] = json!(route.namespace);
        self.stamp(&mut object, true);
        self.objects.insert(key, object.clone());
        respond(StatusCode::CREATED, &object)
    }

    fn replace(&mut self, route: &Route, name: &str, mut object: Value) -> Response<Body> {
        let key = self.key(route, name);
        let Some(old) = self.objects.get(&key) else {
            return status(StatusCode::NOT_FOUND, "NotFound", format!("{name} not found"));
        };
        let given = object["metadata"]["resourceVersion"].as_str();
        if given.is_some_and(|v| Some(v) != old["metadata"]["resourceVersion"].as_str()) {
            return status(StatusCode::CONFLICT, "Conflict", "the object has been modified".into());
        }
        for field in ["uid", "creationTimestamp", "generation"] {
            object["metadata"][field] = old["metadata"][field].clone();
        }
        self.stamp(&mut object, false);
        self.objects.insert(key, object.clone());
        respond(StatusCode::OK, &object)
    }

    fn patch(
        &mut self,
        route: &Route,
        name: &str,
        content_type: &str,
        body: Value,
        manager: &str,
        force: bool,
    ) -> Response<Body> {
        let key = self.key(route, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            return status(StatusCode::NOT_FOUND, "NotFound", format!("{name} not found"));
        };
        let mut object = old.clone();
        let owners = self.status_owners.entry(key.clone()).or_default();
        match content_type {
            "application/apply-patch+yaml" if route.status => {
                let applied = body["status"].as_object().cloned().unwrap_or_default();
                let conflicts: Vec<&String> =
                    applied.keys().filter(|k| owners.get(*k).is_some_and(|m| m != manager)).collect();
                if !conflicts.is_empty() && !force {
                    return status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!("conflicts with other managers: {conflicts:?}"),
                    );
                }
                let status = object["status"].as_object().cloned().unwrap_or_default();
                let mut merged = serde_json::Map::new();
                // Fields kept: those some other manager owns; this manager's set is replaced.
                for (k, v) in status {
                    if owners.get(&k).is_some_and(|m| m != manager) && !applied.contains_key(&k) {
                        merged.insert(k, v);
                    }
                }
                owners.retain(|_, m| m != manager);
                for (k, v) in applied {
                    owners.insert(k.clone(), manager.to_string());
                    merged.insert(k, v);
                }
                object["status"] = Value::Object(merged);
            }
            "application/apply-patch+yaml" | "application/merge-patch+json" => {
                json_patch::merge(&mut object, &body);
                if route.status {
                    for (k, v) in body["status"].as_object().into_iter().flatten() {
                        if v.is_null() {
                            owners.remove(k);
                        } else {
                            owners.insert(k.clone(), manager.to_string());
                        }
                    }
                }
            }
            "application/json-patch+json" => {
                // Like the API server, a test for null passes on a missing path.
                let ops: Vec<Value> = body
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|op| {
                        !(op["op"] == "test"
                            && op["value"].is_null()
                            && object.pointer(op["path"].as_str().unwrap()).is_none())
                    })
                    .cloned()
                    .collect();
                let ops: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
                if let Err(e) = json_patch::patch(&mut object, &ops) {
                    return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string());
                }
                for op in body.as_array().into_iter().flatten() {
                    let path = op["path"].as_str().unwrap_or_default();
                    if let Some(field) = path.strip_prefix("/status/").map(|p| p.split('/').next().unwrap().to_string())
                    {
                        if op["op"] == "remove" && !path.trim_start_matches("/status/").contains('/') {
                            owners.remove(&field);
                        } else if op["op"] != "test" {
                            owners.insert(field, manager.to_string());
                        }
                    }
                }
            }
            other => return status(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", other.into()),
        }
        // The status subresource changes only the status; the main resource never does.
        if route.status {
            let status = object["status"].take();
            object = old.clone();
            object["status"] = status;
        } else {
            object["status"] = old["status"].clone();
            if object.get("spec") != old.get("spec") {
                object["metadata"]["generation"] = json!(old["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
            }
        }
        if object["status"].is_null() {
            object.as_object_mut().unwrap().remove("status");
        }
        if object == old {
            return respond(StatusCode::OK, &object);
        }
        self.stamp(&mut object, false);
        let finished = !object["metadata"]["deletionTimestamp"].is_null()
            && object["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
        if finished {
            self.remove(&key);
        } else {
            self.objects.insert(key, object.clone());
        }
        respond(StatusCode::OK, &object)
    }

    fn delete(&mut self, route: &Route, name: &str) -> Response<Body> {
        let key = self.key(route, name);
        let Some(mut object) = self.objects.get(&key).cloned() else {
            return status(StatusCode::NOT_FOUND, "NotFound", format!("{name} not found"));
        };
        if object["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
            if object["metadata"]["deletionTimestamp"].is_null() {
                object["metadata"]["deletionTimestamp"] = json!("2030-01-01T00:00:00Z");
                self.stamp(&mut object, false);
                self.objects.insert(key, object.clone());
            }
            return respond(StatusCode::OK, &object);
        }
        self.remove(&key);
        respond(StatusCode::OK, &object)
    }

    /// Removes an object and, like the garbage collector, every object it owns.
    fn remove(&mut self, key: &Key) {
        let Some(object) = self.objects.remove(key) else { return };
        self.status_owners.remove(key);
        let uid = object["metadata"]["uid"].clone();
        let owned: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, v)| v["metadata"]["ownerReferences"].as_array().into_iter().flatten().any(|o| o["uid"] == uid))
            .map(|(k, _)| k.clone())
            .collect();
        for key in owned {
            self.remove(&key);
        }
    }
}
