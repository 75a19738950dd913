//! `make bench-datapath` (root): datapath figures, each measured side by side in one run and
//! printed as `name: value unit`.
#[path = "../../tests/support/mod.rs"]
mod support;

mod driver;
mod events;
mod flip;
mod machine;
mod service;
mod tcp_rr;
mod verdict;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Ipv6Addr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use palisade_common::*;
use palisade_datapath::{Datapath, EventReader, Hook, Slot};
use support::*;

const CLIENT: u32 = IDENTITY_FIRST_LOCAL;
const SERVER: u32 = 1;
const PORT: u16 = 8080;

fn main() {
    require_root();
    machine::describe();
    let topology = Topology::new("pdb", 4, false, 120);
    let _inside = InNetns::enter(&topology.node);
    let mut datapath = topology.datapath();
    let (client, server) = (&topology.endpoints[0], &topology.endpoints[1]);
    datapath.set_ipcache(client.addr, 32, CLIENT).unwrap();
    datapath.set_ipcache(server.addr, 32, CLIENT + 1).unwrap();
    // The second client -> server path of the TCP_RR figures, with the same identities.
    datapath.set_ipcache(topology.endpoints[2].addr, 32, CLIENT).unwrap();
    datapath.set_ipcache(topology.endpoints[3].addr, 32, CLIENT + 1).unwrap();
    datapath.load_slot(0, Slot::A, &[allow_all(Direction::Egress)]).unwrap();
    load_server(&mut datapath, SERVER);
    datapath.attach(0, &client.host_if, client.addr).unwrap();
    datapath.attach(SERVER, &server.host_if, server.addr).unwrap();

    // Optional arguments pick sections: verdict, service, tcp_rr, flip, events (default: all).
    let sections: Vec<String> = std::env::args().skip(1).collect();
    let run = |section: &str| sections.is_empty() || sections.iter().any(|s| s == section);
    let ifindex = if_index(&server.host_if);
    if run("verdict") {
        verdict::verdict_cost(&mut datapath, &topology);
    }
    if run("service") {
        service::service_cost(&mut datapath, if_index(&client.host_if), ifindex, client.addr, server.addr);
    }
    if run("tcp_rr") {
        tcp_rr::tcp_request_response(&mut datapath, &topology);
    }
    if run("flip") {
        flip::flips(&mut datapath, &topology);
    }
    if run("events") {
        events::event_path(&mut datapath, &topology, ifindex, client.addr, server.addr);
    }
    datapath.destroy().unwrap();
}

/// An interface of the node namespace that only `BPF_PROG_TEST_RUN` sends through: one end of
/// a veth pair whose other end is in the node too (this kernel has no dummy interfaces).
fn add_interface(topology: &Topology, ifname: &str) {
    let peer = format!("{ifname}p");
    run(&["ip", "-n", &topology.node, "link", "add", ifname, "type", "veth", "peer", "name", &peer]);
    run(&["ip", "-n", &topology.node, "link", "set", ifname, "up"]);
}

fn allow_all(direction: Direction) -> PolicyEntry {
    entry(PolicyKey::new(IDENTITY_ANY, direction, None, 0, 0), PolicyValue::new(Verdict::Allow, 1))
}

/// 16,384 entries: the client's port, plus identity-specific ports and ranges for 2,000 peers.
fn big_policy() -> Vec<PolicyEntry> {
    let mut entries = vec![
        allow_all(Direction::Egress),
        entry(
            PolicyKey::new(CLIENT, Direction::Ingress, Some(Protocol::TCP), PORT, 16),
            PolicyValue::new(Verdict::Allow, 2),
        ),
    ];
    let mut i = 0u32;
    while entries.len() < MAX_ENTRIES {
        let identity = CLIENT + 1 + i / 8;
        let (port, bits) = if i % 8 == 7 { (32768, 4) } else { (1000 + (i % 8) as u16 * 1111, 16) };
        let verdict = if i.is_multiple_of(5) { Verdict::Deny } else { Verdict::Allow };
        entries.push(entry(
            PolicyKey::new(identity, Direction::Ingress, Some(Protocol::TCP), port, bits),
            PolicyValue::new(verdict, 100 + i),
        ));
        i += 1;
    }
    entries
}
const MAX_ENTRIES: usize = palisade_datapath::MAX_POLICY_ENTRIES as usize;

/// Slot A: the 16k policy (enforced); slot B: allow-all (candidate, swapped in by flips).
fn load_server(datapath: &mut Datapath, server: u32) {
    datapath.load_slot(server, Slot::A, &big_policy()).unwrap();
    datapath.load_slot(server, Slot::B, &[allow_all(Direction::Egress), allow_all(Direction::Ingress)]).unwrap();
    datapath.set_candidate(server, Some(Slot::B)).unwrap();
}

fn tcp_syn(from: Ipv4Addr, to: Ipv4Addr, dport: u16) -> Vec<u8> {
    tcp_frame(from, to, dport, 0x02)
}

fn tcp_frame(from: Ipv4Addr, to: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    tcp_frame_from(40000, from, to, dport, flags)
}

/// A TCP segment over IPv6, as `tcp_frame`.
fn tcp_frame6(from: Ipv6Addr, to: Ipv6Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut frame = vec![0u8; 14 + 40 + 20];
    frame[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let ip = &mut frame[14..54];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&20u16.to_be_bytes());
    ip[6] = PROTO_TCP;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&from.octets());
    ip[24..40].copy_from_slice(&to.octets());
    let tcp = &mut frame[54..];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    frame
}

fn tcp_frame_from(sport: u16, from: Ipv4Addr, to: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut frame = vec![0u8; 14 + 20 + 20];
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut frame[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = PROTO_TCP;
    ip[12..16].copy_from_slice(&from.octets());
    ip[16..20].copy_from_slice(&to.octets());
    let tcp = &mut frame[34..];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    frame
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}
