//! The normalized policy model every resource kind is translated into: namespaces injected,
//! entities expanded to selectors, `ANY` expanded to TCP+UDP+SCTP, each allow or deny rule
//! numbered with a cookie the datapath reports back.
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
pub use palisade_common::{Direction, Protocol};
use regex::Regex;

use crate::identity::Identity;
use crate::labels::Source;
use crate::selector::Selector;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum PolicyKind {
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    NetworkPolicy,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            PolicyKind::NetworkPolicy => "NetworkPolicy",
        }
    }
}

/// Identifies a policy object: kind, namespace (none for cluster-wide) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct PolicyId {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind.as_str(), ns, self.name),
            None => write!(f, "{} {}", self.kind.as_str(), self.name),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Policy {
    pub id: PolicyId,
    pub file: String,
    pub line: u32,
    pub rules: Vec<Rule>,
    /// The object as written (canonical JSON), for text diffs and content digests.
    pub source: serde_json::Value,
}

impl Policy {
    /// Every peer its rules name, both directions.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.rules.iter().flat_map(|r| r.ingress.rules.iter().chain(&r.egress.rules)).flat_map(|rule| {
            match &rule.peers {
                Peers::Some(peers) => peers.as_slice(),
                Peers::All => &[],
            }
        })
    }

    /// Whether a rule of it selects nodes (`nodeSelector`): a host policy.
    pub fn is_host_policy(&self) -> bool {
        self.rules.iter().any(Rule::is_host_rule)
    }

    /// The node label keys its `fromNodes`/`toNodes` selectors constrain: remote nodes get
    /// identities of these labels (Cilium's `--node-labels`, derived from the policies).
    pub fn node_label_keys(&self) -> BTreeSet<String> {
        let selectors = self.peers().filter_map(|peer| match peer {
            Peer::Nodes(selector) => Some(selector),
            _ => None,
        });
        let requirements = selectors.flat_map(Selector::requirements).filter(|r| r.source != Source::Reserved);
        requirements.map(|r| r.key.clone()).collect()
    }

    /// The prefixes its CIDR rules and ipBlocks name, excepts included: they get CIDR identities.
    pub fn cidr_prefixes(&self) -> BTreeSet<Prefix> {
        let mut prefixes = BTreeSet::new();
        for peer in self.peers() {
            if let Peer::Cidr(block) | Peer::IpBlock(block) = peer {
                prefixes.insert(block.cidr);
                prefixes.extend(block.except.iter().copied());
            }
        }
        prefixes
    }
}

/// One Cilium rule (`spec` or an element of `specs`; a NetworkPolicy is one rule).
#[derive(Clone, Debug)]
pub struct Rule {
    pub path: String,
    /// Line of the selector that picks the rule's endpoints.
    pub line: u32,
    pub subject_kind: SubjectKind,
    /// Endpoints the rule applies to, namespace already injected for namespaced kinds; for a
    /// host rule the node labels plus `reserved:host`, so it matches host identities only.
    pub subject: Selector,
    pub description: Option<String>,
    pub ingress: Section,
    pub egress: Section,
}

/// What a rule's subject selects (Cilium's `matchesSubject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubjectKind {
    /// Pods and other endpoints (`endpointSelector`, `podSelector`), never the host.
    Endpoints,
    /// The host endpoint of the nodes whose labels match (`nodeSelector`), never a pod.
    Nodes,
}

impl Rule {
    pub fn section(&self, direction: Direction) -> &Section {
        direction.pick(&self.ingress, &self.egress)
    }

    /// A host rule: it selects nodes (`nodeSelector`).
    pub fn is_host_rule(&self) -> bool {
        self.subject_kind == SubjectKind::Nodes
    }

    /// Whether the rule applies to the endpoint of `identity`: a host rule to the host
    /// identity only, any other rule never to it.
    pub fn selects(&self, identity: &Identity) -> bool {
        (identity.id == palisade_common::IDENTITY_HOST) == self.is_host_rule() && self.subject.matches(&identity.labels)
    }
}

/// The allow and deny rules of one direction.
#[derive(Clone, Debug, Default)]
pub struct Section {
    /// A non-empty allow or deny list puts selected endpoints into policy for this direction.
    pub enables_policy: bool,
    /// False when the rule says `enableDefaultDeny: false` for this direction.
    pub default_deny: bool,
    pub rules: Vec<PeerRule>,
}

/// One element of `ingress`, `ingressDeny`, `egress` or `egressDeny` (or a NetworkPolicy rule).
#[derive(Clone, Debug)]
pub struct PeerRule {
    pub path: String,
    pub line: u32,
    pub cookie: u32,
    pub deny: bool,
    pub peers: Peers,
    /// Empty: an L3-only rule, every protocol and port (ICMP included).
    pub ports: Vec<PortRule>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Peers {
    /// Every identity, world included (identity 0 in the map).
    All,
    /// Any of these; an empty list selects nothing.
    Some(Vec<Peer>),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Identities whose labels match (pods, reserved identities, CIDR identities via `reserved:world`).
    Labels(Selector),
    /// `fromNodes`/`toNodes`: remote-node identities whose node labels match (the selector
    /// requires `reserved:remote-node`, so never the local host).
    Nodes(Selector),
    /// CIDR identities inside the block; never pods (Cilium semantics).
    Cidr(CidrBlock),
    /// A NetworkPolicy ipBlock: like `Cidr`, and also the pods whose IPs are inside (Kubernetes semantics).
    IpBlock(CidrBlock),
    /// Backends of a Kubernetes Service, resolved against the cluster.
    Service(ServiceRef),
    /// Addresses learned from DNS answers at runtime.
    Fqdn(FqdnMatch),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceRef {
    Name { namespace: String, name: String },
    Selector { namespace: Option<String>, selector: Selector },
}

/// An IPv4 or IPv6 prefix with its host bits cleared. Ordered IPv4 before IPv6 (then by
/// address and length), so a sorted list keeps the IPv4 entries first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// `addr/len` with the host bits cleared; `len` is at most 32 for IPv4, 128 for IPv6.
    pub fn new(addr: IpAddr, len: u8) -> Prefix {
        Prefix::from(IpNet::new(addr, len).expect("a prefix length fits its family").trunc())
    }

    /// The prefix of exactly one address: /32 or /128.
    pub fn host(addr: IpAddr) -> Prefix {
        Prefix { addr, len: max_len(addr) }
    }

    /// `0.0.0.0/0` or `::/0`: everything of one family.
    pub fn everything(ipv6: bool) -> Prefix {
        let addr = if ipv6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
        Prefix { addr, len: 0 }
    }

    /// `10.0.0.0/8`, `2001:db8::/32`, or a bare address meaning /32 or /128.
    pub fn parse(text: &str) -> Option<Prefix> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().ok()?)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        Some(Prefix::from(IpNet::new(addr, len.unwrap_or(max_len(addr))).ok()?.trunc()))
    }

    pub fn net(&self) -> IpNet {
        IpNet::new(self.addr, self.len).expect("a Prefix holds a valid length")
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// The IPv4 network, for the consumers that only handle IPv4 yet.
    pub fn ipv4(&self) -> Option<Ipv4Net> {
        match self.net() {
            IpNet::V4(net) => Some(net),
            IpNet::V6(_) => None,
        }
    }

    /// Whether the prefix holds one address (/32 or /128).
    pub fn is_host(&self) -> bool {
        self.len == max_len(self.addr)
    }

    /// False for an address of the other family.
    pub fn contains_addr(&self, addr: IpAddr) -> bool {
        self.net().contains(&addr)
    }

    /// False for a prefix of the other family.
    pub fn contains(&self, other: &Prefix) -> bool {
        self.net().contains(&other.net())
    }
}

/// 32 for IPv4, 128 for IPv6.
fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

impl From<IpNet> for Prefix {
    fn from(net: IpNet) -> Prefix {
        Prefix { addr: net.addr(), len: net.prefix_len() }
    }
}

impl From<Ipv4Net> for Prefix {
    fn from(net: Ipv4Net) -> Prefix {
        Prefix::from(IpNet::V4(net))
    }
}

impl From<Ipv6Net> for Prefix {
    fn from(net: Ipv6Net) -> Prefix {
        Prefix::from(IpNet::V6(net))
    }
}

/// `10.0.0.0/8`; IPv6 in RFC 5952 form (`2001:db8::/32`).
impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CidrBlock {
    pub cidr: Prefix,
    pub except: Vec<Prefix>,
}

impl CidrBlock {
    /// Whether a CIDR identity for `prefix` is selected: inside the block and in no except hole.
    pub fn selects(&self, prefix: &Prefix) -> bool {
        self.cidr.contains(prefix) && !self.except.iter().any(|e| e.contains(prefix))
    }

    pub fn selects_addr(&self, addr: IpAddr) -> bool {
        self.cidr.contains_addr(addr) && !self.except.iter().any(|e| e.contains_addr(addr))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FqdnMatch {
    Name(String),
    Pattern(String),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortSpec {
    Any,
    /// Inclusive range; a single port is `Range(p, p)`. For ICMP the "port" is the ICMP type.
    Range(u16, u16),
    /// A container port name, resolved per endpoint.
    Named(String),
}

#[derive(Clone, Debug)]
pub struct PortRule {
    pub protocol: Protocol,
    pub port: PortSpec,
    /// L7 rules turn the L4 entry into a proxy redirect.
    pub l7: Option<L7Rules>,
    /// Where the L7 rules are written: field path (`spec.ingress[0].toPorts[0].rules.http`) and
    /// line.
    pub l7_at: Option<(String, u32)>,
}

#[derive(Clone, Debug)]
pub enum L7Rules {
    Http(Vec<HttpMatch>),
    Kafka(Vec<KafkaMatch>),
    Dns(Vec<FqdnMatch>),
    /// `serverNames`: the TLS server names (SNI) a connection's ClientHello may ask for,
    /// lower case without the root dot: exact names, or `*.` and a domain for any name below it.
    Tls(Vec<String>),
}

impl L7Rules {
    pub fn kind(&self) -> &'static str {
        match self {
            L7Rules::Http(_) => "http",
            L7Rules::Kafka(_) => "kafka",
            L7Rules::Dns(_) => "dns",
            L7Rules::Tls(_) => "tls",
        }
    }
}

/// An HTTP rule: each present field must match the whole request field (Envoy regex semantics).
#[derive(Clone, Debug)]
pub struct HttpMatch {
    pub method: Option<Regex>,
    pub path: Option<Regex>,
    pub host: Option<Regex>,
    /// Required headers: a name, or a name and an exact value.
    pub headers: Vec<(String, Option<String>)>,
    pub header_matches: Vec<HeaderMatch>,
}

/// A `headerMatches` entry: a header (lower-case name) present, or with an exact value, and
/// what to do when it is not (`None`: the rule does not match).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: String,
    pub value: Option<String>,
    pub mismatch: Option<Mismatch>,
}

/// Cilium's `mismatch` actions: the rule still matches, and the mismatch is logged or the
/// header added, deleted or replaced on the way upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    Log,
    Add,
    Delete,
    Replace,
}

/// A Kafka rule (Cilium's `PortRuleKafka`) with its `role` or `apiKey` resolved to API keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaMatch {
    /// The API keys it allows (`role: produce` is produce, metadata and apiversions); empty:
    /// every key.
    pub api_keys: Vec<i16>,
    /// The one request version it allows, if set.
    pub api_version: Option<i16>,
    /// The client id a request must carry, if set.
    pub client_id: Option<String>,
    /// The topic it allows; `None`: every topic.
    pub topic: Option<String>,
}

/// All policies of one revision, in a stable order. Cookies encode `(policy index + 1) << 12 |
/// rule index`, so they stay put when another policy changes.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
}

pub const MAX_RULES_PER_POLICY: usize = 1 << COOKIE_RULE_BITS;
pub const MAX_POLICIES: usize = 1 << 19;
const COOKIE_RULE_BITS: u32 = 12;

pub fn cookie(policy_index: usize, rule_index: usize) -> u32 {
    (((policy_index + 1) as u32) << COOKIE_RULE_BITS) | rule_index as u32
}

/// The index of the policy a rule cookie names; `None` for the datapath's own cookies.
pub fn policy_index(cookie: u32) -> Option<usize> {
    if cookie >= palisade_common::COOKIE_RESERVED_FIRST {
        return None;
    }
    Some((cookie >> COOKIE_RULE_BITS).checked_sub(1)? as usize)
}

impl PolicySet {
    /// The node label keys of every policy ([`Policy::node_label_keys`]).
    pub fn node_label_keys(&self) -> BTreeSet<String> {
        self.policies.iter().flat_map(Policy::node_label_keys).collect()
    }

    /// The NetworkPolicy ipBlocks of every policy.
    pub fn ip_blocks(&self) -> BTreeSet<CidrBlock> {
        let blocks = self.policies.iter().flat_map(Policy::peers).filter_map(|peer| match peer {
            Peer::IpBlock(block) => Some(block.clone()),
            _ => None,
        });
        blocks.collect()
    }

    /// The policy and rule a cookie names, if it names one.
    pub fn rule_for_cookie(&self, cookie: u32) -> Option<(&Policy, &PeerRule)> {
        let policy = self.policies.get(policy_index(cookie)?)?;
        let rule = policy
            .rules
            .iter()
            .flat_map(|r| r.ingress.rules.iter().chain(&r.egress.rules))
            .find(|r| r.cookie == cookie)?;
        Some((policy, rule))
    }

    /// Human-readable origin of a datapath entry's cookie.
    pub fn describe_cookie(&self, cookie: u32) -> String {
        match cookie {
            palisade_common::COOKIE_NONE => "default deny (no rule allows it)".to_string(),
            palisade_common::COOKIE_NOT_ENFORCED => "no policy selects the endpoint in this direction".to_string(),
            palisade_common::COOKIE_DEFAULT_ALLOW => "enableDefaultDeny: false (default allow)".to_string(),
            palisade_common::COOKIE_LOCALHOST => "the local host may always reach its pods".to_string(),
            _ => match self.rule_for_cookie(cookie) {
                Some((policy, rule)) => format!("{} {}", policy.id, rule.path),
                None => format!("unknown rule cookie {cookie}"),
            },
        }
    }
}
