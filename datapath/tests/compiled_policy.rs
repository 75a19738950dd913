//! The policy compiler and the eBPF program agree: every scenario in `examples/` is compiled with
//! the `CompiledPolicy`, its entries and ipcache are loaded unchanged into a real datapath, and every
//! pod, node and CIDR flow of its `flows.yaml` (without `http:`) is run as a real packet (TCP SYN, UDP
//! datagram, ICMP or ICMPv6; IPv6 for a flow with `family: IPv6` or an IPv6 peer) through the source's egress hook and the destination's ingress hook with
//! BPF_PROG_TEST_RUN. The kernel's verdicts must equal `trace`'s egress and ingress decisions,
//! and together the verdict `flows.yaml` expects.
//!
//! Each endpoint gets a veth pair in a private network namespace (the program finds its
//! endpoint by ifindex, and the test run needs that device to exist); nothing is sent anywhere.
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use palisade_common::{PolicyEntry, Protocol};
use palisade_datapath::{Hook, Slot};
use palisade_policy::{
    Cluster, CompileOptions, CompiledPolicy, Direction, ParseOptions, SourceFile, parse_policies,
    trace::{self, Decision, FlowEnd, FlowPort, Verdict},
    yaml::{Limits, parse_documents},
};
use support::*;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// `*.yaml`/`*.yml` under `dir`, recursively, in a stable order (as the CLI loads them).
fn yaml_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            found.push(path);
        }
    }
}

fn engine(dir: &Path) -> CompiledPolicy {
    let mut paths = Vec::new();
    yaml_files(&dir.join("policies"), &mut paths);
    let texts: Vec<(String, String)> =
        paths.iter().map(|p| (p.display().to_string(), std::fs::read_to_string(p).unwrap())).collect();
    let sources: Vec<SourceFile> = texts.iter().map(|(name, text)| SourceFile { name, text }).collect();
    let parsed = parse_policies(&sources, &ParseOptions::default());
    assert!(!parsed.has_errors(), "{}: invalid policies: {:#?}", dir.display(), parsed.diagnostics);
    let cluster_name = dir.join("cluster.yaml").display().to_string();
    let cluster_text = std::fs::read_to_string(dir.join("cluster.yaml")).unwrap();
    let cluster = Cluster::parse(&[SourceFile { name: &cluster_name, text: &cluster_text }])
        .unwrap_or_else(|e| panic!("{cluster_name}: {e:?}"));
    // `node` is the node local mode runs the pods on, as the engine and e2e levels take it.
    let host_node = cluster.main_node().map(str::to_owned);
    CompiledPolicy::with_options(parsed.set, cluster, CompileOptions { host_node, ..CompileOptions::default() })
}

struct Flow {
    from: String,
    to: String,
    port: String,
    /// An HTTP request, a gRPC call, a TLS connection or a Kafka request: the proxy judges it,
    /// not the kernel.
    l7: bool,
    /// `family: IPv6` in flows.yaml: between the ends' IPv6 addresses.
    ipv6: bool,
    verdict: Verdict,
}

fn flows(dir: &Path) -> Vec<Flow> {
    let text = std::fs::read_to_string(dir.join("flows.yaml")).unwrap();
    let doc = parse_documents(&text, &Limits::default()).unwrap().remove(0).to_json();
    let field = |flow: &serde_json::Value, name: &str| flow[name].as_str().map(str::to_owned);
    doc["flows"]
        .as_array()
        .expect("flows.yaml has a `flows` list")
        .iter()
        .map(|flow| Flow {
            from: field(flow, "from").expect("from"),
            to: field(flow, "to").expect("to"),
            port: field(flow, "port").expect("port"),
            l7: ["http", "grpc", "tls_sni", "kafka"].iter().any(|kind| !flow[kind].is_null()),
            ipv6: match field(flow, "family").as_deref() {
                None | Some("IPv4") => false,
                Some("IPv6") => true,
                Some(other) => panic!("{}: family {other:?} is not IPv4 or IPv6", dir.display()),
            },
            verdict: serde_json::from_value(flow["verdict"].clone()).expect("verdict"),
        })
        .collect()
}

/// The family of a flow: IPv6 when flows.yaml says so or an end is an IPv6 address.
fn flow_is_ipv6(flow: &Flow, ends: [&FlowEnd; 2]) -> bool {
    flow.ipv6 || ends.iter().any(|end| matches!(end, FlowEnd::Address(IpAddr::V6(_))))
}

/// The ends of the scenario's flows that are pods or addresses, in the flow's family; `None`
/// for entities and Services (whose backends have addresses).
fn address(engine: &CompiledPolicy, end: &FlowEnd, ipv6: bool) -> Option<IpAddr> {
    match end {
        FlowEnd::Pod { namespace, name } => {
            let pod = engine.cluster.pod(namespace, name).unwrap_or_else(|| panic!("no pod {end}"));
            let addr = if ipv6 { pod.ipv6().map(IpAddr::from) } else { pod.ipv4().map(IpAddr::from) };
            Some(addr.unwrap_or_else(|| panic!("pod {end} has no address of the flow's family in cluster.yaml")))
        }
        FlowEnd::Address(ip) => Some(*ip),
        FlowEnd::Node => {
            let node = engine.cluster.node(engine.host_node()?)?;
            node.addresses.iter().copied().find(|a| a.is_ipv6() == ipv6)
        }
        FlowEnd::Entity(_) | FlowEnd::Service { .. } => None,
    }
}

/// An Ethernet frame over IPv4 or IPv6 (as `from` and `to` are): TCP SYN, UDP or SCTP with the
/// given ports, or ICMP/ICMPv6 of type `dport` (an echo request carries `sport` as its id).
fn frame(protocol: Protocol, from: IpAddr, to: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    let l4_len = match protocol {
        Protocol::TCP => 20,
        Protocol::SCTP => 12,
        _ => 8,
    };
    let ip_len = if from.is_ipv4() { 20 } else { 40 };
    let mut frame = vec![0u8; 14 + ip_len + l4_len + 4];
    frame[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    let l4_total = (frame.len() - 14 - ip_len) as u16;
    match (from, to) {
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let ip = &mut frame[14..34];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&(20 + l4_total).to_be_bytes());
            ip[8] = 64;
            ip[9] = protocol.raw();
            ip[12..16].copy_from_slice(&from.octets());
            ip[16..20].copy_from_slice(&to.octets());
            let sum = checksum(ip);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        (IpAddr::V6(from), IpAddr::V6(to)) => {
            frame[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            let ip = &mut frame[14..54];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&l4_total.to_be_bytes());
            ip[6] = protocol.raw();
            ip[7] = 64;
            ip[8..24].copy_from_slice(&from.octets());
            ip[24..40].copy_from_slice(&to.octets());
        }
        _ => panic!("a flow between {from} and {to}: one family per packet"),
    }
    let l4 = &mut frame[14 + ip_len..];
    match protocol {
        Protocol::ICMP | Protocol::ICMPv6 => {
            l4[0] = dport as u8;
            l4[4..6].copy_from_slice(&sport.to_be_bytes());
            l4[6..8].copy_from_slice(&1u16.to_be_bytes());
            let sum = checksum(l4);
            l4[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        _ => {
            l4[0..2].copy_from_slice(&sport.to_be_bytes());
            l4[2..4].copy_from_slice(&dport.to_be_bytes());
            match protocol {
                Protocol::TCP => {
                    l4[12] = 5 << 4;
                    l4[13] = 0x02; // SYN
                    l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
                }
                Protocol::UDP => l4[4..6].copy_from_slice(&((l4_len + 4) as u16).to_be_bytes()),
                _ => {}
            }
        }
    }
    frame
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A private namespace and pin directory, deleted when dropped (also on panic).
struct Sandbox {
    netns: String,
    pin_dir: PathBuf,
}

impl Sandbox {
    fn new(name: &str) -> Sandbox {
        let sandbox = Sandbox {
            netns: format!("{name}-node"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/palisade-test-{name}")),
        };
        sandbox.cleanup();
        run(&["ip", "netns", "add", &sandbox.netns]);
        sandbox
    }

    fn cleanup(&self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn describe(entries: &[PolicyEntry]) -> String {
    entries
        .iter()
        .map(|e| {
            format!(
                "\n      {} -> {} (cookie {})",
                trace::describe_entry(&e.key),
                e.value.verdict().as_str(),
                e.value.cookie
            )
        })
        .collect()
}

fn decision(d: &Decision) -> String {
    format!("{:?} via {} ({})", d.verdict, d.entry.as_deref().unwrap_or("no entry"), d.rule)
}

struct Outcome {
    checked: usize,
    denied_in_kernel: usize,
    skipped: usize,
    failures: Vec<String>,
}

/// One connection of a flow as the kernel sees it: to the destination, or to one backend of a
/// Service after translation.
/// An endpoint as the test runs it: id, ifindex, both directions' entries (ingress, egress),
/// and the hooks that judge its egress and ingress.
type TestEndpoint = (u32, u32, [Vec<PolicyEntry>; 2], [Hook; 2]);

/// The hooks that judge a pod's egress and ingress, and the node's.
const POD_HOOKS: [Hook; 2] = [Hook::FromEndpoint, Hook::ToEndpoint];
const HOST_HOOKS: [Hook; 2] = [Hook::FromHost, Hook::ToHost];

struct Leg {
    to: String,
    daddr: IpAddr,
    dport: u16,
    /// The ClusterIP the source addressed, for a Service's backend.
    cluster_ip: Option<IpAddr>,
    trace: trace::Trace,
}

fn check_scenario(index: usize, name: &str) -> Outcome {
    let dir = examples_dir().join(name);
    let engine = engine(&dir);
    let flows = flows(&dir);
    assert!(!flows.is_empty(), "{name}: no flows");

    let sandbox = Sandbox::new(&format!("pcp{index}"));
    let _inside = InNetns::enter(&sandbox.netns);
    let mut datapath = open_datapath(&sandbox.pin_dir);

    for (prefix, identity) in engine.ipcache() {
        datapath.set_ipcache(prefix.addr, prefix.len, identity).unwrap();
    }
    // Every Palisade endpoint: by pod, and the node itself as `node`.
    let mut endpoints: BTreeMap<String, TestEndpoint> = BTreeMap::new();
    for (id, endpoint) in engine.endpoints().enumerate() {
        let id = id as u32 + 1;
        let ingress = endpoint.group.direction(Direction::Ingress).entries();
        let egress = endpoint.group.direction(Direction::Egress).entries();
        let mut entries = ingress.clone();
        entries.extend_from_slice(&egress);
        datapath.load_slot(id, Slot::A, &entries).unwrap();
        let (ifname, peer) = (format!("pcp{index}h{id}"), format!("pcp{index}p{id}"));
        run(&["ip", "-n", &sandbox.netns, "link", "add", &ifname, "type", "veth", "peer", "name", &peer]);
        run(&["ip", "-n", &sandbox.netns, "link", "set", &ifname, "up"]);
        let addrs: palisade_datapath::EndpointAddrs = endpoint.pod.ips.iter().copied().collect();
        datapath.attach(id, &ifname, addrs).unwrap();
        endpoints.insert(endpoint.pod.key(), (id, if_index(&ifname), [ingress, egress], POD_HOOKS));
    }
    // The node: its programs run first on every interface; the test runs them on one of its own.
    if let Some(host) = engine.host_endpoint() {
        let id = endpoints.len() as u32 + 1;
        let (ingress, egress) = (host.group.ingress.entries(), host.group.egress.entries());
        let entries: Vec<PolicyEntry> = ingress.iter().chain(&egress).copied().collect();
        datapath.load_slot(id, Slot::A, &entries).unwrap();
        datapath.attach_host(id).unwrap();
        let (ifname, peer) = (format!("pcp{index}n"), format!("pcp{index}m"));
        run(&["ip", "-n", &sandbox.netns, "link", "add", &ifname, "type", "veth", "peer", "name", &peer]);
        run(&["ip", "-n", &sandbox.netns, "link", "set", &ifname, "up"]);
        datapath.attach_network(&ifname).unwrap();
        endpoints.insert(FlowEnd::Node.to_string(), (id, if_index(&ifname), [ingress, egress], HOST_HOOKS));
    }

    // Source ports never equal to a flow's destination port, so no packet can look like the reply
    // of an earlier flow's connection to the conntrack.
    let used: BTreeSet<u16> = flows.iter().filter_map(|f| FlowPort::parse(&f.port).ok()).map(|p| p.port).collect();
    let mut sports = (40000u16..).filter(|p| !used.contains(p));

    let (mut checked, mut denied_in_kernel, mut skipped, mut failures) = (0, 0, 0, Vec::new());
    for flow in &flows {
        let from = FlowEnd::parse(&flow.from).unwrap();
        let to = FlowEnd::parse(&flow.to).unwrap();
        let port = FlowPort::parse(&flow.port).unwrap();
        let ipv6 = flow_is_ipv6(flow, [&from, &to]);
        let Some(saddr) = address(&engine, &from, ipv6) else {
            skipped += 1;
            continue;
        };
        if flow.l7 {
            skipped += 1;
            continue;
        }
        // One leg per connection the kernel sees: the flow itself, or one per Service backend.
        let (traced_verdict, legs) = match &to {
            FlowEnd::Service { namespace, name } => {
                let traced = trace::trace_service(&engine, &from, &to, port, None).unwrap();
                let service = engine.cluster.service(namespace, name).unwrap();
                let family = |ip: &&IpAddr| ip.is_ipv6() == ipv6;
                let cluster_ip = *service.cluster_ips.iter().find(family).expect("a ClusterIP of the flow's family");
                let legs = traced
                    .backends
                    .into_iter()
                    .filter(|b| b.address.is_ipv6() == ipv6)
                    .map(|b| (b.address, b))
                    .map(|(daddr, b)| Leg {
                        to: b.backend,
                        daddr,
                        dport: b.port,
                        cluster_ip: Some(cluster_ip),
                        trace: b.trace,
                    })
                    .collect();
                (traced.verdict, legs)
            }
            _ => {
                let Some(daddr) = address(&engine, &to, ipv6) else {
                    skipped += 1;
                    continue;
                };
                let traced = trace::trace(&engine, &from, &to, port, None).unwrap();
                (
                    traced.verdict,
                    vec![Leg { to: to.to_string(), daddr, dport: port.port, cluster_ip: None, trace: traced }],
                )
            }
        };
        checked += 1;
        let source = endpoints.get(&from.to_string());
        let mut problems = Vec::new();
        // Allowed only when every leg passes both hooks, as for the Service's trace.
        let mut verdict = Verdict::Allowed;
        for leg in &legs {
            let sport = sports.next().unwrap();
            let packet = frame(port.protocol, saddr, leg.daddr, sport, leg.dport);
            let passed = |run: palisade_datapath::FrameRun| if run.passed { Verdict::Allowed } else { Verdict::Denied };
            let target = endpoints.get(&leg.to);
            let (egress, mark) = match (source, leg.cluster_ip) {
                (None, _) => (None, 0),
                (Some((_, ifindex, entries, [hook, _])), None) => {
                    (Some((passed(datapath.run_frame(*hook, *ifindex, &packet, 1).unwrap()), &entries[1])), 0)
                }
                // To a ClusterIP: the source's hook defers; its egress is judged after
                // translation, on the backend's interface (any interface for one off the node).
                (Some((id, ifindex, entries, [hook, _])), Some(cluster_ip)) => {
                    let opening = frame(port.protocol, saddr, cluster_ip, sport, port.port);
                    let deferred = datapath.run_frame(*hook, *ifindex, &opening, 1).unwrap();
                    if !deferred.passed {
                        problems.push(format!("  the source's hook dropped the packet to ClusterIP {cluster_ip}"));
                    }
                    let mark = datapath.service_mark(*id).unwrap();
                    let at = target.map_or(*ifindex, |t| t.1);
                    let run = datapath.run_marked_frame(Hook::DeferredEgress, at, mark, &packet, 1).unwrap();
                    (Some((passed(run), &entries[1])), mark)
                }
            };
            let ingress = target.map(|(_, ifindex, entries, [_, hook])| {
                (passed(datapath.run_marked_frame(*hook, *ifindex, mark, &packet, 1).unwrap()), &entries[0])
            });
            for (side, kernel, traced) in
                [("egress", &egress, &leg.trace.egress), ("ingress", &ingress, &leg.trace.ingress)]
            {
                match kernel {
                    Some((verdict, entries)) if *verdict != traced.verdict => problems.push(format!(
                        "  {} {side}: kernel {verdict:?}, trace {}; entries of {}:{}",
                        leg.to,
                        decision(traced),
                        traced.endpoint.as_deref().unwrap_or("?"),
                        describe(entries),
                    )),
                    // Not an endpoint: trace must not have judged it either.
                    None if traced.endpoint.is_some() => problems.push(format!(
                        "  {} {side}: trace judged it ({}) but no endpoint ran",
                        leg.to,
                        decision(traced)
                    )),
                    _ => {}
                }
                if kernel.as_ref().is_some_and(|k| k.0 == Verdict::Denied) {
                    verdict = Verdict::Denied;
                }
            }
        }
        let kernel = verdict;
        denied_in_kernel += (kernel == Verdict::Denied) as usize;
        if kernel != flow.verdict || traced_verdict != flow.verdict {
            let traces: String = legs
                .iter()
                .map(|l| {
                    format!(
                        "\n  {}: egress {}; ingress {}",
                        l.to,
                        decision(&l.trace.egress),
                        decision(&l.trace.ingress)
                    )
                })
                .collect();
            problems.push(format!(
                "  flows.yaml expects {:?}; kernel {kernel:?}, trace {traced_verdict:?}{traces}",
                flow.verdict
            ));
        }
        if !problems.is_empty() {
            failures.push(format!("{name}: {} -> {} {}\n{}", flow.from, flow.to, flow.port, problems.join("\n")));
        }
    }
    datapath.destroy().unwrap();
    Outcome { checked, denied_in_kernel, skipped, failures }
}

#[test]
fn kernel_agrees_with_compiler_and_examples() {
    require_root();
    let mut scenarios: Vec<String> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().join("flows.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    scenarios.sort();
    assert!(!scenarios.is_empty(), "no scenarios in {}", examples_dir().display());
    let mut failures = Vec::new();
    for (index, name) in scenarios.iter().enumerate() {
        let mut outcome = check_scenario(index, name);
        eprintln!(
            "{name}: {} flows checked in the kernel ({} denied there), {} skipped (entity or http)",
            outcome.checked, outcome.denied_in_kernel, outcome.skipped
        );
        assert!(outcome.checked > 0, "{name}: no flow could be checked");
        failures.append(&mut outcome.failures);
    }
    assert!(failures.is_empty(), "{} flows disagree:\n{}", failures.len(), failures.join("\n"));
}
