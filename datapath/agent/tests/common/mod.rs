//! What the agent's tests share: revisions and rollouts of the `db` rollout in namespace `shop`,
//! and, for the root tests, the shop's pods as network namespaces with the agent on the real
//! datapath, cleanup and waiting for reports.
#![allow(dead_code)] // each test binary uses part of it

use std::path::Path;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use palisade_agent::runtime::{AgentHandle, RuntimeOptions, spawn};
use palisade_agent::{Agent, AgentConfig, Change, RouteResolver};
use palisade_datapath::Datapath;
use palisade_netsim::{LocalNetwork, Responders, require_root};
use palisade_policy::SourceFile;
use palisade_policy::cluster::{Cluster, Pod};
use palisade_rollout::crd::{
    PolicyAuditReport, PolicyAuditReportSpec, PolicyDocument, PolicyRevision, PolicyRevisionSpec, PolicyRollout,
    PolicyRolloutStatus, RevisionRef,
};
use tokio::sync::mpsc::UnboundedReceiver;

/// The database (`app: db` in `shop`) takes `port` from the API (`app: api`), and nothing else.
pub fn db_policy(port: u16) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: db, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n    - fromEndpoints: [{{matchLabels: {{app: api}}}}]\n      toPorts: [{{ports: [{{port: '{port}', protocol: TCP}}]}}]\n"
    )
}

/// Revision `name` of rollout `shop/db`: one CiliumNetworkPolicy `shop/db` written as `policy`.
pub fn revision(name: &str, policy: &str) -> Change {
    let document = PolicyDocument {
        kind: "CiliumNetworkPolicy".into(),
        name: "db".into(),
        namespace: Some("shop".into()),
        content: policy.into(),
    };
    Change::Revision(Box::new(revision_of("shop", "db", name, vec![document])))
}

/// Revision `name` of rollout `namespace/rollout`, of `documents` (each one policy, in YAML or
/// JSON), at a commit of zeros: normalized to JSON and digested as the controller writes them.
pub fn revision_of(namespace: &str, rollout: &str, name: &str, documents: Vec<PolicyDocument>) -> PolicyRevision {
    let policies: Vec<PolicyDocument> = documents.into_iter().map(normalized).collect();
    let mut spec = PolicyRevisionSpec {
        rollout: rollout.into(),
        commit: "0".repeat(40),
        display: format!("main@{name}"),
        digest: String::new(),
        policy_count: policies.len() as u32,
        policies,
    };
    spec.digest = spec.content_digest().expect("JSON policies");
    let mut revision = PolicyRevision::new(name, spec);
    revision.metadata.namespace = Some(namespace.into());
    revision
}

/// The document with its policy as the controller writes it: the object as canonical JSON.
fn normalized(document: PolicyDocument) -> PolicyDocument {
    let source = [SourceFile { name: "policy.yaml", text: &document.content }];
    let parsed = palisade_policy::parse_policies(&source, &palisade_policy::ParseOptions::default());
    let policy = parsed.set.policies.first().expect("one policy");
    PolicyDocument { content: policy.source.to_string(), ..document }
}

/// Rollout `shop/db` with the status naming what nodes enforce and audit.
pub fn rollout(enforced: Option<&str>, candidate: Option<&str>) -> Change {
    Change::Rollout(Box::new(rollout_of("shop", "db", enforced, candidate)))
}

/// Rollout `namespace/name` of a Git branch, with the status naming what nodes enforce and audit.
pub fn rollout_of(namespace: &str, name: &str, enforced: Option<&str>, candidate: Option<&str>) -> PolicyRollout {
    let reference = |id: &str| RevisionRef { id: id.into(), commit: "0".repeat(40), display: format!("main@{id}") };
    let spec =
        serde_json::from_value(serde_json::json!({"source": {"url": "file:///repo", "ref": {"branch": "main"}}}))
            .expect("spec");
    let status = PolicyRolloutStatus {
        enforced_revision: enforced.map(reference),
        candidate_revision: candidate.map(reference),
        ..PolicyRolloutStatus::default()
    };
    let metadata = ObjectMeta { name: Some(name.into()), namespace: Some(namespace.into()), ..ObjectMeta::default() };
    PolicyRollout { metadata, spec, status: Some(status) }
}

/// Deletes a root test's namespaces and pinned datapath, also when it panics.
pub struct Cleanup {
    pub prefix: &'static str,
    pub pin_dir: &'static str,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = palisade_netsim::net::remove_netns_with_prefix(self.prefix);
        if let Ok(datapath) = Datapath::open(self.pin_dir) {
            let _ = datapath.destroy();
        }
    }
}

/// Waits (10 s at most) for a report satisfying `done`.
pub fn wait_for_report(
    reports: &mut UnboundedReceiver<Vec<PolicyAuditReport>>,
    done: impl Fn(&PolicyAuditReportSpec) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(reports) = reports.try_recv()
            && reports.iter().any(|r| done(&r.spec))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the agent never reported the expected state");
}

/// Namespace `shop` and its pods api, db (ports 5432 and 5433), batch and late (an API client
/// too), at 10.200.`subnet`.1 to .4.
pub fn shop(subnet: u8) -> Cluster {
    let pod = |name: &str, app: &str, host: u8, spec: &str| {
        format!(
            "- kind: Pod\n  metadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}}}\n{spec}  status: {{podIP: 10.200.{subnet}.{host}}}\n"
        )
    };
    let ports = "  spec: {containers: [{ports: [{containerPort: 5432}, {containerPort: 5433}]}]}\n";
    let text = [
        "kind: List\nitems:\n- kind: Namespace\n  metadata: {name: shop, labels: {team: shop}}\n".to_owned(),
        pod("api", "api", 1, ""),
        pod("db", "db", 2, ports),
        pod("batch", "batch", 3, ""),
        pod("late", "api", 4, ""),
    ]
    .concat();
    Cluster::parse(&[SourceFile { name: "cluster.yaml", text: &text }]).expect("cluster")
}

/// A root test's world: the cluster's pods as network namespaces answering on their ports, and
/// the agent on the real datapath (pinned at `pin_dir`) in the node's namespace. Everything
/// named with `prefix` goes when the [`Cleanup`] is dropped, last.
pub fn start_agent(
    prefix: &'static str,
    pin_dir: &'static str,
    cluster: &Cluster,
) -> (Cleanup, LocalNetwork, Responders, AgentHandle) {
    require_root().expect("this test attaches eBPF programs in network namespaces: run it as root");
    let cleanup = Cleanup { prefix, pin_dir };
    let network = LocalNetwork::plan(cluster, prefix).expect("plan");
    network.create().expect("create the namespaces");
    let responders = Responders::start(&network).expect("responders");
    let datapath = Datapath::open(pin_dir).expect("load the datapath");
    let agent = Agent::new(AgentConfig::default(), datapath, RouteResolver);
    let netns = Path::new("/run/netns").join(network.node_netns());
    let options = RuntimeOptions { netns: Some(netns), ..RuntimeOptions::default() };
    let handle = spawn(agent, options).expect("start the agent");
    (cleanup, network, responders, handle)
}

/// Tells the agent the cluster's namespaces and the pods `known` admits, revisions `db-r1` and
/// `db-r2` (as `revision` writes them), the rollout enforcing `db-r1`, and that it has all; waits
/// until it reports `db-r1` enforced.
pub fn sync_shop(
    changes: &Sender<Change>,
    reports: &mut UnboundedReceiver<Vec<PolicyAuditReport>>,
    cluster: &Cluster,
    known: impl Fn(&Pod) -> bool,
    revision: impl Fn(&str, u16) -> Change,
) {
    let send = |change: Change| changes.send(change).expect("agent running");
    for namespace in cluster.namespaces.values() {
        send(Change::Namespace(namespace.clone()));
    }
    for pod in cluster.pods.iter().filter(|p| known(p)) {
        send(Change::Pod(pod.clone()));
    }
    send(revision("db-r1", 5432));
    send(revision("db-r2", 5433));
    send(rollout(Some("db-r1"), None));
    send(Change::Synced);
    wait_for_report(reports, |r| r.enforced_revision.as_deref() == Some("db-r1"));
}
