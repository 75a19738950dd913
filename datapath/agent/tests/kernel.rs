//! The agent on the real datapath, with pods as network namespaces (root only: fails without it).
//! Pods come, change labels and go while traffic runs; enforcement follows within the 100 ms the
//! issue sets, and a promotion flips every endpoint. The route resolver finds the pods' veths.
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{Cleanup, wait_for_report};
use palisade_agent::runtime::AgentHandle;
use palisade_agent::{Change, Interface, InterfaceResolver, RouteResolver};
use palisade_netsim::net::in_netns;
use palisade_netsim::{LocalNetwork, Port, probe, require_root};

const PREFIX: &str = "pag-";
const PIN_DIR: &str = "/sys/fs/bpf/palisade-test-agent";
/// The figure for a pod or label change to take effect.
const TARGET: Duration = Duration::from_millis(100);

fn revision(name: &str, port: u16) -> Change {
    common::revision(name, &common::db_policy(port))
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
    let cluster = common::shop(31);
    let (_cleanup, network, _responders, AgentHandle { changes, mut reports, thread, .. }) =
        common::start_agent(PREFIX, PIN_DIR, &cluster);
    let net = Net { network };
    let send = |change: Change| changes.send(change).expect("agent running");
    // Everything but "late", which the agent does not know about yet.
    common::sync_shop(&changes, &mut reports, &cluster, |p| p.name != "late", revision);
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

#[test]
fn the_route_resolver_finds_each_pods_host_side_veth_and_nothing_else() {
    require_root().expect("this test creates network namespaces: run it as root");
    const PREFIX: &str = "prt-";
    let _cleanup = Cleanup { prefix: PREFIX, pin_dir: "/sys/fs/bpf/palisade-test-route" };
    let cluster = common::shop(33);
    let network = LocalNetwork::plan(&cluster, PREFIX).expect("plan");
    network.create().expect("create the namespaces");
    // Another node's pods, behind a gateway (here the api pod), are not local.
    let api = network.pod("shop/api").expect("pod");
    let remote = Command::new("ip")
        .args(["-n", network.node_netns(), "route", "add", "10.200.34.0/24", "via"])
        .arg(api.ip.to_string())
        .status()
        .expect("ip");
    assert!(remote.success(), "add a route through a gateway");
    let pods: Vec<(Ipv4Addr, String)> = network.pods().map(|p| (p.ip, p.host_if.clone())).collect();
    let node = network.node().address;
    let resolved = in_netns(network.node_netns(), move || {
        let index = |name: &str| {
            let name = std::ffi::CString::new(name).expect("name");
            // SAFETY: a valid NUL-terminated string.
            unsafe { libc::if_nametoindex(name.as_ptr()) }
        };
        let pods: Vec<(Option<Interface>, Interface)> = pods
            .into_iter()
            .map(|(ip, name)| (RouteResolver.interface(ip.into()), Interface { index: index(&name), name }))
            .collect();
        let elsewhere = ["10.200.34.7", "10.200.35.1"].map(|ip| RouteResolver.interface(ip.parse().unwrap()));
        (pods, RouteResolver.interface(node.into()), elsewhere)
    })
    .expect("enter the node namespace");
    let (pods, node, elsewhere) = resolved;
    assert_eq!(pods.len(), 4);
    for (found, veth) in pods {
        assert!(veth.index > 0, "{veth:?}");
        assert_eq!(found, Some(veth));
    }
    assert_eq!(node, None, "the node's own address is routed through lo");
    assert_eq!(elsewhere, [None, None], "behind a gateway, or no route at all");
}
