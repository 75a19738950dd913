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

/// The two ends of a proxied connection or DNS exchange: the client, and the destination it
/// addressed (which the proxy's upstream reaches from the client's own address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Ends {
    pub client: Ipv4Addr,
    pub destination: SocketAddrV4,
    pub protocol: Protocol,
}

impl Ends {
    fn port(&self) -> FlowPort {
        FlowPort { protocol: self.protocol, port: self.destination.port() }
    }
}

/// One end that is a local endpoint, whose policy judges the request.
pub(super) struct Side {
    namespace: String,
    name: String,
    direction: Direction,
    /// The other end's address and identity.
    peer: Ipv4Addr,
    remote: u32,
}

impl Side {
    /// The client's egress and the destination's ingress, where they are local endpoints.
    fn of(policy: &CompiledPolicy, ends: Ends) -> Vec<Side> {
        let destination = *ends.destination.ip();
        let mut sides = Vec::with_capacity(2);
        for (local, peer, direction) in
            [(ends.client, destination, Direction::Egress), (destination, ends.client, Direction::Ingress)]
        {
            if let Some((namespace, name)) = policy.endpoint_at(local) {
                sides.push(Side {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    direction,
                    peer,
                    remote: policy.identity_of_addr(peer),
                });
            }
        }
        sides
    }

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

/// The sides of one pair of ends, found again only when the agent publishes a new policy:
/// finding an end's endpoint and identity is a lookup in the compiled policy.
#[derive(Default)]
pub(super) struct Sides(Mutex<Option<FoundSides>>);

/// Sides, and the policy snapshot they were found in.
type FoundSides = (Arc<CompiledPolicy>, Arc<[Side]>);

impl Sides {
    pub fn of(&self, policy: &Arc<CompiledPolicy>, ends: Ends) -> Arc<[Side]> {
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((found_in, sides)) if Arc::ptr_eq(found_in, policy) => sides.clone(),
            _ => {
                let sides: Arc<[Side]> = Side::of(policy, ends).into();
                *cached = Some((policy.clone(), sides.clone()));
                sides
            }
        }
    }
}

/// Judges `request` between `ends` under the enforced policy of every side, and counts it in
/// `diffs` where the candidate judges it otherwise. `Ok` with every side's verdict (each
/// allowed) when it goes upstream, `Err` with the denial otherwise.
pub(super) fn judge(
    policy: &ProxyPolicy,
    sides: &[Side],
    ends: Ends,
    request: &L7Request,
    diffs: &L7Diffs,
) -> Result<Vec<RequestVerdict>, Box<RequestVerdict>> {
    let port = ends.port();
    let mut enforced: Vec<RequestVerdict> = sides.iter().map(|s| s.judge(&policy.enforced, port, request)).collect();
    if let Some(candidate) = &policy.candidate {
        for (side, enforced) in sides.iter().zip(&enforced) {
            let judged = side.judge(candidate, port, request);
            if judged.allowed != enforced.allowed {
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
        }
    }
    match enforced.iter().position(|v| !v.allowed) {
        Some(denied) => Err(Box::new(enforced.swap_remove(denied))),
        None => Ok(enforced),
    }
}

/// Whether DNS rules apply to the flow between `ends` under either revision: the proxy then
/// speaks DNS on it.
pub(super) fn speaks_dns(policy: &ProxyPolicy, sides: &[Side], ends: Ends) -> bool {
    let port = ends.port();
    let compilations = std::iter::once(&policy.enforced).chain(&policy.candidate);
    compilations.flat_map(|c| sides.iter().map(move |s| s.l7_kinds(c, port))).any(|kinds| kinds.contains(&"dns"))
}
