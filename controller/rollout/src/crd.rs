//! The custom resources of group `palisade.dev`, version `v1alpha1`.
//!
//! The OpenAPI schemas generated from these types are what the API server validates at admission,
//! so constraints a person can get wrong (one ref kind, positive durations, URL schemes) are
//! written as schema rules here rather than checked later by the controller.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// Bounds on every string, list and map: the API server estimates the cost of CEL rules from them
// (an unbounded field makes a rule over it too expensive to admit), and they keep objects well
// inside what etcd stores.
/// Object names (DNS subdomains).
const NAME_MAX: u32 = 253;
/// Namespaces (DNS labels).
const NAMESPACE_MAX: u32 = 63;
/// Label values; a map holds at most [`LABELS_MAX`] of them.
const LABEL_VALUE_MAX: u32 = 63;
const LABELS_MAX: u32 = 64;
const URL_MAX: u32 = 2048;
const PATH_MAX: u32 = 1024;
const IGNORE_MAX: u32 = 16 * 1024;
const GIT_REF_MAX: u32 = 255;
/// A SHA-1 or SHA-256 commit id in hex.
const COMMIT_MAX: u32 = 64;
/// `sha256:` and 64 hex digits.
const DIGEST_MAX: u32 = 71;
/// `ref@short-commit`.
const DISPLAY_MAX: u32 = GIT_REF_MAX + 1 + COMMIT_MAX;
const DURATION_MAX: u32 = 64;
/// RFC 3339 timestamps.
const TIME_MAX: u32 = 64;
/// User names as the API server authenticated them.
const USER_MAX: u32 = 512;
/// Condition reasons (metav1.Condition's bound).
const REASON_MAX: u32 = 1024;
/// Messages (metav1.Condition's bound).
const MESSAGE_MAX: u32 = 32 * 1024;
/// The errors of one failed attempt, each at most [`ERROR_MAX`] long.
const ERRORS_MAX: u32 = 64;
const ERROR_MAX: u32 = 4096;
const EXPECTED_DENIES_MAX: u32 = 256;
const ROLLED_BACK_MAX: u32 = 4096;
const CONDITIONS_MAX: u32 = 16;
const KIND_MAX: u32 = 63;
/// One normalized policy; a whole revision is refused above 1 MiB serialized anyway.
const POLICY_CONTENT_MAX: u32 = 1024 * 1024;
const POLICIES_MAX: u32 = 4096;
/// Endpoints one node reports: pods per node are far fewer.
const ENDPOINTS_MAX: u32 = 4096;
/// The agent lists at most this many flows (AUDIT_FLOW_CAP in datapath/agent).
const FLOWS_MAX: u32 = 100;
/// Control-plane flows an agent checks: the API server's addresses and ports, and the agent's
/// health port.
const CONTROL_PLANE_FLOWS_MAX: u32 = 32;
/// Revisions loaded into one node's policy slots for a rollout.
const LOADED_REVISIONS_MAX: u32 = 16;
/// `Kind namespace/name ingress[N]`.
const RULE_MAX: u32 = 512;
/// An IPv6 CIDR is at most 43 characters.
const CIDR_MAX: u32 = 64;

/// A Git-sourced set of network policies, audited on live traffic and promoted atomically.
// kube-derive repeats `type_ = "string"` per column, which clippy misreads as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "PolicyRollout",
    namespaced,
    status = "PolicyRolloutStatus",
    shortname = "pro",
    category = "palisade",
    doc = "Stages each new Git revision of network policies beside the enforced one, audits the drops it would cause, and promotes it atomically",
    printcolumn(name = "Enforced", type_ = "string", json_path = ".status.enforcedRevision.display"),
    printcolumn(name = "Candidate", type_ = "string", json_path = ".status.candidateRevision.display"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "New-Denies", type_ = "integer", json_path = ".status.newDenies"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRolloutSpec {
    pub source: GitSource,
    #[serde(default)]
    pub audit: AuditGates,
    #[serde(default)]
    pub promotion: Promotion,
    #[serde(default)]
    pub rollback: RollbackPolicy,
    /// Stop acting on new commits and reports; what is enforced stays enforced.
    #[serde(default)]
    pub suspend: bool,
    #[serde(default)]
    pub scope: Scope,
    /// How long the promotion barrier waits for nodes to load the candidate or confirm a flip
    /// before the rollout reports `Stalled` (reason ProgressDeadlineExceeded); it keeps waiting.
    #[serde(default = "default_progress_deadline")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s')").message("progressDeadline must not be negative"))]
    #[schemars(length(max = DURATION_MAX))]
    pub progress_deadline: Duration,
}

fn default_progress_deadline() -> Duration {
    std::time::Duration::from_secs(600).into()
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitSource {
    /// Repository URL: https:// or ssh://. http:// and file:// pass admission (it cannot know the
    /// controller's flags) but a controller in a cluster fetches them only when run with
    /// `--allow-insecure-sources`; local mode reads file:// too.
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://') || self.startsWith('ssh://') || self.startsWith('file://')").message("url must start with https://, http://, ssh:// or file:// (scp-like user@host:path is not supported)"))]
    #[schemars(length(max = URL_MAX))]
    pub url: String,
    #[serde(rename = "ref")]
    pub git_ref: GitRef,
    /// Directory in the repository holding the policies; the repository root when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = PATH_MAX))]
    pub path: Option<String>,
    /// .gitignore-style patterns of files to leave out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = IGNORE_MAX))]
    pub ignore: Option<String>,
    /// How often to poll the repository (Go duration, e.g. 1m).
    #[serde(default = "default_interval")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("interval must be at least 1s"))]
    #[schemars(length(max = DURATION_MAX))]
    pub interval: Duration,
    /// Limit on one fetch.
    #[serde(default = "default_timeout")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("timeout must be at least 1s"))]
    #[schemars(length(max = DURATION_MAX))]
    pub timeout: Duration,
    /// Secret with credentials: username/password, bearerToken, or SSH identity and known_hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// Require signed commits or tags; unverified revisions are never staged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
}

fn default_interval() -> Duration {
    std::time::Duration::from_secs(60).into()
}

fn default_timeout() -> Duration {
    std::time::Duration::from_secs(60).into()
}

/// Exactly one of branch, tag, semver or commit.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("[has(self.branch), has(self.tag), has(self.semver), has(self.commit)].filter(x, x).size() == 1").message("set exactly one of branch, tag, semver or commit"))]
#[serde(rename_all = "camelCase")]
pub struct GitRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = GIT_REF_MAX))]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = GIT_REF_MAX))]
    pub tag: Option<String>,
    /// A semver range over tags, e.g. ">=1.2.0 <2".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = GIT_REF_MAX))]
    pub semver: Option<String>,
    /// A full 40-character commit SHA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{40}$')").message("commit must be a full 40-character lowercase hex SHA"))]
    #[schemars(length(max = COMMIT_MAX))]
    pub commit: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectReference {
    #[schemars(length(min = 1, max = NAME_MAX))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verify {
    #[serde(default)]
    pub mode: VerifyMode,
    pub provider: VerifyProvider,
    /// Secret holding the trusted public keys.
    pub keys_ref: LocalObjectReference,
}

/// Which signature must verify: the commit at HEAD, the tag, or both.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum VerifyMode {
    #[default]
    #[serde(rename = "HEAD")]
    Head,
    Tag,
    #[serde(rename = "TagAndHEAD")]
    TagAndHead,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VerifyProvider {
    Ssh,
    Openpgp,
}

/// What a candidate must show on live traffic before it may be promoted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuditGates {
    /// Shortest audit, so that periodic traffic has a chance to show up.
    #[serde(default = "default_min_duration")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s')").message("minDuration must not be negative"))]
    #[schemars(length(max = DURATION_MAX))]
    pub min_duration: Duration,
    /// Flows each endpoint selected by the candidate must have seen; fewer makes the audit
    /// Inconclusive instead of passing on silence. 0 turns the check off.
    #[serde(default = "default_min_flows")]
    pub min_flows_per_endpoint: u32,
    /// Distinct newly denied flows tolerated beyond those matched by expectedDenies (a flow seen
    /// on several nodes counts once).
    #[serde(default)]
    pub max_new_denies: u32,
    /// Flows the change is meant to deny; they never block promotion.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = EXPECTED_DENIES_MAX))]
    pub expected_denies: Vec<FlowSelector>,
    /// A node whose Node has been NotReady, or whose agent has not rewritten its report for two
    /// heartbeats, for longer than this is left out of the promotion barrier (and of the
    /// evidence) until it comes back.
    #[serde(default = "default_not_ready_grace")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s')").message("notReadyGrace must not be negative"))]
    #[schemars(length(max = DURATION_MAX))]
    pub not_ready_grace: Duration,
}

fn default_min_duration() -> Duration {
    std::time::Duration::from_secs(600).into()
}

fn default_min_flows() -> u32 {
    1
}

fn default_not_ready_grace() -> Duration {
    std::time::Duration::from_secs(300).into()
}

impl Default for AuditGates {
    fn default() -> Self {
        Self {
            min_duration: default_min_duration(),
            min_flows_per_endpoint: default_min_flows(),
            max_new_denies: 0,
            expected_denies: Vec::new(),
            not_ready_grace: default_not_ready_grace(),
        }
    }
}

/// Matches audited flows; every field that is set must match. `subject` is the local endpoint the
/// policy selects, `peer` the other side.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new("has(self.subjectLabels) || has(self.peerLabels) || has(self.namespace) || has(self.peerNamespace) || has(self.port) || has(self.protocol) || has(self.direction)").message("an expected-deny selector must set at least one field; an empty one would expect every deny"))]
#[serde(rename_all = "camelCase")]
pub struct FlowSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "label_map")]
    pub subject_labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "label_map")]
    pub peer_labels: Option<BTreeMap<String, String>>,
    /// Namespace of the subject endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = NAMESPACE_MAX))]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = NAMESPACE_MAX))]
    pub peer_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Promotion {
    /// Promote as soon as every gate passes.
    #[default]
    Auto,
    /// Additionally wait for `kubectl palisade promote`.
    Manual,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RollbackPolicy {
    /// How long after a promotion drops are compared with the pre-promotion baseline.
    #[serde(default = "default_window")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s')").message("postPromotionWindow must not be negative"))]
    #[schemars(length(max = DURATION_MAX))]
    pub post_promotion_window: Duration,
    /// Extra drops per minute, summed over all nodes, that trigger an automatic rollback.
    #[serde(default = "default_max_drop_increase")]
    pub max_drop_increase: u64,
    /// Promote a revision that was enforced before (a `git revert`) without a new audit.
    #[serde(default = "default_true")]
    pub fast_track_reverts: bool,
}

fn default_window() -> Duration {
    std::time::Duration::from_secs(600).into()
}

fn default_max_drop_increase() -> u64 {
    100
}

fn default_true() -> bool {
    true
}

impl Default for RollbackPolicy {
    fn default() -> Self {
        Self {
            post_promotion_window: default_window(),
            max_drop_increase: default_max_drop_increase(),
            fast_track_reverts: true,
        }
    }
}

/// What the policies of a revision may cover. Only rollouts in the controller's namespace may use
/// Cluster, which allows cluster-wide policies and policies for other namespaces.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Scope {
    #[default]
    Namespace,
    Cluster,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    #[serde(rename = "ICMPv6")]
    IcmpV6,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Verdict {
    Allow,
    Deny,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Phase {
    #[default]
    Pending,
    Auditing,
    Promoting,
    Enforced,
    Blocked,
    Inconclusive,
    Failed,
    RolledBack,
}

/// A revision as the status names it: the PolicyRevision, the commit that brought it, and the
/// short form shown by `kubectl get`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRef {
    /// Name of the PolicyRevision; content-addressed, so a revert names an earlier revision.
    #[schemars(length(max = NAME_MAX))]
    pub id: String,
    #[schemars(length(max = COMMIT_MAX))]
    pub commit: String,
    /// e.g. `main@a1b2c3d`.
    #[schemars(length(max = DISPLAY_MAX))]
    pub display: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRolloutStatus {
    #[serde(default)]
    pub phase: Phase,
    /// The revision every node is asked to enforce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_revision: Option<RevisionRef>,
    /// The revision under audit or being promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_revision: Option<RevisionRef>,
    /// What was enforced before the last promotion: the target of an automatic rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_revision: Option<RevisionRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = TIME_MAX))]
    pub audit_started_at: Option<Time>,
    /// When the candidate was staged; with `auditStartedAt` and `flipRequestedAt`, where the
    /// promotion barrier's `spec.progressDeadline` counts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = TIME_MAX))]
    pub candidate_staged_at: Option<Time>,
    /// Counts the restarts of the candidate's audit (a `reaudit`, a changed gate, the same
    /// content under a new commit). Agents echo it in their reports and restart their evidence
    /// when it moves, so evidence from before a restart is never counted.
    #[serde(default)]
    pub audit_generation: u64,
    /// The gates and promotion mode the running audit judges by; changing them in the spec
    /// restarts the audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_terms: Option<AuditTerms>,
    /// Set when the candidate's evidence blocked it: it stays Blocked, whatever later evidence
    /// shows, until a new commit, `palisade abort` or `palisade reaudit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<BlockedVerdict>,
    /// Distinct newly denied flows seen by the audit, expected ones included: a flow seen on
    /// several nodes counts once.
    #[serde(default)]
    pub new_denies: u64,
    /// Newly denied flows not matched by `audit.expectedDenies`: what the gate counts.
    #[serde(default)]
    pub unexpected_new_denies: u64,
    #[serde(default)]
    pub new_allows: u64,
    #[serde(default)]
    pub observed_flows: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_revision: Option<AttemptedRevision>,
    /// The last Promote decision for the candidate, by the user the API server authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// The last Abort decision: the candidate it names is dropped and not staged again until a
    /// new commit arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
    /// When nodes were asked to flip to the enforced revision (promotion or rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = TIME_MAX))]
    pub flip_requested_at: Option<Time>,
    /// While Enforced, since when some node has not enforced the enforced revision (an agent
    /// restarted and failing to load it, a node that joined): `spec.progressDeadline` counts
    /// from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = TIME_MAX))]
    pub nodes_behind_since: Option<Time>,
    /// When every node confirmed the last promotion: the start of the rollback watch window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = TIME_MAX))]
    pub promoted_at: Option<Time>,
    /// Drops per minute over all nodes just before the last promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_drops_per_minute: Option<u64>,
    /// Every revision rolled back, by content and commit: not promoted again until a new commit
    /// arrives. One short entry per distinct revision, never cut.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = ROLLED_BACK_MAX))]
    pub rolled_back_revisions: Vec<RolledBackRevision>,
    /// The last outcomes, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::engine::HISTORY_LIMIT))]
    pub history: Vec<HistoryEntry>,
    /// Keyed by type so that server-side apply merges conditions one by one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    #[schemars(schema_with = "conditions")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The `reconcile.palisade.dev/requestedAt` value the last reconcile acted on (Flux's
    /// `lastHandledReconcileAt`): `palisade reconcile --wait` waits for its request to show here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = RECONCILE_REQUEST_MAX))]
    pub last_handled_reconcile_at: Option<String>,
}

impl PolicyRolloutStatus {
    /// A candidate is staged or a flip asked for: the barrier waits on the nodes, whose agents
    /// then send heartbeats so that a silent node can be told from a dead one.
    pub fn in_flight(&self) -> bool {
        self.candidate_revision.is_some() || self.flip_requested_at.is_some()
    }
}

/// The longest `reconcile.palisade.dev/requestedAt` value the status records as handled.
pub const RECONCILE_REQUEST_MAX: u32 = TIME_MAX;

/// What an audit judges by, as the spec said when it started.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditTerms {
    pub audit: AuditGates,
    pub promotion: Promotion,
    /// The candidate carries a host policy (a `nodeSelector` rule): it is audited for at least
    /// [`HOST_POLICY_MIN_AUDIT`] whatever `spec.audit.minDuration` says, and never fast-tracked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_policy: bool,
}

/// The shortest audit of a candidate with a host policy: a wrong one can cut nodes off their
/// control plane, so every node runs it in the shadow of live traffic, and its agent checks it,
/// for three report intervals before it may enforce.
pub const HOST_POLICY_MIN_AUDIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a candidate is Blocked, fixed when its evidence blocked it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockedVerdict {
    /// The PolicyRevision blocked.
    #[schemars(length(max = NAME_MAX))]
    pub revision: String,
    /// The commit it came from: a new commit audits again.
    #[schemars(length(max = COMMIT_MAX))]
    pub commit: String,
    #[schemars(length(max = REASON_MAX))]
    pub reason: String,
    #[schemars(length(max = MESSAGE_MAX))]
    pub message: String,
    #[schemars(length(max = TIME_MAX))]
    pub blocked_at: Time,
}

/// A revision rolled back: its content (the PolicyRevision) and the commit that brought it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolledBackRevision {
    #[schemars(length(max = NAME_MAX))]
    pub id: String,
    #[schemars(length(max = COMMIT_MAX))]
    pub commit: String,
}

/// The newest commit the controller tried; `errors` is non-empty when it could not be staged.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptedRevision {
    #[schemars(length(max = COMMIT_MAX))]
    pub commit: String,
    #[schemars(length(max = DISPLAY_MAX))]
    pub display: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = NAME_MAX))]
    pub id: Option<String>,
    /// Why it failed, e.g. ValidationFailed, VerificationFailed, ScopeViolation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = REASON_MAX))]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = ERRORS_MAX), inner(length(max = ERROR_MAX)))]
    pub errors: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// The PolicyRevision approved; an approval never carries over to another revision.
    #[schemars(length(max = NAME_MAX))]
    pub revision: String,
    #[schemars(length(max = USER_MAX))]
    pub approved_by: String,
    #[schemars(length(max = TIME_MAX))]
    pub approved_at: Time,
}

/// A request to abandon a candidate, recorded with who asked and when.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Abort {
    /// The PolicyRevision abandoned.
    #[schemars(length(max = NAME_MAX))]
    pub revision: String,
    /// The commit it came from; a later commit with the same content may be staged again.
    #[schemars(length(max = COMMIT_MAX))]
    pub commit: String,
    #[schemars(length(max = USER_MAX))]
    pub aborted_by: String,
    #[schemars(length(max = TIME_MAX))]
    pub aborted_at: Time,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    #[schemars(length(max = NAME_MAX))]
    pub revision: String,
    #[schemars(length(max = COMMIT_MAX))]
    pub commit: String,
    #[schemars(length(max = DISPLAY_MAX))]
    pub display: String,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = TIME_MAX))]
    pub enforced_at: Option<Time>,
    #[schemars(length(max = TIME_MAX))]
    pub recorded_at: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = USER_MAX))]
    pub approved_by: Option<String>,
    /// The verified user whose PolicyDecision this entry records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = USER_MAX))]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = MESSAGE_MAX))]
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Outcome {
    /// Audited and enforced on every node.
    Promoted,
    /// A revert to a known-good revision, enforced without a new audit.
    FastTracked,
    /// Enforced, then rolled back.
    RolledBack,
    /// Replaced by a newer commit before it was enforced.
    Superseded,
    /// Invalid, unverified or out of scope; never staged.
    Failed,
    /// A Promote decision approved the candidate (it is promoted once its audit passes).
    Approved,
    /// An Abort decision dropped the candidate.
    Aborted,
    /// The audit started again from no evidence: a `reaudit`, a changed gate or a new commit
    /// of the same content.
    AuditRestarted,
}

/// One validated, normalized policy set. Immutable: a revert to known content reuses the
/// revision, and the agents load exactly what was audited.
// kube-derive repeats `type_ = "string"` per column, which clippy misreads as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "PolicyRevision",
    namespaced,
    shortname = "prev",
    category = "palisade",
    doc = "An immutable, content-addressed policy set produced from one Git commit",
    printcolumn(name = "Rollout", type_ = "string", json_path = ".spec.rollout"),
    printcolumn(name = "Revision", type_ = "string", json_path = ".spec.display"),
    printcolumn(name = "Policies", type_ = "integer", json_path = ".spec.policyCount"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRevisionSpec {
    #[x_kube(validation = Rule::new("self == oldSelf").message("immutable: a new commit makes a new revision"))]
    #[schemars(length(max = NAME_MAX))]
    pub rollout: String,
    #[x_kube(validation = Rule::new("self == oldSelf").message("immutable: a new commit makes a new revision"))]
    #[schemars(length(max = COMMIT_MAX))]
    pub commit: String,
    #[schemars(length(max = DISPLAY_MAX))]
    pub display: String,
    /// `sha256:` digest of the normalized policies.
    #[x_kube(validation = Rule::new("self.matches('^sha256:[0-9a-f]{64}$')").message("digest must be sha256:<64 hex digits>"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("immutable: a new commit makes a new revision"))]
    #[schemars(length(max = DIGEST_MAX))]
    pub digest: String,
    pub policy_count: u32,
    #[schemars(length(max = POLICIES_MAX))]
    pub policies: Vec<PolicyDocument>,
}

/// One normalized policy, kept as canonical JSON so that equality (and the digest) is exact.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDocument {
    #[schemars(length(max = KIND_MAX))]
    pub kind: String,
    #[schemars(length(max = NAME_MAX))]
    pub name: String,
    /// Unset for cluster-wide policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = NAMESPACE_MAX))]
    pub namespace: Option<String>,
    #[schemars(length(max = POLICY_CONTENT_MAX))]
    pub content: String,
}

/// What one node's agent observed for one rollout. The agent owns the whole object and rewrites
/// it periodically, so the data lives in `spec` without a status subresource.
// kube-derive repeats `type_ = "string"` per column, which clippy misreads as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "PolicyAuditReport",
    namespaced,
    shortname = "par",
    category = "palisade",
    doc = "One node's audit of a PolicyRollout's candidate: would-be drops, loaded revisions and flips",
    printcolumn(name = "Rollout", type_ = "string", json_path = ".spec.rollout"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "Candidate", type_ = "string", json_path = ".spec.candidateRevision"),
    printcolumn(name = "New-Denies", type_ = "integer", json_path = ".spec.totals.newDenies"),
    printcolumn(name = "Enforcing", type_ = "string", json_path = ".spec.enforcedRevision"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAuditReportSpec {
    #[schemars(length(max = NAME_MAX))]
    pub rollout: String,
    #[schemars(length(max = NAME_MAX))]
    pub node: String,
    /// The revision audited; totals and flows are for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = NAME_MAX))]
    pub candidate_revision: Option<String>,
    /// When this node's continuous evidence for the candidate started: a new candidate on the
    /// node, an agent restart or a restarted audit moves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = TIME_MAX))]
    pub audit_started_at: Option<Time>,
    /// The rollout's `status.auditGeneration` this evidence was gathered for.
    #[serde(default)]
    pub audit_generation: u64,
    #[serde(default)]
    pub totals: AuditTotals,
    /// Endpoints on this node that the candidate selects, with their observed traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = ENDPOINTS_MAX))]
    pub endpoints: Vec<EndpointTraffic>,
    /// Flows whose verdict differs, most frequent first, capped; `totals` counts them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = FLOWS_MAX))]
    pub flows: Vec<AuditFlow>,
    /// The node's own control-plane traffic the candidate's host policy would deny and the
    /// enforced revision allows: the node's connections to the API server, and the health
    /// checks of its agent. Checked against the policy, not waited for in traffic: any one of
    /// them blocks the candidate, whatever the gates say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = CONTROL_PLANE_FLOWS_MAX))]
    pub control_plane_denies: Vec<AuditFlow>,
    /// PolicyRevisions loaded into a policy slot on this node: the promotion barrier.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = LOADED_REVISIONS_MAX), inner(length(max = NAME_MAX)))]
    pub loaded_revisions: Vec<String>,
    /// The PolicyRevision this node enforces (its endpoints have flipped to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = NAME_MAX))]
    pub enforced_revision: Option<String>,
    /// When the agent last wrote this report: on a change of what the gate reads, or on its
    /// heartbeat. A report older than two heartbeats is a node that stopped reporting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = TIME_MAX))]
    pub reported_at: Option<Time>,
    /// How often the agent rewrites an unchanged report (its `--report-heartbeat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = DURATION_MAX))]
    pub heartbeat: Option<Duration>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditTotals {
    /// Connections evaluated by both revisions (each attempt, for dropped ones).
    #[serde(default)]
    pub observed_flows: u64,
    /// Distinct flows the enforced revision allows and the candidate would deny.
    #[serde(default)]
    pub new_denies: u64,
    /// Distinct flows the enforced revision denies and the candidate would allow.
    #[serde(default)]
    pub new_allows: u64,
    /// Packets dropped per minute because of the rollout's enforced revision, over the last
    /// minute: drops by its rules, and default-deny drops of the endpoints it selects.
    #[serde(default)]
    pub drops_per_minute: u64,
    /// Flows left out of `flows` by the cap.
    #[serde(default)]
    pub truncated_flows: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointTraffic {
    #[schemars(length(max = NAMESPACE_MAX))]
    pub namespace: String,
    #[schemars(length(max = NAME_MAX))]
    pub pod: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = NAME_MAX))]
    pub workload: Option<String>,
    /// Connections the endpoint judged during the audit (each attempt, for dropped ones).
    pub flows: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditFlow {
    pub direction: Direction,
    pub subject: FlowEndpoint,
    pub peer: FlowEndpoint,
    /// Destination port; 0 for ICMP.
    pub port: u16,
    pub protocol: Protocol,
    pub enforced_verdict: Verdict,
    pub candidate_verdict: Verdict,
    pub count: u64,
    #[schemars(length(max = TIME_MAX))]
    pub first_seen: Time,
    #[schemars(length(max = TIME_MAX))]
    pub last_seen: Time,
    /// The candidate rule that decided, e.g. `CiliumNetworkPolicy shop/deny-legacy ingress[0]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = RULE_MAX))]
    pub rule: Option<String>,
    /// Set for requests the node's L7 proxy judged (HTTP rules): which requests differ. `count`
    /// then counts requests, not packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRequestKind>,
    /// Set for DNS queries the node's DNS proxy judged (DNS rules): which names differ.
    /// `count` then counts queries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsQueryKind>,
    /// Set for TLS connections the node's L7 proxy judged by their ClientHello (`serverNames`):
    /// which server names differ. `count` then counts connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsServerKind>,
    /// Set for Kafka requests the node's L7 proxy judged: which API key and topics differ.
    /// `count` then counts requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaRequestKind>,
}

/// Requests of one method to one path, as the L7 proxy saw them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRequestKind {
    #[schemars(length(max = 32))]
    pub method: String,
    #[schemars(length(max = PATH_MAX))]
    pub path: String,
}

/// Queries for one name, as the DNS proxy saw them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsQueryKind {
    /// Lower case, without the root dot.
    #[schemars(length(max = 253))]
    pub query: String,
}

/// TLS connections indicating one server name (SNI), as the L7 proxy saw them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsServerKind {
    /// Lower case, without the root dot; absent for a connection that indicated none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub server_name: Option<String>,
}

/// Kafka requests of one API key naming the same topics, as the L7 proxy saw them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaRequestKind {
    /// The API key's name as Kafka rules write it (`produce`, `fetch`, ...), or `api-key-N`.
    #[schemars(length(max = 32))]
    pub api_key: String,
    /// The topics it named, sorted (at most the first 16; a topic name is at most 255 bytes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 255)))]
    pub topics: Vec<String>,
}

/// A side of a flow, named by labels: identities are node-local numbers and mean nothing here.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowEndpoint {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "label_map")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = NAMESPACE_MAX))]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = NAME_MAX))]
    pub workload: Option<String>,
    /// For peers outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = CIDR_MAX))]
    pub cidr: Option<String>,
}

/// A person's decision about a rollout's candidate. The API server checks (admission policy
/// `palisade-decision-user`) that `spec.user` is the user who created it, so the controller
/// records a verified name; the controller consumes it and deletes it.
// kube-derive repeats `type_ = "string"` per column, which clippy misreads as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "PolicyDecision",
    namespaced,
    shortname = "pdec",
    category = "palisade",
    doc = "A verified person's Promote, Abort or Reaudit decision about a PolicyRollout's candidate",
    printcolumn(name = "Rollout", type_ = "string", json_path = ".spec.rollout"),
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
    printcolumn(name = "Revision", type_ = "string", json_path = ".spec.revision"),
    printcolumn(name = "User", type_ = "string", json_path = ".spec.user"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDecisionSpec {
    /// The PolicyRollout, in the decision's namespace.
    #[schemars(length(max = NAME_MAX))]
    pub rollout: String,
    /// The PolicyRevision decided about: a decision never carries over to another candidate.
    #[schemars(length(max = NAME_MAX))]
    pub revision: String,
    pub action: DecisionAction,
    /// Who decided: must be the authenticated user creating the decision.
    #[schemars(length(max = USER_MAX))]
    pub user: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DecisionAction {
    /// Approve the candidate of a Manual rollout; it is promoted once its audit passes.
    Promote,
    /// Drop the candidate; it is not staged again until a new commit.
    Abort,
    /// Discard the candidate's evidence and audit it again from now.
    Reaudit,
}

/// Labels as a bounded map: at most [`LABELS_MAX`] entries, values as long as Kubernetes allows.
fn label_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": LABELS_MAX,
        "additionalProperties": {"type": "string", "maxLength": LABEL_VALUE_MAX},
    })
}

/// metav1.Condition with the bounds its Go type declares (k8s-openapi's schema has none).
fn conditions(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": CONDITIONS_MAX,
        "items": {
            "type": "object",
            "required": ["type", "status", "reason", "message", "lastTransitionTime"],
            "properties": {
                "type": {"type": "string", "maxLength": 316},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "reason": {"type": "string", "maxLength": REASON_MAX},
                "message": {"type": "string", "maxLength": MESSAGE_MAX},
                "lastTransitionTime": {"type": "string", "format": "date-time", "maxLength": TIME_MAX},
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            },
        },
    })
}
