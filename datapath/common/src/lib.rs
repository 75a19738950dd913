//! The layout of everything the eBPF program and userspace exchange: policy map keys and values,
//! identities and verdicts. Defined once here; the policy compiler produces these values and the
//! agent writes them into the kernel unchanged.
#![no_std]

mod typed;

pub use typed::{Direction, Mode, Protocol, Slot, UnknownProtocol, Verdict};

/// Traffic direction as seen from the endpoint that owns the policy ([`Direction`] above the
/// kernel boundary).
pub const DIRECTION_INGRESS: u8 = 0;
pub const DIRECTION_EGRESS: u8 = 1;

/// IP protocol numbers ([`Protocol`] above the kernel boundary).
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IGMP: u8 = 2;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_VRRP: u8 = 112;
pub const PROTO_SCTP: u8 = 132;

/// Security identities. Numbers follow Cilium's so that operators can read them the same way.
pub const IDENTITY_ANY: u32 = 0;
pub const IDENTITY_HOST: u32 = 1;
pub const IDENTITY_WORLD: u32 = 2;
pub const IDENTITY_UNMANAGED: u32 = 3;
pub const IDENTITY_HEALTH: u32 = 4;
pub const IDENTITY_INIT: u32 = 5;
pub const IDENTITY_REMOTE_NODE: u32 = 6;
pub const IDENTITY_KUBE_APISERVER: u32 = 7;
pub const IDENTITY_INGRESS: u32 = 8;
pub const IDENTITY_WORLD_IPV6: u32 = 10;
/// A Service's ClusterIP. Not a peer policy can name: the source's egress to it is judged after
/// kube-proxy has translated it to a backend, at the hook the translated packet reaches (the
/// backend's host-side veth, or the interface it leaves the node by). The source's hook defers
/// by writing its counter index plus one into the packet's mark ([`SERVICE_MARK_MASK`]).
pub const IDENTITY_SERVICE: u32 = 15;
/// The bits of the skb mark that carry a Service connection's source endpoint (counter index
/// plus one) from its hook to the hook after translation. The mark is the one field that
/// survives DNAT, SNAT and forwarding (the priority is rewritten by forwarding, `tc_index` does
/// not exist without CONFIG_NET_SCHED), and it is cleared when a packet crosses into or out of
/// a pod's namespace, so a pod cannot forge it. These bits stay clear of kube-proxy's (0x4000,
/// 0x8000) and of the low byte other CNIs use (AWS VPC CNI's 0x80); Calico's default mask
/// (0xffff0000) overlaps them, so Calico must not also run policy on a Palisade node.
pub const SERVICE_MARK_MASK: u32 = 0x1fff_0000;
pub const SERVICE_MARK_SHIFT: u32 = 16;
const _: () = assert!(MAX_ENDPOINTS < SERVICE_MARK_MASK >> SERVICE_MARK_SHIFT);
/// The bits of the skb mark the L7 proxy's steering uses (Cilium's `MARK_MAGIC_*` bits 8-11),
/// clear of the Service bits and of kube-proxy's.
pub const PROXY_MARK_MASK: u32 = 0x0f00;
/// A packet for the node's L7 proxy. Policy routing delivers it locally whatever its
/// destination (`ip rule fwmark 0x200/0xf00 lookup` a table routing everything to `lo`), where
/// the proxy's transparent sockets take it. Set by the datapath on the packets of a redirected
/// connection and on the replies to the proxy's own upstream connections.
pub const MARK_TO_PROXY: u32 = 0x0200;
/// The proxy's upstream connections carry it (`SO_MARK`): their requests were judged at L7
/// already, so a redirect passes them, and their replies are steered back to the proxy.
pub const MARK_FROM_PROXY: u32 = 0x0a00;
/// Beside [`MARK_TO_PROXY`], on a packet of a TCP connection the proxy does not hold (it opened
/// past the proxy, and the enforced policy redirects it now): assigned to the proxy's listener,
/// which resets the connection from the destination's address. Outside [`PROXY_MARK_MASK`], so
/// policy routing delivers it like any packet for the proxy.
pub const MARK_PROXY_RESET: u32 = 0x1000;
const _: () = assert!(PROXY_MARK_MASK & SERVICE_MARK_MASK == 0 && PROXY_MARK_MASK & 0xc000 == 0);
const _: () = assert!(MARK_PROXY_RESET & (PROXY_MARK_MASK | SERVICE_MARK_MASK | 0xc0ff) == 0);
/// First identity handed to a set of pod labels.
pub const IDENTITY_FIRST_LOCAL: u32 = 256;
/// Node-local CIDR identities are `IDENTITY_CIDR_BASE | n`.
pub const IDENTITY_CIDR_BASE: u32 = 1 << 24;

/// Bits of a [`PolicyKey`] that always match exactly: identity (32) and direction (8).
pub const POLICY_STATIC_PREFIX_BITS: u32 = 40;
/// The protocol byte and the 16 port bits that follow the static prefix.
pub const POLICY_PROTO_BITS: u32 = 8;
pub const POLICY_PORT_BITS: u32 = 16;
/// Every bit of a [`PolicyKey`]'s data: the prefix length of a packet's lookup.
pub const POLICY_FULL_PREFIX: u32 = POLICY_STATIC_PREFIX_BITS + POLICY_PROTO_BITS + POLICY_PORT_BITS;

/// Key of a policy LPM trie. The prefix covers identity and direction exactly, then optionally the
/// protocol, then the high bits of the destination port, so one entry can stand for "any
/// protocol", "any port of TCP" or an aligned port range.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub prefix_len: u32,
    /// Remote identity, big-endian so that the trie compares it bit by bit like the rest.
    pub identity_be: u32,
    pub direction: u8,
    pub protocol: u8,
    /// Destination port (ICMP type for ICMP), big-endian so port ranges are bit prefixes.
    pub dport_be: u16,
}

/// The data of a [`PolicyKey`], after its prefix length: what the policy LPM tries key on, as
/// the program builds it from a packet and the loader writes and reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyMatch {
    pub identity_be: u32,
    pub direction: u8,
    pub protocol: u8,
    pub dport_be: u16,
}

/// Capacity of one policy slot (Cilium's default policy map size).
pub const MAX_POLICY_ENTRIES: u32 = 16384;

impl PolicyMatch {
    /// What a packet looks up: every field exact (prefix [`POLICY_FULL_PREFIX`]). Raw bytes, as
    /// the program reads them from the packet.
    #[inline(always)]
    pub const fn packet(identity: u32, direction: u8, protocol: u8, port: u16) -> Self {
        PolicyMatch { identity_be: identity.to_be(), direction, protocol, dport_be: port.to_be() }
    }
}

impl PolicyKey {
    /// The key's data, without its prefix length.
    pub const fn data(&self) -> PolicyMatch {
        PolicyMatch {
            identity_be: self.identity_be,
            direction: self.direction,
            protocol: self.protocol,
            dport_be: self.dport_be,
        }
    }

    /// The key of `data` with `prefix_len` significant bits.
    pub const fn from_data(prefix_len: u32, data: PolicyMatch) -> Self {
        PolicyKey {
            prefix_len,
            identity_be: data.identity_be,
            direction: data.direction,
            protocol: data.protocol,
            dport_be: data.dport_be,
        }
    }

    /// `protocol: None` means every protocol (and then every port). `port_bits` is how many high
    /// bits of `port` are significant: 16 for one port, 0 for every port.
    pub const fn new(
        identity: u32,
        direction: Direction,
        protocol: Option<Protocol>,
        port: u16,
        port_bits: u8,
    ) -> Self {
        match protocol {
            None => PolicyKey {
                prefix_len: POLICY_STATIC_PREFIX_BITS,
                identity_be: identity.to_be(),
                direction: direction.raw(),
                protocol: 0,
                dport_be: 0,
            },
            Some(protocol) => {
                let bits = if port_bits > 16 { 16 } else { port_bits };
                let mask = if bits == 0 { 0 } else { u16::MAX << (16 - bits as u32) };
                PolicyKey {
                    prefix_len: POLICY_STATIC_PREFIX_BITS + POLICY_PROTO_BITS + bits as u32,
                    identity_be: identity.to_be(),
                    direction: direction.raw(),
                    protocol: protocol.raw(),
                    dport_be: (port & mask).to_be(),
                }
            }
        }
    }

    /// A fully specified key, as the datapath builds it from a packet.
    pub const fn lookup(identity: u32, direction: Direction, protocol: Protocol, port: u16) -> Self {
        Self::new(identity, direction, Some(protocol), port, 16)
    }

    pub const fn identity(&self) -> u32 {
        u32::from_be(self.identity_be)
    }

    pub const fn direction(&self) -> Direction {
        Direction::from_raw(self.direction)
    }

    pub const fn port(&self) -> u16 {
        u16::from_be(self.dport_be)
    }

    /// `None` when the key covers every protocol (keys are only built from a [`Protocol`]).
    pub const fn protocol(&self) -> Option<Protocol> {
        if self.prefix_len >= POLICY_STATIC_PREFIX_BITS + POLICY_PROTO_BITS {
            Protocol::from_raw(self.protocol)
        } else {
            None
        }
    }

    /// Significant port bits (0 = every port).
    pub const fn port_bits(&self) -> u8 {
        let extra = self.prefix_len.saturating_sub(POLICY_STATIC_PREFIX_BITS + POLICY_PROTO_BITS);
        extra as u8
    }

    /// Protocol and port bits together (0..=24), the tie-breaker between entries of equal precedence.
    pub const fn l4_prefix_len(&self) -> u8 {
        self.prefix_len.saturating_sub(POLICY_STATIC_PREFIX_BITS) as u8
    }

    /// Inclusive port range the key covers.
    pub const fn port_range(&self) -> (u16, u16) {
        let bits = self.port_bits();
        if bits == 0 {
            return (0, u16::MAX);
        }
        let low = self.port();
        let span = if bits >= 16 { 0 } else { u16::MAX >> bits as u32 };
        (low, low | span)
    }
}

pub const VERDICT_ALLOW: u8 = 1;
pub const VERDICT_DENY: u8 = 2;
/// Allowed at L4 and handed to the node's L7 proxy, which judges each request (TCP); dropped
/// as `l7-unsupported` where no proxy judges it (no proxy running, UDP).
pub const VERDICT_REDIRECT: u8 = 3;
/// A redirect no proxy takes (not TCP, or no proxy runs): dropped as `l7-unsupported`. Never
/// in a policy map: the program judges a redirect so when it cannot steer the packet.
pub const VERDICT_L7_UNSUPPORTED: u8 = 4;

/// Precedence of an entry: higher wins. At one priority, deny beats redirect beats allow, so a
/// broader deny still wins over a narrower allow found by the identity-specific lookup.
pub const fn precedence_of(verdict: u8) -> u32 {
    match verdict {
        VERDICT_DENY => 0x80,
        VERDICT_REDIRECT => 0x40,
        _ => 0,
    }
}

/// Whether the datapath drops what a slot judged `verdict` at L4: a deny. A redirect passes to
/// the L7 proxy, which judges each request; where none can, the datapath drops it with
/// [`DropReason::L7Unsupported`], never passing it unjudged.
pub const fn verdict_drops(verdict: u8) -> bool {
    matches!(verdict, VERDICT_DENY | VERDICT_L7_UNSUPPORTED)
}

/// Why a packet was dropped (or, in audit mode, would have been): the `reason` byte of a
/// [`FlowKey`], 0 when nothing drops it. One spelling everywhere: [`DropReason::as_str`].
pub const DROP_NONE: u8 = 0;
pub const DROP_POLICY_DENIED: u8 = 1;
pub const DROP_L7_UNSUPPORTED: u8 = 2;
pub const DROP_INVALID_SOURCE: u8 = 3;
pub const DROP_UNKNOWN_L3: u8 = 4;
pub const DROP_FRAGMENT_UNKNOWN: u8 = 5;
pub const DROP_ICMP_UNRELATED: u8 = 6;
pub const DROP_IPV6_EXT_LIMIT: u8 = 7;
pub const DROP_MALFORMED: u8 = 8;
pub const DROP_SERVICE_UNTRANSLATED: u8 = 9;

/// The drop reason of a policy verdict: [`DROP_NONE`] when the verdict passes.
pub const fn verdict_drop_reason(verdict: u8) -> u8 {
    match verdict {
        VERDICT_DENY => DROP_POLICY_DENIED,
        VERDICT_L7_UNSUPPORTED => DROP_L7_UNSUPPORTED,
        _ => DROP_NONE,
    }
}

/// A drop reason, as users read it (`observe`, reports, metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The enforced policy denies the flow.
    PolicyDenied,
    /// The port has L7 rules that no proxy judges (no proxy runs, or an L7 protocol it does
    /// not speak): denied rather than passed.
    L7Unsupported,
    /// The packet left an endpoint carrying an address that is not the endpoint's.
    InvalidSource,
    /// Neither ARP, IPv4 nor IPv6 (or IPv6 on a node whose IPv6 program is missing).
    UnknownL3,
    /// A non-first IP fragment whose first fragment was not seen: its ports are unknown.
    FragmentUnknown,
    /// An ICMP error that relates to no tracked connection.
    IcmpUnrelated,
    /// An IPv6 packet with more extension headers than the program walks: its upper layer is
    /// out of reach.
    Ipv6ExtLimit,
    /// A header too short or inconsistent to judge.
    Malformed,
    /// A packet to a Service's ClusterIP left the node untranslated (no kube-proxy rule for
    /// its port): there is no backend to judge it by.
    ServiceUntranslated,
}

impl DropReason {
    pub const ALL: [DropReason; 9] = [
        DropReason::PolicyDenied,
        DropReason::L7Unsupported,
        DropReason::InvalidSource,
        DropReason::UnknownL3,
        DropReason::FragmentUnknown,
        DropReason::IcmpUnrelated,
        DropReason::Ipv6ExtLimit,
        DropReason::Malformed,
        DropReason::ServiceUntranslated,
    ];

    /// `None` for [`DROP_NONE`] and unknown values.
    pub const fn from_raw(raw: u8) -> Option<DropReason> {
        match raw {
            DROP_POLICY_DENIED => Some(DropReason::PolicyDenied),
            DROP_L7_UNSUPPORTED => Some(DropReason::L7Unsupported),
            DROP_INVALID_SOURCE => Some(DropReason::InvalidSource),
            DROP_UNKNOWN_L3 => Some(DropReason::UnknownL3),
            DROP_FRAGMENT_UNKNOWN => Some(DropReason::FragmentUnknown),
            DROP_ICMP_UNRELATED => Some(DropReason::IcmpUnrelated),
            DROP_IPV6_EXT_LIMIT => Some(DropReason::Ipv6ExtLimit),
            DROP_MALFORMED => Some(DropReason::Malformed),
            DROP_SERVICE_UNTRANSLATED => Some(DropReason::ServiceUntranslated),
            _ => None,
        }
    }

    pub const fn raw(self) -> u8 {
        match self {
            DropReason::PolicyDenied => DROP_POLICY_DENIED,
            DropReason::L7Unsupported => DROP_L7_UNSUPPORTED,
            DropReason::InvalidSource => DROP_INVALID_SOURCE,
            DropReason::UnknownL3 => DROP_UNKNOWN_L3,
            DropReason::FragmentUnknown => DROP_FRAGMENT_UNKNOWN,
            DropReason::IcmpUnrelated => DROP_ICMP_UNRELATED,
            DropReason::Ipv6ExtLimit => DROP_IPV6_EXT_LIMIT,
            DropReason::Malformed => DROP_MALFORMED,
            DropReason::ServiceUntranslated => DROP_SERVICE_UNTRANSLATED,
        }
    }

    /// The kebab-case name `observe`, reports and metrics print.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::PolicyDenied => "policy-denied",
            DropReason::L7Unsupported => "l7-unsupported",
            DropReason::InvalidSource => "invalid-source",
            DropReason::UnknownL3 => "unknown-l3",
            DropReason::FragmentUnknown => "fragment-unknown",
            DropReason::IcmpUnrelated => "icmp-unrelated",
            DropReason::Ipv6ExtLimit => "ipv6-ext-limit",
            DropReason::Malformed => "malformed",
            DropReason::ServiceUntranslated => "service-untranslated",
        }
    }
}

impl core::fmt::Display for DropReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rule cookies name the rule that produced an entry; the policy compiler keeps the table of
/// what each number means for a revision. These values are reserved.
pub const COOKIE_NONE: u32 = 0;
/// The endpoint is not under policy in this direction: everything is allowed.
pub const COOKIE_NOT_ENFORCED: u32 = u32::MAX;
/// Every rule selecting the endpoint in this direction has `enableDefaultDeny: false`.
pub const COOKIE_DEFAULT_ALLOW: u32 = u32::MAX - 1;
/// Implicit allow from the local host to its pods (Cilium's allow-localhost).
pub const COOKIE_LOCALHOST: u32 = u32::MAX - 2;
/// The verdict of a connection to a Service's ClusterIP at its source: passed, its egress judged
/// after translation (see [`IDENTITY_SERVICE`]). Never reported.
pub const COOKIE_DEFERRED: u32 = u32::MAX - 3;
/// The lowest of the datapath's own cookies above the rule cookies: no rule is numbered from here.
pub const COOKIE_RESERVED_FIRST: u32 = COOKIE_DEFERRED;
// Each reserved cookie means one thing: the datapath tells them apart by value.
const _: () = assert!(
    COOKIE_DEFERRED < COOKIE_LOCALHOST
        && COOKIE_LOCALHOST < COOKIE_DEFAULT_ALLOW
        && COOKIE_DEFAULT_ALLOW < COOKIE_NOT_ENFORCED
);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    pub verdict: u8,
    _pad: [u8; 3],
    pub precedence: u32,
    pub cookie: u32,
}

impl PolicyValue {
    pub const fn new(verdict: Verdict, cookie: u32) -> Self {
        PolicyValue { verdict: verdict.raw(), _pad: [0; 3], precedence: verdict.precedence(), cookie }
    }

    /// Values are only built from a [`Verdict`]; an unknown byte reads as deny.
    pub const fn verdict(&self) -> Verdict {
        Verdict::from_raw_or_deny(self.verdict)
    }
}

/// One entry of an endpoint's policy map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyEntry {
    pub key: PolicyKey,
    pub value: PolicyValue,
}

impl PolicyValue {
    /// Copy of the value carrying the proto/port prefix length (0..=24) of its key in the padding
    /// byte, as Cilium's `lpm_prefix_length`: an LPM lookup returns only the value, and the
    /// datapath needs the matched prefix to break precedence ties. The datapath writes it; the
    /// compiler leaves it zero.
    pub const fn with_l4_prefix_len(mut self, l4_prefix_len: u8) -> Self {
        self._pad[0] = l4_prefix_len;
        self
    }

    pub const fn l4_prefix_len(&self) -> u8 {
        self._pad[0]
    }
}

// ---- Datapath state shared with the eBPF program (maps other than the policy slots) ----

/// Verdict recorded for "no candidate slot to compare with".
pub const VERDICT_NONE: u8 = 0;

/// Policy slots of an endpoint. `SLOT_NONE` marks "no candidate".
pub const SLOT_A: u8 = 0;
pub const SLOT_B: u8 = 1;
pub const SLOT_NONE: u8 = 0xff;

/// Enforce: the enforced slot decides. Audit: everything passes, would-be drops are recorded.
/// Off: everything passes and nothing is evaluated.
pub const MODE_ENFORCE: u8 = 0;
pub const MODE_AUDIT: u8 = 1;
pub const MODE_OFF: u8 = 2;

/// Which slot decides and which one is shadow-evaluated.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotSelection {
    pub enforced: u8,
    pub candidate: u8,
}

/// An endpoint's config: its identity in the maps and which slots it runs. Userspace keeps the
/// record of every endpoint in `ENDPOINT_CONFIG` (keyed by endpoint id); the program reads the
/// copy of an attached endpoint in `ENDPOINTS` (keyed by ifindex), so a packet finds its endpoint
/// and config with one lookup, and a promotion is one update of that value.
/// `by_epoch[node_epoch & 1]` is in force: a node-wide flip stages the other half of every
/// endpoint, then flips the node epoch with one update.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointConfig {
    pub endpoint: u32,
    /// Dense index of the endpoint's counters (`COUNTERS` is an array).
    pub index: u32,
    /// Host-side interface the endpoint is attached to, 0 when not attached,
    /// [`HOST_ENDPOINT_IFINDEX`] for the host endpoint.
    pub ifindex: u32,
    /// The endpoint's IPv4 address (big-endian; 0: none). Every IPv4 packet leaving the
    /// endpoint must carry it as its source.
    pub addr_be: u32,
    /// The endpoint's IPv6 address (network order; all zero: none), the only source its IPv6
    /// packets may carry besides link-local neighbor discovery.
    pub addr6: Ipv6Words,
    pub mode: u8,
    pub _pad: [u8; 3],
    pub by_epoch: [SlotSelection; 2],
    /// Content version of slot A and slot B, node-wide unique (0: never loaded). The program
    /// caches verdicts per version, so a reloaded slot never serves an old verdict.
    pub slot_generation: [u32; 2],
}

/// Capacity of the endpoint maps and of the counters array.
pub const MAX_ENDPOINTS: u32 = 4096;

/// The key of the host endpoint (the node itself, Cilium's host firewall) in `ENDPOINTS`, and
/// its config's `ifindex`: no interface has it (the kernel's ifindexes are positive `int`s). The
/// programs `to_host` and `from_host`, first on every hook Palisade attaches to, judge the packets
/// the ipcache says are addressed to or sent by the node (`IDENTITY_HOST`) by its ingress and
/// egress policy; its connections are tracked under this key, whichever interface they cross.
pub const HOST_ENDPOINT_IFINDEX: u32 = u32::MAX;

/// Indexes of the node state array: the epoch selecting each config's half, the last slot
/// generation handed out, and the node's state version. Userspace bumps the version after every
/// change the program could have cached a decision from (an endpoint's config, the epoch, the
/// ipcache): a conntrack entry's cached decision is reused only while the version is unchanged.
/// The last entry is the port of the L7 proxy's listener on 127.0.0.1 (0: no proxy runs, and
/// redirected connections are dropped as `l7-unsupported`).
pub const NODE_STATE_EPOCH: u32 = 0;
pub const NODE_STATE_GENERATION: u32 = 1;
pub const NODE_STATE_VERSION: u32 = 2;
pub const NODE_STATE_PROXY_PORT: u32 = 3;
pub const NODE_STATE_ENTRIES: u32 = 4;

/// The IPv6 programs' slots in `IPV6_PROGRAMS`: by the IPv4 program that hands them packets,
/// the programs that read the packet, then the programs they hand it to for the verdict.
pub const IPV6_PROGRAM_FROM_ENDPOINT: u32 = 0;
pub const IPV6_PROGRAM_TO_ENDPOINT: u32 = 1;
pub const IPV6_PROGRAM_DEFERRED_EGRESS: u32 = 2;
pub const IPV6_PROGRAM_FROM_ENDPOINT_VERDICT: u32 = 3;
pub const IPV6_PROGRAM_TO_ENDPOINT_VERDICT: u32 = 4;
pub const IPV6_PROGRAM_DEFERRED_EGRESS_VERDICT: u32 = 5;
pub const IPV6_PROGRAM_TO_HOST: u32 = 6;
pub const IPV6_PROGRAM_FROM_HOST: u32 = 7;
pub const IPV6_PROGRAM_TO_HOST_VERDICT: u32 = 8;
pub const IPV6_PROGRAM_FROM_HOST_VERDICT: u32 = 9;
pub const IPV6_PROGRAM_COUNT: u32 = 10;

/// Capacity of the slot write sequences (`SLOT_WRITES`): two per counter index.
pub const SLOT_WRITES_ENTRIES: u32 = MAX_ENDPOINTS * 2;

/// Index of a slot's write sequence: odd while userspace rewrites the slot in place. The
/// program drops a candidate verdict whose lookups overlapped a write (seqlock), so no shadow
/// difference is ever computed from a half-written slot.
pub const fn slot_writes_index(counter_index: u32, slot: u8) -> u32 {
    counter_index * 2 + if slot == SLOT_A { 0 } else { 1 }
}

/// Capacity of the verdict cache (a power of two).
pub const VERDICT_CACHE_ENTRIES: u32 = 1 << 16;

/// What the verdict cache is keyed by: one peer identity and port under one version of the
/// enforced slot and one of the candidate (generation 0: none).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VerdictCacheKey {
    pub endpoint: u32,
    pub enforced_generation: u32,
    pub candidate_generation: u32,
    pub identity: u32,
    pub dport: u16,
    pub protocol: u8,
    pub direction: u8,
}

impl VerdictCacheKey {
    const fn words(&self) -> [u64; 3] {
        [
            self.endpoint as u64 | (self.enforced_generation as u64) << 32,
            self.candidate_generation as u64 | (self.identity as u64) << 32,
            self.dport as u64 | (self.protocol as u64) << 16 | (self.direction as u64) << 24,
        ]
    }

    /// The cache slot of the key.
    #[inline(always)]
    pub const fn index(&self) -> u32 {
        const P: u64 = 0x9e37_79b9_7f4a_7c15;
        let [a, b, c] = self.words();
        let h = (((a.wrapping_mul(P) ^ b).wrapping_mul(P)) ^ c).wrapping_mul(P);
        (h >> 48) as u32 & (VERDICT_CACHE_ENTRIES - 1)
    }
}

/// An entry of the verdict cache: both slots' policy lookups for one key. It spares the LPM
/// walks of a connection to a peer and port seen before. Direct-mapped (an array indexed by a
/// hash of the key): the lookup is inlined and a miss costs one read and one write, where an
/// LRU hash map's miss (a lookup, then an insert that evicts under a lock) cost more than the
/// walks it spares.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CachedVerdicts {
    pub key: VerdictCacheKey,
    pub enforced: SlotVerdict,
    pub candidate: SlotVerdict,
    /// Checksum over all fields above: the array is written in place, so a reader on another
    /// CPU could see a half-written entry; it then fails this check and counts as a miss.
    pub check: u32,
}

impl CachedVerdicts {
    /// The checksum of the entry's fields (without `check`).
    #[inline(always)]
    pub const fn checksum(&self) -> u32 {
        const P: u64 = 0x9e37_79b9_7f4a_7c15;
        let [a, b, c] = self.key.words();
        let verdicts = (self.enforced.verdict as u64) << 32 | (self.candidate.verdict as u64) << 40;
        let cookies = self.enforced.cookie as u64 | (self.candidate.cookie as u64) << 32;
        let mut h = a.wrapping_mul(P);
        h = (h ^ b).wrapping_mul(P);
        h = (h ^ c ^ verdicts).wrapping_mul(P);
        h = (h ^ cookies).wrapping_mul(P);
        (h ^ (h >> 32)) as u32
    }
}

/// The decision of a policy slot for one packet: verdict (`VERDICT_*`) and the deciding rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotVerdict {
    pub verdict: u8,
    pub _pad: [u8; 3],
    pub cookie: u32,
}

impl SlotVerdict {
    /// No verdict: there is no candidate, or its verdict is not settled.
    pub const NONE: SlotVerdict = SlotVerdict::new(VERDICT_NONE, COOKIE_NONE);

    pub const fn new(verdict: u8, cookie: u32) -> SlotVerdict {
        SlotVerdict { verdict, _pad: [0; 3], cookie }
    }
}

/// Key of the outer policy map: one LPM trie per (endpoint, slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotKey {
    pub endpoint: u32,
    pub slot: u32,
}

/// An IPv6 address as the program reads it: four words in network byte order.
pub type Ipv6Words = [u32; 4];

/// An address of one family as the program reads it from a packet, in network byte order: an
/// IPv4 `u32` or an IPv6 [`Ipv6Words`]. Conntrack and the fast-flow cache are kept per family,
/// so an IPv4 connection pays for no IPv6 bytes.
pub trait Address: Copy + PartialEq {
    /// The all-zero address.
    const UNSPECIFIED: Self;
    /// A total order, the same from both ends of a connection (not numeric order).
    fn precedes(self, other: Self) -> bool;
    /// The address folded into 64 bits, for hashing.
    fn fold(self) -> u64;
    /// As an IPv6 address (IPv4 mapped, `::ffff:a.b.c.d`): how flow events carry both families.
    fn mapped(self) -> Ipv6Words;
}

/// The third word of an IPv4-mapped IPv6 address (`::ffff:0:0/96`) as the program stores it.
pub const IPV4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl Address for u32 {
    const UNSPECIFIED: u32 = 0;

    #[inline(always)]
    fn precedes(self, other: u32) -> bool {
        self < other
    }

    #[inline(always)]
    fn fold(self) -> u64 {
        self as u64
    }

    #[inline(always)]
    fn mapped(self) -> Ipv6Words {
        [0, 0, IPV4_MAPPED_WORD, self]
    }
}

impl Address for Ipv6Words {
    const UNSPECIFIED: Ipv6Words = [0; 4];

    /// Word by word, written out: no loop or slice comparison for the verifier.
    #[inline(always)]
    fn precedes(self, other: Ipv6Words) -> bool {
        if self[0] != other[0] {
            self[0] < other[0]
        } else if self[1] != other[1] {
            self[1] < other[1]
        } else if self[2] != other[2] {
            self[2] < other[2]
        } else {
            self[3] < other[3]
        }
    }

    #[inline(always)]
    fn fold(self) -> u64 {
        const P: u64 = 0x9e37_79b9_7f4a_7c15;
        ((self[0] as u64 | (self[1] as u64) << 32).wrapping_mul(P)) ^ (self[2] as u64 | (self[3] as u64) << 32)
    }

    #[inline(always)]
    fn mapped(self) -> Ipv6Words {
        self
    }
}

/// The address a flow event carries ([`Address::mapped`]), as users read it: IPv4-mapped
/// addresses as IPv4.
pub fn event_address(words: Ipv6Words) -> core::net::IpAddr {
    let mut bytes = [0u8; 16];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    core::net::Ipv6Addr::from(bytes).to_canonical()
}

/// [`Address::mapped`] of a user's address: what the program would write for it.
pub fn event_words(addr: core::net::IpAddr) -> Ipv6Words {
    let bytes = match addr {
        core::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        core::net::IpAddr::V6(v6) => v6.octets(),
    };
    let word = |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

/// A connection as tracked on one endpoint's interface (by ifindex: a packet finds its
/// connection before its endpoint's config, see [`CtDecision`]). Its two ends are ordered
/// ([`Address::precedes`], then port) so that both directions find the same entry with one
/// lookup; the value is a [`CtEntry`]. Ports are host order; for ICMP echo the id stands in for
/// the requester's port. `A` is the family's address: IPv4 by default.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey<A = u32> {
    pub ifindex: u32,
    pub addr_lo_be: A,
    pub addr_hi_be: A,
    pub port_lo: u16,
    pub port_hi: u16,
    pub protocol: u8,
    // Two fields, not `[u8; 3]`: LLVM zeroes a 3-byte array with a call to memset.
    pub _pad: u8,
    pub _pad2: u16,
}

pub const CT_OPENED_BY_LO: u8 = 0;
pub const CT_OPENED_BY_HI: u8 = 1;

/// Not through the proxy.
pub const CT_PROXY_NONE: u8 = 0;
/// Opened by the node's L7 proxy (its packets carried [`MARK_FROM_PROXY`]): the replies are
/// steered back to the proxy's socket.
pub const CT_PROXY_UPSTREAM: u8 = 1;
/// Steered to the proxy when it opened: every forward packet goes there for as long as it
/// lives, whatever later policy says of redirects (Cilium's `proxy_redirect`); a TCP
/// connection the proxy did not accept has no socket there, and one it accepted has no
/// counterpart at the destination.
pub const CT_PROXY_STEERED: u8 = 2;

/// Value of a conntrack entry: the connection state and the cached decision of its forward
/// packets (see [`CtDecision`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtEntry {
    /// `CT_OPENED_BY_LO` or `CT_OPENED_BY_HI`.
    pub opened_by: u8,
    /// A TCP FIN or RST was seen: the entry lives only a short while longer.
    pub closing: u8,
    /// The enforced policy denied the connection's last forward packet: its other side's
    /// packets are dropped, not passed as replies, and it lives only a short while longer.
    pub denied: u8,
    /// The connection's part in the L7 proxy (`CT_PROXY_*`): fixed when a TCP connection opens
    /// (it cannot move to or from the proxy mid-stream), and taken by the proxy's upstream
    /// socket when one sends on the same addresses (its replies then go to the proxy).
    pub proxy: u8,
    /// Expiry on the coarse monotonic clock, in units of 2^30 ns (about a second).
    pub expires: u32,
    pub decision: CtDecision,
}

/// The decision of a connection's forward packets and the endpoint config it was made under,
/// valid while the node state version it was computed at is current. A packet of an
/// established connection then needs one conntrack lookup and nothing else: no config, ipcache
/// or policy lookup. Any change to what the decision depends on bumps the version, so the next
/// packet recomputes it: a flip or a policy change is seen by the very next packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtDecision {
    /// Remote identity from the ipcache.
    pub identity: u32,
    pub enforced: SlotVerdict,
    /// `VERDICT_NONE` without a candidate.
    pub candidate: SlotVerdict,
    pub endpoint: u32,
    /// The endpoint's counter index.
    pub index: u32,
    /// `NODE_STATE_VERSION` when the decision was made.
    pub version: u32,
    pub mode: u8,
    /// The slot that decided (`SLOT_A` or `SLOT_B`).
    pub enforced_slot: u8,
    pub _pad: u16,
    /// Checksum over all fields above: the program writes entries in place, so a reader on
    /// another CPU could see a half-written decision; it then fails this check and is recomputed.
    pub check: u32,
}

impl CtDecision {
    /// The candidate judges the packet otherwise than the enforced slot.
    pub const fn differs(&self) -> bool {
        self.candidate.verdict != VERDICT_NONE && self.candidate.verdict != self.enforced.verdict
    }

    /// Packets under this decision are recorded as a flow: dropped (or would be, in audit mode)
    /// or judged otherwise by the candidate.
    pub const fn reported(&self) -> bool {
        verdict_drops(self.enforced.verdict) || self.differs()
    }

    /// The connection goes through the L7 proxy: either slot redirects it, so the proxy judges
    /// its requests under both (the enforced slot decides, the candidate is compared).
    pub const fn steers(&self) -> bool {
        self.enforced.verdict == VERDICT_REDIRECT || self.candidate.verdict == VERDICT_REDIRECT
    }

    /// The packet passes: the enforced slot lets it through, or the endpoint only audits.
    pub const fn passes(&self) -> bool {
        self.mode != MODE_ENFORCE || !verdict_drops(self.enforced.verdict)
    }

    /// The checksum of the decision's fields (without `check`).
    #[inline(always)]
    pub const fn checksum(&self) -> u32 {
        // Multiply-xor mixing of the fields paired into four 64-bit words (a short dependency
        // chain), written out: no loops or array indexing for the verifier.
        const P: u64 = 0x9e37_79b9_7f4a_7c15;
        let small = self.enforced.verdict as u64
            | (self.candidate.verdict as u64) << 8
            | (self.mode as u64) << 16
            | (self.enforced_slot as u64) << 24;
        let mut h = (self.identity as u64 | small << 32).wrapping_mul(P);
        h = (h ^ (self.enforced.cookie as u64 | (self.candidate.cookie as u64) << 32)).wrapping_mul(P);
        h = (h ^ (self.endpoint as u64 | (self.index as u64) << 32)).wrapping_mul(P);
        h = (h ^ self.version as u64).wrapping_mul(P);
        (h ^ (h >> 32)) as u32
    }
}

/// Capacity of the fast-flow cache (a power of two: the index is a hash's low bits).
pub const FAST_FLOW_ENTRIES: u32 = 1 << 16;

/// A connection in the fast-flow cache, a direct-mapped array in front of the conntrack hash
/// (array lookups are inlined by the verifier; a hash lookup is a chain of kernel calls, and on
/// these hosts every call and return pays for speculation mitigations). It holds only
/// connections whose forward packets pass and are not reported (no drop, no shadow difference),
/// so a packet it serves is counted and passed, nothing else. Entries are written by the
/// conntrack path, valid for a few hundred jiffies and only under the node state version they
/// were written at; the conntrack entry stays the record and is refreshed when they lapse.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FastFlow<A = u32> {
    pub connection: CtKey<A>,
    /// The endpoint's counter index.
    pub index: u32,
    /// `NODE_STATE_VERSION` when written.
    pub version: u32,
    pub _pad: u32,
    /// Last jiffy (`bpf_jiffies64`) the entry may serve.
    pub valid_until: u64,
    /// `CT_OPENED_BY_LO` or `CT_OPENED_BY_HI`.
    pub opened_by: u8,
    /// The slot that decides the forward packets.
    pub enforced_slot: u8,
    /// The side (`CT_OPENED_BY_*`) that is the endpoint's own address: a packet leaving the
    /// endpoint must come from it, so a spoofed source never takes the fast path.
    pub local_side: u8,
    pub _pad2: u8,
    /// Checksum over all fields above: the array is written in place, so a reader on another
    /// CPU could see a half-written entry; it then fails this check and takes the conntrack path.
    pub check: u32,
}

impl<A: Address> FastFlow<A> {
    /// The checksum of the entry's fields (without `check`).
    #[inline(always)]
    pub fn checksum(&self) -> u32 {
        const P: u64 = 0x9e37_79b9_7f4a_7c15;
        let c = &self.connection;
        let ports = c.port_lo as u64 | (c.port_hi as u64) << 16 | (c.protocol as u64) << 32;
        let small = self.opened_by as u64 | (self.enforced_slot as u64) << 8 | (self.local_side as u64) << 16;
        let mut h = (c.ifindex as u64 ^ c.addr_lo_be.fold() << 32).wrapping_mul(P);
        h = (h ^ (c.addr_hi_be.fold() ^ ports << 32)).wrapping_mul(P);
        h = (h ^ (self.index as u64 | (self.version as u64) << 32)).wrapping_mul(P);
        h = (h ^ self.valid_until ^ small << 40).wrapping_mul(P);
        (h ^ (h >> 32)) as u32
    }
}

/// The fast-flow cache slot of a connection.
#[inline(always)]
pub fn fast_flow_index<A: Address>(connection: &CtKey<A>) -> u32 {
    const P: u64 = 0x9e37_79b9_7f4a_7c15;
    let ports = connection.port_lo as u64 | (connection.port_hi as u64) << 16 | (connection.protocol as u64) << 32;
    let mut h = (connection.addr_lo_be.fold() ^ connection.addr_hi_be.fold() << 32).wrapping_mul(P);
    h = (h ^ ports ^ (connection.ifindex as u64) << 40).wrapping_mul(P);
    (h >> 48) as u32 & (FAST_FLOW_ENTRIES - 1)
}

/// A flow whose verdict is worth reporting: dropped, audited, or judged differently by the
/// candidate. Counted in the kernel so events scale with new flows, not packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub endpoint: u32,
    pub identity: u32,
    pub dport: u16,
    pub protocol: u8,
    pub direction: u8,
    /// Verdict of the enforced slot (also in audit mode, where it does not decide).
    pub enforced_verdict: u8,
    /// Verdict of the candidate slot, `VERDICT_NONE` without a candidate.
    pub candidate_verdict: u8,
    /// The endpoint's mode when the verdict applied; `MODE_ENFORCE` for drops that happen in
    /// every mode (an invalid source).
    pub mode: u8,
    /// Why the enforced side drops (`DROP_*`), `DROP_NONE` when it passes.
    pub reason: u8,
}

impl FlowKey {
    /// The enforced side drops the flow (or would, in audit mode).
    pub const fn drop_reason(&self) -> Option<DropReason> {
        DropReason::from_raw(self.reason)
    }

    pub const fn direction(&self) -> Direction {
        Direction::from_raw(self.direction)
    }

    /// The packet's IP protocol; any number can reach the program.
    pub const fn protocol(&self) -> Result<Protocol, UnknownProtocol> {
        match Protocol::from_raw(self.protocol) {
            Some(protocol) => Ok(protocol),
            None => Err(UnknownProtocol(self.protocol)),
        }
    }

    /// The enforced slot's verdict (a missing slot or entry denies).
    pub const fn enforced_verdict(&self) -> Verdict {
        Verdict::from_raw_or_deny(self.enforced_verdict)
    }

    /// The candidate's verdict; `None` without a candidate.
    pub const fn candidate_verdict(&self) -> Option<Verdict> {
        Verdict::from_raw(self.candidate_verdict)
    }

    pub const fn mode(&self) -> Mode {
        Mode::from_raw(self.mode)
    }

    /// The candidate judges the flow otherwise than the enforced side.
    pub const fn differs(&self) -> bool {
        self.candidate_verdict != VERDICT_NONE && self.candidate_verdict != self.enforced_verdict
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowStats {
    pub packets: u64,
    pub first_seen_ns: u64,
    pub enforced_cookie: u32,
    pub candidate_cookie: u32,
}

/// Ring-buffer record for the first packet of a new reported flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowEvent {
    pub flow: FlowKey,
    /// The packet's addresses, both families as IPv6 ([`Address::mapped`], [`event_address`]).
    pub saddr: Ipv6Words,
    pub daddr: Ipv6Words,
    pub enforced_cookie: u32,
    pub candidate_cookie: u32,
    /// The Service ClusterIP and port the source connected to, when kube-proxy translated the
    /// connection to `daddr` (port 0 otherwise).
    pub service_addr: Ipv6Words,
    pub service_port: u16,
    pub _pad: u16,
    pub _pad2: u32,
    pub timestamp_ns: u64,
}

impl FlowEvent {
    pub fn source(&self) -> core::net::IpAddr {
        event_address(self.saddr)
    }

    pub fn destination(&self) -> core::net::IpAddr {
        event_address(self.daddr)
    }

    /// The Service address and port the connection was opened to, when it went to one.
    pub fn service(&self) -> Option<(core::net::IpAddr, u16)> {
        (self.service_port != 0).then(|| (event_address(self.service_addr), self.service_port))
    }
}

/// The connection a source endpoint opened to a Service, as its hook saw it before translation:
/// what the hook judging it after translation names it by (the source port survives DNAT).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceOriginKey {
    /// The source endpoint's counter index.
    pub index: u32,
    pub sport: u16,
    pub protocol: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceOrigin {
    /// The ClusterIP, as flow events carry addresses ([`Address::mapped`]).
    pub addr: Ipv6Words,
    pub port: u16,
    pub _pad: u16,
}

/// Per-endpoint packet counters (a per-CPU map; userspace sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointCounters {
    /// Packets decided by slot A and slot B (replies and mode-off packets are in neither).
    pub slot_packets: [u64; 2],
    pub allowed: u64,
    /// Dropped by the enforced policy: denied, or redirected to an L7 proxy that does not exist.
    pub denied: u64,
    /// Audit mode: packets the enforced slot would have dropped, let through.
    pub audited: u64,
    /// Packets the candidate judged differently from the enforced slot.
    pub shadow_diffs: u64,
    /// Replies and related ICMP of tracked connections, passed without policy.
    pub replies: u64,
    /// Packets passed unevaluated in mode off.
    pub unenforced: u64,
    /// Events for new flows dropped by the rate limiter or a full ring buffer.
    pub events_lost: u64,
    /// Packets dropped (in every mode) for leaving with another address than the endpoint's.
    pub invalid_source: u64,
    /// Packets dropped (enforce) or let through (audit) that could not be judged: an unknown
    /// ethertype, a malformed header, a later fragment without its first, an unrelated ICMP error.
    pub unjudged: u64,
    /// Connections judged: one per conntrack entry opened, and one per packet of an attempt that
    /// is dropped (it opens none).
    pub connections: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `repr(C)` data without padding holes that could leak uninitialised bytes.
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PolicyMatch {}
    unsafe impl aya::Pod for super::PolicyValue {}
    unsafe impl aya::Pod for super::EndpointConfig {}
    unsafe impl aya::Pod for super::SlotKey {}
    unsafe impl<A: aya::Pod> aya::Pod for super::CtKey<A> {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::CtDecision {}
    unsafe impl<A: aya::Pod> aya::Pod for super::FastFlow<A> {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::EndpointCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_prefix_keys_cover_aligned_ranges() {
        let key = PolicyKey::new(300, Direction::Ingress, Some(Protocol::TCP), 8080, 12);
        assert_eq!(key.port_range(), (8080, 8095));
        assert_eq!(key.prefix_len, 40 + 8 + 12);
        assert_eq!(key.identity(), 300);
        let any = PolicyKey::new(0, Direction::Egress, None, 1234, 16);
        assert_eq!((any.protocol(), any.port_range(), any.l4_prefix_len()), (None, (0, 65535), 0));
        let lookup = PolicyKey::lookup(1, Direction::Ingress, Protocol::UDP, 53);
        assert_eq!(
            (lookup.port_range(), lookup.direction(), lookup.protocol()),
            ((53, 53), Direction::Ingress, Some(Protocol::UDP))
        );
        assert_eq!(lookup.data(), PolicyMatch::packet(1, DIRECTION_INGRESS, PROTO_UDP, 53));
    }

    #[test]
    fn drop_reasons_round_trip_and_have_one_spelling() {
        for reason in DropReason::ALL {
            assert_eq!(DropReason::from_raw(reason.raw()), Some(reason));
            assert!(reason.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        }
        assert_eq!(DropReason::from_raw(DROP_NONE), None);
        assert_eq!(verdict_drop_reason(VERDICT_REDIRECT), DROP_NONE, "the proxy judges a redirect");
        assert_eq!(verdict_drop_reason(VERDICT_L7_UNSUPPORTED), DROP_L7_UNSUPPORTED);
        assert!(verdict_drops(VERDICT_DENY) && !verdict_drops(VERDICT_REDIRECT) && !verdict_drops(VERDICT_ALLOW));
    }

    #[test]
    fn deny_outranks_redirect_outranks_allow() {
        assert!(precedence_of(VERDICT_DENY) > precedence_of(VERDICT_REDIRECT));
        assert!(precedence_of(VERDICT_REDIRECT) > precedence_of(VERDICT_ALLOW));
    }
}
