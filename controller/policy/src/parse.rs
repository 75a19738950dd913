//! From YAML text to the normalized model: parse, validate every field, translate each kind.
//! A policy with any error is left out of the set, and every problem is reported with its file,
//! line and field path.
use std::collections::BTreeSet;

use regex::{Regex, RegexBuilder};
use serde::de::DeserializeOwned;

use crate::api;
use crate::diag::{Diagnostic, Reporter, Severity};
use crate::labels::{self, Source};
use crate::model::*;
use crate::selector::{Operator, Requirement, Selector};
use crate::yaml::{self, Limits, Node};

pub struct SourceFile<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

#[derive(Clone, Debug)]
pub struct ParseOptions {
    /// Namespace of namespaced policies that do not name one (like `kubectl apply -n`).
    pub default_namespace: String,
    pub limits: Limits,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions { default_namespace: "default".into(), limits: Limits::default() }
    }
}

#[derive(Debug, Default)]
pub struct Parsed {
    pub set: PolicySet,
    pub diagnostics: Vec<Diagnostic>,
}

impl Parsed {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    /// Adds a policy unless one with its id is in already (`seen`); a second definition is an
    /// error at its own file and line. Returns whether it was added.
    pub fn push_unique(&mut self, policy: Policy, seen: &mut BTreeSet<PolicyId>) -> bool {
        if !seen.insert(policy.id.clone()) {
            self.diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: policy.file.clone(),
                line: policy.line,
                path: "metadata.name".into(),
                message: format!("{} is defined more than once", policy.id),
            });
            return false;
        }
        self.set.policies.push(policy);
        true
    }

    /// Refuses the whole set when it holds more policies than the limit. Returns whether it was
    /// within the limit.
    pub fn enforce_limit(&mut self) -> bool {
        if self.set.policies.len() <= MAX_POLICIES {
            return true;
        }
        self.diagnostics.push(Diagnostic {
            severity: Severity::Error,
            file: String::new(),
            line: 0,
            path: String::new(),
            message: format!("{} policies exceed the limit of {MAX_POLICIES}", self.set.policies.len()),
        });
        self.set.policies.clear();
        false
    }
}

/// Upper bound on regex program size, so a hostile pattern cannot eat memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

pub fn parse_policies(files: &[SourceFile], options: &ParseOptions) -> Parsed {
    let mut parsed = Parsed::default();
    let mut seen = BTreeSet::new();
    for file in files {
        let documents = match yaml::parse_documents(file.text, &options.limits) {
            Ok(documents) => documents,
            Err(e) => {
                parsed.diagnostics.push(Diagnostic {
                    severity: Severity::Error,
                    file: file.name.to_string(),
                    line: e.line,
                    path: String::new(),
                    message: e.message,
                });
                continue;
            }
        };
        for root in &documents {
            let mut reporter = Reporter { file: file.name, root, diagnostics: &mut parsed.diagnostics };
            let mut policies = Vec::new();
            parse_object(&mut reporter, root, "", options, &mut policies);
            for policy in policies {
                parsed.push_unique(policy, &mut seen);
            }
        }
    }
    parsed.enforce_limit();
    parsed.set.renumber();
    parsed
}

impl PolicySet {
    /// Gives every peer rule its cookie from its position in the set.
    pub fn renumber(&mut self) {
        for (policy_index, policy) in self.policies.iter_mut().enumerate() {
            let mut rule_index = 0;
            for rule in &mut policy.rules {
                for peer_rule in rule.ingress.rules.iter_mut().chain(rule.egress.rules.iter_mut()) {
                    peer_rule.cookie = cookie(policy_index, rule_index);
                    rule_index += 1;
                }
            }
        }
    }
}

fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (_, true) => prefix.to_string(),
        _ if path.starts_with('[') => format!("{prefix}{path}"),
        _ => format!("{prefix}.{path}"),
    }
}

fn parse_object(r: &mut Reporter, root: &Node, prefix: &str, options: &ParseOptions, out: &mut Vec<Policy>) {
    let node = if prefix.is_empty() { root } else { root.get(&yaml::parse_path(prefix)).unwrap_or(root) };
    let json = node.to_json();
    let field = |name: &str| json.get(name).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "List") => {
            let count = json.get("items").and_then(|v| v.as_array()).map_or(0, |a| a.len());
            for i in 0..count {
                parse_object(r, root, &join(prefix, &format!("items[{i}]")), options, out);
            }
        }
        ("cilium.io/v2", "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy") => {
            if let Some(raw) = deserialize::<api::CiliumPolicy>(r, prefix, json) {
                let line = r.line_of(prefix);
                let mut ctx = Translator::new(r, prefix, options, &raw.metadata, &kind);
                if let Some(policy) = ctx.cilium_policy(&raw, line) {
                    out.push(policy);
                }
            }
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            if let Some(raw) = deserialize::<api::NetworkPolicy>(r, prefix, json) {
                let line = r.line_of(prefix);
                let mut ctx = Translator::new(r, prefix, options, &raw.metadata, &kind);
                if let Some(policy) = ctx.network_policy(&raw, line) {
                    out.push(policy);
                }
            }
        }
        ("", _) | (_, "") => {
            // Name the field that is missing, and the miscased key if that is why (`apiversion:`).
            let keys: Vec<&str> = json.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
            let missing = if api_version.is_empty() { "apiVersion" } else { "kind" };
            match keys.iter().find(|k| k.eq_ignore_ascii_case(missing) && **k != missing) {
                Some(found) => r.error(
                    &join(prefix, found),
                    format!("not a Kubernetes object: {missing} is required (field names are case-sensitive: {found:?} is not {missing:?})"),
                ),
                None => r.error(prefix, format!("not a Kubernetes object: {missing} is required")),
            }
        }
        (version, kind) if version.starts_with("cilium.io/") || version.starts_with("networking.k8s.io/") => r.error(
            &join(prefix, "kind"),
            format!("unsupported: {version} {kind} is not a policy kind Palisade enforces"),
        ),
        (version, kind) => {
            r.warning(&join(prefix, "kind"), format!("ignored: {version} {kind} is not a network policy"))
        }
    }
}

fn deserialize<T: DeserializeOwned>(r: &mut Reporter, prefix: &str, json: serde_json::Value) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(json) {
        Ok(value) => Some(value),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            r.error(&join(prefix, &path), e.into_inner().to_string());
            None
        }
    }
}

/// Translates one resource; remembers whether any error was reported for it.
struct Translator<'r, 'a> {
    r: &'r mut Reporter<'a>,
    prefix: String,
    kind: PolicyKind,
    namespace: Option<String>,
    failed: bool,
}

impl<'r, 'a> Translator<'r, 'a> {
    fn new(r: &'r mut Reporter<'a>, prefix: &str, options: &ParseOptions, meta: &api::ObjectMeta, kind: &str) -> Self {
        let kind = match kind {
            "CiliumNetworkPolicy" => PolicyKind::CiliumNetworkPolicy,
            "CiliumClusterwideNetworkPolicy" => PolicyKind::CiliumClusterwideNetworkPolicy,
            _ => PolicyKind::NetworkPolicy,
        };
        let namespace = match kind {
            PolicyKind::CiliumClusterwideNetworkPolicy => None,
            _ => Some(meta.namespace.clone().unwrap_or_else(|| options.default_namespace.clone())),
        };
        Translator { r, prefix: prefix.to_string(), kind, namespace, failed: false }
    }

    fn path(&self, path: &str) -> String {
        join(&self.prefix, path)
    }

    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.failed = true;
        let path = self.path(path);
        self.r.error(&path, message);
    }

    fn warning(&mut self, path: &str, message: impl Into<String>) {
        let path = self.path(path);
        self.r.warning(&path, message);
    }

    fn unsupported(&mut self, path: &str, feature: &str) {
        self.error(path, format!("unsupported: {feature} is not implemented by Palisade yet"));
    }

    fn check_meta(&mut self, meta: &api::ObjectMeta) {
        if meta.name.is_empty() {
            self.error("metadata.name", "a name is required");
        } else if !is_dns_subdomain(&meta.name) {
            self.error(
                "metadata.name",
                format!("{:?} is not a valid name (lowercase letters, digits, '-' and '.')", meta.name),
            );
        }
        if self.kind == PolicyKind::CiliumClusterwideNetworkPolicy && meta.namespace.is_some() {
            self.warning(
                "metadata.namespace",
                "a CiliumClusterwideNetworkPolicy is cluster-wide; the namespace is ignored",
            );
        }
    }

    fn finish(&self, meta: &api::ObjectMeta, line: u32, rules: Vec<Rule>) -> Option<Policy> {
        if self.failed {
            return None;
        }
        let node =
            if self.prefix.is_empty() { self.r.root } else { self.r.root.get(&yaml::parse_path(&self.prefix))? };
        Some(Policy {
            id: PolicyId { kind: self.kind, namespace: self.namespace.clone(), name: meta.name.clone() },
            file: self.r.file.to_string(),
            line,
            rules,
            source: node.to_json(),
        })
    }

    fn cilium_policy(&mut self, raw: &api::CiliumPolicy, line: u32) -> Option<Policy> {
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

    fn cilium_rule(&mut self, raw: &api::Rule, path: &str) -> Option<Rule> {
        if raw.node_selector.is_some() {
            self.unsupported(&format!("{path}.nodeSelector"), "host firewall policy (nodeSelector)");
            return None;
        }
        let Some(raw_subject) = &raw.endpoint_selector else {
            self.error(path, "endpointSelector is required");
            return None;
        };
        let subject = self.selector(raw_subject, &format!("{path}.endpointSelector"))?;
        let subject = match self.namespace.clone() {
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
        let line = self.r.line_of(&self.path(&format!("{path}.endpointSelector")));
        Some(Rule {
            path: path.to_string(),
            line,
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

    fn ingress_rule(&mut self, raw: &api::IngressRule, path: &str, deny: bool) -> Option<PeerRule> {
        let failed_before = self.failed;
        if raw.from_nodes.is_some() {
            self.unsupported(&format!("{path}.fromNodes"), "fromNodes (node selector labels)");
        }
        if raw.from_groups.is_some() {
            self.unsupported(&format!("{path}.fromGroups"), "fromGroups (cloud provider groups)");
        }
        if raw.authentication.is_some() {
            self.unsupported(&format!("{path}.authentication"), "mutual authentication");
        }
        self.exclusive_peers(
            path,
            &[
                ("fromEndpoints", raw.from_endpoints.is_some()),
                ("fromCIDR", raw.from_cidr.is_some()),
                ("fromCIDRSet", raw.from_cidr_set.is_some()),
                ("fromEntities", raw.from_entities.is_some()),
            ],
        );
        let requires = self.requires(raw.from_requires.as_deref(), &format!("{path}.fromRequires"));
        let l3 = L3 {
            endpoints: raw.from_endpoints.as_deref().map(|e| (e, "fromEndpoints")),
            cidr: raw.from_cidr.as_deref().map(|c| (c, "fromCIDR")),
            cidr_set: raw.from_cidr_set.as_deref().map(|c| (c, "fromCIDRSet")),
            entities: raw.from_entities.as_deref().map(|e| (e, "fromEntities")),
            services: None,
            fqdns: None,
        };
        let peers = self.peers(&l3, path, requires, raw.to_ports.is_some() || raw.icmps.is_some());
        let ports = self.l4(raw.to_ports.as_deref(), raw.icmps.as_deref(), path, deny, Direction::Ingress);
        (self.failed == failed_before).then(|| self.peer_rule(path, deny, peers, ports))
    }

    fn egress_rule(&mut self, raw: &api::EgressRule, path: &str, deny: bool) -> Option<PeerRule> {
        let failed_before = self.failed;
        if raw.to_nodes.is_some() {
            self.unsupported(&format!("{path}.toNodes"), "toNodes (node selector labels)");
        }
        if raw.to_groups.is_some() {
            self.unsupported(&format!("{path}.toGroups"), "toGroups (cloud provider groups)");
        }
        if raw.authentication.is_some() {
            self.unsupported(&format!("{path}.authentication"), "mutual authentication");
        }
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
            services: raw.to_services.as_deref(),
            fqdns: raw.to_fqdns.as_deref(),
        };
        let peers = self.peers(&l3, path, requires, raw.to_ports.is_some() || raw.icmps.is_some());
        let ports = self.l4(raw.to_ports.as_deref(), raw.icmps.as_deref(), path, deny, Direction::Egress);
        (self.failed == failed_before).then(|| self.peer_rule(path, deny, peers, ports))
    }

    fn peer_rule(&self, path: &str, deny: bool, peers: Peers, ports: Vec<PortRule>) -> PeerRule {
        PeerRule { path: path.to_string(), line: self.r.line_of(&self.path(path)), cookie: 0, deny, peers, ports }
    }

    fn exclusive_peers(&mut self, path: &str, fields: &[(&str, bool)]) {
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

    fn requires(&mut self, raw: Option<&[api::LabelSelector]>, path: &str) -> Vec<Requirement> {
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

    fn peers(&mut self, l3: &L3, path: &str, requires: Vec<Requirement>, has_l4: bool) -> Peers {
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
    fn scope_peer(&self, selector: Selector) -> Selector {
        let names_namespace = selector.mentions(labels::NAMESPACE_KEY)
            || selector.requirements().any(|r| r.key.starts_with(labels::NAMESPACE_LABELS_PREFIX))
            || selector.mentions_source(Source::Reserved);
        match (&self.namespace, names_namespace) {
            (_, true) => selector,
            (Some(ns), false) => selector.with(Requirement::equals(Source::K8s, labels::NAMESPACE_KEY, ns.clone())),
            (None, false) => selector.with(Requirement::exists(Source::K8s, labels::NAMESPACE_KEY)),
        }
    }

    fn selector(&mut self, raw: &api::LabelSelector, path: &str) -> Option<Selector> {
        let failed_before = self.failed;
        let mut requirements = Vec::new();
        for (key, value) in &raw.match_labels {
            let at = format!("{path}.matchLabels[{key:?}]");
            if let Some((source, key)) = self.label_key(key, &at) {
                if !is_label_value(value) {
                    self.error(&at, format!("{value:?} is not a valid label value"));
                }
                requirements.push(Requirement::equals(source, key, value.clone()));
            }
        }
        for (i, expr) in raw.match_expressions.iter().enumerate() {
            let at = format!("{path}.matchExpressions[{i}]");
            let Some((source, key)) = self.label_key(&expr.key, &format!("{at}.key")) else { continue };
            let operator = match expr.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    self.error(
                        &format!("{at}.operator"),
                        format!("{other:?} is not In, NotIn, Exists or DoesNotExist"),
                    );
                    continue;
                }
            };
            let needs_values = matches!(operator, Operator::In | Operator::NotIn);
            if needs_values && expr.values.is_empty() {
                self.error(&format!("{at}.values"), format!("{} needs at least one value", expr.operator));
            } else if !needs_values && !expr.values.is_empty() {
                self.error(&format!("{at}.values"), format!("{} takes no values", expr.operator));
            }
            requirements.push(Requirement {
                source,
                key: key.to_string(),
                operator,
                values: expr.values.iter().cloned().collect(),
            });
        }
        (self.failed == failed_before).then(|| Selector::new(requirements))
    }

    fn label_key<'k>(&mut self, raw: &'k str, path: &str) -> Option<(Source, &'k str)> {
        match labels::parse_key(raw) {
            Some((source, key)) if !key.is_empty() && key.len() <= 317 => Some((source, key)),
            Some(_) => {
                self.error(path, format!("{raw:?} is not a valid label key"));
                None
            }
            None => {
                self.error(
                    path,
                    format!("{raw:?} has an unknown label source (k8s, any, reserved, cidr, container, unspec)"),
                );
                None
            }
        }
    }

    fn prefix(&mut self, raw: &str, path: &str) -> Option<Prefix> {
        if let Some(prefix) = Prefix::parse(raw) {
            return Some(prefix);
        }
        if is_ipv6_prefix(raw) {
            self.warning(
                path,
                format!("{raw}: IPv6 is not enforced by Palisade's IPv4 datapath yet; this prefix selects nothing"),
            );
        } else {
            self.error(path, format!("{raw:?} is not an IP address or CIDR prefix"));
        }
        None
    }

    fn cidr_block(&mut self, cidr: &str, except: &[String], path: &str) -> Option<CidrBlock> {
        let cidr = self.prefix(cidr, &format!("{path}.cidr"))?;
        let mut block = CidrBlock { cidr, except: Vec::new() };
        for (i, raw) in except.iter().enumerate() {
            let at = format!("{path}.except[{i}]");
            if let Some(except) = self.prefix(raw, &at) {
                if !cidr.contains(&except) {
                    self.error(&at, format!("{except} is not inside {cidr}"));
                }
                block.except.push(except);
            }
        }
        Some(block)
    }

    fn fqdn(&mut self, raw: &api::FqdnSelector, path: &str) -> Option<FqdnMatch> {
        let valid_name = |s: &str, wildcard: bool| {
            !s.is_empty()
                && s.len() <= 255
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' || (wildcard && c == '*'))
        };
        match (&raw.match_name, &raw.match_pattern) {
            (Some(name), None) if valid_name(name, false) => Some(FqdnMatch::Name(name.to_ascii_lowercase())),
            (None, Some(pattern)) if valid_name(pattern, true) => {
                Some(FqdnMatch::Pattern(pattern.to_ascii_lowercase()))
            }
            (Some(name), None) => {
                self.error(&format!("{path}.matchName"), format!("{name:?} is not a DNS name"));
                None
            }
            (None, Some(pattern)) => {
                self.error(
                    &format!("{path}.matchPattern"),
                    format!("{pattern:?} is not a DNS name pattern (letters, digits, '-', '.', '*')"),
                );
                None
            }
            _ => {
                self.error(path, "exactly one of matchName or matchPattern is required");
                None
            }
        }
    }

    fn l4(
        &mut self,
        to_ports: Option<&[api::PortRule]>,
        icmps: Option<&[api::IcmpRule]>,
        path: &str,
        deny: bool,
        direction: Direction,
    ) -> Vec<PortRule> {
        let mut rules = Vec::new();
        if to_ports.is_some() && icmps.is_some() {
            self.error(
                &format!("{path}.icmps"),
                "icmps cannot be combined with toPorts in one rule; write a separate rule",
            );
        }
        for (i, port_rule) in to_ports.iter().copied().flatten().enumerate() {
            let at = format!("{path}.toPorts[{i}]");
            for (field, value, feature) in [
                ("listener", &port_rule.listener, "Envoy listener redirects"),
                ("serverNames", &port_rule.server_names, "TLS server names (SNI)"),
                ("originatingTLS", &port_rule.originating_tls, "TLS origination"),
                ("terminatingTLS", &port_rule.terminating_tls, "TLS termination"),
            ] {
                if value.is_some() {
                    self.unsupported(&format!("{at}.{field}"), feature);
                }
            }
            let l7 = port_rule.rules.as_ref().and_then(|raw| self.l7(raw, &format!("{at}.rules"), deny, direction));
            let l7_at = l7.as_ref().map(|l7| {
                let field = format!("{at}.rules.{}", l7.kind());
                let line = self.r.line_of(&self.path(&field));
                (field, line)
            });
            if port_rule.ports.is_empty() {
                // `toPorts: [{rules: ...}]` without ports applies to every port (ANY protocol).
                for protocol in [Protocol::TCP, Protocol::UDP, Protocol::SCTP] {
                    rules.push(PortRule { protocol, port: PortSpec::Any, l7: l7.clone(), l7_at: l7_at.clone() });
                }
            }
            for (j, port) in port_rule.ports.iter().enumerate() {
                let at = format!("{at}.ports[{j}]");
                let Some((protocols, spec)) = self.port(port, &at) else { continue };
                if let (Some(L7Rules::Dns(_)), PortSpec::Range(lo, hi)) = (&l7, &spec)
                    && lo != hi
                {
                    self.error(&format!("{at}.endPort"), "DNS rules do not support port ranges");
                }
                for protocol in protocols {
                    rules.push(PortRule { protocol, port: spec.clone(), l7: l7.clone(), l7_at: l7_at.clone() });
                }
            }
        }
        for (i, icmp) in icmps.iter().copied().flatten().enumerate() {
            for (j, field) in icmp.fields.iter().enumerate() {
                let at = format!("{path}.icmps[{i}].fields[{j}]");
                let protocol = match field.family.as_deref() {
                    None | Some("IPv4") => Protocol::ICMP,
                    Some("IPv6") => Protocol::ICMPv6,
                    Some(other) => {
                        self.error(&format!("{at}.family"), format!("{other:?} is not IPv4 or IPv6"));
                        continue;
                    }
                };
                match icmp_type(&field.icmp_type, protocol) {
                    Some(t) => rules.push(PortRule {
                        protocol,
                        port: PortSpec::Range(t as u16, t as u16),
                        l7: None,
                        l7_at: None,
                    }),
                    None => self.error(
                        &format!("{at}.type"),
                        format!("{:?} is not an ICMP type number or name", display_int_or_string(&field.icmp_type)),
                    ),
                }
            }
        }
        rules
    }

    fn port(&mut self, raw: &api::PortProtocol, path: &str) -> Option<(Vec<Protocol>, PortSpec)> {
        let protocols = match raw.protocol.as_deref() {
            None | Some("ANY") => vec![Protocol::TCP, Protocol::UDP, Protocol::SCTP],
            Some("TCP") => vec![Protocol::TCP],
            Some("UDP") => vec![Protocol::UDP],
            Some("SCTP") => vec![Protocol::SCTP],
            Some("VRRP") => vec![Protocol::VRRP],
            Some("IGMP") => vec![Protocol::IGMP],
            Some(other) => {
                self.error(&format!("{path}.protocol"), format!("{other:?} is not TCP, UDP, SCTP, ANY, VRRP or IGMP"));
                return None;
            }
        };
        let spec = self.port_spec(raw.port.as_ref(), raw.end_port, path)?;
        if matches!(protocols[0], Protocol::VRRP | Protocol::IGMP) && spec != PortSpec::Any {
            self.error(&format!("{path}.port"), "VRRP and IGMP have no ports");
            return None;
        }
        Some((protocols, spec))
    }

    /// Shared by CNP `toPorts` and NetworkPolicy `ports`.
    fn port_spec(&mut self, port: Option<&api::IntOrString>, end_port: Option<i64>, path: &str) -> Option<PortSpec> {
        let number = |n: i64| u16::try_from(n).ok();
        let spec = match port {
            None => PortSpec::Any,
            Some(api::IntOrString::Int(n)) => match number(*n) {
                Some(0) => PortSpec::Any,
                Some(p) => PortSpec::Range(p, p),
                None => {
                    self.error(&format!("{path}.port"), format!("{n} is not a port (0-65535)"));
                    return None;
                }
            },
            Some(api::IntOrString::String(s)) => match s.parse::<i64>() {
                Ok(n) => return self.port_spec(Some(&api::IntOrString::Int(n)), end_port, path),
                Err(_) if is_port_name(s) => PortSpec::Named(s.clone()),
                Err(_) => {
                    self.error(&format!("{path}.port"), format!("{s:?} is not a port or a port name"));
                    return None;
                }
            },
        };
        match (end_port, &spec) {
            (None, _) => Some(spec),
            (Some(end), PortSpec::Range(start, _)) => match number(end) {
                Some(end) if end >= *start => Some(PortSpec::Range(*start, end)),
                _ => {
                    self.error(&format!("{path}.endPort"), format!("{end} is not a port at or above port {start}"));
                    None
                }
            },
            (Some(_), PortSpec::Named(_)) => {
                self.warning(&format!("{path}.endPort"), "endPort is ignored with a named port");
                Some(spec)
            }
            (Some(_), PortSpec::Any) => {
                self.error(&format!("{path}.endPort"), "endPort needs a port");
                None
            }
        }
    }

    fn l7(&mut self, raw: &api::L7Rules, path: &str, deny: bool, direction: Direction) -> Option<L7Rules> {
        if deny {
            self.error(path, "L7 rules are not allowed in deny rules");
            return None;
        }
        if raw.l7proto.is_some() || raw.l7.is_some() {
            self.unsupported(path, "generic L7 parsers (l7proto)");
            return None;
        }
        let kinds = [raw.http.is_some(), raw.kafka.is_some(), raw.dns.is_some()].iter().filter(|k| **k).count();
        if kinds != 1 {
            self.error(path, "exactly one of http, kafka or dns is required");
            return None;
        }
        if let Some(http) = &raw.http {
            let mut rules = Vec::new();
            for (i, rule) in http.iter().enumerate() {
                let at = format!("{path}.http[{i}]");
                if rule.header_matches.is_some() {
                    self.unsupported(&format!("{at}.headerMatches"), "HTTP headerMatches");
                }
                let headers = rule
                    .headers
                    .iter()
                    .map(|h| match h.split_once(':') {
                        Some((name, value)) => (name.trim().to_ascii_lowercase(), Some(value.trim().to_string())),
                        None => (h.trim().to_ascii_lowercase(), None),
                    })
                    .collect();
                rules.push(HttpMatch {
                    method: self.regex(rule.method.as_deref(), &format!("{at}.method")),
                    path: self.regex(rule.path.as_deref(), &format!("{at}.path")),
                    host: self.regex(rule.host.as_deref(), &format!("{at}.host")),
                    headers,
                });
            }
            return Some(L7Rules::Http(rules));
        }
        if let Some(kafka) = &raw.kafka {
            let mut rules = Vec::new();
            for (i, rule) in kafka.iter().enumerate() {
                let at = format!("{path}.kafka[{i}]");
                if let Some(role) = &rule.role
                    && role != "produce"
                    && role != "consume"
                {
                    self.error(&format!("{at}.role"), format!("{role:?} is not produce or consume"));
                }
                if rule.role.is_some() && rule.api_key.is_some() {
                    self.error(&at, "role and apiKey are mutually exclusive");
                }
                if let Some(key) = &rule.api_key
                    && !KAFKA_API_KEYS.contains(&key.as_str())
                    && key.parse::<u16>().is_err()
                {
                    self.error(&format!("{at}.apiKey"), format!("{key:?} is not a Kafka API key"));
                }
                rules.push(KafkaMatch {
                    role: rule.role.clone(),
                    api_key: rule.api_key.clone(),
                    api_version: rule.api_version.clone(),
                    client_id: rule.client_id.clone(),
                    topic: rule.topic.clone(),
                });
            }
            return Some(L7Rules::Kafka(rules));
        }
        if direction == Direction::Ingress {
            self.error(&format!("{path}.dns"), "DNS rules apply to egress only");
            return None;
        }
        let mut matches = Vec::new();
        for (i, fqdn) in raw.dns.iter().flatten().enumerate() {
            matches.extend(self.fqdn(fqdn, &format!("{path}.dns[{i}]")));
        }
        Some(L7Rules::Dns(matches))
    }

    /// A full-match regex with a bounded program size; `None` when absent or invalid.
    fn regex(&mut self, pattern: Option<&str>, path: &str) -> Option<Regex> {
        let pattern = pattern?;
        match RegexBuilder::new(&format!("^(?:{pattern})$")).size_limit(REGEX_SIZE_LIMIT).build() {
            Ok(regex) => Some(regex),
            Err(e) => {
                self.error(
                    path,
                    format!("{pattern:?} is not a valid regular expression: {}", first_line(&e.to_string())),
                );
                None
            }
        }
    }

    fn network_policy(&mut self, raw: &api::NetworkPolicy, line: u32) -> Option<Policy> {
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
            subject: subject?,
            description: None,
            ingress: section(Direction::Ingress, ingress),
            egress: section(Direction::Egress, egress),
        };
        self.finish(&raw.metadata, line, vec![rule])
    }

    fn knp_rule(
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

/// The L3 peer fields of one rule, with the names they were written under.
struct L3<'a> {
    endpoints: Option<(&'a [api::LabelSelector], &'static str)>,
    cidr: Option<(&'a [String], &'static str)>,
    cidr_set: Option<(&'a [api::CidrRule], &'static str)>,
    entities: Option<(&'a [String], &'static str)>,
    services: Option<&'a [api::ServiceRule]>,
    fqdns: Option<&'a [api::FqdnSelector]>,
}

impl L3<'_> {
    fn is_empty(&self) -> bool {
        self.endpoints.is_none()
            && self.cidr.is_none()
            && self.cidr_set.is_none()
            && self.entities.is_none()
            && self.services.is_none()
            && self.fqdns.is_none()
    }
}

fn non_empty<T>(list: &Option<Vec<T>>) -> bool {
    list.as_ref().is_some_and(|v| !v.is_empty())
}

/// Replaces any namespace requirement with the policy's own namespace.
fn force_namespace(selector: Selector, namespace: &str) -> Selector {
    Selector::new(
        selector.requirements().filter(|r| r.key != labels::NAMESPACE_KEY).cloned().chain([Requirement::equals(
            Source::K8s,
            labels::NAMESPACE_KEY,
            namespace,
        )]),
    )
}

/// A NetworkPolicy namespaceSelector selects by namespace labels; empty means every namespace.
fn namespace_label_selector(selector: Selector) -> Vec<Requirement> {
    let mut requirements: Vec<Requirement> = selector
        .requirements()
        .map(|r| Requirement {
            source: Source::K8s,
            key: format!("{}{}", labels::NAMESPACE_LABELS_PREFIX, r.key),
            ..r.clone()
        })
        .collect();
    if requirements.is_empty() {
        requirements.push(Requirement::exists(Source::K8s, labels::NAMESPACE_KEY));
    }
    requirements
}

const ENTITIES: [&str; 13] = [
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

enum EntityPeers {
    All,
    Selectors(Vec<Selector>),
}

/// Entities as label selectors over identities (Cilium's EntitySelectorMapping).
fn entity_selectors(entity: &str) -> Option<EntityPeers> {
    let reserved = |name: &str| Selector::new([Requirement::exists(Source::Reserved, name)]);
    Some(EntityPeers::Selectors(match entity {
        "all" => return Some(EntityPeers::All),
        "world" | "world-ipv4" => vec![reserved("world")],
        "world-ipv6" | "none" => Vec::new(),
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

const KAFKA_API_KEYS: [&str; 21] = [
    "produce",
    "fetch",
    "offsets",
    "metadata",
    "leaderandisr",
    "stopreplica",
    "updatemetadata",
    "controlledshutdown",
    "offsetcommit",
    "offsetfetch",
    "findcoordinator",
    "joingroup",
    "heartbeat",
    "leavegroup",
    "syncgroup",
    "describegroups",
    "listgroups",
    "saslhandshake",
    "apiversions",
    "createtopics",
    "deletetopics",
];

fn icmp_type(raw: &api::IntOrString, protocol: Protocol) -> Option<u8> {
    const V4: [(&str, u8); 12] = [
        ("EchoReply", 0),
        ("DestinationUnreachable", 3),
        ("Redirect", 5),
        ("Echo", 8),
        ("EchoRequest", 8),
        ("RouterAdvertisement", 9),
        ("RouterSelection", 10),
        ("TimeExceeded", 11),
        ("ParameterProblem", 12),
        ("Timestamp", 13),
        ("TimestampReply", 14),
        ("Photuris", 40),
    ];
    const V6: [(&str, u8); 9] = [
        ("DestinationUnreachable", 1),
        ("PacketTooBig", 2),
        ("TimeExceeded", 3),
        ("ParameterProblem", 4),
        ("EchoRequest", 128),
        ("EchoReply", 129),
        ("RouterSolicitation", 133),
        ("RouterAdvertisement", 134),
        ("NeighborSolicitation", 135),
    ];
    match raw {
        api::IntOrString::Int(n) => u8::try_from(*n).ok(),
        api::IntOrString::String(s) => s.parse::<u8>().ok().or_else(|| {
            let table: &[(&str, u8)] = if protocol == Protocol::ICMP { &V4 } else { &V6 };
            table.iter().find(|(name, _)| name == s).map(|(_, t)| *t)
        }),
    }
}

fn display_int_or_string(v: &api::IntOrString) -> String {
    match v {
        api::IntOrString::Int(n) => n.to_string(),
        api::IntOrString::String(s) => s.clone(),
    }
}

/// IANA service names, as Kubernetes validates container port names, and starting with a
/// letter: Kubernetes would take `"80a"` as a name that matches no container port (a silent
/// deny), but it is a mistyped number far more often than a real port name.
fn is_port_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.len() <= 15
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn is_label_value(s: &str) -> bool {
    s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_ipv6_prefix(s: &str) -> bool {
    let addr = s.split_once('/').map_or(s, |(a, _)| a);
    addr.parse::<std::net::Ipv6Addr>().is_ok()
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s).trim()
}
