//! The agent's logic against in-memory inputs and a recording datapath: what it programs into
//! each endpoint's slots and the ipcache as pods, namespaces, revisions and rollouts change.
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use k8s_openapi::jiff::Timestamp;
use palisade_agent::observe::{FlowFilter, FlowVerdict, ObservedFlow, RolloutRef, VerdictFilter};
mod common;

use common::{db_policy, revision, rollout};
use palisade_agent::{Agent, AgentConfig, Change, Interface, InterfaceResolver, RecordingDataplane, SlotOp};
use palisade_common::{self as dp, FlowKey, PolicyEntry};
use palisade_datapath::{Flow, Slot};
use palisade_policy::cluster::{Cluster, Pod};
use palisade_policy::{CompileOptions, CompiledPolicy, IdentityBasis, ParseOptions, SourceFile, parse_policies};
use palisade_rollout::crd::{PolicyDocument, Verdict};

const CLUSTER: &str = "kind: List
items:
- kind: Namespace
  metadata: {name: shop, labels: {team: shop}}
- kind: Pod
  metadata: {name: api-7d9f8b6c4-x2k9p, namespace: shop, labels: {app: api}}
  spec: {nodeName: n1}
  status: {podIP: 10.200.1.1}
- kind: Pod
  metadata: {name: db-0, namespace: shop, labels: {app: db}}
  spec: {nodeName: n1, containers: [{ports: [{name: pg, containerPort: 5432}]}]}
  status: {podIP: 10.200.1.2, podIPs: [{ip: 10.200.1.2}, {ip: 'fd00:200::1:2'}]}
- kind: Pod
  metadata: {name: web, namespace: shop, labels: {app: web}}
  spec: {nodeName: n2}
  status: {podIP: 10.200.2.1, podIPs: [{ip: 10.200.2.1}, {ip: 'fd00:200::2:1'}]}
";

fn cluster() -> Cluster {
    Cluster::parse(&[SourceFile { name: "cluster.yaml", text: CLUSTER }]).expect("cluster")
}

/// Pods' interfaces by address; an address missing here has no interface yet.
#[derive(Clone, Default)]
struct Wiring(Arc<Mutex<BTreeSet<Ipv4Addr>>>);

impl Wiring {
    fn all() -> Wiring {
        let wiring = Wiring::default();
        for ip in ["10.200.1.1", "10.200.1.2", "10.200.1.3", "10.200.2.1"] {
            wiring.0.lock().unwrap().insert(ip.parse().unwrap());
        }
        wiring
    }
}

impl InterfaceResolver for Wiring {
    fn interface(&self, ip: std::net::IpAddr) -> Option<Interface> {
        let std::net::IpAddr::V4(ip) = ip else {
            return None;
        };
        let name = format!("lxc{}", ip.octets()[3]);
        self.0.lock().unwrap().contains(&ip).then(|| Interface { index: RecordingDataplane::ifindex(&name), name })
    }
}

type TestAgent = Agent<RecordingDataplane, Wiring>;

fn agent() -> TestAgent {
    let config = AgentConfig { node: Some("n1".into()), ..AgentConfig::default() };
    let mut agent = Agent::new(config, RecordingDataplane::default(), Wiring::all());
    for namespace in cluster().namespaces.into_values() {
        agent.apply(Change::Namespace(namespace));
    }
    for pod in cluster().pods {
        agent.apply(Change::Pod(pod));
    }
    agent.apply(revision("db-r1", &db_policy(5432)));
    agent.apply(revision("db-r2", &db_policy(5433)));
    agent
}

fn synced(mut agent: TestAgent, changes: Vec<Change>) -> TestAgent {
    for change in changes {
        agent.apply(change);
    }
    agent.apply(Change::Synced);
    agent.converge().expect("converge");
    agent
}

/// Entries named by their peers' labels, so engines with different numbering compare.
fn described(engine: &CompiledPolicy, entries: &[PolicyEntry]) -> BTreeSet<String> {
    entries.iter().map(|e| engine.describe_entry(e)).collect()
}

/// What a fresh compile of `policies` over `cluster` gives the pod, described.
fn expected(policies: &str, cluster: Cluster, pod: &str) -> BTreeSet<String> {
    let parsed = parse_policies(&[SourceFile { name: "p.yaml", text: policies }], &ParseOptions::default());
    let options = CompileOptions { identity_basis: IdentityBasis::of([&parsed.set]), ..CompileOptions::default() };
    let engine = CompiledPolicy::with_options(parsed.set, cluster, options);
    let group = engine.endpoint("shop", pod).expect("endpoint").group;
    let mut entries = group.ingress.entries();
    entries.extend(group.egress.entries());
    described(&engine, &entries)
}

fn programmed(agent: &TestAgent, pod: &str, slot: Option<Slot>) -> BTreeSet<String> {
    let info = agent.endpoints().into_iter().find(|e| e.name == pod).expect("endpoint");
    let recorded = &agent.dataplane().endpoints[&info.id];
    let entries = recorded.entries(slot.unwrap_or(recorded.enforced.expect("enforced")));
    described(agent.enforced_engine().expect("compiled"), &entries)
}

fn enforced_slot(agent: &TestAgent, pod: &str) -> Slot {
    let info = agent.endpoints().into_iter().find(|e| e.name == pod).expect("endpoint");
    agent.dataplane().endpoints[&info.id].enforced.expect("enforced")
}

fn ops(agent: &mut TestAgent) -> Vec<SlotOp> {
    std::mem::take(&mut agent.dataplane_mut().log)
}

#[test]
fn nothing_is_programmed_before_the_initial_sync() {
    let mut agent = agent();
    agent.apply(rollout(Some("db-r1"), None));
    agent.converge().unwrap();
    assert!(agent.dataplane().log.is_empty());
}

#[test]
fn the_enforced_revision_is_programmed_for_local_endpoints_only() {
    let mut agent = synced(agent(), vec![rollout(Some("db-r1"), None)]);
    let names: Vec<String> = agent.endpoints().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["api-7d9f8b6c4-x2k9p", "db-0"], "web runs on another node");
    assert!(agent.endpoints().iter().all(|e| e.attached && e.candidate.is_none()));
    assert_eq!(programmed(&agent, "db-0", None), expected(&db_policy(5432), cluster(), "db-0"));
    assert_eq!(
        programmed(&agent, "api-7d9f8b6c4-x2k9p", None),
        expected(&db_policy(5432), cluster(), "api-7d9f8b6c4-x2k9p")
    );
    let ipcache = &agent.dataplane().ipcache;
    let prefixes: BTreeSet<String> = ipcache.keys().map(|(a, l)| format!("{a}/{l}")).collect();
    for pod in ["10.200.1.1/32", "10.200.1.2/32", "10.200.2.1/32", "fd00:200::1:2/128", "fd00:200::2:1/128"] {
        assert!(prefixes.contains(pod), "every address of every pod is in the ipcache: {prefixes:?}");
    }
    let at = |addr: &str, len| ipcache[&(addr.parse().unwrap(), len)];
    assert_eq!(at("fd00:200::2:1", 128), at("10.200.2.1", 32), "a dual-stack pod has one identity");
    assert_eq!(at("::", 0), dp::IDENTITY_WORLD_IPV6, "IPv6 outside the cluster is world-ipv6");
    let db = agent.endpoints().into_iter().find(|e| e.name == "db-0").expect("db-0");
    let recorded = &agent.dataplane().endpoints[&db.id];
    assert_eq!(
        (recorded.addrs.v4, recorded.addrs.v6),
        (Some("10.200.1.2".parse().unwrap()), Some("fd00:200::1:2".parse().unwrap())),
        "attached with both addresses: the only sources its packets may carry"
    );
    let log = ops(&mut agent);
    let attaches = log.iter().filter(|op| matches!(op, SlotOp::Attach(..))).count();
    assert_eq!(attaches, 2);
    let first_attach = log.iter().position(|op| matches!(op, SlotOp::Attach(..))).unwrap();
    assert!(log[..first_attach].iter().any(|op| matches!(op, SlotOp::Update { .. })), "policy before attach: {log:?}");
    agent.converge().unwrap();
    assert!(ops(&mut agent).is_empty(), "converging again changes nothing");
}

#[test]
fn a_rollout_waiting_for_its_enforced_revision_changes_nothing() {
    let mut agent = synced(agent(), vec![rollout(Some("db-r1"), None)]);
    ops(&mut agent);
    agent.apply(rollout(Some("db-r9"), None));
    agent.converge().unwrap();
    assert!(ops(&mut agent).is_empty(), "r9 is unknown: r1 stays as it is");
    assert_eq!(programmed(&agent, "db-0", None), expected(&db_policy(5432), cluster(), "db-0"));
}

#[test]
fn a_candidate_is_audited_beside_the_enforced_revision_then_flipped_to_and_back() {
    let mut agent = synced(agent(), vec![rollout(Some("db-r1"), None)]);
    ops(&mut agent);
    agent.apply(rollout(Some("db-r1"), Some("db-r2")));
    agent.converge().unwrap();
    let before = enforced_slot(&agent, "db-0");
    assert_eq!(programmed(&agent, "db-0", None), expected(&db_policy(5432), cluster(), "db-0"), "r1 still decides");
    assert_eq!(
        programmed(&agent, "db-0", Some(before.other())),
        expected(&db_policy(5433), cluster(), "db-0"),
        "r2 is shadowed"
    );
    assert!(agent.endpoints().iter().all(|e| e.candidate == Some(e.enforced.other())));
    let log = ops(&mut agent);
    assert!(!log.iter().any(|op| matches!(op, SlotOp::FlipAll(_))));
    let cleared = log.iter().position(|op| *op == SlotOp::ClearFlows).expect("the audit starts afresh");
    assert!(
        log[..cleared].iter().any(|op| matches!(op, SlotOp::SetCandidate(_, Some(_))))
            && !log[cleared..].iter().any(|op| matches!(op, SlotOp::Update { .. } | SlotOp::SetCandidate(..))),
        "differences are forgotten once the candidate is whole, not while it is written: {log:?}"
    );
    let report = &agent.reports(Timestamp::now()).unwrap()[0];
    assert_eq!(report.spec.loaded_revisions, ["db-r1", "db-r2"], "the barrier: both loaded");
    assert_eq!(report.spec.candidate_revision.as_deref(), Some("db-r2"));
    assert_eq!(report.spec.enforced_revision.as_deref(), Some("db-r1"));
    assert_eq!(report.metadata.name.as_deref(), Some("db-n1"));

    // The controller promotes: the candidate becomes the enforced revision.
    agent.apply(rollout(Some("db-r2"), Some("db-r2")));
    agent.converge().unwrap();
    let log = ops(&mut agent);
    let flips: Vec<&SlotOp> = log.iter().filter(|op| matches!(op, SlotOp::FlipAll(_))).collect();
    assert_eq!(flips.len(), 1, "one node-wide flip: {log:?}");
    let db = agent.endpoints().into_iter().find(|e| e.name == "db-0").unwrap().id;
    assert_eq!(flips[0], &SlotOp::FlipAll(vec![db]), "db flips; api's policy is the same in both revisions");
    let flip_at = log.iter().position(|op| matches!(op, SlotOp::FlipAll(_))).unwrap();
    assert!(
        !log[..flip_at].iter().any(|op| matches!(op, SlotOp::Update { .. })),
        "the candidate slot already held r2: nothing is written before the flip: {log:?}"
    );
    assert_eq!(enforced_slot(&agent, "db-0"), before.other());
    assert_eq!(programmed(&agent, "db-0", None), expected(&db_policy(5433), cluster(), "db-0"));
    let report = &agent.reports(Timestamp::now()).unwrap()[0];
    assert_eq!(report.spec.enforced_revision.as_deref(), Some("db-r2"), "the node confirms the flip");
    assert!(agent.endpoints().iter().all(|e| e.candidate.is_none()), "nothing left to audit");

    // Rollback: r1 is still in the idle slot, so going back is a flip too.
    agent.apply(rollout(Some("db-r1"), None));
    agent.converge().unwrap();
    let log = ops(&mut agent);
    assert!(log.iter().any(|op| matches!(op, SlotOp::FlipAll(_))), "{log:?}");
    assert!(!log.iter().any(|op| matches!(op, SlotOp::Update { .. })), "no rewrite for a rollback: {log:?}");
    assert_eq!(programmed(&agent, "db-0", None), expected(&db_policy(5432), cluster(), "db-0"));
}

#[test]
fn pods_coming_going_and_relabelled_change_slots_in_place() {
    let mut agent = synced(agent(), vec![rollout(Some("db-r1"), None)]);
    ops(&mut agent);
    // A second API pod: a new address for the same identity, no entry changes.
    let mut api2: Pod = cluster().pods[0].clone();
    api2.name = "api-7d9f8b6c4-abcde".into();
    api2.ips = vec!["10.200.1.3".parse().unwrap()];
    agent.apply(Change::Pod(api2.clone()));
    agent.converge().unwrap();
    let log = ops(&mut agent);
    assert!(log.contains(&SlotOp::Ipcache(
        "10.200.1.3".parse().unwrap(),
        32,
        Some(agent.enforced_engine().unwrap().identity_of_pod(&api2).unwrap())
    )));
    assert!(log.iter().any(|op| matches!(op, SlotOp::Attach(_, name) if name == "lxc3")), "{log:?}");
    assert!(!log.iter().any(|op| matches!(op, SlotOp::FlipAll(_))));

    // The web pod (another node) takes the api label: db's slot gains it, in place.
    let mut web = cluster().pods[2].clone();
    web.labels.insert("app".into(), "api".into());
    agent.apply(Change::Pod(web.clone()));
    agent.converge().unwrap();
    let log = ops(&mut agent);
    assert!(!log.iter().any(|op| matches!(op, SlotOp::FlipAll(_))), "not a new revision: no flip: {log:?}");
    let mut now = cluster();
    now.pods[2] = web;
    now.pods.push(api2);
    assert_eq!(programmed(&agent, "db-0", None), expected(&db_policy(5432), now.clone(), "db-0"));

    // Relabelling the namespace changes nothing these selectors look at; deleting a pod detaches it.
    let mut namespace = now.namespaces["shop"].clone();
    namespace.labels.insert("tier".into(), "gold".into());
    agent.apply(Change::Namespace(namespace.clone()));
    agent.apply(Change::PodDeleted { namespace: "shop".into(), name: "api-7d9f8b6c4-abcde".into() });
    agent.converge().unwrap();
    let log = ops(&mut agent);
    assert!(log.iter().any(|op| matches!(op, SlotOp::Detach(_))), "{log:?}");
    assert!(log.contains(&SlotOp::Ipcache("10.200.1.3".parse().unwrap(), 32, None)));
    now.namespaces.insert("shop".into(), namespace);
    now.pods.pop();
    assert_eq!(programmed(&agent, "db-0", None), expected(&db_policy(5432), now, "db-0"));
}

#[test]
fn a_pod_is_attached_once_its_interface_exists() {
    let wiring = Wiring::default();
    let config = AgentConfig { node: Some("n1".into()), ..AgentConfig::default() };
    let mut agent = Agent::new(config, RecordingDataplane::default(), wiring.clone());
    for pod in cluster().pods {
        agent.apply(Change::Pod(pod));
    }
    agent.apply(revision("db-r1", &db_policy(5432)));
    let mut agent = synced(agent, vec![rollout(Some("db-r1"), None)]);
    assert!(agent.endpoints().iter().all(|e| !e.attached), "no interfaces yet");
    assert!(!ops(&mut agent).iter().any(|op| matches!(op, SlotOp::Attach(..))));
    wiring.0.lock().unwrap().insert("10.200.1.2".parse().unwrap());
    agent.converge().unwrap();
    assert_eq!(ops(&mut agent), [SlotOp::Attach(1, "lxc2".into())]);
}

#[test]
fn a_restarted_agent_adopts_the_pinned_state_without_touching_it() {
    let mut first = synced(agent(), vec![rollout(Some("db-r1"), Some("db-r2"))]);
    ops(&mut first);
    let dataplane = std::mem::take(first.dataplane_mut());
    let config = AgentConfig { node: Some("n1".into()), ..AgentConfig::default() };
    let mut second = Agent::new(config, dataplane, Wiring::all());
    for pod in cluster().pods {
        second.apply(Change::Pod(pod));
    }
    for namespace in cluster().namespaces.into_values() {
        second.apply(Change::Namespace(namespace));
    }
    second.apply(revision("db-r2", &db_policy(5433)));
    second.apply(revision("db-r1", &db_policy(5432)));
    // A difference the kernel recorded before the restart (a deny of the candidate).
    let recorded = Flow {
        key: FlowKey {
            endpoint: 1,
            identity: 256,
            dport: 5432,
            protocol: dp::PROTO_TCP,
            direction: dp::DIRECTION_INGRESS,
            enforced_verdict: dp::VERDICT_ALLOW,
            candidate_verdict: dp::VERDICT_DENY,
            mode: dp::MODE_ENFORCE,
            reason: dp::DROP_NONE,
        },
        packets: 3,
        first_seen_ns: 0,
        enforced_cookie: 0,
        candidate_cookie: 0,
    };
    second.dataplane_mut().flows = vec![recorded];
    let mut second = synced(second, vec![rollout(Some("db-r1"), Some("db-r2"))]);
    let log = ops(&mut second);
    assert!(
        log.iter().all(|op| matches!(op, SlotOp::Ipcache(..))),
        "slots, candidates and attachments are adopted as they are, and what the kernel recorded is kept: {log:?}"
    );
    assert_eq!(second.dataplane().flows, [recorded], "the candidate's evidence survives the restart");
    assert_eq!(programmed(&second, "db-0", None), expected(&db_policy(5432), cluster(), "db-0"));
    let report = &second.reports(Timestamp::now()).unwrap()[0];
    assert_eq!(report.spec.loaded_revisions, ["db-r1", "db-r2"]);
}

#[test]
fn the_audit_report_names_newly_denied_flows_by_labels_and_rule() {
    let mut agent = synced(agent(), vec![rollout(Some("db-r1"), Some("db-r2"))]);
    let engine = agent.enforced_engine().unwrap();
    let api = engine.identity_of_pod(&cluster().pods[0]).unwrap();
    let db = agent.endpoints().into_iter().find(|e| e.name == "db-0").unwrap().id;
    let candidate_cookie = agent
        .candidate_engine()
        .unwrap()
        .endpoint("shop", "db-0")
        .unwrap()
        .group
        .ingress
        .lookup(api, dp::Protocol::TCP, 5432)
        .map_or(dp::COOKIE_NONE, |e| e.value.cookie);
    let flow = |packets: u64, enforced: u8, candidate: u8| Flow {
        key: FlowKey {
            endpoint: db,
            identity: api,
            dport: 5432,
            protocol: dp::PROTO_TCP,
            direction: dp::DIRECTION_INGRESS,
            enforced_verdict: enforced,
            candidate_verdict: candidate,
            mode: 0,
            reason: dp::verdict_drop_reason(enforced),
        },
        packets,
        first_seen_ns: 0,
        enforced_cookie: 4096,
        candidate_cookie,
    };
    agent.dataplane_mut().flows = vec![flow(7, dp::VERDICT_ALLOW, dp::VERDICT_DENY)];
    let report = &agent.reports(Timestamp::now()).unwrap()[0].spec;
    assert_eq!(report.totals.new_denies, 1);
    let listed = &report.flows[0];
    assert_eq!((listed.enforced_verdict, listed.candidate_verdict, listed.count), (Verdict::Allow, Verdict::Deny, 7));
    assert_eq!(listed.peer.labels.get("app").map(String::as_str), Some("api"));
    assert_eq!(listed.peer.namespace.as_deref(), Some("shop"));
    assert_eq!(listed.subject.workload.as_deref(), Some("db"));
    assert_eq!(listed.port, 5432);
    assert!(listed.rule.as_deref().is_some_and(|r| r.contains("default deny")), "{:?}", listed.rule);
    assert!(report.endpoints.iter().any(|e| e.pod == "db-0"), "db is what the candidate selects");
    assert!(!report.endpoints.iter().any(|e| e.pod.starts_with("api")), "api's policy does not change");
}

#[test]
fn the_audit_counts_the_connections_judged_since_its_candidate_arrived() {
    let mut agent = synced(agent(), vec![rollout(Some("db-r1"), None)]);
    let db = agent.endpoints().into_iter().find(|e| e.name == "db-0").unwrap().id;
    let judged = |connections| dp::EndpointCounters { connections, ..Default::default() };
    agent.dataplane_mut().counters.insert(db, judged(5));
    agent.apply(rollout(Some("db-r1"), Some("db-r2")));
    agent.converge().expect("converge");
    agent.dataplane_mut().counters.insert(db, judged(12));
    let report = &agent.reports(Timestamp::now()).unwrap()[0].spec;
    let traffic = report.endpoints.iter().find(|e| e.pod == "db-0").expect("db is audited");
    assert_eq!((traffic.flows, report.totals.observed_flows), (7, 7), "connections before the candidate are not its");
}

#[test]
fn the_runtime_converges_on_changes_and_publishes_reports_when_revisions_load() {
    use palisade_agent::runtime::{RuntimeOptions, spawn};
    let options = RuntimeOptions { report_interval: std::time::Duration::from_secs(3600), ..RuntimeOptions::default() };
    let mut handle = spawn(agent(), options).expect("spawn");
    handle.changes.send(rollout(Some("db-r1"), Some("db-r2"))).unwrap();
    handle.changes.send(Change::Synced).unwrap();
    // Before the sync (if the rollout's change is taken alone) a report has nothing to say.
    let reports = std::iter::from_fn(|| handle.reports.blocking_recv())
        .find(|reports| !reports.is_empty())
        .expect("a report without waiting for the interval");
    assert_eq!(reports[0].spec.loaded_revisions, ["db-r1", "db-r2"]);
    drop(handle.changes);
    handle.thread.join().unwrap().unwrap();
}

/// What the kernel would send for the first packet of `from` -> `to`:`port`/TCP into `to`.
fn ingress_event(agent: &TestAgent, from: &str, to: &str, port: u16, verdicts: [(u8, u32); 2]) -> dp::FlowEvent {
    let ip = |name: &str| cluster().pods.iter().find(|p| p.name == name).and_then(|p| p.ipv4()).expect("pod ip");
    let endpoint = agent.endpoints().into_iter().find(|e| e.name == to).expect("endpoint").id;
    let identity = agent.dataplane().ipcache[&(ip(from).into(), 32)];
    let [(enforced_verdict, enforced_cookie), (candidate_verdict, candidate_cookie)] = verdicts;
    dp::FlowEvent {
        flow: FlowKey {
            endpoint,
            identity,
            dport: port,
            protocol: dp::PROTO_TCP,
            direction: dp::DIRECTION_INGRESS,
            enforced_verdict,
            candidate_verdict,
            mode: dp::MODE_ENFORCE,
            reason: dp::verdict_drop_reason(enforced_verdict),
        },
        saddr: dp::event_words(ip(from).into()),
        daddr: dp::event_words(ip(to).into()),
        enforced_cookie,
        candidate_cookie,
        service_addr: [0; 4],
        service_port: 0,
        _pad: 0,
        _pad2: 0,
        timestamp_ns: 0,
    }
}

/// The cookie of the rule that lets `port` into db-0 in its enforced slot.
fn allow_cookie(agent: &TestAgent, port: u16) -> u32 {
    let db = agent.endpoints().into_iter().find(|e| e.name == "db-0").expect("db").id;
    let entries = agent.dataplane().endpoints[&db].enforced_entries();
    let entry = entries
        .iter()
        .find(|e| {
            e.value.verdict() == dp::Verdict::Allow
                && e.key.protocol() == Some(dp::Protocol::TCP)
                && e.key.port() == port
        })
        .expect("an entry allowing the port");
    entry.value.cookie
}

#[test]
fn a_shadow_difference_is_observed_with_both_pods_rules_and_revisions() {
    let agent = synced(agent(), vec![rollout(Some("db-r1"), Some("db-r2"))]);
    let cookie = allow_cookie(&agent, 5432);
    let event = ingress_event(
        &agent,
        "api-7d9f8b6c4-x2k9p",
        "db-0",
        5432,
        [(dp::VERDICT_ALLOW, cookie), (dp::VERDICT_DENY, dp::COOKIE_NONE)],
    );
    let flow = agent.observe(&event, Timestamp::now());
    assert_eq!(flow.verdict, FlowVerdict::Forwarded);
    assert_eq!(flow.direction, "ingress");
    assert_eq!(
        (flow.source.namespace.as_deref(), flow.source.pod.as_deref(), flow.source.ip),
        (Some("shop"), Some("api-7d9f8b6c4-x2k9p"), "10.200.1.1".parse().unwrap())
    );
    assert_eq!(flow.source.workload.as_deref(), Some("api"));
    assert_eq!((flow.destination.pod.as_deref(), flow.destination.ip), (Some("db-0"), "10.200.1.2".parse().unwrap()));
    assert_eq!(flow.destination.labels.get("app").map(String::as_str), Some("db"));
    assert_eq!((flow.port, flow.protocol.as_str()), (5432, "TCP"));
    assert_eq!(flow.decided_by.policy.as_deref(), Some("CiliumNetworkPolicy shop/db"));
    assert_eq!(flow.decided_by.rule.as_deref(), Some("spec.ingress[0]"));
    let candidate = flow.candidate.as_ref().expect("a candidate verdict");
    assert!(candidate.differs && flow.differs());
    assert_eq!(candidate.verdict, FlowVerdict::Dropped);
    assert!(candidate.decided_by.description.contains("default deny"), "{:?}", candidate.decided_by);
    assert_eq!(flow.rollout, Some(RolloutRef { namespace: "shop".into(), name: "db".into() }));
    assert_eq!(flow.enforced_revision.as_deref(), Some("main@db-r1"));
    assert_eq!(flow.candidate_revision.as_deref(), Some("main@db-r2"));
    assert!(FlowFilter { verdict: Some(VerdictFilter::Diff), ..FlowFilter::default() }.matches(&flow));
    assert!(!FlowFilter { verdict: Some(VerdictFilter::Dropped), ..FlowFilter::default() }.matches(&flow));
    assert!(FlowFilter { pod: Some("shop/api".into()), ..FlowFilter::default() }.matches(&flow));
    assert!(!FlowFilter { pod: Some("web".into()), ..FlowFilter::default() }.matches(&flow));
    let json = serde_json::to_string(&flow).unwrap();
    assert_eq!(serde_json::from_str::<ObservedFlow>(&json).unwrap(), flow, "{json}");
}

#[test]
fn a_drop_from_a_remote_pod_is_observed_by_name_and_default_deny() {
    let agent = synced(agent(), vec![rollout(Some("db-r1"), None)]);
    let event =
        ingress_event(&agent, "web", "db-0", 5432, [(dp::VERDICT_DENY, dp::COOKIE_NONE), (dp::VERDICT_NONE, 0)]);
    let flow = agent.observe(&event, Timestamp::now());
    assert_eq!(flow.verdict, FlowVerdict::Dropped);
    assert_eq!(flow.source.name(), "shop/web", "a pod on another node is still named");
    assert_eq!(flow.destination.name(), "shop/db-0");
    assert_eq!(flow.decided_by.policy, None);
    assert!(flow.decided_by.description.contains("default deny"), "{:?}", flow.decided_by);
    assert_eq!(flow.candidate, None);
    assert_eq!(flow.rollout.as_ref().map(|r| r.name.as_str()), Some("db"), "the only rollout");
    assert_eq!((flow.enforced_revision.as_deref(), flow.candidate_revision.as_deref()), (Some("main@db-r1"), None));
    assert!(FlowFilter { verdict: Some(VerdictFilter::Dropped), ..FlowFilter::default() }.matches(&flow));
    assert!(!FlowFilter { namespace: Some("other".into()), ..FlowFilter::default() }.matches(&flow));
    let mut audited = event;
    audited.flow.mode = dp::MODE_AUDIT;
    assert_eq!(agent.observe(&audited, Timestamp::now()).verdict, FlowVerdict::Audit);
}

#[test]
fn an_ipv6_flow_is_observed_by_pod_name_with_its_addresses_in_rfc_5952_form() {
    let agent = synced(agent(), vec![rollout(Some("db-r1"), None)]);
    let mut event =
        ingress_event(&agent, "web", "db-0", 5432, [(dp::VERDICT_DENY, dp::COOKIE_NONE), (dp::VERDICT_NONE, 0)]);
    let (web, db): (std::net::IpAddr, std::net::IpAddr) =
        ("fd00:200:0:0::2:1".parse().unwrap(), "fd00:200::1:2".parse().unwrap());
    (event.saddr, event.daddr) = (dp::event_words(web), dp::event_words(db));
    let flow = agent.observe(&event, Timestamp::now());
    assert_eq!((flow.source.name(), flow.destination.name()), ("shop/web".into(), "shop/db-0".into()));
    let json = serde_json::to_value(&flow).unwrap();
    assert_eq!(
        (json["source"]["ip"].as_str(), json["destination"]["ip"].as_str()),
        (Some("fd00:200::2:1"), Some("fd00:200::1:2")),
        "{json}"
    );
}

#[test]
fn the_runtime_publishes_the_datapaths_flow_events() {
    use palisade_agent::runtime::{RuntimeOptions, spawn};
    let agent = synced(agent(), vec![rollout(Some("db-r1"), None)]);
    let event =
        ingress_event(&agent, "web", "db-0", 5432, [(dp::VERDICT_DENY, dp::COOKIE_NONE), (dp::VERDICT_NONE, 0)]);
    let queue = agent.dataplane().events.clone();
    let handle = spawn(agent, RuntimeOptions::default()).expect("spawn");
    let (history, mut flows) = handle.flows.subscribe().expect("running");
    assert!(history.is_empty());
    queue.push(event);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let flow = loop {
        match flows.try_recv() {
            Ok(flow) => break flow,
            Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(5)),
            Err(e) => panic!("no flow published: {e}"),
        }
    };
    assert_eq!(
        (flow.verdict, flow.source.name(), flow.destination.name()),
        (FlowVerdict::Dropped, "shop/web".to_string(), "shop/db-0".to_string())
    );
    assert_eq!(handle.flows.subscribe().expect("running").0.len(), 1, "remembered for --last");
    drop(handle.changes);
    handle.thread.join().unwrap().unwrap();
    assert!(handle.flows.subscribe().is_none(), "observers' streams end with the agent");
}

/// Rollout `shop/db` enforcing `db-r1`, auditing `db-r2`, at audit generation `generation`.
fn auditing_at(generation: u64) -> Change {
    let mut rollout = common::rollout_of("shop", "db", Some("db-r1"), Some("db-r2"));
    rollout.status.as_mut().expect("status").audit_generation = generation;
    Change::Rollout(Box::new(rollout))
}

/// A flow into db-0 from api on 5432 that r1 allows and r2 would deny, seen `packets` times.
fn newly_denied(agent: &TestAgent, packets: u64) -> Flow {
    let api = agent.enforced_engine().unwrap().identity_of_pod(&cluster().pods[0]).unwrap();
    let db = agent.endpoints().into_iter().find(|e| e.name == "db-0").unwrap().id;
    Flow {
        key: FlowKey {
            endpoint: db,
            identity: api,
            dport: 5432,
            protocol: dp::PROTO_TCP,
            direction: dp::DIRECTION_INGRESS,
            enforced_verdict: dp::VERDICT_ALLOW,
            candidate_verdict: dp::VERDICT_DENY,
            mode: dp::MODE_ENFORCE,
            reason: dp::verdict_drop_reason(dp::VERDICT_ALLOW),
        },
        packets,
        first_seen_ns: 0,
        enforced_cookie: allow_cookie(agent, 5432),
        candidate_cookie: dp::COOKIE_NONE,
    }
}

#[test]
fn replicas_seeing_one_flow_make_one_entry_with_their_packets_summed() {
    let mut replica = cluster().pods.into_iter().find(|p| p.name == "db-0").unwrap();
    replica.name = "db-1".into();
    replica.ips = vec!["10.200.1.3".parse().unwrap()];
    let mut agent = synced(agent(), vec![Change::Pod(replica), auditing_at(1)]);
    let db_1 = agent.endpoints().into_iter().find(|e| e.name == "db-1").unwrap().id;
    let on_db_0 = newly_denied(&agent, 7);
    let on_db_1 = Flow { key: FlowKey { endpoint: db_1, ..on_db_0.key }, packets: 5, ..on_db_0 };
    agent.dataplane_mut().flows = vec![on_db_0, on_db_1];
    let report = agent.reports(Timestamp::now()).unwrap().remove(0).spec;
    assert_eq!(report.flows.len(), 1, "{:?}", report.flows);
    assert_eq!((report.totals.new_denies, report.flows[0].count), (1, 12));
    assert_eq!(report.flows[0].subject.workload.as_deref(), Some("db"));
    let audited: Vec<&str> = report.endpoints.iter().map(|e| e.pod.as_str()).collect();
    assert_eq!(audited, ["db-0", "db-1"], "the endpoints stay one by one");
}

#[test]
fn a_moved_audit_generation_restarts_the_audit_without_its_earlier_evidence() {
    let mut agent = synced(agent(), vec![auditing_at(1)]);
    let db = agent.endpoints().into_iter().find(|e| e.name == "db-0").unwrap().id;
    let judged = |connections| dp::EndpointCounters { connections, ..Default::default() };
    let start = Timestamp::now();
    agent.dataplane_mut().counters.insert(db, judged(5));
    agent.dataplane_mut().flows = vec![newly_denied(&agent, 7)];
    let report = agent.reports(start).unwrap().remove(0).spec;
    assert_eq!((report.audit_generation, report.audit_started_at.as_ref().map(|t| t.0)), (1, Some(start)));
    assert_eq!((report.totals.new_denies, report.flows[0].count, report.totals.observed_flows), (1, 7, 5));

    // The controller restarts the audit (a reaudit, a changed gate).
    ops(&mut agent);
    agent.apply(auditing_at(2));
    agent.converge().unwrap();
    assert!(!ops(&mut agent).contains(&SlotOp::ClearFlows), "other rollouts' evidence stays in the kernel");
    let restart = start + std::time::Duration::from_secs(30);
    let report = agent.reports(restart).unwrap().remove(0).spec;
    assert_eq!((report.audit_generation, report.audit_started_at.map(|t| t.0)), (2, Some(restart)));
    assert_eq!((report.totals.new_denies, report.totals.new_allows, report.totals.observed_flows), (0, 0, 0));
    assert!(report.flows.is_empty(), "nothing seen before the restart counts: {:?}", report.flows);

    // Only what grows after the restart is the restarted audit's evidence.
    agent.dataplane_mut().counters.insert(db, judged(9));
    agent.dataplane_mut().flows = vec![newly_denied(&agent, 10)];
    let later = restart + std::time::Duration::from_secs(10);
    let report = agent.reports(later).unwrap().remove(0).spec;
    assert_eq!(report.audit_started_at.map(|t| t.0), Some(restart), "the evidence is continuous from the restart");
    assert_eq!((report.totals.new_denies, report.flows[0].count, report.totals.observed_flows), (1, 3, 4));
    assert!(report.flows[0].first_seen.0 >= restart, "{:?}", report.flows[0].first_seen);
}

/// Rollout `shop/guard` enforcing one policy: nothing from `app: web` into the API pods.
fn guard() -> [Change; 2] {
    let policy = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: api-guard, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: api}}\n  ingressDeny: [{fromEndpoints: [{matchLabels: {app: web}}]}]\n";
    let document = PolicyDocument {
        kind: "CiliumNetworkPolicy".into(),
        name: "api-guard".into(),
        namespace: Some("shop".into()),
        content: policy.into(),
    };
    [
        Change::Revision(Box::new(common::revision_of("shop", "guard", "guard-r1", vec![document]))),
        Change::Rollout(Box::new(common::rollout_of("shop", "guard", Some("guard-r1"), None))),
    ]
}

#[test]
fn drops_count_for_the_rollout_whose_revision_caused_them() {
    let [revision, guard_rollout] = guard();
    let mut agent = synced(agent(), vec![rollout(Some("db-r1"), None), revision, guard_rollout]);
    let id = |name: &str| agent.endpoints().into_iter().find(|e| e.name == name).unwrap().id;
    let (api, db) = (id("api-7d9f8b6c4-x2k9p"), id("db-0"));
    let web = agent.dataplane().ipcache[&("10.200.2.1".parse().unwrap(), 32)];
    let guard_cookie = agent.dataplane().endpoints[&api]
        .enforced_entries()
        .iter()
        .find(|e| e.value.verdict() == dp::Verdict::Deny)
        .expect("the guard's deny entry")
        .value
        .cookie;
    let dropped = |endpoint, cookie, mode, packets| Flow {
        key: FlowKey {
            endpoint,
            identity: web,
            dport: 5432,
            protocol: dp::PROTO_TCP,
            direction: dp::DIRECTION_INGRESS,
            enforced_verdict: dp::VERDICT_DENY,
            candidate_verdict: dp::VERDICT_NONE,
            mode,
            reason: dp::verdict_drop_reason(dp::VERDICT_DENY),
        },
        packets,
        first_seen_ns: 0,
        enforced_cookie: cookie,
        candidate_cookie: dp::COOKIE_NONE,
    };
    let flows = |guarded, default_denied, audited| {
        vec![
            // web -> api: the guard's deny rule.
            dropped(api, guard_cookie, dp::MODE_ENFORCE, guarded),
            // web -> db: no rule of db-r1 allows it (default deny of the db it selects).
            dropped(db, dp::COOKIE_NONE, dp::MODE_ENFORCE, default_denied),
            // Audit mode drops nothing.
            dropped(db, dp::COOKIE_NONE, dp::MODE_AUDIT, audited),
        ]
    };
    let start = Timestamp::now();
    agent.dataplane_mut().flows = flows(10, 10, 0);
    agent.reports(start).unwrap();
    agent.dataplane_mut().flows = flows(40, 70, 500);
    let reports = agent.reports(start + std::time::Duration::from_secs(30)).unwrap();
    let drops = |rollout: &str| {
        reports.iter().find(|r| r.spec.rollout == rollout).expect("a report").spec.totals.drops_per_minute
    };
    assert_eq!(drops("db"), 120, "db-r1's default deny only, per minute");
    assert_eq!(drops("guard"), 60, "the guard's rule only, per minute");
}

#[test]
fn a_revision_whose_policies_do_not_hash_to_its_digest_is_refused() {
    let mut agent = synced(agent(), vec![rollout(Some("db-r1"), None)]);
    ops(&mut agent);
    // db-r1 rewritten in place: the policies of r2 under r1's name and digest.
    let (Change::Revision(mut tampered), Change::Revision(r2)) =
        (revision("db-r1", &db_policy(5432)), revision("db-r2", &db_policy(5433)))
    else {
        unreachable!()
    };
    tampered.spec.policies = r2.spec.policies.clone();
    agent.apply(Change::Revision(tampered));
    // A new revision naming r1's digest for r2's policies.
    let mut forged = r2;
    forged.metadata.name = Some("db-r3".into());
    forged.spec.digest = agent_digest_of_r1();
    agent.apply(Change::Revision(forged));
    agent.apply(rollout(Some("db-r3"), None));
    agent.converge().unwrap();
    assert!(ops(&mut agent).is_empty(), "neither is loaded, nothing half-applied");
    assert_eq!(programmed(&agent, "db-0", None), expected(&db_policy(5432), cluster(), "db-0"), "r1 as it was");
}

fn agent_digest_of_r1() -> String {
    let Change::Revision(r1) = revision("db-r1", &db_policy(5432)) else { unreachable!() };
    r1.spec.digest
}

/// Worker nodes take ssh from the cluster, nothing else (a host policy).
const WORKERS: &str = "apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: workers}
spec:
  nodeSelector: {matchLabels: {role: worker}}
  ingress:
  - fromEntities: [cluster]
    toPorts: [{ports: [{port: '22', protocol: TCP}]}]
";

/// Revision `name` of rollout `shop/db`: the db policy on 5433 and the workers' host policy.
fn with_host_policy(name: &str) -> Change {
    let document = |kind: &str, name: &str, namespace: Option<&str>, content: &str| PolicyDocument {
        kind: kind.into(),
        name: name.into(),
        namespace: namespace.map(Into::into),
        content: content.into(),
    };
    let documents = vec![
        document("CiliumNetworkPolicy", "db", Some("shop"), &db_policy(5433)),
        document("CiliumClusterwideNetworkPolicy", "workers", None, WORKERS),
    ];
    Change::Revision(Box::new(common::revision_of("shop", "db", name, documents)))
}

/// Node n1 (this node) with the label `role`.
fn node_n1(role: &str) -> Change {
    let node = palisade_policy::cluster::Node {
        name: "n1".into(),
        labels: [("role".to_string(), role.to_string())].into(),
        addresses: vec!["10.200.0.1".parse().unwrap()],
        internal_ip: Some("10.200.0.1".parse().unwrap()),
        internal_ipv6: None,
    };
    Change::Nodes(vec![node])
}

fn host_endpoint(agent: &TestAgent) -> Option<palisade_agent::EndpointInfo> {
    agent.endpoints().into_iter().find(|e| e.namespace.is_empty())
}

#[test]
fn a_host_policy_makes_the_node_an_endpoint_audited_then_flipped_with_the_pods() {
    let mut agent =
        synced(agent(), vec![node_n1("worker"), with_host_policy("h1"), rollout(Some("db-r1"), Some("h1"))]);
    let host = host_endpoint(&agent).expect("the node is an endpoint while a host policy selects it");
    assert_eq!(host.name, "n1");
    assert!(host.attached && agent.dataplane().log.contains(&SlotOp::AttachHost(host.id)));
    let recorded = &agent.dataplane().endpoints[&host.id];
    assert_eq!(recorded.ifindex, palisade_datapath::HOST_ENDPOINT_IFINDEX);
    let engine = agent.enforced_engine().unwrap();
    let enforced = described(engine, &recorded.enforced_entries());
    assert!(enforced.iter().all(|e| e.starts_with("any ")), "not in policy yet: the node allows all: {enforced:?}");
    let candidate = described(engine, &recorded.entries(host.candidate.expect("auditing")));
    assert!(candidate.iter().any(|e| e.contains("proto=TCP port=22/16")), "the host policy audited: {candidate:?}");
    assert!(!candidate.iter().any(|e| e.starts_with("any dir=ingress")), "ingress default deny: {candidate:?}");

    // Promoted: the node flips with the pods, in one step.
    agent.apply(rollout(Some("h1"), None));
    agent.converge().unwrap();
    let db = agent.endpoints().into_iter().find(|e| e.name == "db-0").unwrap();
    let flip = agent.dataplane().log.iter().rev().find_map(|op| match op {
        SlotOp::FlipAll(ids) => Some(ids.clone()),
        _ => None,
    });
    assert!(flip.as_ref().is_some_and(|ids| ids.contains(&host.id) && ids.contains(&db.id)), "{flip:?}");
    assert_eq!(programmed(&agent, "n1", None), candidate, "the audited entries now enforce");

    // Relabelled out of the selector: the node is no endpoint any more.
    agent.apply(node_n1("infra"));
    agent.converge().unwrap();
    assert!(host_endpoint(&agent).is_none());
    assert!(agent.dataplane().log.contains(&SlotOp::Detach(host.id)));
}
