//! The rollout engine: a pure state machine from (spec, status, source, node reports, now) to
//! (status, actions). No I/O and no clock: everything it knows is an argument, so a restarted
//! controller that reads the status back resumes exactly where the last one stopped.
//!
//! The status is the agents' instruction too: `enforcedRevision` is what every node must enforce
//! and `candidateRevision` what it must load beside it. A promotion is therefore the one place
//! that moves `enforcedRevision` forward, and a rollback the one place that moves it back.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::crd::{
    Approval, AttemptedRevision, AuditFlow, Direction, FlowSelector, HistoryEntry, Outcome, Phase,
    PolicyAuditReportSpec, PolicyRolloutSpec, PolicyRolloutStatus, Promotion, RevisionRef, Scope, Verdict,
};

/// Outcomes kept in `status.history`, and rolled-back revisions remembered.
pub const HISTORY_LIMIT: usize = 10;

/// Where and when this reconcile happens.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    /// The rollout's namespace.
    pub namespace: &'a str,
    /// The namespace the controller runs in: only rollouts there may use `scope: Cluster`.
    pub controller_namespace: &'a str,
    /// `metadata.generation` of the rollout, echoed as `observedGeneration`.
    pub generation: Option<i64>,
    pub now: Timestamp,
}

/// A policy carried by a revision, for the scope rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRef {
    pub kind: String,
    pub name: String,
    /// None for cluster-wide policies.
    pub namespace: Option<String>,
}

/// A commit that fetched, parsed and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedRevision {
    /// The PolicyRevision name (content-addressed).
    pub id: String,
    pub commit: String,
    /// e.g. `main@a1b2c3d`.
    pub display: String,
    /// The signature check passed (meaningful only when `spec.source.verify` is set).
    pub verified: bool,
    pub policies: Vec<PolicyRef>,
}

impl ObservedRevision {
    fn to_ref(&self) -> RevisionRef {
        RevisionRef { id: self.id.clone(), commit: self.commit.clone(), display: self.display.clone() }
    }
}

/// The latest result of the Git source for the rollout's ref.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceObservation {
    Revision(ObservedRevision),
    /// The commit's policies do not parse or validate; `errors` name file, line and field.
    Invalid {
        commit: String,
        display: String,
        errors: Vec<String>,
    },
    /// The signature check failed.
    Unverified {
        commit: String,
        display: String,
        reason: String,
    },
    /// Fetching failed; nothing is known about the newest commit.
    Unreachable {
        message: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// What the reconciler must do besides writing the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make sure the PolicyRevision exists; the agents load it into their idle slot.
    StageCandidate(RevisionRef),
    /// Every node was asked to flip to `to` (the status already says so).
    Flip {
        to: RevisionRef,
        fast_track: bool,
    },
    /// Every node was asked to flip back from `from` to `to`.
    RollBack {
        from: RevisionRef,
        to: RevisionRef,
        reason: String,
    },
    Event {
        kind: EventType,
        reason: &'static str,
        message: String,
    },
    /// Reconcile again after this long even if nothing changes (a gate or window ends).
    RequeueAfter(std::time::Duration),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: PolicyRolloutStatus,
    pub actions: Vec<Action>,
}

/// One step of the state machine. `reports` holds one entry per node running the agent; a node
/// that has not reported yet is passed as a report with only `node` set, so that it holds the
/// promotion barrier.
pub fn reconcile(
    spec: &PolicyRolloutSpec,
    status: Option<&PolicyRolloutStatus>,
    source: &SourceObservation,
    reports: &[PolicyAuditReportSpec],
    ctx: &Context,
) -> Decision {
    let mut engine =
        Engine { spec, ctx, reports, st: status.cloned().unwrap_or_default(), actions: Vec::new(), waiting: None };
    engine.st.observed_generation = ctx.generation;
    if spec.suspend {
        engine.set(COND_RECONCILING, false, "Suspended", "spec.suspend is set; resume to act on new commits".into());
    } else {
        if engine.flipping() {
            // Settle a flip the nodes may have confirmed before watching drops and judging the
            // source, so that a second reconcile with the same inputs finds nothing left to do.
            engine.promote();
        }
        engine.watch_drops();
        engine.abort();
        engine.observe(source);
        engine.advance();
        engine.refresh_conditions(source);
    }
    Decision { status: engine.st, actions: engine.actions }
}

pub const COND_READY: &str = "Ready";
pub const COND_RECONCILING: &str = "Reconciling";
pub const COND_STALLED: &str = "Stalled";
pub const COND_SOURCE_VERIFIED: &str = "SourceVerified";
pub const COND_AUDITING: &str = "Auditing";
pub const COND_PROMOTION_BLOCKED: &str = "PromotionBlocked";
pub const COND_PROMOTED: &str = "Promoted";
pub const COND_ROLLED_BACK: &str = "RolledBack";

struct Engine<'a> {
    spec: &'a PolicyRolloutSpec,
    ctx: &'a Context<'a>,
    reports: &'a [PolicyAuditReportSpec],
    st: PolicyRolloutStatus,
    actions: Vec<Action>,
    /// Why an audit or promotion is waiting: (reason, message), for the conditions.
    waiting: Option<(&'static str, String)>,
}

/// The audit gates' view of the reports for one candidate.
#[derive(Default)]
struct AuditSummary<'r> {
    observed: u64,
    new_denies: u64,
    new_allows: u64,
    unexpected: u64,
    unexpected_flows: Vec<&'r AuditFlow>,
    starved: Vec<String>,
}

impl<'a> Engine<'a> {
    fn now(&self) -> Time {
        Time(self.ctx.now)
    }

    fn event(&mut self, kind: EventType, reason: &'static str, message: String) {
        self.actions.push(Action::Event { kind, reason, message });
    }

    fn record(&mut self, rev: &RevisionRef, outcome: Outcome, message: String) {
        let enforced = matches!(outcome, Outcome::Promoted | Outcome::FastTracked);
        let approved_by = self.st.approval.as_ref().filter(|a| a.revision == rev.id).map(|a| a.approved_by.clone());
        self.st.history.insert(
            0,
            HistoryEntry {
                revision: rev.id.clone(),
                commit: rev.commit.clone(),
                display: rev.display.clone(),
                outcome,
                enforced_at: enforced.then(|| self.now()),
                recorded_at: self.now(),
                approved_by: approved_by.filter(|_| enforced),
                message,
            },
        );
        self.st.history.truncate(HISTORY_LIMIT);
    }

    fn enforced_display(&self) -> String {
        self.st.enforced_revision.as_ref().map_or_else(|| "nothing".into(), |r| r.display.clone())
    }

    /// A candidate is flipping when every node was asked to enforce it: nothing may replace it
    /// until the nodes confirm.
    fn flipping(&self) -> bool {
        self.st.phase == Phase::Promoting
            && matches!((&self.st.candidate_revision, &self.st.enforced_revision), (Some(c), Some(e)) if c.id == e.id)
    }

    fn reset_audit(&mut self) {
        self.st.audit_started_at = None;
        self.st.new_denies = 0;
        self.st.unexpected_new_denies = 0;
        self.st.new_allows = 0;
        self.st.observed_flows = 0;
    }

    fn drops_per_minute(&self) -> u64 {
        self.reports.iter().map(|r| r.totals.drops_per_minute).sum()
    }

    /// The post-promotion watch: a drop spike over the baseline inside the window rolls back.
    fn watch_drops(&mut self) {
        let (Some(promoted_at), Some(baseline), Some(previous)) =
            (&self.st.promoted_at, self.st.baseline_drops_per_minute, &self.st.previous_revision)
        else {
            return;
        };
        let window = signed(self.spec.rollback.post_promotion_window.into());
        let remaining = promoted_at.0.duration_until(self.ctx.now).checked_neg().and_then(|d| d.checked_add(window));
        let Some(remaining) = remaining.filter(|r| r.is_positive()) else { return };
        let current = self.drops_per_minute();
        let limit = self.spec.rollback.max_drop_increase;
        if current > baseline.saturating_add(limit) {
            let previous = previous.clone();
            let reason = format!(
                "drops rose from {baseline}/min before the promotion to {current}/min, more than spec.rollback.maxDropIncrease ({limit}/min)"
            );
            self.roll_back(previous, reason);
        } else {
            self.actions.push(Action::RequeueAfter(remaining.unsigned_abs()));
        }
    }

    fn roll_back(&mut self, to: RevisionRef, reason: String) {
        let Some(from) = self.st.enforced_revision.replace(to.clone()) else { return };
        if let Some(candidate) = self.st.candidate_revision.take() {
            self.record(&candidate, Outcome::Superseded, format!("cancelled: {} was rolled back", from.display));
        }
        self.record(&from, Outcome::RolledBack, reason.clone());
        self.st.rolled_back_revisions.insert(0, from.clone());
        self.st.rolled_back_revisions.truncate(HISTORY_LIMIT);
        self.st.previous_revision = None;
        self.st.promoted_at = None;
        self.st.baseline_drops_per_minute = None;
        self.st.flip_requested_at = Some(self.now());
        self.st.approval = None;
        self.reset_audit();
        self.st.phase = Phase::RolledBack;
        let message = format!("rolled back {} to {}: {reason}", from.display, to.display);
        self.event(EventType::Warning, "RolledBack", message);
        self.actions.push(Action::RollBack { from, to, reason });
    }

    fn observe(&mut self, source: &SourceObservation) {
        match source {
            SourceObservation::Unreachable { .. } => {}
            SourceObservation::Invalid { commit, display, errors } => {
                self.fail(commit, display, None, "ValidationFailed", errors.clone())
            }
            SourceObservation::Unverified { commit, display, reason } => {
                self.fail(commit, display, None, "VerificationFailed", vec![reason.clone()])
            }
            SourceObservation::Revision(rev) => {
                if self.spec.source.verify.is_some() && !rev.verified {
                    let error = format!("commit {} is not signed by a key in spec.source.verify.keysRef", rev.commit);
                    return self.fail(&rev.commit, &rev.display, Some(&rev.id), "VerificationFailed", vec![error]);
                }
                let violations = scope_violations(self.spec.scope, self.ctx, &rev.policies);
                if !violations.is_empty() {
                    return self.fail(&rev.commit, &rev.display, Some(&rev.id), "ScopeViolation", violations);
                }
                self.offer(rev);
            }
        }
    }

    /// A commit that cannot be staged: recorded once, and nothing enforced or audited changes.
    fn fail(&mut self, commit: &str, display: &str, id: Option<&str>, reason: &str, errors: Vec<String>) {
        let attempt = AttemptedRevision {
            commit: commit.into(),
            display: display.into(),
            id: id.map(Into::into),
            reason: Some(reason.into()),
            errors,
        };
        if self.st.last_attempted_revision.as_ref() == Some(&attempt) {
            return;
        }
        let message = format!("{display} was not staged ({reason}): {}", attempt.errors.join("; "));
        let rev = RevisionRef { id: id.unwrap_or_default().into(), commit: commit.into(), display: display.into() };
        self.record(&rev, Outcome::Failed, attempt.errors.join("; "));
        self.st.last_attempted_revision = Some(attempt);
        if self.st.candidate_revision.is_none() {
            self.st.phase = Phase::Failed;
        }
        self.event(
            EventType::Warning,
            "RevisionFailed",
            format!("{message}; still enforcing {}", self.enforced_display()),
        );
    }

    fn offer(&mut self, rev: &ObservedRevision) {
        let new = rev.to_ref();
        if self.flipping() {
            // Finish the flip first; the source is read again on the next reconcile.
            return;
        }
        self.st.last_attempted_revision = Some(AttemptedRevision {
            commit: new.commit.clone(),
            display: new.display.clone(),
            id: Some(new.id.clone()),
            reason: None,
            errors: vec![],
        });
        if self.aborted(&new) {
            return;
        }
        if let Some(candidate) = self.st.candidate_revision.as_mut().filter(|c| c.id == new.id) {
            // Same content under a new commit: the audit's evidence still holds.
            *candidate = new;
            return;
        }
        if self.st.rolled_back_revisions.iter().any(|r| r.id == new.id && r.commit == new.commit) {
            self.supersede(&format!("{} was rolled back", new.display));
            self.st.phase = Phase::RolledBack;
            return;
        }
        if self.st.enforced_revision.as_ref().is_some_and(|e| e.id == new.id) {
            let was_elsewhere = self.st.candidate_revision.is_some() || self.st.phase != Phase::Enforced;
            self.supersede(&format!("the source is back at the enforced content ({})", new.display));
            if was_elsewhere {
                self.st.phase = Phase::Enforced;
                self.event(EventType::Normal, "UpToDate", format!("{} is already enforced", new.display));
            }
            return;
        }
        self.supersede(&format!("superseded by {}", new.display));
        let fast_track = self.spec.rollback.fast_track_reverts && self.known_good(&new.id);
        self.st.candidate_revision = Some(new.clone());
        self.reset_audit();
        if fast_track {
            self.st.phase = Phase::Promoting;
            let message =
                format!("{} reverts to a revision enforced before; promoting without a new audit", new.display);
            self.event(EventType::Normal, "FastTrack", message);
        } else {
            self.st.audit_started_at = Some(self.now());
            self.st.phase = Phase::Auditing;
            let message = format!("auditing {} beside {}", new.display, self.enforced_display());
            self.event(EventType::Normal, "AuditStarted", message);
        }
        self.actions.push(Action::StageCandidate(new));
    }

    /// `palisade abort`: drops the candidate it names, unless the nodes are already flipping to it.
    fn abort(&mut self) {
        let Some(abort) = self.st.abort.clone() else { return };
        let named = |c: &RevisionRef| c.id == abort.revision && c.commit == abort.commit;
        if self.flipping() || !self.st.candidate_revision.as_ref().is_some_and(named) {
            return;
        }
        self.supersede(&format!("aborted by {}", abort.aborted_by));
        self.st.phase = if self.st.enforced_revision.is_some() { Phase::Enforced } else { Phase::Pending };
    }

    /// An aborted commit is not staged again; a new commit is, even with the same content.
    fn aborted(&self, rev: &RevisionRef) -> bool {
        self.st.abort.as_ref().is_some_and(|a| a.revision == rev.id && a.commit == rev.commit)
    }

    /// Drops the candidate (if any) with a Superseded outcome.
    fn supersede(&mut self, why: &str) {
        let Some(candidate) = self.st.candidate_revision.take() else { return };
        self.reset_audit();
        if self.st.approval.as_ref().is_some_and(|a| a.revision == candidate.id) {
            self.st.approval = None;
        }
        self.record(&candidate, Outcome::Superseded, why.into());
        self.event(EventType::Normal, "Superseded", format!("stopped auditing {}: {why}", candidate.display));
    }

    /// Enforced before and not rolled back since: a revert to it may skip the audit.
    fn known_good(&self, id: &str) -> bool {
        self.st
            .history
            .iter()
            .filter(|h| h.revision == id)
            .find(|h| matches!(h.outcome, Outcome::Promoted | Outcome::FastTracked | Outcome::RolledBack))
            .is_some_and(|h| h.outcome != Outcome::RolledBack)
    }

    fn advance(&mut self) {
        match self.st.phase {
            Phase::Auditing | Phase::Inconclusive | Phase::Blocked => self.audit(),
            Phase::Promoting => self.promote(),
            Phase::Pending | Phase::Enforced | Phase::Failed | Phase::RolledBack => {}
        }
    }

    fn nodes_without(&self, id: &str) -> Vec<&'a str> {
        self.reports.iter().filter(|r| !r.loaded_revisions.iter().any(|l| l == id)).map(|r| r.node.as_str()).collect()
    }

    fn audit(&mut self) {
        let Some(candidate) = self.st.candidate_revision.clone() else { return };
        let summary = self.summarize(&candidate.id);
        self.st.observed_flows = summary.observed;
        self.st.new_denies = summary.new_denies;
        self.st.new_allows = summary.new_allows;
        self.st.unexpected_new_denies = summary.unexpected;

        let gates = &self.spec.audit;
        let missing = self.nodes_without(&candidate.id);
        let started = self.st.audit_started_at.as_ref().map_or(self.ctx.now, |t| t.0);
        let remaining = signed(gates.min_duration.into()) - started.duration_until(self.ctx.now);

        let (phase, reason, message) = if summary.unexpected > u64::from(gates.max_new_denies) {
            (Phase::Blocked, "NewDeniesAboveLimit", blocked_message(&summary, gates.max_new_denies))
        } else if self.reports.is_empty() {
            (Phase::Auditing, "WaitingForNodes", "no node agent has reported yet".to_string())
        } else if !missing.is_empty() {
            let message = format!(
                "{} of {} nodes have loaded {} (waiting for {})",
                self.reports.len() - missing.len(),
                self.reports.len(),
                candidate.display,
                list(&missing)
            );
            (Phase::Auditing, "WaitingForNodes", message)
        } else if remaining.is_positive() {
            self.actions.push(Action::RequeueAfter(remaining.unsigned_abs()));
            let message =
                format!("auditing {}: {} left of spec.audit.minDuration", candidate.display, human(remaining));
            (Phase::Auditing, "AuditInProgress", message)
        } else if !summary.starved.is_empty() {
            let message = format!(
                "too little traffic to judge {}: {} saw fewer than spec.audit.minFlowsPerEndpoint ({}) flows; wait for traffic or lower the gate",
                candidate.display,
                list(&summary.starved),
                gates.min_flows_per_endpoint
            );
            (Phase::Inconclusive, "InsufficientTraffic", message)
        } else if self.spec.promotion == Promotion::Manual && !self.approved(&candidate.id) {
            let message =
                format!("audit of {} passed; waiting for approval: kubectl palisade promote <name>", candidate.display);
            (Phase::Auditing, "AwaitingApproval", message)
        } else {
            return self.flip(candidate, false);
        };
        if phase != self.st.phase {
            let kind = if phase == Phase::Auditing { EventType::Normal } else { EventType::Warning };
            self.event(kind, reason, message.clone());
        }
        self.st.phase = phase;
        self.waiting = Some((reason, message));
    }

    fn approved(&self, id: &str) -> bool {
        self.st.approval.as_ref().is_some_and(|Approval { revision, .. }| revision == id)
    }

    fn summarize(&self, id: &str) -> AuditSummary<'a> {
        let min_flows = u64::from(self.spec.audit.min_flows_per_endpoint);
        let mut s = AuditSummary::default();
        for report in self.reports.iter().filter(|r| r.candidate_revision.as_deref() == Some(id)) {
            s.observed += report.totals.observed_flows;
            s.new_denies += report.totals.new_denies;
            s.new_allows += report.totals.new_allows;
            let listed: Vec<&AuditFlow> = report
                .flows
                .iter()
                .filter(|f| f.enforced_verdict == Verdict::Allow && f.candidate_verdict == Verdict::Deny)
                .collect();
            let (expected, unexpected): (Vec<_>, Vec<_>) =
                listed.into_iter().partition(|f| self.spec.audit.expected_denies.iter().any(|sel| matches(sel, f)));
            // Denies beyond the report's cap cannot be matched, so they count as unexpected.
            s.unexpected += report.totals.new_denies.saturating_sub(expected.len() as u64);
            s.unexpected_flows.extend(unexpected);
            s.starved.extend(
                report
                    .endpoints
                    .iter()
                    .filter(|e| e.flows < min_flows)
                    .map(|e| format!("{}/{} ({} flows)", e.namespace, e.pod, e.flows)),
            );
        }
        s.unexpected_flows.sort_by_key(|f| std::cmp::Reverse(f.count));
        s
    }

    /// Asks every node to enforce the candidate. Only called with every node holding it loaded.
    fn flip(&mut self, candidate: RevisionRef, fast_track: bool) {
        self.st.previous_revision = self.st.enforced_revision.replace(candidate.clone());
        self.st.flip_requested_at = Some(self.now());
        self.st.promoted_at = None;
        self.st.baseline_drops_per_minute = Some(self.drops_per_minute());
        self.st.phase = Phase::Promoting;
        let message = format!(
            "all {} nodes loaded {}; flipping from {}",
            self.reports.len(),
            candidate.display,
            self.st.previous_revision.as_ref().map_or("nothing", |p| p.display.as_str())
        );
        self.event(EventType::Normal, "Promoting", message);
        self.actions.push(Action::Flip { to: candidate.clone(), fast_track });
        // Confirmations are settled by the next reconcile, first thing.
        self.flip_pending(&candidate);
    }

    /// Whether some node has yet to confirm the flip to `candidate`; says which in `waiting`.
    fn flip_pending(&mut self, candidate: &RevisionRef) -> bool {
        let pending: Vec<&str> = self
            .reports
            .iter()
            .filter(|r| r.enforced_revision.as_deref() != Some(candidate.id.as_str()))
            .map(|r| r.node.as_str())
            .collect();
        if !self.reports.is_empty() && pending.is_empty() {
            return false;
        }
        let waiting = if self.reports.is_empty() { "every node".to_string() } else { list(&pending) };
        let message = format!(
            "{} of {} nodes enforce {} (waiting for {waiting})",
            self.reports.len() - pending.len(),
            self.reports.len(),
            candidate.display
        );
        self.waiting = Some(("Flipping", message));
        true
    }

    fn promote(&mut self) {
        let Some(candidate) = self.st.candidate_revision.clone() else { return };
        if !self.flipping() {
            // A fast-tracked revert: the barrier is all that stands before the flip.
            let missing = self.nodes_without(&candidate.id);
            if self.reports.is_empty() || !missing.is_empty() {
                let waiting = if self.reports.is_empty() { "every node".to_string() } else { list(&missing) };
                self.waiting =
                    Some(("WaitingForNodes", format!("waiting for {waiting} to load {}", candidate.display)));
                return;
            }
            return self.flip(candidate, true);
        }
        if self.flip_pending(&candidate) {
            return;
        }
        let fast_track = self.st.audit_started_at.is_none();
        let outcome = if fast_track { Outcome::FastTracked } else { Outcome::Promoted };
        let message = format!("enforced on all {} nodes", self.reports.len());
        self.record(&candidate, outcome, message.clone());
        self.st.candidate_revision = None;
        self.st.promoted_at = Some(self.now());
        self.st.flip_requested_at = None;
        self.st.approval = None;
        self.reset_audit();
        self.st.phase = Phase::Enforced;
        self.event(EventType::Normal, "Promoted", format!("{} {message}", candidate.display));
    }

    fn set(&mut self, type_: &str, status: bool, reason: &str, message: String) {
        let status = if status { "True" } else { "False" };
        let condition = Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: self.ctx.generation,
            last_transition_time: self.now(),
        };
        match self.st.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(existing) if existing.status == condition.status => {
                Condition { last_transition_time: existing.last_transition_time.clone(), ..condition }
                    .clone_into(existing)
            }
            Some(existing) => *existing = condition,
            None => self.st.conditions.push(condition),
        }
    }

    fn clear(&mut self, type_: &str) {
        self.st.conditions.retain(|c| c.type_ != type_);
    }

    /// kstatus: Ready says whether the newest commit is enforced everywhere; Reconciling and
    /// Stalled are present only while true; the rest tell which step the rollout is at.
    fn refresh_conditions(&mut self, source: &SourceObservation) {
        let enforced = self.st.enforced_revision.clone();
        let enforcing = enforced.as_ref().map_or(0, |e| {
            self.reports.iter().filter(|r| r.enforced_revision.as_deref() == Some(e.id.as_str())).count()
        });
        let everywhere = !self.reports.is_empty() && enforcing == self.reports.len();
        let still = format!("still enforcing {}", self.enforced_display());
        let waiting = self.waiting.clone();
        let (ready, reason, message): (bool, String, String) = match self.st.phase {
            Phase::Pending => {
                (false, "Pending".into(), format!("waiting for the first revision from {}", self.spec.source.url))
            }
            Phase::Auditing | Phase::Inconclusive | Phase::Promoting => {
                let (reason, message) = waiting.clone().unwrap_or(("Progressing", String::new()));
                (false, reason.into(), message)
            }
            Phase::Blocked => {
                let (reason, message) = waiting.clone().unwrap_or(("NewDeniesAboveLimit", String::new()));
                (false, reason.into(), format!("{message}; {still}"))
            }
            Phase::Enforced if everywhere => {
                (true, "Enforced".into(), format!("{} is enforced on all {} nodes", self.enforced_display(), enforcing))
            }
            Phase::Enforced => (
                false,
                "WaitingForNodes".into(),
                format!("{} of {} nodes enforce {}", enforcing, self.reports.len(), self.enforced_display()),
            ),
            Phase::Failed => {
                let attempt = self.st.last_attempted_revision.as_ref();
                let reason = attempt.and_then(|a| a.reason.as_deref()).unwrap_or("Failed").to_string();
                let errors = attempt.map(|a| format!("{}: {}", a.display, a.errors.join("; "))).unwrap_or_default();
                (false, reason, format!("{errors}; fix it and push a new commit; {still}"))
            }
            Phase::RolledBack => {
                let last = self.st.rolled_back_revisions.first().map_or(String::new(), |r| r.display.clone());
                (
                    false,
                    "RolledBack".into(),
                    format!("{last} was rolled back and will not be promoted again; push a new commit; {still}"),
                )
            }
        };
        let (ready, reason, message) = match source {
            SourceObservation::Unreachable { message: error }
                if matches!(self.st.phase, Phase::Enforced | Phase::Pending) =>
            {
                (false, "GitOperationFailed".into(), format!("{error}; {still}"))
            }
            _ => (ready, reason, message),
        };
        let was = self.st.conditions.iter().find(|c| c.type_ == COND_READY).map(|c| c.reason.clone());
        if reason == "GitOperationFailed" && was.as_deref() != Some(reason.as_str()) {
            self.event(EventType::Warning, "GitOperationFailed", message.clone());
        }
        self.set(COND_READY, ready, &reason, message.clone());

        let stalled = matches!(self.st.phase, Phase::Blocked | Phase::Failed | Phase::RolledBack);
        if stalled {
            self.set(COND_STALLED, true, &reason, message.clone());
            self.clear(COND_RECONCILING);
        } else if !ready {
            self.set(COND_RECONCILING, true, &reason, message.clone());
            self.clear(COND_STALLED);
        } else {
            self.clear(COND_RECONCILING);
            self.clear(COND_STALLED);
        }

        if self.spec.source.verify.is_none() {
            self.clear(COND_SOURCE_VERIFIED);
        } else {
            match source {
                SourceObservation::Revision(rev) if rev.verified => {
                    self.set(COND_SOURCE_VERIFIED, true, "Succeeded", format!("verified signature of {}", rev.display))
                }
                SourceObservation::Revision(rev) => self.set(
                    COND_SOURCE_VERIFIED,
                    false,
                    "VerificationFailed",
                    format!("{} is not signed by a trusted key", rev.display),
                ),
                SourceObservation::Unverified { display, reason, .. } => {
                    self.set(COND_SOURCE_VERIFIED, false, "VerificationFailed", format!("{display}: {reason}"))
                }
                SourceObservation::Invalid { .. } | SourceObservation::Unreachable { .. } => {}
            }
        }

        if matches!(self.st.phase, Phase::Auditing | Phase::Inconclusive | Phase::Blocked) {
            let (reason, message) = waiting.clone().unwrap_or(("AuditInProgress", String::new()));
            self.set(COND_AUDITING, true, reason, message);
        } else {
            self.clear(COND_AUDITING);
        }
        match waiting {
            Some((reason @ ("NewDeniesAboveLimit" | "InsufficientTraffic" | "AwaitingApproval"), message)) => {
                self.set(COND_PROMOTION_BLOCKED, true, reason, message)
            }
            _ => self.clear(COND_PROMOTION_BLOCKED),
        }

        match (self.st.phase, &enforced) {
            (Phase::Promoting, _) if self.flipping() => {
                self.set(COND_PROMOTED, false, "Flipping", format!("nodes are flipping to {}", self.enforced_display()))
            }
            (Phase::RolledBack, _) => self.set(COND_PROMOTED, false, "RolledBack", message.clone()),
            (_, Some(e)) => {
                let message = format!("{} is the promoted revision", e.display);
                self.set(COND_PROMOTED, true, "Promoted", message)
            }
            (_, None) => self.clear(COND_PROMOTED),
        }
        if self.st.phase == Phase::RolledBack {
            let why = self.st.history.iter().find(|h| h.outcome == Outcome::RolledBack).map(|h| h.message.clone());
            self.set(COND_ROLLED_BACK, true, "DropSpike", why.unwrap_or(message));
        } else {
            self.clear(COND_ROLLED_BACK);
        }
    }
}

/// The scope rule: outside the controller's namespace, a rollout carries only policies for its
/// own namespace.
pub fn scope_violations(scope: Scope, ctx: &Context, policies: &[PolicyRef]) -> Vec<String> {
    let home = ctx.namespace == ctx.controller_namespace;
    match scope {
        Scope::Cluster if home => vec![],
        Scope::Cluster => vec![format!(
            "spec.scope Cluster is allowed only for rollouts in the controller's namespace {}; this rollout is in {}",
            ctx.controller_namespace, ctx.namespace
        )],
        Scope::Namespace => policies
            .iter()
            .filter_map(|p| match &p.namespace {
                Some(ns) if ns == ctx.namespace => None,
                Some(ns) => Some(format!(
                    "{} {ns}/{} is for namespace {ns}, but a rollout in {} (scope Namespace) may only carry policies for its own namespace",
                    p.kind, p.name, ctx.namespace
                )),
                None => Some(format!(
                    "{} {} is cluster-wide, but a rollout in {} (scope Namespace) may only carry namespaced policies",
                    p.kind, p.name, ctx.namespace
                )),
            })
            .collect(),
    }
}

/// Whether an expected-deny selector covers a flow: every field set must match; labels match as
/// a subset.
pub fn matches(selector: &FlowSelector, flow: &AuditFlow) -> bool {
    fn labels(want: &Option<BTreeMap<String, String>>, have: &BTreeMap<String, String>) -> bool {
        want.as_ref().is_none_or(|want| want.iter().all(|(k, v)| have.get(k) == Some(v)))
    }
    fn eq<T: PartialEq>(want: &Option<T>, have: Option<&T>) -> bool {
        want.as_ref().is_none_or(|w| have == Some(w))
    }
    labels(&selector.subject_labels, &flow.subject.labels)
        && labels(&selector.peer_labels, &flow.peer.labels)
        && eq(&selector.namespace, flow.subject.namespace.as_ref())
        && eq(&selector.peer_namespace, flow.peer.namespace.as_ref())
        && eq(&selector.port, Some(&flow.port))
        && eq(&selector.protocol, Some(&flow.protocol))
        && eq(&selector.direction, Some(&flow.direction))
}

fn blocked_message(summary: &AuditSummary, limit: u32) -> String {
    let mut message = format!(
        "{} new denies not covered by spec.audit.expectedDenies, above spec.audit.maxNewDenies ({limit})",
        summary.unexpected
    );
    let shown: Vec<String> = summary.unexpected_flows.iter().take(3).map(|f| describe(f)).collect();
    if !shown.is_empty() {
        let _ = write!(message, ": {}", shown.join("; "));
    }
    message.push_str("; list intended ones in expectedDenies or fix the policy and push a new commit");
    message
}

fn side(e: &crate::crd::FlowEndpoint) -> String {
    let name = e
        .workload
        .clone()
        .or_else(|| e.cidr.clone())
        .unwrap_or_else(|| e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","));
    match &e.namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name,
    }
}

fn describe(f: &AuditFlow) -> String {
    let (arrow, dir) = match f.direction {
        Direction::Ingress => ("<-", "ingress"),
        Direction::Egress => ("->", "egress"),
    };
    let rule = f.rule.as_deref().map(|r| format!(", by {r}")).unwrap_or_default();
    let protocol = serde_json::to_value(f.protocol).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    format!("{} {arrow} {} {protocol}/{} {dir} ({}x{rule})", side(&f.subject), side(&f.peer), f.port, f.count)
}

fn list(items: &[impl AsRef<str>]) -> String {
    const SHOWN: usize = 5;
    let mut out = items.iter().take(SHOWN).map(AsRef::as_ref).collect::<Vec<_>>().join(", ");
    if items.len() > SHOWN {
        let _ = write!(out, " and {} more", items.len() - SHOWN);
    }
    out
}

fn signed(d: std::time::Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// Go-style short durations for messages: 9m30s, 2h0m0s, 45s.
fn human(d: SignedDuration) -> String {
    let secs = d.as_secs().max(0) + i64::from(d.subsec_nanos() > 0);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}
