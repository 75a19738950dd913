//! The agent on the real datapath, with pods as network namespaces (root only: fails without it).
//! Pods come, change labels and go while traffic runs; enforcement follows within the 100 ms the
//! issue sets, and a promotion flips every endpoint.
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::{Cleanup, wait_for_report};
use palisade_agent::runtime::{AgentHandle, RuntimeOptions, spawn};
use palisade_agent::{Agent, AgentConfig, Change, RouteResolver};
use palisade_datapath::Datapath;
use palisade_netsim::{LocalNetwork, Port, Responders, probe, require_root};
use palisade_policy::SourceFile;
use palisade_policy::cluster::Cluster;

const PREFIX: &str = "pag-";
const PIN_DIR: &str = "/sys/fs/bpf/palisade-test-agent";
/// The figure for a pod or label change to take effect.
const TARGET: Duration = Duration::from_millis(100);

const CLUSTER: &str = "kind: List
items:
- kind: Namespace
  metadata: {name: shop, labels: {team: shop}}
- kind: Pod
  metadata: {name: api, namespace: shop, labels: {app: api}}
  status: {podIP: 10.200.31.1}
- kind: Pod
  metadata: {name: db, namespace: shop, labels: {app: db}}
  spec: {containers: [{ports: [{containerPort: 5432}, {containerPort: 5433}]}]}
  status: {podIP: 10.200.31.2}
- kind: Pod
  metadata: {name: batch, namespace: shop, labels: {app: batch}}
  status: {podIP: 10.200.31.3}
- kind: Pod
  metadata: {name: late, namespace: shop, labels: {app: api}}
  status: {podIP: 10.200.31.4}
";

fn policy(port: u16) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: db, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n    - fromEndpoints: [{{matchLabels: {{app: api}}}}]\n      toPorts: [{{ports: [{{port: '{port}', protocol: TCP}}]}}]\n"
    )
}

fn revision(name: &str, port: u16) -> Change {
    common::revision(name, &policy(port))
}

struct Net {
    network: LocalNetwork,
}

impl Net {
    fn connects(&self, from: &str, to: &str, port: u16) -> bool {
        let to = self.network.pod(to).expect("pod").ip;
        let from = self.network.pod(from).expect("pod");
        probe(from, to, Port::Tcp(port), Duration::from_millis(20)).expect("probe").is_connected()
    }

    /// How long until a connection from `from` to `to` succeeds (`allowed`) or fails: until the
    /// start of the first attempt that shows it, so a probe's own timeout is not counted.
    fn settles(&self, from: &str, to: &str, port: u16, allowed: bool) -> Duration {
        let start = Instant::now();
        loop {
            let attempt = start.elapsed();
            if self.connects(from, to, port) == allowed {
                return attempt;
            }
            assert!(attempt < Duration::from_secs(5), "{from} -> {to}:{port} never became allowed={allowed}");
        }
    }
}

#[test]
fn enforcement_follows_pods_labels_and_promotions_while_traffic_runs() {
    require_root().expect("this test attaches eBPF programs in network namespaces: run it as root");
    let _cleanup = Cleanup { prefix: PREFIX, pin_dir: PIN_DIR };
    let cluster = Cluster::parse(&[SourceFile { name: "cluster.yaml", text: CLUSTER }]).expect("cluster");
    let network = LocalNetwork::plan(&cluster, PREFIX).expect("plan");
    network.create().expect("create the namespaces");
    let _responders = Responders::start(&network).expect("responders");
    let net = Net { network };
    let datapath = Datapath::open(PIN_DIR).expect("load the datapath");
    let agent = Agent::new(AgentConfig::default(), datapath, RouteResolver);
    let netns = Path::new("/run/netns").join(net.network.node_netns());
    let options = RuntimeOptions { netns: Some(netns), ..RuntimeOptions::default() };
    let AgentHandle { changes, mut reports, thread, .. } = spawn(agent, options).expect("start the agent");
    let send = |change: Change| changes.send(change).expect("agent running");

    // Everything but "late", which the agent does not know about yet.
    for namespace in cluster.namespaces.values() {
        send(Change::Namespace(namespace.clone()));
    }
    for pod in cluster.pods.iter().filter(|p| p.name != "late") {
        send(Change::Pod(pod.clone()));
    }
    send(revision("db-r1", 5432));
    send(revision("db-r2", 5433));
    send(common::rollout(Some("db-r1"), None));
    send(Change::Synced);
    wait_for_report(&mut reports, |r| r.enforced_revision.as_deref() == Some("db-r1"));
    assert!(net.connects("shop/api", "shop/db", 5432), "api may reach the database");
    assert!(!net.connects("shop/batch", "shop/db", 5432), "batch may not");
    assert!(!net.connects("shop/late", "shop/db", 5432), "an unknown address is world, which is denied");

    // A pod appears: its address gets its identity and the database admits it.
    let late = cluster.pods.iter().find(|p| p.name == "late").unwrap().clone();
    send(Change::Pod(late));
    let appeared = net.settles("shop/late", "shop/db", 5432, true);

    // A label change: batch becomes an API client.
    let mut batch = cluster.pods.iter().find(|p| p.name == "batch").unwrap().clone();
    batch.labels.insert("app".into(), "api".into());
    send(Change::Pod(batch));
    let relabelled = net.settles("shop/batch", "shop/db", 5432, true);

    // A pod goes: its address is world again.
    send(Change::PodDeleted { namespace: "shop".into(), name: "api".into() });
    let deleted = net.settles("shop/api", "shop/db", 5432, false);
    eprintln!("enforcement followed in: pod appeared {appeared:?}, relabelled {relabelled:?}, deleted {deleted:?}");
    for (what, took) in [("a new pod", appeared), ("a label change", relabelled), ("a deleted pod", deleted)] {
        assert!(took <= TARGET, "{what} took {took:?} to be enforced (target {TARGET:?})");
    }

    // A candidate moves the database to 5433: shadowed, then promoted with one flip.
    send(common::rollout(Some("db-r1"), Some("db-r2")));
    wait_for_report(&mut reports, |r| r.loaded_revisions.contains(&"db-r2".to_string()));
    assert!(net.connects("shop/late", "shop/db", 5432), "the candidate only watches");
    assert!(!net.connects("shop/late", "shop/db", 5433));
    send(common::rollout(Some("db-r2"), Some("db-r2")));
    wait_for_report(&mut reports, |r| r.enforced_revision.as_deref() == Some("db-r2"));
    assert!(net.connects("shop/late", "shop/db", 5433), "promoted");
    assert!(!net.connects("shop/late", "shop/db", 5432));
    drop(changes);
    thread.join().expect("agent thread").expect("agent");
}
