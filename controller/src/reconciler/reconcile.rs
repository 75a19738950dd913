//! The Kubernetes reconciler of PolicyRollouts: the finalizer, the reconcile step over the API
//! server ([`KubeStore`]: reads from the caches, writes to the server), garbage collection of old
//! PolicyRevisions, requeue and backoff.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use palisade_rollout::crd::{PolicyAuditReport, PolicyDecision, PolicyRevision, PolicyRollout, PolicyRolloutStatus};
use palisade_rollout::engine::{Claim, DecisionRequest, Event, EventType, HISTORY_LIMIT, NotReadyNode};
use palisade_rollout::wire::{CONTROLLER_FIELD_MANAGER, FINALIZER};
use serde_json::json;
use tracing::{debug, info, warn};

use super::step::{self, RolloutStore, decision_request, held_revisions};
use super::{Caches, Config, Context, Error};

/// First retry after an error; doubled per consecutive failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub async fn reconcile(rollout: Arc<PolicyRollout>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.caches.ready().await?;
    let started = Instant::now();
    let key = key(&rollout);
    let namespace = rollout.namespace().ok_or_else(|| Error::NoNamespace(rollout.name_any()))?;
    let api: Api<PolicyRollout> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, rollout, |event| async {
        match event {
            Finalizer::Apply(rollout) => apply(&rollout, &ctx).await,
            Finalizer::Cleanup(rollout) => cleanup(&rollout, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&key);
    }
    result
}

/// Exponential backoff per rollout; what is enforced is untouched while it lasts.
pub fn error_policy(rollout: Arc<PolicyRollout>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.inc();
    let key = key(&rollout);
    let failures = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let n = failures.entry(key.clone()).or_default();
        *n = n.saturating_add(1);
        *n
    };
    let delay = MIN_BACKOFF.saturating_mul(1 << failures.min(16).saturating_sub(1)).min(MAX_BACKOFF);
    warn!(rollout = %key, %error, failures, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn key(rollout: &PolicyRollout) -> String {
    format!("{}/{}", rollout.namespace().unwrap_or_default(), rollout.name_any())
}

async fn apply(rollout: &PolicyRollout, ctx: &Context) -> Result<Action, Error> {
    let store = KubeStore { client: &ctx.client, config: &ctx.config, caches: &ctx.caches, reporter: &ctx.reporter };
    let reconciled = step::reconcile(&store, rollout, &ctx.sources, &ctx.metrics, (ctx.clock)()).await?;
    collect_revisions(rollout, &reconciled.status, ctx).await?;

    if rollout.spec.suspend {
        return Ok(Action::await_change());
    }
    let requeue = reconciled.requeue.max(Duration::from_secs(1));
    debug!(rollout = %key(rollout), phase = ?reconciled.status.phase, ?requeue, "reconciled");
    Ok(Action::requeue(requeue))
}

/// The API server as the reconcile step's store: read through the caches, written directly.
struct KubeStore<'a> {
    client: &'a Client,
    config: &'a Config,
    caches: &'a Caches,
    reporter: &'a Reporter,
}

impl RolloutStore for KubeStore<'_> {
    type Secrets = Api<Secret>;

    fn controller_namespace(&self) -> &str {
        &self.config.namespace
    }

    fn secrets(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The reports of nodes running a ready agent. Reports from other nodes are ignored: a
    /// removed node does not hold the barrier forever, and a report written for a node whose
    /// agent is not running and ready (its readiness probe passes once its datapath matches the
    /// cluster) is not evidence. A node with a ready agent but no report is not waited for:
    /// agents report only the rollouts that select an endpoint on their node.
    async fn reports(&self, rollout: &PolicyRollout) -> Result<Vec<Arc<PolicyAuditReport>>, Error> {
        let (name, namespace) = (rollout.name_any(), rollout.namespace().unwrap_or_default());
        let agents = self.caches.agents.state();
        let nodes: BTreeSet<&str> =
            agents.iter().filter(|p| is_ready(p)).filter_map(|p| p.spec.as_ref()?.node_name.as_deref()).collect();
        Ok(self.caches.reports.on_nodes(&namespace, &name, nodes))
    }

    async fn not_ready_nodes(&self) -> Result<Vec<NotReadyNode>, Error> {
        Ok(self.caches.nodes.state().iter().filter_map(|n| not_ready(n)).collect())
    }

    async fn create_revision(&self, revision: PolicyRevision) -> Result<(), Error> {
        let api: Api<PolicyRevision> = Api::namespaced(self.client.clone(), &revision.namespace().unwrap_or_default());
        let params = PostParams { field_manager: Some(CONTROLLER_FIELD_MANAGER.into()), ..Default::default() };
        match api.create(&params, &revision).await {
            Ok(_) => {
                info!(revision = %revision.name_any(), commit = %revision.spec.commit, "created PolicyRevision");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.is_already_exists() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Server-side apply of the whole status as the engine left it: only the controller writes
    /// it (people's decisions arrive as PolicyDecisions).
    async fn write_status(&self, rollout: &PolicyRollout, status: &PolicyRolloutStatus) -> Result<(), Error> {
        let api: Api<PolicyRollout> = Api::namespaced(self.client.clone(), &rollout.namespace().unwrap_or_default());
        let patch = json!({
            "apiVersion": PolicyRollout::api_version(&()),
            "kind": PolicyRollout::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply(CONTROLLER_FIELD_MANAGER).force();
        api.patch_status(&rollout.name_any(), &params, &Patch::Apply(&patch)).await?;
        Ok(())
    }

    async fn decisions(&self, rollout: &PolicyRollout) -> Result<Vec<DecisionRequest>, Error> {
        let (name, namespace) = (rollout.name_any(), rollout.namespace());
        let mut decisions: Vec<Arc<PolicyDecision>> = self
            .caches
            .decisions
            .state()
            .into_iter()
            .filter(|d| d.spec.rollout == name && d.namespace() == namespace)
            .collect();
        decisions.sort_by_key(|d| (d.creation_timestamp(), d.name_any()));
        Ok(decisions.iter().map(|d| decision_request(d)).collect())
    }

    async fn consume_decision(&self, rollout: &PolicyRollout, name: &str) -> Result<(), Error> {
        let api: Api<PolicyDecision> = Api::namespaced(self.client.clone(), &rollout.namespace().unwrap_or_default());
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Read only when a commit offers a new revision: the rollouts come from a list then, their
    /// revisions from the cache (or the server, for one created since the cache last heard).
    async fn claims(&self, rollout: &PolicyRollout) -> Result<Vec<Claim>, Error> {
        let others = Api::<PolicyRollout>::all(self.client.clone()).list(&ListParams::default()).await?.items;
        let mut claims = Vec::new();
        for other in others.iter().filter(|o| o.uid() != rollout.uid()) {
            let namespace = other.namespace().unwrap_or_default();
            let api: Api<PolicyRevision> = Api::namespaced(self.client.clone(), &namespace);
            for held in held_revisions(other) {
                let cached = self.caches.revisions.get(&ObjectRef::new(&held.id).within(&namespace));
                let revision = match cached {
                    Some(revision) => Some(revision),
                    None => api.get_opt(&held.id).await?.map(Arc::new),
                };
                if let Some(revision) = revision {
                    claims.extend(step::claims_of(other, held, &revision.spec));
                }
            }
        }
        Ok(claims)
    }

    /// Best effort: a lost Event must not fail or repeat the transition it reports.
    async fn record_event(&self, rollout: &PolicyRollout, event: &Event) -> Result<(), Error> {
        let Event { kind, reason, message } = event;
        let event = KubeEvent {
            type_: match kind {
                EventType::Normal => KubeEventType::Normal,
                EventType::Warning => KubeEventType::Warning,
            },
            reason: reason.to_string(),
            note: Some(message.clone()),
            action: reason.to_string(),
            secondary: None,
        };
        // A Recorder per Event: the engine reports transitions, each with its own message, and a
        // shared Recorder would fold a second AuditStarted into the first as a series that keeps
        // the first message.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(e) = recorder.publish(&event, &rollout.object_ref(&())).await {
            warn!(rollout = %key(rollout), reason, error = %e, "could not publish an Event");
        }
        Ok(())
    }
}

pub(super) fn is_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A Node whose Ready condition is not True, since its last transition. A Node without one (not
/// yet heard from by its kubelet) is not counted as down.
pub(super) fn not_ready(node: &Node) -> Option<NotReadyNode> {
    let conditions = node.status.as_ref()?.conditions.as_ref()?;
    let ready = conditions.iter().find(|c| c.type_ == "Ready").filter(|c| c.status != "True")?;
    Some(NotReadyNode { node: node.name_any(), since: ready.last_transition_time.as_ref()?.0 })
}

/// Deletes this rollout's PolicyRevisions beyond the newest [`HISTORY_LIMIT`], never one the
/// status still names (enforced, candidate, rollback target, approved).
/// From the cache: a revision this reconcile created is collected by the next one.
async fn collect_revisions(rollout: &PolicyRollout, status: &PolicyRolloutStatus, ctx: &Context) -> Result<(), Error> {
    let api: Api<PolicyRevision> = Api::namespaced(ctx.client.clone(), &rollout.namespace().unwrap_or_default());
    let uid = rollout.uid();
    let mut owned: Vec<Arc<PolicyRevision>> = ctx
        .caches
        .revisions
        .state()
        .into_iter()
        .filter(|r| r.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref()))
        .collect();
    if owned.len() <= HISTORY_LIMIT {
        return Ok(());
    }
    let keep: BTreeSet<&str> = [&status.enforced_revision, &status.candidate_revision, &status.previous_revision]
        .into_iter()
        .flatten()
        .map(|r| r.id.as_str())
        .chain(status.approval.as_ref().map(|a| a.revision.as_str()))
        .collect();
    owned.sort_by_key(|r| std::cmp::Reverse(r.creation_timestamp()));
    for old in owned.iter().skip(HISTORY_LIMIT).filter(|r| !keep.contains(r.name_any().as_str())) {
        match api.delete(&old.name_any(), &DeleteParams::default()).await {
            Ok(_) => info!(revision = %old.name_any(), "deleted an old PolicyRevision"),
            Err(kube::Error::Api(e)) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// On delete: the agents' reports go (PolicyRevisions follow their owner through garbage
/// collection), and so do the mirror and the metrics of the rollout.
async fn cleanup(rollout: &PolicyRollout, ctx: &Context) -> Result<Action, Error> {
    let name = rollout.name_any();
    let namespace = rollout.namespace().unwrap_or_default();
    let api: Api<PolicyAuditReport> = Api::namespaced(ctx.client.clone(), &namespace);
    for report in ctx.caches.reports.of(&namespace, &name) {
        match api.delete(&report.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    ctx.sources.forget(&key(rollout), &namespace, &name);
    ctx.metrics.observe(&namespace, &name, None, 0);
    info!(rollout = %key(rollout), "cleaned up");
    Ok(Action::await_change())
}
