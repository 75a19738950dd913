//! Reserved identities by address, as Cilium assigns them (the local host's addresses `host`,
//! other nodes' `remote-node`, the API server's `kube-apiserver`), the entities that select
//! them, `allow-localhost`, and L7 rules: HTTP on TCP judged by the node's proxy (`headerMatches`
//! included), Kafka on TCP, the rest denied by the datapath (`l7-unsupported`) with what they
//! would decide.
mod common;

use common::{trace_l7, trace_of};
use palisade_common as dp;
use palisade_policy::l7::KafkaRequest;
use palisade_policy::trace::{FlowEnd, HttpRequest, L7Request, Verdict};
use palisade_policy::{
    AllowLocalhost, Cluster, CompileOptions, CompiledPolicy, ParseOptions, SourceFile, parse_policies,
};

/// Two nodes, a pod on each, and the API server: its EndpointSlices hold the load balancer
/// (10.200.0.50), node-a (co-located) and node-c; a not-ready endpoint, another Service's slice
/// and a slice in another namespace labelled like it are not the API server.
const CLUSTER: &str = "kind: List
items:
- kind: Namespace
  metadata: {name: prod}
- kind: Node
  metadata: {name: node-a}
  status: {addresses: [{type: InternalIP, address: 10.200.0.11}, {type: Hostname, address: node-a}, {type: ExternalIP, address: 10.200.1.11}]}
- kind: Node
  metadata: {name: node-b}
  status: {addresses: [{type: InternalIP, address: 10.200.0.12}]}
- kind: Node
  metadata: {name: node-c}
  status: {addresses: [{type: InternalIP, address: 10.200.0.13}]}
- kind: Pod
  metadata: {name: client, namespace: prod, labels: {app: client}}
  spec: {nodeName: node-b}
  status: {podIP: 10.200.5.1}
- kind: Pod
  metadata: {name: server, namespace: prod, labels: {app: server}}
  spec: {nodeName: node-a, containers: [{ports: [{containerPort: 8080}]}]}
  status: {podIP: 10.200.5.2}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: kubernetes, namespace: default, labels: {kubernetes.io/service-name: kubernetes}}
  addressType: IPv4
  endpoints:
  - addresses: [10.200.0.50]
  - addresses: [10.200.0.11]
    conditions: {ready: true}
  - addresses: [10.200.0.13]
  - addresses: [10.200.0.99]
    conditions: {ready: false}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-x1, namespace: default, labels: {kubernetes.io/service-name: web}}
  endpoints: [{addresses: [10.200.0.60]}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: kubernetes, namespace: elsewhere, labels: {kubernetes.io/service-name: kubernetes}}
  endpoints: [{addresses: [10.200.0.61]}]
";

fn cluster() -> Cluster {
    Cluster::parse(&[SourceFile { name: "cluster.yaml", text: CLUSTER }]).expect("cluster")
}

fn engine(policies: &str, options: CompileOptions) -> CompiledPolicy {
    let parsed = parse_policies(&[SourceFile { name: "policies.yaml", text: policies }], &ParseOptions::default());
    assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
    CompiledPolicy::with_options(parsed.set, cluster(), options)
}

fn on(node: &str) -> CompileOptions {
    CompileOptions { node: Some(node.into()), ..CompileOptions::default() }
}

fn ipcache_at(engine: &CompiledPolicy, addr: &str) -> Option<u32> {
    let addr: std::net::IpAddr = addr.parse().unwrap();
    engine.ipcache().into_iter().find(|(p, _)| p.len == 32 && p.addr == addr).map(|(_, id)| id)
}

/// The server admits only what `from` names, on 8080.
fn server_ingress_from(from: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: server, namespace: prod}}\nspec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - {from}\n"
    )
}

const DEFAULT_DENY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress: [{}]
";

#[test]
fn the_apiserver_is_the_ready_addresses_of_default_kubernetes_slices() {
    let cluster = cluster();
    assert_eq!(cluster.endpoint_slices.len(), 3);
    let apiserver: Vec<String> = cluster.apiserver_addresses().map(|a| a.to_string()).collect();
    assert_eq!(apiserver, ["10.200.0.50", "10.200.0.11", "10.200.0.13"]);
    let node_a = cluster.node("node-a").unwrap();
    let addresses: Vec<String> = node_a.addresses.iter().map(ToString::to_string).collect();
    assert_eq!(addresses, ["10.200.0.11", "10.200.1.11"], "every IPv4 address of the node, not its hostname");
    assert_eq!(node_a.internal_ip, Some("10.200.0.11".parse().unwrap()));
}

#[test]
fn addresses_get_host_remote_node_and_kube_apiserver_as_cilium_assigns_them() {
    // The agent of node-a.
    let e = engine("", on("node-a"));
    let expected = [
        ("10.200.0.11", dp::IDENTITY_HOST, "the local host, where the API server also runs: host wins"),
        ("10.200.1.11", dp::IDENTITY_HOST, "every address of the local node"),
        ("10.200.0.12", dp::IDENTITY_REMOTE_NODE, "another node"),
        ("10.200.0.13", dp::IDENTITY_KUBE_APISERVER, "the API server on another node: kube-apiserver wins"),
        ("10.200.0.50", dp::IDENTITY_KUBE_APISERVER, "the API server's load balancer"),
    ];
    for (addr, id, why) in expected {
        assert_eq!(ipcache_at(&e, addr), Some(id), "{addr}: {why}");
        assert_eq!(e.identity_of_addr(addr.parse().unwrap()), id, "{addr}: identity_of_addr agrees with the ipcache");
        let seen = trace_of(&e, &format!("cidr:{addr}"), "prod/server", "8080/TCP", None);
        assert_eq!(seen.ingress.remote_identity, id, "{addr}: trace sees what the ipcache holds");
    }
    for addr in ["10.200.0.99", "10.200.0.60", "10.200.0.61"] {
        assert_eq!(ipcache_at(&e, addr), None, "{addr}: not the API server");
        assert_eq!(e.identity_of_addr(addr.parse().unwrap()), dp::IDENTITY_WORLD);
    }
    // The agent of node-b: node-a is remote, and the API server there is kube-apiserver.
    let e = engine("", on("node-b"));
    assert_eq!(ipcache_at(&e, "10.200.0.11"), Some(dp::IDENTITY_KUBE_APISERVER));
    assert_eq!(ipcache_at(&e, "10.200.1.11"), Some(dp::IDENTITY_REMOTE_NODE));
    assert_eq!(ipcache_at(&e, "10.200.0.12"), Some(dp::IDENTITY_HOST));
    // Every endpoint compiled, one node's view (local mode, `trace --node`).
    let e = engine("", CompileOptions { host_node: Some("node-b".into()), ..CompileOptions::default() });
    assert_eq!(ipcache_at(&e, "10.200.0.12"), Some(dp::IDENTITY_HOST));
    assert_eq!(e.endpoints().count(), 2, "host_node does not narrow the endpoints");
    // No node given: every node address is remote-node, as before; the API server is still known.
    let e = engine("", CompileOptions::default());
    assert_eq!(ipcache_at(&e, "10.200.0.11"), Some(dp::IDENTITY_KUBE_APISERVER));
    assert_eq!(ipcache_at(&e, "10.200.1.11"), Some(dp::IDENTITY_REMOTE_NODE));
    assert_eq!(ipcache_at(&e, "10.200.0.12"), Some(dp::IDENTITY_REMOTE_NODE));
    assert!(!e.ipcache().iter().any(|(_, id)| *id == dp::IDENTITY_HOST));
}

#[test]
fn a_pod_address_beats_a_node_or_apiserver_address() {
    let mut c = cluster();
    c.pods[0].ips = vec!["10.200.0.50".parse().unwrap()];
    c.pods[1].ips = vec!["10.200.0.12".parse().unwrap()];
    let e = CompiledPolicy::with_options(Default::default(), c, on("node-b"));
    for pod in ["client", "server"] {
        let p = e.cluster.pod("prod", pod).unwrap();
        assert_eq!(ipcache_at(&e, &p.ip().unwrap().to_string()), e.identity_of_pod(p), "{pod}");
    }
}

#[test]
fn slices_and_nodes_follow_changes() {
    let mut e = engine("", on("node-a"));
    e.set_endpoint_slices(Vec::new());
    assert_eq!(ipcache_at(&e, "10.200.0.13"), Some(dp::IDENTITY_REMOTE_NODE));
    assert_eq!(ipcache_at(&e, "10.200.0.50"), None);
    e.set_nodes(Vec::new());
    assert_eq!(ipcache_at(&e, "10.200.0.11"), None);
}

#[test]
fn entities_select_the_reserved_identities_of_those_addresses() {
    let options = || CompileOptions { allow_localhost: AllowLocalhost::Policy, ..on("node-a") };
    let cases = [
        ("host", vec!["10.200.0.11"]),
        ("remote-node", vec!["10.200.0.12"]),
        ("kube-apiserver", vec!["10.200.0.13", "10.200.0.50"]),
        ("cluster", vec!["10.200.0.11", "10.200.0.12", "10.200.0.13", "10.200.0.50", "10.200.5.1"]),
    ];
    let everyone = ["10.200.0.11", "10.200.0.12", "10.200.0.13", "10.200.0.50", "10.200.5.1", "192.0.2.1"];
    for (entity, allowed) in cases {
        let e = engine(&server_ingress_from(&format!("fromEntities: [{entity}]")), options());
        for addr in everyone {
            let from = if addr == "10.200.5.1" { "prod/client".to_string() } else { format!("cidr:{addr}") };
            let verdict = trace_of(&e, &from, "prod/server", "8080/TCP", None).verdict;
            let want = if allowed.contains(&addr) { Verdict::Allowed } else { Verdict::Denied };
            assert_eq!(verdict, want, "fromEntities: [{entity}] from {addr}");
        }
    }
}

#[test]
fn allow_localhost_always_admits_the_host_and_policy_subjects_it_to_policy() {
    let always = engine(DEFAULT_DENY, on("node-a"));
    let policy = engine(DEFAULT_DENY, CompileOptions { allow_localhost: AllowLocalhost::Policy, ..on("node-a") });
    for from in ["node", "cidr:10.200.0.11", "entity:host"] {
        let t = trace_of(&always, from, "prod/server", "8080/TCP", None);
        assert_eq!(t.verdict, Verdict::Allowed, "{from} under always");
        assert_eq!(t.ingress.rule, "the local host may always reach its pods");
        let t = trace_of(&policy, from, "prod/server", "8080/TCP", None);
        assert_eq!(t.verdict, Verdict::Denied, "{from} under policy: default deny");
        assert_eq!(t.ingress.remote_identity, dp::IDENTITY_HOST);
    }
    let group = policy.endpoint("prod", "server").unwrap().group;
    assert!(group.ingress.entries().iter().all(|e| e.value.cookie != dp::COOKIE_LOCALHOST), "no implicit entry");
    let group = always.endpoint("prod", "server").unwrap().group;
    let localhost = group.ingress.lookup(dp::IDENTITY_HOST, dp::Protocol::TCP, 8080).unwrap();
    assert_eq!((localhost.value.cookie, localhost.value.verdict()), (dp::COOKIE_LOCALHOST, dp::Verdict::Allow));
    // Another node is no local host either way.
    assert_eq!(trace_of(&always, "cidr:10.200.0.12", "prod/server", "8080/TCP", None).verdict, Verdict::Denied);
    // Under policy, a rule lets the host in.
    let e = engine(
        &server_ingress_from("fromEntities: [host]"),
        CompileOptions { allow_localhost: AllowLocalhost::Policy, ..on("node-a") },
    );
    assert_eq!(trace_of(&e, "node", "prod/server", "8080/TCP", None).verdict, Verdict::Allowed);
    assert_eq!(trace_of(&e, "prod/client", "prod/server", "8080/TCP", None).verdict, Verdict::Denied);
}

#[test]
fn trace_from_node_is_the_destinations_own_host_with_its_address() {
    let e = engine(DEFAULT_DENY, CompileOptions::default());
    let t = trace_of(&e, "node", "prod/server", "8080/TCP", None);
    assert_eq!(t.from_address, Some("10.200.0.11".parse().unwrap()), "server runs on node-a");
    assert_eq!(t.ingress.remote_identity, dp::IDENTITY_HOST);
    assert_eq!(t.egress.endpoint, None, "the host has no egress policy here");
    let t = trace_of(&e, "node", "prod/client", "8080/TCP", None);
    assert_eq!(t.from_address, Some("10.200.0.12".parse().unwrap()), "client runs on node-b");
    // To the node: the pod's egress sees host.
    let t = trace_of(&e, "prod/server", "node", "10250/TCP", None);
    assert_eq!((t.to_address, t.egress.remote_identity), (Some("10.200.0.11".parse().unwrap()), dp::IDENTITY_HOST));
    assert_eq!(FlowEnd::parse("node").unwrap().to_string(), "node");
}

const L7: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: '8080', protocol: ANY}]
      rules:
        http:
        - {method: GET, path: /public}
  egress:
  - toPorts:
    - ports: [{port: '53'}]
      rules:
        dns: [{matchPattern: '*'}]
";

#[test]
fn http_on_tcp_is_judged_by_the_proxy_and_other_l7_redirects_are_denied_with_the_policys_intent() {
    let e = engine(L7, CompileOptions::default());
    for (http, intent) in
        [(Some("GET /public"), Verdict::Allowed), (Some("POST /public"), Verdict::Denied), (None, Verdict::Allowed)]
    {
        let t = trace_of(&e, "prod/client", "prod/server", "8080/TCP", http);
        assert_eq!((t.verdict, t.intent, t.drop_reason()), (intent, intent, None), "{http:?}: the proxy enforces it");
        assert_eq!((t.ingress.verdict, t.ingress.intent), (intent, intent));
        assert!(t.ingress.proxy.is_some());
    }
    let proxy = trace_of(&e, "prod/client", "prod/server", "8080/TCP", None).ingress.proxy.unwrap();
    assert!(proxy.starts_with("judges each request"), "{proxy}");
    // The same HTTP rule on UDP (protocol ANY): no proxy takes it.
    let t = trace_of(&e, "prod/client", "prod/server", "8080/UDP", Some("GET /public"));
    assert_eq!((t.verdict, t.intent), (Verdict::Denied, Verdict::Allowed), "the datapath never fails open");
    assert_eq!((t.drop_reason(), t.drop_detail()), (Some("l7-unsupported"), Some("the HTTP proxy takes TCP only")));
    // Not an L7 port: nothing changes.
    let t = trace_of(&e, "prod/client", "prod/server", "9090/TCP", None);
    assert_eq!((t.verdict, t.intent, t.drop_reason()), (Verdict::Denied, Verdict::Denied, None));
    // Egress DNS rules redirect too: the DNS proxy judges queries on UDP and TCP alike (port
    // '53' is ANY); on SCTP no proxy does.
    let query = L7Request::Dns("example.com".into());
    for port in ["53/UDP", "53/TCP"] {
        let t = trace_l7(&e, "prod/server", "prod/client", port, Some(&query));
        assert_eq!((t.verdict, t.intent, t.egress.drop_reason), (Verdict::Allowed, Verdict::Allowed, None), "{port}");
        assert!(t.egress.proxy.as_deref().is_some_and(|p| p.starts_with("allowed: query example.com")), "{port}");
    }
    let t = trace_l7(&e, "prod/server", "prod/client", "53/SCTP", Some(&query));
    assert_eq!((t.verdict, t.intent), (Verdict::Denied, Verdict::Allowed), "the datapath never fails open");
    assert_eq!(
        (t.egress.drop_reason, t.egress.drop_detail),
        (Some("l7-unsupported"), Some("the DNS proxy takes UDP and TCP only"))
    );
}

#[test]
fn kafka_rules_are_judged_by_the_proxy_on_tcp_only() {
    let policy = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: broker, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: '8080', protocol: ANY}]
      rules:
        kafka: [{role: produce, topic: orders}]
";
    let e = engine(policy, CompileOptions::default());
    let kafka = |text: &str| L7Request::Kafka(KafkaRequest::parse(text, 7, None).unwrap());
    let allowed = trace_l7(&e, "prod/client", "prod/server", "8080/TCP", Some(&kafka("produce:orders")));
    assert_eq!((allowed.verdict, allowed.drop_reason()), (Verdict::Allowed, None));
    let proxy = allowed.ingress.proxy.unwrap();
    assert!(proxy.starts_with("allowed: Kafka produce orders matches CiliumNetworkPolicy prod/broker"), "{proxy}");
    let denied = trace_l7(&e, "prod/client", "prod/server", "8080/TCP", Some(&kafka("produce:secret")));
    assert_eq!((denied.verdict, denied.drop_reason()), (Verdict::Denied, None));
    assert_eq!(denied.ingress.proxy.unwrap(), "denied: Kafka produce secret matches no Kafka rule for this peer");
    let udp = trace_l7(&e, "prod/client", "prod/server", "8080/UDP", Some(&kafka("produce:orders")));
    assert_eq!(
        (udp.drop_reason(), udp.drop_detail()),
        (Some("l7-unsupported"), Some("the Kafka proxy takes TCP only"))
    );
}

const HEADER_MATCHES: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: '8080', protocol: TCP}]
      rules:
        http:
        - path: /strict
          headerMatches: [{name: X-Tenant, value: blue}]
        - path: /lenient
          headerMatches:
          - {name: X-Tenant, value: blue, mismatch: REPLACE}
          - {name: X-Trace, mismatch: LOG}
          - {name: X-Debug, value: 'off', mismatch: ADD}
";

fn proxy_line(engine: &CompiledPolicy, request: &str, headers: &[&str]) -> (Verdict, String) {
    let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let request = L7Request::Http(HttpRequest::parse(request, &headers).unwrap());
    let t = trace_l7(engine, "prod/client", "prod/server", "8080/TCP", Some(&request));
    (t.intent, t.ingress.proxy.unwrap())
}

#[test]
fn header_matches_without_a_mismatch_action_deny_and_with_one_rewrite_the_request() {
    let e = engine(HEADER_MATCHES, CompileOptions::default());
    assert_eq!(proxy_line(&e, "GET /strict", &["X-Tenant: blue"]).0, Verdict::Allowed);
    assert_eq!(proxy_line(&e, "GET /strict", &["x-tenant: red"]).0, Verdict::Denied);
    assert_eq!(proxy_line(&e, "GET /strict", &[]).0, Verdict::Denied);
    // Every mismatch has an action: the rule matches and the request is rewritten.
    let (intent, proxy) = proxy_line(&e, "GET /lenient", &["X-Tenant: red"]);
    assert_eq!(intent, Verdict::Allowed);
    assert!(proxy.contains("sets x-tenant: blue"), "{proxy}");
    assert!(proxy.contains("logs x-trace: <absent>"), "{proxy}");
    assert!(proxy.contains("adds x-debug: off"), "{proxy}");
    let (_, proxy) = proxy_line(&e, "GET /lenient", &["X-Tenant: blue", "X-Trace: 1", "X-Debug: off"]);
    assert!(!proxy.contains('('), "nothing to rewrite: {proxy}");
}

#[test]
fn header_matches_from_secrets_and_unknown_mismatch_actions_are_errors_at_their_field() {
    let text = HEADER_MATCHES
        .replace("mismatch: ADD", "mismatch: KEEP")
        .replace("[{name: X-Tenant, value: blue}]", "[{name: X-Tenant, secret: {namespace: prod, name: tenant}}]");
    let parsed = parse_policies(&[SourceFile { name: "policies/api.yaml", text: &text }], &ParseOptions::default());
    let errors: Vec<String> = parsed.diagnostics.iter().map(ToString::to_string).collect();
    assert!(
        errors.iter().any(|e| e.starts_with(
            "policies/api.yaml:13: spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].secret: unsupported"
        )),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.starts_with("policies/api.yaml:18: spec.ingress[0].toPorts[0].rules.http[1].headerMatches[2].mismatch: \"KEEP\" is not LOG, ADD, DELETE or REPLACE")),
        "{errors:?}"
    );
}

#[test]
fn dns_queries_are_judged_by_match_name_and_match_pattern() {
    let policy = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts:
    - ports: [{port: '53', protocol: UDP}]
      rules:
        dns: [{matchName: api.example.com}, {matchPattern: '*.corp.example.com'}]
";
    let e = engine(policy, CompileOptions::default());
    let query = |name: &str| {
        let t = trace_l7(&e, "prod/client", "prod/server", "53/UDP", Some(&L7Request::Dns(name.into())));
        (t.egress.intent, t.egress.proxy.unwrap())
    };
    assert_eq!(query("API.example.com.").0, Verdict::Allowed);
    assert_eq!(query("build.corp.example.com").0, Verdict::Allowed);
    let (intent, proxy) = query("a.build.corp.example.com");
    assert_eq!(intent, Verdict::Denied, "* stays within one label");
    assert!(proxy.ends_with("(REFUSED)"), "{proxy}");
    assert_eq!(query("example.org").0, Verdict::Denied);
}

#[test]
fn to_fqdns_selects_the_addresses_of_the_dns_answers_for_the_names_it_matches() {
    let policy = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toFQDNs: [{matchPattern: '*.example.com'}]
    toPorts: [{ports: [{port: '443', protocol: TCP}]}]
";
    let mut e = engine(policy, CompileOptions::default());
    let to =
        |e: &CompiledPolicy, addr: &str| trace_of(e, "prod/client", &format!("cidr:{addr}"), "443/TCP", None).verdict;
    // Offline, no answer yet: nothing is selected.
    assert_eq!(to(&e, "10.200.99.10"), Verdict::Denied);
    let answer = |pairs: &[(&str, &str)]| {
        let mut answers = std::collections::BTreeMap::<String, std::collections::BTreeSet<std::net::IpAddr>>::new();
        for (name, addr) in pairs {
            answers.entry(name.to_string()).or_default().insert(addr.parse().unwrap());
        }
        answers
    };
    e.set_dns_answers(answer(&[("api.example.com", "10.200.99.10"), ("example.org", "10.200.99.20")]));
    assert_eq!(to(&e, "10.200.99.10"), Verdict::Allowed, "api.example.com matches *.example.com");
    assert_eq!(to(&e, "10.200.99.20"), Verdict::Denied, "example.org does not");
    assert!(ipcache_at(&e, "10.200.99.10").is_some(), "the answer's address has an identity in the ipcache");
    // The answer expires: the address is no longer selected, and its identity goes.
    e.set_dns_answers(answer(&[("example.org", "10.200.99.20")]));
    assert_eq!(to(&e, "10.200.99.10"), Verdict::Denied);
    assert!(ipcache_at(&e, "10.200.99.10").is_none());
}
