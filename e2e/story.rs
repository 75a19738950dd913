//! The quickstart story on real traffic (what `make demo` shows, with Manual promotion through
//! `palisade promote` and a `palisade reaudit` of the blocked commit), and what must never change
//! enforcement: a commit that breaks traffic, an invalid commit, an unsigned commit when
//! signatures are required, and the process dying mid-audit.
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use palisade_rollout::crd::{Outcome, Phase, PolicyRolloutStatus};
use support::*;

const NS: &str = "shop";
const NAME: &str = "shop";
const API: &str = "shop/api-5d8f7b6c4-m3n4b";
const FRONTEND: &str = "shop/frontend-6b7c9d8f5-x2k9p";
const POSTGRES: &str = "shop/postgres-0";
const WAIT: Duration = Duration::from_secs(60);

fn quickstart() -> PathBuf {
    examples().join("quickstart")
}

fn change(name: &str) -> String {
    std::fs::read_to_string(quickstart().join("changes").join(name)).unwrap()
}

/// `palisade promote`: a PolicyDecision, applied once the audit passes.
fn promote(local: &LocalCluster, display: &str) -> PolicyRolloutStatus {
    local.wait(NS, NAME, "the audit to await approval", WAIT, |s| {
        s.phase == Phase::Auditing
            && s.conditions.iter().any(|c| c.type_ == "PromotionBlocked" && c.reason == "AwaitingApproval")
    });
    let (ok, out) = local.cli(&["promote", NAME]);
    assert!(ok && out.contains("approved") && out.contains("(policydecision/shop-promote-"), "{out}");
    local.wait(NS, NAME, "the approved revision enforced", WAIT, |s| {
        s.phase == Phase::Enforced && s.enforced_revision.as_ref().is_some_and(|r| r.display == display)
    })
}

#[test]
fn audit_block_fix_promote_revert() {
    let repo = Repo::new();
    let first = repo.commit_dir(&quickstart().join("policies"), "shop: initial policies");
    let mut local = LocalCluster::up("e2s-", &quickstart().join("cluster.yaml"));
    local.run(&rollout_yaml(NS, NAME, &repo, "3s", "").replace("promotion: Auto", "promotion: Manual"));
    let status = promote(&local, &format!("main@{first}"));
    let approved = status.history.iter().find(|h| h.outcome == Outcome::Approved).expect("the approval is history");
    assert!(approved.decided_by.is_some(), "{approved:?}");
    let initial = status.enforced_revision.clone().unwrap();
    assert_eq!(initial.display, format!("main@{first}"));
    assert!(local.reaches(API, POSTGRES, "5432/TCP"), "the API uses the database");
    assert!(!local.reaches(FRONTEND, POSTGRES, "5432/TCP"), "the frontend may not");

    // A commit that would cut the API off the database: audited on live traffic, blocked.
    let bad = repo.commit(&[("postgres.yaml", &change("2-breaks-the-database.yaml"))], "postgres: migrations only");
    let status = local.wait(NS, NAME, "the breaking commit blocked", WAIT, |s| s.phase == Phase::Blocked);
    assert_eq!(status.candidate_revision.as_ref().unwrap().display, format!("main@{bad}"));
    assert!(status.new_denies >= 1, "the api -> postgres flow is a new deny: {status:#?}");
    assert_eq!(status.enforced_revision.as_ref(), Some(&initial), "enforcement unchanged");
    assert!(local.reaches(API, POSTGRES, "5432/TCP"), "traffic keeps flowing while the candidate is blocked");
    let (ok, out) = local.cli(&["promote", NAME]);
    assert!(!ok && out.contains("cannot be promoted in phase Blocked"), "an approval never overrides the audit: {out}");
    // A reaudit discards the evidence; the nodes gather it again and the same deny blocks again.
    let (ok, out) = local.cli(&["reaudit", NAME]);
    assert!(ok, "{out}");
    let status = local
        .wait(NS, NAME, "the re-audit blocked again", WAIT, |s| s.audit_generation == 1 && s.phase == Phase::Blocked);
    assert!(status.history.iter().any(|h| h.outcome == Outcome::AuditRestarted), "{:#?}", status.history);
    assert_eq!(status.enforced_revision.as_ref(), Some(&initial));

    // An invalid commit: a failed attempt with the file, line and field; nothing else changes.
    repo.commit(&[("broken.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: shop}\nspec:\n  endpointSelector: {}\n  ingress:\n    - toPorts: [{ports: [{port: \"80a\"}]}]\n")], "broken");
    let status = local.wait(NS, NAME, "the invalid commit rejected", WAIT, |s| {
        s.last_attempted_revision.as_ref().is_some_and(|a| !a.errors.is_empty())
    });
    let errors = status.last_attempted_revision.unwrap().errors.join("\n");
    assert!(errors.contains("broken.yaml:7"), "the error names the file and line: {errors}");
    assert_eq!(status.enforced_revision.as_ref(), Some(&initial));
    assert!(local.reaches(API, POSTGRES, "5432/TCP"));
    repo.git(&["rm", "-q", "broken.yaml"]);
    repo.git(&["commit", "-q", "-m", "remove broken.yaml"]);

    // The fix supersedes the blocked candidate and is promoted with a flip.
    let fix = repo.commit(&[("postgres.yaml", &change("3-fix.yaml"))], "postgres: the API and migrations");
    let status = promote(&local, &format!("main@{fix}"));
    assert!(status.history.iter().any(|h| h.outcome == Outcome::Promoted));
    assert!(local.reaches(API, POSTGRES, "5432/TCP"));
    assert!(!local.reaches(FRONTEND, POSTGRES, "5432/TCP"), "and the frontend is now denied explicitly");

    // Reverting to the first content names the revision enforced before: fast-tracked.
    // HEAD is the fix and HEAD~3 the breaking commit.
    repo.git(&["revert", "--no-edit", "HEAD", "HEAD~3"]);
    let status = local.wait(NS, NAME, "the revert fast-tracked", WAIT, |s| {
        s.phase == Phase::Enforced && s.enforced_revision.as_ref().is_some_and(|r| r.id == initial.id)
    });
    assert!(status.history.iter().any(|h| h.outcome == Outcome::FastTracked), "{:#?}", status.history);
    assert!(local.reaches(API, POSTGRES, "5432/TCP"));
}

#[test]
fn a_restart_mid_audit_resumes_it_without_dropping_enforcement() {
    let repo = Repo::new();
    repo.commit_dir(&quickstart().join("policies"), "shop: initial policies");
    let mut local = LocalCluster::up("e2r-", &quickstart().join("cluster.yaml"));
    let rollout = rollout_yaml(NS, NAME, &repo, "8s", "");
    local.run(&rollout);
    local.wait(NS, NAME, "the first revision enforced", WAIT, |s| s.phase == Phase::Enforced);
    let fix = repo.commit(&[("postgres.yaml", &change("3-fix.yaml"))], "postgres: the API and migrations");
    let auditing = local.wait(NS, NAME, "the audit running", WAIT, |s| s.phase == Phase::Auditing);
    let started = auditing.audit_started_at.clone().unwrap();

    local.kill();
    // Nobody runs the controller or the agent now; the pinned datapath keeps enforcing.
    for _ in 0..3 {
        assert!(local.reaches(API, POSTGRES, "5432/TCP"), "allowed traffic flows while the process is down");
        assert!(!local.reaches(FRONTEND, POSTGRES, "5432/TCP"), "denied traffic stays denied");
    }
    local.run(&rollout);
    let status = local.wait(NS, NAME, "the resumed audit to promote", WAIT, |s| {
        s.phase == Phase::Enforced && s.enforced_revision.as_ref().is_some_and(|r| r.display == format!("main@{fix}"))
    });
    let promoted = status.history.iter().find(|h| h.outcome == Outcome::Promoted).expect("promoted");
    assert!(promoted.recorded_at.0 >= started.0, "promoted after the audit it started");
    assert_eq!(status.history.iter().filter(|h| h.outcome == Outcome::Promoted).count(), 2, "{:#?}", status.history);
    assert!(local.log().contains("adopted a pinned endpoint"), "the restarted agent adopted the endpoints");
}

#[test]
fn unsigned_commits_are_never_enforced_when_signatures_are_required() {
    let repo = Repo::new();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("key");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "e2e@example.com", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (openssh-client) is installed by scripts/deps.sh");
    assert!(status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let mut fields = public.split_whitespace();
    let signer = format!("e2e@example.com {} {}", fields.next().unwrap(), fields.next().unwrap());
    repo.git(&["config", "gpg.format", "ssh"]);
    repo.git(&["config", "user.signingkey", key.to_str().unwrap()]);

    // The first commit is unsigned.
    repo.commit_dir(&quickstart().join("policies"), "shop: initial policies (unsigned)");
    let mut local = LocalCluster::up("e2u-", &quickstart().join("cluster.yaml"));
    let rollout = format!(
        "apiVersion: palisade.dev/v1alpha1
kind: PolicyRollout
metadata: {{name: {NAME}, namespace: {NS}}}
spec:
  source:
    url: {url}
    ref: {{branch: main}}
    interval: 1s
    verify: {{mode: HEAD, provider: ssh, keysRef: {{name: signers}}}}
  audit: {{minDuration: 0s, minFlowsPerEndpoint: 0, maxNewDenies: 0}}
---
apiVersion: v1
kind: Secret
metadata: {{name: signers, namespace: {NS}}}
stringData:
  allowed_signers: \"{signer}\"
",
        url = repo.url()
    );
    local.run(&rollout);
    let status = local.wait(NS, NAME, "the unsigned commit refused", WAIT, |s| s.last_attempted_revision.is_some());
    assert!(status.enforced_revision.is_none(), "nothing unsigned is enforced: {status:#?}");
    assert!(local.reaches(FRONTEND, POSTGRES, "5432/TCP"), "no policy is enforced yet");

    // Signed, it goes through.
    repo.git(&["commit", "-q", "--allow-empty", "-S", "-m", "shop: initial policies (signed)"]);
    local.wait(NS, NAME, "the signed commit enforced", WAIT, |s| s.phase == Phase::Enforced);
    assert!(!local.reaches(FRONTEND, POSTGRES, "5432/TCP"), "enforced once signed");
}
