//! The typed values behind the kernel's bytes: verdicts, directions, protocols, slots and modes.
//! Userspace works with these; this module is the only place they become (or come from) the
//! `u8`s of the `#[repr(C)]` map structs. The eBPF program keeps using the raw constants.
use crate::{
    DROP_POLICY_DENIED, DropReason, EndpointConfig, MODE_AUDIT, MODE_ENFORCE, MODE_OFF, SLOT_A, SLOT_B, SLOT_NONE,
    SlotKey, SlotSelection, VERDICT_ALLOW, VERDICT_DENY, VERDICT_L7_UNSUPPORTED, VERDICT_REDIRECT,
};

/// What a policy entry does with the traffic it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Allow,
    Deny,
    /// Allowed at L4 and handed to the L7 proxy.
    Redirect,
    /// A redirect no proxy could take (no proxy runs, or not TCP): dropped as `l7-unsupported`.
    /// Only in what the datapath reports, never in a policy map.
    Unproxied,
}

impl Verdict {
    pub const fn raw(self) -> u8 {
        match self {
            Verdict::Allow => VERDICT_ALLOW,
            Verdict::Deny => VERDICT_DENY,
            Verdict::Redirect => VERDICT_REDIRECT,
            Verdict::Unproxied => VERDICT_L7_UNSUPPORTED,
        }
    }

    /// `None` for `VERDICT_NONE` (no candidate) and unknown values.
    pub const fn from_raw(raw: u8) -> Option<Verdict> {
        match raw {
            VERDICT_ALLOW => Some(Verdict::Allow),
            VERDICT_DENY => Some(Verdict::Deny),
            VERDICT_REDIRECT => Some(Verdict::Redirect),
            VERDICT_L7_UNSUPPORTED => Some(Verdict::Unproxied),
            _ => None,
        }
    }

    /// What the datapath does with a byte that should hold a verdict: anything else denies.
    pub(crate) const fn from_raw_or_deny(raw: u8) -> Verdict {
        match Verdict::from_raw(raw) {
            Some(verdict) => verdict,
            None => Verdict::Deny,
        }
    }

    /// Precedence of an entry with this verdict (see [`crate::precedence_of`]).
    pub const fn precedence(self) -> u32 {
        crate::precedence_of(self.raw())
    }

    /// Whether the datapath drops what this verdict judges (see [`crate::verdict_drops`]).
    pub const fn drops(self) -> bool {
        crate::verdict_drops(self.raw())
    }

    /// Why the datapath drops what this verdict judges; `None` when it passes.
    pub const fn drop_reason(self) -> Option<DropReason> {
        match self {
            Verdict::Allow => None,
            Verdict::Deny => DropReason::from_raw(DROP_POLICY_DENIED),
            // The L7 proxy judges it; the program itself drops a redirect no proxy can take.
            Verdict::Redirect => None,
            Verdict::Unproxied => DropReason::from_raw(crate::DROP_L7_UNSUPPORTED),
        }
    }

    /// `allow`, `deny`, `redirect` or `unproxied`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Redirect => "redirect",
            Verdict::Unproxied => "unproxied",
        }
    }
}

/// Traffic direction as seen from the endpoint that owns the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(rename_all = "lowercase"))]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// `ingress` or `egress`, whichever this direction is.
    pub fn pick<T>(self, ingress: T, egress: T) -> T {
        match self {
            Direction::Ingress => ingress,
            Direction::Egress => egress,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    pub const fn raw(self) -> u8 {
        match self {
            Direction::Ingress => crate::DIRECTION_INGRESS,
            Direction::Egress => crate::DIRECTION_EGRESS,
        }
    }

    /// Anything but `DIRECTION_INGRESS` is egress, as the program treats it.
    pub const fn from_raw(raw: u8) -> Direction {
        match raw {
            crate::DIRECTION_INGRESS => Direction::Ingress,
            _ => Direction::Egress,
        }
    }
}

/// The IP protocols policy names (`ANY` is expanded to TCP, UDP and SCTP before it gets here).
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Protocol {
    TCP,
    UDP,
    SCTP,
    ICMP,
    ICMPv6,
    VRRP,
    IGMP,
}

impl Protocol {
    pub const ALL: [Protocol; 7] = [
        Protocol::TCP,
        Protocol::UDP,
        Protocol::SCTP,
        Protocol::ICMP,
        Protocol::ICMPv6,
        Protocol::VRRP,
        Protocol::IGMP,
    ];

    /// The IP protocol number.
    pub const fn raw(self) -> u8 {
        match self {
            Protocol::TCP => crate::PROTO_TCP,
            Protocol::UDP => crate::PROTO_UDP,
            Protocol::SCTP => crate::PROTO_SCTP,
            Protocol::ICMP => crate::PROTO_ICMP,
            Protocol::ICMPv6 => crate::PROTO_ICMPV6,
            Protocol::VRRP => crate::PROTO_VRRP,
            Protocol::IGMP => crate::PROTO_IGMP,
        }
    }

    pub const fn from_raw(raw: u8) -> Option<Protocol> {
        match raw {
            crate::PROTO_TCP => Some(Protocol::TCP),
            crate::PROTO_UDP => Some(Protocol::UDP),
            crate::PROTO_SCTP => Some(Protocol::SCTP),
            crate::PROTO_ICMP => Some(Protocol::ICMP),
            crate::PROTO_ICMPV6 => Some(Protocol::ICMPv6),
            crate::PROTO_VRRP => Some(Protocol::VRRP),
            crate::PROTO_IGMP => Some(Protocol::IGMP),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Protocol::TCP => "TCP",
            Protocol::UDP => "UDP",
            Protocol::SCTP => "SCTP",
            Protocol::ICMP => "ICMP",
            Protocol::ICMPv6 => "ICMPv6",
            Protocol::VRRP => "VRRP",
            Protocol::IGMP => "IGMP",
        }
    }
}

/// An IP protocol number no [`Protocol`] stands for, as a packet can carry; shown `proto-<n>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnknownProtocol(pub u8);

impl core::fmt::Display for UnknownProtocol {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "proto-{}", self.0)
    }
}

/// One of the two policy slots of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub const fn raw(self) -> u8 {
        match self {
            Slot::A => SLOT_A,
            Slot::B => SLOT_B,
        }
    }

    /// `None` for `SLOT_NONE` and unknown values.
    pub const fn from_raw(raw: u8) -> Option<Slot> {
        match raw {
            SLOT_A => Some(Slot::A),
            SLOT_B => Some(Slot::B),
            _ => None,
        }
    }

    /// The slot's index in per-slot arrays (`slot_generation`, `slot_packets`).
    pub const fn index(self) -> usize {
        self.raw() as usize
    }

    /// Index of the slot's write sequence for the endpoint with `counter_index`.
    pub const fn writes_index(self, counter_index: u32) -> u32 {
        crate::slot_writes_index(counter_index, self.raw())
    }
}

impl SlotKey {
    pub const fn new(endpoint: u32, slot: Slot) -> Self {
        SlotKey { endpoint, slot: slot.raw() as u32 }
    }
}

/// How an endpoint's enforced slot applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The enforced slot decides.
    Enforce,
    /// Everything passes; what the enforced slot would drop is counted and reported.
    Audit,
    /// Everything passes unevaluated.
    Off,
}

impl Mode {
    pub const fn raw(self) -> u8 {
        match self {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Audit => MODE_AUDIT,
            Mode::Off => MODE_OFF,
        }
    }

    /// Unknown values are off, as the program treats them (neither enforce nor audit).
    pub const fn from_raw(raw: u8) -> Mode {
        match raw {
            MODE_ENFORCE => Mode::Enforce,
            MODE_AUDIT => Mode::Audit,
            _ => Mode::Off,
        }
    }
}

impl EndpointConfig {
    /// A new endpoint's config: enforcing slot A with no candidate, not attached.
    pub const fn new(endpoint: u32, index: u32) -> Self {
        let select = SlotSelection::new(Slot::A, None);
        EndpointConfig {
            endpoint,
            index,
            ifindex: 0,
            addr_be: 0,
            addr6: [0; 4],
            mode: MODE_ENFORCE,
            _pad: [0; 3],
            by_epoch: [select; 2],
            slot_generation: [0; 2],
        }
    }

    pub const fn mode(&self) -> Mode {
        Mode::from_raw(self.mode)
    }

    pub const fn set_mode(&mut self, mode: Mode) {
        self.mode = mode.raw();
    }
}

impl SlotSelection {
    pub const fn new(enforced: Slot, candidate: Option<Slot>) -> Self {
        SlotSelection {
            enforced: enforced.raw(),
            candidate: match candidate {
                Some(slot) => slot.raw(),
                None => SLOT_NONE,
            },
        }
    }

    /// The slot that decides (slot A if the byte is not a slot).
    pub const fn enforced(&self) -> Slot {
        match Slot::from_raw(self.enforced) {
            Some(slot) => slot,
            None => Slot::A,
        }
    }

    pub const fn candidate(&self) -> Option<Slot> {
        Slot::from_raw(self.candidate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values_round_trip_through_their_bytes() {
        for verdict in [Verdict::Allow, Verdict::Deny, Verdict::Redirect, Verdict::Unproxied] {
            assert_eq!(Verdict::from_raw(verdict.raw()), Some(verdict));
        }
        assert_eq!(Verdict::from_raw(crate::VERDICT_NONE), None);
        for direction in Direction::BOTH {
            assert_eq!(Direction::from_raw(direction.raw()), direction);
        }
        for protocol in Protocol::ALL {
            assert_eq!(Protocol::from_raw(protocol.raw()), Some(protocol));
        }
        assert_eq!(Protocol::from_raw(47), None);
        for mode in [Mode::Enforce, Mode::Audit, Mode::Off] {
            assert_eq!(Mode::from_raw(mode.raw()), mode);
        }
        for candidate in [None, Some(Slot::A), Some(Slot::B)] {
            let selection = SlotSelection::new(Slot::B, candidate);
            assert_eq!((selection.enforced(), selection.candidate()), (Slot::B, candidate));
        }
        assert_eq!(Verdict::Redirect.drop_reason(), None, "the L7 proxy judges a redirect");
        assert_eq!(Verdict::Allow.drop_reason(), None);
    }
}
