//! Palisade's tc program, attached to both hooks of every endpoint's host-side interface.
//!
//! Map layout, and why:
//! - `POLICY_SLOTS` is a hash-of-maps keyed by (endpoint, slot) whose inner maps are LPM tries in
//!   the `PolicyKey` layout. Userspace replaces an idle slot's inner map ahead of a promotion (that
//!   replacement waits for an RCU grace period, 7-15 ms, so it stays off the promotion path).
//!   A new inner map is filled aside and swapped in whole, so a slot is never seen half-loaded;
//!   one big LPM keyed additionally by (endpoint, slot) would need key-by-key deletes and
//!   inserts that the candidate evaluation would observe midway.
//! - `ENDPOINTS` (ifindex -> endpoint id, counter index and config) says which slot is enforced and
//!   which one is the candidate: a packet finds all of it with one lookup. A promotion is one
//!   update of that value, or, for every endpoint of the node at once, one update of the node
//!   epoch (`NODE_STATE`) after the other half of each config has been staged; either is
//!   followed by a bump of the node state version (below). A packet reads the
//!   epoch and the config once, so it is judged by exactly one slot. `ENDPOINT_CONFIG` (endpoint
//!   id -> the same value) is userspace's record of every endpoint, attached or not; the program
//!   does not read it.
//! - A conntrack entry (keyed by interface) caches the decision of its connection's forward
//!   packets together with the endpoint config it was made under and the node state version
//!   (`NODE_STATE`) it was made at. Userspace bumps the version after every change to a config,
//!   the epoch or the ipcache. While the version is current, a packet of an established
//!   connection needs that one lookup: no config, ipcache or policy lookup. Any change makes the
//!   very next packet recompute it.
//! - `FAST_FLOWS` sits in front of conntrack for the common case, a connection whose packets are
//!   only counted and passed: a direct-mapped array indexed by a hash of the connection, so the
//!   lookup is inlined and the packet makes no kernel call but one jiffies read (every call and
//!   return pays for speculation mitigations on these hosts; a hash lookup is a chain of them).
//!   Entries are written by the conntrack path under the same version rule, and lapse after a
//!   few hundred jiffies so that the conntrack path keeps refreshing its entry.
#![no_std]
#![no_main]

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
    EndpointConfig, EndpointCounters, FAST_FLOW_ENTRIES, FastFlow, FlowEvent, FlowKey, FlowStats, IDENTITY_ANY,
    IDENTITY_WORLD, MAX_ENDPOINTS, MODE_AUDIT, MODE_ENFORCE, MODE_OFF, NODE_STATE_ENTRIES, NODE_STATE_EPOCH,
    NODE_STATE_VERSION, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PolicyKey, PolicyValue, SLOT_A,
    SLOT_NONE, SlotKey, VERDICT_DENY, VERDICT_NONE, VERDICT_REDIRECT, Verdict, VerdictCacheKey, fast_flow_index,
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
#[btf_map]
static VERDICT_CACHE: LruHashMap<VerdictCacheKey, Verdict, 65536> = LruHashMap::new();
#[btf_map]
static POLICY_SLOTS: HashOfMaps<SlotKey, PolicySlot, 8192> = HashOfMaps::new();
#[btf_map]
static CONNTRACK: LruHashMap<CtKey, CtEntry, 262144> = LruHashMap::new();
#[btf_map]
static FAST_FLOWS: Array<FastFlow, { FAST_FLOW_ENTRIES as usize }> = Array::new();
// Per-CPU values count without atomics (BPF has no fetch-add from Rust here); the key is shared,
// so "new flow" (a successful BPF_NOEXIST insert) is still detected once for the whole node.
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

/// Synthetic event source for the drain benchmark: one run emits a burst of 64 events.
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
                _pad: 0,
            },
            saddr_be: 0,
            daddr_be: 0,
            enforced_cookie: 0,
            candidate_cookie: 0,
            timestamp_ns: 0,
        };
        if EVENTS.output(&event, 0).is_ok() {
            emitted += 1;
        }
    }
    emitted
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
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// ICMPv6 router solicitation (133) up to redirect (137): neighbor discovery.
const ND_ROUTER_SOLICIT: u8 = 133;
const ND_REDIRECT: u8 = 137;
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
        return TC_ACT_OK;
    };
    if ethertype != ETH_P_IP {
        // ARP and other non-IP traffic is not under policy.
        return if ethertype == ETH_P_IPV6 { ipv6(ctx, ifindex) } else { TC_ACT_OK };
    }
    // The version first, then everything it versions: a change that lands in between is caught
    // by the next packet, never hidden.
    let version = NODE_STATE.get(NODE_STATE_VERSION).copied().unwrap_or(0);
    let Some(packet) = parse(ctx) else {
        // A truncated IPv4 header: the stack drops it anyway.
        return if under_policy(ifindex).is_some() { TC_ACT_SHOT } else { TC_ACT_OK };
    };
    let (connection, sender) = connection(ifindex, &packet);
    // Packets that open, close or relate to a connection change conntrack: never fast.
    if packet.related.is_none()
        && packet.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0
        && let Some(verdict) = fast_path(&connection, sender, version)
    {
        return verdict;
    }

    // SAFETY: a helper call without arguments.
    let now = (unsafe { bpf_ktime_get_coarse_ns() } >> CT_TICK_SHIFT) as u32;
    if let Some(original) = packet.related
        && let Some(verdict) = related(ifindex, original, now)
    {
        return verdict;
    }
    // SAFETY: the LRU element stays valid during this run.
    let live = CONNTRACK.get_ptr_mut(connection).filter(|&entry| unsafe { (*entry).expires } > now);
    let Some((config, counters)) = under_policy(ifindex) else {
        return TC_ACT_OK;
    };
    // An entry left by an endpoint that had this interface before is not this endpoint's.
    // SAFETY: the LRU element stays valid during this run.
    let live = live.filter(|&entry| unsafe { (*entry).decision.endpoint } == config.endpoint);
    let state = live.map(|entry| {
        // SAFETY: as above; the fields are read once each.
        let (opened_by, closing, expires, cached) =
            unsafe { ((*entry).opened_by, (*entry).closing, (*entry).expires, (*entry).decision) };
        let (closing, expires) = refresh(entry, closing, expires, &packet, now);
        (entry, opened_by, closing, expires, cached)
    });
    if let Some((_, opened_by, closing, expires, cached)) = state
        && opened_by != sender
    {
        counters.replies += 1;
        if cached.version == version && cached.check == cached.checksum() {
            admit_fast(&connection, opened_by, (closing, expires), now, &cached);
        }
        return TC_ACT_OK;
    }
    let cached = state
        .map(|(_, _, _, _, cached)| cached)
        .filter(|cached| cached.version == version && cached.check == cached.checksum());
    let decision = match cached {
        Some(decision) => decision,
        None => judge(&config, version, direction, &packet),
    };
    if state.is_none() {
        counters.connections += 1;
    }
    match state {
        Some((entry, opened_by, closing, expires, _)) => {
            if cached.is_none() {
                // SAFETY: the element is valid for this run; a racing reader that sees it half
                // written fails the checksum and recomputes.
                unsafe { (*entry).decision = decision };
            }
            admit_fast(&connection, opened_by, (closing, expires), now, &decision);
        }
        None if passes(&decision) => {
            let expires = now.wrapping_add(lifetime(0, &packet));
            let entry = CtEntry { opened_by: sender, closing: 0, _pad: 0, expires, decision };
            if CONNTRACK.insert(connection, entry, BPF_ANY as u64).is_ok() {
                admit_fast(&connection, sender, (0, expires), now, &decision);
            }
        }
        None => {}
    }
    apply(&decision, counters, direction, &packet)
}

/// A packet of a connection in the fast-flow cache: counted and passed. `None` when the cache
/// does not hold the connection under the current version (or the entry lapsed).
#[inline(always)]
fn fast_path(connection: &CtKey, sender: u8, version: u32) -> Option<i32> {
    let flow = *FAST_FLOWS.get(fast_flow_index(connection))?;
    if flow.connection != *connection || flow.version != version {
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
        if flow.redirected != 0 {
            counters.redirected += 1;
        } else {
            counters.allowed += 1;
        }
    }
    Some(TC_ACT_OK)
}

/// Lets the fast path serve a connection whose forward packets would only be counted and
/// passed, for at most `FAST_FLOW_JIFFIES` and never past its conntrack entry's expiry: an
/// open, established entry with a current decision that neither drops nor reports.
#[inline(always)]
fn admit_fast(connection: &CtKey, opened_by: u8, (closing, expires): (u8, u32), now: u32, decision: &CtDecision) {
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
        redirected: (decision.mode != MODE_AUDIT && decision.enforced.verdict == VERDICT_REDIRECT) as u8,
        _pad2: 0,
        check: 0,
    };
    flow.check = flow.checksum();
    // SAFETY: the array element is valid for this run; a racing reader that sees it half
    // written fails the checksum.
    unsafe { *slot = flow };
}

/// The decision of a connection's forward packets under the endpoint's current config.
#[inline(always)]
fn judge(config: &EndpointConfig, version: u32, direction: u8, packet: &Packet) -> CtDecision {
    let epoch = NODE_STATE.get(NODE_STATE_EPOCH).copied().unwrap_or(0);
    // Branches, not indexing: the verifier rejects the pointer arithmetic LLVM makes of it.
    let slots = if epoch & 1 == 0 { config.by_epoch[0] } else { config.by_epoch[1] };
    let remote_be = if direction == DIRECTION_EGRESS { packet.daddr_be } else { packet.saddr_be };
    // LPM nodes are freed after an RCU grace period, so the identity is read safely.
    let identity = IPCACHE.get(&Key::new(32, remote_be)).copied().unwrap_or(IDENTITY_WORLD);
    let enforced = policy_verdict(config, slots.enforced, identity, direction, packet);
    let candidate = if slots.candidate == SLOT_NONE {
        Verdict { verdict: VERDICT_NONE, _pad: [0; 3], cookie: COOKIE_NONE }
    } else {
        policy_verdict(config, slots.candidate, identity, direction, packet)
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
    decision.check = decision.checksum();
    decision
}

#[inline(always)]
fn passes(decision: &CtDecision) -> bool {
    decision.mode != MODE_ENFORCE || decision.enforced.verdict != VERDICT_DENY
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
    match (decision.mode, enforced.verdict) {
        (MODE_AUDIT, VERDICT_DENY) => counters.audited += 1,
        (MODE_AUDIT, _) => counters.allowed += 1,
        (_, VERDICT_DENY) => counters.denied += 1,
        (_, VERDICT_REDIRECT) => counters.redirected += 1,
        _ => counters.allowed += 1,
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
            _pad: 0,
        };
        if !record_flow(&flow, packet, enforced.cookie, candidate.cookie) {
            counters.events_lost += 1;
        }
    }
    if passes(decision) { TC_ACT_OK } else { TC_ACT_SHOT }
}

/// An ICMP error about a tracked connection passes as its reply. `None`: not about one of this
/// endpoint's connections, judged as ICMP by the policy.
#[inline(always)]
fn related(ifindex: u32, mut original: CtKey, now: u32) -> Option<i32> {
    original.ifindex = ifindex;
    // SAFETY: the LRU element stays valid during this run.
    let entry = CONNTRACK.get_ptr(original).filter(|&entry| unsafe { (*entry).expires } > now)?;
    let Some((config, counters)) = under_policy(ifindex) else {
        return Some(TC_ACT_OK);
    };
    // SAFETY: as above.
    if unsafe { (*entry).decision.endpoint } != config.endpoint {
        return None;
    }
    counters.replies += 1;
    Some(TC_ACT_OK)
}

/// The config and this CPU's counters of the endpoint on `ifindex`. `None` when the interface
/// has no endpoint, or its policy is off (then the packet is counted as unenforced): either way
/// the packet passes unevaluated.
#[inline(always)]
fn under_policy(ifindex: u32) -> Option<(EndpointConfig, &'static mut EndpointCounters)> {
    // SAFETY: copied out at once; the map does not recycle elements (no prealloc).
    let config = (unsafe { ENDPOINTS.get(ifindex) }).copied()?;
    // SAFETY: per-CPU value of this endpoint, only this CPU writes it, during this run.
    let counters = unsafe { &mut *COUNTERS.get_ptr_mut(config.index)? };
    if config.mode == MODE_OFF {
        counters.unenforced += 1;
        return None;
    }
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
    let start = ctx.data() + offset;
    if start + size_of::<T>() > ctx.data_end() {
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

/// IPv6 policy is not implemented yet: an enforcing endpoint gets neighbor discovery only, so
/// IPv6 can never bypass its IPv4 policy. Audit mode records nothing for IPv6.
#[inline(always)]
fn ipv6(ctx: &TcContext, ifindex: u32) -> i32 {
    const NEXT_HEADER: usize = ETH_HLEN + 6;
    const ICMPV6_TYPE: usize = ETH_HLEN + 40;
    let Some((config, counters)) = under_policy(ifindex) else {
        return TC_ACT_OK;
    };
    let neighbor_discovery = header::<u8>(ctx, NEXT_HEADER) == Some(PROTO_ICMPV6)
        && header::<u8>(ctx, ICMPV6_TYPE).is_some_and(|t| (ND_ROUTER_SOLICIT..=ND_REDIRECT).contains(&t));
    if neighbor_discovery || config.mode != MODE_ENFORCE {
        TC_ACT_OK
    } else {
        counters.ipv6_dropped += 1;
        TC_ACT_SHOT
    }
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet> {
    let ip: Ipv4Header = header(ctx, ETH_HLEN)?;
    let l4 = ETH_HLEN + ((ip.version_ihl & 0x0f) as usize) * 4;
    let mut packet = Packet {
        saddr_be: ip.saddr_be,
        daddr_be: ip.daddr_be,
        protocol: ip.protocol,
        sport: 0,
        dport: 0,
        related: None,
        tcp_flags: 0,
    };
    // Later fragments (and truncated L4 headers) have no ports: like Cilium, they only match
    // port-wildcard entries.
    if u16::from_be(ip.frag_off_be) & 0x1fff != 0 {
        return Some(packet);
    }
    let Some(l4_start) = header::<[u8; 8]>(ctx, l4) else {
        return Some(packet);
    };
    match ip.protocol {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            packet.sport = u16::from_be_bytes([l4_start[0], l4_start[1]]);
            packet.dport = u16::from_be_bytes([l4_start[2], l4_start[3]]);
            if ip.protocol == PROTO_TCP {
                // Data offset and flags as one 2-byte read: LLVM turns a 1-byte bounds check into
                // `start >= end`, which the verifier cannot use.
                packet.tcp_flags = header::<[u8; 2]>(ctx, l4 + 12).map_or(0, |word| word[1]);
            }
        }
        PROTO_ICMP => {
            let icmp_type = l4_start[0];
            // The policy "port" of ICMP is its type; the echo id stands in for a port in the CT.
            packet.dport = icmp_type as u16;
            match icmp_type {
                ICMP_ECHO | ICMP_ECHO_REPLY => packet.sport = u16::from_be_bytes([l4_start[4], l4_start[5]]),
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
                    packet.related = parse_icmp_error(ctx, l4 + 8)
                }
                _ => {}
            }
        }
        _ => {}
    }
    Some(packet)
}

/// The quoted header of an ICMP error: the original packet, as its sender sent it.
#[inline(always)]
fn parse_icmp_error(ctx: &TcContext, inner: usize) -> Option<CtKey> {
    let version_ihl: u8 = ctx.load(inner).ok()?;
    let protocol: u8 = ctx.load(inner + 9).ok()?;
    let saddr_be: u32 = ctx.load(inner + 12).ok()?;
    let daddr_be: u32 = ctx.load(inner + 16).ok()?;
    let l4 = inner + ((version_ihl & 0x0f) as usize) * 4;
    let (sport, dport) = match protocol {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            (u16::from_be(ctx.load::<u16>(l4).ok()?), u16::from_be(ctx.load::<u16>(l4 + 2).ok()?))
        }
        PROTO_ICMP => (u16::from_be(ctx.load::<u16>(l4 + 4).ok()?), 0),
        _ => (0, 0),
    };
    let (key, _) = connection_key(0, protocol, (saddr_be, sport), (daddr_be, dport));
    Some(key)
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

/// Cilium's `__policy_can_access`: the identity-specific and the any-identity entries compete;
/// higher precedence wins, then the longer proto/port prefix, then the identity-specific one.
#[inline(always)]
fn policy_verdict(config: &EndpointConfig, slot: u8, identity: u32, direction: u8, packet: &Packet) -> Verdict {
    let endpoint = config.endpoint;
    // Branches, not indexing: the verifier rejects the pointer arithmetic LLVM makes of it.
    let generation = if slot == SLOT_A { config.slot_generation[0] } else { config.slot_generation[1] };
    let cache_key =
        VerdictCacheKey { endpoint, generation, identity, dport: packet.dport, protocol: packet.protocol, direction };
    // SAFETY: 8-byte value copied out at once.
    if let Some(cached) = unsafe { VERDICT_CACHE.get(cache_key) } {
        return *cached;
    }
    let verdict = lookup_policy(endpoint, slot, identity, direction, packet);
    let _ = VERDICT_CACHE.insert(cache_key, verdict, BPF_ANY as u64);
    verdict
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
