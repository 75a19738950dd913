//! `palisade reconcile NAME --wait`: ask for a sync, then wait, like `flux reconcile`, until the
//! controller has acted on the request (`status.lastHandledReconcileAt`) and the rollout has
//! settled: Ready, or waiting for an approval (exit 0); stalled (Blocked, Failed, RolledBack, a
//! refused source) or the fetch it asked for failed (exit 1); still progressing at the timeout
//! (exit 1). A line tells each step on the way.
use std::io::Write;

use anyhow::{Result, bail};
use k8s_openapi::jiff::Timestamp;
use palisade_rollout::crd::PolicyRollout;
use palisade_rollout::engine::{COND_READY, COND_STALLED};

use super::backend::{Backend, Change, Query};
use super::change::{Plan, reconciliation};
use super::{RESOURCE_PREFIX, ReconcileArgs, condition};
use crate::cmd::Failed;
use crate::local::store::Request;

/// Where a rollout stands for a waiting `reconcile`.
#[derive(Debug, PartialEq)]
enum Standing {
    /// Still on its way: what it is doing.
    Progressing(String),
    /// Settled well: what it says.
    Settled(String),
    Failed(String),
}

pub(super) async fn reconcile(backend: &Backend, args: &ReconcileArgs, out: &mut impl Write) -> Result<u8> {
    let name = &args.rollout.name;
    let rollout = backend.rollout(name).await?;
    let Plan::Change(request, message) = reconciliation(&rollout, backend.now())? else {
        bail!("policyrollout/{name}: nothing to request");
    };
    let requested = match &request {
        Request::Reconcile(at) => at.0.to_string(),
        Request::Suspend(_) => bail!("policyrollout/{name}: not a reconcile request"),
    };
    backend.write(&rollout, request).await?;
    writeln!(out, "{message}")?;
    if !args.wait {
        return Ok(0);
    }
    let timeout = args.timeout;
    let took = duration_text(timeout);
    writeln!(out, "waiting for policyrollout/{name} to be reconciled (timeout {took})")?;
    out.flush()?;
    let mut last = None;
    let waited = tokio::time::timeout(timeout, settle(backend, name, &requested, &mut last, out)).await;
    match waited {
        Ok(result) => result,
        Err(_) => {
            let doing = last.map(|l| format!(": {l}")).unwrap_or_default();
            Err(Failed(format!("timed out after {took} waiting for policyrollout/{name}{doing}")).into())
        }
    }
}

/// Follows the rollout until it settles; `last` keeps the last progress printed.
async fn settle(
    backend: &Backend,
    name: &str,
    requested: &str,
    last: &mut Option<String>,
    out: &mut impl Write,
) -> Result<u8> {
    let query = Query { name: Some(name), all_namespaces: false, selector: None };
    let (mut rollouts, mut changes) = backend.list_and_watch::<PolicyRollout>(&query).await?;
    let mut rollout = rollouts.pop();
    loop {
        if let Some(rollout) = &rollout {
            match standing(rollout, requested) {
                Standing::Progressing(doing) => {
                    if last.as_ref() != Some(&doing) {
                        writeln!(out, "policyrollout/{name}: {doing}")?;
                        out.flush()?;
                        *last = Some(doing);
                    }
                }
                Standing::Settled(message) => {
                    writeln!(out, "{RESOURCE_PREFIX}{name} reconciled: {message}")?;
                    return Ok(0);
                }
                Standing::Failed(message) => return Err(Failed(format!("policyrollout/{name} {message}")).into()),
            }
        }
        rollout = match changes.next().await? {
            Change::Applied(changed) => Some(changed),
            Change::Deleted(_) => return Err(Failed(format!("policyrollout/{name} was deleted")).into()),
        };
    }
}

fn standing(rollout: &PolicyRollout, requested: &str) -> Standing {
    let status = rollout.status.clone().unwrap_or_default();
    if !handled(status.last_handled_reconcile_at.as_deref(), requested) {
        return Standing::Progressing("waiting for the controller to act on the request".into());
    }
    if let (Some(generation), Some(observed)) = (rollout.metadata.generation, status.observed_generation)
        && observed < generation
    {
        return Standing::Progressing(format!("waiting for the controller to observe generation {generation}"));
    }
    if rollout.spec.suspend {
        return Standing::Failed("was suspended meanwhile".into());
    }
    let phase = format!("{:?}", status.phase);
    let ready = condition(&status, COND_READY);
    let said = |reason: &str, message: &str| match message {
        "" => format!("{phase} ({reason})"),
        message => format!("{phase} ({reason}): {message}"),
    };
    if let Some(stalled) = condition(&status, COND_STALLED).filter(|c| c.status == "True") {
        return Standing::Failed(format!("failed: {}", said(&stalled.reason, &stalled.message)));
    }
    match ready {
        Some(c) if c.status == "True" => Standing::Settled(said(&c.reason, &c.message)),
        // The fetch asked for did not happen: `flux reconcile` fails alike.
        Some(c) if c.reason == "GitOperationFailed" => {
            Standing::Failed(format!("failed: {}", said(&c.reason, &c.message)))
        }
        // Nothing more happens without a person: settled, as far as the controller goes.
        Some(c) if c.reason == "AwaitingApproval" => Standing::Settled(said(&c.reason, &c.message)),
        Some(c) => Standing::Progressing(said(&c.reason, &c.message)),
        None => Standing::Progressing(format!("{phase}: no Ready condition yet")),
    }
}

/// A duration as --timeout takes it: `5m`, `1m30s`, `2h`.
fn duration_text(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs();
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let text: String =
        [(h, "h"), (m, "m"), (s, "s")].iter().filter(|(n, _)| *n > 0).map(|(n, u)| format!("{n}{u}")).collect();
    match text.as_str() {
        "" => format!("{}ms", duration.as_millis()),
        _ => text,
    }
}

/// Whether the controller acted on the request made at `requested`, or on a later one.
fn handled(last: Option<&str>, requested: &str) -> bool {
    let Some(last) = last else { return false };
    match (last.parse::<Timestamp>(), requested.parse::<Timestamp>()) {
        (Ok(last), Ok(requested)) => last >= requested,
        _ => last == requested,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rollout(status: serde_json::Value) -> PolicyRollout {
        serde_json::from_value(json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "PolicyRollout",
            "metadata": {"name": "web", "namespace": "shop", "generation": 2},
            "spec": {"source": {"url": "https://git.example.com/p.git", "ref": {"branch": "main"}}},
            "status": status,
        }))
        .unwrap()
    }

    fn cond(type_: &str, status: &str, reason: &str, message: &str) -> serde_json::Value {
        json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": "2025-06-01T11:50:00Z"})
    }

    #[test]
    fn timeouts_read_as_they_are_given() {
        let text = |s| duration_text(std::time::Duration::from_secs(s));
        assert_eq!(
            [text(1), text(60), text(90), text(300), text(7200), text(3661)],
            ["1s", "1m", "1m30s", "5m", "2h", "1h1m1s"]
        );
        assert_eq!(duration_text(std::time::Duration::from_millis(500)), "500ms");
    }

    #[test]
    fn a_rollout_stands_as_its_conditions_say_once_the_request_is_handled() {
        const AT: &str = "2025-06-01T12:00:00Z";
        let with = |phase: &str, conditions: Vec<serde_json::Value>| {
            standing(
                &rollout(
                    json!({"phase": phase, "observedGeneration": 2, "lastHandledReconcileAt": AT, "conditions": conditions}),
                ),
                AT,
            )
        };
        let waiting = Standing::Progressing("waiting for the controller to act on the request".into());
        assert_eq!(standing(&rollout(json!({"phase": "Enforced"})), AT), waiting);
        let earlier = rollout(json!({"phase": "Enforced", "lastHandledReconcileAt": "2025-06-01T11:00:00Z"}));
        assert_eq!(standing(&earlier, AT), waiting);
        let stale = rollout(
            json!({"phase": "Enforced", "lastHandledReconcileAt": "2025-06-01T12:00:01Z", "observedGeneration": 1}),
        );
        assert_eq!(
            standing(&stale, AT),
            Standing::Progressing("waiting for the controller to observe generation 2".into())
        );

        let ready =
            with("Enforced", vec![cond("Ready", "True", "Enforced", "main@b2c3d4e is enforced on all 2 nodes")]);
        assert_eq!(ready, Standing::Settled("Enforced (Enforced): main@b2c3d4e is enforced on all 2 nodes".into()));
        let auditing = with(
            "Auditing",
            vec![
                cond("Ready", "False", "AuditInProgress", "3m of 10m"),
                cond("Reconciling", "True", "AuditInProgress", "3m of 10m"),
            ],
        );
        assert_eq!(auditing, Standing::Progressing("Auditing (AuditInProgress): 3m of 10m".into()));
        let approval = with("Auditing", vec![cond("Ready", "False", "AwaitingApproval", "audit passed")]);
        assert_eq!(approval, Standing::Settled("Auditing (AwaitingApproval): audit passed".into()));
        let blocked = with(
            "Blocked",
            vec![
                cond("Ready", "False", "NewDeniesAboveLimit", "3 new denies"),
                cond("Stalled", "True", "NewDeniesAboveLimit", "3 new denies"),
            ],
        );
        assert_eq!(blocked, Standing::Failed("failed: Blocked (NewDeniesAboveLimit): 3 new denies".into()));
        let unreachable = with("Enforced", vec![cond("Ready", "False", "GitOperationFailed", "connection refused")]);
        assert_eq!(unreachable, Standing::Failed("failed: Enforced (GitOperationFailed): connection refused".into()));
    }
}
