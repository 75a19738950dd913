//! CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy: rules, ingress and egress peers, entities.

use super::*;
use crate::api;
use crate::labels::{self, Source};
use crate::selector::{Requirement, Selector};

impl Translator<'_, '_> {
    pub(super) fn cilium_policy(&mut self, raw: &api::CiliumPolicy, line: u32) -> Option<Policy> {
        self.check_meta(&raw.metadata);
        let mut rules = Vec::new();
        match (&raw.spec, &raw.specs) {
            (None, None) => self.error("", "one of spec or specs is required"),
            (spec, specs) => {
                if let Some(spec) = spec {
                    rules.extend(self.cilium_rule(spec, "spec"));
                }
                for (i, spec) in specs.iter().flatten().enumerate() {
                    rules.extend(self.cilium_rule(spec, &format!("specs[{i}]")));
                }
            }
        }
        let count: usize = rules.iter().map(|r| r.ingress.rules.len() + r.egress.rules.len()).sum();
        if count > MAX_RULES_PER_POLICY {
            self.error("", format!("{count} rules exceed the limit of {MAX_RULES_PER_POLICY} per policy"));
        }
        self.finish(&raw.metadata, line, rules)
    }

    pub(super) fn cilium_rule(&mut self, raw: &api::Rule, path: &str) -> Option<Rule> {
        let (raw_subject, subject_kind, field) = match (&raw.endpoint_selector, &raw.node_selector) {
            (Some(_), Some(_)) => {
                self.error(
                    &format!("{path}.nodeSelector"),
                    "endpointSelector and nodeSelector cannot both be set: a rule selects pods or nodes",
                );
                return None;
            }
            (None, None) => {
                self.error(path, "endpointSelector or nodeSelector is required");
                return None;
            }
            (Some(selector), None) => (selector, SubjectKind::Endpoints, "endpointSelector"),
            (None, Some(_)) if self.kind == PolicyKind::CiliumNetworkPolicy => {
                self.error(&format!("{path}.nodeSelector"), "only a CiliumClusterwideNetworkPolicy selects nodes");
                return None;
            }
            (None, Some(selector)) => (selector, SubjectKind::Nodes, "nodeSelector"),
        };
        let subject = self.selector(raw_subject, &format!("{path}.{field}"))?;
        let subject = match self.namespace.clone() {
            // The host identity alone carries reserved:host: a host rule never matches a pod.
            _ if subject_kind == SubjectKind::Nodes => subject.with(Requirement::exists(Source::Reserved, "host")),
            Some(ns) if self.kind == PolicyKind::CiliumNetworkPolicy => {
                if subject.mentions(labels::NAMESPACE_KEY) {
                    self.warning(
                        &format!("{path}.endpointSelector"),
                        format!("a CiliumNetworkPolicy only selects pods in its own namespace {ns:?}; the namespace requirement is replaced"),
                    );
                }
                force_namespace(subject, &ns)
            }
            _ => subject,
        };
        if let Some(labels) = &raw.labels {
            for (i, label) in labels.iter().enumerate() {
                if !label.source.is_empty() && Source::parse(&label.source).is_none() {
                    self.error(
                        &format!("{path}.labels[{i}].source"),
                        format!("unknown label source {:?}", label.source),
                    );
                }
            }
        }
        if let Some(log) = &raw.log
            && log.value.len() > 32
        {
            self.error(&format!("{path}.log.value"), "at most 32 characters");
        }
        let default_deny = raw.enable_default_deny.unwrap_or_default();
        let mut ingress = Vec::new();
        for (i, rule) in raw.ingress.iter().flatten().enumerate() {
            ingress.extend(self.ingress_rule(rule, &format!("{path}.ingress[{i}]"), false));
        }
        for (i, rule) in raw.ingress_deny.iter().flatten().enumerate() {
            ingress.extend(self.ingress_rule(rule, &format!("{path}.ingressDeny[{i}]"), true));
        }
        let mut egress = Vec::new();
        for (i, rule) in raw.egress.iter().flatten().enumerate() {
            egress.extend(self.egress_rule(rule, &format!("{path}.egress[{i}]"), false));
        }
        for (i, rule) in raw.egress_deny.iter().flatten().enumerate() {
            egress.extend(self.egress_rule(rule, &format!("{path}.egressDeny[{i}]"), true));
        }
        if subject_kind == SubjectKind::Nodes {
            self.check_host_rule(&ingress, &egress);
        }
        let line = self.r.line_of(&self.path(&format!("{path}.{field}")));
        Some(Rule {
            path: path.to_string(),
            line,
            subject_kind,
            subject,
            description: raw.description.clone(),
            ingress: Section {
                enables_policy: non_empty(&raw.ingress) || non_empty(&raw.ingress_deny),
                default_deny: default_deny.ingress.unwrap_or(true),
                rules: ingress,
            },
            egress: Section {
                enables_policy: non_empty(&raw.egress) || non_empty(&raw.egress_deny),
                default_deny: default_deny.egress.unwrap_or(true),
                rules: egress,
            },
        })
    }

    /// What a host rule may not hold: L7 rules (Cilium has no proxy for the host: an error, as
    /// Cilium's) and `toFQDNs` (nothing here intercepts the host's DNS: unsupported).
    fn check_host_rule(&mut self, ingress: &[PeerRule], egress: &[PeerRule]) {
        for rule in ingress.iter().chain(egress) {
            if let Some((field, _)) = rule.ports.iter().find_map(|p| p.l7_at.as_ref()) {
                self.error(field, "a host policy (nodeSelector) cannot have L7 rules: the host has no L7 proxy");
            }
            if let Peers::Some(peers) = &rule.peers
                && peers.iter().any(|p| matches!(p, Peer::Fqdn(_)))
            {
                self.unsupported(&format!("{}.toFQDNs", rule.path), "toFQDNs in a host policy (nodeSelector)");
            }
        }
    }

    pub(super) fn ingress_rule(&mut self, raw: &api::IngressRule, path: &str, deny: bool) -> Option<PeerRule> {
        let failed_before = self.failed;
        let present = [raw.from_groups.is_some(), raw.authentication.is_some()];
        self.unsupported_fields(path, Direction::Ingress, present);
        self.exclusive_peers(
            path,
            &[
                ("fromEndpoints", raw.from_endpoints.is_some()),
                ("fromCIDR", raw.from_cidr.is_some()),
                ("fromCIDRSet", raw.from_cidr_set.is_some()),
                ("fromEntities", raw.from_entities.is_some()),
                ("fromNodes", raw.from_nodes.is_some()),
            ],
        );
        let requires = self.requires(raw.from_requires.as_deref(), &format!("{path}.fromRequires"));
        let l3 = L3 {
            endpoints: raw.from_endpoints.as_deref().map(|e| (e, "fromEndpoints")),
            cidr: raw.from_cidr.as_deref().map(|c| (c, "fromCIDR")),
            cidr_set: raw.from_cidr_set.as_deref().map(|c| (c, "fromCIDRSet")),
            entities: raw.from_entities.as_deref().map(|e| (e, "fromEntities")),
            nodes: raw.from_nodes.as_deref().map(|n| (n, "fromNodes")),
            services: None,
            fqdns: None,
        };
        let peers = self.peers(&l3, path, requires, raw.to_ports.is_some() || raw.icmps.is_some());
        let ports = self.l4(raw.to_ports.as_deref(), raw.icmps.as_deref(), path, deny, Direction::Ingress);
        (self.failed == failed_before).then(|| self.peer_rule(path, deny, peers, ports))
    }

    /// Reports the peer fields no datapath here supports: groups (`fromGroups` or `toGroups`)
    /// and authentication, each when `present`.
    fn unsupported_fields(&mut self, path: &str, direction: Direction, present: [bool; 2]) {
        let side = match direction {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        let fields = [
            (format!("{side}Groups"), format!("{side}Groups (cloud provider groups)")),
            ("authentication".to_string(), "mutual authentication".to_string()),
        ];
        for ((field, feature), present) in fields.iter().zip(present) {
            if present {
                self.unsupported(&format!("{path}.{field}"), feature);
            }
        }
    }

    pub(super) fn egress_rule(&mut self, raw: &api::EgressRule, path: &str, deny: bool) -> Option<PeerRule> {
        let failed_before = self.failed;
        let present = [raw.to_groups.is_some(), raw.authentication.is_some()];
        self.unsupported_fields(path, Direction::Egress, present);
        if deny && raw.to_fqdns.is_some() {
            self.error(&format!("{path}.toFQDNs"), "toFQDNs is not allowed in egressDeny");
        }
        self.exclusive_peers(
            path,
            &[
                ("toEndpoints", raw.to_endpoints.is_some()),
                ("toCIDR", raw.to_cidr.is_some()),
                ("toCIDRSet", raw.to_cidr_set.is_some()),
                ("toEntities", raw.to_entities.is_some()),
                ("toNodes", raw.to_nodes.is_some()),
                ("toServices", raw.to_services.is_some()),
                ("toFQDNs", raw.to_fqdns.is_some()),
            ],
        );
        let requires = self.requires(raw.to_requires.as_deref(), &format!("{path}.toRequires"));
        let l3 = L3 {
            endpoints: raw.to_endpoints.as_deref().map(|e| (e, "toEndpoints")),
            cidr: raw.to_cidr.as_deref().map(|c| (c, "toCIDR")),
            cidr_set: raw.to_cidr_set.as_deref().map(|c| (c, "toCIDRSet")),
            entities: raw.to_entities.as_deref().map(|e| (e, "toEntities")),
            nodes: raw.to_nodes.as_deref().map(|n| (n, "toNodes")),
            services: raw.to_services.as_deref(),
            fqdns: raw.to_fqdns.as_deref(),
        };
        let peers = self.peers(&l3, path, requires, raw.to_ports.is_some() || raw.icmps.is_some());
        let ports = self.l4(raw.to_ports.as_deref(), raw.icmps.as_deref(), path, deny, Direction::Egress);
        (self.failed == failed_before).then(|| self.peer_rule(path, deny, peers, ports))
    }

    pub(super) fn peer_rule(&self, path: &str, deny: bool, peers: Peers, ports: Vec<PortRule>) -> PeerRule {
        PeerRule { path: path.to_string(), line: self.r.line_of(&self.path(path)), cookie: 0, deny, peers, ports }
    }

    pub(super) fn exclusive_peers(&mut self, path: &str, fields: &[(&str, bool)]) {
        let present: Vec<&str> = fields.iter().filter(|(_, set)| *set).map(|(name, _)| *name).collect();
        if present.len() > 1 {
            self.error(
                path,
                format!(
                    "combining {} in one rule is not supported; write one rule per peer kind",
                    present.join(" and ")
                ),
            );
        }
    }

    pub(super) fn requires(&mut self, raw: Option<&[api::LabelSelector]>, path: &str) -> Vec<Requirement> {
        let Some(raw) = raw else { return Vec::new() };
        self.warning(
            path,
            "deprecated (removed in Cilium 1.19): the requirements are added to this rule's endpoint peers only",
        );
        let mut requirements = Vec::new();
        for (i, selector) in raw.iter().enumerate() {
            if let Some(selector) = self.selector(selector, &format!("{path}[{i}]")) {
                requirements.extend(selector.requirements().cloned());
            }
        }
        requirements
    }

    pub(super) fn peers(&mut self, l3: &L3, path: &str, requires: Vec<Requirement>, has_l4: bool) -> Peers {
        if l3.is_empty() {
            // No L3 peer: with ports it means every peer; an empty rule `{}` selects nothing.
            return if has_l4 { Peers::All } else { Peers::Some(Vec::new()) };
        }
        let mut peers = Vec::new();
        if let Some((selectors, field)) = l3.endpoints {
            for (i, raw) in selectors.iter().enumerate() {
                let Some(selector) = self.selector(raw, &format!("{path}.{field}[{i}]")) else { continue };
                let selector = requires.iter().cloned().fold(selector, Selector::with);
                peers.push(Peer::Labels(self.scope_peer(selector)));
            }
        }
        if let Some((selectors, field)) = l3.nodes {
            for (i, raw) in selectors.iter().enumerate() {
                // As Cilium's ParseToCiliumRule: remote nodes only, never the local host.
                let remote_node = Requirement::exists(Source::Reserved, "remote-node");
                if let Some(selector) = self.selector(raw, &format!("{path}.{field}[{i}]")) {
                    peers.push(Peer::Nodes(selector.with(remote_node)));
                }
            }
        }
        if let Some((cidrs, field)) = l3.cidr {
            for (i, cidr) in cidrs.iter().enumerate() {
                if let Some(cidr) = self.prefix(cidr, &format!("{path}.{field}[{i}]")) {
                    peers.push(Peer::Cidr(CidrBlock { cidr, except: Vec::new() }));
                }
            }
        }
        if let Some((sets, field)) = l3.cidr_set {
            for (i, set) in sets.iter().enumerate() {
                let at = format!("{path}.{field}[{i}]");
                if set.cidr_group_ref.is_some() || set.cidr_group_selector.is_some() {
                    self.unsupported(&at, "CiliumCIDRGroup references (cidrGroupRef, cidrGroupSelector)");
                    continue;
                }
                let Some(raw_cidr) = &set.cidr else {
                    self.error(&at, "cidr is required");
                    continue;
                };
                if let Some(block) = self.cidr_block(raw_cidr, &set.except, &at) {
                    peers.push(Peer::Cidr(block));
                }
            }
        }
        if let Some((entities, field)) = l3.entities {
            for (i, entity) in entities.iter().enumerate() {
                match entity_selectors(entity) {
                    Some(EntityPeers::All) => return Peers::All,
                    Some(EntityPeers::Selectors(selectors)) => peers.extend(selectors.into_iter().map(Peer::Labels)),
                    None => self.error(
                        &format!("{path}.{field}[{i}]"),
                        format!("unknown entity {entity:?} (one of {})", ENTITIES.join(", ")),
                    ),
                }
            }
        }
        for (i, service) in l3.services.iter().copied().flatten().enumerate() {
            let at = format!("{path}.toServices[{i}]");
            match (&service.k8s_service, &service.k8s_service_selector) {
                (Some(name), None) => peers.push(Peer::Service(ServiceRef::Name {
                    namespace: name
                        .namespace
                        .clone()
                        .or_else(|| self.namespace.clone())
                        .unwrap_or_else(|| "default".into()),
                    name: name.service_name.clone(),
                })),
                (None, Some(sel)) => {
                    if let Some(selector) = self.selector(&sel.selector, &format!("{at}.k8sServiceSelector.selector")) {
                        let namespace = sel.namespace.clone().or_else(|| self.namespace.clone());
                        peers.push(Peer::Service(ServiceRef::Selector { namespace, selector }));
                    }
                }
                _ => self.error(&at, "exactly one of k8sService or k8sServiceSelector is required"),
            }
        }
        for (i, fqdn) in l3.fqdns.iter().copied().flatten().enumerate() {
            if let Some(m) = self.fqdn(fqdn, &format!("{path}.toFQDNs[{i}]")) {
                peers.push(Peer::Fqdn(m));
            }
        }
        Peers::Some(peers)
    }

    /// Peer selectors default to the policy's namespace (CNP) or to any namespace (CCNP), unless
    /// they name a namespace, select by namespace labels, or select reserved identities.
    pub(super) fn scope_peer(&self, selector: Selector) -> Selector {
        let names_namespace = selector.mentions(labels::NAMESPACE_KEY)
            || selector.requirements().any(|r| r.key.starts_with(labels::NAMESPACE_LABELS_PREFIX))
            || selector.mentions_source(Source::Reserved);
        match (&self.namespace, names_namespace) {
            (_, true) => selector,
            (Some(ns), false) => selector.with(Requirement::equals(Source::K8s, labels::NAMESPACE_KEY, ns.clone())),
            (None, false) => selector.with(Requirement::exists(Source::K8s, labels::NAMESPACE_KEY)),
        }
    }
}

/// The L3 peer fields of one rule, with the names they were written under.
pub(super) struct L3<'a> {
    endpoints: Option<(&'a [api::LabelSelector], &'static str)>,
    cidr: Option<(&'a [String], &'static str)>,
    cidr_set: Option<(&'a [api::CidrRule], &'static str)>,
    entities: Option<(&'a [String], &'static str)>,
    nodes: Option<(&'a [api::LabelSelector], &'static str)>,
    services: Option<&'a [api::ServiceRule]>,
    fqdns: Option<&'a [api::FqdnSelector]>,
}

impl L3<'_> {
    pub(super) fn is_empty(&self) -> bool {
        self.endpoints.is_none()
            && self.cidr.is_none()
            && self.cidr_set.is_none()
            && self.entities.is_none()
            && self.nodes.is_none()
            && self.services.is_none()
            && self.fqdns.is_none()
    }
}

pub(super) fn non_empty<T>(list: &Option<Vec<T>>) -> bool {
    list.as_ref().is_some_and(|v| !v.is_empty())
}

pub(super) const ENTITIES: [&str; 13] = [
    "all",
    "world",
    "world-ipv4",
    "world-ipv6",
    "cluster",
    "host",
    "remote-node",
    "kube-apiserver",
    "init",
    "health",
    "unmanaged",
    "ingress",
    "none",
];

pub(super) enum EntityPeers {
    All,
    Selectors(Vec<Selector>),
}

/// Entities as label selectors over identities (Cilium's EntitySelectorMapping).
pub(super) fn entity_selectors(entity: &str) -> Option<EntityPeers> {
    let reserved = |name: &str| Selector::new([Requirement::exists(Source::Reserved, name)]);
    Some(EntityPeers::Selectors(match entity {
        "all" => return Some(EntityPeers::All),
        // Every outside identity carries reserved:world, and its family's label: IPv4 ones
        // (world itself, IPv4 CIDR identities) reserved:world-ipv4, IPv6 ones reserved:world-ipv6.
        "world" | "world-ipv4" | "world-ipv6" => vec![reserved(entity)],
        "none" => Vec::new(),
        "cluster" => ["host", "remote-node", "init", "ingress", "health", "unmanaged", "kube-apiserver"]
            .into_iter()
            .map(reserved)
            .chain([Selector::new([Requirement::equals(Source::K8s, labels::CLUSTER_KEY, labels::CLUSTER_NAME)])])
            .collect(),
        "host" | "remote-node" | "kube-apiserver" | "init" | "health" | "unmanaged" | "ingress" => {
            vec![reserved(entity)]
        }
        _ => return None,
    }))
}
