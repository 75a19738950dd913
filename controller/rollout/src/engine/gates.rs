//! The audit gates: the candidate's reports merged across nodes (a flow seen on many nodes is
//! one flow), the minimum duration and traffic, the new denies beyond `expectedDenies`, and the
//! approval of a Manual rollout.
//!
//! Evidence counts only while it is continuous: a report counts when it is for the candidate
//! and the audit generation the status names, and each node's clock starts when its evidence
//! did. A verdict of Blocked is sticky: wiped evidence never turns it into a pass.
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use super::*;
use crate::crd::{DnsQueryKind, HOST_POLICY_MIN_AUDIT, HttpRequestKind, KafkaRequestKind, Protocol, TlsServerKind};

/// The audit gates' view of the reports for one candidate.
#[derive(Default)]
struct AuditSummary<'r> {
    observed: u64,
    new_denies: u64,
    new_allows: u64,
    unexpected: u64,
    unexpected_flows: Vec<MergedFlow<'r>>,
    starved: Vec<String>,
}

/// One flow as every node that listed it saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedFlow<'r> {
    /// As the first node listed it.
    pub flow: &'r AuditFlow,
    /// Nodes that listed it.
    pub nodes: u64,
    /// Its `count` summed over those nodes.
    pub count: u64,
}

/// What makes two listed flows the same flow: the subject by its workload (replicas on different
/// nodes are one subject) or by its labels, and the peer, port, protocol and L7 request as listed.
#[derive(PartialEq, Eq, Hash)]
struct FlowKey<'r> {
    direction: Direction,
    subject_namespace: Option<&'r str>,
    subject: Result<&'r str, &'r BTreeMap<String, String>>,
    peer: (&'r BTreeMap<String, String>, Option<&'r str>, Option<&'r str>, Option<&'r str>),
    port: u16,
    protocol: Protocol,
    http: Option<&'r HttpRequestKind>,
    dns: Option<&'r DnsQueryKind>,
    tls: Option<&'r TlsServerKind>,
    kafka: Option<&'r KafkaRequestKind>,
}

impl<'r> FlowKey<'r> {
    fn of(f: &'r AuditFlow) -> Self {
        let (s, p) = (&f.subject, &f.peer);
        FlowKey {
            direction: f.direction,
            subject_namespace: s.namespace.as_deref(),
            subject: s.workload.as_deref().ok_or(&s.labels),
            peer: (&p.labels, p.namespace.as_deref(), p.workload.as_deref(), p.cidr.as_deref()),
            port: f.port,
            protocol: f.protocol,
            http: f.http.as_ref(),
            dns: f.dns.as_ref(),
            tls: f.tls.as_ref(),
            kafka: f.kafka.as_ref(),
        }
    }
}

/// Flows listed by nodes, as `(node, flow)` with each node's flows together, merged into one
/// entry per distinct flow, most packets (or requests) first.
pub fn merge_flows<'r>(listed: impl IntoIterator<Item = (&'r str, &'r AuditFlow)>) -> Vec<MergedFlow<'r>> {
    let mut merged: Vec<MergedFlow> = Vec::new();
    let mut index: HashMap<FlowKey, (usize, &str)> = HashMap::new();
    for (node, flow) in listed {
        match index.entry(FlowKey::of(flow)) {
            Entry::Occupied(mut seen) => {
                let (i, last_node) = seen.get_mut();
                merged[*i].count += flow.count;
                if *last_node != node {
                    merged[*i].nodes += 1;
                    *last_node = node;
                }
            }
            Entry::Vacant(new) => {
                new.insert((merged.len(), node));
                merged.push(MergedFlow { flow, nodes: 1, count: flow.count });
            }
        }
    }
    merged.sort_by_key(|m| std::cmp::Reverse(m.count));
    merged
}

impl<'a> Engine<'a> {
    pub(super) fn advance(&mut self) {
        match self.st.phase {
            Phase::Auditing | Phase::Inconclusive | Phase::Blocked => self.audit(),
            Phase::Promoting => self.promote(),
            Phase::Pending | Phase::Enforced | Phase::Failed | Phase::RolledBack => {}
        }
    }

    pub(super) fn nodes_without(&self, id: &str) -> Vec<&'a str> {
        let reports = self.reports.iter().copied();
        reports.filter(|r| !r.loaded_revisions.iter().any(|l| l == id)).map(|r| r.node.as_str()).collect()
    }

    /// The gates or the promotion mode changed under a running audit: it starts again, so that
    /// no evidence is judged by terms other than those it was gathered under.
    fn check_terms(&mut self) {
        let terms = self.terms(self.host_policy());
        let changed = self.st.audit_terms.as_ref().map(|old| changed_terms(old, &terms)).unwrap_or_default();
        if changed.is_empty() {
            // Audits started before terms were recorded adopt the current ones, and so does one
            // whose notReadyGrace changed: it judges no evidence.
            self.st.audit_terms = Some(terms);
        } else {
            self.restart_audit(format!("{changed} changed during the audit"), None);
        }
    }

    fn audit(&mut self) {
        let Some(candidate) = self.st.candidate_revision.clone() else { return };
        self.check_terms();
        let summary = self.summarize(&candidate.id);
        self.st.observed_flows = summary.observed;
        self.st.new_denies = summary.new_denies;
        self.st.new_allows = summary.new_allows;
        self.st.unexpected_new_denies = summary.unexpected;

        let gates = &self.spec.audit;
        let missing = self.nodes_without(&candidate.id);
        let restarting = self.nodes_restarting(&candidate.id);
        let remaining = self.remaining_audit(&candidate.id);
        let blocked = self.st.blocked.clone().filter(|b| b.revision == candidate.id && b.commit == candidate.commit);

        let control_plane = self.control_plane_denies(&candidate.id);
        let (phase, reason, message) = if let Some(blocked) = blocked {
            // Sticky: only a new commit, an abort or a reaudit clears it.
            let reason = if blocked.reason == CONTROL_PLANE_DENIED { CONTROL_PLANE_DENIED } else { NEW_DENIES };
            (Phase::Blocked, reason, blocked.message)
        } else if !control_plane.is_empty() {
            let message = control_plane_message(&candidate.display, &control_plane);
            (Phase::Blocked, CONTROL_PLANE_DENIED, self.block(&candidate, CONTROL_PLANE_DENIED, message))
        } else if summary.unexpected > u64::from(gates.max_new_denies) {
            let message = blocked_message(&summary, gates.max_new_denies);
            (Phase::Blocked, NEW_DENIES, self.block(&candidate, NEW_DENIES, message))
        } else if self.reports.is_empty() {
            self.waiting_for_nodes = true;
            (Phase::Auditing, "WaitingForNodes", "no node agent has reported yet".to_string())
        } else if !missing.is_empty() {
            self.waiting_for_nodes = true;
            let message = format!(
                "{} of {} nodes have loaded {} (waiting for {})",
                self.reports.len() - missing.len(),
                self.reports.len(),
                candidate.display,
                list(&missing)
            );
            (Phase::Auditing, "WaitingForNodes", message)
        } else if !restarting.is_empty() {
            self.waiting_for_nodes = true;
            let message = format!(
                "waiting for {} to restart their evidence for audit generation {} of {}",
                list(&restarting),
                self.st.audit_generation,
                candidate.display
            );
            (Phase::Auditing, "WaitingForNodes", message)
        } else if remaining.is_positive() {
            self.actions.push(Action::RequeueAfter(remaining.unsigned_abs()));
            let of = if self.min_audit() > self.spec.audit.min_duration.into() {
                format!("the {} every host policy is audited for", human(signed(HOST_POLICY_MIN_AUDIT)))
            } else {
                "spec.audit.minDuration".to_string()
            };
            let message = format!("auditing {}: {} left of {of}", candidate.display, human(remaining));
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

    /// The reports that are evidence for candidate `id` under the current audit generation.
    fn evidence(&self, id: &str) -> Vec<&'a PolicyAuditReportSpec> {
        let generation = self.st.audit_generation;
        let reports = self.reports.iter().copied();
        reports.filter(|r| r.candidate_revision.as_deref() == Some(id) && r.audit_generation == generation).collect()
    }

    /// Nodes that hold the candidate but still report evidence from before a restart.
    fn nodes_restarting(&self, id: &str) -> Vec<&'a str> {
        // A set: thousands of nodes would make a list's lookups quadratic.
        let counted: HashSet<&str> = self.evidence(id).into_iter().map(|r| r.node.as_str()).collect();
        self.reports.iter().copied().map(|r| r.node.as_str()).filter(|n| !counted.contains(n)).collect()
    }

    /// How much of `minDuration` is left: the audit's own clock and every node's, whichever
    /// started last (a node whose evidence was reset starts over).
    fn remaining_audit(&self, id: &str) -> SignedDuration {
        let audit_start = self.st.audit_started_at.as_ref().map_or(self.ctx.now, |t| t.0);
        let started = self
            .evidence(id)
            .into_iter()
            .filter_map(|r| r.audit_started_at.as_ref())
            .map(|t| t.0)
            .fold(audit_start, Timestamp::max);
        signed(self.min_audit()) - started.duration_until(self.ctx.now)
    }

    /// `spec.audit.minDuration`, and at least [`HOST_POLICY_MIN_AUDIT`] for a host policy.
    fn min_audit(&self) -> std::time::Duration {
        let min: std::time::Duration = self.spec.audit.min_duration.into();
        if self.host_policy() { min.max(HOST_POLICY_MIN_AUDIT) } else { min }
    }

    /// Blocks `candidate` for good (until a new commit, an abort or a reaudit); returns the
    /// message.
    fn block(&mut self, candidate: &RevisionRef, reason: &str, message: String) -> String {
        self.st.blocked = Some(BlockedVerdict {
            revision: candidate.id.clone(),
            commit: candidate.commit.clone(),
            reason: reason.into(),
            message: message.clone(),
            blocked_at: self.now(),
        });
        message
    }

    /// The control-plane flows the candidate's host policy would newly deny, by node, as the
    /// agents checked them against the policy.
    fn control_plane_denies(&self, id: &str) -> Vec<(&'a str, &'a AuditFlow)> {
        let evidence = self.evidence(id).into_iter();
        evidence.flat_map(|r| r.control_plane_denies.iter().map(move |f| (r.node.as_str(), f))).collect()
    }

    fn approved(&self, id: &str) -> bool {
        self.st.approval.as_ref().is_some_and(|Approval { revision, .. }| revision == id)
    }

    /// Flows count once however many nodes listed them; flows a node left out of its report
    /// (beyond the cap) cannot be merged or matched, so each counts, as unexpected for denies.
    fn summarize(&self, id: &str) -> AuditSummary<'a> {
        let min_flows = u64::from(self.spec.audit.min_flows_per_endpoint);
        let mut s = AuditSummary::default();
        let evidence = self.evidence(id);
        let listed = |enforced: Verdict, candidate: Verdict| {
            let flows = evidence.iter().copied().flat_map(|r| r.flows.iter().map(move |f| (r.node.as_str(), f)));
            merge_flows(flows.filter(move |(_, f)| f.enforced_verdict == enforced && f.candidate_verdict == candidate))
        };
        let (denies, allows) = (listed(Verdict::Allow, Verdict::Deny), listed(Verdict::Deny, Verdict::Allow));
        let mut unlisted_denies = 0;
        for report in &evidence {
            let count = |enforced, candidate| {
                let flows = report.flows.iter();
                flows.filter(|f| f.enforced_verdict == enforced && f.candidate_verdict == candidate).count() as u64
            };
            unlisted_denies += report.totals.new_denies.saturating_sub(count(Verdict::Allow, Verdict::Deny));
            s.new_allows += report.totals.new_allows.saturating_sub(count(Verdict::Deny, Verdict::Allow));
            s.observed += report.totals.observed_flows;
            s.starved.extend(
                report
                    .endpoints
                    .iter()
                    .filter(|e| e.flows < min_flows)
                    .map(|e| format!("{}/{} ({} flows)", e.namespace, e.pod, e.flows)),
            );
        }
        s.new_denies = denies.len() as u64 + unlisted_denies;
        s.new_allows += allows.len() as u64;
        s.unexpected_flows = denies
            .into_iter()
            .filter(|m| !self.spec.audit.expected_denies.iter().any(|sel| matches(sel, m.flow)))
            .collect();
        s.unexpected = s.unexpected_flows.len() as u64 + unlisted_denies;
        s
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

/// The fields that differ between two audit terms, named as in the spec.
fn changed_terms(old: &AuditTerms, new: &AuditTerms) -> String {
    let (a, b) = (&old.audit, &new.audit);
    let changed: Vec<&str> = [
        (a.min_duration != b.min_duration, "spec.audit.minDuration"),
        (a.min_flows_per_endpoint != b.min_flows_per_endpoint, "spec.audit.minFlowsPerEndpoint"),
        (a.max_new_denies != b.max_new_denies, "spec.audit.maxNewDenies"),
        (a.expected_denies != b.expected_denies, "spec.audit.expectedDenies"),
        // notReadyGrace is not a gate: it changes which nodes are waited for, not how evidence is judged.
        (old.promotion != new.promotion, "spec.promotion"),
    ]
    .into_iter()
    .filter_map(|(changed, name)| changed.then_some(name))
    .collect();
    changed.join(", ")
}

/// Blocked: the candidate denies flows beyond the gates.
const NEW_DENIES: &str = "NewDeniesAboveLimit";
/// Blocked: the candidate's host policy would cut nodes off their control plane.
const CONTROL_PLANE_DENIED: &str = "ControlPlaneDenied";

fn control_plane_message(candidate: &str, denies: &[(&str, &AuditFlow)]) -> String {
    let merged = merge_flows(denies.iter().copied());
    let shown: Vec<String> = merged.iter().take(3).map(describe).collect();
    format!(
        "{candidate} would deny the nodes' own control-plane traffic, which no gate may allow: {}; allow it in the host policy and push a new commit",
        shown.join("; ")
    )
}

fn blocked_message(summary: &AuditSummary, limit: u32) -> String {
    let mut message = format!(
        "{} new denies not covered by spec.audit.expectedDenies, above spec.audit.maxNewDenies ({limit})",
        summary.unexpected
    );
    let shown: Vec<String> = summary.unexpected_flows.iter().take(3).map(describe).collect();
    if !shown.is_empty() {
        let _ = write!(message, ": {}", shown.join("; "));
    }
    message.push_str("; list intended ones in expectedDenies or fix the policy and push a new commit");
    message
}

fn side(e: &crate::crd::FlowEndpoint) -> String {
    let name = e.workload.clone().or_else(|| e.cidr.clone()).unwrap_or_else(|| {
        // Reserved labels (`reserved:host`) have no value.
        let label = |(k, v): (&String, &String)| if v.is_empty() { k.clone() } else { format!("{k}={v}") };
        e.labels.iter().map(label).collect::<Vec<_>>().join(",")
    });
    match &e.namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name,
    }
}

fn describe(merged: &MergedFlow) -> String {
    let MergedFlow { flow: f, nodes, count } = merged;
    let (arrow, dir) = match f.direction {
        Direction::Ingress => ("<-", "ingress"),
        Direction::Egress => ("->", "egress"),
    };
    let rule = f.rule.as_deref().map(|r| format!(", by {r}")).unwrap_or_default();
    let protocol = serde_json::to_value(f.protocol).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    let on = if *nodes == 1 { "1 node".to_string() } else { format!("{nodes} nodes") };
    format!("{} {arrow} {} {protocol}/{} {dir} ({count}x on {on}{rule})", side(&f.subject), side(&f.peer), f.port)
}
