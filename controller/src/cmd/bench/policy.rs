//! `palisade bench policy`: compile a synthetic 10,000-pod cluster with 1,000 policies, then
//! time incremental pod and policy updates, and check the incremental results against a fresh
//! full compile.
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use palisade_policy::cluster::Pod;
use palisade_policy::{
    Cluster, CompiledPolicy, Direction, EnforcementMode, ParseOptions, PolicySet, SourceFile, parse_policies,
};

use crate::bench_workload::{self as workload, NAMESPACES};

#[derive(clap::Args)]
pub struct Args {
    /// Full compiles to take the median of.
    #[arg(long, default_value_t = 3)]
    full_runs: usize,
    /// Pods and policies changed incrementally (median reported).
    #[arg(long, default_value_t = 20)]
    changes: usize,
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

pub fn run(args: Args) -> Result<u8> {
    let work = workload::generate();
    let parse_start = Instant::now();
    let sources: Vec<SourceFile> = work.cluster_files.iter().map(|(n, t)| SourceFile { name: n, text: t }).collect();
    let cluster =
        Cluster::parse(&sources).map_err(|e| anyhow::anyhow!("cluster: {}", crate::files::join_diagnostics(&e)))?;
    let sources: Vec<SourceFile> = work.policy_files.iter().map(|(n, t)| SourceFile { name: n, text: t }).collect();
    let parsed = parse_policies(&sources, &ParseOptions::default());
    if parsed.has_errors() {
        let errors: Vec<_> = parsed.errors().cloned().collect();
        bail!("generated policies do not parse:\n{}", crate::files::join_diagnostics(&errors));
    }
    let parse = parse_start.elapsed();
    let policies = parsed.set;
    ensure!(cluster.pods.len() == 10_000, "expected 10,000 pods, generated {}", cluster.pods.len());
    ensure!(
        cluster.namespaces.len() == NAMESPACES,
        "expected {NAMESPACES} namespaces, got {}",
        cluster.namespaces.len()
    );
    ensure!(policies.policies.len() == 1_000, "expected 1,000 policies, generated {}", policies.policies.len());
    let mode = EnforcementMode::Default;

    // Full compile.
    let mut full_times = Vec::new();
    let mut engine = None;
    let budget = Instant::now();
    for run in 0..args.full_runs.max(1) {
        if run > 0 && budget.elapsed() > Duration::from_secs(25) {
            break;
        }
        let (p, c) = (policies.clone(), cluster.clone());
        let start = Instant::now();
        let e = CompiledPolicy::new(p, c, mode);
        full_times.push(start.elapsed());
        engine = Some(e);
    }
    let mut engine = engine.expect("at least one run");
    let full = median(full_times);
    let pod_identities = engine.identities().all().filter(|i| i.namespace.is_some()).count();
    ensure!(pod_identities == 5_000, "expected 5,000 pod identities, got {pod_identities}");
    let entries: usize = engine.endpoints().map(|e| e.group.ingress.len() + e.group.egress.len()).sum();
    eprintln!(
        "full compile: {:.3} s, {pod_identities} pod identities, {entries} entries over all endpoints",
        full.as_secs_f64()
    );

    // Incremental pod: one pod's labels change to a set no other pod has (a new identity).
    let step = engine.cluster.pods.len() / args.changes.max(1);
    let picked: Vec<Pod> = (0..args.changes)
        .map(|i| engine.cluster.pods[(i * step + i * 7) % engine.cluster.pods.len()].clone())
        .collect();
    let mut pod_times = Vec::new();
    for (i, pod) in picked.iter().enumerate() {
        let mut pod = pod.clone();
        pod.labels.insert("version".into(), format!("hotfix-{i}"));
        let before = engine.identities().all().count();
        let start = Instant::now();
        engine.upsert_pod(pod);
        pod_times.push(start.elapsed());
        ensure!(engine.identities().all().count() == before + 1, "the changed pod should have a new identity");
    }
    let pod_time = median(pod_times);
    let mut check: Vec<(String, String)> = picked.iter().map(|p| (p.namespace.clone(), p.name.clone())).collect();
    // Endpoints whose policy peers the changed pods: the same namespaces' other pods, and Prometheus.
    check.extend(picked.iter().take(5).flat_map(|p| {
        engine
            .cluster
            .pods
            .iter()
            .filter(|q| q.namespace == p.namespace)
            .step_by(7)
            .map(|q| (q.namespace.clone(), q.name.clone()))
    }));
    check.extend(
        engine
            .cluster
            .pods
            .iter()
            .filter(|q| q.namespace == "monitoring" || q.namespace == "kube-system")
            .step_by(5)
            .map(|q| (q.namespace.clone(), q.name.clone())),
    );
    verify(&engine, &check, "pod update")?;

    // Incremental policy: one namespaced policy's rules change.
    let mut policy_times = Vec::new();
    let mut changed_namespaces = Vec::new();
    for i in 0..args.changes {
        let n = 2 + (i * 37) % (NAMESPACES - 2);
        let k = 1 + i % 4;
        let text = workload::namespaced_policy(n, k, 1 + i % 3).expect("policy exists");
        let parsed = parse_policies(&[SourceFile { name: "changed.yaml", text: &text }], &ParseOptions::default());
        ensure!(!parsed.has_errors(), "changed policy does not parse: {:?}", parsed.diagnostics);
        let policy = parsed.set.policies.into_iter().next().expect("one policy");
        ensure!(
            engine.policies().policies.iter().any(|p| p.id == policy.id),
            "changed policy {} must replace one",
            policy.id
        );
        let start = Instant::now();
        engine.set_policy(policy);
        policy_times.push(start.elapsed());
        changed_namespaces.push(workload::namespace_name(n));
    }
    let policy_time = median(policy_times);
    let mut check: Vec<(String, String)> = engine
        .cluster
        .pods
        .iter()
        .filter(|p| changed_namespaces.iter().take(6).any(|ns| ns == &p.namespace))
        .step_by(3)
        .map(|p| (p.namespace.clone(), p.name.clone()))
        .collect();
    check.extend(picked.iter().map(|p| (p.namespace.clone(), p.name.clone())));
    verify(&engine, &check, "policy update")?;

    let ratio = pod_time.max(policy_time).as_secs_f64() / full.as_secs_f64();
    println!("parse_s: {:.3} s", parse.as_secs_f64());
    println!("compile_full_s: {:.3} s", full.as_secs_f64());
    println!("compile_incremental_pod_ms: {:.3} ms", pod_time.as_secs_f64() * 1e3);
    println!("compile_incremental_policy_ms: {:.3} ms", policy_time.as_secs_f64() * 1e3);
    println!("incremental_ratio: {ratio:.5}");
    Ok(0)
}

/// Entries as comparable values, remote identities named by their labels (numbers differ
/// between engines that allocated them in another order).
fn describe(engine: &CompiledPolicy, namespace: &str, name: &str) -> Result<Vec<String>> {
    let Some(endpoint) = engine.endpoint(namespace, name) else { bail!("endpoint {namespace}/{name} missing") };
    let mut out = vec![format!("identity {}", endpoint.identity.labels)];
    for d in Direction::BOTH {
        let policy = endpoint.group.direction(d);
        out.push(format!("{} {:?}", d.as_str(), policy.enforcement));
        let mut entries: Vec<String> = policy
            .entries()
            .iter()
            .map(|e| {
                let id = e.key.identity();
                let remote = engine.identities().get(id).map_or_else(|| format!("#{id}"), |i| i.labels.to_string());
                format!(
                    "{} {remote} {:?} {:?} /{} verdict={} cookie={}",
                    d.as_str(),
                    e.key.protocol(),
                    e.key.port_range(),
                    e.key.prefix_len,
                    e.value.verdict().as_str(),
                    e.value.cookie
                )
            })
            .collect();
        entries.sort();
        out.extend(entries);
    }
    Ok(out)
}

/// The incremental engine must agree with a fresh full compile of the same inputs.
fn verify(engine: &CompiledPolicy, endpoints: &[(String, String)], what: &str) -> Result<()> {
    let fresh = CompiledPolicy::new(
        PolicySet { policies: engine.policies().policies.clone() },
        engine.cluster.clone(),
        EnforcementMode::Default,
    );
    for (ns, name) in endpoints {
        let (got, want) = (describe(engine, ns, name)?, describe(&fresh, ns, name)?);
        if got != want {
            let missing: Vec<_> = want.iter().filter(|l| !got.contains(l)).take(5).collect();
            let extra: Vec<_> = got.iter().filter(|l| !want.contains(l)).take(5).collect();
            bail!(
                "INCREMENTAL COMPILE IS WRONG after {what}: endpoint {ns}/{name} differs from a full compile\n  missing: {missing:#?}\n  extra: {extra:#?}"
            );
        }
    }
    eprintln!("{what}: {} endpoints match a full compile", endpoints.len());
    Ok(())
}
