//! Reading a packet: Ethernet and IPv4 headers, ports or ICMP type, the connection an ICMP error
//! quotes, and later fragments through their first fragment's ports.
use aya_ebpf::{bindings::BPF_ANY, programs::TcContext};
use palisade_common::*;

use crate::maps::*;

pub(crate) struct Packet {
    pub(crate) saddr_be: u32,
    pub(crate) daddr_be: u32,
    pub(crate) protocol: u8,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    /// The original connection an ICMP error refers to.
    pub(crate) related: Option<CtKey>,
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
pub(crate) fn parse(ctx: &TcContext, deferred_from: u16) -> Option<Packet> {
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
        deferred_from,
    };
    if let Err(reason) = parse_l4(ctx, &ip, header_len, &mut packet) {
        packet.unjudged = reason;
    }
    Some(packet)
}

#[inline(always)]
pub(crate) fn parse_l4(ctx: &TcContext, ip: &Ipv4Header, header_len: usize, packet: &mut Packet) -> Result<(), u8> {
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

/// The connection between `sender` and `receiver` (address, port) on `ifindex`, keyed the same
/// from both sides, and the side (`CT_OPENED_BY_*`) that sent.
#[inline(always)]
pub(crate) fn connection_key(ifindex: u32, protocol: u8, sender: (u32, u16), receiver: (u32, u16)) -> (CtKey, u8) {
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
