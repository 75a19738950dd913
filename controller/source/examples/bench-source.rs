//! `make bench-source`: a generated repository of 1,000 policy files (about 5 MB) served by
//! `git daemon` on loopback. Measures the first sync to a revision, an incremental sync after one
//! changed file, and our fetch against the git CLI fetching the same repository in the same run.
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{GitDaemon, Repo, run};
use palisade_source::fetch::Mirror;
use palisade_source::{Credentials, GitRef, Outcome, Source, SourceSpec};

const FILES: usize = 1000;
const RULES_PER_FILE: usize = 32;
const ROUNDS: usize = 5;

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path());
    let mut bytes = 0;
    for i in 0..FILES {
        let text = policy(i, 0);
        bytes += text.len();
        repo.write(&format!("policies/team-{}/policy-{i}.yaml", i % 20), &text);
    }
    repo.commit("1000 policies", &[]);
    let daemon = GitDaemon::start(tmp.path());
    let url = daemon.url("repo");
    eprintln!("repository: {FILES} files, {:.1} MB", bytes as f64 / 1e6);

    let main = GitRef::Branch("main".into());
    let first: Vec<Duration> = (0..ROUNDS)
        .map(|round| {
            let cache = tmp.path().join(format!("first-{round}"));
            let source = Source::open(SourceSpec::new(&url, main.clone()), Credentials::default(), &cache).unwrap();
            let started = Instant::now();
            let outcome = source.sync(&mut |_| {}).unwrap();
            let elapsed = started.elapsed();
            assert!(matches!(outcome, Outcome::Revision(ref r) if r.policies.policies.len() == FILES));
            elapsed
        })
        .collect();

    // Fetch alone against `git fetch` into an empty bare repository, interleaved so both see the
    // same machine load.
    let (mut ours, mut git) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let cache = tmp.path().join(format!("fetch-{round}"));
        let mirror = Mirror::open(&cache, &url).unwrap();
        let started = Instant::now();
        mirror.fetch(&main, &Credentials::default(), Duration::from_secs(60), &mut |_| {}).unwrap();
        ours.push(started.elapsed());

        let bare = tmp.path().join(format!("git-{round}"));
        run(tmp.path(), "git", &["init", "-q", "--bare", bare.to_str().unwrap()], &[]);
        let started = Instant::now();
        run(&bare, "git", &["fetch", "-q", &url, "+refs/heads/main:refs/heads/main"], &[]);
        git.push(started.elapsed());
    }

    let cache = tmp.path().join("incremental");
    let source = Source::open(SourceSpec::new(&url, main.clone()), Credentials::default(), &cache).unwrap();
    source.sync(&mut |_| {}).unwrap();
    let incremental: Vec<Duration> = (1..=ROUNDS)
        .map(|round| {
            let i = round * 37;
            repo.write(&format!("policies/team-{}/policy-{i}.yaml", i % 20), &policy(i, round));
            let commit = repo.commit(&format!("change {i}"), &[]);
            let started = Instant::now();
            let outcome = source.sync(&mut |_| {}).unwrap();
            let elapsed = started.elapsed();
            assert!(matches!(outcome, Outcome::Revision(ref r) if r.commit.id == commit));
            elapsed
        })
        .collect();

    println!("sync_first_s: {:.2} s", median(first).as_secs_f64());
    println!("sync_incremental_ms: {:.0} ms", median(incremental).as_secs_f64() * 1e3);
    let (ours, git) = (median(ours), median(git));
    eprintln!("fetch: ours {:.0} ms, git {:.0} ms", ours.as_secs_f64() * 1e3, git.as_secs_f64() * 1e3);
    println!("fetch_vs_git_ratio: {:.2}", ours.as_secs_f64() / git.as_secs_f64());
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// About 5 KB: one endpoint, two dozen ingress rules with distinct peers and ports.
fn policy(index: usize, version: usize) -> String {
    let mut text = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: policy-{index}\n  namespace: team-{}\nspec:\n  endpointSelector:\n    matchLabels:\n      app: service-{index}\n      tier: backend\n  ingress:\n",
        index % 20
    );
    for rule in 0..RULES_PER_FILE {
        text.push_str(&format!(
            "  - fromEndpoints:\n    - matchLabels:\n        app: client-{rule}\n        team: team-{}\n    toPorts:\n    - ports:\n      - port: \"{}\"\n        protocol: TCP\n",
            (index + rule) % 20,
            8000 + rule + version
        ));
    }
    text
}
