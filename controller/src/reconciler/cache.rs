//! What a reconcile reads of the cluster, from reflector stores that watches keep current, so
//! that a reconcile costs no list of reports, agents, Nodes or revisions: API reads grow with
//! changes, not with reconciles × nodes. Report changes also become reconcile requests,
//! coalesced per rollout.
use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, NodeStatus, Pod, PodSpec, PodStatus};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use palisade_rollout::crd::{PolicyDecision, PolicyRevision, PolicyRollout};
use palisade_rollout::wire::ROLLOUT_LABEL;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::warn;

use super::report_index::ReportIndex;
use super::{Config, Error};

/// How long report changes of one rollout gather before they request one reconcile. A window,
/// not a debounce: a debounce restarts on every change, and reports of thousands of nodes would
/// keep postponing the reconcile for as long as they keep coming.
pub const REPORT_WINDOW: Duration = Duration::from_secs(1);

/// The stores; dropping them stops their watches.
pub struct Caches {
    pub reports: ReportIndex,
    pub revisions: Store<PolicyRevision>,
    pub decisions: Store<PolicyDecision>,
    /// The agent Pods (the controller's namespace, `config.agent_selector`).
    pub agents: Store<Pod>,
    pub nodes: Store<Node>,
    tasks: Vec<AbortHandle>,
}

/// Rollouts to reconcile because their reports, revisions or decisions changed.
pub type Triggers = std::pin::Pin<Box<dyn Stream<Item = ObjectRef<PolicyRollout>> + Send>>;

impl Caches {
    /// Starts the watches. The triggers stream reports changes at most once per rollout per
    /// [`REPORT_WINDOW`], decisions and revisions at once; dropping it loses nothing but the
    /// triggers.
    pub fn start(client: &Client, config: &Config) -> (Caches, Triggers) {
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        // A person's decision is acted on at once, and so is a revision created or deleted.
        let (at_once_tx, at_once_rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        let labelled = || watcher::Config::default().labels(ROLLOUT_LABEL).any_semantic();
        let reports = ReportIndex::watch(Api::all(client.clone()), labelled(), &mut tasks, move |r| {
            if let Some(rollout) = labelled_rollout(r) {
                let _ = report_tx.send(rollout);
            }
        });
        let revision_tx = at_once_tx.clone();
        let revisions = watch(Api::all(client.clone()), labelled(), &mut tasks, keep_all, move |r: &PolicyRevision| {
            if let Some(rollout) = labelled_rollout(r) {
                let _ = revision_tx.send(rollout);
            }
        });
        let any = || watcher::Config::default().any_semantic();
        let decisions = watch(Api::all(client.clone()), any(), &mut tasks, keep_all, move |d: &PolicyDecision| {
            if let Some(namespace) = d.namespace() {
                let _ = at_once_tx.send(ObjectRef::new(&d.spec.rollout).within(&namespace));
            }
        });
        let agent_pods = any().labels(&config.agent_selector);
        let agents_api = Api::namespaced(client.clone(), &config.namespace);
        let agents = watch(agents_api, agent_pods, &mut tasks, slim_agent, |_: &Pod| {});
        let nodes = watch(Api::all(client.clone()), any(), &mut tasks, slim_node, |_: &Node| {});

        let (coalesced_tx, coalesced_rx) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn(coalesce(report_rx, coalesced_tx, REPORT_WINDOW)).abort_handle());
        let receive = |rx: mpsc::UnboundedReceiver<ObjectRef<PolicyRollout>>| {
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) })
        };
        let triggers = futures::stream::select(receive(coalesced_rx), receive(at_once_rx)).boxed();
        (Caches { reports, revisions, decisions, agents, nodes, tasks }, triggers)
    }

    /// Waits for every store's first list: deciding on a partial view could promote past a node
    /// not listed yet.
    pub async fn ready(&self) -> Result<(), Error> {
        self.reports.ready().await?;
        self.revisions.wait_until_ready().await?;
        self.decisions.wait_until_ready().await?;
        self.agents.wait_until_ready().await?;
        Ok(self.nodes.wait_until_ready().await?)
    }
}

impl Drop for Caches {
    fn drop(&mut self) {
        self.tasks.iter().for_each(AbortHandle::abort);
    }
}

/// The rollout an object is labelled with.
fn labelled_rollout(object: &impl Resource) -> Option<ObjectRef<PolicyRollout>> {
    Some(ObjectRef::new(object.labels().get(ROLLOUT_LABEL)?).within(&object.namespace()?))
}

/// A reflector over `api`, driven by a task of its own, keeping of each object what `slim`
/// leaves and never its managed fields; `changed` sees every object applied or deleted (its
/// triggers may go unheard: tests run reconciles without a Controller).
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    tasks: &mut Vec<AbortHandle>,
    slim: fn(&mut K),
    changed: impl Fn(&K) + Send + 'static,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let slimmed = watcher(api, config).default_backoff().modify(move |object: &mut K| {
        object.managed_fields_mut().clear();
        slim(object);
    });
    let stream = reflector::reflector(writer, slimmed).touched_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(object) => changed(&object),
                Err(e) => warn!(kind = %K::kind(&Default::default()), error = %e, "watch failed; retrying"),
            }
        }
    });
    tasks.push(task.abort_handle());
    reader
}

fn keep_all<K>(_: &mut K) {}

/// What a reconcile reads of an agent Pod: its node and whether it is Ready.
fn slim_agent(pod: &mut Pod) {
    let node_name = pod.spec.as_mut().and_then(|spec| spec.node_name.take());
    pod.spec = Some(PodSpec { node_name, ..PodSpec::default() });
    pod.status = pod.status.take().map(|status| PodStatus {
        conditions: status.conditions.map(|c| c.into_iter().filter(|c| c.type_ == "Ready").collect()),
        ..PodStatus::default()
    });
    pod.metadata.annotations = None;
}

/// What a reconcile reads of a Node: its Ready condition. A real Node also carries its images,
/// addresses, capacity and more, some kilobytes that thousands of nodes would keep in memory.
fn slim_node(node: &mut Node) {
    node.spec = None;
    node.status = node.status.take().map(|status| NodeStatus {
        conditions: status.conditions.map(|c| c.into_iter().filter(|c| c.type_ == "Ready").collect()),
        ..NodeStatus::default()
    });
    node.metadata.annotations = None;
    node.metadata.labels = None;
}

/// Forwards each rollout at most once per `window`, however many of its reports changed in it.
async fn coalesce(
    mut changes: mpsc::UnboundedReceiver<ObjectRef<PolicyRollout>>,
    out: mpsc::UnboundedSender<ObjectRef<PolicyRollout>>,
    window: Duration,
) {
    let mut pending = HashSet::new();
    let mut tick = tokio::time::interval(window);
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Some(rollout) => {
                    pending.insert(rollout);
                }
                None => return,
            },
            _ = tick.tick() => {
                for rollout in std::mem::take(&mut pending) {
                    let _ = out.send(rollout);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::reconciler::reconcile::{is_ready, not_ready};

    #[test]
    fn slim_nodes_and_agents_keep_what_a_reconcile_reads_and_drop_the_rest() {
        let mut node: Node = serde_json::from_value(json!({
            "metadata": {"name": "node-1", "labels": {"zone": "a"}, "managedFields": [{"manager": "kubelet"}]},
            "spec": {"podCIDR": "10.0.0.0/24"},
            "status": {
                "conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"}
                ],
                "images": [{"names": ["registry.example/app:1"], "sizeBytes": 1000}],
                "capacity": {"cpu": "2"}
            }
        }))
        .unwrap();
        let before = not_ready(&node);
        node.managed_fields_mut().clear();
        slim_node(&mut node);
        assert_eq!(not_ready(&node), before);
        assert!(before.is_some());
        let status = node.status.as_ref().unwrap();
        assert!(status.images.is_none() && status.capacity.is_none() && node.spec.is_none());
        assert_eq!(status.conditions.as_ref().unwrap().len(), 1);
        assert!(node.metadata.labels.is_none() && node.metadata.managed_fields.as_ref().is_none_or(Vec::is_empty));

        let mut agent: Pod = serde_json::from_value(json!({
            "metadata": {"name": "palisade-agent-1", "namespace": "palisade-system"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "agent", "image": "palisade:1"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "podIP": "10.0.0.5"}
        }))
        .unwrap();
        slim_agent(&mut agent);
        assert!(is_ready(&agent));
        let spec = agent.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
        assert!(spec.containers.is_empty() && agent.status.as_ref().unwrap().pod_ip.is_none());
    }
}
