//! The selector cache (Cilium's `SelectorCache`): the identities each distinct peer selects,
//! kept up to date as identities come and go, and the endpoint groups compiled with a rule naming
//! each peer, so a changed identity only revisits those.
use std::collections::{BTreeSet, HashMap, HashSet};

use palisade_common as dp;

use super::group::GroupKey;
use super::ipcache::ip_block_label;
use super::map_state::{CompiledRule, RulePeers};
use crate::cluster::Service;
use crate::identity::{Identities, Identity};
use crate::labels::{self, LabelSet, Source};
use crate::model::{Peer, ServiceRef};
use crate::selector::{Operator, Requirement, Selector};

#[derive(Clone, Debug, Default)]
pub(crate) struct SelectorCache {
    /// Identities each distinct peer selects.
    selections: HashMap<Peer, BTreeSet<u32>>,
    /// Groups compiled with a rule naming each peer (a superset: entries for groups since
    /// recompiled or removed are skipped or harmless).
    users: HashMap<Peer, HashSet<GroupKey>>,
}

impl SelectorCache {
    /// Identities `peer` selects, computed on first use; `group` is recorded as its user.
    pub fn select(
        &mut self,
        peer: &Peer,
        group: &GroupKey,
        identities: &Identities,
        services: &[Service],
    ) -> &BTreeSet<u32> {
        let users = self.users.entry(peer.clone()).or_default();
        if !users.contains(group) {
            users.insert(group.clone());
        }
        if !self.selections.contains_key(peer) {
            let namespace = match peer {
                Peer::Labels(selector) => single_namespace(selector),
                _ => None,
            };
            let selected: BTreeSet<u32> = match namespace {
                Some(ns) => {
                    identities.in_namespace(&ns).filter(|i| peer_selects(peer, i, services)).map(|i| i.id).collect()
                }
                None => identities.all().filter(|i| peer_selects(peer, i, services)).map(|i| i.id).collect(),
            };
            self.selections.insert(peer.clone(), selected);
        }
        &self.selections[peer]
    }

    /// Whether `rule` selects remote identity `id` (`IDENTITY_ANY` for rules on every peer).
    pub fn rule_selects(&self, rule: &CompiledRule, id: u32) -> bool {
        match &rule.peers {
            RulePeers::All => id == dp::IDENTITY_ANY,
            RulePeers::Identity(only) => *only == id,
            RulePeers::Some(peers) => peers.iter().any(|p| self.selections.get(p).is_some_and(|s| s.contains(&id))),
        }
    }

    /// A new identity joins the selections that match it; returns the peers that changed.
    pub fn identity_added(&mut self, identity: &Identity, services: &[Service]) -> Vec<Peer> {
        let mut changed = Vec::new();
        for (peer, selected) in self.selections.iter_mut() {
            if peer_selects(peer, identity, services) {
                selected.insert(identity.id);
                changed.push(peer.clone());
            }
        }
        changed
    }

    /// A gone identity leaves every selection; returns the peers that changed.
    pub fn identity_removed(&mut self, id: u32) -> Vec<Peer> {
        let mut changed = Vec::new();
        for (peer, selected) in self.selections.iter_mut() {
            if selected.remove(&id) {
                changed.push(peer.clone());
            }
        }
        changed
    }

    /// Groups compiled with a rule naming one of `peers`: only these can have entries for an
    /// identity that joins or leaves those peers' selections.
    pub fn users_of<'a>(&'a self, peers: &'a [Peer]) -> impl Iterator<Item = &'a GroupKey> + 'a {
        let mut seen = HashSet::new();
        peers.iter().flat_map(|peer| self.users.get(peer).into_iter().flatten()).filter(move |k| seen.insert(*k))
    }
}

fn peer_selects(peer: &Peer, identity: &Identity, services: &[Service]) -> bool {
    match peer {
        Peer::Labels(selector) => selector.matches(&identity.labels),
        Peer::Cidr(block) => identity.prefix.is_some_and(|p| block.selects(&p)),
        Peer::IpBlock(block) => {
            identity.prefix.is_some_and(|p| block.selects(&p))
                || identity.labels.get(Source::Cidr, &ip_block_label(block)).is_some()
        }
        Peer::Service(service) => service_selectors(services, service).iter().any(|s| s.matches(&identity.labels)),
        // Addresses come from DNS answers at runtime; offline there are none.
        Peer::Fqdn(_) => false,
    }
}

/// A Service with a pod selector stands for the pods it selects.
fn service_selectors(services: &[Service], service: &ServiceRef) -> Vec<Selector> {
    let to_selector = |s: &Service| {
        let pods = s.selector.as_ref()?;
        let requirements = pods
            .iter()
            .map(|(k, v)| Requirement::equals(Source::K8s, k.clone(), v.clone()))
            .chain([Requirement::equals(Source::K8s, labels::NAMESPACE_KEY, s.namespace.clone())]);
        Some(Selector::new(requirements))
    };
    services
        .iter()
        .filter(|s| match service {
            ServiceRef::Name { namespace, name } => &s.namespace == namespace && &s.name == name,
            ServiceRef::Selector { namespace, selector } => {
                namespace.as_ref().is_none_or(|ns| ns == &s.namespace) && selector.matches(&service_labels(s))
            }
        })
        .filter_map(to_selector)
        .collect()
}

fn service_labels(service: &Service) -> LabelSet {
    let mut set = LabelSet::default();
    for (k, v) in &service.labels {
        set.insert(Source::K8s, k.clone(), v.clone());
    }
    set.insert(Source::K8s, labels::NAMESPACE_KEY, service.namespace.clone());
    set
}

/// The one namespace a selector is confined to, if it names exactly one.
pub(crate) fn single_namespace(selector: &Selector) -> Option<String> {
    selector
        .requirements()
        .find(|r| r.key == labels::NAMESPACE_KEY && r.operator == Operator::In && r.values.len() == 1)
        .and_then(|r| r.values.iter().next().cloned())
}
