//! The cluster file's Services in local mode: ClusterIPs come from one range, which the node
//! namespace routes and [`crate::kube_proxy`] translates.
use std::net::Ipv4Addr;

use palisade_policy::Cluster;
use palisade_policy::cluster::Service;

/// Local mode's Service range: every ClusterIP must be in it (like a cluster's
/// `--service-cluster-ip-range`), inside the test network so no packet to one leaves the machine.
pub const SERVICE_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 200, 250, 0), 24);

/// `10.200.250.0/24`.
pub fn service_range() -> String {
    format!("{}/{}", SERVICE_RANGE.0, SERVICE_RANGE.1)
}

pub fn in_service_range(address: Ipv4Addr) -> bool {
    let (network, len) = SERVICE_RANGE;
    u32::from(address) >> (32 - len) == u32::from(network) >> (32 - len)
}

/// A ClusterIP local mode cannot translate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutsideServiceRange {
    /// `namespace/name`.
    pub service: String,
    pub cluster_ip: Ipv4Addr,
}

impl std::fmt::Display for OutsideServiceRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Service {}: its ClusterIP {} is outside {}: local mode translates ClusterIPs only from that range",
            self.service,
            self.cluster_ip,
            service_range()
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

fn outside(service: &Service) -> impl Iterator<Item = Ipv4Addr> + '_ {
    service.cluster_ips.iter().copied().filter(|ip| !in_service_range(*ip))
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
            [OutsideServiceRange { service: "shop/db".into(), cluster_ip: Ipv4Addr::new(10, 96, 0, 10) }]
        );
        assert_eq!(
            outside[0].to_string(),
            "Service shop/db: its ClusterIP 10.96.0.10 is outside 10.200.250.0/24: local mode translates ClusterIPs only from that range"
        );
    }
}
