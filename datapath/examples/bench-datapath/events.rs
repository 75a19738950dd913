//! Flow events: from the policy path to the consumer.
use super::*;

pub(super) fn event_path(datapath: &Datapath, ifindex: u32, client: Ipv4Addr, server: Ipv4Addr) {
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
