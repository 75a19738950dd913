//! The state directory of `palisade local up`: the cluster it was started with and the responder
//! process, so that `down`, `probe` and `run` find what `up` made.
//!
//! Files: `local.json` (the cluster file's path and the namespace prefix), `cluster.yaml` (the
//! cluster file's content when `up` ran), `responders.pid` (pid and start time, so a reused pid is
//! never signalled) and `responders.log`.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_policy::{Cluster, SourceFile, yaml};
use serde::{Deserialize, Serialize};

use crate::annotations;
use crate::error::{Error, NodeAddressError, Result};
use crate::net::{LocalNetwork, LocalNode};
use crate::services;
use crate::traffic::{Talk, read_talks};

/// Where the CLI keeps its state: under /run, so a reboot (which also drops the namespaces)
/// clears it.
pub const DEFAULT_STATE_DIR: &str = "/run/palisade-local";
/// The CLI's namespace prefix.
pub const DEFAULT_PREFIX: &str = "pal-";

const RECORD: &str = "local.json";
const CLUSTER: &str = "cluster.yaml";
const PID: &str = "responders.pid";
const LOG: &str = "responders.log";

/// A cluster file read and checked for local mode: the cluster, its network and its flows.
#[derive(Clone, Debug)]
pub struct Local {
    /// The cluster file as given to `up`.
    pub cluster_file: PathBuf,
    pub cluster: Cluster,
    pub network: LocalNetwork,
    pub talks: Vec<Talk>,
}

impl Local {
    pub fn read(cluster_file: &Path, prefix: &str) -> Result<Local> {
        let text = read(cluster_file)?;
        Local::parse(cluster_file, &text, prefix)
    }

    /// `text` is the content of `cluster_file`; errors name that file.
    pub fn parse(cluster_file: &Path, text: &str, prefix: &str) -> Result<Local> {
        let name = cluster_file.display().to_string();
        let cluster = Cluster::parse(&[SourceFile { name: &name, text }])
            .map_err(|errors| Error::Cluster(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))?;
        let node = LocalNode::choose(&cluster).map_err(|e| locate(&name, text, e))?;
        let mut network =
            LocalNetwork::plan_on(&cluster, prefix, node).map_err(|e| Error::Cluster(format!("{name}: {e}")))?;
        check_services(&name, text, &cluster)?;
        annotations::read_serving(&name, text, &mut network)?;
        let talks = read_talks(&name, text, &cluster, &network)?;
        Ok(Local { cluster_file: cluster_file.to_owned(), cluster, network, talks })
    }

    /// The cluster model local mode compiles: the file's, with the local node in it (added when
    /// the file has no Node for it), so that its address is `host`.
    pub fn cluster_with_node(&self) -> Cluster {
        let mut cluster = self.cluster.clone();
        self.network.node().add_to(&mut cluster);
        cluster
    }
}

/// The error with the file, line and field it is about.
fn locate(file: &str, text: &str, error: NodeAddressError) -> Error {
    let NodeAddressError::OutsideRange { node, address } = &error;
    let field = find_field(text, |object| {
        if object["kind"] != "Node" || object["metadata"]["name"] != node.as_str() {
            return None;
        }
        let i = object["status"]["addresses"].as_array()?.iter().position(|a| {
            a["type"] == "InternalIP" && a["address"].as_str().and_then(|s| s.parse().ok()) == Some(*address)
        })?;
        Some(format!("status.addresses[{i}].address"))
    });
    at_field(file, field, &error)
}

/// Refuses a cluster whose Services have ClusterIPs outside [`SERVICE_RANGE`](crate::services::SERVICE_RANGE),
/// naming the file, line and field of each.
fn check_services(file: &str, text: &str, cluster: &Cluster) -> Result<()> {
    let errors: Vec<String> = services::check(cluster)
        .iter()
        .map(|outside| {
            let field = find_field(text, |object| {
                let meta = &object["metadata"];
                let namespace = meta["namespace"].as_str().unwrap_or("default");
                if object["kind"] != "Service" || format!("{namespace}/{}", meta["name"].as_str()?) != outside.service {
                    return None;
                }
                // `spec.clusterIPs` wins over `spec.clusterIP` when both are there, as in the parser.
                let listed = object["spec"]["clusterIPs"].as_array().filter(|ips| !ips.is_empty());
                Some(match listed {
                    Some(ips) => {
                        let i = ips.iter().position(|ip| ip.as_str() == Some(&outside.cluster_ip.to_string()))?;
                        format!("spec.clusterIPs[{i}]")
                    }
                    None => "spec.clusterIP".to_owned(),
                })
            });
            at_field(file, field, outside).to_string()
        })
        .collect();
    if errors.is_empty() { Ok(()) } else { Err(Error::Cluster(errors.join("\n"))) }
}

/// `error` prefixed with the file, and the line and field path when known.
fn at_field(file: &str, field: Option<(u32, String)>, error: &dyn std::fmt::Display) -> Error {
    match field {
        Some((line, field)) => Error::Cluster(format!("{file}:{line}: {field}: {error}")),
        None => Error::Cluster(format!("{file}: {error}")),
    }
}

/// The line and full field path of the first object (also inside a `List`) for which `field`
/// names a field, given the object as JSON.
fn find_field(text: &str, field: impl Fn(&serde_json::Value) -> Option<String>) -> Option<(u32, String)> {
    fn find(
        node: &yaml::Node,
        path: &str,
        field: &dyn Fn(&serde_json::Value) -> Option<String>,
    ) -> Option<(u32, String)> {
        let object = node.to_json();
        if object["kind"] == "List" {
            let items = object["items"].as_array()?;
            return (0..items.len()).find_map(|i| {
                let item = node.get(&yaml::parse_path(&format!("items[{i}]")))?;
                find(item, &format!("{path}items[{i}]."), field)
            });
        }
        let name = field(&object)?;
        Some((node.line_of(&yaml::parse_path(&name)), format!("{path}{name}")))
    }
    let documents = yaml::parse_documents(text, &yaml::Limits::default()).ok()?;
    documents.iter().find_map(|d| find(d, "", &field))
}

#[derive(Serialize, Deserialize)]
struct Record {
    cluster_file: PathBuf,
    prefix: String,
}

/// A state directory; nothing is read or created until asked.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> StateDir {
        StateDir { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join(LOG)
    }

    /// The cluster `up` was started with, as it was then (a later edit of the file does not
    /// change the running namespaces).
    pub fn load(&self) -> Result<Local> {
        let record = self.record()?.ok_or_else(|| Error::NotUp(self.dir.clone()))?;
        let text = read(&self.dir.join(CLUSTER))?;
        Local::parse(&record.cluster_file, &text, &record.prefix)
    }

    /// The prefix of the namespaces `up` made, or the CLI's when nothing is recorded.
    pub fn prefix(&self) -> Result<String> {
        Ok(self.recorded_prefix()?.unwrap_or_else(|| DEFAULT_PREFIX.to_owned()))
    }

    /// The prefix `up` recorded, if it did.
    pub fn recorded_prefix(&self) -> Result<Option<String>> {
        Ok(self.record()?.map(|r| r.prefix))
    }

    fn record(&self) -> Result<Option<Record>> {
        let path = self.dir.join(RECORD);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::State { path: path.clone(), problem: e.to_string() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        }
    }

    pub(crate) fn save(&self, local: &Local, text: &str) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| Error::io(format!("create {}", self.dir.display()), e))?;
        let cluster_file = fs::canonicalize(&local.cluster_file).unwrap_or_else(|_| local.cluster_file.clone());
        let record = Record { cluster_file, prefix: local.network.prefix().to_owned() };
        write_atomically(&self.dir.join(CLUSTER), text.as_bytes())?;
        let record = serde_json::to_vec_pretty(&record).expect("a path and a string serialize");
        write_atomically(&self.dir.join(RECORD), &record)
    }

    /// Removes the files this module writes, and the directory if that empties it.
    pub(crate) fn clear(&self) -> Result<()> {
        for name in [RECORD, CLUSTER, PID, LOG] {
            remove(&self.dir.join(name))?;
        }
        let _ = fs::remove_dir(&self.dir);
        Ok(())
    }

    /// Called by the responder process once it serves: the readiness signal `up` waits for.
    pub(crate) fn write_pid(&self) -> Result<()> {
        let pid = std::process::id();
        let start = start_time(pid).ok_or_else(|| Error::State {
            path: format!("/proc/{pid}/stat").into(),
            problem: "no start time for this process".into(),
        })?;
        write_atomically(&self.dir.join(PID), format!("{pid} {start}\n").as_bytes())
    }

    pub(crate) fn remove_pid(&self) -> Result<()> {
        remove(&self.dir.join(PID))
    }

    /// The pid of the responder process if it is still the process that wrote the pid file.
    pub fn responders_pid(&self) -> Result<Option<u32>> {
        let path = self.dir.join(PID);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
        };
        let parsed =
            text.split_once(' ').and_then(|(pid, start)| Some((pid.parse().ok()?, start.trim().parse().ok()?)));
        let Some((pid, start)) = parsed else {
            return Err(Error::State { path, problem: format!("not \"PID START_TIME\": {text:?}") });
        };
        Ok((alive(pid) && start_time(pid) == Some(start)).then_some(pid))
    }

    /// Stops the responder process, if one is running: SIGTERM, then SIGKILL after two seconds.
    pub(crate) fn stop_responders(&self) -> Result<()> {
        if let Some(pid) = self.responders_pid()? {
            let process = rustix::process::Pid::from_raw(pid as i32)
                .ok_or_else(|| Error::State { path: self.dir.join(PID), problem: "pid 0".into() })?;
            for signal in [rustix::process::Signal::TERM, rustix::process::Signal::KILL] {
                match rustix::process::kill_process(process, signal) {
                    Err(rustix::io::Errno::SRCH) => break,
                    Err(e) => return Err(Error::io(format!("signal the responder process {pid}"), e.into())),
                    Ok(()) => {}
                }
                if wait_for(Duration::from_secs(2), || !alive(pid)) {
                    break;
                }
            }
            if alive(pid) {
                return Err(Error::Responders(format!("the responder process {pid} is still running after SIGKILL")));
            }
        }
        self.remove_pid()
    }
}

/// Writes through a temporary file and a rename, so readers never see half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let temporary = path.with_extension("tmp");
    fs::write(&temporary, bytes).map_err(|e| Error::io(format!("write {}", temporary.display()), e))?;
    fs::rename(&temporary, path).map_err(|e| Error::io(format!("write {}", path.display()), e))
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io(format!("read {}", path.display()), e))
}

/// Removes a file; one that is not there is no error.
fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(format!("remove {}", path.display()), e)),
        _ => Ok(()),
    }
}

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields.first() != Some(&"Z".to_owned()))
}

/// Start time in clock ticks since boot: with the pid, names one process for good.
fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// The fields of /proc/PID/stat after the command name (state first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything, including ") ".
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Polls `done` every 10 ms until it holds or `limit` passes.
pub(crate) fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use palisade_policy::model::Protocol;

    use super::*;
    use crate::IpFamily;
    use crate::net::{DEFAULT_NODE_ADDRESS, DEFAULT_NODE_ADDRESS_V6, LocalNode};

    const PODS: &str = "apiVersion: v1
kind: List
items:
- kind: Pod
  metadata: {name: a, namespace: shop}
  spec: {nodeName: node-b}
  status: {podIP: 10.200.1.1}
- kind: Pod
  metadata: {name: b, namespace: shop}
  spec: {nodeName: node-a}
  status: {podIP: 10.200.1.2}
- kind: Pod
  metadata: {name: c, namespace: shop}
  spec: {nodeName: node-b}
  status: {podIP: 10.200.1.3}
";

    fn local(text: &str) -> Result<Local> {
        Local::parse(Path::new("cluster.yaml"), text, "t-")
    }

    fn node(name: &str, address: &str) -> String {
        format!(
            "- kind: Node\n  metadata: {{name: {name}}}\n  status:\n    addresses:\n    - {{type: Hostname, address: {name}}}\n    - {{type: InternalIP, address: {address}}}\n"
        )
    }

    #[test]
    fn the_local_node_is_where_most_pods_are_with_its_internal_ip() {
        // No Node in the file: the default address, and the node joins the cluster model.
        let l = local(PODS).unwrap();
        let expected = LocalNode {
            name: "node-b".into(),
            address: DEFAULT_NODE_ADDRESS,
            ipv6: None,
            ipv6_outside_range: None,
            declared: false,
            ports: vec![],
        };
        assert_eq!(*l.network.node(), expected);
        let cluster = l.cluster_with_node();
        let added = cluster.node("node-b").expect("added to the model");
        assert_eq!(
            (added.addresses.as_slice(), added.internal_ip),
            ([DEFAULT_NODE_ADDRESS.into()].as_slice(), Some(DEFAULT_NODE_ADDRESS))
        );
        assert!(l.cluster.node("node-b").is_none(), "the file's cluster stays as written");

        // The file's Node: its InternalIP.
        let l = local(&format!("{PODS}{}{}", node("node-a", "10.200.0.11"), node("node-b", "10.200.0.12"))).unwrap();
        let expected = LocalNode {
            name: "node-b".into(),
            address: Ipv4Addr::new(10, 200, 0, 12),
            ipv6: None,
            ipv6_outside_range: None,
            declared: true,
            ports: vec![],
        };
        assert_eq!(*l.network.node(), expected);
        assert_eq!(l.cluster_with_node().nodes, l.cluster.nodes, "nothing to add");

        // No pod names a node: `local`. A tie: the first name.
        let l = local("kind: Pod\nmetadata: {name: a, namespace: shop}\nstatus: {podIP: 10.200.1.1}\n").unwrap();
        assert_eq!(l.network.node().name, "local");
        let tie = PODS.replace(
            "nodeName: node-b}\n  status: {podIP: 10.200.1.3}",
            "nodeName: node-a}\n  status: {podIP: 10.200.1.3}",
        );
        assert_eq!(local(&tie).unwrap().network.node().name, "node-a");
    }

    #[test]
    fn the_node_answers_on_the_ports_of_its_host_network_pods() {
        let daemons = "- kind: Pod\n  metadata: {name: exporter, namespace: monitoring}\n  spec:\n    nodeName: node-b\n    hostNetwork: true\n    containers:\n    - name: exporter\n      ports: [{containerPort: 9100}, {containerPort: 8125, protocol: UDP}]\n  status: {podIP: 10.200.0.12}\n- kind: Pod\n  metadata: {name: elsewhere, namespace: monitoring}\n  spec:\n    nodeName: node-a\n    hostNetwork: true\n    containers:\n    - name: exporter\n      ports: [{containerPort: 22}]\n  status: {podIP: 10.200.0.11}\n";
        let l = local(&format!("{PODS}{daemons}")).unwrap();
        let ports: Vec<(u16, Protocol)> = l.network.node().ports.iter().map(|p| (p.port, p.protocol)).collect();
        assert_eq!(ports, [(8125, Protocol::UDP), (9100, Protocol::TCP)], "node-b's daemon, not node-a's");
        assert!(l.network.pod("monitoring/exporter").is_none(), "a host-network pod has no namespace of its own");
    }

    #[test]
    fn a_node_address_outside_the_test_range_is_refused_naming_file_line_and_field() {
        let text = format!("{PODS}{}", node("node-b", "192.168.1.5"));
        let error = format!("{:#}", local(&text).unwrap_err());
        assert_eq!(
            error,
            "cluster.yaml:21: items[3].status.addresses[1].address: Node node-b: its InternalIP 192.168.1.5 is outside 10.200.0.0/16: local mode puts addresses only from that range on interfaces"
        );
        // A pod at the node's address.
        let text = format!("{PODS}{}", node("node-b", "10.200.1.2"));
        let error = format!("{:#}", local(&text).unwrap_err());
        assert!(
            error.contains("pod shop/b has podIP 10.200.1.2, the address of the node namespace (node node-b)"),
            "{error}"
        );
        // A pod outside the range.
        let error = format!("{:#}", local(&PODS.replace("10.200.1.3", "10.9.0.3")).unwrap_err());
        assert!(error.contains("pod shop/c: status.podIP 10.9.0.3 is outside 10.200.0.0/16"), "{error}");
    }

    /// PODS with both families on pods a and c (b stays IPv4 only).
    fn dual_stack_pods() -> String {
        PODS.replace(
            "status: {podIP: 10.200.1.1}",
            "status: {podIP: 10.200.1.1, podIPs: [{ip: 10.200.1.1}, {ip: \"fd00:200::1:1\"}]}",
        )
        .replace(
            "status: {podIP: 10.200.1.3}",
            "status: {podIP: 10.200.1.3, podIPs: [{ip: 10.200.1.3}, {ip: \"fd00:200::1:3\"}]}",
        )
    }

    fn dual_node(name: &str, address: &str, ipv6: &str) -> String {
        format!(
            "- kind: Node\n  metadata: {{name: {name}}}\n  status:\n    addresses:\n    - {{type: InternalIP, address: {address}}}\n    - {{type: InternalIP, address: \"{ipv6}\"}}\n"
        )
    }

    #[test]
    fn dual_stack_pods_get_both_addresses_and_the_node_an_ipv6_one() {
        let l = local(&dual_stack_pods()).unwrap();
        let (a, b) = (l.network.pod("shop/a").unwrap(), l.network.pod("shop/b").unwrap());
        assert_eq!((a.ip, a.ipv6), (Ipv4Addr::new(10, 200, 1, 1), Some("fd00:200::1:1".parse().unwrap())));
        assert_eq!(a.address(IpFamily::IPv6), Some("fd00:200::1:1".parse().unwrap()));
        assert_eq!((b.ipv6, b.address(IpFamily::IPv6)), (None, None), "an IPv4-only pod stays IPv4 only");
        // No Node in the file: the default IPv6 address, in the model too.
        assert_eq!(l.network.node().ipv6, Some(DEFAULT_NODE_ADDRESS_V6));
        let cluster = l.cluster_with_node();
        let added = cluster.node("node-b").unwrap();
        assert_eq!(added.internal_ipv6, Some(DEFAULT_NODE_ADDRESS_V6));
        assert!(added.addresses.contains(&DEFAULT_NODE_ADDRESS_V6.into()), "{:?}", added.addresses);
        // The Node's IPv6 InternalIP.
        let l = local(&format!("{}{}", dual_stack_pods(), dual_node("node-b", "10.200.0.12", "fd00:200::12"))).unwrap();
        let ipv6: Ipv6Addr = "fd00:200::12".parse().unwrap();
        assert_eq!(l.network.node().ipv6, Some(ipv6));
        assert_eq!(l.network.node().address_of(IpFamily::IPv6), Some(ipv6.into()));
        assert_eq!(l.cluster_with_node().nodes, l.cluster.nodes, "nothing to add");
        // A declared Node with an IPv4 InternalIP only gets the default IPv6 one in the model.
        let l = local(&format!("{}{}", dual_stack_pods(), node("node-b", "10.200.0.12"))).unwrap();
        let model = l.cluster_with_node();
        let node_b = model.node("node-b").unwrap();
        assert_eq!(
            (node_b.internal_ip, node_b.internal_ipv6),
            (Some(Ipv4Addr::new(10, 200, 0, 12)), Some(DEFAULT_NODE_ADDRESS_V6))
        );
        // Without IPv6 pods the node namespace has no IPv6 address.
        assert_eq!(local(PODS).unwrap().network.node().address_of(IpFamily::IPv6), None);
    }

    #[test]
    fn ipv6_addresses_outside_the_range_are_refused_naming_the_pod_or_node_and_field() {
        // A pod's IPv6 address outside fd00:200::/64.
        let error = format!("{:#}", local(&dual_stack_pods().replace("fd00:200::1:3", "fd01::3")).unwrap_err());
        assert_eq!(
            error,
            "cluster.yaml: pod shop/c: status.podIPs[1] fd01::3 is outside fd00:200::/64: local mode puts IPv6 addresses only from that range on interfaces"
        );
        // In the IPv6 Service range.
        let error = format!("{:#}", local(&dual_stack_pods().replace("fd00:200::1:3", "fd00:200::250:3")).unwrap_err());
        assert!(
            error.contains(
                "pod shop/c: status.podIPs[1] fd00:200::250:3 is in the IPv6 Service range fd00:200::250:0/112"
            ),
            "{error}"
        );
        // Two pods with one IPv6 address.
        let error = format!("{:#}", local(&dual_stack_pods().replace("fd00:200::1:3", "fd00:200::1:1")).unwrap_err());
        assert!(error.contains("pods shop/a and shop/c both have podIP fd00:200::1:1"), "{error}");
        // At the node's IPv6 address.
        let text = format!("{}{}", dual_stack_pods(), dual_node("node-b", "10.200.0.12", "fd00:200::1:1"));
        let error = format!("{:#}", local(&text).unwrap_err());
        assert!(
            error.contains(
                "pod shop/a: status.podIPs[1] fd00:200::1:1 is the IPv6 address of the node namespace (node node-b)"
            ),
            "{error}"
        );
        // The Node's IPv6 InternalIP outside the range: the node namespace has fd00:200::1 in its
        // place, which the model makes the Node's IPv6 InternalIP (its own traffic is `host`).
        let text = format!("{}{}", dual_stack_pods(), dual_node("node-b", "10.200.0.12", "2001:db8::5"));
        let l = local(&text).unwrap();
        let outside: Ipv6Addr = "2001:db8::5".parse().unwrap();
        assert_eq!(
            (l.network.node().ipv6, l.network.node().ipv6_outside_range),
            (Some(DEFAULT_NODE_ADDRESS_V6), Some(outside))
        );
        let model = l.cluster_with_node();
        let node_b = model.node("node-b").unwrap();
        assert_eq!(node_b.internal_ipv6, Some(DEFAULT_NODE_ADDRESS_V6));
        assert!(node_b.addresses.contains(&DEFAULT_NODE_ADDRESS_V6.into()), "{:?}", node_b.addresses);
        // Its IPv4 InternalIP outside 10.200.0.0/16 stays an error with file, line and field.
        let text = format!("{}{}", dual_stack_pods(), dual_node("node-b", "192.168.1.5", "fd00:200::12"));
        let error = format!("{:#}", local(&text).unwrap_err());
        assert!(error.starts_with("cluster.yaml:20: items[3].status.addresses[0].address: Node node-b: its InternalIP 192.168.1.5 is outside 10.200.0.0/16"), "{error}");
        // An IPv6 ClusterIP outside the IPv6 Service range.
        let service = "- kind: Service
  metadata: {name: api, namespace: shop}
  spec:
    clusterIPs: [10.200.250.10, \"fd00:200::99\"]
    ports: [{port: 80}]
";
        let error = format!("{:#}", local(&format!("{}{service}", dual_stack_pods())).unwrap_err());
        assert_eq!(
            error,
            "cluster.yaml:19: items[3].spec.clusterIPs[1]: Service shop/api: its ClusterIP fd00:200::99 is outside fd00:200::250:0/112: local mode translates ClusterIPs only from that range"
        );
    }

    #[test]
    fn a_cluster_ip_outside_the_service_range_is_refused_naming_file_line_and_field() {
        let service = "- kind: Service
  metadata: {name: api, namespace: shop}
  spec:
    clusterIP: 10.96.0.10
    ports: [{port: 80}]
- kind: Service
  metadata: {name: dns}
  spec:
    clusterIPs: [10.200.250.53, 10.96.0.53]
    ports: [{port: 53}]
- kind: Service
  metadata: {name: headless, namespace: shop}
  spec: {clusterIP: None, ports: [{port: 80}]}
";
        let error = format!("{:#}", local(&format!("{PODS}{service}")).unwrap_err());
        assert_eq!(
            error,
            "cluster.yaml:19: items[3].spec.clusterIP: Service shop/api: its ClusterIP 10.96.0.10 is outside 10.200.250.0/24: local mode translates ClusterIPs only from that range
cluster.yaml:24: items[4].spec.clusterIPs[1]: Service default/dns: its ClusterIP 10.96.0.53 is outside 10.200.250.0/24: local mode translates ClusterIPs only from that range"
        );
        // A pod in the Service range.
        let error = format!("{:#}", local(&PODS.replace("10.200.1.3", "10.200.250.3")).unwrap_err());
        assert!(
            error.contains("pod shop/c: status.podIP 10.200.250.3 is in the Service range 10.200.250.0/24"),
            "{error}"
        );
    }
}
