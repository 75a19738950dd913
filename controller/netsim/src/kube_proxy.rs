//! Local mode's kube-proxy: the cluster file's Services as an nftables table in the node
//! namespace, laid out like kube-proxy's nftables mode, so that a connection to a ClusterIP is
//! translated where a real node translates it: after the packet has left the client's host-side
//! veth (where the datapath judges the client's egress) and before it is routed to a backend.
//!
//! - `nat-prerouting` (traffic from pods) and `nat-output` (the node's own) look the ClusterIP,
//!   protocol and port up in the `service-ips` map; the Service port's chain picks a backend with
//!   `numgen random mod N` and DNATs to it.
//! - A Service port without backends is in `no-endpoint-services` and rejected in
//!   `filter-forward`/`filter-output`, as kube-proxy does (ICMP port unreachable, which a TCP
//!   client sees as a refusal); other ports of a ClusterIP are rejected too, and the rest of the
//!   range dropped.
//! - Hairpin: a backend reaching itself through its Service gets mark 0x4000 and is masqueraded
//!   in `nat-postrouting` (to the node's address), or it would see its own address as source.
//!   No other mark bit is touched: the datapath owns the rest.
//!
//! IPv6 ClusterIPs (from `fd00:200::250:0/112`) are translated to the backends' IPv6 addresses
//! by the same table in family `ip6`, as kube-proxy keeps one table per family; it is there only
//! when some Service has an IPv6 ClusterIP. One difference: there TCP is refused with a reset
//! rather than ICMPv6 port unreachable, because the reject runs synchronously on the veths and
//! the kernel's TCP over IPv6 drops an ICMPv6 error that arrives while `connect` still holds the
//! socket (IPv4 does not): the client would time out instead of seeing a refusal.
//!
//! The whole table (both, in a dual-stack cluster) is one script, applied with `nft -f -` in one
//! transaction that deletes and recreates it, so a rebuild never shows a half-written table.
use std::fmt::Write as _;

use palisade_policy::Cluster;
use palisade_policy::cluster::{Backend, Service, ServicePort};
use palisade_policy::model::Protocol;

use crate::IpFamily;
use crate::error::Result;
use crate::net::run_ip;
use crate::services::{cluster_ips, service_range_of};

// Hook priorities are numbers: nft 1.0.6 takes `dstnat` in prerouting only. -100 is dstnat, 100
// srcnat, -10 just before filter (0), as kube-proxy orders its chains.

/// The table, in family `ip` (and `ip6` for IPv6 ClusterIPs).
pub const TABLE: &str = "palisade-kube-proxy";
/// kube-proxy's masquerade bit (`--masquerade-bit` 14).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// The nft script that replaces the table with one translating every Service of `cluster`: the
/// `ip` table, and the `ip6` table when a Service has an IPv6 ClusterIP.
pub fn ruleset(cluster: &Cluster) -> String {
    let mut script = table(cluster, IpFamily::IPv4);
    if cluster.services.iter().any(|s| cluster_ips(s, IpFamily::IPv6).next().is_some()) {
        script.push_str(&table(cluster, IpFamily::IPv6));
    }
    script
}

/// nft's names in one family: the table family, the address type and the address match.
fn names(family: IpFamily) -> (&'static str, &'static str, &'static str) {
    match family {
        IpFamily::IPv4 => ("ip", "ipv4_addr", "ip"),
        IpFamily::IPv6 => ("ip6", "ipv6_addr", "ip6"),
    }
}

/// The script replacing the table of one family, with the ClusterIPs of that family translated to
/// the backends of that family.
fn table(cluster: &Cluster, family: IpFamily) -> String {
    let (table_family, addr_type, ip) = names(family);
    let (reject_port, reject) = match family {
        IpFamily::IPv4 => ("reject", "reject"),
        IpFamily::IPv6 => ("goto reject-chain", "meta l4proto tcp reject with tcp reset\n\t\treject"),
    };
    let mut translated = Vec::new();
    let mut no_endpoints = Vec::new();
    let mut chains = String::new();
    let mut addresses = Vec::new();
    // Headless Services have no address to translate.
    for service in cluster.services.iter().filter(|s| cluster_ips(s, family).next().is_some()) {
        addresses.extend(cluster_ips(service, family).map(|ip| ip.to_string()));
        for port in &service.ports {
            let Some(proto) = l4proto(port.protocol) else { continue };
            let keys: Vec<String> =
                cluster_ips(service, family).map(|ip| format!("{ip} . {proto} . {}", port.port)).collect();
            let mut backends = cluster.backends(service, port);
            backends.retain(|b| family.holds(b.ip));
            if backends.is_empty() {
                no_endpoints.extend(keys.into_iter().map(|key| format!("{key} : goto reject-chain")));
                continue;
            }
            let chain = service_chain(service, port);
            translated.extend(keys.into_iter().map(|key| format!("{key} : goto {chain}")));
            let picks: Vec<String> =
                backends.iter().enumerate().map(|(i, b)| format!("{i} : goto {}", endpoint_chain(&chain, b))).collect();
            writeln!(
                chains,
                "\tchain {chain} {{\n\t\tnumgen random mod {} vmap {{ {} }}\n\t}}",
                backends.len(),
                picks.join(", ")
            )
            .unwrap();
            for backend in &backends {
                let to = match backend.ip {
                    std::net::IpAddr::V4(address) => format!("{address}:{}", backend.port),
                    std::net::IpAddr::V6(address) => format!("[{address}]:{}", backend.port),
                };
                writeln!(
                    chains,
                    "\tchain {} {{\n\t\t{ip} saddr {address} jump mark-for-masquerade\n\t\tmeta l4proto {proto} dnat to {to}\n\t}}",
                    endpoint_chain(&chain, backend),
                    address = backend.ip,
                )
                .unwrap();
            }
        }
    }
    addresses.sort();
    addresses.dedup();
    let elements = |items: &[String]| {
        if items.is_empty() { String::new() } else { format!("\n\t\telements = {{ {} }}", items.join(", ")) }
    };
    format!(
        "table {table_family} {TABLE}
delete table {table_family} {TABLE}
table {table_family} {TABLE} {{
\tset cluster-ips {{
\t\ttype {addr_type}{cluster_ips}
\t}}
\tmap service-ips {{
\t\ttype {addr_type} . inet_proto . inet_service : verdict{translated}
\t}}
\tmap no-endpoint-services {{
\t\ttype {addr_type} . inet_proto . inet_service : verdict{no_endpoints}
\t}}
\tchain nat-prerouting {{
\t\ttype nat hook prerouting priority -100; policy accept;
\t\tjump services
\t}}
\tchain nat-output {{
\t\ttype nat hook output priority -100; policy accept;
\t\tjump services
\t}}
\tchain nat-postrouting {{
\t\ttype nat hook postrouting priority 100; policy accept;
\t\tjump masquerading
\t}}
\tchain filter-forward {{
\t\ttype filter hook forward priority -10; policy accept;
\t\tct state new jump service-endpoints-check
\t\tct state new jump cluster-ips-check
\t}}
\tchain filter-output {{
\t\ttype filter hook output priority -10; policy accept;
\t\tct state new jump service-endpoints-check
\t\tct state new jump cluster-ips-check
\t}}
\tchain services {{
\t\t{ip} daddr . meta l4proto . th dport vmap @service-ips
\t}}
\tchain service-endpoints-check {{
\t\t{ip} daddr . meta l4proto . th dport vmap @no-endpoint-services
\t}}
\tchain cluster-ips-check {{
\t\t{ip} daddr @cluster-ips {reject_port} comment \"invalid port of a ClusterIP\"
\t\t{ip} daddr {range} drop comment \"unallocated ClusterIP\"
\t}}
\tchain reject-chain {{
\t\t{reject}
\t}}
\tchain mark-for-masquerade {{
\t\tmeta mark set meta mark | {MASQUERADE_MARK:#x}
\t}}
\tchain masquerading {{
\t\tmeta mark & {MASQUERADE_MARK:#x} == 0 return
\t\tmeta mark set meta mark ^ {MASQUERADE_MARK:#x}
\t\tmasquerade fully-random
\t}}
{chains}}}
",
        cluster_ips = elements(&addresses),
        translated = elements(&translated),
        no_endpoints = elements(&no_endpoints),
        range = service_range_of(family),
    )
}

/// Replaces the table in `netns` with `ruleset(cluster)`, atomically.
pub fn apply(netns: &str, cluster: &Cluster) -> Result<()> {
    nft(netns, &ruleset(cluster), "translate the Services")
}

/// Deletes the tables (both families) from `netns`; one that is not there is no error.
pub fn remove(netns: &str) -> Result<()> {
    let script = ["ip", "ip6"].map(|f| format!("table {f} {TABLE}\ndelete table {f} {TABLE}\n")).concat();
    nft(netns, &script, "remove the Services' translation")
}

/// nft's name of a protocol kube-proxy translates.
fn l4proto(protocol: Protocol) -> Option<&'static str> {
    match protocol {
        Protocol::TCP => Some("tcp"),
        Protocol::UDP => Some("udp"),
        Protocol::SCTP => Some("sctp"),
        _ => None,
    }
}

/// kube-proxy's chain names: `service-NS/NAME/PROTO/PORT`, and the backend's after `__`.
fn service_chain(service: &Service, port: &ServicePort) -> String {
    let proto = l4proto(port.protocol).expect("only translated protocols get chains");
    let port_name = port.name.clone().unwrap_or_else(|| port.port.to_string());
    format!("service-{}/{}/{proto}/{port_name}", service.namespace, service.name)
}

/// An IPv6 address's colons are dots in the name: nft names have no colons.
fn endpoint_chain(service_chain: &str, backend: &Backend) -> String {
    let address = backend.ip.to_string().replace(':', ".");
    format!("endpoint-{}__{address}/{}", service_chain.trim_start_matches("service-"), backend.port)
}

/// Runs `nft -f -` with `script` inside the named network namespace.
fn nft(netns: &str, script: &str, action: &str) -> Result<()> {
    run_ip(&["netns", "exec", netns, "nft", "-f", "-"], Some(script), || action.to_owned())
}

#[cfg(test)]
mod tests {
    use palisade_policy::SourceFile;

    use super::*;

    const CLUSTER: &str = "apiVersion: v1
kind: List
items:
- kind: Pod
  metadata: {name: api-0, namespace: shop, labels: {app: api}}
  spec: {containers: [{name: api, ports: [{name: http, containerPort: 8080}]}]}
  status: {podIP: 10.200.1.10}
- kind: Pod
  metadata: {name: api-1, namespace: shop, labels: {app: api}}
  spec: {containers: [{name: api, ports: [{name: http, containerPort: 8081}]}]}
  status: {podIP: 10.200.1.11}
- kind: Service
  metadata: {name: api, namespace: shop}
  spec:
    clusterIP: 10.200.250.10
    selector: {app: api}
    ports: [{name: web, port: 80, targetPort: http}]
- kind: Service
  metadata: {name: gone, namespace: shop}
  spec:
    clusterIP: 10.200.250.11
    selector: {app: gone}
    ports: [{port: 53, protocol: UDP}]
- kind: Service
  metadata: {name: headless, namespace: shop}
  spec: {clusterIP: None, selector: {app: api}, ports: [{port: 80}]}
";

    fn cluster(text: &str) -> Cluster {
        Cluster::parse(&[SourceFile { name: "cluster.yaml", text }]).unwrap()
    }

    #[test]
    fn a_service_port_picks_one_of_its_backends_at_random_and_dnats_to_its_target_port() {
        let script = ruleset(&cluster(CLUSTER));
        assert!(
            script.contains(
                "type ipv4_addr . inet_proto . inet_service : verdict\n\t\telements = { 10.200.250.10 . tcp . 80 : goto service-shop/api/tcp/web }"
            ),
            "{script}"
        );
        assert!(
            script.contains(
                "\tchain service-shop/api/tcp/web {\n\t\tnumgen random mod 2 vmap { 0 : goto endpoint-shop/api/tcp/web__10.200.1.10/8080, 1 : goto endpoint-shop/api/tcp/web__10.200.1.11/8081 }\n\t}"
            ),
            "{script}"
        );
        // The named target port resolves on each backend; a backend reaching itself is masqueraded.
        assert!(
            script.contains(
                "\tchain endpoint-shop/api/tcp/web__10.200.1.11/8081 {\n\t\tip saddr 10.200.1.11 jump mark-for-masquerade\n\t\tmeta l4proto tcp dnat to 10.200.1.11:8081\n\t}"
            ),
            "{script}"
        );
    }

    #[test]
    fn a_service_port_without_backends_is_rejected_and_headless_services_are_not_translated() {
        let script = ruleset(&cluster(CLUSTER));
        assert!(script.contains("elements = { 10.200.250.11 . udp . 53 : goto reject-chain }"), "{script}");
        assert!(!script.contains("service-shop/gone"), "no chain for a port without backends:\n{script}");
        assert!(!script.contains("headless"), "{script}");
        assert!(
            script.contains("set cluster-ips {\n\t\ttype ipv4_addr\n\t\telements = { 10.200.250.10, 10.200.250.11 }")
        );
    }

    #[test]
    fn ipv6_cluster_ips_go_to_the_backends_ipv6_addresses_in_an_ip6_table() {
        let text = CLUSTER
            .replace("status: {podIP: 10.200.1.10}", "status: {podIPs: [{ip: 10.200.1.10}, {ip: \"fd00:200::1:10\"}]}")
            .replace("status: {podIP: 10.200.1.11}", "status: {podIPs: [{ip: 10.200.1.11}, {ip: \"fd00:200::1:11\"}]}")
            .replace("clusterIP: 10.200.250.10\n", "clusterIPs: [10.200.250.10, \"fd00:200::250:10\"]\n");
        let script = ruleset(&cluster(&text));
        let (v4, v6) = script.split_at(script.find("table ip6 ").expect("an ip6 table"));
        // The IPv4 table translates to IPv4 backends only, as before.
        assert!(v4.contains("10.200.250.10 . tcp . 80 : goto service-shop/api/tcp/web"), "{v4}");
        assert!(!v4.contains("fd00:"), "{v4}");
        assert!(v6.starts_with(
            "table ip6 palisade-kube-proxy\ndelete table ip6 palisade-kube-proxy\ntable ip6 palisade-kube-proxy {"
        ));
        assert!(
            v6.contains(
                "type ipv6_addr . inet_proto . inet_service : verdict\n\t\telements = { fd00:200::250:10 . tcp . 80 : goto service-shop/api/tcp/web }"
            ),
            "{v6}"
        );
        assert!(
            v6.contains(
                "\tchain endpoint-shop/api/tcp/web__fd00.200..1.11/8081 {\n\t\tip6 saddr fd00:200::1:11 jump mark-for-masquerade\n\t\tmeta l4proto tcp dnat to [fd00:200::1:11]:8081\n\t}"
            ),
            "{v6}"
        );
        assert!(v6.contains("ip6 daddr fd00:200::250:0/112 drop"), "{v6}");
        assert!(v6.contains("\tchain reject-chain {\n\t\tmeta l4proto tcp reject with tcp reset\n\t\treject\n\t}"));
        // Without IPv6 ClusterIPs, no ip6 table.
        assert!(!ruleset(&cluster(CLUSTER)).contains("table ip6"));
    }

    #[test]
    fn the_table_is_replaced_in_one_transaction_and_touches_only_the_masquerade_mark() {
        let script = ruleset(&cluster(CLUSTER));
        assert!(script.starts_with(
            "table ip palisade-kube-proxy\ndelete table ip palisade-kube-proxy\ntable ip palisade-kube-proxy {"
        ));
        let marks: Vec<&str> = script.lines().filter(|l| l.contains("mark")).map(str::trim).collect();
        assert_eq!(
            marks,
            [
                "chain mark-for-masquerade {",
                "meta mark set meta mark | 0x4000",
                "meta mark & 0x4000 == 0 return",
                "meta mark set meta mark ^ 0x4000",
                "ip saddr 10.200.1.10 jump mark-for-masquerade",
                "ip saddr 10.200.1.11 jump mark-for-masquerade",
            ]
        );
    }
}
