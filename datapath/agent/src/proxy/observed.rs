//! Requests the proxy judged, as `palisade observe` shows them: Hubble's L7 flows.
use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use palisade_common::{COOKIE_NONE, Direction};
use palisade_policy::trace::DROP_L7_UNSUPPORTED;
use palisade_policy::{CompiledPolicy, RequestVerdict};

use super::ProxyPolicy;
use super::judge::{Ends, Found, Judged};
use crate::observe::{CandidateVerdict, DecidedBy, FlowHub, FlowVerdict, L7Flow, ObservedFlow, decided_by};

/// Where the proxy publishes the requests it judged, and the node it runs on.
#[derive(Clone, Debug, Default)]
pub struct FlowSink {
    pub hub: FlowHub,
    pub node: String,
}

/// One judged request, once answered.
pub(super) struct Answered<'a> {
    pub policy: &'a ProxyPolicy,
    pub found: &'a Found,
    pub ends: Ends,
    pub judged: &'a Judged,
    pub started: Instant,
}

impl FlowSink {
    /// Publishes a request, as the side that decided it saw it.
    pub(super) fn publish(&self, answered: Answered, mut l7: L7Flow) {
        let Answered { policy, found, ends, judged, started } = answered;
        let Some(at) = judged.deciding() else { return };
        let (enforced, candidate) = &judged.verdicts[at];
        let tls = l7.tls.is_some();
        let drop_reason = |verdict: &RequestVerdict| match drop_reason(verdict) {
            Some(reason) if tls && reason != DROP_L7_UNSUPPORTED => Some(DROP_SNI_DENIED.to_string()),
            reason => reason,
        };
        l7.latency_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let candidate = candidate.as_ref().zip(policy.candidate.as_deref()).map(|(verdict, engine)| CandidateVerdict {
            verdict: flow_verdict(verdict),
            drop_reason: drop_reason(verdict),
            differs: verdict.allowed != enforced.allowed,
            decided_by: decided(engine, verdict),
        });
        self.hub.publish(ObservedFlow {
            time: Timestamp::now().to_string(),
            node: self.node.clone(),
            verdict: flow_verdict(enforced),
            drop_reason: drop_reason(enforced),
            direction: match found.sides[at].direction {
                Direction::Ingress => "ingress",
                Direction::Egress => "egress",
            }
            .into(),
            source: found.source.clone(),
            destination: found.destination.clone(),
            service: None,
            port: ends.destination.port(),
            protocol: ends.protocol.name().into(),
            decided_by: decided(&policy.enforced, enforced),
            candidate,
            rollout: None,
            enforced_revision: None,
            candidate_revision: None,
            endpoint: 0,
            l7: Some(l7),
        });
    }
}

/// The drop reason of a TLS connection whose server name no `serverNames` rule allows.
pub const DROP_SNI_DENIED: &str = "sni-denied";

fn flow_verdict(verdict: &RequestVerdict) -> FlowVerdict {
    if verdict.allowed { FlowVerdict::Forwarded } else { FlowVerdict::Dropped }
}

fn drop_reason(verdict: &RequestVerdict) -> Option<String> {
    let unsupported = verdict.reason.starts_with(DROP_L7_UNSUPPORTED);
    (!verdict.allowed).then(|| if unsupported { DROP_L7_UNSUPPORTED } else { "policy-denied" }.to_string())
}

/// The rule that allowed it, or why it is denied (no rule did).
fn decided(engine: &CompiledPolicy, verdict: &RequestVerdict) -> DecidedBy {
    if verdict.cookie == COOKIE_NONE {
        DecidedBy { description: verdict.reason.clone(), ..DecidedBy::default() }
    } else {
        decided_by(engine, verdict.cookie)
    }
}
