//! One test per transition of the rollout engine.

mod common;

use std::collections::BTreeMap;

use common::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use palisade_rollout::crd::*;
use palisade_rollout::engine::{
    Action, Claim, HISTORY_LIMIT, NotReadyNode, ObservedRevision, PolicyRef, SourceObservation,
};

fn loaded_audit(n: &str, flows: u64, denies: Vec<AuditFlow>) -> Vec<PolicyAuditReportSpec> {
    vec![node("a").loaded(&[n]).audit(n, flows, denies.clone()), node("b").loaded(&[n]).audit(n, flows, vec![])]
}

#[test]
fn first_sync_stages_the_revision_and_starts_the_audit() {
    let mut r = Rollout::new();
    let actions = r.step(&rev("1"), &[], 0);
    assert_eq!(r.phase(), Phase::Auditing);
    assert_eq!(r.candidate(), Some("web-1"));
    assert_eq!(r.enforced(), None);
    assert_eq!(r.st().audit_started_at, Some(Time(t(0))));
    assert!(actions.iter().any(|a| matches!(a, Action::StageCandidate(c) if c.id == "web-1" && c.display == "main@1")));
    assert_eq!(events(&actions), ["AuditStarted"]);
    let (ready, reason, message) = r.condition("Ready").unwrap();
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "WaitingForNodes"), "{message}");
    assert_eq!(r.condition("Reconciling").unwrap().0, "True");
    assert_eq!(r.st().observed_generation, Some(1));
}

#[test]
fn nothing_happens_before_the_first_fetch() {
    let mut r = Rollout::new();
    let actions = r.step(&SourceObservation::Unreachable { message: "connection refused".into() }, &[], 0);
    assert_eq!(r.phase(), Phase::Pending);
    assert!(!actions.iter().any(|a| matches!(a, Action::StageCandidate(_) | Action::Flip { .. })));
    r.assert_condition("Ready", "GitOperationFailed", "connection refused");
}

#[test]
fn every_node_must_load_the_candidate_before_the_audit_can_pass() {
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    let reports = [node("a").loaded(&["1"]).audit("1", 5, vec![]), node("b")];
    let actions = r.step(&rev("1"), &reports, 30);
    assert_eq!(r.phase(), Phase::Auditing);
    assert!(!has_flip(&actions));
    r.assert_condition("Ready", "WaitingForNodes", "1 of 2 nodes have loaded main@1 (waiting for b)");
}

#[test]
fn the_audit_lasts_at_least_min_duration() {
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    let actions = r.step(&rev("1"), &loaded_audit("1", 5, vec![]), 4);
    assert_eq!(r.phase(), Phase::Auditing);
    assert!(actions.contains(&Action::RequeueAfter(std::time::Duration::from_secs(360))));
    assert!(r.condition("Auditing").unwrap().2.contains("6m0s left of spec.audit.minDuration"));
    assert_eq!(r.st().observed_flows, 10);
}

#[test]
fn a_passing_audit_flips_every_node_and_is_ready_only_when_all_confirm() {
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    let actions =
        r.step(&rev("1"), &loaded_audit("1", 5, vec![]).into_iter().map(|x| x.drops(3)).collect::<Vec<_>>(), 10);
    assert_eq!(r.phase(), Phase::Promoting);
    assert!(actions.iter().any(|a| matches!(a, Action::Flip { to, fast_track: false } if to.id == "web-1")));
    assert_eq!(r.enforced(), Some("web-1"), "the status tells the agents to flip");
    assert_eq!(r.st().baseline_drops_per_minute, Some(6));
    assert_eq!(r.condition("Promoted").unwrap().1, "Flipping");

    let half = [node("a").loaded(&["1"]).enforcing("1"), node("b").loaded(&["1"])];
    let actions = r.step(&rev("1"), &half, 11);
    assert!(!has_flip(&actions), "the flip is asked once");
    assert_eq!(r.phase(), Phase::Promoting);
    assert_eq!(r.condition("Ready").unwrap().0, "False");
    assert!(r.condition("Ready").unwrap().2.contains("1 of 2 nodes enforce main@1 (waiting for b)"));

    let all = [node("a").loaded(&["1"]).enforcing("1"), node("b").loaded(&["1"]).enforcing("1")];
    let actions = r.step(&rev("1"), &all, 12);
    assert_eq!(r.phase(), Phase::Enforced);
    assert_eq!(r.candidate(), None);
    assert_eq!(events(&actions), ["Promoted"]);
    assert_eq!(
        r.condition("Ready").unwrap(),
        ("True".into(), "Enforced".into(), "main@1 is enforced on all 2 nodes".into())
    );
    assert_eq!(r.condition("Reconciling"), None);
    let h = &r.st().history[0];
    assert_eq!((h.outcome, h.enforced_at.clone()), (Outcome::Promoted, Some(Time(t(12)))));
    assert_eq!(r.st().promoted_at, Some(Time(t(12))));
}

#[test]
fn new_denies_above_the_gate_block_promotion_at_once() {
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    let actions = r.step(&rev("1"), &loaded_audit("1", 5, vec![denied("legacy", 8080)]), 2);
    assert_eq!(r.phase(), Phase::Blocked);
    assert!(!has_flip(&actions));
    assert_eq!(events(&actions), ["NewDeniesAboveLimit"]);
    assert_eq!((r.st().new_denies, r.st().unexpected_new_denies), (1, 1));
    let (status, reason, message) = r.condition("PromotionBlocked").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "NewDeniesAboveLimit"));
    assert!(
        message.contains(
            "shop/web <- shop/legacy TCP/8080 ingress (7x on 1 node, by CiliumNetworkPolicy shop/web ingress[0])"
        ),
        "{message}"
    );
    assert_eq!(r.condition("Stalled").unwrap().0, "True");
    // Still blocked later: time alone does not make denies acceptable, and no second event.
    let actions = r.step(&rev("1"), &loaded_audit("1", 5, vec![denied("legacy", 8080)]), 30);
    assert_eq!(r.phase(), Phase::Blocked);
    assert!(events(&actions).is_empty());
}

#[test]
fn expected_denies_do_not_block_but_denies_past_the_report_cap_do() {
    let mut r = Rollout::new();
    r.spec.audit.expected_denies = vec![FlowSelector {
        peer_labels: Some([("app".into(), "legacy".into())].into()),
        port: Some(8080),
        ..Default::default()
    }];
    r.step(&rev("1"), &[], 0);
    let actions = r.step(&rev("1"), &loaded_audit("1", 5, vec![denied("legacy", 8080)]), 10);
    assert!(has_flip(&actions), "{:?}", r.st().conditions);
    assert_eq!((r.st().new_denies, r.st().unexpected_new_denies), (1, 0));

    let mut r = Rollout::new();
    r.spec.audit.expected_denies = vec![FlowSelector { port: Some(8080), ..Default::default() }];
    r.step(&rev("1"), &[], 0);
    let mut reports = loaded_audit("1", 5, vec![denied("legacy", 8080)]);
    reports[0].totals.new_denies = 3; // two more than the capped list shows
    reports[0].totals.truncated_flows = 2;
    r.step(&rev("1"), &reports, 10);
    assert_eq!(r.phase(), Phase::Blocked);
    assert_eq!(r.st().unexpected_new_denies, 2);
}

#[test]
fn a_selector_must_match_every_field_it_sets() {
    use palisade_rollout::engine::matches;
    let flow = denied("legacy", 8080);
    let sel = |f: fn(&mut FlowSelector)| {
        let mut s = FlowSelector::default();
        f(&mut s);
        matches(&s, &flow)
    };
    assert!(sel(|s| s.port = Some(8080)));
    assert!(!sel(|s| s.port = Some(80)));
    assert!(sel(|s| s.direction = Some(Direction::Ingress)));
    assert!(!sel(|s| s.direction = Some(Direction::Egress)));
    assert!(!sel(|s| s.protocol = Some(Protocol::Udp)));
    assert!(sel(|s| s.namespace = Some(NS.into())));
    assert!(!sel(|s| s.peer_namespace = Some("other".into())));
    assert!(sel(|s| s.subject_labels = Some([("app".into(), "web".into())].into())));
    assert!(!sel(|s| s.peer_labels = Some([("app".into(), "legacy".into()), ("tier".into(), "x".into())].into())));
}

#[test]
fn too_little_traffic_is_inconclusive_never_a_pass() {
    let mut r = Rollout::new();
    r.spec.audit.min_flows_per_endpoint = 3;
    r.step(&rev("1"), &[], 0);
    let actions = r.step(&rev("1"), &loaded_audit("1", 2, vec![]), 10);
    assert_eq!(r.phase(), Phase::Inconclusive);
    assert!(!has_flip(&actions));
    r.assert_condition("PromotionBlocked", "InsufficientTraffic", "shop/web-a (2 flows), shop/web-b (2 flows)");
    assert_eq!(r.condition("Reconciling").unwrap().1, "InsufficientTraffic", "it waits for traffic, it is not stuck");
    // Traffic arrives: the same audit passes.
    let actions = r.step(&rev("1"), &loaded_audit("1", 3, vec![]), 20);
    assert!(has_flip(&actions));
}

#[test]
fn manual_promotion_waits_for_a_decision_about_this_revision() {
    let mut r = Rollout::new();
    r.spec.promotion = Promotion::Manual;
    r.step(&rev("1"), &[], 0);
    let reports = loaded_audit("1", 5, vec![]);
    r.step(&rev("1"), &reports, 10);
    assert_eq!(r.phase(), Phase::Auditing);
    assert_eq!(r.condition("PromotionBlocked").unwrap().1, "AwaitingApproval");

    r.decide_as("alice@example.com", DecisionAction::Promote, "0");
    let actions = r.step(&rev("1"), &reports, 16);
    assert!(!has_flip(&actions), "a decision is for one revision only");
    assert!(actions.contains(&Action::ConsumeDecision("web-promote-0".into())), "an ignored decision is consumed too");
    r.assert_condition("Decided", "Ignored", "it names revision web-0, but the candidate is main@1 (web-1)");
    assert!(r.decisions.is_empty());

    r.decide_as("alice@example.com", DecisionAction::Promote, "1");
    assert!(has_flip(&r.step(&rev("1"), &reports, 17)));
    assert_eq!(r.st().history[0].outcome, Outcome::Approved);
    assert_eq!(r.st().history[0].decided_by.as_deref(), Some("alice@example.com"));
    let done = [node("a").loaded(&["1"]).enforcing("1"), node("b").loaded(&["1"]).enforcing("1")];
    r.step(&rev("1"), &done, 18);
    assert_eq!(r.phase(), Phase::Enforced);
    assert_eq!(r.st().history[0].approved_by.as_deref(), Some("alice@example.com"));
    assert_eq!(r.st().approval, None);
}

#[test]
fn an_approval_never_overrides_a_failed_gate() {
    let mut r = Rollout::new();
    r.spec.promotion = Promotion::Manual;
    r.step(&rev("1"), &[], 0);
    r.decide_as("bob", DecisionAction::Promote, "1");
    r.step(&rev("1"), &[], 1);
    assert_eq!(r.st().approval.as_ref().map(|a| a.approved_by.as_str()), Some("bob"));
    let actions = r.step(&rev("1"), &loaded_audit("1", 5, vec![denied("legacy", 8080)]), 20);
    assert_eq!(r.phase(), Phase::Blocked);
    assert!(!has_flip(&actions));
}

#[test]
fn an_abort_drops_the_candidate_until_a_new_commit_arrives() {
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    assert!(has_flip(&r.step(&rev("1"), &loaded_audit("1", 5, vec![]), 10)));
    let done = [node("a").loaded(&["1"]).enforcing("1"), node("b").loaded(&["1"]).enforcing("1")];
    r.step(&rev("1"), &done, 11);
    assert_eq!(r.phase(), Phase::Enforced);
    r.step(&rev("2"), &done, 11);
    assert_eq!(r.candidate(), Some("web-2"));

    r.decide_as("alice", DecisionAction::Abort, "2");
    let actions = r.step(&rev("2"), &done, 13);
    assert_eq!(r.candidate(), None);
    assert_eq!(r.phase(), Phase::Enforced);
    assert_eq!(r.st().enforced_revision.as_ref().unwrap().id, "web-1");
    assert_eq!(events(&actions), ["Aborted"]);
    let h = &r.st().history[0];
    assert_eq!((h.outcome, h.decided_by.as_deref()), (Outcome::Aborted, Some("alice")));
    let actions = r.step(&rev("2"), &done, 14);
    assert!(actions.iter().all(|a| !matches!(a, Action::StageCandidate(_))), "the aborted commit stays out");
    assert_eq!(r.candidate(), None);

    // A new commit, even with the aborted content, is audited again.
    let again = SourceObservation::Revision(rev_at("2", "e"));
    r.step(&again, &done, 15);
    assert_eq!(r.candidate(), Some("web-2"));
    assert_eq!(r.phase(), Phase::Auditing);
}

#[test]
fn a_blocked_candidate_stays_blocked_when_its_evidence_is_wiped() {
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    r.step(&rev("1"), &loaded_audit("1", 5, vec![denied("legacy", 8080)]), 2);
    assert_eq!(r.phase(), Phase::Blocked);
    // Another rollout's candidate reset the node's flows, an agent restarted, the LRU evicted
    // the flow: the reports now show clean traffic, long after minDuration.
    let wiped = loaded_audit("1", 50, vec![]);
    for minute in [20, 40, 60] {
        let actions = r.step(&rev("1"), &wiped, minute);
        assert_eq!(r.phase(), Phase::Blocked, "minute {minute}");
        assert!(!has_flip(&actions));
    }
    r.assert_condition("PromotionBlocked", "NewDeniesAboveLimit", "shop/web <- shop/legacy TCP/8080");

    // A reaudit discards the evidence: the nodes restart theirs, and clean evidence then passes.
    r.decide_as("alice", DecisionAction::Reaudit, "1");
    r.step(&rev("1"), &wiped, 61);
    assert_eq!(r.phase(), Phase::Auditing);
    assert_eq!(r.st().audit_generation, 1);
    assert_eq!(r.st().history[0].outcome, Outcome::AuditRestarted);
    r.assert_condition("Auditing", "WaitingForNodes", "waiting for a, b to restart their evidence");
    let fresh: Vec<_> = wiped.into_iter().map(|x| x.generation(1).started(62)).collect();
    assert!(!has_flip(&r.step(&rev("1"), &fresh, 65)), "the new audit lasts minDuration from the restart");
    assert!(has_flip(&r.step(&rev("1"), &fresh, 72)));
}

#[test]
fn a_new_commit_of_blocked_content_audits_it_again() {
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    r.step(&rev("1"), &loaded_audit("1", 5, vec![denied("legacy", 8080)]), 2);
    assert_eq!(r.phase(), Phase::Blocked);
    r.step(&SourceObservation::Revision(rev_at("1", "f")), &loaded_audit("1", 5, vec![]), 3);
    assert_eq!(r.phase(), Phase::Auditing);
    assert_eq!((r.st().audit_generation, r.st().blocked.clone()), (1, None));
}

#[test]
fn each_nodes_clock_restarts_with_its_evidence() {
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    // Node b's agent restarted at minute 8: its evidence covers 4 minutes at minute 12.
    let reports = [
        node("a").loaded(&["1"]).audit("1", 5, vec![]).started(0),
        node("b").loaded(&["1"]).audit("1", 5, vec![]).started(8),
    ];
    let actions = r.step(&rev("1"), &reports, 12);
    assert!(!has_flip(&actions));
    assert!(r.condition("Auditing").unwrap().2.contains("6m0s left of spec.audit.minDuration"), "{:?}", r.st());
    assert!(has_flip(&r.step(&rev("1"), &reports, 18)));
}

#[test]
fn changing_a_gate_during_the_audit_restarts_it() {
    let mut r = Rollout::new();
    r.spec.promotion = Promotion::Manual;
    r.step(&rev("1"), &[], 0);
    r.step(&rev("1"), &loaded_audit("1", 5, vec![denied("legacy", 8080)]), 2);
    assert_eq!(r.phase(), Phase::Blocked);
    r.spec.audit.max_new_denies = 5;
    r.spec.promotion = Promotion::Auto;
    r.step(&rev("1"), &loaded_audit("1", 5, vec![denied("legacy", 8080)]), 3);
    assert_eq!(r.phase(), Phase::Auditing);
    let h = &r.st().history[0];
    assert_eq!(h.outcome, Outcome::AuditRestarted);
    assert!(h.message.contains("spec.audit.maxNewDenies, spec.promotion changed during the audit"), "{}", h.message);
    // Evidence from before the change does not count; the new audit's does, from its start.
    let fresh: Vec<_> =
        loaded_audit("1", 5, vec![denied("legacy", 8080)]).into_iter().map(|x| x.generation(1).started(3)).collect();
    assert!(!has_flip(&r.step(&rev("1"), &fresh, 10)));
    assert!(has_flip(&r.step(&rev("1"), &fresh, 13)));
}

#[test]
fn a_policy_another_rollout_holds_is_a_conflict() {
    let mut r = Rollout::new();
    r.claims = vec![Claim {
        policy: PolicyRef { kind: "CiliumNetworkPolicy".into(), name: "web".into(), namespace: Some(NS.into()) },
        rollout: "shop/other".into(),
        revision: "main@abc1234".into(),
    }];
    let actions = r.step(&rev("1"), &[], 0);
    assert!(!actions.iter().any(|a| matches!(a, Action::StageCandidate(_))));
    assert_eq!(r.phase(), Phase::Failed);
    let attempt = r.st().last_attempted_revision.clone().unwrap();
    assert_eq!(attempt.reason.as_deref(), Some("Conflict"));
    assert!(
        attempt.errors[0]
            .contains("CiliumNetworkPolicy shop/web is already carried by PolicyRollout shop/other (main@abc1234)")
    );
    r.assert_condition("Ready", "Conflict", "shop/other");
}

#[test]
fn every_rolled_back_revision_stays_out_however_many() {
    let mut r = Rollout::new();
    r.promote("0", 0);
    let spike = |n: &str| [node("a").loaded(&[n]).enforcing(n).drops(500), node("b").loaded(&[n]).enforcing(n)];
    for i in 1..=11 {
        let n = i.to_string();
        r.promote(&n, i * 100);
        r.step(&rev(&n), &spike(&n), i * 100 + 12);
        assert_eq!(r.phase(), Phase::RolledBack, "revision {n}");
        // Back to a good state before the next one: the previous revision is enforced again.
        r.status.as_mut().unwrap().phase = Phase::Enforced;
    }
    assert_eq!(r.st().rolled_back_revisions.len(), 11);
    // The first one rolled back, ten rollbacks ago, is still refused without a new commit.
    let actions = r.step(&rev("1"), &[], 2000);
    assert!(!actions.iter().any(|a| matches!(a, Action::StageCandidate(_))), "{actions:?}");
    assert_eq!(r.phase(), Phase::RolledBack);
}

#[test]
fn a_new_commit_supersedes_the_candidate_and_restarts_the_audit() {
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    r.step(&rev("1"), &loaded_audit("1", 5, vec![]), 8);
    let actions = r.step(&rev("2"), &loaded_audit("1", 5, vec![]), 9);
    assert_eq!(r.candidate(), Some("web-2"));
    assert_eq!(r.st().audit_started_at, Some(Time(t(9))));
    assert_eq!(events(&actions), ["Superseded", "AuditStarted"]);
    assert!(actions.iter().any(|a| matches!(a, Action::StageCandidate(c) if c.id == "web-2")));
    assert_eq!(r.st().history[0].outcome, Outcome::Superseded);
    assert_eq!(r.st().history[0].revision, "web-1");
    // Reports about the old candidate do not count for the new one.
    assert_eq!(r.st().observed_flows, 0);
    assert!(!has_flip(&r.step(&rev("2"), &loaded_audit("2", 5, vec![]), 18)), "the audit clock restarted");
    assert!(has_flip(&r.step(&rev("2"), &loaded_audit("2", 5, vec![]), 19)));
}

#[test]
fn a_new_commit_with_the_same_content_keeps_the_audit() {
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    let same = SourceObservation::Revision(rev_at("1", "f"));
    let actions = r.step(&same, &loaded_audit("1", 5, vec![]), 10);
    assert!(has_flip(&actions));
    assert_eq!(r.st().candidate_revision.as_ref().unwrap().display, "main@f");
}

#[test]
fn an_invalid_commit_leaves_the_running_audit_and_the_enforced_revision_alone() {
    let mut r = Rollout::new();
    r.promote("1", 0);
    r.step(&rev("2"), &[], 20);
    let invalid = SourceObservation::Invalid {
        commit: "9".repeat(40),
        display: "main@9999999".into(),
        errors: vec!["policies/web.yaml:12: spec.ingress[0].toPorts[0].ports[0].port: \"80a\" is not a port".into()],
    };
    let actions = r.step(&invalid, &[], 21);
    assert_eq!(r.phase(), Phase::Auditing);
    assert_eq!((r.enforced(), r.candidate()), (Some("web-1"), Some("web-2")));
    assert_eq!(events(&actions), ["RevisionFailed"]);
    let attempt = r.st().last_attempted_revision.as_ref().unwrap();
    assert_eq!(attempt.reason.as_deref(), Some("ValidationFailed"));
    assert!(attempt.errors[0].contains("web.yaml:12"));
    assert_eq!(r.st().history[0].outcome, Outcome::Failed);
    let history = r.st().history.len();
    assert!(events(&r.step(&invalid, &[], 22)).is_empty(), "recorded once");
    assert_eq!(r.st().history.len(), history);
    // The audit goes on and can still promote.
    let reports =
        [node("a").loaded(&["1", "2"]).audit("2", 5, vec![]), node("b").loaded(&["1", "2"]).audit("2", 5, vec![])];
    assert!(has_flip(&r.step(&invalid, &reports, 30)));
}

#[test]
fn an_invalid_commit_with_nothing_under_audit_is_failed_and_stalled() {
    let mut r = Rollout::new();
    r.promote("1", 0);
    let invalid = SourceObservation::Invalid {
        commit: "9".repeat(40),
        display: "main@9999999".into(),
        errors: vec!["bad".into()],
    };
    r.step(&invalid, &[node("a").enforcing("1"), node("b").enforcing("1")], 20);
    assert_eq!(r.phase(), Phase::Failed);
    assert_eq!(r.enforced(), Some("web-1"));
    let (ready, reason, message) = r.condition("Ready").unwrap();
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "ValidationFailed"));
    assert!(message.contains("main@9999999: bad; fix it and push a new commit; still enforcing main@1"), "{message}");
    assert_eq!(r.condition("Stalled").unwrap().0, "True");
    // A fix that goes back to the enforced content makes it Ready again.
    r.step(&SourceObservation::Revision(rev_at("1", "a")), &[node("a").enforcing("1"), node("b").enforcing("1")], 21);
    assert_eq!(r.phase(), Phase::Enforced);
    assert_eq!(r.condition("Ready").unwrap().0, "True");
}

#[test]
fn unverified_commits_are_never_staged() {
    let mut r = Rollout::new();
    r.spec.source.verify = Some(Verify {
        mode: VerifyMode::Head,
        provider: VerifyProvider::Openpgp,
        keys_ref: LocalObjectReference { name: "keys".into() },
    });
    let mut unsigned = rev_at("1", "1");
    unsigned.verified = false;
    let actions = r.step(&SourceObservation::Revision(unsigned), &[], 0);
    assert_eq!(r.phase(), Phase::Failed);
    assert!(!actions.iter().any(|a| matches!(a, Action::StageCandidate(_))));
    assert_eq!(r.condition("SourceVerified").unwrap().1, "VerificationFailed");

    let bad = SourceObservation::Unverified {
        commit: "2".repeat(40),
        display: "main@2".into(),
        reason: "no signature".into(),
    };
    r.step(&bad, &[], 1);
    assert_eq!(r.st().last_attempted_revision.as_ref().unwrap().reason.as_deref(), Some("VerificationFailed"));
    r.step(&rev("3"), &[], 2);
    assert_eq!(r.phase(), Phase::Auditing);
    assert_eq!(r.condition("SourceVerified").unwrap().0, "True");
}

#[test]
fn the_scope_rule_keeps_tenants_to_their_namespace() {
    let with = |policies: Vec<PolicyRef>| {
        let mut rev = rev_at("1", "1");
        rev.policies = policies;
        SourceObservation::Revision(rev)
    };
    let ccnp = PolicyRef { kind: "CiliumClusterwideNetworkPolicy".into(), name: "dns".into(), namespace: None };
    let other = PolicyRef { kind: "CiliumNetworkPolicy".into(), name: "db".into(), namespace: Some("billing".into()) };

    let mut r = Rollout::new();
    r.step(&with(vec![ccnp.clone(), other.clone()]), &[], 0);
    assert_eq!(r.phase(), Phase::Failed);
    let attempt = r.st().last_attempted_revision.clone().unwrap();
    assert_eq!(attempt.reason.as_deref(), Some("ScopeViolation"));
    assert_eq!(
        attempt.errors,
        [
            "CiliumClusterwideNetworkPolicy dns is cluster-wide, but a rollout in shop (scope Namespace) may only carry namespaced policies",
            "CiliumNetworkPolicy billing/db is for namespace billing, but a rollout in shop (scope Namespace) may only carry policies for its own namespace",
        ]
    );

    r.spec.scope = Scope::Cluster;
    r.step(&with(vec![ccnp.clone()]), &[], 1);
    assert!(
        r.st().last_attempted_revision.as_ref().unwrap().errors[0]
            .contains("only for rollouts in the controller's namespace palisade-system")
    );

    let mut home = Rollout::new();
    home.namespace = CONTROLLER_NS.into();
    home.spec.scope = Scope::Cluster;
    home.step(&with(vec![ccnp, other]), &[], 0);
    assert_eq!(home.phase(), Phase::Auditing);
}

#[test]
fn a_revert_to_an_enforced_revision_is_fast_tracked() {
    let mut r = Rollout::new();
    r.promote("1", 0);
    r.promote("2", 100);
    let revert = SourceObservation::Revision(rev_at("1", "c"));
    let actions = r.step(&revert, &[], 200);
    assert_eq!(r.phase(), Phase::Promoting);
    assert_eq!(events(&actions), ["FastTrack"]);
    assert_eq!(r.st().audit_started_at, None);
    // The barrier still holds: every node must have it loaded.
    assert!(!has_flip(&r.step(&revert, &[node("a").loaded(&["2"]), node("b").loaded(&["1", "2"])], 201)));
    let loaded = [node("a").loaded(&["1", "2"]).enforcing("2"), node("b").loaded(&["1", "2"]).enforcing("2")];
    let actions = r.step(&revert, &loaded, 202);
    assert!(actions.iter().any(|a| matches!(a, Action::Flip { to, fast_track: true } if to.id == "web-1")));
    r.step(&revert, &[node("a").enforcing("1"), node("b").enforcing("1")], 203);
    assert_eq!(r.phase(), Phase::Enforced);
    assert_eq!(r.st().history[0].outcome, Outcome::FastTracked);

    let mut slow = Rollout::new();
    slow.spec.rollback.fast_track_reverts = false;
    slow.promote("1", 0);
    slow.promote("2", 100);
    slow.step(&revert, &[], 200);
    assert_eq!(slow.phase(), Phase::Auditing);
}

#[test]
fn a_drop_spike_in_the_window_rolls_back_and_the_revision_stays_out() {
    let mut r = Rollout::new();
    r.promote("1", 0);
    r.promote("2", 100); // baseline 0 drops/min, promoted at minute 111
    let spike = [
        node("a").loaded(&["1", "2"]).enforcing("2").drops(60),
        node("b").loaded(&["1", "2"]).enforcing("2").drops(41),
    ];
    let actions = r.step(&rev("2"), &spike, 115);
    assert_eq!(r.phase(), Phase::RolledBack);
    assert_eq!(r.enforced(), Some("web-1"));
    assert!(matches!(&actions[..], [.., Action::RollBack { from, to, .. }] if from.id == "web-2" && to.id == "web-1"));
    let (_, _, message) = r.condition("RolledBack").unwrap();
    assert!(message.contains("drops rose from 0/min before the promotion to 101/min"), "{message}");
    assert_eq!(r.condition("Stalled").unwrap().0, "True");

    // Same commit: held, no re-promotion however long it waits.
    let back = [node("a").loaded(&["1", "2"]).enforcing("1"), node("b").loaded(&["1", "2"]).enforcing("1")];
    for minute in [116, 200, 400] {
        let actions = r.step(&rev("2"), &back, minute);
        assert!(
            actions
                .iter()
                .all(|a| !matches!(a, Action::StageCandidate(_) | Action::Flip { .. } | Action::RollBack { .. }))
        );
        assert_eq!(r.phase(), Phase::RolledBack);
    }
    // A new commit, even with the same content, is audited from scratch (no fast track).
    r.step(&SourceObservation::Revision(rev_at("2", "e")), &back, 401);
    assert_eq!(r.phase(), Phase::Auditing);
    assert_eq!(r.candidate(), Some("web-2"));
}

#[test]
fn drops_after_the_window_do_not_roll_back() {
    let mut r = Rollout::new();
    r.promote("1", 0);
    r.promote("2", 100);
    let spike = [node("a").enforcing("2").drops(500), node("b").enforcing("2").drops(500)];
    let actions = r.step(&rev("2"), &spike, 121);
    assert_eq!(r.phase(), Phase::Enforced);
    assert!(!actions.iter().any(|a| matches!(a, Action::RollBack { .. })));
    // Inside the window, calm traffic asks to be woken when the window ends.
    let mut r = Rollout::new();
    r.promote("1", 0);
    r.promote("2", 100);
    let calm = [node("a").enforcing("2"), node("b").enforcing("2")];
    assert!(r.step(&rev("2"), &calm, 115).contains(&Action::RequeueAfter(std::time::Duration::from_secs(360))));
}

#[test]
fn the_first_revision_has_nothing_to_roll_back_to() {
    let mut r = Rollout::new();
    r.promote("1", 0);
    let spike = [node("a").enforcing("1").drops(1000), node("b").enforcing("1").drops(1000)];
    r.step(&rev("1"), &spike, 12);
    assert_eq!(r.phase(), Phase::Enforced);
}

#[test]
fn a_flip_in_progress_finishes_before_a_new_commit_is_staged() {
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    r.step(&rev("1"), &loaded_audit("1", 5, vec![]), 10);
    assert_eq!(r.phase(), Phase::Promoting);
    let actions = r.step(&rev("2"), &[node("a").loaded(&["1"]).enforcing("1"), node("b").loaded(&["1"])], 11);
    assert_eq!((r.phase(), r.candidate()), (Phase::Promoting, Some("web-1")));
    assert!(actions.iter().all(|a| matches!(a, Action::RequeueAfter(_))), "{actions:?}");
    let done = [node("a").loaded(&["1"]).enforcing("1"), node("b").loaded(&["1"]).enforcing("1")];
    // Once every node confirms, the promotion is recorded and the waiting commit staged.
    let actions = r.step(&rev("2"), &done, 12);
    assert_eq!(events(&actions), ["Promoted", "AuditStarted"]);
    assert_eq!((r.enforced(), r.candidate()), (Some("web-1"), Some("web-2")));
    assert_eq!(r.phase(), Phase::Auditing);
}

#[test]
fn going_back_to_the_enforced_content_cancels_the_audit() {
    let mut r = Rollout::new();
    r.promote("1", 0);
    r.step(&rev("2"), &[], 20);
    let actions = r.step(
        &SourceObservation::Revision(rev_at("1", "d")),
        &[node("a").enforcing("1"), node("b").enforcing("1")],
        21,
    );
    assert_eq!((r.phase(), r.candidate()), (Phase::Enforced, None));
    assert_eq!(events(&actions), ["Superseded", "UpToDate"]);
    assert_eq!(r.condition("Ready").unwrap().0, "True");
}

#[test]
fn suspend_freezes_everything() {
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    let before = r.st().clone();
    r.spec.suspend = true;
    let actions = r.step(&rev("2"), &loaded_audit("1", 5, vec![]), 50);
    assert!(actions.is_empty());
    assert_eq!((r.phase(), r.candidate()), (before.phase, Some("web-1")));
    assert_eq!(r.condition("Reconciling").unwrap().1, "Suspended");
    r.spec.suspend = false;
    r.step(&rev("2"), &[], 51);
    assert_eq!(r.candidate(), Some("web-2"));
}

#[test]
fn an_unreachable_source_keeps_what_is_enforced_and_says_so_once() {
    let mut r = Rollout::new();
    r.promote("1", 0);
    let nodes = [node("a").enforcing("1"), node("b").enforcing("1")];
    let down = SourceObservation::Unreachable { message: "git fetch: connection timed out".into() };
    let actions = r.step(&down, &nodes, 20);
    assert_eq!((r.phase(), r.enforced()), (Phase::Enforced, Some("web-1")));
    assert_eq!(events(&actions), ["GitOperationFailed"]);
    let (ready, _, message) = r.condition("Ready").unwrap();
    assert_eq!(ready, "False");
    assert_eq!(message, "git fetch: connection timed out; still enforcing main@1");
    assert!(events(&r.step(&down, &nodes, 21)).is_empty());
    r.step(&rev("1"), &nodes, 22);
    assert_eq!(r.condition("Ready").unwrap().0, "True");
}

#[test]
fn history_keeps_the_last_outcomes_newest_first() {
    let mut r = Rollout::new();
    for n in 0..15 {
        r.step(&rev(&format!("{}", n + 1)), &[], n);
    }
    let history = &r.st().history;
    assert_eq!(history.len(), HISTORY_LIMIT);
    assert_eq!(history[0].revision, "web-14");
    assert!(history.iter().all(|h| h.outcome == Outcome::Superseded));
}

#[test]
fn conditions_keep_their_transition_time_while_unchanged() {
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    r.step(&rev("1"), &[], 5);
    let ready = r.st().conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.last_transition_time, Time(t(0)));
}

/// The same flow denied on nodes a, b and c: the replicas of one workload, one peer, one port.
fn denied_on_three_nodes(n: &str) -> [PolicyAuditReportSpec; 3] {
    ["a", "b", "c"].map(|x| node(x).loaded(&[n]).audit(n, 5, vec![denied("legacy", 8080)]))
}

#[test]
fn a_flow_denied_on_many_nodes_is_one_new_deny_with_its_node_count() {
    let mut r = Rollout::new();
    r.spec.audit.max_new_denies = 1;
    r.step(&rev("1"), &[], 0);
    r.step(&rev("1"), &denied_on_three_nodes("1"), 2);
    assert_eq!(r.phase(), Phase::Auditing, "one distinct new deny is within maxNewDenies: 1");
    assert_eq!((r.st().new_denies, r.st().unexpected_new_denies), (1, 1));
    let actions = r.step(&rev("1"), &denied_on_three_nodes("1"), 10);
    assert!(has_flip(&actions), "{:?}", r.st().conditions);

    // Under maxNewDenies: 0 the one flow blocks, shown once with its nodes and summed packets.
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    r.step(&rev("1"), &denied_on_three_nodes("1"), 2);
    assert_eq!(r.phase(), Phase::Blocked);
    r.assert_condition("PromotionBlocked", "NewDeniesAboveLimit", "1 new denies not covered");
    r.assert_condition("PromotionBlocked", "NewDeniesAboveLimit", "TCP/8080 ingress (21x on 3 nodes, by");
}

#[test]
fn denies_past_a_report_cap_still_count_once_per_node() {
    let mut r = Rollout::new();
    r.spec.audit.max_new_denies = 2;
    r.step(&rev("1"), &[], 0);
    // Each node lists the shared flow and counts one more it could not list: 1 + 3 unlisted.
    let reports = denied_on_three_nodes("1").map(|mut x| {
        x.totals.new_denies = 2;
        x.totals.truncated_flows = 1;
        x
    });
    r.step(&rev("1"), &reports, 2);
    assert_eq!((r.st().new_denies, r.st().unexpected_new_denies), (4, 4));
    assert_eq!(r.phase(), Phase::Blocked);
}

#[test]
fn nodes_that_do_not_converge_within_the_progress_deadline_stall_the_rollout() {
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    let half = [node("a").loaded(&["1"]).audit("1", 5, vec![]), node("b")];
    let actions = r.step(&rev("1"), &half, 4);
    assert_eq!(r.condition("Stalled"), None, "within spec.progressDeadline (10m)");
    assert!(actions.contains(&Action::RequeueAfter(std::time::Duration::from_secs(360))), "{actions:?}");

    let actions = r.step(&rev("1"), &half, 10);
    r.assert_condition("Stalled", "ProgressDeadlineExceeded", "1 of 2 nodes have loaded main@1 (waiting for b)");
    assert_eq!(events(&actions), ["ProgressDeadlineExceeded"]);
    assert_eq!(r.condition("Reconciling"), None);
    assert_eq!(r.phase(), Phase::Auditing, "it keeps waiting");
    assert!(events(&r.step(&rev("1"), &half, 11)).is_empty(), "one Event per stall");

    let actions = r.step(&rev("1"), &loaded_audit("1", 5, vec![]), 12);
    assert_eq!(r.condition("Stalled"), None, "converged");
    assert!(has_flip(&actions));

    // The flip has its own deadline, from when it was asked for.
    let flipping = [node("a").loaded(&["1"]).enforcing("1"), node("b").loaded(&["1"])];
    r.step(&rev("1"), &flipping, 21);
    assert_eq!(r.condition("Stalled"), None);
    r.step(&rev("1"), &flipping, 22);
    r.assert_condition("Stalled", "ProgressDeadlineExceeded", "1 of 2 nodes enforce main@1 (waiting for b)");
    let all = [node("a").loaded(&["1"]).enforcing("1"), node("b").loaded(&["1"]).enforcing("1")];
    r.step(&rev("1"), &all, 23);
    assert_eq!(r.phase(), Phase::Enforced);
    assert_eq!(r.condition("Stalled"), None);
}

#[test]
fn an_enforced_rollout_with_a_node_behind_stalls_at_the_progress_deadline() {
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    r.step(&rev("1"), &loaded_audit("1", 5, vec![]), 12);
    let all = [node("a").loaded(&["1"]).enforcing("1"), node("b").loaded(&["1"]).enforcing("1")];
    r.step(&rev("1"), &all, 13);
    assert_eq!(r.phase(), Phase::Enforced);

    // Node b's agent restarts and has not loaded the enforced revision again.
    let behind = [node("a").loaded(&["1"]).enforcing("1"), node("b")];
    let actions = r.step(&rev("1"), &behind, 20);
    r.assert_condition("Reconciling", "WaitingForNodes", "1 of 2 nodes enforce main@1 (waiting for b)");
    assert_eq!(r.condition("Stalled"), None, "within spec.progressDeadline (10m)");
    assert!(actions.contains(&Action::RequeueAfter(std::time::Duration::from_secs(600))), "{actions:?}");
    r.step(&rev("1"), &behind, 29);
    assert_eq!(r.condition("Stalled"), None, "the deadline counts from when b fell behind");

    let actions = r.step(&rev("1"), &behind, 30);
    r.assert_condition("Stalled", "ProgressDeadlineExceeded", "1 of 2 nodes enforce main@1 (waiting for b)");
    assert_eq!(events(&actions), ["ProgressDeadlineExceeded"]);
    assert_eq!(r.phase(), Phase::Enforced, "what is enforced stays enforced");

    r.step(&rev("1"), &all, 31);
    assert_eq!(r.condition("Stalled"), None, "b caught up");
    r.assert_condition("Ready", "Enforced", "on all 2 nodes");
    assert_eq!(r.st().nodes_behind_since, None);
}

#[test]
fn a_node_not_ready_beyond_the_grace_is_left_out_until_it_is_back() {
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    let reports = [node("a").loaded(&["1"]).audit("1", 5, vec![]), node("b")];
    r.not_ready = vec![NotReadyNode { node: "b".into(), since: t(1) }];
    let actions = r.step(&rev("1"), &reports, 4);
    r.assert_condition("Reconciling", "WaitingForNodes", "waiting for b");
    assert_eq!(r.condition("NodesLeftOut"), None, "within spec.audit.notReadyGrace (5m)");
    assert!(actions.contains(&Action::RequeueAfter(std::time::Duration::from_secs(120))), "{actions:?}");

    r.step(&rev("1"), &reports, 6);
    r.assert_condition("NodesLeftOut", "NodesUnavailable", "b (NotReady for 5m0s)");
    r.assert_condition("Auditing", "AuditInProgress", "left of spec.audit.minDuration");

    // Back before the audit ends: waited for again.
    r.not_ready.clear();
    r.step(&rev("1"), &reports, 8);
    assert_eq!(r.condition("NodesLeftOut"), None);
    r.assert_condition("Reconciling", "WaitingForNodes", "waiting for b");
}

#[test]
fn a_node_whose_report_is_older_than_two_heartbeats_is_treated_as_not_ready() {
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    let heartbeat = |x: PolicyAuditReportSpec, at: i64| PolicyAuditReportSpec {
        reported_at: Some(Time(t(at))),
        heartbeat: Some(std::time::Duration::from_secs(60).into()),
        ..x
    };
    let a = || heartbeat(node("a").loaded(&["1"]).audit("1", 5, vec![]), 10);
    // b reported at minute 1 and fell silent: stale from minute 3 on, out at minute 8.
    let b = heartbeat(node("b"), 1);
    r.step(&rev("1"), &[a(), b.clone()], 7);
    r.assert_condition("Reconciling", "WaitingForNodes", "waiting for b");
    let actions = r.step(&rev("1"), &[a(), b.clone()], 10);
    r.assert_condition("NodesLeftOut", "NodesUnavailable", "b (no report for two heartbeats for 7m0s)");
    assert!(has_flip(&actions), "a alone holds the barrier");

    // A report without reportedAt (an older agent) counts by existing: never silent.
    let mut r = Rollout::new();
    r.step(&rev("1"), &[], 0);
    r.step(&rev("1"), &[node("a").loaded(&["1"]).audit("1", 5, vec![]), node("b")], 60);
    assert_eq!(r.condition("NodesLeftOut"), None);
    r.assert_condition("Ready", "WaitingForNodes", "waiting for b");
}

#[test]
fn silence_counts_only_while_the_rollout_is_in_flight_and_from_when_it_went() {
    let stamped = |x: PolicyAuditReportSpec, at: i64| PolicyAuditReportSpec {
        reported_at: Some(Time(t(at))),
        heartbeat: Some(std::time::Duration::from_secs(60).into()),
        ..x
    };
    let mut r = Rollout::new();
    r.promote("1", 0);
    // Settled for hours, agents send no heartbeat: their last reports are old and still true.
    let settled = |x: &str| stamped(node(x).loaded(&["1"]).enforcing("1"), 11);
    r.step(&rev("2"), &[settled("a"), settled("b")], 300);
    assert_eq!(r.candidate(), Some(id("2").as_str()), "{:?}", r.st());
    assert_eq!(r.condition("NodesLeftOut"), None, "nobody is left out for a settled rollout's silence");
    // In flight from minute 300: a reports, b stays silent, stale from 302, out after the grace.
    let a = |at| stamped(node("a").loaded(&["1", "2"]).enforcing("1").audit("2", 5, vec![]), at);
    r.step(&rev("2"), &[a(301), settled("b")], 305);
    assert_eq!(r.condition("NodesLeftOut"), None, "b is silent since minute 302 only");
    r.assert_condition("Reconciling", "WaitingForNodes", "b");
    r.step(&rev("2"), &[a(309), settled("b")], 310);
    r.assert_condition("NodesLeftOut", "NodesUnavailable", "b (no report for two heartbeats for 8m0s)");
}

/// Revision `n` with a host policy (a `nodeSelector` rule).
fn host_rev(n: &str) -> SourceObservation {
    SourceObservation::Revision(ObservedRevision { host_policy: true, ..rev_at(n, n) })
}

/// The node's connections to the API server, which the candidate's host policy would deny.
fn apiserver_denied() -> AuditFlow {
    let host = FlowEndpoint { labels: BTreeMap::from([("reserved:host".into(), String::new())]), ..Default::default() };
    let apiserver = FlowEndpoint {
        labels: BTreeMap::from([("reserved:kube-apiserver".into(), String::new())]),
        cidr: Some("10.200.0.1/32".into()),
        ..Default::default()
    };
    AuditFlow {
        direction: Direction::Egress,
        subject: host,
        peer: apiserver,
        port: 6443,
        count: 0,
        rule: None,
        ..denied("any", 6443)
    }
}

#[test]
fn a_host_policy_is_audited_for_a_while_even_when_the_gates_ask_for_no_time() {
    let mut r = Rollout::new();
    r.spec.audit.min_duration = std::time::Duration::ZERO.into();
    r.step(&host_rev("1"), &[], 0);
    let actions = r.step(&host_rev("1"), &loaded_audit("1", 5, vec![]), 0);
    assert_eq!(r.phase(), Phase::Auditing);
    assert!(!has_flip(&actions));
    r.assert_condition("Auditing", "AuditInProgress", "30s left of the 30s every host policy is audited for");
    assert!(has_flip(&r.step(&host_rev("1"), &loaded_audit("1", 5, vec![]), 1)));

    // Without a host policy, the same gates promote at once.
    let mut r = Rollout::new();
    r.spec.audit.min_duration = std::time::Duration::ZERO.into();
    r.step(&rev("1"), &[], 0);
    assert!(has_flip(&r.step(&rev("1"), &loaded_audit("1", 5, vec![]), 0)));
}

#[test]
fn a_revert_to_a_host_policy_is_audited_not_fast_tracked() {
    let mut r = Rollout::new();
    r.promote("1", 0);
    r.promote("2", 20);
    r.step(&host_rev("1"), &[], 40);
    assert_eq!(r.phase(), Phase::Auditing, "{:?}", r.st());
    assert_eq!(r.candidate(), Some("web-1"));
}

#[test]
fn a_candidate_that_denies_the_control_plane_is_blocked_whatever_the_gates_allow() {
    let mut r = Rollout::new();
    r.spec.audit.max_new_denies = 100;
    r.step(&host_rev("1"), &[], 0);
    let mut reports = loaded_audit("1", 5, vec![]);
    reports[1].control_plane_denies = vec![apiserver_denied()];
    let actions = r.step(&host_rev("1"), &reports, 1);
    assert_eq!(r.phase(), Phase::Blocked);
    assert!(!has_flip(&actions));
    assert_eq!(events(&actions), ["ControlPlaneDenied"]);
    r.assert_condition("PromotionBlocked", "ControlPlaneDenied", "reserved:host -> 10.200.0.1/32 TCP/6443 egress");
    assert_eq!(r.st().blocked.as_ref().map(|b| b.reason.as_str()), Some("ControlPlaneDenied"));

    // Sticky: reports that no longer list it, and the audit's end, change nothing.
    let actions = r.step(&host_rev("1"), &loaded_audit("1", 5, vec![]), 30);
    assert_eq!(r.phase(), Phase::Blocked);
    assert!(!has_flip(&actions));
    r.assert_condition("PromotionBlocked", "ControlPlaneDenied", "allow it in the host policy");
}
