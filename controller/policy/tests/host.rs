//! Host policies (Cilium's host firewall, policy half): `nodeSelector` rules select the host
//! endpoint of the nodes whose labels match, the host identity carries its node's labels, and
//! `fromNodes`/`toNodes` select remote nodes by their labels; `trace` judges `node` by the host
//! endpoint's policy.
mod common;

use common::trace_of;
use palisade_common as dp;
use palisade_policy::compile::Enforcement;
use palisade_policy::model::{Peer, Peers};
use palisade_policy::trace::Verdict;
use palisade_policy::{
    AllowLocalhost, Cluster, CompileOptions, CompiledPolicy, EnforcementMode, ParseOptions, Parsed, SourceFile,
    parse_policies,
};

/// Three nodes: node-a (ingress role, zone a), node-b (zone b), node-c (no labels); a pod on
/// node-a and one on node-b.
const CLUSTER: &str = "kind: List
items:
- kind: Namespace
  metadata: {name: prod}
- kind: Node
  metadata: {name: node-a, labels: {role: ingress, zone: a}}
  status: {addresses: [{type: InternalIP, address: 10.200.0.11}]}
- kind: Node
  metadata: {name: node-b, labels: {zone: b}}
  status: {addresses: [{type: InternalIP, address: 10.200.0.12}]}
- kind: Node
  metadata: {name: node-c}
  status: {addresses: [{type: InternalIP, address: 10.200.0.13}]}
- kind: Pod
  metadata: {name: client, namespace: prod, labels: {app: client}}
  spec: {nodeName: node-a}
  status: {podIP: 10.200.5.1}
- kind: Pod
  metadata: {name: server, namespace: prod, labels: {app: server}}
  spec: {nodeName: node-b, containers: [{ports: [{containerPort: 8080, name: http}]}]}
  status: {podIP: 10.200.5.2}
";

/// Locks down ingress nodes: SSH from the world, 10250 from the pods, nothing else in; out,
/// only the server on 8080 and DNS to 192.0.2.53.
const LOCK_DOWN: &str = "apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: lock-down}
spec:
  nodeSelector: {matchLabels: {role: ingress}}
  ingress:
  - fromEntities: [world]
    toPorts: [{ports: [{port: '22', protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: '10250', protocol: TCP}]}]
  ingressDeny:
  - fromCIDR: [192.0.2.66/32]
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts: [{ports: [{port: '8080', protocol: TCP}]}]
  - toCIDR: [192.0.2.53/32]
    toPorts: [{ports: [{port: '53', protocol: UDP}]}]
";

fn parse(text: &str) -> Parsed {
    parse_policies(&[SourceFile { name: "p.yaml", text }], &ParseOptions::default())
}

fn errors(text: &str) -> Vec<String> {
    parse(text).errors().map(ToString::to_string).collect()
}

fn engine(policies: &str, options: CompileOptions) -> CompiledPolicy {
    let parsed = parse(policies);
    assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
    let cluster = Cluster::parse(&[SourceFile { name: "cluster.yaml", text: CLUSTER }]).expect("cluster");
    CompiledPolicy::with_options(parsed.set, cluster, options)
}

fn on(node: &str) -> CompileOptions {
    CompileOptions { node: Some(node.into()), ..CompileOptions::default() }
}

fn ipcache_at(engine: &CompiledPolicy, addr: &str) -> Option<u32> {
    let addr: std::net::IpAddr = addr.parse().unwrap();
    engine.ipcache().into_iter().find(|(p, _)| p.len == 32 && p.addr == addr).map(|(_, id)| id)
}

fn enforcement(engine: &CompiledPolicy) -> (Enforcement, Enforcement) {
    let host = engine.host_endpoint().expect("a host endpoint");
    (host.group.ingress.enforcement, host.group.egress.enforcement)
}

/// A CiliumClusterwideNetworkPolicy `name` with `spec` (block YAML, indented two spaces).
fn ccnp(name: &str, spec: &str) -> String {
    format!("apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n{spec}")
}

#[test]
fn host_rule_errors_name_file_line_and_field() {
    let both = ccnp("both", "  endpointSelector: {}\n  nodeSelector: {}\n  ingress: [{}]\n");
    assert_eq!(
        errors(&both),
        [
            "p.yaml:6: spec.nodeSelector: endpointSelector and nodeSelector cannot both be set: a rule selects pods or nodes"
        ]
    );
    let neither = ccnp("neither", "  ingress: [{}]\n");
    assert_eq!(errors(&neither), ["p.yaml:5: spec: endpointSelector or nodeSelector is required"]);
    let namespaced = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspecs:\n- endpointSelector: {}\n- nodeSelector: {}\n  ingress: [{}]\n";
    assert_eq!(
        errors(namespaced),
        ["p.yaml:6: specs[1].nodeSelector: only a CiliumClusterwideNetworkPolicy selects nodes"]
    );
    let http = ccnp(
        "http",
        "  nodeSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: '80', protocol: TCP}]\n      rules:\n        http: [{method: GET}]\n",
    );
    assert_eq!(
        errors(&http),
        [
            "p.yaml:10: spec.ingress[0].toPorts[0].rules.http: a host policy (nodeSelector) cannot have L7 rules: the host has no L7 proxy"
        ]
    );
    let dns = ccnp(
        "dns",
        "  nodeSelector: {}\n  egress:\n  - toPorts:\n    - ports: [{port: '53', protocol: UDP}]\n      rules:\n        dns: [{matchPattern: '*'}]\n",
    );
    assert_eq!(
        errors(&dns),
        [
            "p.yaml:10: spec.egress[0].toPorts[0].rules.dns: a host policy (nodeSelector) cannot have L7 rules: the host has no L7 proxy"
        ]
    );
    let sni = ccnp(
        "sni",
        "  nodeSelector: {}\n  egress:\n  - toPorts:\n    - ports: [{port: '443', protocol: TCP}]\n      serverNames: [example.com]\n",
    );
    assert_eq!(
        errors(&sni),
        [
            "p.yaml:9: spec.egress[0].toPorts[0].serverNames: a host policy (nodeSelector) cannot have L7 rules: the host has no L7 proxy"
        ]
    );
    let fqdn = ccnp("fqdn", "  nodeSelector: {}\n  egress:\n  - toFQDNs: [{matchName: example.com}]\n");
    assert_eq!(
        errors(&fqdn),
        [
            "p.yaml:7: spec.egress[0].toFQDNs: unsupported: toFQDNs in a host policy (nodeSelector) is not implemented by Palisade yet"
        ]
    );
    // fromNodes is one L3 peer kind: it does not combine with another.
    let combined =
        ccnp("combined", "  endpointSelector: {}\n  ingress:\n  - fromNodes: [{}]\n    fromEntities: [world]\n");
    assert_eq!(
        errors(&combined),
        [
            "p.yaml:7: spec.ingress[0]: combining fromEntities and fromNodes in one rule is not supported; write one rule per peer kind"
        ]
    );
}

#[test]
fn host_rules_and_node_peers_parse_into_the_model() {
    let parsed = parse(&format!(
        "{LOCK_DOWN}---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: prod}}\nspec:\n  endpointSelector: {{}}\n  egress:\n  - toNodes: [{{matchLabels: {{zone: a}}}}]\n"
    ));
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let (host, pods) = (&parsed.set.policies[0], &parsed.set.policies[1]);
    assert!(host.is_host_policy() && host.rules[0].is_host_rule());
    assert_eq!(host.rules[0].subject.to_string(), "any:role=ingress,reserved:host");
    assert_eq!(host.rules[0].line, 5, "the line of nodeSelector");
    assert!(!pods.is_host_policy());
    let Peers::Some(peers) = &pods.rules[0].egress.rules[0].peers else { panic!("toNodes names peers") };
    let [Peer::Nodes(selector)] = peers.as_slice() else { panic!("one node peer: {peers:?}") };
    assert_eq!(selector.to_string(), "any:zone=a,reserved:remote-node", "no namespace; remote nodes only");
    assert_eq!(pods.node_label_keys().into_iter().collect::<Vec<_>>(), ["zone"]);
}

#[test]
fn the_host_identity_carries_its_nodes_labels_and_node_selector_matches_them() {
    let a = engine(LOCK_DOWN, on("node-a"));
    let host = a.host_endpoint().expect("node-a's host endpoint");
    assert_eq!((host.node, host.identity.id), ("node-a", dp::IDENTITY_HOST));
    assert_eq!(host.identity.labels.to_string(), "reserved:host,node:role=ingress,node:zone=a");
    assert!(host.selected, "role=ingress matches node-a");
    assert_eq!(enforcement(&a), (Enforcement::DefaultDeny, Enforcement::DefaultDeny));
    assert_eq!(ipcache_at(&a, "10.200.0.11"), Some(dp::IDENTITY_HOST), "its addresses stay host");
    // The host rule never selects a pod, even one on the selected node.
    let client = a.endpoint("prod", "client").unwrap().group;
    assert_eq!(
        (client.ingress.enforcement, client.egress.enforcement),
        (Enforcement::NotEnforced, Enforcement::NotEnforced)
    );
    // node-b is not an ingress node: its host stays open.
    let b = engine(LOCK_DOWN, on("node-b"));
    let host = b.host_endpoint().unwrap();
    assert!(!host.selected);
    assert_eq!(enforcement(&b), (Enforcement::NotEnforced, Enforcement::NotEnforced));
    assert_eq!(
        host.group.ingress.lookup(dp::IDENTITY_WORLD, dp::Protocol::TCP, 23).unwrap().value.cookie,
        dp::COOKIE_NOT_ENFORCED
    );
    // Without a node there is no host endpoint to compile.
    assert!(engine(LOCK_DOWN, CompileOptions::default()).host_endpoint().is_none());
    let local = CompileOptions { host_node: Some("node-a".into()), ..CompileOptions::default() };
    assert!(engine(LOCK_DOWN, local).host_endpoint().unwrap().selected, "host_node names the host too");
}

#[test]
fn an_endpoint_selector_never_selects_the_host() {
    let everything = ccnp("everything", "  endpointSelector: {}\n  ingress: [{}]\n  egress: [{}]\n");
    let e = engine(&everything, on("node-a"));
    assert_eq!(enforcement(&e), (Enforcement::NotEnforced, Enforcement::NotEnforced));
    assert!(!e.host_endpoint().unwrap().selected);
    let client = e.endpoint("prod", "client").unwrap().group;
    assert_eq!(client.ingress.enforcement, Enforcement::DefaultDeny);
}

#[test]
fn the_host_is_in_policy_per_direction_once_a_host_rule_has_it() {
    let ingress_only = ccnp("in", "  nodeSelector: {}\n  ingress: [{fromEntities: [remote-node]}]\n");
    let e = engine(&ingress_only, on("node-a"));
    assert_eq!(enforcement(&e), (Enforcement::DefaultDeny, Enforcement::NotEnforced));
    let group = e.host_endpoint().unwrap().group;
    assert!(group.ingress.lookup(dp::IDENTITY_REMOTE_NODE, dp::Protocol::TCP, 22).is_some());
    assert!(group.ingress.lookup(dp::IDENTITY_WORLD, dp::Protocol::TCP, 22).is_none(), "default deny");
    assert!(group.ingress.lookup(dp::IDENTITY_HOST, dp::Protocol::TCP, 22).is_none(), "no allow-localhost entry");
    let relaxed = ccnp(
        "relaxed",
        "  nodeSelector: {}\n  enableDefaultDeny: {ingress: false}\n  ingressDeny: [{fromEntities: [world]}]\n",
    );
    let e = engine(&relaxed, on("node-a"));
    assert_eq!(enforcement(&e).0, Enforcement::DefaultAllow);
    let group = e.host_endpoint().unwrap().group;
    assert_eq!(
        group.ingress.lookup(dp::IDENTITY_WORLD, dp::Protocol::TCP, 22).unwrap().value.verdict(),
        dp::Verdict::Deny
    );
    assert_eq!(
        group.ingress.lookup(dp::IDENTITY_REMOTE_NODE, dp::Protocol::TCP, 22).unwrap().value.verdict(),
        dp::Verdict::Allow
    );
    // `always` puts pods into default deny, not an unselected host; `never` enforces nothing.
    let always = CompileOptions { mode: EnforcementMode::Always, ..on("node-a") };
    let e = engine("", always);
    assert_eq!(enforcement(&e), (Enforcement::NotEnforced, Enforcement::NotEnforced));
    assert_eq!(e.endpoint("prod", "client").unwrap().group.ingress.enforcement, Enforcement::DefaultDeny);
    let never = CompileOptions { mode: EnforcementMode::Never, ..on("node-a") };
    assert_eq!(enforcement(&engine(LOCK_DOWN, never)), (Enforcement::NotEnforced, Enforcement::NotEnforced));
}

#[test]
fn named_ports_in_host_ingress_rules_resolve_to_nothing() {
    let named =
        ccnp("named", "  nodeSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: http, protocol: TCP}]}]\n");
    let e = engine(&named, on("node-a"));
    let group = e.host_endpoint().unwrap().group;
    assert_eq!(group.ingress.enforcement, Enforcement::DefaultDeny);
    assert!(group.ingress.is_empty(), "the host has no container ports: {:?}", group.ingress.entries());
}

const FROM_ZONED_NODES: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromNodes: [{matchExpressions: [{key: zone, operator: Exists}]}]
";

#[test]
fn from_nodes_selects_labelled_remote_nodes_not_unlabelled_ones_nor_the_local_host() {
    let options = CompileOptions { allow_localhost: AllowLocalhost::Policy, ..on("node-b") };
    let e = engine(FROM_ZONED_NODES, options);
    let a = ipcache_at(&e, "10.200.0.11").unwrap();
    assert!(a >= dp::IDENTITY_FIRST_LOCAL, "node-a has an identity of its own: {a}");
    assert_eq!(e.identities().get(a).unwrap().labels.to_string(), "reserved:remote-node,node:zone=a");
    assert_eq!(ipcache_at(&e, "10.200.0.13"), Some(dp::IDENTITY_REMOTE_NODE), "node-c has no zone label");
    let verdict = |from: &str| trace_of(&e, from, "prod/server", "8080/TCP", None).verdict;
    assert_eq!(verdict("cidr:10.200.0.11"), Verdict::Allowed, "node-a has a zone");
    assert_eq!(verdict("cidr:10.200.0.13"), Verdict::Denied, "node-c has none");
    assert_eq!(verdict("node"), Verdict::Denied, "node-b (zone b) is the local host, not a remote node");
    assert_eq!(verdict("cidr:10.200.0.12"), Verdict::Denied);
    // The remote-node and cluster entities still select labelled remote nodes (the client's
    // fromNodes gives node-a its identity; the server admits by entity alone).
    let zoned_client = FROM_ZONED_NODES.replace("app: server", "app: client").replace("name: server", "name: zoned");
    for entity in ["remote-node", "cluster"] {
        let by_entity = FROM_ZONED_NODES.replace(
            "fromNodes: [{matchExpressions: [{key: zone, operator: Exists}]}]",
            &format!("fromEntities: [{entity}]"),
        );
        let e = engine(&format!("{zoned_client}---\n{by_entity}"), on("node-b"));
        assert!(ipcache_at(&e, "10.200.0.11") != Some(dp::IDENTITY_REMOTE_NODE), "node-a is labelled");
        for node in ["cidr:10.200.0.11", "cidr:10.200.0.13"] {
            let verdict = trace_of(&e, node, "prod/server", "8080/TCP", None).verdict;
            assert_eq!(verdict, Verdict::Allowed, "{entity}: {node}");
        }
    }
}

#[test]
fn remote_nodes_are_remote_node_without_node_selectors() {
    let e = engine(LOCK_DOWN, on("node-a"));
    assert_eq!(ipcache_at(&e, "10.200.0.12"), Some(dp::IDENTITY_REMOTE_NODE));
    assert_eq!(ipcache_at(&e, "10.200.0.13"), Some(dp::IDENTITY_REMOTE_NODE));
    let reserved = |i: &&palisade_policy::identity::Identity| {
        i.labels.get(palisade_policy::labels::Source::Reserved, "remote-node").is_some()
    };
    assert_eq!(e.identities().all().filter(reserved).count(), 1, "only the reserved remote-node identity");
}

/// Entries of one direction with their peers by labels, so compilations that number identities
/// differently compare.
fn described(engine: &CompiledPolicy, group: &palisade_policy::compile::Group) -> Vec<String> {
    let mut out: Vec<String> = [&group.ingress, &group.egress]
        .iter()
        .flat_map(|d| d.entries())
        .map(|e| format!("{} cookie={}", engine.describe_entry(&e), e.value.cookie))
        .collect();
    out.sort();
    out
}

#[test]
fn nodes_changing_labels_move_identity_and_host_rules_follow_the_host() {
    let mut e = engine(&format!("{FROM_ZONED_NODES}---\n{LOCK_DOWN}"), on("node-b"));
    let (policies, cluster) = (e.policies().clone(), e.cluster.clone());
    let fresh = |nodes: &[palisade_policy::cluster::Node]| {
        let cluster = Cluster { nodes: nodes.to_vec(), ..cluster.clone() };
        CompiledPolicy::with_options(policies.clone(), cluster, on("node-b"))
    };
    let server = |e: &CompiledPolicy| described(e, e.endpoint("prod", "server").unwrap().group);
    let mut nodes = e.cluster.nodes.clone();
    // node-c gets a zone: its address moves to an identity of it, which the server admits.
    nodes[2].labels.insert("zone".into(), "c".into());
    e.set_nodes(nodes.clone());
    let c = ipcache_at(&e, "10.200.0.13").unwrap();
    assert_eq!(e.identities().get(c).unwrap().labels.to_string(), "reserved:remote-node,node:zone=c");
    assert_eq!(trace_of(&e, "cidr:10.200.0.13", "prod/server", "8080/TCP", None).verdict, Verdict::Allowed);
    assert_eq!(server(&e), server(&fresh(&nodes)));
    // node-a takes zone c as well: both share one identity, and node-a's is released.
    let a = ipcache_at(&e, "10.200.0.11").unwrap();
    nodes[0].labels.insert("zone".into(), "c".into());
    e.set_nodes(nodes.clone());
    assert_eq!(ipcache_at(&e, "10.200.0.11"), Some(c));
    assert!(e.identities().get(a).is_none(), "node-a's old identity is gone");
    assert_eq!(server(&e), server(&fresh(&nodes)));
    // node-c loses its zone: back to remote-node, no longer admitted.
    nodes[2].labels.clear();
    e.set_nodes(nodes.clone());
    assert_eq!(ipcache_at(&e, "10.200.0.13"), Some(dp::IDENTITY_REMOTE_NODE));
    assert_eq!(trace_of(&e, "cidr:10.200.0.13", "prod/server", "8080/TCP", None).verdict, Verdict::Denied);
    assert_eq!(server(&e), server(&fresh(&nodes)));
    // The local host (node-b) becomes an ingress node: the lock-down now selects it.
    assert!(!e.host_endpoint().unwrap().selected);
    let revision = e.host_endpoint().unwrap().group.revision;
    nodes[1].labels.insert("role".into(), "ingress".into());
    e.set_nodes(nodes.clone());
    let host = e.host_endpoint().unwrap();
    assert!(host.selected && host.group.revision != revision);
    assert_eq!(host.identity.labels.to_string(), "reserved:host,node:role=ingress,node:zone=b");
    assert_eq!(described(&e, host.group), described(&e, fresh(&nodes).host_endpoint().unwrap().group));
    assert_eq!(enforcement(&e), (Enforcement::DefaultDeny, Enforcement::DefaultDeny));
}

#[test]
fn policy_changes_recompile_the_host_endpoint_and_add_node_identities() {
    let mut e = engine("", on("node-a"));
    assert!(!e.host_endpoint().unwrap().selected);
    e.set_policy(parse(LOCK_DOWN).set.policies.remove(0));
    let host = e.host_endpoint().unwrap();
    assert!(host.selected);
    let fresh = engine(LOCK_DOWN, on("node-a"));
    assert_eq!(described(&e, host.group), described(&fresh, fresh.host_endpoint().unwrap().group));
    // A first fromNodes selector: remote nodes get identities of the labels it names.
    assert_eq!(ipcache_at(&e, "10.200.0.12"), Some(dp::IDENTITY_REMOTE_NODE));
    e.set_policy(parse(FROM_ZONED_NODES).set.policies.remove(0));
    let b = ipcache_at(&e, "10.200.0.12").unwrap();
    assert_eq!(e.identities().get(b).unwrap().labels.to_string(), "reserved:remote-node,node:zone=b");
    assert_eq!(enforcement(&e), (Enforcement::DefaultDeny, Enforcement::DefaultDeny), "the host policy stays");
}

#[test]
fn trace_judges_node_by_the_host_endpoints_policy_both_ways() {
    let e = engine(LOCK_DOWN, on("node-a"));
    let t = |from: &str, to: &str, port: &str| trace_of(&e, from, to, port, None);
    // To the node: the sender's egress and the host's ingress.
    let allowed = t("prod/client", "node", "10250/TCP");
    assert_eq!(allowed.verdict, Verdict::Allowed);
    assert_eq!(allowed.ingress.endpoint.as_deref(), Some("node node-a"));
    assert_eq!(allowed.ingress.enforcement, Some(Enforcement::DefaultDeny));
    assert_eq!(allowed.to_address, Some("10.200.0.11".parse().unwrap()));
    assert!(allowed.ingress.rule.contains("lock-down spec.ingress[1]"), "{}", allowed.ingress.rule);
    let denied = t("prod/client", "node", "22/TCP");
    assert_eq!((denied.verdict, denied.ingress.rule.as_str()), (Verdict::Denied, "default deny (no rule allows it)"));
    assert_eq!(t("cidr:192.0.2.1", "node", "22/TCP").verdict, Verdict::Allowed, "SSH from the world");
    let deny = t("cidr:192.0.2.66", "node", "22/TCP");
    assert_eq!(deny.verdict, Verdict::Denied, "the deny beats the world allow");
    assert!(deny.ingress.rule.contains("spec.ingressDeny[0]"), "{}", deny.ingress.rule);
    // From the node: the host's egress and the receiver's ingress.
    let out = t("node", "prod/server", "8080/TCP");
    assert_eq!(out.verdict, Verdict::Allowed);
    assert_eq!(out.egress.endpoint.as_deref(), Some("node node-a"));
    assert_eq!(out.from_address, Some("10.200.0.11".parse().unwrap()), "node is node-a, wherever the server runs");
    assert_eq!(t("node", "prod/server", "9090/TCP").egress.verdict, Verdict::Denied);
    assert_eq!(t("node", "cidr:192.0.2.53", "53/UDP").verdict, Verdict::Allowed, "the host side alone");
    assert_eq!(t("node", "cidr:192.0.2.54", "53/UDP").verdict, Verdict::Denied);
    assert_eq!(t("node", "entity:world", "443/TCP").verdict, Verdict::Denied);
    // A pod's own policy still applies on its side: the receiver's ingress.
    let guarded = format!(
        "{LOCK_DOWN}---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: client, namespace: prod}}\nspec:\n  endpointSelector: {{}}\n  ingress: [{{}}]\n"
    );
    let options = CompileOptions { allow_localhost: AllowLocalhost::Policy, ..on("node-a") };
    let g = engine(&guarded, options);
    let t = trace_of(&g, "node", "prod/client", "8080/TCP", None);
    assert_eq!((t.egress.verdict, t.ingress.verdict, t.verdict), (Verdict::Denied, Verdict::Denied, Verdict::Denied));
    // An unselected host allows everything on its side.
    let b = engine(LOCK_DOWN, on("node-b"));
    let open = trace_of(&b, "node", "cidr:192.0.2.1", "443/TCP", None);
    assert_eq!(open.verdict, Verdict::Allowed);
    assert_eq!(open.egress.rule, "no policy selects the endpoint in this direction");
}

#[test]
fn lint_says_when_a_host_rule_or_node_peer_matches_no_node() {
    let lint = |policies: &str| -> Vec<String> {
        let e = engine(policies, on("node-b"));
        palisade_policy::lint::lint_with_cluster(&e).iter().map(ToString::to_string).collect()
    };
    assert_eq!(lint(LOCK_DOWN), Vec::<String>::new(), "node-a is an ingress node, wherever the lint runs");
    let nowhere = LOCK_DOWN.replace("role: ingress", "role: gateway");
    assert_eq!(
        lint(&nowhere),
        ["p.yaml:5: warning: spec.nodeSelector: selects no node in the cluster (any:role=gateway,reserved:host)"]
    );
    let no_zone = FROM_ZONED_NODES.replace("key: zone", "key: rack");
    assert_eq!(
        lint(&no_zone),
        [
            "p.yaml:7: warning: spec.ingress[0]: node selector any:rack,reserved:remote-node matches no other node in the cluster"
        ]
    );
}
