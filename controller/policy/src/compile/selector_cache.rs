//! The selector cache (Cilium's `SelectorCache`): the identities each distinct peer selects,
//! kept up to date as identities come and go, and the endpoint groups compiled with a rule naming
//! each peer, so a changed identity only revisits those.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use palisade_common as dp;

use super::group::GroupKey;
use super::ipcache::ip_block_label;
use super::map_state::{CompiledRule, RulePeers};
use crate::cluster::{Cluster, Service};
use crate::identity::{Identities, Identity};
use crate::labels::{self, Source};
use crate::model::Peer;
use crate::selector::{Operator, Selector};

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
        cluster: &Cluster,
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
                    identities.in_namespace(&ns).filter(|i| peer_selects(peer, i, cluster)).map(|i| i.id).collect()
                }
                None => selection(peer, identities, cluster),
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

    /// A new or relabelled identity joins the selections that match it and leaves the others;
    /// returns the peers that changed.
    pub fn identity_changed(&mut self, identity: &Identity, cluster: &Cluster) -> Vec<Peer> {
        let mut changed = Vec::new();
        for (peer, selected) in self.selections.iter_mut() {
            let moved = if peer_selects(peer, identity, cluster) {
                selected.insert(identity.id)
            } else {
                selected.remove(&identity.id)
            };
            if moved {
                changed.push(peer.clone());
            }
        }
        changed
    }

    /// Services, their EndpointSlices or the DNS answers changed: `toServices` and `toFQDNs`
    /// peers select anew; returns the peers whose selection changed.
    pub fn address_peers_changed(&mut self, identities: &Identities, cluster: &Cluster) -> Vec<Peer> {
        let mut changed = Vec::new();
        for (peer, selected) in
            self.selections.iter_mut().filter(|(p, _)| matches!(p, Peer::Service(_) | Peer::Fqdn(_)))
        {
            let now = selection(peer, identities, cluster);
            if now != *selected {
                *selected = now;
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

fn selection(peer: &Peer, identities: &Identities, cluster: &Cluster) -> BTreeSet<u32> {
    if let Peer::Fqdn(fqdn) = peer {
        // The addresses of the names it matches first, in one pass over the answers: asked of
        // each identity, every DNS answer was visited once per identity, on every convergence
        // that learned an answer (tens of milliseconds with a few hundred names learned).
        let addresses: HashSet<IpAddr> = cluster
            .dns_answers
            .iter()
            .filter(|(name, _)| fqdn.matches(name))
            .flat_map(|(_, addresses)| addresses.iter().copied())
            .collect();
        let selected = |i: &&Identity| i.prefix.is_some_and(|p| p.is_host() && addresses.contains(&p.addr));
        return identities.all().filter(selected).map(|i| i.id).collect();
    }
    identities.all().filter(|i| peer_selects(peer, i, cluster)).map(|i| i.id).collect()
}

fn peer_selects(peer: &Peer, identity: &Identity, cluster: &Cluster) -> bool {
    match peer {
        Peer::Labels(selector) | Peer::Nodes(selector) => selector.matches(&identity.labels),
        Peer::Cidr(block) => identity.prefix.is_some_and(|p| block.selects(&p)),
        Peer::IpBlock(block) => {
            identity.prefix.is_some_and(|p| block.selects(&p))
                || identity.labels.get(Source::Cidr, &ip_block_label(block)).is_some()
        }
        Peer::Service(service) => {
            cluster.services.iter().filter(|s| s.named_by(service)).any(|s| backend_identity(cluster, s, identity))
        }
        // The addresses of the DNS answers for the names it matches.
        Peer::Fqdn(fqdn) => identity.prefix.is_some_and(|p| {
            p.is_host() && cluster.dns_answers.iter().any(|(name, addrs)| fqdn.matches(name) && addrs.contains(&p.addr))
        }),
    }
}

/// Whether `identity` is a backend of `service`, as Cilium's `toServices` selects them: a
/// Service with a selector stands for the pods it selects; one without for the addresses of its
/// EndpointSlices, whose /32 CIDR identities the ipcache holds for every such Service (see
/// [`super::CompiledPolicy::ipcache`]).
fn backend_identity(cluster: &Cluster, service: &Service, identity: &Identity) -> bool {
    match &service.selector {
        Some(pods) => {
            identity.namespace.as_deref() == Some(service.namespace.as_str())
                && pods.iter().all(|(k, v)| identity.labels.get(Source::K8s, k) == Some(v.as_str()))
        }
        None => identity
            .prefix
            .is_some_and(|p| p.is_host() && cluster.slices_of(service).any(|slice| slice.addresses.contains(&p.addr))),
    }
}

/// The one namespace a selector is confined to, if it names exactly one.
pub(crate) fn single_namespace(selector: &Selector) -> Option<String> {
    selector
        .requirements()
        .find(|r| r.key == labels::NAMESPACE_KEY && r.operator == Operator::In && r.values.len() == 1)
        .and_then(|r| r.values.iter().next().cloned())
}
