//! Endpoint groups (Cilium's `EndpointPolicy`, shared by endpoints alike): endpoints with the
//! same identity and container ports share one compiled [`Group`], and how one is compiled from
//! the repository, the selector cache and the ipcache.
use std::collections::{BTreeSet, HashMap};

use palisade_common::{self as dp, Direction, Verdict};

use super::ipcache::IpCache;
use super::map_state::{CompiledRule, Enforcement, MapState, PortBlock, PortMatch, RulePeers, port_prefixes};
use super::repository::{Repository, RuleRef};
use super::selector_cache::SelectorCache;
use super::{AllowLocalhost, CompileOptions, EnforcementMode};
use crate::cluster::{Cluster, ContainerPort, Pod};
use crate::identity::Identity;
use crate::model::{PeerRule, Peers, PortSpec, Protocol, Section};

/// Shared by endpoints with the same identity and the same container ports (which named ports
/// resolve against).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub identity: u32,
    pub ports: Vec<ContainerPort>,
}

#[derive(Clone, Debug)]
pub struct Group {
    pub ingress: MapState,
    pub egress: MapState,
    /// Changes whenever the group's entries change (unique within a compiled policy), so a
    /// consumer can reprogram only the groups that changed.
    pub revision: u64,
}

impl Group {
    pub fn direction(&self, direction: Direction) -> &MapState {
        direction.pick(&self.ingress, &self.egress)
    }

    pub(crate) fn direction_mut(&mut self, direction: Direction) -> &mut MapState {
        direction.pick(&mut self.ingress, &mut self.egress)
    }
}

/// One endpoint's compiled policy.
pub struct EndpointPolicy<'a> {
    pub pod: &'a Pod,
    pub identity: &'a Identity,
    pub group: &'a Group,
}

/// The host endpoint of a compilation's node: what the host firewall enforces.
pub struct HostEndpointPolicy<'a> {
    /// The node's name.
    pub node: &'a str,
    /// The host identity, with the node's labels.
    pub identity: &'a Identity,
    pub group: &'a Group,
    /// Whether a host rule (`nodeSelector`) selects the node; its group allows everything in a
    /// direction no such rule has.
    pub selected: bool,
}

/// The compiled groups and which endpoint uses which.
#[derive(Clone, Debug, Default)]
pub(crate) struct Groups {
    pub by_key: HashMap<GroupKey, Group>,
    /// The group of every endpoint pod, by [`Pod::key`]: an agent asks for its endpoints' groups
    /// on every change, and a scan of the cluster's pods for each is too slow.
    pub of_endpoint: HashMap<String, GroupKey>,
    pub revisions: Revisions,
}

/// Hands out [`Group::revision`]s.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Revisions {
    last: u64,
}

impl Revisions {
    pub fn next(&mut self) -> u64 {
        self.last += 1;
        self.last
    }
}

/// What compiling a group reads: the parts of a compiled policy, the selector cache written to.
pub(crate) struct GroupCompiler<'a> {
    pub repository: &'a Repository,
    pub selectors: &'a mut SelectorCache,
    pub ipcache: &'a IpCache,
    /// Services and EndpointSlices, which `toServices` selects by.
    pub cluster: &'a Cluster,
    pub options: &'a CompileOptions,
}

impl GroupCompiler<'_> {
    pub fn compile(&mut self, key: &GroupKey, revision: u64) -> Group {
        let Some(identity) = self.ipcache.identities().get(key.identity) else {
            return Group { ingress: MapState::empty(), egress: MapState::empty(), revision };
        };
        let subject_rules = self.repository.rules_selecting(identity);
        let ingress = self.compile_direction(Direction::Ingress, &subject_rules, key);
        let egress = self.compile_direction(Direction::Egress, &subject_rules, key);
        Group { ingress, egress, revision }
    }

    fn compile_direction(&mut self, direction: Direction, subject_rules: &[RuleRef], key: &GroupKey) -> MapState {
        let sections: Vec<&Section> =
            subject_rules.iter().map(|&at| self.repository.rule(at).section(direction)).collect();
        let enabling: Vec<&&Section> = sections.iter().filter(|s| s.enables_policy).collect();
        let host = key.identity == dp::IDENTITY_HOST;
        let enforcement = match self.options.mode {
            EnforcementMode::Never => Enforcement::NotEnforced,
            _ if enabling.iter().any(|s| s.default_deny) => Enforcement::DefaultDeny,
            _ if !enabling.is_empty() => Enforcement::DefaultAllow,
            // Palisade turns the host firewall on per host policy, where Cilium has a switch
            // (hostFirewall.enabled): `always` puts pods into default deny, not the host, which
            // stays open in a direction until a host rule selecting it has that direction.
            EnforcementMode::Always if !host => Enforcement::DefaultDeny,
            EnforcementMode::Always | EnforcementMode::Default => Enforcement::NotEnforced,
        };
        let mut rules = Vec::new();
        match enforcement {
            Enforcement::NotEnforced => rules.push(CompiledRule::allow_all(dp::COOKIE_NOT_ENFORCED, RulePeers::All)),
            Enforcement::DefaultAllow => rules.push(CompiledRule::allow_all(dp::COOKIE_DEFAULT_ALLOW, RulePeers::All)),
            Enforcement::DefaultDeny => {}
        }
        if enforcement != Enforcement::NotEnforced {
            // The host reaching itself never crosses its own firewall.
            if direction == Direction::Ingress && self.options.allow_localhost == AllowLocalhost::Always && !host {
                let host = RulePeers::Identity(dp::IDENTITY_HOST);
                rules.push(CompiledRule::allow_all(dp::COOKIE_LOCALHOST, host));
            }
            for section in &sections {
                for rule in &section.rules {
                    rules.push(compile_rule(self.ipcache, rule, direction, &key.ports));
                }
            }
        }
        let (selectors, identities, cluster) = (&mut *self.selectors, self.ipcache.identities(), self.cluster);
        MapState::new(enforcement, rules, direction, |rule| match &rule.peers {
            RulePeers::All => vec![dp::IDENTITY_ANY],
            RulePeers::Identity(id) => vec![*id],
            RulePeers::Some(peers) => {
                let mut ids = BTreeSet::new();
                for peer in peers {
                    ids.extend(selectors.select(peer, key, identities, cluster).iter().copied());
                }
                ids.into_iter().collect()
            }
        })
    }
}

fn compile_rule(ipcache: &IpCache, rule: &PeerRule, direction: Direction, own_ports: &[ContainerPort]) -> CompiledRule {
    let peers = match &rule.peers {
        Peers::All => RulePeers::All,
        Peers::Some(peers) => RulePeers::Some(peers.clone()),
    };
    let mut ports = Vec::new();
    let verdict = if rule.deny { Verdict::Deny } else { Verdict::Allow };
    if rule.ports.is_empty() {
        ports.push((PortMatch::ANY, verdict));
    }
    for port in &rule.ports {
        // Only a port with L7 rules goes to the proxy: the rule's other ports stay plain L4.
        let verdict = if port.l7.is_some() && !rule.deny { Verdict::Redirect } else { verdict };
        let protocol = Some(port.protocol);
        let blocks = match &port.port {
            PortSpec::Any => vec![PortBlock::ALL],
            PortSpec::Range(lo, hi) => port_prefixes(*lo, *hi),
            PortSpec::Named(name) => resolve_named_port(ipcache, name, port.protocol, direction, own_ports)
                .into_iter()
                .map(PortBlock::single)
                .collect(),
        };
        ports.extend(blocks.into_iter().map(|block| (PortMatch { protocol, ports: block }, verdict)));
    }
    CompiledRule { cookie: rule.cookie, peers, ports, deny: rule.deny }
}

/// Ingress names resolve against the endpoint's own ports; egress names against every pod's,
/// and a name that maps to different numbers across pods resolves to nothing (as in Cilium).
pub(crate) fn resolve_named_port(
    ipcache: &IpCache,
    name: &str,
    protocol: Protocol,
    direction: Direction,
    own_ports: &[ContainerPort],
) -> Vec<u16> {
    match direction {
        Direction::Ingress => own_ports
            .iter()
            .filter(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
            .map(|p| p.port)
            .collect(),
        Direction::Egress => {
            ipcache.egress_port_number(name).into_iter().filter(|p| p.protocol == protocol).map(|p| p.port).collect()
        }
    }
}
