//! The program's maps (their layout is in `palisade-common`; userspace pins them by name) and
//! the small kernel-only records some of them hold.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{
        Array, HashMap, HashOfMaps, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, ProgramArray, RingBuf,
        lpm_trie::Key,
    },
    macros::btf_map,
};
use palisade_common::*;

use crate::packet::Packet;

// aya's LPM key is the prefix length and the data: together, exactly a `PolicyKey`.
const _: () = assert!(size_of::<Key<PolicyMatch>>() == size_of::<PolicyKey>());

/// Per-CPU token bucket for new-flow events: a flood of new flows (a scan) cannot keep the
/// consumer busy beyond what it drains (millions a second), while a node reporting 100k new
/// flows a second, every one of them, stays well inside it.
pub(crate) const EVENT_BURST: u64 = 16_384;

pub(crate) const EVENT_REFILL_NS: u64 = 4_000; // one token per 4 us: 250k events/s per CPU

pub(crate) type PolicySlot = LpmTrie<PolicyMatch, PolicyValue, { MAX_POLICY_ENTRIES as usize }>;

#[btf_map]
pub(crate) static IPCACHE: LpmTrie<u32, u32, 65536> = LpmTrie::new();
#[btf_map]
pub(crate) static IPCACHE6: LpmTrie<Ipv6Words, u32, 65536> = LpmTrie::new();

// ifindex (or `HOST_ENDPOINT_IFINDEX`, the host endpoint's key) -> config. No prealloc: an update allocates a new element and frees the old one after
// RCU, so a reader never sees a recycled value.
#[btf_map]
pub(crate) static ENDPOINTS: HashMap<u32, EndpointConfig, { MAX_ENDPOINTS as usize }, { BPF_F_NO_PREALLOC as usize }> =
    HashMap::new();
// Endpoint id -> config: userspace's record, not read here.
#[btf_map]
pub(crate) static ENDPOINT_CONFIG: HashMap<
    u32,
    EndpointConfig,
    { MAX_ENDPOINTS as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();
// Counter index -> ifindex of the attached endpoint: how the hook judging a Service connection
// after translation finds the source endpoint the packet's mark names.
#[btf_map]
pub(crate) static ENDPOINT_IFINDEX: Array<u32, { MAX_ENDPOINTS as usize }> = Array::new();
// The ClusterIP and port of each connection to a Service, for the flow events of the hook that
// judges it after translation (observe shows both).
#[btf_map]
pub(crate) static SERVICE_ORIGINS: LruHashMap<ServiceOriginKey, ServiceOrigin, 65536> = LruHashMap::new();
#[btf_map]
pub(crate) static NODE_STATE: Array<u32, { NODE_STATE_ENTRIES as usize }> = Array::new();

// Per (counter index, slot): odd while userspace rewrites the slot in place.
#[btf_map]
pub(crate) static SLOT_WRITES: Array<u32, { SLOT_WRITES_ENTRIES as usize }> = Array::new();

// A word per CPU for the fully ordered atomic that fences the node state version's read.
#[btf_map]
pub(crate) static FENCE: PerCpuArray<u32, 1> = PerCpuArray::new();

#[btf_map]
pub(crate) static VERDICT_CACHE: Array<CachedVerdicts, { VERDICT_CACHE_ENTRIES as usize }> = Array::new();

#[btf_map]
pub(crate) static POLICY_SLOTS: HashOfMaps<SlotKey, PolicySlot, 8192> = HashOfMaps::new();

pub(crate) const CT_ENTRIES: usize = 262144;

pub(crate) const FRAGMENT_ENTRIES: usize = 8192;

// Per family (see `family`).
#[btf_map]
pub(crate) static CONNTRACK: LruHashMap<CtKey, CtEntry, CT_ENTRIES> = LruHashMap::new();
#[btf_map]
pub(crate) static CONNTRACK6: LruHashMap<CtKey<Ipv6Words>, CtEntry, CT_ENTRIES> = LruHashMap::new();

#[btf_map]
pub(crate) static FAST_FLOWS: Array<FastFlow, { FAST_FLOW_ENTRIES as usize }> = Array::new();
#[btf_map]
pub(crate) static FAST_FLOWS6: Array<FastFlow<Ipv6Words>, { FAST_FLOW_ENTRIES as usize }> = Array::new();

// The ports of fragmented datagrams, from their first fragment (Cilium's
// IPV4_FRAG_DATAGRAMS_MAP and its IPv6 twin).
#[btf_map]
pub(crate) static FRAGMENTS: LruHashMap<FragmentKey<u32>, Ports, FRAGMENT_ENTRIES> = LruHashMap::new();
#[btf_map]
pub(crate) static FRAGMENTS6: LruHashMap<FragmentKey<Ipv6Words>, Ports, FRAGMENT_ENTRIES> = LruHashMap::new();

// Scratch space for the IPv6 packet being judged (see `family::V6::with_packet`).
#[btf_map]
pub(crate) static PACKET6: PerCpuArray<Packet<Ipv6Words>, 1> = PerCpuArray::new();

// The IPv6 programs, which `from_endpoint`, `to_endpoint`, `deferred_egress`, `to_host` and
// `from_host` hand IPv6 packets to (a tail call: each family's program has the whole stack to itself).
#[btf_map]
pub(crate) static IPV6_PROGRAMS: ProgramArray<{ IPV6_PROGRAM_COUNT as usize }> = ProgramArray::new();

// Per-CPU values count without atomics; the key is shared, so "new flow" (a successful
// BPF_NOEXIST insert) is still detected once for the whole node.
#[btf_map]
pub(crate) static FLOWS: LruPerCpuHashMap<FlowKey, FlowStats, 65536> = LruPerCpuHashMap::new();

// Indexed by the endpoint's dense counter index: array lookups are inlined by the verifier.
#[btf_map]
pub(crate) static COUNTERS: PerCpuArray<EndpointCounters, { MAX_ENDPOINTS as usize }> = PerCpuArray::new();

#[btf_map]
pub(crate) static EVENTS: RingBuf<FlowEvent, { 1 << 22 }> = RingBuf::new();

#[btf_map]
pub(crate) static EVENT_TOKENS: PerCpuArray<TokenBucket, 1> = PerCpuArray::new();

#[repr(C)]
pub(crate) struct TokenBucket {
    pub(crate) tokens: u64,
    pub(crate) last_ns: u64,
}

/// One fragmented datagram: what reassembly keys on.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct FragmentKey<A> {
    pub(crate) saddr_be: A,
    pub(crate) daddr_be: A,
    pub(crate) id: u32,
    pub(crate) protocol: u8,
    pub(crate) _pad: u8,
    pub(crate) _pad2: u16,
}

impl<A> FragmentKey<A> {
    #[inline(always)]
    pub(crate) fn new(saddr_be: A, daddr_be: A, id: u32, protocol: u8) -> Self {
        FragmentKey { saddr_be, daddr_be, id, protocol, _pad: 0, _pad2: 0 }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Ports {
    pub(crate) sport: u16,
    pub(crate) dport: u16,
}
