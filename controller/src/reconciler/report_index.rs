//! The agents' reports, indexed by rollout and node. A reconcile reads the reports of one rollout
//! on the nodes with a ready agent: thousands of keyed lookups in a reflector store keyed by
//! object name (a name built and an ObjectRef allocated per node) cost more than the rest of the
//! reconcile, so the reports watch keeps this index instead, at one write per report change.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use palisade_agent::report_name;
use palisade_rollout::crd::PolicyAuditReport;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::warn;

/// A rollout: its namespace and name.
type RolloutKey = (String, String);

/// Kept current by [`ReportIndex::watch`]; cheap to clone.
#[derive(Clone)]
pub struct ReportIndex {
    index: Arc<RwLock<Index>>,
    ready: watch::Receiver<bool>,
}

#[derive(Default)]
struct Index {
    /// Per rollout, its reports by node.
    by_rollout: HashMap<RolloutKey, HashMap<String, Arc<PolicyAuditReport>>>,
    /// Where each report (namespace, name) is indexed, to find it again when it changes or goes.
    placed: HashMap<(String, String), (RolloutKey, String)>,
}

/// The index stopped before its first list: its watch task ended.
#[derive(Debug, thiserror::Error)]
#[error("the reports watch stopped before its first list")]
pub struct IndexStopped;

impl ReportIndex {
    /// Starts watching `api` (managed fields dropped); `changed` sees each report applied or
    /// deleted. The index follows watcher semantics: a re-list replaces it whole once complete.
    pub fn watch(
        api: Api<PolicyAuditReport>,
        config: watcher::Config,
        tasks: &mut Vec<AbortHandle>,
        changed: impl Fn(&PolicyAuditReport) + Send + 'static,
    ) -> ReportIndex {
        let (ready_tx, ready) = watch::channel(false);
        let this = ReportIndex { index: Arc::default(), ready };
        let index = this.index.clone();
        let events = watcher(api, config).default_backoff().modify(|report| report.managed_fields_mut().clear());
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            let mut relisted: Option<Index> = None;
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(report)) => {
                        changed(&report);
                        index.write().unwrap().insert(report);
                    }
                    Ok(watcher::Event::Delete(report)) => {
                        changed(&report);
                        index.write().unwrap().remove(&report);
                    }
                    Ok(watcher::Event::Init) => relisted = Some(Index::default()),
                    Ok(watcher::Event::InitApply(report)) => {
                        changed(&report);
                        relisted.get_or_insert_default().insert(report);
                    }
                    Ok(watcher::Event::InitDone) => {
                        *index.write().unwrap() = relisted.take().unwrap_or_default();
                        ready_tx.send_replace(true);
                    }
                    Err(e) => warn!(kind = "PolicyAuditReport", error = %e, "watch failed; retrying"),
                }
            }
        });
        tasks.push(task.abort_handle());
        this
    }

    /// Waits for the first complete list.
    pub async fn ready(&self) -> Result<(), IndexStopped> {
        self.ready.clone().wait_for(|ready| *ready).await.map(|_| ()).map_err(|_| IndexStopped)
    }

    /// The reports of `rollout` in `namespace` on `nodes`, in their order.
    pub fn on_nodes<'n>(
        &self,
        namespace: &str,
        rollout: &str,
        nodes: impl IntoIterator<Item = &'n str>,
    ) -> Vec<Arc<PolicyAuditReport>> {
        let index = self.index.read().unwrap();
        let Some(reports) = index.by_rollout.get(&(namespace.to_owned(), rollout.to_owned())) else {
            return Vec::new();
        };
        nodes.into_iter().filter_map(|node| reports.get(node).cloned()).collect()
    }

    /// Every report indexed, of every rollout.
    pub fn all(&self) -> Vec<Arc<PolicyAuditReport>> {
        self.index.read().unwrap().by_rollout.values().flat_map(|reports| reports.values().cloned()).collect()
    }

    /// Every report of `rollout` in `namespace`.
    pub fn of(&self, namespace: &str, rollout: &str) -> Vec<Arc<PolicyAuditReport>> {
        let index = self.index.read().unwrap();
        let reports = index.by_rollout.get(&(namespace.to_owned(), rollout.to_owned()));
        reports.map(|reports| reports.values().cloned().collect()).unwrap_or_default()
    }
}

impl Index {
    /// Indexes a report under the rollout and node it names, if it carries the name the agent of
    /// that node gives it: a report under any other name is not evidence.
    fn insert(&mut self, report: PolicyAuditReport) {
        self.remove(&report);
        let (Some(namespace), name) = (report.namespace(), report.name_any()) else { return };
        let (rollout, node) = (&report.spec.rollout, &report.spec.node);
        if name != report_name(rollout, node) {
            return;
        }
        let place = ((namespace.clone(), rollout.clone()), node.clone());
        self.by_rollout.entry(place.0.clone()).or_default().insert(place.1.clone(), Arc::new(report));
        self.placed.insert((namespace, name), place);
    }

    fn remove(&mut self, report: &PolicyAuditReport) {
        let name = (report.namespace().unwrap_or_default(), report.name_any());
        let Some((rollout, node)) = self.placed.remove(&name) else { return };
        if let Some(reports) = self.by_rollout.get_mut(&rollout) {
            reports.remove(&node);
            if reports.is_empty() {
                self.by_rollout.remove(&rollout);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use palisade_rollout::crd::PolicyAuditReportSpec;

    use super::*;

    fn report(namespace: &str, name: &str, rollout: &str, node: &str) -> PolicyAuditReport {
        let spec = PolicyAuditReportSpec { rollout: rollout.into(), node: node.into(), ..Default::default() };
        let mut report = PolicyAuditReport::new(name, spec);
        report.metadata.namespace = Some(namespace.into());
        report
    }

    fn nodes(index: &Index, namespace: &str, rollout: &str) -> Vec<String> {
        let key = (namespace.to_owned(), rollout.to_owned());
        let mut nodes: Vec<String> = index.by_rollout.get(&key).into_iter().flat_map(|r| r.keys().cloned()).collect();
        nodes.sort();
        nodes
    }

    #[test]
    fn reports_are_found_by_rollout_and_node_and_leave_when_deleted() {
        let mut index = Index::default();
        index.insert(report("shop", "web-node-1", "web", "node-1"));
        index.insert(report("shop", "web-node-2", "web", "node-2"));
        index.insert(report("other", "web-node-1", "web", "node-1"));
        index.insert(report("shop", "api-node-1", "api", "node-1"));
        assert_eq!(nodes(&index, "shop", "web"), ["node-1", "node-2"]);
        assert_eq!(nodes(&index, "other", "web"), ["node-1"]);

        index.remove(&report("shop", "web-node-1", "web", "node-1"));
        assert_eq!(nodes(&index, "shop", "web"), ["node-2"]);
        index.remove(&report("shop", "web-node-2", "web", "node-2"));
        assert!(!index.by_rollout.contains_key(&("shop".into(), "web".into())), "no empty rollout left behind");
        assert_eq!(nodes(&index, "shop", "api"), ["node-1"]);
    }

    #[test]
    fn a_report_under_another_name_is_not_evidence_and_a_renamed_claim_moves() {
        let mut index = Index::default();
        index.insert(report("shop", "forged", "web", "node-1"));
        assert!(nodes(&index, "shop", "web").is_empty());

        // "a-b" on node "c" and "a" on node "b-c" share the name "a-b-c": a change of what the
        // object claims moves it rather than leaving the old claim behind.
        index.insert(report("shop", "a-b-c", "a-b", "c"));
        index.insert(report("shop", "a-b-c", "a", "b-c"));
        assert!(nodes(&index, "shop", "a-b").is_empty());
        assert_eq!(nodes(&index, "shop", "a"), ["b-c"]);
    }
}
