//! `palisade source fetch` against real repositories: exit codes and the JSON shape.
#[path = "../source/tests/common/mod.rs"]
mod common;

use std::process::{Command, Output};

use common::*;
use serde_json::{Value, json};

fn fetch(cache: &std::path::Path, args: &[&str]) -> (i32, Value, String) {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["source", "fetch", "-o", "json", "--cache-dir", cache.to_str().unwrap()])
        .args(args)
        .output()
        .expect("run palisade");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{stderr}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap(), json, stderr)
}

#[test]
fn revision_invalid_unverified_and_unreachable() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let (key, signers) = ssh_key(tmp.path(), "alice@example.com");
    std::fs::write(tmp.path().join("allowed_signers"), &signers).unwrap();
    let allowed = tmp.path().join("allowed_signers");
    let repo = Repo::new(tmp.path());
    repo.git(&["config", "gpg.format", "ssh"]);
    repo.write("policies/web.yaml", &policy("web", 80));
    repo.write("README.md", "# policies\n");
    let signed = repo.commit("web", &[&format!("--gpg-sign={}", key.display())]);
    let mut daemon = GitDaemon::start(tmp.path());
    let url = daemon.url("repo");

    let (code, out, stderr) = fetch(
        &cache,
        &["--url", &url, "--branch", "main", "--path", "policies", "--verify-keys", allowed.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out} {stderr}");
    assert_eq!(out["commit"], signed);
    assert!(out["revision"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(out["verified"], true);
    assert_eq!(
        out["policies"],
        json!([{"kind": "CiliumNetworkPolicy", "namespace": "default", "name": "web", "file": "policies/web.yaml"}])
    );
    assert_eq!(out["errors"], json!([]));
    let revision = out["revision"].clone();

    // Unsigned HEAD: no revision, the reason given.
    repo.write("policies/db.yaml", &policy("db", 5432));
    let unsigned = repo.commit("db", &[]);
    let (code, out, _) = fetch(&cache, &["--url", &url, "--verify-keys", allowed.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(out["commit"], unsigned);
    assert_eq!(out["revision"], Value::Null);
    assert_eq!(out["verified"], false);
    assert_eq!(out["errors"], json!([{"file": "", "line": 0, "message": format!("commit {unsigned} is not signed")}]));

    // Invalid policy: every error with its file and line.
    repo.write("policies/db.yaml", &policy("db", 5432).replace("TCP", "TCPX"));
    let invalid = repo.commit("bad db", &[]);
    let (code, out, _) = fetch(&cache, &["--url", &url, "--branch", "main", "--path", "policies"]);
    assert_eq!(code, 1);
    assert_eq!(out["commit"], invalid);
    assert_eq!(out["errors"][0]["file"], "policies/db.yaml");
    assert_eq!(out["errors"][0]["line"], 17);
    assert!(out["errors"][0]["message"].as_str().unwrap().contains("protocol"), "{out}");

    // Server gone: exit 2, and the last revision is still there.
    daemon.stop();
    let (code, out, stderr) = fetch(&cache, &["--url", &url, "--branch", "main", "--path", "policies"]);
    assert_eq!(code, 2);
    assert!(out["errors"][0]["message"].as_str().unwrap().contains("could not fetch"), "{out}");
    assert!(stderr.contains(&format!("last revision {} (commit {signed})", revision.as_str().unwrap())), "{stderr}");

    // One ref at most.
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["source", "fetch", "--url", &repo.url(), "--tag", "v1", "--semver", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}
