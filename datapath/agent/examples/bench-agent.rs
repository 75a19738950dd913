//! `make bench-agent` (root): the agent as it runs on a node — its runtime thread fed by its
//! Kubernetes watches (kube-rs against the in-process fake API server) — over the real eBPF
//! datapath (pinned in a temporary bpffs directory), on the synthetic cluster of `palisade bench
//! policy`: 10,000 pods, 100 of them on this node, and 1,000 policies in one revision. Each local
//! pod has a veth pair (host side in a network namespace the bench creates, with the route to the
//! pod's 10.200.0.0/16 address; pod side in a second one), found by the agent's `RouteResolver`
//! and attached. Nothing is addressed and no packet is sent. Prints `name: value unit` lines:
//!
//! - `initial_converge_s`: from the watches starting to the end of the first convergence (every
//!   object listed through the kube client, compiled, every endpoint programmed and attached);
//! - `fake_apiserver_rss_mb`: what the fake API server's store adds to the process; and
//!   `agent_rss_mb`: the process's peak during the initial convergence less what it held before
//!   the agent started (the bench's inputs and that store): the agent's own share, with the fake
//!   server's transient buffers while it answers the listings (pages of 500 objects, as
//!   kube-runtime's watcher asks for them) in it: an upper bound;
//! - `implementation_delay_*_ms`: a change (a local pod appearing, a pod relabelled; see
//!   [`next_change`]) written to the API server, from the agent's watch receiving it (its `watch
//!   event received` debug event) to the pod's ipcache entry reading back the new identity from
//!   the kernel (the last write of a convergence, after the slots and attachments);
//!   `implementation_delay_from_write_p99_ms` from the write instead. New pods get their veth
//!   and route before they are written, as a CNI wires a pod before its address is published.
//!   On a sample (every step with `--verify-all`), the slots of the affected endpoints and every
//!   ipcache prefix of a fresh compile are read back and checked against that compile;
//! - `full_recompute_p50_ms`: the same change as a naive agent implements it (a new agent from
//!   scratch and a full converge into an empty datapath, called directly, endpoints not
//!   attached: only its compile and programming), and `full_recompute_vs_incremental_ratio` against the p50 delay.
//!
//! `--profile` leaves out the reference compiles and the full rebuilds (for profiling the
//! incremental path alone); `--verify-all` checks every step.
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../examples/bench-datapath/machine.rs"]
mod machine;

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_agent::cluster_watch::{WatchState, watch};
use palisade_agent::runtime::{ConvergeHook, Convergence, RuntimeOptions, spawn};
use palisade_agent::{Agent, AgentConfig, Change, Interface, InterfaceResolver, RouteResolver};
use palisade_common::{PolicyEntry, PolicyKey};
use palisade_datapath::Datapath;
use palisade_fake_apiserver::FakeApi;
use palisade_fake_apiserver::collections::{NAMESPACES, NODES, PODS, REVISIONS, ROLLOUTS};
use palisade_policy::bench as workload;
use palisade_policy::cluster::{Cluster, Namespace, Node, Pod};
use palisade_policy::{
    CompileOptions, CompiledPolicy, IdentityBasis, ParseOptions, PolicySet, SourceFile, parse_policies,
};
use palisade_rollout::crd::{PolicyDocument, PolicyRevision, PolicyRollout};
use serde_json::{Value, json};
use tracing::field::{Field, Visit};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

const PIN_DIR: &str = "/sys/fs/bpf/palisade-bench-agent";
/// Where the naive agent of the side-by-side programs its fresh datapath.
const FULL_PIN_DIR: &str = "/sys/fs/bpf/palisade-bench-agent-full";
/// The network namespaces: the node's (host sides of the veths, the agent's thread) and the pods'.
const NETNS_PREFIX: &str = "palisade-bench-agent-";
const NODE_NETNS: &str = "palisade-bench-agent-node";
const PODS_NETNS: &str = "palisade-bench-agent-pods";
/// The host side of local pod `n`'s veth is `pe{n}` with this index plus `n`.
const FIRST_IFINDEX: u32 = 1000;
const NODE: &str = "n1";
const LOCAL_ENDPOINTS: usize = 100;
/// Changes timed; they cycle through four kinds (see [`next_change`]).
const STEPS: usize = 240;
/// Every this many steps the change is checked against a fresh compile.
const VERIFY_EVERY: usize = 8;
/// Every this many steps the change is also timed as a full rebuild.
const FULL_EVERY: usize = 48;
/// A change not readable in the kernel by then is a failure.
const READABLE_TIMEOUT: Duration = Duration::from_secs(10);
const NAMESPACE: &str = "palisade-system";
const REVISION: &str = "bench-r1";
/// Where the agent's watches log each event they receive.
const WATCH_TARGET: &str = "palisade_agent::cluster_watch";

fn main() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench-agent needs root (eBPF maps in {PIN_DIR}, network namespaces)");
        std::process::exit(1);
    }
    machine::describe();
    let verify_all = std::env::args().any(|a| a == "--verify-all");
    // For profiling the incremental path alone: no reference compiles, no full rebuilds.
    let profile = std::env::args().any(|a| a == "--profile");
    let arrivals = Arrivals::install();

    let (mut cluster, revision, policies) = inputs();
    let local: Vec<usize> = local_pod_indexes(cluster.pods.len());
    for &i in &local {
        cluster.pods[i].node_name = Some(NODE.into());
    }
    remove_stale(PIN_DIR);
    remove_stale(FULL_PIN_DIR);
    // Removes the namespaces and the datapath also when the bench panics.
    let _cleanup = common::Cleanup { prefix: NETNS_PREFIX, pin_dir: PIN_DIR };
    let mut network = Network::create();
    network.wire(&local.iter().map(|&i| &cluster.pods[i]).collect::<Vec<_>>());

    let before_api = settled_rss_kb();
    let api = FakeApi::default();
    publish(&api, &cluster, &revision);
    let before_agent = settled_rss_kb();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let _entered = runtime.enter();
    let (converged_tx, converged) = mpsc::channel();
    let on_converge = ConvergeHook(Arc::new(move |c: &Convergence| {
        let _ = converged_tx.send(c.clone());
    }));
    let options = RuntimeOptions {
        netns: Some(Path::new("/run/netns").join(NODE_NETNS)),
        on_converge: Some(on_converge),
        ..RuntimeOptions::default()
    };
    reset_peak_rss();
    let start = Instant::now();
    let datapath = Datapath::open(PIN_DIR).expect("open the datapath");
    let config = AgentConfig { node: Some(NODE.into()), ..AgentConfig::default() };
    let mut handle = spawn(Agent::new(config, datapath, RouteResolver), options).expect("start the agent");
    let watches = runtime.spawn(watch(api.client(), handle.changes, Arc::new(WatchState::default())));
    let initial = next_convergence(&converged, Duration::from_secs(120));
    let initial_s = start.elapsed().as_secs_f64();
    let peak = rss_kb("VmHWM");
    assert!(initial.ok, "the initial convergence failed");
    assert_eq!(initial.endpoints, LOCAL_ENDPOINTS, "the node's endpoints");

    println!("pods: {} pods", cluster.pods.len());
    println!("local_endpoints: {} endpoints", initial.endpoints);
    println!("policies: {} policies", policies.policies.len());
    println!("initial_converge_s: {initial_s:.2} s");
    println!("fake_apiserver_rss_mb: {:.1} MB", mb(before_agent.saturating_sub(before_api)));
    println!("agent_rss_mb: {:.1} MB", mb(peak.saturating_sub(before_agent)));

    // A handle of our own on the pinned maps: what a packet would find.
    let kernel = Datapath::open(PIN_DIR).expect("open the agent's datapath");
    let all: Vec<(String, String)> =
        local.iter().map(|&i| (cluster.pods[i].namespace.clone(), cluster.pods[i].name.clone())).collect();
    let mut verified = verify(&kernel, &network, &cluster, &policies, &all);

    let mut delays = Vec::new();
    let mut from_write = Vec::new();
    let mut full = Vec::new();
    let mut new_pods = 0;
    for step in 0..STEPS {
        // Reports are not measured; the agent stops if nobody takes them.
        while handle.reports.try_recv().is_ok() {}
        let (pod, affected) = next_change(step, &mut cluster, &local, &mut new_pods);
        if pod.node_name.as_deref() == Some(NODE) && !network.wired(&pod) {
            network.wire(&[&pod]);
        }
        let ip = pod.ipv4().expect("a pod address");
        let before = kernel.ipcache_identity(ip, 32).expect("read the ipcache");
        while converged.try_recv().is_ok() {}
        let written = Instant::now();
        api.put(PODS, pod_json(&pod));
        let readable = loop {
            if kernel.ipcache_identity(ip, 32).expect("read the ipcache") != before {
                break Instant::now();
            }
            assert!(
                written.elapsed() < READABLE_TIMEOUT,
                "step {step}: {}'s new identity never reached the kernel",
                pod.key()
            );
            std::thread::sleep(Duration::from_micros(50));
        };
        let arrived = arrivals.take(&pod).unwrap_or_else(|| panic!("step {step}: no watch event for {}", pod.key()));
        assert!(next_convergence(&converged, READABLE_TIMEOUT).ok, "step {step}: the convergence failed");
        delays.push(readable.duration_since(arrived));
        from_write.push(readable.duration_since(written));
        if verify_all || (!profile && step % VERIFY_EVERY == 0) {
            verified += verify(&kernel, &network, &cluster, &policies, &affected);
        }
        if !profile && step % FULL_EVERY == 0 {
            full.push(full_rebuild(&cluster, &revision));
        }
    }
    // Everything, once more, at the end: no endpoint drifted.
    let endpoints: Vec<(String, String)> = cluster
        .pods
        .iter()
        .filter(|p| p.node_name.as_deref() == Some(NODE))
        .map(|p| (p.namespace.clone(), p.name.clone()))
        .collect();
    verified += verify(&kernel, &network, &cluster, &policies, &endpoints);
    // The watches hold the agent's inbox: without them its thread stops.
    watches.abort();
    let _ = runtime.block_on(watches);
    handle.thread.join().expect("the agent's thread").expect("the agent ran");
    drop(kernel);

    let p50 = percentile(&mut delays, 0.50);
    println!("changes: {} changes", delays.len());
    println!("verified_endpoint_slots: {verified} slots");
    println!("implementation_delay_p50_ms: {:.2} ms", ms(p50));
    println!("implementation_delay_p99_ms: {:.2} ms", ms(percentile(&mut delays, 0.99)));
    println!("implementation_delay_max_ms: {:.2} ms", ms(*delays.iter().max().expect("steps")));
    println!("implementation_delay_from_write_p99_ms: {:.2} ms", ms(percentile(&mut from_write, 0.99)));
    if !full.is_empty() {
        let full_p50 = percentile(&mut full, 0.50);
        println!("full_recompute_p50_ms: {:.1} ms", ms(full_p50));
        println!("full_recompute_vs_incremental_ratio: {:.0} x", full_p50.as_secs_f64() / p50.as_secs_f64());
    }
}

/// Destroys a datapath an interrupted run left pinned.
fn remove_stale(dir: &str) {
    if Path::new(dir).exists() {
        Datapath::open(dir).and_then(Datapath::destroy).expect("remove the stale datapath");
    }
}

/// The next convergence the agent reports.
fn next_convergence(converged: &Receiver<Convergence>, timeout: Duration) -> Convergence {
    converged.recv_timeout(timeout).expect("the agent converges")
}

/// When each pod's watch event reached the agent: the watches' `watch event received` debug
/// event, timestamped as it is emitted (the object decoded, before it becomes a change).
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<HashMap<(String, String), Instant>>>);

impl Arrivals {
    fn install() -> Arrivals {
        let arrivals = Arrivals::default();
        let layer = arrivals.clone().with_filter(filter_fn(|m| m.is_event() && m.target() == WATCH_TARGET));
        tracing_subscriber::registry().with(layer).init();
        arrivals
    }

    fn take(&self, pod: &Pod) -> Option<Instant> {
        self.0.lock().expect("arrivals").remove(&(pod.namespace.clone(), pod.name.clone()))
    }
}

impl<S: tracing::Subscriber> Layer<S> for Arrivals {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let at = Instant::now();
        let mut fields = WatchEvent::default();
        event.record(&mut fields);
        if fields.kind == "Pod" && !fields.name.is_empty() {
            self.0.lock().expect("arrivals").insert((fields.namespace, fields.name), at);
        }
    }
}

#[derive(Default)]
struct WatchEvent {
    kind: String,
    namespace: String,
    name: String,
}

impl Visit for WatchEvent {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let slot = match field.name() {
            "kind" => &mut self.kind,
            "namespace" => &mut self.namespace,
            "name" => &mut self.name,
            _ => return,
        };
        *slot = format!("{value:?}");
    }
}

/// The node's side of the local pods: a veth pair each, host side `pe{n}` (index
/// [`FIRST_IFINDEX`] + n) in [`NODE_NETNS`] with the route to the pod, pod side in [`PODS_NETNS`].
struct Network {
    ifindex: HashMap<(String, String), u32>,
}

impl Network {
    fn create() -> Network {
        palisade_netsim::net::remove_netns_with_prefix(NETNS_PREFIX).expect("remove stale namespaces");
        for netns in [NODE_NETNS, PODS_NETNS] {
            run(Command::new("ip").args(["netns", "add", netns]), None);
        }
        Network { ifindex: HashMap::new() }
    }

    fn wired(&self, pod: &Pod) -> bool {
        self.ifindex.contains_key(&(pod.namespace.clone(), pod.name.clone()))
    }

    fn wire(&mut self, pods: &[&Pod]) {
        let (mut links, mut peers, mut routes) = (Vec::new(), Vec::new(), Vec::new());
        for pod in pods {
            let n = self.ifindex.len() as u32;
            let index = FIRST_IFINDEX + n;
            let ip = pod.ipv4().expect("a local pod's address");
            links.push(format!("link add pe{n} index {index} type veth peer name pp{n} netns {PODS_NETNS}"));
            peers.push(format!("link set pp{n} up"));
            routes.extend([format!("link set pe{n} up"), format!("route add {ip}/32 dev pe{n}")]);
            self.ifindex.insert((pod.namespace.clone(), pod.name.clone()), index);
        }
        ip_batch(NODE_NETNS, &links);
        ip_batch(PODS_NETNS, &peers);
        ip_batch(NODE_NETNS, &routes);
    }

    fn ifindex(&self, namespace: &str, name: &str) -> u32 {
        self.ifindex[&(namespace.to_owned(), name.to_owned())]
    }
}

fn ip_batch(netns: &str, lines: &[String]) {
    run(Command::new("ip").args(["-n", netns, "-batch", "-"]), Some(&lines.join("\n")));
}

fn run(command: &mut Command, stdin: Option<&str>) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    if let Some(text) = stdin {
        child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to ip");
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("wait for ip");
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// The cluster's namespaces, nodes and pods, the revision and its rollout, as a fresh API server
/// would hold them.
fn publish(api: &FakeApi, cluster: &Cluster, revision: &PolicyRevision) {
    for namespace in cluster.namespaces.values() {
        api.put(NAMESPACES, namespace_json(namespace));
    }
    for node in &cluster.nodes {
        api.put(NODES, node_json(node));
    }
    for pod in &cluster.pods {
        api.put(PODS, pod_json(pod));
    }
    api.put(REVISIONS, serde_json::to_value(revision).expect("a revision as JSON"));
    api.put(ROLLOUTS, serde_json::to_value(rollout()).expect("a rollout as JSON"));
}

fn namespace_json(namespace: &Namespace) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace.name, "labels": namespace.labels}})
}

fn node_json(node: &Node) -> Value {
    let addresses: Vec<Value> =
        node.addresses.iter().map(|a| json!({"type": "InternalIP", "address": a.to_string()})).collect();
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name, "labels": node.labels},
        "status": {"addresses": addresses}})
}

fn pod_json(pod: &Pod) -> Value {
    let ports: Vec<Value> = pod
        .ports
        .iter()
        .map(|p| json!({"name": p.name, "containerPort": p.port, "protocol": format!("{:?}", p.protocol)}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels},
        "spec": {"nodeName": pod.node_name, "serviceAccountName": pod.service_account,
            "hostNetwork": pod.host_network, "containers": [{"name": "main", "ports": ports}]},
        "status": {"podIP": pod.ip().map(|ip| ip.to_string())}})
}

/// The synthetic cluster, the revision carrying its 1,000 policies, and those policies parsed
/// (for the reference compiles).
fn inputs() -> (Cluster, PolicyRevision, PolicySet) {
    let work = workload::generate();
    let sources: Vec<SourceFile> = work.cluster_files.iter().map(|(n, t)| SourceFile { name: n, text: t }).collect();
    let cluster = Cluster::parse(&sources).expect("the synthetic cluster parses");
    let mut documents = Vec::new();
    for (_, text) in &work.policy_files {
        for content in text.split("---\n").filter(|d| !d.trim().is_empty()) {
            let field = |prefix: &str| {
                content.lines().find_map(|l| l.strip_prefix(prefix)).map(|v| v.trim().to_owned()).expect("field")
            };
            let namespace = content.lines().find_map(|l| l.strip_prefix("  namespace: ")).map(|v| v.trim().to_owned());
            documents.push(PolicyDocument {
                kind: field("kind: "),
                name: field("  name: "),
                namespace,
                content: content.to_owned(),
            });
        }
    }
    let revision = common::revision_of(NAMESPACE, "bench", REVISION, documents);
    let policies = parse_revision(&revision);
    (cluster, revision, policies)
}

/// The revision's documents parsed as the agent parses them.
fn parse_revision(revision: &PolicyRevision) -> PolicySet {
    let names: Vec<String> = revision.spec.policies.iter().map(|p| format!("{} {}", p.kind, p.name)).collect();
    let sources: Vec<SourceFile> =
        revision.spec.policies.iter().zip(&names).map(|(p, name)| SourceFile { name, text: &p.content }).collect();
    let options = ParseOptions { default_namespace: NAMESPACE.into(), ..ParseOptions::default() };
    let parsed = parse_policies(&sources, &options);
    assert!(!parsed.has_errors(), "the generated policies parse");
    parsed.set
}

fn rollout() -> PolicyRollout {
    common::rollout_of(NAMESPACE, "bench", Some(REVISION), None)
}

/// Every 100th pod, offset so the node runs a mix of apps from 100 namespaces.
fn local_pod_indexes(pods: usize) -> Vec<usize> {
    let stride = pods / LOCAL_ENDPOINTS;
    (0..LOCAL_ENDPOINTS).map(|i| i * stride + (i * 13) % (stride / 2)).collect()
}

/// Change `step`, applied to `cluster` too; returns the pod as it is written to the API server
/// and the local endpoints whose slots it may change. Four kinds in turn: a new replica of a
/// local workload (an identity that exists), a local pod relabelled to another app (other
/// policies select it, other peers are allowed), a new local pod of a new version (a new identity
/// every selection that matches it learns), a remote pod relabelled (the local endpoints of its
/// namespace allow or stop allowing it). Each gives its pod a new identity in the ipcache.
fn next_change(
    step: usize,
    cluster: &mut Cluster,
    local: &[usize],
    new_pods: &mut usize,
) -> (Pod, Vec<(String, String)>) {
    let round = step / 4;
    let base = local[(round * 37) % local.len()];
    let in_namespace = |cluster: &Cluster, ns: &str| -> Vec<(String, String)> {
        cluster
            .pods
            .iter()
            .filter(|p| p.namespace == ns && p.node_name.as_deref() == Some(NODE))
            .map(|p| (p.namespace.clone(), p.name.clone()))
            .collect()
    };
    match step % 4 {
        0 | 2 => {
            let mut pod = cluster.pods[base].clone();
            let k = *new_pods;
            *new_pods += 1;
            pod.name = format!("bench-new-{k}");
            pod.ips = vec![Ipv4Addr::new(10, 200, 100 + (k / 254) as u8, (k % 254 + 1) as u8).into()];
            pod.labels.insert("pod-template-hash".into(), format!("n{k:x}"));
            if step % 4 == 2 {
                pod.labels.insert("version".into(), format!("v{}", 100 + k));
            }
            cluster.pods.push(pod.clone());
            let affected = in_namespace(cluster, &pod.namespace);
            (pod, affected)
        }
        1 => {
            let pod = &mut cluster.pods[base];
            relabel(pod, round);
            let pod = pod.clone();
            let affected = in_namespace(cluster, &pod.namespace);
            (pod, affected)
        }
        _ => {
            let ns = cluster.pods[base].namespace.clone();
            let remote: Vec<usize> = (0..cluster.pods.len())
                .filter(|&i| cluster.pods[i].namespace == ns && cluster.pods[i].node_name.as_deref() != Some(NODE))
                .collect();
            let i = remote[(round * 7) % remote.len()];
            relabel(&mut cluster.pods[i], round);
            let pod = cluster.pods[i].clone();
            (pod, in_namespace(cluster, &ns))
        }
    }
}

/// Gives the pod the app and tier labels of another app of its namespace.
fn relabel(pod: &mut Pod, round: usize) {
    let n = (0..workload::NAMESPACES).find(|&n| workload::namespace_name(n) == pod.namespace).expect("namespace");
    let current = pod.labels.get("app").cloned().unwrap_or_default();
    let apps: Vec<(&str, &str)> = (0..workload::APPS_PER_NAMESPACE)
        .map(|a| workload::app(n, a))
        .map(|(name, tier, _)| (name, tier))
        .filter(|(name, _)| *name != current)
        .collect();
    let (name, tier) = apps[round % apps.len()];
    pod.labels.insert("app".into(), name.into());
    pod.labels.insert("tier".into(), tier.into());
}

/// Checks, from the kernel's maps alone, that each endpoint is attached to its pod's interface
/// and enforces what a fresh compile of the whole cluster gives it, and that every ipcache
/// prefix of that compile is there. The agent numbers identities its own way: the ipcache, read
/// back prefix by prefix, translates its numbers into the fresh compile's. Returns how many
/// endpoints were checked.
fn verify(
    kernel: &Datapath,
    network: &Network,
    cluster: &Cluster,
    policies: &PolicySet,
    endpoints: &[(String, String)],
) -> usize {
    let options = CompileOptions {
        node: Some(NODE.into()),
        identity_basis: IdentityBasis::of([policies]),
        ..CompileOptions::default()
    };
    let fresh = CompiledPolicy::with_options(policies.clone(), cluster.clone(), options);
    let mut translate: HashMap<u32, u32> = HashMap::new();
    // The datapath's ipcache is IPv4 only yet.
    for (prefix, identity) in fresh.ipcache().into_iter().filter(|(prefix, _)| prefix.is_ipv4()) {
        let std::net::IpAddr::V4(addr) = prefix.addr else { unreachable!("IPv4 entries only") };
        let programmed = kernel.ipcache_identity(addr, prefix.len).expect("read the ipcache");
        let programmed = programmed.unwrap_or_else(|| panic!("{}/{}: not in the ipcache", prefix.addr, prefix.len));
        let known = *translate.entry(programmed).or_insert(identity);
        assert_eq!(known, identity, "{}/{}: identity {programmed} stands for two identities", prefix.addr, prefix.len);
    }
    let mut attached = HashMap::new();
    for id in kernel.endpoints().expect("list the endpoints") {
        let state = kernel.state(id).expect("an endpoint's state");
        attached.insert(state.ifindex, (id, state.enforced));
    }
    for (namespace, name) in endpoints {
        let ifindex = network.ifindex(namespace, name);
        let &(id, enforced) =
            attached.get(&ifindex).unwrap_or_else(|| panic!("{namespace}/{name}: no endpoint attached to its veth"));
        let kernel_entries = kernel.slot_entries(id, enforced).expect("read the slot");
        assert!(!kernel_entries.is_empty(), "{namespace}/{name}: policy selects every pod here");
        let got: BTreeSet<String> = kernel_entries
            .iter()
            .map(|e| described(&fresh, &in_fresh_numbering(e, &translate, namespace, name)))
            .collect();
        let group = fresh.endpoint(namespace, name).expect("a fresh endpoint").group;
        let mut want = group.ingress.entries();
        want.extend(group.egress.entries());
        let want: BTreeSet<String> = want.iter().map(|e| described(&fresh, e)).collect();
        if got != want {
            let missing: Vec<_> = want.difference(&got).take(5).collect();
            let extra: Vec<_> = got.difference(&want).take(5).collect();
            panic!(
                "{namespace}/{name}: the kernel slot differs from a fresh compile; missing {missing:?}, extra {extra:?}"
            );
        }
    }
    endpoints.len()
}

/// A kernel entry with its peer identity in the fresh compile's numbering (reserved identities
/// and "any" are the same in both).
fn in_fresh_numbering(entry: &PolicyEntry, translate: &HashMap<u32, u32>, namespace: &str, name: &str) -> PolicyEntry {
    let identity = u32::from_be(entry.key.identity_be);
    let fresh = match translate.get(&identity) {
        Some(&fresh) => fresh,
        None if identity < palisade_common::IDENTITY_FIRST_LOCAL => identity,
        None => panic!("{namespace}/{name}: its slot names identity {identity}, which no ipcache prefix has"),
    };
    PolicyEntry { key: PolicyKey { identity_be: fresh.to_be(), ..entry.key }, value: entry.value }
}

/// An entry named by its peer's labels and its rule.
fn described(engine: &CompiledPolicy, entry: &PolicyEntry) -> String {
    format!("{} cookie={}", engine.describe_entry(entry), entry.value.cookie)
}

/// No interfaces: what the naive agent of the side-by-side programs is not attached, and
/// nothing on the machine is touched.
struct Unwired;

impl InterfaceResolver for Unwired {
    fn interface(&self, _: std::net::IpAddr) -> Option<Interface> {
        None
    }
}

/// What a naive agent does on any change: a new agent (new engines) from scratch and a full
/// converge, into an empty datapath (opened beforehand, outside the time). The revision is
/// parsed before the clock starts: only the compile and the programming are counted.
fn full_rebuild(cluster: &Cluster, revision: &PolicyRevision) -> Duration {
    let datapath = Datapath::open(FULL_PIN_DIR).expect("open the datapath");
    let config = AgentConfig { node: Some(NODE.into()), ..AgentConfig::default() };
    let mut agent = Agent::new(config, datapath, Unwired);
    agent.apply(Change::Revision(Box::new(revision.clone())));
    agent.apply(Change::Rollout(Box::new(rollout())));
    let start = Instant::now();
    for namespace in cluster.namespaces.values() {
        agent.apply(Change::Namespace(namespace.clone()));
    }
    agent.apply(Change::Nodes(cluster.nodes.clone()));
    for pod in &cluster.pods {
        agent.apply(Change::Pod(pod.clone()));
    }
    agent.apply(Change::Synced);
    agent.converge().expect("converge");
    let elapsed = start.elapsed();
    drop(agent);
    Datapath::open(FULL_PIN_DIR).and_then(Datapath::destroy).expect("destroy the full datapath");
    elapsed
}

fn percentile(values: &mut [Duration], p: f64) -> Duration {
    values.sort();
    let rank = ((values.len() as f64 * p).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// A field of /proc/self/status, in kB.
fn rss_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a kB field")
}

/// The resident set once freed memory went back to the system, so what comes next is not
/// counted as what came before.
fn settled_rss_kb() -> u64 {
    // SAFETY: no preconditions.
    unsafe { libc::malloc_trim(0) };
    rss_kb("VmRSS")
}

/// Resets VmHWM to the current RSS, so the peak measured is the agent's, not the generator's.
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
}
