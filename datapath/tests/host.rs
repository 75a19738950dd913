//! The host endpoint (the node itself, Cilium's host firewall) with real packets: a "node"
//! namespace with its address on its loopback, routed to pods behind veths (as local mode's
//! network does), its identity `host` in the ipcache. Its ingress policy judges what pods send
//! to the node, its egress policy what the node sends them, beside the pods' own policies (both
//! must allow); replies pass; a candidate is shadow-evaluated and flips with the pods; IPv6 is
//! judged alike; the programs run first on their hooks, in both attach modes, and outlive the
//! process that attached them.
mod support;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use aya::programs::{SchedClassifier, TcAttachType};
use palisade_common::*;
use palisade_datapath::{AttachMode, Datapath, Flow, HOST_ENDPOINT_IFINDEX, Hook, Mode, Slot};
use support::*;

/// The host endpoint's id in these tests; pods are 0, 1, ...
const HOST: u32 = 100;

fn identity(pod: usize) -> u32 {
    IDENTITY_FIRST_LOCAL + pod as u32
}

fn rule(verdict: Verdict, peer: u32, direction: Direction, port: Option<u16>, cookie: u32) -> PolicyEntry {
    let key = match port {
        Some(port) => PolicyKey::new(peer, direction, Some(Protocol::TCP), port, 16),
        None => PolicyKey::new(peer, direction, None, 0, 0),
    };
    entry(key, PolicyValue::new(verdict, cookie))
}

fn allow(peer: u32, direction: Direction, port: Option<u16>, cookie: u32) -> PolicyEntry {
    rule(Verdict::Allow, peer, direction, port, cookie)
}

/// A pod that may send anything anywhere and receive anything.
fn open_pod() -> Vec<PolicyEntry> {
    vec![allow(IDENTITY_ANY, Direction::Egress, None, 1), allow(IDENTITY_ANY, Direction::Ingress, None, 2)]
}

struct Pod {
    ns: String,
    host_if: String,
    addr: Ipv4Addr,
    addr6: Ipv6Addr,
}

/// The node namespace: 10.200.250.1 and fd00:200::1 on its loopback; pod `i` at 10.200.251.<10+i>
/// and fd00:200::<10+i>, each a /32 (/128) on its veth, reached through one route (from the
/// node's address) and one static neighbour entry each way. Deleted when dropped.
struct Node {
    ns: String,
    addr: Ipv4Addr,
    addr6: Ipv6Addr,
    pods: Vec<Pod>,
    pin_dir: PathBuf,
    namespaces: Vec<String>,
}

impl Node {
    fn new(prefix: &str, pods: usize) -> Node {
        require_root();
        let ns = format!("{prefix}-node");
        let mut node = Node {
            ns: ns.clone(),
            addr: Ipv4Addr::new(10, 200, 250, 1),
            addr6: "fd00:200::1".parse().unwrap(),
            pods: Vec::new(),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/palisade-test-{prefix}")),
            namespaces: Vec::new(),
        };
        node.cleanup(prefix);
        node.add_ns(&ns);
        let ip = |ns: &str, args: &str| {
            let mut command = vec!["ip", "-n", ns];
            command.extend(args.split(' '));
            run(&command);
        };
        ip(&ns, "link set lo up");
        ip(&ns, &format!("addr add {}/32 dev lo", node.addr));
        ip(&ns, &format!("addr add {}/128 dev lo nodad", node.addr6));
        for i in 0..pods {
            let pod_ns = format!("{prefix}-p{i}");
            let (host_if, peer_if) = (format!("{prefix}h{i}"), format!("{prefix}p{i}"));
            let (host_mac, pod_mac) = (format!("02:00:00:00:{i:02x}:01"), format!("02:00:00:00:{i:02x}:02"));
            let pod = Pod {
                ns: pod_ns.clone(),
                host_if: host_if.clone(),
                addr: Ipv4Addr::new(10, 200, 251, 10 + i as u8),
                addr6: Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0x10 + i as u16),
            };
            node.add_ns(&pod_ns);
            ip(
                &ns,
                &format!(
                    "link add {host_if} address {host_mac} type veth peer name {peer_if} address {pod_mac} netns {pod_ns}"
                ),
            );
            ip(&ns, &format!("link set {host_if} up"));
            ip(&pod_ns, "link set lo up");
            ip(&pod_ns, &format!("link set {peer_if} up"));
            ip(&pod_ns, &format!("addr add {}/32 dev {peer_if}", pod.addr));
            ip(&pod_ns, &format!("addr add {}/128 dev {peer_if} nodad", pod.addr6));
            for (addr, peer_addr) in
                [(pod.addr.to_string(), node.addr.to_string()), (pod.addr6.to_string(), node.addr6.to_string())]
            {
                ip(&ns, &format!("route add {addr} dev {host_if} src {peer_addr}"));
                ip(&ns, &format!("neigh add {addr} lladdr {pod_mac} dev {host_if} nud permanent"));
                ip(&pod_ns, &format!("route add {peer_addr} dev {peer_if}"));
                ip(&pod_ns, &format!("neigh add {peer_addr} lladdr {host_mac} dev {peer_if} nud permanent"));
            }
            node.pods.push(pod);
        }
        node
    }

    fn add_ns(&mut self, ns: &str) {
        run(&["ip", "netns", "add", ns]);
        self.namespaces.push(ns.to_owned());
    }

    /// Leftovers of an interrupted earlier run.
    fn cleanup(&self, prefix: &str) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let output = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(&format!("{prefix}-")) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }

    /// The datapath (in `mode`, else the tests' one) with the node's addresses `host` in the
    /// ipcache, each pod's both addresses its identity, pod `i` enforcing `pods[i]`. Call from
    /// inside the node namespace.
    fn datapath(&self, mode: Option<AttachMode>, pods: Vec<Vec<PolicyEntry>>) -> Datapath {
        let mut datapath = match mode {
            Some(mode) => Datapath::open_with(&self.pin_dir, Some(mode)).expect("open the datapath"),
            None => open_datapath(&self.pin_dir),
        };
        datapath.set_ipcache(self.addr, 32, IDENTITY_HOST).unwrap();
        datapath.set_ipcache(self.addr6, 128, IDENTITY_HOST).unwrap();
        for (i, (pod, policy)) in self.pods.iter().zip(pods).enumerate() {
            datapath.set_ipcache(pod.addr, 32, identity(i)).unwrap();
            datapath.set_ipcache(pod.addr6, 128, identity(i)).unwrap();
            datapath.load_slot(i as u32, Slot::A, &policy).unwrap();
            let addrs = palisade_datapath::EndpointAddrs { v4: Some(pod.addr), v6: Some(pod.addr6) };
            datapath.attach(i as u32, &pod.host_if, addrs).unwrap();
        }
        datapath
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// The host endpoint enforcing `policy` in slot A.
fn host_endpoint(datapath: &mut Datapath, policy: &[PolicyEntry]) {
    datapath.load_slot(HOST, Slot::A, policy).unwrap();
    datapath.attach_host(HOST).unwrap();
}

fn flows_of(datapath: &Datapath, endpoint: u32) -> Vec<Flow> {
    datapath.flows().unwrap().into_iter().filter(|f| f.key.endpoint == endpoint).collect()
}

/// The flow of `endpoint` in `direction` with peer `peer` to TCP port `port`, if recorded.
fn flow(datapath: &Datapath, endpoint: u32, direction: Direction, peer: u32, port: u16) -> Option<Flow> {
    flows_of(datapath, endpoint).into_iter().find(|f| {
        f.key.direction() == direction && f.key.identity == peer && f.key.dport == port && f.key.protocol == PROTO_TCP
    })
}

/// The programs attached in `mode` to one hook of `ifname`, in the order they run (the caller is
/// in the node namespace, `node`).
fn hook_programs(mode: AttachMode, node: &str, ifname: &str, hook: TcAttachType) -> Vec<String> {
    match mode {
        // A hook never attached to has nothing to query.
        AttachMode::Tcx => SchedClassifier::query_tcx(ifname, hook).map_or_else(
            |_| Vec::new(),
            |(_, programs)| programs.iter().map(|p| p.name_as_str().unwrap_or("?").to_owned()).collect(),
        ),
        AttachMode::Tc => {
            let hook = if hook == TcAttachType::Ingress { "ingress" } else { "egress" };
            let output =
                Command::new("tc").args(["-n", node, "filter", "show", "dev", ifname, hook]).output().expect("run tc");
            // `filter protocol all pref 1 bpf chain 0 handle 0x1 from_host direct-action ...`,
            // listed by priority.
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|line| {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    let handle = words.iter().position(|w| *w == "handle")?;
                    words.get(handle + 2).map(|name| name.to_string())
                })
                .collect()
        }
    }
}

/// Waits until the hooks of `ifname` run `egress` and `ingress`, in that order: an unpinned
/// TCX link detaches a moment later, from a kernel work queue.
fn assert_hooks(mode: AttachMode, node: &str, ifname: &str, egress: &[&str], ingress: &[&str]) {
    let current = || {
        (
            hook_programs(mode, node, ifname, TcAttachType::Egress),
            hook_programs(mode, node, ifname, TcAttachType::Ingress),
        )
    };
    if !eventually(|| {
        current() == (egress.iter().map(|p| p.to_string()).collect(), ingress.iter().map(|p| p.to_string()).collect())
    }) {
        panic!("{ifname}: (egress, ingress) {:?}, expected {egress:?}, {ingress:?}", current());
    }
}

/// The host's programs run first on `ifname`, an endpoint's interface.
fn assert_host_programs_first(datapath: &Datapath, node: &str, ifname: &str) {
    let egress = ["from_host", "deferred_egress", "to_endpoint"];
    assert_hooks(datapath.attach_mode(), node, ifname, &egress, &["to_host", "from_endpoint"]);
}

#[test]
fn without_a_host_endpoint_only_the_pods_policies_judge_host_traffic() {
    let node = Node::new("phn", 2);
    let _inside = InNetns::enter(&node.ns);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    // Pod 1 may send to the node on TCP 81 only.
    let b_policy =
        vec![allow(IDENTITY_HOST, Direction::Egress, Some(81), 3), allow(IDENTITY_ANY, Direction::Ingress, None, 4)];
    let datapath = node.datapath(None, vec![open_pod(), b_policy]);
    assert_host_programs_first(&datapath, &node.ns, &a.host_if);
    tcp_echo_servers(&node.ns, &[80, 81]);
    tcp_echo_servers(&a.ns, &[8080]);

    assert!(tcp_ok(&a.ns, node.addr, 80), "an open pod reaches the node");
    assert!(tcp_ok(&b.ns, node.addr, 81), "as its own policy allows");
    assert!(!tcp_ok(&b.ns, node.addr, 80), "its own policy denies");
    assert!(tcp_ok(&node.ns, a.addr, 8080), "the node reaches a pod");
    assert!(tcp_ok(&a.ns, node.addr6, 80), "over IPv6 too");
    assert!(flow(&datapath, 1, Direction::Egress, IDENTITY_HOST, 80).is_some(), "the pod's drop is the pod's");
    assert!(datapath.flows().unwrap().iter().all(|f| f.key.endpoint < 2), "no other endpoint judged anything");
    datapath.destroy().unwrap();
}

#[test]
fn host_ingress_policy_admits_one_pod_drops_the_other_and_both_policies_must_allow() {
    let node = Node::new("phi", 2);
    let _inside = InNetns::enter(&node.ns);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    // Pod 0 may send to the node on TCP 80 and 82 only.
    let a_policy = vec![
        allow(IDENTITY_HOST, Direction::Egress, Some(80), 3),
        allow(IDENTITY_HOST, Direction::Egress, Some(82), 4),
        allow(IDENTITY_ANY, Direction::Ingress, None, 5),
    ];
    let mut datapath = node.datapath(None, vec![a_policy, open_pod()]);
    host_endpoint(
        &mut datapath,
        &[
            allow(identity(0), Direction::Ingress, Some(80), 10),
            allow(identity(0), Direction::Ingress, Some(81), 11),
            rule(Verdict::Redirect, identity(0), Direction::Ingress, Some(82), 12),
            allow(IDENTITY_ANY, Direction::Egress, None, 13),
        ],
    );
    // A proxy port no one listens on: a pod's redirect would be steered; the host's fails closed.
    datapath.set_proxy_port(Some(15999)).unwrap();
    assert_eq!(datapath.state(HOST).unwrap().ifindex, HOST_ENDPOINT_IFINDEX);
    assert_eq!(datapath.attach_host(HOST).map_err(|e| e.to_string()), Ok(()), "idempotent");
    let pod = datapath.attach_host(0).expect_err("a pod's endpoint");
    assert!(pod.to_string().contains("endpoint 0 is already attached"), "{pod}");
    let other = datapath.attach_host(7).expect_err("one host endpoint per node");
    assert!(other.to_string().contains("endpoint 7 cannot be the host endpoint: endpoint 100 is"), "{other}");
    assert!(!datapath.endpoints().unwrap().contains(&7), "nothing half-applied");
    let mut events = datapath.events().unwrap();
    tcp_echo_servers(&node.ns, &[80, 81, 82]);

    let mut stream = tcp_connect(&a.ns, node.addr, 80).expect("the host admits pod 0 on TCP 80");
    for _ in 0..5 {
        assert!(tcp_roundtrip(&mut stream), "the host's replies pass, on the pod's interface too");
    }
    assert!(!tcp_ok(&b.ns, node.addr, 80), "the host drops pod 1's SYN");
    assert!(!tcp_ok(&a.ns, node.addr, 81), "the host allows TCP 81 from pod 0, its own egress does not");
    assert!(!tcp_ok(&a.ns, node.addr, 82), "the host's L7 rule fails closed");

    let denied = flow(&datapath, HOST, Direction::Ingress, identity(1), 80).expect("pod 1's drop, the host's");
    assert_eq!(
        (denied.key.drop_reason(), denied.key.enforced_verdict(), denied.key.mode()),
        (Some(DropReason::PolicyDenied), Verdict::Deny, Mode::Enforce)
    );
    let unproxied = flow(&datapath, HOST, Direction::Ingress, identity(0), 82).expect("the L7 drop");
    assert_eq!((unproxied.key.drop_reason(), unproxied.enforced_cookie), (Some(DropReason::L7Unsupported), 12));
    assert!(flow(&datapath, 0, Direction::Egress, IDENTITY_HOST, 81).is_some(), "pod 0's own drop");
    assert!(flow(&datapath, HOST, Direction::Ingress, identity(0), 81).is_none(), "the host allowed that one");
    let counters = datapath.counters(HOST).unwrap();
    assert!(counters.allowed >= 6 && counters.denied >= 2 && counters.replies >= 5, "{counters:?}");
    let mut received = Vec::new();
    while events.read(Duration::from_millis(100), |event| received.push(event)) > 0 {}
    let event = received.iter().find(|e| e.flow.endpoint == HOST && e.flow.dport == 80).expect("an event");
    assert_eq!((event.source(), event.destination()), (IpAddr::from(b.addr), IpAddr::from(node.addr)));

    // Detached, the host is judged by no one but the pods.
    datapath.detach(HOST).unwrap();
    assert!(tcp_ok(&b.ns, node.addr, 80), "no host endpoint, no host policy");
    datapath.destroy().unwrap();
}

#[test]
fn host_egress_policy_lets_the_node_reach_one_pod_and_replies_pass() {
    let node = Node::new("phe", 2);
    let _inside = InNetns::enter(&node.ns);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    // Pod 0 lets the node in on 8080 only.
    let a_policy =
        vec![allow(IDENTITY_ANY, Direction::Egress, None, 1), allow(IDENTITY_HOST, Direction::Ingress, Some(8080), 2)];
    let mut datapath = node.datapath(None, vec![a_policy, open_pod()]);
    // Nothing may reach the node: the replies to its own connections still pass.
    host_endpoint(
        &mut datapath,
        &[allow(identity(0), Direction::Egress, Some(8080), 20), allow(identity(0), Direction::Egress, Some(8081), 21)],
    );
    for pod in [a, b] {
        tcp_echo_servers(&pod.ns, &[8080, 8081]);
    }

    let mut stream = tcp_connect(&node.ns, a.addr, 8080).expect("the host may reach pod 0");
    for _ in 0..5 {
        assert!(tcp_roundtrip(&mut stream), "replies pass the host's default-deny ingress");
    }
    assert!(!tcp_ok(&node.ns, b.addr, 8080), "the host may not reach pod 1");
    assert!(!tcp_ok(&node.ns, a.addr, 8081), "the host allows, pod 0's ingress does not");
    assert!(!tcp_ok(&a.ns, node.addr, 8080), "nothing may reach the node");

    let denied = flow(&datapath, HOST, Direction::Egress, identity(1), 8080).expect("the host's own drop");
    assert_eq!(denied.key.drop_reason(), Some(DropReason::PolicyDenied));
    assert!(flow(&datapath, 0, Direction::Ingress, IDENTITY_HOST, 8081).is_some(), "pod 0's drop");
    assert!(flow(&datapath, HOST, Direction::Ingress, identity(0), 8080).is_some(), "pod 0's SYN to the node");
    datapath.destroy().unwrap();
}

#[test]
fn errors_the_node_sends_about_forwarded_packets_are_the_pods_hooks_to_judge() {
    let node = Node::new("phx", 1);
    let _inside = InNetns::enter(&node.ns);
    let a = &node.pods[0];
    let mut datapath = node.datapath(None, vec![open_pod()]);
    // The node may send nothing.
    host_endpoint(&mut datapath, &[]);
    let ifindex = if_index(&a.host_if);
    // Fragmentation needed, from the node, about a datagram pod 0 sent elsewhere (forwarded).
    let quoted =
        ipv4_packet(PROTO_UDP, a.addr, Ipv4Addr::new(10, 200, 99, 9), (7, 0, false), &udp_datagram(5555, 53, &[]));
    let mut rest = vec![0, 0, 0x05, 0xdc];
    rest.extend_from_slice(&quoted);
    let error = ipv4_frame(PROTO_ICMP, node.addr, a.addr, &icmp_message(3, &rest));
    let run = datapath.run_frame(Hook::FromHost, ifindex, &error, 1).unwrap();
    assert!(run.passed, "an error about a forwarded packet goes on to the pod's hook");
    assert!(flows_of(&datapath, HOST).is_empty(), "no host flow recorded for it: {:?}", flows_of(&datapath, HOST));
    // Anything else the node sends is its own, and denied.
    let datagram = ipv4_frame(PROTO_UDP, node.addr, a.addr, &udp_datagram(5555, 53, &[]));
    assert!(!datapath.run_frame(Hook::FromHost, ifindex, &datagram, 1).unwrap().passed, "the node's own datagram");
    datapath.destroy().unwrap();
}

#[test]
fn a_host_candidate_is_shadow_evaluated_and_flips_with_the_pods() {
    let node = Node::new("phc", 2);
    let _inside = InNetns::enter(&node.ns);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let mut datapath = node.datapath(None, vec![open_pod(), open_pod()]);
    let egress_all = allow(IDENTITY_ANY, Direction::Egress, None, 30);
    // Enforced: both pods on TCP 80. Candidate: pod 0 only.
    host_endpoint(
        &mut datapath,
        &[
            egress_all,
            allow(identity(0), Direction::Ingress, Some(80), 31),
            allow(identity(1), Direction::Ingress, Some(80), 32),
        ],
    );
    datapath.load_slot(HOST, Slot::B, &[egress_all, allow(identity(0), Direction::Ingress, Some(80), 41)]).unwrap();
    datapath.set_candidate(HOST, Some(Slot::B)).unwrap();
    // Pod 0's candidate stops letting anything in.
    datapath.load_slot(0, Slot::B, &[allow(IDENTITY_ANY, Direction::Egress, None, 42)]).unwrap();
    datapath.set_candidate(0, Some(Slot::B)).unwrap();
    tcp_echo_servers(&node.ns, &[80]);
    tcp_echo_servers(&a.ns, &[8080]);

    assert!(tcp_ok(&b.ns, node.addr, 80), "the enforced slot decides");
    let shadow = flow(&datapath, HOST, Direction::Ingress, identity(1), 80).expect("the candidate's drop is recorded");
    assert_eq!(
        (shadow.key.enforced_verdict(), shadow.key.candidate_verdict(), shadow.key.drop_reason()),
        (Verdict::Allow, Some(Verdict::Deny), None)
    );
    assert_eq!(shadow.enforced_cookie, 32);
    assert!(datapath.counters(HOST).unwrap().shadow_diffs > 0);
    assert!(tcp_ok(&a.ns, node.addr, 80) && flow(&datapath, HOST, Direction::Ingress, identity(0), 80).is_none());
    assert!(tcp_ok(&node.ns, a.addr, 8080), "pod 0's enforced slot lets the node in");

    // One flip for the node and the pod.
    datapath.flip_all(&[HOST, 0]).unwrap();
    assert_eq!((datapath.state(HOST).unwrap().enforced, datapath.state(0).unwrap().enforced), (Slot::B, Slot::B));
    assert!(!tcp_ok(&b.ns, node.addr, 80), "the promoted host policy drops pod 1");
    assert!(tcp_ok(&a.ns, node.addr, 80), "and admits pod 0");
    assert!(!tcp_ok(&node.ns, a.addr, 8080), "the promoted pod policy keeps the node out");

    // Audit: the host passes what it would drop, and records it.
    datapath.clear_flows().unwrap();
    datapath.set_mode(HOST, Mode::Audit).unwrap();
    assert!(tcp_ok(&b.ns, node.addr, 80), "audit passes");
    let audited = flow(&datapath, HOST, Direction::Ingress, identity(1), 80).expect("the audited flow");
    assert_eq!((audited.key.mode(), audited.key.enforced_verdict()), (Mode::Audit, Verdict::Deny));
    datapath.destroy().unwrap();
}

#[test]
fn ipv6_host_traffic_is_judged_like_ipv4() {
    let node = Node::new("ph6", 2);
    let _inside = InNetns::enter(&node.ns);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let mut datapath = node.datapath(None, vec![open_pod(), open_pod()]);
    host_endpoint(
        &mut datapath,
        &[allow(identity(0), Direction::Ingress, Some(80), 50), allow(identity(0), Direction::Egress, Some(8080), 51)],
    );
    tcp_echo_servers(&node.ns, &[80]);
    for pod in [a, b] {
        tcp_echo_servers(&pod.ns, &[8080]);
    }

    let mut stream = tcp_connect(&a.ns, node.addr6, 80).expect("the host admits pod 0 over IPv6");
    assert!(tcp_roundtrip(&mut stream) && tcp_roundtrip(&mut stream), "and its replies pass");
    assert!(!tcp_ok(&b.ns, node.addr6, 80), "and drops pod 1");
    let mut stream = tcp_connect(&node.ns, a.addr6, 8080).expect("the host reaches pod 0 over IPv6");
    assert!(tcp_roundtrip(&mut stream), "its replies pass");
    assert!(!tcp_ok(&node.ns, b.addr6, 8080), "not pod 1");
    assert!(!ping_ok(&a.ns, node.addr6), "no rule admits ICMPv6 echo");
    assert!(tcp_ok(&a.ns, node.addr, 80), "IPv4 alike");

    let mut events = datapath.events().unwrap();
    let mut received = Vec::new();
    while events.read(Duration::from_millis(100), |event| received.push(event)) > 0 {}
    let dropped = |direction: Direction, peer: u32, port: u16| {
        received.iter().any(|e| {
            e.flow.endpoint == HOST
                && e.flow.direction() == direction
                && e.flow.identity == peer
                && e.flow.dport == port
                && e.source().is_ipv6()
        })
    };
    assert!(dropped(Direction::Ingress, identity(1), 80), "pod 1's IPv6 SYN recorded with the host");
    assert!(dropped(Direction::Egress, identity(1), 8080), "the host's IPv6 SYN to pod 1");
    datapath.destroy().unwrap();
}

/// Legacy tc: the host's filters have the lowest priorities, so they run first.
#[test]
fn legacy_tc_runs_the_host_programs_first_on_endpoints_and_node_interfaces() {
    host_programs_follow_an_interface("pht", AttachMode::Tc);
}

/// TCX (unless the tests run in legacy tc): the host's links go before the others.
#[test]
fn the_host_programs_run_first_on_endpoints_and_node_interfaces() {
    host_programs_follow_an_interface("phx", attach_mode().unwrap_or(AttachMode::detect()));
}

/// The host's programs run first on an endpoint's interface, stay there without a gap when it
/// turns into a node interface and back, and go with detach_network and destroy.
fn host_programs_follow_an_interface(prefix: &str, mode: AttachMode) {
    let node = Node::new(prefix, 2);
    let _inside = InNetns::enter(&node.ns);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let mut datapath = node.datapath(Some(mode), vec![open_pod(), open_pod()]);
    host_endpoint(&mut datapath, &[allow(identity(0), Direction::Ingress, Some(80), 60)]);
    assert_host_programs_first(&datapath, &node.ns, &b.host_if);
    tcp_echo_servers(&node.ns, &[80]);
    assert!(tcp_ok(&a.ns, node.addr, 80), "the host admits pod 0");
    assert!(!tcp_ok(&b.ns, node.addr, 80), "and drops pod 1");

    // Pod 1's interface turns into a node interface: the host's programs stay.
    datapath.detach(1).unwrap();
    assert_hooks(mode, &node.ns, &b.host_if, &["from_host", "deferred_egress"], &["to_host", "from_network"]);
    assert!(!tcp_ok(&b.ns, node.addr, 80), "the host still judges what arrives there");
    // And back into an endpoint's.
    let addrs = palisade_datapath::EndpointAddrs { v4: Some(b.addr), v6: Some(b.addr6) };
    datapath.attach(1, &b.host_if, addrs).unwrap();
    assert_host_programs_first(&datapath, &node.ns, &b.host_if);
    assert!(!tcp_ok(&b.ns, node.addr, 80), "judged all along");
    datapath.detach(1).unwrap();
    datapath.detach_network(&b.host_if).unwrap();
    assert_hooks(mode, &node.ns, &b.host_if, &[], &[]);
    assert!(tcp_ok(&b.ns, node.addr, 80), "nothing judges that interface now");

    datapath.destroy().unwrap();
    assert_hooks(mode, &node.ns, &a.host_if, &[], &[]);
}

/// An agent restart: the host's programs and config stay pinned, keep enforcing while no
/// process holds the datapath, and a new handle adopts them.
#[test]
fn the_host_endpoint_survives_an_agent_restart() {
    let node = Node::new("phr", 2);
    let _inside = InNetns::enter(&node.ns);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let mut datapath = node.datapath(None, vec![open_pod(), open_pod()]);
    host_endpoint(&mut datapath, &[allow(identity(0), Direction::Ingress, Some(80), 70)]);
    tcp_echo_servers(&node.ns, &[80]);
    assert!(tcp_ok(&a.ns, node.addr, 80));
    drop(datapath);

    assert!(tcp_ok(&a.ns, node.addr, 80), "enforced while no process holds the datapath");
    assert!(!tcp_ok(&b.ns, node.addr, 80));
    let mut datapath = open_datapath(&node.pin_dir);
    assert_host_programs_first(&datapath, &node.ns, &a.host_if);
    assert_eq!(datapath.state(HOST).unwrap().ifindex, HOST_ENDPOINT_IFINDEX, "adopted");
    datapath.attach_host(HOST).unwrap();
    datapath.load_slot(HOST, Slot::B, &[allow(IDENTITY_ANY, Direction::Ingress, Some(80), 71)]).unwrap();
    datapath.set_candidate(HOST, Some(Slot::B)).unwrap();
    datapath.flip(HOST).unwrap();
    assert!(tcp_ok(&b.ns, node.addr, 80), "the new handle controls the host endpoint");
    datapath.destroy().unwrap();
}
