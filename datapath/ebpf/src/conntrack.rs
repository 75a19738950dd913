//! Connection tracking: replies pass, forward packets are judged (from a cached decision while
//! the node state version holds), a deny turns the entry into a tombstone, and connections that
//! are only counted and passed take the fast path.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_jiffies64,
    programs::TcContext,
};
use palisade_common::*;

use crate::{
    family::Family,
    packet::*,
    policy::judge,
    proxy::{Steer, from_proxy, mark_to_proxy},
    record::{apply, refuse},
};

/// What the program knows of a packet besides its headers.
pub(crate) struct Seen<A> {
    pub(crate) connection: CtKey<A>,
    /// The side (`CT_OPENED_BY_*`) that sent it.
    pub(crate) sender: u8,
    /// The side that is the endpoint's own address, when known.
    pub(crate) local_side: Option<u8>,
    pub(crate) version: u32,
    /// Coarse time in conntrack ticks.
    pub(crate) now: u32,
    pub(crate) direction: u8,
}

/// A packet of a tracked connection: a reply passes (unless the connection was denied), a
/// forward packet is judged, from the cached decision while the node state version holds.
#[inline(always)]
pub(crate) fn established<F: Family>(
    ctx: &TcContext,
    entry: *mut CtEntry,
    config: &EndpointConfig,
    counters: &mut EndpointCounters,
    packet: &Packet<F::Addr>,
    seen: &Seen<F::Addr>,
) -> i32 {
    // SAFETY: the LRU element stays valid during this run; the fields are read once each.
    let (opened_by, closing, denied, expires, cached) =
        unsafe { ((*entry).opened_by, (*entry).closing, (*entry).denied, (*entry).expires, (*entry).decision) };
    // SAFETY: as above.
    let proxy = unsafe { (*entry).proxy };
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
        if proxy == CT_PROXY_UPSTREAM {
            // A reply to the proxy's upstream connection goes to the proxy's socket.
            mark_to_proxy(ctx, Steer::Proxy);
        } else if current && proxy == CT_PROXY_NONE {
            admit_fast::<F>(&seen.connection, opened_by, seen.local_side, (closing, expires), seen.now, &cached);
        }
        return TC_ACT_OK;
    }
    let decision = if current { cached } else { judge::<F>(config, seen.version, seen.direction, packet).0 };
    // The addresses may be another socket's by now: the proxy picks its upstream sockets' ports
    // in the node's namespace, which knows nothing of the pods' ports, so an upstream socket may
    // take a pod's earlier flow, and a pod an earlier upstream socket's, while the entry lives.
    // The replies go back to whoever sends the forward packets: the proxy, or the pod (unless
    // the pod's are steered to the proxy: then only the proxy's upstream socket is answered).
    // A TCP connection opened anew on the addresses takes its part in the proxy anew.
    let reopened = packet.protocol == PROTO_TCP && packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let proxy_now = if reopened || from_proxy(ctx) {
        opened_part(ctx, &decision)
    } else if proxy == CT_PROXY_UPSTREAM && !decision.steers() {
        CT_PROXY_NONE
    } else {
        proxy
    };
    if proxy_now != proxy {
        // SAFETY: as above.
        unsafe { (*entry).proxy = proxy_now };
        // Its replies must reach conntrack to be steered.
        forget_fast::<F>(&seen.connection);
    }
    let proxy = proxy_now;
    if !decision.passes() {
        // A deny ends the connection: it leaves the fast path, and its entry turns into a short
        // tombstone under which the other side's packets are dropped rather than passed as
        // replies (or, with the entry simply gone, let in as a connection of their own by an
        // open egress policy). Every forward packet is judged again, so an allow revives it.
        forget_fast::<F>(&seen.connection);
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
        if proxy == CT_PROXY_NONE {
            admit_fast::<F>(&seen.connection, opened_by, seen.local_side, (closing, expires), seen.now, &decision);
        }
    }
    apply::<F>(ctx, &decision, counters, seen.direction, packet, false, steering(&decision, proxy, packet))
}

/// Where a packet of a tracked connection goes if it passes. Each UDP datagram is a query of
/// its own: as its decision says. A TCP connection keeps to how it opened (see
/// [`CT_PROXY_STEERED`]): one steered then stays with the proxy that holds it; one opened past
/// the proxy stays past it while only a candidate redirects (staging a candidate changes no
/// traffic), and once the enforced policy redirects it, it is reset (fail closed, at once) and
/// the client reconnects through the proxy.
#[inline(always)]
fn steering<A>(decision: &CtDecision, proxy: u8, packet: &Packet<A>) -> Steer {
    match (packet.protocol, proxy) {
        (PROTO_TCP, CT_PROXY_STEERED) => Steer::Proxy,
        // A pod's packet on addresses an upstream socket holds: as its decision says.
        (PROTO_TCP, CT_PROXY_UPSTREAM) => Steer::by(decision),
        (PROTO_TCP, CT_PROXY_NONE) if decision.enforced.verdict == VERDICT_REDIRECT => Steer::Reset,
        (PROTO_TCP, _) => Steer::No,
        _ => Steer::by(decision),
    }
}

/// A connection's part in the proxy as it opens (`CT_PROXY_*`): the upstream's when the proxy
/// sends it, steered when its decision redirects.
#[inline(always)]
fn opened_part(ctx: &TcContext, decision: &CtDecision) -> u8 {
    if from_proxy(ctx) {
        CT_PROXY_UPSTREAM
    } else if decision.steers() {
        CT_PROXY_STEERED
    } else {
        CT_PROXY_NONE
    }
}

/// The first packet of a connection: judged, and tracked when it passes.
#[inline(always)]
pub(crate) fn opening<F: Family>(
    ctx: &TcContext,
    config: &EndpointConfig,
    counters: &mut EndpointCounters,
    packet: &Packet<F::Addr>,
    seen: &Seen<F::Addr>,
) -> i32 {
    counters.connections += 1;
    let (decision, _) = judge::<F>(config, seen.version, seen.direction, packet);
    let proxy = opened_part(ctx, &decision);
    if decision.passes() {
        let expires = seen.now.wrapping_add(lifetime(0, packet));
        let entry = CtEntry { opened_by: seen.sender, closing: 0, denied: 0, proxy, expires, decision };
        let inserted = F::track(&seen.connection, &entry);
        if inserted && proxy == CT_PROXY_NONE {
            admit_fast::<F>(&seen.connection, seen.sender, seen.local_side, (0, expires), seen.now, &decision);
        } else if proxy != CT_PROXY_NONE {
            // An earlier flow on these addresses may hold the fast path: replies must reach
            // conntrack to be steered.
            forget_fast::<F>(&seen.connection);
        }
    }
    apply::<F>(ctx, &decision, counters, seen.direction, packet, true, Steer::by(&decision))
}

/// A packet of a connection in the fast-flow cache: counted and passed. `None` when the cache
/// does not hold the connection under the current version (or the entry lapsed), or when the
/// packet does not come from the side its hook implies (a spoofed source never passes here).
#[inline(always)]
pub(crate) fn fast_path<F: Family>(
    connection: &CtKey<F::Addr>,
    sender: u8,
    direction: u8,
    version: u32,
) -> Option<i32> {
    let flow = *F::fast_flows().get(fast_flow_index(connection))?;
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
    let counters = unsafe { &mut *crate::maps::COUNTERS.get_ptr_mut(flow.index)? };
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
pub(crate) fn admit_fast<F: Family>(
    connection: &CtKey<F::Addr>,
    opened_by: u8,
    local_side: Option<u8>,
    (closing, expires): (u8, u32),
    now: u32,
    decision: &CtDecision,
) {
    let Some(local_side) = local_side else {
        return;
    };
    // A connection to a Service defers every packet's egress decision, which the fast path
    // would not.
    // Nor does a connection through the L7 proxy, whose every packet is steered.
    if decision.identity == IDENTITY_SERVICE
        || decision.reported()
        || decision.steers()
        || closing != 0
        || expires < now + CT_FAST_MARGIN_TICKS
    {
        return;
    }
    let Some(slot) = F::fast_flows().get_ptr_mut(fast_flow_index(connection)) else {
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
    // Built on the stack and copied whole: written field by field in place and read back for
    // its checksum, a new connection cost about 40 ns more. A racing reader that sees it half
    // written fails the checksum.
    // SAFETY: the array element is valid for this run.
    unsafe { *slot = flow };
}

/// Takes a connection out of the fast-flow cache.
#[inline(always)]
pub(crate) fn forget_fast<F: Family>(connection: &CtKey<F::Addr>) {
    let Some(slot) = F::fast_flows().get_ptr_mut(fast_flow_index(connection)) else {
        return;
    };
    // SAFETY: the array element is valid for this run; a wrong checksum retires the entry.
    unsafe {
        if (*slot).connection == *connection {
            (*slot).check = !(*slot).check;
        }
    }
}

/// An ICMP error about one of this endpoint's tracked connections passes as its reply; one that
/// relates to none cannot be judged.
#[inline(always)]
pub(crate) fn related<F: Family>(
    config: &EndpointConfig,
    counters: &mut EndpointCounters,
    ifindex: u32,
    mut original: CtKey<F::Addr>,
    now: u32,
    direction: u8,
    packet: &Packet<F::Addr>,
) -> i32 {
    original.ifindex = ifindex;
    // SAFETY: the LRU element stays valid during this run; fields are read once.
    let tracked = F::conntrack().get_ptr(&original).is_some_and(|entry| unsafe {
        (*entry).expires > now && (*entry).denied == 0 && (*entry).decision.endpoint == config.endpoint
    });
    if tracked {
        counters.replies += 1;
        return TC_ACT_OK;
    }
    refuse::<F>(config, counters, direction, DROP_ICMP_UNRELATED, Some(packet))
}

/// Conntrack lifetimes after the last packet (Cilium's defaults), in ticks of 2^30 ns.
pub(crate) const CT_TICK_SHIFT: u32 = 30;

pub(crate) const CT_TCP_TICKS: u32 = (21600 * 1_000_000_000u64 >> CT_TICK_SHIFT) as u32;

pub(crate) const CT_OTHER_TICKS: u32 = (60 * 1_000_000_000u64 >> CT_TICK_SHIFT) as u32;

pub(crate) const CT_CLOSING_TICKS: u32 = (10 * 1_000_000_000u64 >> CT_TICK_SHIFT) as u32;

/// Extend a live entry at most this often, to keep writes off most packets.
pub(crate) const CT_REFRESH_TICKS: u32 = 4;

/// A fast-flow entry serves at most this many jiffies (0.25 s at HZ=1000, 2.5 s at HZ=100)
/// before the conntrack path sees the connection again and refreshes it...
pub(crate) const FAST_FLOW_JIFFIES: u64 = 256;

/// ...and is only written while the conntrack entry has more than 3 s left, so the fast path
/// never serves a connection past its expiry, whatever the kernel's HZ.
pub(crate) const CT_FAST_MARGIN_TICKS: u32 = 3;

pub(crate) const TCP_FIN: u8 = 0x01;

pub(crate) const TCP_SYN: u8 = 0x02;

pub(crate) const TCP_RST: u8 = 0x04;

pub(crate) const TCP_ACK: u8 = 0x10;

#[inline(always)]
pub(crate) fn lifetime<A>(closing: u8, packet: &Packet<A>) -> u32 {
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
pub(crate) fn refresh<A>(ptr: *mut CtEntry, closing: u8, expires: u32, packet: &Packet<A>, now: u32) -> (u8, u32) {
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
pub(crate) fn connection<F: Family>(ifindex: u32, packet: &Packet<F::Addr>) -> (CtKey<F::Addr>, u8) {
    let (sport, dport) = if packet.protocol != F::ICMP {
        (packet.sport, packet.dport)
    } else if packet.dport == F::ECHO_REQUEST as u16 {
        // An echo reply answers the request with the same id, sent from the requester's "port".
        (packet.sport, 0)
    } else if packet.dport == F::ECHO_REPLY as u16 {
        (0, packet.sport)
    } else {
        (0, 0)
    };
    connection_key(ifindex, packet.protocol, (packet.saddr_be, sport), (packet.daddr_be, dport))
}

/// The connection between `sender` and `receiver` (address, port) on `ifindex`, keyed the same
/// from both sides, and the side (`CT_OPENED_BY_*`) that sent.
#[inline(always)]
pub(crate) fn connection_key<A: Address>(
    ifindex: u32,
    protocol: u8,
    sender: (A, u16),
    receiver: (A, u16),
) -> (CtKey<A>, u8) {
    let sender_is_lo = sender.0.precedes(receiver.0) || (sender.0 == receiver.0 && sender.1 <= receiver.1);
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
