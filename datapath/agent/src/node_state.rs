//! What the agent knows of the node's policy, shared by the agent, its reports and its flow
//! observations: the rollouts' targets, the revisions they name, the enforced and candidate sets
//! compiled from them, and a read-only view of it all ([`NodeView`]).
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use palisade_datapath::EndpointId;
use palisade_policy::CompiledPolicy;
use palisade_policy::compile::Group;
use palisade_policy::identity::Identity;
use palisade_policy::model::PolicySet;
use tracing::warn;

/// Namespace and name.
pub(crate) type ObjectKey = (String, String);

/// The host endpoint (the node itself, under a host policy) among the endpoints, keyed like a
/// pod by an empty namespace, which no pod has, and the node's name.
pub(crate) fn host_key(node: &str) -> ObjectKey {
    (String::new(), node.to_owned())
}

/// Whether an endpoint's key is the host endpoint's ([`host_key`]).
pub(crate) fn is_host(key: &ObjectKey) -> bool {
    key.0.is_empty()
}

/// The compiled group of the endpoint `key`: a pod's, or the host endpoint's.
pub(crate) fn group_of<'e>(engine: &'e CompiledPolicy, key: &ObjectKey) -> Option<&'e Group> {
    if is_host(key) {
        engine.host_endpoint().map(|host| host.group)
    } else {
        engine.group_of(&key.0, &key.1).map(|(_, g)| g)
    }
}

/// The identity of the endpoint `key` in `engine`.
pub(crate) fn identity_of<'e>(engine: &'e CompiledPolicy, key: &ObjectKey) -> Option<&'e Identity> {
    if is_host(key) {
        engine.host_endpoint().map(|host| host.identity)
    } else {
        engine.endpoint(&key.0, &key.1).map(|e| e.identity)
    }
}

pub(crate) struct Revision {
    pub(crate) policies: Result<PolicySet, String>,
    /// How people name it: `main@4b15b4e`.
    pub(crate) display: String,
}

/// What a rollout's status asks nodes to enforce and to audit.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Targets {
    pub(crate) enforced: Option<String>,
    pub(crate) candidate: Option<String>,
    /// `status.auditGeneration`: when it moves, the rollout's audit starts again.
    pub(crate) audit_generation: u64,
}

impl Targets {
    /// Whether `other` names other revisions (the node's policy sets follow them).
    pub(crate) fn revisions_differ(&self, other: &Targets) -> bool {
        (&self.enforced, &self.candidate) != (&other.enforced, &other.candidate)
    }
}

/// The node's enforced and candidate policy sets, compiled for its endpoints.
pub(crate) struct Compiled {
    pub(crate) generation: u64,
    pub(crate) enforced: CompiledPolicy,
    /// `None` when no rollout audits a candidate.
    pub(crate) candidate: Option<CompiledPolicy>,
    pub(crate) enforced_revisions: Arc<Vec<String>>,
    pub(crate) candidate_revisions: Arc<Vec<String>>,
    /// The rollout each policy (by index) of the enforced and of the candidate set comes from.
    pub(crate) origins: [Vec<ObjectKey>; 2],
}

impl Compiled {
    /// The rollout whose policy (in `set`, enforced or candidate) a rule cookie names.
    pub(crate) fn origin(&self, set: usize, cookie: u32) -> Option<&ObjectKey> {
        self.origins[set].get(palisade_policy::model::policy_index(cookie)?)
    }

    pub(crate) fn candidate_engine(&self) -> &CompiledPolicy {
        self.candidate.as_ref().unwrap_or(&self.enforced)
    }
}

pub(crate) const ENFORCED_SET: usize = 0;
pub(crate) const CANDIDATE_SET: usize = 1;

/// One policy set from the revisions of several rollouts, in rollout order. A policy another
/// rollout already brought is left out (the first wins), so cookies stay unambiguous.
pub(crate) fn merge(parts: &[(ObjectKey, &PolicySet, String)]) -> (PolicySet, Vec<ObjectKey>, Vec<String>) {
    let mut set = PolicySet::default();
    let mut origins = Vec::new();
    let mut seen = BTreeSet::new();
    for (rollout, policies, _) in parts {
        for policy in &policies.policies {
            if seen.insert(policy.id.clone()) {
                set.policies.push(policy.clone());
                origins.push(rollout.clone());
            } else {
                warn!(policy = %policy.id, rollout = %rollout.1, "policy already brought by another rollout; ignored");
            }
        }
    }
    set.renumber();
    (set, origins, parts.iter().map(|(_, _, id)| id.clone()).collect())
}

/// What reports and flow observations read of the agent, borrowed for one call.
pub(crate) struct NodeView<'a> {
    /// This node's name in reports and flows (`local` in local mode).
    pub(crate) node: String,
    /// Local mode: this node is the whole cluster.
    pub(crate) whole_cluster: bool,
    pub(crate) compiled: Option<&'a Compiled>,
    pub(crate) rollouts: &'a BTreeMap<ObjectKey, Targets>,
    pub(crate) revisions: &'a BTreeMap<ObjectKey, Revision>,
    /// The local endpoints, by pod (the node itself by [`host_key`]).
    pub(crate) endpoints: Vec<(&'a ObjectKey, EndpointId)>,
    /// The agent's health port, which a host policy must keep open to the other nodes.
    pub(crate) health_port: Option<u16>,
}

impl NodeView<'_> {
    /// The pod of a local endpoint.
    pub(crate) fn pod(&self, endpoint: EndpointId) -> Option<&ObjectKey> {
        self.endpoints.iter().find(|(_, id)| *id == endpoint).map(|(pod, _)| *pod)
    }

    /// A revision's display name (`main@4b15b4e`), when the agent has it.
    pub(crate) fn revision_display(&self, namespace: &str, id: &str) -> Option<String> {
        let revision = self.revisions.get(&(namespace.to_owned(), id.to_owned()))?;
        Some(revision.display.clone()).filter(|d| !d.is_empty())
    }
}
