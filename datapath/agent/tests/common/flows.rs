//! A flow as the agent's `/flows` serves it, for the tests of `/flows` here and of
//! `palisade observe --agent` in controller/tests (which include this file by path).
use palisade_agent::observe::{DecidedBy, FlowPeer, FlowVerdict, ObservedFlow};

/// A drop into `namespace/db` from a pod of the same namespace.
pub fn flow(namespace: &str) -> ObservedFlow {
    let pod =
        |name: &str| FlowPeer { namespace: Some(namespace.into()), pod: Some(name.into()), ..FlowPeer::default() };
    ObservedFlow {
        time: "2025-11-21T13:38:33Z".into(),
        node: "n1".into(),
        verdict: FlowVerdict::Dropped,
        drop_reason: Some("policy-denied".into()),
        direction: "ingress".into(),
        source: pod("api"),
        destination: pod("db"),
        service: None,
        port: 5432,
        protocol: "TCP".into(),
        decided_by: DecidedBy::default(),
        candidate: None,
        rollout: None,
        enforced_revision: None,
        candidate_revision: None,
        endpoint: 1,
        l7: None,
    }
}
