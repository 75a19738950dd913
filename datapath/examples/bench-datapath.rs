//! `make bench-datapath` (root): datapath figures, each measured side by side in one run and
//! printed as `name: value unit`.
#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use palisade_common::*;
use palisade_datapath::{Datapath, EventReader, Hook, Slot};
use support::*;

/// Bench-only programs (datapath/ebpf/src/bench.rs), never part of what a node loads.
static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade-bench-ebpf"));

const CLIENT: u32 = IDENTITY_FIRST_LOCAL;
const SERVER: u32 = 1;
const PORT: u16 = 8080;

fn main() {
    require_root();
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
        verdict_cost(&mut datapath, ifindex, client.addr, server.addr);
    }
    if run("service") {
        service_cost(&mut datapath, if_index(&client.host_if), ifindex, client.addr, server.addr);
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

fn allow_all(direction: Direction) -> PolicyEntry {
    entry(PolicyKey::new(IDENTITY_ANY, direction, None, 0, 0), PolicyValue::new(Verdict::Allow, 1))
}

/// 16,384 entries: the client's port and a range for it (16384-32767, for cache misses), plus
/// identity-specific ports and ranges for 2,000 peers.
fn big_policy() -> Vec<PolicyEntry> {
    let mut entries = vec![
        allow_all(Direction::Egress),
        entry(
            PolicyKey::new(CLIENT, Direction::Ingress, Some(Protocol::TCP), PORT, 16),
            PolicyValue::new(Verdict::Allow, 2),
        ),
        entry(
            PolicyKey::new(CLIENT, Direction::Ingress, Some(Protocol::TCP), MISS_PORTS, 2),
            PolicyValue::new(Verdict::Allow, 3),
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
const MISS_PORTS: u16 = 16384;

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

/// BPF_PROG_TEST_RUN with repeat, alternating the enforced slot between the 16k policy and
/// allow-all, plus an interface the program does not manage. The repeated packet is a SYN, so it
/// takes the conntrack path each time and hits the verdict cache; `established` is a later
/// packet of the connection it opened (the fast path); the `miss` figures run a new port each time (one run
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

    // The SYN opened a connection; its later packets take the fast path.
    let ack = tcp_frame(client, server, PORT, 0x10);
    let established: Vec<f64> = (0..11)
        .map(|_| datapath.run_frame(Hook::ToEndpoint, ifindex, &ack, 200_000).unwrap().per_run.as_nanos() as f64)
        .collect();
    println!("verdict_established_ns: {:.1} ns", median(established));

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

/// The first packet of a new connection through a Service against the same connection made to
/// the backend directly, summed over every hook it crosses on the node: the client's
/// `from_endpoint` (which defers the Service connection), then the backend veth's
/// `deferred_egress` (which judges the client's egress after translation, and returns at once for
/// an unmarked packet) and `to_endpoint`. Each packet has a new source port, so nothing is
/// cached in conntrack; the verdict cache is warm in both arms (the same peers and ports), so
/// the figures are of a new connection, not of a never-seen peer. Each hook is a run of its own
/// (repeat 1), whose timing overhead the two arms share: the absolute figures include three of
/// them, and only `first_packet_service_added_ns` is the cost of the Service path.
fn service_cost(datapath: &mut Datapath, client_if: u32, server_if: u32, client: Ipv4Addr, server: Ipv4Addr) {
    const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 250, 10);
    datapath.set_ipcache(SERVICE_IP, 32, IDENTITY_SERVICE).unwrap();
    let service_mark = datapath.service_mark(0).unwrap();
    let mut sports = 20000u16..;
    let mut first_packets = |datapath: &Datapath, via_service: bool| -> f64 {
        let runs = sports.by_ref().take(1000).map(|sport| {
            let translated = tcp_frame_from(sport, client, server, PORT, 0x02);
            let (sent, mark) = match via_service {
                true => (tcp_frame_from(sport, client, SERVICE_IP, 80, 0x02), service_mark),
                false => (translated.clone(), 0),
            };
            let hooks = [
                (Hook::FromEndpoint, client_if, &sent, 0),
                (Hook::DeferredEgress, server_if, &translated, mark),
                (Hook::ToEndpoint, server_if, &translated, mark),
            ];
            let mut total = Duration::ZERO;
            for (hook, ifindex, frame, mark) in hooks {
                let result = datapath.run_marked_frame(hook, ifindex, mark, frame, 1).unwrap();
                assert!(result.passed, "{hook:?}");
                total += result.per_run;
            }
            total.as_nanos() as f64
        });
        median(runs.collect())
    };
    let (mut direct, mut service) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        direct.push(first_packets(datapath, false));
        service.push(first_packets(datapath, true));
    }
    let (direct, service) = (median(direct), median(service));
    println!("first_packet_pod_to_pod_ns: {direct:.1} ns");
    println!("first_packet_via_service_ns: {service:.1} ns");
    println!("first_packet_service_added_ns: {:.1} ns", service - direct);
}

/// Round-trip times of one round, per side.
struct Round {
    with_program: Vec<Duration>,
    without_program: Vec<Duration>,
}

/// Echoes 64-byte messages on two connections in lockstep as the client sends them (first,
/// second, second, first, ...), until the client closes.
fn lockstep_echo(first: &TcpListener, second: &TcpListener) -> thread::JoinHandle<()> {
    let mut streams = [first.accept().unwrap().0, second.accept().unwrap().0];
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        loop {
            for i in [0, 1, 1, 0] {
                if streams[i].read_exact(&mut buf).is_err() || streams[i].write_all(&buf).is_err() {
                    return;
                }
            }
        }
    })
}

/// The endpoints of one client -> server path: (client id, client, server id, server).
type Path<'a> = (u32, &'a Endpoint, u32, &'a Endpoint);

fn attach_path(datapath: &mut Datapath, (client_id, client, server_id, server): Path) {
    datapath.load_slot(client_id, Slot::A, &[allow_all(Direction::Egress)]).unwrap();
    load_server(datapath, server_id);
    datapath.attach(client_id, &client.host_if, client.addr).unwrap();
    datapath.attach(server_id, &server.host_if, server.addr).unwrap();
}

fn detach_path(datapath: &mut Datapath, (client_id, _, server_id, _): Path) {
    datapath.detach(client_id).unwrap();
    datapath.detach(server_id).unwrap();
}

/// TCP request/response (64-byte messages, one connection per path, TCP_NODELAY) between two
/// endpoint namespaces, through the program vs the same kind of path without it.
///
/// Method. Two identical client -> server paths (four endpoint namespaces, each behind its own
/// veth pair, routed through the node namespace). In each round the program is attached to
/// both endpoints of one path (16k-entry policy enforced, allow-all candidate shadow-evaluated)
/// and to neither endpoint of the other, and one client thread alternates transactions between
/// the two connections (with, without, with, ...) while one server thread echoes both in the
/// same lockstep. So every "with" sample has a "without" sample taken right beside it by the same
/// two threads: the load of other processes on this shared 2-core machine and the scheduler's
/// placement of the threads (which moves the round-trip time between ~15 us and ~70 us) fall on
/// both sides equally. (As on a real node, where other pods have the program, the path without it
/// still passes tcx's test for an attached program: one pointer check.) The paths swap roles
/// every round, so each path is measured as often with the program as without it; within a
/// round each side goes first every other time; each round uses new connections. Every sample
/// is kept: the figures are the percentiles of all samples of one side pooled over all rounds,
/// and their ratios; tps is 1 / mean round-trip time. The median over rounds of the per-round p99 ratio is
/// printed as a second estimator, and a bootstrap interval (rounds resampled) says how far the
/// pooled p99 ratio moves with the rounds drawn: the tail here comes mostly from other processes
/// preempting the client or server, so it is wide when the machine is busy.
fn tcp_request_response(datapath: &mut Datapath, topology: &Topology) {
    const ROUNDS: usize = 60;
    const ROUND: Duration = Duration::from_millis(400);
    let e = &topology.endpoints;
    let paths: [Path; 2] = [(0, &e[0], SERVER, &e[1]), (2, &e[2], 3, &e[3])];
    let listeners = [&e[1], &e[3]].map(|server| {
        in_netns(&server.ns, move || TcpListener::bind(("0.0.0.0", PORT)).expect("bind the echo server"))
    });
    let verbose = std::env::var_os("PALISADE_BENCH_VERBOSE").is_some();
    let connect = |(_, client, _, server): Path| {
        let stream = tcp_connect(&client.ns, server.addr, PORT).expect("connect to the echo server");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        stream
    };
    // Path 0 is attached on entry (by main).
    let mut attached = 0;
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let with = round % 2;
        if with != attached {
            detach_path(datapath, paths[attached]);
            attach_path(datapath, paths[with]);
            attached = with;
        }
        let mut streams = [connect(paths[0]), connect(paths[1])];
        let echo = lockstep_echo(&listeners[0], &listeners[1]);
        let (request, mut response) = ([7u8; 64], [0u8; 64]);
        let mut samples = [Vec::with_capacity(16_384), Vec::with_capacity(16_384)];
        let start = Instant::now();
        let mut order = [0, 1];
        while start.elapsed() < ROUND {
            // Each side goes first every other time, and the server follows the same order.
            for path in order {
                let sent = Instant::now();
                streams[path].write_all(&request).unwrap();
                streams[path].read_exact(&mut response).unwrap();
                samples[path].push(sent.elapsed());
            }
            order.reverse();
        }
        drop(streams);
        echo.join().unwrap();
        let [first, second] = samples;
        let (with_program, without_program) = if with == 0 { (first, second) } else { (second, first) };
        let round = Round { with_program, without_program };
        if verbose {
            let us = |samples: &[Duration], p| us(percentile(&sorted(samples), p));
            eprintln!(
                "round {:2} (path {with} with): p50 {:6.1} / {:6.1} us  p99 {:6.1} / {:6.1} us",
                rounds.len(),
                us(&round.with_program, 0.5),
                us(&round.without_program, 0.5),
                us(&round.with_program, 0.99),
                us(&round.without_program, 0.99),
            );
        }
        rounds.push(round);
    }
    if attached != 0 {
        detach_path(datapath, paths[attached]);
        attach_path(datapath, paths[0]);
    }

    let pooled = |side: fn(&Round) -> &Vec<Duration>| {
        let all: Vec<Duration> = rounds.iter().flat_map(|round| side(round).iter().copied()).collect();
        let tps = all.len() as f64 / all.iter().sum::<Duration>().as_secs_f64();
        let all = sorted(&all);
        (all.len(), tps, us(percentile(&all, 0.5)), us(percentile(&all, 0.99)))
    };
    let (samples, tps_with, p50_with, p99_with) = pooled(|round| &round.with_program);
    let (_, tps_without, p50_without, p99_without) = pooled(|round| &round.without_program);
    let (low, high) = bootstrap_p99_ratio(&rounds);
    let round_ratios = rounds
        .iter()
        .map(|round| {
            us(percentile(&sorted(&round.with_program), 0.99)) / us(percentile(&sorted(&round.without_program), 0.99))
        })
        .collect();
    println!("tcp_rr_rounds: {ROUNDS}");
    println!("tcp_rr_samples_per_side: {samples}");
    println!("tcp_rr_tps_with_program: {tps_with:.0} /s");
    println!("tcp_rr_tps_without_program: {tps_without:.0} /s");
    println!("tcp_rr_tps_ratio: {:.3}", tps_with / tps_without);
    println!("tcp_rr_p50_with_program_us: {p50_with:.1} us");
    println!("tcp_rr_p50_without_program_us: {p50_without:.1} us");
    println!("tcp_rr_p50_ratio: {:.3}", p50_with / p50_without);
    println!("tcp_rr_p99_with_program_us: {p99_with:.1} us");
    println!("tcp_rr_p99_without_program_us: {p99_without:.1} us");
    println!("tcp_rr_p99_ratio: {:.3}", p99_with / p99_without);
    println!("tcp_rr_p99_ratio_round_median: {:.3}", median(round_ratios));
    println!("tcp_rr_p99_ratio_ci90_low: {low:.3}");
    println!("tcp_rr_p99_ratio_ci90_high: {high:.3}");
}

/// A 90% interval for the pooled p99 ratio: the rounds resampled with replacement (1,000
/// times), the ratio recomputed from per-round histograms (100 ns bins).
fn bootstrap_p99_ratio(rounds: &[Round]) -> (f64, f64) {
    const BIN_NS: u128 = 100;
    const BINS: usize = 20_000; // 2 ms; longer samples share the last bin
    let histogram = |samples: &[Duration]| {
        let mut bins = vec![0u32; BINS];
        for sample in samples {
            bins[((sample.as_nanos() / BIN_NS) as usize).min(BINS - 1)] += 1;
        }
        bins
    };
    let histograms: Vec<[Vec<u32>; 2]> =
        rounds.iter().map(|round| [histogram(&round.with_program), histogram(&round.without_program)]).collect();
    let p99 = |bins: &[u32]| {
        let total: u64 = bins.iter().map(|&n| n as u64).sum();
        let mut seen = 0;
        for (bin, &n) in bins.iter().enumerate() {
            seen += n as u64;
            if seen * 100 >= total * 99 {
                return (bin as f64 + 0.5) * BIN_NS as f64;
            }
        }
        f64::NAN
    };
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut ratios: Vec<f64> = (0..1000)
        .map(|_| {
            let mut pooled = [vec![0u32; BINS], vec![0u32; BINS]];
            for _ in 0..histograms.len() {
                // xorshift64
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let round = &histograms[(state % histograms.len() as u64) as usize];
                for side in 0..2 {
                    for (total, n) in pooled[side].iter_mut().zip(&round[side]) {
                        *total += n;
                    }
                }
            }
            p99(&pooled[0]) / p99(&pooled[1])
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    (ratios[50], ratios[949])
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn sorted(samples: &[Duration]) -> Vec<Duration> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted
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

    let policy = [allow_all(Direction::Ingress)];
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
    // lost and the rate is the consumer's. The producer is a bench-only program in an object of
    // its own, with a ring like the node's, drained by the same reader.
    let mut producer = aya::Ebpf::load(BENCH_OBJECT).expect("load the bench object");
    let ring = aya::maps::RingBuf::try_from(producer.take_map("EVENTS").expect("EVENTS")).unwrap();
    let reader = EventReader::new(ring);
    let event_burst: &mut SchedClassifier =
        producer.program_mut("event_burst").expect("event_burst").try_into().unwrap();
    event_burst.load().unwrap();
    let emit = |bursts: u32| {
        let options = TestRunOptions { data_in: Some(&[0; 64]), repeat: bursts, ..TestRunOptions::new() };
        event_burst.test_run(options).unwrap().return_value
    };
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
        if emit(BURSTS) != 64 {
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
