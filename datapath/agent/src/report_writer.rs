//! Writes the agent's PolicyAuditReports to the cluster: server-side applies, owned by their
//! PolicyRollout, and deletes of the reports of rollouts that are gone.
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;

use futures::TryFutureExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use palisade_rollout::crd::PolicyAuditReport;
use tracing::{info, warn};

use crate::cluster_watch::WatchState;

/// The field manager of the agent's server-side applies.
pub const FIELD_MANAGER: &str = palisade_rollout::wire::AGENT_FIELD_MANAGER;

/// Namespace and name.
type Key = (String, String);

/// Server-side-applies the agent's PolicyAuditReports and deletes those of rollouts that are gone.
pub struct ReportWriter {
    client: Client,
    state: Arc<WatchState>,
    /// (namespace, name) of the reports the last batch held, or that could not be deleted yet.
    written: BTreeSet<Key>,
}

impl ReportWriter {
    pub fn new(client: Client, state: Arc<WatchState>) -> Self {
        ReportWriter { client, state, written: BTreeSet::new() }
    }

    /// Writes one batch (one report per rollout the agent knows): each report is applied with
    /// force, owned by its PolicyRollout when the rollout's uid is known, so that it goes with
    /// it; the reports of the previous batch that this one lacks are deleted. Failures are logged;
    /// the next batch tries again.
    pub async fn write(&mut self, batch: &[PolicyAuditReport]) {
        let mut written = BTreeSet::new();
        for report in batch {
            let key = (report.namespace().unwrap_or_default(), report.name_any());
            written.insert(key.clone());
            let mut report = report.clone();
            if let Some(uid) = self.state.rollout_uid(&key.0, &report.spec.rollout) {
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
            if let Err(e) = api.patch(&key.1, &params, &Patch::Apply(&report)).await {
                warn!(report = %format!("{}/{}", key.0, key.1), error = %e, "could not write the audit report");
            }
        }
        let stale: Vec<Key> = self.written.difference(&written).cloned().collect();
        for key in stale {
            let api: Api<PolicyAuditReport> = Api::namespaced(self.client.clone(), &key.0);
            match api.delete(&key.1, &DeleteParams::default()).map_ok(|_| ()).await {
                Ok(()) => info!(report = %format!("{}/{}", key.0, key.1), "rollout gone; report deleted"),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => {
                    warn!(report = %format!("{}/{}", key.0, key.1), error = %e, "could not delete the audit report");
                    written.insert(key);
                }
            }
        }
        self.written = written;
    }
}

impl Debug for ReportWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportWriter").field("written", &self.written).finish_non_exhaustive()
    }
}
