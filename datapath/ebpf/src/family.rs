//! The two address families. Each has its own ipcache, conntrack, fast-flow cache and fragment
//! table (as Cilium keeps per-family maps: an IPv4 connection pays for no IPv6 bytes), and its
//! own header parser; everything that judges a packet is written once, generic over [`Family`].
use aya_ebpf::{
    bindings::BPF_ANY,
    btf_maps::{Array, LruHashMap, lpm_trie::Key},
    programs::TcContext,
};
use palisade_common::*;

use crate::{maps::*, packet::*};

pub(crate) trait Family {
    type Addr: Address + 'static;
    /// The ICMP protocol number of the family, whose "port" in policy is the ICMP type.
    const ICMP: u8;
    /// The ICMP types of echo, which is tracked like a connection (its id stands in for a port).
    const ECHO_REQUEST: u8;
    const ECHO_REPLY: u8;
    /// The identity of an address no ipcache prefix covers.
    const WORLD: u32;
    /// Whether the L7 proxy can take the family's connections (its listener is on 127.0.0.1):
    /// otherwise a redirect fails closed as `l7-unsupported`.
    const PROXIED: bool;

    fn identity(addr: Self::Addr) -> Option<u32>;
    fn conntrack() -> &'static LruHashMap<CtKey<Self::Addr>, CtEntry, CT_ENTRIES>;
    /// The connection's conntrack entry, and tracking a connection. IPv4 hands the helpers
    /// copies of key and entry: with references to the packet's own, the verifier's state count
    /// for `to_endpoint` passes its limit. IPv6 hands references: copies of its keys would not
    /// fit the stack.
    fn tracked(connection: &CtKey<Self::Addr>) -> Option<*mut CtEntry>;
    fn track(connection: &CtKey<Self::Addr>, entry: &CtEntry) -> bool;
    fn fast_flows() -> &'static Array<FastFlow<Self::Addr>, { FAST_FLOW_ENTRIES as usize }>;
    fn fragments() -> &'static LruHashMap<FragmentKey<Self::Addr>, Ports, FRAGMENT_ENTRIES>;
    /// The only source address the endpoint's packets of this family may carry.
    fn endpoint_addr(config: &EndpointConfig) -> Self::Addr;
    /// Reads the packet's headers and hands them to `judge`; `None` without a readable network
    /// header.
    fn with_packet<R>(ctx: &TcContext, deferred_from: u16, judge: impl FnOnce(&Packet<Self::Addr>) -> R) -> Option<R>;
    /// The connection of the packet an ICMP error quotes at `offset`, or why it has none.
    fn quoted(ctx: &TcContext, offset: usize) -> Result<CtKey<Self::Addr>, u8>;

    #[inline(always)]
    fn is_echo(icmp_type: u8) -> bool {
        icmp_type == Self::ECHO_REQUEST || icmp_type == Self::ECHO_REPLY
    }

    /// An error that quotes the packet it is about (destination unreachable, time exceeded,
    /// parameter problem; for ICMPv6 also packet too big).
    fn is_error(icmp_type: u8) -> bool;
}

pub(crate) struct V4;

pub(crate) struct V6;

impl Family for V4 {
    type Addr = u32;
    const ICMP: u8 = PROTO_ICMP;
    const ECHO_REQUEST: u8 = ICMP_ECHO;
    const ECHO_REPLY: u8 = ICMP_ECHO_REPLY;
    const WORLD: u32 = IDENTITY_WORLD;
    const PROXIED: bool = true;

    #[inline(always)]
    fn identity(addr: u32) -> Option<u32> {
        // LPM nodes are freed after an RCU grace period, so the identity is read safely.
        IPCACHE.get(&Key::new(32, addr)).copied()
    }

    #[inline(always)]
    fn conntrack() -> &'static LruHashMap<CtKey, CtEntry, CT_ENTRIES> {
        &CONNTRACK
    }

    #[inline(always)]
    fn tracked(connection: &CtKey) -> Option<*mut CtEntry> {
        CONNTRACK.get_ptr_mut(*connection)
    }

    #[inline(always)]
    fn track(connection: &CtKey, entry: &CtEntry) -> bool {
        CONNTRACK.insert(*connection, *entry, BPF_ANY as u64).is_ok()
    }

    #[inline(always)]
    fn fast_flows() -> &'static Array<FastFlow, { FAST_FLOW_ENTRIES as usize }> {
        &FAST_FLOWS
    }

    #[inline(always)]
    fn fragments() -> &'static LruHashMap<FragmentKey<u32>, Ports, FRAGMENT_ENTRIES> {
        &FRAGMENTS
    }

    #[inline(always)]
    fn endpoint_addr(config: &EndpointConfig) -> u32 {
        config.addr_be
    }

    #[inline(always)]
    fn with_packet<R>(ctx: &TcContext, deferred_from: u16, judge: impl FnOnce(&Packet<u32>) -> R) -> Option<R> {
        parse(ctx, deferred_from).map(
            #[inline(always)]
            |packet| judge(&packet),
        )
    }

    #[inline(always)]
    fn is_error(icmp_type: u8) -> bool {
        matches!(icmp_type, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM)
    }

    #[inline(always)]
    fn quoted(ctx: &TcContext, offset: usize) -> Result<CtKey, u8> {
        parse_icmp_error(ctx, offset)
    }
}

impl Family for V6 {
    type Addr = Ipv6Words;
    const ICMP: u8 = PROTO_ICMPV6;
    const ECHO_REQUEST: u8 = ICMPV6_ECHO_REQUEST;
    const ECHO_REPLY: u8 = ICMPV6_ECHO_REPLY;
    const WORLD: u32 = IDENTITY_WORLD_IPV6;
    const PROXIED: bool = false;

    #[inline(always)]
    fn identity(addr: Ipv6Words) -> Option<u32> {
        // As above.
        IPCACHE6.get(&Key::new(128, addr)).copied()
    }

    #[inline(always)]
    fn conntrack() -> &'static LruHashMap<CtKey<Ipv6Words>, CtEntry, CT_ENTRIES> {
        &CONNTRACK6
    }

    #[inline(always)]
    fn tracked(connection: &CtKey<Ipv6Words>) -> Option<*mut CtEntry> {
        CONNTRACK6.get_ptr_mut(connection)
    }

    #[inline(always)]
    fn track(connection: &CtKey<Ipv6Words>, entry: &CtEntry) -> bool {
        CONNTRACK6.insert(connection, entry, BPF_ANY as u64).is_ok()
    }

    #[inline(always)]
    fn fast_flows() -> &'static Array<FastFlow<Ipv6Words>, { FAST_FLOW_ENTRIES as usize }> {
        &FAST_FLOWS6
    }

    #[inline(always)]
    fn fragments() -> &'static LruHashMap<FragmentKey<Ipv6Words>, Ports, FRAGMENT_ENTRIES> {
        &FRAGMENTS6
    }

    #[inline(always)]
    fn endpoint_addr(config: &EndpointConfig) -> Ipv6Words {
        config.addr6
    }

    /// The packet the program before read into this CPU's scratch record (see `main`'s
    /// `read_ipv6`): the program runs to completion on its CPU, tail calls included.
    #[inline(always)]
    fn with_packet<R>(_ctx: &TcContext, _deferred_from: u16, judge: impl FnOnce(&Packet<Ipv6Words>) -> R) -> Option<R> {
        // SAFETY: this CPU's value, only this run touches it until it returns.
        let packet = unsafe { &*PACKET6.get_ptr(0)? };
        Some(judge(packet))
    }

    #[inline(always)]
    fn is_error(icmp_type: u8) -> bool {
        (ICMPV6_DEST_UNREACH..=ICMPV6_PARAMETER_PROBLEM).contains(&icmp_type)
    }

    #[inline(always)]
    fn quoted(ctx: &TcContext, offset: usize) -> Result<CtKey<Ipv6Words>, u8> {
        parse_icmp6_error(ctx, offset)
    }
}
