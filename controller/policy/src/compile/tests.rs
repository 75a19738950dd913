use palisade_common::{self as dp, Direction, Protocol, Verdict};

use super::*;
use crate::cluster::{Cluster, ContainerPort};
use crate::model::{PolicySet, Prefix};

fn parse_set(text: &str) -> PolicySet {
    let parsed = crate::parse_policies(&[crate::SourceFile { name: "p.yaml", text }], &Default::default());
    assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
    parsed.set
}

/// An entry with its peer by labels, so compilations that number identities differently compare.
#[derive(Debug, PartialEq)]
struct DescribedEntry {
    peer: String,
    protocol: Option<Protocol>,
    port: u16,
    verdict: Verdict,
    cookie: u32,
}

fn described(engine: &CompiledPolicy, ns: &str, name: &str, d: Direction) -> Vec<DescribedEntry> {
    let group = engine.endpoint(ns, name).expect("endpoint").group;
    let name_of = |id: u32| engine.identities().get(id).map_or(id.to_string(), |i| i.labels.to_string());
    group
        .direction(d)
        .entries()
        .iter()
        .map(|e| DescribedEntry {
            peer: name_of(e.key.identity()),
            protocol: e.key.protocol(),
            port: e.key.port(),
            verdict: e.value.verdict(),
            cookie: e.value.cookie,
        })
        .collect()
}

#[test]
fn replacing_a_policy_keeps_shared_cidr_identities_and_handles_fewer_rules() {
    let cluster = "kind: Pod\nmetadata:\n  name: a\n  namespace: ns\n  labels:\n    app: a\nspec:\n  containers: []\nstatus:\n  podIP: 10.0.0.1\n";
    let cluster = Cluster::parse(&[crate::SourceFile { name: "c.yaml", text: cluster }]).expect("cluster");
    let egress = |name: &str, extra: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: {name}\n  namespace: ns\nspecs:\n  - endpointSelector: {{}}\n    egress:\n      - toCIDR: [192.0.2.0/24]\n{extra}"
        )
    };
    let second = "  - endpointSelector: {}\n    egress:\n      - toEntities: [world]\n";
    let set = parse_set(&format!("{}---\n{}", egress("one", second), egress("two", "")));
    let mut engine = CompiledPolicy::new(set.clone(), cluster.clone(), EnforcementMode::Default);
    // Version 2 of "one": one rule instead of two, and no CIDR.
    let changed = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: one\n  namespace: ns\nspec:\n  endpointSelector: {}\n  egress:\n    - toEntities: [kube-apiserver]\n";
    let policy = parse_set(changed).policies.remove(0);
    engine.set_policy(policy.clone());
    let mut fresh_set = set;
    fresh_set.policies[0] = policy;
    fresh_set.renumber();
    let fresh = CompiledPolicy::new(fresh_set, cluster, EnforcementMode::Default);
    for d in Direction::BOTH {
        assert_eq!(described(&engine, "ns", "a", d), described(&fresh, "ns", "a", d));
    }
    assert!(described(&engine, "ns", "a", Direction::Egress).iter().any(|e| e.peer.contains("192.0.2.0/24")));
}

#[test]
fn egress_named_ports_follow_pods_coming_and_going() {
    let pod = |name: &str, port: u16| crate::cluster::Pod {
        namespace: "ns".into(),
        name: name.into(),
        labels: [("app".to_string(), name.to_string())].into(),
        service_account: "default".into(),
        node_name: None,
        ips: Vec::new(),
        host_network: false,
        ports: vec![ContainerPort { name: Some("web".into()), port, protocol: Protocol::TCP }],
    };
    let set = parse_set(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\n  namespace: ns\nspec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n    - toPorts: [{ports: [{port: web, protocol: TCP}]}]\n",
    );
    let cluster = Cluster { pods: vec![pod("client", 1), pod("server", 8080)], ..Default::default() };
    let mut engine = CompiledPolicy::new(set, cluster, EnforcementMode::Default);
    let allows_8080 =
        |e: &CompiledPolicy| e.endpoint("ns", "client").unwrap().group.egress.lookup(0, Protocol::TCP, 8080).is_some();
    assert!(!allows_8080(&engine), "client and server disagree on the number of \"web\"");
    engine.upsert_pod(pod("client", 8080));
    assert!(allows_8080(&engine), "once every pod agrees, the name resolves to 8080");
    engine.upsert_pod(pod("other", 9090));
    assert!(!allows_8080(&engine), "a new pod with another number makes the name ambiguous again");
}

const AGENT_CLUSTER: &str = "kind: List\nitems:\n- kind: Namespace\n  metadata: {name: ns, labels: {team: a}}\n- kind: Pod\n  metadata: {name: a, namespace: ns, labels: {app: a}}\n  spec: {nodeName: n1}\n  status: {podIP: 10.200.0.1}\n- kind: Pod\n  metadata: {name: b, namespace: ns, labels: {app: b}}\n  spec: {nodeName: n2}\n  status: {podIP: 10.200.0.2}\n";

#[test]
fn engines_sharing_an_identity_basis_number_identities_alike() {
    let cluster = Cluster::parse(&[crate::SourceFile { name: "c.yaml", text: AGENT_CLUSTER }]).expect("cluster");
    let enforced = parse_set(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n    - from: [{ipBlock: {cidr: 10.200.0.0/30}}]\n",
    );
    let candidate = parse_set(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  egress:\n    - toCIDR: [192.0.2.0/24]\n",
    );
    let options = |node: &str| CompileOptions {
        node: Some(node.into()),
        identity_basis: IdentityBasis::of([&enforced, &candidate]),
        ..CompileOptions::default()
    };
    let one = CompiledPolicy::with_options(enforced.clone(), cluster.clone(), options("n1"));
    let two = CompiledPolicy::with_options(candidate.clone(), cluster.clone(), options("n1"));
    assert_eq!(one.ipcache(), two.ipcache(), "one ipcache serves both revisions");
    assert!(CompiledPolicy::new(enforced, cluster.clone(), EnforcementMode::Default).ipcache() != one.ipcache());
    let names: Vec<_> = one.endpoints().map(|e| e.pod.name.clone()).collect();
    assert_eq!(names, ["a"], "only the node's endpoints are compiled");
    assert!(one.endpoint("ns", "b").is_none());
    assert!(one.ipcache().iter().any(|(p, _)| p.to_string() == "10.200.0.2/32"), "remote pods are in the ipcache");
}

#[test]
fn removed_pods_and_relabelled_namespaces_update_only_the_groups_they_affect() {
    let cluster = Cluster::parse(&[crate::SourceFile { name: "c.yaml", text: AGENT_CLUSTER }]).expect("cluster");
    let set = parse_set(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  ingress:\n    - fromEndpoints: [{matchLabels: {app: b, k8s:io.cilium.k8s.namespace.labels.team: a}}]\n",
    );
    let mut engine = CompiledPolicy::new(set.clone(), cluster.clone(), EnforcementMode::Default);
    let revision = |e: &CompiledPolicy| e.group_of("ns", "a").expect("group").1.revision;
    let allows_b = |e: &CompiledPolicy| {
        let b = e.cluster.pod("ns", "b").and_then(|p| e.identity_of_pod(p));
        b.is_some_and(|b| e.endpoint("ns", "a").unwrap().group.ingress.lookup(b, Protocol::TCP, 80).is_some())
    };
    assert!(allows_b(&engine));
    let before = revision(&engine);
    let mut relabelled = engine.cluster.namespaces["ns"].clone();
    relabelled.labels.insert("team".into(), "z".into());
    engine.upsert_namespace(relabelled.clone());
    assert!(!allows_b(&engine), "b no longer matches the namespace label");
    assert!(revision(&engine) != before, "a's entries changed");
    let fresh = CompiledPolicy::new(
        set,
        Cluster { namespaces: [("ns".into(), relabelled)].into(), ..cluster },
        EnforcementMode::Default,
    );
    for d in Direction::BOTH {
        assert_eq!(described(&engine, "ns", "a", d), described(&fresh, "ns", "a", d));
    }
    let settled = revision(&engine);
    engine.upsert_pod(engine.cluster.pod("ns", "b").unwrap().clone());
    assert_eq!(revision(&engine), settled, "an unchanged pod changes nothing");
    assert!(engine.remove_pod("ns", "b").is_some());
    assert!(engine.cluster.pod("ns", "b").is_none() && engine.remove_pod("ns", "b").is_none());
    assert!(!engine.ipcache().iter().any(|(p, _)| p.to_string() == "10.200.0.2/32"));
}

#[test]
fn the_ipcache_and_endpoint_groups_follow_pods_sharing_an_address() {
    let cluster = Cluster::parse(&[crate::SourceFile { name: "c.yaml", text: AGENT_CLUSTER }]).expect("cluster");
    let set = parse_set(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  ingress:\n    - fromEndpoints: [{matchLabels: {app: b}}]\n",
    );
    let options = CompileOptions { node: Some("n1".into()), ..CompileOptions::default() };
    let mut engine = CompiledPolicy::with_options(set, cluster, options);
    let at = |e: &CompiledPolicy, addr: &str| {
        let prefix = Prefix::new(addr.parse().unwrap(), 32);
        e.ipcache().into_iter().filter(|(p, _)| *p == prefix).map(|(_, id)| id).collect::<Vec<_>>()
    };
    let identity = |e: &CompiledPolicy, name: &str| e.identity_of_pod(e.cluster.pod("ns", name).unwrap()).unwrap();
    let a = identity(&engine, "a");
    assert_eq!(at(&engine, "10.200.0.1"), [a]);
    // A node at b's address: the pod's identity wins, as it does in a fresh ipcache.
    engine.set_nodes(vec![crate::cluster::Node {
        name: "n2".into(),
        labels: Default::default(),
        addresses: vec!["10.200.0.2".parse().unwrap(), "10.201.0.2".parse().unwrap()],
        internal_ip: Some("10.200.0.2".parse().unwrap()),
        internal_ipv6: None,
    }]);
    assert_eq!(at(&engine, "10.200.0.2"), [identity(&engine, "b")]);
    assert_eq!(at(&engine, "10.201.0.2"), [dp::IDENTITY_REMOTE_NODE]);
    // A second pod at a's address (an address reused before the old pod is gone): the pod
    // added last is in the ipcache, and a again once that one goes.
    let mut c = engine.cluster.pod("ns", "a").unwrap().clone();
    c.name = "c".into();
    c.labels.insert("app".into(), "c".into());
    engine.upsert_pod(c);
    let c = identity(&engine, "c");
    assert!(c != a);
    assert_eq!(at(&engine, "10.200.0.1"), [c]);
    let sorted = engine.ipcache().windows(2).all(|w| w[0].0 < w[1].0);
    assert!(sorted, "sorted, one entry per prefix");
    assert_eq!(engine.group_of("ns", "c").map(|(k, _)| k.identity), Some(c));
    engine.remove_pod("ns", "c");
    assert_eq!(at(&engine, "10.200.0.1"), [a]);
    assert!(engine.group_of("ns", "c").is_none(), "gone with its pod");
    assert!(engine.group_of("ns", "b").is_none(), "b runs on another node: not an endpoint here");
    // Relabelled: a's group follows its new identity.
    let mut relabelled = engine.cluster.pod("ns", "a").unwrap().clone();
    relabelled.labels.insert("app".into(), "b".into());
    engine.upsert_pod(relabelled);
    let (key, group) = engine.group_of("ns", "a").expect("a's group");
    assert_eq!(key.identity, identity(&engine, "a"));
    assert_eq!(group.ingress.enforcement, Enforcement::NotEnforced, "the policy no longer selects it");
}

#[test]
fn a_cidr_rule_naming_a_pods_exact_address_does_not_match_the_pod() {
    let pods = "kind: List\nitems:\n- kind: Pod\n  metadata: {name: a, namespace: ns, labels: {app: a}}\n  status: {podIP: 10.200.0.1}\n- kind: Pod\n  metadata: {name: b, namespace: ns, labels: {app: b}}\n  status: {podIP: 10.200.0.2}\n";
    let cluster = Cluster::parse(&[crate::SourceFile { name: "c.yaml", text: pods }]).expect("cluster");
    let set = parse_set(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  egress:\n    - toCIDR: [10.200.0.2/32]\n",
    );
    let engine = CompiledPolicy::new(set, cluster, EnforcementMode::Default);
    let b = engine.identity_of_pod(engine.cluster.pod("ns", "b").unwrap()).unwrap();
    let addr = "10.200.0.2".parse().unwrap();
    assert_eq!(engine.identity_of_addr(addr), b, "the pod's address resolves to the pod, not the CIDR identity");
    let entries = engine.ipcache();
    assert_eq!(entries.iter().filter(|(p, _)| p.contains_addr(addr) && p.len == 32).count(), 1, "{entries:?}");
    assert!(engine.endpoint("ns", "a").unwrap().group.egress.lookup(b, Protocol::TCP, 80).is_none());
}
