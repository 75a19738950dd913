//! Connections to a Service's ClusterIP on real packets, translated by a kube-proxy-like
//! nftables DNAT in the node namespace: the source's egress and the backend's ingress are judged
//! by the backend kube-proxy chose, at the hook the translated packet reaches (the backend's
//! veth, or a node interface for a backend off the node); replies pass; a ClusterIP port nothing
//! translates is refused where it leaves; the candidate is compared on the backend; flow events
//! name the Service.
mod support;

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use palisade_common::*;
use palisade_datapath::{Datapath, Hook, Slot};
use support::*;

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 250, 10);
const CIDR_IDENTITY: u32 = IDENTITY_CIDR_BASE | 1;

fn identity(endpoint: usize) -> u32 {
    IDENTITY_FIRST_LOCAL + endpoint as u32
}

fn rule(verdict: Verdict, peer: u32, direction: Direction, port: Option<(Protocol, u16)>, cookie: u32) -> PolicyEntry {
    let key = match port {
        Some((protocol, port)) => PolicyKey::new(peer, direction, Some(protocol), port, 16),
        None => PolicyKey::new(peer, direction, None, 0, 0),
    };
    entry(key, PolicyValue::new(verdict, cookie))
}

/// kube-proxy's part, reduced to fixed choices: each (protocol, service port) of the ClusterIP
/// goes to one backend address and port.
fn kube_proxy(node: &str, translations: &[(&str, u16, Ipv4Addr, u16)]) {
    let mut rules = String::from(
        "flush ruleset\ntable ip kube-proxy {\n chain services {\n  type nat hook prerouting priority dstnat; policy accept;\n",
    );
    for (protocol, port, backend, target) in translations {
        rules.push_str(&format!("  ip daddr {CLUSTER_IP} {protocol} dport {port} dnat to {backend}:{target}\n"));
    }
    rules.push_str(" }\n}\n");
    let mut child = Command::new("ip")
        .args(["netns", "exec", node, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run nft (install nftables)");
    child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft rejected:\n{rules}");
}

/// e0 is the client; e1 and e2 back the Service; x is a backend off the node, behind an
/// uplink; e3 audits.
fn setup(topology: &Topology, datapath: &mut Datapath) {
    use Direction::{Egress as EG, Ingress as IN};
    let external = topology.external.as_ref().unwrap();
    let policies = [
        // The client may reach e1 on anything, x's network on 8443, e3 on 8080; nothing else.
        vec![
            rule(Verdict::Allow, identity(1), EG, None, 1),
            rule(Verdict::Allow, CIDR_IDENTITY, EG, Some((Protocol::TCP, 8443)), 2),
            rule(Verdict::Allow, identity(3), EG, Some((Protocol::TCP, 8080)), 3),
        ],
        // e1 admits the client on 8080/TCP and 53/UDP only.
        vec![
            rule(Verdict::Allow, identity(0), IN, Some((Protocol::TCP, 8080)), 11),
            rule(Verdict::Allow, identity(0), IN, Some((Protocol::UDP, 53)), 12),
        ],
        // e2 admits anyone on 8080.
        vec![rule(Verdict::Allow, IDENTITY_ANY, IN, Some((Protocol::TCP, 8080)), 21)],
        // e3 admits anyone on 8080.
        vec![rule(Verdict::Allow, IDENTITY_ANY, IN, Some((Protocol::TCP, 8080)), 31)],
    ];
    for (i, (endpoint, policy)) in topology.endpoints.iter().zip(policies).enumerate() {
        datapath.set_ipcache(endpoint.addr, 32, identity(i)).unwrap();
        datapath.load_slot(i as u32, Slot::A, &policy).unwrap();
        datapath.attach(i as u32, &endpoint.host_if, endpoint.addr).unwrap();
    }
    datapath.set_ipcache(Ipv4Addr::from(u32::from(external.addr) & !0xff), 24, CIDR_IDENTITY).unwrap();
    datapath.set_ipcache(CLUSTER_IP, 32, IDENTITY_SERVICE).unwrap();
    datapath.attach_network(&external.host_if).unwrap();
}

#[test]
fn service_connections_are_judged_by_the_backend_kube_proxy_chose() {
    let topology = Topology::new("psv", 4, true, 60);
    let _inside = InNetns::enter(&topology.node);
    let mut datapath = topology.datapath();
    setup(&topology, &mut datapath);
    let (client, e1, e2, e3) =
        (&topology.endpoints[0], &topology.endpoints[1], &topology.endpoints[2], &topology.endpoints[3]);
    let external = topology.external.as_ref().unwrap();
    for endpoint in [e1, e2, e3] {
        tcp_echo_servers(&endpoint.ns, &[8080, 9090]);
    }
    udp_echo_servers(&e1.ns, &[53]);
    tcp_echo_servers(&external.ns, &[8443, 9443]);
    // A ClusterIP port without a translation is routed out by the uplink, as on a node whose
    // default route leads there.
    run(&["ip", "-n", &topology.node, "route", "add", "10.200.250.0/24", "via", &external.addr.to_string()]);
    kube_proxy(
        &topology.node,
        &[
            ("tcp", 80, e1.addr, 8080),
            ("tcp", 81, e2.addr, 8080),
            ("tcp", 82, e1.addr, 9090),
            ("udp", 53, e1.addr, 53),
            ("tcp", 443, external.addr, 8443),
            ("tcp", 444, external.addr, 9443),
            ("tcp", 83, e3.addr, 8080),
            ("tcp", 84, e3.addr, 9090),
        ],
    );

    let client_ns = client.ns.as_str();
    assert!(tcp_ok(client_ns, CLUSTER_IP, 80), "the client's egress and e1's ingress allow e1:8080");
    assert!(udp_ok(client_ns, CLUSTER_IP, 53), "DNS-like UDP to e1:53 through the ClusterIP, replies included");
    assert!(!tcp_ok(client_ns, CLUSTER_IP, 81), "the client's egress does not allow e2, whatever e2 admits");
    assert!(!tcp_ok(client_ns, CLUSTER_IP, 82), "e1's ingress does not admit 9090");
    assert!(
        tcp_ok(client_ns, CLUSTER_IP, 443),
        "a backend off the node, allowed by CIDR on 8443, judged at the uplink"
    );
    assert!(!tcp_ok(client_ns, CLUSTER_IP, 444), "the same backend on 9443 is not allowed");
    assert!(!tcp_ok(client_ns, CLUSTER_IP, 99), "a ClusterIP port nothing translates is refused where it leaves");
    // The backends see the client's own address, so nothing else than the source was judged.
    assert!(tcp_ok(client_ns, e1.addr, 8080), "direct pod-to-pod traffic is unchanged");

    let flows = datapath.flows().unwrap();
    let client_egress = |dport: u16, reason: u8| {
        flows.iter().any(|f| {
            f.key.endpoint == 0 && f.key.direction == DIRECTION_EGRESS && f.key.dport == dport && f.key.reason == reason
        })
    };
    assert!(client_egress(8080, DROP_POLICY_DENIED), "denied to e2:8080, counted on the client's egress: {flows:?}");
    assert!(client_egress(9443, DROP_POLICY_DENIED), "denied to x:9443 at the uplink: {flows:?}");
    assert!(client_egress(99, DROP_SERVICE_UNTRANSLATED), "untranslated port 99: {flows:?}");
    assert!(
        flows.iter().any(|f| f.key.endpoint == 1 && f.key.direction == DIRECTION_INGRESS && f.key.dport == 9090),
        "e1's ingress denial of 9090: {flows:?}"
    );
    assert!(
        !flows.iter().any(|f| f.key.identity == IDENTITY_SERVICE && f.key.reason != DROP_SERVICE_UNTRANSLATED),
        "no flow is judged against the ClusterIP itself: {flows:?}"
    );

    // An endpoint detached from a veth that stays hands its `deferred_egress` to the node
    // interface, and takes it back when attached again: the client's egress holds throughout.
    datapath.detach(3).unwrap();
    assert!(datapath.network_interfaces().unwrap().contains(&e3.host_if));
    assert!(tcp_ok(client_ns, CLUSTER_IP, 83), "e3 without policy admits what the client's egress allows");
    assert!(!tcp_ok(client_ns, CLUSTER_IP, 84), "the client's egress still judges a backend without policy");
    datapath.load_slot(3, Slot::A, &[rule(Verdict::Allow, IDENTITY_ANY, Direction::Ingress, None, 31)]).unwrap();
    datapath.attach(3, &e3.host_if, e3.addr).unwrap();
    assert!(!datapath.network_interfaces().unwrap().contains(&e3.host_if));
    assert!(tcp_ok(client_ns, CLUSTER_IP, 83));
    assert!(!tcp_ok(client_ns, CLUSTER_IP, 84), "and again once e3 is an endpoint that admits anything");
    datapath.destroy().unwrap();
}

#[test]
fn a_candidate_is_compared_on_the_backend_and_events_name_the_service() {
    let topology = Topology::new("psc", 4, true, 70);
    let _inside = InNetns::enter(&topology.node);
    let mut datapath = topology.datapath();
    setup(&topology, &mut datapath);
    let (client, e3) = (&topology.endpoints[0], &topology.endpoints[3]);
    tcp_echo_servers(&e3.ns, &[8080]);
    kube_proxy(&topology.node, &[("tcp", 80, e3.addr, 8080)]);
    // The candidate drops the client's egress to e3: shadowed, not enforced.
    let candidate = vec![rule(Verdict::Allow, identity(1), Direction::Egress, None, 41)];
    datapath.load_slot(0, Slot::B, &candidate).unwrap();
    datapath.set_candidate(0, Some(Slot::B)).unwrap();
    let mut events = datapath.events().unwrap();

    assert!(tcp_ok(&client.ns, CLUSTER_IP, 80), "the enforced slot still allows e3:8080");
    let shadowed = datapath.flows().unwrap().into_iter().find(|f| f.key.endpoint == 0 && f.key.dport == 8080);
    let shadowed = shadowed.expect("the candidate's difference is recorded on the client's egress");
    assert_eq!(shadowed.key.identity, identity(3), "judged against the backend, not the ClusterIP");
    assert!(shadowed.key.differs(), "{shadowed:?}");

    let mut seen = Vec::new();
    eventually(|| {
        events.read(Duration::from_millis(100), |event| seen.push(event));
        seen.iter().any(|e| e.flow.endpoint == 0 && e.flow.dport == 8080)
    });
    let event = seen.iter().find(|e| e.flow.endpoint == 0 && e.flow.dport == 8080).expect("an event for the new flow");
    assert_eq!(event.service(), Some((CLUSTER_IP.into(), 80)), "{event:?}");
    assert_eq!(event.destination(), e3.addr, "the backend: {event:?}");
    datapath.destroy().unwrap();
}

#[test]
fn only_a_service_connection_is_deferred_and_a_deferral_from_a_gone_source_is_dropped() {
    let topology = Topology::new("psd", 4, true, 80);
    let _inside = InNetns::enter(&topology.node);
    let mut datapath = topology.datapath();
    setup(&topology, &mut datapath);
    let (client, e2) = (&topology.endpoints[0], &topology.endpoints[2]);
    let e2_if = if_index(&e2.host_if);

    // The local host reaches e2 through the implicit allow-localhost entry; a candidate without
    // it denies the host. That verdict is an ordinary one: counted and compared, not deferred.
    let host = Ipv4Addr::new(10, 200, 80, 254);
    datapath.set_ipcache(host, 32, IDENTITY_HOST).unwrap();
    let localhost = rule(Verdict::Allow, IDENTITY_HOST, Direction::Ingress, None, COOKIE_LOCALHOST);
    datapath.load_slot(2, Slot::A, &[localhost]).unwrap();
    datapath.load_slot(2, Slot::B, &[]).unwrap();
    datapath.set_candidate(2, Some(Slot::B)).unwrap();
    let from_host = ipv4_frame(PROTO_UDP, host, e2.addr, &udp_datagram(40001, 7000, b"x"));
    assert!(datapath.run_frame(Hook::ToEndpoint, e2_if, &from_host, 1).unwrap().passed, "the host may reach e2");
    let flows = datapath.flows().unwrap();
    let compared = flows.iter().find(|f| f.key.endpoint == 2 && f.key.identity == IDENTITY_HOST);
    assert!(compared.is_some_and(|f| f.key.differs()), "the candidate's difference is recorded: {flows:?}");

    // A packet marked by a source endpoint that is not (or no longer) attached has no egress
    // policy to be judged by: dropped, whatever the backend admits.
    let mut syn = [0u8; 20];
    syn[0..2].copy_from_slice(&40002u16.to_be_bytes());
    syn[2..4].copy_from_slice(&8080u16.to_be_bytes());
    (syn[12], syn[13]) = (5 << 4, 0x02);
    let to_e2 = ipv4_frame(PROTO_TCP, client.addr, e2.addr, &syn);
    // Counter index MAX_ENDPOINTS - 1 (the mark holds index + 1): never handed out here.
    let gone = MAX_ENDPOINTS << SERVICE_MARK_SHIFT;
    let run = datapath.run_marked_frame(Hook::DeferredEgress, e2_if, gone, &to_e2, 1).unwrap();
    assert!(!run.passed, "a deferral from a source that is gone fails closed");
    let unmarked = datapath.run_marked_frame(Hook::DeferredEgress, e2_if, 0, &to_e2, 1).unwrap();
    assert!(unmarked.passed, "a packet without a deferral is left to the programs after it");
    datapath.destroy().unwrap();
}
