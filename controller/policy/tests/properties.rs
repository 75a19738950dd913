//! Property tests over random small clusters and random CiliumNetworkPolicy sets, written as
//! YAML and read through the parser like users' files.
use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use palisade_policy::cluster::{ContainerPort, Namespace, Pod};
use palisade_policy::model::{Direction, Protocol};
use palisade_policy::trace::{self, FlowEnd, FlowPort, Verdict};
use palisade_policy::{Cluster, CompiledPolicy, EnforcementMode, ParseOptions, SourceFile, parse_policies};
use proptest::prelude::*;

const APPS: [&str; 3] = ["a", "b", "c"];
const PORTS: [u16; 3] = [80, 443, 8080];

#[derive(Clone, Debug)]
struct PodSpec {
    ns: usize,
    app: usize,
    tier: bool,
    port: Option<usize>,
}

#[derive(Clone, Debug)]
enum PeerSpec {
    /// `fromEndpoints`/`toEndpoints` by app; `any_ns` adds a namespace Exists expression.
    Endpoints {
        app: Option<usize>,
        any_ns: bool,
    },
    Entities(&'static str),
    /// No L3 peer (needs ports to select anything).
    None,
}

#[derive(Clone, Debug)]
struct PeerRuleSpec {
    peer: PeerSpec,
    /// (port index, protocol) pairs; empty = L3 only.
    ports: Vec<(usize, &'static str)>,
}

#[derive(Clone, Debug)]
struct RuleSpec {
    ns: usize,
    subject: Option<usize>,
    egress: bool,
    deny: bool,
    rules: Vec<PeerRuleSpec>,
}

fn pod_spec(namespaces: usize) -> impl Strategy<Value = PodSpec> {
    (0..namespaces, 0..APPS.len(), any::<bool>(), proptest::option::of(0..PORTS.len()))
        .prop_map(|(ns, app, tier, port)| PodSpec { ns, app, tier, port })
}

fn peer_rule() -> impl Strategy<Value = PeerRuleSpec> {
    let peer = prop_oneof![
        4 => (proptest::option::of(0..APPS.len()), any::<bool>()).prop_map(|(app, any_ns)| PeerSpec::Endpoints { app, any_ns }),
        1 => prop_oneof![Just("world"), Just("all"), Just("cluster")].prop_map(PeerSpec::Entities),
        1 => Just(PeerSpec::None),
    ];
    let ports = proptest::collection::vec((0..PORTS.len(), prop_oneof![Just("TCP"), Just("UDP"), Just("ANY")]), 0..3);
    (peer, ports).prop_map(|(peer, ports)| PeerRuleSpec { peer, ports })
}

fn rule_spec(namespaces: usize) -> impl Strategy<Value = RuleSpec> {
    (
        0..namespaces,
        proptest::option::of(0..APPS.len()),
        any::<bool>(),
        prop::bool::weighted(0.25),
        proptest::collection::vec(peer_rule(), 1..3),
    )
        .prop_map(|(ns, subject, egress, deny, rules)| RuleSpec { ns, subject, egress, deny, rules })
}

#[derive(Clone, Debug)]
struct Scenario {
    namespaces: usize,
    pods: Vec<PodSpec>,
    rules: Vec<RuleSpec>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (2usize..=4).prop_flat_map(|n| {
        (Just(n), proptest::collection::vec(pod_spec(n), 2..=8), proptest::collection::vec(rule_spec(n), 0..5))
            .prop_map(|(namespaces, pods, rules)| Scenario { namespaces, pods, rules })
    })
}

fn ns_name(i: usize) -> String {
    format!("ns{i}")
}

fn cluster(s: &Scenario) -> Cluster {
    let mut cluster = Cluster::default();
    for i in 0..s.namespaces {
        let labels = BTreeMap::from([("kubernetes.io/metadata.name".to_string(), ns_name(i))]);
        cluster.namespaces.insert(ns_name(i), Namespace { name: ns_name(i), labels });
    }
    for (i, p) in s.pods.iter().enumerate() {
        let mut labels = BTreeMap::from([("app".to_string(), APPS[p.app].to_string())]);
        if p.tier {
            labels.insert("tier".into(), "x".into());
        }
        cluster.pods.push(Pod {
            namespace: ns_name(p.ns),
            name: format!("pod{i}"),
            labels,
            service_account: "default".into(),
            node_name: Some("node".into()),
            ips: vec![Ipv4Addr::new(10, 1, 0, i as u8 + 1).into()],
            host_network: false,
            ports: p
                .port
                .map(|j| ContainerPort { name: Some("web".into()), port: PORTS[j], protocol: Protocol::TCP })
                .into_iter()
                .collect(),
        });
    }
    cluster
}

fn peer_rule_yaml(r: &PeerRuleSpec, egress: bool) -> String {
    let dir = if egress { "to" } else { "from" };
    let mut out = String::from("  - ");
    match &r.peer {
        PeerSpec::Endpoints { app, any_ns } => {
            let labels = app.map(|a| format!("matchLabels: {{app: {}}}", APPS[a])).unwrap_or_default();
            let ns = if *any_ns {
                "matchExpressions: [{key: k8s:io.kubernetes.pod.namespace, operator: Exists}]"
            } else {
                ""
            };
            let sep = if !labels.is_empty() && !ns.is_empty() { ", " } else { "" };
            out.push_str(&format!("{dir}Endpoints: [{{{labels}{sep}{ns}}}]\n    "));
        }
        PeerSpec::Entities(e) => out.push_str(&format!("{dir}Entities: [{e}]\n    ")),
        PeerSpec::None => {}
    }
    if r.ports.is_empty() {
        if matches!(r.peer, PeerSpec::None) {
            out.push_str("{}\n");
        } else {
            out.truncate(out.trim_end().len());
            out.push('\n');
        }
    } else {
        let ports: Vec<String> =
            r.ports.iter().map(|(p, proto)| format!("{{port: \"{}\", protocol: {proto}}}", PORTS[*p])).collect();
        out.push_str(&format!("toPorts: [{{ports: [{}]}}]\n", ports.join(", ")));
    }
    out
}

fn rule_yaml(i: usize, r: &RuleSpec) -> String {
    let subject = r.subject.map(|a| format!("{{matchLabels: {{app: {}}}}}", APPS[a])).unwrap_or_else(|| "{}".into());
    let section = match (r.egress, r.deny) {
        (false, false) => "ingress",
        (false, true) => "ingressDeny",
        (true, false) => "egress",
        (true, true) => "egressDeny",
    };
    let rules: String = r.rules.iter().map(|p| peer_rule_yaml(p, r.egress)).collect();
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p{i}\n  namespace: {}\nspec:\n  endpointSelector: {subject}\n  {section}:\n{rules}---\n",
        ns_name(r.ns)
    )
}

fn engine(s: &Scenario, rules: &[RuleSpec]) -> CompiledPolicy {
    let text: String = rules.iter().enumerate().map(|(i, r)| rule_yaml(i, r)).collect();
    let parsed = parse_policies(&[SourceFile { name: "gen.yaml", text: &text }], &ParseOptions::default());
    assert!(!parsed.has_errors(), "{text}\n{:#?}", parsed.diagnostics);
    CompiledPolicy::new(parsed.set, cluster(s), EnforcementMode::Default)
}

const FLOW_PORTS: [&str; 5] = ["80/TCP", "443/TCP", "8080/UDP", "8080/TCP", "icmp/8"];

/// Every pod pair (and world to and from every pod) on a few ports, with the verdict.
fn verdicts(s: &Scenario, engine: &CompiledPolicy) -> Vec<((String, String, &'static str), Verdict)> {
    let mut ends: Vec<String> = (0..s.pods.len()).map(|i| format!("{}/pod{i}", ns_name(s.pods[i].ns))).collect();
    ends.push("cidr:192.0.2.1".into());
    let mut out = Vec::new();
    for from in &ends {
        for to in &ends {
            if from == to {
                continue;
            }
            for port in FLOW_PORTS {
                let t = trace::trace(
                    engine,
                    &FlowEnd::parse(from).unwrap(),
                    &FlowEnd::parse(to).unwrap(),
                    FlowPort::parse(port).unwrap(),
                    None,
                )
                .unwrap();
                out.push(((from.clone(), to.clone(), port), t.verdict));
            }
        }
    }
    out
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    /// Appending an allow rule to a section that already puts its endpoints into policy
    /// (so enforcement does not change) never takes an allowed flow away.
    #[test]
    fn adding_an_allow_rule_never_removes_an_allowed_flow(s in scenario(), extra in peer_rule(), pick in any::<prop::sample::Index>()) {
        let allows: Vec<usize> = (0..s.rules.len()).filter(|i| !s.rules[*i].deny).collect();
        prop_assume!(!allows.is_empty());
        let target = allows[pick.index(allows.len())];
        let mut more = s.rules.clone();
        more[target].rules.push(extra);
        let before = verdicts(&s, &engine(&s, &s.rules));
        let after = verdicts(&s, &engine(&s, &more));
        for ((flow, b), (_, a)) in before.iter().zip(&after) {
            prop_assert!(!(*b == Verdict::Allowed && *a == Verdict::Denied), "{flow:?} was allowed, now denied");
        }
    }

    /// A new deny rule (in a new policy) never allows a flow that was denied.
    #[test]
    fn adding_a_deny_rule_never_adds_an_allowed_flow(s in scenario(), mut extra in rule_spec(4)) {
        extra.ns %= s.namespaces;
        extra.deny = true;
        let mut more = s.rules.clone();
        more.push(extra);
        let before = verdicts(&s, &engine(&s, &s.rules));
        let after = verdicts(&s, &engine(&s, &more));
        for ((flow, b), (_, a)) in before.iter().zip(&after) {
            prop_assert!(!(*b == Verdict::Denied && *a == Verdict::Allowed), "{flow:?} was denied, now allowed");
        }
    }

    /// The trace verdict is allowed iff the source's compiled egress entry and the destination's
    /// compiled ingress entry both allow, looked up independently of `trace`.
    #[test]
    fn trace_agrees_with_both_sides_compiled_maps(s in scenario()) {
        let e = engine(&s, &s.rules);
        for (i, src) in e.cluster.pods.iter().enumerate() {
            for (j, dst) in e.cluster.pods.iter().enumerate() {
                if i == j { continue; }
                for port in FLOW_PORTS {
                    let fp = FlowPort::parse(port).unwrap();
                    let allows = |pod: &Pod, remote: &Pod, direction: Direction| {
                        let ep = e.endpoint(&pod.namespace, &pod.name).unwrap();
                        let remote_id = e.identity_of_pod(remote).unwrap();
                        ep.group.direction(direction).lookup(remote_id, fp.protocol, fp.port)
                            .is_some_and(|entry| entry.value.verdict() != palisade_common::Verdict::Deny)
                    };
                    let expected = allows(src, dst, Direction::Egress) && allows(dst, src, Direction::Ingress);
                    let t = trace::trace(&e, &FlowEnd::parse(&src.key()).unwrap(), &FlowEnd::parse(&dst.key()).unwrap(), fp, None).unwrap();
                    prop_assert_eq!(t.verdict == Verdict::Allowed, expected, "{} -> {} {}", src.key(), dst.key(), port);
                    prop_assert_eq!(t.verdict == Verdict::Allowed, t.egress.verdict == Verdict::Allowed && t.ingress.verdict == Verdict::Allowed);
                }
            }
        }
    }

    /// No endpoint's map ever holds two entries with the same key.
    #[test]
    fn compiled_entries_have_unique_keys(s in scenario()) {
        let e = engine(&s, &s.rules);
        for ep in e.endpoints() {
            for direction in Direction::BOTH {
                let entries = ep.group.direction(direction).entries();
                let mut seen = HashSet::new();
                for entry in &entries {
                    prop_assert!(seen.insert(entry.key), "{} {:?}: duplicate key {:?}", ep.pod.key(), direction, entry.key);
                }
            }
        }
    }
}
