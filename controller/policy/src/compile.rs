//! Compiles policy into per-endpoint, per-direction datapath entries, and keeps them up to date
//! incrementally as pods and policies change.
//!
//! Endpoints with the same identity and container ports share one compiled [`Group`]. Within a
//! direction the entries for one remote identity depend only on the rules that select that
//! identity, so a new identity is patched into every group without recompiling it, and a policy
//! change recompiles only the groups its rules select.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use palisade_common::{self as dp, PolicyEntry, PolicyKey, PolicyValue};

use crate::cluster::{Cluster, ContainerPort, EndpointSlice, Namespace, Node, Pod, Service};
use crate::identity::{self, Identities, Identity};
use crate::labels::{self, Source};
use crate::model::*;
use crate::selector::{Operator, Requirement, Selector};

/// Cilium's `policyEnforcementMode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EnforcementMode {
    #[default]
    Default,
    Always,
    Never,
}

/// Cilium's `allow-localhost`: whether the local host reaches its pods whatever their policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AllowLocalhost {
    /// Ingress from `host` is always allowed (kubelet probes), as Cilium does by default.
    #[default]
    Always,
    /// Traffic from the local host is subject to policy like any other (`fromEntities: [host]`
    /// allows it).
    Policy,
}

impl AllowLocalhost {
    pub const VALUES: [&str; 2] = ["always", "policy"];

    pub fn as_str(self) -> &'static str {
        match self {
            AllowLocalhost::Always => "always",
            AllowLocalhost::Policy => "policy",
        }
    }
}

impl std::str::FromStr for AllowLocalhost {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "always" => Ok(AllowLocalhost::Always),
            "policy" => Ok(AllowLocalhost::Policy),
            _ => Err(format!("{text:?} is not always or policy")),
        }
    }
}

impl std::fmt::Display for AllowLocalhost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an engine is built, beyond its policies and cluster.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    pub mode: EnforcementMode,
    /// Compile only the endpoints on this node (an agent); every endpoint when unset. The
    /// ipcache still covers every pod. The node's own addresses are `host` in the ipcache.
    pub node: Option<String>,
    /// The node whose datapath this engine describes when that is not [`Self::node`]: its
    /// addresses are `host`, while every endpoint is compiled. Local mode sets it (every pod
    /// runs on its one node), as does `palisade trace --node`. With neither set, every node's
    /// addresses are `remote-node`.
    pub host_node: Option<String>,
    pub allow_localhost: AllowLocalhost,
    /// Prefixes and ipBlocks of other policy sets that get identities too, so that engines built
    /// with the same basis (an enforced and a candidate revision) number identities alike and
    /// share one ipcache.
    pub identity_basis: IdentityBasis,
}

/// The policy content identities depend on: CIDR prefixes and NetworkPolicy ipBlocks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IdentityBasis {
    ip_blocks: BTreeSet<CidrBlock>,
    /// Prefix → number of policies naming it.
    prefixes: BTreeMap<Prefix, usize>,
}

impl IdentityBasis {
    pub fn of<'a>(sets: impl IntoIterator<Item = &'a PolicySet>) -> IdentityBasis {
        let mut basis = IdentityBasis::default();
        for set in sets {
            basis.ip_blocks.extend(ip_blocks(set));
            for prefix in set.policies.iter().flat_map(cidr_prefixes_of) {
                *basis.prefixes.entry(prefix).or_default() += 1;
            }
        }
        basis
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enforcement {
    /// No rule selects the endpoint in this direction: everything is allowed.
    NotEnforced,
    DefaultDeny,
    /// Only rules with `enableDefaultDeny: false` select it: allowed unless denied.
    DefaultAllow,
}

/// Shared by endpoints with the same identity and the same container ports (which named ports
/// resolve against).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub identity: u32,
    pub ports: Vec<ContainerPort>,
}

#[derive(Clone, Debug)]
pub struct Group {
    pub ingress: DirectionPolicy,
    pub egress: DirectionPolicy,
    /// Changes whenever the group's entries change (unique within an engine), so a consumer can
    /// reprogram only the groups that changed.
    pub revision: u64,
}

impl Group {
    pub fn direction(&self, direction: Direction) -> &DirectionPolicy {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    fn direction_mut(&mut self, direction: Direction) -> &mut DirectionPolicy {
        match direction {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        }
    }
}

#[derive(Clone, Debug)]
pub struct DirectionPolicy {
    pub enforcement: Enforcement,
    rules: Vec<CompiledRule>,
    /// Remote identity (0 = any) → its entries.
    by_identity: HashMap<u32, Vec<PolicyEntry>>,
}

/// A peer rule with its ports resolved for one group.
#[derive(Clone, Debug)]
struct CompiledRule {
    cookie: u32,
    peers: CompiledPeers,
    keys: Vec<(Option<u8>, u16, u8)>,
    verdict: u8,
}

#[derive(Clone, Debug)]
enum CompiledPeers {
    All,
    Some(Vec<Peer>),
    /// Synthesized entries for one reserved identity.
    Identity(u32),
}

impl DirectionPolicy {
    /// All entries, sorted, as they go into the endpoint's policy map.
    pub fn entries(&self) -> Vec<PolicyEntry> {
        let mut entries: Vec<PolicyEntry> = self.by_identity.values().flatten().copied().collect();
        entries.sort_by_key(|e| (e.key.identity(), e.key.protocol(), e.key.port(), e.key.prefix_len));
        entries
    }

    pub fn len(&self) -> usize {
        self.by_identity.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry the datapath would pick, with the same two lookups as the eBPF program: the
    /// identity-specific and the wildcard longest-prefix matches, then higher precedence, then
    /// the longer L4 prefix, then the identity-specific one.
    pub fn lookup(&self, identity: u32, protocol: u8, port: u16) -> Option<PolicyEntry> {
        let longest = |id: u32| {
            self.by_identity
                .get(&id)?
                .iter()
                .filter(|e| key_matches(&e.key, protocol, port))
                .max_by_key(|e| e.key.prefix_len)
                .copied()
        };
        let specific = if identity == dp::IDENTITY_ANY { None } else { longest(identity) };
        match (specific, longest(dp::IDENTITY_ANY)) {
            (Some(s), Some(w)) => {
                let rank = |e: &PolicyEntry| (e.value.precedence, e.key.l4_prefix_len());
                Some(if rank(&w) > rank(&s) { w } else { s })
            }
            (s, w) => s.or(w),
        }
    }
}

fn key_matches(key: &PolicyKey, protocol: u8, port: u16) -> bool {
    match key.protocol() {
        None => true,
        Some(p) => {
            let (lo, hi) = key.port_range();
            p == protocol && (lo..=hi).contains(&port)
        }
    }
}

/// Aligned power-of-two blocks covering `lo..=hi`, as (first port, significant bits).
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let (mut lo, hi) = (lo as u32, hi as u32);
    let mut out = Vec::new();
    while lo <= hi {
        let mut size = if lo == 0 { 1 << 16 } else { 1 << lo.trailing_zeros().min(16) };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, (16 - size.trailing_zeros()) as u8));
        lo += size;
    }
    out
}

/// Whether deny `d` covers entry `e` of the same identity: an equal or broader protocol/port space.
fn covers(d: &PolicyKey, e: &PolicyKey) -> bool {
    match (d.protocol(), e.protocol()) {
        (None, _) => true,
        (Some(dp), Some(ep)) if dp == ep => {
            let ((dlo, dhi), (elo, ehi)) = (d.port_range(), e.port_range());
            dlo <= elo && ehi <= dhi
        }
        _ => false,
    }
}

/// Merges the contributions for one remote identity: the strongest verdict per key, then every
/// allow or redirect inside a broader deny is dropped. The trie returns only the longest match,
/// so without this a narrower allow would beat the deny that must win over it.
fn resolve(
    identity: u32,
    direction: u8,
    contributions: impl Iterator<Item = (Option<u8>, u16, u8, u8, u32)>,
) -> Vec<PolicyEntry> {
    let mut map: BTreeMap<PolicyKey, PolicyValue> = BTreeMap::new();
    for (protocol, port, bits, verdict, cookie) in contributions {
        let key = PolicyKey::new(identity, direction, protocol, port, bits);
        let value = PolicyValue::new(verdict, cookie);
        map.entry(key)
            .and_modify(|v| {
                if (value.precedence, std::cmp::Reverse(value.cookie)) > (v.precedence, std::cmp::Reverse(v.cookie)) {
                    *v = value;
                }
            })
            .or_insert(value);
    }
    let denies: Vec<PolicyKey> = map.iter().filter(|(_, v)| v.verdict == dp::VERDICT_DENY).map(|(k, _)| *k).collect();
    map.into_iter()
        .filter(|(key, value)| value.verdict == dp::VERDICT_DENY || !denies.iter().any(|d| covers(d, key)))
        .map(|(key, value)| PolicyEntry { key, value })
        .collect()
}

/// Where each rule lives, indexed so a namespace's identities only meet the rules that can
/// select them.
#[derive(Clone, Debug, Default)]
struct RuleIndex {
    by_namespace: HashMap<String, Vec<(usize, usize)>>,
    cluster_wide: Vec<(usize, usize)>,
}

impl RuleIndex {
    fn build(set: &PolicySet) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (p, policy) in set.policies.iter().enumerate() {
            for r in 0..policy.rules.len() {
                match &policy.id.namespace {
                    Some(ns) => index.by_namespace.entry(ns.clone()).or_default().push((p, r)),
                    None => index.cluster_wide.push((p, r)),
                }
            }
        }
        index
    }

    /// Policy `p` now has `policy.rules`, where it had `old_rules` rules (0 when it is new).
    fn replace(&mut self, p: usize, policy: &Policy, old_rules: usize) {
        let list = match &policy.id.namespace {
            Some(ns) => self.by_namespace.entry(ns.clone()).or_default(),
            None => &mut self.cluster_wide,
        };
        let new_rules = policy.rules.len();
        if new_rules < old_rules {
            list.retain(|&(q, r)| q != p || r < new_rules);
        } else if new_rules > old_rules {
            list.extend((old_rules..new_rules).map(|r| (p, r)));
            list.sort_unstable();
        }
    }

    fn candidates<'a>(&'a self, namespace: Option<&str>) -> impl Iterator<Item = (usize, usize)> + 'a {
        namespace.and_then(|ns| self.by_namespace.get(ns)).into_iter().flatten().chain(&self.cluster_wide).copied()
    }
}

/// The compiled state of a policy set over a cluster.
#[derive(Clone, Debug)]
pub struct Engine {
    pub policies: PolicySet,
    pub cluster: Cluster,
    options: EngineOptions,
    /// Last [`Group::revision`] handed out.
    revisions: u64,
    identities: Identities,
    rules: RuleIndex,
    /// Identities each distinct peer selects.
    selections: HashMap<Peer, BTreeSet<u32>>,
    /// Groups compiled with a rule naming each peer (a superset: entries for groups since
    /// recompiled or removed are skipped or harmless), so a changed identity only revisits them.
    peer_groups: HashMap<Peer, HashSet<GroupKey>>,
    pod_identity: HashMap<String, u32>,
    /// The group of every endpoint pod, by [`Pod::key`]: an agent asks for its endpoints' groups
    /// on every change, and a scan of the cluster's pods for each is too slow.
    endpoint_groups: HashMap<String, GroupKey>,
    /// The pods at each address, by [`Pod::key`] with their identity, in the order they were
    /// added (the last one is in the ipcache), host-network pods left out: the ipcache without
    /// going through every pod.
    pod_addrs: BTreeMap<Ipv4Addr, Vec<(String, u32)>>,
    /// NetworkPolicy ipBlocks. A pod inside one carries a label for it, so pods inside and
    /// outside a block never share an identity and the block selects exactly its pods.
    ip_blocks: BTreeSet<CidrBlock>,
    /// Every port number each container port name has across the cluster (egress named ports).
    /// Counted per pod, so names are forgotten when their last pod goes.
    named_ports: HashMap<String, BTreeMap<(Protocol, u16), usize>>,
    groups: HashMap<GroupKey, Group>,
}

/// One endpoint's compiled policy.
pub struct EndpointPolicy<'a> {
    pub pod: &'a Pod,
    pub identity: &'a Identity,
    pub group: &'a Group,
}

impl Engine {
    pub fn new(policies: PolicySet, cluster: Cluster, mode: EnforcementMode) -> Engine {
        Engine::with_options(policies, cluster, EngineOptions { mode, ..EngineOptions::default() })
    }

    pub fn with_options(policies: PolicySet, cluster: Cluster, options: EngineOptions) -> Engine {
        let Cluster { namespaces, pods, nodes, services, endpoint_slices } = cluster;
        let mut engine = Engine {
            rules: RuleIndex::build(&policies),
            policies,
            cluster: Cluster { namespaces, pods: Vec::new(), nodes, services, endpoint_slices },
            revisions: 0,
            identities: Identities::default(),
            selections: HashMap::new(),
            peer_groups: HashMap::new(),
            pod_identity: HashMap::new(),
            endpoint_groups: HashMap::new(),
            pod_addrs: BTreeMap::new(),
            ip_blocks: BTreeSet::new(),
            named_ports: HashMap::new(),
            groups: HashMap::new(),
            options: EngineOptions::default(),
        };
        let basis = IdentityBasis::of([&engine.policies]);
        engine.ip_blocks = basis.ip_blocks.union(&options.identity_basis.ip_blocks).cloned().collect();
        // One user per policy that refers to a prefix, so that replacing one of them keeps the
        // identity for the others; allocated in prefix order.
        let mut users = basis.prefixes;
        for (prefix, count) in &options.identity_basis.prefixes {
            *users.entry(*prefix).or_default() += count;
        }
        engine.options = options;
        for (prefix, count) in users {
            for _ in 0..count {
                engine.identities.acquire_cidr(prefix);
            }
        }
        for pod in pods {
            engine.add_pod_identity(pod);
        }
        let keys: BTreeSet<GroupKey> =
            engine.cluster.pods.iter().filter(|p| engine.is_endpoint(p)).map(|p| engine.group_key(p)).collect();
        for key in keys {
            let group = engine.compile_group(&key);
            engine.groups.insert(key, group);
        }
        engine
    }

    pub fn identities(&self) -> &Identities {
        &self.identities
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The node whose addresses are `host`: [`EngineOptions::host_node`], else
    /// [`EngineOptions::node`].
    pub fn host_node(&self) -> Option<&str> {
        self.options.host_node.as_deref().or(self.options.node.as_deref())
    }

    /// An entry in words, its peer named by labels rather than by number, so that engines which
    /// number identities differently describe the same entry alike (the rule cookie is left out).
    pub fn describe_entry(&self, entry: &PolicyEntry) -> String {
        let key = &entry.key;
        let peer = match key.identity() {
            dp::IDENTITY_ANY => "any".to_string(),
            id => self.identities.get(id).map_or(id.to_string(), |i| i.labels.to_string()),
        };
        format!(
            "{peer} dir={} proto={:?} port={}/{} verdict={}",
            key.direction,
            key.protocol(),
            key.port(),
            key.port_bits(),
            entry.value.verdict
        )
    }

    pub fn identity_of_pod(&self, pod: &Pod) -> Option<u32> {
        self.pod_identity.get(&pod.key()).copied()
    }

    pub fn endpoint(&self, namespace: &str, name: &str) -> Option<EndpointPolicy<'_>> {
        let pod = self.cluster.pod(namespace, name).filter(|p| self.is_endpoint(p))?;
        let key = self.group_key(pod);
        Some(EndpointPolicy { pod, identity: self.identities.get(key.identity)?, group: self.groups.get(&key)? })
    }

    /// The endpoints compiled: every pod's, or with [`EngineOptions::node`] those on the node.
    pub fn endpoints(&self) -> impl Iterator<Item = EndpointPolicy<'_>> {
        self.cluster.pods.iter().filter(|p| self.is_endpoint(p)).filter_map(|p| self.endpoint(&p.namespace, &p.name))
    }

    fn is_endpoint(&self, pod: &Pod) -> bool {
        !pod.host_network && self.options.node.as_ref().is_none_or(|node| pod.node_name.as_ref() == Some(node))
    }

    /// The compiled group of an endpoint, for comparing [`Group::revision`]s.
    pub fn group_of(&self, namespace: &str, name: &str) -> Option<(&GroupKey, &Group)> {
        self.groups.get_key_value(self.endpoint_groups.get(&format!("{namespace}/{name}"))?)
    }

    /// The ipcache: pods as /32, CIDR identities for referenced prefixes, the reserved
    /// identities of node and API server addresses; one identity per prefix, sorted. A pod's
    /// address keeps the pod's identity even when a policy names that exact /32, because CIDR
    /// rules never match pods.
    pub fn ipcache(&self) -> Vec<(Prefix, u32)> {
        let mut others: BTreeMap<Prefix, u32> =
            self.identities.cidr_identities().filter_map(|i| Some((i.prefix?, i.id))).collect();
        // An address that is several things gets one identity, later ones winning: other nodes
        // are remote-node, the API server's addresses kube-apiserver (also on a remote node, as
        // Cilium numbers it), and the local host's own addresses are always host, also when the
        // API server runs there (Cilium keeps host for it and adds the kube-apiserver label,
        // which one number cannot carry). Pods beat all three, below.
        let host = self.host_node();
        let (local, remote): (Vec<&Node>, Vec<&Node>) =
            self.cluster.nodes.iter().partition(|n| host.is_some_and(|h| h == n.name));
        let at = |addr: &Ipv4Addr, id: u32| (Prefix::new(*addr, 32), id);
        others.extend(remote.iter().flat_map(|n| &n.addresses).map(|a| at(a, dp::IDENTITY_REMOTE_NODE)));
        others.extend(self.cluster.apiserver_addresses().map(|a| at(&a, dp::IDENTITY_KUBE_APISERVER)));
        others.extend(local.iter().flat_map(|n| &n.addresses).map(|a| at(a, dp::IDENTITY_HOST)));
        // Both sorted: merged in one walk, a pod's entry replacing another for the same /32.
        let mut pods =
            self.pod_addrs.iter().filter_map(|(addr, pods)| Some((Prefix::new(*addr, 32), pods.last()?.1))).peekable();
        let mut others = others.into_iter().peekable();
        let mut entries = Vec::with_capacity(self.pod_addrs.len() + 64);
        loop {
            let next = match (pods.peek(), others.peek()) {
                (None, None) => break,
                (Some(p), Some(o)) if p.0 == o.0 => {
                    others.next();
                    pods.next()
                }
                (Some(p), Some(o)) if o.0 < p.0 => others.next(),
                (Some(_), _) => pods.next(),
                (None, Some(_)) => others.next(),
            };
            entries.extend(next);
        }
        entries
    }

    /// The identity the datapath sees for an address (longest prefix; world when nothing matches).
    pub fn identity_of_addr(&self, addr: Ipv4Addr) -> u32 {
        self.ipcache()
            .into_iter()
            .filter(|(p, _)| p.contains_addr(addr))
            .max_by_key(|(p, _)| p.len)
            .map_or(dp::IDENTITY_WORLD, |(_, id)| id)
    }

    /// Adds or updates a pod (labels, ports, address); only what it affects is recomputed.
    pub fn upsert_pod(&mut self, pod: Pod) {
        let (namespace, name) = (pod.namespace.clone(), pod.name.clone());
        self.replace_pod(&namespace, &name, Some(pod));
    }

    /// Removes a pod; returns it if it was there.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> Option<Pod> {
        self.replace_pod(namespace, name, None)
    }

    fn replace_pod(&mut self, namespace: &str, name: &str, pod: Option<Pod>) -> Option<Pod> {
        let mut names: BTreeSet<String> = pod.iter().flat_map(|p| &p.ports).filter_map(|p| p.name.clone()).collect();
        let old = self.cluster.pods.iter().position(|p| p.namespace == namespace && p.name == name).map(|index| {
            let old = self.cluster.pods.remove(index);
            names.extend(old.ports.iter().filter_map(|p| p.name.clone()));
            self.remove_pod_identity(&old);
            old
        });
        let before: Vec<_> = names.iter().map(|n| self.egress_port_numbers(n)).collect();
        let added = pod.is_some();
        if let Some(pod) = pod {
            self.add_pod_identity(pod);
        }
        let changed: BTreeSet<String> =
            names.into_iter().zip(before).filter(|(n, b)| *b != self.egress_port_numbers(n)).map(|(n, _)| n).collect();
        if !changed.is_empty() {
            self.recompile_groups_naming(&changed);
        }
        if added {
            let pod = self.cluster.pods.last().expect("just added");
            if self.is_endpoint(pod) {
                let group_key = self.group_key(pod);
                if !self.groups.contains_key(&group_key) {
                    let group = self.compile_group(&group_key);
                    self.groups.insert(group_key, group);
                }
            }
        }
        old
    }

    /// Adds or relabels a namespace: its pods' identities follow its labels.
    pub fn upsert_namespace(&mut self, namespace: Namespace) {
        if self.cluster.namespaces.get(&namespace.name) == Some(&namespace) {
            return;
        }
        let name = namespace.name.clone();
        self.cluster.namespaces.insert(name.clone(), namespace);
        let pods: Vec<Pod> = self.cluster.pods.iter().filter(|p| p.namespace == name).cloned().collect();
        for pod in pods {
            self.upsert_pod(pod);
        }
    }

    /// Node addresses only feed the ipcache (as host or remote-node).
    pub fn set_nodes(&mut self, nodes: Vec<Node>) {
        self.cluster.nodes = nodes;
    }

    /// EndpointSlices only feed the ipcache (the API server's addresses as kube-apiserver).
    pub fn set_endpoint_slices(&mut self, slices: Vec<EndpointSlice>) {
        self.cluster.endpoint_slices = slices;
    }

    /// Services change what `toServices` selects: everything is recompiled (they change rarely).
    pub fn set_services(&mut self, services: Vec<Service>) {
        if self.cluster.services == services {
            return;
        }
        self.cluster.services = services;
        let cluster = std::mem::take(&mut self.cluster);
        *self = Engine::with_options(std::mem::take(&mut self.policies), cluster, self.options.clone());
    }

    /// Adds or replaces a policy; recompiles only the groups its old or new rules select.
    pub fn set_policy(&mut self, policy: Policy) {
        if ip_blocks(&PolicySet { policies: vec![policy.clone()] }).iter().any(|b| !self.ip_blocks.contains(b)) {
            // New ipBlocks change pod identities: start over.
            let mut policies = self.policies.clone();
            match policies.policies.iter().position(|p| p.id == policy.id) {
                Some(i) => policies.policies[i] = policy,
                None => policies.policies.push(policy),
            }
            policies.renumber();
            *self = Engine::with_options(policies, std::mem::take(&mut self.cluster), self.options.clone());
            return;
        }
        let (index, old) = match self.policies.policies.iter().position(|p| p.id == policy.id) {
            Some(i) => (i, Some(std::mem::replace(&mut self.policies.policies[i], policy))),
            None => {
                self.policies.policies.push(policy);
                (self.policies.policies.len() - 1, None)
            }
        };
        self.policies.renumber();
        let old_rules = old.as_ref().map_or(0, |o| o.rules.len());
        self.rules.replace(index, &self.policies.policies[index], old_rules);
        // New CIDR identities before the old version's are released, so a prefix both versions
        // (or other policies) use keeps its identity.
        for prefix in cidr_prefixes_of(&self.policies.policies[index]) {
            if let (id, true) = self.identities.acquire_cidr(prefix) {
                self.identity_added(id);
            }
        }
        if let Some(old) = &old {
            for prefix in cidr_prefixes_of(old) {
                if let Some(id) = self.identities.cidr_identity(prefix)
                    && self.identities.release(id)
                {
                    self.identity_removed(id);
                }
            }
        }
        // Only the groups either version selects change; every other group's rules are the same.
        let new = &self.policies.policies[index];
        let affected: Vec<GroupKey> = self
            .groups
            .keys()
            .filter(|key| self.selects_group(new, key) || old.as_ref().is_some_and(|o| self.selects_group(o, key)))
            .cloned()
            .collect();
        for key in affected {
            let group = self.compile_group(&key);
            self.groups.insert(key, group);
        }
    }

    fn selects_group(&self, policy: &Policy, key: &GroupKey) -> bool {
        self.identities.get(key.identity).is_some_and(|i| {
            // A namespaced policy's subjects are confined to its namespace: skip the others cheaply.
            let elsewhere = |r: &Rule| {
                policy.id.namespace.is_some()
                    && single_namespace(&r.subject).is_some_and(|ns| i.namespace.as_deref() != Some(ns.as_str()))
            };
            policy.rules.iter().any(|r| !elsewhere(r) && r.subject.matches(&i.labels))
        })
    }

    fn group_key(&self, pod: &Pod) -> GroupKey {
        let mut ports = pod.ports.clone();
        ports.sort();
        GroupKey { identity: self.pod_identity[&pod.key()], ports }
    }

    fn add_pod_identity(&mut self, pod: Pod) {
        let mut labels = identity::pod_labels(&pod, self.cluster.namespaces.get(&pod.namespace));
        for block in self.ip_blocks.iter().filter(|b| pod.ip.is_some_and(|ip| b.selects_addr(ip))) {
            labels.insert(Source::Cidr, ip_block_label(block), "");
        }
        let (id, new) = if pod.host_network {
            (dp::IDENTITY_HOST, false)
        } else {
            self.identities.acquire(labels, Some(pod.namespace.clone()), None)
        };
        for port in &pod.ports {
            if let Some(name) = &port.name {
                *self.named_ports.entry(name.clone()).or_default().entry((port.protocol, port.port)).or_default() += 1;
            }
        }
        self.pod_identity.insert(pod.key(), id);
        if let (Some(ip), false) = (pod.ip, pod.host_network) {
            self.pod_addrs.entry(ip).or_default().push((pod.key(), id));
        }
        if self.is_endpoint(&pod) {
            let key = self.group_key(&pod);
            self.endpoint_groups.insert(pod.key(), key);
        }
        self.cluster.pods.push(pod);
        if new {
            self.identity_added(id);
        }
    }

    fn remove_pod_identity(&mut self, pod: &Pod) {
        let Some(id) = self.pod_identity.remove(&pod.key()) else { return };
        self.endpoint_groups.remove(&pod.key());
        if let Some(ip) = pod.ip
            && let Some(pods) = self.pod_addrs.get_mut(&ip)
        {
            pods.retain(|(key, _)| *key != pod.key());
            if pods.is_empty() {
                self.pod_addrs.remove(&ip);
            }
        }
        for port in &pod.ports {
            let Some(name) = &port.name else { continue };
            if let Some(numbers) = self.named_ports.get_mut(name) {
                if let Some(count) = numbers.get_mut(&(port.protocol, port.port)) {
                    *count -= 1;
                    if *count == 0 {
                        numbers.remove(&(port.protocol, port.port));
                    }
                }
                if numbers.is_empty() {
                    self.named_ports.remove(name);
                }
            }
        }
        if id != dp::IDENTITY_HOST && self.identities.release(id) {
            self.groups.retain(|key, _| key.identity != id);
            self.identity_removed(id);
        }
    }

    /// A new identity joins the selections that match it and is patched into every group.
    fn identity_added(&mut self, id: u32) {
        let Some(identity) = self.identities.get(id).cloned() else { return };
        let changed: Vec<Peer> = self.selections.keys().filter(|p| self.peer_selects(p, &identity)).cloned().collect();
        for peer in &changed {
            self.selections.get_mut(peer).expect("present").insert(id);
        }
        let keys = self.groups_using(&changed);
        self.repatch(id, &keys);
    }

    /// Groups compiled with a rule naming one of `peers`. Only these can have entries for an
    /// identity that joins or leaves those peers' selections.
    fn groups_using(&self, peers: &[Peer]) -> Vec<GroupKey> {
        let mut keys: HashSet<&GroupKey> = HashSet::new();
        for peer in peers {
            keys.extend(self.peer_groups.get(peer).into_iter().flatten().filter(|k| self.groups.contains_key(*k)));
        }
        keys.into_iter().cloned().collect()
    }

    fn identity_removed(&mut self, id: u32) {
        let mut changed = Vec::new();
        for (peer, selected) in self.selections.iter_mut() {
            if selected.remove(&id) {
                changed.push(peer.clone());
            }
        }
        for key in self.groups_using(&changed) {
            if let Some(group) = self.groups.get_mut(&key) {
                let ingress = group.ingress.by_identity.remove(&id);
                let egress = group.egress.by_identity.remove(&id);
                if ingress.is_some() || egress.is_some() {
                    self.revisions += 1;
                    group.revision = self.revisions;
                }
            }
        }
    }

    /// Recomputes the entries for remote identity `id` in the groups `keys`.
    fn repatch(&mut self, id: u32, keys: &[GroupKey]) {
        let mut groups = std::mem::take(&mut self.groups);
        for key in keys {
            let Some(group) = groups.get_mut(key) else { continue };
            for direction in Direction::BOTH {
                let policy = group.direction_mut(direction);
                let touching: Vec<&CompiledRule> = policy.rules.iter().filter(|r| self.rule_selects(r, id)).collect();
                let entries = resolve(id, direction.datapath(), contributions(&touching));
                let old = if entries.is_empty() {
                    policy.by_identity.remove(&id)
                } else {
                    policy.by_identity.insert(id, entries.clone())
                };
                if old.unwrap_or_default() != entries {
                    self.revisions += 1;
                    group.revision = self.revisions;
                }
            }
        }
        self.groups = groups;
    }

    /// Cookies of the rules in `direction` of `group` that select remote identity `id`, the
    /// wildcard rules included.
    pub(crate) fn cookies_selecting(&self, policy: &DirectionPolicy, id: u32) -> Vec<u32> {
        policy
            .rules
            .iter()
            .filter(|r| {
                r.verdict != dp::VERDICT_DENY && (self.rule_selects(r, id) || self.rule_selects(r, dp::IDENTITY_ANY))
            })
            .map(|r| r.cookie)
            .collect()
    }

    fn rule_selects(&self, rule: &CompiledRule, id: u32) -> bool {
        match &rule.peers {
            CompiledPeers::All => id == dp::IDENTITY_ANY,
            CompiledPeers::Identity(only) => *only == id,
            CompiledPeers::Some(peers) => peers.iter().any(|p| self.selections.get(p).is_some_and(|s| s.contains(&id))),
        }
    }

    fn peer_selects(&self, peer: &Peer, identity: &Identity) -> bool {
        match peer {
            Peer::Labels(selector) => selector.matches(&identity.labels),
            Peer::Cidr(block) => identity.prefix.is_some_and(|p| block.selects(&p)),
            Peer::IpBlock(block) => {
                identity.prefix.is_some_and(|p| block.selects(&p))
                    || identity.labels.get(Source::Cidr, &ip_block_label(block)).is_some()
            }
            Peer::Service(service) => self.service_selectors(service).iter().any(|s| s.matches(&identity.labels)),
            // Addresses come from DNS answers at runtime; offline there are none.
            Peer::Fqdn(_) => false,
        }
    }

    /// A Service with a pod selector stands for the pods it selects.
    fn service_selectors(&self, service: &ServiceRef) -> Vec<Selector> {
        let to_selector = |s: &crate::cluster::Service| {
            let pods = s.selector.as_ref()?;
            let requirements = pods
                .iter()
                .map(|(k, v)| Requirement::equals(Source::K8s, k.clone(), v.clone()))
                .chain([Requirement::equals(Source::K8s, labels::NAMESPACE_KEY, s.namespace.clone())]);
            Some(Selector::new(requirements))
        };
        self.cluster
            .services
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

    /// Identities a peer selects, cached per distinct peer.
    fn select(&mut self, peer: &Peer) -> &BTreeSet<u32> {
        if !self.selections.contains_key(peer) {
            let namespace = match peer {
                Peer::Labels(selector) => single_namespace(selector),
                _ => None,
            };
            let selected: BTreeSet<u32> = match namespace {
                Some(ns) => {
                    self.identities.in_namespace(&ns).filter(|i| self.peer_selects(peer, i)).map(|i| i.id).collect()
                }
                None => self.identities.all().filter(|i| self.peer_selects(peer, i)).map(|i| i.id).collect(),
            };
            self.selections.insert(peer.clone(), selected);
        }
        &self.selections[peer]
    }

    fn compile_group(&mut self, key: &GroupKey) -> Group {
        let Some(identity) = self.identities.get(key.identity).cloned() else {
            let empty = DirectionPolicy {
                enforcement: Enforcement::NotEnforced,
                rules: Vec::new(),
                by_identity: HashMap::new(),
            };
            return Group { ingress: empty.clone(), egress: empty, revision: self.next_revision() };
        };
        let subject_rules: Vec<(usize, usize)> = self
            .rules
            .candidates(identity.namespace.as_deref())
            .filter(|(p, r)| self.policies.policies[*p].rules[*r].subject.matches(&identity.labels))
            .collect();
        let ingress = self.compile_direction(Direction::Ingress, &subject_rules, key);
        let egress = self.compile_direction(Direction::Egress, &subject_rules, key);
        Group { ingress, egress, revision: self.next_revision() }
    }

    fn next_revision(&mut self) -> u64 {
        self.revisions += 1;
        self.revisions
    }

    fn compile_direction(
        &mut self,
        direction: Direction,
        subject_rules: &[(usize, usize)],
        key: &GroupKey,
    ) -> DirectionPolicy {
        let own_ports = &key.ports[..];
        let sections: Vec<&Section> =
            subject_rules.iter().map(|(p, r)| self.policies.policies[*p].rules[*r].section(direction)).collect();
        let enabling: Vec<&&Section> = sections.iter().filter(|s| s.enables_policy).collect();
        let enforcement = match self.options.mode {
            EnforcementMode::Never => Enforcement::NotEnforced,
            _ if enabling.iter().any(|s| s.default_deny) => Enforcement::DefaultDeny,
            _ if !enabling.is_empty() => Enforcement::DefaultAllow,
            EnforcementMode::Always => Enforcement::DefaultDeny,
            EnforcementMode::Default => Enforcement::NotEnforced,
        };
        let mut rules = Vec::new();
        let allow_all = |cookie| CompiledRule {
            cookie,
            peers: CompiledPeers::All,
            keys: vec![(None, 0, 0)],
            verdict: dp::VERDICT_ALLOW,
        };
        match enforcement {
            Enforcement::NotEnforced => rules.push(allow_all(dp::COOKIE_NOT_ENFORCED)),
            Enforcement::DefaultAllow => rules.push(allow_all(dp::COOKIE_DEFAULT_ALLOW)),
            Enforcement::DefaultDeny => {}
        }
        if enforcement != Enforcement::NotEnforced {
            if direction == Direction::Ingress && self.options.allow_localhost == AllowLocalhost::Always {
                rules.push(CompiledRule {
                    cookie: dp::COOKIE_LOCALHOST,
                    peers: CompiledPeers::Identity(dp::IDENTITY_HOST),
                    keys: vec![(None, 0, 0)],
                    verdict: dp::VERDICT_ALLOW,
                });
            }
            for section in &sections {
                for rule in &section.rules {
                    rules.push(self.compile_rule(rule, direction, own_ports));
                }
            }
        }
        let mut by_remote: HashMap<u32, Vec<&CompiledRule>> = HashMap::new();
        for rule in &rules {
            match &rule.peers {
                CompiledPeers::All => by_remote.entry(dp::IDENTITY_ANY).or_default().push(rule),
                CompiledPeers::Identity(id) => by_remote.entry(*id).or_default().push(rule),
                CompiledPeers::Some(peers) => {
                    let mut ids = BTreeSet::new();
                    for peer in peers {
                        ids.extend(self.select(peer).iter().copied());
                        let users = self.peer_groups.entry(peer.clone()).or_default();
                        if !users.contains(key) {
                            users.insert(key.clone());
                        }
                    }
                    for id in ids {
                        by_remote.entry(id).or_default().push(rule);
                    }
                }
            }
        }
        let by_identity = by_remote
            .into_iter()
            .map(|(id, touching)| (id, resolve(id, direction.datapath(), contributions(&touching))))
            .filter(|(_, entries)| !entries.is_empty())
            .collect();
        DirectionPolicy { enforcement, rules, by_identity }
    }

    fn compile_rule(&self, rule: &PeerRule, direction: Direction, own_ports: &[ContainerPort]) -> CompiledRule {
        let peers = match &rule.peers {
            Peers::All => CompiledPeers::All,
            Peers::Some(peers) => CompiledPeers::Some(peers.clone()),
        };
        let mut keys = Vec::new();
        let mut redirect = false;
        if rule.ports.is_empty() {
            keys.push((None, 0, 0));
        }
        for port in &rule.ports {
            redirect |= port.l7.is_some();
            let proto = port.protocol.number();
            match &port.port {
                PortSpec::Any => keys.push((Some(proto), 0, 0)),
                PortSpec::Range(lo, hi) => {
                    keys.extend(port_prefixes(*lo, *hi).into_iter().map(|(p, b)| (Some(proto), p, b)))
                }
                PortSpec::Named(name) => {
                    for number in self.resolve_named_port(name, port.protocol, direction, own_ports) {
                        keys.push((Some(proto), number, 16));
                    }
                }
            }
        }
        let verdict = match (rule.deny, redirect) {
            (true, _) => dp::VERDICT_DENY,
            (false, true) => dp::VERDICT_REDIRECT,
            (false, false) => dp::VERDICT_ALLOW,
        };
        CompiledRule { cookie: rule.cookie, peers, keys, verdict }
    }

    /// Ingress names resolve against the endpoint's own ports; egress names against every pod's,
    /// and a name that maps to different numbers across pods resolves to nothing (as in Cilium).
    pub fn resolve_named_port(
        &self,
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
                self.egress_port_numbers(name).into_iter().filter(|(p, _)| *p == protocol).map(|(_, n)| n).collect()
            }
        }
    }

    /// What an egress rule naming `name` resolves to: the one number every pod agrees on.
    fn egress_port_numbers(&self, name: &str) -> Option<(Protocol, u16)> {
        match self.named_ports.get(name) {
            Some(numbers) if numbers.len() == 1 => numbers.keys().next().copied(),
            _ => None,
        }
    }

    /// Recompiles the groups selected by rules whose egress names one of `names`, after the
    /// number those names resolve to changed.
    fn recompile_groups_naming(&mut self, names: &BTreeSet<String>) {
        let names_one = |rule: &Rule| {
            rule.egress
                .rules
                .iter()
                .flat_map(|r| &r.ports)
                .any(|p| matches!(&p.port, PortSpec::Named(n) if names.contains(n)))
        };
        let rules: Vec<&Rule> = self.policies.policies.iter().flat_map(|p| &p.rules).filter(|r| names_one(r)).collect();
        let keys: Vec<GroupKey> = self
            .groups
            .keys()
            .filter(|key| {
                self.identities.get(key.identity).is_some_and(|i| rules.iter().any(|r| r.subject.matches(&i.labels)))
            })
            .cloned()
            .collect();
        for key in keys {
            let group = self.compile_group(&key);
            self.groups.insert(key, group);
        }
    }

    /// Names that map to more than one port number across the cluster.
    pub fn ambiguous_port_names(&self) -> Vec<(&str, Vec<u16>)> {
        self.named_ports
            .iter()
            .filter(|(_, n)| n.len() > 1)
            .map(|(name, n)| (name.as_str(), n.keys().map(|(_, p)| *p).collect()))
            .collect()
    }
}

fn contributions<'a>(rules: &'a [&'a CompiledRule]) -> impl Iterator<Item = (Option<u8>, u16, u8, u8, u32)> + 'a {
    rules.iter().flat_map(|r| r.keys.iter().map(move |(proto, port, bits)| (*proto, *port, *bits, r.verdict, r.cookie)))
}

/// The one namespace a selector is confined to, if it names exactly one.
fn single_namespace(selector: &Selector) -> Option<String> {
    selector
        .requirements()
        .find(|r| r.key == labels::NAMESPACE_KEY && r.operator == Operator::In && r.values.len() == 1)
        .and_then(|r| r.values.iter().next().cloned())
}

fn service_labels(service: &crate::cluster::Service) -> crate::labels::LabelSet {
    let mut set = crate::labels::LabelSet::default();
    for (k, v) in &service.labels {
        set.insert(Source::K8s, k.clone(), v.clone());
    }
    set.insert(Source::K8s, labels::NAMESPACE_KEY, service.namespace.clone());
    set
}

fn cidr_prefixes_of(policy: &Policy) -> BTreeSet<Prefix> {
    let mut prefixes = BTreeSet::new();
    for peer_rule in policy.rules.iter().flat_map(|r| r.ingress.rules.iter().chain(&r.egress.rules)) {
        if let Peers::Some(peers) = &peer_rule.peers {
            for peer in peers {
                if let Peer::Cidr(block) | Peer::IpBlock(block) = peer {
                    prefixes.insert(block.cidr);
                    prefixes.extend(block.except.iter().copied());
                }
            }
        }
    }
    prefixes
}

fn ip_blocks(set: &PolicySet) -> BTreeSet<CidrBlock> {
    let mut blocks = BTreeSet::new();
    for peer_rule in
        set.policies.iter().flat_map(|p| &p.rules).flat_map(|r| r.ingress.rules.iter().chain(&r.egress.rules))
    {
        if let Peers::Some(peers) = &peer_rule.peers {
            blocks.extend(peers.iter().filter_map(|p| match p {
                Peer::IpBlock(block) => Some(block.clone()),
                _ => None,
            }));
        }
    }
    blocks
}

fn ip_block_label(block: &CidrBlock) -> String {
    let except: Vec<String> = block.except.iter().map(ToString::to_string).collect();
    if except.is_empty() {
        format!("ipblock:{}", block.cidr)
    } else {
        format!("ipblock:{}-except-{}", block.cidr, except.join("+"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_split_into_aligned_prefixes() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_prefixes(8080, 8095), vec![(8080, 12)]);
        let blocks = port_prefixes(1000, 2000);
        let covered: u32 = blocks.iter().map(|(_, bits)| 1u32 << (16 - bits)).sum();
        assert_eq!(covered, 1001);
        assert_eq!(port_prefixes(65535, 65535), vec![(65535, 16)]);
    }

    fn parse_set(text: &str) -> PolicySet {
        let parsed = crate::parse_policies(&[crate::SourceFile { name: "p.yaml", text }], &Default::default());
        assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
        parsed.set
    }

    fn described(engine: &Engine, ns: &str, name: &str, d: Direction) -> Vec<(String, Option<u8>, u16, u8, u32)> {
        let group = engine.endpoint(ns, name).expect("endpoint").group;
        let name_of = |id: u32| engine.identities().get(id).map_or(id.to_string(), |i| i.labels.to_string());
        group
            .direction(d)
            .entries()
            .iter()
            .map(|e| (name_of(e.key.identity()), e.key.protocol(), e.key.port(), e.value.verdict, e.value.cookie))
            .collect()
    }

    #[test]
    fn replacing_a_policy_keeps_shared_cidr_identities_and_handles_fewer_rules() {
        let cluster = "kind: Pod\nmetadata:\n  name: a\n  namespace: ns\n  labels:\n    app: a\nspec:\n  containers: []\nstatus:\n  podIP: 10.0.0.1\n";
        let cluster = Cluster::parse(&[crate::SourceFile { name: "c.yaml", text: cluster }]).expect("cluster");
        let egress = |name: &str, extra: &str| {
            format!(
                "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: {name}\n  namespace: ns\nspecs:\n  - endpointSelector: {{}}\n    egress:\n      - toCIDR: [192.0.2.0/24]\n{extra}"
            )
        };
        let second = "  - endpointSelector: {}\n    egress:\n      - toEntities: [world]\n";
        let set = parse_set(&format!("{}---\n{}", egress("one", second), egress("two", "")));
        let mut engine = Engine::new(set.clone(), cluster.clone(), EnforcementMode::Default);
        // Version 2 of "one": one rule instead of two, and no CIDR.
        let changed = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: one\n  namespace: ns\nspec:\n  endpointSelector: {}\n  egress:\n    - toEntities: [kube-apiserver]\n";
        let policy = parse_set(changed).policies.remove(0);
        engine.set_policy(policy.clone());
        let mut fresh_set = set;
        fresh_set.policies[0] = policy;
        fresh_set.renumber();
        let fresh = Engine::new(fresh_set, cluster, EnforcementMode::Default);
        for d in Direction::BOTH {
            assert_eq!(described(&engine, "ns", "a", d), described(&fresh, "ns", "a", d));
        }
        assert!(described(&engine, "ns", "a", Direction::Egress).iter().any(|e| e.0.contains("192.0.2.0/24")));
    }

    #[test]
    fn broader_deny_overrides_narrower_allow_of_the_same_identity() {
        let entries = resolve(
            300,
            dp::DIRECTION_INGRESS,
            [
                (Some(dp::PROTO_TCP), 80, 16, dp::VERDICT_ALLOW, 7),
                (Some(dp::PROTO_UDP), 53, 16, dp::VERDICT_REDIRECT, 8),
                (None, 0, 0, dp::VERDICT_DENY, 9),
                (Some(dp::PROTO_TCP), 0, 0, dp::VERDICT_DENY, 10),
            ]
            .into_iter(),
        );
        assert!(entries.iter().all(|e| e.value.verdict == dp::VERDICT_DENY), "covered allows are dropped: {entries:?}");
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn egress_named_ports_follow_pods_coming_and_going() {
        let pod = |name: &str, port: u16| crate::cluster::Pod {
            namespace: "ns".into(),
            name: name.into(),
            labels: [("app".to_string(), name.to_string())].into(),
            service_account: "default".into(),
            node_name: None,
            ip: None,
            host_network: false,
            ports: vec![ContainerPort { name: Some("web".into()), port, protocol: Protocol::TCP }],
        };
        let set = parse_set(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\n  namespace: ns\nspec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n    - toPorts: [{ports: [{port: web, protocol: TCP}]}]\n",
        );
        let cluster = Cluster { pods: vec![pod("client", 1), pod("server", 8080)], ..Default::default() };
        let mut engine = Engine::new(set, cluster, EnforcementMode::Default);
        let allows_8080 =
            |e: &Engine| e.endpoint("ns", "client").unwrap().group.egress.lookup(0, dp::PROTO_TCP, 8080).is_some();
        assert!(!allows_8080(&engine), "client and server disagree on the number of \"web\"");
        engine.upsert_pod(pod("client", 8080));
        assert!(allows_8080(&engine), "once every pod agrees, the name resolves to 8080");
        engine.upsert_pod(pod("other", 9090));
        assert!(!allows_8080(&engine), "a new pod with another number makes the name ambiguous again");
    }

    const AGENT_CLUSTER: &str = "kind: List\nitems:\n- kind: Namespace\n  metadata: {name: ns, labels: {team: a}}\n- kind: Pod\n  metadata: {name: a, namespace: ns, labels: {app: a}}\n  spec: {nodeName: n1}\n  status: {podIP: 10.200.0.1}\n- kind: Pod\n  metadata: {name: b, namespace: ns, labels: {app: b}}\n  spec: {nodeName: n2}\n  status: {podIP: 10.200.0.2}\n";

    #[test]
    fn engines_sharing_an_identity_basis_number_identities_alike() {
        let cluster = Cluster::parse(&[crate::SourceFile { name: "c.yaml", text: AGENT_CLUSTER }]).expect("cluster");
        let enforced = parse_set(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n    - from: [{ipBlock: {cidr: 10.200.0.0/30}}]\n",
        );
        let candidate = parse_set(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  egress:\n    - toCIDR: [192.0.2.0/24]\n",
        );
        let options = |node: &str| EngineOptions {
            node: Some(node.into()),
            identity_basis: IdentityBasis::of([&enforced, &candidate]),
            ..EngineOptions::default()
        };
        let one = Engine::with_options(enforced.clone(), cluster.clone(), options("n1"));
        let two = Engine::with_options(candidate.clone(), cluster.clone(), options("n1"));
        assert_eq!(one.ipcache(), two.ipcache(), "one ipcache serves both revisions");
        assert!(Engine::new(enforced, cluster.clone(), EnforcementMode::Default).ipcache() != one.ipcache());
        let names: Vec<_> = one.endpoints().map(|e| e.pod.name.clone()).collect();
        assert_eq!(names, ["a"], "only the node's endpoints are compiled");
        assert!(one.endpoint("ns", "b").is_none());
        assert!(one.ipcache().iter().any(|(p, _)| p.to_string() == "10.200.0.2/32"), "remote pods are in the ipcache");
    }

    #[test]
    fn removed_pods_and_relabelled_namespaces_update_only_the_groups_they_affect() {
        let cluster = Cluster::parse(&[crate::SourceFile { name: "c.yaml", text: AGENT_CLUSTER }]).expect("cluster");
        let set = parse_set(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  ingress:\n    - fromEndpoints: [{matchLabels: {app: b, k8s:io.cilium.k8s.namespace.labels.team: a}}]\n",
        );
        let mut engine = Engine::new(set.clone(), cluster.clone(), EnforcementMode::Default);
        let revision = |e: &Engine| e.group_of("ns", "a").expect("group").1.revision;
        let allows_b = |e: &Engine| {
            let b = e.cluster.pod("ns", "b").and_then(|p| e.identity_of_pod(p));
            b.is_some_and(|b| e.endpoint("ns", "a").unwrap().group.ingress.lookup(b, dp::PROTO_TCP, 80).is_some())
        };
        assert!(allows_b(&engine));
        let before = revision(&engine);
        let mut relabelled = engine.cluster.namespaces["ns"].clone();
        relabelled.labels.insert("team".into(), "z".into());
        engine.upsert_namespace(relabelled.clone());
        assert!(!allows_b(&engine), "b no longer matches the namespace label");
        assert!(revision(&engine) != before, "a's entries changed");
        let fresh = Engine::new(
            set,
            Cluster { namespaces: [("ns".into(), relabelled)].into(), ..cluster },
            EnforcementMode::Default,
        );
        for d in Direction::BOTH {
            assert_eq!(described(&engine, "ns", "a", d), described(&fresh, "ns", "a", d));
        }
        let settled = revision(&engine);
        engine.upsert_pod(engine.cluster.pod("ns", "b").unwrap().clone());
        assert_eq!(revision(&engine), settled, "an unchanged pod changes nothing");
        assert!(engine.remove_pod("ns", "b").is_some());
        assert!(engine.cluster.pod("ns", "b").is_none() && engine.remove_pod("ns", "b").is_none());
        assert!(!engine.ipcache().iter().any(|(p, _)| p.to_string() == "10.200.0.2/32"));
    }

    #[test]
    fn the_ipcache_and_endpoint_groups_follow_pods_sharing_an_address() {
        let cluster = Cluster::parse(&[crate::SourceFile { name: "c.yaml", text: AGENT_CLUSTER }]).expect("cluster");
        let set = parse_set(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  ingress:\n    - fromEndpoints: [{matchLabels: {app: b}}]\n",
        );
        let options = EngineOptions { node: Some("n1".into()), ..EngineOptions::default() };
        let mut engine = Engine::with_options(set, cluster, options);
        let at = |e: &Engine, addr: &str| {
            let prefix = Prefix::new(addr.parse().unwrap(), 32);
            e.ipcache().into_iter().filter(|(p, _)| *p == prefix).map(|(_, id)| id).collect::<Vec<_>>()
        };
        let identity = |e: &Engine, name: &str| e.identity_of_pod(e.cluster.pod("ns", name).unwrap()).unwrap();
        let a = identity(&engine, "a");
        assert_eq!(at(&engine, "10.200.0.1"), [a]);
        // A node at b's address: the pod's identity wins, as it does in a fresh ipcache.
        engine.set_nodes(vec![crate::cluster::Node {
            name: "n2".into(),
            labels: Default::default(),
            addresses: vec!["10.200.0.2".parse().unwrap(), "10.201.0.2".parse().unwrap()],
            internal_ip: Some("10.200.0.2".parse().unwrap()),
        }]);
        assert_eq!(at(&engine, "10.200.0.2"), [identity(&engine, "b")]);
        assert_eq!(at(&engine, "10.201.0.2"), [dp::IDENTITY_REMOTE_NODE]);
        // A second pod at a's address (an address reused before the old pod is gone): the pod
        // added last is in the ipcache, and a again once that one goes.
        let mut c = engine.cluster.pod("ns", "a").unwrap().clone();
        c.name = "c".into();
        c.labels.insert("app".into(), "c".into());
        engine.upsert_pod(c);
        let c = identity(&engine, "c");
        assert!(c != a);
        assert_eq!(at(&engine, "10.200.0.1"), [c]);
        let sorted = engine.ipcache().windows(2).all(|w| w[0].0 < w[1].0);
        assert!(sorted, "sorted, one entry per prefix");
        assert_eq!(engine.group_of("ns", "c").map(|(k, _)| k.identity), Some(c));
        engine.remove_pod("ns", "c");
        assert_eq!(at(&engine, "10.200.0.1"), [a]);
        assert!(engine.group_of("ns", "c").is_none(), "gone with its pod");
        assert!(engine.group_of("ns", "b").is_none(), "b runs on another node: not an endpoint here");
        // Relabelled: a's group follows its new identity.
        let mut relabelled = engine.cluster.pod("ns", "a").unwrap().clone();
        relabelled.labels.insert("app".into(), "b".into());
        engine.upsert_pod(relabelled);
        let (key, group) = engine.group_of("ns", "a").expect("a's group");
        assert_eq!(key.identity, identity(&engine, "a"));
        assert_eq!(group.ingress.enforcement, Enforcement::NotEnforced, "the policy no longer selects it");
    }

    #[test]
    fn a_cidr_rule_naming_a_pods_exact_address_does_not_match_the_pod() {
        let pods = "kind: List\nitems:\n- kind: Pod\n  metadata: {name: a, namespace: ns, labels: {app: a}}\n  status: {podIP: 10.200.0.1}\n- kind: Pod\n  metadata: {name: b, namespace: ns, labels: {app: b}}\n  status: {podIP: 10.200.0.2}\n";
        let cluster = Cluster::parse(&[crate::SourceFile { name: "c.yaml", text: pods }]).expect("cluster");
        let set = parse_set(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  egress:\n    - toCIDR: [10.200.0.2/32]\n",
        );
        let engine = Engine::new(set, cluster, EnforcementMode::Default);
        let b = engine.identity_of_pod(engine.cluster.pod("ns", "b").unwrap()).unwrap();
        let addr = "10.200.0.2".parse().unwrap();
        assert_eq!(engine.identity_of_addr(addr), b, "the pod's address resolves to the pod, not the CIDR identity");
        let entries = engine.ipcache();
        assert_eq!(entries.iter().filter(|(p, _)| p.contains_addr(addr) && p.len == 32).count(), 1, "{entries:?}");
        assert!(engine.endpoint("ns", "a").unwrap().group.egress.lookup(b, dp::PROTO_TCP, 80).is_none());
    }
}
