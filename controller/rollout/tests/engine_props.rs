//! Invariants of the rollout engine over random runs: random commits (valid, invalid, unsigned,
//! out of scope, unreachable), random node agents that load and flip late, random traffic, drops
//! and people's decisions (promote, reaudit, abort).

mod common;

use common::*;
use palisade_rollout::crd::*;
use palisade_rollout::engine::{
    self, Action, Context, Decision, DecisionRequest, Observed, PolicyRef, SourceObservation,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Step {
    source: u8,
    commit: u8,
    minutes: i64,
    /// Per node: does its agent catch up with the status this step?
    sync: [bool; 2],
    new_denies: [u8; 2],
    flows: [u8; 2],
    drops: [u16; 2],
    /// A PolicyDecision about the candidate this step: 0 Promote, 1 Reaudit, 2 Abort, else none.
    decide: u8,
}

fn step() -> impl Strategy<Value = Step> {
    (0u8..8, 0u8..2, 0i64..8, any::<[bool; 2]>(), any::<[u8; 2]>(), any::<[u8; 2]>(), any::<[u16; 2]>(), 0u8..12)
        .prop_map(|(source, commit, minutes, sync, new_denies, flows, drops, decide)| Step {
            source,
            commit,
            minutes,
            sync,
            new_denies: new_denies.map(|d| d % 3),
            flows: flows.map(|f| f % 4),
            drops: drops.map(|d| d % 300),
            decide,
        })
}

fn spec_variant() -> impl Strategy<Value = PolicyRolloutSpec> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), 0u32..2, 0u32..3).prop_map(
        |(manual, fast, verify, expect, max_new_denies, min_flows)| {
            let mut s = spec();
            s.promotion = if manual { Promotion::Manual } else { Promotion::Auto };
            s.rollback.fast_track_reverts = fast;
            s.audit.max_new_denies = max_new_denies;
            s.audit.min_flows_per_endpoint = min_flows;
            if expect {
                s.audit.expected_denies = vec![FlowSelector { port: Some(8080), ..Default::default() }];
            }
            if verify {
                s.source.verify = Some(Verify {
                    mode: VerifyMode::Head,
                    provider: VerifyProvider::Ssh,
                    keys_ref: LocalObjectReference { name: "keys".into() },
                });
            }
            s
        },
    )
}

/// Revisions web-1..web-4 are good; web-u is unsigned (bad when verify is set) and web-x carries a
/// cluster-wide policy.
fn source(s: &Step) -> SourceObservation {
    let c = ["a", "b"][s.commit as usize];
    match s.source {
        0..=3 => SourceObservation::Revision(rev_at(&(s.source + 1).to_string(), &format!("{}{c}", s.source + 1))),
        4 => SourceObservation::Invalid {
            commit: "f".repeat(40),
            display: "main@fff".into(),
            errors: vec!["bad".into()],
        },
        5 => {
            let mut r = rev_at("u", "u");
            r.verified = false;
            SourceObservation::Revision(r)
        }
        6 => {
            let mut r = rev_at("x", "x");
            r.policies.push(PolicyRef {
                kind: "CiliumClusterwideNetworkPolicy".into(),
                name: "all".into(),
                namespace: None,
            });
            SourceObservation::Revision(r)
        }
        _ => SourceObservation::Unreachable { message: "timeout".into() },
    }
}

/// What each node reports, given what its agent last synced from the status.
fn reports(agents: &[Agent; 2], s: &Step) -> Vec<PolicyAuditReportSpec> {
    (0..2)
        .map(|i| {
            let (loaded, enforcing, candidate, generation) = &agents[i];
            let mut r = node(["a", "b"][i]);
            r.audit_generation = *generation;
            r.loaded_revisions = loaded.clone();
            r.enforced_revision = enforcing.clone();
            r.candidate_revision = candidate.clone();
            r.totals.drops_per_minute = u64::from(s.drops[i]);
            if candidate.is_some() {
                let denies: Vec<AuditFlow> =
                    (0..s.new_denies[i]).map(|p| denied("legacy", 8080 + u16::from(p))).collect();
                r.totals.new_denies = denies.len() as u64;
                r.totals.observed_flows = u64::from(s.flows[i]);
                r.flows = denies;
                r.endpoints = vec![EndpointTraffic {
                    namespace: NS.into(),
                    pod: "web".into(),
                    workload: None,
                    flows: u64::from(s.flows[i]),
                }];
            }
            r
        })
        .collect()
}

/// What a node's agent last synced from the status: loaded revisions, the enforced one, the
/// candidate, and the audit generation its evidence is for.
type Agent = (Vec<String>, Option<String>, Option<String>, u64);

fn reconcile(
    spec: &PolicyRolloutSpec,
    status: Option<&PolicyRolloutStatus>,
    src: &SourceObservation,
    reports: &[PolicyAuditReportSpec],
    decisions: &[DecisionRequest],
    minute: i64,
) -> Decision {
    let ctx = Context { namespace: NS, controller_namespace: CONTROLLER_NS, generation: Some(3), now: t(minute) };
    let reports: Vec<&PolicyAuditReportSpec> = reports.iter().collect();
    let observed = Observed { source: src, reports: &reports, not_ready: &[], decisions, claims: &[] };
    engine::reconcile(spec, status, &observed, &ctx)
}

/// Distinct unexpected new denies: a flow several nodes list counts once. Every node lists all
/// its denies here, and they differ only by port.
fn unexpected_denies(spec: &PolicyRolloutSpec, reports: &[PolicyAuditReportSpec], id: &str) -> u64 {
    let mut ports: Vec<u16> = reports
        .iter()
        .filter(|r| r.candidate_revision.as_deref() == Some(id))
        .flat_map(|r| r.flows.iter())
        .filter(|f| !spec.audit.expected_denies.iter().any(|s| engine::matches(s, f)))
        .map(|f| f.port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports.len() as u64
}

fn changes_something(a: &Action) -> bool {
    matches!(a, Action::StageCandidate(_) | Action::Flip { .. } | Action::RollBack { .. } | Action::Event(_))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_over_random_runs(spec in spec_variant(), steps in prop::collection::vec(step(), 1..40)) {
        let mut status: Option<PolicyRolloutStatus> = None;
        let mut agents: [Agent; 2] = Default::default();
        let mut minute = 0;
        for s in &steps {
            minute += s.minutes;
            let src = source(s);
            let reports = reports(&agents, s);
            let action = [DecisionAction::Promote, DecisionAction::Reaudit, DecisionAction::Abort].get(usize::from(s.decide)).copied();
            let candidate = status.as_ref().and_then(|st| st.candidate_revision.as_ref());
            let decisions: Vec<DecisionRequest> = action.zip(candidate).map(|(action, c)| DecisionRequest {
                name: format!("d{minute}"), revision: c.id.clone(), action, user: "alice".into(),
            }).into_iter().collect();
            let before = status.as_ref().and_then(|st| st.enforced_revision.clone()).map(|r| r.id);
            let d = reconcile(&spec, status.as_ref(), &src, &reports, &decisions, minute);
            let after = d.status.enforced_revision.as_ref().map(|r| r.id.clone());

            // Never enforce an unverified or out-of-scope revision (invalid ones have no id at all).
            prop_assert!(after.as_deref() != Some("web-x"), "enforced an out-of-scope revision");
            if spec.source.verify.is_some() {
                prop_assert!(after.as_deref() != Some("web-u"), "enforced an unsigned revision");
            }

            // The enforced revision moves only by a promotion or a rollback, and each says where to.
            let moved_to = d.actions.iter().find_map(|a| match a {
                Action::Flip { to, .. } | Action::RollBack { to, .. } => Some(to.id.clone()),
                _ => None,
            });
            if before != after {
                prop_assert_eq!(moved_to.as_ref(), after.as_ref(), "{:?}", d.actions);
            } else {
                prop_assert!(moved_to.is_none(), "{:?}", d.actions);
            }

            // A promotion that went through the audit passed its gates and the barrier.
            for a in &d.actions {
                if let Action::Flip { to, fast_track } = a {
                    prop_assert!(reports.iter().all(|r| r.loaded_revisions.contains(&to.id)), "barrier");
                    if !fast_track {
                        prop_assert!(unexpected_denies(&spec, &reports, &to.id) <= u64::from(spec.audit.max_new_denies));
                        if spec.promotion == Promotion::Manual {
                            let approved = status.as_ref().and_then(|s| s.approval.as_ref()).is_some_and(|a| a.revision == to.id)
                                || decisions.iter().any(|d| d.action == DecisionAction::Promote && d.revision == to.id);
                            prop_assert!(approved, "promoted without an approval");
                        }
                        // Blocked is sticky: only a new commit or a reaudit reopens the audit,
                        // and evidence from before a restart never counts.
                        let blocked = status.as_ref().and_then(|s| s.blocked.as_ref()).is_some_and(|b| b.revision == to.id);
                        prop_assert!(!blocked, "a Blocked candidate was promoted: {:?}", d.status.history);
                    }
                }
            }

            // Reconciling again with the same inputs changes nothing and asks for nothing.
            let again = reconcile(&spec, Some(&d.status), &src, &reports, &[], minute);
            prop_assert_eq!(&again.status, &d.status);
            prop_assert!(!again.actions.iter().any(changes_something), "{:?}", again.actions);

            // A restarted controller reads the status back from JSON and decides the same.
            let stored = status.as_ref().map(|st| serde_json::from_str::<PolicyRolloutStatus>(&serde_json::to_string(st).unwrap()).unwrap());
            let restarted = reconcile(&spec, stored.as_ref(), &src, &reports, &decisions, minute);
            prop_assert_eq!(&restarted, &d);

            // Agents that catch up load the candidate and enforce what the status says.
            for (i, agent) in agents.iter_mut().enumerate() {
                if s.sync[i] {
                    let cand = d.status.candidate_revision.as_ref().map(|r| r.id.clone());
                    agent.1 = after.clone();
                    agent.0 = after.iter().chain(cand.iter()).cloned().chain(d.status.previous_revision.as_ref().map(|r| r.id.clone())).collect();
                    agent.2 = cand;
                    agent.3 = d.status.audit_generation;
                }
            }
            status = Some(d.status);
        }
    }
}
