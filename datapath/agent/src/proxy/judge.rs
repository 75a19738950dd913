//! Whose policy judges a proxied request and what it decides, under the enforced revision and
//! the audited candidate: one implementation for HTTP requests and DNS queries.
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use palisade_common::{COOKIE_NONE, Direction};
use palisade_policy::CompiledPolicy;
use palisade_policy::RequestVerdict;
use palisade_policy::l7::{HttpRewrite, L7Request};
use palisade_policy::model::Protocol;
use palisade_policy::trace::FlowPort;

use super::{L7Diff, L7Diffs, ProxyPolicy, RequestKind};
use crate::observe::{FlowPeer, peer};

/// The two ends of a proxied connection or DNS exchange: the client, and the destination it
/// addressed (which the proxy's upstream reaches from the client's own address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Ends {
    pub client: Ipv4Addr,
    pub destination: SocketAddrV4,
    pub protocol: Protocol,
}

impl Ends {
    pub fn port(&self) -> FlowPort {
        FlowPort { protocol: self.protocol, port: self.destination.port() }
    }
}

/// One end that is a local endpoint, whose policy judges the request.
pub(super) struct Side {
    namespace: String,
    name: String,
    pub direction: Direction,
    /// The other end's address and identity.
    peer: Ipv4Addr,
    remote: u32,
}

impl Side {
    /// The L7 rules decide where the entry redirects; elsewhere the L4 entry alone does.
    fn judge(&self, policy: &CompiledPolicy, port: FlowPort, request: &L7Request) -> RequestVerdict {
        if let Some(verdict) =
            policy.judge_request(&self.namespace, &self.name, self.direction, self.remote, port, request)
        {
            return verdict;
        }
        let allowed = policy.l4_allows(&self.namespace, &self.name, self.direction, self.remote, port).unwrap_or(true);
        let reason = if allowed { "allowed at L4" } else { "denied at L4" };
        RequestVerdict { allowed, reason: reason.to_string(), cookie: COOKIE_NONE, rewrite: HttpRewrite::default() }
    }

    /// The kinds of L7 rules that apply to this side's flow ("dns", "http", ...).
    fn l7_kinds(&self, policy: &CompiledPolicy, port: FlowPort) -> Vec<&'static str> {
        policy.l7_kinds(&self.namespace, &self.name, self.direction, self.remote, port)
    }
}

/// What a policy snapshot says about a pair of ends: the sides that judge (the client's egress
/// and the destination's ingress, where they are local endpoints) and both ends as observers
/// see them.
pub(super) struct Found {
    pub sides: Vec<Side>,
    pub source: FlowPeer,
    pub destination: FlowPeer,
}

impl Found {
    fn of(policy: &CompiledPolicy, ends: Ends) -> Found {
        let destination = *ends.destination.ip();
        let identities = [policy.identity_of_addr(ends.client.into()), policy.identity_of_addr(destination.into())];
        let mut sides = Vec::with_capacity(2);
        for (local, (peer, remote), direction) in [
            (ends.client, (destination, identities[1]), Direction::Egress),
            (destination, (ends.client, identities[0]), Direction::Ingress),
        ] {
            if let Some((namespace, name)) = policy.endpoint_at(local.into()) {
                sides.push(Side { namespace: namespace.to_string(), name: name.to_string(), direction, peer, remote });
            }
        }
        Found {
            sides,
            source: peer(policy, ends.client.into(), identities[0]),
            destination: peer(policy, destination.into(), identities[1]),
        }
    }
}

/// What the current policy snapshot says about one pair of ends, found again only when the
/// agent publishes a new one: finding an end's endpoint and identity is a lookup in the
/// compiled policy.
#[derive(Default)]
pub(super) struct Sides(Mutex<Option<(Arc<CompiledPolicy>, Arc<Found>)>>);

impl Sides {
    pub fn of(&self, policy: &Arc<CompiledPolicy>, ends: Ends) -> Arc<Found> {
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((found_in, found)) if Arc::ptr_eq(found_in, policy) => found.clone(),
            _ => {
                let found = Arc::new(Found::of(policy, ends));
                *cached = Some((policy.clone(), found.clone()));
                found
            }
        }
    }
}

/// How every side judged one request: under the enforced policy, and under the candidate when
/// one is audited.
pub(super) struct Judged {
    pub verdicts: Vec<(RequestVerdict, Option<RequestVerdict>)>,
}

impl Judged {
    /// The enforced denial, if a side denies the request.
    pub fn denial(&self) -> Option<&RequestVerdict> {
        self.verdicts.iter().map(|(enforced, _)| enforced).find(|v| !v.allowed)
    }

    /// The side observers are shown as deciding: the one that denies, else the first.
    pub fn deciding(&self) -> Option<usize> {
        self.verdicts.iter().position(|(enforced, _)| !enforced.allowed).or((!self.verdicts.is_empty()).then_some(0))
    }
}

/// Judges `request` between `ends` under every side's enforced policy (it goes upstream only
/// when none denies it), and counts it in `diffs` where the candidate judges it otherwise.
pub(super) fn judge(policy: &ProxyPolicy, found: &Found, ends: Ends, request: &L7Request, diffs: &L7Diffs) -> Judged {
    let port = ends.port();
    let mut verdicts = Vec::with_capacity(found.sides.len());
    for side in &found.sides {
        let enforced = side.judge(&policy.enforced, port, request);
        let candidate = policy.candidate.as_ref().map(|c| side.judge(c, port, request));
        if let Some(judged) = candidate.as_ref().filter(|c| c.allowed != enforced.allowed) {
            diffs.record(L7Diff {
                namespace: side.namespace.clone(),
                pod: side.name.clone(),
                direction: side.direction,
                peer: side.peer,
                peer_identity: side.remote,
                protocol: ends.protocol,
                port: port.port,
                request: RequestKind::of(request),
                enforced_allows: enforced.allowed,
                candidate_allows: judged.allowed,
                enforced_cookie: enforced.cookie,
                candidate_cookie: judged.cookie,
            });
        }
        verdicts.push((enforced, candidate));
    }
    Judged { verdicts }
}

/// Whether DNS rules apply to the flow between `ends` under either revision: the proxy then
/// speaks DNS on it.
pub(super) fn speaks_dns(policy: &ProxyPolicy, found: &Found, ends: Ends) -> bool {
    speaks(policy, found, ends, "dns")
}

/// Whether L7 rules of `kind` ("dns", "tls", ...) apply to the flow between `ends` under
/// either revision.
pub(super) fn speaks(policy: &ProxyPolicy, found: &Found, ends: Ends, kind: &str) -> bool {
    let port = ends.port();
    let compilations = std::iter::once(&policy.enforced).chain(&policy.candidate);
    compilations.flat_map(|c| found.sides.iter().map(move |s| s.l7_kinds(c, port))).any(|kinds| kinds.contains(&kind))
}
