//! Promotions: one endpoint, and 1,000 attached endpoints at once beside the fastest way to do
//! it without Palisade's epochs (swapping each endpoint's inner map); and whether any packet is
//! judged by a mixed policy while 1,000 endpoints flip under load.
use std::{
    io::Write,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    process::{Command, Stdio},
    sync::atomic::AtomicBool,
};

use aya::maps::{LpmTrie, Map, MapData, lpm_trie::Key};
use palisade_datapath::update_batch;

use super::*;

const ENDPOINTS: u32 = 1000;
const FIRST_ENDPOINT: u32 = 10_000;
/// Slot A denies it and slot B allows it, on every endpoint: a packet's verdict names the slot
/// that judged it.
const FLIP_PORT: u16 = 9090;
/// Even counts, so that slot A is enforced again after each series.
const TIMED_FLIPS: usize = 10;
const LOADED_FLIPS: u64 = 20;
const LOAD_THREADS: usize = 2;
const ALTERNATIVE_RUNS: usize = 5;
/// Enough threads that most single updates wait for the same grace periods.
const ALTERNATIVE_THREADS: usize = 100;

pub(super) fn flips(datapath: &mut Datapath, topology: &Topology) {
    let mut one = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let start = Instant::now();
        datapath.flip(SERVER).unwrap();
        one.push(start.elapsed());
    }
    one.sort();
    println!("flip_one_p50_us: {:.1} us", percentile(&one, 0.5).as_secs_f64() * 1e6);
    println!("flip_one_p99_us: {:.1} us", percentile(&one, 0.99).as_secs_f64() * 1e6);

    let endpoints = attach_endpoints(datapath, topology);
    let ids: Vec<u32> = endpoints.iter().map(|e| e.id).collect();
    let timed = (0..TIMED_FLIPS).map(|_| {
        let start = Instant::now();
        datapath.flip_all(&ids).unwrap();
        start.elapsed().as_secs_f64() * 1e3
    });
    let flip_ms = median(timed.collect());
    println!("flip_1000_ms: {flip_ms:.2} ms");

    flips_under_load(datapath, topology, &endpoints);

    let (prepare_ms, alternative_ms) = inner_map_alternative(datapath, topology, &ids);
    println!("alternative_prepare_ms: {prepare_ms:.1} ms");
    println!("flip_1000_batched_alternative_ms: {alternative_ms:.2} ms");
    println!("flip_vs_alternative_ratio: {:.1}", alternative_ms / flip_ms);

    for &id in &ids {
        datapath.detach(id).unwrap();
    }
    ip_batch(topology, (0..ENDPOINTS).map(|i| format!("link del {}\n", interface(i))));
}

struct Attached {
    id: u32,
    ifindex: u32,
    addr: Ipv4Addr,
}

/// Slot A of every endpoint: a small, realistic policy that denies `FLIP_PORT`; slot B (the
/// candidate): the same with `FLIP_PORT` allowed.
fn policy(slot: Slot) -> Vec<PolicyEntry> {
    let flip_port = if slot == Slot::A { Verdict::Deny } else { Verdict::Allow };
    let mut entries = vec![
        allow_all(Direction::Egress),
        entry(
            PolicyKey::new(CLIENT, Direction::Ingress, Some(Protocol::TCP), PORT, 16),
            PolicyValue::new(Verdict::Allow, 2),
        ),
        entry(
            PolicyKey::new(CLIENT, Direction::Ingress, Some(Protocol::TCP), FLIP_PORT, 16),
            PolicyValue::new(flip_port, 3),
        ),
    ];
    entries.sort_by_key(|e| e.key);
    entries
}

fn interface(i: u32) -> String {
    format!("pdf{i}")
}

/// Runs `ip -batch` in the node namespace: thousands of interface changes in one process.
fn ip_batch(topology: &Topology, commands: impl Iterator<Item = String>) {
    let mut ip = Command::new("ip")
        .args(["-n", &topology.node, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run ip -batch");
    let mut stdin = ip.stdin.take().unwrap();
    for command in commands {
        stdin.write_all(command.as_bytes()).unwrap();
    }
    drop(stdin);
    assert!(ip.wait().unwrap().success(), "ip -batch failed");
}

/// 1,000 veth pairs in the node namespace (this kernel has no dummy interfaces), each an
/// endpoint (10.200.128.0/17) enforcing slot A with slot B as its candidate, the program attached.
fn attach_endpoints(datapath: &mut Datapath, topology: &Topology) -> Vec<Attached> {
    ip_batch(topology, (0..ENDPOINTS).map(|i| format!("link add {} type veth peer name pdp{i}\n", interface(i))));
    let first_addr = u32::from(Ipv4Addr::new(10, 200, 128, 1));
    (0..ENDPOINTS)
        .map(|i| {
            let (id, addr) = (FIRST_ENDPOINT + i, Ipv4Addr::from(first_addr + i));
            datapath.load_slot(id, Slot::A, &policy(Slot::A)).unwrap();
            datapath.load_slot(id, Slot::B, &policy(Slot::B)).unwrap();
            datapath.set_candidate(id, Some(Slot::B)).unwrap();
            datapath.attach(id, &interface(i), addr).unwrap();
            Attached { id, ifindex: if_index(&interface(i)), addr }
        })
        .collect()
}

/// The load threads' view of the flips: the number of flips started, whether one is running and
/// whether a packet was already judged by the slot it promotes.
const FLIPPING: u64 = 2;
const NEW_SEEN: u64 = 1;

#[derive(Default)]
struct Tally {
    during_flip: u64,
    mixed: u64,
}

/// `LOADED_FLIPS` flips of all 1,000 endpoints while `LOAD_THREADS` threads run new connections
/// to `FLIP_PORT` through the program, round-robin over the endpoints (a new source port each
/// time, so no conntrack entry answers for the policy). A packet that starts after another was
/// judged by the promoted slot, or after `flip_all` returned, must be judged by it too.
fn flips_under_load(datapath: &mut Datapath, topology: &Topology, endpoints: &[Attached]) {
    let state = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let tally = thread::scope(|scope| {
        let (state, stop) = (&state, &stop);
        let threads: Vec<_> = (0..LOAD_THREADS)
            .map(|thread| scope.spawn(move || drive(topology, endpoints, thread, state, stop)))
            .collect();
        let ids: Vec<u32> = endpoints.iter().map(|e| e.id).collect();
        thread::sleep(Duration::from_millis(5));
        for flip in 1..=LOADED_FLIPS {
            state.store(flip << 2 | FLIPPING, Ordering::SeqCst);
            datapath.flip_all(&ids).unwrap();
            state.fetch_and(!FLIPPING, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        threads.into_iter().fold(Tally::default(), |sum, thread| {
            let tally = thread.join().unwrap();
            Tally { during_flip: sum.during_flip + tally.during_flip, mixed: sum.mixed + tally.mixed }
        })
    });
    println!("flip_mixed_policy_packets: {} packets", tally.mixed);
    println!("flip_packets_during_flip: {} packets", tally.during_flip);
    assert_eq!(tally.mixed, 0, "packets were judged by the old policy after others were judged by the new one");
    assert!(tally.during_flip > 0, "no packet ran during a flip: the check had no load");
}

fn drive(topology: &Topology, endpoints: &[Attached], thread: usize, state: &AtomicU64, stop: &AtomicBool) -> Tally {
    let _inside = InNetns::enter(&topology.node);
    let datapath = topology.datapath();
    let from = topology.endpoints[0].addr;
    let mut tally = Tally::default();
    let mut n = thread;
    while !stop.load(Ordering::Relaxed) {
        let to = &endpoints[n % endpoints.len()];
        let sport = 1024 + (n / endpoints.len() % 60000) as u16;
        n += LOAD_THREADS;
        let frame = tcp_frame_from(sport, from, to.addr, FLIP_PORT, 0x02);
        let before = state.load(Ordering::SeqCst);
        let passed = datapath.run_frame(Hook::ToEndpoint, to.ifindex, &frame, 1).unwrap().passed;
        let after = state.load(Ordering::SeqCst);
        let flips = before >> 2;
        // Another flip started meanwhile: either slot may rightly have judged it.
        if after >> 2 != flips {
            continue;
        }
        if (before | after) & FLIPPING != 0 {
            tally.during_flip += 1;
        }
        // Slot B (allow) is enforced after an odd number of flips.
        if passed == (flips % 2 == 1) {
            let _ =
                state.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| (s >> 2 == flips).then_some(s | NEW_SEEN));
        } else if before & NEW_SEEN != 0 || before & FLIPPING == 0 {
            tally.mixed += 1;
        }
    }
    tally
}

/// What a user without epochs does to promote 1,000 endpoints: fill a new inner map per
/// endpoint, then swap each into POLICY_SLOTS (here into the candidate slot B, alternately with
/// slot A's and slot B's policy; B's is back in place at the end). Each swap waits for an RCU
/// grace period (milliseconds) before the update returns, so the fastest ways are
/// - one BPF_MAP_UPDATE_BATCH call for all 1,000: since kernel 6.8 it waits once per call;
/// - single updates from `ALTERNATIVE_THREADS` threads, whose waits share grace periods.
///
/// Returns the median time to create and fill the maps (not part of the swap) and the median
/// swap of the faster way, both in ms; prints each way's median.
fn inner_map_alternative(datapath: &Datapath, topology: &Topology, ids: &[u32]) -> (f64, f64) {
    let outer = MapData::from_pin(topology.pin_dir.join("maps/POLICY_SLOTS")).unwrap();
    let keys: Vec<SlotKey> = ids.iter().map(|&id| SlotKey::new(id, Slot::B)).collect();
    let (mut prepare, mut batch, mut parallel) = (Vec::new(), Vec::new(), Vec::new());
    let mut ways: [(Swap, _); 2] = [(swap_batch, &mut batch), (swap_parallel, &mut parallel)];
    for swap in 0..ALTERNATIVE_RUNS * ways.len() {
        let (way, times) = &mut ways[swap % ways.len()];
        let slot = if swap % 2 == 0 { Slot::A } else { Slot::B };
        let start = Instant::now();
        let maps: Vec<MapData> = ids.iter().map(|_| policy_map(&policy(slot))).collect();
        prepare.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        way(&outer, &keys, &maps);
        times.push(start.elapsed().as_secs_f64() * 1e3);
        for id in [ids[0], ids[ids.len() - 1]] {
            assert_eq!(datapath.slot_entries(id, Slot::B).unwrap(), policy(slot), "the swap took effect");
        }
    }
    let (batch, parallel) = (median(batch), median(parallel));
    println!("alternative_batch_update_ms: {batch:.2} ms");
    println!("alternative_parallel_updates_ms: {parallel:.2} ms");
    (median(prepare), batch.min(parallel))
}

/// A new policy map like the ones `Datapath::load_slot` swaps in (the kernel refuses one that
/// does not match POLICY_SLOTS' inner map template), filled with `entries`.
fn policy_map(entries: &[PolicyEntry]) -> MapData {
    #[repr(C)]
    struct Create {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
    const BPF_F_NO_PREALLOC: u32 = 1;
    let mut create = Create {
        map_type: BPF_MAP_TYPE_LPM_TRIE,
        key_size: size_of::<PolicyKey>() as u32,
        value_size: size_of::<PolicyValue>() as u32,
        max_entries: palisade_datapath::MAX_POLICY_ENTRIES,
        map_flags: BPF_F_NO_PREALLOC,
    };
    let fd = bpf(BPF_MAP_CREATE, &mut create).expect("create a policy map");
    // SAFETY: a new map fd that nothing else owns.
    let mut map = Map::from_map_data(MapData::from_fd(unsafe { OwnedFd::from_raw_fd(fd as i32) }).unwrap()).unwrap();
    let mut trie: LpmTrie<&mut MapData, PolicyMatch, PolicyValue> = (&mut map).try_into().unwrap();
    for e in entries {
        let value = e.value.with_l4_prefix_len(e.key.l4_prefix_len());
        trie.insert(&Key::new(e.key.prefix_len, e.key.data()), value, 0).unwrap();
    }
    match map {
        Map::LpmTrie(data) => data,
        _ => unreachable!("created as an LPM trie"),
    }
}

/// Puts `maps` into POLICY_SLOTS (`outer`) under `keys`.
type Swap = fn(&MapData, &[SlotKey], &[MapData]);

/// One BPF_MAP_UPDATE_BATCH of POLICY_SLOTS.
fn swap_batch(outer: &MapData, keys: &[SlotKey], maps: &[MapData]) {
    let fds: Vec<u32> = maps.iter().map(|map| map.fd().as_fd().as_raw_fd() as u32).collect();
    update_batch(outer, keys, &fds).expect("BPF_MAP_UPDATE_BATCH of POLICY_SLOTS");
}

/// Single BPF_MAP_UPDATE_ELEMs of POLICY_SLOTS, spread over `ALTERNATIVE_THREADS` threads.
fn swap_parallel(outer: &MapData, keys: &[SlotKey], maps: &[MapData]) {
    #[repr(C)]
    struct Update {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    let chunk = keys.len().div_ceil(ALTERNATIVE_THREADS);
    thread::scope(|scope| {
        for (keys, maps) in keys.chunks(chunk).zip(maps.chunks(chunk)) {
            scope.spawn(move || {
                for (key, map) in keys.iter().zip(maps) {
                    let fd = map.fd().as_fd().as_raw_fd() as u32;
                    let mut update = Update {
                        map_fd: outer.fd().as_fd().as_raw_fd() as u32,
                        _pad: 0,
                        key: key as *const SlotKey as u64,
                        value: &fd as *const u32 as u64,
                        flags: 0,
                    };
                    bpf(BPF_MAP_UPDATE_ELEM, &mut update).expect("BPF_MAP_UPDATE_ELEM of POLICY_SLOTS");
                }
            });
        }
    });
}

/// The bpf(2) syscall with `attr`, a prefix of `union bpf_attr` for `cmd`.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is valid for reads and writes of its size during the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}
