//! Palisade's tc program, attached to both hooks of every endpoint's host-side interface.
//!
//! Safety invariants (each has a real-packet test in datapath/tests):
//! - Fail closed: what cannot be judged (an L7 redirect without a proxy, an unknown ethertype,
//!   a malformed header, a later fragment without its first, an ICMP error about no tracked
//!   connection, IPv6 beyond neighbor discovery) is dropped at an enforcing endpoint with a drop
//!   reason (`DROP_*`), and recorded.
//! - Identity is earned: an IPv4 packet leaving an endpoint must carry the endpoint's address,
//!   in every mode; the fast path serves only packets from the side its entry validated.
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

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT},
    btf_maps::{
        Array, HashMap, HashOfMaps, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf, lpm_trie::Key,
    },
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{btf_map, classifier},
    programs::TcContext,
};
use palisade_common::{
    COOKIE_NONE, CT_OPENED_BY_HI, CT_OPENED_BY_LO, CtDecision, CtEntry, CtKey, DIRECTION_EGRESS, DIRECTION_INGRESS,
    DROP_FRAGMENT_UNKNOWN, DROP_ICMP_UNRELATED, DROP_INVALID_SOURCE, DROP_IPV6_UNSUPPORTED, DROP_MALFORMED, DROP_NONE,
    DROP_UNKNOWN_L3, EndpointConfig, EndpointCounters, FAST_FLOW_ENTRIES, FastFlow, FlowEvent, FlowKey, FlowStats,
    IDENTITY_ANY, IDENTITY_WORLD, MAX_ENDPOINTS, MODE_AUDIT, MODE_ENFORCE, MODE_OFF, NODE_STATE_ENTRIES,
    NODE_STATE_EPOCH, NODE_STATE_VERSION, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PolicyKey,
    PolicyValue, SLOT_A, SLOT_NONE, SLOT_WRITES_ENTRIES, SlotKey, VERDICT_DENY, VERDICT_NONE, Verdict, VerdictCacheKey,
    fast_flow_index, slot_writes_index, verdict_drop_reason, verdict_drops,
};

/// `PolicyKey` without its leading prefix length, as aya's LPM `Key<K>` wants it.
#[repr(C)]
#[derive(Clone, Copy)]
struct PolicyMatch {
    identity_be: u32,
    direction: u8,
    protocol: u8,
    dport_be: u16,
}
const _: () = assert!(size_of::<Key<PolicyMatch>>() == size_of::<PolicyKey>());

const POLICY_FULL_PREFIX: u32 = 64;
const MAX_POLICY_ENTRIES: usize = 16384;
/// Per-CPU token bucket for new-flow events.
const EVENT_BURST: u64 = 4096;
const EVENT_REFILL_NS: u64 = 50_000; // one token per 50 us: 20k events/s per CPU

type PolicySlot = LpmTrie<PolicyMatch, PolicyValue, MAX_POLICY_ENTRIES>;

#[btf_map]
static IPCACHE: LpmTrie<u32, u32, 65536> = LpmTrie::new();
// ifindex -> config. No prealloc: an update allocates a new element and frees the old one after
// RCU, so a reader never sees a recycled value.
#[btf_map]
static ENDPOINTS: HashMap<u32, EndpointConfig, { MAX_ENDPOINTS as usize }, { BPF_F_NO_PREALLOC as usize }> =
    HashMap::new();
// Endpoint id -> config: userspace's record, not read here.
#[btf_map]
static ENDPOINT_CONFIG: HashMap<u32, EndpointConfig, { MAX_ENDPOINTS as usize }, { BPF_F_NO_PREALLOC as usize }> =
    HashMap::new();
#[btf_map]
static NODE_STATE: Array<u32, { NODE_STATE_ENTRIES as usize }> = Array::new();
// Per (counter index, slot): odd while userspace rewrites the slot in place.
#[btf_map]
static SLOT_WRITES: Array<u32, { SLOT_WRITES_ENTRIES as usize }> = Array::new();
#[btf_map]
static VERDICT_CACHE: LruHashMap<VerdictCacheKey, Verdict, 65536> = LruHashMap::new();
#[btf_map]
static POLICY_SLOTS: HashOfMaps<SlotKey, PolicySlot, 8192> = HashOfMaps::new();
#[btf_map]
static CONNTRACK: LruHashMap<CtKey, CtEntry, 262144> = LruHashMap::new();
#[btf_map]
static FAST_FLOWS: Array<FastFlow, { FAST_FLOW_ENTRIES as usize }> = Array::new();
// The ports of fragmented datagrams, from their first fragment (Cilium's IPV4_FRAG_DATAGRAMS_MAP).
#[btf_map]
static FRAGMENTS: LruHashMap<FragmentKey, Ports, 8192> = LruHashMap::new();
// Per-CPU values count without atomics; the key is shared, so "new flow" (a successful
// BPF_NOEXIST insert) is still detected once for the whole node.
#[btf_map]
static FLOWS: LruPerCpuHashMap<FlowKey, FlowStats, 65536> = LruPerCpuHashMap::new();
// Indexed by the endpoint's dense counter index: array lookups are inlined by the verifier.
#[btf_map]
static COUNTERS: PerCpuArray<EndpointCounters, { MAX_ENDPOINTS as usize }> = PerCpuArray::new();
#[btf_map]
static EVENTS: RingBuf<FlowEvent, { 1 << 22 }> = RingBuf::new();
#[btf_map]
static EVENT_TOKENS: PerCpuArray<TokenBucket, 1> = PerCpuArray::new();

#[repr(C)]
struct TokenBucket {
    tokens: u64,
    last_ns: u64,
}

/// One fragmented datagram: what IPv4 reassembly keys on.
#[repr(C)]
#[derive(Clone, Copy)]
struct FragmentKey {
    saddr_be: u32,
    daddr_be: u32,
    id: u16,
    protocol: u8,
    _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ports {
    sport: u16,
    dport: u16,
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

struct Packet {
    saddr_be: u32,
    daddr_be: u32,
    protocol: u8,
    sport: u16,
    dport: u16,
    /// The original connection an ICMP error refers to.
    related: Option<CtKey>,
    tcp_flags: u8,
    /// Part of a connection. ICMP other than echo is not: it is judged per packet by its type.
    tracked: bool,
    /// Why the packet cannot be judged (`DROP_*`), `DROP_NONE` when it can.
    unjudged: u8,
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
/// ICMPv6 multicast listener query, report and done (130-132), neighbor discovery (router
/// solicitation 133 up to redirect 137) and MLDv2 reports (143): the link's own signalling.
const MLD_QUERY: u8 = 130;
const ND_REDIRECT: u8 = 137;
const MLD2_REPORT: u8 = 143;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

#[inline(always)]
fn decide(ctx: &TcContext, direction: u8) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(ethertype) = header::<u16>(ctx, 12).map(u16::from_be) else {
        return unjudged(ifindex, direction, DROP_MALFORMED, None);
    };
    match ethertype {
        ETH_P_IP => {}
        ETH_P_ARP => return TC_ACT_OK,
        ETH_P_IPV6 => return ipv6(ctx, ifindex, direction),
        _ => return unjudged(ifindex, direction, DROP_UNKNOWN_L3, None),
    }
    // The version first, then everything it versions: a change that lands in between is caught
    // by the next packet, never hidden.
    let version = node_state_version();
    let Some(packet) = parse(ctx) else {
        return unjudged(ifindex, direction, DROP_MALFORMED, None);
    };
    let (connection, sender) = connection(ifindex, &packet);
    // Packets that open, close or relate to a connection change conntrack: never fast.
    if packet.tracked
        && packet.unjudged == DROP_NONE
        && packet.related.is_none()
        && packet.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0
        && let Some(verdict) = fast_path(&connection, sender, direction, version)
    {
        return verdict;
    }
    let Some((config, counters)) = endpoint(ifindex) else {
        return TC_ACT_OK;
    };
    // Identity is earned: a packet leaving an endpoint carries its address, in every mode.
    if direction == DIRECTION_EGRESS && packet.saddr_be != config.addr_be {
        counters.invalid_source += 1;
        record_drop(&config, direction, &packet, DROP_INVALID_SOURCE, MODE_ENFORCE);
        return TC_ACT_SHOT;
    }
    if packet.unjudged != DROP_NONE {
        return refuse(&config, counters, direction, packet.unjudged, Some(&packet));
    }
    if config.mode == MODE_OFF {
        counters.unenforced += 1;
        return TC_ACT_OK;
    }
    // The side of the connection that is the endpoint, when the packet shows it: the sender of
    // a validated packet leaving it, the receiver of one addressed to it.
    let local_side = if direction == DIRECTION_EGRESS {
        Some(sender)
    } else if packet.daddr_be == config.addr_be {
        Some(sender ^ 1)
    } else {
        None
    };

    // SAFETY: a helper call without arguments.
    let now = (unsafe { bpf_ktime_get_coarse_ns() } >> CT_TICK_SHIFT) as u32;
    if let Some(original) = packet.related {
        return related(&config, counters, ifindex, original, now, direction, &packet);
    }
    if !packet.tracked {
        counters.connections += 1;
        let (decision, _) = judge(&config, version, direction, &packet);
        return apply(&decision, counters, direction, &packet);
    }
    // An entry left by an endpoint that had this interface before is not this endpoint's.
    // SAFETY: the LRU element stays valid during this run; fields are read once.
    let entry = CONNTRACK
        .get_ptr_mut(connection)
        .filter(|&entry| unsafe { (*entry).expires > now && (*entry).decision.endpoint == config.endpoint });
    let seen = Seen { connection, sender, local_side, version, now, direction };
    match entry {
        Some(entry) => established(entry, &config, counters, &packet, &seen),
        None => opening(&config, counters, &packet, &seen),
    }
}

/// What the program knows of a packet besides its headers.
struct Seen {
    connection: CtKey,
    /// The side (`CT_OPENED_BY_*`) that sent it.
    sender: u8,
    /// The side that is the endpoint's own address, when known.
    local_side: Option<u8>,
    version: u32,
    /// Coarse time in conntrack ticks.
    now: u32,
    direction: u8,
}

/// A packet of a tracked connection: a reply passes (unless the connection was denied), a
/// forward packet is judged, from the cached decision while the node state version holds.
#[inline(always)]
fn established(
    entry: *mut CtEntry,
    config: &EndpointConfig,
    counters: &mut EndpointCounters,
    packet: &Packet,
    seen: &Seen,
) -> i32 {
    // SAFETY: the LRU element stays valid during this run; the fields are read once each.
    let (opened_by, closing, denied, expires, cached) =
        unsafe { ((*entry).opened_by, (*entry).closing, (*entry).denied, (*entry).expires, (*entry).decision) };
    // A denied connection is not kept alive by its packets.
    let (closing, expires) =
        if denied != 0 { (closing, expires) } else { refresh(entry, closing, expires, packet, seen.now) };
    let current = cached.version == seen.version && cached.check == cached.checksum();
    if opened_by != seen.sender {
        if denied != 0 {
            counters.denied += 1;
            return TC_ACT_SHOT;
        }
        counters.replies += 1;
        if current {
            admit_fast(&seen.connection, opened_by, seen.local_side, (closing, expires), seen.now, &cached);
        }
        return TC_ACT_OK;
    }
    let decision = if current { cached } else { judge(config, seen.version, seen.direction, packet).0 };
    if !decision.passes() {
        // A deny ends the connection: it leaves the fast path, and its entry turns into a short
        // tombstone under which the other side's packets are dropped rather than passed as
        // replies (or, with the entry simply gone, let in as a connection of their own by an
        // open egress policy). Every forward packet is judged again, so an allow revives it.
        forget_fast(&seen.connection);
        let tombstone_until = seen.now.wrapping_add(CT_CLOSING_TICKS);
        // SAFETY: the element is valid for this run; a racing reader that sees it half written
        // fails the checksum and recomputes.
        unsafe {
            (*entry).decision = decision;
            (*entry).denied = 1;
            if denied == 0 || expires.wrapping_add(CT_REFRESH_TICKS) < tombstone_until {
                (*entry).expires = tombstone_until;
            }
        }
    } else if denied != 0 {
        // SAFETY: as above; the next packets refresh its expiry.
        unsafe {
            (*entry).decision = decision;
            (*entry).denied = 0;
        }
    } else {
        if !current {
            // SAFETY: as above.
            unsafe { (*entry).decision = decision };
        }
        admit_fast(&seen.connection, opened_by, seen.local_side, (closing, expires), seen.now, &decision);
    }
    apply(&decision, counters, seen.direction, packet)
}

/// The first packet of a connection: judged, and tracked when it passes.
#[inline(always)]
fn opening(config: &EndpointConfig, counters: &mut EndpointCounters, packet: &Packet, seen: &Seen) -> i32 {
    counters.connections += 1;
    let (decision, _) = judge(config, seen.version, seen.direction, packet);
    if decision.passes() {
        let expires = seen.now.wrapping_add(lifetime(0, packet));
        let entry = CtEntry { opened_by: seen.sender, closing: 0, denied: 0, _pad: 0, expires, decision };
        if CONNTRACK.insert(seen.connection, entry, BPF_ANY as u64).is_ok() {
            admit_fast(&seen.connection, seen.sender, seen.local_side, (0, expires), seen.now, &decision);
        }
    }
    apply(&decision, counters, seen.direction, packet)
}

/// The node state version, read with a fully ordered atomic (a fetch-add of 0): the reads that
/// follow cannot be reordered before it, on arm64 as on x86. BPF load-acquire needs kernel 6.15.
#[inline(always)]
fn node_state_version() -> u32 {
    NODE_STATE.get_ptr_mut(NODE_STATE_VERSION).map_or(0, |version| ordered_read(version))
}

#[inline(always)]
fn ordered_read(value: *mut u32) -> u32 {
    // SAFETY: a map value, valid and 4-byte aligned for the whole run.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(value, 0) }
}

/// A packet of a connection in the fast-flow cache: counted and passed. `None` when the cache
/// does not hold the connection under the current version (or the entry lapsed), or when the
/// packet does not come from the side its hook implies (a spoofed source never passes here).
#[inline(always)]
fn fast_path(connection: &CtKey, sender: u8, direction: u8, version: u32) -> Option<i32> {
    let flow = *FAST_FLOWS.get(fast_flow_index(connection))?;
    if flow.connection != *connection || flow.version != version {
        return None;
    }
    if (sender == flow.local_side) != (direction == DIRECTION_EGRESS) {
        return None;
    }
    // SAFETY: a helper call without arguments.
    if unsafe { bpf_jiffies64() } > flow.valid_until || flow.check != flow.checksum() {
        return None;
    }
    // SAFETY: per-CPU value of this endpoint, only this CPU writes it.
    let counters = unsafe { &mut *COUNTERS.get_ptr_mut(flow.index)? };
    if flow.opened_by != sender {
        counters.replies += 1;
    } else {
        if flow.enforced_slot == SLOT_A {
            counters.slot_packets[0] += 1;
        } else {
            counters.slot_packets[1] += 1;
        }
        counters.allowed += 1;
    }
    Some(TC_ACT_OK)
}

/// Lets the fast path serve a connection whose forward packets would only be counted and
/// passed, for at most `FAST_FLOW_JIFFIES` and never past its conntrack entry's expiry: an
/// open, established entry with a current decision that neither drops nor reports, whose
/// endpoint side is known.
#[inline(always)]
fn admit_fast(
    connection: &CtKey,
    opened_by: u8,
    local_side: Option<u8>,
    (closing, expires): (u8, u32),
    now: u32,
    decision: &CtDecision,
) {
    let Some(local_side) = local_side else {
        return;
    };
    if decision.reported() || closing != 0 || expires < now + CT_FAST_MARGIN_TICKS {
        return;
    }
    let Some(slot) = FAST_FLOWS.get_ptr_mut(fast_flow_index(connection)) else {
        return;
    };
    let mut flow = FastFlow {
        connection: *connection,
        index: decision.index,
        version: decision.version,
        _pad: 0,
        // SAFETY: a helper call without arguments.
        valid_until: unsafe { bpf_jiffies64() } + FAST_FLOW_JIFFIES,
        opened_by,
        enforced_slot: decision.enforced_slot,
        local_side,
        _pad2: 0,
        check: 0,
    };
    flow.check = flow.checksum();
    // SAFETY: the array element is valid for this run; a racing reader that sees it half
    // written fails the checksum.
    unsafe { *slot = flow };
}

/// Takes a connection out of the fast-flow cache.
#[inline(always)]
fn forget_fast(connection: &CtKey) {
    let Some(slot) = FAST_FLOWS.get_ptr_mut(fast_flow_index(connection)) else {
        return;
    };
    // SAFETY: the array element is valid for this run; a wrong checksum retires the entry.
    unsafe {
        if (*slot).connection == *connection {
            (*slot).check = !(*slot).check;
        }
    }
}

/// The decision of a connection's forward packets under the endpoint's current config, and
/// whether it is settled. It is not when a slot was being rewritten during the lookups: then
/// the candidate is not compared (no shadow difference comes from a half-written slot) and the
/// decision is stored with a failing checksum, so the next packet judges afresh.
#[inline(always)]
fn judge(config: &EndpointConfig, version: u32, direction: u8, packet: &Packet) -> (CtDecision, bool) {
    let epoch = NODE_STATE.get(NODE_STATE_EPOCH).copied().unwrap_or(0);
    // Branches, not indexing: the verifier rejects the pointer arithmetic LLVM makes of it.
    let slots = if epoch & 1 == 0 { config.by_epoch[0] } else { config.by_epoch[1] };
    let identity = remote_identity(direction, packet);
    let (enforced, enforced_settled) = slot_verdict(config, slots.enforced, identity, direction, packet);
    let none = Verdict { verdict: VERDICT_NONE, _pad: [0; 3], cookie: COOKIE_NONE };
    let (candidate, settled) = if slots.candidate == SLOT_NONE {
        (none, enforced_settled)
    } else {
        let (candidate, candidate_settled) = slot_verdict(config, slots.candidate, identity, direction, packet);
        let settled = enforced_settled && candidate_settled;
        (if settled { candidate } else { none }, settled)
    };
    let mut decision = CtDecision {
        identity,
        enforced,
        candidate,
        endpoint: config.endpoint,
        index: config.index,
        version,
        mode: config.mode,
        enforced_slot: slots.enforced,
        _pad: 0,
        check: 0,
    };
    decision.check = if settled { decision.checksum() } else { !decision.checksum() };
    (decision, settled)
}

#[inline(always)]
fn remote_identity(direction: u8, packet: &Packet) -> u32 {
    let remote_be = if direction == DIRECTION_EGRESS { packet.daddr_be } else { packet.saddr_be };
    // LPM nodes are freed after an RCU grace period, so the identity is read safely.
    IPCACHE.get(&Key::new(32, remote_be)).copied().unwrap_or(IDENTITY_WORLD)
}

/// Counts a forward packet under its decision, records the flow when it is dropped or judged
/// differently by the candidate, and returns the verdict.
#[inline(always)]
fn apply(decision: &CtDecision, counters: &mut EndpointCounters, direction: u8, packet: &Packet) -> i32 {
    let (enforced, candidate) = (decision.enforced, decision.candidate);
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
    if decision.passes() { TC_ACT_OK } else { TC_ACT_SHOT }
}

/// Records a drop that no policy decided (`mode`: the mode it applies in).
#[inline(always)]
fn record_drop(config: &EndpointConfig, direction: u8, packet: &Packet, reason: u8, mode: u8) {
    let flow = FlowKey {
        endpoint: config.endpoint,
        identity: remote_identity(direction, packet),
        dport: packet.dport,
        protocol: packet.protocol,
        direction,
        enforced_verdict: VERDICT_DENY,
        candidate_verdict: VERDICT_NONE,
        mode,
        reason,
    };
    if !record_flow(&flow, packet, COOKIE_NONE, COOKIE_NONE)
        && let Some(counters) = COUNTERS.get_ptr_mut(config.index)
    {
        // SAFETY: per-CPU value of this endpoint, only this CPU writes it.
        unsafe { (*counters).events_lost += 1 };
    }
}

/// Traffic the datapath cannot judge (`reason`): dropped at an enforcing endpoint, passed and
/// recorded at an auditing one, passed where no policy applies. Fail closed.
#[inline(always)]
fn unjudged(ifindex: u32, direction: u8, reason: u8, packet: Option<&Packet>) -> i32 {
    match endpoint(ifindex) {
        Some((config, counters)) => refuse(&config, counters, direction, reason, packet),
        None => TC_ACT_OK,
    }
}

#[inline(always)]
fn refuse(
    config: &EndpointConfig,
    counters: &mut EndpointCounters,
    direction: u8,
    reason: u8,
    packet: Option<&Packet>,
) -> i32 {
    if config.mode == MODE_OFF {
        counters.unenforced += 1;
        return TC_ACT_OK;
    }
    if reason == DROP_IPV6_UNSUPPORTED {
        counters.ipv6_dropped += 1;
    } else {
        counters.unjudged += 1;
    }
    let unknown = Packet {
        saddr_be: 0,
        daddr_be: 0,
        protocol: 0,
        sport: 0,
        dport: 0,
        related: None,
        tcp_flags: 0,
        tracked: false,
        unjudged: reason,
    };
    record_drop(config, direction, packet.unwrap_or(&unknown), reason, config.mode);
    if config.mode == MODE_ENFORCE { TC_ACT_SHOT } else { TC_ACT_OK }
}

/// An ICMP error about one of this endpoint's tracked connections passes as its reply; one that
/// relates to none cannot be judged.
#[inline(always)]
fn related(
    config: &EndpointConfig,
    counters: &mut EndpointCounters,
    ifindex: u32,
    mut original: CtKey,
    now: u32,
    direction: u8,
    packet: &Packet,
) -> i32 {
    original.ifindex = ifindex;
    // SAFETY: the LRU element stays valid during this run; fields are read once.
    let tracked = CONNTRACK.get_ptr(original).is_some_and(|entry| unsafe {
        (*entry).expires > now && (*entry).denied == 0 && (*entry).decision.endpoint == config.endpoint
    });
    if tracked {
        counters.replies += 1;
        return TC_ACT_OK;
    }
    refuse(config, counters, direction, DROP_ICMP_UNRELATED, Some(packet))
}

/// The config and this CPU's counters of the endpoint attached to `ifindex`, in any mode.
#[inline(always)]
fn endpoint(ifindex: u32) -> Option<(EndpointConfig, &'static mut EndpointCounters)> {
    // SAFETY: copied out at once; the map does not recycle elements (no prealloc).
    let config = (unsafe { ENDPOINTS.get(ifindex) }).copied()?;
    // SAFETY: per-CPU value of this endpoint, only this CPU writes it, during this run.
    let counters = unsafe { &mut *COUNTERS.get_ptr_mut(config.index)? };
    Some((config, counters))
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Header {
    version_ihl: u8,
    tos: u8,
    total_len: u16,
    id: u16,
    frag_off_be: u16,
    ttl: u8,
    protocol: u8,
    checksum: u16,
    saddr_be: u32,
    daddr_be: u32,
}

/// Direct packet access: much cheaper than a `bpf_skb_load_bytes` call per field.
#[inline(always)]
fn linear<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    // The packet end is loaded afresh for each read: reused across a branch, LLVM passes it on
    // through a 32-bit move the verifier no longer sees as a packet pointer.
    // SAFETY: the context pointer is valid for the whole program run.
    let data_end = unsafe { core::ptr::read_volatile(&(*ctx.skb.skb).data_end) } as usize;
    let start = ctx.data() + offset;
    if start + size_of::<T>() > data_end {
        return None;
    }
    // SAFETY: bounds checked against data_end just above.
    Some(unsafe { core::ptr::read_unaligned(start as *const T) })
}

/// Headers are nearly always in the linear area. Pull only when one is not: pulling a cloned
/// skb (every TCP transmit) copies it.
#[inline(always)]
fn header<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    if let Some(value) = linear(ctx, offset) {
        return Some(value);
    }
    let needed = offset + size_of::<T>();
    if needed > ctx.len() as usize {
        return None;
    }
    ctx.pull_data(needed as u32).ok()?;
    linear(ctx, offset)
}

/// IPv6 policy is not implemented yet: an enforcing endpoint gets neighbor discovery and MLD
/// only, so IPv6 can never bypass its IPv4 policy. Audit mode records what enforcing would drop.
#[inline(always)]
fn ipv6(ctx: &TcContext, ifindex: u32, direction: u8) -> i32 {
    // The endpoint first: the lookup's call makes the read below load the packet bounds afresh.
    let Some((config, counters)) = endpoint(ifindex) else {
        return TC_ACT_OK;
    };
    // The next header (offset 6 of the IPv6 header) through the ICMPv6 type (offset 40) in one
    // read, so one bounds check covers both: LLVM reuses the packet end of a first check through
    // a 32-bit move the verifier cannot follow.
    const NEXT_HEADER: usize = ETH_HLEN + 6;
    const ICMPV6_TYPE: usize = 40 - 6;
    let link_signalling = header::<[u8; ICMPV6_TYPE + 2]>(ctx, NEXT_HEADER)
        .is_some_and(|h| h[0] == PROTO_ICMPV6 && matches!(h[ICMPV6_TYPE], MLD_QUERY..=ND_REDIRECT | MLD2_REPORT));
    if link_signalling {
        return TC_ACT_OK;
    }
    refuse(&config, counters, direction, DROP_IPV6_UNSUPPORTED, None)
}

/// The packet's addresses, protocol and ports; `None` without a readable IPv4 header. A packet
/// that cannot be judged says why in `unjudged`.
#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet> {
    let ip: Ipv4Header = header(ctx, ETH_HLEN)?;
    let header_len = ((ip.version_ihl & 0x0f) as usize) * 4;
    let mut packet = Packet {
        saddr_be: ip.saddr_be,
        daddr_be: ip.daddr_be,
        protocol: ip.protocol,
        sport: 0,
        dport: 0,
        related: None,
        tcp_flags: 0,
        tracked: true,
        unjudged: DROP_NONE,
    };
    if let Err(reason) = parse_l4(ctx, &ip, header_len, &mut packet) {
        packet.unjudged = reason;
    }
    Some(packet)
}

#[inline(always)]
fn parse_l4(ctx: &TcContext, ip: &Ipv4Header, header_len: usize, packet: &mut Packet) -> Result<(), u8> {
    if ip.version_ihl >> 4 != 4 || header_len < size_of::<Ipv4Header>() {
        return Err(DROP_MALFORMED);
    }
    let l4 = ETH_HLEN + header_len;
    let fragment = u16::from_be(ip.frag_off_be);
    let fragment_key =
        FragmentKey { saddr_be: ip.saddr_be, daddr_be: ip.daddr_be, id: ip.id, protocol: ip.protocol, _pad: 0 };
    // A later fragment has no L4 header: it is judged with the ports its first fragment carried.
    if fragment & IP_OFFSET != 0 {
        // SAFETY: a 4-byte value copied out at once.
        let ports = (unsafe { FRAGMENTS.get(fragment_key) }).copied().ok_or(DROP_FRAGMENT_UNKNOWN)?;
        (packet.sport, packet.dport) = (ports.sport, ports.dport);
        packet.tracked = ip.protocol != PROTO_ICMP || matches!(ports.dport as u8, ICMP_ECHO | ICMP_ECHO_REPLY);
        return Ok(());
    }
    match ip.protocol {
        // One read per header, so one bounds check covers every field: LLVM reuses the packet
        // end of a first check through a 32-bit move the verifier cannot follow.
        PROTO_TCP => {
            let tcp: [u8; 14] = header(ctx, l4).ok_or(DROP_MALFORMED)?;
            packet.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
            packet.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
            packet.tcp_flags = tcp[13];
        }
        PROTO_UDP | PROTO_SCTP => {
            let ports: [u8; 4] = header(ctx, l4).ok_or(DROP_MALFORMED)?;
            packet.sport = u16::from_be_bytes([ports[0], ports[1]]);
            packet.dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
        PROTO_ICMP => {
            let icmp: [u8; 8] = header(ctx, l4).ok_or(DROP_MALFORMED)?;
            // The policy "port" of ICMP is its type; the echo id stands in for a port in the CT.
            packet.dport = icmp[0] as u16;
            match icmp[0] {
                ICMP_ECHO | ICMP_ECHO_REPLY => packet.sport = u16::from_be_bytes([icmp[4], icmp[5]]),
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
                    packet.related = Some(parse_icmp_error(ctx, l4 + 8)?);
                }
                _ => packet.tracked = false,
            }
        }
        _ => {}
    }
    if fragment & IP_MORE_FRAGMENTS != 0 {
        let ports = Ports { sport: packet.sport, dport: packet.dport };
        let _ = FRAGMENTS.insert(fragment_key, ports, BPF_ANY as u64);
    }
    Ok(())
}

const IP_OFFSET: u16 = 0x1fff;
const IP_MORE_FRAGMENTS: u16 = 0x2000;

/// The connection an ICMP error quotes: the original packet, as its sender sent it.
#[inline(always)]
fn parse_icmp_error(ctx: &TcContext, inner: usize) -> Result<CtKey, u8> {
    let malformed = |_| DROP_MALFORMED;
    let version_ihl: u8 = ctx.load(inner).map_err(malformed)?;
    let protocol: u8 = ctx.load(inner + 9).map_err(malformed)?;
    let saddr_be: u32 = ctx.load(inner + 12).map_err(malformed)?;
    let daddr_be: u32 = ctx.load(inner + 16).map_err(malformed)?;
    let l4 = inner + ((version_ihl & 0x0f) as usize) * 4;
    let port = |offset: usize| ctx.load::<u16>(offset).map(u16::from_be).map_err(malformed);
    let (sport, dport) = match protocol {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => (port(l4)?, port(l4 + 2)?),
        // Of ICMP only echo is tracked: an error about an echo request relates to it by id.
        PROTO_ICMP if ctx.load::<u8>(l4).map_err(malformed)? == ICMP_ECHO => (port(l4 + 4)?, 0),
        PROTO_ICMP => return Err(DROP_ICMP_UNRELATED),
        _ => (0, 0),
    };
    let (key, _) = connection_key(0, protocol, (saddr_be, sport), (daddr_be, dport));
    Ok(key)
}

/// Conntrack lifetimes after the last packet (Cilium's defaults), in ticks of 2^30 ns.
const CT_TICK_SHIFT: u32 = 30;
const CT_TCP_TICKS: u32 = (21600 * 1_000_000_000u64 >> CT_TICK_SHIFT) as u32;
const CT_OTHER_TICKS: u32 = (60 * 1_000_000_000u64 >> CT_TICK_SHIFT) as u32;
const CT_CLOSING_TICKS: u32 = (10 * 1_000_000_000u64 >> CT_TICK_SHIFT) as u32;
/// Extend a live entry at most this often, to keep writes off most packets.
const CT_REFRESH_TICKS: u32 = 4;
/// A fast-flow entry serves at most this many jiffies (0.25 s at HZ=1000, 2.5 s at HZ=100)
/// before the conntrack path sees the connection again and refreshes it...
const FAST_FLOW_JIFFIES: u64 = 256;
/// ...and is only written while the conntrack entry has more than 3 s left, so the fast path
/// never serves a connection past its expiry, whatever the kernel's HZ.
const CT_FAST_MARGIN_TICKS: u32 = 3;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

#[inline(always)]
fn lifetime(closing: u8, packet: &Packet) -> u32 {
    match packet.protocol {
        PROTO_TCP if closing != 0 || packet.tcp_flags & (TCP_FIN | TCP_RST) != 0 => CT_CLOSING_TICKS,
        PROTO_TCP => CT_TCP_TICKS,
        _ => CT_OTHER_TICKS,
    }
}

/// Keeps a live entry alive; a FIN or RST shortens its life, a new SYN reopens it. Writes only
/// when something changes, so most packets leave the entry's cache line clean. Returns the
/// entry's closing flag and expiry after the packet.
#[inline(always)]
fn refresh(ptr: *mut CtEntry, closing: u8, expires: u32, packet: &Packet, now: u32) -> (u8, u32) {
    let reopened = packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let closes = packet.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    let next_closing = if reopened {
        0
    } else if closes {
        1
    } else {
        closing
    };
    let next_expires = now.wrapping_add(lifetime(next_closing, packet));
    if next_closing != closing
        || (closes && next_expires < expires)
        || next_expires > expires.wrapping_add(CT_REFRESH_TICKS)
    {
        // SAFETY: the element is valid for this run; a racing writer only moves the expiry.
        unsafe {
            (*ptr).closing = next_closing;
            (*ptr).expires = next_expires;
        }
        return (next_closing, next_expires);
    }
    (closing, expires)
}

/// The connection of a packet and the side (`CT_OPENED_BY_*`) that sent it.
#[inline(always)]
fn connection(ifindex: u32, packet: &Packet) -> (CtKey, u8) {
    let (sport, dport) = match packet.protocol {
        // An echo reply answers the request with the same id, sent from the requester's "port".
        PROTO_ICMP if packet.dport == ICMP_ECHO as u16 => (packet.sport, 0),
        PROTO_ICMP if packet.dport == ICMP_ECHO_REPLY as u16 => (0, packet.sport),
        PROTO_ICMP => (0, 0),
        _ => (packet.sport, packet.dport),
    };
    connection_key(ifindex, packet.protocol, (packet.saddr_be, sport), (packet.daddr_be, dport))
}

#[inline(always)]
fn connection_key(ifindex: u32, protocol: u8, sender: (u32, u16), receiver: (u32, u16)) -> (CtKey, u8) {
    let sender_is_lo = (u32::from_be(sender.0), sender.1) <= (u32::from_be(receiver.0), receiver.1);
    let (lo, hi, side) =
        if sender_is_lo { (sender, receiver, CT_OPENED_BY_LO) } else { (receiver, sender, CT_OPENED_BY_HI) };
    let key = CtKey {
        ifindex,
        addr_lo_be: lo.0,
        addr_hi_be: hi.0,
        port_lo: lo.1,
        port_hi: hi.1,
        protocol,
        _pad: 0,
        _pad2: 0,
    };
    (key, side)
}

/// The verdict of `slot` for a packet, and whether it is settled: `false` when userspace was
/// rewriting the slot in place during the lookups (a seqlock on `SLOT_WRITES`), and then the
/// verdict may come from a half-written slot and is not cached.
#[inline(always)]
fn slot_verdict(config: &EndpointConfig, slot: u8, identity: u32, direction: u8, packet: &Packet) -> (Verdict, bool) {
    let endpoint = config.endpoint;
    let writes = SLOT_WRITES.get_ptr_mut(slot_writes_index(config.index, slot));
    let before = writes.map_or(0, ordered_read);
    // Branches, not indexing: the verifier rejects the pointer arithmetic LLVM makes of it.
    let generation = if slot == SLOT_A { config.slot_generation[0] } else { config.slot_generation[1] };
    let cache_key =
        VerdictCacheKey { endpoint, generation, identity, dport: packet.dport, protocol: packet.protocol, direction };
    // SAFETY: 8-byte value copied out at once.
    if before & 1 == 0
        && let Some(cached) = unsafe { VERDICT_CACHE.get(cache_key) }
    {
        return (*cached, true);
    }
    let verdict = lookup_policy(endpoint, slot, identity, direction, packet);
    // Fully ordered: the lookups above complete before the sequence is read again.
    let settled = before & 1 == 0 && writes.map_or(0, ordered_read) == before;
    if settled {
        let _ = VERDICT_CACHE.insert(cache_key, verdict, BPF_ANY as u64);
    }
    (verdict, settled)
}

#[inline(always)]
fn lookup_policy(endpoint: u32, slot: u8, identity: u32, direction: u8, packet: &Packet) -> Verdict {
    let denied = Verdict { verdict: VERDICT_DENY, _pad: [0; 3], cookie: COOKIE_NONE };
    // SAFETY: the inner map reference is only used for lookups during this run.
    let Some(policy) = (unsafe { POLICY_SLOTS.get(&SlotKey { endpoint, slot: slot as u32 }) }) else {
        return denied;
    };
    let mut key = Key::new(
        POLICY_FULL_PREFIX,
        PolicyMatch {
            identity_be: identity.to_be(),
            direction,
            protocol: packet.protocol,
            dport_be: packet.dport.to_be(),
        },
    );
    // LPM nodes are freed after an RCU grace period: copying out is safe.
    let specific = policy.get(&key).copied();
    key.data.identity_be = IDENTITY_ANY.to_be();
    let wildcard = policy.get(&key).copied();
    let chosen = match (specific, wildcard) {
        (Some(s), Some(w)) => {
            let wildcard_wins =
                w.precedence > s.precedence || (w.precedence == s.precedence && w.l4_prefix_len() > s.l4_prefix_len());
            if wildcard_wins { w } else { s }
        }
        (Some(s), None) => s,
        (None, Some(w)) => w,
        (None, None) => return denied,
    };
    Verdict { verdict: chosen.verdict, _pad: [0; 3], cookie: chosen.cookie }
}

/// Counts the flow; a new flow also gets an event. Returns false when that event was lost.
#[inline(always)]
fn record_flow(flow: &FlowKey, packet: &Packet, enforced_cookie: u32, candidate_cookie: u32) -> bool {
    if count_packet(flow) {
        return true;
    }
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let stats = FlowStats { packets: 1, first_seen_ns: now, enforced_cookie, candidate_cookie };
    if FLOWS.insert(flow, stats, BPF_NOEXIST as u64).is_err() {
        // Another CPU created it first.
        count_packet(flow);
        return true;
    }
    if !take_event_token(now) {
        return false;
    }
    let event = FlowEvent {
        flow: *flow,
        saddr_be: packet.saddr_be,
        daddr_be: packet.daddr_be,
        enforced_cookie,
        candidate_cookie,
        timestamp_ns: now,
    };
    EVENTS.output(&event, 0).is_ok()
}

#[inline(always)]
fn count_packet(flow: &FlowKey) -> bool {
    let Some(stats) = FLOWS.get_ptr_mut(flow) else {
        return false;
    };
    // SAFETY: this CPU's copy of the value, written only by this CPU.
    unsafe { (*stats).packets += 1 };
    true
}

#[inline(always)]
fn take_event_token(now: u64) -> bool {
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
