//! `palisade promote|abort|suspend|resume|reconcile`: what a command changes, decided alike for
//! both backends as a [`Request`], then written by the backend.
use std::io::Write;

use anyhow::{Result, bail};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use palisade_rollout::crd::{Abort, Approval, Phase, PolicyRollout, Promotion};
use palisade_rollout::engine::{COND_PROMOTION_BLOCKED, COND_READY};

use super::backend::Backend;
use super::{RESOURCE_PREFIX, condition};
use crate::local::store::Request;

/// What a command decided: nothing to change (with what to print), or a change to make and
/// what to print once it is made.
#[derive(Debug, PartialEq)]
pub(super) enum Plan {
    Unchanged(String),
    Change(Request, String),
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
    };
    writeln!(out, "{message}")?;
    Ok(())
}

/// `promote`: approve the candidate of a Manual rollout while it is auditing.
pub(super) fn promotion(rollout: &PolicyRollout, user: &str, now: Timestamp) -> Result<Plan> {
    let name = rollout.name_any();
    let status = rollout.status.clone().unwrap_or_default();
    let Some(candidate) = status.candidate_revision.clone() else {
        bail!(
            "policyrollout/{name} has no candidate to promote (phase {:?}, enforcing {})",
            status.phase,
            status.enforced_revision.as_ref().map_or("nothing", |r| r.display.as_str())
        );
    };
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
    match status.phase {
        Phase::Auditing => {}
        Phase::Promoting => bail!("policyrollout/{name} is already promoting {}", candidate.display),
        phase => {
            let why = condition(&status, COND_PROMOTION_BLOCKED)
                .or_else(|| condition(&status, COND_READY))
                .map(|c| format!(": {}", c.message))
                .unwrap_or_default();
            bail!(
                "policyrollout/{name} cannot be promoted in phase {phase:?}{why}\n(an approval never overrides the audit gates; `palisade describe rollout {name}` shows the denied flows)"
            );
        }
    }
    let approval = Approval { revision: candidate.id.clone(), approved_by: user.into(), approved_at: Time(now) };
    let message = format!(
        "{RESOURCE_PREFIX}{name} approved: {} ({}) as {user}; it is promoted once its audit passes",
        candidate.display, candidate.id
    );
    Ok(Plan::Change(Request::Approve(approval), message))
}

/// `abort`: drop the candidate, unless nodes may already have flipped to it.
pub(super) fn abortion(rollout: &PolicyRollout, user: &str, now: Timestamp) -> Result<Plan> {
    let name = rollout.name_any();
    let status = rollout.status.clone().unwrap_or_default();
    let Some(candidate) = status.candidate_revision.clone() else {
        bail!("policyrollout/{name} has no candidate to abort (phase {:?})", status.phase);
    };
    if status.phase == Phase::Promoting {
        bail!(
            "policyrollout/{name} is already promoting {}: nodes may have flipped; revert the commit instead",
            candidate.display
        );
    }
    if status.abort.as_ref().is_some_and(|a| a.revision == candidate.id && a.commit == candidate.commit) {
        return Ok(Plan::Unchanged(format!(
            "{RESOURCE_PREFIX}{name} unchanged: {} was already aborted",
            candidate.display
        )));
    }
    let enforced = status.enforced_revision.as_ref().map_or("nothing", |r| r.display.as_str());
    let message =
        format!("{RESOURCE_PREFIX}{name} aborted: {} is dropped; {enforced} stays enforced", candidate.display);
    let abort = Abort {
        revision: candidate.id.clone(),
        commit: candidate.commit.clone(),
        aborted_by: user.into(),
        aborted_at: Time(now),
    };
    Ok(Plan::Change(Request::Abort(abort), message))
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
