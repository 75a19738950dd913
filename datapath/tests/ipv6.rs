//! IPv6 through the real programs, with real packets between dual-stack namespaces: judged like
//! IPv4 (TCP, UDP, ICMPv6 echo, CIDR prefixes with an exception, deny precedence, replies and
//! ICMPv6 errors, shadow evaluation and flips), neighbor discovery always passing, extension
//! headers walked to the upper layer, fragments judged like their first fragment, and spoofed
//! sources dropped in every mode.
mod support;

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream},
    time::Duration,
};

use palisade_common::*;
use palisade_datapath::{Datapath, Flow, Hook, Mode, Slot};
use support::*;

const CIDR_NET: u32 = IDENTITY_CIDR_BASE | 1;
const CIDR_EXCEPT: u32 = IDENTITY_CIDR_BASE | 2;

fn identity(endpoint: usize) -> u32 {
    IDENTITY_FIRST_LOCAL + endpoint as u32
}

fn rule(
    verdict: Verdict,
    peer: u32,
    direction: Direction,
    protocol: Option<Protocol>,
    port: u16,
    cookie: u32,
) -> PolicyEntry {
    let port_bits = if protocol.is_some() && port != 0 { 16 } else { 0 };
    entry(PolicyKey::new(peer, direction, protocol, port, port_bits), PolicyValue::new(verdict, cookie))
}

fn egress_all(cookie: u32) -> PolicyEntry {
    rule(Verdict::Allow, IDENTITY_ANY, Direction::Egress, None, 0, cookie)
}

/// Every endpoint of `topology` in the ipcache by both addresses, with `slots[i]` enforced.
fn start(topology: &Topology, slots: Vec<Vec<PolicyEntry>>) -> Datapath {
    let mut datapath = topology.datapath();
    for (i, (endpoint, slot)) in topology.endpoints.iter().zip(slots).enumerate() {
        datapath.set_ipcache(endpoint.addr, 32, identity(i)).unwrap();
        datapath.set_ipcache(endpoint.addr6, 128, identity(i)).unwrap();
        datapath.load_slot(i as u32, Slot::A, &slot).unwrap();
        datapath.attach(i as u32, &endpoint.host_if, endpoint.addrs()).unwrap();
    }
    datapath
}

/// Endpoint 0 a client allowed all egress, endpoint 1 a server admitting `server_ingress`.
fn client_server(topology: &Topology, server_ingress: PolicyEntry) -> Datapath {
    start(topology, vec![vec![egress_all(1)], vec![server_ingress]])
}

/// The flow events the program has sent so far.
fn events_of(datapath: &Datapath) -> Vec<FlowEvent> {
    let mut events = datapath.events().unwrap();
    let mut received = Vec::new();
    while events.read(Duration::from_millis(100), |event| received.push(event)) > 0 {}
    received
}

fn flows_of(datapath: &Datapath, endpoint: u32) -> Vec<Flow> {
    datapath.flows().unwrap().into_iter().filter(|f| f.key.endpoint == endpoint).collect()
}

fn recorded(datapath: &Datapath, endpoint: u32, reason: DropReason) -> bool {
    flows_of(datapath, endpoint).iter().any(|f| f.key.drop_reason() == Some(reason))
}

fn passes(datapath: &Datapath, hook: Hook, ifindex: u32, frame: &[u8]) -> bool {
    datapath.run_frame(hook, ifindex, frame, 1).unwrap().passed
}

/// An IPv6 packet in an Ethernet frame: the header, then `body` (extension headers and the
/// upper layer) whose first header is `next_header`.
fn ipv6_frame(next_header: u8, from: Ipv6Addr, to: Ipv6Addr, body: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(body.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[next_header, 64]);
    ip.extend_from_slice(&from.octets());
    ip.extend_from_slice(&to.octets());
    ip.extend_from_slice(body);
    ethernet_frame(0x86dd, &ip)
}

/// An 8-byte extension header (hop-by-hop, routing or destination options) followed by `rest`.
fn extension(next_header: u8, rest: &[u8]) -> Vec<u8> {
    let mut header = vec![next_header, 0, 1, 4, 0, 0, 0, 0]; // PadN over the 6 option bytes
    header.extend_from_slice(rest);
    header
}

/// A fragment header: fragment `offset` (in 8-byte units) of datagram `id`, then `rest`.
fn fragment(next_header: u8, (id, offset, more): (u32, u16, bool), rest: &[u8]) -> Vec<u8> {
    let mut header = vec![next_header, 0];
    header.extend_from_slice(&(offset << 3 | more as u16).to_be_bytes());
    header.extend_from_slice(&id.to_be_bytes());
    header.extend_from_slice(rest);
    header
}

fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    tcp
}

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTIONS: u8 = 60;

#[test]
fn tcp_udp_and_echo_over_ipv6_follow_the_policy_as_over_ipv4() {
    let topology = Topology::new("p6p", 2, false, 10);
    let _inside = InNetns::enter(&topology.node);
    let (client, server) = (&topology.endpoints[0], &topology.endpoints[1]);
    let from_client =
        |protocol, port, cookie| rule(Verdict::Allow, identity(0), Direction::Ingress, Some(protocol), port, cookie);
    let datapath = start(
        &topology,
        vec![
            vec![egress_all(1)],
            vec![
                egress_all(2),
                from_client(Protocol::TCP, 80, 3),
                from_client(Protocol::UDP, 53, 4),
                from_client(Protocol::ICMPv6, 128, 5),
            ],
        ],
    );
    tcp_echo_servers(&server.ns, &[80, 81]);
    udp_echo_servers(&server.ns, &[53, 5000]);
    tcp_echo_servers(&client.ns, &[80]);

    assert!(tcp_ok(&client.ns, server.addr6, 80), "allowed TCP over IPv6");
    assert!(!tcp_ok(&client.ns, server.addr6, 81), "a port no rule allows");
    assert!(udp_ok(&client.ns, server.addr6, 53), "allowed UDP over IPv6, and its reply");
    assert_eq!(udp_probe(&client.ns, server.addr6, 5000), UdpOutcome::Silent, "UDP no rule allows");
    assert!(ping_ok(&client.ns, server.addr6), "ICMPv6 echo by its type");
    assert!(!ping_ok(&server.ns, client.addr6), "the client lets no echo in");
    assert!(!tcp_ok(&server.ns, client.addr6, 80), "nor TCP");
    assert!(tcp_ok(&client.ns, server.addr, 80), "IPv4 is judged as before");

    let dropped: Vec<_> =
        flows_of(&datapath, 1).iter().map(|f| (f.key.protocol, f.key.dport, f.key.identity)).collect();
    assert!(dropped.contains(&(PROTO_TCP, 81, identity(0))), "the drop names the peer's identity: {dropped:?}");
    assert!(dropped.contains(&(PROTO_UDP, 5000, identity(0))), "{dropped:?}");
    let received = events_of(&datapath);
    let event = received.iter().find(|e| e.flow.endpoint == 1 && e.flow.dport == 81).expect("an event for the drop");
    assert_eq!((event.source(), event.destination()), (IpAddr::from(client.addr6), IpAddr::from(server.addr6)));
    datapath.destroy().unwrap();
}

#[test]
fn neighbor_discovery_passes_default_deny_and_an_unselected_pod_passes_ipv6() {
    let topology = Topology::new("p6n", 2, false, 20);
    let _inside = InNetns::enter(&topology.node);
    let (a, b) = (&topology.endpoints[0], &topology.endpoints[1]);
    // Endpoint 0 denies everything; endpoint 1 is selected by no policy (everything allowed).
    let allow_everything = vec![egress_all(1), rule(Verdict::Allow, IDENTITY_ANY, Direction::Ingress, None, 0, 2)];
    let mut datapath = start(&topology, vec![Vec::new(), allow_everything]);
    let ifindex = if_index(&a.host_if);
    let link_local: Ipv6Addr = "fe80::1".parse().unwrap();
    let icmp = |icmp_type: u8| icmp_message(icmp_type, &[0; 20]);
    for (name, icmp_type) in [
        ("router solicitation", 133),
        ("neighbor solicitation", 135),
        ("neighbor advertisement", 136),
        ("MLD report", 131),
    ] {
        let frame = ipv6_frame(PROTO_ICMPV6, link_local, a.addr6, &icmp(icmp_type));
        assert!(passes(&datapath, Hook::ToEndpoint, ifindex, &frame), "{name} passes under default deny");
        let frame = ipv6_frame(PROTO_ICMPV6, link_local, b.addr6, &icmp(icmp_type));
        assert!(passes(&datapath, Hook::FromEndpoint, ifindex, &frame), "{name} leaves from link-local");
    }
    let echo = ipv6_frame(PROTO_ICMPV6, b.addr6, a.addr6, &icmp(128));
    assert!(!passes(&datapath, Hook::ToEndpoint, ifindex, &echo), "other ICMPv6 is judged");
    // Real packets: neighbor resolution works through both hooks, so the unselected pod talks.
    tcp_echo_servers(&b.ns, &[8080]);
    udp_echo_servers(&b.ns, &[9000]);
    let unselected = &topology.endpoints[1];
    tcp_echo_servers(&topology.node, &[7000]);
    assert!(
        tcp_ok(&unselected.ns, "fd00:200:0:15::1".parse::<Ipv6Addr>().unwrap(), 7000),
        "the unselected pod reaches its gateway over IPv6"
    );
    assert!(!tcp_ok(&a.ns, b.addr6, 8080), "the denying endpoint sends nothing");
    datapath.set_mode(0, Mode::Audit).unwrap();
    assert!(tcp_ok(&a.ns, b.addr6, 8080), "audit mode lets IPv6 through...");
    assert!(udp_ok(&a.ns, b.addr6, 9000));
    let audited = flows_of(&datapath, 0);
    assert!(
        audited.iter().any(|f| f.key.mode() == Mode::Audit && f.key.dport == 8080 && f.key.identity == identity(1)),
        "...and records what enforcing would drop: {audited:?}"
    );
    datapath.destroy().unwrap();
}

#[test]
fn ipv6_cidr_prefixes_with_an_exception_world_and_deny_precedence() {
    let topology = Topology::new("p6c", 1, true, 30);
    let _inside = InNetns::enter(&topology.node);
    let client = &topology.endpoints[0];
    let outside = topology.external.as_ref().unwrap();
    let out =
        |protocol, port, peer, cookie| rule(Verdict::Allow, peer, Direction::Egress, Some(protocol), port, cookie);
    let mut datapath = start(
        &topology,
        vec![vec![
            out(Protocol::TCP, 80, CIDR_NET, 1),
            out(Protocol::TCP, 81, CIDR_EXCEPT, 2),
            out(Protocol::TCP, 82, IDENTITY_WORLD_IPV6, 3),
        ]],
    );
    tcp_echo_servers(&outside.ns, &[80, 81, 82]);
    let net: Ipv6Addr = "fd00:200:0:82::".parse().unwrap();
    assert_eq!(outside.addr6, "fd00:200:0:82::2".parse::<Ipv6Addr>().unwrap());
    // An outside address no prefix covers is world-ipv6.
    assert!(tcp_ok(&client.ns, outside.addr6, 82), "world-ipv6");
    assert!(!tcp_ok(&client.ns, outside.addr6, 80));
    assert_eq!(datapath.ipcache_identity(outside.addr6, 128).unwrap(), None);
    // The prefix, and its exception as a longer prefix of its own identity (as the policy
    // compiler writes `cidr` with `except`).
    datapath.set_ipcache(net, 64, CIDR_NET).unwrap();
    assert!(tcp_ok(&client.ns, outside.addr6, 80), "inside the prefix");
    assert!(!tcp_ok(&client.ns, outside.addr6, 82), "no longer world");
    datapath.set_ipcache(outside.addr6, 128, CIDR_EXCEPT).unwrap();
    assert_eq!(datapath.ipcache_identity(outside.addr6, 128).unwrap(), Some(CIDR_EXCEPT));
    assert!(!tcp_ok(&client.ns, outside.addr6, 80), "the exception is not the prefix");
    assert!(tcp_ok(&client.ns, outside.addr6, 81));
    // A deny of the prefix outranks an allow of anyone on the port.
    datapath.remove_ipcache(outside.addr6, 128).unwrap();
    let with_deny =
        vec![out(Protocol::TCP, 80, IDENTITY_ANY, 1), rule(Verdict::Deny, CIDR_NET, Direction::Egress, None, 0, 4)];
    datapath.load_slot(0, Slot::A, &with_deny).unwrap();
    assert!(!tcp_ok(&client.ns, outside.addr6, 80), "deny precedence");
    assert!(flows_of(&datapath, 0).iter().any(|f| f.enforced_cookie == 4), "the deny rule decided");
    datapath.destroy().unwrap();
}

#[test]
fn extension_headers_are_walked_to_the_upper_layer_up_to_a_limit() {
    let topology = Topology::new("p6e", 2, false, 40);
    let _inside = InNetns::enter(&topology.node);
    let (client, server) = (&topology.endpoints[0], &topology.endpoints[1]);
    let datapath =
        client_server(&topology, rule(Verdict::Allow, identity(0), Direction::Ingress, Some(Protocol::TCP), 80, 2));
    let ifindex = if_index(&server.host_if);
    let syn_to = |port: u16, headers: &[u8]| {
        // `headers`: the kinds of extension header before TCP, outermost first.
        let mut body = tcp_syn(40000 + port, port);
        let mut next = PROTO_TCP;
        for &kind in headers.iter().rev() {
            body = extension(next, &body);
            next = kind;
        }
        ipv6_frame(next, client.addr6, server.addr6, &body)
    };
    let allowed = syn_to(80, &[HOP_BY_HOP, ROUTING, DEST_OPTIONS]);
    assert!(passes(&datapath, Hook::ToEndpoint, ifindex, &allowed), "judged by its TCP port behind three headers");
    let denied = syn_to(81, &[HOP_BY_HOP, DEST_OPTIONS]);
    assert!(!passes(&datapath, Hook::ToEndpoint, ifindex, &denied));
    assert!(recorded(&datapath, 1, DropReason::PolicyDenied));
    let too_many = syn_to(80, &[HOP_BY_HOP, DEST_OPTIONS, ROUTING, DEST_OPTIONS, DEST_OPTIONS]);
    assert!(!passes(&datapath, Hook::ToEndpoint, ifindex, &too_many), "five headers: the port is out of reach");
    assert!(recorded(&datapath, 1, DropReason::Ipv6ExtLimit));
    datapath.destroy().unwrap();
}

#[test]
fn ipv6_fragments_are_judged_like_their_first_fragment() {
    let topology = Topology::new("p6f", 2, false, 50);
    let _inside = InNetns::enter(&topology.node);
    let (client, server) = (&topology.endpoints[0], &topology.endpoints[1]);
    let datapath =
        client_server(&topology, rule(Verdict::Allow, identity(0), Direction::Ingress, Some(Protocol::UDP), 9000, 2));
    // Real fragmented datagrams: the kernel splits what exceeds the link's MTU.
    let received = udp_echo_servers(&server.ns, &[9000, 9001]);
    let big = vec![7u8; 4000];
    let exchange = |port: u16| {
        let socket = udp_socket(&client.ns, server.addr6, port);
        socket.send(&big).unwrap();
        let mut buf = vec![0u8; 8192];
        socket.recv(&mut buf).map(|n| n == big.len()).unwrap_or(false)
    };
    assert!(exchange(9000), "an allowed fragmented datagram arrives whole, and so does its reply");
    assert!(!exchange(9001), "no fragment of a denied one passes");
    assert_eq!(received[1].load(std::sync::atomic::Ordering::Relaxed), 0);
    // A later fragment whose first one was not seen cannot be judged.
    let ifindex = if_index(&server.host_if);
    let orphan = ipv6_frame(FRAGMENT, client.addr6, server.addr6, &fragment(PROTO_UDP, (0x5eed, 100, false), &[0; 16]));
    assert!(!passes(&datapath, Hook::ToEndpoint, ifindex, &orphan));
    assert!(recorded(&datapath, 1, DropReason::FragmentUnknown));
    let first = ipv6_frame(
        FRAGMENT,
        client.addr6,
        server.addr6,
        &fragment(PROTO_UDP, (0x5eee, 0, true), &udp_datagram(1234, 9000, &[0; 8])),
    );
    let later = ipv6_frame(FRAGMENT, client.addr6, server.addr6, &fragment(PROTO_UDP, (0x5eee, 2, false), &[0; 16]));
    assert!(
        passes(&datapath, Hook::ToEndpoint, ifindex, &first) && passes(&datapath, Hook::ToEndpoint, ifindex, &later)
    );
    datapath.destroy().unwrap();
}

#[test]
fn a_spoofed_ipv6_source_is_dropped_in_every_mode() {
    let topology = Topology::new("p6s", 2, false, 60);
    let _inside = InNetns::enter(&topology.node);
    let (client, server) = (&topology.endpoints[0], &topology.endpoints[1]);
    let mut datapath =
        client_server(&topology, rule(Verdict::Allow, IDENTITY_ANY, Direction::Ingress, Some(Protocol::TCP), 80, 2));
    tcp_echo_servers(&server.ns, &[80]);
    // The client takes another address of its subnet and sends from it.
    let spoofed: Ipv6Addr = "fd00:200:0:3c::99".parse().unwrap();
    run(&["ip", "-n", &client.ns, "addr", "add", &format!("{spoofed}/64"), "dev", "p6spe0", "nodad"]);
    let connect_from = |from: Ipv6Addr| {
        let to = SocketAddr::from((server.addr6, 80));
        in_netns(&client.ns, move || {
            let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
            socket.bind(&SocketAddr::from((from, 0)).into()).unwrap();
            socket.connect_timeout(&to.into(), PROBE_TIMEOUT).is_ok()
        })
    };
    assert!(connect_from(client.addr6), "from its own address");
    for mode in [Mode::Enforce, Mode::Audit, Mode::Off] {
        datapath.set_mode(0, mode).unwrap();
        assert!(!connect_from(spoofed), "from another address, in {mode:?} mode");
    }
    assert!(recorded(&datapath, 0, DropReason::InvalidSource));
    assert!(datapath.counters(0).unwrap().invalid_source >= 3);
    datapath.destroy().unwrap();
}

#[test]
fn icmpv6_errors_pass_only_for_tracked_connections() {
    let topology = Topology::new("p6i", 2, false, 70);
    let _inside = InNetns::enter(&topology.node);
    let (client, server) = (&topology.endpoints[0], &topology.endpoints[1]);
    // The server allows UDP 5001 (nothing listens); the client lets nothing in.
    let datapath =
        client_server(&topology, rule(Verdict::Allow, identity(0), Direction::Ingress, Some(Protocol::UDP), 5001, 2));
    assert_eq!(
        udp_probe(&client.ns, server.addr6, 5001),
        UdpOutcome::Refused,
        "the port unreachable error reaches the client as a reply"
    );
    let quoted = {
        let mut original = vec![0x60, 0, 0, 0, 0, 8, PROTO_UDP, 64];
        original.extend_from_slice(&client.addr6.octets());
        original.extend_from_slice(&server.addr6.octets());
        original.extend_from_slice(&udp_datagram(1111, 2222, &[]));
        original
    };
    let mut body = vec![0, 0, 0, 0];
    body.extend_from_slice(&quoted);
    let unrelated = ipv6_frame(PROTO_ICMPV6, server.addr6, client.addr6, &icmp_message(1, &body));
    assert!(!passes(&datapath, Hook::ToEndpoint, if_index(&client.host_if), &unrelated), "about no tracked connection");
    assert!(recorded(&datapath, 0, DropReason::IcmpUnrelated));
    datapath.destroy().unwrap();
}

#[test]
fn a_candidate_is_shadowed_and_promoted_over_ipv6_as_over_ipv4() {
    let topology = Topology::new("p6h", 2, false, 80);
    let _inside = InNetns::enter(&topology.node);
    let (client, server) = (&topology.endpoints[0], &topology.endpoints[1]);
    let allow_80 = rule(Verdict::Allow, identity(0), Direction::Ingress, Some(Protocol::TCP), 80, 2);
    let mut datapath = client_server(&topology, allow_80);
    tcp_echo_servers(&server.ns, &[80]);
    let mut stream: TcpStream = tcp_connect(&client.ns, server.addr6, 80).expect("connects");
    assert!(tcp_roundtrip(&mut stream));
    // The candidate denies what the enforced slot allows: compared, not enforced.
    datapath.load_slot(1, Slot::B, &[]).unwrap();
    datapath.set_candidate(1, Some(Slot::B)).unwrap();
    assert!(tcp_roundtrip(&mut stream), "staging changes no traffic");
    let diffs = flows_of(&datapath, 1);
    assert!(
        diffs.iter().any(|f| f.key.differs() && f.key.candidate_verdict() == Some(Verdict::Deny) && f.key.dport == 80),
        "the candidate's drop is recorded as a difference: {diffs:?}"
    );
    assert!(datapath.counters(1).unwrap().shadow_diffs > 0);
    datapath.flip(1).unwrap();
    assert!(!tcp_roundtrip(&mut stream), "promoted: the established IPv6 connection is judged by the candidate");
    assert!(!tcp_ok(&client.ns, server.addr6, 80));
    datapath.destroy().unwrap();
}

/// kube-proxy's part for an IPv6 ClusterIP, as nftables DNAT in the node namespace.
fn kube_proxy6(node: &str, cluster_ip: Ipv6Addr, translations: &[(u16, Ipv6Addr, u16)]) {
    let mut rules = String::from(
        "flush ruleset\ntable ip6 kube-proxy {\n chain services {\n  type nat hook prerouting priority dstnat; policy accept;\n",
    );
    for (port, backend, target) in translations {
        rules.push_str(&format!("  ip6 daddr {cluster_ip} tcp dport {port} dnat to [{backend}]:{target}\n"));
    }
    rules.push_str(" }\n}\n");
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", node, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run nft (install nftables)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), rules.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft rejected:\n{rules}");
}

#[test]
fn a_connection_to_an_ipv6_cluster_ip_is_judged_by_the_backend_kube_proxy_chose() {
    let topology = Topology::new("p6v", 3, false, 90);
    let _inside = InNetns::enter(&topology.node);
    let (client, allowed, refused) = (&topology.endpoints[0], &topology.endpoints[1], &topology.endpoints[2]);
    let cluster_ip: Ipv6Addr = "fd00:200:0:fa::10".parse().unwrap();
    let to_backend = |backend| rule(Verdict::Allow, identity(backend), Direction::Egress, Some(Protocol::TCP), 8080, 1);
    let from_client = rule(Verdict::Allow, identity(0), Direction::Ingress, Some(Protocol::TCP), 8080, 2);
    let mut datapath = start(&topology, vec![vec![to_backend(1)], vec![from_client], vec![from_client]]);
    datapath.set_ipcache(cluster_ip, 128, IDENTITY_SERVICE).unwrap();
    tcp_echo_servers(&allowed.ns, &[8080]);
    tcp_echo_servers(&refused.ns, &[8080]);
    // Port 80 goes to the backend the client may reach, port 81 to the one it may not.
    kube_proxy6(&topology.node, cluster_ip, &[(80, allowed.addr6, 8080), (81, refused.addr6, 8080)]);
    assert!(tcp_ok(&client.ns, cluster_ip, 80), "to the allowed backend, judged after translation");
    assert!(!tcp_ok(&client.ns, cluster_ip, 81), "to a backend the client's egress does not allow");
    let refused_flows = flows_of(&datapath, 0);
    assert!(
        refused_flows.iter().any(|f| f.key.identity == identity(2)
            && f.key.dport == 8080
            && f.key.drop_reason() == Some(DropReason::PolicyDenied)),
        "the client's egress drop names the backend, not the ClusterIP: {refused_flows:?}"
    );
    let received = events_of(&datapath);
    let event = received.iter().find(|e| e.flow.endpoint == 0 && e.flow.identity == identity(2)).expect("an event");
    assert_eq!(event.service(), Some((IpAddr::from(cluster_ip), 81)), "{event:?}");
    assert_eq!(event.destination(), IpAddr::from(refused.addr6));
    datapath.destroy().unwrap();
}

#[test]
fn without_its_ipv6_programs_an_endpoint_drops_ipv6_and_keeps_ipv4() {
    let topology = Topology::new("p6m", 2, false, 100);
    let _inside = InNetns::enter(&topology.node);
    let (client, server) = (&topology.endpoints[0], &topology.endpoints[1]);
    let datapath =
        client_server(&topology, rule(Verdict::Allow, identity(0), Direction::Ingress, Some(Protocol::TCP), 80, 2));
    tcp_echo_servers(&server.ns, &[80]);
    assert!(tcp_ok(&client.ns, server.addr6, 80));
    // A node whose IPv6 programs are gone from their table (a half-loaded or damaged pin).
    let data = aya::maps::MapData::from_pin(topology.pin_dir.join("maps/IPV6_PROGRAMS")).unwrap();
    let mut programs = aya::maps::ProgramArray::try_from(aya::maps::Map::ProgramArray(data)).unwrap();
    for slot in 0..IPV6_PROGRAM_COUNT {
        programs.clear_index(&slot).unwrap();
    }
    assert!(!tcp_ok(&client.ns, server.addr6, 80), "IPv6 the node cannot judge is dropped");
    assert!(recorded(&datapath, 0, DropReason::UnknownL3));
    assert!(tcp_ok(&client.ns, server.addr, 80), "IPv4 is judged as before");
    datapath.destroy().unwrap();
}
