//! One reconcile of one PolicyRollout, whichever store holds it: observe (the Git source and the
//! agents' reports), decide (the pure engine), act (PolicyRevisions first, then the status and
//! the Events). The Kubernetes reconciler and local mode run this same step and differ only in
//! their [`RolloutStore`]: the API server, or local mode's state directory.
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use palisade_rollout::crd::{
    PolicyAuditReport, PolicyAuditReportSpec, PolicyDecision, PolicyRevision, PolicyRevisionSpec, PolicyRollout,
    PolicyRolloutStatus, RECONCILE_REQUEST_MAX, RevisionRef,
};
use palisade_rollout::engine::{
    self, Action, Claim, DecisionRequest, Event, NotReadyNode, Observed, PolicyRef, SourceObservation,
};
use palisade_rollout::wire::{RECONCILE_ANNOTATION, ROLLOUT_LABEL};
use tracing::{info, warn};

use super::fetch::{Due, Sources};
use super::source_settings::SecretStore;
use super::{Error, Metrics};

/// Where rollouts, their revisions, reports and Events live, as the reconcile step reads and
/// writes them.
pub trait RolloutStore: Sync {
    type Secrets: SecretStore;

    /// The controller's namespace: only rollouts there may use `scope: Cluster`.
    fn controller_namespace(&self) -> &str;

    /// The Secrets of `namespace`, for the source of a rollout there.
    fn secrets(&self, namespace: &str) -> Self::Secrets;

    /// One report per node the promotion barrier waits for.
    fn reports(
        &self,
        rollout: &PolicyRollout,
    ) -> impl Future<Output = Result<Vec<Arc<PolicyAuditReport>>, Error>> + Send;

    /// The nodes whose Node is not Ready.
    fn not_ready_nodes(&self) -> impl Future<Output = Result<Vec<NotReadyNode>, Error>> + Send;

    /// The rollout's PolicyDecisions, oldest first.
    fn decisions(&self, rollout: &PolicyRollout) -> impl Future<Output = Result<Vec<DecisionRequest>, Error>> + Send;

    /// Deletes a decision the engine has read; one already gone is fine.
    fn consume_decision(&self, rollout: &PolicyRollout, name: &str) -> impl Future<Output = Result<(), Error>> + Send;

    /// The policies that rollouts other than `rollout` stage or enforce.
    fn claims(&self, rollout: &PolicyRollout) -> impl Future<Output = Result<Vec<Claim>, Error>> + Send;

    /// Revisions are immutable and content-addressed, so one that exists already is the same one.
    fn create_revision(&self, revision: PolicyRevision) -> impl Future<Output = Result<(), Error>> + Send;

    /// Writes the status the engine left; called only when it differs from the rollout's.
    fn write_status(
        &self,
        rollout: &PolicyRollout,
        status: &PolicyRolloutStatus,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    fn record_event(&self, rollout: &PolicyRollout, event: &Event) -> impl Future<Output = Result<(), Error>> + Send;
}

/// What a reconcile left.
pub struct Reconciled {
    pub status: PolicyRolloutStatus,
    /// When to come back at the latest: the next fetch, or sooner if the engine waits for a time.
    pub requeue: Duration,
}

pub async fn reconcile(
    store: &impl RolloutStore,
    rollout: &PolicyRollout,
    sources: &Sources,
    metrics: &Metrics,
    now: Timestamp,
) -> Result<Reconciled, Error> {
    let name = rollout.name_any();
    let namespace = rollout.namespace().unwrap_or_default();
    let key = format!("{namespace}/{name}");
    let spec = &rollout.spec;

    let requested_at = rollout.annotations().get(RECONCILE_ANNOTATION).map(String::as_str);
    let fetched = if spec.suspend {
        None
    } else {
        let due = Due { key: &key, source: &spec.source, requested_at, now };
        match sources.fresh(&due) {
            Some(fetched) => Some(fetched),
            None => Some(sources.fetch(&due, &namespace, &name, &store.secrets(&namespace), metrics).await?),
        }
    };
    // A suspended rollout is not fetched and the engine does not read the source then.
    let suspended = SourceObservation::Unreachable { message: "suspended".into() };
    let observation = fetched.as_ref().map_or(&suspended, |f| &f.observation);
    let reports = store.reports(rollout).await?;
    let reports: Vec<&PolicyAuditReportSpec> = reports.iter().map(|r| &r.spec).collect();
    let not_ready = store.not_ready_nodes().await?;
    let decisions = store.decisions(rollout).await?;
    let claims = match observation {
        SourceObservation::Revision(rev) if offers_new(rollout.status.as_ref(), &rev.id) => {
            store.claims(rollout).await?
        }
        _ => Vec::new(),
    };

    let engine_ctx = engine::Context {
        namespace: &namespace,
        controller_namespace: store.controller_namespace(),
        generation: rollout.metadata.generation,
        now,
    };
    let observed = Observed {
        source: observation,
        reports: &reports,
        not_ready: &not_ready,
        decisions: &decisions,
        claims: &claims,
    };
    let mut decision = engine::reconcile(spec, rollout.status.as_ref(), &observed, &engine_ctx);
    // A sync asked for (`palisade reconcile`, a push) is handled once the source was read for it.
    if let Some(at) = requested_at.filter(|at| fetched.is_some() && at.len() <= RECONCILE_REQUEST_MAX as usize) {
        decision.status.last_handled_reconcile_at = Some(at.to_string());
    }

    // Revisions first, so the status never names one the agents cannot read.
    for action in &decision.actions {
        if let Action::StageCandidate(staged) = action {
            let Some((id, revision_spec)) =
                fetched.as_ref().and_then(|f| f.revision.as_ref()).filter(|(id, _)| *id == staged.id)
            else {
                return Err(Error::UnknownRevision(staged.id.clone()));
            };
            let revision = PolicyRevision {
                metadata: ObjectMeta {
                    name: Some(id.clone()),
                    namespace: Some(namespace.clone()),
                    labels: Some([(ROLLOUT_LABEL.to_string(), name.clone())].into()),
                    owner_references: rollout.controller_owner_ref(&()).map(|o| vec![o]),
                    ..Default::default()
                },
                spec: revision_spec.clone(),
            };
            store.create_revision(revision).await?;
        }
    }
    if rollout.status.clone().unwrap_or_default() != decision.status {
        store.write_status(rollout, &decision.status).await?;
    }
    for action in &decision.actions {
        match action {
            Action::Event(event) => store.record_event(rollout, event).await?,
            Action::Flip { to, fast_track } => {
                info!(rollout = %key, revision = %to.id, fast_track, "promoting");
                let labels = super::metrics::PromotionLabels { fast_track: fast_track.to_string() };
                metrics.promotions.get_or_create(&labels).inc();
            }
            Action::RollBack { from, to, reason } => {
                warn!(rollout = %key, from = %from.id, to = %to.id, %reason, "rolling back");
                metrics.rollbacks.inc();
            }
            Action::ConsumeDecision(decision) => store.consume_decision(rollout, decision).await?,
            Action::StageCandidate(_) | Action::RequeueAfter(_) => {}
        }
    }
    metrics.observe(&namespace, &name, Some(decision.status.phase), decision.status.new_denies);

    let requeue = decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::RequeueAfter(after) => Some(*after),
            _ => None,
        })
        .fold(sources.next_fetch(&key, &spec.source, now), Duration::min);
    Ok(Reconciled { status: decision.status, requeue })
}

/// Whether revision `id` would be new to the rollout: neither its candidate nor what it
/// enforces. Only then may it conflict with another rollout's policies.
fn offers_new(status: Option<&PolicyRolloutStatus>, id: &str) -> bool {
    status.is_none_or(|s| ![&s.candidate_revision, &s.enforced_revision].into_iter().flatten().any(|r| r.id == id))
}

/// The revisions a rollout holds policies with: its candidate and what it enforces.
pub fn held_revisions(rollout: &PolicyRollout) -> impl Iterator<Item = &RevisionRef> {
    let status = rollout.status.as_ref();
    status.into_iter().flat_map(|s| [&s.candidate_revision, &s.enforced_revision]).flatten()
}

/// The claims `rollout` holds through `revision` (one of [`held_revisions`]).
pub fn claims_of(rollout: &PolicyRollout, held: &RevisionRef, revision: &PolicyRevisionSpec) -> Vec<Claim> {
    let owner = format!("{}/{}", rollout.namespace().unwrap_or_default(), rollout.name_any());
    revision
        .policies
        .iter()
        .map(|p| Claim {
            policy: PolicyRef { kind: p.kind.clone(), name: p.name.clone(), namespace: p.namespace.clone() },
            rollout: owner.clone(),
            revision: held.display.clone(),
        })
        .collect()
}

/// A PolicyDecision as the engine reads it.
pub fn decision_request(decision: &PolicyDecision) -> DecisionRequest {
    DecisionRequest {
        name: decision.name_any(),
        revision: decision.spec.revision.clone(),
        action: decision.spec.action,
        user: decision.spec.user.clone(),
    }
}
