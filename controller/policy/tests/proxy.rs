//! What the node's L7 proxy asks of a compilation: which endpoint an address is, whether L4
//! lets a flow through, which L7 rules apply, and how they judge each request (the same answer
//! `trace` gives).
mod common;

use common::trace_of;
use palisade_common as dp;
use palisade_policy::l7::KafkaRequest;
use palisade_policy::trace::Verdict;
use palisade_policy::{
    Cluster, CompileOptions, CompiledPolicy, Direction, FlowPort, HttpRequest, HttpRewrite, L7Request, ParseOptions,
    RequestVerdict, SourceFile, parse_policies,
};

/// The server on node-a, the client and a pod without policy on node-b.
const CLUSTER: &str = "kind: List
items:
- kind: Namespace
  metadata: {name: prod}
- kind: Node
  metadata: {name: node-a}
  status: {addresses: [{type: InternalIP, address: 10.200.0.11}]}
- kind: Node
  metadata: {name: node-b}
  status: {addresses: [{type: InternalIP, address: 10.200.0.12}]}
- kind: Pod
  metadata: {name: client, namespace: prod, labels: {app: client}}
  spec: {nodeName: node-b}
  status: {podIP: 10.200.5.1}
- kind: Pod
  metadata: {name: server, namespace: prod, labels: {app: server}}
  spec: {nodeName: node-a, containers: [{ports: [{containerPort: 8080, name: http}]}]}
  status: {podIP: 10.200.5.2}
- kind: Pod
  metadata: {name: other, namespace: prod, labels: {app: other}}
  spec: {nodeName: node-b}
  status: {podIP: 10.200.5.3}
";

/// HTTP rules from the client on the server's named port, a header rewrite, an L4-only port,
/// and the client's DNS rules.
const POLICIES: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: http, protocol: TCP}]
      rules:
        http:
        - {method: GET, path: '/public/.*'}
        - path: /tenant
          headerMatches: [{name: X-Tenant, value: blue, mismatch: REPLACE}]
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: '9090', protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toPorts:
    - ports: [{port: '53', protocol: UDP}]
      rules:
        dns: [{matchPattern: '*'}]
";

const KAFKA: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: broker, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: '8080', protocol: TCP}]
      rules:
        kafka: [{role: produce, topic: orders}]
";

/// An L4-only rule for the client on the HTTP port.
const L4_ONLY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l4, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: '8080', protocol: TCP}]}]
";

fn engine(policies: &str, node: Option<&str>) -> CompiledPolicy {
    let cluster = Cluster::parse(&[SourceFile { name: "cluster.yaml", text: CLUSTER }]).expect("cluster");
    let parsed = parse_policies(&[SourceFile { name: "policies.yaml", text: policies }], &ParseOptions::default());
    assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
    let options = CompileOptions { node: node.map(str::to_string), ..CompileOptions::default() };
    CompiledPolicy::with_options(parsed.set, cluster, options)
}

fn port(text: &str) -> FlowPort {
    FlowPort::parse(text).unwrap()
}

fn http(request: &str, headers: &[&str]) -> L7Request {
    let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    L7Request::Http(HttpRequest::parse(request, &headers).unwrap())
}

fn identity(e: &CompiledPolicy, ip: &str) -> u32 {
    e.identity_of_addr(ip.parse().unwrap())
}

/// The server's ingress from the client on 8080/TCP.
fn judge(e: &CompiledPolicy, request: &L7Request) -> Option<RequestVerdict> {
    let client = identity(e, "10.200.5.1");
    e.judge_request("prod", "server", Direction::Ingress, client, port("8080/TCP"), request)
}

#[test]
fn a_request_is_allowed_by_the_rule_that_matches_it_with_its_cookie_and_rewrite() {
    let e = engine(POLICIES, Some("node-a"));
    let allowed = judge(&e, &http("GET /public/a", &[])).unwrap();
    assert!(allowed.allowed, "{allowed:?}");
    assert_eq!(allowed.reason, "CiliumNetworkPolicy prod/server spec.ingress[0]");
    assert_eq!(e.policies().describe_cookie(allowed.cookie), allowed.reason);
    assert_eq!(allowed.rewrite, HttpRewrite::default());

    let rewritten = judge(&e, &http("PUT /tenant", &["X-Tenant: red"])).unwrap();
    assert!(rewritten.allowed);
    assert_eq!(rewritten.rewrite.replace, [("x-tenant".to_string(), "blue".to_string())]);

    let denied = judge(&e, &http("POST /public/a", &[])).unwrap();
    assert_eq!(
        denied,
        RequestVerdict {
            allowed: false,
            reason: "POST /public/a matches no HTTP rule for this peer (HTTP 403)".into(),
            cookie: dp::COOKIE_NONE,
            rewrite: HttpRewrite::default(),
        }
    );
}

#[test]
fn the_proxy_and_trace_decide_alike() {
    let e = engine(POLICIES, None);
    for request in ["GET /public/a", "GET /private", "DELETE /tenant"] {
        let verdict = judge(&e, &http(request, &[])).unwrap();
        let ingress = trace_of(&e, "prod/client", "prod/server", "8080/TCP", Some(request)).ingress;
        let want = if verdict.allowed { Verdict::Allowed } else { Verdict::Denied };
        assert_eq!((ingress.verdict, ingress.intent, ingress.drop_reason), (want, want, None), "{request}");
        assert!(ingress.proxy.unwrap().contains(&verdict.reason), "{request}");
    }
}

#[test]
fn no_l7_verdict_where_the_entry_does_not_redirect_or_the_endpoint_is_not_local() {
    let e = engine(POLICIES, Some("node-a"));
    let (client, other) = (identity(&e, "10.200.5.1"), identity(&e, "10.200.5.3"));
    let request = http("GET /public/a", &[]);
    let judge_from = |remote, on| e.judge_request("prod", "server", Direction::Ingress, remote, port(on), &request);
    assert_eq!(judge_from(client, "9090/TCP"), None, "L4-only: L4 decides");
    assert_eq!(judge_from(other, "8080/TCP"), None, "denied at L4");
    assert_eq!(e.judge_request("prod", "client", Direction::Egress, 0, port("53/UDP"), &request), None, "node-b");
    assert_eq!(e.judge_request("prod", "nope", Direction::Ingress, client, port("8080/TCP"), &request), None);

    let l4 = |remote, on| e.l4_allows("prod", "server", Direction::Ingress, remote, port(on));
    assert_eq!(l4(client, "9090/TCP"), Some(true));
    assert_eq!(l4(client, "8080/TCP"), Some(true), "a redirect lets it through, to the proxy");
    assert_eq!(l4(other, "8080/TCP"), Some(false));
    assert_eq!(l4(client, "8081/TCP"), Some(false));
    assert_eq!(e.l4_allows("prod", "client", Direction::Egress, other, port("80/TCP")), None, "not on node-a");
}

#[test]
fn dns_queries_are_judged_and_kafka_requests_by_kafka_rules() {
    let e = engine(POLICIES, None);
    let dns = L7Request::Dns("example.com".into());
    let on_http_port = judge(&e, &dns).unwrap();
    assert_eq!(
        (on_http_port.allowed, on_http_port.reason.as_str()),
        (false, "query example.com matches no DNS rule for this peer (REFUSED)")
    );
    let to_dns =
        e.judge_request("prod", "client", Direction::Egress, dp::IDENTITY_WORLD, port("53/UDP"), &dns).unwrap();
    assert!(to_dns.allowed && to_dns.cookie != dp::COOKIE_NONE, "matchPattern '*' allows it: {to_dns:?}");

    let e = engine(KAFKA, None);
    let kafka = |text: &str| L7Request::Kafka(KafkaRequest::parse(text, 9, Some("app".into())).unwrap());
    let produce = judge(&e, &kafka("produce:orders")).unwrap();
    assert_eq!((produce.allowed, produce.reason.as_str()), (true, "CiliumNetworkPolicy prod/broker spec.ingress[0]"));
    assert!(judge(&e, &kafka("metadata")).unwrap().allowed, "role produce asks metadata");
    let denied = judge(&e, &kafka("produce:orders,secret")).unwrap();
    assert_eq!(
        (denied.allowed, denied.reason.as_str(), denied.cookie),
        (false, "Kafka produce orders,secret matches no Kafka rule for this peer", dp::COOKIE_NONE)
    );
    assert!(!judge(&e, &kafka("consume:orders")).unwrap().allowed);
    // Kafka rules never allow an HTTP request.
    assert!(!judge(&e, &http("GET /", &[])).unwrap().allowed);
}

#[test]
fn l7_kinds_name_the_rules_the_proxy_would_apply() {
    let e = engine(POLICIES, None);
    let client = identity(&e, "10.200.5.1");
    let kinds = |ns, name, direction, remote, on| e.l7_kinds(ns, name, direction, remote, port(on));
    assert_eq!(kinds("prod", "server", Direction::Ingress, client, "8080/TCP"), ["http"]);
    assert_eq!(kinds("prod", "client", Direction::Egress, dp::IDENTITY_WORLD, "53/UDP"), ["dns"]);
    assert!(kinds("prod", "server", Direction::Ingress, client, "9090/TCP").is_empty(), "not redirected");
    // HTTP and Kafka rules on one port: the proxy speaks one protocol per connection, so it
    // refuses the connection.
    let e = engine(&format!("{POLICIES}---\n{KAFKA}"), None);
    assert_eq!(e.l7_kinds("prod", "server", Direction::Ingress, client, port("8080/TCP")), ["http", "kafka"]);
    assert_eq!(
        palisade_policy::l7::unproxied(dp::Protocol::TCP, &["http", "kafka"], None),
        Some("Kafka rules and other L7 rules on one port (the proxy speaks one protocol per connection)")
    );
    assert!(!judge(&e, &http("GET /public/a", &[])).unwrap().allowed);
    // An L4-only rule for the same peer and port: every request passes, under its cookie.
    let e = engine(&format!("{POLICIES}---\n{L4_ONLY}"), None);
    assert!(e.l7_kinds("prod", "server", Direction::Ingress, client, port("8080/TCP")).is_empty());
    let any = judge(&e, &http("POST /admin", &[])).unwrap();
    assert_eq!((any.allowed, any.reason.as_str()), (true, "CiliumNetworkPolicy prod/l4 spec.ingress[0]"));
}

#[test]
fn endpoint_at_finds_the_local_endpoint_of_an_address() {
    let e = engine(POLICIES, Some("node-a"));
    let at = |ip: &str| e.endpoint_at(ip.parse().unwrap());
    assert_eq!(at("10.200.5.2"), Some(("prod", "server")));
    assert_eq!(at("10.200.5.1"), None, "on node-b: not an endpoint of this node");
    assert_eq!(at("10.200.0.11"), None, "the node");
    assert_eq!(at("10.200.9.9"), None);
    assert_eq!(engine(POLICIES, None).endpoint_at("10.200.5.1".parse().unwrap()), Some(("prod", "client")));
}

#[test]
fn identity_of_a_pod_address_is_its_ipcache_entry() {
    let e = engine(POLICIES, Some("node-a"));
    for (prefix, id) in e.ipcache() {
        if prefix.len == 32 {
            assert_eq!(e.identity_of_addr(prefix.addr), id, "{prefix:?}");
        }
    }
    assert_eq!(identity(&e, "10.200.9.9"), dp::IDENTITY_WORLD);
}

#[test]
fn has_l7_rules_only_with_an_l7_rules_field() {
    assert!(engine(POLICIES, None).has_l7_rules());
    assert!(engine(KAFKA, None).has_l7_rules());
    assert!(!engine(L4_ONLY, None).has_l7_rules());
    assert!(!engine("", None).has_l7_rules());
}

#[test]
fn only_the_ports_with_l7_rules_go_to_the_proxy() {
    let policy = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: '8080', protocol: TCP}]
      rules:
        http: [{method: GET}]
    - ports: [{port: '5432', protocol: TCP}]
";
    let e = engine(policy, None);
    let client = identity(&e, "10.200.5.1");
    let entry = |on| e.endpoint("prod", "server").unwrap().group.ingress.lookup(client, dp::Protocol::TCP, on);
    assert_eq!(entry(8080).unwrap().value.verdict(), dp::Verdict::Redirect);
    assert_eq!(entry(5432).unwrap().value.verdict(), dp::Verdict::Allow, "a database connection is not HTTP");
    let request = http("GET /", &[]);
    assert_eq!(e.judge_request("prod", "server", Direction::Ingress, client, port("5432/TCP"), &request), None);
    assert_eq!(e.l4_allows("prod", "server", Direction::Ingress, client, port("5432/TCP")), Some(true));
    let t = trace_of(&e, "prod/client", "prod/server", "5432/TCP", None);
    assert_eq!((t.ingress.verdict, t.ingress.proxy), (Verdict::Allowed, None));
}

/// `serverNames` from the client on 8443 (an exact name and a wildcard domain), with HTTP rules
/// from the same client on 8080.
const SERVER_NAMES: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: tls, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: '8443', protocol: TCP}]
      serverNames: [api.example.com, '*.cdn.example.com']
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: '8080', protocol: TCP}]
      rules:
        http: [{method: GET}]
";

#[test]
fn tls_connections_are_judged_by_the_server_name_of_their_client_hello() {
    let e = engine(SERVER_NAMES, Some("node-a"));
    let client = identity(&e, "10.200.5.1");
    let judge_on = |on: &str, name: Option<&str>| {
        let request = L7Request::Tls(name.map(str::to_string));
        e.judge_request("prod", "server", Direction::Ingress, client, port(on), &request).unwrap()
    };
    assert_eq!(e.l7_kinds("prod", "server", Direction::Ingress, client, port("8443/TCP")), ["tls"]);
    for name in ["api.example.com", "img.cdn.example.com", "a.b.cdn.example.com"] {
        let allowed = judge_on("8443/TCP", Some(name));
        assert!(allowed.allowed, "{name}: {allowed:?}");
        assert_eq!(allowed.reason, "CiliumNetworkPolicy prod/tls spec.ingress[0]");
    }
    for name in ["www.example.com", "cdn.example.com", "api.example.com.evil"] {
        let denied = judge_on("8443/TCP", Some(name));
        assert_eq!(
            (denied.allowed, denied.reason.as_str(), denied.cookie),
            (
                false,
                format!("server name {name} matches no serverNames rule for this peer (connection reset)").as_str(),
                dp::COOKIE_NONE
            )
        );
    }
    let none = judge_on("8443/TCP", None);
    assert_eq!(
        (none.allowed, none.reason.as_str()),
        (false, "a connection without TLS server name matches no serverNames rule for this peer (connection reset)")
    );
    // HTTP rules never allow a TLS connection, nor serverNames an HTTP request.
    assert!(!judge_on("8080/TCP", Some("api.example.com")).allowed);
    let http_on_tls =
        e.judge_request("prod", "server", Direction::Ingress, client, port("8443/TCP"), &http("GET /", &[]));
    assert!(!http_on_tls.unwrap().allowed);
}

#[test]
fn trace_judges_a_server_name_as_the_proxy_does() {
    let e = engine(SERVER_NAMES, None);
    for (name, want) in [("api.example.com", Verdict::Allowed), ("evil.example.org", Verdict::Denied)] {
        let request = L7Request::Tls(Some(name.into()));
        let ingress = common::trace_l7(&e, "prod/client", "prod/server", "8443/TCP", Some(&request)).ingress;
        assert_eq!((ingress.verdict, ingress.drop_reason), (want, None), "{name}");
        let proxy = ingress.proxy.unwrap();
        assert!(
            proxy.contains(if want == Verdict::Allowed {
                "allowed: server name api.example.com matches"
            } else {
                "denied: server name evil.example.org"
            }),
            "{proxy}"
        );
    }
}

#[test]
fn server_names_on_udp_are_not_proxied() {
    let udp = SERVER_NAMES.replace("{port: '8443', protocol: TCP}", "{port: '8443', protocol: UDP}");
    let e = engine(&udp, None);
    let client = identity(&e, "10.200.5.1");
    let request = L7Request::Tls(Some("api.example.com".into()));
    let verdict = e.judge_request("prod", "server", Direction::Ingress, client, port("8443/UDP"), &request).unwrap();
    assert_eq!((verdict.allowed, verdict.reason.as_str()), (false, "l7-unsupported: the TLS proxy takes TCP only"));
}
