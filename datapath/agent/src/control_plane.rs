//! The node's own control-plane traffic, checked against a candidate host policy before it may
//! enforce: the node's connections to the API server (every address and TCP port of the
//! `default/kubernetes` EndpointSlices) and the health checks of its agent (its health port, from
//! other nodes). A candidate that would newly deny one of them is blocked by the rollout whatever
//! its gates say (`controlPlaneDenies` in the reports). It is checked against the policy rather
//! than waited for in traffic: the connection it would cut may come only after the flip.
use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use palisade_policy::CompiledPolicy;
use palisade_policy::model::Protocol as PolicyProtocol;
use palisade_policy::trace::{self, FlowEnd, FlowPort, Verdict as TraceVerdict};
use palisade_rollout::crd::{AuditFlow, Direction, FlowEndpoint, Protocol, Verdict};

use crate::node_state::Compiled;

/// The API server's port when its EndpointSlice names none.
const APISERVER_PORT: u16 = 6443;

/// One flow of the node's control plane.
struct Check {
    direction: Direction,
    /// The other side: an address of the API server, or the other nodes.
    peer: FlowEnd,
    port: u16,
}

/// The control-plane flows the candidate set would deny and the enforced set allows, as report
/// flows whose subject is the node (`reserved:host`). Empty without a candidate.
pub(crate) fn denies(compiled: &Compiled, health_port: Option<u16>, now: Timestamp) -> Vec<AuditFlow> {
    let Some(candidate) = compiled.candidate.as_ref() else { return Vec::new() };
    let allows = |engine: &CompiledPolicy, check: &Check| {
        let port = FlowPort { protocol: PolicyProtocol::TCP, port: check.port };
        let (from, to) = match check.direction {
            Direction::Egress => (&FlowEnd::Node, &check.peer),
            Direction::Ingress => (&check.peer, &FlowEnd::Node),
        };
        // A flow the model cannot trace (no node known) is not the node's to check.
        trace::trace(engine, from, to, port, None).map(|t| {
            let host_side = match check.direction {
                Direction::Egress => t.egress,
                Direction::Ingress => t.ingress,
            };
            (host_side.verdict == TraceVerdict::Allowed, host_side.rule)
        })
    };
    checks(&compiled.enforced, health_port)
        .into_iter()
        .filter_map(|check| {
            let (true, _) = allows(&compiled.enforced, &check).ok()? else { return None };
            let (false, rule) = allows(candidate, &check).ok()? else { return None };
            Some(AuditFlow {
                direction: check.direction,
                subject: reserved("host", None),
                peer: match check.peer {
                    FlowEnd::Address(ip) => reserved("kube-apiserver", Some(ip)),
                    _ => reserved("remote-node", None),
                },
                port: check.port,
                protocol: Protocol::Tcp,
                enforced_verdict: Verdict::Allow,
                candidate_verdict: Verdict::Deny,
                count: 0,
                first_seen: Time(now),
                last_seen: Time(now),
                rule: Some(rule).filter(|r| !r.is_empty()),
                http: None,
                dns: None,
                tls: None,
                kafka: None,
            })
        })
        .collect()
}

/// The flows to check: the node to every API server address and port, and the other nodes to
/// the agent's health port.
fn checks(engine: &CompiledPolicy, health_port: Option<u16>) -> Vec<Check> {
    let mut checks = Vec::new();
    for slice in engine.cluster.endpoint_slices.iter().filter(|s| s.is_apiserver()) {
        let mut ports: Vec<u16> =
            slice.ports.iter().filter(|p| p.protocol == PolicyProtocol::TCP).map(|p| p.port).collect();
        if ports.is_empty() {
            ports.push(APISERVER_PORT);
        }
        for &ip in &slice.addresses {
            checks.extend(ports.iter().map(|&port| Check {
                direction: Direction::Egress,
                peer: FlowEnd::Address(ip),
                port,
            }));
        }
    }
    if let Some(port) = health_port {
        let peer = FlowEnd::Entity("remote-node".into());
        checks.push(Check { direction: Direction::Ingress, peer, port });
    }
    checks
}

/// A reserved identity as a report names it, with the address it stands for.
pub(crate) fn reserved(name: &str, ip: Option<IpAddr>) -> FlowEndpoint {
    FlowEndpoint {
        labels: BTreeMap::from([(format!("reserved:{name}"), String::new())]),
        cidr: ip.map(|ip| format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 })),
        ..FlowEndpoint::default()
    }
}
