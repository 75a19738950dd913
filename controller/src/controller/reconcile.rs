//! One reconcile of one PolicyRollout: observe (source, agent nodes, audit reports), decide (the
//! engine), act (PolicyRevisions, status, Events, garbage collection, requeue).
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use json_patch::jsonptr::PointerBuf;
use json_patch::{Patch as JsonPatch, PatchOperation, RemoveOperation, TestOperation};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Resource, ResourceExt};
use palisade_rollout::crd::{
    PolicyAuditReport, PolicyAuditReportSpec, PolicyRevision, PolicyRollout, PolicyRolloutStatus,
};
use palisade_rollout::engine::{self, Action as EngineAction, EventType, HISTORY_LIMIT, SourceObservation};
use serde_json::json;
use tracing::{debug, info, warn};

use super::source::{Due, Fetched};
use super::{Context, Error, FIELD_MANAGER, FINALIZER, REQUESTED_AT, ROLLOUT_LABEL};

/// First retry after an error; doubled per consecutive failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub async fn reconcile(rollout: Arc<PolicyRollout>, ctx: Arc<Context>) -> Result<Action, Error> {
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
    let name = rollout.name_any();
    let namespace = rollout.namespace().unwrap_or_default();
    let key = key(rollout);
    let now = (ctx.clock)();
    let spec = &rollout.spec;

    let fetched = if spec.suspend {
        None
    } else {
        let requested_at = rollout.annotations().get(REQUESTED_AT).map(String::as_str);
        let due = Due { key: &key, source: &spec.source, requested_at, now };
        match ctx.sources.fresh(&due) {
            Some(fetched) => Some(fetched),
            None => {
                let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
                Some(ctx.sources.fetch(&due, &namespace, &name, &secrets, &ctx.metrics).await?)
            }
        }
    };
    // A suspended rollout is not fetched and the engine does not read the source then.
    let suspended = SourceObservation::Unreachable { message: "suspended".into() };
    let observation = fetched.as_ref().map_or(&suspended, |f| &f.observation);
    let reports = reports(rollout, ctx).await?;

    let engine_ctx = engine::Context {
        namespace: &namespace,
        controller_namespace: &ctx.config.namespace,
        generation: rollout.metadata.generation,
        now,
    };
    let decision = engine::reconcile(spec, rollout.status.as_ref(), observation, &reports, &engine_ctx);

    // Revisions first, so the status never names one the agents cannot read.
    for action in &decision.actions {
        if let EngineAction::StageCandidate(revision) = action {
            stage(rollout, fetched.as_ref(), &revision.id, ctx).await?;
        }
    }
    write_status(rollout, &decision.status, ctx).await?;
    for action in &decision.actions {
        match action {
            EngineAction::Event { kind, reason, message } => publish(rollout, *kind, reason, message, ctx).await,
            EngineAction::Flip { to, fast_track } => {
                info!(rollout = %key, revision = %to.id, fast_track, "promoting");
                let labels = super::metrics::PromotionLabels { fast_track: fast_track.to_string() };
                ctx.metrics.promotions.get_or_create(&labels).inc();
            }
            EngineAction::RollBack { from, to, reason } => {
                warn!(rollout = %key, from = %from.id, to = %to.id, %reason, "rolling back");
                ctx.metrics.rollbacks.inc();
            }
            EngineAction::StageCandidate(_) | EngineAction::RequeueAfter(_) => {}
        }
    }
    ctx.metrics.observe(&namespace, &name, Some(decision.status.phase), decision.status.new_denies);
    collect_revisions(rollout, &decision.status, ctx).await?;

    if spec.suspend {
        return Ok(Action::await_change());
    }
    let next_fetch = ctx.sources.next_fetch(&key, &spec.source, now);
    let requeue = decision
        .actions
        .iter()
        .filter_map(|a| match a {
            EngineAction::RequeueAfter(after) => Some(*after),
            _ => None,
        })
        .fold(next_fetch, Duration::min)
        .max(Duration::from_secs(1));
    debug!(rollout = %key, phase = ?decision.status.phase, ?requeue, "reconciled");
    Ok(Action::requeue(requeue))
}

/// One report per node running the agent. A node whose agent has not reported holds the
/// promotion barrier with an empty report; reports from nodes without an agent are ignored, so a
/// removed node does not hold it forever.
async fn reports(rollout: &PolicyRollout, ctx: &Context) -> Result<Vec<PolicyAuditReportSpec>, Error> {
    let name = rollout.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let agents = pods.list(&ListParams::default().labels(&ctx.config.agent_selector)).await?;
    let nodes: BTreeSet<String> = agents.items.into_iter().filter_map(|p| p.spec?.node_name).collect();
    let api: Api<PolicyAuditReport> = Api::namespaced(ctx.client.clone(), &rollout.namespace().unwrap_or_default());
    let mut by_node: BTreeMap<String, PolicyAuditReportSpec> = api
        .list(&ListParams::default().labels(&format!("{ROLLOUT_LABEL}={name}")))
        .await?
        .items
        .into_iter()
        .filter(|r| r.spec.rollout == name)
        .map(|r| (r.spec.node.clone(), r.spec))
        .collect();
    Ok(nodes
        .into_iter()
        .map(|node| {
            by_node.remove(&node).unwrap_or_else(|| PolicyAuditReportSpec {
                rollout: name.clone(),
                node,
                ..Default::default()
            })
        })
        .collect())
}

/// Creates the PolicyRevision the engine staged. Revisions are immutable and content-addressed,
/// so one that exists already is the same one.
async fn stage(rollout: &PolicyRollout, fetched: Option<&Fetched>, id: &str, ctx: &Context) -> Result<(), Error> {
    let Some((_, spec)) = fetched.and_then(|f| f.revision.as_ref()).filter(|(name, _)| name == id) else {
        return Err(Error::UnknownRevision(id.into()));
    };
    let revision = PolicyRevision {
        metadata: ObjectMeta {
            name: Some(id.into()),
            namespace: rollout.namespace(),
            labels: Some([(ROLLOUT_LABEL.to_string(), rollout.name_any())].into()),
            owner_references: rollout.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: spec.clone(),
    };
    let api: Api<PolicyRevision> = Api::namespaced(ctx.client.clone(), &rollout.namespace().unwrap_or_default());
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    match api.create(&params, &revision).await {
        Ok(_) => {
            info!(revision = id, commit = %spec.commit, "created PolicyRevision");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.is_already_exists() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Server-side apply of the status as the engine left it, without the fields people write through
/// the CLI (`approval`, `abort`): applying them would take them over from whoever wrote them. One
/// the engine consumed is removed by a test-and-remove, so a newer one written meanwhile survives.
async fn write_status(rollout: &PolicyRollout, status: &PolicyRolloutStatus, ctx: &Context) -> Result<(), Error> {
    let old = rollout.status.clone().unwrap_or_default();
    if *status == old {
        return Ok(());
    }
    let name = rollout.name_any();
    let api: Api<PolicyRollout> = Api::namespaced(ctx.client.clone(), &rollout.namespace().unwrap_or_default());
    let applied = PolicyRolloutStatus { approval: None, abort: None, ..status.clone() };
    let patch = json!({
        "apiVersion": PolicyRollout::api_version(&()),
        "kind": PolicyRollout::kind(&()),
        "status": applied,
    });
    api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;

    let consumed = [
        ("approval", old.approval.is_some() && status.approval.is_none(), json!(old.approval)),
        ("abort", old.abort.is_some() && status.abort.is_none(), json!(old.abort)),
    ];
    for (field, _, value) in consumed.into_iter().filter(|(_, gone, _)| *gone) {
        let path = PointerBuf::parse(format!("/status/{field}")).expect("a valid JSON pointer");
        let ops = JsonPatch(vec![
            PatchOperation::Test(TestOperation { path: path.clone(), value }),
            PatchOperation::Remove(RemoveOperation { path }),
        ]);
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        match api.patch_status(&name, &params, &Patch::<()>::Json(ops)).await {
            Ok(_) => {}
            // Replaced meanwhile: the new one is about another revision and stays.
            Err(kube::Error::Api(e)) if e.code == 422 || e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Events are best effort: a lost one must not fail or repeat the transition it reports.
async fn publish(rollout: &PolicyRollout, kind: EventType, reason: &str, message: &str, ctx: &Context) {
    let event = KubeEvent {
        type_: match kind {
            EventType::Normal => KubeEventType::Normal,
            EventType::Warning => KubeEventType::Warning,
        },
        reason: reason.into(),
        note: Some(message.into()),
        action: reason.into(),
        secondary: None,
    };
    // A Recorder per Event: the engine reports transitions, each with its own message, and a
    // shared Recorder would fold a second AuditStarted into the first as a series that keeps the
    // first message.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(e) = recorder.publish(&event, &rollout.object_ref(&())).await {
        warn!(rollout = %key(rollout), reason, error = %e, "could not publish an Event");
    }
}

/// Deletes this rollout's PolicyRevisions beyond the newest [`HISTORY_LIMIT`], never one the
/// status still names (enforced, candidate, rollback target, approved).
async fn collect_revisions(rollout: &PolicyRollout, status: &PolicyRolloutStatus, ctx: &Context) -> Result<(), Error> {
    let api: Api<PolicyRevision> = Api::namespaced(ctx.client.clone(), &rollout.namespace().unwrap_or_default());
    let uid = rollout.uid();
    let mut owned: Vec<PolicyRevision> = api
        .list(&ListParams::default().labels(&format!("{ROLLOUT_LABEL}={}", rollout.name_any())))
        .await?
        .items
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
    let reports = api.list(&ListParams::default().labels(&format!("{ROLLOUT_LABEL}={name}"))).await?;
    for report in reports.items.iter().filter(|r| r.spec.rollout == name) {
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
