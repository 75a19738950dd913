//! What the agent's tests share: revisions and rollouts of the `db` rollout in namespace `shop`,
//! and, for the root tests, cleanup and waiting for reports.
#![allow(dead_code)] // each test binary uses part of it

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use palisade_agent::Change;
use palisade_datapath::Datapath;
use palisade_rollout::crd::{
    PolicyAuditReport, PolicyAuditReportSpec, PolicyDocument, PolicyRevision, PolicyRevisionSpec, PolicyRollout,
    PolicyRolloutStatus, RevisionRef,
};
use tokio::sync::mpsc::UnboundedReceiver;

/// Revision `name` of rollout `shop/db`: one CiliumNetworkPolicy `shop/db` written as `policy`.
pub fn revision(name: &str, policy: &str) -> Change {
    let document = PolicyDocument {
        kind: "CiliumNetworkPolicy".into(),
        name: "db".into(),
        namespace: Some("shop".into()),
        content: policy.into(),
    };
    let spec = PolicyRevisionSpec {
        rollout: "db".into(),
        commit: "0".repeat(40),
        display: format!("main@{name}"),
        digest: format!("sha256:{}", "0".repeat(64)),
        policy_count: 1,
        policies: vec![document],
    };
    let mut revision = PolicyRevision::new(name, spec);
    revision.metadata.namespace = Some("shop".into());
    Change::Revision(Box::new(revision))
}

/// Rollout `shop/db` with the status naming what nodes enforce and audit.
pub fn rollout(enforced: Option<&str>, candidate: Option<&str>) -> Change {
    let reference = |id: &str| RevisionRef { id: id.into(), commit: "0".repeat(40), display: format!("main@{id}") };
    let spec =
        serde_json::from_value(serde_json::json!({"source": {"url": "file:///repo", "ref": {"branch": "main"}}}))
            .expect("spec");
    let status = PolicyRolloutStatus {
        enforced_revision: enforced.map(reference),
        candidate_revision: candidate.map(reference),
        ..PolicyRolloutStatus::default()
    };
    let metadata = ObjectMeta { name: Some("db".into()), namespace: Some("shop".into()), ..ObjectMeta::default() };
    Change::Rollout(Box::new(PolicyRollout { metadata, spec, status: Some(status) }))
}

/// Deletes a root test's namespaces and pinned datapath, also when it panics.
pub struct Cleanup {
    pub prefix: &'static str,
    pub pin_dir: &'static str,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = palisade_netsim::net::remove_netns_with_prefix(self.prefix);
        if let Ok(datapath) = Datapath::open(self.pin_dir) {
            let _ = datapath.destroy();
        }
    }
}

/// Waits (10 s at most) for a report satisfying `done`.
pub fn wait_for_report(
    reports: &mut UnboundedReceiver<Vec<PolicyAuditReport>>,
    done: impl Fn(&PolicyAuditReportSpec) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(reports) = reports.try_recv()
            && reports.iter().any(|r| done(&r.spec))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the agent never reported the expected state");
}
