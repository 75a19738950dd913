//! Error messages users read, and the semantics users notice, each through the public API:
//! `parse_policies` for diagnostics, `CompiledPolicy` + `trace` for verdicts.
mod common;

use std::collections::BTreeMap;

use common::trace_of;
use palisade_policy::cluster::{ContainerPort, Namespace, Pod, Service};
use palisade_policy::model::Protocol;
use palisade_policy::trace::Verdict;
use palisade_policy::{
    Cluster, CompiledPolicy, EnforcementMode, ParseOptions, Parsed, Severity, SourceFile, parse_policies,
};

// ---------------------------------------------------------------- helpers

fn parse(name: &str, text: &str) -> Parsed {
    parse_policies(&[SourceFile { name, text }], &ParseOptions::default())
}

fn errors(parsed: &Parsed) -> Vec<String> {
    parsed.errors().map(ToString::to_string).collect()
}

/// A CiliumNetworkPolicy in `ns` selecting `subject` (flow-style YAML), with `body` under spec.
fn cnp(ns: &str, name: &str, subject: &str, body: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  endpointSelector: {subject}\n{body}\n---\n"
    )
}

fn ccnp(name: &str, subject: &str, body: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: {name}\nspec:\n  endpointSelector: {subject}\n{body}\n---\n"
    )
}

fn knp(ns: &str, name: &str, pod_selector: &str, body: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  podSelector: {pod_selector}\n{body}\n---\n"
    )
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

struct World {
    cluster: Cluster,
    next_ip: u8,
}

impl World {
    fn new(namespaces: &[&str]) -> World {
        let mut cluster = Cluster::default();
        for ns in namespaces {
            cluster.namespaces.insert(
                ns.to_string(),
                Namespace { name: ns.to_string(), labels: labels(&[("kubernetes.io/metadata.name", ns)]) },
            );
        }
        World { cluster, next_ip: 10 }
    }

    fn pod(mut self, ns: &str, name: &str, pod_labels: &[(&str, &str)], ports: &[(&str, u16)]) -> World {
        self.next_ip += 1;
        self.cluster.pods.push(Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: labels(pod_labels),
            service_account: "default".into(),
            node_name: Some("node-a".into()),
            ips: vec![std::net::Ipv4Addr::new(10, 0, 0, self.next_ip).into()],
            host_network: false,
            ports: ports
                .iter()
                .map(|(n, p)| ContainerPort {
                    name: (!n.is_empty()).then(|| n.to_string()),
                    port: *p,
                    protocol: Protocol::TCP,
                })
                .collect(),
        });
        self
    }

    fn service(mut self, ns: &str, name: &str, selector: &[(&str, &str)]) -> World {
        self.cluster.services.push(Service {
            namespace: ns.into(),
            name: name.into(),
            labels: BTreeMap::new(),
            selector: Some(labels(selector)),
            ..Service::default()
        });
        self
    }

    fn engine(&self, policies: &str) -> CompiledPolicy {
        self.engine_mode(policies, EnforcementMode::Default)
    }

    fn engine_mode(&self, policies: &str, mode: EnforcementMode) -> CompiledPolicy {
        let parsed = parse("policies.yaml", policies);
        assert!(!parsed.has_errors(), "{:#?}", errors(&parsed));
        CompiledPolicy::new(parsed.set, self.cluster.clone(), mode)
    }
}

/// A CiliumNetworkPolicy `p` in prod selecting the server, with `body` under spec.
fn server_cnp(body: &str) -> String {
    cnp("prod", "p", "{matchLabels: {app: server}}", body)
}

/// Each flow `(from, to, port)` gets its verdict.
fn expect(engine: &CompiledPolicy, flows: &[(&str, &str, &str, Verdict)]) {
    for &(from, to, port, want) in flows {
        assert_eq!(verdict(engine, from, to, port), want, "{from} -> {to} {port}");
    }
}

fn verdict(engine: &CompiledPolicy, from: &str, to: &str, port: &str) -> Verdict {
    verdict_http(engine, from, to, port, None)
}

/// What the datapath does with the flow.
fn verdict_http(engine: &CompiledPolicy, from: &str, to: &str, port: &str, http: Option<&str>) -> Verdict {
    trace_of(engine, from, to, port, http).verdict
}

/// What the policy means, L7 rules included; the node's proxy judges HTTP on TCP, so the
/// datapath does the same.
fn intent_http(engine: &CompiledPolicy, from: &str, to: &str, port: &str, http: Option<&str>) -> Verdict {
    let t = trace_of(engine, from, to, port, http);
    assert_eq!(
        (t.verdict, t.drop_reason()),
        (t.intent, None),
        "{from} -> {to} {port}: the datapath (and the proxy) does what policy says"
    );
    t.intent
}

use Verdict::{Allowed, Denied};

/// Two namespaces, `prod` and `dev`; `client` and `server` in prod, `client` in dev.
fn basic() -> World {
    World::new(&["prod", "dev"])
        .pod("prod", "client", &[("app", "client")], &[])
        .pod("prod", "server", &[("app", "server")], &[("http", 8080)])
        .pod("dev", "client", &[("app", "client")], &[])
}

// ---------------------------------------------------------------- diagnostics

#[test]
fn bad_port_names_file_line_and_field_path() {
    let text = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: db
  namespace: prod
spec:
  endpointSelector:
    matchLabels:
      app: db
  ingress:
  - toPorts:
    - ports:
      - protocol: TCP
        port: \"80a\"
";
    assert_eq!(text.lines().nth(13).unwrap().trim(), "port: \"80a\"");
    let parsed = parse("policies/db.yaml", text);
    assert_eq!(
        errors(&parsed),
        ["policies/db.yaml:14: spec.ingress[0].toPorts[0].ports[0].port: \"80a\" is not a port or a port name"]
    );
    assert!(parsed.set.policies.is_empty(), "an invalid policy is left out");
}

#[test]
fn unknown_field_names_its_path_and_line() {
    let text = cnp("prod", "p", "{}", "  ingress:\n  - fromEndpoints: [{}]\n    toPort: [{ports: [{port: \"80\"}]}]");
    let parsed = parse("p.yaml", &text);
    let errs = errors(&parsed);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("p.yaml:10: spec.ingress[0].toPort: unknown field `toPort`, expected one of"),
        "{}",
        errs[0]
    );
    // In a NetworkPolicy too, and in a second document the line counts from the file start.
    let text = format!("{}{}", cnp("prod", "ok", "{}", "  ingress: []"), knp("prod", "k", "{}", "  ingres: []"));
    let errs = errors(&parse("k.yaml", &text));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("k.yaml:17: spec.ingres: unknown field `ingres`"), "{}", errs[0]);
}

#[test]
fn from_requires_is_accepted_with_a_deprecation_warning() {
    let text = cnp(
        "prod",
        "p",
        "{}",
        "  ingress:\n  - fromRequires: [{matchLabels: {env: prod}}]\n    fromEndpoints: [{matchLabels: {app: client}}]",
    );
    let parsed = parse("r.yaml", &text);
    assert!(!parsed.has_errors(), "{:?}", errors(&parsed));
    let warnings: Vec<_> = parsed.diagnostics.iter().filter(|d| d.severity == Severity::Warning).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].line, 9);
    assert_eq!(warnings[0].path, "spec.ingress[0].fromRequires");
    assert!(
        warnings[0].to_string().starts_with("r.yaml:9: warning: spec.ingress[0].fromRequires: deprecated"),
        "{}",
        warnings[0]
    );
    // And the requirement narrows the peers: prod/client lacks env=prod.
    let w = World::new(&["prod"])
        .pod("prod", "client", &[("app", "client")], &[])
        .pod("prod", "tagged", &[("app", "client"), ("env", "prod")], &[])
        .pod("prod", "server", &[("app", "server")], &[]);
    let e = w.engine(&server_cnp(
        "  ingress:\n  - fromRequires: [{matchLabels: {env: prod}}]\n    fromEndpoints: [{matchLabels: {app: client}}]",
    ));
    expect(&e, &[("prod/client", "prod/server", "80/TCP", Denied), ("prod/tagged", "prod/server", "80/TCP", Allowed)]);
}

// ---------------------------------------------------------------- semantics

#[test]
fn empty_ingress_rule_denies_in_cnp_and_allows_in_knp() {
    let w = basic();
    let e = w.engine(&server_cnp("  ingress: [{}]"));
    expect(
        &e,
        &[("prod/client", "prod/server", "8080/TCP", Denied), ("entity:world", "prod/server", "8080/TCP", Denied)],
    );
    let e = w.engine(&knp("prod", "k", "{matchLabels: {app: server}}", "  ingress: [{}]"));
    expect(
        &e,
        &[
            ("prod/client", "prod/server", "8080/TCP", Allowed),
            ("dev/client", "prod/server", "8080/TCP", Allowed),
            ("cidr:192.0.2.1", "prod/server", "8080/TCP", Allowed),
        ],
    );
    // Empty list: a KNP with policyTypes [Ingress] and no rules denies.
    let e = w.engine(&knp("prod", "k", "{matchLabels: {app: server}}", "  policyTypes: [Ingress]"));
    assert_eq!(verdict(&e, "prod/client", "prod/server", "8080/TCP"), Denied);
}

#[test]
fn any_protocol_is_tcp_udp_sctp_but_not_icmp() {
    let w = basic();
    let e = w.engine(&server_cnp("  ingress:\n  - toPorts: [{ports: [{port: \"80\", protocol: ANY}]}]"));
    for port in ["80/TCP", "80/UDP", "80/SCTP"] {
        assert_eq!(verdict(&e, "prod/client", "prod/server", port), Allowed, "{port}");
    }
    expect(&e, &[("prod/client", "prod/server", "81/TCP", Denied), ("prod/client", "prod/server", "icmp/8", Denied)]);
}

#[test]
fn l3_only_rule_allows_every_protocol_including_icmp() {
    let w = basic();
    let e = w.engine(&server_cnp("  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]"));
    for port in ["icmp/8", "icmp/0", "80/TCP", "53/UDP", "9/SCTP"] {
        assert_eq!(verdict(&e, "prod/client", "prod/server", port), Allowed, "{port}");
    }
    // Adding an L4 rule for the same peer does not take ICMP away from the L3-only rule...
    let e = w.engine(&server_cnp("  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: \"80\"}]}]"));
    assert_eq!(verdict(&e, "prod/client", "prod/server", "icmp/8"), Allowed);
    // ...but with only the L4 rule ICMP needs `icmps`.
    let e = w.engine(&server_cnp(
        "  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: \"80\"}]}]",
    ));
    assert_eq!(verdict(&e, "prod/client", "prod/server", "icmp/8"), Denied);
    let e = w.engine(&server_cnp("  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    icmps: [{fields: [{type: 8, family: IPv4}]}]"));
    expect(
        &e,
        &[
            ("prod/client", "prod/server", "icmp/8", Allowed),
            ("prod/client", "prod/server", "icmp/13", Denied),
            ("prod/client", "prod/server", "80/TCP", Denied),
        ],
    );
}

#[test]
fn cnp_peer_without_namespace_matches_only_the_policy_namespace() {
    let w = basic();
    let e = w.engine(&server_cnp("  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]"));
    expect(&e, &[("prod/client", "prod/server", "80/TCP", Allowed), ("dev/client", "prod/server", "80/TCP", Denied)]);
    // Naming the namespace reaches across.
    let e = w.engine(&server_cnp(
        "  ingress:\n  - fromEndpoints: [{matchLabels: {app: client, k8s:io.kubernetes.pod.namespace: dev}}]",
    ));
    expect(&e, &[("prod/client", "prod/server", "80/TCP", Denied), ("dev/client", "prod/server", "80/TCP", Allowed)]);
}

#[test]
fn cnp_subject_only_selects_its_own_namespace() {
    let w = basic().pod("dev", "server", &[("app", "server")], &[]);
    let e = w.engine(&server_cnp("  ingress: [{}]"));
    expect(&e, &[("prod/client", "prod/server", "80/TCP", Denied), ("prod/client", "dev/server", "80/TCP", Allowed)]);
}

#[test]
fn ccnp_empty_endpoint_peer_matches_pods_in_every_namespace_but_not_world() {
    let w = basic();
    let e = w.engine(&ccnp("c", "{matchLabels: {app: server}}", "  ingress:\n  - fromEndpoints: [{}]"));
    expect(
        &e,
        &[
            ("prod/client", "prod/server", "80/TCP", Allowed),
            ("dev/client", "prod/server", "80/TCP", Allowed),
            ("entity:world", "prod/server", "80/TCP", Denied),
            ("cidr:192.0.2.1", "prod/server", "80/TCP", Denied),
        ],
    );
    assert_eq!(
        verdict(&e, "entity:host", "prod/server", "80/TCP"),
        Allowed,
        "the local host may always reach its pods"
    );
    assert_eq!(verdict(&e, "entity:remote-node", "prod/server", "80/TCP"), Denied);
}

#[test]
fn cidr_rule_never_matches_a_pod_ip() {
    let w = basic();
    let e = w.engine(&server_cnp("  ingress:\n  - fromCIDR: [10.0.0.0/8]"));
    // prod/client is 10.0.0.11, inside 10.0.0.0/8, but a pod is not a CIDR identity.
    expect(
        &e,
        &[
            ("prod/client", "prod/server", "80/TCP", Denied),
            ("cidr:10.9.9.9", "prod/server", "80/TCP", Allowed),
            ("cidr:11.0.0.1", "prod/server", "80/TCP", Denied),
        ],
    );
    // Egress to a pod's address is denied the same way.
    let e = w.engine(&cnp(
        "prod",
        "p",
        "{matchLabels: {app: client}}",
        "  egress:\n  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]",
    ));
    expect(
        &e,
        &[
            ("prod/client", "prod/server", "8080/TCP", Denied),
            ("prod/client", "cidr:10.2.0.1", "443/TCP", Allowed),
            ("prod/client", "cidr:10.1.0.1", "443/TCP", Denied),
        ],
    );
}

#[test]
fn deny_beats_allow_on_the_same_or_narrower_key_and_a_broader_deny_wins() {
    let w = basic();
    let server = "{matchLabels: {app: server}}";
    let from_client = "fromEndpoints: [{matchLabels: {app: client}}]";
    // Same key.
    let e = w.engine(&cnp("prod", "p", server, &format!("  ingress:\n  - {from_client}\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]\n  ingressDeny:\n  - {from_client}\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]")));
    assert_eq!(verdict(&e, "prod/client", "prod/server", "80/TCP"), Denied);
    // A narrower deny inside a broader allow: only the denied port goes.
    let e = w.engine(&cnp("prod", "p", server, &format!("  ingress:\n  - {from_client}\n  ingressDeny:\n  - {from_client}\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]")));
    expect(
        &e,
        &[
            ("prod/client", "prod/server", "80/TCP", Denied),
            ("prod/client", "prod/server", "443/TCP", Allowed),
            ("prod/client", "prod/server", "80/UDP", Allowed),
        ],
    );
    // A broader deny (every peer, every port) beats a specific allow, from another policy too.
    let e = w.engine(&format!(
        "{}{}",
        cnp(
            "prod",
            "allow",
            server,
            &format!("  ingress:\n  - {from_client}\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]")
        ),
        ccnp("deny", server, "  ingressDeny:\n  - fromEntities: [all]")
    ));
    assert_eq!(verdict(&e, "prod/client", "prod/server", "80/TCP"), Denied);
    // A broader port deny (8000-9000) against a single-port allow.
    let e = w.engine(&cnp("prod", "p", server, &format!("  ingress:\n  - {from_client}\n    toPorts: [{{ports: [{{port: \"8080\"}}]}}]\n  ingressDeny:\n  - toPorts: [{{ports: [{{port: \"8000\", endPort: 9000, protocol: TCP}}]}}]")));
    expect(
        &e,
        &[("prod/client", "prod/server", "8080/TCP", Denied), ("prod/client", "prod/server", "8080/UDP", Allowed)],
    );
}

#[test]
fn enable_default_deny_false_allows_unselected_traffic_but_denies_still_deny() {
    let w = basic();
    let e = w.engine(&server_cnp("  enableDefaultDeny: {ingress: false}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: \"8080\"}]}]\n  ingressDeny:\n  - fromEntities: [world]"));
    assert_eq!(verdict(&e, "prod/client", "prod/server", "8080/TCP"), Allowed);
    assert_eq!(
        verdict(&e, "prod/client", "prod/server", "9999/TCP"),
        Allowed,
        "not default deny: what no rule allows is still allowed"
    );
    assert_eq!(verdict(&e, "dev/client", "prod/server", "8080/TCP"), Allowed);
    assert_eq!(verdict(&e, "cidr:192.0.2.1", "prod/server", "8080/TCP"), Denied, "the deny rule still applies");
    // Another policy that wants default deny wins.
    let e = w.engine(&format!(
        "{}{}",
        server_cnp(
            "  enableDefaultDeny: {ingress: false}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]"
        ),
        cnp(
            "prod",
            "q",
            "{matchLabels: {app: server}}",
            "  ingress:\n  - fromEndpoints: [{matchLabels: {app: nobody}}]"
        )
    ));
    expect(
        &e,
        &[("dev/client", "prod/server", "8080/TCP", Denied), ("prod/client", "prod/server", "8080/TCP", Allowed)],
    );
}

#[test]
fn enforcement_modes_always_and_never() {
    let w = basic();
    let none = "";
    let e = w.engine_mode(none, EnforcementMode::Default);
    assert_eq!(verdict(&e, "prod/client", "prod/server", "80/TCP"), Allowed);
    let e = w.engine_mode(none, EnforcementMode::Always);
    assert_eq!(verdict(&e, "prod/client", "prod/server", "80/TCP"), Denied);
    let allow = cnp(
        "prod",
        "p",
        "{matchLabels: {app: server}}",
        "  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]",
    );
    let e = w.engine_mode(&allow, EnforcementMode::Always);
    assert_eq!(verdict(&e, "prod/client", "prod/server", "80/TCP"), Denied, "always: client egress has no allow");
    let both = format!(
        "{allow}{}",
        cnp("prod", "q", "{matchLabels: {app: client}}", "  egress:\n  - toEndpoints: [{matchLabels: {app: server}}]")
    );
    let e = w.engine_mode(&both, EnforcementMode::Always);
    assert_eq!(verdict(&e, "prod/client", "prod/server", "80/TCP"), Allowed);
    let deny_all = cnp("prod", "d", "{}", "  ingress: [{}]\n  ingressDeny:\n  - fromEntities: [all]");
    let e = w.engine_mode(&deny_all, EnforcementMode::Default);
    assert_eq!(verdict(&e, "prod/client", "prod/server", "80/TCP"), Denied);
    let e = w.engine_mode(&deny_all, EnforcementMode::Never);
    assert_eq!(verdict(&e, "prod/client", "prod/server", "80/TCP"), Allowed);
}

#[test]
fn named_ports_resolve_per_endpoint_on_ingress_and_cluster_wide_on_egress() {
    let w = World::new(&["prod"])
        .pod("prod", "client", &[("app", "client")], &[])
        .pod("prod", "a", &[("app", "web")], &[("http", 8080)])
        .pod("prod", "b", &[("app", "web")], &[("http", 9090)]);
    // Ingress: each selected pod's own number.
    let e = w.engine(&cnp(
        "prod",
        "p",
        "{matchLabels: {app: web}}",
        "  ingress:\n  - toPorts: [{ports: [{port: http, protocol: TCP}]}]",
    ));
    expect(
        &e,
        &[
            ("prod/client", "prod/a", "8080/TCP", Allowed),
            ("prod/client", "prod/a", "9090/TCP", Denied),
            ("prod/client", "prod/b", "9090/TCP", Allowed),
            ("prod/client", "prod/b", "8080/TCP", Denied),
        ],
    );
    // Egress: the name resolves against every pod; pods disagree on "http", so it matches nothing.
    let egress = cnp(
        "prod",
        "p",
        "{matchLabels: {app: client}}",
        "  egress:\n  - toPorts: [{ports: [{port: http, protocol: TCP}]}]",
    );
    let e = w.engine(&egress);
    expect(&e, &[("prod/client", "prod/a", "8080/TCP", Denied), ("prod/client", "prod/b", "9090/TCP", Denied)]);
    // When all pods agree, egress resolves it, for any destination.
    let w = World::new(&["prod"])
        .pod("prod", "client", &[("app", "client")], &[])
        .pod("prod", "a", &[("app", "web")], &[("http", 8080)])
        .pod("prod", "c", &[("app", "other")], &[]);
    let e = w.engine(&egress);
    expect(
        &e,
        &[
            ("prod/client", "prod/a", "8080/TCP", Allowed),
            ("prod/client", "prod/c", "8080/TCP", Allowed),
            ("prod/client", "prod/a", "80/TCP", Denied),
        ],
    );
}

#[test]
fn l4_only_rule_for_the_same_peer_shadows_http_rules() {
    let w = basic().pod("prod", "other", &[("app", "other")], &[]);
    let http_rule = "  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts:\n    - ports: [{port: \"8080\", protocol: TCP}]\n      rules:\n        http: [{method: GET, path: /public}]";
    let e = w.engine(&server_cnp(http_rule));
    assert_eq!(intent_http(&e, "prod/client", "prod/server", "8080/TCP", Some("GET /public")), Allowed);
    assert_eq!(
        intent_http(&e, "prod/client", "prod/server", "8080/TCP", Some("GET /public/x")),
        Denied,
        "path is a full match"
    );
    assert_eq!(intent_http(&e, "prod/client", "prod/server", "8080/TCP", Some("POST /public")), Denied);
    // An L4-only rule for the same peer and port: L7 allow-all for that peer.
    let l4 = cnp(
        "prod",
        "l4",
        "{matchLabels: {app: server}}",
        "  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]",
    );
    let e = w.engine(&format!("{}{l4}", server_cnp(http_rule)));
    assert_eq!(intent_http(&e, "prod/client", "prod/server", "8080/TCP", Some("POST /admin")), Allowed);
    // An L4-only rule for a different peer does not shadow the client's HTTP rules.
    let other = cnp(
        "prod",
        "l4",
        "{matchLabels: {app: server}}",
        "  ingress:\n  - fromEndpoints: [{matchLabels: {app: other}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]",
    );
    let e = w.engine(&format!("{}{other}", server_cnp(http_rule)));
    assert_eq!(intent_http(&e, "prod/client", "prod/server", "8080/TCP", Some("POST /admin")), Denied);
    assert_eq!(intent_http(&e, "prod/other", "prod/server", "8080/TCP", Some("POST /admin")), Allowed);
}

#[test]
fn to_services_resolves_the_service_selector() {
    let w = World::new(&["prod", "data"])
        .pod("prod", "client", &[("app", "client")], &[])
        .pod("data", "db-0", &[("app", "db")], &[])
        .pod("data", "cache", &[("app", "cache")], &[])
        .service("data", "db", &[("app", "db")]);
    let e = w.engine(&cnp(
        "prod",
        "p",
        "{matchLabels: {app: client}}",
        "  egress:\n  - toServices: [{k8sService: {serviceName: db, namespace: data}}]",
    ));
    expect(&e, &[("prod/client", "data/db-0", "5432/TCP", Allowed), ("prod/client", "data/cache", "5432/TCP", Denied)]);
    // A service that does not exist selects nothing.
    let e = w.engine(&cnp(
        "prod",
        "p",
        "{matchLabels: {app: client}}",
        "  egress:\n  - toServices: [{k8sService: {serviceName: nope, namespace: data}}]",
    ));
    assert_eq!(verdict(&e, "prod/client", "data/db-0", "5432/TCP"), Denied);
}

#[test]
fn server_names_are_names_or_wildcard_domains_and_never_with_l7_rules() {
    let body = |port_rule: &str| {
        cnp(
            "prod",
            "tls",
            "{matchLabels: {app: db}}",
            &format!("  egress:\n  - toPorts:\n    - ports: [{{port: '443', protocol: TCP}}]\n{port_rule}"),
        )
    };
    let ok = parse("tls.yaml", &body("      serverNames: [API.example.com., '*.example.org']"));
    assert!(!ok.has_errors(), "{:?}", ok.diagnostics);
    let ports = &ok.set.policies[0].rules[0].egress.rules[0].ports;
    match &ports[0].l7 {
        Some(palisade_policy::model::L7Rules::Tls(names)) => assert_eq!(names, &["api.example.com", "*.example.org"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(ports[0].l7_at, Some(("spec.egress[0].toPorts[0].serverNames".to_string(), 11)));

    let bad = parse("tls.yaml", &body("      serverNames: ['api.*.example.com', 'a..b', '*']"));
    assert_eq!(
        errors(&bad),
        [
            "tls.yaml:11: spec.egress[0].toPorts[0].serverNames[0]: \"api.*.example.com\" is not a server name: a wildcard is only allowed as the whole leftmost label, as in *.example.com",
            "tls.yaml:11: spec.egress[0].toPorts[0].serverNames[1]: \"a..b\" is not a server name (a DNS name such as api.example.com, or *.example.com)",
            "tls.yaml:11: spec.egress[0].toPorts[0].serverNames[2]: \"*\" is not a server name: a wildcard is only allowed as the whole leftmost label, as in *.example.com",
        ]
    );

    let with_http =
        parse("tls.yaml", &body("      serverNames: [api.example.com]\n      rules:\n        http: [{method: GET}]"));
    let errors = errors(&with_http);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("tls.yaml:11: spec.egress[0].toPorts[0].serverNames: serverNames cannot be combined with rules (http, kafka or dns)"),
        "{errors:?}"
    );
    assert!(with_http.set.policies.is_empty(), "rejected, not enforced without its L7 rules");
}

#[test]
fn kafka_rules_resolve_roles_and_refuse_what_cilium_refuses() {
    let body = |rules: &str| {
        cnp(
            "prod",
            "broker",
            "{matchLabels: {app: kafka}}",
            &format!(
                "  ingress:\n  - toPorts:\n    - ports: [{{port: '9092', protocol: TCP}}]\n      rules:\n        kafka:\n{rules}"
            ),
        )
    };
    let ok = parse(
        "kafka.yaml",
        &body(
            "        - {role: Produce, topic: orders}\n        - {apiKey: HEARTBEAT, apiVersion: '4', clientID: app, topic: ''}",
        ),
    );
    assert!(!ok.has_errors(), "{:?}", ok.diagnostics);
    let ports = &ok.set.policies[0].rules[0].ingress.rules[0].ports;
    match &ports[0].l7 {
        Some(palisade_policy::model::L7Rules::Kafka(rules)) => {
            assert_eq!(
                (rules[0].api_keys.as_slice(), rules[0].topic.as_deref()),
                ([0, 3, 18].as_slice(), Some("orders"))
            );
            assert_eq!(
                (
                    rules[1].api_keys.as_slice(),
                    rules[1].api_version,
                    rules[1].client_id.as_deref(),
                    rules[1].topic.as_deref()
                ),
                ([12].as_slice(), Some(4), Some("app"), None)
            );
        }
        other => panic!("{other:?}"),
    }
    let bad = parse(
        "kafka.yaml",
        &body(
            "        - {role: produce, apiKey: fetch}\n        - {role: admin}\n        - {apiKey: '0'}\n        - {apiVersion: v2}\n        - {topic: 'a/b'}",
        ),
    );
    assert_eq!(
        errors(&bad),
        [
            "kafka.yaml:13: spec.ingress[0].toPorts[0].rules.kafka[0]: role and apiKey are mutually exclusive",
            "kafka.yaml:14: spec.ingress[0].toPorts[0].rules.kafka[1].role: \"admin\" is not produce or consume",
            "kafka.yaml:15: spec.ingress[0].toPorts[0].rules.kafka[2].apiKey: \"0\" is not a Kafka API key",
            "kafka.yaml:16: spec.ingress[0].toPorts[0].rules.kafka[3].apiVersion: \"v2\" is not a Kafka API version (a 16-bit integer)",
            "kafka.yaml:17: spec.ingress[0].toPorts[0].rules.kafka[4].topic: \"a/b\" is not a Kafka topic (at most 255 letters, digits, '.', '_' and '-')",
        ]
    );
}
