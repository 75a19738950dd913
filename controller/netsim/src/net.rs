//! The local cluster's network: one network namespace per pod and one "node" namespace that holds
//! the host side of every pod's veth and routes between them, like a Cilium node does.
//!
//! A pod has its IP as a /32 on `eth0` and a default route via 169.254.1.1, a gateway that exists
//! only as a static neighbour entry pointing at the host side's MAC (no address is configured for
//! it anywhere). The node namespace has one address, the node's own ([`LocalNode`]), as a /32 on
//! its loopback: the local host pods see as `host`. Pods reach it through their default route;
//! the node reaches them through one /32 route (with the node's address as source) and one
//! static neighbour entry per pod. IPv4 forwarding is on, and there is no route out, so traffic
//! never leaves the namespaces.
//!
//! A dual-stack pod (`status.podIPs` with an address from `fd00:200::/64`) also has its IPv6
//! address as a /128 on `eth0` (without duplicate address detection, so it is usable at once) and
//! a default route via `fe80::1`, again only a static neighbour entry; the node namespace then has
//! its IPv6 address on its loopback, one /128 route and one neighbour entry per such pod, and
//! IPv6 forwarding on. No interface gets a link-local address (`addr_gen_mode` none), and IPv6
//! is off in the namespaces of a cluster without IPv6 pods, so the veths carry only these
//! addresses.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use palisade_policy::Cluster;
use palisade_policy::cluster::{ContainerPort, Node};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::dns::DnsZone;
use crate::error::{Error, NodeAddressError, Result};
use crate::services::{in_service_range, in_service_range_v6, service_range, service_range_v6};
use crate::{ADDRESS_RANGE, ADDRESS_RANGE_V6, IpFamily};

/// Where `ip netns` keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// The pod side of every veth.
pub const POD_IF: &str = "eth0";
/// The node namespace's interface the Service range is routed to.
pub const SERVICES_IF: &str = "kube-services";
/// The pods' default gateway: only a neighbour entry, never an address.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pods' IPv6 default gateway: only a neighbour entry, never an address.
const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The node namespace's address when the cluster file has no InternalIP for the local node.
pub const DEFAULT_NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// The node namespace's IPv6 address in a dual-stack cluster whose file has no IPv6 InternalIP
/// for the local node.
pub const DEFAULT_NODE_ADDRESS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);
/// The local node's name when no pod names one.
pub const DEFAULT_NODE_NAME: &str = "local";

/// The one node every local pod runs on, whatever node the cluster file puts them on: the node
/// namespace. Its address is `host` to the pods' datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalNode {
    /// The node most pods name (`spec.nodeName`; ties to the first name), else `local`.
    pub name: String,
    /// The cluster file's InternalIP of that Node, else [`DEFAULT_NODE_ADDRESS`].
    pub address: Ipv4Addr,
    /// The Node's IPv6 InternalIP if it is in `fd00:200::/64`, else [`DEFAULT_NODE_ADDRESS_V6`]
    /// when the Node has one outside it or some pod has an IPv6 address; `None` in a cluster
    /// without IPv6 (the namespaces then have IPv6 off).
    pub ipv6: Option<Ipv6Addr>,
    /// The Node's IPv6 InternalIP outside `fd00:200::/64` that [`LocalNode::ipv6`] stands in
    /// for: the node namespace cannot carry it, and [`LocalNode::add_to`] makes the stand-in the
    /// Node's IPv6 InternalIP in the model, so that the node's own IPv6 traffic is `host`.
    pub ipv6_outside_range: Option<Ipv6Addr>,
    /// Whether the cluster file has that Node. When it does not, [`LocalNode::add_to`] puts it in
    /// the cluster model the agent compiles, so that its address is `host` all the same.
    pub declared: bool,
    /// The container ports of the host-network pods on this node (or on no node): the node's
    /// own daemons, which the node namespace answers on, as a host's would.
    pub ports: Vec<ContainerPort>,
}

impl LocalNode {
    /// The local node of `cluster`'s pods, with the address the node namespace gets.
    pub fn choose(cluster: &Cluster) -> Result<LocalNode, NodeAddressError> {
        let name = cluster.main_node().unwrap_or(DEFAULT_NODE_NAME);
        let node = cluster.node(name);
        let address = match node.and_then(|n| n.internal_ip) {
            Some(address) if !in_range(address) => {
                return Err(NodeAddressError::OutsideRange { node: name.to_owned(), address: address.into() });
            }
            Some(address) => address,
            None => DEFAULT_NODE_ADDRESS,
        };
        // A pod local mode gives an IPv6 address: one with both families.
        let dual_stack =
            cluster.endpoints().chain(&cluster.outside_hosts).any(|p| p.ipv4().is_some() && p.ipv6().is_some());
        let declared_ipv6 = node.and_then(|n| n.internal_ipv6);
        let ipv6_outside_range = declared_ipv6.filter(|a| !in_range_v6(*a));
        let ipv6 = match declared_ipv6 {
            Some(address) if in_range_v6(address) => Some(address),
            Some(_) => Some(DEFAULT_NODE_ADDRESS_V6),
            None => dual_stack.then_some(DEFAULT_NODE_ADDRESS_V6),
        };
        let mut ports: Vec<ContainerPort> = cluster
            .pods
            .iter()
            .filter(|p| p.host_network && p.node_name.as_deref().is_none_or(|n| n == name))
            .flat_map(|p| p.ports.iter().cloned())
            .collect();
        ports.sort();
        ports.dedup_by_key(|p| (p.port, p.protocol));
        Ok(LocalNode { name: name.to_owned(), address, ipv6, ipv6_outside_range, declared: node.is_some(), ports })
    }

    /// Adds the node to `cluster` when the file has none of that name; a declared Node without
    /// an InternalIP gets the node namespace's address.
    pub fn add_to(&self, cluster: &mut Cluster) {
        let node = match cluster.nodes.iter().position(|n| n.name == self.name) {
            Some(i) => &mut cluster.nodes[i],
            None => {
                cluster.nodes.push(Node {
                    name: self.name.clone(),
                    labels: BTreeMap::new(),
                    addresses: Vec::new(),
                    internal_ip: None,
                    internal_ipv6: None,
                });
                cluster.nodes.last_mut().expect("just pushed")
            }
        };
        if node.internal_ip.is_none() {
            node.addresses.push(self.address.into());
            node.internal_ip = Some(self.address);
        }
        // No IPv6 InternalIP, or one outside the range that the node namespace's stands in for.
        if let Some(ipv6) = self.ipv6.filter(|a| node.internal_ipv6 != Some(*a)) {
            if !node.addresses.contains(&ipv6.into()) {
                node.addresses.push(ipv6.into());
            }
            node.internal_ipv6 = Some(ipv6);
        }
    }

    /// The node namespace's address of `family`, if it has one.
    pub fn address_of(&self, family: IpFamily) -> Option<IpAddr> {
        match family {
            IpFamily::IPv4 => Some(self.address.into()),
            IpFamily::IPv6 => self.ipv6.map(IpAddr::from),
        }
    }
}

/// Whether local mode may put `address` on an interface.
pub fn in_range(address: Ipv4Addr) -> bool {
    let (network, len) = ADDRESS_RANGE;
    u32::from(address) >> (32 - len) == u32::from(network) >> (32 - len)
}

/// Whether local mode may put the IPv6 `address` on an interface.
pub fn in_range_v6(address: Ipv6Addr) -> bool {
    let (network, len) = ADDRESS_RANGE_V6;
    u128::from(address) >> (128 - len) == u128::from(network) >> (128 - len)
}

/// The range local mode takes addresses of `address`'s family from: `10.200.0.0/16` or
/// `fd00:200::/64`.
pub fn address_range(address: IpAddr) -> String {
    match address {
        IpAddr::V4(_) => format!("{}/{}", ADDRESS_RANGE.0, ADDRESS_RANGE.1),
        IpAddr::V6(_) => format!("{}/{}", ADDRESS_RANGE_V6.0, ADDRESS_RANGE_V6.1),
    }
}

/// The namespaces and interfaces for a cluster, all named from `prefix`. [`LocalNetwork::plan`]
/// only computes the names; [`LocalNetwork::create`] makes them.
#[derive(Clone, Debug)]
pub struct LocalNetwork {
    prefix: String,
    node_netns: String,
    node: LocalNode,
    pods: BTreeMap<String, PodNet>,
}

/// One pod's place in the local network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNet {
    /// `namespace/name`.
    pub key: String,
    /// The pod's network namespace (`/run/netns/<netns>`).
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, for a dual-stack pod (`status.podIPs`).
    pub ipv6: Option<Ipv6Addr>,
    /// The host side of the pod's veth, in the node namespace: where the datapath attaches.
    pub host_if: String,
    /// The declared container ports, which the responders serve.
    pub ports: Vec<ContainerPort>,
    /// Ports answered with HTTP instead of an echo (`palisade.dev/http-ports`).
    pub http_ports: Vec<u16>,
    /// Ports answered as a Kafka broker (`palisade.dev/kafka-ports`).
    pub kafka_ports: Vec<u16>,
    /// The DNS server it runs on port 53 (`palisade.dev/dns-records`).
    pub dns: Option<DnsZone>,
    /// The DNS pod it resolves through, `namespace/name` (`palisade.dev/resolver`).
    pub resolver: Option<String>,
    /// A host outside the cluster (`palisade.dev/outside-cluster`): its address is `world`.
    pub outside: bool,
    host_mac: [u8; 6],
    pod_mac: [u8; 6],
}

impl PodNet {
    /// The pod's address of `family`, if it has one.
    pub fn address(&self, family: IpFamily) -> Option<IpAddr> {
        match family {
            IpFamily::IPv4 => Some(self.ip.into()),
            IpFamily::IPv6 => self.ipv6.map(IpAddr::from),
        }
    }
}

impl LocalNetwork {
    /// Names everything for the non-host-network pods of `cluster` that have a pod IP, whatever
    /// node they are on, and for its hosts outside the cluster. Every namespace name starts with `prefix`, and everything starting with
    /// it is this network's to delete: no prefix in use may start another.
    pub fn plan(cluster: &Cluster, prefix: &str) -> Result<LocalNetwork> {
        LocalNetwork::plan_on(cluster, prefix, LocalNode::choose(cluster)?)
    }

    /// [`LocalNetwork::plan`] with the local node chosen already.
    pub fn plan_on(cluster: &Cluster, prefix: &str, node: LocalNode) -> Result<LocalNetwork> {
        if prefix.is_empty()
            || prefix.len() > 32
            || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::Cluster(format!(
                "namespace prefix {prefix:?}: use 1 to 32 letters, digits, '-' or '_'"
            )));
        }
        let mut pods = BTreeMap::new();
        let mut by_ip: BTreeMap<IpAddr, String> = BTreeMap::new();
        let mut by_if: BTreeMap<String, String> = BTreeMap::new();
        let outside = cluster.outside_hosts.iter().map(|p| (p, true));
        for (pod, outside) in cluster.endpoints().map(|p| (p, false)).chain(outside) {
            // Local mode is IPv4 only yet: a pod's IPv4 address.
            let Some(ip) = pod.ipv4() else { continue };
            let key = pod.key();
            // Kubernetes names are DNS labels and subdomains; anything else could escape the
            // namespace directory or an `ip` argument.
            for part in [&pod.namespace, &pod.name] {
                if part.is_empty() || !part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
                    return Err(Error::Cluster(format!("pod {key}: {part:?} is not a Kubernetes name")));
                }
            }
            // Namespace names have no dots, so the first dot separates them from the pod name.
            let netns = format!("{prefix}{}.{}", pod.namespace, pod.name);
            if netns.len() > 255 {
                return Err(Error::Cluster(format!(
                    "pod {key}: network namespace name {netns} is longer than 255 characters"
                )));
            }
            if let Some(other) = by_ip.insert(ip.into(), key.clone()) {
                return Err(Error::Cluster(format!("pods {other} and {key} both have podIP {ip}")));
            }
            if ip == node.address {
                return Err(Error::Cluster(format!(
                    "pod {key} has podIP {ip}, the address of the node namespace (node {}): give the Node another InternalIP in {}/{}",
                    node.name, ADDRESS_RANGE.0, ADDRESS_RANGE.1
                )));
            }
            if in_service_range(ip) {
                return Err(Error::Cluster(format!(
                    "pod {key}: status.podIP {ip} is in the Service range {}: local mode routes it to kube-proxy's table",
                    service_range()
                )));
            }
            if !in_range(ip) {
                return Err(Error::Cluster(format!(
                    "pod {key}: status.podIP {ip} is outside {}/{}: local mode puts addresses only from that range on interfaces",
                    ADDRESS_RANGE.0, ADDRESS_RANGE.1
                )));
            }
            let ipv6 = pod.ipv6();
            if let Some(ip6) = ipv6 {
                let field = match pod.ips.iter().position(|a| *a == IpAddr::V6(ip6)) {
                    Some(i) if pod.ips.len() > 1 => format!("status.podIPs[{i}]"),
                    _ => "status.podIP".to_owned(),
                };
                if !in_range_v6(ip6) {
                    return Err(Error::Cluster(format!(
                        "pod {key}: {field} {ip6} is outside {}/{}: local mode puts IPv6 addresses only from that range on interfaces",
                        ADDRESS_RANGE_V6.0, ADDRESS_RANGE_V6.1
                    )));
                }
                if in_service_range_v6(ip6) {
                    return Err(Error::Cluster(format!(
                        "pod {key}: {field} {ip6} is in the IPv6 Service range {}: local mode routes it to kube-proxy's table",
                        service_range_v6()
                    )));
                }
                if Some(ip6) == node.ipv6 {
                    return Err(Error::Cluster(format!(
                        "pod {key}: {field} {ip6} is the IPv6 address of the node namespace (node {}): give the Node another IPv6 InternalIP in {}/{}",
                        node.name, ADDRESS_RANGE_V6.0, ADDRESS_RANGE_V6.1
                    )));
                }
                if let Some(other) = by_ip.insert(ip6.into(), key.clone()) {
                    return Err(Error::Cluster(format!("pods {other} and {key} both have podIP {ip6}")));
                }
            }
            let hash = fnv1a(key.as_bytes());
            let host_if = format!("pl{:010x}", hash >> 24);
            if let Some(other) = by_if.insert(host_if.clone(), key.clone()) {
                return Err(Error::Cluster(format!(
                    "pods {other} and {key} hash to the same interface name {host_if}"
                )));
            }
            let b = hash.to_be_bytes();
            // Locally administered unicast addresses, different on the two sides.
            let host_mac = [0x0e, b[0], b[1], b[2], b[3], b[4]];
            let pod_mac = [0x0a, b[0], b[1], b[2], b[3], b[4]];
            let pod = PodNet {
                key: key.clone(),
                netns,
                ip,
                ipv6,
                host_if,
                ports: pod.ports.clone(),
                http_ports: Vec::new(),
                kafka_ports: Vec::new(),
                dns: None,
                resolver: None,
                outside,
                host_mac,
                pod_mac,
            };
            pods.insert(key, pod);
        }
        Ok(LocalNetwork { prefix: prefix.to_owned(), node_netns: node_netns(prefix), node, pods })
    }

    /// Creates the namespaces and links, after removing whatever a previous run with the same
    /// prefix left behind. On failure, nothing with the prefix is left.
    pub fn create(&self) -> Result<()> {
        remove_netns_with_prefix(&self.prefix)?;
        let created = self.create_fresh();
        if created.is_err() {
            let _ = remove_netns_with_prefix(&self.prefix);
        }
        created
    }

    fn create_fresh(&self) -> Result<()> {
        let node = &self.node_netns;
        let node_ip = self.node.address;
        add_netns(node, self.node.ipv6.is_some())?;
        // The Service range is routed, as a real node's default route covers it, into an
        // interface that drops whatever kube-proxy's table lets through untranslated (an ifb
        // device drops what is sent to it; this kernel has no dummy): without a route, the node's
        // own connections to a ClusterIP would fail before nat-output.
        let mut node_batch = vec![
            "link set lo up".to_owned(),
            format!("addr add {node_ip}/32 dev lo"),
            format!("link add {SERVICES_IF} type ifb"),
            format!("link set {SERVICES_IF} up"),
            format!("route add {} dev {SERVICES_IF}", service_range()),
        ];
        if let Some(node_ip6) = self.node.ipv6 {
            node_batch.extend([
                format!("addr add {node_ip6}/128 dev lo nodad"),
                format!("route add {} dev {SERVICES_IF}", service_range_v6()),
            ]);
        }
        for pod in self.pods.values() {
            add_netns(&pod.netns, pod.ipv6.is_some())?;
            let (host_mac, pod_mac) = (mac(&pod.host_mac), mac(&pod.pod_mac));
            let veth = format!(
                "link add {} address {host_mac} type veth peer name {POD_IF} address {pod_mac} netns {}",
                pod.host_if, pod.netns
            );
            ip_in(node, &[veth], || format!("pod {}: create its veth", pod.key))?;
            let mut pod_batch = vec![
                "link set lo up".to_owned(),
                format!("addr add {}/32 dev {POD_IF}", pod.ip),
                format!("link set {POD_IF} up"),
                format!("route add {GATEWAY} dev {POD_IF} scope link"),
                format!("route add default via {GATEWAY} dev {POD_IF}"),
                format!("neigh add {GATEWAY} lladdr {host_mac} dev {POD_IF} nud permanent"),
            ];
            node_batch.extend([
                format!("link set {} up", pod.host_if),
                format!("route add {}/32 dev {} scope link src {node_ip}", pod.ip, pod.host_if),
                format!("neigh add {} lladdr {pod_mac} dev {} nud permanent", pod.ip, pod.host_if),
            ]);
            if let (Some(ip6), Some(node_ip6)) = (pod.ipv6, self.node.ipv6) {
                pod_batch.extend([
                    format!("addr add {ip6}/128 dev {POD_IF} nodad"),
                    format!("route add ::/0 via {GATEWAY_V6} dev {POD_IF}"),
                    format!("neigh add {GATEWAY_V6} lladdr {host_mac} dev {POD_IF} nud permanent"),
                ]);
                node_batch.extend([
                    format!("route add {ip6}/128 dev {} src {node_ip6}", pod.host_if),
                    format!("neigh add {ip6} lladdr {pod_mac} dev {} nud permanent", pod.host_if),
                ]);
            }
            ip_in(&pod.netns, &pod_batch, || format!("pod {}: configure {POD_IF}", pod.key))?;
        }
        ip_in(node, &node_batch, || "configure the node namespace's routes".into())?;
        let ipv6 = self.node.ipv6.is_some();
        in_netns(node, move || {
            write_sysctl("net/ipv4/ip_forward", "1")?;
            if ipv6 { write_sysctl("net/ipv6/conf/all/forwarding", "1") } else { Ok(()) }
        })
        .map_err(|e| Error::io(format!("enter {node}"), e))??;
        Ok(())
    }

    /// Deletes every namespace with this network's prefix.
    pub fn remove(&self) -> Result<()> {
        remove_netns_with_prefix(&self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace holding the host side of every pod's veth.
    pub fn node_netns(&self) -> &str {
        &self.node_netns
    }

    /// The node the node namespace plays, and its address there.
    pub fn node(&self) -> &LocalNode {
        &self.node
    }

    /// A pod by `namespace/name`.
    pub fn pod(&self, key: &str) -> Option<&PodNet> {
        self.pods.get(key)
    }

    pub(crate) fn pod_mut(&mut self, key: &str) -> Option<&mut PodNet> {
        self.pods.get_mut(key)
    }

    /// Every pod with a namespace, by `namespace/name`.
    pub fn pods(&self) -> impl Iterator<Item = &PodNet> {
        self.pods.values()
    }
}

/// The node namespace of the network with `prefix`.
pub fn node_netns(prefix: &str) -> String {
    format!("{prefix}node")
}

/// Deletes every named network namespace whose name starts with `prefix`.
pub fn remove_netns_with_prefix(prefix: &str) -> Result<()> {
    let names = netns_with_prefix(prefix)?;
    if names.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = names.iter().map(|name| format!("netns del {name}")).collect();
    run_ip(&["-force", "-batch", "-"], Some(&lines.join("\n")), || "delete network namespaces".into())?;
    let left = netns_with_prefix(prefix)?;
    if !left.is_empty() {
        return Err(Error::NamespacesLeft(left));
    }
    Ok(())
}

/// The named network namespaces whose name starts with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("list {NETNS_DIR}"), e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry.map_err(|e| Error::io(format!("list {NETNS_DIR}"), e))?.file_name();
        if let Some(name) = name.to_str().filter(|n| n.starts_with(prefix)) {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Runs `f` on a new thread inside the named network namespace and returns its result. Sockets
/// created there stay in that namespace wherever they are used later.
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    spawn_in_netns(netns, f)?.join().map_err(|_| io::Error::other(format!("a thread in netns {netns} panicked")))
}

/// Starts a thread inside the named network namespace (for long-lived work such as the agent's
/// datapath thread). Returns once the thread is inside, or the error if it could not get there.
pub fn spawn_in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<JoinHandle<T>> {
    let path = Path::new(NETNS_DIR).join(netns);
    let file = File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
    let (entered, inside) = mpsc::sync_channel(1);
    let handle = thread::Builder::new().name(format!("netns {netns}")).spawn(move || {
        // Only this thread moves; the namespace is fixed for everything it creates.
        let moved = move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network));
        let failed = moved.is_err();
        let _ = entered.send(moved);
        if failed {
            // The caller has the error and drops the handle; `f` must not run outside the
            // namespace. resume_unwind ends the thread without the panic message.
            std::panic::resume_unwind(Box::new(()));
        }
        f()
    })?;
    match inside.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(io::Error::other(format!("setns into {}: {e}", path.display()))),
        Err(_) => Err(io::Error::other(format!("the thread entering {} died", path.display()))),
    }
}

/// Creates a namespace with IPv6 off, or with `ipv6` on but without link-local addresses,
/// duplicate address detection or router solicitations.
fn add_netns(name: &str, ipv6: bool) -> Result<()> {
    run_ip(&["netns", "add", name], None, || format!("create network namespace {name}"))?;
    // Before any link exists, so that no veth ever gets an IPv6 link-local address.
    in_netns(name, move || {
        if !ipv6 {
            write_sysctl("net/ipv6/conf/all/disable_ipv6", "1")?;
            return write_sysctl("net/ipv6/conf/default/disable_ipv6", "1");
        }
        // 1: no address is generated for new links.
        write_sysctl("net/ipv6/conf/default/addr_gen_mode", "1")?;
        write_sysctl("net/ipv6/conf/default/accept_dad", "0")?;
        write_sysctl("net/ipv6/conf/default/accept_ra", "0")?;
        write_sysctl("net/ipv6/conf/default/router_solicitations", "0")
    })
    .map_err(|e| Error::io(format!("enter {name}"), e))?
}

/// Writes a sysctl of the calling thread's network namespace.
fn write_sysctl(name: &str, value: &str) -> Result<()> {
    std::fs::write(Path::new("/proc/sys").join(name), value).map_err(|e| Error::io(format!("set {name} to {value}"), e))
}

/// Runs `ip -n netns -batch -` with one command per line: one process for many changes.
fn ip_in(netns: &str, lines: &[String], action: impl Fn() -> String) -> Result<()> {
    run_ip(&["-n", netns, "-batch", "-"], Some(&lines.join("\n")), action)
}

/// Runs `ip` with `args` (and `stdin`); `action` says what for, in the error.
pub(crate) fn run_ip(args: &[&str], stdin: Option<&str>, action: impl Fn() -> String) -> Result<()> {
    let mut command = Command::new("ip");
    command.args(args).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let describe = || format!("ip {}", args.join(" "));
    let failed = |what: &str, e| Error::io(format!("{}: {} {what}", action(), describe()), e);
    let mut child = command.spawn().map_err(|e| failed("cannot run (is iproute2 installed?)", e))?;
    let mut input = child.stdin.take().expect("stdin is piped");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).map_err(|e| failed("cannot take its input", e))?;
    }
    drop(input);
    let output = child.wait_with_output().map_err(|e| failed("did not finish", e))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(Error::Ip { action: action(), command: describe(), status: output.status, stderr });
    }
    Ok(())
}

fn mac(bytes: &[u8; 6]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// FNV-1a: a hash that stays the same across Rust releases, so names are stable.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
