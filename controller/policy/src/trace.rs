//! Explains the verdict for one flow: the source's egress decision and the destination's
//! ingress decision (a pod's, or the host endpoint's for `node`), each from the entry the
//! datapath would pick, and the L7 proxy's decision when the entry redirects and a request is
//! given.
//!
//! Two verdicts come out: what the datapath does, and what the policy means (its intent). They
//! differ only at an L7 redirect no proxy judges (HTTP, TLS or Kafka rules on UDP, anything on
//! SCTP): the datapath denies it (drop reason `l7-unsupported`, never failing open), while the
//! intent is what the L7 rules would decide. Elsewhere the node's proxy enforces the intent.
use std::fmt;
use std::net::IpAddr;

use palisade_common as dp;
use serde::Serialize;

use crate::compile::{CompiledPolicy, Enforcement};
use crate::identity;
use crate::l7::{self, Selected};
pub use crate::l7::{HttpRequest, HttpRewrite, L7Request, RequestVerdict};
use crate::model::{Direction, Protocol};

/// The drop reason of a connection whose entry redirects to an L7 proxy that does not judge it
/// (HTTP, TLS or Kafka rules not on TCP, DNS rules on SCTP).
pub const DROP_L7_UNSUPPORTED: &str = "l7-unsupported";

/// One side of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowEnd {
    Pod {
        namespace: String,
        name: String,
    },
    /// An address of either family (`cidr:10.0.0.1`, `cidr:2001:db8::1`).
    Address(IpAddr),
    Entity(String),
    /// The local host (identity `host`): the compilation's host node, whose host endpoint
    /// policy (host rules, `nodeSelector`) judges this side; without one, the node the pod at
    /// the other end runs on, unpoliced.
    Node,
    /// A Service, as a destination only: traffic to it is judged at each backend it reaches.
    Service {
        namespace: String,
        name: String,
    },
}

impl FlowEnd {
    /// `NAMESPACE/POD`, `svc/NAMESPACE/NAME`, `cidr:IP`, `entity:NAME` or `node`.
    pub fn parse(text: &str) -> Result<FlowEnd, String> {
        if text == "node" {
            return Ok(FlowEnd::Node);
        }
        if let Some(service) = text.strip_prefix("svc/") {
            return match service.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                    Ok(FlowEnd::Service { namespace: ns.to_string(), name: name.to_string() })
                }
                _ => Err(format!("{text:?} is not svc/NAMESPACE/NAME")),
            };
        }
        if let Some(ip) = text.strip_prefix("cidr:") {
            return ip.parse().map(FlowEnd::Address).map_err(|_| format!("{ip:?} is not an IPv4 or IPv6 address"));
        }
        if let Some(name) = text.strip_prefix("entity:") {
            return match identity::reserved_id(name) {
                Some(_) => Ok(FlowEnd::Entity(name.to_string())),
                None => Err(format!(
                    "unknown entity {name:?} (world, world-ipv6, host, remote-node, kube-apiserver, health, init, unmanaged, ingress)"
                )),
            };
        }
        match text.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(FlowEnd::Pod { namespace: ns.to_string(), name: name.to_string() })
            }
            _ => Err(format!("{text:?} is not NAMESPACE/POD, svc/NAMESPACE/NAME, cidr:IP, entity:NAME or node")),
        }
    }
}

impl fmt::Display for FlowEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowEnd::Pod { namespace, name } => write!(f, "{namespace}/{name}"),
            FlowEnd::Address(ip) => write!(f, "cidr:{ip}"),
            FlowEnd::Entity(name) => write!(f, "entity:{name}"),
            FlowEnd::Node => f.write_str("node"),
            FlowEnd::Service { namespace, name } => write!(f, "svc/{namespace}/{name}"),
        }
    }
}

/// Protocol and destination port (the ICMP type for ICMP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowPort {
    pub protocol: Protocol,
    pub port: u16,
}

impl FlowPort {
    /// `N/TCP`, `N/UDP`, `N/SCTP`, `icmp/TYPE` or `icmpv6/TYPE`.
    pub fn parse(text: &str) -> Result<FlowPort, String> {
        let bad = || format!("{text:?} is not N/TCP, N/UDP, N/SCTP, icmp/TYPE or icmpv6/TYPE");
        let (left, right) = text.split_once('/').ok_or_else(bad)?;
        for (name, protocol) in [("icmp", Protocol::ICMP), ("icmpv6", Protocol::ICMPv6)] {
            if left.eq_ignore_ascii_case(name) {
                let t: u8 = right.parse().map_err(|_| bad())?;
                return Ok(FlowPort { protocol, port: t as u16 });
            }
        }
        let port: u16 = left.parse().map_err(|_| bad())?;
        let protocol = match right.to_ascii_uppercase().as_str() {
            "TCP" => Protocol::TCP,
            "UDP" => Protocol::UDP,
            "SCTP" => Protocol::SCTP,
            _ => return Err(bad()),
        };
        Ok(FlowPort { protocol, port })
    }
}

impl Serialize for FlowPort {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Display for FlowPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol {
            Protocol::ICMP => write!(f, "icmp/{}", self.port),
            Protocol::ICMPv6 => write!(f, "icmpv6/{}", self.port),
            p => write!(f, "{}/{}", self.port, p.name()),
        }
    }
}

/// The address family of a flow (`family:` in a flows file, `palisade trace --ip-family`): which
/// of a dual-stack pod's addresses the flow is between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
pub enum IpFamily {
    #[default]
    IPv4,
    IPv6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> IpFamily {
        if ip.is_ipv4() { IpFamily::IPv4 } else { IpFamily::IPv6 }
    }

    /// Whether `ip` is of this family.
    pub fn holds(self, ip: IpAddr) -> bool {
        IpFamily::of(ip) == self
    }

    /// The unspecified address of the family, as the `like` of [`crate::cluster::Pod::ip_like`].
    fn unspecified(self) -> IpAddr {
        match self {
            IpFamily::IPv4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpFamily::IPv6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::IPv4 => "IPv4",
            IpFamily::IPv6 => "IPv6",
        })
    }
}

impl std::str::FromStr for IpFamily {
    type Err = String;

    /// `4` or `6` (the CLI's `--ip-family`), or `IPv4`/`IPv6` in any case (a flows file's).
    fn from_str(text: &str) -> Result<IpFamily, String> {
        match text.to_ascii_lowercase().as_str() {
            "4" | "ipv4" => Ok(IpFamily::IPv4),
            "6" | "ipv6" => Ok(IpFamily::IPv6),
            _ => Err(format!("{text:?} is not an IP family: use 4 or 6 (IPv4 or IPv6)")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allowed,
    Denied,
}

/// The decision of one endpoint's policy in one direction.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    /// What the datapath does.
    pub verdict: Verdict,
    /// What the policy means, L7 rules included: differs from `verdict` only where the datapath
    /// denies an L7 redirect no proxy judges (`drop_reason`).
    pub intent: Verdict,
    /// Why the datapath drops it when the policy alone would not: `l7-unsupported`.
    pub drop_reason: Option<&'static str>,
    /// Why no proxy judges it, with `l7-unsupported`: "the Kafka proxy takes TCP only", ...
    pub drop_detail: Option<&'static str>,
    /// The endpoint whose policy decided; `None` when that side is not a Palisade endpoint.
    pub endpoint: Option<String>,
    pub enforcement: Option<Enforcement>,
    /// The identity of the other side, as this endpoint's datapath sees it.
    pub remote_identity: u32,
    pub remote_labels: String,
    /// The map entry that matched, e.g. `identity 312 TCP/5432`.
    pub entry: Option<String>,
    pub rule: String,
    /// Set when the entry redirects to the L7 proxy: what the L7 rules decide (what the proxy
    /// enforces, or only the policy's intent with `drop_reason`).
    pub proxy: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Trace {
    /// What the datapath does: allowed only when both sides allow it.
    pub verdict: Verdict,
    /// What the policies mean, L7 rules included (see [`Decision::intent`]).
    pub intent: Verdict,
    /// The addresses of both ends, when known (a pod's IP, a node's address).
    pub from_address: Option<IpAddr>,
    pub to_address: Option<IpAddr>,
    pub egress: Decision,
    pub ingress: Decision,
}

impl Trace {
    /// The datapath's drop reason when the policy's intent alone would not drop the flow.
    pub fn drop_reason(&self) -> Option<&'static str> {
        self.egress.drop_reason.or(self.ingress.drop_reason)
    }

    /// What [`Trace::drop_reason`] is about: why no proxy judges the flow.
    pub fn drop_detail(&self) -> Option<&'static str> {
        if self.egress.drop_reason.is_some() { self.egress.drop_detail } else { self.ingress.drop_detail }
    }
}

pub fn trace(
    compiled: &CompiledPolicy,
    from: &FlowEnd,
    to: &FlowEnd,
    port: FlowPort,
    l7: Option<&L7Request>,
) -> Result<Trace, String> {
    trace_in(compiled, from, to, port, l7, None)
}

/// [`trace`] over one address family: a pod or node end is its address of `family`, an address
/// end must be of it, and ICMP must be that family's (ICMPv6 for IPv6). A pod without an address
/// of the family is an error naming it. `None` is [`trace`]: the family of an address end, else
/// the pods' primary addresses.
pub fn trace_in(
    compiled: &CompiledPolicy,
    from: &FlowEnd,
    to: &FlowEnd,
    port: FlowPort,
    l7: Option<&L7Request>,
    family: Option<IpFamily>,
) -> Result<Trace, String> {
    if let Some(family) = family {
        check_family(compiled, from, port, family)?;
        check_family(compiled, to, port, family)?;
    }
    let from_id = identity_of(compiled, from)?;
    let to_id = identity_of(compiled, to)?;
    let egress = decide(compiled, from, to_id, Direction::Egress, port, l7);
    let ingress = decide(compiled, to, from_id, Direction::Ingress, port, l7);
    let both = |a: Verdict, b: Verdict| {
        if a == Verdict::Allowed && b == Verdict::Allowed { Verdict::Allowed } else { Verdict::Denied }
    };
    Ok(Trace {
        verdict: both(egress.verdict, ingress.verdict),
        intent: both(egress.intent, ingress.intent),
        from_address: address_of(compiled, from, to, family),
        to_address: address_of(compiled, to, from, family),
        egress,
        ingress,
    })
}

/// The address of one end: a pod's IP, a `cidr:` address, or for `node` the first address of
/// the local host (the compilation's host node, whose host endpoint judges `node`'s side; without
/// one, the node the pod at the other end runs on).
/// A pod or node address is of the family of the other end when that is an address (a
/// dual-stack pod answers an IPv6 peer from its IPv6 address), else its primary one.
fn address_of(compiled: &CompiledPolicy, end: &FlowEnd, other: &FlowEnd, family: Option<IpFamily>) -> Option<IpAddr> {
    let like = match other {
        _ if family.is_some() => family.map(IpFamily::unspecified),
        FlowEnd::Address(ip) => Some(*ip),
        _ => None,
    };
    match end {
        FlowEnd::Pod { namespace, name } => {
            let pod = compiled.cluster.pod(namespace, name)?;
            match like {
                Some(like) => pod.ip_like(like),
                None => pod.ip(),
            }
        }
        FlowEnd::Address(ip) => Some(*ip),
        FlowEnd::Entity(_) | FlowEnd::Service { .. } => None,
        FlowEnd::Node => {
            let pod_node = || match other {
                FlowEnd::Pod { namespace, name } => compiled.cluster.pod(namespace, name)?.node_name.as_deref(),
                _ => None,
            };
            let addresses = &compiled.cluster.node(compiled.host_node().or_else(pod_node)?)?.addresses;
            match like {
                Some(like) => addresses.iter().copied().find(|a| a.is_ipv4() == like.is_ipv4()),
                None => addresses.iter().copied().find(IpAddr::is_ipv4).or(addresses.first().copied()),
            }
        }
    }
}

/// Whether one end (and the port) can be in a flow of `family`.
fn check_family(compiled: &CompiledPolicy, end: &FlowEnd, port: FlowPort, family: IpFamily) -> Result<(), String> {
    match (port.protocol, family) {
        (Protocol::ICMP, IpFamily::IPv6) => {
            return Err(format!("{port} is ICMP for IPv4: an IPv6 flow is icmpv6/TYPE (echo request: icmpv6/128)"));
        }
        (Protocol::ICMPv6, IpFamily::IPv4) => {
            return Err(format!("{port} is ICMPv6: an IPv4 flow is icmp/TYPE (echo request: icmp/8)"));
        }
        _ => {}
    }
    match end {
        FlowEnd::Address(ip) if !family.holds(*ip) => {
            Err(format!("{end} is an {} address: the flow is {family}", IpFamily::of(*ip)))
        }
        FlowEnd::Pod { namespace, name } => match compiled.cluster.pod(namespace, name) {
            Some(pod) if !pod.ips.iter().any(|ip| family.holds(*ip)) => {
                Err(format!("pod {namespace}/{name} has no {family} address (status.podIPs): the flow is {family}"))
            }
            // An unknown pod is identity_of's error.
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

fn identity_of(compiled: &CompiledPolicy, end: &FlowEnd) -> Result<u32, String> {
    match end {
        FlowEnd::Pod { namespace, name } => {
            let pod = compiled.cluster.pod(namespace, name).ok_or_else(|| {
                let outside =
                    compiled.cluster.outside_hosts.iter().find(|h| h.namespace == *namespace && h.name == *name);
                match outside.and_then(|host| host.ip()) {
                    Some(ip) => format!(
                        "{namespace}/{name} is a host outside the cluster ({}): trace it as cidr:{ip}",
                        crate::cluster::OUTSIDE_CLUSTER
                    ),
                    None => format!("no pod {namespace}/{name} in the cluster file"),
                }
            })?;
            compiled.identity_of_pod(pod).ok_or_else(|| format!("pod {namespace}/{name} has no identity"))
        }
        FlowEnd::Address(ip) => Ok(compiled.identity_of_addr(*ip)),
        FlowEnd::Entity(name) => identity::reserved_id(name).ok_or_else(|| format!("unknown entity {name}")),
        // A pod's own node is `host` to it, whatever other nodes see.
        FlowEnd::Node => Ok(dp::IDENTITY_HOST),
        FlowEnd::Service { .. } => {
            Err(format!("{end} is a Service: traffic to it is judged at each backend (trace_service)"))
        }
    }
}

fn decide(
    compiled: &CompiledPolicy,
    local: &FlowEnd,
    remote: u32,
    direction: Direction,
    port: FlowPort,
    l7: Option<&L7Request>,
) -> Decision {
    let remote_labels = compiled.identities().get(remote).map(|i| i.labels.to_string()).unwrap_or_default();
    // The other side alone decides when this side is not a Palisade endpoint.
    let unpoliced = |rule: String| Decision {
        verdict: Verdict::Allowed,
        intent: Verdict::Allowed,
        drop_reason: None,
        drop_detail: None,
        endpoint: None,
        enforcement: None,
        remote_identity: remote,
        remote_labels: remote_labels.clone(),
        entry: None,
        rule,
        proxy: None,
    };
    // The policy of this side: a local pod's, or for `node` the host endpoint's (host rules).
    let (endpoint, group, own_ports) = match local {
        FlowEnd::Pod { namespace, name } => {
            let Some(endpoint) = compiled.endpoint(namespace, name) else {
                let why = match compiled.cluster.pod(namespace, name) {
                    Some(pod) if !pod.host_network => {
                        format!("{local} runs on another node: this node's datapath does not enforce its policy")
                    }
                    _ => format!("{local} uses the host network: it is not a Palisade endpoint"),
                };
                return unpoliced(why);
            };
            (local.to_string(), endpoint.group, endpoint.pod.ports.as_slice())
        }
        FlowEnd::Node => match compiled.host_endpoint() {
            Some(host) => (format!("node {}", host.node), host.group, &[][..]),
            None => {
                return unpoliced(format!(
                    "node (the local host): no node to compile host policies for, so no {} policy applies",
                    direction.as_str()
                ));
            }
        },
        _ => return unpoliced(format!("{local} is not a Palisade endpoint: no {} policy applies", direction.as_str())),
    };
    let policy = group.direction(direction);
    let entry = policy.lookup(remote, port.protocol, port.port);
    let (mut verdict, rule) = match entry {
        None => (Verdict::Denied, compiled.policies().describe_cookie(dp::COOKIE_NONE)),
        Some(e) if e.value.verdict() == dp::Verdict::Deny => {
            (Verdict::Denied, compiled.policies().describe_cookie(e.value.cookie))
        }
        Some(e) => (Verdict::Allowed, compiled.policies().describe_cookie(e.value.cookie)),
    };
    let (mut intent, mut proxy, mut drop_reason, mut drop_detail) = (verdict, None, None, None);
    if entry.is_some_and(|e| e.value.verdict() == dp::Verdict::Redirect) {
        let selected = l7::select(compiled, policy, own_ports, remote, direction, port);
        let kinds = selected.kinds();
        let judged = l7.map(|request| l7::judge(compiled, &selected, request));
        if judged.as_ref().is_some_and(|j| !j.allowed) {
            intent = Verdict::Denied;
        }
        let unproxied = l7::unproxied(port.protocol, &kinds, l7);
        proxy = Some(proxy_text(compiled, &selected, &kinds, l7.zip(judged.as_ref()), unproxied.is_none()));
        match unproxied {
            // The datapath denies what no proxy judges rather than let it through unchecked.
            Some(why) => {
                verdict = Verdict::Denied;
                (drop_reason, drop_detail) = (Some(DROP_L7_UNSUPPORTED), Some(why));
            }
            None => verdict = intent,
        }
    }
    Decision {
        verdict,
        intent,
        drop_reason,
        drop_detail,
        endpoint: Some(endpoint),
        enforcement: Some(policy.enforcement),
        remote_identity: remote,
        remote_labels,
        entry: entry.map(|e| describe_entry(&e.key)),
        rule,
        proxy,
    }
}

/// Why a flow to a Service cannot be traced.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceFlowError {
    #[error("no Service {0} in the cluster file")]
    UnknownService(String),
    #[error("Service {service} has no port {port} (its ports: {ports})")]
    NoSuchPort { service: String, port: FlowPort, ports: String },
    #[error("Service {service} has no ready backends for {port}: kube-proxy rejects traffic to it")]
    NoBackends { service: String, port: FlowPort },
    #[error("{0} is a Service: a Service is only a destination, traffic comes from its clients")]
    ServiceSource(String),
    /// The flow from the source to a backend cannot be traced (an unknown source pod, ...).
    #[error("{0}")]
    Flow(String),
}

/// A flow to a Service, judged at each backend as the datapath judges the translated packet:
/// the source's egress and the backend's ingress, on the backend's port.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceTrace {
    /// `namespace/name`.
    pub service: String,
    /// The Service port the flow is to.
    pub port: FlowPort,
    /// Allowed only when every backend is: kube-proxy may pick any of them.
    pub verdict: Verdict,
    pub intent: Verdict,
    pub backends: Vec<BackendTrace>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendTrace {
    /// The backend pod (`namespace/name`), else its address.
    pub backend: String,
    pub address: IpAddr,
    /// The port traffic to the Service port is translated to on this backend.
    pub port: u16,
    pub drop_reason: Option<&'static str>,
    #[serde(flatten)]
    pub trace: Trace,
}

/// Traces a flow from `from` to each backend of the Service `to` on Service port `port`.
pub fn trace_service(
    compiled: &CompiledPolicy,
    from: &FlowEnd,
    to: &FlowEnd,
    port: FlowPort,
    l7: Option<&L7Request>,
) -> Result<ServiceTrace, ServiceFlowError> {
    trace_service_in(compiled, from, to, port, l7, None)
}

/// [`trace_service`] over one address family: the Service's ClusterIP and backends of
/// `family` only (kube-proxy translates each family to its own backends).
pub fn trace_service_in(
    compiled: &CompiledPolicy,
    from: &FlowEnd,
    to: &FlowEnd,
    port: FlowPort,
    l7: Option<&L7Request>,
    family: Option<IpFamily>,
) -> Result<ServiceTrace, ServiceFlowError> {
    if let FlowEnd::Service { .. } = from {
        return Err(ServiceFlowError::ServiceSource(from.to_string()));
    }
    let FlowEnd::Service { namespace, name } = to else {
        return Err(ServiceFlowError::Flow(format!("{to} is not a Service (svc/NAMESPACE/NAME)")));
    };
    let key = format!("{namespace}/{name}");
    let cluster = &compiled.cluster;
    let service = cluster.service(namespace, name).ok_or_else(|| ServiceFlowError::UnknownService(key.clone()))?;
    let service_port = service.port(port.port, port.protocol).ok_or_else(|| {
        let ports: Vec<String> =
            service.ports.iter().map(|p| FlowPort { protocol: p.protocol, port: p.port }.to_string()).collect();
        let ports = if ports.is_empty() { "none".to_string() } else { ports.join(", ") };
        ServiceFlowError::NoSuchPort { service: key.clone(), port, ports }
    })?;
    let mut backends = cluster.backends(service, service_port);
    if let Some(family) = family {
        if !service.cluster_ips.is_empty() && !service.cluster_ips.iter().any(|ip| family.holds(*ip)) {
            return Err(ServiceFlowError::Flow(format!("Service {key} has no {family} ClusterIP")));
        }
        backends.retain(|b| family.holds(b.ip));
    }
    if backends.is_empty() {
        return Err(ServiceFlowError::NoBackends { service: key, port });
    }
    let mut traced = Vec::with_capacity(backends.len());
    for backend in backends {
        let end = match &backend.pod {
            Some(pod) => {
                let (namespace, name) = pod.split_once('/').expect("a pod key is namespace/name");
                FlowEnd::Pod { namespace: namespace.to_string(), name: name.to_string() }
            }
            None => FlowEnd::Address(backend.ip),
        };
        let on = FlowPort { protocol: port.protocol, port: backend.port };
        let trace = trace_in(compiled, from, &end, on, l7, family).map_err(ServiceFlowError::Flow)?;
        traced.push(BackendTrace {
            backend: backend.pod.clone().unwrap_or_else(|| backend.ip.to_string()),
            address: backend.ip,
            port: backend.port,
            drop_reason: trace.drop_reason(),
            trace,
        });
    }
    let all = |verdict: fn(&Trace) -> Verdict| {
        if traced.iter().all(|b| verdict(&b.trace) == Verdict::Allowed) { Verdict::Allowed } else { Verdict::Denied }
    };
    Ok(ServiceTrace { service: key, port, verdict: all(|t| t.verdict), intent: all(|t| t.intent), backends: traced })
}

pub fn describe_entry(key: &dp::PolicyKey) -> String {
    let peer = match key.identity() {
        dp::IDENTITY_ANY => "any identity".to_string(),
        id => format!("identity {id}"),
    };
    let l4 = match key.protocol() {
        None => "any protocol".to_string(),
        Some(p) => {
            let name = p.name();
            match key.port_range() {
                (0, 65535) => format!("{name}/any"),
                (lo, hi) if lo == hi => format!("{name}/{lo}"),
                (lo, hi) => format!("{name}/{lo}-{hi}"),
            }
        }
    };
    format!("{peer} {l4}")
}

/// What a matching rule's `headerMatches` do to the request, for the proxy line of a trace.
fn rewritten(rewrite: &HttpRewrite) -> String {
    let mut done: Vec<String> = Vec::new();
    done.extend(rewrite.add.iter().map(|(name, value)| format!("adds {name}: {value}")));
    done.extend(rewrite.replace.iter().map(|(name, value)| format!("sets {name}: {value}")));
    done.extend(rewrite.delete.iter().map(|name| format!("deletes {name}")));
    done.extend(rewrite.logged.iter().map(|mismatch| format!("logs {mismatch}")));
    if done.is_empty() { String::new() } else { format!(" ({})", done.join(", ")) }
}

/// The proxy line of a trace: what the L7 rules decide for the request given, if any. The proxy
/// allows a request when any allow rule selecting the peer on this port allows it; a rule
/// without L7 rules allows everything (so an L4-only rule shadows L7 rules).
fn proxy_text(
    compiled: &CompiledPolicy,
    selected: &Selected,
    kinds: &[&str],
    judged: Option<(&L7Request, &RequestVerdict)>,
    proxied: bool,
) -> String {
    if let Selected::Unfiltered(cookie) = selected {
        let origin = compiled.policies().describe_cookie(*cookie);
        return format!("allowed: {origin} allows this peer on this port without L7 rules");
    }
    match judged {
        None if proxied => {
            format!("judges each request ({} rules); pass --http or --dns to evaluate one", kinds.join(", "))
        }
        None => format!("L7 rules ({}); pass --http or --dns to evaluate a request", kinds.join(", ")),
        Some((_, verdict)) if !verdict.allowed => format!("denied: {}", verdict.reason),
        Some((L7Request::Http(request), verdict)) => format!(
            "allowed: {} {} matches {}{}",
            request.method,
            request.path,
            verdict.reason,
            rewritten(&verdict.rewrite)
        ),
        Some((L7Request::Dns(name), verdict)) => format!("allowed: query {name} matches {}", verdict.reason),
        Some((L7Request::Tls(name), verdict)) => {
            format!("allowed: server name {} matches {}", name.as_deref().unwrap_or("<none>"), verdict.reason)
        }
        Some((L7Request::Kafka(request), verdict)) => {
            format!("allowed: Kafka {} matches {}", request.describe(), verdict.reason)
        }
    }
}
