//! Warnings about valid policies that probably do not do what their author meant.
use palisade_common::IDENTITY_HOST;

use crate::compile::{CompiledPolicy, Enforcement};
use crate::diag::{Diagnostic, Severity};
use crate::identity::{self, Identity};
use crate::model::{Peer, Peers, Policy, PolicyKind, PortSpec, Rule, ServiceRef};

fn warning(policy: &Policy, line: u32, path: &str, message: String) -> Diagnostic {
    Diagnostic { severity: Severity::Warning, file: policy.file.clone(), line, path: path.to_string(), message }
}

/// Lints against a cluster: selectors that match nothing, and rules that put pods into
/// default deny as a side effect of allowing something.
pub fn lint_with_cluster(compiled: &CompiledPolicy) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let identities: Vec<_> = compiled.endpoints().map(|e| e.identity.clone()).collect();
    // Every node's host identity, as a compilation on that node labels it.
    let host =
        |node| Identity { id: IDENTITY_HOST, labels: identity::host_labels(Some(node)), prefix: None, namespace: None };
    let hosts: Vec<_> = compiled.cluster.nodes.iter().map(host).collect();
    for policy in &compiled.policies().policies {
        for rule in &policy.rules {
            let (field, what, subjects) = match (rule.is_host_rule(), policy.id.kind) {
                (true, _) => ("nodeSelector", "node", &hosts),
                (false, PolicyKind::NetworkPolicy) => ("podSelector", "pod", &identities),
                (false, _) => ("endpointSelector", "pod", &identities),
            };
            if !subjects.iter().any(|i| rule.selects(i)) {
                out.push(warning(
                    policy,
                    rule.line,
                    &format!("{}.{field}", rule.path),
                    format!("selects no {what} in the cluster ({})", rule.subject),
                ));
                continue;
            }
            if let Some(message) = denies_dns_by_accident(compiled, rule) {
                out.push(warning(policy, rule.line, &format!("{}.egress", rule.path), message));
            }
            for peer_rule in rule.ingress.rules.iter().chain(&rule.egress.rules) {
                let Peers::Some(peers) = &peer_rule.peers else { continue };
                for peer in peers {
                    let selector = match peer {
                        Peer::Labels(selector) => Some((selector, "peer selector", "pod or entity")),
                        Peer::Nodes(selector) => Some((selector, "node selector", "other node")),
                        _ => None,
                    };
                    if let Some((selector, what, among)) = selector
                        && !compiled.identities().all().any(|i| selector.matches(&i.labels))
                    {
                        out.push(warning(
                            policy,
                            peer_rule.line,
                            &peer_rule.path,
                            format!("{what} {selector} matches no {among} in the cluster"),
                        ));
                    }
                    if let Peer::Service(service) = peer
                        && !compiled.cluster.services.iter().any(|s| s.named_by(service))
                    {
                        let message = match service {
                            ServiceRef::Name { namespace, name } => {
                                format!(
                                    "Service {namespace}/{name} is not in the cluster: toServices selects no backend for it"
                                )
                            }
                            ServiceRef::Selector { selector, .. } => {
                                format!("no Service in the cluster matches {selector}: toServices selects no backend")
                            }
                        };
                        out.push(warning(policy, peer_rule.line, &format!("{}.toServices", peer_rule.path), message));
                    }
                }
            }
        }
    }
    let egress_port_names: std::collections::BTreeSet<&str> = compiled
        .policies()
        .policies
        .iter()
        .flat_map(|p| &p.rules)
        .flat_map(|r| &r.egress.rules)
        .flat_map(|r| &r.ports)
        .filter_map(|p| match &p.port {
            PortSpec::Named(name) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    for (name, numbers) in
        compiled.ambiguous_port_names().into_iter().filter(|(name, _)| egress_port_names.contains(name))
    {
        out.push(Diagnostic {
            severity: Severity::Warning,
            file: String::new(),
            line: 0,
            path: String::new(),
            message: format!(
                "egress rules naming port {name:?} match nothing: pods disagree on its number {numbers:?}"
            ),
        });
    }
    out
}

/// The classic accident: a rule allowing some egress puts pods into egress default deny, and
/// nothing allows them DNS, so every name lookup now fails. Rules that mean to deny everything
/// (an empty rule `{}`) are not flagged.
fn denies_dns_by_accident(compiled: &CompiledPolicy, rule: &Rule) -> Option<String> {
    let section = &rule.egress;
    if !section.enables_policy || section.rules.iter().any(|r| r.peers == Peers::Some(Vec::new()) && r.ports.is_empty())
    {
        return None;
    }
    let dns = compiled
        .cluster
        .pods
        .iter()
        .find(|p| p.labels.get("k8s-app").is_some_and(|v| v == "kube-dns"))
        .and_then(|p| compiled.identity_of_pod(p))
        .unwrap_or(palisade_common::IDENTITY_WORLD);
    let broken: Vec<String> = compiled
        .endpoints()
        .filter(|e| rule.selects(e.identity) && e.group.egress.enforcement == Enforcement::DefaultDeny)
        .filter(|e| {
            e.group
                .egress
                .lookup(dns, palisade_common::Protocol::UDP, 53)
                .is_none_or(|entry| entry.value.verdict() == palisade_common::Verdict::Deny)
        })
        .map(|e| e.pod.key())
        .collect();
    (!broken.is_empty()).then(|| {
        format!(
            "puts {} pod(s) into egress default deny with no rule allowing DNS (53/UDP), so their name lookups fail: {}",
            broken.len(),
            broken.iter().take(3).cloned().collect::<Vec<_>>().join(", ") + if broken.len() > 3 { ", ..." } else { "" },
        )
    })
}
