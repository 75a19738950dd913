//! `make bench-datapath` (root): datapath figures, each measured side by side in one run and
//! printed as `name: value unit`.
#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    io::{Read, Write},
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use palisade_common::*;
use palisade_datapath::{Datapath, Hook, Slot};
use support::*;

const CLIENT: u32 = IDENTITY_FIRST_LOCAL;
const SERVER: u32 = 1;
const PORT: u16 = 8080;

fn main() {
    require_root();
    let topology = Topology::new("pdb", 2, false, 120);
    let _inside = InNetns::enter(&topology.node);
    let mut datapath = topology.datapath();
    let (client, server) = (&topology.endpoints[0], &topology.endpoints[1]);
    datapath.set_ipcache(client.addr, 32, CLIENT).unwrap();
    datapath.set_ipcache(server.addr, 32, CLIENT + 1).unwrap();
    datapath.load_slot(0, Slot::A, &[allow_all(DIRECTION_EGRESS)]).unwrap();
    load_server(&mut datapath);
    datapath.attach(0, &client.host_if).unwrap();
    datapath.attach(SERVER, &server.host_if).unwrap();

    // Optional arguments pick sections: verdict, tcp_rr, flip, events (default: all).
    let sections: Vec<String> = std::env::args().skip(1).collect();
    let run = |section: &str| sections.is_empty() || sections.iter().any(|s| s == section);
    let ifindex = if_index(&server.host_if);
    if run("verdict") {
        verdict_cost(&mut datapath, ifindex, client.addr, server.addr);
    }
    if run("tcp_rr") {
        tcp_request_response(&mut datapath, &topology);
    }
    if run("flip") {
        flips(&mut datapath);
    }
    if run("events") {
        event_path(&datapath, ifindex, client.addr, server.addr);
    }
    datapath.destroy().unwrap();
}

fn allow_all(direction: u8) -> PolicyEntry {
    entry(PolicyKey::new(IDENTITY_ANY, direction, None, 0, 0), PolicyValue::new(VERDICT_ALLOW, 1))
}

/// 16,384 entries: the client's port and a range for it (16384-32767, for cache misses), plus
/// identity-specific ports and ranges for 2,000 peers.
fn big_policy() -> Vec<PolicyEntry> {
    let mut entries = vec![
        allow_all(DIRECTION_EGRESS),
        entry(PolicyKey::new(CLIENT, DIRECTION_INGRESS, Some(PROTO_TCP), PORT, 16), PolicyValue::new(VERDICT_ALLOW, 2)),
        entry(
            PolicyKey::new(CLIENT, DIRECTION_INGRESS, Some(PROTO_TCP), MISS_PORTS, 2),
            PolicyValue::new(VERDICT_ALLOW, 3),
        ),
    ];
    let mut i = 0u32;
    while entries.len() < MAX_ENTRIES {
        let identity = CLIENT + 1 + i / 8;
        let (port, bits) = if i % 8 == 7 { (32768, 4) } else { (1000 + (i % 8) as u16 * 1111, 16) };
        let verdict = if i.is_multiple_of(5) { VERDICT_DENY } else { VERDICT_ALLOW };
        entries.push(entry(
            PolicyKey::new(identity, DIRECTION_INGRESS, Some(PROTO_TCP), port, bits),
            PolicyValue::new(verdict, 100 + i),
        ));
        i += 1;
    }
    entries
}
const MAX_ENTRIES: usize = palisade_datapath::MAX_POLICY_ENTRIES as usize;
const MISS_PORTS: u16 = 16384;

/// Slot A: the 16k policy (enforced); slot B: allow-all (candidate, swapped in by flips).
fn load_server(datapath: &mut Datapath) {
    datapath.load_slot(SERVER, Slot::A, &big_policy()).unwrap();
    datapath.load_slot(SERVER, Slot::B, &[allow_all(DIRECTION_EGRESS), allow_all(DIRECTION_INGRESS)]).unwrap();
    datapath.set_candidate(SERVER, Some(Slot::B)).unwrap();
}

fn tcp_syn(from: Ipv4Addr, to: Ipv4Addr, dport: u16) -> Vec<u8> {
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
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    frame
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// BPF_PROG_TEST_RUN with repeat, alternating the enforced slot between the 16k policy and
/// allow-all, plus an interface the program does not manage (it returns after one lookup). The
/// repeated packet hits the verdict cache; the `miss` figures run a new port each time (one run
/// per call, so they include the kernel's timer reads), which walks the policy tries.
fn verdict_cost(datapath: &mut Datapath, ifindex: u32, client: Ipv4Addr, server: Ipv4Addr) {
    let frame = tcp_syn(client, server, PORT);
    let run = |datapath: &Datapath, ifindex| {
        let result = datapath.run_frame(Hook::ToEndpoint, ifindex, &frame, 200_000).unwrap();
        result.per_run.as_nanos() as f64
    };
    let (mut big, mut allow_all, mut unmanaged) = (Vec::new(), Vec::new(), Vec::new());
    assert!(datapath.run_frame(Hook::ToEndpoint, ifindex, &frame, 1).unwrap().passed);
    for _ in 0..11 {
        big.push(run(datapath, ifindex));
        datapath.flip(SERVER).unwrap();
        allow_all.push(run(datapath, ifindex));
        datapath.flip(SERVER).unwrap();
        unmanaged.push(run(datapath, 1));
    }
    let (big, allow_all, unmanaged) = (median(big), median(allow_all), median(unmanaged));
    println!("verdict_16k_policy_ns: {big:.1} ns");
    println!("verdict_allow_all_ns: {allow_all:.1} ns");
    println!("verdict_unmanaged_if_ns: {unmanaged:.1} ns");
    println!("verdict_added_ns: {:.1} ns", big - allow_all);
    println!("verdict_added_vs_unmanaged_ns: {:.1} ns", big - unmanaged);

    let mut ports = MISS_PORTS..;
    let mut misses = |datapath: &Datapath| -> f64 {
        let runs = ports.by_ref().take(1000).map(|port| {
            let frame = tcp_syn(client, server, port);
            let result = datapath.run_frame(Hook::ToEndpoint, ifindex, &frame, 1).unwrap();
            assert!(result.passed);
            result.per_run.as_nanos() as f64
        });
        median(runs.collect())
    };
    let (mut big, mut allow_all) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        big.push(misses(datapath));
        datapath.flip(SERVER).unwrap();
        allow_all.push(misses(datapath));
        datapath.flip(SERVER).unwrap();
    }
    let (big, allow_all) = (median(big), median(allow_all));
    println!("verdict_miss_16k_policy_ns: {big:.1} ns");
    println!("verdict_miss_allow_all_ns: {allow_all:.1} ns");
    println!("verdict_miss_added_ns: {:.1} ns", big - allow_all);
}

struct RoundTrips {
    per_second: f64,
    p99: Duration,
}

fn request_response(client_ns: &str, server: Ipv4Addr, duration: Duration) -> RoundTrips {
    let mut stream = tcp_connect(client_ns, server, PORT).expect("connect to the echo server");
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let (request, mut response) = ([7u8; 64], [0u8; 64]);
    let mut latencies = Vec::with_capacity(100_000);
    let start = Instant::now();
    while start.elapsed() < duration {
        let sent = Instant::now();
        stream.write_all(&request).unwrap();
        stream.read_exact(&mut response).unwrap();
        latencies.push(sent.elapsed());
    }
    let elapsed = start.elapsed();
    latencies.sort();
    RoundTrips { per_second: latencies.len() as f64 / elapsed.as_secs_f64(), p99: percentile(&latencies, 0.99) }
}

/// One TCP connection doing 64-byte request/response over the routed veth pairs, in 20 pairs of
/// short rounds with the program attached to both endpoints and detached. Ratios are
/// taken per adjacent pair of rounds, then the median, so that load from other processes on
/// this shared machine cancels out as far as possible.
fn tcp_request_response(datapath: &mut Datapath, topology: &Topology) {
    let (client, server) = (&topology.endpoints[0], &topology.endpoints[1]);
    tcp_echo_servers(&server.ns, &[PORT]);
    let round = Duration::from_millis(300);
    let measure = || request_response(&client.ns, server.addr, round);
    let mut pairs = Vec::new();
    // ABBA order (with, without, without, with, ...) so that drift and whatever the switch
    // itself disturbs fall on both sides equally.
    for pair in 0..20 {
        if pair % 2 == 0 {
            let with = measure();
            datapath.detach(0).unwrap();
            datapath.detach(SERVER).unwrap();
            pairs.push((with, measure()));
        } else {
            let without = measure();
            datapath.load_slot(0, Slot::A, &[allow_all(DIRECTION_EGRESS)]).unwrap();
            load_server(datapath);
            datapath.attach(0, &client.host_if).unwrap();
            datapath.attach(SERVER, &server.host_if).unwrap();
            pairs.push((measure(), without));
        }
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let tps_with = median(pairs.iter().map(|(w, _)| w.per_second).collect());
    let tps_without = median(pairs.iter().map(|(_, wo)| wo.per_second).collect());
    let tps_ratio = median(pairs.iter().map(|(w, wo)| w.per_second / wo.per_second).collect());
    let p99_with = median(pairs.iter().map(|(w, _)| us(w.p99)).collect());
    let p99_without = median(pairs.iter().map(|(_, wo)| us(wo.p99)).collect());
    let p99_ratio = median(pairs.iter().map(|(w, wo)| us(w.p99) / us(wo.p99)).collect());
    println!("tcp_rr_tps_with_program: {tps_with:.0} /s");
    println!("tcp_rr_tps_without_program: {tps_without:.0} /s");
    println!("tcp_rr_tps_ratio: {tps_ratio:.3}");
    println!("tcp_rr_p99_with_program_us: {p99_with:.1} us");
    println!("tcp_rr_p99_without_program_us: {p99_without:.1} us");
    println!("tcp_rr_p99_ratio: {p99_ratio:.3}");
}

fn flips(datapath: &mut Datapath) {
    let mut one = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let start = Instant::now();
        datapath.flip(SERVER).unwrap();
        one.push(start.elapsed());
    }
    one.sort();
    println!("flip_one_p50_us: {:.1} us", percentile(&one, 0.5).as_secs_f64() * 1e6);
    println!("flip_one_p99_us: {:.1} us", percentile(&one, 0.99).as_secs_f64() * 1e6);

    let endpoints: Vec<u32> = (10_000..11_000).collect();
    for &endpoint in &endpoints {
        datapath.add_endpoint(endpoint).unwrap();
        datapath.set_candidate(endpoint, Some(Slot::B)).unwrap();
    }
    let start = Instant::now();
    datapath.flip_all(&endpoints).unwrap();
    let flip_all = start.elapsed();
    println!("flip_1000_ms: {:.2} ms", flip_all.as_secs_f64() * 1e3);

    let policy = [allow_all(DIRECTION_INGRESS)];
    let start = Instant::now();
    for &endpoint in &endpoints {
        datapath.load_slot(endpoint, Slot::B, &policy).unwrap();
    }
    let replace = start.elapsed();
    println!("inner_map_replace_1000_ms: {:.1} ms", replace.as_secs_f64() * 1e3);
    println!("inner_map_replace_vs_flip_ratio: {:.0}", replace.as_secs_f64() / flip_all.as_secs_f64());
    for endpoint in endpoints {
        datapath.detach(endpoint).unwrap();
    }
}

fn event_path(datapath: &Datapath, ifindex: u32, client: Ipv4Addr, server: Ipv4Addr) {
    let mut reader = datapath.events().unwrap();
    while reader.read(Duration::from_millis(20), |_| ()) > 0 {}

    // Kernel-side aggregation: 100k packets of one denied flow make one event.
    let denied = tcp_syn(client, server, 9);
    assert!(!datapath.run_frame(Hook::ToEndpoint, ifindex, &denied, 100_000).unwrap().passed);
    let mut events = 0;
    while reader.read(Duration::from_millis(50), |_| events += 1) > 0 {}
    println!("events_per_100k_denied_packets_one_flow: {events}");

    // Drain rate: the producer keeps at most half a ring ahead of the consumer, so nothing is
    // lost and the rate is the consumer's.
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let consumer = reader.spawn(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    const BURSTS: u32 = 256;
    let per_call = BURSTS as u64 * 64;
    let (mut produced, mut incomplete_bursts) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        while produced - received.load(Ordering::Relaxed) > 32_768 {
            thread::yield_now();
        }
        if datapath.emit_synthetic_events(BURSTS).unwrap() != 64 {
            incomplete_bursts += 1;
        }
        produced += per_call;
    }
    let drained = eventually(|| received.load(Ordering::Relaxed) >= produced);
    let elapsed = start.elapsed();
    drop(consumer);
    let received = received.load(Ordering::Relaxed);
    println!("events_drained_per_s: {:.0} /s", received as f64 / elapsed.as_secs_f64());
    println!("events_lost: {}", produced - received.min(produced));
    assert!(drained && incomplete_bursts == 0, "ring buffer overflowed");
}
