//! Security identities: one per unique set of security-relevant labels, reserved identities for
//! the host, world and the other entities, and node-local CIDR identities for the prefixes policy
//! refers to. Numbers are node-local; nothing outside a node ever relies on them.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use palisade_common as dp;

use crate::cluster::{Namespace, Node, Pod};
use crate::labels::{self, LabelSet, Source};
use crate::model::Prefix;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub id: u32,
    pub labels: LabelSet,
    /// For CIDR identities (and world, which is 0.0.0.0/0): the prefix it stands for.
    pub prefix: Option<Prefix>,
    /// Namespace of a pod identity, for indexing.
    pub namespace: Option<String>,
}

impl Identity {
    /// `namespace:app=db,role=primary` for pods; the full label set otherwise.
    pub fn short_name(&self) -> String {
        match &self.namespace {
            Some(ns) => {
                let labels: Vec<String> = self.labels.user_labels().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{ns}:{}", labels.join(","))
            }
            None => self.labels.to_string(),
        }
    }
}

pub const RESERVED: [(u32, &str); 9] = [
    (dp::IDENTITY_HOST, "host"),
    (dp::IDENTITY_WORLD, "world"),
    (dp::IDENTITY_UNMANAGED, "unmanaged"),
    (dp::IDENTITY_HEALTH, "health"),
    (dp::IDENTITY_INIT, "init"),
    (dp::IDENTITY_REMOTE_NODE, "remote-node"),
    (dp::IDENTITY_KUBE_APISERVER, "kube-apiserver"),
    (dp::IDENTITY_INGRESS, "ingress"),
    (dp::IDENTITY_WORLD_IPV6, "world-ipv6"),
];

/// The label IPv4 outside identities carry besides `reserved:world` (Cilium 1.16 dual-stack).
pub const WORLD_IPV4: &str = "world-ipv4";
/// The label IPv6 outside identities carry besides `reserved:world`.
pub const WORLD_IPV6: &str = "world-ipv6";

pub fn reserved_id(name: &str) -> Option<u32> {
    RESERVED.iter().find(|(_, n)| *n == name).map(|(id, _)| *id)
}

/// The security-relevant labels of a pod: its own labels, namespace, namespace labels, service
/// account and cluster.
pub fn pod_labels(pod: &Pod, namespace: Option<&Namespace>) -> LabelSet {
    let mut set = LabelSet::default();
    for (k, v) in pod.labels.iter().filter(|(k, _)| labels::is_identity_relevant(k)) {
        set.insert(Source::K8s, k.clone(), v.clone());
    }
    set.insert(Source::K8s, labels::NAMESPACE_KEY, pod.namespace.clone());
    for (k, v) in namespace.map(|n| &n.labels).into_iter().flatten() {
        set.insert(Source::K8s, format!("{}{k}", labels::NAMESPACE_LABELS_PREFIX), v.clone());
    }
    set.insert(Source::K8s, labels::SERVICE_ACCOUNT_KEY, pod.service_account.clone());
    set.insert(Source::K8s, labels::CLUSTER_KEY, labels::CLUSTER_NAME);
    set
}

/// The labels of the host identity on `node`: `reserved:host` and the Node's labels (source
/// `node`), which `nodeSelector` matches; `reserved:host` alone without a Node.
pub fn host_labels(node: Option<&Node>) -> LabelSet {
    node_identity_labels("host", node.into_iter().flat_map(|n| &n.labels))
}

/// The labels of a remote node's identity: `reserved:remote-node` and the Node's labels whose
/// keys are in `keys` (those `fromNodes`/`toNodes` select by); `None` when it has none of them,
/// and so is the reserved remote-node identity.
pub fn remote_node_labels(node: &Node, keys: &BTreeSet<String>) -> Option<LabelSet> {
    let mut relevant = node.labels.iter().filter(|(k, _)| keys.contains(*k)).peekable();
    relevant.peek()?;
    Some(node_identity_labels("remote-node", relevant))
}

fn node_identity_labels<'a>(reserved: &str, labels: impl Iterator<Item = (&'a String, &'a String)>) -> LabelSet {
    let mut set = LabelSet::default();
    for (k, v) in labels {
        set.insert(Source::Node, k.clone(), v.clone());
    }
    // Last: a Node label of the same key does not displace it.
    set.insert(Source::Reserved, reserved, "");
    set
}

/// Allocates and reference-counts identities.
#[derive(Clone, Debug)]
pub struct Identities {
    by_id: BTreeMap<u32, Identity>,
    by_labels: HashMap<LabelSet, u32>,
    users: HashMap<u32, usize>,
    by_namespace: HashMap<String, BTreeSet<u32>>,
    next_local: u32,
    next_cidr: u32,
}

impl Default for Identities {
    fn default() -> Self {
        let mut identities = Identities {
            by_id: BTreeMap::new(),
            by_labels: HashMap::new(),
            users: HashMap::new(),
            by_namespace: HashMap::new(),
            next_local: dp::IDENTITY_FIRST_LOCAL,
            next_cidr: dp::IDENTITY_CIDR_BASE | 1,
        };
        for (id, name) in RESERVED {
            let prefix = match id {
                // world is 0.0.0.0/0, world-ipv6 ::/0; both are `world` to policy.
                dp::IDENTITY_WORLD => Some(Prefix::everything(false)),
                dp::IDENTITY_WORLD_IPV6 => Some(Prefix::everything(true)),
                _ => None,
            };
            let labels = match &prefix {
                Some(prefix) => world_labels(prefix),
                None => {
                    let mut labels = LabelSet::default();
                    labels.insert(Source::Reserved, name, "");
                    labels
                }
            };
            identities.by_labels.insert(labels.clone(), id);
            identities.by_id.insert(id, Identity { id, labels, prefix, namespace: None });
        }
        identities
    }
}

impl Identities {
    /// The identity for these labels, allocated on first use. Returns `(id, newly allocated)`.
    pub fn acquire(&mut self, labels: LabelSet, namespace: Option<String>, prefix: Option<Prefix>) -> (u32, bool) {
        if let Some(&id) = self.by_labels.get(&labels) {
            *self.users.entry(id).or_default() += 1;
            return (id, false);
        }
        let id = if prefix.is_some() {
            let id = self.next_cidr;
            self.next_cidr += 1;
            id
        } else {
            let id = self.next_local;
            self.next_local += 1;
            id
        };
        if let Some(ns) = &namespace {
            self.by_namespace.entry(ns.clone()).or_default().insert(id);
        }
        self.by_labels.insert(labels.clone(), id);
        self.by_id.insert(id, Identity { id, labels, prefix, namespace });
        self.users.insert(id, 1);
        (id, true)
    }

    /// The identity of a CIDR prefix: `cidr:<prefix>` plus `reserved:world` and
    /// `reserved:world-ipv4` or `reserved:world-ipv6`; a /0 is world or world-ipv6.
    pub fn acquire_cidr(&mut self, prefix: Prefix) -> (u32, bool) {
        if prefix.len == 0 {
            return (world_of(&prefix), false);
        }
        self.acquire(cidr_labels(&prefix), None, Some(prefix))
    }

    /// Drops one user; returns true when the identity is gone. Reserved identities stay.
    pub fn release(&mut self, id: u32) -> bool {
        let Some(count) = self.users.get_mut(&id) else { return false };
        *count -= 1;
        if *count > 0 {
            return false;
        }
        self.users.remove(&id);
        if let Some(identity) = self.by_id.remove(&id) {
            self.by_labels.remove(&identity.labels);
            if let Some(ns) = &identity.namespace
                && let Some(set) = self.by_namespace.get_mut(ns)
            {
                set.remove(&id);
            }
        }
        true
    }

    /// Gives the host identity `labels` ([`host_labels`]); returns whether they changed.
    pub fn set_host_labels(&mut self, labels: LabelSet) -> bool {
        let host = self.by_id.get_mut(&dp::IDENTITY_HOST).expect("the host identity is reserved");
        if host.labels == labels {
            return false;
        }
        self.by_labels.remove(&host.labels);
        self.by_labels.insert(labels.clone(), dp::IDENTITY_HOST);
        host.labels = labels;
        true
    }

    pub fn get(&self, id: u32) -> Option<&Identity> {
        self.by_id.get(&id)
    }

    pub fn all(&self) -> impl Iterator<Item = &Identity> {
        self.by_id.values()
    }

    /// Identities of pods in `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> impl Iterator<Item = &Identity> {
        self.by_namespace.get(namespace).into_iter().flatten().filter_map(|id| self.by_id.get(id))
    }

    /// The identity of a CIDR prefix, if allocated.
    pub fn cidr_identity(&self, prefix: Prefix) -> Option<u32> {
        if prefix.len == 0 {
            return Some(world_of(&prefix));
        }
        self.by_labels.get(&cidr_labels(&prefix)).copied()
    }

    pub fn cidr_identities(&self) -> impl Iterator<Item = &Identity> {
        self.by_id.values().filter(|i| i.prefix.is_some())
    }
}

/// The world identity of an address's family: world (IPv4) or world-ipv6.
pub fn world_of_addr(addr: IpAddr) -> u32 {
    if addr.is_ipv4() { dp::IDENTITY_WORLD } else { dp::IDENTITY_WORLD_IPV6 }
}

fn world_of(prefix: &Prefix) -> u32 {
    world_of_addr(prefix.addr)
}

/// `reserved:world` and the family's `reserved:world-ipv4` or `reserved:world-ipv6`. Cilium
/// (1.16, dual-stack) labels outside identities with the family label alone and has the `world`
/// entity select all three; keeping `reserved:world` on each as well lets a selector written
/// against `reserved:world` go on selecting every outside identity, IPv4 ones as before.
fn world_labels(prefix: &Prefix) -> LabelSet {
    let mut labels = LabelSet::default();
    labels.insert(Source::Reserved, "world", "");
    labels.insert(Source::Reserved, if prefix.is_ipv4() { WORLD_IPV4 } else { WORLD_IPV6 }, "");
    labels
}

/// A CIDR identity's labels: `cidr:<prefix>` (RFC 5952 form for IPv6) and [`world_labels`].
fn cidr_labels(prefix: &Prefix) -> LabelSet {
    let mut labels = world_labels(prefix);
    labels.insert(Source::Cidr, prefix.to_string(), "");
    labels
}
