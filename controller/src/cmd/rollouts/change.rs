//! `palisade promote|abort|reaudit|suspend|resume|reconcile`: what a command changes, decided
//! alike for both backends as a [`Plan`], then carried out by the backend.
use std::io::Write;

use anyhow::{Result, bail};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use palisade_rollout::crd::{DecisionAction, Phase, PolicyRollout, Promotion, RevisionRef};
use palisade_rollout::engine::{COND_PROMOTION_BLOCKED, COND_READY};

use super::backend::Backend;
use super::{RESOURCE_PREFIX, condition};
use crate::local::store::Request;

/// What a command decided: nothing to change (with what to print), a change to make and what
/// to print once it is made, or a PolicyDecision to create about the candidate.
#[derive(Debug, PartialEq)]
pub(super) enum Plan {
    Unchanged(String),
    Change(Request, String),
    Decide(DecisionAction, RevisionRef),
}

/// Reads the rollout, decides with `plan` (given the rollout and the time), makes the change
/// and prints what happened.
pub(super) async fn act(
    backend: &Backend,
    name: &str,
    plan: impl FnOnce(&PolicyRollout, Timestamp) -> Result<Plan>,
    out: &mut impl Write,
) -> Result<()> {
    let rollout = backend.rollout(name).await?;
    let message = match plan(&rollout, backend.now())? {
        Plan::Unchanged(message) => message,
        Plan::Change(request, message) => {
            backend.write(&rollout, request).await?;
            message
        }
        Plan::Decide(action, candidate) => {
            let user = backend.user().await?;
            let decision = backend.decide(&rollout, action, &candidate.id, &user).await?;
            decided(&rollout, action, &candidate, &user, &decision)
        }
    };
    writeln!(out, "{message}")?;
    Ok(())
}

/// What a created decision will do, in the words of the command that made it.
fn decided(
    rollout: &PolicyRollout,
    action: DecisionAction,
    candidate: &RevisionRef,
    user: &str,
    decision: &str,
) -> String {
    let name = rollout.name_any();
    let status = rollout.status.clone().unwrap_or_default();
    let what = match action {
        DecisionAction::Promote => "approved",
        DecisionAction::Abort => "aborted",
        DecisionAction::Reaudit => "re-audited",
    };
    let then = match action {
        DecisionAction::Promote => "it is promoted once its audit passes".to_string(),
        DecisionAction::Abort => format!(
            "{} stays enforced and this commit is not staged again",
            status.enforced_revision.as_ref().map_or("nothing", |r| r.display.as_str())
        ),
        DecisionAction::Reaudit => "its evidence is discarded and the audit starts again".to_string(),
    };
    format!(
        "{RESOURCE_PREFIX}{name} {what}: {} ({}) as {user} (policydecision/{decision}); {then}",
        candidate.display, candidate.id
    )
}

/// The candidate a decision would be about, or why there is none to decide on.
fn candidate_for(rollout: &PolicyRollout, verb: &str) -> Result<RevisionRef> {
    let name = rollout.name_any();
    let status = rollout.status.clone().unwrap_or_default();
    let Some(candidate) = status.candidate_revision.clone() else {
        bail!(
            "policyrollout/{name} has no candidate to {verb} (phase {:?}, enforcing {})",
            status.phase,
            status.enforced_revision.as_ref().map_or("nothing", |r| r.display.as_str())
        );
    };
    if status.phase == Phase::Promoting {
        bail!(
            "policyrollout/{name} is already promoting {}: nodes may have flipped; revert the commit instead",
            candidate.display
        );
    }
    Ok(candidate)
}

/// `promote`: approve the candidate of a Manual rollout while it is auditing.
pub(super) fn promotion(rollout: &PolicyRollout, _now: Timestamp) -> Result<Plan> {
    let name = rollout.name_any();
    let status = rollout.status.clone().unwrap_or_default();
    let candidate = candidate_for(rollout, "promote")?;
    if rollout.spec.promotion == Promotion::Auto {
        bail!(
            "policyrollout/{name} promotes automatically (spec.promotion: Auto): {} is promoted as soon as its audit passes",
            candidate.display
        );
    }
    if let Some(a) = status.approval.as_ref().filter(|a| a.revision == candidate.id) {
        return Ok(Plan::Unchanged(format!(
            "{RESOURCE_PREFIX}{name} unchanged: {} was already approved by {}",
            candidate.display, a.approved_by
        )));
    }
    if status.phase != Phase::Auditing {
        let why = condition(&status, COND_PROMOTION_BLOCKED)
            .or_else(|| condition(&status, COND_READY))
            .map(|c| format!(": {}", c.message))
            .unwrap_or_default();
        bail!(
            "policyrollout/{name} cannot be promoted in phase {:?}{why}\n(an approval never overrides the audit gates; `palisade describe rollout {name}` shows the denied flows)",
            status.phase
        );
    }
    Ok(Plan::Decide(DecisionAction::Promote, candidate))
}

/// `abort`: drop the candidate, unless nodes may already have flipped to it.
pub(super) fn abortion(rollout: &PolicyRollout, _now: Timestamp) -> Result<Plan> {
    Ok(Plan::Decide(DecisionAction::Abort, candidate_for(rollout, "abort")?))
}

/// `reaudit`: discard the candidate's evidence and audit it again from now.
pub(super) fn reaudit(rollout: &PolicyRollout, _now: Timestamp) -> Result<Plan> {
    Ok(Plan::Decide(DecisionAction::Reaudit, candidate_for(rollout, "re-audit")?))
}

/// `suspend` and `resume`.
pub(super) fn suspension(rollout: &PolicyRollout, suspend: bool) -> Result<Plan> {
    let name = rollout.name_any();
    if rollout.spec.suspend == suspend {
        let state = if suspend { "suspended" } else { "not suspended" };
        return Ok(Plan::Unchanged(format!("{RESOURCE_PREFIX}{name} unchanged: already {state}")));
    }
    let done = if suspend { "suspended" } else { "resumed" };
    Ok(Plan::Change(Request::Suspend(suspend), format!("{RESOURCE_PREFIX}{name} {done}")))
}

/// `reconcile`: ask for a sync now.
pub(super) fn reconciliation(rollout: &PolicyRollout, now: Timestamp) -> Result<Plan> {
    let name = rollout.name_any();
    if rollout.spec.suspend {
        bail!("policyrollout/{name} is suspended; `palisade resume {name}` first");
    }
    let message = format!("{RESOURCE_PREFIX}{name} annotated: reconcile requested at {now}");
    Ok(Plan::Change(Request::Reconcile(Time(now)), message))
}
