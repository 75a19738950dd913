//! The agent's core: from what it is told (pods, namespaces, revisions, rollouts) to what every
//! local endpoint's two policy slots hold.
//!
//! The policies of every rollout's enforced revision form the node's enforced set; the candidate
//! set takes each auditing rollout's candidate instead. Both are compiled for the local endpoints
//! with one identity numbering, so one ipcache serves both. A new enforced set reaches an
//! endpoint through its idle slot and a flip (all endpoints of the node in one step), never key
//! by key; peers and identities coming and going within a set change the slots in place.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use palisade_common::{EndpointCounters, FlowEvent, PolicyEntry};
use palisade_datapath::{EndpointAddrs, EndpointId, HOST_ENDPOINT_IFINDEX, Slot};
use palisade_policy::cluster::{Cluster, Pod};
use palisade_policy::model::{PolicySet, Prefix};
use palisade_policy::{
    AllowLocalhost, CompileOptions, CompiledPolicy, EnforcementMode, IdentityBasis, ParseOptions, SourceFile,
    parse_policies,
};
use palisade_rollout::crd::{PolicyAuditReport, PolicyRevision, PolicyRollout};
use tracing::{debug, error, info, warn};

use crate::dataplane::{Dataplane, Interface, InterfaceResolver};
use crate::input::Change;
use crate::node_state::{
    CANDIDATE_SET, Compiled, ENFORCED_SET, NodeView, ObjectKey, Revision, Targets, group_of, host_key, is_host, merge,
};
use crate::observe::{self, ObservedFlow};
use crate::proxy::{L7Diffs, ProxyPolicy};
use crate::report::{LoadedSets, Reporter};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("endpoint {pod}: {source}")]
    Endpoint {
        pod: String,
        #[source]
        source: Box<palisade_datapath::Error>,
    },
    #[error(transparent)]
    Datapath(Box<palisade_datapath::Error>),
    #[error("entering the node's network namespace: {0}")]
    Netns(std::io::Error),
}

#[derive(Clone, Debug, Default)]
pub struct AgentConfig {
    /// This node: pods scheduled on it are its endpoints. `None` makes every pod local (local
    /// mode, where the whole cluster lives on this machine).
    pub node: Option<String>,
    /// The node whose addresses are `host` when `node` is unset (local mode: every pod runs on
    /// its one node); with `node` set, that node's are.
    pub host_node: Option<String>,
    pub mode: EnforcementMode,
    /// Whether the local host reaches local pods whatever their policy (Cilium's default).
    pub allow_localhost: AllowLocalhost,
    /// The port the agent's health checks reach it on (`/healthz`, `/readyz`): a candidate host
    /// policy that would deny it to the other nodes is blocked.
    pub health_port: Option<u16>,
}

/// What a slot holds and what it was computed from.
#[derive(Clone, Default)]
struct SlotContent {
    /// Sorted by key.
    entries: Arc<Vec<PolicyEntry>>,
    /// Revisions of the set the entries belong to; empty when unknown (adopted after a restart).
    revisions: Arc<Vec<String>>,
    /// (compiled generation, set, group revision): equal sources mean equal entries.
    source: Option<(u64, usize, u64)>,
}

struct Endpoint {
    id: EndpointId,
    /// The pod's addresses: the first of each family in `status.podIPs`.
    addrs: EndpointAddrs,
    interface: Option<Interface>,
    attached: bool,
    enforced: Slot,
    candidate: Option<Slot>,
    slots: [SlotContent; 2],
}

impl Endpoint {
    /// A new endpoint, not attached yet, enforcing slot A (empty until written).
    fn new(id: EndpointId, addrs: EndpointAddrs, interface: Option<Interface>) -> Endpoint {
        Endpoint {
            id,
            addrs,
            interface,
            attached: false,
            enforced: Slot::A,
            candidate: None,
            slots: Default::default(),
        }
    }

    fn slot(&self, slot: Slot) -> &SlotContent {
        &self.slots[slot_index(slot)]
    }

    /// Whether the slot in force holds the set made of `revisions`.
    fn enforces(&self, revisions: &[String]) -> bool {
        *self.slot(self.enforced).revisions == revisions
    }

    /// Whether the candidate slot holds the set made of `revisions`.
    fn audits(&self, revisions: &[String]) -> bool {
        self.candidate.is_some_and(|c| *self.slot(c).revisions == revisions)
    }
}

/// A local endpoint as the agent programs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub namespace: String,
    pub name: String,
    pub id: EndpointId,
    pub addrs: EndpointAddrs,
    pub interface: Option<String>,
    pub attached: bool,
    pub enforced: Slot,
    pub candidate: Option<Slot>,
}

pub struct Agent<D, R> {
    config: AgentConfig,
    cluster: Cluster,
    /// Where each pod is in `cluster.pods`.
    pod_index: HashMap<ObjectKey, usize>,
    revisions: BTreeMap<ObjectKey, Revision>,
    rollouts: BTreeMap<ObjectKey, Targets>,
    compiled: Option<Compiled>,
    sets_changed: bool,
    synced: bool,
    /// Endpoints pinned by an earlier run, by interface index, until adopted.
    adoptable: Option<HashMap<u32, EndpointId>>,
    endpoints: BTreeMap<ObjectKey, Endpoint>,
    /// What the datapath's ipcache holds, sorted by prefix.
    ipcache: Vec<(Prefix, u32)>,
    generations: u64,
    /// Bumped whenever either compiled set changes; the proxy's copy is from `proxy_policy_seen`.
    policy_changes: u64,
    proxy_policy_seen: u64,
    /// What the L7 proxy found the candidate would judge otherwise.
    l7_diffs: L7Diffs,
    /// What the audits saw so far, for the PolicyAuditReports.
    reporter: Reporter,
    /// The candidate set changed: its audit starts afresh once it is programmed.
    audit_restart_pending: bool,
    /// A converge changed what a candidate slot holds, or which slot is the candidate.
    candidate_touched: bool,
    dataplane: D,
    resolver: R,
}

impl<D: Dataplane, R: InterfaceResolver> Agent<D, R> {
    pub fn new(config: AgentConfig, dataplane: D, resolver: R) -> Self {
        Agent {
            config,
            cluster: Cluster::default(),
            pod_index: HashMap::new(),
            revisions: BTreeMap::new(),
            rollouts: BTreeMap::new(),
            compiled: None,
            sets_changed: true,
            synced: false,
            adoptable: None,
            endpoints: BTreeMap::new(),
            ipcache: Vec::new(),
            generations: 0,
            policy_changes: 0,
            proxy_policy_seen: 0,
            l7_diffs: L7Diffs::default(),
            reporter: Reporter::default(),
            audit_restart_pending: false,
            candidate_touched: false,
            dataplane,
            resolver,
        }
    }

    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dataplane
    }

    /// The compiled enforced set, once there is one.
    pub fn enforced_engine(&self) -> Option<&CompiledPolicy> {
        self.compiled.as_ref().map(|c| &c.enforced)
    }

    /// The compiled candidate set (the enforced one when nothing is audited).
    pub fn candidate_engine(&self) -> Option<&CompiledPolicy> {
        self.compiled.as_ref().map(Compiled::candidate_engine)
    }

    /// One PolicyAuditReport per rollout that concerns this node, named `<rollout>-<node>`, in
    /// the rollout's namespace.
    pub fn reports(&mut self, now: Timestamp) -> Result<Vec<PolicyAuditReport>, Error> {
        let Some(compiled) = &self.compiled else { return Ok(Vec::new()) };
        let counters = self.attached_counters()?;
        let flows = self.dataplane.flows()?;
        let loaded = LoadedSets {
            enforced: self.endpoints.values().all(|e| e.enforces(&compiled.enforced_revisions)),
            candidate: compiled.candidate.is_some()
                && self.endpoints.values().all(|e| e.audits(&compiled.candidate_revisions)),
        };
        let view = node_view(&self.config, &self.compiled, &self.rollouts, &self.revisions, &self.endpoints);
        let l7 = self.l7_diffs.snapshot();
        Ok(self.reporter.reports(&view, loaded, &counters, (&flows, &l7), now))
    }

    /// The node's name, as flows and reports name it ("local" in local mode).
    pub fn node_name(&self) -> String {
        node_name(&self.config)
    }

    /// Where the L7 proxy counts the requests the candidate would judge otherwise.
    pub fn l7_diffs(&self) -> &L7Diffs {
        &self.l7_diffs
    }

    /// A datapath flow event as an observer sees it: both ends by pod (or identity), the rule
    /// that decided by name, the rollout and its revisions.
    pub fn observe(&self, event: &FlowEvent, now: Timestamp) -> ObservedFlow {
        let view = node_view(&self.config, &self.compiled, &self.rollouts, &self.revisions, &self.endpoints);
        observe::describe(&view, event, now)
    }

    pub fn endpoints(&self) -> Vec<EndpointInfo> {
        self.endpoints
            .iter()
            .map(|((namespace, name), e)| EndpointInfo {
                namespace: namespace.clone(),
                name: name.clone(),
                id: e.id,
                addrs: e.addrs,
                interface: e.interface.as_ref().map(|i| i.name.clone()),
                attached: e.attached,
                enforced: e.enforced,
                candidate: e.candidate,
            })
            .collect()
    }

    /// Takes one change in; [`Self::converge`] programs the datapath.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Pod(pod) => self.upsert_pod(pod),
            Change::PodDeleted { namespace, name } => {
                if let Some(index) = self.pod_index.remove(&(namespace.clone(), name.clone())) {
                    self.cluster.pods.swap_remove(index);
                    if let Some(moved) = self.cluster.pods.get(index) {
                        self.pod_index.insert((moved.namespace.clone(), moved.name.clone()), index);
                    }
                }
                self.each_engine(|e| {
                    e.remove_pod(&namespace, &name);
                });
            }
            Change::Namespace(namespace) => {
                self.cluster.namespaces.insert(namespace.name.clone(), namespace.clone());
                self.each_engine(|e| e.upsert_namespace(namespace.clone()));
            }
            Change::NamespaceDeleted(name) => {
                // Its pods are deleted one by one; engines keep the last labels until then.
                self.cluster.namespaces.remove(&name);
            }
            Change::Nodes(nodes) => {
                self.cluster.nodes = nodes.clone();
                self.each_engine(|e| e.set_nodes(nodes.clone()));
            }
            Change::EndpointSlices(slices) => {
                self.cluster.endpoint_slices = slices.clone();
                self.each_engine(|e| e.set_endpoint_slices(slices.clone()));
            }
            Change::Services(services) => {
                self.cluster.services = services.clone();
                self.each_engine(|e| e.set_services(services.clone()));
            }
            Change::Revision(revision) => self.upsert_revision(*revision),
            Change::RevisionDeleted { namespace, name } => {
                self.revisions.remove(&(namespace, name));
            }
            Change::Rollout(rollout) => self.upsert_rollout(*rollout),
            Change::RolloutDeleted { namespace, name } => {
                let key = (namespace, name);
                self.reporter.forget(&key);
                self.sets_changed |= self.rollouts.remove(&key).is_some();
            }
            Change::Synced => self.synced = true,
        }
    }

    /// The names and addresses `toFQDNs` selects from (what the DNS proxy learned), replacing
    /// the previous ones; [`Self::converge`] writes them to the datapath.
    pub fn set_dns_answers(&mut self, answers: BTreeMap<String, BTreeSet<Ipv4Addr>>) {
        // The DNS proxy learns IPv4 answers; the engine takes addresses of both families.
        let answers: BTreeMap<String, BTreeSet<IpAddr>> =
            answers.into_iter().map(|(name, addrs)| (name, addrs.into_iter().map(IpAddr::V4).collect())).collect();
        if self.cluster.dns_answers != answers {
            self.cluster.dns_answers = answers.clone();
            self.each_engine(|e| e.set_dns_answers(answers.clone()));
        }
    }

    fn each_engine(&mut self, mut change: impl FnMut(&mut CompiledPolicy)) {
        if let Some(compiled) = &mut self.compiled {
            self.policy_changes += 1;
            change(&mut compiled.enforced);
            if let Some(candidate) = &mut compiled.candidate {
                change(candidate);
            }
        }
    }

    fn upsert_pod(&mut self, pod: Pod) {
        let key = (pod.namespace.clone(), pod.name.clone());
        match self.pod_index.get(&key).map(|&i| &mut self.cluster.pods[i]) {
            Some(existing) if *existing == pod => return,
            Some(existing) => *existing = pod.clone(),
            None => {
                self.pod_index.insert(key, self.cluster.pods.len());
                self.cluster.pods.push(pod.clone());
            }
        }
        self.each_engine(|e| e.upsert_pod(pod.clone()));
    }

    fn upsert_revision(&mut self, revision: PolicyRevision) {
        let namespace = revision.metadata.namespace.clone().unwrap_or_default();
        let name = revision.metadata.name.clone().unwrap_or_default();
        if let Err(e) = revision.spec.verify_digest() {
            // Whatever was loaded under this name stays: a revision is immutable in effect.
            error!(revision = %format!("{namespace}/{name}"), "PolicyRevision refused, its policies are not what its digest names: {e}");
            return;
        }
        let options = ParseOptions { default_namespace: namespace.clone(), ..ParseOptions::default() };
        let files: Vec<(String, &str)> = revision
            .spec
            .policies
            .iter()
            .map(|p| (format!("PolicyRevision {namespace}/{name}: {} {}", p.kind, p.name), p.content.as_str()))
            .collect();
        let sources: Vec<SourceFile> = files.iter().map(|(n, text)| SourceFile { name: n, text }).collect();
        let parsed = parse_policies(&sources, &options);
        let policies = if parsed.has_errors() {
            let errors: Vec<String> = parsed.errors().map(ToString::to_string).collect();
            warn!(revision = %name, "revision does not parse here; it will not be loaded: {}", errors.join("; "));
            Err(errors.join("; "))
        } else {
            Ok(parsed.set)
        };
        let key = (namespace, name);
        let referenced = self
            .rollouts
            .iter()
            .any(|((ns, _), t)| *ns == key.0 && [&t.enforced, &t.candidate].contains(&&Some(key.1.clone())));
        self.sets_changed |= referenced;
        self.revisions.insert(key, Revision { policies, display: revision.spec.display.clone() });
    }

    fn upsert_rollout(&mut self, rollout: PolicyRollout) {
        let key =
            (rollout.metadata.namespace.clone().unwrap_or_default(), rollout.metadata.name.clone().unwrap_or_default());
        let status = rollout.status.unwrap_or_default();
        let enforced = status.enforced_revision.map(|r| r.id);
        // While the nodes flip, the candidate is the enforced revision: nothing is left to audit.
        let candidate = status.candidate_revision.map(|r| r.id).filter(|c| Some(c) != enforced.as_ref());
        let targets = Targets { enforced, candidate, audit_generation: status.audit_generation };
        if self.rollouts.get(&key) != Some(&targets) {
            debug!(rollout = %key.1, ?targets, "rollout targets changed");
            self.sets_changed |= self.rollouts.get(&key).is_none_or(|old| old.revisions_differ(&targets));
            self.rollouts.insert(key, targets);
        }
    }

    /// Brings the datapath in line with what the agent knows: policy sets, endpoints, slots,
    /// flips, ipcache. Does nothing before [`Change::Synced`].
    pub fn converge(&mut self) -> Result<(), Error> {
        if !self.synced {
            return Ok(());
        }
        if self.sets_changed {
            self.rebuild()?;
        }
        if self.compiled.is_none() {
            return Ok(());
        }
        self.candidate_touched = false;
        self.sync_endpoints()?;
        self.program()?;
        self.sync_node_interfaces()?;
        self.sync_ipcache()?;
        if self.audit_restart_pending {
            // Only now is the new candidate whole in every slot: differences recorded before,
            // against the previous candidate or one half rewritten in place, are not its own, nor
            // is the traffic judged before it. Except on a restart that adopted the candidate
            // as the kernel held it: what the kernel recorded is this candidate's evidence (a
            // deny seen before the restart must still block it).
            let adopted = self.generations == 1 && !self.candidate_touched;
            if !adopted {
                self.dataplane.clear_flows()?;
            }
            self.reporter.restart_audits(&self.attached_counters()?);
            self.l7_diffs.clear();
            self.audit_restart_pending = false;
        }
        Ok(())
    }

    /// Rebuilds the policy sets from the rollouts' targets. Keeps the current ones while an
    /// enforced revision is not known yet: enforcing less than asked is never an option.
    fn rebuild(&mut self) -> Result<(), Error> {
        let mut enforced: Vec<(ObjectKey, &PolicySet, String)> = Vec::new();
        let mut candidate: Vec<(ObjectKey, &PolicySet, String)> = Vec::new();
        for (key, targets) in &self.rollouts {
            let revision = |id: &String| match self.revisions.get(&(key.0.clone(), id.clone())) {
                Some(Revision { policies: Ok(set), .. }) => Some(set),
                _ => None,
            };
            let mut enforced_here = None;
            if let Some(id) = &targets.enforced {
                let Some(set) = revision(id) else {
                    info!(rollout = %key.1, revision = %id, "waiting for the enforced revision before changing anything");
                    return Ok(());
                };
                enforced.push((key.clone(), set, id.clone()));
                enforced_here = Some((set, id.clone()));
            }
            let audited = targets.candidate.as_ref().and_then(|id| Some((revision(id)?, id.clone())));
            if let Some((set, id)) = audited.or(enforced_here) {
                candidate.push((key.clone(), set, id));
            }
        }
        let (enforced_set, enforced_origins, enforced_revisions) = merge(&enforced);
        let (candidate_set, candidate_origins, candidate_revisions) = merge(&candidate);
        self.sets_changed = false;
        if let Some(c) = &self.compiled
            && *c.enforced_revisions == enforced_revisions
            && *c.candidate_revisions == candidate_revisions
        {
            return Ok(());
        }
        let candidate_changed = self.compiled.as_ref().is_none_or(|c| *c.candidate_revisions != candidate_revisions);
        let options = CompileOptions {
            mode: self.config.mode,
            node: self.config.node.clone(),
            host_node: self.config.host_node.clone(),
            allow_localhost: self.config.allow_localhost,
            identity_basis: IdentityBasis::of([&enforced_set, &candidate_set]),
        };
        let auditing = candidate_revisions != enforced_revisions;
        info!(enforced = ?enforced_revisions, candidate = ?candidate_revisions, "compiling the node's policy sets");
        let candidate_engine =
            auditing.then(|| CompiledPolicy::with_options(candidate_set, self.cluster.clone(), options.clone()));
        self.generations += 1;
        self.policy_changes += 1;
        self.compiled = Some(Compiled {
            generation: self.generations,
            enforced: CompiledPolicy::with_options(enforced_set, self.cluster.clone(), options),
            candidate: candidate_engine,
            enforced_revisions: Arc::new(enforced_revisions),
            candidate_revisions: Arc::new(candidate_revisions),
            origins: [enforced_origins, candidate_origins],
        });
        self.audit_restart_pending |= candidate_changed;
        Ok(())
    }

    /// The compiled sets for the L7 proxy, when they changed since the last call: `Some(None)`
    /// when no policy has L7 rules (nothing is steered to the proxy then).
    pub fn proxy_policy_update(&mut self) -> Option<Option<ProxyPolicy>> {
        let compiled = self.compiled.as_ref().filter(|_| self.policy_changes != self.proxy_policy_seen)?;
        self.proxy_policy_seen = self.policy_changes;
        let l7 = compiled.enforced.has_l7_rules() || compiled.candidate.as_ref().is_some_and(|c| c.has_l7_rules());
        Some(l7.then(|| ProxyPolicy {
            enforced: Arc::new(compiled.enforced.clone()),
            candidate: compiled.candidate.clone().map(Arc::new),
        }))
    }

    /// The counters of every attached endpoint (the others have seen no traffic).
    fn attached_counters(&self) -> Result<Vec<(EndpointId, EndpointCounters)>, Error> {
        let attached = self.endpoints.values().filter(|e| e.attached);
        attached.map(|e| Ok((e.id, self.dataplane.counters(e.id)?))).collect()
    }

    fn is_local(&self, pod: &Pod) -> bool {
        !pod.host_network
            && !pod.ips.is_empty()
            && self.config.node.as_ref().is_none_or(|node| pod.node_name.as_ref() == Some(node))
    }

    /// Creates (or adopts from an earlier run) the endpoints of local pods and removes the
    /// endpoints of pods that are gone.
    fn sync_endpoints(&mut self) -> Result<(), Error> {
        if self.adoptable.is_none() {
            let mut pinned = HashMap::new();
            for id in self.dataplane.endpoints()? {
                pinned.insert(self.dataplane.state(id)?.ifindex, id);
            }
            self.adoptable = Some(pinned);
        }
        // By the pod's addresses, and the one its interface is found by (the primary).
        let local: BTreeMap<ObjectKey, (EndpointAddrs, IpAddr)> = self
            .cluster
            .pods
            .iter()
            .filter(|p| self.is_local(p))
            .filter_map(|p| Some(((p.namespace.clone(), p.name.clone()), (p.ips.iter().copied().collect(), p.ip()?))))
            .collect();
        // The node itself is an endpoint while a host policy selects it in either set.
        let host = self.wants_host().then(|| host_key(&node_name(&self.config)));
        let gone: Vec<ObjectKey> =
            self.endpoints
                .iter()
                .filter(|(k, e)| {
                    if is_host(k) { host.as_ref() != Some(*k) } else { local.get(*k).map(|l| l.0) != Some(e.addrs) }
                })
                .map(|(k, _)| k.clone())
                .collect();
        for key in gone {
            let endpoint = self.endpoints.remove(&key).expect("listed");
            info!(pod = %format!("{}/{}", key.0, key.1), endpoint = endpoint.id, "endpoint gone; detaching");
            self.dataplane.detach(endpoint.id).map_err(|source| endpoint_error(&key, source))?;
        }
        for (key, (addrs, ip)) in local {
            if let Some(endpoint) = self.endpoints.get_mut(&key) {
                if endpoint.interface.is_none() {
                    endpoint.interface = self.resolver.interface(ip);
                }
                continue;
            }
            let interface = self.resolver.interface(ip);
            let adopted = interface.as_ref().and_then(|i| self.adoptable.as_mut().and_then(|a| a.remove(&i.index)));
            let endpoint = match adopted {
                Some(id) => self.adopt(&key, id, addrs, interface)?,
                None => {
                    let id = self.free_id()?;
                    debug!(pod = %format!("{}/{}", key.0, key.1), endpoint = id, "new endpoint");
                    Endpoint::new(id, addrs, interface)
                }
            };
            self.endpoints.insert(key, endpoint);
        }
        if let Some(key) = host.filter(|key| !self.endpoints.contains_key(key)) {
            let adopted = self.adoptable.as_mut().and_then(|a| a.remove(&HOST_ENDPOINT_IFINDEX));
            let endpoint = match adopted {
                Some(id) => self.adopt(&key, id, EndpointAddrs::default(), None)?,
                None => {
                    let id = self.free_id()?;
                    info!(endpoint = id, "a host policy selects this node: the node becomes an endpoint");
                    Endpoint::new(id, EndpointAddrs::default(), None)
                }
            };
            self.endpoints.insert(key, endpoint);
        }
        // Whatever an earlier run pinned for pods that no longer exist goes.
        let stale: Vec<EndpointId> =
            self.adoptable.as_mut().map(|a| a.drain().map(|(_, id)| id).collect()).unwrap_or_default();
        for id in stale {
            info!(endpoint = id, "pinned endpoint without a pod; detaching");
            self.dataplane.detach(id)?;
        }
        Ok(())
    }

    /// Whether a host policy selects this node in the enforced or the candidate set.
    fn wants_host(&self) -> bool {
        let Some(compiled) = &self.compiled else { return false };
        let engines = [Some(&compiled.enforced), compiled.candidate.as_ref()];
        engines.into_iter().flatten().any(|engine| engine.host_endpoint().is_some_and(|host| host.selected))
    }

    /// Takes over an endpoint pinned by an earlier run as it is: its slots, as the kernel holds
    /// them, are what the next diff starts from, so nothing flaps.
    fn adopt(
        &mut self,
        key: &ObjectKey,
        id: EndpointId,
        addrs: EndpointAddrs,
        interface: Option<Interface>,
    ) -> Result<Endpoint, Error> {
        let error = |source| endpoint_error(key, source);
        let state = self.dataplane.state(id).map_err(error)?;
        let mut slots: [SlotContent; 2] = Default::default();
        for slot in [Slot::A, Slot::B] {
            let entries = self.dataplane.slot_entries(id, slot).map_err(error)?;
            slots[slot_index(slot)].entries = Arc::new(entries);
        }
        info!(pod = %format!("{}/{}", key.0, key.1), endpoint = id, "adopted a pinned endpoint");
        Ok(Endpoint {
            id,
            addrs,
            interface,
            attached: true,
            enforced: state.enforced,
            candidate: state.candidate,
            slots,
        })
    }

    fn free_id(&self) -> Result<EndpointId, Error> {
        let used: BTreeSet<EndpointId> = self
            .endpoints
            .values()
            .map(|e| e.id)
            .chain(self.adoptable.iter().flat_map(|a| a.values().copied()))
            .collect();
        // `used` is sorted: the first gap, or one past the end.
        Ok((0..).zip(used.iter()).find(|(i, id)| i != *id).map_or(used.len() as EndpointId, |(i, _)| i))
    }

    /// Writes the slots of every endpoint whose policy changed: in place within a set, through
    /// the idle slot and one node-wide flip for a new enforced set, then the candidates.
    fn program(&mut self) -> Result<(), Error> {
        let compiled = self.compiled.as_ref().expect("compiled");
        let mut computed: HashMap<(u64, usize, u64), Arc<Vec<PolicyEntry>>> = HashMap::new();
        // `held`: what the endpoint's slots hold. Equal sources mean equal entries, so a slot
        // computed from the same source is reused rather than every group's entries collected
        // again on every converge.
        let mut desired = |key: &ObjectKey, set: usize, held: &[SlotContent; 2]| -> Option<SlotContent> {
            let (engine, revisions) = match set {
                ENFORCED_SET => (&compiled.enforced, &compiled.enforced_revisions),
                _ => (compiled.candidate.as_ref()?, &compiled.candidate_revisions),
            };
            let group = group_of(engine, key)?;
            let source = (compiled.generation, set, group.revision);
            if let Some(same) = held.iter().find(|slot| slot.source == Some(source)) {
                return Some(same.clone());
            }
            let entries = computed
                .entry(source)
                .or_insert_with(|| {
                    let mut entries = group.ingress.entries();
                    entries.extend(group.egress.entries());
                    entries.sort_by_key(|e| e.key);
                    Arc::new(entries)
                })
                .clone();
            Some(SlotContent { entries, revisions: revisions.clone(), source: Some(source) })
        };
        let mut writes: Vec<(ObjectKey, Slot, SlotContent)> = Vec::new();
        let mut flips: Vec<ObjectKey> = Vec::new();
        let mut candidates: Vec<(ObjectKey, Option<SlotContent>)> = Vec::new();
        for (key, endpoint) in &self.endpoints {
            let Some(want) = desired(key, ENFORCED_SET, &endpoint.slots) else { continue };
            let (enforced, idle) = (endpoint.enforced, endpoint.enforced.other());
            let current = endpoint.slot(enforced);
            if current.source == want.source {
            } else if current.entries == want.entries {
                writes.push((key.clone(), enforced, want)); // only the record changes
            } else if endpoint.attached && endpoint.slot(idle).entries == want.entries {
                writes.push((key.clone(), idle, want));
                flips.push(key.clone());
            } else if !endpoint.attached || current.revisions == want.revisions {
                writes.push((key.clone(), enforced, want));
            } else {
                writes.push((key.clone(), idle, want));
                flips.push(key.clone());
            }
            candidates.push((key.clone(), desired(key, CANDIDATE_SET, &endpoint.slots)));
        }
        for (key, slot, content) in writes {
            self.write_slot(&key, slot, content)?;
        }
        self.flip(&flips)?;
        for (key, want) in candidates {
            let endpoint = &self.endpoints[&key];
            let idle = endpoint.enforced.other();
            let Some(want) = want else {
                if endpoint.candidate.is_some() {
                    self.set_candidate(&key, None)?;
                }
                continue;
            };
            if endpoint.slot(idle).source != want.source {
                self.write_slot(&key, idle, want)?;
            }
            if self.endpoints[&key].candidate != Some(idle) {
                self.set_candidate(&key, Some(idle))?;
            }
        }
        let unattached: Vec<(ObjectKey, EndpointId, String, EndpointAddrs)> = self
            .endpoints
            .iter()
            .filter(|(_, e)| !e.attached && !e.slot(e.enforced).entries.is_empty())
            .filter_map(|(k, e)| Some((k.clone(), e.id, e.interface.as_ref()?.name.clone(), e.addrs)))
            .collect();
        for (key, id, ifname, addrs) in unattached {
            info!(pod = %format!("{}/{}", key.0, key.1), endpoint = id, interface = %ifname, "attaching");
            self.dataplane.attach(id, &ifname, addrs).map_err(|source| endpoint_error(&key, source))?;
            self.endpoints.get_mut(&key).expect("listed").attached = true;
        }
        let host = self
            .endpoints
            .iter_mut()
            .find(|(k, e)| is_host(k) && !e.attached && !e.slot(e.enforced).entries.is_empty());
        if let Some((key, host)) = host {
            info!(endpoint = host.id, "attaching the host endpoint: the node's own traffic is judged");
            self.dataplane.attach_host(host.id).map_err(|source| endpoint_error(key, source))?;
            host.attached = true;
        }
        Ok(())
    }

    /// Makes `slot` hold `content`, changing only the keys that differ.
    fn write_slot(&mut self, key: &ObjectKey, slot: Slot, content: SlotContent) -> Result<(), Error> {
        let endpoint = self.endpoints.get_mut(key).expect("endpoint");
        let current = &endpoint.slots[slot_index(slot)];
        if current.entries != content.entries {
            self.candidate_touched |= endpoint.candidate == Some(slot);
            self.dataplane
                .rewrite_slot(endpoint.id, slot, &current.entries, &content.entries)
                .map_err(|source| endpoint_error(key, source))?;
        }
        endpoint.slots[slot_index(slot)] = content;
        Ok(())
    }

    fn set_candidate(&mut self, key: &ObjectKey, candidate: Option<Slot>) -> Result<(), Error> {
        let endpoint = self.endpoints.get_mut(key).expect("endpoint");
        self.dataplane.set_candidate(endpoint.id, candidate).map_err(|source| endpoint_error(key, source))?;
        self.candidate_touched |= endpoint.candidate != candidate;
        endpoint.candidate = candidate;
        Ok(())
    }

    /// Switches every endpoint in `keys` to its idle slot in one step.
    fn flip(&mut self, keys: &[ObjectKey]) -> Result<(), Error> {
        if keys.is_empty() {
            return Ok(());
        }
        for key in keys {
            let idle = self.endpoints[key].enforced.other();
            if self.endpoints[key].candidate != Some(idle) {
                self.set_candidate(key, Some(idle))?;
            }
        }
        let ids: Vec<EndpointId> = keys.iter().map(|k| self.endpoints[k].id).collect();
        self.dataplane.flip_all(&ids)?;
        for key in keys {
            let endpoint = self.endpoints.get_mut(key).expect("endpoint");
            endpoint.candidate = Some(endpoint.enforced);
            endpoint.enforced = endpoint.enforced.other();
        }
        info!(endpoints = keys.len(), "flipped to the new enforced set");
        Ok(())
    }

    /// Every interface of the node that is no attached endpoint's (uplinks, tunnels, the veths
    /// of pods without policy) gets `deferred_egress`: a connection to a Service whose backend
    /// lies behind one is judged there by its source's egress policy, so no translated packet
    /// leaves unjudged. An interface that vanishes mid-way is left for the next pass.
    fn sync_node_interfaces(&mut self) -> Result<(), Error> {
        let endpoints: BTreeSet<&str> = self
            .endpoints
            .values()
            .filter(|e| e.attached)
            .filter_map(|e| Some(e.interface.as_ref()?.name.as_str()))
            .collect();
        let desired: BTreeSet<String> =
            self.resolver.interfaces().into_iter().filter(|name| !endpoints.contains(name.as_str())).collect();
        let current: BTreeSet<String> = self.dataplane.network_interfaces()?.into_iter().collect();
        for ifname in current.difference(&desired) {
            self.dataplane.detach_network(ifname)?;
        }
        for ifname in desired.difference(&current) {
            match self.dataplane.attach_network(ifname) {
                Ok(()) => debug!(interface = %ifname, "judging Service connections leaving here"),
                Err(e) => warn!(interface = %ifname, error = %e, "cannot attach to a node interface"),
            }
        }
        Ok(())
    }

    fn sync_ipcache(&mut self) -> Result<(), Error> {
        let compiled = self.compiled.as_ref().expect("compiled");
        let desired: Vec<(Prefix, u32)> = compiled.enforced.ipcache();
        // Both sorted by prefix, one entry each: one walk through both. New entries go in before
        // old ones go, so no address falls back to a broader prefix in between.
        let mut removals = Vec::new();
        let (mut old, mut new) = (self.ipcache.iter().peekable(), desired.iter().peekable());
        loop {
            match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some(o), Some(n)) if o.0 == n.0 => {
                    if o.1 != n.1 {
                        self.dataplane.set_ipcache(n.0.addr, n.0.len, n.1)?;
                    }
                    old.next();
                    new.next();
                }
                (Some(o), Some(n)) if o.0 < n.0 => removals.extend(old.next().map(|o| o.0)),
                (Some(_), None) => removals.extend(old.next().map(|o| o.0)),
                (_, Some(n)) => {
                    self.dataplane.set_ipcache(n.0.addr, n.0.len, n.1)?;
                    new.next();
                }
            }
        }
        for prefix in removals {
            self.dataplane.remove_ipcache(prefix.addr, prefix.len)?;
        }
        self.ipcache = desired;
        Ok(())
    }
}

fn node_name(config: &AgentConfig) -> String {
    config.node.clone().unwrap_or_else(|| "local".into())
}

/// What reports and observations read of the agent: the fields, so that the reporter can be
/// borrowed beside them.
fn node_view<'a>(
    config: &AgentConfig,
    compiled: &'a Option<Compiled>,
    rollouts: &'a BTreeMap<ObjectKey, Targets>,
    revisions: &'a BTreeMap<ObjectKey, Revision>,
    endpoints: &'a BTreeMap<ObjectKey, Endpoint>,
) -> NodeView<'a> {
    NodeView {
        node: node_name(config),
        whole_cluster: config.node.is_none(),
        compiled: compiled.as_ref(),
        rollouts,
        revisions,
        endpoints: endpoints.iter().map(|(pod, e)| (pod, e.id)).collect(),
        health_port: config.health_port,
    }
}

fn slot_index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

fn endpoint_error(key: &ObjectKey, source: palisade_datapath::Error) -> Error {
    Error::Endpoint { pod: format!("{}/{}", key.0, key.1), source: Box::new(source) }
}

impl From<palisade_datapath::Error> for Error {
    fn from(source: palisade_datapath::Error) -> Self {
        Error::Datapath(Box::new(source))
    }
}
