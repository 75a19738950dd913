//! Bench-only programs, in an object of their own so that nothing here ever reaches a node: a
//! driver that runs the node's programs on a new connection per run (BPF_PROG_TEST_RUN with a
//! repeat runs the same packet), and a synthetic producer of flow events, to load-test an event
//! consumer without traffic.
#![no_std]
#![no_main]

mod object;

use aya_ebpf::{
    bindings::TC_ACT_OK,
    btf_maps::{Array, PerCpuArray, ProgramArray, RingBuf},
    macros::{btf_map, classifier},
    programs::TcContext,
};
use palisade_common::{FlowEvent, FlowKey};

/// Slot 0: the program `drive` hands each packet to (a node program, or `pass`).
#[btf_map]
static DRIVEN: ProgramArray<1> = ProgramArray::new();

/// The flows `drive` cycles through: peers (from the first source address's last 32 bits, in
/// host order) and ports (from the first destination port); 0 ports leaves the packet as it
/// is. The offsets say where the frame's family keeps them.
#[btf_map]
static FLOW_SPACE: Array<FlowSpace, 1> = Array::new();

#[repr(C)]
#[derive(Clone, Copy)]
struct FlowSpace {
    first_saddr: u32,
    peers: u32,
    first_dport: u32,
    ports: u32,
    saddr_offset: u32,
    dport_offset: u32,
}

/// How many packets `drive` has rewritten, on this CPU.
#[btf_map]
static DRIVEN_PACKETS: PerCpuArray<u32, 1> = PerCpuArray::new();

/// Makes each run a packet of a connection not seen before (BPF_PROG_TEST_RUN runs the same
/// buffer each time), then tail-calls `DRIVEN[0]`. Run `n` comes from peer `n / ports % peers`
/// to port `n % ports`, so neither conntrack nor a verdict cache keyed by peer and port has
/// seen it while their entries last.
#[classifier]
pub fn drive(ctx: TcContext) -> i32 {
    let Some(&space) = FLOW_SPACE.get(0) else {
        return TC_ACT_OK;
    };
    if space.ports != 0
        && space.peers != 0
        && let Some(count) = DRIVEN_PACKETS.get_ptr_mut(0)
    {
        // SAFETY: this CPU's value, only this CPU touches it.
        let n = unsafe {
            *count = (*count).wrapping_add(1);
            *count
        };
        let saddr = space.first_saddr.wrapping_add(n / space.ports % space.peers).to_be();
        let dport = (space.first_dport.wrapping_add(n % space.ports) as u16).to_be();
        if ctx.store(space.saddr_offset as usize, &saddr, 0).is_err()
            || ctx.store(space.dport_offset as usize, &dport, 0).is_err()
        {
            return TC_ACT_OK;
        }
    }
    // SAFETY: a tail call; on failure (an empty slot) the packet passes.
    unsafe { DRIVEN.tail_call(&ctx, 0) };
    TC_ACT_OK
}

/// What `drive` hands the packet to when the node's program is absent.
#[classifier]
pub fn pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

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
            saddr: [0; 4],
            daddr: [0; 4],
            enforced_cookie: 0,
            candidate_cookie: 0,
            service_addr: [0; 4],
            service_port: 0,
            _pad: 0,
            _pad2: 0,
            timestamp_ns: 0,
        };
        if EVENTS.output(&event, 0).is_ok() {
            emitted += 1;
        }
    }
    emitted
}
