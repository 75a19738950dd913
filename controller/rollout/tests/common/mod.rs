//! A small driver around the engine: a rollout's spec and status, node reports, and a clock.
#![allow(dead_code)] // each test binary uses part of it

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use palisade_rollout::crd::*;
use palisade_rollout::engine::{
    self, Action, Claim, Context, Decision, DecisionRequest, Event, NotReadyNode, Observed, ObservedRevision,
    PolicyRef, SourceObservation,
};

pub const NS: &str = "shop";
pub const CONTROLLER_NS: &str = "palisade-system";

pub fn spec() -> PolicyRolloutSpec {
    serde_json::from_value(serde_json::json!({
        "source": {"url": "https://git.example/policies.git", "ref": {"branch": "main"}},
        "audit": {"minDuration": "10m", "minFlowsPerEndpoint": 1, "maxNewDenies": 0},
        "rollback": {"postPromotionWindow": "10m", "maxDropIncrease": 100, "fastTrackReverts": true},
    }))
    .unwrap()
}

/// Revision `n` of the policies, brought by commit `c`.
pub fn rev_at(n: &str, c: &str) -> ObservedRevision {
    ObservedRevision {
        id: format!("web-{n}"),
        commit: c.repeat(40 / c.len()),
        display: format!("main@{c}"),
        verified: true,
        policies: vec![PolicyRef {
            kind: "CiliumNetworkPolicy".into(),
            name: "web".into(),
            namespace: Some(NS.into()),
        }],
        host_policy: false,
    }
}

pub fn rev(n: &str) -> SourceObservation {
    SourceObservation::Revision(rev_at(n, n))
}

pub fn id(n: &str) -> String {
    format!("web-{n}")
}

pub fn t(minutes: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap() + SignedDuration::from_mins(minutes)
}

/// A node's report: what it loaded, what it enforces, and what it saw for the candidate.
pub fn node(name: &str) -> PolicyAuditReportSpec {
    PolicyAuditReportSpec { rollout: "web".into(), node: name.into(), ..Default::default() }
}

pub trait ReportExt {
    fn loaded(self, ids: &[&str]) -> Self;
    fn enforcing(self, id: &str) -> Self;
    /// Auditing candidate `id` with `flows` flows on one endpoint and the given new-deny flows.
    fn audit(self, id: &str, flows: u64, new_denies: Vec<AuditFlow>) -> Self;
    fn drops(self, per_minute: u64) -> Self;
    /// Evidence gathered for audit generation `g`.
    fn generation(self, g: u64) -> Self;
    /// Evidence that started at minute `m`.
    fn started(self, m: i64) -> Self;
}

impl ReportExt for PolicyAuditReportSpec {
    fn loaded(mut self, ids: &[&str]) -> Self {
        self.loaded_revisions = ids.iter().map(|s| id(s)).collect();
        self
    }
    fn enforcing(mut self, n: &str) -> Self {
        self.enforced_revision = Some(id(n));
        self
    }
    fn audit(mut self, n: &str, flows: u64, new_denies: Vec<AuditFlow>) -> Self {
        self.candidate_revision = Some(id(n));
        self.totals.observed_flows = flows;
        self.totals.new_denies = new_denies.len() as u64;
        self.endpoints = vec![EndpointTraffic {
            namespace: NS.into(),
            pod: format!("web-{}", self.node),
            workload: Some("web".into()),
            flows,
        }];
        self.flows = new_denies;
        self
    }
    fn drops(mut self, per_minute: u64) -> Self {
        self.totals.drops_per_minute = per_minute;
        self
    }
    fn generation(mut self, g: u64) -> Self {
        self.audit_generation = g;
        self
    }
    fn started(mut self, m: i64) -> Self {
        self.audit_started_at = Some(Time(t(m)));
        self
    }
}

/// A newly denied flow from `peer` (app label) to the web pods on TCP `port`.
pub fn denied(peer: &str, port: u16) -> AuditFlow {
    AuditFlow {
        direction: Direction::Ingress,
        subject: FlowEndpoint {
            labels: BTreeMap::from([("app".into(), "web".into())]),
            namespace: Some(NS.into()),
            workload: Some("web".into()),
            cidr: None,
        },
        peer: FlowEndpoint {
            labels: BTreeMap::from([("app".into(), peer.into())]),
            namespace: Some(NS.into()),
            workload: Some(peer.into()),
            cidr: None,
        },
        port,
        protocol: Protocol::Tcp,
        enforced_verdict: Verdict::Allow,
        candidate_verdict: Verdict::Deny,
        count: 7,
        first_seen: Time(t(0)),
        last_seen: Time(t(1)),
        rule: Some("CiliumNetworkPolicy shop/web ingress[0]".into()),
        http: None,
        dns: None,
        tls: None,
        kafka: None,
    }
}

pub struct Rollout {
    pub spec: PolicyRolloutSpec,
    pub status: Option<PolicyRolloutStatus>,
    pub namespace: String,
    /// PolicyDecisions waiting for the next step, which consumes them.
    pub decisions: Vec<DecisionRequest>,
    /// Policies other rollouts hold.
    pub claims: Vec<Claim>,
    /// Nodes whose Node is not Ready.
    pub not_ready: Vec<NotReadyNode>,
}

impl Rollout {
    pub fn new() -> Self {
        Self {
            spec: spec(),
            status: None,
            namespace: NS.into(),
            decisions: Vec::new(),
            claims: Vec::new(),
            not_ready: Vec::new(),
        }
    }

    /// `user` creates a PolicyDecision about revision `n`; the next step reads it.
    pub fn decide_as(&mut self, user: &str, action: DecisionAction, n: &str) {
        let name = format!("web-{}-{}", format!("{action:?}").to_lowercase(), self.decisions.len());
        self.decisions.push(DecisionRequest { name, revision: id(n), action, user: user.into() });
    }

    pub fn decide(&self, source: &SourceObservation, reports: &[PolicyAuditReportSpec], minutes: i64) -> Decision {
        let ctx = Context {
            namespace: &self.namespace,
            controller_namespace: CONTROLLER_NS,
            generation: Some(1),
            now: t(minutes),
        };
        let reports: Vec<&PolicyAuditReportSpec> = reports.iter().collect();
        let observed = Observed {
            source,
            reports: &reports,
            not_ready: &self.not_ready,
            decisions: &self.decisions,
            claims: &self.claims,
        };
        engine::reconcile(&self.spec, self.status.as_ref(), &observed, &ctx)
    }

    /// Reconciles and keeps the new status.
    pub fn step(&mut self, source: &SourceObservation, reports: &[PolicyAuditReportSpec], minutes: i64) -> Vec<Action> {
        let decision = self.decide(source, reports, minutes);
        self.status = Some(decision.status);
        let consumed: Vec<&String> = decision
            .actions
            .iter()
            .filter_map(|a| if let Action::ConsumeDecision(n) = a { Some(n) } else { None })
            .collect();
        self.decisions.retain(|d| !consumed.contains(&&d.name));
        decision.actions
    }

    pub fn st(&self) -> &PolicyRolloutStatus {
        self.status.as_ref().expect("reconciled")
    }

    pub fn phase(&self) -> Phase {
        self.st().phase
    }

    pub fn enforced(&self) -> Option<&str> {
        self.status.as_ref()?.enforced_revision.as_ref().map(|r| r.id.as_str())
    }

    pub fn candidate(&self) -> Option<&str> {
        self.st().candidate_revision.as_ref().map(|r| r.id.as_str())
    }

    pub fn condition(&self, type_: &str) -> Option<(String, String, String)> {
        self.st()
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    }

    /// Condition `type_` is there with `reason`, and its message says `part`.
    pub fn assert_condition(&self, type_: &str, reason: &str, part: &str) {
        let (_, actual, message) = self.condition(type_).unwrap_or_else(|| panic!("no condition {type_}"));
        assert_eq!(actual, reason, "{type_}: {message}");
        assert!(message.contains(part), "{type_}: {message}");
    }

    /// Drives revision `n` from first sight to enforced on nodes a and b, at minute `start`.
    pub fn promote(&mut self, n: &str, start: i64) {
        let before = self.enforced().map(|s| s.trim_start_matches("web-").to_string());
        let base: Vec<&str> = before.iter().map(String::as_str).chain([n]).collect();
        let src = rev(n);
        self.step(&src, &[], start);
        let reports = |enf: Option<&str>| {
            ["a", "b"].map(|x| {
                let r = node(x).loaded(&base).audit(n, 5, vec![]);
                match enf {
                    Some(e) => r.enforcing(e),
                    None => r,
                }
            })
        };
        let old = before.as_deref();
        let actions = self.step(&src, &reports(old), start + 10);
        assert!(actions.iter().any(|a| matches!(a, Action::Flip { .. })), "{actions:?} {:?}", self.st());
        self.step(&src, &reports(Some(n)), start + 11);
        assert_eq!(self.phase(), Phase::Enforced);
        assert_eq!(self.enforced(), Some(id(n).as_str()));
    }
}

pub fn has_flip(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Flip { .. }))
}

pub fn events(actions: &[Action]) -> Vec<&'static str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(Event { reason, .. }) => Some(*reason),
            _ => None,
        })
        .collect()
}
