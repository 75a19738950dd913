//! The cluster file's Services in local mode: ClusterIPs come from one range, which the node
//! namespace routes and [`crate::kube_proxy`] translates.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use palisade_policy::Cluster;
use palisade_policy::cluster::{Service, ServicePort};
use palisade_policy::model::Protocol;

use crate::IpFamily;
use crate::probe::Port;

/// Local mode's Service range: every ClusterIP must be in it (like a cluster's
/// `--service-cluster-ip-range`), inside the test network so no packet to one leaves the machine.
pub const SERVICE_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 200, 250, 0), 24);

/// Local mode's IPv6 Service range, inside its IPv6 pod network `fd00:200::/64`.
pub const SERVICE_RANGE_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0x250, 0), 112);

/// `10.200.250.0/24`.
pub fn service_range() -> String {
    format!("{}/{}", SERVICE_RANGE.0, SERVICE_RANGE.1)
}

/// `fd00:200::250:0/112`.
pub fn service_range_v6() -> String {
    format!("{}/{}", SERVICE_RANGE_V6.0, SERVICE_RANGE_V6.1)
}

/// The Service range of `family`.
pub fn service_range_of(family: IpFamily) -> String {
    match family {
        IpFamily::IPv4 => service_range(),
        IpFamily::IPv6 => service_range_v6(),
    }
}

pub fn in_service_range(address: Ipv4Addr) -> bool {
    let (network, len) = SERVICE_RANGE;
    u32::from(address) >> (32 - len) == u32::from(network) >> (32 - len)
}

pub fn in_service_range_v6(address: Ipv6Addr) -> bool {
    let (network, len) = SERVICE_RANGE_V6;
    u128::from(address) >> (128 - len) == u128::from(network) >> (128 - len)
}

/// A ClusterIP local mode cannot translate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutsideServiceRange {
    /// `namespace/name`.
    pub service: String,
    pub cluster_ip: IpAddr,
}

impl std::fmt::Display for OutsideServiceRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Service {}: its ClusterIP {} is outside {}: local mode translates ClusterIPs only from that range",
            self.service,
            self.cluster_ip,
            service_range_of(IpFamily::of(self.cluster_ip))
        )
    }
}

/// Every ClusterIP outside [`SERVICE_RANGE`], in file order. Headless Services (no ClusterIP) have
/// nothing to translate and pass.
pub fn check(cluster: &Cluster) -> Vec<OutsideServiceRange> {
    cluster
        .services
        .iter()
        .flat_map(|service| {
            outside(service).map(move |cluster_ip| OutsideServiceRange { service: service.key(), cluster_ip })
        })
        .collect()
}

/// The Service's ClusterIPs outside the range of their family.
fn outside(service: &Service) -> impl Iterator<Item = IpAddr> + '_ {
    service.cluster_ips.iter().copied().filter(|ip| match ip {
        IpAddr::V4(ip) => !in_service_range(*ip),
        IpAddr::V6(ip) => !in_service_range_v6(*ip),
    })
}

/// The ClusterIPs of `family` of a Service: kube-proxy translates each family to the backends'
/// addresses of that family.
pub fn cluster_ips(service: &Service, family: IpFamily) -> impl Iterator<Item = IpAddr> + '_ {
    service.cluster_ips.iter().copied().filter(move |ip| family.holds(*ip))
}

/// A Service as a destination: `NAMESPACE/NAME`, reached on `port` of its first ClusterIP of
/// `family`. The error says what is wrong with the Service or the port (no file: the caller
/// knows it).
pub fn resolve<'a>(
    cluster: &'a Cluster,
    key: &str,
    port: Port,
    family: IpFamily,
) -> Result<(IpAddr, &'a Service, &'a ServicePort), String> {
    let service = key
        .split_once('/')
        .and_then(|(namespace, name)| cluster.service(namespace, name))
        .ok_or_else(|| format!("no Service {key} (Services are svc/NAMESPACE/NAME)"))?;
    let ip = cluster_ips(service, family).next().ok_or_else(|| {
        if service.cluster_ips.is_empty() {
            format!("Service {key} is headless: it has no ClusterIP")
        } else {
            format!("Service {key} has no {family} ClusterIP (spec.clusterIPs)")
        }
    })?;
    let ports =
        || service.ports.iter().map(|p| format!("{}/{}", p.port, p.protocol.name())).collect::<Vec<_>>().join(", ");
    let (number, protocol) = match port {
        Port::Tcp(n) => (n, Protocol::TCP),
        Port::Udp(n) => (n, Protocol::UDP),
        Port::Icmp => return Err(format!("Service {key} is reached on one of its ports ({}), not with ICMP", ports())),
    };
    let service_port = service
        .port(number, protocol)
        .ok_or_else(|| format!("Service {key} has no port {port} (it has {})", ports()))?;
    Ok((ip, service, service_port))
}

#[cfg(test)]
mod tests {
    use palisade_policy::SourceFile;

    use super::*;

    #[test]
    fn cluster_ips_outside_the_range_are_reported_and_headless_services_pass() {
        let text = "apiVersion: v1
kind: List
items:
- kind: Service
  metadata: {name: api, namespace: shop}
  spec: {clusterIP: 10.200.250.10, ports: [{port: 80}]}
- kind: Service
  metadata: {name: db, namespace: shop}
  spec: {clusterIP: 10.96.0.10, ports: [{port: 5432}]}
- kind: Service
  metadata: {name: headless, namespace: shop}
  spec: {clusterIP: None, ports: [{port: 80}]}
";
        let cluster = Cluster::parse(&[SourceFile { name: "cluster.yaml", text }]).unwrap();
        let outside = check(&cluster);
        assert_eq!(
            outside,
            [OutsideServiceRange { service: "shop/db".into(), cluster_ip: Ipv4Addr::new(10, 96, 0, 10).into() }]
        );
        let at = |port| resolve(&cluster, "shop/api", port, IpFamily::IPv4).map(|(ip, _, p)| (ip, p.port));
        assert_eq!(at(Port::Tcp(80)), Ok((Ipv4Addr::new(10, 200, 250, 10).into(), 80)));
        let v6 = resolve(&cluster, "shop/api", Port::Tcp(80), IpFamily::IPv6).map(|_| ());
        assert_eq!(v6, Err("Service shop/api has no IPv6 ClusterIP (spec.clusterIPs)".into()));
        assert_eq!(at(Port::Udp(80)), Err("Service shop/api has no port 80/UDP (it has 80/TCP)".into()));
        assert_eq!(
            at(Port::Icmp),
            Err("Service shop/api is reached on one of its ports (80/TCP), not with ICMP".into())
        );
        let unknown = resolve(&cluster, "shop/nope", Port::Tcp(80), IpFamily::IPv4).map(|_| ());
        assert_eq!(unknown, Err("no Service shop/nope (Services are svc/NAMESPACE/NAME)".into()));
        let headless = resolve(&cluster, "shop/headless", Port::Tcp(80), IpFamily::IPv4).map(|_| ());
        assert_eq!(headless, Err("Service shop/headless is headless: it has no ClusterIP".into()));
        assert_eq!(
            outside[0].to_string(),
            "Service shop/db: its ClusterIP 10.96.0.10 is outside 10.200.250.0/24: local mode translates ClusterIPs only from that range"
        );
    }
}
