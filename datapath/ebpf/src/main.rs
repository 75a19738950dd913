//! Palisade's tc program, attached to both hooks of every endpoint's host-side interface.
//!
//! The node itself is an endpoint too when userspace configures one (the host endpoint, under
//! `HOST_ENDPOINT_IFINDEX` in `ENDPOINTS`): `to_host` and `from_host` run first on every hook
//! Palisade attaches to, endpoints' and node interfaces' alike, and judge the packets addressed
//! to or sent by the node with the same slots, conntrack, shadow verdicts and records as a pod's;
//! what they allow still goes on to the pod's own programs.
//!
//! Safety invariants (each has a real-packet test in datapath/tests):
//! - Fail closed: what cannot be judged (an L7 redirect without a proxy, an unknown ethertype,
//!   a malformed header, a later fragment without its first, an ICMP error about no tracked
//!   connection, IPv6 with more extension headers than the program walks) is dropped at an
//!   enforcing endpoint with a drop reason (`DROP_*`), and recorded.
//! - Identity is earned: a packet leaving an endpoint must carry the endpoint's address of its
//!   family, in every mode; the fast path serves only packets from the side its entry validated.
//!   The host has many addresses: its packets are the ones the ipcache says are `host`'s.
//! - Both families are judged alike: IPv4 here, IPv6 by the same code instantiated for it in
//!   programs of its own (`*_v6`), which these hand IPv6 packets to by a tail call (so each
//!   family's program has the whole 512-byte stack); neighbor discovery and MLD always pass.
//! - A deny ends the connection: a denied forward packet takes it off the fast path and turns
//!   its conntrack entry into a short tombstone, so the other side's packets are dropped instead
//!   of passing as replies (or opening a connection of their own).
//! - Nothing half-written is judged: userspace rewrites a slot in place between two bumps of
//!   the slot's write sequence (`SLOT_WRITES`, odd while writing); a verdict whose lookups
//!   overlapped a write is not cached and its candidate is not compared (a seqlock).
//!
//! Map layout, and why:
//! - `POLICY_SLOTS` is a hash-of-maps keyed by (endpoint, slot) whose inner maps are LPM tries in
//!   the `PolicyKey` layout. A slot is loaded whole (a new inner map swapped in, which waits for
//!   an RCU grace period, 7-15 ms) or rewritten in place under its write sequence; neither is
//!   ever on the promotion path.
//! - `ENDPOINTS` (ifindex -> endpoint id, counter index, address and config) says which slot is
//!   enforced and which one is the candidate: a packet finds all of it with one lookup. A
//!   promotion is one update of that value, or, for every endpoint of the node at once, one
//!   update of the node epoch (`NODE_STATE`) after the other half of each config has been
//!   staged; either is followed by a bump of the node state version (below). A packet reads the
//!   epoch and the config once, so it is judged by exactly one slot. `ENDPOINT_CONFIG` (endpoint
//!   id -> the same value) is userspace's record of every endpoint, attached or not; the program
//!   does not read it.
//! - A conntrack entry (keyed by interface) caches the decision of its connection's forward
//!   packets together with the endpoint config it was made under and the node state version
//!   (`NODE_STATE`) it was made at. Userspace bumps the version after every change to a config,
//!   the epoch or the ipcache. The version is read first, with a fully ordered atomic. While it
//!   is current, a packet of an established connection needs that one lookup: no config,
//!   ipcache or policy lookup. Any change makes the very next packet recompute it.
//! - `FAST_FLOWS` sits in front of conntrack for the common case, a connection whose packets are
//!   only counted and passed: a direct-mapped array indexed by a hash of the connection, so the
//!   lookup is inlined and the packet makes no kernel call but one jiffies read (every call and
//!   return pays for speculation mitigations on these hosts; a hash lookup is a chain of them).
//!   Entries are written by the conntrack path under the same version rule, and lapse after a
//!   few hundred jiffies so that the conntrack path keeps refreshing its entry.
//! - `FRAGMENTS` keeps the ports of fragmented datagrams from their first fragment, so later
//!   fragments are judged like it (Cilium's IPV4_FRAG_DATAGRAMS_MAP).
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so `core::sync::atomic` offers no fetch-add; the
// intrinsic compiles to BPF's own atomic fetch-add (cpu v3).
#![allow(internal_features)]
#![feature(core_intrinsics)]
// `#[inline(always)]` on the closures a family's packet is judged in.
#![feature(stmt_expr_attributes)]

mod conntrack;
mod family;
mod maps;
mod object;
mod packet;
mod policy;
mod proxy;
mod record;
mod service;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_coarse_ns,
    macros::classifier,
    programs::TcContext,
};
use palisade_common::*;

use crate::{
    conntrack::*,
    family::{Family, V4, V6},
    maps::{ENDPOINTS, IPV6_PROGRAMS, PACKET6},
    packet::*,
    policy::{endpoint, judge, node_state_version},
    proxy::{Steer, assign_to_proxy, from_proxy, steer_upstream_reply, track_upstream},
    record::{apply, record_drop, refuse, unjudged},
    service::{deferred_source, judge_deferred},
};

/// Egress of every endpoint's host side, before `to_endpoint`, and of every node interface (an
/// uplink, a tunnel): where a packet to a Service reaches after kube-proxy translated it, so
/// its source's deferred egress is judged here, by the backend. A program of its own: with the
/// backend's own verdict inlined beside it, `to_endpoint` would not fit the 512-byte stack.
/// Returns "next" (`TC_ACT_UNSPEC`, TCX_NEXT) for what it passes, so the following program (the
/// backend's `to_endpoint`) still judges it.
#[classifier]
pub fn deferred_egress(ctx: TcContext) -> i32 {
    // The proxy's upstream connections leaving the node: their replies come back through a
    // node interface (see `from_network`). To a local pod, its own hooks track them.
    if from_proxy(&ctx) {
        // SAFETY: the context pointer is valid for the whole program run.
        if endpoint(unsafe { (*ctx.skb.skb).ifindex }).is_none() {
            track_upstream(&ctx);
        }
        return TC_ACT_UNSPEC;
    }
    let source = deferred_source(&ctx);
    if source == 0 {
        return TC_ACT_UNSPEC;
    }
    match header::<u16>(&ctx, 12).map(u16::from_be) {
        Some(ETH_P_IP) => judge_deferred_egress::<V4>(&ctx, source),
        Some(ETH_P_IPV6) => {
            to_ipv6_program(&ctx, IPV6_PROGRAM_DEFERRED_EGRESS);
            TC_ACT_SHOT
        }
        _ => TC_ACT_SHOT,
    }
}

/// `deferred_egress` for IPv6: reads the packet, then `deferred_egress_v6_verdict` judges it.
#[classifier]
pub fn deferred_egress_v6(ctx: TcContext) -> i32 {
    read_ipv6(&ctx, deferred_source(&ctx), IPV6_PROGRAM_DEFERRED_EGRESS_VERDICT).unwrap_or(TC_ACT_SHOT)
}

#[classifier]
pub fn deferred_egress_v6_verdict(ctx: TcContext) -> i32 {
    judge_deferred_egress::<V6>(&ctx, deferred_source(&ctx))
}

#[inline(always)]
fn judge_deferred_egress<F: Family>(ctx: &TcContext, source: u16) -> i32 {
    let version = node_state_version();
    match F::with_packet(
        ctx,
        source,
        #[inline(always)]
        |packet| judge_deferred::<F>(ctx, source, packet, version),
    ) {
        None | Some(TC_ACT_SHOT) => TC_ACT_SHOT,
        // Steered to the proxy, through this interface's ingress.
        Some(TC_ACT_REDIRECT) => TC_ACT_REDIRECT,
        Some(_) => TC_ACT_UNSPEC,
    }
}

/// Hands an IPv6 packet to its program in `IPV6_PROGRAMS`; returns only when that cannot be
/// done (the slot is empty): the caller then fails closed.
#[inline(always)]
fn to_ipv6_program(ctx: &TcContext, slot: u32) {
    // SAFETY: a tail call; it returns only when it failed.
    let _ = unsafe { IPV6_PROGRAMS.tail_call(ctx, slot) };
}

/// Ingress of every node interface: a reply to one of the L7 proxy's upstream connections to
/// an address off the node is addressed to the client pod (the proxy connected from its
/// address); it is steered to the proxy's socket instead. Every other packet goes on to the
/// pod's own hooks, which judge it.
#[classifier]
pub fn from_network(ctx: TcContext) -> i32 {
    steer_upstream_reply(&ctx);
    TC_ACT_UNSPEC
}

/// Ingress of every endpoint's host side and every node interface, first: a packet addressed to
/// the node (the ipcache says its destination is `host`) is judged by the host endpoint's
/// ingress policy. What it allows, and every other packet, goes on to the next program ("next",
/// `TC_ACT_UNSPEC`), which still judges it: a pod's packet to the node needs the pod's egress
/// policy to allow it too.
#[classifier]
pub fn to_host(ctx: TcContext) -> i32 {
    host(&ctx, DIRECTION_INGRESS, IPV6_PROGRAM_TO_HOST)
}

/// Egress of every endpoint's host side and every node interface, first: a packet the node
/// sends (the ipcache says its source is `host`) is judged by the host endpoint's egress
/// policy, then goes on as in `to_host`.
#[classifier]
pub fn from_host(ctx: TcContext) -> i32 {
    host(&ctx, DIRECTION_EGRESS, IPV6_PROGRAM_FROM_HOST)
}

/// `to_host` for IPv6: the link's own signalling goes on; the rest is read here and judged by
/// `to_host_v6_verdict`.
#[classifier]
pub fn to_host_v6(ctx: TcContext) -> i32 {
    read_host_ipv6(&ctx, DIRECTION_INGRESS, IPV6_PROGRAM_TO_HOST_VERDICT)
}

#[classifier]
pub fn to_host_v6_verdict(ctx: TcContext) -> i32 {
    judge_host::<V6>(&ctx, DIRECTION_INGRESS)
}

/// `from_host` for IPv6, as `to_host_v6`.
#[classifier]
pub fn from_host_v6(ctx: TcContext) -> i32 {
    read_host_ipv6(&ctx, DIRECTION_EGRESS, IPV6_PROGRAM_FROM_HOST_VERDICT)
}

#[classifier]
pub fn from_host_v6_verdict(ctx: TcContext) -> i32 {
    judge_host::<V6>(&ctx, DIRECTION_EGRESS)
}

#[inline(always)]
fn host(ctx: &TcContext, direction: u8, ipv6_slot: u32) -> i32 {
    // Without a host endpoint, this one lookup is all a packet pays here.
    if ENDPOINTS.get_ptr(HOST_ENDPOINT_IFINDEX).is_none() {
        return TC_ACT_UNSPEC;
    }
    match header::<u16>(ctx, 12).map(u16::from_be) {
        Some(ETH_P_IP) => judge_host::<V4>(ctx, direction),
        Some(ETH_P_IPV6) => {
            to_ipv6_program(ctx, ipv6_slot);
            host_unjudged(direction, DROP_UNKNOWN_L3)
        }
        // ARP, other ethertypes and runt frames say nothing of the node's IP traffic: the
        // programs after this one judge them (an endpoint's fail closed).
        _ => TC_ACT_UNSPEC,
    }
}

#[inline(always)]
fn read_host_ipv6(ctx: &TcContext, direction: u8, verdict_slot: u32) -> i32 {
    if link_signalling(ctx) {
        return TC_ACT_UNSPEC;
    }
    match read_ipv6(ctx, 0, verdict_slot) {
        // The verdict program is missing: fail closed.
        Some(_) => host_unjudged(direction, DROP_UNKNOWN_L3),
        // No IPv6 header to judge by, as for IPv4.
        None => TC_ACT_UNSPEC,
    }
}

/// The host endpoint's verdict on a packet it cannot judge (`reason`), as a host program returns it.
#[inline(always)]
fn host_unjudged(direction: u8, reason: u8) -> i32 {
    then_next(unjudged::<V4>(HOST_ENDPOINT_IFINDEX, direction, reason, None))
}

/// A host program drops what the host endpoint drops and hands everything else to the next
/// program, which judges it for the endpoint or interface it runs on. Never a redirect: a host
/// endpoint's L7 rules fail closed (`policy::judge`).
#[inline(always)]
fn then_next(verdict: i32) -> i32 {
    if verdict == TC_ACT_SHOT { TC_ACT_SHOT } else { TC_ACT_UNSPEC }
}

/// The host endpoint's verdict on a packet of family `F`, when it is the node's: addressed to
/// it (ingress) or sent by it (egress).
#[inline(always)]
fn judge_host<F: Family>(ctx: &TcContext, direction: u8) -> i32 {
    // The version first, then everything it versions (as in `decide_family`).
    let version = node_state_version();
    let verdict = F::with_packet(
        ctx,
        0,
        #[inline(always)]
        |packet| host_packet::<F>(ctx, direction, version, packet),
    );
    // Without a readable network header the packet is no one's yet: the next program judges it.
    then_next(verdict.unwrap_or(TC_ACT_UNSPEC))
}

#[inline(always)]
fn host_packet<F: Family>(ctx: &TcContext, direction: u8, version: u32, packet: &Packet<F::Addr>) -> i32 {
    let own = if direction == DIRECTION_INGRESS { packet.daddr_be } else { packet.saddr_be };
    if F::identity(own) != Some(IDENTITY_HOST) {
        return TC_ACT_UNSPEC;
    }
    // An ICMP error the node sends (fragmentation needed, time exceeded) is about a packet it
    // received, most often one it forwards for a pod: no connection of the host's, and the pod's
    // own hook judges it by the connection it quotes.
    if direction == DIRECTION_EGRESS && packet.quoted != 0 {
        return TC_ACT_UNSPEC;
    }
    // Tracked under the host's key: the replies of its connections pass on any interface.
    let (connection, sender) = connection::<F>(HOST_ENDPOINT_IFINDEX, packet);
    if let Some(verdict) = fast::<F>(ctx, packet, &connection, sender, direction, version) {
        return verdict;
    }
    let Some((config, counters)) = endpoint(HOST_ENDPOINT_IFINDEX) else {
        return TC_ACT_UNSPEC;
    };
    // The node's side of the connection: the sender of what it sends, the receiver of the rest.
    let local_side = if direction == DIRECTION_EGRESS { sender } else { sender ^ 1 };
    let seen = (connection, sender, Some(local_side));
    verdict::<F>(ctx, &config, counters, HOST_ENDPOINT_IFINDEX, packet, seen, version, direction)
}

/// Host-side ingress: the packet leaves the pod, so the pod's egress policy applies.
#[classifier]
pub fn from_endpoint(ctx: TcContext) -> i32 {
    decide(&ctx, DIRECTION_EGRESS)
}

/// Host-side egress: the packet enters the pod, so the pod's ingress policy applies.
#[classifier]
pub fn to_endpoint(ctx: TcContext) -> i32 {
    decide(&ctx, DIRECTION_INGRESS)
}

/// `from_endpoint` for IPv6: the link's own signalling passes; the rest is read here and
/// judged by `from_endpoint_v6_verdict`, like IPv4.
#[classifier]
pub fn from_endpoint_v6(ctx: TcContext) -> i32 {
    read_endpoint_ipv6(&ctx, DIRECTION_EGRESS, IPV6_PROGRAM_FROM_ENDPOINT_VERDICT)
}

#[classifier]
pub fn from_endpoint_v6_verdict(ctx: TcContext) -> i32 {
    decide_ipv6(&ctx, DIRECTION_EGRESS)
}

/// `to_endpoint` for IPv6, as `from_endpoint_v6`.
#[classifier]
pub fn to_endpoint_v6(ctx: TcContext) -> i32 {
    read_endpoint_ipv6(&ctx, DIRECTION_INGRESS, IPV6_PROGRAM_TO_ENDPOINT_VERDICT)
}

#[classifier]
pub fn to_endpoint_v6_verdict(ctx: TcContext) -> i32 {
    decide_ipv6(&ctx, DIRECTION_INGRESS)
}

/// Reads an IPv6 packet into this CPU's scratch record and hands it to the program in
/// `verdict_slot`. Reading and judging are programs of their own: with the extension header
/// walk inlined before the verdict, the verifier would check the whole verdict once for every
/// path through the headers (past its million-instruction limit). `None` without a readable
/// IPv6 header.
#[inline(always)]
fn read_ipv6(ctx: &TcContext, deferred_from: u16, verdict_slot: u32) -> Option<i32> {
    // SAFETY: this CPU's value, only this run touches it until it returns.
    let packet = unsafe { &mut *PACKET6.get_ptr_mut(0)? };
    if !parse6(ctx, deferred_from, packet) {
        return None;
    }
    to_ipv6_program(ctx, verdict_slot);
    Some(TC_ACT_SHOT)
}

#[inline(always)]
fn read_endpoint_ipv6(ctx: &TcContext, direction: u8, verdict_slot: u32) -> i32 {
    if link_signalling(ctx) {
        return TC_ACT_OK;
    }
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let deferred_from = if direction == DIRECTION_EGRESS { 0 } else { deferred_source(ctx) };
    match read_ipv6(ctx, deferred_from, verdict_slot) {
        // The verdict program is missing: fail closed.
        Some(_) => unjudged::<V6>(ifindex, direction, DROP_UNKNOWN_L3, None),
        None => unjudged::<V6>(ifindex, direction, DROP_MALFORMED, None),
    }
}

#[inline(always)]
fn decide(ctx: &TcContext, direction: u8) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if direction == DIRECTION_EGRESS && mark(ctx) & PROXY_MARK_MASK == MARK_TO_PROXY {
        return assign_to_proxy(ctx);
    }
    let Some(ethertype) = header::<u16>(ctx, 12).map(u16::from_be) else {
        return unjudged::<V4>(ifindex, direction, DROP_MALFORMED, None);
    };
    match ethertype {
        ETH_P_IP => decide_family::<V4>(ctx, ifindex, direction),
        ETH_P_ARP => TC_ACT_OK,
        ETH_P_IPV6 => {
            let slot =
                if direction == DIRECTION_EGRESS { IPV6_PROGRAM_FROM_ENDPOINT } else { IPV6_PROGRAM_TO_ENDPOINT };
            to_ipv6_program(ctx, slot);
            unjudged::<V4>(ifindex, direction, DROP_UNKNOWN_L3, None)
        }
        _ => unjudged::<V4>(ifindex, direction, DROP_UNKNOWN_L3, None),
    }
}

/// An IPv6 packet `from_endpoint_v6` or `to_endpoint_v6` read, judged like IPv4.
#[inline(always)]
fn decide_ipv6(ctx: &TcContext, direction: u8) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    decide_family::<V6>(ctx, ifindex, direction)
}

#[inline(always)]
fn decide_family<F: Family>(ctx: &TcContext, ifindex: u32, direction: u8) -> i32 {
    // The version first, then everything it versions: a change that lands in between is caught
    // by the next packet, never hidden.
    let version = node_state_version();
    let deferred_from = if direction == DIRECTION_EGRESS { 0 } else { deferred_source(ctx) };
    F::with_packet(
        ctx,
        deferred_from,
        #[inline(always)]
        |packet| decide_packet::<F>(ctx, ifindex, direction, version, packet),
    )
    .unwrap_or_else(|| unjudged::<F>(ifindex, direction, DROP_MALFORMED, None))
}

#[inline(always)]
fn decide_packet<F: Family>(
    ctx: &TcContext,
    ifindex: u32,
    direction: u8,
    version: u32,
    packet: &Packet<F::Addr>,
) -> i32 {
    let (connection, sender) = connection::<F>(ifindex, packet);
    if let Some(verdict) = fast::<F>(ctx, packet, &connection, sender, direction, version) {
        return verdict;
    }
    let Some((config, counters)) = endpoint(ifindex) else {
        return TC_ACT_OK;
    };
    // Identity is earned: a packet leaving an endpoint carries its address, in every mode.
    let own = F::endpoint_addr(&config);
    if direction == DIRECTION_EGRESS && packet.saddr_be != own {
        counters.invalid_source += 1;
        record_drop::<F>(&config, counters, direction, packet, DROP_INVALID_SOURCE, MODE_ENFORCE);
        return TC_ACT_SHOT;
    }
    // The side of the connection that is the endpoint, when the packet shows it: the sender of
    // a validated packet leaving it, the receiver of one addressed to it.
    let local_side = if direction == DIRECTION_EGRESS {
        Some(sender)
    } else if packet.daddr_be == own {
        Some(sender ^ 1)
    } else {
        None
    };
    verdict::<F>(ctx, &config, counters, ifindex, packet, (connection, sender, local_side), version, direction)
}

/// The fast path's verdict on a packet it may serve. Packets that open, close or relate to a
/// connection change conntrack: never fast. Nor do packets whose source's egress is judged
/// here, nor the proxy's (its upstream socket may have taken the addresses of a pod's earlier
/// flow: conntrack sends the replies to it).
#[inline(always)]
fn fast<F: Family>(
    ctx: &TcContext,
    packet: &Packet<F::Addr>,
    connection: &CtKey<F::Addr>,
    sender: u8,
    direction: u8,
    version: u32,
) -> Option<i32> {
    if packet.tracked
        && packet.unjudged == DROP_NONE
        && packet.quoted == 0
        && packet.deferred_from == 0
        && packet.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0
        && !from_proxy(ctx)
    {
        fast_path::<F>(connection, sender, direction, version)
    } else {
        None
    }
}

/// The verdict of endpoint `config` (attached to `ifindex`) in `direction` for a packet of
/// `connection`, sent by `sender`, whose endpoint side is `local_side` when known.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn verdict<F: Family>(
    ctx: &TcContext,
    config: &EndpointConfig,
    counters: &mut EndpointCounters,
    ifindex: u32,
    packet: &Packet<F::Addr>,
    (connection, sender, local_side): (CtKey<F::Addr>, u8, Option<u8>),
    version: u32,
    direction: u8,
) -> i32 {
    if packet.unjudged != DROP_NONE {
        return refuse::<F>(config, counters, direction, packet.unjudged, Some(packet));
    }
    if config.mode == MODE_OFF {
        counters.unenforced += 1;
        return TC_ACT_OK;
    }
    // SAFETY: a helper call without arguments.
    let now = (unsafe { bpf_ktime_get_coarse_ns() } >> CT_TICK_SHIFT) as u32;
    if packet.quoted != 0 {
        return match F::quoted(ctx, packet.quoted as usize) {
            Ok(original) => related::<F>(config, counters, ifindex, original, now, direction, packet),
            Err(reason) => refuse::<F>(config, counters, direction, reason, Some(packet)),
        };
    }
    if !packet.tracked {
        counters.connections += 1;
        let (decision, _) = judge::<F>(config, version, direction, packet);
        return apply::<F>(ctx, &decision, counters, direction, packet, true, Steer::by(&decision));
    }
    // An entry left by an endpoint that had this interface before is not this endpoint's.
    // SAFETY: the LRU element stays valid during this run; fields are read once.
    let entry = F::tracked(&connection)
        .filter(|&entry| unsafe { (*entry).expires > now && (*entry).decision.endpoint == config.endpoint });
    let seen = Seen { connection, sender, local_side, version, now, direction };
    match entry {
        Some(entry) => established::<F>(ctx, entry, config, counters, packet, &seen),
        None => opening::<F>(ctx, config, counters, packet, &seen),
    }
}

/// Neighbor discovery or MLD: ICMPv6 right after the IPv6 header, or after one hop-by-hop
/// options header of 8 bytes (MLD reports carry a router alert).
#[inline(always)]
fn link_signalling(ctx: &TcContext) -> bool {
    // The next header (offset 6 of the IPv6 header) through the two bytes after it (offset 40:
    // the ICMPv6 type, or the hop-by-hop header's next header and length) in one read.
    const NEXT_HEADER: usize = ETH_HLEN + 6;
    const AFTER: usize = 40 - 6;
    const HOP_BY_HOP: u8 = 0;
    let signalling = |icmp_type: u8| matches!(icmp_type, MLD_QUERY..=ND_REDIRECT | MLD2_REPORT);
    let Some(h) = header::<[u8; AFTER + 2]>(ctx, NEXT_HEADER) else {
        return false;
    };
    match (h[0], h[AFTER], h[AFTER + 1]) {
        (PROTO_ICMPV6, icmp_type, _) => signalling(icmp_type),
        (HOP_BY_HOP, PROTO_ICMPV6, 0) => header::<[u8; 2]>(ctx, ETH_HLEN + 48).is_some_and(|t| signalling(t[0])),
        _ => false,
    }
}
