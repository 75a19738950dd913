//! What the agent is told about the world. Kubernetes watches and local mode both produce these.
use palisade_policy::cluster::{EndpointSlice, Namespace, Node, Pod, Service};
use palisade_rollout::crd::{PolicyRevision, PolicyRollout};

#[derive(Clone, Debug)]
pub enum Change {
    Pod(Pod),
    PodDeleted {
        namespace: String,
        name: String,
    },
    Namespace(Namespace),
    NamespaceDeleted(String),
    /// Every node, replacing the previous list (they only feed the ipcache).
    Nodes(Vec<Node>),
    /// Every Service, replacing the previous list.
    Services(Vec<Service>),
    /// The `default/kubernetes` Service's EndpointSlices (the API server's addresses), replacing
    /// the previous list.
    EndpointSlices(Vec<EndpointSlice>),
    Revision(Box<PolicyRevision>),
    RevisionDeleted {
        namespace: String,
        name: String,
    },
    Rollout(Box<PolicyRollout>),
    RolloutDeleted {
        namespace: String,
        name: String,
    },
    /// Every source has delivered its initial state: the agent may program the datapath. Until
    /// then it must not, or a restarted agent would enforce a half-known world.
    Synced,
}
