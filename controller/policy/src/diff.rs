//! Semantic diff: which flows a change of policy newly denies, newly allows, or decides by a
//! different rule, evaluated with the same lookup as `trace`. A flow to a Service is one flow
//! per backend, as the datapath judges it after translation.
use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::compile::CompiledPolicy;
use crate::trace::{self, FlowEnd, FlowPort, ServiceFlowError, Trace, Verdict};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub from: FlowEnd,
    pub to: FlowEnd,
    pub port: FlowPort,
}

/// A flow as written in a flows file: `{"from": ..., "to": ..., "port": ...}`.
#[derive(Clone, Debug, Deserialize)]
pub struct FlowText {
    pub from: String,
    pub to: String,
    pub port: String,
}

impl FlowText {
    pub fn parse(&self) -> Result<Flow, String> {
        Ok(Flow {
            from: FlowEnd::parse(&self.from)?,
            to: FlowEnd::parse(&self.to)?,
            port: FlowPort::parse(&self.port)?,
        })
    }
}

/// Every pair of distinct endpoints, on every port the destination declares.
pub fn all_pod_flows(cluster: &Cluster) -> Vec<Flow> {
    let mut flows = Vec::new();
    for src in cluster.endpoints() {
        for dst in cluster.endpoints().filter(|d| d.key() != src.key()) {
            for port in &dst.ports {
                flows.push(Flow {
                    from: FlowEnd::Pod { namespace: src.namespace.clone(), name: src.name.clone() },
                    to: FlowEnd::Pod { namespace: dst.namespace.clone(), name: dst.name.clone() },
                    port: FlowPort { protocol: port.protocol, port: port.port },
                });
            }
        }
    }
    flows
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    NewlyDenied,
    NewlyAllowed,
    RuleChanged,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub verdict: Verdict,
    pub egress_rule: String,
    pub ingress_rule: String,
}

impl From<&Trace> for Outcome {
    fn from(t: &Trace) -> Self {
        let rule = |d: &trace::Decision| match (&d.proxy, d.drop_reason) {
            (Some(_), Some(reason)) => {
                format!("{} (L7 rules: the datapath denies the port, drop reason {reason})", d.rule)
            }
            (Some(proxy), None) => format!("{} ({proxy})", d.rule),
            (None, _) => d.rule.clone(),
        };
        Outcome { verdict: t.verdict, egress_rule: rule(&t.egress), ingress_rule: rule(&t.ingress) }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FlowChange {
    pub from: String,
    pub to: String,
    pub port: String,
    /// For a flow to a Service: the backend whose verdict changed (pod, else address) and the
    /// port the Service port is translated to there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_port: Option<u16>,
    pub change: Change,
    pub before: Outcome,
    pub after: Outcome,
}

/// The backend a traced flow reached: `None` for a flow to a pod or an address, else the
/// backend's name and port.
type Reached = Option<(String, u16)>;

/// The outcome of `flow`: one, or one per backend of a Service (none when it has no ready
/// backend: kube-proxy rejects it under every policy).
fn outcomes(compiled: &CompiledPolicy, flow: &Flow) -> Result<Vec<(Reached, Outcome)>, String> {
    if !matches!(flow.to, FlowEnd::Service { .. }) {
        let trace = trace::trace(compiled, &flow.from, &flow.to, flow.port, None)?;
        return Ok(vec![(None, Outcome::from(&trace))]);
    }
    match trace::trace_service(compiled, &flow.from, &flow.to, flow.port, None) {
        Ok(service) => {
            Ok(service.backends.iter().map(|b| (Some((b.backend.clone(), b.port)), Outcome::from(&b.trace))).collect())
        }
        Err(ServiceFlowError::NoBackends { .. }) => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

/// Flows whose outcome differs between `before` and `after`. A flow naming a pod or Service
/// missing from either cluster is an error, and so is a Service whose backends differ.
pub fn semantic_diff(
    before: &CompiledPolicy,
    after: &CompiledPolicy,
    flows: &[Flow],
) -> Result<Vec<FlowChange>, String> {
    let mut changes = Vec::new();
    for flow in flows {
        let (olds, news) = (outcomes(before, flow)?, outcomes(after, flow)?);
        let reached = |outcomes: &[(Reached, Outcome)]| outcomes.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>();
        if reached(&olds) != reached(&news) {
            return Err(format!(
                "{} -> {} {}: the Service's backends differ between the two clusters",
                flow.from, flow.to, flow.port
            ));
        }
        for ((backend, old), (_, new)) in olds.into_iter().zip(news) {
            let change = match (old.verdict, new.verdict) {
                (Verdict::Allowed, Verdict::Denied) => Change::NewlyDenied,
                (Verdict::Denied, Verdict::Allowed) => Change::NewlyAllowed,
                _ if old.egress_rule != new.egress_rule || old.ingress_rule != new.ingress_rule => Change::RuleChanged,
                _ => continue,
            };
            let (backend, backend_port) = backend.map_or((None, None), |(b, p)| (Some(b), Some(p)));
            changes.push(FlowChange {
                from: flow.from.to_string(),
                to: flow.to.to_string(),
                port: flow.port.to_string(),
                backend,
                backend_port,
                change,
                before: old,
                after: new,
            });
        }
    }
    Ok(changes)
}
