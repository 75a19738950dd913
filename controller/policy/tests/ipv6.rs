//! IPv6 through the policy engine: prefixes of both families, CIDR rules and ipBlocks in IPv6,
//! mixed-family CIDR sets, ICMPv6, the world entities per family, dual-stack pods, nodes,
//! Services and EndpointSlices in the ipcache, and `trace` with IPv6 peers.
mod common;

use std::net::IpAddr;

use common::trace_of;
use palisade_common as dp;
use palisade_policy::model::Prefix;
use palisade_policy::trace::{FlowEnd, FlowPort, Verdict};
use palisade_policy::{
    Cluster, CompileOptions, CompiledPolicy, ParseOptions, Parsed, SourceFile, parse_policies, trace,
};

use Verdict::{Allowed, Denied};

/// Dual-stack: two nodes with an InternalIP of each family, a dual-stack client and server,
/// an IPv6-only pod, a dual-stack Service, and an API server reached over IPv6.
const CLUSTER: &str = "kind: List
items:
- kind: Namespace
  metadata: {name: prod}
- kind: Node
  metadata: {name: node-a}
  status: {addresses: [{type: InternalIP, address: 10.200.0.11}, {type: InternalIP, address: 'fd00:200::11'}, {type: Hostname, address: node-a}]}
- kind: Node
  metadata: {name: node-b}
  status: {addresses: [{type: InternalIP, address: 'fd00:200::12'}, {type: InternalIP, address: 10.200.0.12}]}
- kind: Pod
  metadata: {name: client, namespace: prod, labels: {app: client}}
  spec: {nodeName: node-a}
  status: {podIP: 10.0.0.11, podIPs: [{ip: 10.0.0.11}, {ip: 'fd00:10::11'}]}
- kind: Pod
  metadata: {name: server, namespace: prod, labels: {app: server}}
  spec: {nodeName: node-a, containers: [{ports: [{name: http, containerPort: 8080}]}]}
  status: {podIP: 10.0.0.12, podIPs: [{ip: 10.0.0.12}, {ip: 'fd00:10::12'}]}
- kind: Pod
  metadata: {name: v6only, namespace: prod, labels: {app: v6only}}
  spec: {nodeName: node-b}
  status: {podIP: 'fd00:10::20', podIPs: [{ip: 'fd00:10::20'}]}
- kind: Service
  metadata: {name: web, namespace: prod}
  spec: {selector: {app: server}, clusterIPs: [10.96.0.10, 'fd00:96::10'], ports: [{port: 80, targetPort: 8080}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: kubernetes-v6, namespace: default, labels: {kubernetes.io/service-name: kubernetes}}
  addressType: IPv6
  endpoints: [{addresses: ['fd00:200::50']}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: names, namespace: default, labels: {kubernetes.io/service-name: names}}
  addressType: FQDN
  endpoints: [{addresses: [db.example.com]}]
";

fn cluster() -> Cluster {
    Cluster::parse(&[SourceFile { name: "cluster.yaml", text: CLUSTER }]).expect("cluster")
}

fn parse(name: &str, text: &str) -> Parsed {
    parse_policies(&[SourceFile { name, text }], &ParseOptions::default())
}

fn errors(parsed: &Parsed) -> Vec<String> {
    parsed.errors().map(ToString::to_string).collect()
}

/// Compiled on node-a (its addresses are `host`, node-b's `remote-node`).
fn engine(policies: &str) -> CompiledPolicy {
    let parsed = parse("policies.yaml", policies);
    assert!(!parsed.has_errors(), "{:#?}", errors(&parsed));
    assert!(parsed.diagnostics.is_empty(), "no warnings either: {:#?}", parsed.diagnostics);
    let options = CompileOptions { node: Some("node-a".into()), ..CompileOptions::default() };
    CompiledPolicy::with_options(parsed.set, cluster(), options)
}

/// A CiliumNetworkPolicy in prod selecting `app: <subject>`, with `body` under spec.
fn cnp(name: &str, subject: &str, body: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: {name}\n  namespace: prod\nspec:\n  endpointSelector: {{matchLabels: {{app: {subject}}}}}\n{body}\n---\n"
    )
}

fn knp(name: &str, subject: &str, body: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: prod\nspec:\n  podSelector: {{matchLabels: {{app: {subject}}}}}\n{body}\n---\n"
    )
}

fn expect(engine: &CompiledPolicy, flows: &[(&str, &str, &str, Verdict)]) {
    for &(from, to, port, want) in flows {
        assert_eq!(trace_of(engine, from, to, port, None).verdict, want, "{from} -> {to} {port}");
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// The identity the ipcache gives exactly `prefix`.
fn ipcache_entry(engine: &CompiledPolicy, prefix: &str) -> Option<u32> {
    let prefix = Prefix::parse(prefix).unwrap();
    engine.ipcache().into_iter().find(|(p, _)| *p == prefix).map(|(_, id)| id)
}

// ---------------------------------------------------------------- prefixes

#[test]
fn prefixes_of_both_families_in_canonical_form() {
    let v6 = Prefix::parse("2001:DB8:0:0::1/32").unwrap();
    assert_eq!(v6.to_string(), "2001:db8::/32", "host bits cleared, RFC 5952 form");
    assert_eq!(Prefix::parse("2001:db8::1").unwrap().to_string(), "2001:db8::1/128", "a bare address is a /128");
    assert_eq!(Prefix::parse("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
    assert_eq!(Prefix::new(ip("2001:db8:0:0:1:0:0:1"), 64).to_string(), "2001:db8::/64");
    assert_eq!(Prefix::new(ip("2001:db8::1:0:0:1"), 128).to_string(), "2001:db8::1:0:0:1/128");
    assert!(Prefix::parse("2001:db8::/129").is_none());
    assert!(Prefix::parse("10.0.0.0/33").is_none());
    assert!(v6.contains_addr(ip("2001:db8:ffff::1")));
    assert!(!v6.contains_addr(ip("10.0.0.1")));
    // Never across families, not even the /0s.
    let (all4, all6) = (Prefix::parse("0.0.0.0/0").unwrap(), Prefix::parse("::/0").unwrap());
    assert!(all6.contains(&v6) && !all4.contains(&v6) && !all6.contains(&Prefix::parse("10.0.0.0/8").unwrap()));
    assert!(!all4.contains_addr(ip("::ffff:10.0.0.1")), "an IPv4-mapped IPv6 address is IPv6");
    // IPv4 sorts first, so IPv4-only ipcache output keeps its order.
    assert!(Prefix::parse("255.255.255.255/32").unwrap() < Prefix::parse("::/0").unwrap());
}

// ---------------------------------------------------------------- CIDR rules

#[test]
fn to_cidr_and_to_cidr_set_with_except_in_ipv6() {
    let e = engine(&cnp(
        "p",
        "client",
        "  egress:\n  - toCIDR: ['2001:db8:aa::/48']\n  - toCIDRSet: [{cidr: '2001:db8::/32', except: ['2001:db8:1::/48', '2001:db8:2::5']}]\n    toPorts: [{ports: [{port: '443', protocol: TCP}]}]",
    ));
    expect(
        &e,
        &[
            ("prod/client", "cidr:2001:db8:aa::1", "22/TCP", Allowed),
            ("prod/client", "cidr:2001:db8:5::1", "443/TCP", Allowed),
            ("prod/client", "cidr:2001:db8:5::1", "22/TCP", Denied),
            ("prod/client", "cidr:2001:db8:1::9", "443/TCP", Denied),
            ("prod/client", "cidr:2001:db8:2::5", "443/TCP", Denied),
            ("prod/client", "cidr:2001:db8:2::6", "443/TCP", Allowed),
            ("prod/client", "cidr:2001:db9::1", "443/TCP", Denied),
            ("prod/client", "cidr:10.0.0.99", "443/TCP", Denied),
        ],
    );
    // Each prefix has its CIDR identity, labelled with the IPv6 world.
    let id = ipcache_entry(&e, "2001:db8::/32").expect("a CIDR identity");
    assert_eq!(
        e.identities().get(id).unwrap().labels.to_string(),
        "cidr:2001:db8::/32,reserved:world,reserved:world-ipv6"
    );
    assert!(ipcache_entry(&e, "2001:db8:2::5/128").is_some(), "the except /128 too");
}

#[test]
fn from_cidr_and_from_cidr_set_in_ipv6_never_match_pods() {
    let e = engine(&cnp(
        "p",
        "server",
        "  ingress:\n  - fromCIDR: ['fd00:10::/64']\n  - fromCIDRSet: [{cidr: '2001:db8::/32', except: ['2001:db8:1::/48']}]",
    ));
    expect(
        &e,
        &[
            ("cidr:fd00:10::99", "prod/server", "8080/TCP", Allowed),
            // The client's IPv6 address is inside the block, but a pod is no CIDR identity.
            ("prod/client", "prod/server", "8080/TCP", Denied),
            ("cidr:2001:db8:5::1", "prod/server", "8080/TCP", Allowed),
            ("cidr:2001:db8:1::1", "prod/server", "8080/TCP", Denied),
            ("cidr:10.0.0.99", "prod/server", "8080/TCP", Denied),
        ],
    );
}

#[test]
fn network_policy_ip_block_in_ipv6_selects_the_pods_inside_it() {
    let e = engine(&knp(
        "k",
        "server",
        "  ingress:\n  - from: [{ipBlock: {cidr: 'fd00:10::/64', except: ['fd00:10::20/128']}}]",
    ));
    expect(
        &e,
        &[
            // The client's IPv6 address is inside: Kubernetes semantics, the pod is selected.
            ("prod/client", "prod/server", "8080/TCP", Allowed),
            // v6only is in the except hole.
            ("prod/v6only", "prod/server", "8080/TCP", Denied),
            ("cidr:fd00:10::99", "prod/server", "8080/TCP", Allowed),
            ("cidr:fd00:10::20", "prod/server", "8080/TCP", Denied),
            ("cidr:fd00:11::1", "prod/server", "8080/TCP", Denied),
        ],
    );
    // A block of the other family selects neither the dual-stack client's IPv6 side nor v6only.
    let e = engine(&knp("k", "server", "  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/24}}]"));
    expect(
        &e,
        &[
            ("prod/client", "prod/server", "8080/TCP", Allowed),
            ("prod/v6only", "prod/server", "8080/TCP", Denied),
            ("cidr:fd00:10::99", "prod/server", "8080/TCP", Denied),
        ],
    );
}

#[test]
fn mixed_family_cidr_sets_select_both_families() {
    let e = engine(&cnp(
        "p",
        "client",
        "  egress:\n  - toCIDRSet:\n    - {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}\n    - {cidr: '2001:db8::/32', except: ['2001:db8:1::/48']}\n  - toCIDR: [198.51.100.7, '2001:db8:ff::7']",
    ));
    expect(
        &e,
        &[
            ("prod/client", "cidr:192.0.2.1", "443/TCP", Allowed),
            ("prod/client", "cidr:192.0.2.200", "443/TCP", Denied),
            ("prod/client", "cidr:2001:db8::1", "443/TCP", Allowed),
            ("prod/client", "cidr:2001:db8:1::1", "443/TCP", Denied),
            ("prod/client", "cidr:198.51.100.7", "443/TCP", Allowed),
            ("prod/client", "cidr:2001:db8:ff::7", "443/TCP", Allowed),
            ("prod/client", "cidr:198.51.100.8", "443/TCP", Denied),
        ],
    );
    // A KNP with ipBlocks of both families.
    let e = engine(&knp(
        "k",
        "client",
        "  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 192.0.2.0/24}}, {ipBlock: {cidr: '2001:db8::/32'}}]",
    ));
    expect(
        &e,
        &[
            ("prod/client", "cidr:192.0.2.1", "443/TCP", Allowed),
            ("prod/client", "cidr:2001:db8::1", "443/TCP", Allowed),
            ("prod/client", "cidr:2001:db9::1", "443/TCP", Denied),
        ],
    );
}

#[test]
fn an_except_of_the_other_family_is_an_error_naming_the_field() {
    let text = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: mixed
  namespace: prod
spec:
  endpointSelector: {}
  egress:
  - toCIDRSet:
    - cidr: 2001:db8::/32
      except:
      - 10.0.0.0/8
";
    assert_eq!(text.lines().nth(11).unwrap().trim(), "- 10.0.0.0/8");
    let parsed = parse("policies/mixed.yaml", text);
    assert_eq!(
        errors(&parsed),
        [
            "policies/mixed.yaml:12: spec.egress[0].toCIDRSet[0].except[0]: 10.0.0.0/8 is IPv4 but cidr 2001:db8::/32 is IPv6: an except must be of its cidr's family"
        ]
    );
    assert!(parsed.set.policies.is_empty(), "an invalid policy is left out");

    let text = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: mixed
  namespace: prod
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock:
        cidr: 10.0.0.0/8
        except: [10.1.0.0/16, 'fd00::/8']
";
    assert_eq!(
        errors(&parse("knp.yaml", text)),
        [
            "knp.yaml:12: spec.ingress[0].from[0].ipBlock.except[1]: fd00::/8 is IPv6 but cidr 10.0.0.0/8 is IPv4: an except must be of its cidr's family"
        ]
    );
    // And an IPv6 except outside its IPv6 cidr is the usual error.
    let text = cnp("p", "client", "  egress:\n  - toCIDRSet: [{cidr: '2001:db8::/32', except: ['2001:db9::/48']}]");
    assert_eq!(
        errors(&parse("p.yaml", &text)),
        ["p.yaml:9: spec.egress[0].toCIDRSet[0].except[0]: 2001:db9::/48 is not inside 2001:db8::/32"]
    );
}

#[test]
fn ipv6_prefixes_parse_without_the_old_not_enforced_warning() {
    let parsed = parse("p.yaml", &cnp("p", "client", "  egress:\n  - toCIDR: ['::/0', '2001:db8::1']"));
    assert!(parsed.diagnostics.is_empty(), "{:#?}", parsed.diagnostics);
    let bad = parse("p.yaml", &cnp("p", "client", "  egress:\n  - toCIDR: ['2001:db8::/200']"));
    assert_eq!(
        errors(&bad),
        ["p.yaml:9: spec.egress[0].toCIDR[0]: \"2001:db8::/200\" is not an IP address or CIDR prefix"]
    );
}

// ---------------------------------------------------------------- ICMPv6

#[test]
fn icmps_with_family_ipv6_by_name_and_number() {
    let e = engine(&cnp(
        "p",
        "server",
        "  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    icmps:\n    - fields:\n      - {family: IPv6, type: EchoRequest}\n      - {family: IPv6, type: 135}\n      - {family: IPv6, type: RedirectMessage}\n      - {family: IPv6, type: MulticastListenerQuery}\n      - {type: EchoRequest}",
    ));
    expect(
        &e,
        &[
            ("prod/client", "prod/server", "icmpv6/128", Allowed),
            ("prod/client", "prod/server", "icmpv6/135", Allowed),
            ("prod/client", "prod/server", "icmpv6/137", Allowed),
            ("prod/client", "prod/server", "icmpv6/130", Allowed),
            ("prod/client", "prod/server", "icmpv6/129", Denied),
            // The family-less field is ICMP for IPv4: type 8 there, not in ICMPv6.
            ("prod/client", "prod/server", "icmp/8", Allowed),
            ("prod/client", "prod/server", "icmpv6/8", Denied),
            ("prod/client", "prod/server", "icmp/128", Denied),
            ("prod/client", "prod/server", "8080/TCP", Denied),
        ],
    );
    assert_eq!(FlowPort::parse("icmpv6/135").unwrap().to_string(), "icmpv6/135");
}

#[test]
fn an_unknown_icmpv6_type_name_is_an_error() {
    let text = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: icmp
  namespace: prod
spec:
  endpointSelector: {}
  ingress:
  - icmps:
    - fields:
      - family: IPv6
        type: Echo
      - family: IPv6
        type: Redirect
      - family: IPv6
        type: 256
";
    let parsed = parse("icmp.yaml", text);
    assert_eq!(
        errors(&parsed),
        [
            // Echo and Redirect are IPv4 names; Cilium calls the ICMPv6 one RedirectMessage.
            "icmp.yaml:12: spec.ingress[0].icmps[0].fields[0].type: \"Echo\" is not an ICMPv6 type number (0-255) or name",
            "icmp.yaml:14: spec.ingress[0].icmps[0].fields[1].type: \"Redirect\" is not an ICMPv6 type number (0-255) or name",
            "icmp.yaml:16: spec.ingress[0].icmps[0].fields[2].type: \"256\" is not an ICMPv6 type number (0-255) or name",
        ]
    );
    let v4 = parse("v4.yaml", &text.replace("family: IPv6", "family: IPv4").replace("Echo\n", "PacketTooBig\n"));
    assert_eq!(
        errors(&v4)[0],
        "v4.yaml:12: spec.ingress[0].icmps[0].fields[0].type: \"PacketTooBig\" is not an ICMP (IPv4) type number (0-255) or name"
    );
}

// ---------------------------------------------------------------- entities

#[test]
fn world_entities_select_their_families() {
    // CIDR identities of both families exist (another policy names them): the entities select
    // them by family too.
    let other = cnp("cidrs", "server", "  egress:\n  - toCIDR: [203.0.113.0/24, '2001:db8:5::/48']");
    let flows = |entity: &str| {
        let e = engine(&format!("{other}{}", cnp("p", "client", &format!("  egress:\n  - toEntities: [{entity}]"))));
        ["cidr:198.51.100.1", "cidr:203.0.113.1", "cidr:2001:db9::1", "cidr:2001:db8:5::1", "prod/server"]
            .map(|to| trace_of(&e, "prod/client", to, "443/TCP", None).verdict)
    };
    assert_eq!(flows("world"), [Allowed, Allowed, Allowed, Allowed, Denied]);
    assert_eq!(flows("world-ipv4"), [Allowed, Allowed, Denied, Denied, Denied]);
    assert_eq!(flows("world-ipv6"), [Denied, Denied, Allowed, Allowed, Denied]);
    assert_eq!(flows("all"), [Allowed, Allowed, Allowed, Allowed, Allowed]);

    // The identities: IPv6 outside addresses are world-ipv6 (::/0), IPv4 ones world (0.0.0.0/0).
    let e = engine("");
    assert_eq!(e.identity_of_addr(ip("2001:db9::1")), dp::IDENTITY_WORLD_IPV6);
    assert_eq!(e.identity_of_addr(ip("198.51.100.1")), dp::IDENTITY_WORLD);
    assert_eq!(ipcache_entry(&e, "::/0"), Some(dp::IDENTITY_WORLD_IPV6));
    assert_eq!(ipcache_entry(&e, "0.0.0.0/0"), Some(dp::IDENTITY_WORLD));
    let labels = |id| e.identities().get(id).unwrap().labels.to_string();
    assert_eq!(labels(dp::IDENTITY_WORLD), "reserved:world,reserved:world-ipv4");
    assert_eq!(labels(dp::IDENTITY_WORLD_IPV6), "reserved:world,reserved:world-ipv6");
    assert_eq!(palisade_policy::identity::reserved_id("world-ipv6"), Some(dp::IDENTITY_WORLD_IPV6));
    // An entity peer in trace: the IPv6 world by its name.
    let e = engine(&cnp("p", "server", "  ingress:\n  - fromEntities: [world-ipv6]"));
    expect(
        &e,
        &[
            ("entity:world-ipv6", "prod/server", "8080/TCP", Allowed),
            ("entity:world", "prod/server", "8080/TCP", Denied),
            ("cidr:2001:db8::1", "prod/server", "8080/TCP", Allowed),
        ],
    );
}

// ---------------------------------------------------------------- addresses and identities

#[test]
fn a_dual_stack_pod_carries_its_identity_at_both_addresses() {
    let e = engine("");
    let c = &e.cluster;
    let client = c.pod("prod", "client").unwrap();
    assert_eq!(client.ips, [ip("10.0.0.11"), ip("fd00:10::11")]);
    assert_eq!(
        (client.ipv4(), client.ipv6()),
        (Some("10.0.0.11".parse().unwrap()), Some("fd00:10::11".parse().unwrap()))
    );
    let v6only = c.pod("prod", "v6only").unwrap();
    assert_eq!((v6only.ipv4(), v6only.ip()), (None, Some(ip("fd00:10::20"))));
    for (name, addresses) in
        [("client", ["10.0.0.11/32", "fd00:10::11/128"]), ("server", ["10.0.0.12/32", "fd00:10::12/128"])]
    {
        let id = e.identity_of_pod(c.pod("prod", name).unwrap()).unwrap();
        for address in addresses {
            assert_eq!(ipcache_entry(&e, address), Some(id), "{name} at {address}");
        }
    }
    let id = e.identity_of_pod(v6only).unwrap();
    assert_eq!(e.identity_of_addr(ip("fd00:10::20")), id);
    assert_eq!(e.endpoint_at(ip("fd00:10::12")), Some(("prod", "server")));

    // Nodes of both families: node-a is the host, node-b a remote node; the hostname is no address.
    assert_eq!(c.node("node-b").unwrap().addresses, [ip("fd00:200::12"), ip("10.200.0.12")]);
    assert_eq!(c.node("node-b").unwrap().internal_ip, Some("10.200.0.12".parse().unwrap()));
    assert_eq!(c.node("node-b").unwrap().internal_ipv6, Some("fd00:200::12".parse().unwrap()));
    for (address, id) in [
        ("10.200.0.11/32", dp::IDENTITY_HOST),
        ("fd00:200::11/128", dp::IDENTITY_HOST),
        ("10.200.0.12/32", dp::IDENTITY_REMOTE_NODE),
        ("fd00:200::12/128", dp::IDENTITY_REMOTE_NODE),
        // The API server's IPv6 EndpointSlice; the FQDN slice holds no address.
        ("fd00:200::50/128", dp::IDENTITY_KUBE_APISERVER),
        // Both ClusterIPs of the dual-stack Service.
        ("10.96.0.10/32", dp::IDENTITY_SERVICE),
        ("fd00:96::10/128", dp::IDENTITY_SERVICE),
    ] {
        assert_eq!(ipcache_entry(&e, address), Some(id), "{address}");
    }
    // The ipcache is sorted, IPv4 first.
    let entries = e.ipcache();
    assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
    let first_v6 = entries.iter().position(|(p, _)| p.is_ipv6()).unwrap();
    assert!(entries[first_v6..].iter().all(|(p, _)| p.is_ipv6()));

    // The dual-stack Service has a backend per family; endpoint selectors work over either.
    let web = c.service("prod", "web").unwrap();
    let backends: Vec<String> = c.backends(web, &web.ports[0]).iter().map(|b| format!("{}:{}", b.ip, b.port)).collect();
    assert_eq!(backends, ["10.0.0.12:8080", "fd00:10::12:8080"]);
    let e = engine(&cnp("p", "server", "  ingress:\n  - fromEndpoints: [{matchLabels: {app: v6only}}]"));
    expect(
        &e,
        &[
            ("prod/v6only", "prod/server", "8080/TCP", Allowed),
            ("cidr:fd00:10::20", "prod/server", "8080/TCP", Allowed),
            ("prod/client", "prod/server", "8080/TCP", Denied),
            ("cidr:fd00:10::11", "prod/server", "8080/TCP", Denied),
        ],
    );
}

#[test]
fn pod_ips_that_do_not_parse_name_their_field() {
    let text = "kind: Pod\nmetadata: {name: p, namespace: prod}\nstatus: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::zz'}]}\n";
    let errors = Cluster::parse(&[SourceFile { name: "c.yaml", text }]).unwrap_err();
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["c.yaml:1: pod p: status.podIPs[1].ip \"fd00::zz\" is not an IP address"]
    );
}

#[test]
fn to_fqdns_selects_ipv6_answers() {
    let mut e = engine(&cnp("p", "client", "  egress:\n  - toFQDNs: [{matchName: api.example.com}]"));
    let answers = [("api.example.com".to_string(), [ip("2001:db8::80"), ip("192.0.2.80")].into())].into();
    e.set_dns_answers(answers);
    expect(
        &e,
        &[
            ("prod/client", "cidr:2001:db8::80", "443/TCP", Allowed),
            ("prod/client", "cidr:192.0.2.80", "443/TCP", Allowed),
            ("prod/client", "cidr:2001:db8::81", "443/TCP", Denied),
        ],
    );
    assert!(ipcache_entry(&e, "2001:db8::80/128").is_some());
}

// ---------------------------------------------------------------- trace

#[test]
fn trace_takes_an_ipv6_cidr_peer() {
    let end = FlowEnd::parse("cidr:2001:db8::1").unwrap();
    assert_eq!(end, FlowEnd::Address(ip("2001:db8::1")));
    assert_eq!(FlowEnd::parse("cidr:2001:0db8:0::1").unwrap().to_string(), "cidr:2001:db8::1");
    assert_eq!(FlowEnd::parse("cidr:2001:db8::/32").unwrap_err(), "\"2001:db8::/32\" is not an IPv4 or IPv6 address");
    let e = engine(&cnp("p", "server", "  ingress:\n  - fromCIDR: ['2001:db8::/32']"));
    let t = trace::trace(&e, &end, &FlowEnd::parse("prod/server").unwrap(), FlowPort::parse("8080/TCP").unwrap(), None)
        .unwrap();
    assert_eq!(t.verdict, Allowed);
    // The dual-stack server answers an IPv6 peer from its IPv6 address.
    assert_eq!((t.from_address, t.to_address), (Some(ip("2001:db8::1")), Some(ip("fd00:10::12"))));
    let cidr = e.identities().get(t.ingress.remote_identity).unwrap();
    assert_eq!(cidr.prefix, Prefix::parse("2001:db8::/32"));
    // And an IPv4 peer from its IPv4 address; a pod-to-pod trace shows the primary ones.
    let t = trace_of(&e, "cidr:192.0.2.1", "prod/server", "8080/TCP", None);
    assert_eq!((t.verdict, t.to_address), (Denied, Some(ip("10.0.0.12"))));
    let t = trace_of(&e, "prod/client", "node", "8080/TCP", None);
    assert_eq!((t.from_address, t.to_address), (Some(ip("10.0.0.11")), Some(ip("10.200.0.11"))));
    let t = trace_of(&e, "node", "cidr:2001:db8::9", "8080/TCP", None);
    assert_eq!(t.from_address, Some(ip("fd00:200::11")));
}

#[test]
fn trace_in_one_family_picks_the_ends_addresses_of_it_and_names_what_has_none() {
    use palisade_policy::trace::IpFamily;
    let e = engine(&cnp(
        "p",
        "server",
        "  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: '8080'}]}]",
    ));
    let end = |text: &str| FlowEnd::parse(text).unwrap();
    let port = |text: &str| FlowPort::parse(text).unwrap();
    let family = |f| trace::trace_in(&e, &end("prod/client"), &end("prod/server"), port("8080/TCP"), None, Some(f));
    let t = family(IpFamily::IPv6).unwrap();
    assert_eq!((t.verdict, t.from_address, t.to_address), (Allowed, Some(ip("fd00:10::11")), Some(ip("fd00:10::12"))));
    let t = family(IpFamily::IPv4).unwrap();
    assert_eq!((t.verdict, t.from_address, t.to_address), (Allowed, Some(ip("10.0.0.11")), Some(ip("10.0.0.12"))));
    // The node, in the family asked for.
    let t =
        trace::trace_in(&e, &end("node"), &end("prod/server"), port("8080/TCP"), None, Some(IpFamily::IPv6)).unwrap();
    assert_eq!(t.from_address, Some(ip("fd00:200::11")));
    // A pod without an address of the family, an address end or ICMP of the other family.
    let err = |from: &str, to: &str, p: &str, f| {
        trace::trace_in(&e, &end(from), &end(to), port(p), None, Some(f)).map(|_| ()).unwrap_err()
    };
    assert_eq!(
        err("prod/v6only", "prod/server", "8080/TCP", IpFamily::IPv4),
        "pod prod/v6only has no IPv4 address (status.podIPs): the flow is IPv4"
    );
    assert_eq!(
        err("cidr:192.0.2.1", "prod/server", "8080/TCP", IpFamily::IPv6),
        "cidr:192.0.2.1 is an IPv4 address: the flow is IPv6"
    );
    assert_eq!(
        err("prod/client", "prod/server", "icmp/8", IpFamily::IPv6),
        "icmp/8 is ICMP for IPv4: an IPv6 flow is icmpv6/TYPE (echo request: icmpv6/128)"
    );
    assert_eq!(
        err("prod/client", "prod/server", "icmpv6/128", IpFamily::IPv4),
        "icmpv6/128 is ICMPv6: an IPv4 flow is icmp/TYPE (echo request: icmp/8)"
    );
    // A dual-stack Service: the backends of the family only.
    let s = trace::trace_service_in(
        &e,
        &end("prod/client"),
        &end("svc/prod/web"),
        port("80/TCP"),
        None,
        Some(IpFamily::IPv6),
    )
    .unwrap();
    let addresses: Vec<IpAddr> = s.backends.iter().map(|b| b.address).collect();
    assert_eq!(addresses, [ip("fd00:10::12")]);
    assert_eq!(s.verdict, Allowed);
    assert_eq!("6".parse::<IpFamily>(), Ok(IpFamily::IPv6));
    assert_eq!("IPv4".parse::<IpFamily>(), Ok(IpFamily::IPv4));
    assert!("5".parse::<IpFamily>().is_err());
}

#[test]
fn named_ports_and_to_ports_apply_to_ipv6_peers() {
    let e = engine(&format!(
        "{}{}",
        cnp(
            "in",
            "server",
            "  ingress:\n  - fromCIDR: ['2001:db8::/32']\n    toPorts: [{ports: [{port: http, protocol: TCP}]}]\n  - fromEndpoints: [{matchLabels: {app: v6only}}]\n    toPorts: [{ports: [{port: '8000', endPort: 8100}]}]"
        ),
        cnp(
            "out",
            "client",
            "  egress:\n  - toPorts: [{ports: [{port: http}]}]\n  - toCIDR: ['2001:db8::/32']\n    toPorts: [{ports: [{port: '53', protocol: ANY}]}]"
        ),
    ));
    expect(
        &e,
        &[
            // The server's named port, for an IPv6 CIDR peer.
            ("cidr:2001:db8::1", "prod/server", "8080/TCP", Allowed),
            ("cidr:2001:db8::1", "prod/server", "9090/TCP", Denied),
            // A port range for an IPv6-only pod, every protocol of ANY.
            ("prod/v6only", "prod/server", "8050/UDP", Allowed),
            ("prod/v6only", "prod/server", "8101/TCP", Denied),
            // Egress named port (the number every pod agrees on) to any peer, IPv6 ones included.
            ("prod/client", "cidr:2001:db9::1", "8080/TCP", Allowed),
            ("prod/client", "cidr:2001:db8::53", "53/UDP", Allowed),
            ("prod/client", "cidr:2001:db8::53", "53/SCTP", Allowed),
            ("prod/client", "cidr:2001:db8::53", "icmpv6/128", Denied),
        ],
    );
}
