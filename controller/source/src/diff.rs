//! What changed between two revisions: the policy objects as text, and, given a cluster, the
//! flows whose verdict changes.
use std::collections::{BTreeMap, BTreeSet};

use palisade_policy::diff::{self, FlowChange};
use palisade_policy::model::PolicyId;
use palisade_policy::{Cluster, EnforcementMode, Engine, PolicySet};
use similar::TextDiff;

use crate::Revision;

/// One added, removed or changed policy object, as a unified diff of its pretty-printed JSON.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PolicyChange {
    pub policy: String,
    pub diff: String,
}

pub fn text_diff(old: &Revision, new: &Revision) -> Vec<PolicyChange> {
    let render = |set: &PolicySet| -> BTreeMap<PolicyId, String> {
        set.policies
            .iter()
            .map(|p| (p.id.clone(), serde_json::to_string_pretty(&p.source).unwrap_or_default() + "\n"))
            .collect()
    };
    let (before, after) = (render(&old.policies), render(&new.policies));
    let ids: BTreeSet<&PolicyId> = before.keys().chain(after.keys()).collect();
    ids.into_iter()
        .filter_map(|id| {
            let (a, b) = (before.get(id).map_or("", String::as_str), after.get(id).map_or("", String::as_str));
            (a != b).then(|| PolicyChange {
                policy: id.to_string(),
                diff: TextDiff::from_lines(a, b)
                    .unified_diff()
                    .context_radius(3)
                    .header(short(&old.id), short(&new.id))
                    .to_string(),
            })
        })
        .collect()
}

/// Flows between the cluster's pods, on their declared ports, whose verdict differs.
pub fn semantic_diff(
    old: &Revision,
    new: &Revision,
    cluster: &Cluster,
    mode: EnforcementMode,
) -> Result<Vec<FlowChange>, String> {
    let flows = diff::all_pod_flows(cluster);
    let before = Engine::new(old.policies.clone(), cluster.clone(), mode);
    let after = Engine::new(new.policies.clone(), cluster.clone(), mode);
    diff::semantic_diff(&before, &after, &flows)
}

/// `sha256:0123456789ab`, enough to tell revisions apart in a header.
pub fn short(id: &str) -> &str {
    &id[..id.len().min("sha256:".len() + 12)]
}
