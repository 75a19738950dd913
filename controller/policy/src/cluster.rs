//! The cluster a policy set is evaluated against: what `kubectl get
//! namespaces,pods,nodes,services,endpointslices -A -o yaml` prints (a `List`), or the same objects
//! as multi-document YAML. Only the fields policy depends on are read.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;

use crate::diag::{Diagnostic, Severity};
use crate::labels::{LabelSet, Source};
use crate::model::{Protocol, ServiceRef};
use crate::parse::SourceFile;
use crate::yaml::{self, Limits};

#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    pub services: Vec<Service>,
    /// EndpointSlices: those of the `default/kubernetes` Service are the API server's addresses
    /// (see [`Cluster::apiserver_addresses`]); those of other Services without a selector are
    /// their backends (`toServices`, see [`Cluster::selectorless_service_addresses`]).
    pub endpoint_slices: Vec<EndpointSlice>,
    /// DNS answers seen: each name (lower case, no root dot) and the addresses (A and AAAA) it
    /// resolved to. `toFQDNs` selects the /32 and /128 CIDR identities of the addresses of the
    /// names it matches.
    pub dns_answers: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Pods of a cluster file annotated [`OUTSIDE_CLUSTER`]: hosts outside the cluster that local
    /// mode runs as namespaces. Their addresses are `world` (or a CIDR identity) to policy, so
    /// they are kept out of `pods`: no selector selects them and no endpoint is made for them.
    pub outside_hosts: Vec<Pod>,
}

/// `palisade.dev/outside-cluster: "true"` on a Pod of a cluster file: a host outside the cluster.
pub const OUTSIDE_CLUSTER: &str = "palisade.dev/outside-cluster";

#[derive(Clone, Debug, PartialEq)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub node_name: Option<String>,
    /// Every address of `status.podIPs` (`status.podIP` when that is absent), in the order the
    /// API server lists them: the first is the primary (`status.podIP`). A dual-stack pod has
    /// one of each family. See [`Pod::ipv4`] and [`Pod::ipv6`].
    pub ips: Vec<IpAddr>,
    /// Host-network pods share the node's identity and are not endpoints.
    pub host_network: bool,
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The pod's IPv4 address (the first, if the API listed several).
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.ips.iter().find_map(|ip| match ip {
            IpAddr::V4(ip) => Some(*ip),
            IpAddr::V6(_) => None,
        })
    }

    /// The pod's IPv6 address (the first, if the API listed several).
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.ips.iter().find_map(|ip| match ip {
            IpAddr::V6(ip) => Some(*ip),
            IpAddr::V4(_) => None,
        })
    }

    /// The primary address (`status.podIP`), of either family.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ips.first().copied()
    }

    /// The pod's address of the family of `like` (to answer a peer in its own family).
    pub fn ip_like(&self, like: IpAddr) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| ip.is_ipv4() == like.is_ipv4())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Every IP address in `status.addresses` (InternalIP, ExternalIP, ...), both families;
    /// hostnames left out.
    pub addresses: Vec<IpAddr>,
    /// The first IPv4 `InternalIP`: the address the node's own IPv4 traffic comes from.
    pub internal_ip: Option<Ipv4Addr>,
    /// The first IPv6 `InternalIP`: the address the node's own IPv6 traffic comes from.
    pub internal_ipv6: Option<Ipv6Addr>,
}

impl Node {
    /// The node's IPv4 addresses.
    pub fn ipv4_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.addresses.iter().filter_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `None` for a selectorless Service.
    pub selector: Option<BTreeMap<String, String>>,
    /// The ClusterIPs of both families (`spec.clusterIPs`, else `spec.clusterIP`); empty for a
    /// headless or ExternalName Service, which has no address of its own to translate.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
}

/// One of `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    /// Where on a backend the port goes: `targetPort`, by default the same number.
    pub target_port: TargetPort,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port's name, resolved on each backend pod.
    Name(String),
}

/// One backend of a Service port: an address and the port traffic to it is translated to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    /// An address of either family: a Service with ClusterIPs of both has backends of both.
    pub ip: IpAddr,
    pub port: u16,
    /// `namespace/name` of the pod at that address, when it is one.
    pub pod: Option<String>,
}

/// A `discovery.k8s.io/v1` EndpointSlice: the addresses of its ready endpoints.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Every address of every endpoint not marked `conditions.ready: false` (Kubernetes: an
    /// unset condition means ready): IPv4 for `addressType: IPv4`, IPv6 for `IPv6`, none for
    /// `FQDN`.
    pub addresses: Vec<IpAddr>,
    /// The slice's `ports`: each Service port's number on these endpoints, by port name.
    pub ports: Vec<ContainerPort>,
}

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages an EndpointSlice, and the value of the controller that derives
/// slices from Services' selectors (the ones an agent does not need: it has the pods).
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY_SELECTOR: &str = "endpointslice-controller.k8s.io";
/// The namespace and Service whose endpoints are the API server.
pub const APISERVER_SERVICE: (&str, &str) = ("default", "kubernetes");

impl EndpointSlice {
    /// An EndpointSlice as the API server serves it (JSON), e.g. from a watch.
    pub fn from_json(value: &serde_json::Value) -> Result<EndpointSlice, String> {
        let meta = match value.get("metadata") {
            Some(meta) => ObjectMeta::deserialize(meta).map_err(|e| format!("metadata: {e}"))?,
            None => ObjectMeta::default(),
        };
        EndpointSlice::from_parts(meta, &value["endpoints"], &value["ports"])
    }

    fn from_parts(
        meta: ObjectMeta,
        endpoints: &serde_json::Value,
        ports: &serde_json::Value,
    ) -> Result<EndpointSlice, String> {
        let addresses = endpoints
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["conditions"]["ready"].as_bool() != Some(false))
            .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
            // FQDN slices hold names, which do not parse: left out.
            .filter_map(|a| a.as_str()?.parse().ok())
            .collect();
        let mut slice_ports = Vec::new();
        for (i, port) in ports.as_array().into_iter().flatten().enumerate() {
            let at = || format!("endpointslice {}: ports[{i}]", meta.name);
            let number = port["port"].as_u64().and_then(|p| u16::try_from(p).ok()).filter(|&p| p > 0);
            // A port without a number means "all ports" (a slice for an ExternalName-like use).
            let Some(number) = number else { continue };
            let protocol = protocol(port["protocol"].as_str()).map_err(|e| format!("{}: {e}", at()))?;
            slice_ports.push(ContainerPort { name: port["name"].as_str().map(str::to_owned), port: number, protocol });
        }
        Ok(EndpointSlice {
            namespace: meta.namespace.unwrap_or_else(|| "default".into()),
            name: meta.name,
            labels: meta.labels,
            addresses,
            ports: slice_ports,
        })
    }

    /// The name of the Service this slice belongs to.
    pub fn service_name(&self) -> Option<&str> {
        self.labels.get(SERVICE_NAME_LABEL).map(String::as_str)
    }

    /// Whether this slice belongs to the `default/kubernetes` Service: the API server.
    pub fn is_apiserver(&self) -> bool {
        self.namespace == APISERVER_SERVICE.0
            && self.labels.get(SERVICE_NAME_LABEL).is_some_and(|s| s == APISERVER_SERVICE.1)
    }
}

#[derive(Deserialize)]
struct Object {
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: serde_json::Value,
    #[serde(default)]
    status: serde_json::Value,
    #[serde(default)]
    items: Vec<serde_json::Value>,
    /// An EndpointSlice's `endpoints` and `ports` (top-level, not under spec).
    #[serde(default)]
    endpoints: serde_json::Value,
    #[serde(default)]
    ports: serde_json::Value,
}

/// The part of an object's `metadata` that Palisade reads from cluster files.
#[derive(Deserialize, Default)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    service_account_name: Option<String>,
    node_name: Option<String>,
    #[serde(default)]
    host_network: bool,
    #[serde(default)]
    containers: Vec<Container>,
}

#[derive(Deserialize)]
struct Container {
    #[serde(default)]
    ports: Vec<RawPort>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPort {
    name: Option<String>,
    container_port: u16,
    protocol: Option<String>,
}

/// The parts of one object the conversions read; `kind` is not checked.
fn parts(value: &serde_json::Value) -> Result<(ObjectMeta, serde_json::Value, serde_json::Value), String> {
    let meta = match value.get("metadata") {
        Some(meta) => ObjectMeta::deserialize(meta).map_err(|e| format!("metadata: {e}"))?,
        None => ObjectMeta::default(),
    };
    let field = |name| value.get(name).cloned().unwrap_or_default();
    Ok((meta, field("spec"), field("status")))
}

impl Namespace {
    /// A Namespace as the API server serves it (JSON), e.g. from a watch.
    pub fn from_json(value: &serde_json::Value) -> Result<Namespace, String> {
        Ok(Namespace::from_parts(parts(value)?.0))
    }

    fn from_parts(meta: ObjectMeta) -> Namespace {
        Namespace { name: meta.name, labels: meta.labels }
    }
}

impl Pod {
    /// A Pod as the API server serves it (JSON), e.g. from a watch.
    pub fn from_json(value: &serde_json::Value) -> Result<Pod, String> {
        let (meta, spec, status) = parts(value)?;
        Pod::from_parts(meta, spec, &status)
    }

    fn from_parts(meta: ObjectMeta, spec: serde_json::Value, status: &serde_json::Value) -> Result<Pod, String> {
        let ObjectMeta { name, namespace, labels, .. } = meta;
        // A pod without a spec (hand-written cluster files) has no ports and the defaults.
        let spec: PodSpec = match spec {
            serde_json::Value::Null => PodSpec::default(),
            spec => serde_json::from_value(spec).map_err(|e| format!("pod {name}: spec: {e}"))?,
        };
        // `status.podIPs` lists every address, the primary (`status.podIP`) first; a hand-written
        // cluster file may give only `podIP`.
        let mut ips: Vec<IpAddr> = Vec::new();
        let listed = status.get("podIPs").and_then(|v| v.as_array()).into_iter().flatten().enumerate();
        let listed = listed.map(|(i, entry)| (format!("status.podIPs[{i}].ip"), entry.get("ip")));
        for (field, ip) in std::iter::once(("status.podIP".to_string(), status.get("podIP"))).chain(listed) {
            let Some(ip) = ip.and_then(|v| v.as_str()) else { continue };
            let ip: IpAddr = ip.parse().map_err(|_| format!("pod {name}: {field} {ip:?} is not an IP address"))?;
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        let mut ports = Vec::new();
        for port in spec.containers.iter().flat_map(|c| &c.ports) {
            let protocol = protocol(port.protocol.as_deref()).map_err(|e| format!("pod {name}: container port {e}"))?;
            ports.push(ContainerPort { name: port.name.clone(), port: port.container_port, protocol });
        }
        Ok(Pod {
            namespace: namespace.unwrap_or_else(|| "default".into()),
            name,
            labels,
            service_account: spec.service_account_name.unwrap_or_else(|| "default".into()),
            node_name: spec.node_name,
            ips,
            host_network: spec.host_network,
            ports,
        })
    }
}

impl Node {
    /// A Node as the API server serves it (JSON), e.g. from a watch.
    pub fn from_json(value: &serde_json::Value) -> Result<Node, String> {
        let (meta, _, status) = parts(value)?;
        Ok(Node::from_parts(meta, &status))
    }

    fn from_parts(meta: ObjectMeta, status: &serde_json::Value) -> Node {
        let listed = || status["addresses"].as_array().into_iter().flatten();
        let parse = |a: &serde_json::Value| a["address"].as_str()?.parse().ok();
        let addresses = listed().filter_map(parse).collect();
        let internal = || listed().filter(|a| a["type"] == "InternalIP").filter_map(parse);
        let internal_ip = internal().find_map(|a: IpAddr| match a {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        });
        let internal_ipv6 = internal().find_map(|a: IpAddr| match a {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        });
        Node { name: meta.name, labels: meta.labels, addresses, internal_ip, internal_ipv6 }
    }
}

/// A Kubernetes protocol name (TCP when unset).
fn protocol(name: Option<&str>) -> Result<Protocol, String> {
    match name {
        None | Some("TCP") => Ok(Protocol::TCP),
        Some("UDP") => Ok(Protocol::UDP),
        Some("SCTP") => Ok(Protocol::SCTP),
        Some(other) => Err(format!("protocol {other:?} (one of TCP, UDP, SCTP)")),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ServiceSpec {
    selector: Option<BTreeMap<String, String>>,
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs", default)]
    cluster_ips: Vec<String>,
    #[serde(default)]
    ports: Vec<RawServicePort>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawServicePort {
    name: Option<String>,
    port: u16,
    protocol: Option<String>,
    target_port: Option<serde_json::Value>,
}

impl Service {
    /// A Service as the API server serves it (JSON), e.g. from a watch.
    pub fn from_json(value: &serde_json::Value) -> Result<Service, String> {
        let (meta, spec, _) = parts(value)?;
        Service::from_parts(meta, spec)
    }

    fn from_parts(meta: ObjectMeta, spec: serde_json::Value) -> Result<Service, String> {
        let name = meta.name;
        let spec: ServiceSpec = match spec {
            serde_json::Value::Null => ServiceSpec::default(),
            spec => serde_json::from_value(spec).map_err(|e| format!("service {name}: spec: {e}"))?,
        };
        // An empty selector selects nothing on a Service (the API treats it as no selector).
        let selector = spec.selector.filter(|s| !s.is_empty());
        let listed = if spec.cluster_ips.is_empty() { spec.cluster_ip.into_iter().collect() } else { spec.cluster_ips };
        let mut cluster_ips = Vec::new();
        for ip in listed.iter().filter(|ip| !ip.is_empty() && *ip != "None") {
            match ip.parse::<IpAddr>() {
                Ok(ip) => cluster_ips.push(ip),
                Err(_) => return Err(format!("service {name}: spec.clusterIP {ip:?} is not an IP address")),
            }
        }
        let mut ports = Vec::new();
        for (i, raw) in spec.ports.iter().enumerate() {
            let at = || format!("service {name}: spec.ports[{i}]");
            let protocol = protocol(raw.protocol.as_deref()).map_err(|e| format!("{}: {e}", at()))?;
            let target_port = match &raw.target_port {
                None => TargetPort::Number(raw.port),
                Some(serde_json::Value::Number(n)) => TargetPort::Number(
                    n.as_u64()
                        .and_then(|n| u16::try_from(n).ok())
                        .filter(|&n| n > 0)
                        .ok_or_else(|| format!("{}: targetPort {n} is not a port number (1-65535)", at()))?,
                ),
                // A string of digits is a number too (the API server accepts "8080").
                Some(serde_json::Value::String(s)) => match s.parse::<u16>() {
                    Ok(n) if n > 0 => TargetPort::Number(n),
                    _ if !s.is_empty() => TargetPort::Name(s.clone()),
                    _ => return Err(format!("{}: targetPort is empty", at())),
                },
                Some(other) => return Err(format!("{}: targetPort {other} is neither a number nor a name", at())),
            };
            if raw.port == 0 {
                return Err(format!("{}: port 0 is not a port", at()));
            }
            ports.push(ServicePort { name: raw.name.clone(), port: raw.port, protocol, target_port });
        }
        Ok(Service {
            namespace: meta.namespace.unwrap_or_else(|| "default".into()),
            name,
            labels: meta.labels,
            selector,
            cluster_ips,
            ports,
        })
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The port the Service exposes as `port`/`protocol`.
    pub fn port(&self, port: u16, protocol: Protocol) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port && p.protocol == protocol)
    }

    /// Whether `toServices` entry `by` names this Service: by name, or by a selector on its labels.
    pub fn named_by(&self, by: &ServiceRef) -> bool {
        match by {
            ServiceRef::Name { namespace, name } => &self.namespace == namespace && &self.name == name,
            ServiceRef::Selector { namespace, selector } => {
                let mut labels = LabelSet::default();
                for (k, v) in &self.labels {
                    labels.insert(Source::K8s, k.clone(), v.clone());
                }
                labels.insert(Source::K8s, crate::labels::NAMESPACE_KEY, self.namespace.clone());
                namespace.as_ref().is_none_or(|ns| ns == &self.namespace) && selector.matches(&labels)
            }
        }
    }

    /// Whether the Service's selector selects `pod` (host-network pods too: they are backends
    /// at their node's address).
    pub fn selects(&self, pod: &Pod) -> bool {
        self.selector.as_ref().is_some_and(|selector| {
            pod.namespace == self.namespace && selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
        })
    }
}

impl ServicePort {
    /// The port number this Service port reaches on `pod`: the target number, or the number of
    /// the pod's container port of the target name (none when the pod has no such port, as the
    /// EndpointSlice controller leaves such a pod out).
    pub fn target_on(&self, pod: &Pod) -> Option<u16> {
        match &self.target_port {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => pod
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol == self.protocol)
                .map(|p| p.port),
        }
    }
}

/// Whether a Pod's metadata marks it [`OUTSIDE_CLUSTER`].
fn outside_cluster(meta: &ObjectMeta) -> Result<bool, String> {
    match meta.annotations.get(OUTSIDE_CLUSTER) {
        None => Ok(false),
        Some(value) => match value.as_str() {
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            _ => Err(format!(
                "pod {}: metadata.annotations[\"{OUTSIDE_CLUSTER}\"]: {value} is not \"true\" or \"false\"",
                meta.name
            )),
        },
    }
}

impl Cluster {
    pub fn parse(files: &[SourceFile]) -> Result<Cluster, Vec<Diagnostic>> {
        let mut cluster = Cluster::default();
        let mut errors = Vec::new();
        for file in files {
            let fail = |line: u32, message: String| Diagnostic {
                severity: Severity::Error,
                file: file.name.to_string(),
                line,
                path: String::new(),
                message,
            };
            match yaml::parse_documents(file.text, &Limits::default()) {
                Ok(docs) => {
                    for doc in &docs {
                        cluster.add_node(doc, &mut |line, message| errors.push(fail(line, message)));
                    }
                }
                Err(e) => errors.push(fail(e.line, e.message)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        cluster.complete();
        Ok(cluster)
    }

    /// Adds one document, or each item of a `List` document, so that an error names the line of
    /// the object it is about.
    fn add_node(&mut self, node: &yaml::Node, fail: &mut dyn FnMut(u32, String)) {
        let key = |name: &str| node.get(&[yaml::PathSegment::Key(name.into())]).map(|n| &n.value);
        if let (Some(yaml::Value::String(kind)), Some(yaml::Value::Seq(items))) = (key("kind"), key("items"))
            && kind == "List"
        {
            for item in items {
                self.add_node(item, fail);
            }
            return;
        }
        if let Err(message) = self.add(node.to_json()) {
            fail(node.line, message);
        }
    }

    fn add(&mut self, value: serde_json::Value) -> Result<(), String> {
        let object: Object = serde_json::from_value(value).map_err(|e| format!("not a Kubernetes object: {e}"))?;
        match object.kind.as_str() {
            "List" => {
                for item in object.items {
                    self.add(item)?;
                }
            }
            "Namespace" => {
                let namespace = Namespace::from_parts(object.metadata);
                self.namespaces.insert(namespace.name.clone(), namespace);
            }
            "Pod" => {
                let outside = outside_cluster(&object.metadata)?;
                let pod = Pod::from_parts(object.metadata, object.spec, &object.status)?;
                if outside { self.outside_hosts.push(pod) } else { self.pods.push(pod) }
            }
            "Node" => self.nodes.push(Node::from_parts(object.metadata, &object.status)),
            "Service" => self.services.push(Service::from_parts(object.metadata, object.spec)?),
            "EndpointSlice" => {
                self.endpoint_slices.push(EndpointSlice::from_parts(object.metadata, &object.endpoints, &object.ports)?)
            }
            // Anything else in a `kubectl get` dump says nothing about policy.
            _ => {}
        }
        Ok(())
    }

    /// Namespaces referenced by pods exist even when not listed, and every namespace carries
    /// `kubernetes.io/metadata.name` as the API server sets it.
    fn complete(&mut self) {
        for pod in &self.pods {
            self.namespaces
                .entry(pod.namespace.clone())
                .or_insert_with(|| Namespace { name: pod.namespace.clone(), labels: BTreeMap::new() });
        }
        for ns in self.namespaces.values_mut() {
            ns.labels.entry("kubernetes.io/metadata.name".into()).or_insert_with(|| ns.name.clone());
        }
        for pods in [&mut self.pods, &mut self.outside_hosts] {
            pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        }
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.namespace == namespace && p.name == name)
    }

    /// The API server's addresses: those of the `default/kubernetes` Service's EndpointSlices.
    pub fn apiserver_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.endpoint_slices.iter().filter(|s| s.is_apiserver()).flat_map(|s| s.addresses.iter().copied())
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.namespace == namespace && s.name == name)
    }

    /// The backends of one port of `service`, as kube-proxy would program them: for a Service
    /// with a selector, the selected pods that have an IP and the target port (what the
    /// EndpointSlice controller publishes); for one without, the addresses of its EndpointSlices
    /// with the slice port of the same name (Services pointing outside the cluster).
    pub fn backends(&self, service: &Service, port: &ServicePort) -> Vec<Backend> {
        let pod_at = |ip: IpAddr| self.pods.iter().find(|p| p.ips.contains(&ip)).map(Pod::key);
        // A Service has backends in the families of its ClusterIPs (a headless one in every
        // family its pods have), as kube-proxy programs one set per family.
        let family = |ip: &IpAddr| {
            service.cluster_ips.is_empty() || service.cluster_ips.iter().any(|c| c.is_ipv4() == ip.is_ipv4())
        };
        let mut backends: Vec<Backend> = if service.selector.is_some() {
            self.pods
                .iter()
                .filter(|pod| service.selects(pod))
                .filter_map(|pod| {
                    let port = port.target_on(pod)?;
                    let ips = pod.ips.iter().filter(|ip| family(ip));
                    Some(ips.map(move |&ip| Backend { ip, port, pod: Some(pod.key()) }))
                })
                .flatten()
                .collect()
        } else {
            self.slices_of(service)
                .filter_map(|slice| {
                    let number = slice.ports.iter().find(|p| p.name == port.name && p.protocol == port.protocol)?.port;
                    Some(slice.addresses.iter().map(move |&ip| (ip, number)))
                })
                .flatten()
                .map(|(ip, number)| Backend { ip, port: number, pod: pod_at(ip) })
                .collect()
        };
        backends.sort();
        backends.dedup();
        backends
    }

    /// The EndpointSlices of `service`.
    pub fn slices_of<'a>(&'a self, service: &'a Service) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        self.endpoint_slices
            .iter()
            .filter(|s| s.namespace == service.namespace && s.service_name() == Some(service.name.as_str()))
    }

    /// The ready endpoint addresses of every Service without a selector, `default/kubernetes`
    /// left out (its addresses are the API server's): the addresses `toServices` can name
    /// outside the pods.
    /// The addresses whose /32 CIDR identities are held whether a policy names them or not:
    /// the backends of Services without a selector and the addresses of DNS answers.
    pub fn held_addresses(&self) -> BTreeSet<IpAddr> {
        let mut addresses = self.selectorless_service_addresses();
        addresses.extend(self.dns_answers.values().flatten());
        addresses
    }

    pub fn selectorless_service_addresses(&self) -> BTreeSet<IpAddr> {
        self.services
            .iter()
            .filter(|s| s.selector.is_none() && (s.namespace.as_str(), s.name.as_str()) != APISERVER_SERVICE)
            .flat_map(|s| self.slices_of(s))
            .flat_map(|slice| slice.addresses.iter().copied())
            .collect()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The node most endpoints with an IPv4 address run on (on a tie the first name): the node a
    /// cluster file is about when nothing names one (local mode runs every pod there).
    pub fn main_node(&self) -> Option<&str> {
        let mut pods_on: BTreeMap<&str, usize> = BTreeMap::new();
        for node in self.endpoints().filter(|p| p.ipv4().is_some()).filter_map(|p| p.node_name.as_deref()) {
            *pods_on.entry(node).or_default() += 1;
        }
        // max_by_key keeps the last maximum, hence the reversed iteration.
        pods_on.into_iter().rev().max_by_key(|(_, n)| *n).map(|(name, _)| name)
    }

    /// Pods that are Palisade endpoints (not host-network).
    pub fn endpoints(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter().filter(|p| !p.host_network)
    }
}
