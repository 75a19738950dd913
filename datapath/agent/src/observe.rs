//! Flow observation, like Hubble: every flow event of the datapath (a new dropped, audited or
//! shadow-differing flow) as an [`ObservedFlow`] naming both ends, the rule that decided and the
//! revisions, published on a bounded broadcast channel ([`FlowHub`]) and served as NDJSON on
//! `GET /flows` ([`router`], [`UnixServer`]).
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::jiff::Timestamp;
use palisade_common::{self as dp, Direction, FlowEvent, Mode};
use palisade_policy::CompiledPolicy;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::flow_access::FlowAccess;
use crate::node_state::{CANDIDATE_SET, Compiled, ENFORCED_SET, NodeView, ObjectKey, is_host};
use crate::report::{boot_time_to_wall, workload_of};

/// What happened to a flow under the enforced policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FlowVerdict {
    Forwarded,
    Dropped,
    /// Audit mode: the enforced policy would have dropped it; it was let through.
    Audit,
}

impl FlowVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowVerdict::Forwarded => "FORWARDED",
            FlowVerdict::Dropped => "DROPPED",
            FlowVerdict::Audit => "AUDIT",
        }
    }
}

/// One end of a flow: a pod, or a peer known by its identity's labels or CIDR.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowPeer {
    /// RFC 5952 form for IPv6.
    pub ip: IpAddr,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub workload: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub cidr: Option<String>,
    /// The node-local security identity (0 when not known).
    #[serde(default)]
    pub identity: u32,
}

impl Default for FlowPeer {
    fn default() -> Self {
        FlowPeer {
            ip: Ipv4Addr::UNSPECIFIED.into(),
            namespace: None,
            pod: None,
            workload: None,
            labels: BTreeMap::new(),
            cidr: None,
            identity: 0,
        }
    }
}

impl FlowPeer {
    /// `ns/pod`, else the CIDR, else the labels, else the identity.
    pub fn name(&self) -> String {
        match (&self.namespace, &self.pod) {
            (Some(namespace), Some(pod)) => format!("{namespace}/{pod}"),
            _ if self.cidr.is_some() => self.cidr.clone().unwrap_or_default(),
            _ if !self.labels.is_empty() => {
                let labels: Vec<String> = self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let labels = labels.join(",");
                match &self.namespace {
                    Some(namespace) => format!("{namespace}/{{{labels}}}"),
                    None => labels,
                }
            }
            _ => format!("identity {}", self.identity),
        }
    }
}

/// The Service a flow was addressed to, when kube-proxy translated it to its destination.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowService {
    /// The ClusterIP and port the source connected to.
    pub ip: IpAddr,
    pub port: u16,
    /// The Service that has the ClusterIP, when the agent knows it.
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl FlowService {
    /// `shop/api:8080`, else `10.96.0.10:8080` (`[fd00::10]:8080`).
    pub fn name(&self) -> String {
        match (&self.namespace, &self.name) {
            (Some(namespace), Some(name)) => format!("{namespace}/{name}:{}", self.port),
            _ => SocketAddr::new(self.ip, self.port).to_string(),
        }
    }
}

/// The rule that decided a flow, as the policy compiler names its cookie.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecidedBy {
    /// `CiliumNetworkPolicy shop/db`; none for default deny, no policy, default allow, localhost.
    pub policy: Option<String>,
    /// `spec.ingress[0]`.
    pub rule: Option<String>,
    /// The whole description: `CiliumNetworkPolicy shop/db spec.ingress[0]`, `default deny (...)`.
    pub description: String,
}

/// What the candidate revision would do with the flow.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateVerdict {
    /// `FORWARDED` or `DROPPED`.
    pub verdict: FlowVerdict,
    /// Why the candidate would drop it (`policy-denied`, `l7-unsupported`).
    pub drop_reason: Option<String>,
    pub differs: bool,
    pub decided_by: DecidedBy,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RolloutRef {
    pub namespace: String,
    pub name: String,
}

/// A flow the datapath reported, as `palisade observe` shows it.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedFlow {
    /// RFC 3339, when the kernel saw the flow's first packet.
    pub time: String,
    pub node: String,
    pub verdict: FlowVerdict,
    /// Why it was dropped (or, audited, would be), in kebab case: `policy-denied`,
    /// `invalid-source`, `l7-unsupported`, ...
    pub drop_reason: Option<String>,
    /// `ingress` or `egress`, seen from the endpoint whose policy decided.
    pub direction: String,
    pub source: FlowPeer,
    pub destination: FlowPeer,
    /// The Service the source addressed, translated to `destination` (the backend).
    pub service: Option<FlowService>,
    /// Destination port (ICMP type for ICMP).
    pub port: u16,
    /// `TCP`, `UDP`, `ICMP`, `SCTP`, `ICMPv6`.
    pub protocol: String,
    pub decided_by: DecidedBy,
    /// Present while a candidate is audited beside the enforced policy.
    pub candidate: Option<CandidateVerdict>,
    /// The rollout whose rule decided (or, for a flow no rule decided, the only one there is).
    pub rollout: Option<RolloutRef>,
    /// Revisions by their display names (`main@4b15b4e`).
    pub enforced_revision: Option<String>,
    pub candidate_revision: Option<String>,
    /// The datapath's endpoint id of the pod whose policy decided.
    pub endpoint: u32,
    /// Set for a request the node's L7 proxy judged (an HTTP request, a DNS query, a TLS
    /// connection, a Kafka request).
    pub l7: Option<L7Flow>,
}

/// What the L7 proxy saw of one request, as Hubble shows L7 flows.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7Flow {
    /// From the request to its answer reaching the client.
    pub latency_ns: u64,
    pub http: Option<HttpFlow>,
    pub dns: Option<DnsFlow>,
    /// A TLS connection the proxy judged by its ClientHello (`serverNames`).
    #[serde(default)]
    pub tls: Option<TlsFlow>,
    /// A Kafka request the proxy judged (`rules.kafka`).
    #[serde(default)]
    pub kafka: Option<KafkaFlow>,
}

/// A Kafka request as the proxy judged it, and the error code the client got.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaFlow {
    /// As Kafka rules name it (`produce`, `fetch`, ...), or `api-key-N`.
    pub api_key: String,
    pub api_version: i16,
    pub correlation_id: i32,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub topics: Vec<String>,
    /// `TOPIC_AUTHORIZATION_FAILED` when the proxy answered it denied; `None` when forwarded or
    /// when the proxy closed the connection instead.
    #[serde(default)]
    pub error: Option<String>,
}

/// A TLS connection as the proxy judged it: the server name its ClientHello indicated.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFlow {
    /// Lower case, without the root dot; `None` without SNI or without a ClientHello.
    #[serde(default)]
    pub server_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpFlow {
    pub method: String,
    /// The path with its query.
    pub url: String,
    /// `HTTP/1.1`.
    pub protocol: String,
    /// The status the client got: the upstream's, or the proxy's own 403.
    pub status: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsFlow {
    /// Lower case, without the root dot.
    pub query: String,
    /// `NOERROR`, `NXDOMAIN`, `REFUSED` (the proxy's own, for a denied query), ...
    pub rcode: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<Ipv4Addr>,
}

impl ObservedFlow {
    pub fn differs(&self) -> bool {
        self.candidate.as_ref().is_some_and(|c| c.differs)
    }
}

/// One line of the `/flows` stream: a flow, or how many flows this observer lost for being slow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ObserveLine {
    Flow(Box<ObservedFlow>),
    Lost { lost_events: u64 },
}

/// `--verdict`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerdictFilter {
    Dropped,
    Audit,
    Diff,
}

impl std::str::FromStr for VerdictFilter {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "dropped" | "drop" => Ok(VerdictFilter::Dropped),
            "audit" | "audited" => Ok(VerdictFilter::Audit),
            "diff" => Ok(VerdictFilter::Diff),
            _ => Err(format!("{text:?}: expected dropped, audit or diff")),
        }
    }
}

/// `--type`: flows the L7 proxy judged (requests), or those the datapath reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowType {
    L7,
    L4,
}

impl std::str::FromStr for FlowType {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "l7" => Ok(FlowType::L7),
            "l4" | "l3-l4" => Ok(FlowType::L4),
            _ => Err(format!("{text:?}: expected l7 or l4")),
        }
    }
}

/// Which flows an observer wants; every field empty means all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// Either end in this namespace.
    pub namespace: Option<String>,
    /// Either end a pod whose name starts with this (`api`, or `shop/api` with its namespace).
    pub pod: Option<String>,
    pub verdict: Option<VerdictFilter>,
    pub flow_type: Option<FlowType>,
    /// Of the remembered flows, only those seen at or after this.
    pub since: Option<Timestamp>,
}

impl FlowFilter {
    pub fn matches(&self, flow: &ObservedFlow) -> bool {
        let ends = [&flow.source, &flow.destination];
        if let Some(namespace) = &self.namespace
            && !ends.iter().any(|e| e.namespace.as_ref() == Some(namespace))
        {
            return false;
        }
        if let Some(wanted) = &self.pod {
            let (namespace, prefix) = match wanted.split_once('/') {
                Some((namespace, pod)) => (Some(namespace), pod),
                None => (None, wanted.as_str()),
            };
            let matches = |e: &&FlowPeer| {
                e.pod.as_ref().is_some_and(|p| p.starts_with(prefix))
                    && namespace.is_none_or(|n| e.namespace.as_deref() == Some(n))
            };
            if !ends.iter().any(matches) {
                return false;
            }
        }
        let verdict = match self.verdict {
            None => true,
            Some(VerdictFilter::Dropped) => flow.verdict == FlowVerdict::Dropped,
            Some(VerdictFilter::Audit) => flow.verdict == FlowVerdict::Audit,
            Some(VerdictFilter::Diff) => flow.differs(),
        };
        let flow_type = match self.flow_type {
            None => true,
            Some(FlowType::L7) => flow.l7.is_some(),
            Some(FlowType::L4) => flow.l7.is_none(),
        };
        verdict && flow_type && self.since.is_none_or(|since| flow.time.parse::<Timestamp>().is_ok_and(|t| t >= since))
    }

    /// The query string of `GET /flows` for this filter (without `?`).
    pub fn to_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        self.append_pairs(&mut query);
        query.finish()
    }

    fn append_pairs(&self, query: &mut form_urlencoded::Serializer<'_, String>) {
        if let Some(namespace) = &self.namespace {
            query.append_pair("namespace", namespace);
        }
        if let Some(pod) = &self.pod {
            query.append_pair("pod", pod);
        }
        if let Some(verdict) = self.verdict {
            let verdict = match verdict {
                VerdictFilter::Dropped => "dropped",
                VerdictFilter::Audit => "audit",
                VerdictFilter::Diff => "diff",
            };
            query.append_pair("verdict", verdict);
        }
        if let Some(flow_type) = self.flow_type {
            query.append_pair("type", if flow_type == FlowType::L7 { "l7" } else { "l4" });
        }
        if let Some(since) = self.since {
            query.append_pair("since", &since.to_string());
        }
    }
}

/// What `GET /flows` takes: a filter, how many remembered flows to replay, whether to follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowsQuery {
    pub filter: FlowFilter,
    /// Remembered flows to send first (after the filter); `since` alone replays all it matches.
    pub last: Option<usize>,
    /// Keep streaming new flows (the default); `follow=false` ends after the replay.
    pub follow: bool,
}

impl FlowsQuery {
    /// A query string (without `?`), percent-decoded as a form.
    pub fn parse(query: &str) -> Result<FlowsQuery, String> {
        let mut parsed = FlowsQuery { filter: FlowFilter::default(), last: None, follow: true };
        for (key, value) in form_urlencoded::parse(query.as_bytes()).into_owned() {
            match key.as_str() {
                "namespace" => parsed.filter.namespace = Some(value),
                "pod" => parsed.filter.pod = Some(value),
                "verdict" => parsed.filter.verdict = Some(value.parse()?),
                "type" => parsed.filter.flow_type = Some(value.parse()?),
                "since" => {
                    parsed.filter.since = Some(value.parse().map_err(|e| format!("since={value}: {e}"))?);
                }
                "last" => parsed.last = Some(value.parse().map_err(|_| format!("last={value}: not a number"))?),
                "follow" => parsed.follow = !matches!(value.as_str(), "false" | "0" | "no"),
                _ => return Err(format!("unknown parameter {key:?}")),
            }
        }
        Ok(parsed)
    }

    pub fn to_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        self.filter.append_pairs(&mut query);
        if let Some(last) = self.last {
            query.append_pair("last", &last.to_string());
        }
        if !self.follow {
            query.append_pair("follow", "false");
        }
        query.finish()
    }
}

pub type FlowReceiver = broadcast::Receiver<Arc<ObservedFlow>>;

/// Flows published by the agent's thread: a bounded broadcast channel (an observer that falls
/// behind loses the oldest and is told how many) and the last few, for `--last` and `--since`.
#[derive(Clone)]
pub struct FlowHub {
    inner: Arc<Mutex<Hub>>,
}

struct Hub {
    sender: Option<broadcast::Sender<Arc<ObservedFlow>>>,
    history: VecDeque<Arc<ObservedFlow>>,
    history_cap: usize,
}

impl FlowHub {
    /// `capacity`: flows an observer may lag behind before it loses some. `history`: flows kept.
    pub fn new(capacity: usize, history: usize) -> FlowHub {
        let (sender, _) = broadcast::channel(capacity.max(1));
        let hub = Hub { sender: Some(sender), history: VecDeque::with_capacity(history), history_cap: history };
        FlowHub { inner: Arc::new(Mutex::new(hub)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The remembered flows and a receiver of every later one: nothing is missed or repeated
    /// between the two. `None` once the agent stopped.
    pub fn subscribe(&self) -> Option<(Vec<Arc<ObservedFlow>>, FlowReceiver)> {
        let hub = self.lock();
        let receiver = hub.sender.as_ref()?.subscribe();
        Some((hub.history.iter().cloned().collect(), receiver))
    }

    pub fn publish(&self, flow: ObservedFlow) {
        let flow = Arc::new(flow);
        let mut hub = self.lock();
        if hub.history_cap > 0 {
            if hub.history.len() == hub.history_cap {
                hub.history.pop_front();
            }
            hub.history.push_back(flow.clone());
        }
        if let Some(sender) = &hub.sender {
            // No receiver is fine: nobody observes right now.
            let _ = sender.send(flow);
        }
    }

    /// Ends every observer's stream (the agent stopped).
    pub fn close(&self) {
        self.lock().sender = None;
    }
}

impl std::fmt::Debug for FlowHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowHub")
    }
}

impl Default for FlowHub {
    fn default() -> Self {
        FlowHub::new(4096, 1024)
    }
}

/// A datapath flow event as an observer sees it: both ends by pod (or identity), the rule that
/// decided by name, the rollout and its revisions.
pub(crate) fn describe(view: &NodeView, event: &FlowEvent, now: Timestamp) -> ObservedFlow {
    let key = &event.flow;
    let ingress = key.direction() == Direction::Ingress;
    let (saddr, daddr) = (event.source(), event.destination());
    let (local_ip, peer_ip) = if ingress { (daddr, saddr) } else { (saddr, daddr) };
    let pod = view.pod(key.endpoint).cloned();
    let compiled = view.compiled;
    let local = match (&pod, compiled) {
        // The node itself: the host identity, by its labels.
        (Some(host), Some(compiled)) if is_host(host) => peer(&compiled.enforced, local_ip, dp::IDENTITY_HOST),
        _ => pod_peer(local_ip, pod.as_ref(), compiled),
    };
    let peer = match compiled {
        Some(compiled) => peer(&compiled.enforced, peer_ip, key.identity),
        None => FlowPeer { ip: peer_ip, identity: key.identity, ..FlowPeer::default() },
    };
    let (source, destination) = if ingress { (peer, local) } else { (local, peer) };
    let service = event.service().map(|(ip, port)| {
        let known = compiled.and_then(|c| c.enforced.cluster.services.iter().find(|s| s.cluster_ips.contains(&ip)));
        FlowService { ip, port, namespace: known.map(|s| s.namespace.clone()), name: known.map(|s| s.name.clone()) }
    });
    let reason = key.drop_reason();
    let denies = reason.is_some();
    let verdict = match (denies, key.mode()) {
        (false, _) => FlowVerdict::Forwarded,
        (true, Mode::Audit) => FlowVerdict::Audit,
        (true, _) => FlowVerdict::Dropped,
    };
    let decided_by = |set: usize, cookie: u32| match compiled {
        Some(compiled) => decided_by(if set == 0 { &compiled.enforced } else { compiled.candidate_engine() }, cookie),
        None => DecidedBy { description: format!("rule cookie {cookie}"), ..DecidedBy::default() },
    };
    let candidate = key.candidate_verdict().map(|candidate| {
        let candidate_reason = candidate.drop_reason();
        let candidate_denies = candidate_reason.is_some();
        CandidateVerdict {
            verdict: if candidate_denies { FlowVerdict::Dropped } else { FlowVerdict::Forwarded },
            drop_reason: candidate_reason.map(|r| r.as_str().to_owned()),
            differs: candidate_denies != denies,
            decided_by: decided_by(1, event.candidate_cookie),
        }
    });
    let rollout = compiled.and_then(|c| rollout_of(view, c, event, candidate.as_ref().is_some_and(|c| c.differs)));
    let targets = rollout.as_ref().and_then(|r| view.rollouts.get(r));
    let display = |id: &String| {
        let display = rollout.as_ref().and_then(|r| view.revision_display(&r.0, id));
        display.unwrap_or_else(|| id.clone())
    };
    ObservedFlow {
        time: boot_time_to_wall(event.timestamp_ns, now).to_string(),
        node: view.node.clone(),
        verdict,
        drop_reason: reason.map(|r| r.as_str().to_owned()),
        direction: if ingress { "ingress" } else { "egress" }.into(),
        source,
        destination,
        service,
        port: key.dport,
        protocol: match key.protocol() {
            Ok(protocol) => protocol.name().into(),
            Err(unknown) => unknown.to_string(),
        },
        decided_by: match reason.and_then(unjudged_by) {
            Some(description) => DecidedBy { description: description.into(), ..DecidedBy::default() },
            None => decided_by(0, event.enforced_cookie),
        },
        enforced_revision: targets.and_then(|t| t.enforced.as_ref()).map(display),
        candidate_revision: targets.and_then(|t| t.candidate.as_ref()).filter(|_| candidate.is_some()).map(display),
        candidate,
        rollout: rollout.map(|(namespace, name)| RolloutRef { namespace, name }),
        endpoint: key.endpoint,
        l7: None,
    }
}

/// A local pod's side of a flow, by its key (none when the endpoint is not known).
fn pod_peer(ip: IpAddr, pod: Option<&ObjectKey>, compiled: Option<&Compiled>) -> FlowPeer {
    FlowPeer {
        ip,
        namespace: pod.map(|p| p.0.clone()),
        workload: pod.map(|p| workload_of(&p.1)),
        pod: pod.map(|p| p.1.clone()),
        labels: pod
            .and_then(|p| compiled?.enforced.cluster.pod(&p.0, &p.1))
            .map(|p| p.labels.clone())
            .unwrap_or_default(),
        ..FlowPeer::default()
    }
}

/// The rollout a rule of which decided the flow (the candidate's first for a difference); for a
/// flow no rule decided, the only rollout (auditing one, for a difference) if there is only one.
fn rollout_of(view: &NodeView, compiled: &Compiled, event: &FlowEvent, differs: bool) -> Option<ObjectKey> {
    let enforced = || compiled.origin(ENFORCED_SET, event.enforced_cookie);
    let found =
        if differs { compiled.origin(CANDIDATE_SET, event.candidate_cookie).or_else(enforced) } else { enforced() }
            .cloned();
    found.or_else(|| {
        let mut rollouts = view.rollouts.iter().filter(|(_, t)| !differs || t.candidate.is_some());
        match (rollouts.next(), rollouts.next()) {
            (Some((key, _)), None) => Some(key.clone()),
            _ => None,
        }
    })
}

/// What dropped a flow no policy rule judged; `None` for policy verdicts.
fn unjudged_by(reason: dp::DropReason) -> Option<&'static str> {
    use dp::DropReason::*;
    match reason {
        PolicyDenied | L7Unsupported => None,
        InvalidSource => Some("source validation (not the endpoint's address)"),
        UnknownL3 => Some("fail closed (not ARP, IPv4 or IPv6)"),
        FragmentUnknown => Some("fail closed (a fragment whose first fragment was not seen)"),
        IcmpUnrelated => Some("fail closed (an ICMP error about no tracked connection)"),
        Ipv6ExtLimit => Some("fail closed (more IPv6 extension headers than the datapath walks)"),
        Malformed => Some("fail closed (a malformed header)"),
        ServiceUntranslated => Some("fail closed (a Service port kube-proxy did not translate)"),
    }
}

pub(crate) fn decided_by(engine: &CompiledPolicy, cookie: u32) -> DecidedBy {
    let description = engine.policies().describe_cookie(cookie);
    match engine.policies().rule_for_cookie(cookie).filter(|_| cookie < dp::COOKIE_RESERVED_FIRST) {
        Some((policy, rule)) => {
            DecidedBy { policy: Some(policy.id.to_string()), rule: Some(rule.path.clone()), description }
        }
        None => DecidedBy { description, ..DecidedBy::default() },
    }
}

/// A peer by its address when it is a known pod, else by its identity.
pub(crate) fn peer(engine: &CompiledPolicy, ip: IpAddr, identity: u32) -> FlowPeer {
    if let Some(pod) = engine.cluster.pods.iter().find(|p| p.ips.contains(&ip) && !p.host_network) {
        return FlowPeer {
            ip,
            namespace: Some(pod.namespace.clone()),
            pod: Some(pod.name.clone()),
            workload: Some(workload_of(&pod.name)),
            labels: pod.labels.clone().into_iter().collect(),
            identity,
            cidr: None,
        };
    }
    let Some(found) = engine.identities().get(identity) else {
        return FlowPeer { ip, identity, ..FlowPeer::default() };
    };
    if let Some(namespace) = &found.namespace {
        let labels = found.labels.user_labels().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        return FlowPeer { ip, namespace: Some(namespace.clone()), labels, identity, ..FlowPeer::default() };
    }
    let labels = found
        .labels
        .iter()
        .map(|(source, key, value)| (format!("{}:{key}", source.as_str()), value.to_owned()))
        .collect();
    FlowPeer { ip, labels, cidr: found.prefix.map(|p| p.to_string()), identity, ..FlowPeer::default() }
}

/// `GET /flows?namespace=&pod=&verdict=dropped|audit|diff&last=N&since=RFC3339&follow=false`:
/// NDJSON, one [`ObserveLine`] a line, until the client goes or the agent stops. To anyone who
/// reaches it: local mode's socket, guarded by its file permissions.
pub fn router(hub: FlowHub) -> Router {
    Router::new().route("/flows", get(serve_flows).with_state(hub))
}

/// [`router`] for the network: only to requests whose bearer token and user `access` admits for
/// the namespace filtered on (`?namespace=`), or cluster-wide for every flow.
pub fn authorized_router(hub: FlowHub, access: Arc<FlowAccess>) -> Router {
    router(hub).route_layer(middleware::from_fn_with_state(access, require_access))
}

async fn require_access(State(access): State<Arc<FlowAccess>>, request: Request, next: Next) -> Response {
    // A query that does not parse reveals nothing: the handler refuses it.
    let Ok(query) = FlowsQuery::parse(request.uri().query().unwrap_or_default()) else {
        return next.run(request).await;
    };
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match access.check(authorization, query.filter.namespace.as_deref()).await {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

async fn serve_flows(State(hub): State<FlowHub>, RawQuery(query): RawQuery) -> Response {
    let query = match FlowsQuery::parse(query.as_deref().unwrap_or_default()) {
        Ok(query) => query,
        Err(e) => return (axum::http::StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let headers = [(header::CONTENT_TYPE, "application/x-ndjson")];
    (headers, Body::from_stream(stream(&hub, query))).into_response()
}

/// The lines of one observer's stream.
pub fn stream(hub: &FlowHub, query: FlowsQuery) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + use<> {
    let subscribed = hub.subscribe();
    let (history, receiver) = match subscribed {
        Some((history, receiver)) => (history, Some(receiver)),
        None => (Vec::new(), None),
    };
    let mut replay: VecDeque<Arc<ObservedFlow>> = history.into_iter().filter(|f| query.filter.matches(f)).collect();
    let keep = match (query.last, query.filter.since) {
        (Some(last), _) => last,
        (None, Some(_)) => usize::MAX,
        (None, None) => 0,
    };
    while replay.len() > keep {
        replay.pop_front();
    }
    let receiver = receiver.filter(|_| query.follow);
    let filter = query.filter;
    futures::stream::unfold((replay, receiver), move |(mut replay, mut receiver)| {
        let filter = filter.clone();
        async move {
            if let Some(flow) = replay.pop_front() {
                return Some((Ok(line(&ObserveLine::Flow(Box::new((*flow).clone())))), (replay, receiver)));
            }
            loop {
                let next = receiver.as_mut()?.recv().await;
                match next {
                    Ok(flow) if filter.matches(&flow) => {
                        let text = line(&ObserveLine::Flow(Box::new((*flow).clone())));
                        return Some((Ok(text), (replay, receiver)));
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(lost)) => {
                        return Some((Ok(line(&ObserveLine::Lost { lost_events: lost })), (replay, receiver)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    })
}

fn line(line: &ObserveLine) -> Bytes {
    let mut text = serde_json::to_vec(line).unwrap_or_default();
    text.push(b'\n');
    Bytes::from(text)
}

/// `GET /flows` on a Unix socket (local mode's `<state>/observe.sock`). Dropping it stops the
/// server and removes the socket.
pub struct UnixServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl UnixServer {
    /// Must be called within a Tokio runtime. A socket left by an earlier run is replaced.
    pub fn start(hub: FlowHub, path: &Path) -> std::io::Result<UnixServer> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = tokio::net::UnixListener::bind(path)?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router(hub)).await {
                tracing::warn!(error = %e, "the observe socket stopped");
            }
        });
        Ok(UnixServer { path: path.to_owned(), task })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_round_trip() {
        let query = FlowsQuery {
            filter: FlowFilter {
                namespace: Some("shop".into()),
                pod: Some("shop/api x".into()),
                verdict: Some(VerdictFilter::Diff),
                flow_type: Some(FlowType::L7),
                since: Some("2025-11-21T13:38:33.295Z".parse().unwrap()),
            },
            last: Some(20),
            follow: false,
        };
        assert_eq!(FlowsQuery::parse(&query.to_query()), Ok(query));
        assert!(FlowsQuery::parse("verdict=maybe").is_err());
        assert!(FlowsQuery::parse("colour=red").is_err());
        assert_eq!(FlowsQuery::parse("pod=a%2Fb+c%").unwrap().filter.pod.as_deref(), Some("a/b c%"));
    }

    #[test]
    fn a_slow_observer_is_told_how_many_flows_it_lost() {
        let hub = FlowHub::new(2, 0);
        let (_, mut receiver) = hub.subscribe().unwrap();
        let flow = ObservedFlow {
            time: "2025-11-21T13:38:33Z".into(),
            node: "n1".into(),
            verdict: FlowVerdict::Dropped,
            drop_reason: Some("policy-denied".into()),
            direction: "ingress".into(),
            source: FlowPeer::default(),
            destination: FlowPeer::default(),
            service: None,
            port: 1,
            protocol: "TCP".into(),
            decided_by: DecidedBy::default(),
            candidate: None,
            rollout: None,
            enforced_revision: None,
            candidate_revision: None,
            endpoint: 0,
            l7: None,
        };
        for _ in 0..5 {
            hub.publish(flow.clone());
        }
        assert!(matches!(receiver.try_recv(), Err(broadcast::error::TryRecvError::Lagged(3))));
        assert!(receiver.try_recv().is_ok());
        hub.close();
        assert!(hub.subscribe().is_none());
    }
}
