//! The program's cost per packet.
use super::*;

/// BPF_PROG_TEST_RUN with repeat, alternating the enforced slot between the 16k policy and
/// allow-all, plus an interface the program does not manage. The repeated packet is a SYN, so it
/// takes the conntrack path each time and hits the verdict cache; `established` is a later
/// packet of the connection it opened (the fast path); the `miss` figures run a new port each time (one run
/// per call, so they include the kernel's timer reads), which walks the policy tries.
pub(super) fn verdict_cost(datapath: &mut Datapath, ifindex: u32, client: Ipv4Addr, server: Ipv4Addr) {
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
