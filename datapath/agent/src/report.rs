//! PolicyAuditReports: what this node's endpoints saw the candidate would change, the revisions
//! the node has loaded (the promotion barrier) and the one it enforces.
//!
//! A node reports only the rollouts that concern it (see [`concerned`]): a node without a
//! rollout's report is outside that rollout's barrier.
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use palisade_common::{self as dp, EndpointCounters, FlowKey};
use palisade_datapath::{EndpointId, Flow};
use palisade_policy::CompiledPolicy;
use palisade_policy::compile::Enforcement;
use palisade_rollout::crd::{
    AuditFlow, AuditTotals, Direction, DnsQueryKind, EndpointTraffic, FlowEndpoint, HttpRequestKind, KafkaRequestKind,
    PolicyAuditReport, PolicyAuditReportSpec, Protocol, TlsServerKind, Verdict,
};

use crate::control_plane;
use crate::drops::RolloutDrops;
use crate::node_state::{
    CANDIDATE_SET, Compiled, ENFORCED_SET, NodeView, ObjectKey, Targets, group_of, identity_of, is_host,
};
use crate::proxy::{L7Diff, L7Seen, RequestKind};

/// Flows listed per report, most frequent first; the totals count them all.
pub const AUDIT_FLOW_CAP: usize = 100;

/// What makes a listed flow the flow it is, whichever of the node's pods saw it: everything an
/// [`AuditFlow`] holds but its counts and times.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct FlowClass {
    direction: Direction,
    subject: EndpointClass,
    peer: EndpointClass,
    port: u16,
    protocol: Protocol,
    verdicts: (Verdict, Verdict),
    rule: Option<String>,
    http: Option<HttpRequestKind>,
    dns: Option<DnsQueryKind>,
    tls: Option<TlsServerKind>,
    kafka: Option<KafkaRequestKind>,
}

/// A [`FlowEndpoint`]'s labels, namespace, workload and CIDR.
type EndpointClass = (BTreeMap<String, String>, Option<String>, Option<String>, Option<String>);

impl FlowClass {
    pub(crate) fn of(flow: &AuditFlow) -> FlowClass {
        let endpoint = |e: &FlowEndpoint| (e.labels.clone(), e.namespace.clone(), e.workload.clone(), e.cidr.clone());
        FlowClass {
            direction: flow.direction,
            subject: endpoint(&flow.subject),
            peer: endpoint(&flow.peer),
            port: flow.port,
            protocol: flow.protocol,
            verdicts: (flow.enforced_verdict, flow.candidate_verdict),
            rule: flow.rule.clone(),
            http: flow.http.clone(),
            dns: flow.dns.clone(),
            tls: flow.tls.clone(),
            kafka: flow.kafka.clone(),
        }
    }
}

/// A report's flows, one entry per [`FlowClass`]: the replicas of a workload that see one peer
/// add up to one entry instead of filling the list with copies.
#[derive(Default)]
struct NodeFlows {
    index: HashMap<FlowClass, usize>,
    flows: Vec<AuditFlow>,
}

impl NodeFlows {
    fn add(&mut self, flow: AuditFlow) {
        match self.index.entry(FlowClass::of(&flow)) {
            Entry::Occupied(at) => {
                let same = &mut self.flows[*at.get()];
                same.count += flow.count;
                same.first_seen = same.first_seen.clone().min(flow.first_seen);
                same.last_seen = same.last_seen.clone().max(flow.last_seen);
            }
            Entry::Vacant(at) => {
                at.insert(self.flows.len());
                self.flows.push(flow);
            }
        }
    }
}

/// Connections each endpoint has judged so far (counters only grow).
fn connections_judged(counters: &[(EndpointId, EndpointCounters)]) -> HashMap<EndpointId, u64> {
    counters.iter().map(|(id, c)| (*id, c.connections)).collect()
}

/// What the agent remembers of one rollout's audit between reports.
struct AuditState {
    /// When this node's continuous evidence for the candidate started.
    started_at: Timestamp,
    /// The rollout's `status.auditGeneration` the evidence is gathered for.
    generation: u64,
    /// Connections each endpoint had judged when the audit started.
    baseline: HashMap<EndpointId, u64>,
    /// Packets each flow had when the audit restarted on its own (the flows were not cleared):
    /// only what comes after is this audit's.
    flow_baseline: HashMap<FlowKey, u64>,
    /// Per flow: packets at the last report and when that count last grew.
    last_seen: HashMap<FlowKey, (u64, Timestamp)>,
    /// Requests the L7 proxy had counted per kind when the audit restarted on its own.
    l7_baseline: HashMap<L7Diff, u64>,
}

impl AuditState {
    /// The audit of one rollout starts again now, from the node's counters and flows as they
    /// are, leaving the other rollouts' audits alone.
    fn restarted(
        generation: u64,
        judged: &HashMap<EndpointId, u64>,
        (flows, l7): (&[Flow], &[(L7Diff, L7Seen)]),
        now: Timestamp,
    ) -> AuditState {
        AuditState {
            started_at: now,
            generation,
            baseline: judged.clone(),
            flow_baseline: flows.iter().map(|f| (f.key, f.packets)).collect(),
            last_seen: flows.iter().map(|f| (f.key, (f.packets, now))).collect(),
            l7_baseline: l7.iter().map(|(diff, seen)| (diff.clone(), seen.requests)).collect(),
        }
    }

    /// Packets of `flow` since the audit started; forgets the baseline of a flow the kernel
    /// forgot and counts afresh.
    fn packets_since_start(&mut self, flow: &Flow) -> u64 {
        let last = self.last_seen.get(&flow.key).map_or(0, |l| l.0);
        if flow.packets < last {
            self.flow_baseline.remove(&flow.key);
        }
        flow.packets.saturating_sub(self.flow_baseline.get(&flow.key).copied().unwrap_or(0))
    }
}

/// Whether every local endpoint holds the node's compiled sets: the enforced one in force, the
/// candidate (if any) beside it. Only then are their revisions loaded on this node.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoadedSets {
    pub(crate) enforced: bool,
    pub(crate) candidate: bool,
}

/// Builds the PolicyAuditReports from what the datapath recorded, remembering each rollout's
/// audit (since when, from which counters) and the node's drops between reports.
#[derive(Default)]
pub(crate) struct Reporter {
    audits: BTreeMap<ObjectKey, AuditState>,
    /// Connections each endpoint had judged when the candidate set last changed: an audit counts
    /// the traffic its candidate saw from there.
    baseline: HashMap<EndpointId, u64>,
    drops: RolloutDrops,
}

impl Reporter {
    /// The candidate set changed and is now whole in every slot: every audit starts afresh, from
    /// the endpoints' `counters` as they are.
    pub(crate) fn restart_audits(&mut self, counters: &[(EndpointId, EndpointCounters)]) {
        self.audits.clear();
        self.baseline = connections_judged(counters);
    }

    /// A rollout is gone, and so is its audit.
    pub(crate) fn forget(&mut self, rollout: &ObjectKey) {
        self.audits.remove(rollout);
        self.drops.forget(rollout);
    }

    /// One PolicyAuditReport per rollout that concerns this node ([`concerned`]), from the
    /// attached endpoints' `counters`, the `flows` the datapath recorded and the requests the L7
    /// proxy found judged otherwise (`l7`).
    pub(crate) fn reports(
        &mut self,
        view: &NodeView,
        loaded: LoadedSets,
        counters: &[(EndpointId, EndpointCounters)],
        (flows, l7): (&[Flow], &[(L7Diff, L7Seen)]),
        now: Timestamp,
    ) -> Vec<PolicyAuditReport> {
        let Some(compiled) = view.compiled else { return Vec::new() };
        let node = &view.node;
        let judged = connections_judged(counters);
        let drops = self.drops.per_minute(view, compiled, flows, now);
        let by_id: HashMap<EndpointId, &ObjectKey> = view.endpoints.iter().map(|&(pod, id)| (id, pod)).collect();
        let auditing: Vec<ObjectKey> =
            view.rollouts.iter().filter(|(_, t)| t.candidate.is_some()).map(|(k, _)| k.clone()).collect();
        let concerned = concerned(view, compiled);
        // Traced only for a candidate with a host policy, once for all the rollouts auditing one.
        let host_policies = |(key, targets): (&ObjectKey, &Targets)| carries_host_policy(view, key, targets);
        let control_plane = if view.rollouts.iter().any(host_policies) {
            control_plane::denies(compiled, view.health_port, now)
        } else {
            Vec::new()
        };
        // Evidence starts again should the rollout concern the node again.
        self.audits.retain(|key, _| concerned.contains(key));
        let mut reports = Vec::new();
        for (key, targets) in view.rollouts.iter().filter(|(key, _)| concerned.contains(key)) {
            let enforced_everywhere = |id: &String| loaded.enforced && compiled.enforced_revisions.contains(id);
            let audited_everywhere = |id: &String| loaded.candidate && compiled.candidate_revisions.contains(id);
            let enforced_revision = targets.enforced.clone().filter(enforced_everywhere);
            let candidate = targets.candidate.clone().filter(audited_everywhere);
            let mut loaded_revisions: Vec<String> = enforced_revision.iter().chain(&candidate).cloned().collect();
            loaded_revisions.dedup();
            let drops_per_minute = drops.get(key).copied().unwrap_or(0);
            let mut spec = PolicyAuditReportSpec {
                rollout: key.1.clone(),
                node: node.clone(),
                candidate_revision: candidate.clone(),
                loaded_revisions,
                enforced_revision,
                audit_generation: targets.audit_generation,
                totals: AuditTotals { drops_per_minute, ..AuditTotals::default() },
                ..PolicyAuditReportSpec::default()
            };
            if candidate.is_some() {
                let audit = self.audits.entry(key.clone()).or_insert_with(|| AuditState {
                    started_at: now,
                    generation: targets.audit_generation,
                    baseline: self.baseline.clone(),
                    flow_baseline: HashMap::new(),
                    last_seen: HashMap::new(),
                    l7_baseline: HashMap::new(),
                });
                if audit.generation != targets.audit_generation {
                    *audit = AuditState::restarted(targets.audit_generation, &judged, (flows, l7), now);
                }
                spec.audit_started_at = Some(Time(audit.started_at));
                let mine =
                    |flow: &Flow| attributed(compiled, (flow.candidate_cookie, flow.enforced_cookie), key, &auditing);
                let mut listed = NodeFlows::default();
                for flow in flows.iter().filter(|f| differs(f) && mine(f)) {
                    let Some(pod) = by_id.get(&flow.key.endpoint) else { continue };
                    let count = audit.packets_since_start(flow);
                    let older_than_audit = audit.flow_baseline.contains_key(&flow.key);
                    let last = audit.last_seen.entry(flow.key).or_insert((0, now));
                    if flow.packets != last.0 {
                        *last = (flow.packets, now);
                    }
                    if count == 0 {
                        continue;
                    }
                    let mut first_seen = boot_time_to_wall(flow.first_seen_ns, now);
                    if older_than_audit {
                        // A flow older than a restarted audit is its evidence from the restart on.
                        first_seen = first_seen.max(audit.started_at);
                    }
                    let candidate_denies = flow.key.candidate_verdict().is_some_and(dp::Verdict::drops);
                    let cookies = (flow.candidate_cookie, flow.enforced_cookie);
                    listed.add(AuditFlow {
                        direction: direction(flow.key.direction()),
                        subject: subject(compiled, pod),
                        peer: peer(&compiled.enforced, flow.key.identity),
                        port: flow.key.dport,
                        protocol: protocol(flow.key.protocol()),
                        enforced_verdict: verdict(Some(flow.key.enforced_verdict())),
                        candidate_verdict: verdict(flow.key.candidate_verdict()),
                        count,
                        first_seen: Time(first_seen),
                        last_seen: Time(last.1),
                        rule: Some(deciding_rule(compiled, candidate_denies, cookies)),
                        http: None,
                        dns: None,
                        tls: None,
                        kafka: None,
                    });
                }
                for (diff, seen) in l7 {
                    if !attributed(compiled, (diff.candidate_cookie, diff.enforced_cookie), key, &auditing) {
                        continue;
                    }
                    let count = seen.requests.saturating_sub(audit.l7_baseline.get(diff).copied().unwrap_or(0));
                    if count == 0 {
                        continue;
                    }
                    listed.add(l7_flow(compiled, diff, seen, count, audit.started_at));
                }
                let mut listed = listed.flows;
                let new_denies = listed.iter().filter(|f| f.candidate_verdict == Verdict::Deny).count() as u64;
                spec.totals.new_denies = new_denies;
                spec.totals.new_allows = listed.len() as u64 - new_denies;
                listed.sort_by_key(|f| std::cmp::Reverse(f.count));
                spec.totals.truncated_flows = listed.len().saturating_sub(AUDIT_FLOW_CAP) as u64;
                listed.truncate(AUDIT_FLOW_CAP);
                spec.flows = listed;
                if carries_host_policy(view, key, targets) {
                    spec.control_plane_denies = control_plane.clone();
                }
                for &(pod, endpoint) in &view.endpoints {
                    if !audited_here(compiled, pod) {
                        continue;
                    }
                    let count = |judged: &HashMap<EndpointId, u64>| judged.get(&endpoint).copied().unwrap_or(0);
                    let seen = count(&judged).saturating_sub(count(&audit.baseline));
                    spec.totals.observed_flows += seen;
                    // The node is no workload: its traffic counts, but no minimum is asked of it.
                    if is_host(pod) {
                        continue;
                    }
                    spec.endpoints.push(EndpointTraffic {
                        namespace: pod.0.clone(),
                        pod: pod.1.clone(),
                        workload: Some(workload_of(&pod.1)),
                        flows: seen,
                    });
                }
            } else {
                self.audits.remove(key);
            }
            let metadata = ObjectMeta {
                name: Some(report_name(&key.1, node)),
                namespace: Some(key.0.clone()),
                labels: Some(BTreeMap::from([
                    (palisade_rollout::wire::ROLLOUT_LABEL.to_string(), key.1.clone()),
                    (palisade_rollout::wire::NODE_LABEL.to_string(), node.clone()),
                ])),
                ..ObjectMeta::default()
            };
            reports.push(PolicyAuditReport { metadata, spec });
        }
        reports
    }
}

/// Whether the candidate `rollout` audits has a host policy: the node's control-plane checks
/// are its to pass.
fn carries_host_policy(view: &NodeView, rollout: &ObjectKey, targets: &Targets) -> bool {
    let revision = targets.candidate.as_ref().and_then(|id| view.revisions.get(&(rollout.0.clone(), id.clone())));
    revision.is_some_and(|r| r.policies.as_ref().is_ok_and(|set| set.policies.iter().any(|p| p.is_host_policy())))
}

/// The rollouts that concern this node: those whose enforced or candidate revision selects one
/// of its endpoints, and those it cannot judge yet because a revision they name is not compiled
/// here (the node must then hold their barrier). Without a node name (local mode) the node is the
/// whole cluster and in every rollout's barrier.
fn concerned<'v>(view: &NodeView<'v>, compiled: &Compiled) -> BTreeSet<&'v ObjectKey> {
    if view.whole_cluster {
        return view.rollouts.keys().collect();
    }
    let sets = [(Some(&compiled.enforced), ENFORCED_SET), (compiled.candidate.as_ref(), CANDIDATE_SET)];
    let mut selecting: BTreeSet<&ObjectKey> = BTreeSet::new();
    for (engine, set) in sets.into_iter().filter_map(|(engine, set)| Some((engine?, set))) {
        let policies = &engine.policies().policies;
        for (key, _) in &view.endpoints {
            let Some(identity) = identity_of(engine, key) else { continue };
            for (index, policy) in policies.iter().enumerate() {
                if policy.rules.iter().any(|rule| rule.selects(identity))
                    && let Some(rollout) = compiled.origins[set].get(index)
                {
                    selecting.insert(rollout);
                }
            }
        }
    }
    let compiled_here = |id: &Option<String>, revisions: &[String]| id.as_ref().is_none_or(|id| revisions.contains(id));
    view.rollouts
        .iter()
        .filter(|(key, targets)| {
            selecting.contains(key)
                || !compiled_here(&targets.enforced, &compiled.enforced_revisions)
                || !compiled_here(&targets.candidate, &compiled.candidate_revisions)
        })
        .map(|(key, _)| key)
        .collect()
}

/// The endpoint a flow was seen at: a pod by its labels and workload, or the node itself as
/// `reserved:host` (the same subject on every node: a flow many nodes see is one flow).
fn subject(compiled: &Compiled, pod: &ObjectKey) -> FlowEndpoint {
    if is_host(pod) {
        return control_plane::reserved("host", None);
    }
    let labels = compiled.enforced.cluster.pod(&pod.0, &pod.1).map(|p| p.labels.clone()).unwrap_or_default();
    FlowEndpoint { labels, namespace: Some(pod.0.clone()), workload: Some(workload_of(&pod.1)), cidr: None }
}

/// `<rollout>-<node>`, within the 253 characters of an object name.
pub fn report_name(rollout: &str, node: &str) -> String {
    let name = format!("{rollout}-{node}");
    name.chars().take(253).collect()
}

fn differs(flow: &Flow) -> bool {
    flow.key.candidate_verdict().is_some_and(|candidate| candidate.drops() != flow.key.enforced_verdict().drops())
}

/// Requests of one kind the L7 proxy saw the candidate judge otherwise, as a report lists them.
fn l7_flow(compiled: &Compiled, diff: &L7Diff, seen: &L7Seen, count: u64, audit_start: Timestamp) -> AuditFlow {
    let verdict = |allows: bool| if allows { Verdict::Allow } else { Verdict::Deny };
    let cookies = (diff.candidate_cookie, diff.enforced_cookie);
    AuditFlow {
        direction: direction(diff.direction),
        subject: subject(compiled, &(diff.namespace.clone(), diff.pod.clone())),
        peer: peer(&compiled.enforced, diff.peer_identity),
        port: diff.port,
        protocol: protocol(Ok(diff.protocol)),
        enforced_verdict: verdict(diff.enforced_allows),
        candidate_verdict: verdict(diff.candidate_allows),
        count,
        first_seen: Time(seen.first_seen.max(audit_start)),
        last_seen: Time(seen.last_seen),
        rule: Some(deciding_rule(compiled, !diff.candidate_allows, cookies)),
        http: match &diff.request {
            RequestKind::Http { method, path } => Some(HttpRequestKind { method: method.clone(), path: path.clone() }),
            _ => None,
        },
        dns: match &diff.request {
            RequestKind::Dns { query } => Some(DnsQueryKind { query: query.clone() }),
            _ => None,
        },
        tls: match &diff.request {
            RequestKind::Tls { server_name } => Some(TlsServerKind { server_name: server_name.clone() }),
            _ => None,
        },
        kafka: match &diff.request {
            RequestKind::Kafka { api_key, topics } => {
                Some(KafkaRequestKind { api_key: api_key.clone(), topics: topics.clone() })
            }
            _ => None,
        },
    }
}

/// The rule a report names for a differing flow: the candidate's when it denies, else the
/// enforced one's (`cookies`: the candidate's and the enforced rule's).
fn deciding_rule(compiled: &Compiled, candidate_denies: bool, (candidate, enforced): (u32, u32)) -> String {
    if candidate_denies {
        compiled.candidate_engine().policies().describe_cookie(candidate)
    } else {
        compiled.enforced.policies().describe_cookie(enforced)
    }
}

fn direction(direction: dp::Direction) -> Direction {
    match direction {
        dp::Direction::Ingress => Direction::Ingress,
        dp::Direction::Egress => Direction::Egress,
    }
}

/// Whether a differing flow (the candidate's and the enforced rule's cookies) belongs to
/// `rollout`'s audit: the rollout of the rule that decided either way; a flow no rule decided
/// (default deny, no policy) belongs to every audit.
fn attributed(
    compiled: &Compiled,
    (candidate, enforced): (u32, u32),
    rollout: &ObjectKey,
    auditing: &[ObjectKey],
) -> bool {
    let origins = [compiled.origin(CANDIDATE_SET, candidate), compiled.origin(ENFORCED_SET, enforced)];
    if origins.iter().all(Option::is_none) {
        return auditing.contains(rollout);
    }
    origins.contains(&Some(rollout))
}

/// Endpoints the candidate set applies policy to, or whose policy it changes.
fn audited_here(compiled: &Compiled, pod: &ObjectKey) -> bool {
    let Some(candidate) = compiled.candidate.as_ref().and_then(|c| group_of(c, pod)) else { return false };
    let selected = [&candidate.ingress, &candidate.egress].iter().any(|d| d.enforcement != Enforcement::NotEnforced);
    // Entries are compared last, and only then between two unselected sides (a handful of
    // entries): comparing a selected endpoint's entries costs up to a millisecond per report.
    selected
        || group_of(&compiled.enforced, pod).is_none_or(|enforced| {
            [(&enforced.ingress, &candidate.ingress), (&enforced.egress, &candidate.egress)].iter().any(
                |(enforced, candidate)| {
                    enforced.enforcement != candidate.enforcement || enforced.entries() != candidate.entries()
                },
            )
        })
}

fn peer(engine: &CompiledPolicy, identity: u32) -> FlowEndpoint {
    let Some(found) = engine.identities().get(identity) else {
        return FlowEndpoint {
            labels: BTreeMap::from([("identity".into(), identity.to_string())]),
            ..Default::default()
        };
    };
    if let Some(namespace) = &found.namespace {
        let labels = found.labels.user_labels().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        return FlowEndpoint { labels, namespace: Some(namespace.clone()), ..Default::default() };
    }
    let labels = found
        .labels
        .iter()
        .map(|(source, key, value)| (format!("{}:{key}", source.as_str()), value.to_owned()))
        .collect();
    FlowEndpoint { labels, cidr: found.prefix.map(|p| p.to_string()), ..Default::default() }
}

/// A redirect is judged by the L7 proxy; where no proxy can judge it, the datapath drops it as `l7-unsupported`.
fn verdict(verdict: Option<dp::Verdict>) -> Verdict {
    if verdict.is_some_and(dp::Verdict::drops) { Verdict::Deny } else { Verdict::Allow }
}

fn protocol(protocol: Result<dp::Protocol, dp::UnknownProtocol>) -> Protocol {
    match protocol {
        Ok(dp::Protocol::TCP) => Protocol::Tcp,
        Ok(dp::Protocol::UDP) => Protocol::Udp,
        Ok(dp::Protocol::SCTP) => Protocol::Sctp,
        Ok(dp::Protocol::ICMPv6) => Protocol::IcmpV6,
        _ => Protocol::Icmp,
    }
}

/// The kernel stamps flows with CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
pub(crate) fn boot_time_to_wall(stamp_ns: u64, now: Timestamp) -> Timestamp {
    let mut monotonic = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut monotonic) };
    let monotonic_ns = monotonic.tv_sec as u64 * 1_000_000_000 + monotonic.tv_nsec as u64;
    let ago = SignedDuration::from_nanos(monotonic_ns.saturating_sub(stamp_ns) as i64);
    now.checked_sub(ago).unwrap_or(now)
}

/// The workload a pod belongs to, from the name its controller generated: `api-7d9f8b6c4-x2k9p`
/// (Deployment), `agent-x2k9p` (DaemonSet, Job) and `db-0` (StatefulSet) name `api`, `agent`, `db`.
pub fn workload_of(pod: &str) -> String {
    let generated = |part: &str, lengths: std::ops::RangeInclusive<usize>| {
        lengths.contains(&part.len()) && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    let parts: Vec<&str> = pod.split('-').collect();
    let keep = match parts.as_slice() {
        [.., hash, suffix] if parts.len() > 2 && generated(hash, 6..=10) && generated(suffix, 5..=5) => parts.len() - 2,
        [.., suffix] if parts.len() > 1 && generated(suffix, 5..=5) => parts.len() - 1,
        [.., ordinal] if parts.len() > 1 && ordinal.bytes().all(|b| b.is_ascii_digit()) => parts.len() - 1,
        _ => parts.len(),
    };
    parts[..keep].join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_come_from_generated_names() {
        assert_eq!(workload_of("api-7d9f8b6c4-x2k9p"), "api");
        assert_eq!(workload_of("node-agent-x2k9p"), "node-agent");
        assert_eq!(workload_of("postgres-0"), "postgres");
        assert_eq!(workload_of("client"), "client");
        assert_eq!(workload_of("front-end"), "front-end");
    }
}
