//! Flow events, from the policy path to the consumer:
//!
//! - kernel-side aggregation: the packets of one flow make one event;
//! - the policy path: new connections, paced at `OFFERED_PER_S` for two seconds, each through
//!   the node's program (run by `drive`, a new peer and port per packet) at an endpoint whose
//!   staged candidate would deny what its enforced slot allows, so every connection is a new
//!   flow with a shadow difference and makes an event. The node's consumer (`EventReader` on
//!   its own thread) counts what arrives; `policy_path_events_lost` is what did not, whatever
//!   the cause (the kernel's rate limit, a full ring, the consumer), and
//!   `policy_path_events_not_emitted` those the kernel could not emit;
//! - the consumer's capacity alone: a synthetic producer (bench.rs `event_burst`) fills a ring
//!   like the node's as fast as the consumer drains it, never more than half a ring ahead.
use super::*;
use crate::driver::{Driver, FlowSpace, Target};

const OFFERED_PER_S: f64 = 200_000.0;
const ENDPOINT_STAGED: u32 = 110;
const FIRST_PEER: Ipv4Addr = Ipv4Addr::new(10, 200, 241, 1);
const PEERS: u32 = 16;

pub(super) fn event_path(
    datapath: &mut Datapath,
    topology: &Topology,
    ifindex: u32,
    client: Ipv4Addr,
    server: Ipv4Addr,
) {
    let mut reader = datapath.events().unwrap();
    while reader.read(Duration::from_millis(20), |_| ()) > 0 {}

    // Kernel-side aggregation: 100k packets of one denied flow make one event.
    let denied = tcp_syn(client, server, 9);
    assert!(!datapath.run_frame(Hook::ToEndpoint, ifindex, &denied, 100_000).unwrap().passed);
    let mut events = 0;
    while reader.read(Duration::from_millis(50), |_| events += 1) > 0 {}
    println!("events_per_100k_denied_packets_one_flow: {events}");

    let mut driver = Driver::load(&topology.pin_dir.join("programs/to_endpoint"));
    policy_path(datapath, topology, &mut driver, reader);
    consumer_capacity(&mut driver);
}

fn policy_path(datapath: &mut Datapath, topology: &Topology, driver: &mut Driver, reader: EventReader) {
    let ifname = "pdbev";
    add_interface(topology, ifname);
    let addr = Ipv4Addr::new(10, 200, 231, 1);
    for peer in 0..PEERS {
        datapath
            .set_ipcache(Ipv4Addr::from_bits(FIRST_PEER.to_bits() + peer), 32, IDENTITY_FIRST_LOCAL + 2000 + peer)
            .unwrap();
    }
    datapath.load_slot(ENDPOINT_STAGED, Slot::A, &[allow_all(Direction::Ingress)]).unwrap();
    datapath.load_slot(ENDPOINT_STAGED, Slot::B, &[]).unwrap();
    datapath.set_candidate(ENDPOINT_STAGED, Some(Slot::B)).unwrap();
    datapath.attach(ENDPOINT_STAGED, ifname, addr).unwrap();
    let ifindex = if_index(ifname);
    let syn = tcp_syn(FIRST_PEER, addr, 1024);
    let space = FlowSpace::new(FIRST_PEER, PEERS, 1024, 60_000);
    driver.drive_into(Target::NodeProgram);

    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let consumer = reader.spawn(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    // The schedule moves on when this thread falls behind it (descheduled): what it missed is
    // not made up in one burst, and only what ran counts as offered.
    const MAX_BATCH: u64 = 1000;
    let (mut scheduled, mut offered) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        let due = (start.elapsed().as_secs_f64() * OFFERED_PER_S) as u64;
        if due > scheduled {
            let batch = (due - scheduled).min(MAX_BATCH);
            driver.run(space, ifindex, &syn, batch as u32);
            (scheduled, offered) = (due, offered + batch);
        } else {
            thread::sleep(Duration::from_micros(200));
        }
    }
    let offered_for = start.elapsed();
    eventually(|| received.load(Ordering::Relaxed) >= offered);
    drop(consumer);
    let received = received.load(Ordering::Relaxed);
    let counters = datapath.counters(ENDPOINT_STAGED).unwrap();
    assert_eq!(counters.connections, offered, "every packet opened a new connection");
    assert_eq!(counters.shadow_diffs, offered, "every connection differs under the candidate");
    println!("policy_path_flows_offered_per_s: {:.0} /s", offered as f64 / offered_for.as_secs_f64());
    println!("policy_path_events_per_s: {:.0} /s", received as f64 / offered_for.as_secs_f64());
    println!("policy_path_events_lost: {}", offered.saturating_sub(received));
    // Of those, the ones the kernel could not emit (its rate limit, or a full ring).
    println!("policy_path_events_not_emitted: {}", counters.events_lost);
    datapath.detach(ENDPOINT_STAGED).unwrap();
}

/// Drain rate: the producer keeps at most half a ring ahead of the consumer, so nothing is
/// lost and the rate is the consumer's.
fn consumer_capacity(driver: &mut Driver) {
    let object = driver.object();
    let ring = aya::maps::RingBuf::try_from(object.take_map("EVENTS").expect("EVENTS")).unwrap();
    let reader = EventReader::new(ring);
    let event_burst: &mut SchedClassifier = object.program_mut("event_burst").expect("event_burst").try_into().unwrap();
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
    println!("consumer_capacity_events_per_s: {:.0} /s", received as f64 / elapsed.as_secs_f64());
    assert!(drained && incomplete_bursts == 0, "the synthetic producer overflowed the ring");
}
