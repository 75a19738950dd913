//! Which nodes the promotion barrier waits for, and for how long: a node that is gone (NotReady,
//! or silent for two of its agent's heartbeats) is waited for during `spec.audit.notReadyGrace`,
//! then left out until it comes back; a barrier that has not converged within
//! `spec.progressDeadline` makes the rollout Stalled.
use std::collections::HashMap;

use super::*;

pub(super) struct Barrier<'a> {
    pub waited: Vec<&'a PolicyAuditReportSpec>,
    /// `node (why)` of each node left out.
    pub left_out: Vec<String>,
    /// When the next node waited for passes the grace.
    pub next_change: Option<std::time::Duration>,
}

/// `in_flight_since`: when the rollout last started waiting on its nodes ([`in_flight_since`]);
/// silence counts only from then.
pub(super) fn barrier<'a>(
    reports: &[&'a PolicyAuditReportSpec],
    not_ready: &[NotReadyNode],
    (grace, in_flight_since): (SignedDuration, Option<Timestamp>),
    now: Timestamp,
) -> Barrier<'a> {
    let mut barrier = Barrier { waited: Vec::new(), left_out: Vec::new(), next_change: None };
    let not_ready: HashMap<&str, Timestamp> = not_ready.iter().map(|n| (n.node.as_str(), n.since)).collect();
    for report in reports {
        let node_down = not_ready.get(report.node.as_str()).map(|since| (*since, "NotReady"));
        let silent = in_flight_since
            .and_then(|start| silent_since(report, start, now))
            .map(|since| (since, "no report for two heartbeats"));
        let Some((since, why)) = node_down.into_iter().chain(silent).min_by_key(|(since, _)| *since) else {
            barrier.waited.push(report);
            continue;
        };
        let left = since.duration_until(now);
        if left >= grace {
            barrier.left_out.push(format!("{} ({why} for {})", report.node, human(left)));
        } else {
            let change = (grace - left).unsigned_abs();
            barrier.next_change = Some(barrier.next_change.map_or(change, |c| c.min(change)));
            barrier.waited.push(report);
        }
    }
    barrier
}

/// When a report went silent: two heartbeats after it was written or the rollout went in
/// flight, whichever is later, if that has passed: agents send heartbeats only while a rollout
/// is in flight, so a settled rollout's reports may be old and still true. A report without
/// `reportedAt` or `heartbeat` (an older agent) is never silent: it counts by existing.
fn silent_since(report: &PolicyAuditReportSpec, in_flight_since: Timestamp, now: Timestamp) -> Option<Timestamp> {
    let (Some(at), Some(heartbeat)) = (&report.reported_at, &report.heartbeat) else { return None };
    let stale = at.0.max(in_flight_since).checked_add(signed((*heartbeat).into()).checked_mul(2)?).ok()?;
    (stale < now).then_some(stale)
}

/// When the rollout last went in flight, as the agents see it (a candidate staged or its audit
/// restarted, a flip asked for: then they send heartbeats); None while it is settled.
pub(super) fn in_flight_since(status: Option<&PolicyRolloutStatus>) -> Option<Timestamp> {
    let status = status.filter(|s| s.in_flight())?;
    [&status.audit_started_at, &status.candidate_staged_at, &status.flip_requested_at]
        .into_iter()
        .flatten()
        .map(|t| t.0)
        .max()
}

impl Engine<'_> {
    /// A barrier still waiting once `spec.progressDeadline` has passed since it started (the
    /// candidate staged or its audit restarted, or the flip asked for), or nodes still not
    /// enforcing the enforced revision that long after they fell behind. Says so as the Stalled
    /// condition's message; otherwise asks to be reconciled when the deadline comes.
    pub(super) fn deadline_exceeded(&mut self) -> Option<String> {
        let started = if !self.waiting_for_nodes {
            self.st.nodes_behind_since.as_ref()
        } else if self.flipping() {
            self.st.flip_requested_at.as_ref()
        } else {
            self.st.audit_started_at.as_ref().or(self.st.candidate_staged_at.as_ref())
        }?;
        let deadline = signed(self.spec.progress_deadline.into());
        let remaining = deadline - started.0.duration_until(self.ctx.now);
        if remaining.is_positive() {
            self.actions.push(Action::RequeueAfter(remaining.unsigned_abs()));
            return None;
        }
        let waiting = self.waiting.as_ref().map_or("", |(_, message)| message.as_str());
        Some(format!("not converged within spec.progressDeadline ({}): {waiting}", human(deadline)))
    }
}
