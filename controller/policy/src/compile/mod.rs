//! Compiles policy into per-endpoint, per-direction datapath entries, and keeps them up to date
//! incrementally as pods and policies change. Shaped like Cilium's `pkg/policy`: a
//! [`repository`] of policies, a [`selector_cache`] of the identities each peer selects, the
//! [`ipcache`] allocating identities, per-group [`map_state`], and [`CompiledPolicy`] wiring them.
//!
//! Endpoints with the same identity and container ports share one compiled [`Group`]. Within a
//! direction the entries for one remote identity depend only on the rules that select that
//! identity, so a new identity is patched into every group without recompiling it, and a policy
//! change recompiles only the groups its rules select.
mod group;
mod ipcache;
mod map_state;
mod options;
mod repository;
mod selector_cache;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use palisade_common::{self as dp, Direction, PolicyEntry};

pub use group::{EndpointPolicy, Group, GroupKey, HostEndpointPolicy};
pub use ipcache::IdentityBasis;
pub use map_state::{Enforcement, MapState, PortBlock, port_prefixes};
pub use options::{AllowLocalhost, CompileOptions, EnforcementMode};

use group::{GroupCompiler, Groups};
use ipcache::IpCache;
use repository::Repository;
use selector_cache::SelectorCache;

use crate::cluster::{Cluster, ContainerPort, EndpointSlice, Namespace, Node, Pod, Service};
use crate::identity::Identities;
use crate::model::{Policy, PolicySet, Prefix, Protocol};

/// The compiled state of a policy set over a cluster: what callers hold and update.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub cluster: Cluster,
    options: CompileOptions,
    repository: Repository,
    selectors: SelectorCache,
    ipcache: IpCache,
    groups: Groups,
}

impl CompiledPolicy {
    pub fn new(policies: PolicySet, cluster: Cluster, mode: EnforcementMode) -> CompiledPolicy {
        CompiledPolicy::with_options(policies, cluster, CompileOptions { mode, ..CompileOptions::default() })
    }

    pub fn with_options(policies: PolicySet, cluster: Cluster, options: CompileOptions) -> CompiledPolicy {
        let Cluster { namespaces, pods, nodes, services, endpoint_slices, dns_answers, outside_hosts } = cluster;
        let mut compiled = CompiledPolicy {
            ipcache: IpCache::new(&policies, &options.identity_basis),
            repository: Repository::new(policies),
            cluster: Cluster {
                namespaces,
                pods: Vec::new(),
                nodes,
                services,
                endpoint_slices,
                dns_answers,
                outside_hosts,
            },
            selectors: SelectorCache::default(),
            groups: Groups::default(),
            options,
        };
        // Nothing is compiled yet: no selection to update with these identities. Nodes first, so
        // that compilations with the same basis number identities alike.
        let host = compiled.host_node().map(str::to_owned);
        compiled.ipcache.set_nodes(&compiled.cluster.nodes, host.as_deref());
        for pod in pods {
            compiled.add_pod(pod);
        }
        let addresses = compiled.cluster.held_addresses();
        compiled.ipcache.set_held_addresses(addresses);
        let mut keys: BTreeSet<GroupKey> =
            compiled.cluster.pods.iter().filter(|p| compiled.is_endpoint(p)).map(|p| compiled.group_key(p)).collect();
        keys.extend(compiled.host_key());
        compiled.recompile(keys);
        compiled
    }

    pub fn policies(&self) -> &PolicySet {
        self.repository.policies()
    }

    pub fn identities(&self) -> &Identities {
        self.ipcache.identities()
    }

    pub fn options(&self) -> &CompileOptions {
        &self.options
    }

    /// The node whose addresses are `host`: [`CompileOptions::host_node`], else
    /// [`CompileOptions::node`].
    pub fn host_node(&self) -> Option<&str> {
        self.options.host_node.as_deref().or(self.options.node.as_deref())
    }

    /// An entry in words, its peer named by labels rather than by number, so that compilations
    /// which number identities differently describe the same entry alike (the rule cookie is
    /// left out).
    pub fn describe_entry(&self, entry: &PolicyEntry) -> String {
        let key = &entry.key;
        let peer = match key.identity() {
            dp::IDENTITY_ANY => "any".to_string(),
            id => self.identities().get(id).map_or(id.to_string(), |i| i.labels.to_string()),
        };
        format!(
            "{peer} dir={} proto={} port={}/{} verdict={}",
            key.direction().as_str(),
            key.protocol().map_or("any", Protocol::name),
            key.port(),
            key.port_bits(),
            entry.value.verdict().as_str()
        )
    }

    pub fn identity_of_pod(&self, pod: &Pod) -> Option<u32> {
        self.ipcache.identity_of_pod(pod)
    }

    pub fn endpoint(&self, namespace: &str, name: &str) -> Option<EndpointPolicy<'_>> {
        let pod = self.cluster.pod(namespace, name).filter(|p| self.is_endpoint(p))?;
        let key = self.group_key(pod);
        Some(EndpointPolicy {
            pod,
            identity: self.identities().get(key.identity)?,
            group: self.groups.by_key.get(&key)?,
        })
    }

    /// The endpoints compiled: every pod's, or with [`CompileOptions::node`] those on the node.
    pub fn endpoints(&self) -> impl Iterator<Item = EndpointPolicy<'_>> {
        self.cluster.pods.iter().filter(|p| self.is_endpoint(p)).filter_map(|p| self.endpoint(&p.namespace, &p.name))
    }

    /// The host endpoint of [`Self::host_node`] (`None` without one): the host identity with
    /// the node's labels, and its policy, compiled like an endpoint's from the host rules
    /// (`nodeSelector`) that select it.
    pub fn host_endpoint(&self) -> Option<HostEndpointPolicy<'_>> {
        let node = self.host_node()?;
        let key = self.host_key()?;
        let identity = self.identities().get(key.identity)?;
        Some(HostEndpointPolicy {
            node,
            identity,
            group: self.groups.by_key.get(&key)?,
            selected: !self.repository.rules_selecting(identity).is_empty(),
        })
    }

    /// The group key of the host endpoint, when there is one: the host has no container ports.
    fn host_key(&self) -> Option<GroupKey> {
        self.host_node().map(|_| GroupKey { identity: dp::IDENTITY_HOST, ports: Vec::new() })
    }

    fn is_endpoint(&self, pod: &Pod) -> bool {
        !pod.host_network && self.options.node.as_ref().is_none_or(|node| pod.node_name.as_ref() == Some(node))
    }

    /// The compiled group of an endpoint, for comparing [`Group::revision`]s.
    pub fn group_of(&self, namespace: &str, name: &str) -> Option<(&GroupKey, &Group)> {
        self.groups.by_key.get_key_value(self.groups.of_endpoint.get(&format!("{namespace}/{name}"))?)
    }

    /// The ipcache: pods as /32 and /128, CIDR identities for referenced prefixes and for the endpoint
    /// addresses of Services without a selector, the reserved identities of node and API server
    /// addresses and ClusterIPs; one identity per prefix, sorted.
    pub fn ipcache(&self) -> Vec<(Prefix, u32)> {
        self.ipcache.entries(
            &self.cluster.nodes,
            self.host_node(),
            self.cluster.apiserver_addresses(),
            self.cluster.services.iter().flat_map(|s| s.cluster_ips.iter().copied()),
        )
    }

    /// The identity the datapath sees for an address (longest prefix; world, or world-ipv6 for
    /// an IPv6 address, when nothing matches). A pod's address is looked up directly: the proxy
    /// asks for one per connection.
    pub fn identity_of_addr(&self, addr: IpAddr) -> u32 {
        if let Some((_, identity)) = self.ipcache.pod_at(addr) {
            return identity;
        }
        self.ipcache()
            .into_iter()
            .filter(|(p, _)| p.contains_addr(addr))
            .max_by_key(|(p, _)| p.len)
            .map_or(crate::identity::world_of_addr(addr), |(_, id)| id)
    }

    /// The local endpoint with this address, as (namespace, name): the pod the ipcache maps it to,
    /// when that is an endpoint of this compilation. What the L7 proxy knows of a connection is
    /// its two addresses.
    pub fn endpoint_at(&self, ip: IpAddr) -> Option<(&str, &str)> {
        let (key, _) = self.ipcache.pod_at(ip)?;
        if !self.groups.of_endpoint.contains_key(key) {
            return None;
        }
        key.split_once('/')
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
            self.forget_pod(&old);
            old
        });
        let before: Vec<_> = names.iter().map(|n| self.ipcache.egress_port_number(n)).collect();
        let added = pod.is_some();
        if let Some(pod) = pod {
            self.add_pod(pod);
        }
        let changed: BTreeSet<String> = names
            .into_iter()
            .zip(before)
            .filter(|(n, b)| *b != self.ipcache.egress_port_number(n))
            .map(|(n, _)| n)
            .collect();
        if !changed.is_empty() {
            self.recompile_groups_naming(&changed);
        }
        if added {
            let pod = self.cluster.pods.last().expect("just added");
            if self.is_endpoint(pod) {
                let key = self.group_key(pod);
                if !self.groups.by_key.contains_key(&key) {
                    self.recompile([key]);
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

    /// Node addresses feed the ipcache (as host, remote-node or a remote node's identity of the
    /// labels `fromNodes`/`toNodes` select by); node labels are those identities' labels and the
    /// host's. A node whose labels change moves to the identity of its new labels; the host
    /// endpoint is recompiled when the host's labels change.
    pub fn set_nodes(&mut self, nodes: Vec<Node>) {
        if self.cluster.nodes == nodes {
            return;
        }
        self.cluster.nodes = nodes;
        let host = self.host_node().map(str::to_owned);
        let changes = self.ipcache.set_nodes(&self.cluster.nodes, host.as_deref());
        for id in changes.added {
            self.identity_added(id);
        }
        for id in changes.removed {
            self.identity_removed(id);
        }
        if changes.host_relabelled {
            // Peers selecting the host by its labels follow them; so do the rules selecting it.
            self.identity_added(dp::IDENTITY_HOST);
            self.recompile(self.host_key());
        }
    }

    /// EndpointSlices feed the ipcache (the API server's addresses as kube-apiserver, the
    /// backends of Services without a selector as /32 CIDR identities) and `toServices`.
    pub fn set_endpoint_slices(&mut self, slices: Vec<EndpointSlice>) {
        if self.cluster.endpoint_slices == slices {
            return;
        }
        self.cluster.endpoint_slices = slices;
        self.held_addresses_changed();
    }

    /// Services change what `toServices` selects and which addresses are Service backends.
    pub fn set_services(&mut self, services: Vec<Service>) {
        if self.cluster.services == services {
            return;
        }
        self.cluster.services = services;
        self.held_addresses_changed();
    }

    /// DNS answers change what `toFQDNs` selects: the addresses of the names they match.
    pub fn set_dns_answers(&mut self, answers: BTreeMap<String, BTreeSet<IpAddr>>) {
        if self.cluster.dns_answers == answers {
            return;
        }
        self.cluster.dns_answers = answers;
        self.held_addresses_changed();
    }

    /// Only what the change touches is recomputed: held addresses that appear or go are patched
    /// in and out like any identity, and the groups whose `toServices` or `toFQDNs` peers now
    /// select other identities are recompiled.
    fn held_addresses_changed(&mut self) {
        let (added, removed) = self.ipcache.set_held_addresses(self.cluster.held_addresses());
        for id in added {
            self.identity_added(id);
        }
        for id in removed {
            self.identity_removed(id);
        }
        let changed = self.selectors.address_peers_changed(self.ipcache.identities(), &self.cluster);
        // Users are a superset: groups since removed stay removed.
        let keys: Vec<GroupKey> =
            self.selectors.users_of(&changed).filter(|k| self.groups.by_key.contains_key(*k)).cloned().collect();
        self.recompile(keys);
    }

    /// Starts over from the current cluster and the policies after `change`.
    fn rebuild(&mut self, change: impl FnOnce(&mut PolicySet)) {
        let mut policies = std::mem::take(&mut self.repository).into_policies();
        change(&mut policies);
        let cluster = std::mem::take(&mut self.cluster);
        *self = CompiledPolicy::with_options(policies, cluster, self.options.clone());
    }

    /// Adds or replaces a policy; recompiles only the groups its old or new rules select (the
    /// host endpoint's too, when a host rule of either selects it).
    pub fn set_policy(&mut self, policy: Policy) {
        if !self.ipcache.knows(&IdentityBasis::of([&PolicySet { policies: vec![policy.clone()] }])) {
            // New ipBlocks change pod identities, new node label keys remote nodes': start over.
            self.rebuild(|policies| {
                match policies.policies.iter().position(|p| p.id == policy.id) {
                    Some(i) => policies.policies[i] = policy,
                    None => policies.policies.push(policy),
                }
                policies.renumber();
            });
            return;
        }
        let upserted = self.repository.upsert(policy);
        let new = &self.repository.policies().policies[upserted.index];
        // New CIDR identities before the old version's are released, so a prefix both versions
        // (or other policies) use keeps its identity.
        let added: Vec<u32> = new.cidr_prefixes().into_iter().filter_map(|p| self.ipcache.acquire_cidr(p)).collect();
        for id in added {
            self.identity_added(id);
        }
        if let Some(old) = &upserted.old {
            for prefix in old.cidr_prefixes() {
                if let Some(id) = self.ipcache.release_cidr(prefix) {
                    self.identity_removed(id);
                }
            }
        }
        // Only the groups either version selects change; every other group's rules are the same.
        let new = &self.repository.policies().policies[upserted.index];
        let identities = self.ipcache.identities();
        let selects = |policy: &Policy, key: &GroupKey| {
            identities.get(key.identity).is_some_and(|i| Repository::policy_selects(policy, i))
        };
        let affected: Vec<GroupKey> = self
            .groups
            .by_key
            .keys()
            .filter(|key| selects(new, key) || upserted.old.as_ref().is_some_and(|o| selects(o, key)))
            .cloned()
            .collect();
        self.recompile(affected);
    }

    fn group_key(&self, pod: &Pod) -> GroupKey {
        let mut ports = pod.ports.clone();
        ports.sort();
        GroupKey { identity: self.ipcache.identity_of_pod(pod).expect("every pod has an identity"), ports }
    }

    fn add_pod(&mut self, pod: Pod) {
        let identity = self.ipcache.add_pod(&pod, self.cluster.namespaces.get(&pod.namespace));
        if self.is_endpoint(&pod) {
            let key = self.group_key(&pod);
            self.groups.of_endpoint.insert(pod.key(), key);
        }
        self.cluster.pods.push(pod);
        if identity.new {
            self.identity_added(identity.id);
        }
    }

    fn forget_pod(&mut self, pod: &Pod) {
        self.groups.of_endpoint.remove(&pod.key());
        if let Some(id) = self.ipcache.remove_pod(pod) {
            self.groups.by_key.retain(|key, _| key.identity != id);
            self.identity_removed(id);
        }
    }

    /// (Re)compiles the groups `keys`.
    fn recompile(&mut self, keys: impl IntoIterator<Item = GroupKey>) {
        for key in keys {
            let revision = self.groups.revisions.next();
            let group = self.compiler().compile(&key, revision);
            self.groups.by_key.insert(key, group);
        }
    }

    fn compiler(&mut self) -> GroupCompiler<'_> {
        GroupCompiler {
            repository: &self.repository,
            selectors: &mut self.selectors,
            ipcache: &self.ipcache,
            cluster: &self.cluster,
            options: &self.options,
        }
    }

    /// A new (or relabelled) identity joins the selections that match it (and leaves the
    /// others) and is patched into every group compiled with a rule naming one of those peers.
    fn identity_added(&mut self, id: u32) {
        let Some(identity) = self.ipcache.identities().get(id) else { return };
        let changed = self.selectors.identity_changed(identity, &self.cluster);
        let keys: Vec<GroupKey> = self.selectors.users_of(&changed).cloned().collect();
        for key in keys {
            let Some(group) = self.groups.by_key.get_mut(&key) else { continue };
            let mut patched = false;
            for direction in Direction::BOTH {
                patched |= group.direction_mut(direction).patch(id, direction, |r| self.selectors.rule_selects(r, id));
            }
            if patched {
                group.revision = self.groups.revisions.next();
            }
        }
    }

    fn identity_removed(&mut self, id: u32) {
        let changed = self.selectors.identity_removed(id);
        for key in self.selectors.users_of(&changed) {
            if let Some(group) = self.groups.by_key.get_mut(key) {
                let ingress = group.ingress.remove_identity(id);
                let egress = group.egress.remove_identity(id);
                if ingress || egress {
                    group.revision = self.groups.revisions.next();
                }
            }
        }
    }

    /// Cookies of the rules in `policy` that select remote identity `id`, the wildcard rules
    /// included, denies left out.
    pub(crate) fn cookies_selecting(&self, policy: &MapState, id: u32) -> Vec<u32> {
        policy
            .rules
            .iter()
            .filter(|r| {
                !r.deny && (self.selectors.rule_selects(r, id) || self.selectors.rule_selects(r, dp::IDENTITY_ANY))
            })
            .map(|r| r.cookie)
            .collect()
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
        group::resolve_named_port(&self.ipcache, name, protocol, direction, own_ports)
    }

    /// Recompiles the groups selected by rules whose egress names one of `names`, after the
    /// number those names resolve to changed.
    fn recompile_groups_naming(&mut self, names: &BTreeSet<String>) {
        let rules = self.repository.rules_naming(names);
        let identities = self.ipcache.identities();
        let keys: Vec<GroupKey> = self
            .groups
            .by_key
            .keys()
            .filter(|key| identities.get(key.identity).is_some_and(|i| rules.iter().any(|r| r.selects(i))))
            .cloned()
            .collect();
        self.recompile(keys);
    }

    /// Names that map to more than one port number across the cluster.
    pub fn ambiguous_port_names(&self) -> Vec<(&str, Vec<u16>)> {
        self.ipcache.ambiguous_port_names()
    }
}

#[cfg(test)]
mod tests;
