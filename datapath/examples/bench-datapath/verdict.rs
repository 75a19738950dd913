//! The program's cost per packet (BPF_PROG_TEST_RUN):
//!
//! - a new connection: every run is the first packet (a SYN) of a connection from one of 16
//!   peers (each its own identity) to one of 60,000 ports, so neither conntrack nor the verdict
//!   cache (65,536 entries, keyed by peer and port) holds it and the policy tries are walked.
//!   The bench-only `drive` (driver.rs) rewrites each run's packet and tail-calls the node's
//!   `to_endpoint`, so every arm pays the same harness. Three endpoints enforce, each on an
//!   interface of its own: the 16k-entry policy (1,024 port ranges for each peer), the same
//!   with a 16k-entry candidate shadow-evaluated, and a one-entry allow-all. Every packet is
//!   allowed by all of them. `verdict_new_flow_ns` is the first minus the third: what a big
//!   policy adds to a new connection; `verdict_new_flow_candidate_ns` the second minus the
//!   third. The `_16k_policy_ns` and `_allow_all_ns` lines are each arm minus `drive` handing
//!   the same packets to a program that passes them: a new connection's whole cost.
//! - the same new connections over IPv6 (the same peers and identities at IPv6 addresses,
//!   the same policies), on two more endpoints: the 16k policy and the allow-all. An IPv6
//!   packet reaches `to_endpoint` like any other and is handed on to the IPv6 programs (two
//!   tail calls: reading, then the verdict), so the figures are what a node pays.
//!   `verdict_new_flow_v6_ns` is the 16k arm minus the allow-all arm, as for IPv4;
//!   `verdict_new_flow_v6_16k_policy_ns` the whole cost, and `verdict_new_flow_v6_ratio` that
//!   whole cost over IPv4's 16k arm run in the same rounds (goal: at most 1.2). The IPv6
//!   rounds come after the IPv4 ones: interleaved, their working set changes IPv4's figures.
//! - an established connection: a later packet of one the 16k endpoint allowed, every run
//!   (the fast path), through `to_endpoint` run as tcx runs it, against a program that passes
//!   it run the same way: the node's program absent (`verdict_baseline_ns`, the harness alone).
//!   (Tail-called by `drive`, the same path costs next to nothing over the harness: the call
//!   into the program, not the program, is most of what a direct run adds.)
//!
//! Arms alternate within each of 31 rounds; each figure is the median over rounds of the
//! difference within a round. Conntrack is filled first, so every arm evicts as a busy node
//! does.
use super::*;
use crate::driver::{Driver, FlowSpace, Target};

const PEERS: u32 = 16;
const PORTS: u32 = 60_000;
const FIRST_PORT: u16 = 1024;
const FIRST_PEER: Ipv4Addr = Ipv4Addr::new(10, 200, 240, 1);
const FIRST_PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0xf0, 0, 0, 0, 1);
const FIRST_PEER_IDENTITY: u32 = IDENTITY_FIRST_LOCAL + 1000;
const ROUNDS: usize = 31;
const REPEAT: u32 = 10_000;

/// One enforcing endpoint per arm, on an interface of its own.
struct Arm {
    ifindex: u32,
    addr: Ipv4Addr,
    addr6: Ipv6Addr,
}

pub(super) fn verdict_cost(datapath: &mut Datapath, topology: &Topology) {
    for peer in 0..PEERS {
        datapath.set_ipcache(peer_addr(peer), 32, FIRST_PEER_IDENTITY + peer).unwrap();
        let peer6 = Ipv6Addr::from_bits(FIRST_PEER6.to_bits() + peer as u128);
        datapath.set_ipcache(peer6, 128, FIRST_PEER_IDENTITY + peer).unwrap();
    }
    let big = flow_policy(1);
    let allow = [allow_all(Direction::Ingress)];
    let arms = [
        arm(datapath, topology, 0, &big, None),
        arm(datapath, topology, 1, &big, Some(&flow_policy(2))),
        arm(datapath, topology, 2, &allow, None),
        arm(datapath, topology, 3, &big, None),
        arm(datapath, topology, 4, &allow, None),
    ];
    let mut driver = Driver::load(&topology.pin_dir.join("programs/to_endpoint"));
    let new_flows = FlowSpace::new(FIRST_PEER, PEERS, FIRST_PORT, PORTS);
    let new_flows6 = FlowSpace::new_v6(FIRST_PEER6, PEERS, FIRST_PORT, PORTS);
    let syn = |arm: &Arm| tcp_syn(FIRST_PEER, arm.addr, FIRST_PORT);
    let syn6 = |arm: &Arm| tcp_frame6(FIRST_PEER6, arm.addr6, FIRST_PORT, 0x02);

    driver.drive_into(Target::NodeProgram);
    // Fill conntrack (262,144 entries), so that every arm's new connections evict.
    for _ in 0..30 {
        driver.run(new_flows, arms[2].ifindex, &syn(&arms[2]), REPEAT);
    }
    // The established connection: its SYN, then its ACKs run again and again.
    assert!(datapath.run_frame(Hook::ToEndpoint, arms[0].ifindex, &syn(&arms[0]), 1).unwrap().passed);
    let ack = tcp_frame(FIRST_PEER, arms[0].addr, FIRST_PORT, 0x10);

    let mut runs: [Vec<f64>; 6] = Default::default();
    for _ in 0..ROUNDS {
        driver.drive_into(Target::NodeProgram);
        for (arm, runs) in arms[..3].iter().zip(&mut runs) {
            runs.push(ns(driver.run(new_flows, arm.ifindex, &syn(arm), REPEAT)));
        }
        driver.drive_into(Target::Absent);
        runs[3].push(ns(driver.run(new_flows, arms[2].ifindex, &syn(&arms[2]), REPEAT)));
        // As tcx runs it: the program itself, not tail-called (which here costs less).
        runs[4].push(ns(datapath.run_frame(Hook::ToEndpoint, arms[0].ifindex, &ack, REPEAT).unwrap().per_run));
        runs[5].push(ns(driver.run_absent(arms[0].ifindex, &ack, REPEAT)));
    }
    // Each figure is the median over rounds of the difference within a round: what disturbs
    // one round (other processes, the caches they evict) falls on both of its arms.
    // IPv6 in rounds of its own, beside the IPv4 16k arm again: run within the IPv4 rounds, its
    // arms' working set would change the IPv4 figures (and the comparison is within a round).
    let mut runs6: [Vec<f64>; 5] = Default::default();
    for _ in 0..ROUNDS {
        driver.drive_into(Target::NodeProgram);
        runs6[0].push(ns(driver.run(new_flows6, arms[3].ifindex, &syn6(&arms[3]), REPEAT)));
        runs6[1].push(ns(driver.run(new_flows6, arms[4].ifindex, &syn6(&arms[4]), REPEAT)));
        runs6[3].push(ns(driver.run(new_flows, arms[0].ifindex, &syn(&arms[0]), REPEAT)));
        driver.drive_into(Target::Absent);
        runs6[2].push(ns(driver.run(new_flows6, arms[4].ifindex, &syn6(&arms[4]), REPEAT)));
        runs6[4].push(ns(driver.run(new_flows, arms[2].ifindex, &syn(&arms[2]), REPEAT)));
    }
    let [big, big_with_candidate, allow_all, driven_absent, established, absent] = &runs;
    let [big6, allow_all6, driven_absent6, big4, driven_absent4] = &runs6;
    let added = |arm: &[f64], base: &[f64]| median(arm.iter().zip(base).map(|(a, b)| a - b).collect());
    let ratio = |arm: &[f64], base: &[f64]| median(arm.iter().zip(base).map(|(a, b)| a / b).collect());
    let whole = |arm: &[f64], absent: &[f64]| arm.iter().zip(absent).map(|(a, b)| a - b).collect::<Vec<_>>();
    let figures = [
        ("verdict_new_flow_ns", added(big, allow_all)),
        ("verdict_new_flow_candidate_ns", added(big_with_candidate, allow_all)),
        ("verdict_new_flow_16k_policy_ns", added(big, driven_absent)),
        ("verdict_new_flow_allow_all_ns", added(allow_all, driven_absent)),
        ("verdict_established_ns", added(established, absent)),
        ("verdict_baseline_ns", median(absent.clone())),
        ("verdict_new_flow_v6_ns", added(big6, allow_all6)),
        ("verdict_new_flow_v6_16k_policy_ns", added(big6, driven_absent6)),
        ("verdict_new_flow_v6_allow_all_ns", added(allow_all6, driven_absent6)),
    ];
    for n in 0..arms.len() as u32 {
        let counters = datapath.counters(ENDPOINT_ARMS + n).unwrap();
        assert_eq!(counters.denied, 0, "every arm allows every connection of the bench");
    }
    for (name, ns) in figures {
        println!("{name}: {ns:.1} ns");
    }
    // Per round, IPv6's whole new-connection cost over IPv4's.
    let v6_ratio = ratio(&whole(big6, driven_absent6), &whole(big4, driven_absent4));
    println!("verdict_new_flow_v6_ratio: {v6_ratio:.2}");
}

/// Endpoint ids of the arms: the first one's, then one each.
const ENDPOINT_ARMS: u32 = 100;

fn arm(
    datapath: &mut Datapath,
    topology: &Topology,
    n: u32,
    enforced: &[PolicyEntry],
    candidate: Option<&[PolicyEntry]>,
) -> Arm {
    let ifname = format!("pdbv{n}");
    add_interface(topology, &ifname);
    let endpoint = ENDPOINT_ARMS + n;
    let addr = Ipv4Addr::new(10, 200, 230, 1 + n as u8);
    let addr6 = Ipv6Addr::new(0xfd00, 0x200, 0, 0xe6, 0, 0, 0, 1 + n as u16);
    datapath.load_slot(endpoint, Slot::A, enforced).unwrap();
    if let Some(candidate) = candidate {
        datapath.load_slot(endpoint, Slot::B, candidate).unwrap();
        datapath.set_candidate(endpoint, Some(Slot::B)).unwrap();
    }
    datapath.attach(endpoint, &ifname, palisade_datapath::EndpointAddrs { v4: Some(addr), v6: Some(addr6) }).unwrap();
    Arm { ifindex: if_index(&ifname), addr, addr6 }
}

fn peer_addr(peer: u32) -> Ipv4Addr {
    Ipv4Addr::from_bits(FIRST_PEER.to_bits() + peer)
}

/// 16,384 entries: for each of the 16 peers, TCP ports in 1,024 ranges of 64, each its own
/// rule (`cookie_base` tells two such policies apart).
fn flow_policy(cookie_base: u32) -> Vec<PolicyEntry> {
    let entries: Vec<PolicyEntry> = (0..PEERS)
        .flat_map(|peer| {
            (0..1024u32).map(move |range| {
                let key = PolicyKey::new(
                    FIRST_PEER_IDENTITY + peer,
                    Direction::Ingress,
                    Some(Protocol::TCP),
                    (range * 64) as u16,
                    10,
                );
                entry(key, PolicyValue::new(Verdict::Allow, cookie_base * 100_000 + peer * 1024 + range))
            })
        })
        .collect();
    assert_eq!(entries.len(), MAX_ENTRIES);
    entries
}

fn ns(duration: Duration) -> f64 {
    duration.as_nanos() as f64
}
