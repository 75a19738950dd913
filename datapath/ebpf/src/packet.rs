//! Reading a packet: Ethernet and IPv4 or IPv6 headers (IPv6 extension headers walked), ports
//! or ICMP type, the connection an ICMP error quotes, and later fragments through their first
//! fragment's ports.
use aya_ebpf::{bindings::BPF_ANY, programs::TcContext};
use palisade_common::*;

use crate::{conntrack::connection_key, family::Family, maps::*};

/// A packet of one family (`A`: its address, see [`Family`]).
pub(crate) struct Packet<A> {
    pub(crate) saddr_be: A,
    pub(crate) daddr_be: A,
    pub(crate) protocol: u8,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    /// Where the packet an ICMP error quotes starts (0: not an error): its connection is read
    /// only when the error is judged ([`Family::quoted`]), to keep it off the stack.
    pub(crate) quoted: u16,
    pub(crate) tcp_flags: u8,
    /// Part of a connection. ICMP other than echo is not: it is judged per packet by its type.
    pub(crate) tracked: bool,
    /// Why the packet cannot be judged (`DROP_*`), `DROP_NONE` when it can.
    pub(crate) unjudged: u8,
    /// The endpoint (counter index + 1) whose egress to a Service was deferred to this hook; 0
    /// when none was (see `service`).
    pub(crate) deferred_from: u16,
}

pub(crate) const ETH_HLEN: usize = 14;

pub(crate) const ETH_P_IP: u16 = 0x0800;

pub(crate) const ETH_P_ARP: u16 = 0x0806;

pub(crate) const ETH_P_IPV6: u16 = 0x86dd;

/// ICMPv6 multicast listener query, report and done (130-132), neighbor discovery (router
/// solicitation 133 up to redirect 137) and MLDv2 reports (143): the link's own signalling.
pub(crate) const MLD_QUERY: u8 = 130;

pub(crate) const ND_REDIRECT: u8 = 137;

pub(crate) const MLD2_REPORT: u8 = 143;

pub(crate) const ICMP_ECHO_REPLY: u8 = 0;

pub(crate) const ICMP_DEST_UNREACH: u8 = 3;

pub(crate) const ICMP_ECHO: u8 = 8;

pub(crate) const ICMP_TIME_EXCEEDED: u8 = 11;

pub(crate) const ICMP_PARAMETER_PROBLEM: u8 = 12;

pub(crate) const ICMPV6_DEST_UNREACH: u8 = 1;

pub(crate) const ICMPV6_PARAMETER_PROBLEM: u8 = 4;

pub(crate) const ICMPV6_ECHO_REQUEST: u8 = 128;

pub(crate) const ICMPV6_ECHO_REPLY: u8 = 129;

/// IPv6 extension headers the program walks to reach the upper layer (RFC 8200 4.1).
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTIONS: u8 = 60;

/// How many extension headers the program walks (Cilium's IPV6_MAX_HEADERS): a packet with
/// more cannot be judged, and is dropped as `ipv6-ext-limit`.
const IPV6_MAX_EXT_HEADERS: usize = 4;

/// The furthest an upper-layer header may start: bounds the offsets the verifier sees.
const IPV6_MAX_L4_OFFSET: usize = 512;

const IPV6_HLEN: usize = 40;

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Ipv4Header {
    pub(crate) version_ihl: u8,
    pub(crate) tos: u8,
    pub(crate) total_len: u16,
    pub(crate) id: u16,
    pub(crate) frag_off_be: u16,
    pub(crate) ttl: u8,
    pub(crate) protocol: u8,
    pub(crate) checksum: u16,
    pub(crate) saddr_be: u32,
    pub(crate) daddr_be: u32,
}

/// Direct packet access: much cheaper than a `bpf_skb_load_bytes` call per field.
#[inline(always)]
pub(crate) fn linear<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
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

/// The packet's mark: where the Service deferral and the proxy's steering travel.
#[inline(always)]
pub(crate) fn mark(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { (*ctx.skb.skb).mark }
}

/// Headers are nearly always in the linear area. Pull only when one is not: pulling a cloned
/// skb (every TCP transmit) copies it.
#[inline(always)]
pub(crate) fn header<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
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

/// The packet's addresses, protocol and ports; `None` without a readable IPv4 header. A packet
/// that cannot be judged says why in `unjudged`.
#[inline(always)]
pub(crate) fn parse(ctx: &TcContext, deferred_from: u16) -> Option<Packet<u32>> {
    let ip: Ipv4Header = header(ctx, ETH_HLEN)?;
    let header_len = ((ip.version_ihl & 0x0f) as usize) * 4;
    let mut packet = Packet {
        saddr_be: ip.saddr_be,
        daddr_be: ip.daddr_be,
        protocol: ip.protocol,
        sport: 0,
        dport: 0,
        quoted: 0,
        tcp_flags: 0,
        tracked: true,
        unjudged: DROP_NONE,
        deferred_from,
    };
    if let Err(reason) = parse_l4(ctx, &ip, header_len, &mut packet) {
        packet.unjudged = reason;
    }
    Some(packet)
}

#[inline(always)]
fn parse_l4(ctx: &TcContext, ip: &Ipv4Header, header_len: usize, packet: &mut Packet<u32>) -> Result<(), u8> {
    if ip.version_ihl >> 4 != 4 || header_len < size_of::<Ipv4Header>() {
        return Err(DROP_MALFORMED);
    }
    let l4 = ETH_HLEN + header_len;
    let fragment = u16::from_be(ip.frag_off_be);
    let fragment_key = FragmentKey::new(ip.saddr_be, ip.daddr_be, ip.id as u32, ip.protocol);
    // A later fragment has no L4 header: it is judged with the ports its first fragment carried.
    if fragment & IP_OFFSET != 0 {
        return later_fragment::<crate::family::V4>(&fragment_key, packet);
    }
    upper_layer::<crate::family::V4>(ctx, l4, packet)?;
    if fragment & IP_MORE_FRAGMENTS != 0 {
        first_fragment::<crate::family::V4>(&fragment_key, packet);
    }
    Ok(())
}

/// The upper-layer header at `offset`, of `packet.protocol`: the ports and TCP flags, or the
/// ICMP type (the policy "port" of ICMP) with an echo's id standing in for a port in the
/// conntrack; an ICMP error's quoted packet is located, to be read when it is judged.
#[inline(always)]
fn upper_layer<F: Family>(ctx: &TcContext, offset: usize, packet: &mut Packet<F::Addr>) -> Result<(), u8> {
    match packet.protocol {
        // One read per header, so one bounds check covers every field: LLVM reuses the packet
        // end of a first check through a 32-bit move the verifier cannot follow.
        PROTO_TCP => {
            let tcp: [u8; 14] = header(ctx, offset).ok_or(DROP_MALFORMED)?;
            packet.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
            packet.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
            packet.tcp_flags = tcp[13];
        }
        PROTO_UDP | PROTO_SCTP => {
            let ports: [u8; 4] = header(ctx, offset).ok_or(DROP_MALFORMED)?;
            packet.sport = u16::from_be_bytes([ports[0], ports[1]]);
            packet.dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
        protocol if protocol == F::ICMP => {
            let icmp: [u8; 8] = header(ctx, offset).ok_or(DROP_MALFORMED)?;
            packet.dport = icmp[0] as u16;
            if F::is_echo(icmp[0]) {
                packet.sport = u16::from_be_bytes([icmp[4], icmp[5]]);
            } else if F::is_error(icmp[0]) {
                packet.quoted = (offset + 8) as u16;
            } else {
                packet.tracked = false;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A later fragment has no L4 header: it is judged with the ports its first fragment carried.
#[inline(always)]
fn later_fragment<F: Family>(key: &FragmentKey<F::Addr>, packet: &mut Packet<F::Addr>) -> Result<(), u8> {
    // SAFETY: a 4-byte value copied out at once.
    let ports = (unsafe { F::fragments().get(key) }).copied().ok_or(DROP_FRAGMENT_UNKNOWN)?;
    (packet.sport, packet.dport) = (ports.sport, ports.dport);
    packet.tracked = packet.protocol != F::ICMP || F::is_echo(ports.dport as u8);
    Ok(())
}

/// Remembers the ports of a first fragment for the datagram's later ones.
#[inline(always)]
fn first_fragment<F: Family>(key: &FragmentKey<F::Addr>, packet: &Packet<F::Addr>) {
    let ports = Ports { sport: packet.sport, dport: packet.dport };
    let _ = F::fragments().insert(key, &ports, BPF_ANY as u64);
}

/// The IPv6 header up to the addresses: version, next header and the addresses.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Ipv6Header {
    pub(crate) version_class_flow: u32,
    pub(crate) payload_len: u16,
    pub(crate) next_header: u8,
    pub(crate) hop_limit: u8,
    pub(crate) saddr: Ipv6Words,
    pub(crate) daddr: Ipv6Words,
}

/// Reads an IPv6 packet's addresses, upper-layer protocol and ports, past its extension
/// headers, into `packet`; false without a readable IPv6 header. A packet that cannot be judged
/// says why in `unjudged`.
#[inline(always)]
pub(crate) fn parse6(ctx: &TcContext, deferred_from: u16, packet: &mut Packet<Ipv6Words>) -> bool {
    let Some(ip) = header::<Ipv6Header>(ctx, ETH_HLEN) else {
        return false;
    };
    packet.saddr_be = ip.saddr;
    packet.daddr_be = ip.daddr;
    packet.protocol = ip.next_header;
    packet.sport = 0;
    packet.dport = 0;
    packet.quoted = 0;
    packet.tcp_flags = 0;
    packet.tracked = true;
    packet.unjudged = DROP_NONE;
    packet.deferred_from = deferred_from;
    if let Err(reason) = parse6_l4(ctx, &ip, packet) {
        packet.unjudged = reason;
    }
    true
}

#[inline(always)]
fn parse6_l4(ctx: &TcContext, ip: &Ipv6Header, packet: &mut Packet<Ipv6Words>) -> Result<(), u8> {
    if u32::from_be(ip.version_class_flow) >> 28 != 6 {
        return Err(DROP_MALFORMED);
    }
    let mut next = ip.next_header;
    let mut offset = ETH_HLEN + IPV6_HLEN;
    // The datagram a first fragment starts.
    let mut first_fragment_of = None;
    let mut walked = 0;
    while matches!(next, IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTIONS | IPV6_AUTH | IPV6_FRAGMENT) {
        if walked == IPV6_MAX_EXT_HEADERS {
            return Err(DROP_IPV6_EXT_LIMIT);
        }
        walked += 1;
        // Every extension header starts with the next header and (but a fragment header) its
        // length; one read covers the fragment header whole.
        let ext: [u8; 8] = header(ctx, offset).ok_or(DROP_MALFORMED)?;
        let length = if next == IPV6_FRAGMENT {
            let fragment = u16::from_be_bytes([ext[2], ext[3]]);
            let id = u32::from_ne_bytes([ext[4], ext[5], ext[6], ext[7]]);
            let key = FragmentKey::new(ip.saddr, ip.daddr, id, ext[0]);
            if fragment >> 3 != 0 {
                packet.protocol = ext[0];
                return later_fragment::<crate::family::V6>(&key, packet);
            }
            if fragment & 1 != 0 {
                first_fragment_of = Some(key);
            }
            8
        } else if next == IPV6_AUTH {
            (ext[1] as usize + 2) * 4
        } else {
            (ext[1] as usize + 1) * 8
        };
        next = ext[0];
        offset += length;
        if offset > IPV6_MAX_L4_OFFSET {
            return Err(DROP_IPV6_EXT_LIMIT);
        }
    }
    packet.protocol = next;
    upper_layer::<crate::family::V6>(ctx, offset, packet)?;
    if let Some(key) = first_fragment_of {
        first_fragment::<crate::family::V6>(&key, packet);
    }
    Ok(())
}

/// The connection an ICMPv6 error quotes: the original packet (its IPv6 header, then its upper
/// layer: a quoted packet with extension headers relates to nothing), as its sender sent it.
#[inline(always)]
pub(crate) fn parse_icmp6_error(ctx: &TcContext, inner: usize) -> Result<CtKey<Ipv6Words>, u8> {
    let malformed = |_| DROP_MALFORMED;
    let ip: Ipv6Header = ctx.load(inner).map_err(malformed)?;
    let l4 = inner + IPV6_HLEN;
    let port = |offset: usize| ctx.load::<u16>(offset).map(u16::from_be).map_err(malformed);
    let (sport, dport) = match ip.next_header {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => (port(l4)?, port(l4 + 2)?),
        PROTO_ICMPV6 if ctx.load::<u8>(l4).map_err(malformed)? == ICMPV6_ECHO_REQUEST => (port(l4 + 4)?, 0),
        _ => return Err(DROP_ICMP_UNRELATED),
    };
    let (key, _) = connection_key(0, ip.next_header, (ip.saddr, sport), (ip.daddr, dport));
    Ok(key)
}

pub(crate) const IP_OFFSET: u16 = 0x1fff;

pub(crate) const IP_MORE_FRAGMENTS: u16 = 0x2000;

/// The connection an ICMP error quotes: the original packet, as its sender sent it.
#[inline(always)]
pub(crate) fn parse_icmp_error(ctx: &TcContext, inner: usize) -> Result<CtKey, u8> {
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
