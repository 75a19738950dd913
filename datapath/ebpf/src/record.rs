//! What a verdict leaves behind: counters, flows (counted in the kernel, one event per new flow,
//! rate-limited) and the drops of traffic that cannot be judged.
use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use palisade_common::*;

use crate::{
    family::Family,
    maps::*,
    packet::Packet,
    policy::{endpoint, remote_identity},
    proxy::{Steer, from_proxy, steer},
    service::{defer, origin},
};

/// Counts a forward packet under its decision, records the flow when it is dropped or judged
/// differently by the candidate, and returns the verdict (a redirect for a packet that passes
/// and is steered to the L7 proxy, as `steering` says). A packet to a Service passes with its decision deferred
/// (`opening`: the first packet of its connection).
#[inline(always)]
pub(crate) fn apply<F: Family>(
    ctx: &TcContext,
    decision: &CtDecision,
    counters: &mut EndpointCounters,
    direction: u8,
    packet: &Packet<F::Addr>,
    opening: bool,
    steering: Steer,
) -> i32 {
    let (enforced, candidate) = (decision.enforced, decision.candidate);
    if enforced.cookie == COOKIE_DEFERRED {
        defer(ctx, decision.index, packet, opening);
        return TC_ACT_OK;
    }
    if decision.enforced_slot == SLOT_A {
        counters.slot_packets[0] += 1;
    } else {
        counters.slot_packets[1] += 1;
    }
    let drops = verdict_drops(enforced.verdict);
    if drops && decision.mode == MODE_AUDIT {
        counters.audited += 1;
    } else if drops {
        counters.denied += 1;
    } else {
        counters.allowed += 1;
    }
    if decision.differs() {
        counters.shadow_diffs += 1;
    }
    if decision.reported() {
        let flow = FlowKey {
            endpoint: decision.endpoint,
            identity: decision.identity,
            dport: packet.dport,
            protocol: packet.protocol,
            direction,
            enforced_verdict: enforced.verdict,
            candidate_verdict: candidate.verdict,
            mode: decision.mode,
            reason: verdict_drop_reason(enforced.verdict),
        };
        if !record_flow(&flow, packet, enforced.cookie, candidate.cookie) {
            counters.events_lost += 1;
        }
    }
    if !decision.passes() {
        TC_ACT_SHOT
    } else if F::PROXIED && steering != Steer::No && !from_proxy(ctx) {
        // Only the hook of a pod's own egress is a tc ingress hook.
        steer(ctx, steering, direction == DIRECTION_EGRESS && packet.deferred_from == 0)
    } else {
        TC_ACT_OK
    }
}

/// Records a drop that no policy decided (`mode`: the mode it applies in).
#[inline(always)]
pub(crate) fn record_drop<F: Family>(
    config: &EndpointConfig,
    counters: &mut EndpointCounters,
    direction: u8,
    packet: &Packet<F::Addr>,
    reason: u8,
    mode: u8,
) {
    let flow = FlowKey {
        endpoint: config.endpoint,
        identity: remote_identity::<F>(direction, packet),
        dport: packet.dport,
        protocol: packet.protocol,
        direction,
        enforced_verdict: VERDICT_DENY,
        candidate_verdict: VERDICT_NONE,
        mode,
        reason,
    };
    if !record_flow(&flow, packet, COOKIE_NONE, COOKIE_NONE) {
        counters.events_lost += 1;
    }
}

/// Traffic the datapath cannot judge (`reason`): dropped at an enforcing endpoint, passed and
/// recorded at an auditing one, passed where no policy applies. Fail closed.
#[inline(always)]
pub(crate) fn unjudged<F: Family>(ifindex: u32, direction: u8, reason: u8, packet: Option<&Packet<F::Addr>>) -> i32 {
    match endpoint(ifindex) {
        Some((config, counters)) => refuse::<F>(&config, counters, direction, reason, packet),
        None => TC_ACT_OK,
    }
}

#[inline(always)]
pub(crate) fn refuse<F: Family>(
    config: &EndpointConfig,
    counters: &mut EndpointCounters,
    direction: u8,
    reason: u8,
    packet: Option<&Packet<F::Addr>>,
) -> i32 {
    if config.mode == MODE_OFF {
        counters.unenforced += 1;
        return TC_ACT_OK;
    }
    counters.unjudged += 1;
    let unknown = Packet {
        saddr_be: F::Addr::UNSPECIFIED,
        daddr_be: F::Addr::UNSPECIFIED,
        protocol: 0,
        sport: 0,
        dport: 0,
        quoted: 0,
        tcp_flags: 0,
        tracked: false,
        unjudged: reason,
        deferred_from: 0,
    };
    record_drop::<F>(config, counters, direction, packet.unwrap_or(&unknown), reason, config.mode);
    if config.mode == MODE_ENFORCE { TC_ACT_SHOT } else { TC_ACT_OK }
}

/// Counts the flow; a new flow also gets an event. Returns false when that event was lost.
#[inline(always)]
pub(crate) fn record_flow<A: Address>(
    flow: &FlowKey,
    packet: &Packet<A>,
    enforced_cookie: u32,
    candidate_cookie: u32,
) -> bool {
    if count_packet(flow) {
        return true;
    }
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let stats = FlowStats { packets: 1, first_seen_ns: now, enforced_cookie, candidate_cookie };
    if FLOWS.insert(flow, &stats, BPF_NOEXIST as u64).is_err() {
        // Another CPU created it first.
        count_packet(flow);
        return true;
    }
    if !take_event_token(now) {
        return false;
    }
    let service = match packet.deferred_from {
        0 => None,
        source => origin(source as u32 - 1, packet),
    };
    let Some(mut entry) = EVENTS.reserve(0) else {
        return false;
    };
    // Written in place in the ring, field by field: an event built on the stack would not fit
    // beside `deferred_egress`'s verdict.
    let event = entry.as_mut_ptr();
    // SAFETY: a reserved ring entry of the event's size, written whole before it is submitted;
    // the origin is a map value, valid for this run.
    unsafe {
        (*event).flow = *flow;
        (*event).saddr = packet.saddr_be.mapped();
        (*event).daddr = packet.daddr_be.mapped();
        (*event).enforced_cookie = enforced_cookie;
        (*event).candidate_cookie = candidate_cookie;
        (*event).service_addr = service.map_or([0; 4], |s| (*s).addr);
        (*event).service_port = service.map_or(0, |s| (*s).port);
        (*event)._pad = 0;
        (*event)._pad2 = 0;
        (*event).timestamp_ns = now;
    }
    entry.submit(0);
    true
}

#[inline(always)]
pub(crate) fn count_packet(flow: &FlowKey) -> bool {
    let Some(stats) = FLOWS.get_ptr_mut(flow) else {
        return false;
    };
    // SAFETY: this CPU's copy of the value, written only by this CPU.
    unsafe { (*stats).packets += 1 };
    true
}

#[inline(always)]
pub(crate) fn take_event_token(now: u64) -> bool {
    let Some(bucket) = EVENT_TOKENS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU value, only this CPU touches it.
    let bucket = unsafe { &mut *bucket };
    let refill = (now.saturating_sub(bucket.last_ns)) / EVENT_REFILL_NS;
    if refill > 0 {
        bucket.tokens = core::cmp::min(EVENT_BURST, bucket.tokens + refill);
        bucket.last_ns = now;
    }
    if bucket.tokens == 0 {
        return false;
    }
    bucket.tokens -= 1;
    true
}
