//! Bench-only programs, in an object of their own so that nothing here ever reaches a node: a
//! synthetic producer of flow events, to load-test an event consumer without traffic.
#![no_std]
#![no_main]

mod object;

use aya_ebpf::{
    btf_maps::RingBuf,
    macros::{btf_map, classifier},
    programs::TcContext,
};
use palisade_common::{FlowEvent, FlowKey};

// The same ring as the production object's EVENTS, drained by the same reader.
#[btf_map]
static EVENTS: RingBuf<FlowEvent, { 1 << 22 }> = RingBuf::new();

/// One run emits a burst of 64 events; returns how many fit.
#[classifier]
pub fn event_burst(_ctx: TcContext) -> i32 {
    let mut emitted = 0;
    for i in 0..64u32 {
        let event = FlowEvent {
            flow: FlowKey {
                endpoint: i,
                identity: 0,
                dport: 0,
                protocol: 0,
                direction: 0,
                enforced_verdict: 0,
                candidate_verdict: 0,
                mode: 0,
                reason: 0,
            },
            saddr_be: 0,
            daddr_be: 0,
            enforced_cookie: 0,
            candidate_cookie: 0,
            service_addr_be: 0,
            service_port: 0,
            _pad: 0,
            timestamp_ns: 0,
        };
        if EVENTS.output(&event, 0).is_ok() {
            emitted += 1;
        }
    }
    emitted
}
