//! Connections to a Service's ClusterIP, judged by the backend kube-proxy chose (as Cilium
//! judges them after its own translation). kube-proxy translates after the source's hook, so
//! that hook defers: the connection passes there (and is tracked, so replies from the ClusterIP
//! pass as replies) and its packets carry the source endpoint's counter index in their mark
//! (`SERVICE_MARK_MASK`).
//! The hook the translated packet reaches, the backend's host-side veth or the interface it
//! leaves the node by, then judges the source's egress exactly as the source's own hook judges
//! pod-to-pod traffic (conntrack, shadow evaluation, drop reasons, under the source's config;
//! program `deferred_egress`), before the backend's ingress (`to_endpoint`).
use aya_ebpf::{
    bindings::{BPF_ANY, TC_ACT_SHOT},
    programs::TcContext,
};
use palisade_common::*;

use crate::{
    conntrack::connection,
    family::Family,
    maps::{ENDPOINT_IFINDEX, SERVICE_ORIGINS},
    packet::{Packet, mark},
    policy::{endpoint, remote_identity},
    record::refuse,
    verdict,
};

/// The source endpoint (counter index + 1) whose egress this packet's hook must judge; 0 for none.
#[inline(always)]
pub(crate) fn deferred_source(ctx: &TcContext) -> u16 {
    ((mark(ctx) & SERVICE_MARK_MASK) >> SERVICE_MARK_SHIFT) as u16
}

/// Hands the packet's egress decision to the hook after translation, and remembers which
/// ClusterIP the connection went to when it opens.
#[inline(always)]
pub(crate) fn defer<A: Address>(ctx: &TcContext, index: u32, packet: &Packet<A>, opening: bool) {
    // SAFETY: the context pointer is valid for the whole program run; tc programs may write the
    // mark. A packet from a pod arrives without one (crossing namespaces clears it).
    unsafe {
        let skb = ctx.skb.skb;
        (*skb).mark = ((*skb).mark & !SERVICE_MARK_MASK) | ((index + 1) << SERVICE_MARK_SHIFT);
    }
    if opening {
        let key = ServiceOriginKey { index, sport: packet.sport, protocol: packet.protocol, _pad: 0 };
        let origin = ServiceOrigin { addr: packet.daddr_be.mapped(), port: packet.dport, _pad: 0 };
        let _ = SERVICE_ORIGINS.insert(&key, &origin, BPF_ANY as u64);
    }
}

/// The ClusterIP and port the connection of `packet`, from source endpoint `index`, was opened to.
#[inline(always)]
pub(crate) fn origin<A>(index: u32, packet: &Packet<A>) -> Option<*const ServiceOrigin> {
    let key = ServiceOriginKey { index, sport: packet.sport, protocol: packet.protocol, _pad: 0 };
    SERVICE_ORIGINS.get_ptr(&key)
}

/// Judges the egress of source endpoint `source` (counter index + 1) for a translated packet. A
/// packet still addressed to a ClusterIP was not translated and has nothing to be judged by; a
/// source that is gone fails closed.
#[inline(always)]
pub(crate) fn judge_deferred<F: Family>(ctx: &TcContext, source: u16, packet: &Packet<F::Addr>, version: u32) -> i32 {
    let index = source as u32 - 1;
    let Some(&ifindex) = ENDPOINT_IFINDEX.get(index) else {
        return TC_ACT_SHOT;
    };
    let Some((config, counters)) = endpoint(ifindex) else {
        return TC_ACT_SHOT;
    };
    if config.index != index {
        return TC_ACT_SHOT;
    }
    if remote_identity::<F>(DIRECTION_EGRESS, packet) == IDENTITY_SERVICE {
        return refuse::<F>(&config, counters, DIRECTION_EGRESS, DROP_SERVICE_UNTRANSLATED, Some(packet));
    }
    let (connection, sender) = connection::<F>(ifindex, packet);
    // No fast path for the source's side: every packet comes through here with its deferral.
    verdict::<F>(ctx, &config, counters, ifindex, packet, (connection, sender, None), version, DIRECTION_EGRESS)
}
