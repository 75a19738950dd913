//! Atomic promotion under load: every packet is judged by exactly one slot, and a flip takes
//! effect on the very next packet.
mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use palisade_common::*;
use palisade_datapath::Slot;
use support::*;

#[test]
fn hundred_flips_under_load() {
    let topology = Topology::new("pdf", 2, false, 80);
    let _inside = InNetns::enter(&topology.node);
    let mut datapath = topology.datapath();
    let (sender, receiver) = (&topology.endpoints[0], &topology.endpoints[1]);
    let sender_identity = IDENTITY_FIRST_LOCAL;
    datapath.set_ipcache(sender.addr, 32, sender_identity).unwrap();
    datapath.set_ipcache(receiver.addr, 32, sender_identity + 1).unwrap();
    let udp = |port| PolicyKey::new(sender_identity, Direction::Ingress, Some(Protocol::UDP), port, 16);
    let egress_all =
        entry(PolicyKey::new(IDENTITY_ANY, Direction::Egress, None, 0, 0), PolicyValue::new(Verdict::Allow, 1));
    datapath.load_slot(0, Slot::A, &[egress_all]).unwrap();
    // Both slots allow the load on 9000; only slot A allows the marker port 9001.
    let slot_a = [
        egress_all,
        entry(udp(9000), PolicyValue::new(Verdict::Allow, 10)),
        entry(udp(9001), PolicyValue::new(Verdict::Allow, 11)),
    ];
    let slot_b = [
        egress_all,
        entry(udp(9000), PolicyValue::new(Verdict::Allow, 20)),
        entry(udp(9001), PolicyValue::new(Verdict::Deny, 21)),
    ];
    datapath.load_slot(1, Slot::A, &slot_a).unwrap();
    datapath.load_slot(1, Slot::B, &slot_b).unwrap();
    datapath.set_candidate(1, Some(Slot::B)).unwrap();
    datapath.attach(0, &sender.host_if, sender.addr).unwrap();
    datapath.attach(1, &receiver.host_if, receiver.addr).unwrap();
    let received = udp_echo_servers(&receiver.ns, &[9000, 9001]);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let load = udp_socket(&sender.ns, receiver.addr, 9000);
    let loader = {
        let (stop, sent) = (stop.clone(), sent.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..4 {
                    if load.send(b"load").is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                thread::sleep(Duration::from_micros(50));
            }
        })
    };
    let stop_guard = StopOnDrop(stop.clone());

    let marker = udp_socket(&sender.ns, receiver.addr, 9001);
    for flip in 0..100 {
        // Alternate the per-endpoint flip and the node-wide one.
        if flip % 2 == 0 {
            datapath.flip(1).unwrap();
        } else {
            datapath.flip_all(&[1]).unwrap();
        }
        let enforced = datapath.state(1).unwrap().enforced;
        assert_eq!(enforced, if flip % 2 == 0 { Slot::B } else { Slot::A });
        let denied_before = datapath.counters(1).unwrap().denied;
        let delivered_before = received[1].load(Ordering::Relaxed);
        marker.send(b"marker").unwrap();
        let (mut denied, mut delivered) = (false, false);
        assert!(
            eventually(|| {
                denied = datapath.counters(1).unwrap().denied > denied_before;
                delivered = received[1].load(Ordering::Relaxed) > delivered_before;
                denied || delivered
            }),
            "marker {flip} vanished"
        );
        assert_eq!(
            (denied, delivered),
            (enforced == Slot::B, enforced == Slot::A),
            "marker after flip {flip} judged by the old slot"
        );
    }
    drop(stop_guard);
    loader.join().unwrap();
    let sent = sent.load(Ordering::Relaxed);
    let delivered = received[0].load(Ordering::Relaxed);
    assert!(
        eventually(|| received[0].load(Ordering::Relaxed) == sent),
        "load lost: sent {sent}, delivered {delivered}"
    );

    let counters = datapath.counters(1).unwrap();
    let [in_a, in_b] = counters.slot_packets;
    let markers = 100;
    assert!(in_a > 0 && in_b > 0, "both slots judged load: {counters:?}");
    assert_eq!(in_a + in_b, sent + markers, "every packet counted against exactly one slot: {counters:?}");
    assert_eq!(counters.denied, markers / 2);
    println!("{sent} load packets during 100 flips: slot A {in_a}, slot B {in_b}");
    datapath.destroy().unwrap();
}
