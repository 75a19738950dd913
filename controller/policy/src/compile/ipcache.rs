//! Identity allocation with the ipcache (Cilium's `pkg/identity` and `pkg/ipcache`): pods get
//! identities from their labels, referenced prefixes CIDR identities, the reserved identities
//! cover nodes, the API server and the world; addresses map to identities, and container port
//! names to the numbers pods give them.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use palisade_common::{self as dp, Protocol};

use crate::cluster::{Namespace, Node, Pod};
use crate::identity::{self, Identities};
use crate::labels::Source;
use crate::model::{CidrBlock, PolicySet, Prefix};

/// The policy content identities depend on: CIDR prefixes, NetworkPolicy ipBlocks and the node
/// label keys `fromNodes`/`toNodes` select by.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IdentityBasis {
    ip_blocks: BTreeSet<CidrBlock>,
    /// Prefix → number of policies naming it.
    prefixes: BTreeMap<Prefix, usize>,
    node_label_keys: BTreeSet<String>,
}

impl IdentityBasis {
    pub fn of<'a>(sets: impl IntoIterator<Item = &'a PolicySet>) -> IdentityBasis {
        let mut basis = IdentityBasis::default();
        for set in sets {
            basis.ip_blocks.extend(set.ip_blocks());
            basis.node_label_keys.extend(set.node_label_keys());
            for prefix in set.policies.iter().flat_map(|p| p.cidr_prefixes()) {
                *basis.prefixes.entry(prefix).or_default() += 1;
            }
        }
        basis
    }
}

/// A port number a container port name stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct NamedPort {
    pub protocol: Protocol,
    pub port: u16,
}

/// A pod at an address, by [`Pod::key`].
#[derive(Clone, Debug)]
struct PodAddress {
    pod: String,
    identity: u32,
}

/// A pod's identity as [`IpCache::add_pod`] allocated it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PodIdentity {
    pub id: u32,
    /// The identity did not exist before.
    pub new: bool,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct IpCache {
    identities: Identities,
    pod_identity: HashMap<String, u32>,
    /// The pods at each address (every address of each pod, both families), in the order they
    /// were added (the last one is in the ipcache), host-network pods left out: the ipcache
    /// without going through every pod.
    pod_addrs: BTreeMap<IpAddr, Vec<PodAddress>>,
    /// NetworkPolicy ipBlocks. A pod inside one carries a label for it, so pods inside and
    /// outside a block never share an identity and the block selects exactly its pods.
    ip_blocks: BTreeSet<CidrBlock>,
    /// Every port number each container port name has across the cluster (egress named ports).
    /// Counted per pod, so names are forgotten when their last pod goes.
    named_ports: HashMap<String, BTreeMap<NamedPort, usize>>,
    /// The endpoint addresses of Services without a selector and the addresses of DNS
    /// answers, each holding its /32 CIDR identity (see [`IpCache::set_held_addresses`]).
    held_addrs: BTreeSet<IpAddr>,
    /// The node label keys remote-node identities carry (see [`identity::remote_node_labels`]).
    node_label_keys: BTreeSet<String>,
    /// The identity of each remote node with labels of those keys, by name; the others are
    /// remote-node.
    node_identity: BTreeMap<String, u32>,
}

/// What [`IpCache::set_nodes`] changed.
#[derive(Debug, Default)]
pub(crate) struct NodeChanges {
    pub added: Vec<u32>,
    pub removed: Vec<u32>,
    /// The host identity's labels changed (the host node's labels, or which node it is).
    pub host_relabelled: bool,
}

impl IpCache {
    /// An ipcache with the identities of `set` and `basis`: its ipBlocks, and one user per
    /// policy that refers to a prefix, so that replacing one of them keeps the identity for the
    /// others; allocated in prefix order.
    pub fn new(set: &PolicySet, basis: &IdentityBasis) -> IpCache {
        let own = IdentityBasis::of([set]);
        let mut cache = IpCache {
            ip_blocks: own.ip_blocks.union(&basis.ip_blocks).cloned().collect(),
            node_label_keys: own.node_label_keys.union(&basis.node_label_keys).cloned().collect(),
            ..IpCache::default()
        };
        let mut users = own.prefixes;
        for (prefix, count) in &basis.prefixes {
            *users.entry(*prefix).or_default() += count;
        }
        for (prefix, count) in users {
            for _ in 0..count {
                cache.identities.acquire_cidr(prefix);
            }
        }
        cache
    }

    pub fn identities(&self) -> &Identities {
        &self.identities
    }

    /// Whether pods already carry labels for all ipBlocks of `basis`, and remote nodes for all
    /// its node label keys.
    pub fn knows(&self, basis: &IdentityBasis) -> bool {
        basis.ip_blocks.is_subset(&self.ip_blocks) && basis.node_label_keys.is_subset(&self.node_label_keys)
    }

    /// Gives each remote node the identity of its labels of the node label keys (remote-node
    /// when it has none: without `fromNodes`/`toNodes` every remote node is remote-node, so a
    /// large cluster does not get an identity per node), and the host identity the labels of
    /// node `host`. New identities are acquired before old ones are released, so a node that
    /// keeps its labels keeps its identity.
    pub fn set_nodes(&mut self, nodes: &[Node], host: Option<&str>) -> NodeChanges {
        let mut changes = NodeChanges::default();
        let mut node_identity = BTreeMap::new();
        for node in nodes.iter().filter(|n| host != Some(n.name.as_str())) {
            let Some(labels) = identity::remote_node_labels(node, &self.node_label_keys) else { continue };
            if node_identity.contains_key(&node.name) {
                continue;
            }
            let (id, new) = self.identities.acquire(labels, None, None);
            node_identity.insert(node.name.clone(), id);
            if new {
                changes.added.push(id);
            }
        }
        let old = std::mem::replace(&mut self.node_identity, node_identity);
        changes.removed = old.into_values().filter(|&id| self.identities.release(id)).collect();
        let host_labels = identity::host_labels(nodes.iter().find(|n| host == Some(n.name.as_str())));
        changes.host_relabelled = self.identities.set_host_labels(host_labels);
        changes
    }

    pub fn identity_of_pod(&self, pod: &Pod) -> Option<u32> {
        self.pod_identity.get(&pod.key()).copied()
    }

    /// The pod the ipcache maps `ip` to (the last added of those sharing it), as its key and
    /// identity: its /32 (or /128) is the longest prefix and replaces any other entry for the
    /// address.
    pub fn pod_at(&self, ip: IpAddr) -> Option<(&str, u32)> {
        self.pod_addrs.get(&ip)?.last().map(|at| (at.pod.as_str(), at.identity))
    }

    /// Allocates (or shares) the pod's identity from its labels and records its address and
    /// named ports.
    pub fn add_pod(&mut self, pod: &Pod, namespace: Option<&Namespace>) -> PodIdentity {
        let mut labels = identity::pod_labels(pod, namespace);
        // A block selects the pod when it selects any of its addresses (one of each family).
        for block in self.ip_blocks.iter().filter(|b| pod.ips.iter().any(|&ip| b.selects_addr(ip))) {
            labels.insert(Source::Cidr, ip_block_label(block), "");
        }
        let (id, new) = if pod.host_network {
            (dp::IDENTITY_HOST, false)
        } else {
            self.identities.acquire(labels, Some(pod.namespace.clone()), None)
        };
        for port in &pod.ports {
            if let Some(name) = &port.name {
                let number = NamedPort { protocol: port.protocol, port: port.port };
                *self.named_ports.entry(name.clone()).or_default().entry(number).or_default() += 1;
            }
        }
        self.pod_identity.insert(pod.key(), id);
        if !pod.host_network {
            for &ip in &pod.ips {
                self.pod_addrs.entry(ip).or_default().push(PodAddress { pod: pod.key(), identity: id });
            }
        }
        PodIdentity { id, new }
    }

    /// Forgets the pod; returns its identity when that is gone with it.
    pub fn remove_pod(&mut self, pod: &Pod) -> Option<u32> {
        let id = self.pod_identity.remove(&pod.key())?;
        for ip in &pod.ips {
            if let Some(pods) = self.pod_addrs.get_mut(ip) {
                pods.retain(|at| at.pod != pod.key());
                if pods.is_empty() {
                    self.pod_addrs.remove(ip);
                }
            }
        }
        for port in &pod.ports {
            let Some(name) = &port.name else { continue };
            if let Some(numbers) = self.named_ports.get_mut(name) {
                let number = NamedPort { protocol: port.protocol, port: port.port };
                if let Some(count) = numbers.get_mut(&number) {
                    *count -= 1;
                    if *count == 0 {
                        numbers.remove(&number);
                    }
                }
                if numbers.is_empty() {
                    self.named_ports.remove(name);
                }
            }
        }
        (id != dp::IDENTITY_HOST && self.identities.release(id)).then_some(id)
    }

    /// Acquires the CIDR identity of `prefix`; returns it when it is new.
    pub fn acquire_cidr(&mut self, prefix: Prefix) -> Option<u32> {
        match self.identities.acquire_cidr(prefix) {
            (id, true) => Some(id),
            _ => None,
        }
    }

    /// Releases one user of the CIDR identity of `prefix`; returns it when it is gone.
    pub fn release_cidr(&mut self, prefix: Prefix) -> Option<u32> {
        let id = self.identities.cidr_identity(prefix)?;
        self.identities.release(id).then_some(id)
    }

    /// Holds a /32 CIDR identity for each endpoint address of a Service without a selector (what
    /// `toServices` selects for such a Service, as in Cilium), for every such Service whether a
    /// policy names it or not: a policy that comes to name another Service then needs no new
    /// identity, so the datapath's ipcache does not change under a policy change. The same for
    /// each address of a DNS answer (what `toFQDNs` selects). Returns the identities that
    /// appeared and those that went.
    pub fn set_held_addresses(&mut self, addrs: BTreeSet<IpAddr>) -> (Vec<u32>, Vec<u32>) {
        let host = |a: &IpAddr| Prefix::host(*a);
        let new: Vec<Prefix> = addrs.difference(&self.held_addrs).map(host).collect();
        let gone: Vec<Prefix> = self.held_addrs.difference(&addrs).map(host).collect();
        self.held_addrs = addrs;
        let added = new.into_iter().filter_map(|p| self.acquire_cidr(p)).collect();
        let removed = gone.into_iter().filter_map(|p| self.release_cidr(p)).collect();
        (added, removed)
    }

    /// The ipcache: pods as /32 and /128, CIDR identities for referenced prefixes, the reserved
    /// identities of node and API server addresses, Services' ClusterIPs; one identity per
    /// prefix, sorted (IPv4 first). A pod's address keeps the pod's identity even when a policy
    /// names that exact /32 or /128, because CIDR rules never match pods. World is 0.0.0.0/0
    /// (world) and ::/0 (world-ipv6).
    /// `host` is the node whose addresses are `host`; the other nodes' are their node identity
    /// (see [`IpCache::set_nodes`]).
    pub fn entries(
        &self,
        nodes: &[Node],
        host: Option<&str>,
        apiserver: impl Iterator<Item = IpAddr>,
        cluster_ips: impl Iterator<Item = IpAddr>,
    ) -> Vec<(Prefix, u32)> {
        let mut others: BTreeMap<Prefix, u32> =
            self.identities.cidr_identities().filter_map(|i| Some((i.prefix?, i.id))).collect();
        // An address that is several things gets one identity, later ones winning: other nodes
        // are remote-node, the API server's addresses kube-apiserver (also on a remote node, as
        // Cilium numbers it), and the local host's own addresses are always host, also when the
        // API server runs there (Cilium keeps host for it and adds the kube-apiserver label,
        // which one number cannot carry). Pods beat all three, below.
        let (local, remote): (Vec<&Node>, Vec<&Node>) = nodes.iter().partition(|n| host.is_some_and(|h| h == n.name));
        let at = |addr: &IpAddr, id: u32| (Prefix::host(*addr), id);
        // A ClusterIP is never a peer: egress to it is judged after translation.
        others.extend(cluster_ips.map(|a| at(&a, dp::IDENTITY_SERVICE)));
        for node in remote {
            let id = self.node_identity.get(&node.name).copied().unwrap_or(dp::IDENTITY_REMOTE_NODE);
            others.extend(node.addresses.iter().map(|a| at(a, id)));
        }
        others.extend(apiserver.map(|a| at(&a, dp::IDENTITY_KUBE_APISERVER)));
        others.extend(local.iter().flat_map(|n| &n.addresses).map(|a| at(a, dp::IDENTITY_HOST)));
        // Both sorted: merged in one walk, a pod's entry replacing another for the same /32.
        let mut pods = self
            .pod_addrs
            .iter()
            .filter_map(|(addr, pods)| Some((Prefix::host(*addr), pods.last()?.identity)))
            .peekable();
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

    /// What an egress rule naming `name` resolves to: the one number every pod agrees on.
    pub fn egress_port_number(&self, name: &str) -> Option<NamedPort> {
        match self.named_ports.get(name) {
            Some(numbers) if numbers.len() == 1 => numbers.keys().next().copied(),
            _ => None,
        }
    }

    /// Names that map to more than one port number across the cluster.
    pub fn ambiguous_port_names(&self) -> Vec<(&str, Vec<u16>)> {
        self.named_ports
            .iter()
            .filter(|(_, n)| n.len() > 1)
            .map(|(name, n)| (name.as_str(), n.keys().map(|p| p.port).collect()))
            .collect()
    }
}

pub(crate) fn ip_block_label(block: &CidrBlock) -> String {
    let except: Vec<String> = block.except.iter().map(ToString::to_string).collect();
    if except.is_empty() {
        format!("ipblock:{}", block.cidr)
    } else {
        format!("ipblock:{}-except-{}", block.cidr, except.join("+"))
    }
}
