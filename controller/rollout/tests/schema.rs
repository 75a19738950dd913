//! The admission rules in the generated schemas, evaluated with kube's client-side CEL.

use kube::core::cel::{validate_cel, validate_cel_update};
use palisade_rollout::crd::*;

fn rollout(spec: serde_json::Value) -> PolicyRollout {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "palisade.dev/v1alpha1",
        "kind": "PolicyRollout",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": spec,
    }))
    .expect("spec deserializes")
}

fn minimal() -> serde_json::Value {
    serde_json::json!({"source": {"url": "https://git.example/policies.git", "ref": {"branch": "main"}}})
}

fn rejection(spec: serde_json::Value) -> String {
    match validate_cel(&rollout(spec)) {
        Ok(()) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_minimal_rollout_is_accepted_with_defaults() {
    let r = rollout(minimal());
    validate_cel(&r).expect("valid");
    assert_eq!(r.spec.audit, AuditGates::default());
    assert_eq!(r.spec.promotion, Promotion::Auto);
    assert_eq!(r.spec.scope, Scope::Namespace);
    assert!(r.spec.rollback.fast_track_reverts);
}

#[test]
fn exactly_one_ref_kind() {
    let mut two = minimal();
    two["source"]["ref"]["tag"] = "v1".into();
    assert!(rejection(two).contains("exactly one of branch, tag, semver or commit"));
    let mut none = minimal();
    none["source"]["ref"] = serde_json::json!({});
    assert!(rejection(none).contains("exactly one"));
}

#[test]
fn commit_refs_are_full_shas() {
    let mut short = minimal();
    short["source"]["ref"] = serde_json::json!({"commit": "a1b2c3d"});
    assert!(rejection(short).contains("40-character"));
    let mut full = minimal();
    full["source"]["ref"] = serde_json::json!({"commit": "a".repeat(40)});
    validate_cel(&rollout(full)).expect("valid");
}

#[test]
fn scp_like_urls_are_refused() {
    let mut scp = minimal();
    scp["source"]["url"] = "git@github.com:org/policies.git".into();
    assert!(rejection(scp).contains("scp-like"));
}

#[test]
fn durations_are_bounded() {
    let mut fast = minimal();
    fast["source"]["interval"] = "100ms".into();
    assert!(rejection(fast).contains("interval must be at least 1s"));
    let mut negative = minimal();
    negative["audit"] = serde_json::json!({"minDuration": "-5m"});
    assert!(rejection(negative).contains("minDuration must not be negative"));
    let mut negative = minimal();
    negative["progressDeadline"] = "-1m".into();
    assert!(rejection(negative).contains("progressDeadline must not be negative"));
    let mut negative = minimal();
    negative["audit"] = serde_json::json!({"notReadyGrace": "-1m"});
    assert!(rejection(negative).contains("notReadyGrace must not be negative"));
}

#[test]
fn an_empty_expected_deny_selector_is_refused() {
    let mut spec = minimal();
    spec["audit"] = serde_json::json!({"expectedDenies": [{}]});
    assert!(rejection(spec).contains("at least one field"));
    let mut spec = minimal();
    spec["audit"] = serde_json::json!({"expectedDenies": [{"port": 23, "protocol": "TCP"}]});
    validate_cel(&rollout(spec)).expect("valid");
}

#[test]
fn policy_revisions_are_immutable() {
    let spec = PolicyRevisionSpec {
        rollout: "web".into(),
        commit: "a".repeat(40),
        display: "main@aaaaaaa".into(),
        digest: format!("sha256:{}", "0".repeat(64)),
        policy_count: 0,
        policies: vec![],
    };
    let old = PolicyRevision::new("web-000000000000", spec.clone());
    validate_cel(&old).expect("valid");
    let mut changed = old.clone();
    changed.spec.commit = "b".repeat(40);
    let err = validate_cel_update(&changed, &old).expect_err("mutation refused").to_string();
    assert!(err.contains("immutable"), "{err}");
    validate_cel_update(&old, &old).expect("no-op update allowed");
}
