//! Policy verdicts: the endpoint's config, the peer's identity from the ipcache, and the
//! enforced and candidate slots' verdicts (Cilium's `__policy_can_access`), read under the
//! slots' write sequences so that nothing half-written is compared.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{bindings::BPF_ANY, btf_maps::lpm_trie::Key};
use palisade_common::*;

use crate::{maps::*, packet::Packet};

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

/// A fully ordered read: a fetch-add of 0 on the value itself.
#[inline(always)]
fn ordered_read(value: *mut u32) -> u32 {
    // SAFETY: a map value, valid and 4-byte aligned for the whole run.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(value, 0) }
}

/// The decision of a connection's forward packets under the endpoint's current config, and
/// whether it is settled. It is not when a slot was being rewritten during the lookups: then
/// the candidate is not compared (no shadow difference comes from a half-written slot) and the
/// decision is stored with a failing checksum, so the next packet judges afresh.
#[inline(always)]
pub(crate) fn judge(config: &EndpointConfig, version: u32, direction: u8, packet: &Packet) -> (CtDecision, bool) {
    let epoch = NODE_STATE.get(NODE_STATE_EPOCH).copied().unwrap_or(0);
    // Branches, not indexing: the verifier rejects the pointer arithmetic LLVM makes of it.
    let slots = if epoch & 1 == 0 { config.by_epoch[0] } else { config.by_epoch[1] };
    let identity = remote_identity(direction, packet);
    let none = SlotVerdict { verdict: VERDICT_NONE, _pad: [0; 3], cookie: COOKIE_NONE };
    // To a Service: judged after translation, by the backend (see `service`).
    let deferred = direction == DIRECTION_EGRESS && identity == IDENTITY_SERVICE;
    let (enforced, enforced_settled) = if deferred {
        (SlotVerdict { verdict: VERDICT_ALLOW, _pad: [0; 3], cookie: COOKIE_DEFERRED }, true)
    } else {
        slot_verdict(config, slots.enforced, identity, direction, packet)
    };
    let (candidate, settled) = if slots.candidate == SLOT_NONE || deferred {
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
pub(crate) fn remote_identity(direction: u8, packet: &Packet) -> u32 {
    let remote_be = if direction == DIRECTION_EGRESS { packet.daddr_be } else { packet.saddr_be };
    // LPM nodes are freed after an RCU grace period, so the identity is read safely.
    IPCACHE.get(&Key::new(32, remote_be)).copied().unwrap_or(IDENTITY_WORLD)
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

/// The verdict of `slot` for a packet, and whether it is settled: `false` when userspace was
/// rewriting the slot in place during the lookups (a seqlock on `SLOT_WRITES`), and then the
/// verdict may come from a half-written slot and is not cached.
#[inline(always)]
pub(crate) fn slot_verdict(
    config: &EndpointConfig,
    slot: u8,
    identity: u32,
    direction: u8,
    packet: &Packet,
) -> (SlotVerdict, bool) {
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
pub(crate) fn lookup_policy(endpoint: u32, slot: u8, identity: u32, direction: u8, packet: &Packet) -> SlotVerdict {
    let denied = SlotVerdict { verdict: VERDICT_DENY, _pad: [0; 3], cookie: COOKIE_NONE };
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
    SlotVerdict { verdict: chosen.verdict, _pad: [0; 3], cookie: chosen.cookie }
}
