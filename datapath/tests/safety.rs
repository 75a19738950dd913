//! The datapath's safety invariants on real packets between network namespaces: L7 fails
//! closed, identity is earned, a deny ends the connection, fragments and ICMP are judged with
//! their connection, unknown ethertypes are dropped, and no shadow difference comes from a
//! half-written candidate.
mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use palisade_common::*;
use palisade_datapath::{Datapath, Flow, Hook, Mode, Slot};
use support::*;

fn identity(endpoint: usize) -> u32 {
    IDENTITY_FIRST_LOCAL + endpoint as u32
}

fn rule(
    identity: u32,
    direction: Direction,
    protocol: Option<Protocol>,
    port: u16,
    verdict: Verdict,
    cookie: u32,
) -> PolicyEntry {
    let port_bits = if protocol.is_some() && port != 0 { 16 } else { 0 };
    entry(PolicyKey::new(identity, direction, protocol, port, port_bits), PolicyValue::new(verdict, cookie))
}

fn egress_all(cookie: u32) -> PolicyEntry {
    rule(IDENTITY_ANY, Direction::Egress, None, 0, Verdict::Allow, cookie)
}

/// Every endpoint's address in the ipcache and its slot A loaded, then all attached.
fn start(topology: &Topology, slots: Vec<Vec<PolicyEntry>>) -> Datapath {
    let mut datapath = topology.datapath();
    for (i, (endpoint, slot)) in topology.endpoints.iter().zip(slots).enumerate() {
        datapath.set_ipcache(endpoint.addr, 32, identity(i)).unwrap();
        datapath.load_slot(i as u32, Slot::A, &slot).unwrap();
    }
    for (i, endpoint) in topology.endpoints.iter().enumerate() {
        datapath.attach(i as u32, &endpoint.host_if, endpoint.addr).unwrap();
    }
    datapath
}

/// A client and a server, both with open egress; the server's ingress is `server_ingress`.
fn client_server(topology: &Topology, server_ingress: &[PolicyEntry]) -> Datapath {
    let mut server = vec![egress_all(2)];
    server.extend_from_slice(server_ingress);
    start(topology, vec![vec![egress_all(1)], server])
}

fn flows_of(datapath: &Datapath, endpoint: u32) -> Vec<Flow> {
    datapath.flows().unwrap().into_iter().filter(|f| f.key.endpoint == endpoint).collect()
}

/// Whether `frame`, run through `hook` of interface `ifindex`, passes.
fn passes(datapath: &Datapath, hook: Hook, ifindex: u32, frame: &[u8]) -> bool {
    datapath.run_frame(hook, ifindex, frame, 1).unwrap().passed
}

/// Whether `endpoint` recorded a flow dropped for `reason`.
fn recorded(datapath: &Datapath, endpoint: u32, reason: DropReason) -> bool {
    flows_of(datapath, endpoint).iter().any(|f| f.key.drop_reason() == Some(reason))
}

/// An HTTP request over a new connection; true when it comes back from the echo server.
fn http_get(ns: &str, to: Ipv4Addr, port: u16) -> bool {
    let Some(mut stream) = tcp_connect(ns, to, port) else { return false };
    let request = b"GET /public HTTP/1.1\r\nHost: api\r\n\r\n";
    let mut echoed = [0; 37];
    stream.write_all(request).is_ok() && stream.read_exact(&mut echoed[..request.len()]).is_ok()
}

#[test]
fn a_port_with_l7_rules_is_refused_when_no_proxy_judges_it() {
    let topology = Topology::new("pd7", 2, false, 160);
    let _inside = InNetns::enter(&topology.node);
    let (client, server) = (&topology.endpoints[0], &topology.endpoints[1]);
    let mut datapath = client_server(
        &topology,
        &[
            // `toPorts: [{ports: [8080/TCP], rules: {http: [{method: GET, path: /public}]}}]`
            rule(identity(0), Direction::Ingress, Some(Protocol::TCP), 8080, Verdict::Redirect, 3),
            rule(identity(0), Direction::Ingress, Some(Protocol::TCP), 8081, Verdict::Allow, 4),
        ],
    );
    tcp_echo_servers(&server.ns, &[8080, 8081]);

    assert!(http_get(&client.ns, server.addr, 8081), "an L4 allow passes");
    assert!(
        !http_get(&client.ns, server.addr, 8080),
        "a request to a port with L7 rules is refused, never passed unjudged"
    );
    let refused = flows_of(&datapath, 1).into_iter().find(|f| f.key.dport == 8080).expect("the refusal is recorded");
    assert_eq!(refused.key.drop_reason(), Some(DropReason::L7Unsupported), "{refused:?}");
    // The redirect, judged unsteerable: no proxy runs on this node.
    assert_eq!((refused.key.enforced_verdict, refused.enforced_cookie), (VERDICT_L7_UNSUPPORTED, 3));
    assert!(datapath.counters(1).unwrap().denied > 0);

    // Audit mode lets it through and records that enforcing would refuse it.
    datapath.clear_flows().unwrap();
    datapath.set_mode(1, Mode::Audit).unwrap();
    assert!(http_get(&client.ns, server.addr, 8080), "audit mode does not drop");
    let audited = flows_of(&datapath, 1).into_iter().find(|f| f.key.dport == 8080).expect("recorded in audit mode");
    assert_eq!((audited.key.mode(), audited.key.drop_reason()), (Mode::Audit, Some(DropReason::L7Unsupported)));
    assert!(datapath.counters(1).unwrap().audited > 0);
    datapath.destroy().unwrap();
}

#[test]
fn a_packet_with_another_pods_source_address_is_dropped_in_every_mode() {
    let topology = Topology::new("pdv", 3, false, 164);
    let _inside = InNetns::enter(&topology.node);
    let (attacker, trusted, server) = (&topology.endpoints[0], &topology.endpoints[1], &topology.endpoints[2]);
    // Only the trusted pod may send to the server's UDP 9000.
    let mut datapath = start(
        &topology,
        vec![
            vec![egress_all(1)],
            vec![egress_all(2)],
            vec![egress_all(3), rule(identity(1), Direction::Ingress, Some(Protocol::UDP), 9000, Verdict::Allow, 4)],
        ],
    );
    let received = udp_echo_servers(&server.ns, &[9000]).remove(0);
    assert!(udp_ok(&trusted.ns, server.addr, 9000), "the trusted pod is allowed");
    let spoofed =
        || ipv4_packet(PROTO_UDP, trusted.addr, server.addr, (7, 0, false), &udp_datagram(4000, 9000, b"spoof"));

    for mode in [Mode::Enforce, Mode::Audit, Mode::Off] {
        datapath.set_mode(0, mode).unwrap();
        let (before, dropped_before) = (received.load(Ordering::Relaxed), datapath.counters(0).unwrap().invalid_source);
        for _ in 0..3 {
            send_raw_ipv4(&attacker.ns, spoofed());
        }
        assert!(
            eventually(|| datapath.counters(0).unwrap().invalid_source >= dropped_before + 3),
            "{mode:?}: the spoofed packets are counted as invalid-source drops: {:?}",
            datapath.counters(0).unwrap()
        );
        thread::sleep(Duration::from_millis(50));
        assert_eq!(received.load(Ordering::Relaxed), before, "{mode:?}: no spoofed packet reached the server");
    }
    let recorded = flows_of(&datapath, 0);
    assert!(
        recorded.iter().any(|f| f.key.drop_reason() == Some(DropReason::InvalidSource) && f.key.dport == 9000),
        "recorded with its reason: {recorded:?}"
    );
    // The attacker's own address still works where its policy allows it.
    datapath.set_mode(0, Mode::Enforce).unwrap();
    assert!(udp_probe(&attacker.ns, server.addr, 9000) == UdpOutcome::Silent, "its own identity is not allowed");
    datapath.destroy().unwrap();
}

#[test]
fn a_denied_connection_stops_carrying_the_servers_packets() {
    let topology = Topology::new("pdd", 2, false, 168);
    let _inside = InNetns::enter(&topology.node);
    let (client, server) = (&topology.endpoints[0], &topology.endpoints[1]);
    // The server's egress is open: with its conntrack entry simply gone, its next packet would
    // open a connection of its own and let the client's packets back in as its replies.
    let mut datapath =
        client_server(&topology, &[rule(identity(0), Direction::Ingress, Some(Protocol::TCP), 80, Verdict::Allow, 3)]);
    datapath.load_slot(1, Slot::B, &[egress_all(4)]).unwrap();

    let listener = in_netns(&server.ns, || TcpListener::bind(("0.0.0.0", 80)).unwrap());
    let (accepted, accept) = mpsc::channel();
    thread::spawn(move || accepted.send(listener.accept().unwrap().0).unwrap());
    let mut to_server = tcp_connect(&client.ns, server.addr, 80).expect("connect");
    let mut to_client = accept.recv_timeout(Duration::from_secs(1)).expect("accepted");
    to_client.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
    let mut buf = [0; 5];
    to_client.write_all(b"hello").unwrap();
    to_server.read_exact(&mut buf).expect("the server's data arrives while allowed");
    to_server.write_all(b"x").unwrap();
    to_client.read_exact(&mut buf[..1]).expect("and the client's");

    datapath.set_candidate(1, Some(Slot::B)).unwrap();
    datapath.flip(1).unwrap();
    let denied_before = datapath.counters(1).unwrap().denied;
    to_server.write_all(b"y").unwrap();
    assert!(eventually(|| datapath.counters(1).unwrap().denied > denied_before), "the client's packet is denied");
    assert!(to_client.read_exact(&mut buf[..1]).is_err(), "it never reaches the server");
    to_client.write_all(b"world").unwrap();
    let late = to_server.read(&mut buf);
    assert!(
        matches!(late, Err(ref e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "the server's packets stop too: {late:?}"
    );
    datapath.destroy().unwrap();
}

#[test]
fn fragmented_datagrams_are_judged_like_their_first_fragment() {
    let topology = Topology::new("pdg", 2, false, 172);
    let _inside = InNetns::enter(&topology.node);
    let (client, server) = (&topology.endpoints[0], &topology.endpoints[1]);
    let datapath = client_server(
        &topology,
        &[
            rule(identity(0), Direction::Ingress, Some(Protocol::UDP), 9000, Verdict::Allow, 3),
            rule(identity(0), Direction::Ingress, Some(Protocol::UDP), 9001, Verdict::Deny, 4),
        ],
    );
    let received = udp_echo_servers(&server.ns, &[9000, 9001]);
    let big = vec![0x5a; 4096];
    let roundtrip = |port: u16| {
        let socket = udp_socket(&client.ns, server.addr, port);
        socket.send(&big).expect("send 4 KB");
        let mut echoed = vec![0; 8192];
        socket.recv(&mut echoed).map(|n| n == big.len()).unwrap_or(false)
    };
    assert!(roundtrip(9000), "4 KB datagrams (three fragments each way) pass under a port-specific allow");
    assert!(!roundtrip(9001), "and are dropped under a deny of that port");
    assert_eq!(received[1].load(Ordering::Relaxed), 0, "no part of the denied datagram was delivered");

    // A later fragment whose first fragment was never seen has no ports to judge: dropped.
    let ifindex = if_index(&server.host_if);
    let orphan = ipv4_packet(PROTO_UDP, client.addr, server.addr, (4242, 185, false), &[0; 64]);
    assert!(!passes(&datapath, Hook::ToEndpoint, ifindex, &ethernet_frame(0x0800, &orphan)));
    assert!(recorded(&datapath, 1, DropReason::FragmentUnknown), "recorded as fragment-unknown");
    datapath.destroy().unwrap();
}

#[test]
fn icmp_errors_pass_only_for_tracked_connections_and_other_icmp_is_judged_per_packet() {
    let topology = Topology::new("pdp", 2, false, 176);
    let _inside = InNetns::enter(&topology.node);
    let (client, server) = (&topology.endpoints[0], &topology.endpoints[1]);
    let datapath = client_server(
        &topology,
        &[
            rule(identity(0), Direction::Ingress, Some(Protocol::ICMP), 8, Verdict::Allow, 3),
            rule(identity(0), Direction::Ingress, Some(Protocol::UDP), 7000, Verdict::Allow, 4),
        ],
    );
    assert!(ping_ok(&client.ns, server.addr), "ping through an allowed pair works");
    // Nothing listens on UDP 7000: the server's port-unreachable relates to the client's
    // datagram and passes as its reply.
    assert_eq!(udp_probe(&client.ns, server.addr, 7000), UdpOutcome::Refused);

    let client_if = if_index(&client.host_if);
    // A port-unreachable quoting a datagram the client never sent.
    let quoted = ipv4_packet(PROTO_UDP, client.addr, server.addr, (9, 0, false), &udp_datagram(5555, 7777, &[]));
    let mut rest = vec![0; 4];
    rest.extend_from_slice(&quoted);
    let unrelated = ipv4_frame(PROTO_ICMP, server.addr, client.addr, &icmp_message(3, &rest));
    assert!(!passes(&datapath, Hook::ToEndpoint, client_if, &unrelated), "an unrelated error");
    assert!(recorded(&datapath, 0, DropReason::IcmpUnrelated));

    // ICMP other than echo opens nothing: the client's timestamp request does not make the
    // server's later ICMP a reply that bypasses the client's ingress policy (none allows it).
    let timestamp = icmp_message(13, &[0; 16]);
    let out = ipv4_frame(PROTO_ICMP, client.addr, server.addr, &timestamp);
    assert!(passes(&datapath, Hook::FromEndpoint, client_if, &out), "egress is open");
    let back = ipv4_frame(PROTO_ICMP, server.addr, client.addr, &timestamp);
    assert!(!passes(&datapath, Hook::ToEndpoint, client_if, &back), "judged by its type");
    datapath.destroy().unwrap();
}

#[test]
fn only_arp_ipv4_and_ipv6_reach_an_enforcing_endpoint() {
    let topology = Topology::new("pde", 1, false, 180);
    let _inside = InNetns::enter(&topology.node);
    let mut datapath = start(&topology, vec![vec![egress_all(1)]]);
    let ifindex = if_index(&topology.endpoints[0].host_if);
    let arp = ethernet_frame(
        0x0806,
        &[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 200, 180, 1, 0, 0, 0, 0, 0, 0, 10, 200, 180, 2],
    );
    let lldp = ethernet_frame(0x88cc, &[0; 46]);
    let vlan = ethernet_frame(0x8100, &[0, 5, 8, 0, 0x45, 0, 0, 20]);
    assert!(passes(&datapath, Hook::ToEndpoint, ifindex, &arp), "ARP passes");
    for frame in [&lldp, &vlan] {
        assert!(!passes(&datapath, Hook::ToEndpoint, ifindex, frame), "dropped: {:x?}", &frame[12..14]);
    }
    assert!(recorded(&datapath, 0, DropReason::UnknownL3));
    // An IPv4 header claiming to be shorter than an IPv4 header cannot be judged either.
    let endpoint = topology.endpoints[0].addr;
    let mut malformed = ipv4_packet(PROTO_UDP, Ipv4Addr::new(10, 200, 180, 1), endpoint, (3, 0, false), &[0; 8]);
    malformed[0] = 0x44;
    let malformed = ethernet_frame(0x0800, &malformed);
    assert!(!passes(&datapath, Hook::ToEndpoint, ifindex, &malformed), "a malformed header");
    assert!(recorded(&datapath, 0, DropReason::Malformed));
    datapath.set_mode(0, Mode::Audit).unwrap();
    assert!(passes(&datapath, Hook::ToEndpoint, ifindex, &lldp), "audit mode only records it");
    assert_eq!(datapath.counters(0).unwrap().unjudged, 4);
    datapath.destroy().unwrap();
}

/// The candidate is rewritten in place thousands of times under traffic between two contents,
/// each of which judges the traffic like the enforced slot (deny). Half way through a rewrite
/// the slot would allow it: a shadow difference recorded from a half-written slot shows as a
/// candidate allow.
#[test]
fn no_shadow_difference_is_recorded_from_a_half_written_candidate() {
    let topology = Topology::new("pdw", 2, false, 184);
    let _inside = InNetns::enter(&topology.node);
    let (client, server) = (&topology.endpoints[0], &topology.endpoints[1]);
    // Enforced: the server denies all ingress.
    let mut datapath = client_server(&topology, &[]);
    const PORTS: [u16; 4] = [9100, 9101, 9102, 9103];
    let content = |old: bool| {
        let mut entries = vec![egress_all(2)];
        for port in PORTS {
            // Old: the client's allow is beaten by a deny of everyone; new: the client's deny
            // wins over an allow of everyone. Both deny. With the any-peer key rewritten before
            // the client's (keys are written in order), the half-written slot allows.
            let (client_verdict, any_verdict) =
                if old { (Verdict::Allow, Verdict::Deny) } else { (Verdict::Deny, Verdict::Allow) };
            let cookie = if old { 10 } else { 20 };
            entries.push(rule(identity(0), Direction::Ingress, Some(Protocol::UDP), port, client_verdict, cookie));
            entries.push(rule(IDENTITY_ANY, Direction::Ingress, Some(Protocol::UDP), port, any_verdict, cookie + 1));
        }
        entries.sort_by_key(|e| e.key);
        entries
    };
    let (old, new) = (content(true), content(false));
    datapath.load_slot(1, Slot::B, &old).unwrap();
    datapath.set_candidate(1, Some(Slot::B)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let sender = {
        let (stop, to) = (stop.clone(), server.addr);
        let socket = in_netns(&client.ns, || std::net::UdpSocket::bind("0.0.0.0:0").unwrap());
        thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for port in PORTS {
                    let _ = socket.send_to(b"x", (to, port));
                    sent += 1;
                }
            }
            sent
        })
    };
    let mut holds = &old;
    for _ in 0..3000 {
        let next = if std::ptr::eq(holds, &old) { &new } else { &old };
        datapath.rewrite_slot(1, Slot::B, holds, next).unwrap();
        holds = next;
    }
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let counters = datapath.counters(1).unwrap();
    assert!(counters.denied > 10_000, "traffic ran throughout ({sent} sent): {counters:?}");
    let differences: Vec<Flow> = flows_of(&datapath, 1).into_iter().filter(|f| f.key.differs()).collect();
    assert!(differences.is_empty(), "differences neither candidate produces: {differences:?}");
    assert_eq!(counters.shadow_diffs, 0, "{counters:?}");
    datapath.destroy().unwrap();
}

/// A rewrite that fails half way (here: a full slot cannot take a new key before the old one
/// goes) puts the slot back as it was, and it is still compared as a candidate.
#[test]
fn a_failed_rewrite_leaves_the_slot_as_it_was() {
    let topology = Topology::new("pdx", 2, false, 188);
    let _inside = InNetns::enter(&topology.node);
    let (client, server) = (&topology.endpoints[0], &topology.endpoints[1]);
    let mut datapath = client_server(&topology, &[]);
    let full: Vec<PolicyEntry> = {
        let mut entries: Vec<PolicyEntry> = (0..palisade_datapath::MAX_POLICY_ENTRIES - 1)
            .map(|i| rule(IDENTITY_CIDR_BASE | i, Direction::Ingress, Some(Protocol::UDP), 53, Verdict::Allow, 5))
            .collect();
        entries.push(rule(identity(0), Direction::Ingress, Some(Protocol::UDP), 9000, Verdict::Allow, 6));
        entries.sort_by_key(|e| e.key);
        entries
    };
    datapath.load_slot(1, Slot::B, &full).unwrap();
    datapath.set_candidate(1, Some(Slot::B)).unwrap();
    let mut swapped = full.clone();
    swapped.retain(|e| e.key.identity() != (IDENTITY_CIDR_BASE | 7));
    swapped.push(rule(identity(0), Direction::Ingress, Some(Protocol::UDP), 9001, Verdict::Allow, 7));
    swapped.sort_by_key(|e| e.key);

    let error = datapath.rewrite_slot(1, Slot::B, &full, &swapped).expect_err("the full slot refuses a new key");
    assert!(error.to_string().contains("POLICY_SLOTS"), "{error}");
    assert_eq!(datapath.slot_entries(1, Slot::B).unwrap(), full, "the slot is as it was");
    // Still a whole candidate, compared on every packet: its allow of 9000 differs from the deny.
    udp_echo_servers(&server.ns, &[9000]);
    assert!(!udp_ok(&client.ns, server.addr, 9000), "the enforced slot denies");
    let differences: Vec<Flow> = flows_of(&datapath, 1).into_iter().filter(|f| f.key.differs()).collect();
    assert!(
        differences.iter().any(|f| f.key.dport == 9000 && f.candidate_cookie == 6),
        "the candidate is compared again: {differences:?}"
    );
    datapath.destroy().unwrap();
}
