//! `palisade local`: a cluster file's pods as network namespaces on this machine (local mode).
//! State lives in `--state` (default /run/palisade-local): the cluster `up` was started with and
//! its responder process, for `down`, `probe` and `run`.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use palisade_netsim::dns::{self, Resolved};
use palisade_netsim::grpc::{self, GrpcOutcome};
use palisade_netsim::http::{self, HttpOutcome};
use palisade_netsim::kafka::{self, KafkaProbe};
use palisade_netsim::tls;
use palisade_netsim::{DEFAULT_PREFIX, DEFAULT_STATE_DIR, IpFamily, Local, Outcome, PodNet, Port, StateDir};
use palisade_policy::AllowLocalhost;
use palisade_policy::cluster::Backend;
use palisade_policy::l7::HttpRequest;
use tabwriter::TabWriter;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Create a network namespace per pod of a cluster file, routed through one node namespace,
    /// and start echo responders on the pods' declared ports; Services (ClusterIPs in
    /// 10.200.250.0/24, and fd00:200::250:0/112 for IPv6) are translated by a kube-proxy
    /// nftables table in the node namespace. Dual-stack pods (`status.podIPs`, IPv6 from
    /// fd00:200::/64) get both addresses.
    /// Replaces a previous `up`, and removes what a previous `run` left (as `down` does).
    Up(UpArgs),
    /// Stop the responders and delete the namespaces and state that `up` made, with what `run`
    /// left: its controller state (rollouts, revisions, reports, Git mirrors) and the pinned datapath.
    Down(DownArgs),
    /// Connect once from one pod (or the node) to another pod, the node or a Service, or send
    /// one HTTP request (`--http`), gRPC call (`--grpc`), TLS ClientHello (`--tls-sni`) or Kafka
    /// request (`--kafka`), or resolve a name through a pod's DNS pod (`--dns`). Exit 0
    /// connected, 1 refused or timed out (or HTTP 403, a gRPC status but OK, a reset after a
    /// ClientHello, a Kafka error code, or a DNS error code), 2 error.
    Probe(ProbeArgs),
    /// Run the controller and the agent against the local cluster (bringing it up first if it
    /// is not): sync each PolicyRollout's Git source, audit candidates on the pods' traffic,
    /// promote, roll back. Stop with Ctrl-C; what is enforced stays enforced.
    Run(RunArgs),
    /// The responder process that `up` starts in the background.
    #[command(hide = true)]
    Responders(StateArgs),
}

#[derive(clap::Args)]
pub struct StateArgs {
    /// Where `up` records the cluster and its responder process.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state: PathBuf,
}

impl StateArgs {
    pub fn dir(&self) -> StateDir {
        StateDir::new(&self.state)
    }
}

/// Where `run` pins the datapath in bpffs.
const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/palisade-local";

#[derive(clap::Args)]
struct DownArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Where the datapath is pinned in bpffs.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

#[derive(clap::Args)]
struct UpArgs {
    /// Cluster file: `kubectl get namespaces,pods,nodes,services -A -o yaml` output. Pods may
    /// declare traffic in a `palisade.dev/talks-to: "NS/POD:PORT[/PROTO], ..."` annotation
    /// (`svc/NS/NAME:PORT[/PROTO]` for a Service), answer HTTP on `palisade.dev/http-ports:
    /// "8080,9090"`, serve DNS with `palisade.dev/dns-records: "NAME=IP, ..."` (used by pods
    /// through `palisade.dev/resolver: NS/POD`), and stand for a host outside the cluster with
    /// `palisade.dev/outside-cluster: "true"`.
    #[arg(long, value_name = "FILE")]
    cluster: PathBuf,
    #[command(flatten)]
    state: StateArgs,
    /// Start of every network namespace's name.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    prefix: String,
    /// Where `run` pins the datapath; a previous run's is removed.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Cluster file, as for `up`; defaults to the one the running local cluster was made from.
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// PolicyRollout YAML (the same resource as in a cluster), with the Secrets it names. Repeatable.
    #[arg(long, value_name = "FILE", required = true)]
    rollout: Vec<PathBuf>,
    #[command(flatten)]
    state: StateArgs,
    /// Where the datapath is pinned in bpffs.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// How often the agent reports what it observed.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = palisade_rollout::parse_duration)]
    report_interval: Duration,
    /// How often pods make the connections their `palisade.dev/talks-to` annotation declares.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = palisade_rollout::parse_duration)]
    traffic_interval: Duration,
    /// `always`: the node namespace (the local host) reaches pods whatever their policy
    /// (Cilium's default); `policy`: only as policy allows (`fromEntities: [host]`).
    #[arg(long, value_name = "MODE", default_value = "always", value_parser = super::allow_localhost_parser())]
    allow_localhost: AllowLocalhost,
    /// Addresses learned from DNS answers for `toFQDNs` are kept at least this long, whatever
    /// the answer's TTL (the agent's `--fqdn-min-ttl`, Cilium's `tofqdns-min-ttl`).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = palisade_rollout::parse_duration)]
    fqdn_min_ttl: Duration,
}

#[derive(clap::Args)]
struct ProbeArgs {
    /// Client: NAMESPACE/POD, or `node` (the node namespace, from the node's address: the
    /// local host).
    #[arg(long)]
    from: String,
    /// Server: NAMESPACE/POD, `node`, or `svc/NAMESPACE/NAME`: a Service through its ClusterIP,
    /// translated by the node's kube-proxy table; the backend that answered is printed.
    #[arg(long, required_unless_present = "dns", conflicts_with = "dns")]
    to: Option<String>,
    /// `PORT[/TCP|/UDP]` or `icmp`.
    #[arg(long, required_unless_present = "dns", conflicts_with = "dns")]
    port: Option<Port>,
    /// Send one HTTP request, `"METHOD /path"`, to a TCP port and print the response (status,
    /// headers, body). Exit 0 on any status but 403; 1 on 403 or no response.
    #[arg(long, value_name = "REQUEST", conflicts_with = "dns")]
    http: Option<String>,
    /// A header of the `--http` request, `"Name: value"` (repeatable). Host defaults to the
    /// server's ADDRESS:PORT.
    #[arg(long = "header", value_name = "HEADER", requires = "http")]
    headers: Vec<String>,
    /// Make one unary gRPC call, `/package.Service/Method` with an empty message, over h2c to a
    /// TCP port and print its status. Exit 0 on OK; 1 on any other status (7,
    /// PERMISSION_DENIED, is a proxy's denial) or no answer.
    #[arg(long, value_name = "METHOD", conflicts_with_all = ["dns", "http"])]
    grpc: Option<String>,
    /// Send a TLS ClientHello indicating server name NAME (SNI; `''` for none) to a TCP port,
    /// without completing a handshake, and print what came back. Exit 0 when the connection
    /// went through: the server answered (any bytes: a ServerHello, an alert, an echo
    /// responder's echo) or closed it normally; 1 when it was reset (what the node's proxy does
    /// to a server name no `serverNames` rule allows), refused or timed out.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["dns", "http", "grpc"])]
    tls_sni: Option<String>,
    /// Send one Kafka request to a TCP port: `produce:TOPIC` (a Produce of one record) or
    /// `consume:TOPIC` (a Fetch), then an ApiVersions request on the same connection; print the
    /// topic's error code (`NONE`, `TOPIC_AUTHORIZATION_FAILED`, ...) and whether the connection
    /// stayed open. Exit 0 when the request succeeded; 1 on an error code or no answer.
    #[arg(long, value_name = "ROLE:TOPIC", conflicts_with_all = ["dns", "http", "grpc", "tls_sni"])]
    kafka: Option<String>,
    /// Resolve NAME (A records) through the DNS pod that `--from`'s `palisade.dev/resolver`
    /// annotation names, over UDP; prints the addresses. Exit 0 answered, 1 on an error code
    /// (NXDOMAIN, REFUSED) or no answer.
    #[arg(long, value_name = "NAME")]
    dns: Option<String>,
    /// How long to wait for the connection or the echo, e.g. `1s` or `300ms`.
    #[arg(long, default_value = "1s", value_parser = palisade_rollout::parse_duration)]
    timeout: Duration,
    /// `4` or `6`: probe between the two ends' IPv4 (or IPv6) addresses (ICMP is ICMPv6 echo
    /// over 6); a Service through its ClusterIP of that family. A dual-stack pod has both
    /// (`status.podIPs`); the node namespace has an IPv6 address when some pod does.
    #[arg(long, value_name = "4|6", default_value = "4")]
    ip_family: IpFamily,
    /// The cluster file, instead of the one `up` recorded in the state directory.
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    #[command(flatten)]
    state: StateArgs,
}

pub fn run(args: Args) -> Result<u8> {
    palisade_netsim::require_root()?;
    match args.command {
        Command::Up(args) => up(args),
        Command::Down(args) => {
            remove_run_state(&args.state.state, &args.pin_dir)?;
            palisade_netsim::down(&args.state.dir())?;
            Ok(0)
        }
        Command::Probe(args) => probe(args),
        Command::Run(args) => local_run(args),
        Command::Responders(args) => {
            let Err(e) = palisade_netsim::serve_responders(&args.dir());
            Err(e.into())
        }
    }
}

/// `up`, with the responders run by this program's hidden `local responders`.
fn bring_up(state: &StateDir, cluster: &std::path::Path, prefix: &str) -> Result<palisade_netsim::Up> {
    let exe = std::env::current_exe().context("find this program to start the responders")?;
    let mut responders = Process::new(exe);
    responders.args(["local", "responders", "--state"]).arg(state.dir());
    Ok(palisade_netsim::up(state, cluster, prefix, responders)?)
}

/// Removes what `local run` keeps between runs, so that the next one starts from scratch: the
/// pinned datapath (first, so nothing enforces on the interfaces about to go), the store and the
/// Git mirrors. Safe to run twice.
fn remove_run_state(state: &Path, pin_dir: &Path) -> Result<()> {
    if pin_dir.exists() {
        let destroyed = palisade_datapath::Datapath::open(pin_dir)
            .map_err(anyhow::Error::from)
            .and_then(|d| d.destroy().map_err(anyhow::Error::from));
        if let Err(e) = destroyed {
            eprintln!("warning: {}: {e:#}; removing the pins", pin_dir.display());
            remove_dir(pin_dir)?;
        }
    }
    crate::local::store::Store::new(state).clear()?;
    remove_dir(&state.join("git"))
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

fn up(args: UpArgs) -> Result<u8> {
    remove_run_state(&args.state.state, &args.pin_dir)?;
    let state = args.state.dir();
    let up = bring_up(&state, &args.cluster, &args.prefix)?;
    let network = &up.local.network;
    let mut out = TabWriter::new(std::io::stdout());
    writeln!(out, "POD\tIP\tNETNS\tHOST IF\tPORTS")?;
    for pod in network.pods() {
        let mut ports =
            vec![pod.ports.iter().map(|p| format!("{}/{}", p.port, p.protocol.name())).collect::<Vec<_>>().join(",")];
        if !pod.http_ports.is_empty() {
            ports.push(format!("http:{}", pod.http_ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")));
        }
        if !pod.kafka_ports.is_empty() {
            ports.push(format!("kafka:{}", pod.kafka_ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")));
        }
        if pod.dns.is_some() {
            ports.push("dns:53".to_owned());
        }
        let outside = if pod.outside { " (outside the cluster)" } else { "" };
        let ports = ports.join(" ");
        let ips = match pod.ipv6 {
            Some(ipv6) => format!("{},{ipv6}", pod.ip),
            None => pod.ip.to_string(),
        };
        writeln!(out, "{}{outside}\t{ips}\t{}\t{}\t{}", pod.key, pod.netns, pod.host_if, ports.trim())?;
    }
    out.flush()?;
    let node = network.node();
    let declared = if node.declared { "" } else { ", not in the cluster file" };
    let addresses = match (node.ipv6, node.ipv6_outside_range) {
        (Some(ipv6), Some(outside)) => {
            format!("{} and {ipv6} in place of its IPv6 InternalIP {outside}, outside fd00:200::/64", node.address)
        }
        (Some(ipv6), None) => format!("{} and {ipv6}", node.address),
        (None, _) => node.address.to_string(),
    };
    println!(
        "node namespace {} (node {}{declared}, {addresses}) routes between {} pods",
        network.node_netns(),
        node.name,
        network.pods().count()
    );
    let services = up.local.cluster.services.iter().filter(|s| !s.cluster_ips.is_empty()).count();
    if services > 0 {
        let ipv6 = up.local.cluster.services.iter().any(|s| s.cluster_ips.iter().any(std::net::IpAddr::is_ipv6));
        println!(
            "{services} Services translated by table ip {}{} in the node namespace",
            palisade_netsim::kube_proxy::TABLE,
            if ipv6 { " (and table ip6, for IPv6 ClusterIPs)" } else { "" }
        );
    }
    println!("responders: pid {}, log {}", up.responders_pid, state.log_file().display());
    if !up.local.talks.is_empty() {
        println!("{} talks-to flows declared", up.local.talks.len());
    }
    Ok(0)
}

fn local_run(args: RunArgs) -> Result<u8> {
    let state = args.state.dir();
    let running = state.load().ok().filter(|l| args.cluster.as_ref().is_none_or(|c| *c == l.cluster_file));
    let local = match (running, &args.cluster) {
        (Some(local), _) => local,
        (None, Some(cluster)) => bring_up(&state, cluster, DEFAULT_PREFIX)?.local,
        (None, None) => anyhow::bail!("no local cluster is up: give --cluster FILE (or run `palisade local up` first)"),
    };
    let options = crate::local::run::RunOptions {
        state_dir: args.state.state.clone(),
        rollout_files: args.rollout,
        pin_dir: args.pin_dir,
        report_interval: args.report_interval,
        traffic: palisade_netsim::TrafficOptions { interval: args.traffic_interval, ..Default::default() },
        allow_localhost: args.allow_localhost,
        fqdn_min_ttl: args.fqdn_min_ttl,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,palisade_source=warn,palisade::reconciler::fetch=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(crate::local::run::run(local, options, crate::reconciler::shutdown_signal()))?;
    Ok(0)
}

fn probe(args: ProbeArgs) -> Result<u8> {
    let state = args.state.dir();
    let local = match &args.cluster {
        Some(file) => Local::read(file, &state.prefix()?)?,
        None => state.load()?,
    };
    if let Some(name) = &args.dns {
        return resolve(&local, &args.from, name, args.timeout, args.ip_family);
    }
    let (to, port) = args.to.as_deref().zip(args.port).expect("clap requires --to and --port without --dns");
    let family = args.ip_family;
    let from = end(&local, &args.from, family)?;
    let tried = || format!("probe from {} (is the local cluster up?)", from.name);
    let l7_target = |flag: &str| {
        let Port::Tcp(number) = port else { bail!("--{flag} needs a TCP port, not {port}") };
        let (ip, name) = match to.strip_prefix("svc/") {
            Some(service) => (service_end(&local, service, port, family)?.ip, to.to_owned()),
            None => end(&local, to, family).map(|end| (end.ip, end.name))?,
        };
        Ok((number, ip, name))
    };
    if let Some(method) = &args.grpc {
        if !method.starts_with('/') || method[1..].split('/').count() != 2 {
            bail!("--grpc: {method:?} is no gRPC method; expected /package.Service/Method");
        }
        let (number, ip, name) = l7_target("grpc")?;
        let outcome = grpc::call(&from.netns, ip, number, method, args.timeout).with_context(tried)?;
        let target = format!("{} -> {name} {}:{port} gRPC {method}", from.name, bracketed(ip));
        match &outcome {
            GrpcOutcome::Status { code, message, .. } if message.is_empty() => println!("{target}: grpc-status {code}"),
            GrpcOutcome::Status { code, message, .. } => println!("{target}: grpc-status {code} ({message})"),
            GrpcOutcome::Failed(failure) => println!("{target}: {failure}"),
        }
        return Ok(u8::from(!outcome.passed()));
    }
    if let Some(server_name) = &args.tls_sni {
        let (number, ip, name) = l7_target("tls-sni")?;
        let outcome = tls::probe(&from.netns, ip, number, server_name, args.timeout).with_context(tried)?;
        let sni = if server_name.is_empty() { "<no server name>" } else { server_name };
        println!("{} -> {name} {}:{port} TLS {sni}: {outcome}", from.name, bracketed(ip));
        return Ok(u8::from(!outcome.passed()));
    }
    if let Some(request) = &args.kafka {
        let request = KafkaProbe::parse(request).map_err(|e| anyhow!("--kafka: {e}"))?;
        let (number, ip, name) = l7_target("kafka")?;
        let outcome = kafka::probe(&from.netns, ip, number, &request, args.timeout).with_context(tried)?;
        let role = if request.produce { "produce" } else { "consume" };
        println!("{} -> {name} {}:{port} Kafka {role} {}: {outcome}", from.name, bracketed(ip), request.topic);
        return Ok(u8::from(!outcome.passed()));
    }
    if let Some(request) = &args.http {
        let request = HttpRequest::parse(request, &args.headers).map_err(|e| anyhow!("--http: {e}"))?;
        let (number, ip, name) = l7_target("http")?;
        let outcome = http::request(&from.netns, ip, number, &request, args.timeout).with_context(tried)?;
        let target = format!("{} -> {name} {}:{port} {} {}", from.name, bracketed(ip), request.method, request.path);
        let passed = outcome.passed();
        match outcome {
            HttpOutcome::Response { status, headers, body, .. } => {
                println!("{target}: HTTP {} {}", status.as_u16(), status.canonical_reason().unwrap_or_default());
                for (name, value) in headers {
                    println!("{name}: {value}");
                }
                println!();
                print!("{body}");
            }
            HttpOutcome::Failed(outcome) => println!("{target}: {outcome}"),
        }
        return Ok(u8::from(!passed));
    }
    let outcome = match to.strip_prefix("svc/") {
        Some(service) => {
            let service_end = service_end(&local, service, port, family)?;
            let (outcome, answered_by) =
                palisade_netsim::ask_who(&from.netns, service_end.ip, port, args.timeout).with_context(tried)?;
            let backend = match (&outcome, answered_by) {
                (Outcome::Connected(_), Some(pod)) => {
                    let at = service_end.backends.iter().find(|b| b.pod.as_deref() == Some(pod.as_str()));
                    at.map_or(format!(" -> {pod}"), |b| format!(" -> {pod} {}:{}", bracketed(b.ip), b.port))
                }
                (Outcome::Connected(_), None) => " -> (an answer that names no pod)".to_owned(),
                _ => String::new(),
            };
            println!("{} -> {to} {}:{port}{backend}: {outcome}", from.name, bracketed(service_end.ip));
            outcome
        }
        None => {
            let to = end(&local, to, family)?;
            let outcome =
                palisade_netsim::probe_from_netns(&from.netns, to.ip, port, args.timeout).with_context(tried)?;
            let target = match (port, family) {
                (Port::Icmp, IpFamily::IPv4) => format!("{} ICMP", to.ip),
                (Port::Icmp, IpFamily::IPv6) => format!("{} ICMPv6", to.ip),
                (port, _) => format!("{}:{port}", bracketed(to.ip)),
            };
            println!("{} -> {} {target}: {outcome}", from.name, to.name);
            outcome
        }
    };
    Ok(match outcome {
        Outcome::Connected(_) => 0,
        Outcome::Refused | Outcome::TimedOut | Outcome::Unreachable => 1,
    })
}

/// An address as it goes before `:PORT`: an IPv6 one in brackets.
fn bracketed(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

/// `probe --dns NAME`: an A query from pod `from` to the DNS pod its resolver annotation names,
/// over `family`.
fn resolve(local: &Local, from: &str, name: &str, timeout: Duration, family: IpFamily) -> Result<u8> {
    let from = pod(local, from)?;
    // The client needs an address of the family too.
    pod_address(local, from, family)?;
    let Some(resolver) = &from.resolver else {
        bail!(
            "{}: pod {} has no {} annotation naming its DNS pod",
            local.cluster_file.display(),
            from.key,
            palisade_netsim::annotations::RESOLVER
        );
    };
    let server = pod_address(local, pod(local, resolver)?, family)?;
    let resolved = dns::resolve(&from.netns, server, name, timeout)
        .with_context(|| format!("resolve {name} from {} (is the local cluster up?)", from.key))?;
    let failed = |what: String| {
        println!("{} -> {resolver} {}:53/UDP {name}: {what}", from.key, bracketed(server));
        Ok(1)
    };
    match resolved {
        Resolved::Addresses(addresses) => {
            if addresses.is_empty() {
                eprintln!("{name}: no A records");
            }
            for address in addresses {
                println!("{address}");
            }
            Ok(0)
        }
        // NXDOMAIN, REFUSED, SERVFAIL as dig prints them.
        Resolved::Failed(code) => failed(format!("{code:?}").to_ascii_uppercase()),
        Resolved::NoAnswer(outcome) => failed(outcome.to_string()),
    }
}

/// A Service a probe goes to: its (first) ClusterIP of the probe's family, and the backends of
/// the probed port in that family.
struct ServiceEnd {
    ip: std::net::IpAddr,
    backends: Vec<Backend>,
}

/// `NAMESPACE/NAME` of a Service of the cluster with `port` among its ports.
fn service_end(local: &Local, key: &str, port: Port, family: IpFamily) -> Result<ServiceEnd> {
    let (ip, service, service_port) = palisade_netsim::services::resolve(&local.cluster, key, port, family)
        .map_err(|e| anyhow::anyhow!("{}: {e}", local.cluster_file.display()))?;
    let mut backends = local.cluster.backends(service, service_port);
    backends.retain(|b| family.holds(b.ip));
    Ok(ServiceEnd { ip, backends })
}

/// One end of a probe: a pod's namespace, or the node namespace, and its address of the probe's
/// family.
struct End {
    name: String,
    netns: String,
    ip: std::net::IpAddr,
}

fn end(local: &Local, text: &str, family: IpFamily) -> Result<End> {
    if text == "node" {
        let node = local.network.node();
        let ip = node.address_of(family).with_context(|| {
            format!(
                "{}: node {} has no {family} address in local mode (the node namespace gets one when a pod has an IPv6 address in status.podIPs, or the Node an IPv6 InternalIP)",
                local.cluster_file.display(),
                node.name
            )
        })?;
        return Ok(End { name: format!("node {}", node.name), netns: local.network.node_netns().to_owned(), ip });
    }
    let pod = pod(local, text)?;
    Ok(End { name: pod.key.clone(), netns: pod.netns.clone(), ip: pod_address(local, pod, family)? })
}

/// The pod's address of `family`; the error names the pod.
fn pod_address(local: &Local, pod: &PodNet, family: IpFamily) -> Result<std::net::IpAddr> {
    pod.address(family).with_context(|| {
        format!(
            "{}: pod {} has no {family} address (status.podIPs): it cannot be probed over {family}",
            local.cluster_file.display(),
            pod.key
        )
    })
}

fn pod<'a>(local: &'a Local, key: &str) -> Result<&'a PodNet> {
    local.network.pod(key).with_context(|| {
        format!(
            "{}: no pod {key} with a network namespace (pods are NAMESPACE/POD, with a podIP and no hostNetwork; `node` is the node namespace)",
            local.cluster_file.display()
        )
    })
}
