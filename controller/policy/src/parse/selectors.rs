//! The rule translation every kind shares for peers: label selectors, label keys, CIDR prefixes and
//! blocks, FQDN selectors.

use super::*;
use crate::api;
use crate::labels::{self, Source};
use crate::selector::{Operator, Requirement, Selector};

impl Translator<'_, '_> {
    pub(super) fn selector(&mut self, raw: &api::LabelSelector, path: &str) -> Option<Selector> {
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

    pub(super) fn label_key<'k>(&mut self, raw: &'k str, path: &str) -> Option<(Source, &'k str)> {
        match labels::parse_key(raw) {
            Some((source, key)) if !key.is_empty() && key.len() <= 317 => Some((source, key)),
            Some(_) => {
                self.error(path, format!("{raw:?} is not a valid label key"));
                None
            }
            None => {
                self.error(
                    path,
                    format!("{raw:?} has an unknown label source (k8s, any, reserved, cidr, container, unspec, node)"),
                );
                None
            }
        }
    }

    pub(super) fn prefix(&mut self, raw: &str, path: &str) -> Option<Prefix> {
        let prefix = Prefix::parse(raw);
        if prefix.is_none() {
            self.error(path, format!("{raw:?} is not an IP address or CIDR prefix"));
        }
        prefix
    }

    pub(super) fn cidr_block(&mut self, cidr: &str, except: &[String], path: &str) -> Option<CidrBlock> {
        let cidr = self.prefix(cidr, &format!("{path}.cidr"))?;
        let mut block = CidrBlock { cidr, except: Vec::new() };
        let family = |p: &Prefix| if p.is_ipv4() { "IPv4" } else { "IPv6" };
        for (i, raw) in except.iter().enumerate() {
            let at = format!("{path}.except[{i}]");
            if let Some(except) = self.prefix(raw, &at) {
                if except.is_ipv4() != cidr.is_ipv4() {
                    self.error(
                        &at,
                        format!(
                            "{except} is {} but cidr {cidr} is {}: an except must be of its cidr's family",
                            family(&except),
                            family(&cidr)
                        ),
                    );
                } else if !cidr.contains(&except) {
                    self.error(&at, format!("{except} is not inside {cidr}"));
                }
                block.except.push(except);
            }
        }
        Some(block)
    }

    pub(super) fn fqdn(&mut self, raw: &api::FqdnSelector, path: &str) -> Option<FqdnMatch> {
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
}

/// Replaces any namespace requirement with the policy's own namespace.
pub(super) fn force_namespace(selector: Selector, namespace: &str) -> Selector {
    Selector::new(
        selector.requirements().filter(|r| r.key != labels::NAMESPACE_KEY).cloned().chain([Requirement::equals(
            Source::K8s,
            labels::NAMESPACE_KEY,
            namespace,
        )]),
    )
}

/// A NetworkPolicy namespaceSelector selects by namespace labels; empty means every namespace.
pub(super) fn namespace_label_selector(selector: Selector) -> Vec<Requirement> {
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

pub(super) fn is_label_value(s: &str) -> bool {
    s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub(super) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}
