//! Policy verdicts: the endpoint's config, the peer's identity from the ipcache, and the
//! enforced and candidate slots' verdicts (Cilium's `__policy_can_access`), read under the
//! slots' write sequences so that nothing half-written is compared.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::btf_maps::lpm_trie::Key;
use palisade_common::*;

use crate::{family::Family, maps::*, packet::Packet, proxy::proxy_port};

/// The node state version, read before everything it versions: a fully ordered atomic (a
/// fetch-add of 0, loadable from kernel 6.6, where BPF load-acquire needs 6.15) after the read
/// keeps the reads that follow from moving before it, on arm64 as on x86. The atomic is on a
/// per-CPU word: on the version itself every packet on every CPU would write one cache line.
#[inline(always)]
pub(crate) fn node_state_version() -> u32 {
    // SAFETY: a map value, valid and aligned for the whole run.
    let version = NODE_STATE.get_ptr(NODE_STATE_VERSION).map_or(0, |v| unsafe { core::ptr::read_volatile(v) });
    full_fence();
    version
}

/// A full memory barrier: a fully ordered atomic on this CPU's own word.
#[inline(always)]
fn full_fence() {
    if let Some(word) = FENCE.get_ptr_mut(0) {
        // SAFETY: a per-CPU map value, valid and aligned for the whole run.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(word, 0) };
    }
}

/// The write sequences of `slots` of the endpoint with counter index `index` (the
/// candidate's 0 without one). The caller fences once after the first reading and once before
/// the second: no atomic on the shared words themselves, which every new connection on every
/// CPU would write.
#[inline(always)]
fn slot_sequences(index: u32, slots: SlotSelection) -> (u32, u32) {
    let read = |slot: u8| {
        // SAFETY: a map value, valid and aligned for the whole run.
        SLOT_WRITES.get_ptr(slot_writes_index(index, slot)).map_or(0, |v| unsafe { core::ptr::read_volatile(v) })
    };
    let candidate = if slots.candidate != SLOT_NONE { read(slots.candidate) } else { 0 };
    (read(slots.enforced), candidate)
}

/// The decision of a connection's forward packets under the endpoint's current config, and
/// whether it is settled. It is not when a slot was being rewritten during the lookups: then
/// the candidate is not compared (no shadow difference comes from a half-written slot) and the
/// decision is stored with a failing checksum, so the next packet judges afresh.
#[inline(always)]
pub(crate) fn judge<F: Family>(
    config: &EndpointConfig,
    version: u32,
    direction: u8,
    packet: &Packet<F::Addr>,
) -> (CtDecision, bool) {
    let epoch = NODE_STATE.get(NODE_STATE_EPOCH).copied().unwrap_or(0);
    // Branches, not indexing: the verifier rejects the pointer arithmetic LLVM makes of it.
    let slots = if epoch & 1 == 0 { config.by_epoch[0] } else { config.by_epoch[1] };
    let identity = remote_identity::<F>(direction, packet);
    // To a Service: judged after translation, by the backend (see `service`).
    let (enforced, candidate, settled) = if direction == DIRECTION_EGRESS && identity == IDENTITY_SERVICE {
        (SlotVerdict::new(VERDICT_ALLOW, COOKIE_DEFERRED), SlotVerdict::NONE, true)
    } else {
        slot_verdicts(config, slots, identity, direction, packet)
    };
    // TCP and UDP over IPv4 reach the proxy (HTTP, TLS, Kafka, DNS), and only while one runs:
    // otherwise a redirect fails closed. The proxy refuses what it cannot judge (HTTP, TLS or
    // Kafka over UDP). The host endpoint's connections never do: its L7 rules fail closed.
    let proxied = F::PROXIED
        && config.ifindex != HOST_ENDPOINT_IFINDEX
        && (packet.protocol == PROTO_TCP || packet.protocol == PROTO_UDP)
        && proxy_port() != 0;
    let (enforced, candidate) =
        if proxied { (enforced, candidate) } else { (unproxied(enforced), unproxied(candidate)) };
    let mut decision = CtDecision {
        identity,
        enforced,
        candidate: if settled { candidate } else { SlotVerdict::NONE },
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
fn unproxied(verdict: SlotVerdict) -> SlotVerdict {
    if verdict.verdict == VERDICT_REDIRECT { SlotVerdict::new(VERDICT_L7_UNSUPPORTED, verdict.cookie) } else { verdict }
}

#[inline(always)]
pub(crate) fn remote_identity<F: Family>(direction: u8, packet: &Packet<F::Addr>) -> u32 {
    let remote = if direction == DIRECTION_EGRESS { packet.daddr_be } else { packet.saddr_be };
    F::identity(remote).unwrap_or(F::WORLD)
}

/// The config and this CPU's counters of the endpoint attached to `ifindex`, in any mode.
#[inline(always)]
pub(crate) fn endpoint(ifindex: u32) -> Option<(EndpointConfig, &'static mut EndpointCounters)> {
    // SAFETY: copied out at once; the map does not recycle elements (no prealloc).
    let config = (unsafe { ENDPOINTS.get(ifindex) }).copied()?;
    // SAFETY: per-CPU value of this endpoint, only this CPU writes it, during this run.
    let counters = unsafe { &mut *COUNTERS.get_ptr_mut(config.index)? };
    Some((config, counters))
}

/// The enforced and candidate slots' verdicts for a packet (the candidate's is `VERDICT_NONE`
/// without one), and whether they are settled: `false` when userspace was rewriting either
/// slot in place during the lookups (a seqlock on `SLOT_WRITES`), and then a verdict may come
/// from a half-written slot and is not cached.
#[inline(always)]
pub(crate) fn slot_verdicts<A>(
    config: &EndpointConfig,
    slots: SlotSelection,
    identity: u32,
    direction: u8,
    packet: &Packet<A>,
) -> (SlotVerdict, SlotVerdict, bool) {
    let endpoint = config.endpoint;
    let shadowed = slots.candidate != SLOT_NONE;
    let before = slot_sequences(config.index, slots);
    // The cache and policy lookups below cannot move before the reading of the sequences.
    full_fence();
    let key = VerdictCacheKey {
        endpoint,
        enforced_generation: generation(config, slots.enforced),
        candidate_generation: if shadowed { generation(config, slots.candidate) } else { 0 },
        identity,
        dport: packet.dport,
        protocol: packet.protocol,
        direction,
    };
    let cache = VERDICT_CACHE.get_ptr_mut(key.index());
    let unwritten = (before.0 | before.1) & 1 == 0;
    if unwritten && let Some(entry) = cache {
        // SAFETY: an array value, valid for the whole run; copied out at once.
        let cached = unsafe { *entry };
        if cached.key == key && cached.check == cached.checksum() {
            return (cached.enforced, cached.candidate, true);
        }
    }
    let enforced = lookup_policy(endpoint, slots.enforced, identity, direction, packet);
    let candidate = if shadowed {
        lookup_policy(endpoint, slots.candidate, identity, direction, packet)
    } else {
        SlotVerdict::NONE
    };
    // The lookups above complete before the sequences are read again.
    full_fence();
    let after = slot_sequences(config.index, slots);
    let settled = unwritten && after == before;
    if settled && let Some(entry) = cache {
        let mut cached = CachedVerdicts { key, enforced, candidate, check: 0 };
        cached.check = cached.checksum();
        // SAFETY: an array value, valid for the whole run; a reader that sees it half-written
        // fails its checksum.
        unsafe { *entry = cached };
    }
    (enforced, candidate, settled)
}

#[inline(always)]
fn generation(config: &EndpointConfig, slot: u8) -> u32 {
    // Branches, not indexing: the verifier rejects the pointer arithmetic LLVM makes of it.
    if slot == SLOT_A { config.slot_generation[0] } else { config.slot_generation[1] }
}

#[inline(always)]
pub(crate) fn lookup_policy<A>(
    endpoint: u32,
    slot: u8,
    identity: u32,
    direction: u8,
    packet: &Packet<A>,
) -> SlotVerdict {
    let denied = SlotVerdict::new(VERDICT_DENY, COOKIE_NONE);
    // SAFETY: the inner map reference is only used for lookups during this run.
    let Some(policy) = (unsafe { POLICY_SLOTS.get(&SlotKey { endpoint, slot: slot as u32 }) }) else {
        return denied;
    };
    let mut key = Key::new(POLICY_FULL_PREFIX, PolicyMatch::packet(identity, direction, packet.protocol, packet.dport));
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
    SlotVerdict::new(chosen.verdict, chosen.cookie)
}
