//! TCP request/response through the program against the same path without it.
use super::*;

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
///
/// Three times: on a quiet node (`tcp_rr_*`), then while the ipcache changes 100 times a second
/// (`tcp_rr_churn_*`), as it does when pods come and go anywhere in the cluster, then on a node
/// a host policy selects (`tcp_rr_host_*`): the node is an endpoint too, and every pod packet
/// also passes the host's programs, which look up whether it is the node's.
pub(super) fn tcp_request_response(datapath: &mut Datapath, topology: &Topology) {
    let e = &topology.endpoints;
    let paths: [Path; 2] = [(0, &e[0], SERVER, &e[1]), (2, &e[2], 3, &e[3])];
    let listeners = [&e[1], &e[3]].map(|server| {
        in_netns(&server.ns, move || TcpListener::bind(("0.0.0.0", PORT)).expect("bind the echo server"))
    });
    let quiet = rounds(datapath, &paths, &listeners);
    report("tcp_rr", &quiet);
    let churn = Churn::start(&topology.pin_dir);
    let churned = rounds(datapath, &paths, &listeners);
    let changes_per_s = churn.stop();
    report("tcp_rr_churn", &churned);
    println!("tcp_rr_churn_ipcache_changes_per_s: {changes_per_s:.0} /s");
    datapath.set_ipcache(NODE_ADDRESS, 32, IDENTITY_HOST).unwrap();
    datapath.load_slot(HOST, Slot::A, &[allow_all(Direction::Ingress), allow_all(Direction::Egress)]).unwrap();
    datapath.attach_host(HOST).unwrap();
    let host = rounds(datapath, &paths, &listeners);
    datapath.detach(HOST).unwrap();
    datapath.remove_ipcache(NODE_ADDRESS, 32).unwrap();
    report("tcp_rr_host", &host);
}

/// The host endpoint of the `tcp_rr_host_*` figures, and the node's address in the ipcache.
const HOST: u32 = 100;
const NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 200, 239, 254);

/// Pods coming and going elsewhere in the cluster: an ipcache entry added or removed 100 times
/// a second, each change bumping the node state version, so every connection's next packet
/// leaves the fast path and is judged again.
struct Churn {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<f64>,
}

impl Churn {
    const PER_S: u32 = 100;

    fn start(pin_dir: &std::path::Path) -> Churn {
        let mut datapath = Datapath::open(pin_dir).expect("open the datapath");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            let start = Instant::now();
            let mut changes = 0u32;
            while !stopped.load(Ordering::Relaxed) {
                let pod = Ipv4Addr::new(10, 200, 242, 1 + (changes / 2 % 250) as u8);
                if changes.is_multiple_of(2) {
                    datapath.set_ipcache(pod, 32, IDENTITY_FIRST_LOCAL + 3000 + changes / 2 % 250).unwrap();
                } else {
                    datapath.remove_ipcache(pod, 32).unwrap();
                }
                changes += 1;
                let next = start + Duration::from_secs(1) * changes / Self::PER_S;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            changes as f64 / start.elapsed().as_secs_f64()
        });
        Churn { stop, thread }
    }

    /// Stops the churn; returns the changes per second it made.
    fn stop(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the churn thread")
    }
}

/// `ROUNDS` rounds of lockstep transactions, the program on one path and not the other.
fn rounds(datapath: &mut Datapath, paths: &[Path; 2], listeners: &[TcpListener; 2]) -> Vec<Round> {
    const ROUNDS: usize = 60;
    const ROUND: Duration = Duration::from_millis(400);
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
    rounds
}

/// Prints the figures of `rounds` as `<prefix>_*`.
fn report(prefix: &str, rounds: &[Round]) {
    let pooled = |side: fn(&Round) -> &Vec<Duration>| {
        let all: Vec<Duration> = rounds.iter().flat_map(|round| side(round).iter().copied()).collect();
        let tps = all.len() as f64 / all.iter().sum::<Duration>().as_secs_f64();
        let all = sorted(&all);
        (all.len(), tps, us(percentile(&all, 0.5)), us(percentile(&all, 0.99)))
    };
    let (samples, tps_with, p50_with, p99_with) = pooled(|round| &round.with_program);
    let (_, tps_without, p50_without, p99_without) = pooled(|round| &round.without_program);
    let (low, high) = bootstrap_p99_ratio(rounds);
    let round_ratios = rounds
        .iter()
        .map(|round| {
            us(percentile(&sorted(&round.with_program), 0.99)) / us(percentile(&sorted(&round.without_program), 0.99))
        })
        .collect();
    println!("{prefix}_rounds: {}", rounds.len());
    println!("{prefix}_samples_per_side: {samples}");
    println!("{prefix}_tps_with_program: {tps_with:.0} /s");
    println!("{prefix}_tps_without_program: {tps_without:.0} /s");
    println!("{prefix}_tps_ratio: {:.3}", tps_with / tps_without);
    println!("{prefix}_p50_with_program_us: {p50_with:.1} us");
    println!("{prefix}_p50_without_program_us: {p50_without:.1} us");
    println!("{prefix}_p50_ratio: {:.3}", p50_with / p50_without);
    println!("{prefix}_p99_with_program_us: {p99_with:.1} us");
    println!("{prefix}_p99_without_program_us: {p99_without:.1} us");
    println!("{prefix}_p99_ratio: {:.3}", p99_with / p99_without);
    println!("{prefix}_p99_ratio_round_median: {:.3}", median(round_ratios));
    println!("{prefix}_p99_ratio_ci90_low: {low:.3}");
    println!("{prefix}_p99_ratio_ci90_high: {high:.3}");
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
