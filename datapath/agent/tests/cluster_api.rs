//! The agent's Kubernetes side against an in-memory API server behind `kube::Client`
//! (palisade-fake-apiserver): watch events become exactly the
//! expected changes, a restarted watch deletes what vanished meanwhile, `Synced` follows every
//! initial listing, and reports become exactly the expected server-side applies.
mod common;

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use palisade_agent::cluster_watch::{WatchState, watch};
use palisade_agent::report_writer::ReportWriter;
use palisade_agent::{Agent, AgentConfig, Change, RecordingDataplane};
use palisade_fake_apiserver::collections::{
    ENDPOINT_SLICES, NAMESPACES, NODES, PODS, REPORTS, REVISIONS, ROLLOUTS, SERVICES,
};
use palisade_fake_apiserver::{FakeApi, Logged};
use palisade_rollout::crd::{
    AuditFlow, AuditTotals, Direction, EndpointTraffic, FlowEndpoint, PolicyAuditReport, PolicyAuditReportSpec,
    PolicyDocument, PolicyRevision, PolicyRollout, Protocol, Verdict,
};
use serde_json::{Value, json};

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
/// ones listed in `not_ready`. Nobody's, as the API server's and hand-made ones are.
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

/// A revision without policies, under the digest of none.
fn revision(name: &str) -> Value {
    json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "PolicyRevision",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"rollout": "web", "commit": "0".repeat(40), "display": "main@0000000",
            "digest": palisade_rollout::digest::combine(&[]), "policyCount": 0, "policies": []}})
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
            p.ip(),
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
    api.put(ENDPOINT_SLICES, slice("default", "kubernetes", "kubernetes", &["192.168.0.10"], &[]));
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
    let web_uid = api.get(ROLLOUTS, "shop", "web").unwrap()["metadata"]["uid"].clone();
    assert_eq!(state.rollout("shop", "web").uid.as_deref(), web_uid.as_str());
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
    assert_eq!(state.rollout("shop", "web").uid, None);
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

const HEARTBEAT: Duration = Duration::from_secs(300);
const INTERVAL: Duration = Duration::from_secs(10);

/// When the reports' clock starts.
fn t0() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

/// The agent's writer, once its watches (and so the rollouts) are synced.
async fn synced_writer(api: &FakeApi) -> ReportWriter {
    // The rollouts are in the writer's state from now on, also once the watch stops with its
    // receiver.
    live_writer(api).await.0
}

/// [`synced_writer`], with the watch's changes: it keeps watching while they are received.
async fn live_writer(api: &FakeApi) -> (ReportWriter, mpsc::Receiver<Change>) {
    let (tx, changes) = mpsc::channel();
    let state = Arc::new(WatchState::default());
    tokio::spawn(watch(api.client(), tx, state.clone()));
    loop {
        let change = changes.recv_timeout(Duration::from_secs(10)).expect("a change");
        if matches!(change, Change::Synced) {
            break;
        }
    }
    (ReportWriter::new(api.client(), state, "n1".into(), HEARTBEAT), changes)
}

/// The applies and deletes of one report the API server received so far.
fn writes_of(api: &FakeApi, report: &str) -> Vec<Logged> {
    api.writes().into_iter().filter(|w| w.path.ends_with(&format!("/policyauditreports/{report}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_applied_and_stale_ones_deleted_once() {
    let api = FakeApi::default();
    api.put(ROLLOUTS, rollout("web", "sha256-r1"));
    // What an earlier run of the agent left, for a rollout that no longer concerns n1, and n2's.
    api.put(ROLLOUTS, rollout("old", "sha256-r1"));
    for node in ["n1", "n2"] {
        api.put(REPORTS, serde_json::to_value(report("old", node, 0)).unwrap());
    }
    let mut writer = synced_writer(&api).await;
    writer.write(&[report("web", "n1", 2), report("db", "n1", 0)], t0()).await;
    let body = |rollout: &str, new_denies: u64, owner: Option<Value>, at: Timestamp| {
        let mut metadata = json!({"name": format!("{rollout}-n1"), "namespace": "shop",
            "labels": {"palisade.dev/rollout": rollout, "palisade.dev/node": "n1"}});
        if let Some(owner) = owner {
            metadata["ownerReferences"] = json!([owner]);
        }
        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "PolicyAuditReport", "metadata": metadata,
            "spec": {"rollout": rollout, "node": "n1", "candidateRevision": "sha256-r2",
                "loadedRevisions": ["sha256-r1", "sha256-r2"], "enforcedRevision": "sha256-r1", "auditGeneration": 0,
                "totals": {"observedFlows": 10, "newDenies": new_denies, "newAllows": 0, "dropsPerMinute": 0,
                    "truncatedFlows": 0},
                "reportedAt": at.to_string(), "heartbeat": "300s"}})
    };
    let web_uid = api.get(ROLLOUTS, "shop", "web").unwrap()["metadata"]["uid"].clone();
    let web_owner = json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "PolicyRollout", "name": "web",
        "uid": web_uid});
    let apply = |rollout: &str, body: Value| Logged {
        method: "PATCH".into(),
        path: format!("/apis/palisade.dev/v1alpha1/namespaces/shop/policyauditreports/{rollout}-n1"),
        query: Some("&force=true&fieldManager=palisade-agent".into()),
        content_type: "application/apply-patch+yaml".into(),
        body,
    };
    let delete = |report: &str| Logged {
        method: "DELETE".into(),
        path: format!("/apis/palisade.dev/v1alpha1/namespaces/shop/policyauditreports/{report}"),
        query: Some(String::new()),
        content_type: "application/json".into(),
        body: json!({}),
    };
    let writes = api.writes();
    assert_eq!(
        writes,
        vec![
            apply("web", body("web", 2, Some(web_owner.clone()), t0())),
            apply("db", body("db", 0, None, t0())),
            delete("old-n1"),
        ]
    );
    assert!(api.get(REPORTS, "shop", "db-n1").is_some());
    assert!(api.get(REPORTS, "shop", "old-n2").is_some(), "another node's");

    // The db rollout is gone: its report is deleted, once; web's new deny is written, once.
    writer.write(&[report("web", "n1", 3)], t0() + INTERVAL).await;
    writer.write(&[report("web", "n1", 3)], t0() + INTERVAL * 2).await;
    let writes = api.writes()[3..].to_vec();
    assert_eq!(writes, vec![apply("web", body("web", 3, Some(web_owner), t0() + INTERVAL)), delete("db-n1")]);
    assert!(api.get(REPORTS, "shop", "db-n1").is_none());
}

/// Newly denied: the API pod's calls to db on `port`, seen `count` times.
fn denied_flow(port: u16, count: u64) -> AuditFlow {
    let endpoint = |app: &str| FlowEndpoint {
        labels: [("app".to_string(), app.to_string())].into(),
        namespace: Some("shop".into()),
        ..FlowEndpoint::default()
    };
    AuditFlow {
        direction: Direction::Ingress,
        subject: endpoint("db"),
        peer: endpoint("api"),
        port,
        protocol: Protocol::Tcp,
        enforced_verdict: Verdict::Allow,
        candidate_verdict: Verdict::Deny,
        count,
        first_seen: Time(t0()),
        last_seen: Time(t0() + Duration::from_secs(count)),
        rule: Some("CiliumNetworkPolicy shop/db ingress default deny".into()),
        http: None,
        dns: None,
        tls: None,
        kafka: None,
    }
}

/// Web's report with `flows`, and counters that grow with `tick`.
fn auditing(flows: Vec<AuditFlow>, tick: u64) -> PolicyAuditReport {
    let mut report = report("web", "n1", flows.len() as u64);
    report.spec.flows = flows;
    report.spec.totals.observed_flows = 10 * tick;
    report.spec.totals.drops_per_minute = tick;
    report.spec.endpoints = vec![EndpointTraffic {
        namespace: "shop".into(),
        pod: "db-0".into(),
        workload: Some("db".into()),
        flows: tick,
    }];
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_report_waits_for_the_heartbeat_and_a_new_flow_does_not() {
    let api = FakeApi::default();
    api.put(ROLLOUTS, in_flight(rollout("web", "sha256-r1")));
    let mut writer = synced_writer(&api).await;
    // One batch per interval, `tick` intervals after t0: counters grow in each.
    let at = |tick: u64| t0() + INTERVAL * tick as u32;
    let flows = |tick: u64, new_port: bool| {
        let mut flows = vec![denied_flow(5432, tick)];
        flows.extend(new_port.then(|| denied_flow(5433, 1)));
        flows
    };
    for tick in 1..=5 {
        writer.write(&[auditing(flows(tick, false), tick)], at(tick)).await;
    }
    assert_eq!(writes_of(&api, "web-n1").len(), 1, "counters alone wait for the heartbeat");

    // A flow the gate has not seen goes out at the next interval.
    writer.write(&[auditing(flows(6, true), 6)], at(6)).await;
    let writes = writes_of(&api, "web-n1");
    assert_eq!(writes.len(), 2);
    assert_eq!(writes[1].body["spec"]["totals"]["newDenies"], 2);
    assert_eq!(writes[1].body["spec"]["reportedAt"], at(6).to_string());

    // Then silence again, until a heartbeat after that write refreshes the counters.
    let heartbeat = HEARTBEAT.as_secs() / INTERVAL.as_secs();
    for tick in 7..6 + heartbeat {
        writer.write(&[auditing(flows(tick, true), tick)], at(tick)).await;
    }
    assert_eq!(writes_of(&api, "web-n1").len(), 2);
    let last = auditing(flows(6 + heartbeat, true), 6 + heartbeat);
    writer.write(std::slice::from_ref(&last), at(6 + heartbeat)).await;
    let writes = writes_of(&api, "web-n1");
    assert_eq!(writes.len(), 3, "the heartbeat");
    assert_eq!(writes[2].body["spec"]["reportedAt"], at(6 + heartbeat).to_string());
    assert_eq!(writes[2].body["spec"]["totals"]["observedFlows"], last.spec.totals.observed_flows);
    assert_eq!(writes[2].body["spec"]["flows"][0]["count"], last.spec.flows[0].count);
}

/// `rollout` with a candidate staged: the barrier waits on the nodes.
fn in_flight(mut rollout: Value) -> Value {
    rollout["status"]["candidateRevision"] =
        json!({"id": "sha256-r2", "commit": "1".repeat(40), "display": "main@1111111"});
    rollout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_rollouts_report_is_not_rewritten_until_something_changes() {
    let api = FakeApi::default();
    api.put(ROLLOUTS, rollout("web", "sha256-r1"));
    let (mut writer, changes) = live_writer(&api).await;
    let heartbeats = 3 * HEARTBEAT.as_secs() / INTERVAL.as_secs();
    for tick in 1..=heartbeats {
        writer.write(&[auditing(vec![denied_flow(5432, tick)], tick)], t0() + INTERVAL * tick as u32).await;
    }
    assert_eq!(writes_of(&api, "web-n1").len(), 1, "no heartbeat without a candidate or a flip");

    // A candidate is staged: the heartbeat starts, from the last write.
    api.update(ROLLOUTS, "shop", "web", |web| *web = in_flight(web.clone()));
    let change = changes.recv_timeout(Duration::from_secs(10)).expect("the watch sees the candidate");
    assert!(matches!(change, Change::Rollout(_)), "{}", describe(&change));
    let tick = heartbeats + 1;
    writer.write(&[auditing(vec![denied_flow(5432, tick)], tick)], t0() + INTERVAL * tick as u32).await;
    assert_eq!(writes_of(&api, "web-n1").len(), 2, "more than a heartbeat since the last write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_go_out_every_interval_while_the_controller_watches_a_promotion() {
    let api = FakeApi::default();
    let mut promoted = rollout("web", "sha256-r1");
    promoted["spec"]["rollback"] = json!({"postPromotionWindow": "1m"});
    promoted["status"]["promotedAt"] = json!(t0().to_string());
    api.put(ROLLOUTS, promoted);
    let mut writer = synced_writer(&api).await;
    let drops_written = |api: &FakeApi| -> Vec<Value> {
        writes_of(api, "web-n1").iter().map(|w| w.body["spec"]["totals"]["dropsPerMinute"].clone()).collect()
    };
    for tick in 0..6 {
        writer.write(&[auditing(vec![denied_flow(5432, 1)], tick)], t0() + INTERVAL * tick as u32).await;
    }
    assert_eq!(drops_written(&api), [0, 1, 2, 3, 4, 5], "every interval of the window");
    for tick in 6..12 {
        writer.write(&[auditing(vec![denied_flow(5432, 1)], tick)], t0() + INTERVAL * tick as u32).await;
    }
    assert_eq!(drops_written(&api), [0, 1, 2, 3, 4, 5], "after the window, only at the heartbeat");
}

/// Rollout `shop/<rollout>` enforcing `revision`, whose one policy selects the pods `app: <app>`.
fn selecting(rollout: &str, revision: &str, app: &str) -> [Change; 2] {
    let policy = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {rollout}, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: {app}}}}}\n  ingress: [{{fromEndpoints: [{{matchLabels: {{app: api}}}}]}}]\n"
    );
    let document = PolicyDocument {
        kind: "CiliumNetworkPolicy".into(),
        name: rollout.into(),
        namespace: Some("shop".into()),
        content: policy,
    };
    [
        Change::Revision(Box::new(common::revision_of("shop", rollout, revision, vec![document]))),
        Change::Rollout(Box::new(common::rollout_of("shop", rollout, Some(revision), None))),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_selects_nothing_on_the_node_gets_no_report() {
    let api = FakeApi::default();
    let mut writer = ReportWriter::new(api.client(), Arc::new(WatchState::default()), "n1".into(), HEARTBEAT);
    let config = AgentConfig { node: Some("n1".into()), ..AgentConfig::default() };
    let mut agent = Agent::new(config, RecordingDataplane::default(), NoInterfaces);
    for pod in
        [pod("db-0", json!({"app": "db"}), "n1", "10.200.1.2"), pod("web", json!({"app": "web"}), "n2", "10.200.2.1")]
    {
        agent.apply(Change::Pod(palisade_policy::cluster::Pod::from_json(&pod).unwrap()));
    }
    for change in selecting("db", "db-r1", "db").into_iter().chain(selecting("web", "web-r1", "web")) {
        agent.apply(change);
    }
    agent.apply(Change::Synced);
    agent.converge().unwrap();
    writer.write(&agent.reports(t0()).unwrap(), t0()).await;
    let written: Vec<(String, String)> = api.writes().into_iter().map(|w| (w.method, w.path)).collect();
    let path = |report: &str| format!("/apis/palisade.dev/v1alpha1/namespaces/shop/policyauditreports/{report}");
    assert_eq!(written, [("PATCH".to_string(), path("db-n1"))], "web selects pods of n2 only");

    // db's next revision selects web's pods only: db's report goes.
    for change in selecting("db", "db-r2", "web") {
        agent.apply(change);
    }
    agent.converge().unwrap();
    writer.write(&agent.reports(t0() + INTERVAL).unwrap(), t0() + INTERVAL).await;
    let written: Vec<(String, String)> = api.writes().into_iter().map(|w| (w.method, w.path)).collect();
    assert_eq!(written[1..], [("DELETE".to_string(), path("db-n1"))]);
    assert!(api.get(REPORTS, "shop", "db-n1").is_none());
}

/// A slice the EndpointSlice controller derived from a Service's selector.
fn derived_slice(namespace: &str, name: &str, service: &str, addresses: &[&str]) -> Value {
    let mut slice = slice(namespace, name, service, addresses, &[]);
    slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] = json!("endpointslice-controller.k8s.io");
    slice
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_endpoint_slices_no_selector_derives_are_watched() {
    let api = FakeApi::default();
    api.put(
        ENDPOINT_SLICES,
        slice("default", "kubernetes", "kubernetes", &["192.168.0.10", "192.168.0.11"], &["192.168.0.11"]),
    );
    // A selector Service's slice (the agent has its pods already) and a selector-less Service's.
    api.put(ENDPOINT_SLICES, derived_slice("shop", "web-abcde", "web", &["10.200.9.9"]));
    api.put(ENDPOINT_SLICES, slice("shop", "payments", "payments", &["203.0.113.7"], &[]));
    let (tx, changes) = mpsc::channel();
    let state = Arc::new(WatchState::default());
    tokio::spawn(watch(api.client(), tx, state.clone()));
    let initial = next(&changes, 4);
    assert_eq!(
        initial[0], "EndpointSlices [\"default/kubernetes [192.168.0.10]\", \"shop/payments [203.0.113.7]\"]",
        "the API server's ready address and the selector-less Service's: {initial:?}"
    );
    // Listed and watched cluster-wide, by label: the derived slices never reach the agent.
    let reads = api.reads();
    let path = "/apis/discovery.k8s.io/v1/endpointslices";
    let selector = "labelSelector=endpointslice.kubernetes.io%2Fmanaged-by%21%3Dendpointslice-controller.k8s.io";
    let slice_reads: Vec<_> = reads.iter().filter(|r| r.path.contains("endpointslices")).collect();
    assert!(!slice_reads.is_empty());
    for read in &slice_reads {
        assert_eq!(read.path, path, "{read:?}");
        assert!(read.query().split('&').any(|kv| kv == selector), "{read:?}");
    }
    quiet(&changes);

    // A second slice of the API server comes; derived slices change nothing.
    api.put(ENDPOINT_SLICES, slice("default", "kubernetes-2", "kubernetes", &["192.168.0.12"], &[]));
    assert_eq!(
        next(&changes, 1),
        vec![
            "EndpointSlices [\"default/kubernetes [192.168.0.10]\", \"default/kubernetes-2 [192.168.0.12]\", \"shop/payments [203.0.113.7]\"]"
        ]
    );
    api.put(ENDPOINT_SLICES, derived_slice("shop", "web-abcde", "web", &["10.200.9.8"]));
    quiet(&changes);
    api.remove(ENDPOINT_SLICES, "default", "kubernetes");
    assert_eq!(
        next(&changes, 1),
        vec!["EndpointSlices [\"default/kubernetes-2 [192.168.0.12]\", \"shop/payments [203.0.113.7]\"]"]
    );
}

/// No pod has an interface: the agent programs the ipcache, not endpoints.
struct NoInterfaces;

impl palisade_agent::InterfaceResolver for NoInterfaces {
    fn interface(&self, _: std::net::IpAddr) -> Option<palisade_agent::Interface> {
        None
    }
}

type WatchedAgent = Agent<RecordingDataplane, NoInterfaces>;

/// Applies the watches' changes to `agent` up to the first that `until` accepts, then converges.
fn feed(agent: &mut WatchedAgent, changes: &mpsc::Receiver<Change>, until: impl Fn(&Change) -> bool) {
    loop {
        let change = changes.recv_timeout(Duration::from_secs(10)).expect("a change");
        let done = until(&change);
        agent.apply(change);
        if done {
            agent.converge().expect("converge");
            return;
        }
    }
}

/// The agent of node n1, fed by watches of `api` and converged on their initial listing.
fn watched_agent(api: &FakeApi) -> (WatchedAgent, mpsc::Receiver<Change>) {
    let (tx, changes) = mpsc::channel();
    tokio::spawn(watch(api.client(), tx, Arc::new(WatchState::default())));
    let config = AgentConfig { node: Some("n1".into()), ..AgentConfig::default() };
    let mut agent = Agent::new(config, RecordingDataplane::default(), NoInterfaces);
    feed(&mut agent, &changes, |c| matches!(c, Change::Synced));
    (agent, changes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_other_nodes_get_their_identities_from_the_slim_pod_watch() {
    let api = seeded();
    // A pod as the API server serves it: probes, image, annotations and all.
    let mut full = pod("api-2", json!({"app": "api"}), "n2", "10.200.2.1");
    full["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/last-applied-configuration": "{}"});
    full["spec"]["containers"][0]["image"] = json!("shop/api:1.2");
    full["spec"]["containers"][0]["readinessProbe"] = json!({"httpGet": {"path": "/ready", "port": "http"}});
    api.put(PODS, full);
    api.put(PODS, pod("web", json!({"app": "web"}), "n2", "10.200.2.2"));
    let (agent, _changes) = watched_agent(&api);
    let ipcache = &agent.dataplane().ipcache;
    let identity = |addr: &str| ipcache.get(&(addr.parse().unwrap(), 32)).copied();
    let engine = agent.enforced_engine().expect("compiled");
    let of_pod = |name: &str| engine.identity_of_pod(engine.cluster.pod("shop", name).expect("watched")).unwrap();
    assert_eq!(identity("10.200.2.1"), Some(of_pod("api-2")));
    assert_eq!(identity("10.200.2.2"), Some(of_pod("web")));
    assert_eq!(of_pod("api-2"), of_pod("api"), "one identity for one set of labels, whatever the node");
    assert_ne!(of_pod("web"), of_pod("api"));
    assert_eq!(engine.cluster.pod("shop", "api-2").unwrap().ports.len(), 1, "named ports come too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_apiserver_addresses_get_their_reserved_identities_in_the_agents_ipcache() {
    use palisade_common as dp;

    let api = seeded();
    api.put(NODES, node("n2", "192.168.0.2"));
    api.put(NODES, node("n3", "192.168.0.3"));
    // The API server: behind a load balancer, on this node and on n3.
    api.put(
        ENDPOINT_SLICES,
        slice("default", "kubernetes", "kubernetes", &["192.168.0.50", "192.168.0.1", "192.168.0.3"], &[]),
    );
    let (mut agent, changes) = watched_agent(&api);
    let identity =
        |agent: &WatchedAgent, addr: &str| agent.dataplane().ipcache.get(&(addr.parse().unwrap(), 32)).copied();
    let engine_says = |agent: &WatchedAgent, addr: &str| {
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
    api.remove(ENDPOINT_SLICES, "default", "kubernetes");
    feed(&mut agent, &changes, |c| matches!(c, Change::EndpointSlices(_)));
    assert_eq!(identity(&agent, "192.168.0.3"), Some(dp::IDENTITY_REMOTE_NODE));
    assert_eq!(identity(&agent, "192.168.0.50"), None);
    assert_eq!(engine_says(&agent, "192.168.0.50"), dp::IDENTITY_WORLD);
    assert_eq!(identity(&agent, "192.168.0.1"), Some(dp::IDENTITY_HOST));
}
