//! Writes the agent's PolicyAuditReports to the cluster: server-side applies, owned by their
//! PolicyRollout, and deletes of the reports of rollouts that are gone or no longer concern the
//! node.
//!
//! A report is rewritten only when what the controller's gates and barrier read of it changed
//! ([`GateView`]), or for its heartbeat while the rollout is in flight (a candidate staged, a
//! flip requested: the barrier waits on the nodes); its counters alone go out with the
//! heartbeat, or at every batch while the controller watches the rollout's drops after a
//! promotion. A settled rollout's reports are not rewritten at all until something changes.
use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::TryFutureExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use palisade_rollout::crd::{AuditTotals, PolicyAuditReport, PolicyAuditReportSpec};
use tracing::{info, warn};

use crate::cluster_watch::{RolloutFacts, WatchState};
use crate::report::{FlowClass, report_name};

/// The field manager of the agent's server-side applies.
pub const FIELD_MANAGER: &str = palisade_rollout::wire::AGENT_FIELD_MANAGER;

/// Namespace and name.
type Key = (String, String);

/// A report as last written.
#[derive(Debug)]
struct Written {
    /// Without `reportedAt` and `heartbeat`.
    spec: PolicyAuditReportSpec,
    at: Timestamp,
}

/// What the controller's gates and barrier read of a report: everything but its counters, each
/// endpoint's traffic reduced to whether it reached the rollout's `minFlowsPerEndpoint`, and the
/// flows as a set of distinct flows.
#[derive(PartialEq)]
struct GateView {
    spec: PolicyAuditReportSpec,
    flows: HashSet<FlowClass>,
}

impl GateView {
    fn of(spec: &PolicyAuditReportSpec, rollout: &RolloutFacts) -> GateView {
        let AuditTotals { new_denies, new_allows, truncated_flows, .. } = spec.totals;
        let mut endpoints = spec.endpoints.clone();
        for endpoint in &mut endpoints {
            endpoint.flows = u64::from(endpoint.flows >= rollout.min_flows_per_endpoint);
        }
        GateView {
            spec: PolicyAuditReportSpec {
                totals: AuditTotals { new_denies, new_allows, truncated_flows, ..AuditTotals::default() },
                endpoints,
                flows: Vec::new(),
                ..spec.clone()
            },
            flows: spec.flows.iter().map(FlowClass::of).collect(),
        }
    }
}

/// Server-side-applies the agent's PolicyAuditReports when they changed, and deletes those of
/// rollouts that are gone or no longer concern the node.
pub struct ReportWriter {
    client: Client,
    state: Arc<WatchState>,
    node: String,
    heartbeat: Duration,
    /// The reports the last batches held, or that could not be deleted yet; `None` when what
    /// the API holds is unknown (the last write failed, or an earlier run of the agent wrote it).
    written: BTreeMap<Key, Option<Written>>,
    /// Whether the reports an earlier run may have left are in `written`.
    adopted: bool,
}

impl ReportWriter {
    /// The writer of node `node`'s reports.
    pub fn new(client: Client, state: Arc<WatchState>, node: String, heartbeat: Duration) -> Self {
        ReportWriter { client, state, node, heartbeat, written: BTreeMap::new(), adopted: false }
    }

    /// Once the watches know the rollouts: the report an earlier run of the agent may have left
    /// for each is taken as written, content unknown, so that it is rewritten or deleted like the
    /// others (a rollout may have stopped concerning the node meanwhile). Costs one delete, most
    /// often of nothing, per rollout that does not concern the node, per agent start.
    fn adopt(&mut self) {
        if self.adopted || !self.state.synced() {
            return;
        }
        for (namespace, rollout) in self.state.rollouts_known() {
            self.written.entry((namespace, report_name(&rollout, &self.node))).or_insert(None);
        }
        self.adopted = true;
    }

    /// Takes one batch (the reports of every rollout that concerns the node) at `now`: applies
    /// each that is due with force, stamped `reportedAt: now`, owned by its PolicyRollout when
    /// the rollout's uid is known so that it goes with it; deletes the reports the batch lacks.
    /// Failures are logged; the next batch tries again.
    pub async fn write(&mut self, batch: &[PolicyAuditReport], now: Timestamp) {
        self.adopt();
        let mut written = BTreeMap::new();
        for report in batch {
            let key = (report.namespace().unwrap_or_default(), report.name_any());
            let rollout = self.state.rollout(&key.0, &report.spec.rollout);
            let last = self.written.remove(&key).flatten();
            if !last.as_ref().is_none_or(|last| self.due(last, &report.spec, &rollout, now)) {
                written.insert(key, last);
                continue;
            }
            let applied = self.apply(&key, report, rollout.uid, now).await;
            written.insert(key, applied.then(|| Written { spec: report.spec.clone(), at: now }));
        }
        let stale: Vec<Key> = std::mem::take(&mut self.written).into_keys().collect();
        for key in stale {
            let api: Api<PolicyAuditReport> = Api::namespaced(self.client.clone(), &key.0);
            match api.delete(&key.1, &DeleteParams::default()).map_ok(|_| ()).await {
                Ok(()) => info!(report = %format!("{}/{}", key.0, key.1), "rollout gone or elsewhere; report deleted"),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => {
                    warn!(report = %format!("{}/{}", key.0, key.1), error = %e, "could not delete the audit report");
                    written.insert(key, None);
                }
            }
        }
        self.written = written;
    }

    /// Whether a report written as `last` is to be written again as `spec` at `now`.
    fn due(&self, last: &Written, spec: &PolicyAuditReportSpec, rollout: &RolloutFacts, now: Timestamp) -> bool {
        let heartbeat = SignedDuration::try_from(self.heartbeat).unwrap_or(SignedDuration::MAX);
        (rollout.in_flight && now.duration_since(last.at) >= heartbeat)
            || GateView::of(spec, rollout) != GateView::of(&last.spec, rollout)
            || (rollout.watched_at(now) && *spec != last.spec)
    }

    /// Server-side-applies one report; whether the API took it.
    async fn apply(&self, key: &Key, report: &PolicyAuditReport, uid: Option<String>, now: Timestamp) -> bool {
        let mut report = report.clone();
        report.spec.reported_at = Some(Time(now));
        report.spec.heartbeat = Some(self.heartbeat.into());
        if let Some(uid) = uid {
            report.metadata.owner_references = Some(vec![OwnerReference {
                api_version: palisade_rollout::wire::API_VERSION.into(),
                kind: "PolicyRollout".into(),
                name: report.spec.rollout.clone(),
                uid,
                ..OwnerReference::default()
            }]);
        }
        let api: Api<PolicyAuditReport> = Api::namespaced(self.client.clone(), &key.0);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(&key.1, &params, &Patch::Apply(&report)).await {
            Ok(_) => true,
            Err(e) => {
                warn!(report = %format!("{}/{}", key.0, key.1), error = %e, "could not write the audit report");
                false
            }
        }
    }
}

impl Debug for ReportWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let written: Vec<&Key> = self.written.keys().collect();
        f.debug_struct("ReportWriter")
            .field("node", &self.node)
            .field("heartbeat", &self.heartbeat)
            .field("written", &written)
            .finish_non_exhaustive()
    }
}
