//! The node's policy routing for the proxy, as Cilium installs it for its BPF TPROXY: packets
//! marked [`MARK_TO_PROXY`] are delivered locally whatever their destination, where the proxy's
//! transparent sockets take them. Installed over rtnetlink in the calling thread's namespace;
//! installing twice is harmless.
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::route::{RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use palisade_common::{MARK_TO_PROXY, PROXY_MARK_MASK};

use crate::dataplane::rtnetlink;

/// The routing table holding the one "everything is local" route (Cilium's 2005).
pub const PROXY_TABLE: u32 = 2005;
/// The rule's priority: ahead of the main table (32766), as Cilium's (9).
pub const PROXY_RULE_PRIORITY: u32 = 9;

/// Installs the rule and the route, and turns off TCP early demux: it would hand a packet the
/// node still forwards (to a pod whose ingress steers it to the proxy) the proxy's socket for
/// the same addresses, and forwarding drops a packet that has a socket.
pub fn install_routing() -> std::io::Result<()> {
    let mut rule = RuleMessage::default();
    rule.header.family = AddressFamily::Inet;
    rule.header.action = RuleAction::ToTable;
    rule.attributes = vec![
        RuleAttribute::FwMark(MARK_TO_PROXY),
        RuleAttribute::FwMask(PROXY_MARK_MASK),
        RuleAttribute::Priority(PROXY_RULE_PRIORITY),
        RuleAttribute::Table(PROXY_TABLE),
    ];
    create(RouteNetlinkMessage::NewRule(rule))?;
    let mut route = RouteMessage::default();
    route.header = RouteHeader {
        address_family: AddressFamily::Inet,
        protocol: RouteProtocol::Boot,
        scope: RouteScope::Host,
        kind: RouteType::Local,
        ..RouteHeader::default()
    };
    route.attributes = vec![RouteAttribute::Table(PROXY_TABLE), RouteAttribute::Oif(loopback_index()?)];
    create(RouteNetlinkMessage::NewRoute(route))?;
    // /proc/sys/net shows the namespace of the thread that opens it.
    std::fs::write("/proc/sys/net/ipv4/tcp_early_demux", "0")
}

/// Creates what `request` describes; already there is fine.
fn create(request: RouteNetlinkMessage) -> std::io::Result<()> {
    match rtnetlink(request, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        result => result.map(drop),
    }
}

fn loopback_index() -> std::io::Result<u32> {
    // SAFETY: a NUL-terminated name.
    match unsafe { libc::if_nametoindex(c"lo".as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()),
        index => Ok(index),
    }
}
