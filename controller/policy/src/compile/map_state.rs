//! One direction of an endpoint group's policy map (Cilium's `MapState`): the entries per remote
//! identity, the lookup the datapath does on them, port ranges as aligned prefixes, and the
//! precedence of deny over allow.
use std::collections::{BTreeMap, HashMap};

use palisade_common::{self as dp, Direction, PolicyEntry, PolicyKey, PolicyValue, Protocol, Verdict};

use crate::model::Peer;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enforcement {
    /// No rule selects the endpoint in this direction: everything is allowed.
    NotEnforced,
    DefaultDeny,
    /// Only rules with `enableDefaultDeny: false` select it: allowed unless denied.
    DefaultAllow,
}

/// The policy map of one direction of an endpoint group.
#[derive(Clone, Debug)]
pub struct MapState {
    pub enforcement: Enforcement,
    pub(crate) rules: Vec<CompiledRule>,
    /// Remote identity (0 = any) → its entries.
    by_identity: HashMap<u32, Vec<PolicyEntry>>,
}

/// A peer rule with its ports resolved for one group, each with its verdict: a deny rule denies
/// every port; an allow rule redirects the ports that have L7 rules and allows the others.
#[derive(Clone, Debug)]
pub(crate) struct CompiledRule {
    pub cookie: u32,
    pub peers: RulePeers,
    pub ports: Vec<(PortMatch, Verdict)>,
    pub deny: bool,
}

#[derive(Clone, Debug)]
pub(crate) enum RulePeers {
    All,
    Some(Vec<Peer>),
    /// Synthesized entries for one reserved identity.
    Identity(u32),
}

/// What a rule matches at L4: every protocol, or one protocol and an aligned block of ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PortMatch {
    pub protocol: Option<Protocol>,
    pub ports: PortBlock,
}

impl PortMatch {
    pub const ANY: PortMatch = PortMatch { protocol: None, ports: PortBlock::ALL };
}

/// An aligned power-of-two block of ports: `first` and how many of its high bits are significant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortBlock {
    pub first: u16,
    pub bits: u8,
}

impl PortBlock {
    pub const ALL: PortBlock = PortBlock { first: 0, bits: 0 };

    pub const fn single(port: u16) -> PortBlock {
        PortBlock { first: port, bits: 16 }
    }
}

/// One rule's say on one key of one remote identity.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Contribution {
    pub port: PortMatch,
    pub verdict: Verdict,
    pub cookie: u32,
}

impl CompiledRule {
    /// A rule that allows every peer (or one identity) on every port.
    pub fn allow_all(cookie: u32, peers: RulePeers) -> CompiledRule {
        CompiledRule { cookie, peers, ports: vec![(PortMatch::ANY, Verdict::Allow)], deny: false }
    }

    fn contributions(&self) -> impl Iterator<Item = Contribution> + '_ {
        self.ports.iter().map(|&(port, verdict)| Contribution { port, verdict, cookie: self.cookie })
    }
}

impl MapState {
    /// The map state of `rules`, each remote identity's entries resolved from the rules
    /// `remotes_of` says select it.
    pub(crate) fn new(
        enforcement: Enforcement,
        rules: Vec<CompiledRule>,
        direction: Direction,
        mut remotes_of: impl FnMut(&CompiledRule) -> Vec<u32>,
    ) -> MapState {
        let mut by_remote: HashMap<u32, Vec<&CompiledRule>> = HashMap::new();
        for rule in &rules {
            for id in remotes_of(rule) {
                by_remote.entry(id).or_default().push(rule);
            }
        }
        let by_identity = by_remote
            .into_iter()
            .map(|(id, touching)| (id, resolve(id, direction, contributions(&touching))))
            .filter(|(_, entries)| !entries.is_empty())
            .collect();
        MapState { enforcement, rules, by_identity }
    }

    /// No rules, no entries.
    pub(crate) fn empty() -> MapState {
        MapState { enforcement: Enforcement::NotEnforced, rules: Vec::new(), by_identity: HashMap::new() }
    }

    /// All entries, sorted, as they go into the endpoint's policy map.
    pub fn entries(&self) -> Vec<PolicyEntry> {
        let mut entries: Vec<PolicyEntry> = self.by_identity.values().flatten().copied().collect();
        entries.sort_by_key(|e| (e.key.identity(), e.key.protocol(), e.key.port(), e.key.prefix_len));
        entries
    }

    pub fn len(&self) -> usize {
        self.by_identity.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry the datapath would pick, with the same two lookups as the eBPF program: the
    /// identity-specific and the wildcard longest-prefix matches, then higher precedence, then
    /// the longer L4 prefix, then the identity-specific one.
    pub fn lookup(&self, identity: u32, protocol: Protocol, port: u16) -> Option<PolicyEntry> {
        let longest = |id: u32| {
            self.by_identity
                .get(&id)?
                .iter()
                .filter(|e| key_matches(&e.key, protocol, port))
                .max_by_key(|e| e.key.prefix_len)
                .copied()
        };
        let specific = if identity == dp::IDENTITY_ANY { None } else { longest(identity) };
        match (specific, longest(dp::IDENTITY_ANY)) {
            (Some(s), Some(w)) => {
                let rank = |e: &PolicyEntry| (e.value.precedence, e.key.l4_prefix_len());
                Some(if rank(&w) > rank(&s) { w } else { s })
            }
            (s, w) => s.or(w),
        }
    }

    /// Recomputes the entries of remote identity `id` from the rules `selects` says select it;
    /// returns whether they changed.
    pub(crate) fn patch(&mut self, id: u32, direction: Direction, selects: impl Fn(&CompiledRule) -> bool) -> bool {
        let touching: Vec<&CompiledRule> = self.rules.iter().filter(|r| selects(r)).collect();
        let entries = resolve(id, direction, contributions(&touching));
        let old = if entries.is_empty() {
            self.by_identity.remove(&id)
        } else {
            self.by_identity.insert(id, entries.clone())
        };
        old.unwrap_or_default() != entries
    }

    /// Drops the entries of remote identity `id`; returns whether it had any.
    pub(crate) fn remove_identity(&mut self, id: u32) -> bool {
        self.by_identity.remove(&id).is_some()
    }
}

fn key_matches(key: &PolicyKey, protocol: Protocol, port: u16) -> bool {
    match key.protocol() {
        None => true,
        Some(p) => {
            let (lo, hi) = key.port_range();
            p == protocol && (lo..=hi).contains(&port)
        }
    }
}

/// Aligned power-of-two blocks covering `lo..=hi`.
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<PortBlock> {
    let (mut lo, hi) = (lo as u32, hi as u32);
    let mut out = Vec::new();
    while lo <= hi {
        let mut size = if lo == 0 { 1 << 16 } else { 1 << lo.trailing_zeros().min(16) };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push(PortBlock { first: lo as u16, bits: (16 - size.trailing_zeros()) as u8 });
        lo += size;
    }
    out
}

/// Whether deny `d` covers entry `e` of the same identity: an equal or broader protocol/port space.
fn covers(d: &PolicyKey, e: &PolicyKey) -> bool {
    match (d.protocol(), e.protocol()) {
        (None, _) => true,
        (Some(dp), Some(ep)) if dp == ep => {
            let ((dlo, dhi), (elo, ehi)) = (d.port_range(), e.port_range());
            dlo <= elo && ehi <= dhi
        }
        _ => false,
    }
}

fn contributions<'a>(rules: &'a [&'a CompiledRule]) -> impl Iterator<Item = Contribution> + 'a {
    rules.iter().flat_map(|r| r.contributions())
}

/// Merges the contributions for one remote identity: the strongest verdict per key, then every
/// allow or redirect inside a broader deny is dropped. The trie returns only the longest match,
/// so without this a narrower allow would beat the deny that must win over it.
pub(crate) fn resolve(
    identity: u32,
    direction: Direction,
    contributions: impl Iterator<Item = Contribution>,
) -> Vec<PolicyEntry> {
    let mut map: BTreeMap<PolicyKey, PolicyValue> = BTreeMap::new();
    for Contribution { port, verdict, cookie } in contributions {
        let key = PolicyKey::new(identity, direction, port.protocol, port.ports.first, port.ports.bits);
        let value = PolicyValue::new(verdict, cookie);
        map.entry(key)
            .and_modify(|v| {
                if (value.precedence, std::cmp::Reverse(value.cookie)) > (v.precedence, std::cmp::Reverse(v.cookie)) {
                    *v = value;
                }
            })
            .or_insert(value);
    }
    let denies: Vec<PolicyKey> = map.iter().filter(|(_, v)| v.verdict() == Verdict::Deny).map(|(k, _)| *k).collect();
    map.into_iter()
        .filter(|(key, value)| value.verdict() == Verdict::Deny || !denies.iter().any(|d| covers(d, key)))
        .map(|(key, value)| PolicyEntry { key, value })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_split_into_aligned_prefixes() {
        let block = |first, bits| PortBlock { first, bits };
        assert_eq!(port_prefixes(80, 80), vec![block(80, 16)]);
        assert_eq!(port_prefixes(0, 65535), vec![block(0, 0)]);
        assert_eq!(port_prefixes(8080, 8095), vec![block(8080, 12)]);
        let blocks = port_prefixes(1000, 2000);
        let covered: u32 = blocks.iter().map(|b| 1u32 << (16 - b.bits)).sum();
        assert_eq!(covered, 1001);
        assert_eq!(port_prefixes(65535, 65535), vec![block(65535, 16)]);
    }

    #[test]
    fn broader_deny_overrides_narrower_allow_of_the_same_identity() {
        let on = |protocol, port, bits, verdict, cookie| Contribution {
            port: PortMatch { protocol, ports: PortBlock { first: port, bits } },
            verdict,
            cookie,
        };
        let entries = resolve(
            300,
            Direction::Ingress,
            [
                on(Some(Protocol::TCP), 80, 16, Verdict::Allow, 7),
                on(Some(Protocol::UDP), 53, 16, Verdict::Redirect, 8),
                on(None, 0, 0, Verdict::Deny, 9),
                on(Some(Protocol::TCP), 0, 0, Verdict::Deny, 10),
            ]
            .into_iter(),
        );
        assert!(entries.iter().all(|e| e.value.verdict() == Verdict::Deny), "covered allows are dropped: {entries:?}");
        assert_eq!(entries.len(), 2);
    }
}
