//! Kubernetes NetworkPolicy.
use std::collections::BTreeSet;

use super::*;
use crate::api;
use crate::labels::{self, Source};
use crate::selector::{Requirement, Selector};

impl Translator<'_, '_> {
    pub(super) fn network_policy(&mut self, raw: &api::NetworkPolicy, line: u32) -> Option<Policy> {
        self.check_meta(&raw.metadata);
        let ns = self.namespace.clone().unwrap_or_default();
        let subject = self.selector(&raw.spec.pod_selector, "spec.podSelector").map(|s| force_namespace(s, &ns));
        let mut types = BTreeSet::new();
        match &raw.spec.policy_types {
            Some(listed) => {
                for (i, t) in listed.iter().enumerate() {
                    match t.as_str() {
                        "Ingress" => types.insert(Direction::Ingress),
                        "Egress" => types.insert(Direction::Egress),
                        _ => {
                            self.error(&format!("spec.policyTypes[{i}]"), format!("{t:?} is not Ingress or Egress"));
                            false
                        }
                    };
                }
            }
            None => {
                types.insert(Direction::Ingress);
                if raw.spec.egress.is_some() {
                    types.insert(Direction::Egress);
                }
            }
        }
        let mut ingress = Vec::new();
        for (i, rule) in raw.spec.ingress.iter().flatten().enumerate() {
            let path = format!("spec.ingress[{i}]");
            ingress.extend(self.knp_rule(rule.from.as_deref(), rule.ports.as_deref(), &path, "from"));
        }
        let mut egress = Vec::new();
        for (i, rule) in raw.spec.egress.iter().flatten().enumerate() {
            let path = format!("spec.egress[{i}]");
            egress.extend(self.knp_rule(rule.to.as_deref(), rule.ports.as_deref(), &path, "to"));
        }
        let section =
            |direction, rules| Section { enables_policy: types.contains(&direction), default_deny: true, rules };
        let rule = Rule {
            path: "spec".into(),
            line: self.r.line_of(&self.path("spec.podSelector")),
            subject_kind: SubjectKind::Endpoints,
            subject: subject?,
            description: None,
            ingress: section(Direction::Ingress, ingress),
            egress: section(Direction::Egress, egress),
        };
        self.finish(&raw.metadata, line, vec![rule])
    }

    pub(super) fn knp_rule(
        &mut self,
        peers: Option<&[api::NetworkPolicyPeer]>,
        ports: Option<&[api::NetworkPolicyPort]>,
        path: &str,
        field: &str,
    ) -> Option<PeerRule> {
        let failed_before = self.failed;
        let ns = self.namespace.clone().unwrap_or_default();
        // A missing or empty peer list allows every peer, world included.
        let peers = match peers {
            None | Some([]) => Peers::All,
            Some(list) => {
                let mut out = Vec::new();
                for (i, peer) in list.iter().enumerate() {
                    let at = format!("{path}.{field}[{i}]");
                    match (&peer.pod_selector, &peer.namespace_selector, &peer.ip_block) {
                        (None, None, Some(block)) => out.extend(
                            self.cidr_block(&block.cidr, &block.except, &format!("{at}.ipBlock")).map(Peer::IpBlock),
                        ),
                        (_, _, Some(_)) => {
                            self.error(&at, "ipBlock cannot be combined with podSelector or namespaceSelector")
                        }
                        (None, None, None) => {
                            self.error(&at, "one of podSelector, namespaceSelector or ipBlock is required")
                        }
                        (pods, namespaces, None) => {
                            let pods = match pods {
                                Some(p) => self.selector(p, &format!("{at}.podSelector")),
                                None => Some(Selector::default()),
                            };
                            let namespaces = match namespaces {
                                Some(n) => {
                                    self.selector(n, &format!("{at}.namespaceSelector")).map(namespace_label_selector)
                                }
                                None => Some(vec![Requirement::equals(Source::K8s, labels::NAMESPACE_KEY, ns.clone())]),
                            };
                            if let (Some(pods), Some(namespaces)) = (pods, namespaces) {
                                out.push(Peer::Labels(namespaces.into_iter().fold(pods, Selector::with)));
                            }
                        }
                    }
                }
                Peers::Some(out)
            }
        };
        let mut port_rules = Vec::new();
        for (i, port) in ports.iter().copied().flatten().enumerate() {
            let at = format!("{path}.ports[{i}]");
            let protocol = match port.protocol.as_deref() {
                None | Some("TCP") => Protocol::TCP,
                Some("UDP") => Protocol::UDP,
                Some("SCTP") => Protocol::SCTP,
                Some(other) => {
                    self.error(&format!("{at}.protocol"), format!("{other:?} is not TCP, UDP or SCTP"));
                    continue;
                }
            };
            if let Some(spec) = self.port_spec(port.port.as_ref(), port.end_port, &at) {
                port_rules.push(PortRule { protocol, port: spec, l7: None, l7_at: None });
            }
        }
        (self.failed == failed_before).then(|| self.peer_rule(path, false, peers, port_rules))
    }
}
