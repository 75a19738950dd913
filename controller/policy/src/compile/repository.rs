//! The policy repository (Cilium's `Repository`): the policies of a set, and an index of their
//! rules by namespace, so an endpoint group's identity only meets the rules that can select it.
use std::collections::{BTreeSet, HashMap};

use super::selector_cache::single_namespace;
use crate::identity::Identity;
use crate::model::{Policy, PolicySet, PortSpec, Rule};

/// A rule of the repository: policy index, rule index within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RuleRef {
    pub policy: usize,
    pub rule: usize,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Repository {
    set: PolicySet,
    by_namespace: HashMap<String, Vec<RuleRef>>,
    cluster_wide: Vec<RuleRef>,
}

/// A policy [`Repository::upsert`] added or replaced.
pub(crate) struct Upserted {
    pub index: usize,
    pub old: Option<Policy>,
}

impl Repository {
    pub fn new(set: PolicySet) -> Repository {
        let mut repository = Repository { set, ..Repository::default() };
        for (p, policy) in repository.set.policies.iter().enumerate() {
            let list = match &policy.id.namespace {
                Some(ns) => repository.by_namespace.entry(ns.clone()).or_default(),
                None => &mut repository.cluster_wide,
            };
            list.extend((0..policy.rules.len()).map(|rule| RuleRef { policy: p, rule }));
        }
        repository
    }

    pub fn policies(&self) -> &PolicySet {
        &self.set
    }

    pub fn into_policies(self) -> PolicySet {
        self.set
    }

    pub fn rule(&self, at: RuleRef) -> &Rule {
        &self.set.policies[at.policy].rules[at.rule]
    }

    /// Adds or replaces the policy with `policy`'s id, renumbering the set.
    pub fn upsert(&mut self, policy: Policy) -> Upserted {
        let (index, old) = match self.set.policies.iter().position(|p| p.id == policy.id) {
            Some(i) => (i, Some(std::mem::replace(&mut self.set.policies[i], policy))),
            None => {
                self.set.policies.push(policy);
                (self.set.policies.len() - 1, None)
            }
        };
        self.set.renumber();
        self.index_rules(index, old.as_ref().map_or(0, |o| o.rules.len()));
        Upserted { index, old }
    }

    /// Policy `p` now has its rules, where it had `old_rules` rules (0 when it is new).
    fn index_rules(&mut self, p: usize, old_rules: usize) {
        let policy = &self.set.policies[p];
        let list = match &policy.id.namespace {
            Some(ns) => self.by_namespace.entry(ns.clone()).or_default(),
            None => &mut self.cluster_wide,
        };
        let new_rules = policy.rules.len();
        if new_rules < old_rules {
            list.retain(|r| r.policy != p || r.rule < new_rules);
        } else if new_rules > old_rules {
            list.extend((old_rules..new_rules).map(|rule| RuleRef { policy: p, rule }));
            list.sort_unstable();
        }
    }

    /// The rules whose subject selects `identity`.
    pub fn rules_selecting(&self, identity: &Identity) -> Vec<RuleRef> {
        let namespaced = identity.namespace.as_deref().and_then(|ns| self.by_namespace.get(ns));
        namespaced
            .into_iter()
            .flatten()
            .chain(&self.cluster_wide)
            .copied()
            .filter(|&at| self.rule(at).selects(identity))
            .collect()
    }

    /// Whether a rule of `policy` selects `identity`.
    pub fn policy_selects(policy: &Policy, identity: &Identity) -> bool {
        // A namespaced policy's subjects are confined to its namespace: skip the others cheaply.
        let elsewhere = |r: &Rule| {
            policy.id.namespace.is_some()
                && single_namespace(&r.subject).is_some_and(|ns| identity.namespace.as_deref() != Some(ns.as_str()))
        };
        policy.rules.iter().any(|r| !elsewhere(r) && r.selects(identity))
    }

    /// The rules whose egress names one of `names`.
    pub fn rules_naming(&self, names: &BTreeSet<String>) -> Vec<&Rule> {
        let names_one = |rule: &Rule| {
            rule.egress
                .rules
                .iter()
                .flat_map(|r| &r.ports)
                .any(|p| matches!(&p.port, PortSpec::Named(n) if names.contains(n)))
        };
        self.set.policies.iter().flat_map(|p| &p.rules).filter(|r| names_one(r)).collect()
    }
}
