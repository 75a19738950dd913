//! The local host on real traffic. The node namespace carries the node's address (its InternalIP
//! in the cluster file), which the pods' datapath sees as `host`. With `--allow-localhost always`
//! (the default, Cilium's) the node reaches a pod whose ingress denies everything; with `policy`
//! the node's connections are judged like any other and dropped, until a rule with
//! `fromEntities: [host]` is promoted. Endpoints no policy selects stay open to it either way.
mod support;

use std::time::Duration;

use palisade_rollout::crd::Phase;
use support::*;

const NS: &str = "shop";
const NAME: &str = "shop";
const SERVER: &str = "shop/server";
const CLIENT: &str = "shop/client";
const WAIT: Duration = Duration::from_secs(60);
/// How long a restarted `local run` may take to bring the datapath in line with its flags.
const CONVERGE: Duration = Duration::from_secs(20);

/// The cluster file: node-a (10.200.0.5) with two pods on it, the server and its client.
fn cluster_file() -> String {
    let node = "- apiVersion: v1
  kind: Node
  metadata: {name: node-a}
  status:
    addresses:
    - {type: InternalIP, address: 10.200.0.5}
";
    let pod = |name: &str, port: u16, ip: &str| {
        format!(
            "- apiVersion: v1
  kind: Pod
  metadata: {{name: {name}, namespace: shop, labels: {{app: {name}}}}}
  spec:
    nodeName: node-a
    containers: [{{name: {name}, ports: [{{containerPort: {port}}}]}}]
  status: {{podIP: {ip}}}
"
        )
    };
    format!(
        "apiVersion: v1\nkind: List\nitems:\n{node}{}{}",
        pod("server", 8080, "10.200.30.10"),
        pod("client", 9090, "10.200.30.20")
    )
}

/// The server's ingress denies everything (`ingress: [{}]`).
const DENY_ALL: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress: [{}]
";

/// The server admits the local host on 8080, and nothing else.
const FROM_HOST: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEntities: [host]
    toPorts: [{ports: [{port: '8080', protocol: TCP}]}]
";

#[test]
fn the_node_reaches_pods_under_always_and_as_policy_allows_under_policy() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, cluster_file()).unwrap();
    let repo = Repo::new();
    repo.commit(&[("server.yaml", DENY_ALL)], "server: deny all ingress");
    let mut local = LocalCluster::up("e2h-", &cluster);
    let rollout = rollout_yaml(NS, NAME, &repo, "0s", "");

    // always (the default): the local host gets through the server's default deny; pods do not.
    local.run(&rollout);
    local.wait(NS, NAME, "deny-all enforced", WAIT, |s| s.phase == Phase::Enforced);
    assert!(
        local.eventually_reaches(CLIENT, SERVER, "8080/TCP", false, CONVERGE),
        "the client is denied\n{}",
        local.log()
    );
    assert!(local.reaches("node", SERVER, "8080/TCP"), "always: the node reaches the server\n{}", local.log());
    assert!(local.reaches("node", CLIENT, "9090/TCP"), "and the unselected client");
    let ip =
        std::process::Command::new("ip").args(["-n", "e2h-node", "-4", "-o", "addr", "show", "dev", "lo"]).output();
    let addresses = String::from_utf8(ip.unwrap().stdout).unwrap();
    assert!(addresses.contains("inet 10.200.0.5/32"), "the cluster file's InternalIP is the node's: {addresses}");

    // policy: the same enforced revision, now the host is judged by it.
    local.kill();
    local.run_with(&rollout, &["--allow-localhost", "policy"]);
    assert!(
        local.eventually_reaches("node", SERVER, "8080/TCP", false, CONVERGE),
        "policy: default deny applies to the node\n{}",
        local.log()
    );
    assert!(!local.reaches(CLIENT, SERVER, "8080/TCP"), "the client still is denied");
    assert!(local.reaches("node", CLIENT, "9090/TCP"), "no policy selects the client: open to the node too");

    // A rule for the host lets it in, and only it.
    let commit = repo.commit(&[("server.yaml", FROM_HOST)], "server: the node may probe 8080");
    local.wait(NS, NAME, "the host rule enforced", WAIT, |s| {
        s.phase == Phase::Enforced
            && s.enforced_revision.as_ref().is_some_and(|r| r.display == format!("main@{commit}"))
    });
    assert!(
        local.eventually_reaches("node", SERVER, "8080/TCP", true, CONVERGE),
        "fromEntities: [host] allows the node\n{}",
        local.log()
    );
    assert!(!local.reaches(CLIENT, SERVER, "8080/TCP"), "and nobody else");
}
