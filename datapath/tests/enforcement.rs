//! Real packets between network namespaces through the real program: the connectivity matrix,
//! replies and related ICMP, and a tightened policy cutting an established connection.
mod support;

use std::net::{Ipv4Addr, TcpStream};

use palisade_common::*;
use palisade_datapath::{Datapath, Slot};
use support::*;

const CIDR_IDENTITY: u32 = IDENTITY_CIDR_BASE | 1;

fn identity(endpoint: usize) -> u32 {
    IDENTITY_FIRST_LOCAL + endpoint as u32
}

fn allow(key: PolicyKey, cookie: u32) -> PolicyEntry {
    entry(key, PolicyValue::new(Verdict::Allow, cookie))
}

fn deny(key: PolicyKey, cookie: u32) -> PolicyEntry {
    entry(key, PolicyValue::new(Verdict::Deny, cookie))
}

fn allow_all(direction: Direction, cookie: u32) -> PolicyEntry {
    allow(PolicyKey::new(IDENTITY_ANY, direction, None, 0, 0), cookie)
}

/// e0 client, e1 web, e2 database, e3 restricted; x is outside the endpoint set.
fn policies() -> [Vec<PolicyEntry>; 4] {
    use Direction::Egress as EG;
    use Direction::Ingress as IN;
    [
        vec![allow_all(EG, 1), allow(PolicyKey::new(CIDR_IDENTITY, IN, Some(Protocol::TCP), 7000, 16), 2)],
        vec![
            allow_all(EG, 11),
            allow(PolicyKey::new(identity(0), IN, Some(Protocol::TCP), 80, 16), 12),
            // Any peer on TCP 8080-8095 (a port range as a 12-bit prefix).
            allow(PolicyKey::new(IDENTITY_ANY, IN, Some(Protocol::TCP), 8080, 12), 13),
            allow(PolicyKey::new(IDENTITY_ANY, IN, Some(Protocol::TCP), 80, 16), 14),
            // The database may not reach the web tier at all: beats the any-peer port-80 allow.
            deny(PolicyKey::new(identity(2), IN, None, 0, 0), 15),
        ],
        vec![
            allow_all(EG, 21),
            // L3-only: the web tier may use anything.
            allow(PolicyKey::new(identity(1), IN, None, 0, 0), 22),
            allow(PolicyKey::new(IDENTITY_ANY, IN, Some(Protocol::UDP), 53, 16), 23),
        ],
        vec![
            allow(PolicyKey::new(CIDR_IDENTITY, EG, Some(Protocol::TCP), 9000, 16), 31),
            allow(PolicyKey::new(identity(1), EG, None, 0, 0), 32),
            allow(PolicyKey::new(identity(0), IN, Some(Protocol::ICMP), 8, 16), 33),
        ],
    ]
}

fn setup(topology: &Topology, datapath: &mut Datapath) {
    for (i, (endpoint, policy)) in topology.endpoints.iter().zip(policies()).enumerate() {
        datapath.set_ipcache(endpoint.addr, 32, identity(i)).unwrap();
        datapath.load_slot(i as u32, Slot::A, &policy).unwrap();
        datapath.attach(i as u32, &endpoint.host_if, endpoint.addr).unwrap();
    }
    let external = topology.external.as_ref().unwrap().addr;
    datapath.set_ipcache(Ipv4Addr::from(u32::from(external) & !0xff), 24, CIDR_IDENTITY).unwrap();
}

type Probe<'a> = Box<dyn Fn() -> bool + Sync + Send + 'a>;

#[test]
fn connectivity_matrix_over_tcp_udp_icmp() {
    let topology = Topology::new("pdm", 4, true, 10);
    let _inside = InNetns::enter(&topology.node);
    let mut datapath = topology.datapath();
    setup(&topology, &mut datapath);
    let ep = |i: usize| (topology.endpoints[i].ns.as_str(), topology.endpoints[i].addr);
    let ext = topology.external.as_ref().unwrap();
    for i in 0..4 {
        tcp_echo_servers(&topology.endpoints[i].ns, &[80, 5432, 8085, 8100]);
        udp_echo_servers(&topology.endpoints[i].ns, &[53, 5000]);
    }
    tcp_echo_servers(&ext.ns, &[9000, 9001]);
    tcp_echo_servers(&topology.endpoints[0].ns, &[7000, 7001]);

    let (e0, e1, e2, e3) = (ep(0), ep(1), ep(2), ep(3));
    let cases: Vec<(&str, bool, Probe)> = vec![
        ("e0->e1 tcp/80: identity allow (replies pass e0's ingress)", true, Box::new(move || tcp_ok(e0.0, e1.1, 80))),
        ("e0->e1 tcp/8085: port range", true, Box::new(move || tcp_ok(e0.0, e1.1, 8085))),
        ("e0->e1 tcp/8100: outside the range", false, Box::new(move || tcp_ok(e0.0, e1.1, 8100))),
        ("e2->e1 tcp/80: deny beats the any-peer allow", false, Box::new(move || tcp_ok(e2.0, e1.1, 80))),
        ("e3->e1 tcp/80: any-peer allow", true, Box::new(move || tcp_ok(e3.0, e1.1, 80))),
        ("e1->e2 tcp/5432: L3-only", true, Box::new(move || tcp_ok(e1.0, e2.1, 5432))),
        ("e1->e2 udp/5000: L3-only", true, Box::new(move || udp_ok(e1.0, e2.1, 5000))),
        ("e1->e2 icmp: L3-only", true, Box::new(move || ping_ok(e1.0, e2.1))),
        ("e0->e2 tcp/5432: no rule", false, Box::new(move || tcp_ok(e0.0, e2.1, 5432))),
        ("e0->e2 udp/53: any-peer udp/53 (reply passes)", true, Box::new(move || udp_ok(e0.0, e2.1, 53))),
        ("e0->e2 icmp: no rule", false, Box::new(move || ping_ok(e0.0, e2.1))),
        ("e3->e2 udp/53: e3's egress denies", false, Box::new(move || udp_ok(e3.0, e2.1, 53))),
        ("e0->e3 icmp echo: allowed, reply passes e0", true, Box::new(move || ping_ok(e0.0, e3.1))),
        ("e1->e3 icmp: not from e0", false, Box::new(move || ping_ok(e1.0, e3.1))),
        ("e3->e1 udp/5000: e1 ingress has no rule", false, Box::new(move || udp_ok(e3.0, e1.1, 5000))),
        ("e3->x tcp/9000: CIDR egress rule", true, Box::new(move || tcp_ok(e3.0, ext.addr, 9000))),
        ("e3->x tcp/9001: not in the CIDR rule", false, Box::new(move || tcp_ok(e3.0, ext.addr, 9001))),
        ("e0->x tcp/9001: e0 may send anywhere", true, Box::new(move || tcp_ok(e0.0, ext.addr, 9001))),
        ("x->e0 tcp/7000: CIDR ingress rule", true, Box::new(move || tcp_ok(&ext.ns, e0.1, 7000))),
        ("x->e0 tcp/7001: not in the CIDR rule", false, Box::new(move || tcp_ok(&ext.ns, e0.1, 7001))),
    ];
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            cases.iter().map(|(name, expected, probe)| scope.spawn(move || (name, *expected, probe()))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|(_, expected, got)| expected != got)
            .map(|(name, expected, got)| format!("{name}: expected {expected}, got {got}"))
            .collect()
    });
    assert!(failures.is_empty(), "connectivity matrix:\n{}", failures.join("\n"));

    // Related ICMP: e1 may send UDP to a closed port of e2 (L3 rule); the port-unreachable error
    // passes e1's ingress, where ICMP from e2 has no rule, because it belongs to that flow.
    assert_eq!(udp_probe(e1.0, e2.1, 6000), UdpOutcome::Refused, "related ICMP error must pass");

    let web = datapath.counters(1).unwrap();
    assert!(web.denied >= 2 && web.allowed > 0 && web.replies > 0, "web counters: {web:?}");
    let flows = datapath.flows().unwrap();
    let denied_db = flows
        .iter()
        .find(|f| f.key.endpoint == 1 && f.key.identity == identity(2) && f.key.dport == 80)
        .expect("the e2->e1 drop is a counted flow");
    assert_eq!((denied_db.key.enforced_verdict(), denied_db.enforced_cookie), (Verdict::Deny, 15));

    // Without its CIDR identity the external address is "world", which e0 does not admit.
    datapath.remove_ipcache(Ipv4Addr::from(u32::from(ext.addr) & !0xff), 24).unwrap();
    assert!(!tcp_ok(&ext.ns, e0.1, 7000), "world is denied once the CIDR identity is gone");
    datapath.destroy().unwrap();
}

/// The four endpoints under the policies of [`setup`], entered, and a connection from e0 to
/// e1's echo server on port 80, which they allow, that works.
fn established(prefix: &str, subnet: u8) -> (Topology, InNetns, Datapath, TcpStream) {
    let topology = Topology::new(prefix, 4, true, subnet);
    let inside = InNetns::enter(&topology.node);
    let mut datapath = topology.datapath();
    setup(&topology, &mut datapath);
    tcp_echo_servers(&topology.endpoints[1].ns, &[80]);
    let mut stream = tcp_connect(&topology.endpoints[0].ns, topology.endpoints[1].addr, 80).expect("connect");
    assert!(tcp_roundtrip(&mut stream), "allowed connection works");
    (topology, inside, datapath, stream)
}

#[test]
fn tightened_policy_cuts_an_established_connection() {
    let (topology, _inside, mut datapath, mut stream) = established("pdc", 40);

    let mut tightened = policies()[1].clone();
    tightened.retain(|e| e.key.port() != 80);
    datapath.load_slot(1, Slot::B, &tightened).unwrap();
    datapath.set_candidate(1, Some(Slot::B)).unwrap();
    assert!(tcp_roundtrip(&mut stream), "a candidate alone changes nothing");
    // The established connection's next packets are shadow-evaluated too: an audit sees
    // long-lived connections, not only new ones.
    let shadowed = datapath.flows().unwrap().into_iter().find(|f| f.key.endpoint == 1 && f.key.dport == 80);
    assert!(
        shadowed.is_some_and(
            |f| (f.key.enforced_verdict(), f.key.candidate_verdict()) == (Verdict::Allow, Some(Verdict::Deny))
        ),
        "the candidate's verdict on the established connection is recorded: {shadowed:?}"
    );
    datapath.flip(1).unwrap();
    assert!(!tcp_roundtrip(&mut stream), "the established connection is cut on its next packet");
    assert!(!tcp_ok(&topology.endpoints[0].ns, topology.endpoints[1].addr, 80), "new connections are denied");
    // Reloading the enforced slot in place takes effect at once: no cached verdict survives it.
    datapath.load_slot(1, Slot::B, &policies()[1]).unwrap();
    assert!(tcp_ok(&topology.endpoints[0].ns, topology.endpoints[1].addr, 80), "allowed again after the reload");
    // So does a change in place, key by key (how an agent follows peers coming and going).
    let mut stream = tcp_connect(&topology.endpoints[0].ns, topology.endpoints[1].addr, 80).expect("connect");
    assert!(tcp_roundtrip(&mut stream));
    let mut expected = policies()[1].clone();
    expected.sort_by_key(|e| e.key);
    let mut without_80 = expected.clone();
    without_80.retain(|e| e.key.port() != 80);
    datapath.rewrite_slot(1, Slot::B, &expected, &without_80).unwrap();
    assert!(!tcp_roundtrip(&mut stream), "removing the allow in place cuts the connection");
    datapath.rewrite_slot(1, Slot::B, &without_80, &expected).unwrap();
    assert_eq!(datapath.slot_entries(1, Slot::B).unwrap(), expected, "the slot reads back as written");
    assert!(tcp_ok(&topology.endpoints[0].ns, topology.endpoints[1].addr, 80), "adding it back allows again");
    datapath.destroy().unwrap();
}

#[test]
fn ipcache_change_rejudges_an_established_connection() {
    let (topology, _inside, mut datapath, mut stream) = established("pdi", 44);
    let client = &topology.endpoints[0];
    assert!(tcp_roundtrip(&mut stream), "and keeps working on its cached decision");
    let denied_before = datapath.counters(1).unwrap().denied;

    // The client's address now belongs to the database identity, which the web tier denies.
    datapath.set_ipcache(client.addr, 32, identity(2)).unwrap();
    assert!(!tcp_roundtrip(&mut stream), "the established connection is judged by the new identity");
    assert!(datapath.counters(1).unwrap().denied > denied_before, "denied by the web tier's policy");
    let flows = datapath.flows().unwrap();
    assert!(
        flows.iter().any(|f| f.key.endpoint == 1 && f.key.identity == identity(2) && f.enforced_cookie == 15),
        "the drop names the new identity and the deny rule: {flows:?}"
    );

    // And back to the client identity.
    datapath.set_ipcache(client.addr, 32, identity(0)).unwrap();
    assert!(tcp_ok(&client.ns, topology.endpoints[1].addr, 80), "allowed again under the old identity");
    datapath.destroy().unwrap();
}
