//! The host firewall on real traffic (examples/host-firewall): a host policy's first revision is
//! audited before it enforces, even with `promotion: Auto` and no `minDuration`; once enforced it
//! judges the node's own traffic to and from pods and hosts outside; and a candidate that would
//! cut the node off the API server is Blocked while the node keeps reaching it.
mod support;

use std::time::{Duration, Instant};

use palisade_rollout::crd::Phase;
use support::*;

const NAME: &str = "hosts";
const NS: &str = "palisade-system";
const WAIT: Duration = Duration::from_secs(90);
const CONVERGE: Duration = Duration::from_secs(20);

/// The worker host policy without its rule for the API server.
const WITHOUT_APISERVER: &str = "apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: worker-host
spec:
  nodeSelector:
    matchLabels:
      node-role.kubernetes.io/worker: ''
  ingress:
  - fromEntities: [remote-node, health, cluster]
  egress:
  - toEndpoints: [{}]
";

#[test]
fn a_host_policy_is_audited_first_then_judges_the_node_and_keeps_its_control_plane() {
    let dir = examples().join("host-firewall");
    let repo = Repo::new();
    repo.commit_dir(&dir.join("policies"), "host firewall");
    let mut local = LocalCluster::up("e2n-", &dir.join("cluster.yaml"));
    // A few new denies may be seen during the audit: the test's own probes.
    let rollout =
        rollout_yaml(NS, NAME, &repo, "0s", "  scope: Cluster\n").replace("maxNewDenies: 0", "maxNewDenies: 5");
    local.run(&rollout);

    // Audited first, although promotion is Auto and minDuration 0s: web still reaches the
    // node's 9100 that the candidate denies, and the audit records it.
    let auditing = local.wait(NS, NAME, "the host policy's audit", WAIT, |s| {
        s.phase == Phase::Auditing && s.candidate_revision.is_some()
    });
    let audit_seen = Instant::now();
    assert!(auditing.enforced_revision.is_none(), "nothing enforced yet: {auditing:#?}");
    // Until the audit has recorded it: each attempt gets through.
    let recorded = eventually(Duration::from_secs(20), || {
        assert!(local.reaches("shop/web", "node", "9100/TCP"), "audit only: web reaches the node\n{}", local.log());
        local.rollout(NS, NAME).and_then(|r| r.status).is_some_and(|s| s.new_denies >= 1)
    });
    let status = local.rollout(NS, NAME).and_then(|r| r.status).unwrap();
    assert!(recorded && status.enforced_revision.is_none(), "recorded while auditing: {status:#?}\n{}", local.log());
    local.wait(NS, NAME, "the host policy enforced", WAIT, |s| s.phase == Phase::Enforced);
    assert!(
        audit_seen.elapsed() >= Duration::from_secs(20),
        "a host policy is audited for at least 30 s, here {:?}",
        audit_seen.elapsed()
    );

    // Enforced: the node's own traffic, both ways.
    assert!(
        local.eventually_reaches("shop/web", "node", "9100/TCP", false, CONVERGE),
        "web is denied the node's 9100\n{}",
        local.log()
    );
    let checks = [
        ("monitoring/prometheus", "node", "9100/TCP", true),
        ("shop/web", "node", "22/TCP", false),
        ("outside/bastion", "node", "22/TCP", true),
        ("outside/registry", "node", "22/TCP", false),
        ("node", "outside/apiserver", "6443/TCP", true),
        ("node", "outside/registry", "443/TCP", false),
        ("node", "shop/web", "8080/TCP", true),
    ];
    for (from, to, port, expected) in checks {
        assert_eq!(local.reaches(from, to, port), expected, "{from} -> {to} {port}\n{}", local.log());
    }

    // A candidate without the API server rule is Blocked at once, naming the flow, and the node
    // keeps reaching the API server.
    repo.commit(&[("worker-host.yaml", WITHOUT_APISERVER)], "worker-host: drop the API server rule");
    let blocked = local.wait(NS, NAME, "the candidate Blocked", WAIT, |s| s.phase == Phase::Blocked);
    let verdict = blocked.blocked.expect("a blocked verdict");
    assert_eq!(verdict.reason, "ControlPlaneDenied", "{verdict:#?}");
    assert!(verdict.message.contains("10.200.80.250/32 TCP/6443 egress"), "{}", verdict.message);
    assert!(local.reaches("node", "outside/apiserver", "6443/TCP"), "still enforced: the API server rule");
}
