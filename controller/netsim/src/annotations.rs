//! The `palisade.dev/...` annotations local mode reads from a cluster file's pods, each error
//! naming the file, line and field of the annotation it is about.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use palisade_policy::cluster::ObjectMeta;
use palisade_policy::yaml::{self, Limits, Node, PathSegment, Value};
use palisade_policy::{Diagnostic, Severity};
use serde::Deserialize;

use crate::dns::DnsZone;
use crate::error::{Error, Result};
use crate::net::LocalNetwork;

/// `"8080,9090"`: ports the pod answers with HTTP instead of an echo.
pub const HTTP_PORTS: &str = "palisade.dev/http-ports";
/// `"9092"`: ports the pod answers as a Kafka broker ([`crate::kafka`]) instead of an echo.
pub const KAFKA_PORTS: &str = "palisade.dev/kafka-ports";
/// `"api.example.com=10.200.99.10, db.example.com=10.200.99.11"`: the pod is a DNS server with
/// these A records, on 53/UDP and 53/TCP.
pub const DNS_RECORDS: &str = "palisade.dev/dns-records";
/// The TTL of a DNS pod's answers, in seconds ([`DEFAULT_DNS_TTL`] without it).
pub const DNS_TTL: &str = "palisade.dev/dns-ttl";
/// `"NAMESPACE/POD"`: the DNS pod this pod resolves through.
pub const RESOLVER: &str = "palisade.dev/resolver";

pub const DEFAULT_DNS_TTL: u32 = 30;

/// One Pod object of a cluster file and where it is.
pub(crate) struct PodObject<'a> {
    /// `namespace/name`.
    pub key: String,
    pub annotations: BTreeMap<String, serde_json::Value>,
    file: &'a str,
    node: &'a Node,
    /// The field path of the object inside its document, with a trailing dot.
    path: String,
}

impl PodObject<'_> {
    /// An error about `annotation`, naming the file, line and field.
    pub fn error(&self, annotation: &str, message: String) -> Diagnostic {
        let field = [
            PathSegment::Key("metadata".into()),
            PathSegment::Key("annotations".into()),
            PathSegment::Key(annotation.into()),
        ];
        Diagnostic {
            severity: Severity::Error,
            file: self.file.to_owned(),
            line: self.node.line_of(&field),
            path: format!("{}metadata.annotations[\"{annotation}\"]", self.path),
            message,
        }
    }

    /// The string value of `annotation`, if the pod has it.
    pub fn string(&self, annotation: &str) -> Result<Option<&str>, Diagnostic> {
        match self.annotations.get(annotation) {
            None => Ok(None),
            Some(serde_json::Value::String(value)) => Ok(Some(value)),
            Some(value) => Err(self.error(annotation, format!("pod {}: must be a string, not {value}", self.key))),
        }
    }
}

#[derive(Deserialize)]
struct Object {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
}

/// Calls `f` on every Pod of a cluster file (also inside a `List`) with annotations, and returns
/// the errors `f` returns, each as it prints.
pub(crate) fn for_each_pod(
    file: &str,
    text: &str,
    mut f: impl FnMut(&PodObject) -> Vec<Diagnostic>,
) -> Result<Vec<String>> {
    fn visit(
        file: &str,
        node: &Node,
        path: String,
        f: &mut dyn FnMut(&PodObject) -> Vec<Diagnostic>,
        errors: &mut Vec<Diagnostic>,
    ) {
        // Malformed objects are the cluster parser's to report.
        let Ok(object) = serde_json::from_value::<Object>(node.to_json()) else { return };
        match object.kind.as_str() {
            "List" => {
                if let Some(Node { value: Value::Seq(items), .. }) = node.get(&[PathSegment::Key("items".into())]) {
                    for (i, item) in items.iter().enumerate() {
                        visit(file, item, format!("{path}items[{i}]."), f, errors);
                    }
                }
            }
            "Pod" if !object.metadata.annotations.is_empty() => {
                let meta = object.metadata;
                let key = format!("{}/{}", meta.namespace.as_deref().unwrap_or("default"), meta.name);
                errors.extend(f(&PodObject { key, annotations: meta.annotations, file, node, path }));
            }
            _ => {}
        }
    }
    let docs = yaml::parse_documents(text, &Limits::default()).map_err(|e| Error::Cluster(format!("{file}:{e}")))?;
    let mut errors = Vec::new();
    for doc in &docs {
        visit(file, doc, String::new(), &mut f, &mut errors);
    }
    Ok(errors.iter().map(ToString::to_string).collect())
}

/// Every error at once, one per line.
pub(crate) fn report(errors: Vec<String>) -> Result<()> {
    if errors.is_empty() { Ok(()) } else { Err(Error::Cluster(errors.join("\n"))) }
}

/// Reads what each pod of `network` serves and resolves through ([`HTTP_PORTS`],
/// [`KAFKA_PORTS`], [`DNS_RECORDS`], [`DNS_TTL`], [`RESOLVER`]) into the network's pods.
pub(crate) fn read_serving(file: &str, text: &str, network: &mut LocalNetwork) -> Result<()> {
    // Resolvers name DNS pods that may come later in the file: checked once all are read.
    let mut resolvers = Vec::new();
    // Pods with records, valid or not: a resolver naming one with bad records is no new error.
    let mut with_records = std::collections::BTreeSet::new();
    let mut errors = for_each_pod(file, text, |pod| {
        let mut errors = Vec::new();
        let mut read = |annotation: &str| pod.string(annotation).map_err(|e| errors.push(e)).ok().flatten();
        let (http, kafka) = (read(HTTP_PORTS), read(KAFKA_PORTS));
        let (records, ttl, resolver) = (read(DNS_RECORDS), read(DNS_TTL), read(RESOLVER));
        if [http, kafka, records, ttl, resolver].iter().all(Option::is_none) {
            return errors;
        }
        let Some(net) = network.pod_mut(&pod.key) else {
            let annotation = [HTTP_PORTS, KAFKA_PORTS, DNS_RECORDS, DNS_TTL, RESOLVER]
                .into_iter()
                .find(|a| pod.annotations.contains_key(*a))
                .expect("one is there");
            let message = format!("pod {} has no network namespace (it needs a podIP and no hostNetwork)", pod.key);
            errors.push(pod.error(annotation, message));
            return errors;
        };
        if records.is_some() {
            with_records.insert(pod.key.clone());
        }
        if let Some(list) = http {
            match port_list(list) {
                Ok(ports) => net.http_ports = ports,
                Err(message) => errors.push(pod.error(HTTP_PORTS, format!("{list:?}: {message}"))),
            }
        }
        if let Some(list) = kafka {
            match port_list(list) {
                Ok(ports) if ports.iter().any(|p| net.http_ports.contains(p)) => {
                    errors.push(pod.error(KAFKA_PORTS, format!("{list:?}: a port cannot answer both HTTP and Kafka")));
                }
                Ok(ports) => net.kafka_ports = ports,
                Err(message) => errors.push(pod.error(KAFKA_PORTS, format!("{list:?}: {message}"))),
            }
        }
        let ttl = match ttl {
            None => DEFAULT_DNS_TTL,
            Some(ttl) => ttl.trim().parse().unwrap_or_else(|_| {
                errors.push(pod.error(DNS_TTL, format!("{ttl:?} is not a TTL in seconds (0-4294967295)")));
                DEFAULT_DNS_TTL
            }),
        };
        match records.map(|list| (list, DnsZone::parse(list, ttl))) {
            Some((_, Ok(zone))) => net.dns = Some(zone),
            Some((list, Err(message))) => errors.push(pod.error(DNS_RECORDS, format!("{list:?}: {message}"))),
            None if pod.annotations.contains_key(DNS_TTL) => {
                errors.push(pod.error(DNS_TTL, format!("pod {}: a TTL without {DNS_RECORDS}", pod.key)));
            }
            None => {}
        }
        if let Some(resolver) = resolver {
            net.resolver = Some(resolver.trim().to_owned());
            resolvers.push((pod.key.clone(), pod.error(RESOLVER, String::new())));
        }
        errors
    })?;
    errors.extend(resolvers.into_iter().filter_map(|(key, mut error)| {
        let resolver = network.pod(&key)?.resolver.as_deref()?;
        error.message = match network.pod(resolver) {
            None => format!("no pod {resolver:?} with a network namespace (expected NAMESPACE/POD)"),
            Some(_) if !with_records.contains(resolver) => format!("pod {resolver} has no {DNS_RECORDS} annotation"),
            Some(_) => return None,
        };
        Some(error.to_string())
    }));
    report(errors)
}

/// `"8080,9090"` or `"8080, 9090"`: distinct ports, at least one.
fn port_list(list: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for entry in list.split(',').map(str::trim) {
        match entry.parse::<u16>() {
            Ok(port) if port != 0 && !ports.contains(&port) => ports.push(port),
            Ok(port) if port != 0 => return Err(format!("port {port} is listed twice")),
            _ => return Err(format!("{entry:?} is not a port number (1-65535)")),
        }
    }
    Ok(ports)
}

/// `name=IPv4` with a DNS name: letters, digits, '-' and '.', labels of 1 to 63 characters.
pub(crate) fn dns_record(entry: &str) -> Result<(String, Ipv4Addr), String> {
    let (name, ip) = entry.split_once('=').ok_or("expected NAME=IPv4")?;
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid_label = |l: &str| (1..=63).contains(&l.len()) && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(format!("{name:?} is not a DNS name"));
    }
    let ip = ip.trim().parse().map_err(|_| format!("{:?} is not an IPv4 address", ip.trim()))?;
    Ok((name, ip))
}

#[cfg(test)]
mod tests {
    use palisade_policy::{Cluster, SourceFile};

    use super::*;

    const CLUSTER: &str = "\
kind: List
items:
- kind: Pod
  metadata:
    name: web
    namespace: shop
    annotations: {palisade.dev/http-ports: \"8080, 9090\", palisade.dev/resolver: ops/dns}
  status: {podIP: 10.200.1.1}
- kind: Pod
  metadata:
    name: dns
    namespace: ops
    annotations:
      palisade.dev/dns-records: \"api.example.com=10.200.99.10,Api.Example.com.=10.200.99.11, db.example.com=10.200.99.12\"
      palisade.dev/dns-ttl: \"5\"
  status: {podIP: 10.200.3.2}
";

    fn read(text: &str) -> Result<LocalNetwork> {
        let cluster = Cluster::parse(&[SourceFile { name: "cluster.yaml", text }]).unwrap();
        let mut network = LocalNetwork::plan(&cluster, "t-").unwrap();
        read_serving("cluster.yaml", text, &mut network)?;
        Ok(network)
    }

    #[test]
    fn http_ports_dns_records_and_resolvers_are_read() {
        let network = read(CLUSTER).unwrap();
        let web = network.pod("shop/web").unwrap();
        assert_eq!((web.http_ports.as_slice(), web.resolver.as_deref()), ([8080, 9090].as_slice(), Some("ops/dns")));
        let zone = network.pod("ops/dns").unwrap().dns.clone().unwrap();
        assert_eq!(zone.ttl, 5);
        let ips = |name: &str| zone.records.get(name).cloned().unwrap_or_default();
        assert_eq!(
            ips("api.example.com"),
            ["10.200.99.10".parse::<Ipv4Addr>().unwrap(), "10.200.99.11".parse().unwrap()]
        );
        assert_eq!(ips("db.example.com"), ["10.200.99.12".parse::<Ipv4Addr>().unwrap()]);
    }

    #[test]
    fn bad_values_name_the_file_line_and_annotation() {
        let bad = CLUSTER
            .replace("8080, 9090", "8080, 80a")
            .replace("ops/dns}", "ops/nope}")
            .replace("db.example.com=10.200.99.12", "db_example=10.200.99.12")
            .replace("\"5\"", "\"soon\"");
        let expected = [
            "cluster.yaml:7: items[0].metadata.annotations[\"palisade.dev/http-ports\"]: \"8080, 80a\": \"80a\" is not a port number (1-65535)",
            "cluster.yaml:15: items[1].metadata.annotations[\"palisade.dev/dns-ttl\"]: \"soon\" is not a TTL in seconds (0-4294967295)",
            "cluster.yaml:14: items[1].metadata.annotations[\"palisade.dev/dns-records\"]: \"api.example.com=10.200.99.10,Api.Example.com.=10.200.99.11, db_example=10.200.99.12\": \"db_example\" is not a DNS name",
            "cluster.yaml:7: items[0].metadata.annotations[\"palisade.dev/resolver\"]: no pod \"ops/nope\" with a network namespace (expected NAMESPACE/POD)",
        ];
        assert_eq!(read(&bad).unwrap_err().to_string(), expected.join("\n"));
        let bad = CLUSTER.replace("db.example.com=10.200.99.12", "db.example.com=10.200.999.12");
        let error = read(&bad).unwrap_err().to_string();
        assert!(
            error.starts_with("cluster.yaml:14: items[1].metadata.annotations[\"palisade.dev/dns-records\"]: "),
            "{error}"
        );
        assert!(error.ends_with(": \"10.200.999.12\" is not an IPv4 address"), "{error}");
        // A resolver without records.
        let bad = CLUSTER.replace("palisade.dev/resolver: ops/dns", "palisade.dev/resolver: shop/web");
        let error = read(&bad).unwrap_err().to_string();
        assert!(
            error.ends_with("[\"palisade.dev/resolver\"]: pod shop/web has no palisade.dev/dns-records annotation"),
            "{error}"
        );
    }
}
