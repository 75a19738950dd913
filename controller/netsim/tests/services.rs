//! Local mode's kube-proxy table on real namespaces (root only: these tests fail without it).
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use palisade_netsim::net::remove_netns_with_prefix;
use palisade_netsim::{Local, Outcome, Port, Responders, ask_who, kube_proxy, require_root};

const TIMEOUT: Duration = Duration::from_millis(500);
const PREFIX: &str = "plsvc-";
const API: Ipv4Addr = Ipv4Addr::new(10, 200, 250, 10);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 200, 250, 53);
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 200, 250, 99);

/// Two api backends (the named target port is 8080 on one, 8081 on the other), a DNS pod behind
/// kube-dns, a client, and a Service that selects nothing.
const CLUSTER: &str = "apiVersion: v1
kind: List
items:
- kind: Pod
  metadata: {name: api-0, namespace: shop, labels: {app: api}}
  spec: {containers: [{name: api, ports: [{name: http, containerPort: 8080}]}]}
  status: {podIP: 10.200.41.10}
- kind: Pod
  metadata: {name: api-1, namespace: shop, labels: {app: api}}
  spec: {containers: [{name: api, ports: [{name: http, containerPort: 8081}]}]}
  status: {podIP: 10.200.41.11}
- kind: Pod
  metadata: {name: client, namespace: shop, labels: {app: client}}
  status: {podIP: 10.200.41.20}
- kind: Pod
  metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
  spec: {containers: [{name: dns, ports: [{name: dns, containerPort: 53, protocol: UDP}]}]}
  status: {podIP: 10.200.41.53}
- kind: Service
  metadata: {name: api, namespace: shop}
  spec: {clusterIP: 10.200.250.10, selector: {app: api}, ports: [{port: 80, targetPort: http}]}
- kind: Service
  metadata: {name: kube-dns, namespace: kube-system}
  spec: {clusterIP: 10.200.250.53, selector: {k8s-app: kube-dns}, ports: [{name: dns, port: 53, protocol: UDP}]}
- kind: Service
  metadata: {name: empty, namespace: shop}
  spec: {clusterIP: 10.200.250.99, selector: {app: nothing}, ports: [{port: 80}]}
";

struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = remove_netns_with_prefix(PREFIX);
    }
}

fn who(netns: &str, to: impl Into<IpAddr>, port: Port) -> (Outcome, Option<String>) {
    ask_who(netns, to, port, TIMEOUT).unwrap()
}

/// The backends that answered `tries` connections.
fn answered(netns: &str, to: impl Into<IpAddr> + Copy, port: Port, tries: usize) -> BTreeSet<String> {
    let to = to.into();
    (0..tries)
        .map(|_| match who(netns, to, port) {
            (Outcome::Connected(_), Some(pod)) => pod,
            other => panic!("{netns} -> {to}:{port}: {other:?}"),
        })
        .collect()
}

/// Dual-stack backends behind a dual-stack Service, and an IPv4-only client of it.
const DUAL_STACK: &str = "apiVersion: v1
kind: List
items:
- kind: Pod
  metadata: {name: api-0, namespace: shop, labels: {app: api}}
  spec: {containers: [{name: api, ports: [{name: http, containerPort: 8080}]}]}
  status: {podIP: 10.200.42.10, podIPs: [{ip: 10.200.42.10}, {ip: \"fd00:200::42:10\"}]}
- kind: Pod
  metadata: {name: api-1, namespace: shop, labels: {app: api}}
  spec: {containers: [{name: api, ports: [{name: http, containerPort: 8081}]}]}
  status: {podIP: 10.200.42.11, podIPs: [{ip: 10.200.42.11}, {ip: \"fd00:200::42:11\"}]}
- kind: Pod
  metadata: {name: client, namespace: shop, labels: {app: client}}
  status: {podIP: 10.200.42.20, podIPs: [{ip: 10.200.42.20}, {ip: \"fd00:200::42:20\"}]}
- kind: Service
  metadata: {name: api, namespace: shop}
  spec:
    clusterIPs: [10.200.250.10, \"fd00:200::250:10\"]
    selector: {app: api}
    ports: [{port: 80, targetPort: http}]
- kind: Service
  metadata: {name: empty, namespace: shop}
  spec: {clusterIPs: [\"fd00:200::250:99\"], selector: {app: nothing}, ports: [{port: 80}]}
";

#[test]
fn an_ipv6_cluster_ip_is_translated_to_the_backends_ipv6_addresses() {
    const PREFIX6: &str = "plsv6-";
    require_root().expect("these tests create network namespaces: run them as root");
    struct Cleanup6;
    impl Drop for Cleanup6 {
        fn drop(&mut self) {
            let _ = remove_netns_with_prefix(PREFIX6);
        }
    }
    let _cleanup = Cleanup6;
    let local = Local::parse(Path::new("cluster.yaml"), DUAL_STACK, PREFIX6).unwrap();
    let network = &local.network;
    network.create().unwrap();
    kube_proxy::apply(network.node_netns(), &local.cluster).unwrap();
    let _responders = Responders::start(network).unwrap();
    let client = &network.pod("shop/client").unwrap().netns;
    let api6 = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0x250, 0x10);

    let both = BTreeSet::from(["shop/api-0".to_owned(), "shop/api-1".to_owned()]);
    // Both families, from a pod and from the node; a backend through its own Service (hairpin).
    assert_eq!(answered(client, api6, Port::Tcp(80), 30), both);
    assert_eq!(answered(client, API, Port::Tcp(80), 30), both);
    assert_eq!(answered(network.node_netns(), api6, Port::Tcp(80), 30), both);
    let api0 = &network.pod("shop/api-0").unwrap().netns;
    assert_eq!(answered(api0, api6, Port::Tcp(80), 30), both);
    // Rejected as in IPv4: no backends, another port; the rest of the range dropped.
    assert_eq!(who(client, Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0x250, 0x99), Port::Tcp(80)).0, Outcome::Refused);
    assert_eq!(who(client, api6, Port::Tcp(81)).0, Outcome::Refused);
    assert_eq!(who(client, Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0x250, 0x200), Port::Tcp(80)).0, Outcome::TimedOut);

    // Removing the tables leaves both families untranslated.
    kube_proxy::remove(network.node_netns()).unwrap();
    assert_eq!(who(client, api6, Port::Tcp(80)).0, Outcome::TimedOut);
    assert_eq!(who(client, API, Port::Tcp(80)).0, Outcome::TimedOut);
}

#[test]
fn a_cluster_ip_is_translated_in_the_node_namespace_to_a_random_backend() {
    require_root().expect("these tests create network namespaces: run them as root");
    let _cleanup = Cleanup;
    let local = Local::parse(Path::new("cluster.yaml"), CLUSTER, PREFIX).unwrap();
    let network = &local.network;
    network.create().unwrap();
    kube_proxy::apply(network.node_netns(), &local.cluster).unwrap();
    let _responders = Responders::start(network).unwrap();
    let client = &network.pod("shop/client").unwrap().netns;

    // From a pod (prerouting) and from the node (output): both backends, each on its own port.
    let both = BTreeSet::from(["shop/api-0".to_owned(), "shop/api-1".to_owned()]);
    assert_eq!(answered(client, API, Port::Tcp(80), 30), both);
    assert_eq!(answered(network.node_netns(), API, Port::Tcp(80), 30), both);
    assert_eq!(answered(client, DNS, Port::Udp(53), 3), BTreeSet::from(["kube-system/coredns".to_owned()]));

    // Hairpin: a backend reaching itself through its Service is masqueraded, so it answers.
    let api0 = &network.pod("shop/api-0").unwrap().netns;
    assert_eq!(answered(api0, API, Port::Tcp(80), 30), both);

    // No backends: rejected, as kube-proxy does; a port the Service does not have: rejected too.
    assert_eq!(who(client, EMPTY, Port::Tcp(80)).0, Outcome::Refused);
    assert_eq!(who(client, API, Port::Tcp(81)).0, Outcome::Refused);
    assert_eq!(who(client, API, Port::Udp(80)).0, Outcome::Refused);
    // An address of the range no Service has: dropped.
    assert_eq!(who(client, Ipv4Addr::new(10, 200, 250, 200), Port::Tcp(80)).0, Outcome::TimedOut);

    // Applying again replaces the table; removing it leaves ClusterIPs untranslated (dropped).
    kube_proxy::apply(network.node_netns(), &local.cluster).unwrap();
    assert!(answered(client, API, Port::Tcp(80), 3).is_subset(&both));
    kube_proxy::remove(network.node_netns()).unwrap();
    kube_proxy::remove(network.node_netns()).unwrap();
    assert_eq!(who(client, API, Port::Tcp(80)).0, Outcome::TimedOut);
    assert_eq!(who(client, EMPTY, Port::Tcp(80)).0, Outcome::TimedOut);
}
