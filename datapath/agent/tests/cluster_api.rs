//! The agent's Kubernetes side against an in-memory API server behind `kube::Client` (the
//! controller's fake, controller/tests/fake_api, plus watches): watch events become exactly the
//! expected changes, a restarted watch deletes what vanished meanwhile, `Synced` follows every
//! initial listing, and reports become exactly the expected server-side applies.
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use palisade_agent::Change;
use palisade_agent::cluster_watch::{WatchState, watch};
use palisade_agent::report_writer::ReportWriter;
use palisade_rollout::crd::{AuditTotals, PolicyAuditReport, PolicyAuditReportSpec, PolicyRevision, PolicyRollout};
use serde_json::{Value, json};

mod fake {
    //! Lists, watches (newline-delimited events on a streaming body), server-side-apply patches
    //! and deletes, answered from a map of JSON objects; every request logged.
    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use futures::StreamExt;
    use http::{Method, Request, Response, StatusCode};
    use http_body::Frame;
    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt, Full, StreamBody};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

    /// (collection, namespace, name); collection is e.g. `api/v1/pods`.
    type Key = (String, String, String);

    #[derive(Clone, Debug, PartialEq)]
    pub struct Logged {
        pub method: String,
        pub path: String,
        pub query: String,
        pub content_type: String,
        pub body: Value,
    }

    #[derive(Default)]
    struct Store {
        objects: BTreeMap<Key, Value>,
        version: u64,
        log: Vec<Logged>,
        /// Open watches: collection, which of its objects, and where their events go.
        watches: Vec<(String, Filter, UnboundedSender<Bytes>)>,
    }

    /// What a list or watch asks for: a namespace (None: all) and `labelSelector` equalities.
    #[derive(Clone, Debug, Default)]
    struct Filter {
        namespace: Option<String>,
        labels: Vec<(String, String)>,
    }

    impl Filter {
        fn new(namespace: Option<String>, query: &str) -> Filter {
            let selector = query.split('&').find_map(|kv| kv.strip_prefix("labelSelector=")).map(decode);
            let labels = selector
                .iter()
                .flat_map(|s| s.split(','))
                .filter(|term| !term.is_empty())
                .map(|term| {
                    let (k, v) = term.split_once('=').expect("the fake understands only key=value selectors");
                    (k.trim_end_matches('=').to_string(), v.to_string())
                })
                .collect();
            Filter { namespace, labels }
        }

        fn matches(&self, object: &Value) -> bool {
            let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
            self.namespace.as_ref().is_none_or(|n| n == namespace)
                && self.labels.iter().all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v.as_str()))
        }
    }

    /// Percent-decoding of a query value.
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' if i + 2 < bytes.len() => {
                    out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).expect("percent-encoded byte"));
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
        String::from_utf8(out).expect("UTF-8 query")
    }

    #[derive(Clone, Default)]
    pub struct FakeApi(Arc<Mutex<Store>>);

    type ResponseBody = BoxBody<Bytes, Infallible>;

    /// Collection, namespace (None: all) and name of a request path.
    fn route(path: &str) -> Option<(String, Option<String>, Option<String>)> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (prefix, rest) = match parts.as_slice() {
            ["api", v, rest @ ..] => (format!("api/{v}"), rest),
            ["apis", g, v, rest @ ..] => (format!("apis/{g}/{v}"), rest),
            _ => return None,
        };
        match rest {
            ["namespaces", ns, resource, tail @ ..] => {
                Some((format!("{prefix}/{resource}"), Some(ns.to_string()), tail.first().map(|s| s.to_string())))
            }
            [resource] => Some((format!("{prefix}/{resource}"), None, None)),
            [resource, name] => Some((format!("{prefix}/{resource}"), Some(String::new()), Some(name.to_string()))),
            _ => None,
        }
    }

    fn respond(code: StatusCode, body: &Value) -> Response<ResponseBody> {
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())).boxed())
            .unwrap()
    }

    fn not_found(name: &str) -> Response<ResponseBody> {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{name} not found"), "reason": "NotFound", "code": 404});
        respond(StatusCode::NOT_FOUND, &status)
    }

    fn line(value: &Value) -> Bytes {
        let mut bytes = serde_json::to_vec(value).unwrap();
        bytes.push(b'\n');
        Bytes::from(bytes)
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

        /// Creates or changes an object as another client would; open watches see it.
        pub fn put(&self, collection: &str, object: Value) {
            self.store(collection, object, true);
        }

        /// Changes an object while no watch sees it (the event is lost).
        pub fn put_unseen(&self, collection: &str, object: Value) {
            self.store(collection, object, false);
        }

        fn store(&self, collection: &str, mut object: Value, notify: bool) {
            let mut store = self.0.lock().unwrap();
            let ns = object["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
            let name = object["metadata"]["name"].as_str().unwrap().to_string();
            store.version += 1;
            object["metadata"]["resourceVersion"] = json!(store.version.to_string());
            object["metadata"]["uid"] = json!(format!("uid-{name}"));
            let old = store.objects.insert((collection.into(), ns, name), object.clone());
            if notify {
                let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
                store.notify(collection, &json!({"type": kind, "object": object}));
            }
        }

        pub fn remove(&self, collection: &str, namespace: &str, name: &str) {
            self.take(collection, namespace, name, true);
        }

        pub fn remove_unseen(&self, collection: &str, namespace: &str, name: &str) {
            self.take(collection, namespace, name, false);
        }

        fn take(&self, collection: &str, namespace: &str, name: &str, notify: bool) {
            let mut store = self.0.lock().unwrap();
            let mut object =
                store.objects.remove(&(collection.into(), namespace.into(), name.into())).expect("object to remove");
            store.version += 1;
            object["metadata"]["resourceVersion"] = json!(store.version.to_string());
            if notify {
                store.notify(collection, &json!({"type": "DELETED", "object": object}));
            }
        }

        /// Ends the watches of `collection` with 410 Gone: their resource version expired, so
        /// they list again.
        pub fn expire(&self, collection: &str) {
            let mut store = self.0.lock().unwrap();
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}});
            store.notify(collection, &gone);
            store.watches.retain(|(c, _, _)| c != collection);
        }

        pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
            self.0.lock().unwrap().objects.get(&(collection.into(), namespace.into(), name.into())).cloned()
        }

        /// Requests other than lists and watches, so far.
        pub fn writes(&self) -> Vec<Logged> {
            self.0.lock().unwrap().log.iter().filter(|l| l.method != "GET").cloned().collect()
        }

        /// Lists and watches, so far.
        pub fn reads(&self) -> Vec<Logged> {
            self.0.lock().unwrap().log.iter().filter(|l| l.method == "GET").cloned().collect()
        }

        async fn handle(&self, request: Request<Body>) -> Response<ResponseBody> {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            let query = parts.uri.query().unwrap_or_default().to_string();
            let content_type =
                parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let mut store = self.0.lock().unwrap();
            store.log.push(Logged {
                method: parts.method.to_string(),
                path: parts.uri.path().into(),
                query: query.clone(),
                content_type,
                body: body.clone(),
            });
            let Some((collection, namespace, name)) = route(parts.uri.path()) else {
                return not_found(parts.uri.path());
            };
            let key = |name: &str| (collection.clone(), namespace.clone().unwrap_or_default(), name.to_string());
            match (parts.method, name) {
                (Method::GET, None) if query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1") => {
                    let (events, mut rx) = unbounded_channel::<Bytes>();
                    store.watches.push((collection, Filter::new(namespace, &query), events));
                    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
                        .map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
                    Response::builder()
                        .status(StatusCode::OK)
                        .header("content-type", "application/json")
                        .body(BodyExt::boxed(StreamBody::new(stream)))
                        .unwrap()
                }
                (Method::GET, None) => {
                    let filter = Filter::new(namespace, &query);
                    let items: Vec<Value> = store
                        .objects
                        .iter()
                        .filter(|((c, _, _), v)| *c == collection && filter.matches(v))
                        .map(|(_, v)| v.clone())
                        .collect();
                    let version = store.version.to_string();
                    respond(StatusCode::OK, &json!({"metadata": {"resourceVersion": version}, "items": items}))
                }
                (Method::PATCH, Some(name)) => {
                    let mut object = body;
                    store.version += 1;
                    object["metadata"]["resourceVersion"] = json!(store.version.to_string());
                    store.objects.insert(key(&name), object.clone());
                    respond(StatusCode::OK, &object)
                }
                (Method::DELETE, Some(name)) => match store.objects.remove(&key(&name)) {
                    Some(object) => respond(StatusCode::OK, &object),
                    None => not_found(&name),
                },
                (_, Some(name)) => match store.objects.get(&key(&name)) {
                    Some(object) => respond(StatusCode::OK, object),
                    None => not_found(&name),
                },
                (method, None) => respond(StatusCode::METHOD_NOT_ALLOWED, &json!({"message": method.to_string()})),
            }
        }
    }

    impl Store {
        /// Sends an event to the watches of `collection` whose filter its object passes (an
        /// error event, without an object of the kind, to all of them).
        fn notify(&mut self, collection: &str, event: &Value) {
            let bytes = line(event);
            let error = event["type"] == "ERROR";
            self.watches.retain(|(c, filter, tx)| {
                c != collection || !(error || filter.matches(&event["object"])) || tx.send(bytes.clone()).is_ok()
            });
        }
    }
}

use fake::FakeApi;

const PODS: &str = "api/v1/pods";
const NAMESPACES: &str = "api/v1/namespaces";
const NODES: &str = "api/v1/nodes";
const SERVICES: &str = "api/v1/services";
const REVISIONS: &str = "apis/palisade.dev/v1alpha1/policyrevisions";
const ROLLOUTS: &str = "apis/palisade.dev/v1alpha1/policyrollouts";
const REPORTS: &str = "apis/palisade.dev/v1alpha1/policyauditreports";
const SLICES: &str = "apis/discovery.k8s.io/v1/endpointslices";

fn pod(name: &str, labels: Value, node: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"podIP": ip}})
}

fn node(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"zone": "a"}},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

/// An EndpointSlice of Service `service` with one endpoint per address; `ready: false` on the
/// ones listed in `not_ready`.
fn slice(namespace: &str, name: &str, service: &str, addresses: &[&str], not_ready: &[&str]) -> Value {
    let endpoints: Vec<Value> = addresses
        .iter()
        .map(|a| {
            let ready = !not_ready.contains(a);
            json!({"addresses": [a], "conditions": {"ready": ready}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
        "endpoints": endpoints, "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]})
}

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
        "spec": {"selector": {"app": name}}})
}

fn rollout(name: &str, enforced: &str) -> Value {
    json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "PolicyRollout",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"source": {"url": "https://example.com/p.git", "ref": {"branch": "main"}}},
        "status": {"enforcedRevision": {"id": enforced, "commit": "0".repeat(40), "display": "main@0000000"}}})
}

fn revision(name: &str) -> Value {
    json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "PolicyRevision",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"rollout": "web", "commit": "0".repeat(40), "display": "main@0000000",
            "digest": format!("sha256:{}", "0".repeat(64)), "policyCount": 0, "policies": []}})
}

/// A change as one line, for exact comparisons (`Change` holds CRD objects that carry
/// server-set metadata).
fn describe(change: &Change) -> String {
    match change {
        Change::Pod(p) => format!(
            "Pod {}/{} labels={:?} node={:?} ip={:?} ports={}",
            p.namespace,
            p.name,
            p.labels,
            p.node_name,
            p.ip,
            p.ports.iter().map(|p| format!("{:?}/{}", p.name, p.port)).collect::<Vec<_>>().join(",")
        ),
        Change::PodDeleted { namespace, name } => format!("PodDeleted {namespace}/{name}"),
        Change::Namespace(n) => format!("Namespace {} labels={:?}", n.name, n.labels),
        Change::NamespaceDeleted(n) => format!("NamespaceDeleted {n}"),
        Change::Nodes(nodes) => {
            format!("Nodes {:?}", nodes.iter().map(|n| format!("{} {:?}", n.name, n.addresses)).collect::<Vec<_>>())
        }
        Change::Services(services) => format!(
            "Services {:?}",
            services.iter().map(|s| format!("{}/{} {:?}", s.namespace, s.name, s.selector)).collect::<Vec<_>>()
        ),
        Change::EndpointSlices(slices) => format!(
            "EndpointSlices {:?}",
            slices.iter().map(|s| format!("{}/{} {:?}", s.namespace, s.name, s.addresses)).collect::<Vec<_>>()
        ),
        Change::Revision(r) => format!("Revision {}", r.metadata.name.as_deref().unwrap_or_default()),
        Change::RevisionDeleted { namespace, name } => format!("RevisionDeleted {namespace}/{name}"),
        Change::Rollout(r) => format!(
            "Rollout {} enforced={:?}",
            r.metadata.name.as_deref().unwrap_or_default(),
            r.status.as_ref().and_then(|s| s.enforced_revision.as_ref()).map(|r| r.id.clone())
        ),
        Change::RolloutDeleted { namespace, name } => format!("RolloutDeleted {namespace}/{name}"),
        Change::Synced => "Synced".into(),
    }
}

/// The next `n` changes, sorted (watches of different kinds interleave freely).
fn next(changes: &mpsc::Receiver<Change>, n: usize) -> Vec<String> {
    let mut got: Vec<String> = (0..n)
        .map(|i| describe(&changes.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|e| panic!("change {i}: {e}"))))
        .collect();
    got.sort();
    got
}

fn quiet(changes: &mpsc::Receiver<Change>) {
    match changes.recv_timeout(Duration::from_millis(300)) {
        Err(RecvTimeoutError::Timeout) => {}
        other => panic!("no further change expected, got {:?}", other.map(|c| describe(&c))),
    }
}

fn seeded() -> FakeApi {
    let api = FakeApi::default();
    api.put(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop", "team": "a"}}}),
    );
    api.put(PODS, pod("api", json!({"app": "api"}), "n1", "10.200.1.1"));
    api.put(PODS, pod("db-0", json!({"app": "db"}), "n1", "10.200.1.2"));
    api.put(NODES, node("n1", "192.168.0.1"));
    api.put(SERVICES, service("db"));
    api.put(SLICES, slice("default", "kubernetes", "kubernetes", &["192.168.0.10"], &[]));
    // What the watches will deserialize.
    serde_json::from_value::<PolicyRevision>(revision("sha256-r1")).expect("a PolicyRevision");
    serde_json::from_value::<PolicyRollout>(rollout("web", "sha256-r1")).expect("a PolicyRollout");
    api.put(REVISIONS, revision("sha256-r1"));
    api.put(ROLLOUTS, rollout("web", "sha256-r1"));
    api
}

const API_POD: &str =
    "Pod shop/api labels={\"app\": \"api\"} node=Some(\"n1\") ip=Some(10.200.1.1) ports=Some(\"http\")/8080";
const DB_POD: &str =
    "Pod shop/db-0 labels={\"app\": \"db\"} node=Some(\"n1\") ip=Some(10.200.1.2) ports=Some(\"http\")/8080";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_become_changes_and_a_relisting_deletes_what_vanished() {
    let api = seeded();
    let (tx, changes) = mpsc::channel();
    let state = Arc::new(WatchState::default());
    let task = tokio::spawn(watch(api.client(), tx, state.clone()));

    // The initial listings, then Synced once all seven are in.
    let mut initial = next(&changes, 9);
    assert_eq!(initial.iter().position(|c| c == "Synced"), Some(8), "Synced comes last: {initial:?}");
    initial.retain(|c| c != "Synced");
    assert_eq!(
        initial,
        vec![
            "EndpointSlices [\"default/kubernetes [192.168.0.10]\"]".to_string(),
            "Namespace shop labels={\"kubernetes.io/metadata.name\": \"shop\", \"team\": \"a\"}".into(),
            "Nodes [\"n1 [192.168.0.1]\"]".into(),
            API_POD.into(),
            DB_POD.into(),
            "Revision sha256-r1".into(),
            "Rollout web enforced=Some(\"sha256-r1\")".into(),
            "Services [\"shop/db Some({\\\"app\\\": \\\"db\\\"})\"]".into(),
        ]
    );
    assert!(state.synced());
    assert_eq!(state.rollout_uid("shop", "web").as_deref(), Some("uid-web"));
    quiet(&changes);

    // Watch events, one change each; nodes and services as whole lists.
    api.put(PODS, pod("api", json!({"app": "api", "v": "2"}), "n1", "10.200.1.1"));
    assert_eq!(next(&changes, 1), vec![API_POD.replace("\"app\": \"api\"}", "\"app\": \"api\", \"v\": \"2\"}")]);
    api.put(NODES, node("n2", "192.168.0.2"));
    assert_eq!(next(&changes, 1), vec!["Nodes [\"n1 [192.168.0.1]\", \"n2 [192.168.0.2]\"]"]);
    api.remove(REVISIONS, "shop", "sha256-r1");
    assert_eq!(next(&changes, 1), vec!["RevisionDeleted shop/sha256-r1"]);
    api.put(ROLLOUTS, rollout("web", "sha256-r2"));
    assert_eq!(next(&changes, 1), vec!["Rollout web enforced=Some(\"sha256-r2\")"]);
    api.remove(NAMESPACES, "", "shop");
    assert_eq!(next(&changes, 1), vec!["NamespaceDeleted shop"]);
    quiet(&changes);

    // Events lost while the watches were away; their resource versions expire, they list again:
    // what vanished is deleted, what is new or changed is sent, the unchanged pod is not, and
    // Synced is not sent twice.
    api.remove_unseen(PODS, "shop", "db-0");
    api.put_unseen(PODS, pod("web", json!({"app": "web"}), "n2", "10.200.2.1"));
    api.remove_unseen(SERVICES, "shop", "db");
    api.put_unseen(SERVICES, service("web"));
    api.remove_unseen(NODES, "", "n2");
    api.remove_unseen(ROLLOUTS, "shop", "web");
    for collection in [PODS, SERVICES, NODES, ROLLOUTS] {
        api.expire(collection);
    }
    assert_eq!(
        next(&changes, 5),
        vec![
            "Nodes [\"n1 [192.168.0.1]\"]".to_string(),
            "Pod shop/web labels={\"app\": \"web\"} node=Some(\"n2\") ip=Some(10.200.2.1) ports=Some(\"http\")/8080"
                .into(),
            "PodDeleted shop/db-0".into(),
            "RolloutDeleted shop/web".into(),
            "Services [\"shop/web Some({\\\"app\\\": \\\"web\\\"})\"]".into(),
        ]
    );
    assert_eq!(state.rollout_uid("shop", "web"), None);
    quiet(&changes);

    // The agent stopping ends the watches.
    drop(changes);
    api.put(PODS, pod("api", json!({"app": "api", "v": "3"}), "n1", "10.200.1.1"));
    let ended = tokio::time::timeout(Duration::from_secs(10), task).await.expect("watches end").unwrap();
    assert!(ended.is_err(), "the agent stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_waits_for_every_initial_listing() {
    let api = FakeApi::default();
    let (tx, changes) = mpsc::channel();
    let state = Arc::new(WatchState::default());
    tokio::spawn(watch(api.client(), tx, state.clone()));
    // Nothing in the cluster: each whole-list kind is still announced (empty), then Synced.
    assert_eq!(next(&changes, 4), vec!["EndpointSlices []", "Nodes []", "Services []", "Synced"]);
    assert!(state.synced());
    quiet(&changes);
}

fn report(rollout: &str, node: &str, new_denies: u64) -> PolicyAuditReport {
    let mut report = PolicyAuditReport::new(
        &palisade_agent::report_name(rollout, node),
        PolicyAuditReportSpec {
            rollout: rollout.into(),
            node: node.into(),
            candidate_revision: Some("sha256-r2".into()),
            loaded_revisions: vec!["sha256-r1".into(), "sha256-r2".into()],
            enforced_revision: Some("sha256-r1".into()),
            totals: AuditTotals { new_denies, observed_flows: 10, ..AuditTotals::default() },
            ..PolicyAuditReportSpec::default()
        },
    );
    report.metadata.namespace = Some("shop".into());
    report.metadata.labels = Some(
        [("palisade.dev/rollout".to_string(), rollout.to_string()), ("palisade.dev/node".into(), node.into())].into(),
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_applied_and_those_of_gone_rollouts_deleted() {
    let api = FakeApi::default();
    api.put(ROLLOUTS, rollout("web", "sha256-r1"));
    let (tx, changes) = mpsc::channel();
    let state = Arc::new(WatchState::default());
    tokio::spawn(watch(api.client(), tx, state.clone()));
    assert!(next(&changes, 5).contains(&"Synced".to_string()));

    let mut writer = ReportWriter::new(api.client(), state.clone());
    writer.write(&[report("web", "n1", 2), report("db", "n1", 0)]).await;
    let body = |rollout: &str, new_denies: u64, owner: Option<Value>| {
        let mut metadata = json!({"name": format!("{rollout}-n1"), "namespace": "shop",
            "labels": {"palisade.dev/rollout": rollout, "palisade.dev/node": "n1"}});
        if let Some(owner) = owner {
            metadata["ownerReferences"] = json!([owner]);
        }
        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "PolicyAuditReport", "metadata": metadata,
            "spec": {"rollout": rollout, "node": "n1", "candidateRevision": "sha256-r2",
                "loadedRevisions": ["sha256-r1", "sha256-r2"], "enforcedRevision": "sha256-r1",
                "totals": {"observedFlows": 10, "newDenies": new_denies, "newAllows": 0, "dropsPerMinute": 0,
                    "truncatedFlows": 0}}})
    };
    let web_owner = json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "PolicyRollout", "name": "web",
        "uid": "uid-web"});
    let apply = |rollout: &str, body: Value| fake::Logged {
        method: "PATCH".into(),
        path: format!("/apis/palisade.dev/v1alpha1/namespaces/shop/policyauditreports/{rollout}-n1"),
        query: "&force=true&fieldManager=palisade-agent".into(),
        content_type: "application/apply-patch+yaml".into(),
        body,
    };
    let writes = api.writes();
    assert_eq!(writes, vec![apply("web", body("web", 2, Some(web_owner.clone()))), apply("db", body("db", 0, None)),]);
    assert!(api.get(REPORTS, "shop", "db-n1").is_some());

    // The db rollout is gone: its report is deleted, once.
    writer.write(&[report("web", "n1", 3)]).await;
    writer.write(&[report("web", "n1", 3)]).await;
    let writes = api.writes()[2..].to_vec();
    let delete = fake::Logged {
        method: "DELETE".into(),
        path: "/apis/palisade.dev/v1alpha1/namespaces/shop/policyauditreports/db-n1".into(),
        query: String::new(),
        content_type: "application/json".into(),
        body: json!({}),
    };
    assert_eq!(
        writes,
        vec![
            apply("web", body("web", 3, Some(web_owner.clone()))),
            delete,
            apply("web", body("web", 3, Some(web_owner))),
        ]
    );
    assert!(api.get(REPORTS, "shop", "db-n1").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_apiserver_endpoint_slices_are_watched() {
    let api = FakeApi::default();
    api.put(SLICES, slice("default", "kubernetes", "kubernetes", &["192.168.0.10", "192.168.0.11"], &["192.168.0.11"]));
    // Another Service's slice in default, and one labelled like the API server's elsewhere.
    api.put(SLICES, slice("default", "web-abcde", "web", &["10.200.9.9"], &[]));
    api.put(SLICES, slice("kube-system", "kubernetes", "kubernetes", &["192.168.7.7"], &[]));
    let (tx, changes) = mpsc::channel();
    let state = Arc::new(WatchState::default());
    tokio::spawn(watch(api.client(), tx, state.clone()));
    let initial = next(&changes, 4);
    assert_eq!(
        initial[0], "EndpointSlices [\"default/kubernetes [192.168.0.10]\"]",
        "the ready address of default/kubernetes only: {initial:?}"
    );
    // Listed and watched in namespace default, by label: no wider than RBAC grants.
    let reads = api.reads();
    let path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";
    let selector = "labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes";
    let slice_reads: Vec<_> = reads.iter().filter(|r| r.path.contains("endpointslices")).collect();
    assert!(!slice_reads.is_empty());
    for read in &slice_reads {
        assert_eq!(read.path, path, "{read:?}");
        assert!(read.query.split('&').any(|kv| kv == selector), "{read:?}");
    }
    quiet(&changes);

    // A second slice of the API server comes; other slices change nothing.
    api.put(SLICES, slice("default", "kubernetes-2", "kubernetes", &["192.168.0.12"], &[]));
    assert_eq!(
        next(&changes, 1),
        vec!["EndpointSlices [\"default/kubernetes [192.168.0.10]\", \"default/kubernetes-2 [192.168.0.12]\"]"]
    );
    api.put(SLICES, slice("default", "web-abcde", "web", &["10.200.9.8"], &[]));
    api.put(SLICES, slice("kube-system", "kubernetes", "kubernetes", &["192.168.7.8"], &[]));
    quiet(&changes);
    api.remove(SLICES, "default", "kubernetes");
    assert_eq!(next(&changes, 1), vec!["EndpointSlices [\"default/kubernetes-2 [192.168.0.12]\"]"]);
}

/// No pod has an interface: the agent programs the ipcache, not endpoints.
struct NoInterfaces;

impl palisade_agent::InterfaceResolver for NoInterfaces {
    fn interface(&self, _: std::net::Ipv4Addr) -> Option<palisade_agent::Interface> {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_apiserver_addresses_get_their_reserved_identities_in_the_agents_ipcache() {
    use palisade_agent::{Agent, AgentConfig, RecordingDataplane};
    use palisade_common as dp;

    let api = seeded();
    api.put(NODES, node("n2", "192.168.0.2"));
    api.put(NODES, node("n3", "192.168.0.3"));
    // The API server: behind a load balancer, on this node and on n3.
    api.put(SLICES, slice("default", "kubernetes", "kubernetes", &["192.168.0.50", "192.168.0.1", "192.168.0.3"], &[]));
    let (tx, changes) = mpsc::channel();
    tokio::spawn(watch(api.client(), tx, Arc::new(WatchState::default())));
    let config = AgentConfig { node: Some("n1".into()), ..AgentConfig::default() };
    let mut agent = Agent::new(config, RecordingDataplane::default(), NoInterfaces);
    let feed = |agent: &mut Agent<RecordingDataplane, NoInterfaces>, until: &dyn Fn(&Change) -> bool| loop {
        let change = changes.recv_timeout(Duration::from_secs(10)).expect("a change");
        let done = until(&change);
        agent.apply(change);
        if done {
            agent.converge().expect("converge");
            break;
        }
    };
    feed(&mut agent, &|c| matches!(c, Change::Synced));
    let identity = |agent: &Agent<RecordingDataplane, NoInterfaces>, addr: &str| {
        agent.dataplane().ipcache.get(&(addr.parse().unwrap(), 32)).copied()
    };
    let engine_says = |agent: &Agent<RecordingDataplane, NoInterfaces>, addr: &str| {
        agent.enforced_engine().expect("compiled").identity_of_addr(addr.parse().unwrap())
    };
    let expected = [
        ("192.168.0.1", dp::IDENTITY_HOST, "this node: host, also where the API server runs"),
        ("192.168.0.2", dp::IDENTITY_REMOTE_NODE, "another node"),
        ("192.168.0.3", dp::IDENTITY_KUBE_APISERVER, "the API server on another node"),
        ("192.168.0.50", dp::IDENTITY_KUBE_APISERVER, "the API server's load balancer"),
    ];
    for (addr, id, why) in expected {
        assert_eq!(identity(&agent, addr), Some(id), "{addr}: {why}; ipcache {:?}", agent.dataplane().ipcache);
        assert_eq!(engine_says(&agent, addr), id, "{addr}: trace and the ipcache agree");
    }
    let pod = agent.enforced_engine().unwrap().cluster.pod("shop", "api").cloned().unwrap();
    let api_identity = agent.enforced_engine().unwrap().identity_of_pod(&pod).unwrap();
    assert_eq!(identity(&agent, "10.200.1.1"), Some(api_identity), "pods keep their own identity");

    // The API server's slice goes: n3 is just another node again, the load balancer unknown.
    quiet(&changes); // the watches are open
    api.remove(SLICES, "default", "kubernetes");
    feed(&mut agent, &|c| matches!(c, Change::EndpointSlices(_)));
    assert_eq!(identity(&agent, "192.168.0.3"), Some(dp::IDENTITY_REMOTE_NODE));
    assert_eq!(identity(&agent, "192.168.0.50"), None);
    assert_eq!(engine_says(&agent, "192.168.0.50"), dp::IDENTITY_WORLD);
    assert_eq!(identity(&agent, "192.168.0.1"), Some(dp::IDENTITY_HOST));
}
