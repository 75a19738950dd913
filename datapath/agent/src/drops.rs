//! Drops per rollout: the packets the enforced set dropped, each counted for the rollout whose
//! revision caused it (a rollback watch compares a rollout's own drops, not the node's).
use std::collections::{BTreeMap, HashMap, VecDeque};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use palisade_common::{self as dp, Direction, DropReason, FlowKey, Mode};
use palisade_datapath::{EndpointId, Flow};

use crate::node_state::{Compiled, ENFORCED_SET, NodeView, ObjectKey, identity_of};

const DROP_WINDOW: SignedDuration = SignedDuration::from_secs(60);

/// A growing count over time, for its rate over the last minute.
#[derive(Default)]
struct DropSamples(VecDeque<(Timestamp, u64)>);

impl DropSamples {
    fn per_minute(&mut self, now: Timestamp, total: u64) -> u64 {
        self.0.push_back((now, total));
        while self.0.len() > 2 && self.0.get(1).is_some_and(|(t, _)| now.duration_since(*t) >= DROP_WINDOW) {
            self.0.pop_front();
        }
        let (since, first) = self.0.front().copied().unwrap_or((now, total));
        let seconds = now.duration_since(since).as_secs_f64();
        if seconds < 1.0 { 0 } else { ((total.saturating_sub(first)) as f64 * 60.0 / seconds).round() as u64 }
    }
}

/// One rollout's drops so far and their samples.
#[derive(Default)]
struct RolloutCount {
    total: u64,
    samples: DropSamples,
}

/// What the reporter remembers of the node's drops between reports.
#[derive(Default)]
pub(crate) struct RolloutDrops {
    /// Packets of each flow the enforced set dropped, at the last report.
    seen: HashMap<FlowKey, u64>,
    rollouts: BTreeMap<ObjectKey, RolloutCount>,
}

impl RolloutDrops {
    /// Takes in the growth of the dropped flows since the last call and returns each rollout's
    /// drops per minute over the last minute.
    pub(crate) fn per_minute(
        &mut self,
        view: &NodeView,
        compiled: &Compiled,
        flows: &[Flow],
        now: Timestamp,
    ) -> BTreeMap<ObjectKey, u64> {
        let mut seen = HashMap::new();
        let mut default_deny: HashMap<(EndpointId, Direction), Vec<&ObjectKey>> = HashMap::new();
        for flow in flows.iter().filter(|f| dropped_by_policy(&f.key)) {
            seen.insert(flow.key, flow.packets);
            // A flow with fewer packets than last time was forgotten and counted anew.
            let before = self.seen.get(&flow.key).copied().filter(|&b| b <= flow.packets).unwrap_or(0);
            let grown = flow.packets - before;
            if grown == 0 {
                continue;
            }
            let causes: Vec<&ObjectKey> = match compiled.origin(ENFORCED_SET, flow.enforced_cookie) {
                Some(rollout) => vec![rollout],
                None if flow.enforced_cookie == dp::COOKIE_NONE => default_deny
                    .entry((flow.key.endpoint, flow.key.direction()))
                    .or_insert_with(|| default_deny_by(view, compiled, flow.key.endpoint, flow.key.direction()))
                    .clone(),
                None => Vec::new(),
            };
            for rollout in causes {
                self.rollouts.entry(rollout.clone()).or_default().total += grown;
            }
        }
        self.seen = seen;
        view.rollouts
            .keys()
            .map(|key| {
                let count = self.rollouts.entry(key.clone()).or_default();
                (key.clone(), count.samples.per_minute(now, count.total))
            })
            .collect()
    }

    pub(crate) fn forget(&mut self, rollout: &ObjectKey) {
        self.rollouts.remove(rollout);
    }
}

/// Dropped (not only audited) because the enforced policy denies it: not for being unjudgeable.
fn dropped_by_policy(key: &FlowKey) -> bool {
    key.mode() == Mode::Enforce
        && matches!(key.drop_reason(), Some(DropReason::PolicyDenied | DropReason::L7Unsupported))
}

/// The rollouts whose enforced policies put the endpoint under default deny in `direction`: a
/// drop no rule decided there is theirs.
fn default_deny_by<'a>(
    view: &NodeView,
    compiled: &'a Compiled,
    endpoint: EndpointId,
    direction: Direction,
) -> Vec<&'a ObjectKey> {
    let Some(key) = view.pod(endpoint) else { return Vec::new() };
    let Some(identity) = identity_of(&compiled.enforced, key) else { return Vec::new() };
    let mut rollouts: Vec<&ObjectKey> = compiled
        .enforced
        .policies()
        .policies
        .iter()
        .enumerate()
        .filter_map(|(index, p)| {
            let denies = p.rules.iter().any(|rule| {
                let section = rule.section(direction);
                section.enables_policy && section.default_deny && rule.selects(identity)
            });
            denies.then(|| compiled.origins[ENFORCED_SET].get(index)).flatten()
        })
        .collect();
    rollouts.sort();
    rollouts.dedup();
    rollouts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_rate_is_per_minute_over_the_last_minute() {
        let mut samples = DropSamples::default();
        let start = Timestamp::UNIX_EPOCH;
        assert_eq!(samples.per_minute(start, 100), 0);
        assert_eq!(samples.per_minute(start + SignedDuration::from_secs(30), 130), 60);
        assert_eq!(samples.per_minute(start + SignedDuration::from_secs(200), 130), 0, "nothing in the last minute");
    }
}
