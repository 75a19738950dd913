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

mod candidate;
mod conditions;
mod decisions;
mod gates;
mod nodes;
mod promotion;

pub use candidate::scope_violations;
pub use gates::{MergedFlow, matches, merge_flows};

use crate::crd::{
    Abort, Approval, AttemptedRevision, AuditFlow, AuditTerms, BlockedVerdict, DecisionAction, Direction, FlowSelector,
    HistoryEntry, Outcome, Phase, PolicyAuditReportSpec, PolicyRolloutSpec, PolicyRolloutStatus, Promotion,
    RevisionRef, RolledBackRevision, Scope, Verdict,
};

/// Outcomes kept in `status.history`.
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
    /// Some policy has a host rule (`nodeSelector`): such a revision can cut nodes off their
    /// control plane, so it is never fast-tracked and always audited for a while.
    pub host_policy: bool,
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
    /// The controller would not read the source at all (e.g. an insecure URL in a cluster).
    Refused {
        reason: &'static str,
        message: String,
    },
    /// A commit that cannot be staged for a reason outside its policies (e.g. too large).
    Rejected {
        commit: String,
        display: String,
        id: String,
        reason: &'static str,
        errors: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    /// As Kubernetes Events spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// A transition worth telling people about, as a Kubernetes Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventType,
    pub reason: &'static str,
    pub message: String,
}

/// A PolicyDecision for this rollout, as the reconciler read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionRequest {
    /// The PolicyDecision's name: consumed (deleted) once read.
    pub name: String,
    pub revision: String,
    pub action: DecisionAction,
    /// Verified by the API server's admission policy (the user who created it).
    pub user: String,
}

/// A policy another rollout already stages or enforces: no other rollout may stage it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub policy: PolicyRef,
    /// `namespace/name` of the rollout holding it.
    pub rollout: String,
    /// The revision that carries it there, e.g. `main@a1b2c3d`.
    pub revision: String,
}

/// A node whose Node object is not Ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotReadyNode {
    pub node: String,
    /// Since when: the Ready condition's lastTransitionTime.
    pub since: Timestamp,
}

/// What the reconciler observed for one reconcile.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    pub source: &'a SourceObservation,
    /// The rollout's reports from nodes running a ready agent: the nodes the promotion barrier
    /// waits for. A report with only `node` set holds the barrier like a node that loaded
    /// nothing.
    pub reports: &'a [&'a PolicyAuditReportSpec],
    /// Nodes whose Node is not Ready: left out of the barrier after `spec.audit.notReadyGrace`.
    pub not_ready: &'a [NotReadyNode],
    /// The rollout's PolicyDecisions, oldest first.
    pub decisions: &'a [DecisionRequest],
    /// The policies other rollouts stage or enforce. Needed only when the source offers a
    /// revision that is neither the candidate nor the enforced one.
    pub claims: &'a [Claim],
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
    Event(Event),
    /// The PolicyDecision of this name was read (applied or ignored, as the status says): delete
    /// it.
    ConsumeDecision(String),
    /// Reconcile again after this long even if nothing changes (a gate or window ends).
    RequeueAfter(std::time::Duration),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: PolicyRolloutStatus,
    pub actions: Vec<Action>,
}

/// One step of the state machine.
pub fn reconcile(
    spec: &PolicyRolloutSpec,
    status: Option<&PolicyRolloutStatus>,
    observed: &Observed,
    ctx: &Context,
) -> Decision {
    let Observed { source, reports, not_ready, decisions, claims } = *observed;
    let grace = signed(spec.audit.not_ready_grace.into());
    let barrier = nodes::barrier(reports, not_ready, (grace, nodes::in_flight_since(status)), ctx.now);
    let mut engine = Engine {
        spec,
        ctx,
        reports: barrier.waited,
        left_out: barrier.left_out,
        claims,
        st: status.cloned().unwrap_or_default(),
        actions: Vec::new(),
        waiting: None,
        waiting_for_nodes: false,
    };
    if let Some(change) = barrier.next_change {
        engine.actions.push(Action::RequeueAfter(change));
    }
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
        engine.decide(decisions);
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
/// The last PolicyDecision read: applied (True) or ignored (False), and why.
pub const COND_DECIDED: &str = "Decided";
/// Nodes left out of the promotion barrier (NotReady or silent beyond `notReadyGrace`).
pub const COND_NODES_LEFT_OUT: &str = "NodesLeftOut";

struct Engine<'a> {
    spec: &'a PolicyRolloutSpec,
    ctx: &'a Context<'a>,
    /// The nodes the promotion barrier waits for, and whose evidence counts.
    reports: Vec<&'a PolicyAuditReportSpec>,
    /// Nodes left out of the barrier, each with why, for the NodesLeftOut condition.
    left_out: Vec<String>,
    claims: &'a [Claim],
    st: PolicyRolloutStatus,
    actions: Vec<Action>,
    /// Why an audit or promotion is waiting: (reason, message), for the conditions.
    waiting: Option<(&'static str, String)>,
    /// The wait is the barrier's (nodes to load or confirm), which `spec.progressDeadline` bounds.
    waiting_for_nodes: bool,
}

impl<'a> Engine<'a> {
    fn now(&self) -> Time {
        Time(self.ctx.now)
    }

    fn event(&mut self, kind: EventType, reason: &'static str, message: String) {
        self.actions.push(Action::Event(Event { kind, reason, message }));
    }

    fn record(&mut self, rev: &RevisionRef, outcome: Outcome, message: String) {
        self.record_by(rev, outcome, message, None);
    }

    /// Records an outcome that a person's verified decision brought about.
    fn record_by(&mut self, rev: &RevisionRef, outcome: Outcome, message: String, decided_by: Option<&str>) {
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
                decided_by: decided_by.map(Into::into),
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

    /// The gates and promotion mode the spec sets now, for a candidate with or without a host
    /// policy.
    fn terms(&self, host_policy: bool) -> AuditTerms {
        AuditTerms { audit: self.spec.audit.clone(), promotion: self.spec.promotion, host_policy }
    }

    /// Whether the audit under way is of a candidate with a host policy.
    fn host_policy(&self) -> bool {
        self.st.audit_terms.as_ref().is_some_and(|t| t.host_policy)
    }

    /// Discards the candidate's evidence and audits it again from now. Agents see the new
    /// `auditGeneration` and restart their evidence; reports of the old one no longer count.
    fn restart_audit(&mut self, why: String, decided_by: Option<&str>) {
        let Some(candidate) = self.st.candidate_revision.clone() else { return };
        let host_policy = self.host_policy();
        self.reset_audit();
        self.st.audit_generation += 1;
        self.st.audit_started_at = Some(self.now());
        self.st.audit_terms = Some(self.terms(host_policy));
        self.st.phase = Phase::Auditing;
        self.record_by(&candidate, Outcome::AuditRestarted, why.clone(), decided_by);
        self.event(EventType::Normal, "AuditRestarted", format!("auditing {} again: {why}", candidate.display));
    }

    fn reset_audit(&mut self) {
        self.st.blocked = None;
        self.st.audit_terms = None;
        self.st.audit_started_at = None;
        self.st.new_denies = 0;
        self.st.unexpected_new_denies = 0;
        self.st.new_allows = 0;
        self.st.observed_flows = 0;
    }
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
