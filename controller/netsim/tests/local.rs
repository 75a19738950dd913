//! Local mode's network on real namespaces (root only: these tests fail without it). Each test
//! has its own namespace prefix, so they run beside each other and beside the datapath tests.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use palisade_netsim::net::{netns_with_prefix, remove_netns_with_prefix};
use palisade_netsim::{
    Local, LocalNetwork, Outcome, Port, Responders, StateDir, Talk, TrafficGenerator, TrafficOptions, down, kube_proxy,
    probe, probe_from_netns, require_root, serve_responders, up,
};

const TIMEOUT: Duration = Duration::from_millis(500);
/// Tells the re-executed test binary where the state is (see `responders_process`).
const STATE_ENV: &str = "PALISADE_LOCAL_TEST_STATE";

fn test_cluster() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster.yaml")
}

fn example_cluster() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/client-app-database/cluster.yaml")
}

/// Deletes the test's namespaces even when it panics.
struct Cleanup(&'static str);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = remove_netns_with_prefix(self.0);
    }
}

fn create(prefix: &'static str) -> (Local, Cleanup) {
    require_root().expect("these tests create network namespaces: run them as root");
    let local = Local::read(&test_cluster(), prefix).unwrap();
    local.network.create().unwrap();
    kube_proxy::apply(local.network.node_netns(), &local.cluster).unwrap();
    (local, Cleanup(prefix))
}

fn attempt(network: &LocalNetwork, from: &str, to: &str, port: Port) -> Outcome {
    let to = network.pod(to).unwrap().ip;
    probe(network.pod(from).unwrap(), to, port, TIMEOUT).unwrap()
}

#[test]
fn pods_reach_declared_ports_over_the_node_namespace() {
    let (local, _cleanup) = create("plt1-");
    let network = &local.network;
    assert_eq!(network.node_netns(), "plt1-node");
    let keys: Vec<&str> = network.pods().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["db/postgres", "ops/dns", "shop/app"], "host-network and IP-less pods get no namespace");
    assert_eq!(netns_with_prefix("plt1-").unwrap(), ["plt1-db.postgres", "plt1-node", "plt1-ops.dns", "plt1-shop.app"]);
    let app = network.pod("shop/app").unwrap();
    assert_eq!((app.netns.as_str(), app.ip), ("plt1-shop.app", Ipv4Addr::new(10, 200, 1, 10)));
    assert!(app.host_if.starts_with("pl") && app.host_if.len() <= 15, "{}", app.host_if);

    let responders = Responders::start(network).unwrap();
    assert_eq!(responders.served().len(), 4);
    let connected = |from, to, port| attempt(network, from, to, port).is_connected();
    assert!(connected("shop/app", "db/postgres", Port::Tcp(5432)));
    assert!(connected("shop/app", "ops/dns", Port::Udp(53)));
    assert!(connected("db/postgres", "ops/dns", Port::Tcp(53)));
    assert!(connected("ops/dns", "shop/app", Port::Tcp(8080)));
    assert!(connected("shop/app", "db/postgres", Port::Icmp));
    assert_eq!(attempt(network, "shop/app", "db/postgres", Port::Tcp(5433)), Outcome::Refused);
    assert_eq!(attempt(network, "shop/app", "db/postgres", Port::Udp(5432)), Outcome::Refused);
    // No pod has this address, and the node namespace routes nowhere else.
    let nobody = probe(app, Ipv4Addr::new(10, 200, 9, 9), Port::Tcp(80), Duration::from_millis(200)).unwrap();
    assert!(!nobody.is_connected(), "{nobody}");

    let stopped = Instant::now();
    drop(responders);
    assert!(stopped.elapsed() < Duration::from_secs(1), "responders took {:?} to stop", stopped.elapsed());
    assert_eq!(attempt(network, "shop/app", "db/postgres", Port::Tcp(5432)), Outcome::Refused);
}

#[test]
fn the_node_namespace_has_the_nodes_address_and_reaches_the_pods_both_ways() {
    let (local, _cleanup) = create("plt4-");
    let network = &local.network;
    let node = network.node();
    // The test cluster has no Node objects: most pods name node-a (a tie, the first name).
    assert_eq!((node.name.as_str(), node.address, node.declared), ("node-a", Ipv4Addr::new(10, 200, 0, 1), false));
    // Its one address, a /32 on the node namespace's loopback; nothing outside 10.200.0.0/16.
    let output = Command::new("ip").args(["-n", "plt4-node", "-4", "-o", "addr", "show"]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let mut addresses: Vec<(&str, &str)> = text
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inet = fields.iter().position(|f| *f == "inet").unwrap();
            (fields[1], fields[inet + 1])
        })
        .collect();
    addresses.sort();
    assert_eq!(addresses, [("lo", "10.200.0.1/32"), ("lo", "127.0.0.1/8")], "{text}");

    let _responders = Responders::start(network).unwrap();
    let app = network.pod("shop/app").unwrap();
    // The node reaches the pods, from its address.
    let from_node = |to: Ipv4Addr, port| probe_from_netns(network.node_netns(), to, port, TIMEOUT).unwrap();
    assert!(from_node(app.ip, Port::Tcp(8080)).is_connected());
    assert!(from_node(network.pod("ops/dns").unwrap().ip, Port::Udp(53)).is_connected());
    assert!(from_node(app.ip, Port::Icmp).is_connected());
    // The pods reach the node: it answers pings, and refuses ports nobody listens on.
    assert!(probe(app, node.address, Port::Icmp, TIMEOUT).unwrap().is_connected());
    assert_eq!(probe(app, node.address, Port::Tcp(10250), TIMEOUT).unwrap(), Outcome::Refused);
}

/// Two dual-stack pods and an IPv4-only one, on a node without an IPv6 InternalIP.
const DUAL_STACK: &str = "apiVersion: v1
kind: List
items:
- kind: Pod
  metadata: {name: web, namespace: shop}
  spec: {nodeName: node-a, containers: [{name: web, ports: [{containerPort: 8080}, {containerPort: 53, protocol: UDP}]}]}
  status: {podIP: 10.200.61.10, podIPs: [{ip: 10.200.61.10}, {ip: \"fd00:200::61:10\"}]}
- kind: Pod
  metadata: {name: client, namespace: shop}
  spec: {nodeName: node-a}
  status: {podIP: 10.200.61.20, podIPs: [{ip: 10.200.61.20}, {ip: \"fd00:200::61:20\"}]}
- kind: Pod
  metadata: {name: legacy, namespace: shop}
  spec: {nodeName: node-a, containers: [{name: legacy, ports: [{containerPort: 8080}]}]}
  status: {podIP: 10.200.61.30}
";

/// The addresses (`DEVICE ADDRESS/LEN`) of one family in a namespace.
fn addresses(netns: &str, family: &str) -> Vec<String> {
    let output = Command::new("ip").args(["-n", netns, family, "-o", "addr", "show"]).output().unwrap();
    let mut addresses: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let at = fields.iter().position(|f| *f == "inet" || *f == "inet6").unwrap();
            format!("{} {}", fields[1].split('@').next().unwrap(), fields[at + 1])
        })
        .collect();
    addresses.sort();
    addresses
}

#[test]
fn dual_stack_pods_reach_each_other_and_the_node_over_ipv6() {
    const PREFIX: &str = "plt6-";
    require_root().expect("these tests create network namespaces: run them as root");
    let _cleanup = Cleanup(PREFIX);
    let local = Local::parse(Path::new("cluster.yaml"), DUAL_STACK, PREFIX).unwrap();
    let network = &local.network;
    network.create().unwrap();
    let node = network.node();
    let node6 = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);
    assert_eq!(node.ipv6, Some(node6));
    // Only the addresses local mode gives: no link-local address anywhere, IPv6 off in the
    // IPv4-only pod.
    assert_eq!(addresses("plt6-node", "-6"), ["lo ::1/128", "lo fd00:200::1/128"]);
    assert_eq!(addresses("plt6-shop.web", "-6"), ["eth0 fd00:200::61:10/128", "lo ::1/128"]);
    assert_eq!(addresses("plt6-shop.legacy", "-6"), Vec::<String>::new());
    assert_eq!(addresses("plt6-shop.web", "-4"), ["eth0 10.200.61.10/32", "lo 127.0.0.1/8"]);
    let output = Command::new("ip").args(["-n", "plt6-node", "-6", "-o", "route", "show"]).output().unwrap();
    let routes = String::from_utf8_lossy(&output.stdout);
    assert!(!routes.contains("default"), "nothing is routed out:\n{routes}");

    let _responders = Responders::start(network).unwrap();
    let (web, client) = (network.pod("shop/web").unwrap(), network.pod("shop/client").unwrap());
    let web6: IpAddr = web.ipv6.unwrap().into();
    // At once (no duplicate address detection to wait for): TCP, UDP, ICMPv6 echo.
    assert!(probe(client, web6, Port::Tcp(8080), TIMEOUT).unwrap().is_connected());
    assert!(probe(client, web6, Port::Udp(53), TIMEOUT).unwrap().is_connected());
    assert!(probe(client, web6, Port::Icmp, TIMEOUT).unwrap().is_connected());
    assert_eq!(probe(client, web6, Port::Tcp(8081), TIMEOUT).unwrap(), Outcome::Refused);
    // The same ports still answer over IPv4.
    assert!(probe(client, web.ip, Port::Tcp(8080), TIMEOUT).unwrap().is_connected());
    assert!(probe(client, web.ip, Port::Udp(53), TIMEOUT).unwrap().is_connected());
    assert!(attempt(network, "shop/client", "shop/legacy", Port::Tcp(8080)).is_connected());
    // The node, from its IPv6 address, and back.
    let from_node = |to, port| probe_from_netns(network.node_netns(), to, port, TIMEOUT).unwrap();
    assert!(from_node(web6, Port::Tcp(8080)).is_connected());
    assert!(from_node(web6, Port::Icmp).is_connected());
    assert!(probe(web, node6, Port::Icmp, TIMEOUT).unwrap().is_connected());
    assert_eq!(probe(web, node6, Port::Tcp(10250), TIMEOUT).unwrap(), Outcome::Refused);
    // No pod has this address.
    let nobody: IpAddr = "fd00:200::61:99".parse().unwrap();
    assert!(!probe(client, nobody, Port::Tcp(80), Duration::from_millis(200)).unwrap().is_connected());
}

#[test]
fn traffic_generator_counts_declared_flows() {
    let (local, _cleanup) = create("plt2-");
    let _responders = Responders::start(&local.network).unwrap();
    let talk = |to: &str, port| Talk { from: "shop/app".into(), to: to.into(), port };
    assert_eq!(
        local.talks,
        [
            talk("db/postgres", Port::Tcp(5432)),
            talk("ops/dns", Port::Udp(53)),
            talk("db/postgres", Port::Tcp(5433)),
            talk("ops/dns", Port::Icmp),
            talk("svc/ops/dns", Port::Udp(53))
        ]
    );
    let options = TrafficOptions { interval: Duration::from_millis(20), timeout: TIMEOUT };
    let generator = TrafficGenerator::start(&local, options).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while generator.counts().values().any(|c| c.successes + c.failures < 3) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let counts = generator.counts();
    generator.stop();
    for (talk, count) in &counts {
        let closed = talk.port == Port::Tcp(5433);
        assert!(count.successes + count.failures >= 3, "{talk:?}: {count:?}");
        assert_eq!((count.successes == 0, count.failures == 0), (closed, !closed), "{talk:?}: {count:?}");
    }
}

#[test]
fn up_down_and_a_rerun_after_a_crash() {
    const PREFIX: &str = "plt3-";
    require_root().expect("these tests create network namespaces: run them as root");
    let _cleanup = Cleanup(PREFIX);
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path().join("state"));
    let responders = || {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.args(["--exact", "responders_process", "--ignored", "--nocapture"]).env(STATE_ENV, state.dir());
        command
    };
    // Left behind by a crash that also lost the state directory.
    Local::read(&example_cluster(), PREFIX).unwrap().network.create().unwrap();

    let first = up(&state, &example_cluster(), PREFIX, responders()).unwrap();
    let network = state.load().unwrap().network;
    assert_eq!(network.pods().count(), 8);
    let (client, db) = ("shop/client-7d9f8c6b5-q2w4e", "shop/catalog-db-0");
    assert!(attempt(&network, client, db, Port::Tcp(5432)).is_connected());
    assert!(attempt(&network, client, "kube-system/coredns-76f75df574-9zlqk", Port::Udp(53)).is_connected());
    assert_eq!(attempt(&network, client, db, Port::Tcp(5433)), Outcome::Refused);

    // A crash: the responder process dies, the namespaces and state stay.
    Command::new("kill").args(["-KILL", &first.responders_pid.to_string()]).status().unwrap();
    assert!(wait_until_gone(first.responders_pid));
    let second = up(&state, &example_cluster(), PREFIX, responders()).unwrap();
    assert!(attempt(&network, client, db, Port::Tcp(5432)).is_connected());

    down(&state).unwrap();
    assert!(wait_until_gone(second.responders_pid), "the responder process outlived down");
    assert_eq!(netns_with_prefix(PREFIX).unwrap(), Vec::<String>::new());
    assert!(!state.dir().exists(), "down leaves the state directory");
    down(&state).unwrap();
}

/// Whether the process is gone (reaped: `up` waits for its child on a thread).
fn wait_until_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

/// The responder process of `up_down_and_a_rerun_after_a_crash`: this test binary, run again
/// with only this test, stands in for `palisade local responders`.
#[test]
#[ignore = "started by up_down_and_a_rerun_after_a_crash"]
fn responders_process() {
    let dir = std::env::var(STATE_ENV).expect("run by up_down_and_a_rerun_after_a_crash, which sets the state");
    let Err(e) = serve_responders(&StateDir::new(dir));
    panic!("{e:#}");
}
