//! Steering redirected connections to the node's L7 proxy, as Cilium's BPF TPROXY does: the
//! packet keeps its addresses, gets [`MARK_TO_PROXY`] (policy routing delivers it locally), and
//! a SYN is assigned to the proxy's transparent listener (`bpf_sk_assign`); the kernel finds
//! the connection's socket for every later packet by its addresses. A packet of a connection
//! the proxy does not hold goes to the listener too ([`Steer::Reset`]), which resets it. Every
//! UDP datagram (a DNS query) is assigned to the proxy's UDP socket, which reads where it was
//! sent.
//!
//! `bpf_sk_assign` works only at tc ingress. So:
//! - egress (a pod's connection out, judged at its host-side veth's ingress, `from_endpoint`)
//!   is assigned there;
//! - ingress (a connection to a pod from anywhere, judged at the host-side veth's egress,
//!   `to_endpoint`) is handed back to that veth's ingress, addressed to the host, where
//!   `from_endpoint` finds the mark and assigns it.
//!
//! The proxy's upstream connections carry [`MARK_FROM_PROXY`]: a redirect passes them (their
//! requests were judged), and their conntrack entries steer the replies back to the proxy.
use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, BPF_F_INGRESS, TC_ACT_OK, TC_ACT_SHOT, bpf_sock_tuple},
    helpers::{
        bpf_ktime_get_coarse_ns, bpf_redirect, bpf_sk_assign, bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release,
    },
    programs::TcContext,
};
use palisade_common::*;

use crate::{
    conntrack::{CT_TICK_SHIFT, TCP_ACK, TCP_SYN, connection, lifetime, refresh},
    family::V4,
    maps::{CONNTRACK, NODE_STATE},
    packet::{ETH_HLEN, ETH_P_IP, Packet, header, mark, parse},
};

/// The proxy listener's port on 127.0.0.1; 0 when no proxy runs.
#[inline(always)]
pub(crate) fn proxy_port() -> u16 {
    NODE_STATE.get(NODE_STATE_PROXY_PORT).map_or(0, |&port| port as u16)
}

/// Where a packet that passes goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Steer {
    /// Where it is addressed.
    No,
    /// To the proxy's socket for its connection (or the listener, for a SYN).
    Proxy,
    /// To the proxy's listener, which resets the connection: one the proxy does not hold,
    /// whose requests the enforced policy wants judged. Without a socket the node's stack
    /// could not answer from the destination's address, and the connection would hang.
    Reset,
}

impl Steer {
    /// As the decision of a connection's packet says, on its own.
    #[inline(always)]
    pub(crate) fn by(decision: &CtDecision) -> Steer {
        if decision.steers() { Steer::Proxy } else { Steer::No }
    }
}

/// Marks the packet for the proxy: policy routing delivers it locally.
#[inline(always)]
pub(crate) fn mark_to_proxy(ctx: &TcContext, steer: Steer) {
    let reset = if steer == Steer::Reset { MARK_PROXY_RESET } else { 0 };
    // SAFETY: the context pointer is valid for the whole program run; tc programs may write
    // the mark.
    unsafe {
        let skb = ctx.skb.skb;
        (*skb).mark = ((*skb).mark & !(PROXY_MARK_MASK | MARK_PROXY_RESET)) | MARK_TO_PROXY | reset;
    }
}

/// Whether the packet comes from one of the proxy's upstream connections.
#[inline(always)]
pub(crate) fn from_proxy(ctx: &TcContext) -> bool {
    mark(ctx) & PROXY_MARK_MASK == MARK_FROM_PROXY
}

/// Steers a packet of a redirected connection to the proxy (`steer` says how): at tc ingress
/// (`at_ingress`) directly, at tc egress through the interface's ingress.
#[inline(always)]
pub(crate) fn steer(ctx: &TcContext, steer: Steer, at_ingress: bool) -> i32 {
    mark_to_proxy(ctx, steer);
    if at_ingress {
        return assign_to_proxy(ctx);
    }
    // The host side's own address is the source of what it sends: made the destination too,
    // the stack takes the packet on ingress as addressed to the host, and routes it by its mark.
    let Some(host_side) = header::<[u8; 6]>(ctx, 6) else {
        return TC_ACT_SHOT;
    };
    if ctx.store(0, &host_side, 0).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: the context pointer is valid for the whole program run; a helper call with plain
    // arguments.
    unsafe { bpf_redirect((*ctx.skb.skb).ifindex, BPF_F_INGRESS as u64) as i32 }
}

/// Assigns a packet for the proxy at tc ingress: one the hook steers itself, or one an egress
/// hook handed back (it carries [`MARK_TO_PROXY`]; a pod's own packets never do: crossing into
/// the node's namespace clears the mark). Its protocol and TCP flags are read afresh: kept
/// from the judgement, LLVM spills an undefined value the verifier rejects. A function of its
/// own (a BPF subprogram): inlined into `decide`, LLVM spills another undefined value there.
#[inline(never)]
pub(crate) fn assign_to_proxy(ctx: &TcContext) -> i32 {
    let Some(ip) = header::<[u8; 10]>(ctx, ETH_HLEN) else {
        return TC_ACT_SHOT;
    };
    if ip[9] == PROTO_UDP {
        return assign(ctx, PROTO_UDP);
    }
    let l4 = ETH_HLEN + ((ip[0] & 0x0f) as usize) * 4;
    // Bounded for the verifier: an IPv4 header is at most 60 bytes.
    if l4 > ETH_HLEN + 60 {
        return TC_ACT_SHOT;
    }
    match header::<[u8; 14]>(ctx, l4) {
        // A connection's first SYN goes to the listener, and so does a packet to reset; later
        // packets pass to the socket their addresses name.
        Some(tcp) if tcp[13] & (TCP_SYN | TCP_ACK) == TCP_SYN => assign(ctx, PROTO_TCP),
        Some(_) if mark(ctx) & MARK_PROXY_RESET != 0 => assign(ctx, PROTO_TCP),
        Some(_) => TC_ACT_OK,
        None => TC_ACT_SHOT,
    }
}

/// Assigns the packet to the proxy's socket for `protocol`. Without one, the packet is
/// dropped: fail closed.
#[inline(always)]
fn assign(ctx: &TcContext, protocol: u8) -> i32 {
    let port = proxy_port();
    if port == 0 {
        return TC_ACT_SHOT;
    }
    // SAFETY: a zeroed plain C struct.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // The IPv4 member of the union: the lookup reads only its 12 bytes.
    tuple.__bindgen_anon_1.ipv4.daddr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
    tuple.__bindgen_anon_1.ipv4.dport = port.to_be();
    let size = 12;
    // SAFETY: the context and a tuple of `size` bytes; the socket is released below.
    let socket = unsafe {
        if protocol == PROTO_UDP {
            bpf_sk_lookup_udp(ctx.skb.skb as *mut _, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0)
        } else {
            bpf_sk_lookup_tcp(ctx.skb.skb as *mut _, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0)
        }
    };
    if socket.is_null() {
        return TC_ACT_SHOT;
    }
    // SAFETY: a socket the lookup returned, released once after its assignment.
    let assigned = unsafe {
        let assigned = bpf_sk_assign(ctx.skb.skb as *mut _, socket as *mut _, 0);
        bpf_sk_release(socket as *mut _);
        assigned
    };
    if assigned == 0 { TC_ACT_OK } else { TC_ACT_SHOT }
}

/// A TCP or UDP IPv4 packet of the node interface the program runs on, and its connection
/// there (the proxy's upstream connections are IPv4, see [`crate::family::Family::PROXIED`]).
#[inline(always)]
fn on_network(ctx: &TcContext) -> Option<(Packet<u32>, CtKey, u8, u32)> {
    if header::<u16>(ctx, 12).map(u16::from_be) != Some(ETH_P_IP) {
        return None;
    }
    let packet = parse(ctx, 0)?;
    if packet.protocol != PROTO_TCP && packet.protocol != PROTO_UDP {
        return None;
    }
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let (connection, sender) = connection::<V4>(ifindex, &packet);
    // SAFETY: a helper call without arguments.
    let now = (unsafe { bpf_ktime_get_coarse_ns() } >> CT_TICK_SHIFT) as u32;
    Some((packet, connection, sender, now))
}

/// Tracks a packet of one of the proxy's upstream connections leaving the node through a node
/// interface, under that interface: an entry no endpoint's hook looks up.
#[inline(always)]
pub(crate) fn track_upstream(ctx: &TcContext) {
    let Some((packet, connection, sender, now)) = on_network(ctx) else {
        return;
    };
    if let Some(entry) = CONNTRACK.get_ptr_mut(&connection) {
        // SAFETY: the LRU element stays valid during this run; fields are read once each.
        let (proxy, closing, expires) = unsafe { ((*entry).proxy, (*entry).closing, (*entry).expires) };
        if proxy == CT_PROXY_UPSTREAM && expires > now {
            refresh(entry, closing, expires, &packet, now);
            return;
        }
    }
    let entry = CtEntry {
        opened_by: sender,
        closing: 0,
        denied: 0,
        proxy: CT_PROXY_UPSTREAM,
        expires: now.wrapping_add(lifetime(0, &packet)),
        // SAFETY: a plain C struct; no decision is cached for a connection no policy judges here.
        decision: unsafe { core::mem::zeroed() },
    };
    // A full table evicts its oldest entry (LRU): nothing to do when the insert fails.
    let _ = CONNTRACK.insert(&connection, &entry, 0);
}

/// Marks a reply to a tracked upstream connection for the proxy: policy routing delivers it
/// to the node's stack, where the kernel finds the upstream socket by its addresses.
#[inline(always)]
pub(crate) fn steer_upstream_reply(ctx: &TcContext) {
    if proxy_port() == 0 {
        return;
    }
    let Some((packet, connection, sender, now)) = on_network(ctx) else {
        return;
    };
    let Some(entry) = CONNTRACK.get_ptr_mut(&connection) else {
        return;
    };
    // SAFETY: the LRU element stays valid during this run; fields are read once each.
    let (proxy, opened_by, closing, expires) =
        unsafe { ((*entry).proxy, (*entry).opened_by, (*entry).closing, (*entry).expires) };
    if proxy == CT_PROXY_UPSTREAM && opened_by != sender && expires > now {
        refresh(entry, closing, expires, &packet, now);
        mark_to_proxy(ctx, Steer::Proxy);
    }
}
