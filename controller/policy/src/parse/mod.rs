//! From YAML text to the normalized model: parse, validate every field, translate each kind.
//! A policy with any error is left out of the set, and every problem is reported with its file,
//! line and field path.
use std::collections::BTreeSet;

use serde::de::DeserializeOwned;

use crate::api;
use crate::diag::{Diagnostic, Reporter, Severity};
use crate::model::*;
use crate::yaml::{self, Limits, Node};

mod cilium;
mod network_policy;
mod ports;
mod selectors;

use selectors::{force_namespace, is_dns_subdomain, namespace_label_selector};

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
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s).trim()
}
