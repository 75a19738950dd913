//! The Kubernetes permissions Palisade's components use, declared once. `manifests/` grants
//! exactly these, no more and no less (`controller/tests/manifests.rs` checks), so an API call the
//! code starts making is added here first.

/// (API group, resource, verbs); `""` is the core group, `resource/subresource` a subresource.
pub type Rule = (&'static str, &'static str, &'static [&'static str]);

/// The controller, cluster-wide (ClusterRole `palisade-controller`): rollouts in every namespace
/// (the only writer of their status), the revisions it writes for them, people's decisions, the
/// agents' reports, the Nodes (one NotReady too long is left out of the promotion barrier), Git
/// credentials named by `spec.source.secretRef` and `verify.keysRef`, and Events for every
/// transition. Everything a reconcile reads is watched into a cache (list, then watch).
pub const CONTROLLER_RBAC: &[Rule] = &[
    ("palisade.dev", "policyrollouts", &["get", "list", "watch", "patch"]),
    ("palisade.dev", "policyrollouts/status", &["patch"]),
    ("palisade.dev", "policyrollouts/finalizers", &["update"]),
    ("palisade.dev", "policyrevisions", &["get", "list", "watch", "create", "delete"]),
    // People's decisions: consumed, then deleted.
    ("palisade.dev", "policydecisions", &["get", "list", "watch", "delete"]),
    // delete: a rollout's reports go with it (finalizer).
    ("palisade.dev", "policyauditreports", &["get", "list", "watch", "delete"]),
    ("", "nodes", &["list", "watch"]),
    ("", "secrets", &["get"]),
    ("events.k8s.io", "events", &["create", "patch"]),
];

/// The controller in its own namespace only (Role `palisade-controller`): the leader-election
/// Lease, and the agent Pods whose nodes the promotion barrier waits for.
pub const CONTROLLER_NAMESPACE_RBAC: &[Rule] =
    &[("coordination.k8s.io", "leases", &["get", "create", "update"]), ("", "pods", &["list", "watch"])];

/// The node agent, cluster-wide (ClusterRole `palisade-agent`): the watches identities and
/// endpoints are computed from, the revisions to load (datapath/agent/src/cluster_watch.rs), its
/// own audit report per rollout, applied server-side (patch; create when new) and deleted when the
/// rollout is gone (datapath/agent/src/report_writer.rs), and the reviews of the bearer tokens
/// that ask for `/flows` (datapath/agent/src/flow_access.rs).
pub const AGENT_RBAC: &[Rule] = &[
    ("", "pods", &["list", "watch"]),
    ("", "namespaces", &["list", "watch"]),
    ("", "nodes", &["list", "watch"]),
    ("", "services", &["list", "watch"]),
    ("palisade.dev", "policyrevisions", &["list", "watch"]),
    ("palisade.dev", "policyrollouts", &["list", "watch"]),
    ("palisade.dev", "policyauditreports", &["create", "patch", "delete"]),
    ("authentication.k8s.io", "tokenreviews", &["create"]),
    ("authorization.k8s.io", "subjectaccessreviews", &["create"]),
    // The EndpointSlices no controller derives from a selector: the API server's (identity
    // kube-apiserver) and those of selector-less Services (`toServices`). The watch selects them
    // by label; RBAC cannot narrow a list to a label.
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
];
