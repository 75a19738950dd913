//! Shadow evaluation: the enforced slot decides, the candidate is evaluated beside it, and only
//! the flows on which they disagree are counted, with one event per new flow. Audit mode is the
//! same mechanism with nothing enforced.
mod support;

use std::time::Duration;

use palisade_common::*;
use palisade_datapath::{Mode, Slot};
use support::*;

fn allow(key: PolicyKey, cookie: u32) -> PolicyEntry {
    entry(key, PolicyValue::new(Verdict::Allow, cookie))
}

fn udp(identity: u32, port: u16) -> PolicyKey {
    PolicyKey::new(identity, Direction::Ingress, Some(Protocol::UDP), port, 16)
}

#[test]
fn candidate_differences_are_counted_while_the_enforced_policy_decides() {
    let topology = Topology::new("pds", 3, false, 70);
    let _inside = InNetns::enter(&topology.node);
    let mut datapath = topology.datapath();
    let client = IDENTITY_FIRST_LOCAL;
    for (i, endpoint) in topology.endpoints.iter().enumerate() {
        datapath.set_ipcache(endpoint.addr, 32, IDENTITY_FIRST_LOCAL + i as u32).unwrap();
    }
    let egress_all = allow(PolicyKey::new(IDENTITY_ANY, Direction::Egress, None, 0, 0), 1);
    datapath.load_slot(0, Slot::A, &[egress_all]).unwrap();
    // Enforced: 8080, 8081 and 8082. Candidate: 8080 only; 8081 unlisted, 8082 explicitly denied.
    let enforced =
        [egress_all, allow(udp(client, 8080), 10), allow(udp(client, 8081), 11), allow(udp(client, 8082), 12)];
    let candidate =
        [egress_all, allow(udp(client, 8080), 20), entry(udp(IDENTITY_ANY, 8082), PolicyValue::new(Verdict::Deny, 22))];
    datapath.load_slot(1, Slot::A, &enforced).unwrap();
    datapath.load_slot(1, Slot::B, &candidate).unwrap();
    datapath.set_candidate(1, Some(Slot::B)).unwrap();
    // Endpoint 2 has no policy yet: audit mode lets everything through and records would-be drops.
    datapath.load_slot(2, Slot::A, &[]).unwrap();
    for (i, endpoint) in topology.endpoints.iter().enumerate() {
        datapath.attach(i as u32, &endpoint.host_if, endpoint.addr).unwrap();
    }
    datapath.set_mode(2, Mode::Audit).unwrap();
    let mut events = datapath.events().unwrap();

    let (client_ns, server, audited) = (&topology.endpoints[0].ns, &topology.endpoints[1], &topology.endpoints[2]);
    udp_echo_servers(&server.ns, &[8080, 8081, 8082]);
    udp_echo_servers(&audited.ns, &[5000]);
    for (port, datagrams) in [(8080, 4), (8081, 7), (8082, 5)] {
        for _ in 0..datagrams {
            assert!(udp_ok(client_ns, server.addr, port), "udp/{port} is allowed by the enforced slot");
        }
    }
    for _ in 0..3 {
        assert!(udp_ok(client_ns, audited.addr, 5000), "audit mode lets traffic through");
    }

    let flows = datapath.flows().unwrap();
    let mut differences: Vec<_> = flows
        .iter()
        .filter(|f| f.key.endpoint == 1)
        .map(|f| {
            (
                f.key.dport,
                f.key.enforced_verdict(),
                f.key.candidate_verdict(),
                f.packets,
                f.enforced_cookie,
                f.candidate_cookie,
            )
        })
        .collect();
    differences.sort();
    assert_eq!(
        differences,
        vec![
            (8081, Verdict::Allow, Some(Verdict::Deny), 7, 11, COOKIE_NONE),
            (8082, Verdict::Allow, Some(Verdict::Deny), 5, 12, 22)
        ],
        "exactly the flows the candidate would deny, with their packet counts"
    );
    let server_counters = datapath.counters(1).unwrap();
    assert_eq!((server_counters.shadow_diffs, server_counters.denied), (12, 0), "{server_counters:?}");
    assert_eq!(server_counters.connections, 16, "one per datagram's socket: {server_counters:?}");

    let audit_flow = flows.iter().find(|f| f.key.endpoint == 2).expect("the audited flow is recorded");
    assert_eq!(
        (audit_flow.key.mode(), audit_flow.key.enforced_verdict(), audit_flow.key.dport, audit_flow.packets),
        (Mode::Audit, Verdict::Deny, 5000, 3)
    );
    let audited_counters = datapath.counters(2).unwrap();
    assert_eq!((audited_counters.audited, audited_counters.connections), (3, 3), "{audited_counters:?}");

    // One event per new flow, not per packet.
    let mut received = Vec::new();
    while events.read(Duration::from_millis(100), |event| received.push(event)) > 0 {}
    let mut event_flows: Vec<_> = received.iter().map(|e| (e.flow.endpoint, e.flow.dport)).collect();
    event_flows.sort();
    assert_eq!(event_flows, vec![(1, 8081), (1, 8082), (2, 5000)]);
    let event = received.iter().find(|e| e.flow.dport == 8082).unwrap();
    assert_eq!((event.enforced_cookie, event.candidate_cookie), (12, 22));
    assert_eq!(event.destination(), server.addr);

    datapath.clear_flows().unwrap();
    assert!(datapath.flows().unwrap().is_empty());

    // Promoting the candidate makes its verdict real.
    datapath.flip(1).unwrap();
    assert!(udp_ok(client_ns, server.addr, 8080));
    assert!(!udp_ok(client_ns, server.addr, 8081), "denied once promoted");
    datapath.destroy().unwrap();
}
