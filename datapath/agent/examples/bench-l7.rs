//! `make bench-l7` (root): what the node's L7 proxy costs, on real packets. Pods of local mode's
//! network (netsim: a network namespace each, veths to a node namespace) are clients and servers;
//! the agent runs as on a node (its runtime thread in the node namespace, the real eBPF datapath
//! pinned in a bpffs directory of the bench's, its L7 proxy started by the runtime) and is fed
//! the cluster and one rollout, as local mode feeds it. The rollout enforces one of two
//! revisions, switched by promoting the other (one flip):
//!
//! - `l4`: L4-only allows: the baseline a user has, the same datapath and agent without L7 rules
//!   (nothing is steered to the proxy): the HTTP client may reach the HTTP/1.1 server (netsim's
//!   keep-alive responder, `palisade.dev/http-ports`) on 8080/TCP, the DNS client the resolver
//!   (netsim's DNS server, `palisade.dev/dns-records`) on 53/UDP;
//! - `l7`: the same allows with L7 rules: an HTTP rule (`GET /api/.*`) on the server's ingress,
//!   which steers every connection to the proxy, where each request is judged and forwarded
//!   upstream from the client's address; a DNS rule (`matchPattern: "*"`) on the DNS client's
//!   egress, which steers every query to the proxy, where it is judged, forwarded to the
//!   resolver from the client's address, and its answer's addresses taught to the agent (for
//!   `toFQDNs`) before the answer goes back. Besides, the FQDN client's egress: DNS through the
//!   proxy to its resolver, and 8080/TCP to the addresses of the names `toFQDNs` matches.
//!
//! The HTTP client sends `GET /api/items/42` (allowed by the rule) with netsim's HTTP client; the
//! DNS clients send A queries with their own UDP sockets. Prints `name: value unit` lines
//! (progress on stderr):
//!
//! - `l4_http_rr_*_us`, `l7_http_rr_*_us`: one request/response on a keep-alive connection, one
//!   request at a time, under each revision, in rounds that alternate between them (so a load
//!   change on the machine falls on both); `l7_http_rr_p99_added_us` is what the proxy adds to
//!   the p99 (pooled over the rounds), `l7_http_rr_p99_added_round_median_us` the median over
//!   rounds of the same difference within a round: the tail moves with what else runs on the
//!   machine, and the proxy puts more threads in the way of a request, so the pooled p99 is
//!   only comparable between quiet runs;
//! - `l4_http_rps`, `l7_http_rps`: requests a second over [`LOAD_CONNECTIONS`] keep-alive
//!   connections sending back to back for [`LOAD_DURATION`] (client, server and proxy share the
//!   machine's CPUs); `l7_http_proxy_cpu_cores`: the CPU time of the proxy's threads (their
//!   kernel time included: the network stack work their sends and receives do) over the L7 run's
//!   wall time; `l7_http_rps_per_core`: requests served per second of one core of proxy CPU;
//! - `dns_direct_qps`, `dns_proxy_qps`: DNS queries answered a second, [`DNS_CLIENTS`] clients
//!   asking one name back to back for [`DNS_DURATION`], under `l4` (straight to the resolver)
//!   and `l7` (through the proxy); `dns_proxy_cpu_cores` and `dns_proxy_qps_per_core` as for
//!   HTTP; `dns_*_unanswered`: queries that got no answer in [`DNS_TIMEOUT`];
//! - `dns_proxy_known_name_*_us`, `dns_proxy_new_name_*_us`: one query through the proxy for a
//!   name the agent knows, and for one it never saw, which no `toFQDNs` selects;
//!   `dns_proxy_new_name_convergences`: the agent's convergences meanwhile (one per new name:
//!   every answer that teaches the FQDN cache something waits for one, selected or not);
//! - `fqdn_first_connection_drops`: of [`FQDN_NAMES`] × [`FQDN_ASKERS`] lookups through the
//!   proxy, each followed at once by a connection to the answer's address, the connections
//!   dropped (every name has an address of its own, allowed only by `toFQDNs` once learned);
//!   `fqdn_lookup_to_open_*_us`: the time of those lookups (until the answer, which the proxy
//!   sends once the datapath has its address).
//!
//! One function per arm ([`http_rr`], [`http_load`], [`dns_load`], [`dns_new_name_figures`],
//! [`fqdn_figures`]); an arm for another proxied protocol goes beside them, with its pods in
//! [`cluster`] and its rules in [`Policy`].
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../examples/bench-datapath/machine.rs"]
mod machine;

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Barrier, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use palisade_agent::runtime::{AgentHandle, ConvergeHook, Convergence, RuntimeOptions, spawn};
use palisade_agent::{Agent, AgentConfig, Change, Error, RouteResolver};
use palisade_datapath::Datapath;
use palisade_netsim::http::{self, HttpOutcome};
use palisade_netsim::{Local, Responders};
use palisade_policy::l7::HttpRequest;
use palisade_rollout::crd::{PolicyAuditReport, PolicyDocument};
use tokio::sync::mpsc::UnboundedReceiver;

const PIN_DIR: &str = "/sys/fs/bpf/palisade-bench-l7";
/// Every network namespace of the bench starts with this (the node's is `{PREFIX}node`).
const PREFIX: &str = "palisade-bench-l7-";
const NAMESPACE: &str = "palisade-system";
const ROLLOUT: &str = "bench-l7";

/// The HTTP client and server, the DNS arms' client and resolver, and the FQDN arm's client,
/// resolver and host outside the cluster, in local mode's cluster file format.
fn cluster() -> String {
    format!(
        "apiVersion: v1
kind: List
items:
- kind: Namespace
  metadata: {{name: bench, labels: {{team: bench}}}}
- kind: Pod
  metadata:
    name: web
    namespace: bench
    labels: {{app: web}}
    annotations: {{palisade.dev/http-ports: '{WEB_PORT}'}}
  spec: {{containers: [{{ports: [{{containerPort: {WEB_PORT}}}]}}]}}
  status: {{podIP: 10.200.77.10}}
- kind: Pod
  metadata: {{name: client, namespace: bench, labels: {{app: client}}}}
  status: {{podIP: 10.200.77.20}}
- kind: Pod
  metadata:
    name: resolver
    namespace: bench
    labels: {{app: resolver}}
    annotations: {{palisade.dev/dns-records: '{DNS_NAME}={DNS_ADDRESS},{new_names}'}}
  status: {{podIP: 10.200.77.53}}
- kind: Pod
  metadata: {{name: dns-client, namespace: bench, labels: {{app: dns-client}}}}
  status: {{podIP: 10.200.77.30}}
- kind: Pod
  metadata:
    name: fqdn-resolver
    namespace: bench
    labels: {{app: fqdn-resolver}}
    annotations: {{palisade.dev/dns-ttl: '1', palisade.dev/dns-records: '{fqdn_names}'}}
  status: {{podIP: 10.200.77.54}}
- kind: Pod
  metadata: {{name: fqdn-client, namespace: bench, labels: {{app: fqdn-client}}}}
  status: {{podIP: 10.200.77.40}}
- kind: Pod
  metadata:
    name: names
    namespace: outside
    annotations: {{palisade.dev/outside-cluster: 'true', palisade.dev/http-ports: '{FQDN_PORT}'}}
  status: {{podIP: {FQDN_HOST_ADDRESS}}}
",
        new_names = records(DNS_NEW_NAMES, new_name, new_name_address),
        fqdn_names = records(FQDN_NAMES, fqdn_name, fqdn_address),
    )
}

const CLIENT: &str = "bench/client";
const WEB: &str = "bench/web";
const WEB_PORT: u16 = 8080;
/// What the client asks for: allowed by the `l7` revision's rule.
const REQUEST: &str = "GET /api/items/42";
/// What the `l7` revision's rule refuses (403 from the proxy): how the bench sees which
/// revision a new connection meets.
const REFUSED: &str = "GET /admin";

/// Rounds of the latency arms; each round runs both, in alternating order.
const RR_ROUNDS: usize = 20;
/// Requests timed per arm and round, on one keep-alive connection.
const RR_REQUESTS: usize = 1000;
/// Requests sent first on each connection and not timed (connection set-up, cold caches).
const RR_WARMUP: usize = 50;
/// Concurrent keep-alive connections of the throughput arms.
const LOAD_CONNECTIONS: usize = 8;
const LOAD_DURATION: Duration = Duration::from_secs(8);
/// Requests per connection of the throughput arms: each connection sends this many, then the
/// next connection opens, until [`LOAD_DURATION`] is over.
const LOAD_BATCH: usize = 1000;
/// A response not there by then fails the bench.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The agent must have flipped (and its proxy have the policy) by then.
const FLIP_TIMEOUT: Duration = Duration::from_secs(15);
/// A request of the check that a flip is in force gets no answer by then: tried again. A
/// connection opened as the flip lands may never get one (sent straight to the server, then
/// steered to a proxy that never saw it, or the reverse).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const DNS_CLIENT: &str = "bench/dns-client";
const RESOLVER: &str = "bench/resolver";
/// The one name the DNS arms ask for, and its address (nothing listens there).
const DNS_NAME: &str = "api.example.com";
const DNS_ADDRESS: &str = "10.200.99.10";
/// Concurrent clients of the DNS arms, each with one UDP socket, one query at a time.
const DNS_CLIENTS: usize = 8;
const DNS_DURATION: Duration = Duration::from_secs(4);
/// A query not answered by then is counted unanswered, and the client goes on (resolvers wait
/// seconds before they ask again).
const DNS_TIMEOUT: Duration = Duration::from_secs(1);
/// Names the resolver has besides [`DNS_NAME`], each looked up once (`u{i}.example.com`, each
/// with an address of its own): what an answer the agent has not seen costs when no `toFQDNs`
/// selects its name.
const DNS_NEW_NAMES: usize = 200;
const FQDN_CLIENT: &str = "bench/fqdn-client";
const FQDN_RESOLVER: &str = "bench/fqdn-resolver";
/// Names of the FQDN arm (`n{i}.example.com`), each with an address of its own.
const FQDN_NAMES: usize = 500;
/// How many clients of the FQDN arm look each name up, at about the same time (as replicas of a
/// client do), each then connecting at once to the address of the answer.
const FQDN_ASKERS: usize = 2;
/// The host outside the cluster behind every name: its addresses are those of the names,
/// [`FQDN_RANGE`], and it answers on [`FQDN_PORT`] at each.
const FQDN_HOST: &str = "outside/names";
const FQDN_HOST_ADDRESS: &str = "10.200.98.1";
const FQDN_RANGE: &str = "10.200.92.0/22";
const FQDN_PORT: u16 = 8080;
/// Concurrent clients of the FQDN arm.
const FQDN_WORKERS: usize = 4;
/// How long learned addresses are kept at least: as the FQDN resolver's records' TTL (a short
/// one, so that the agent forgets addresses while it learns others, as on a busy node).
const FQDN_MIN_TTL: Duration = Duration::from_secs(1);
/// A connection not established by then counts as dropped: its SYN got no answer, and TCP would
/// send it again only after 1 s.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(900);
/// The name of every thread of the agent's L7 proxy (its accept loop and its runtime's workers).
const PROXY_THREAD: &str = "palisade-proxy";

/// The two revisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    /// The HTTP client may reach 8080/TCP of the server, the DNS client 53/UDP of the resolver:
    /// L4 allows, nothing proxied.
    L4 = 0,
    /// The same, with an HTTP rule and a DNS rule: every connection to the server and every
    /// query to the resolver goes through the proxy. And the FQDN client's policy.
    L7 = 1,
}

impl Policy {
    fn revision(self) -> &'static str {
        match self {
            Policy::L4 => "bench-l4",
            Policy::L7 => "bench-l7",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Policy::L4 => "l4",
            Policy::L7 => "l7",
        }
    }

    /// The revision's policies: the server's ingress, the DNS client's egress, and under `l7`
    /// the FQDN client's egress (without a policy the FQDN client may connect anywhere).
    fn documents(self) -> Vec<PolicyDocument> {
        let document = |name: &str, content: String| PolicyDocument {
            kind: "CiliumNetworkPolicy".into(),
            name: name.into(),
            namespace: Some("bench".into()),
            content,
        };
        let (http, dns) = match self {
            Policy::L4 => ("", ""),
            Policy::L7 => (
                "\n      rules: {http: [{method: GET, path: '/api/.*'}]}",
                "\n      rules: {dns: [{matchPattern: '*'}]}",
            ),
        };
        let mut documents = vec![
            document(
                "web",
                format!(
                    "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: web, namespace: bench}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts:
    - ports: [{{port: '{WEB_PORT}', protocol: TCP}}]{http}
"
                ),
            ),
            document(
                "dns-client",
                format!(
                    "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: dns-client, namespace: bench}}
spec:
  endpointSelector: {{matchLabels: {{app: dns-client}}}}
  egress:
  - toEndpoints: [{{matchLabels: {{app: resolver}}}}]
    toPorts:
    - ports: [{{port: '53', protocol: UDP}}]{dns}
"
                ),
            ),
        ];
        if self == Policy::L7 {
            documents.push(document(
                "fqdn-client",
                format!(
                    "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: fqdn-client, namespace: bench}}
spec:
  endpointSelector: {{matchLabels: {{app: fqdn-client}}}}
  egress:
  - toEndpoints: [{{matchLabels: {{app: fqdn-resolver}}}}]
    toPorts:
    - ports: [{{port: '53', protocol: UDP}}]{dns}
  - toFQDNs: [{{matchPattern: '*.example.com'}}]
    toPorts: [{{ports: [{{port: '{FQDN_PORT}', protocol: TCP}}]}}]
"
                ),
            ));
        }
        documents
    }
}

/// `count` DNS records, `NAME=IP,...`, as `palisade.dev/dns-records` lists them.
fn records(count: usize, name: fn(usize) -> String, address: fn(usize) -> Ipv4Addr) -> String {
    (0..count).map(|i| format!("{}={}", name(i), address(i))).collect::<Vec<_>>().join(",")
}

/// The `i`th of the names looked up once by the DNS client.
fn new_name(i: usize) -> String {
    format!("u{i}.example.com")
}

fn new_name_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 96, 1 + i as u8)
}

/// The name of the FQDN arm's `i`th lookup.
fn fqdn_name(i: usize) -> String {
    format!("n{i}.example.com")
}

/// The address of the FQDN arm's `i`th name, in [`FQDN_RANGE`].
fn fqdn_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 92 + (i / 250) as u8, 1 + (i % 250) as u8)
}

fn main() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench-l7 needs root (eBPF programs in {PIN_DIR}, network namespaces)");
        std::process::exit(1);
    }
    machine::describe();
    let mut bench = Bench::start();
    http_rr_figures(&mut bench);
    http_load_figures(&mut bench);
    dns_load_figures(&mut bench);
    dns_new_name_figures(&mut bench);
    fqdn_figures(&mut bench);
    bench.stop();
}

/// The latency arms, alternating round by round: L4 (the baseline) and L7 (through the proxy).
/// Besides the pooled percentiles, the median over rounds of the per-round p99 difference: the
/// tail comes mostly from other processes preempting a thread on the way (the proxy adds
/// threads to it), so on a busy machine the pooled p99 moves with the rounds that were hit.
fn http_rr_figures(bench: &mut Bench) {
    let (mut l4, mut l7) = (Vec::new(), Vec::new());
    let mut round_p99_added = Vec::new();
    for round in 0..RR_ROUNDS {
        let order = if round % 2 == 0 { [Policy::L4, Policy::L7] } else { [Policy::L7, Policy::L4] };
        let mut p99 = [Duration::ZERO; 2];
        for policy in order {
            bench.enforce(policy);
            let mut times = http_rr(bench, policy, round);
            p99[policy as usize] = percentile(&mut times, 0.99);
            match policy {
                Policy::L4 => l4.extend(times),
                Policy::L7 => l7.extend(times),
            }
        }
        round_p99_added.push(us(p99[Policy::L7 as usize]) - us(p99[Policy::L4 as usize]));
    }
    for (policy, times) in [(Policy::L4, &mut l4), (Policy::L7, &mut l7)] {
        let mut at = |p| format!("{:.0}", us(percentile(times, p)));
        let (p90, p999, max) = (at(0.90), at(0.999), at(1.0));
        eprintln!("bench-l7: {} request/response, us: p90 {p90}, p99.9 {p999}, max {max}", policy.name());
    }
    let slowest = bench.flips.iter().max().copied().unwrap_or_default();
    eprintln!("bench-l7: {} promotions between the arms, the slowest in force after {slowest:?}", bench.flips.len());
    let (l4_p50, l4_p99) = (us(percentile(&mut l4, 0.50)), us(percentile(&mut l4, 0.99)));
    let (l7_p50, l7_p99) = (us(percentile(&mut l7, 0.50)), us(percentile(&mut l7, 0.99)));
    round_p99_added.sort_by(f64::total_cmp);
    println!("http_rr_requests_per_arm: {} requests", l4.len());
    println!("l4_http_rr_p50_us: {l4_p50:.1} us");
    println!("l4_http_rr_p99_us: {l4_p99:.1} us");
    println!("l7_http_rr_p50_us: {l7_p50:.1} us");
    println!("l7_http_rr_p99_us: {l7_p99:.1} us");
    println!("l7_http_rr_p50_added_us: {:.1} us", l7_p50 - l4_p50);
    println!("l7_http_rr_p99_added_us: {:.1} us", l7_p99 - l4_p99);
    println!("l7_http_rr_p99_added_round_median_us: {:.1} us", round_p99_added[RR_ROUNDS / 2]);
}

/// The throughput arms: the proxy's (with its CPU time), then the baseline's.
fn http_load_figures(bench: &mut Bench) {
    bench.enforce(Policy::L7);
    let l7 = http_load(bench, Policy::L7);
    bench.enforce(Policy::L4);
    let l4 = http_load(bench, Policy::L4);
    println!("http_load_connections: {LOAD_CONNECTIONS} connections");
    println!("l4_http_rps: {:.0} /s", l4.rps());
    println!("l7_http_rps: {:.0} /s", l7.rps());
    println!("l7_http_proxy_cpu_cores: {:.2} cores", l7.proxy_cores());
    println!("l7_http_rps_per_core: {:.0} /s", l7.per_proxy_core());
}

/// The DNS throughput arms: the baseline's (already enforced after the HTTP ones), then the
/// proxy's, with its CPU time.
fn dns_load_figures(bench: &mut Bench) {
    bench.enforce(Policy::L4);
    let direct = dns_load(bench, Policy::L4);
    bench.enforce(Policy::L7);
    let proxy = dns_load(bench, Policy::L7);
    println!("dns_load_clients: {DNS_CLIENTS} clients");
    println!("dns_direct_qps: {:.0} /s", direct.rps());
    println!("dns_proxy_qps: {:.0} /s", proxy.rps());
    println!("dns_proxy_cpu_cores: {:.2} cores", proxy.proxy_cores());
    println!("dns_proxy_qps_per_core: {:.0} /s", proxy.per_proxy_core());
    println!("dns_direct_unanswered: {} queries", direct.unanswered);
    println!("dns_proxy_unanswered: {} queries", proxy.unanswered);
}

/// Arm `dns_proxy_*_name`, under `l7`: one client in the DNS client's namespace asks, one query
/// at a time, for [`DNS_NAME`] (known to the agent since the load arms), then for a name of its
/// own ([`DNS_NEW_NAMES`] in turn). The DNS client's egress has DNS rules and no `toFQDNs`: no
/// selector takes any of these names, yet the proxy hands every answer with a name or address
/// the agent has not seen to it, and sends the answer on only once the agent converged. The
/// time of each query, and the agent's convergences meanwhile.
fn dns_new_name_figures(bench: &mut Bench) {
    bench.enforce(Policy::L7);
    eprintln!(
        "bench-l7: l7: one client asking for {DNS_NAME}, then for a name it never asked (no toFQDNs selects it), {DNS_NEW_NAMES} times"
    );
    let network = &bench.local.network;
    let netns = network.pod(DNS_CLIENT).expect("the DNS client pod").netns.clone();
    let resolver = network.pod(RESOLVER).expect("the resolver pod").ip;
    let converged_before = bench.convergences().len();
    let times = palisade_netsim::in_netns(&netns, move || {
        let socket = dns_socket(resolver, TIMEOUT);
        let known = dns_query(DNS_NAME);
        let timed = |query: &[u8], id: u16, address: Ipv4Addr| {
            let started = Instant::now();
            let answer = ask(&socket, query, id);
            assert_eq!(answer, Some(vec![address]), "query {id}");
            started.elapsed()
        };
        let (mut known_times, mut new_times) = (Vec::new(), Vec::new());
        for i in 0..DNS_NEW_NAMES {
            known_times.push(timed(&known, 2 * i as u16, DNS_ADDRESS.parse().expect("an address")));
            new_times.push(timed(&dns_query(&new_name(i)), 2 * i as u16 + 1, new_name_address(i)));
        }
        (known_times, new_times)
    });
    let (mut known, mut new) = times.expect("enter the DNS client's namespace");
    let converges = bench.convergences().len() - converged_before;
    println!("dns_proxy_known_name_p50_us: {:.0} us", us(percentile(&mut known, 0.50)));
    println!("dns_proxy_known_name_p99_us: {:.0} us", us(percentile(&mut known, 0.99)));
    println!("dns_proxy_new_name_p50_us: {:.0} us", us(percentile(&mut new, 0.50)));
    println!("dns_proxy_new_name_p99_us: {:.0} us", us(percentile(&mut new, 0.99)));
    println!("dns_proxy_new_name_convergences: {converges} convergences");
}

/// The network, its responders and the agent (with its proxy) on the real datapath.
struct Bench {
    local: Local,
    changes: Sender<Change>,
    /// Taken, never read: the agent stops when nobody holds them.
    _reports: UnboundedReceiver<Vec<PolicyAuditReport>>,
    thread: JoinHandle<Result<(), Error>>,
    enforced: Option<Policy>,
    /// How long each promotion took to reach new connections.
    flips: Vec<Duration>,
    /// How long each of the agent's successful convergences took, in turn.
    convergences: Arc<Mutex<Vec<Duration>>>,
    _responders: Responders,
    /// Last: the namespaces and the pinned datapath go when the bench ends, also on a panic.
    _cleanup: common::Cleanup,
}

impl Bench {
    /// Creates the pods' namespaces, serves HTTP and DNS in the servers', starts the agent with
    /// its L7 proxy in the node's, and tells it the cluster, both revisions and a rollout
    /// enforcing the L4 one.
    fn start() -> Bench {
        if Path::new(PIN_DIR).exists() {
            Datapath::open(PIN_DIR).and_then(Datapath::destroy).expect("remove a stale datapath");
        }
        let cleanup = common::Cleanup { prefix: PREFIX, pin_dir: PIN_DIR };
        let local = Local::parse(Path::new("bench-l7.cluster.yaml"), &cluster(), PREFIX).expect("the bench's cluster");
        local.network.create().expect("create the network namespaces");
        let responders = Responders::start(&local.network).expect("serve HTTP and DNS in the servers' namespaces");

        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load = load.split_whitespace().next().unwrap_or("?");
        eprintln!("bench-l7: load average {load} before the start (other processes share the CPUs)");
        eprintln!("bench-l7: loading the datapath and starting the agent with its L7 proxy");
        let datapath = Datapath::open(PIN_DIR).expect("load the datapath");
        let config = AgentConfig { host_node: Some(local.network.node().name.clone()), ..AgentConfig::default() };
        let convergences = Arc::new(Mutex::new(Vec::new()));
        let timed = convergences.clone();
        let options = RuntimeOptions {
            netns: Some(Path::new("/run/netns").join(local.network.node_netns())),
            proxy_port: Some(0),
            fqdn_min_ttl: FQDN_MIN_TTL,
            on_converge: Some(ConvergeHook(Arc::new(move |convergence: &Convergence| {
                if convergence.ok {
                    timed.lock().expect("not poisoned").push(convergence.duration);
                }
            }))),
            ..RuntimeOptions::default()
        };
        let AgentHandle { changes, reports, thread, .. } =
            spawn(Agent::new(config, datapath, RouteResolver), options).expect("start the agent");
        let send = |change| changes.send(change).expect("the agent runs");
        for namespace in local.cluster.namespaces.values() {
            send(Change::Namespace(namespace.clone()));
        }
        for pod in &local.cluster.pods {
            send(Change::Pod(pod.clone()));
        }
        send(Change::Nodes(local.cluster_with_node().nodes));
        for policy in [Policy::L4, Policy::L7] {
            let revision = common::revision_of(NAMESPACE, ROLLOUT, policy.revision(), policy.documents());
            send(Change::Revision(Box::new(revision)));
        }
        let mut bench = Bench {
            local,
            changes,
            _reports: reports,
            thread,
            enforced: None,
            flips: Vec::new(),
            convergences: convergences.clone(),
            _responders: responders,
            _cleanup: cleanup,
        };
        bench.enforce(Policy::L4);
        bench.changes.send(Change::Synced).expect("the agent runs");
        // Without the datapath everything passes, as under L4: the first convergence (after
        // Synced; the agent writes nothing before) must be over first.
        let started = Instant::now();
        while bench.convergences().is_empty() {
            assert!(started.elapsed() < FLIP_TIMEOUT, "the agent has not converged after {FLIP_TIMEOUT:?}");
            thread::sleep(Duration::from_millis(10));
        }
        bench.wait_for(Policy::L4);
        bench
    }

    /// The agent's successful convergences so far: how long each took.
    fn convergences(&self) -> Vec<Duration> {
        self.convergences.lock().expect("not poisoned").clone()
    }

    /// Promotes `policy`'s revision, and waits until new connections meet it: under L7 the
    /// proxy answers [`REFUSED`] with a 403 and passes [`REQUEST`]; under L4 both pass.
    fn enforce(&mut self, policy: Policy) {
        if self.enforced == Some(policy) {
            return;
        }
        let rollout = common::rollout_of(NAMESPACE, ROLLOUT, Some(policy.revision()), None);
        self.changes.send(Change::Rollout(Box::new(rollout))).expect("the agent runs");
        if self.enforced.is_some() {
            let started = Instant::now();
            self.wait_for(policy);
            self.flips.push(started.elapsed());
        }
        self.enforced = Some(policy);
    }

    fn wait_for(&self, policy: Policy) {
        let started = Instant::now();
        loop {
            let refused = self.status(REFUSED);
            let allowed = self.status(REQUEST);
            let want_refused = if policy == Policy::L7 { 403 } else { 200 };
            if (refused, allowed) == (Some(want_refused), Some(200)) {
                return;
            }
            assert!(
                started.elapsed() < FLIP_TIMEOUT,
                "the {} revision is not in force after {FLIP_TIMEOUT:?}: {REFUSED} got {refused:?}, {REQUEST} got {allowed:?}",
                policy.name()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The status of one request on a new connection; `None` without a response.
    fn status(&self, request: &str) -> Option<u16> {
        let request = HttpRequest::parse(request, &[]).expect("a request");
        let (netns, ip) = self.client_and_server();
        match http::request(&netns, ip, WEB_PORT, &request, PROBE_TIMEOUT).expect("enter the client's namespace") {
            HttpOutcome::Response { status, .. } => Some(status.as_u16()),
            HttpOutcome::Failed(_) => None,
        }
    }

    /// The client's network namespace and the server's address.
    fn client_and_server(&self) -> (String, Ipv4Addr) {
        let network = &self.local.network;
        let client = network.pod(CLIENT).expect("the client pod");
        (client.netns.clone(), network.pod(WEB).expect("the server pod").ip)
    }

    fn stop(self) {
        let Bench { changes, thread, .. } = self;
        drop(changes);
        thread.join().expect("the agent's thread").expect("the agent ran");
    }
}

/// Arm `{l4,l7}_http_rr`: [`RR_REQUESTS`] requests one after the other on one new keep-alive
/// connection from the client to the server under `policy` (through the proxy for L7); the time
/// of each, after [`RR_WARMUP`] untimed ones.
fn http_rr(bench: &Bench, policy: Policy, round: usize) -> Vec<Duration> {
    eprintln!(
        "bench-l7: round {}/{RR_ROUNDS}, {}: {RR_REQUESTS} x {REQUEST} one at a time on one keep-alive connection{}",
        round + 1,
        policy.name(),
        if policy == Policy::L7 { ", through the proxy" } else { ", L4 allow only" }
    );
    let outcomes = send(bench, RR_WARMUP + RR_REQUESTS);
    outcomes[RR_WARMUP..].iter().map(|o| ok(o, policy)).collect()
}

/// What a throughput arm measured.
struct Load {
    /// Requests (queries) answered.
    requests: u64,
    /// DNS queries that got no answer within [`DNS_TIMEOUT`] (none for HTTP, where a missing
    /// response fails the bench).
    unanswered: u64,
    wall: Duration,
    /// The proxy's threads' CPU time over the run.
    proxy_cpu: Duration,
}

impl Load {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.wall.as_secs_f64()
    }

    /// Cores of the proxy's CPU time over the run's wall time.
    fn proxy_cores(&self) -> f64 {
        self.proxy_cpu.as_secs_f64() / self.wall.as_secs_f64()
    }

    /// Requests answered per second of one core of proxy CPU.
    fn per_proxy_core(&self) -> f64 {
        self.requests as f64 / self.proxy_cpu.as_secs_f64()
    }
}

/// Arm `{l4,l7}_http_rps`: [`LOAD_CONNECTIONS`] clients, each sending requests back to back on a
/// keep-alive connection (a new one every [`LOAD_BATCH`] requests) for [`LOAD_DURATION`], under
/// `policy`; the requests answered, the wall time until the last response, and the proxy's CPU
/// time meanwhile.
fn http_load(bench: &Bench, policy: Policy) -> Load {
    eprintln!(
        "bench-l7: {}: {LOAD_CONNECTIONS} keep-alive connections sending {REQUEST} back to back for {LOAD_DURATION:?}{}",
        policy.name(),
        if policy == Policy::L7 { ", through the proxy (its threads' CPU time measured)" } else { ", L4 allow only" }
    );
    let cpu_before = proxy_cpu();
    let started = Instant::now();
    let deadline = started + LOAD_DURATION;
    let clients: Vec<JoinHandle<u64>> = (0..LOAD_CONNECTIONS)
        .map(|_| {
            let (netns, ip) = bench.client_and_server();
            thread::spawn(move || {
                let mut answered = 0;
                while Instant::now() < deadline {
                    let outcomes = send_from(&netns, ip, LOAD_BATCH);
                    for outcome in &outcomes {
                        ok(outcome, policy);
                    }
                    answered += outcomes.len() as u64;
                }
                answered
            })
        })
        .collect();
    let requests = clients.into_iter().map(|c| c.join().expect("a client thread")).sum();
    let wall = started.elapsed();
    let proxy_cpu = proxy_cpu().saturating_sub(cpu_before);
    Load { requests, unanswered: 0, wall, proxy_cpu }
}

/// Arm `dns_{direct,proxy}_qps`: [`DNS_CLIENTS`] clients in the DNS client's namespace, each
/// asking the resolver for [`DNS_NAME`] over a UDP socket of its own, one query at a time, back
/// to back for [`DNS_DURATION`], under `policy`: under L4 the queries go straight to the
/// resolver; under L7 each is steered to the proxy, judged by the DNS rule, forwarded to the
/// resolver from the client's address, and its answer's address taught to the agent (known
/// after the first answer, so no answer waits for the agent) before it is sent back. The queries
/// answered, the wall time, and the proxy's CPU time meanwhile.
fn dns_load(bench: &Bench, policy: Policy) -> Load {
    eprintln!(
        "bench-l7: {}: {DNS_CLIENTS} UDP clients asking for {DNS_NAME} back to back for {DNS_DURATION:?}{}",
        policy.name(),
        if policy == Policy::L7 { ", through the proxy (its threads' CPU time measured)" } else { ", L4 allow only" }
    );
    let network = &bench.local.network;
    let netns = network.pod(DNS_CLIENT).expect("the DNS client pod").netns.clone();
    let resolver = network.pod(RESOLVER).expect("the resolver pod").ip;
    let expected: Ipv4Addr = DNS_ADDRESS.parse().expect("an address");
    // One query first, not counted: the first answer through the proxy teaches the agent the
    // name's address, and waits for it to be written.
    let first = palisade_netsim::in_netns(&netns, move || {
        let socket = dns_socket(resolver, TIMEOUT);
        ask(&socket, &dns_query(DNS_NAME), 1)
    });
    let first = first.expect("enter the DNS client's namespace");
    assert_eq!(first, Some(vec![expected]), "{}: the first query", policy.name());
    let cpu_before = proxy_cpu();
    let started = Instant::now();
    let deadline = started + DNS_DURATION;
    let clients: Vec<JoinHandle<(u64, u64)>> = (0..DNS_CLIENTS)
        .map(|_| {
            let name = policy.name();
            palisade_netsim::spawn_in_netns(&netns, move || {
                let socket = dns_socket(resolver, DNS_TIMEOUT);
                let query = dns_query(DNS_NAME);
                let (mut answered, mut unanswered) = (0, 0);
                let mut id: u16 = 0;
                while Instant::now() < deadline {
                    id = id.wrapping_add(1);
                    match ask(&socket, &query, id) {
                        Some(addresses) if addresses == [expected] => answered += 1,
                        Some(other) => panic!("{name}: {DNS_NAME} resolved to {other:?}"),
                        None => unanswered += 1,
                    }
                }
                (answered, unanswered)
            })
            .expect("enter the DNS client's namespace")
        })
        .collect();
    let (mut requests, mut unanswered) = (0, 0);
    for client in clients {
        let (a, u) = client.join().expect("a DNS client thread");
        requests += a;
        unanswered += u;
    }
    let wall = started.elapsed();
    let proxy_cpu = proxy_cpu().saturating_sub(cpu_before);
    Load { requests, unanswered, wall, proxy_cpu }
}

/// The FQDN arm, under `l7`: [`FQDN_WORKERS`] clients in the FQDN client's namespace look
/// [`FQDN_NAMES`] names up through the proxy, each name [`FQDN_ASKERS`] times by different
/// clients at about the same time, and each client connects at once to the address of its
/// answer. The client's egress allows DNS to the FQDN resolver through the proxy and, by
/// `toFQDNs: [{matchPattern: "*.example.com"}]`, 8080/TCP to the addresses the proxy learned.
/// Every name has an address of its own, which no connection reached before: each connection
/// is allowed only if the answer's address reached the datapath before the answer reached the
/// client, and the agent forgets addresses a second ([`FQDN_MIN_TTL`]) after learning them,
/// while it learns others. A connection that fails, its SYN unanswered until TCP would send it
/// again, is a first connection dropped.
fn fqdn_figures(bench: &mut Bench) {
    bench.enforce(Policy::L7);
    let network = &bench.local.network;
    let netns = network.pod(FQDN_CLIENT).expect("the FQDN client pod").netns.clone();
    let resolver = network.pod(FQDN_RESOLVER).expect("the FQDN resolver pod").ip;
    let host = network.pod(FQDN_HOST).expect("the FQDN arm's host");
    // The host answers at every address of the range (a prefix on its loopback is local as a
    // whole), and the node routes the range to it.
    let ip = |netns: &str, args: &str| {
        let args: Vec<&str> = ["-n", netns].into_iter().chain(args.split(' ')).collect();
        let status = std::process::Command::new("ip").args(&args).status().expect("run ip");
        assert!(status.success(), "ip {}", args.join(" "));
    };
    ip(&host.netns, &format!("addr add {FQDN_RANGE} dev lo"));
    ip(network.node_netns(), &format!("route add {FQDN_RANGE} via {FQDN_HOST_ADDRESS} dev {}", host.host_if));
    // Before any lookup, toFQDNs selects nothing: the host is closed.
    let closed = palisade_netsim::in_netns(&netns, || connect(fqdn_address(0), Duration::from_millis(300)));
    let closed = closed.expect("enter the FQDN client's namespace");
    assert_eq!(closed, Connect::TimedOut, "the first name's address before any lookup");
    eprintln!(
        "bench-l7: l7: {FQDN_WORKERS} clients looking {FQDN_NAMES} names up through the proxy, each name {FQDN_ASKERS} times at once, and connecting at once to the address"
    );
    let converged_before = bench.convergences().len();
    // The clients in groups of FQDN_ASKERS, each group asking for every name of its share at
    // once (after a barrier), the names alternating between the groups.
    let groups = FQDN_WORKERS / FQDN_ASKERS;
    let barriers: Vec<Arc<Barrier>> = (0..groups).map(|_| Arc::new(Barrier::new(FQDN_ASKERS))).collect();
    let workers: Vec<JoinHandle<Vec<(usize, Duration, Connect)>>> = (0..groups * FQDN_ASKERS)
        .map(|worker| {
            let (group, barrier) = (worker / FQDN_ASKERS, barriers[worker / FQDN_ASKERS].clone());
            palisade_netsim::spawn_in_netns(&netns, move || {
                let socket = dns_socket(resolver, TIMEOUT);
                let mut done = Vec::new();
                for i in (group..FQDN_NAMES).step_by(groups) {
                    barrier.wait();
                    let started = Instant::now();
                    let addresses = ask(&socket, &dns_query(&fqdn_name(i)), i as u16);
                    let took = started.elapsed();
                    assert_eq!(addresses, Some(vec![fqdn_address(i)]), "{}", fqdn_name(i));
                    done.push((i, took, connect(fqdn_address(i), CONNECT_TIMEOUT)));
                }
                done
            })
            .expect("enter the FQDN client's namespace")
        })
        .collect();
    let mut lookups = Vec::new();
    let mut dropped = Vec::new();
    for worker in workers {
        for (i, lookup, connected) in worker.join().expect("an FQDN client thread") {
            lookups.push(lookup);
            if connected != Connect::Open {
                dropped.push(format!("{} ({}): {connected:?}", fqdn_name(i), fqdn_address(i)));
            }
        }
    }
    if !dropped.is_empty() {
        eprintln!("bench-l7: first connections dropped: {}", dropped.join(", "));
    }
    let max = lookups.iter().max().copied().unwrap_or_default();
    let mut convergences = bench.convergences().split_off(converged_before);
    eprintln!(
        "bench-l7: FQDN lookups through the proxy, the slowest {max:?}; {} agent convergences meanwhile, p50 {:?}, max {:?}",
        convergences.len(),
        percentile(&mut convergences, 0.5),
        percentile(&mut convergences, 1.0)
    );
    println!("fqdn_lookups: {} lookups", lookups.len());
    println!("fqdn_first_connection_drops: {} connections", dropped.len());
    println!("fqdn_lookup_to_open_p50_us: {:.0} us", us(percentile(&mut lookups, 0.50)));
    println!("fqdn_lookup_to_open_p99_us: {:.0} us", us(percentile(&mut lookups, 0.99)));
}

/// How a connection attempt of the FQDN arm ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Connect {
    Open,
    Refused,
    /// No answer to the SYN: dropped.
    TimedOut,
    Failed(std::io::ErrorKind),
}

/// One TCP connection to `to`:[`FQDN_PORT`] from the calling thread's namespace, closed at once.
fn connect(to: Ipv4Addr, timeout: Duration) -> Connect {
    use std::io::ErrorKind;
    match TcpStream::connect_timeout(&SocketAddrV4::new(to, FQDN_PORT).into(), timeout) {
        Ok(_) => Connect::Open,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Connect::Refused,
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => Connect::TimedOut,
        Err(e) => Connect::Failed(e.kind()),
    }
}

/// A UDP socket of the calling thread's namespace, connected to `server`'s DNS port.
fn dns_socket(server: Ipv4Addr, timeout: Duration) -> UdpSocket {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind a UDP socket");
    socket.connect((server, 53)).expect("connect a UDP socket");
    socket.set_read_timeout(Some(timeout)).expect("a read timeout");
    socket
}

/// A query for the A records of `name`, as a resolver sends it (id 0: set before sending).
fn dns_query(name: &str) -> Vec<u8> {
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name).expect("a DNS name"), RecordType::A));
    query.to_vec().expect("a query")
}

/// Sends `query` with `id` and waits for its answer (skipping late answers to earlier
/// queries): the addresses of a NOERROR answer; `None` without an answer in the socket's read
/// timeout. Any other answer fails the bench.
fn ask(socket: &UdpSocket, query: &[u8], id: u16) -> Option<Vec<Ipv4Addr>> {
    let mut query = query.to_vec();
    query[..2].copy_from_slice(&id.to_be_bytes());
    socket.send(&query).expect("send a query");
    let mut buf = [0; 1500];
    loop {
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return None;
            }
            Err(e) => panic!("receive an answer: {e}"),
        };
        let answer = Message::from_vec(&buf[..n]).expect("a DNS message");
        if answer.metadata.id != id {
            continue;
        }
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError, "{answer:?}");
        let addresses = answer.answers.iter().filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        });
        return Some(addresses.collect());
    }
}

/// `n` [`REQUEST`]s on one keep-alive connection from the client to the server.
fn send(bench: &Bench, n: usize) -> Vec<HttpOutcome> {
    let (netns, ip) = bench.client_and_server();
    send_from(&netns, ip, n)
}

fn send_from(netns: &str, ip: Ipv4Addr, n: usize) -> Vec<HttpOutcome> {
    let request = HttpRequest::parse(REQUEST, &[]).expect("a request");
    http::requests(netns, ip, WEB_PORT, &vec![request; n], TIMEOUT).expect("enter the client's namespace")
}

/// The time of a response from the server itself (not the proxy's 403 or 502); panics on
/// anything else.
fn ok(outcome: &HttpOutcome, policy: Policy) -> Duration {
    match outcome {
        HttpOutcome::Response { status, body, time, .. }
            if status.as_u16() == 200 && body.starts_with("palisade-http bench/web GET /api/") =>
        {
            *time
        }
        other => panic!("{}: {REQUEST} got {other:?}", policy.name()),
    }
}

/// The CPU time of this process's threads named [`PROXY_THREAD`], user and system: the first
/// field of each one's schedstat (nanoseconds on the CPU).
fn proxy_cpu() -> Duration {
    let mut total = 0;
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() != PROXY_THREAD {
            continue;
        }
        // A thread that ended meanwhile has no files left: nothing to count.
        let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        total += schedstat.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()).unwrap_or(0);
    }
    assert!(total > 0, "no thread named {PROXY_THREAD}: is the agent's proxy running?");
    Duration::from_nanos(total)
}

fn percentile(values: &mut [Duration], p: f64) -> Duration {
    values.sort();
    let rank = ((values.len() as f64 * p).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
