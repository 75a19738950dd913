//! `make bench-l7` (root): what the node's L7 proxy costs, on real packets. Two pods of local
//! mode's network (netsim: a network namespace each, veths to a node namespace) are a client and
//! an HTTP/1.1 server (netsim's keep-alive responder, `palisade.dev/http-ports`); the agent runs
//! as on a node (its runtime thread in the node namespace, the real eBPF datapath pinned in a
//! bpffs directory of the bench's, its L7 proxy started by the runtime) and is fed the cluster
//! and one rollout, as local mode feeds it. The rollout enforces one of two revisions of the
//! server's ingress policy on port 8080, switched by promoting the other (one flip):
//!
//! - `l4`: an L4-only allow from the client: the baseline a user has, the same datapath and
//!   agent without L7 rules (nothing is steered to the proxy);
//! - `l7`: the same allow with an HTTP rule (`GET /api/.*`): every connection is steered to the
//!   proxy, which judges each request and forwards it upstream from the client's address.
//!
//! The client sends `GET /api/items/42` (allowed by the rule) with netsim's HTTP client. Prints
//! `name: value unit` lines (progress on stderr):
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
//!   wall time; `l7_http_rps_per_core`: requests served per second of one core of proxy CPU.
//!
//! One function per arm ([`http_rr`], [`http_load`]); an arm for another proxied protocol goes
//! beside them, with its pods in [`CLUSTER`] and its rule in [`Policy`].
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../examples/bench-datapath/machine.rs"]
mod machine;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::mpsc::Sender;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use palisade_agent::runtime::{AgentHandle, RuntimeOptions, spawn};
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

/// The client and the HTTP server, in local mode's cluster file format.
const CLUSTER: &str = "apiVersion: v1
kind: List
items:
- kind: Namespace
  metadata: {name: bench, labels: {team: bench}}
- kind: Pod
  metadata:
    name: web
    namespace: bench
    labels: {app: web}
    annotations: {palisade.dev/http-ports: '8080'}
  spec: {containers: [{ports: [{containerPort: 8080}]}]}
  status: {podIP: 10.200.77.10}
- kind: Pod
  metadata: {name: client, namespace: bench, labels: {app: client}}
  status: {podIP: 10.200.77.20}
";
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
/// The name of every thread of the agent's L7 proxy (its accept loop and its runtime's workers).
const PROXY_THREAD: &str = "palisade-proxy";

/// The two revisions of the server's ingress policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    /// The client may reach 8080/TCP: an L4 allow, nothing proxied.
    L4 = 0,
    /// The same, with an HTTP rule: every connection goes through the proxy.
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

    fn yaml(self) -> String {
        let rules = match self {
            Policy::L4 => "",
            Policy::L7 => "\n      rules: {http: [{method: GET, path: '/api/.*'}]}",
        };
        format!(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: web, namespace: bench}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts:
    - ports: [{{port: '{WEB_PORT}', protocol: TCP}}]{rules}
"
        )
    }
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
    println!("l7_http_proxy_cpu_cores: {:.2} cores", l7.proxy_cpu.as_secs_f64() / l7.wall.as_secs_f64());
    println!("l7_http_rps_per_core: {:.0} /s", l7.requests as f64 / l7.proxy_cpu.as_secs_f64());
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
    _responders: Responders,
    /// Last: the namespaces and the pinned datapath go when the bench ends, also on a panic.
    _cleanup: common::Cleanup,
}

impl Bench {
    /// Creates the pods' namespaces, serves HTTP in the server's, starts the agent with its L7
    /// proxy in the node's, and tells it the cluster, both revisions and a rollout enforcing the
    /// L4 one.
    fn start() -> Bench {
        if Path::new(PIN_DIR).exists() {
            Datapath::open(PIN_DIR).and_then(Datapath::destroy).expect("remove a stale datapath");
        }
        let cleanup = common::Cleanup { prefix: PREFIX, pin_dir: PIN_DIR };
        let local = Local::parse(Path::new("bench-l7.cluster.yaml"), CLUSTER, PREFIX).expect("the bench's cluster");
        local.network.create().expect("create the network namespaces");
        let responders = Responders::start(&local.network).expect("serve HTTP in the server's namespace");

        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load = load.split_whitespace().next().unwrap_or("?");
        eprintln!("bench-l7: load average {load} before the start (other processes share the CPUs)");
        eprintln!("bench-l7: loading the datapath and starting the agent with its L7 proxy");
        let datapath = Datapath::open(PIN_DIR).expect("load the datapath");
        let config = AgentConfig { host_node: Some(local.network.node().name.clone()), ..AgentConfig::default() };
        let options = RuntimeOptions {
            netns: Some(Path::new("/run/netns").join(local.network.node_netns())),
            proxy_port: Some(0),
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
            let document = PolicyDocument {
                kind: "CiliumNetworkPolicy".into(),
                name: "web".into(),
                namespace: Some("bench".into()),
                content: policy.yaml(),
            };
            let revision = common::revision_of(NAMESPACE, ROLLOUT, policy.revision(), vec![document]);
            send(Change::Revision(Box::new(revision)));
        }
        let mut bench = Bench {
            local,
            changes,
            _reports: reports,
            thread,
            enforced: None,
            flips: Vec::new(),
            _responders: responders,
            _cleanup: cleanup,
        };
        bench.enforce(Policy::L4);
        bench.changes.send(Change::Synced).expect("the agent runs");
        bench.wait_for(Policy::L4);
        bench
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
    requests: u64,
    wall: Duration,
    /// The proxy's threads' CPU time over the run.
    proxy_cpu: Duration,
}

impl Load {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.wall.as_secs_f64()
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
    Load { requests, wall, proxy_cpu }
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
