//! `make bench-agent` (root): the agent over the real eBPF datapath (pinned in a temporary bpffs
//! directory) on the synthetic cluster of `palisade bench policy` — 10,000 pods, 100 of them on
//! this node, and 1,000 policies in one revision. Prints `name: value unit` lines:
//!
//! - the initial convergence time and the process's memory with everything programmed;
//! - the policy implementation delay: from a change (a local pod appearing, a pod relabelled)
//!   being applied to the end of `converge()`, when the kernel maps hold the entries; every step
//!   is checked against a fresh compile, on a sample (every step with `--verify-all`);
//! - the same change as a naive agent would implement it (a new agent from scratch and a full
//!   converge into an empty datapath), side by side.
//!
//! `--profile` leaves out the reference compiles and the full rebuilds (for profiling the
//! incremental path alone); `--verify-all` checks every step.
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../examples/bench-datapath/machine.rs"]
mod machine;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use palisade_agent::{Agent, AgentConfig, Change, Interface, InterfaceResolver};
use palisade_common::PolicyEntry;
use palisade_datapath::Datapath;
use palisade_policy::bench as workload;
use palisade_policy::cluster::{Cluster, Pod};
use palisade_policy::{
    CompileOptions, CompiledPolicy, IdentityBasis, ParseOptions, PolicySet, SourceFile, parse_policies,
};
use palisade_rollout::crd::{PolicyDocument, PolicyRevision, PolicyRollout};

const PIN_DIR: &str = "/sys/fs/bpf/palisade-bench-agent";
/// Where the naive agent of the side-by-side programs its fresh datapath.
const FULL_PIN_DIR: &str = "/sys/fs/bpf/palisade-bench-agent-full";
const NODE: &str = "n1";
const LOCAL_ENDPOINTS: usize = 100;
/// Changes timed; they cycle through four kinds (see [`Step`]).
const STEPS: usize = 240;
/// Every this many steps the change is also checked against a fresh compile and timed as a
/// full rebuild.
const SAMPLE_EVERY: usize = 8;
const NAMESPACE: &str = "palisade-system";
const REVISION: &str = "bench-r1";

/// No interfaces: endpoints are programmed (slots, ipcache) but not attached, which is what the
/// figures measure; nothing is configured on the machine.
struct Unwired;

impl InterfaceResolver for Unwired {
    fn interface(&self, _: Ipv4Addr) -> Option<Interface> {
        None
    }
}

fn main() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench-agent needs root (eBPF maps in {PIN_DIR})");
        std::process::exit(1);
    }
    machine::describe();
    let verify_all = std::env::args().any(|a| a == "--verify-all");
    // For profiling the incremental path alone: no reference compiles, no full rebuilds.
    let profile = std::env::args().any(|a| a == "--profile");

    // The inputs, as the watches would deliver them. The YAML is dropped before the baseline.
    let (mut cluster, revision, policies) = inputs();
    let local: Vec<usize> = local_pod_indexes(cluster.pods.len());
    for &i in &local {
        cluster.pods[i].node_name = Some(NODE.into());
    }
    let changes = initial_changes(&cluster, &revision);
    reset_peak_rss();
    let baseline = rss_kb("VmRSS");

    remove_stale(PIN_DIR);
    remove_stale(FULL_PIN_DIR);
    let datapath = Datapath::open(PIN_DIR).expect("open the datapath");
    let config = AgentConfig { node: Some(NODE.into()), ..AgentConfig::default() };
    let mut agent = Agent::new(config, datapath, Unwired);
    let initial = sync(&mut agent, changes);
    let peak = rss_kb("VmHWM");
    assert_eq!(agent.endpoints().len(), LOCAL_ENDPOINTS, "the node's endpoints");

    println!("pods: {} pods", cluster.pods.len());
    println!("local_endpoints: {} endpoints", agent.endpoints().len());
    println!("policies: {} policies", policies.policies.len());
    println!("initial_converge_s: {:.2} s", initial.as_secs_f64());
    println!("baseline_rss_mb: {:.1} MB", baseline as f64 / 1024.0);
    println!("agent_rss_mb: {:.1} MB", peak as f64 / 1024.0);

    let all: Vec<(String, String)> =
        local.iter().map(|&i| (cluster.pods[i].namespace.clone(), cluster.pods[i].name.clone())).collect();
    let checked = verify(&agent, &cluster, &policies, &all);
    assert_eq!(checked, LOCAL_ENDPOINTS);

    let mut delays = Vec::new();
    let mut full = Vec::new();
    let mut verified = 0;
    let mut new_pods = 0;
    for step in 0..STEPS {
        let (pod, affected) = next_change(step, &mut cluster, &local, &mut new_pods);
        let start = Instant::now();
        agent.apply(Change::Pod(pod));
        agent.converge().expect("converge");
        delays.push(start.elapsed());
        if verify_all || (!profile && step % SAMPLE_EVERY == 0) {
            verified += verify(&agent, &cluster, &policies, &affected);
        }
        if !profile && step % SAMPLE_EVERY == 0 {
            full.push(full_rebuild(&cluster, &revision));
        }
    }
    // Everything, once more, at the end: no endpoint drifted.
    let endpoints: Vec<(String, String)> = agent.endpoints().into_iter().map(|e| (e.namespace, e.name)).collect();
    verified += verify(&agent, &cluster, &policies, &endpoints);
    drop(agent);
    Datapath::open(PIN_DIR).and_then(Datapath::destroy).expect("destroy the datapath");

    let p50 = percentile(&mut delays, 0.50);
    let p99 = percentile(&mut delays, 0.99);
    println!("changes: {} changes", delays.len());
    println!("verified_endpoint_slots: {verified} slots");
    println!("implementation_delay_p50_ms: {:.2} ms", ms(p50));
    println!("implementation_delay_p99_ms: {:.2} ms", ms(p99));
    println!("implementation_delay_max_ms: {:.2} ms", ms(*delays.iter().max().expect("steps")));
    if !full.is_empty() {
        let full_p50 = percentile(&mut full, 0.50);
        println!("full_recompute_p50_ms: {:.1} ms", ms(full_p50));
        println!("incremental_ratio: {:.0} x", full_p50.as_secs_f64() / p50.as_secs_f64());
    }
}

/// Destroys a datapath an interrupted run left pinned.
fn remove_stale(dir: &str) {
    if std::path::Path::new(dir).exists() {
        Datapath::open(dir).and_then(Datapath::destroy).expect("remove the stale datapath");
    }
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

fn initial_changes(cluster: &Cluster, revision: &PolicyRevision) -> Vec<Change> {
    let mut changes: Vec<Change> = cluster.namespaces.values().cloned().map(Change::Namespace).collect();
    changes.push(Change::Nodes(cluster.nodes.clone()));
    changes.extend(cluster.pods.iter().cloned().map(Change::Pod));
    changes.push(Change::Revision(Box::new(revision.clone())));
    changes.push(Change::Rollout(Box::new(rollout())));
    changes
}

/// Change `step`, applied to `cluster` too; returns the pod as the watch delivers it and the
/// local endpoints whose slots it may change. Four kinds in turn: a new replica of a local
/// workload (an identity that exists), a local pod relabelled to another app (other policies
/// select it, other peers are allowed), a new local pod of a new version (a new identity every
/// selection that matches it learns), a remote pod relabelled (the local endpoints of its
/// namespace allow or stop allowing it).
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
            pod.ip = Some(Ipv4Addr::new(10, 200, 100 + (k / 254) as u8, (k % 254 + 1) as u8));
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

/// Checks that the kernel slot each endpoint enforces holds what a fresh compile of the whole
/// cluster gives it, entries named by their peers' labels. Returns how many were checked.
fn verify(
    agent: &Agent<Datapath, Unwired>,
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
    let programmed = agent.endpoints();
    let engine = agent.enforced_engine().expect("compiled");
    for (namespace, name) in endpoints {
        let info = programmed.iter().find(|e| &e.namespace == namespace && &e.name == name).expect("an endpoint");
        let kernel = agent.dataplane().slot_entries(info.id, info.enforced).expect("read the slot");
        let group = fresh.endpoint(namespace, name).expect("a fresh endpoint").group;
        let mut want = group.ingress.entries();
        want.extend(group.egress.entries());
        let (got, want) = (described(engine, &kernel), described(&fresh, &want));
        if got != want {
            let missing: Vec<_> = want.difference(&got).take(5).collect();
            let extra: Vec<_> = got.difference(&want).take(5).collect();
            panic!(
                "{namespace}/{name}: the kernel slot differs from a fresh compile; missing {missing:?}, extra {extra:?}"
            );
        }
        assert!(!kernel.is_empty(), "{namespace}/{name}: policy selects every pod here");
    }
    endpoints.len()
}

/// Entries named by their peers' labels (and their rules), so engines with different numbering
/// compare.
fn described(engine: &CompiledPolicy, entries: &[PolicyEntry]) -> BTreeSet<String> {
    entries.iter().map(|e| format!("{} cookie={}", engine.describe_entry(e), e.value.cookie)).collect()
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
    let mut changes: Vec<Change> = cluster.namespaces.values().cloned().map(Change::Namespace).collect();
    changes.push(Change::Nodes(cluster.nodes.clone()));
    changes.extend(cluster.pods.iter().cloned().map(Change::Pod));
    let elapsed = sync(&mut agent, changes);
    drop(agent);
    Datapath::open(FULL_PIN_DIR).and_then(Datapath::destroy).expect("destroy the full datapath");
    elapsed
}

/// How long the agent takes to take `changes` in, then everything programmed from nothing.
fn sync(agent: &mut Agent<Datapath, Unwired>, changes: Vec<Change>) -> Duration {
    let start = Instant::now();
    for change in changes {
        agent.apply(change);
    }
    agent.apply(Change::Synced);
    agent.converge().expect("converge");
    start.elapsed()
}

fn percentile(values: &mut [Duration], p: f64) -> Duration {
    values.sort();
    let rank = ((values.len() as f64 * p).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
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

/// Resets VmHWM to the current RSS, so the peak measured is the agent's, not the generator's.
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
}
