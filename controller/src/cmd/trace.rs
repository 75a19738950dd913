use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::{Result, anyhow};
use palisade_policy::CompiledPolicy;
use palisade_policy::l7::KafkaRequest;
use palisade_policy::trace::{
    self, Decision, FlowEnd, FlowPort, HttpRequest, IpFamily, L7Request, ServiceFlowError, Trace, Verdict,
};

use super::{EngineArgs, Output};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    engine: EngineArgs,
    /// Source: NAMESPACE/POD, cidr:IP (IPv4 or IPv6), entity:NAME, or `node` (the local host
    /// of the destination pod: identity host).
    #[arg(long)]
    from: String,
    /// Destination: NAMESPACE/POD, svc/NAMESPACE/NAME (judged at each backend, on the port the
    /// Service port is translated to there), cidr:IP (IPv4 or IPv6), entity:NAME or `node`.
    #[arg(long)]
    to: String,
    /// N/TCP, N/UDP, N/SCTP, icmp/TYPE or icmpv6/TYPE.
    #[arg(long)]
    port: String,
    /// An HTTP request to evaluate against L7 rules: "METHOD /path" (the node's L7 proxy judges
    /// it on TCP).
    #[arg(long)]
    http: Option<String>,
    /// A request header, "Name: value" (repeatable).
    #[arg(long = "header", requires = "http")]
    headers: Vec<String>,
    /// A DNS query for NAME to evaluate against DNS rules (`rules.dns`), e.g. on 53/UDP (the
    /// node's DNS proxy judges it on UDP and TCP).
    #[arg(long, value_name = "NAME", conflicts_with = "http")]
    dns: Option<String>,
    /// A TLS connection whose ClientHello indicates server name NAME (SNI), to evaluate against
    /// `serverNames` (the node's L7 proxy judges it on TCP). `--tls-sni ''`: a ClientHello
    /// without a server name.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["http", "dns"])]
    tls_sni: Option<String>,
    /// A Kafka request to evaluate against Kafka rules: `API_KEY[:TOPIC[,TOPIC...]]`, an API
    /// key as rules name it (`produce`, `fetch`, `metadata`, ...; `consume` is a fetch) and the
    /// topics it names, e.g. `produce:orders` (the node's L7 proxy judges it on TCP).
    #[arg(long, value_name = "KEY:TOPICS", conflicts_with_all = ["http", "dns", "tls_sni"])]
    kafka: Option<String>,
    /// The Kafka request's version, for rules with `apiVersion`.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "kafka")]
    kafka_api_version: i16,
    /// The Kafka request's client id, for rules with `clientID`.
    #[arg(long, value_name = "ID", requires = "kafka")]
    kafka_client_id: Option<String>,
    /// A DNS answer the node's proxy has seen, "NAME=IP[,IP...]" (repeatable): `toFQDNs`
    /// selects those addresses, e.g. `--to cidr:IP`.
    #[arg(long = "dns-answer", value_name = "NAME=IP,...", value_parser = parse_dns_answer)]
    dns_answers: Vec<(String, Vec<IpAddr>)>,
    /// `4` or `6`: the flow is between the IPv4 (or IPv6) addresses of its pods and nodes (a
    /// dual-stack pod has one of each); a `cidr:` end must be of that family, ICMP is `icmp/`
    /// for 4 and `icmpv6/` for 6, and a Service is reached on its ClusterIP of that family.
    /// Without it: the family of a `cidr:` end, else the pods' primary addresses.
    #[arg(long, value_name = "4|6")]
    ip_family: Option<IpFamily>,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

pub fn run(args: Args) -> Result<u8> {
    let from = FlowEnd::parse(&args.from).map_err(|e| anyhow!("--from: {e}"))?;
    let to = FlowEnd::parse(&args.to).map_err(|e| anyhow!("--to: {e}"))?;
    let port = FlowPort::parse(&args.port).map_err(|e| anyhow!("--port: {e}"))?;
    let http = args
        .http
        .as_deref()
        .map(|r| HttpRequest::parse(r, &args.headers).map(L7Request::Http))
        .transpose()
        .map_err(|e| anyhow!("--http: {e}"))?;
    let tls = args.tls_sni.map(|name| L7Request::Tls(Some(name).filter(|n| !n.is_empty())));
    let kafka = args
        .kafka
        .as_deref()
        .map(|k| KafkaRequest::parse(k, args.kafka_api_version, args.kafka_client_id.clone()).map(L7Request::Kafka))
        .transpose()
        .map_err(|e| anyhow!("--kafka: {e}"))?;
    let l7 = http.or(args.dns.map(L7Request::Dns)).or(tls).or(kafka);
    let mut engine = args.engine.engine()?;
    let mut answers: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    for (name, addrs) in args.dns_answers {
        answers.entry(name).or_default().extend(addrs);
    }
    engine.set_dns_answers(answers);
    if matches!(from, FlowEnd::Service { .. }) || matches!(to, FlowEnd::Service { .. }) {
        return run_service(&engine, &from, &to, port, l7.as_ref(), args.ip_family, args.output);
    }
    let result = trace::trace_in(&engine, &from, &to, port, l7.as_ref(), args.ip_family).map_err(|e| anyhow!(e))?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&result)?),
        Output::Text => print_text(&from, &to, port, &result),
    }
    Ok(exit_code(result.verdict))
}

/// "NAME=IP[,IP...]": the name in lower case without the root dot.
fn parse_dns_answer(text: &str) -> Result<(String, Vec<IpAddr>), String> {
    let (name, addrs) = text.split_once('=').ok_or_else(|| format!("{text:?} is not NAME=IP[,IP...]"))?;
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return Err(format!("{text:?}: the name is empty"));
    }
    let addrs = addrs
        .split(',')
        .map(|a| a.trim().parse::<IpAddr>().map_err(|_| format!("{a:?} is not an IP address")))
        .collect::<Result<_, _>>()?;
    Ok((name, addrs))
}

/// The exit code follows what the datapath does, not the L7 rules' intent.
fn exit_code(verdict: Verdict) -> u8 {
    if verdict == Verdict::Allowed { 0 } else { 1 }
}

/// A flow to a Service: the decision at each backend; allowed only when every backend allows it
/// (kube-proxy may pick any). A Service without ready backends is denied (kube-proxy rejects the
/// connection); an unknown Service or port is bad input.
fn run_service(
    engine: &CompiledPolicy,
    from: &FlowEnd,
    to: &FlowEnd,
    port: FlowPort,
    l7: Option<&L7Request>,
    family: Option<IpFamily>,
    output: Output,
) -> Result<u8> {
    let result = match trace::trace_service_in(engine, from, to, port, l7, family) {
        Ok(result) => result,
        Err(ref e @ ServiceFlowError::NoBackends { ref service, .. }) => {
            match output {
                Output::Json => {
                    let v = serde_json::json!({
                        "service": service,
                        "port": port,
                        "verdict": Verdict::Denied,
                        "intent": Verdict::Denied,
                        "reason": e.to_string(),
                        "backends": [],
                    });
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                Output::Text => println!("{from} -> {to} {port}: DENIED ({e})"),
            }
            return Ok(exit_code(Verdict::Denied));
        }
        // Each message names the Service, port or pod it is about.
        Err(e) => return Err(anyhow!(e)),
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&result)?),
        Output::Text => {
            let denied = result.backends.iter().filter(|b| b.trace.verdict == Verdict::Denied).count();
            println!(
                "{} -> {to} {port}: {} ({denied} of {} backends denied)",
                end(from, result.backends[0].trace.from_address),
                verdict_word(result.verdict),
                result.backends.len()
            );
            for backend in &result.backends {
                let trace = &backend.trace;
                let service = format!("svc {}:{port}", result.service);
                println!(
                    "{service} -> {}:{} {}{}",
                    backend.backend,
                    backend.port,
                    verdict_word(trace.verdict),
                    why(trace)
                );
                print_decisions(trace);
            }
        }
    }
    Ok(exit_code(result.verdict))
}

fn verdict_word(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Allowed => "ALLOWED",
        Verdict::Denied => "DENIED",
    }
}

/// One end of a flow, with the address of a node or entity when it is known.
fn end(end: &FlowEnd, address: Option<IpAddr>) -> String {
    match (end, address) {
        (FlowEnd::Pod { .. } | FlowEnd::Address(_), _) | (_, None) => end.to_string(),
        (_, Some(address)) => format!("{end} ({address})"),
    }
}

/// Why the datapath drops a flow the policy alone would not.
fn why(result: &Trace) -> String {
    match (result.drop_reason(), result.drop_detail()) {
        (Some(reason), Some(detail)) => {
            let intent = match result.intent {
                Verdict::Allowed => "allowed",
                Verdict::Denied => "denied",
            };
            format!(" (drop reason {reason}: {detail}; the policy's intent: {intent})")
        }
        _ => String::new(),
    }
}

fn print_text(from: &FlowEnd, to: &FlowEnd, port: FlowPort, result: &Trace) {
    println!(
        "{} -> {} {port}: {}{}",
        end(from, result.from_address),
        end(to, result.to_address),
        verdict_word(result.verdict),
        why(result)
    );
    print_decisions(result);
}

fn print_decisions(result: &Trace) {
    print_decision("egress ", &result.egress);
    print_decision("ingress", &result.ingress);
}

fn print_decision(direction: &str, d: &Decision) {
    let verdict = match d.verdict {
        Verdict::Allowed => "allowed",
        Verdict::Denied => "denied",
    };
    match (&d.endpoint, d.enforcement) {
        (Some(endpoint), Some(enforcement)) => {
            let enforcement =
                serde_json::to_value(enforcement).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            println!("  {direction}  {verdict:7}  {endpoint} ({enforcement}): {}", d.rule);
            if let Some(entry) = &d.entry {
                println!("                    entry: {entry}");
            }
            println!("                    peer identity {}: {}", d.remote_identity, d.remote_labels);
            match (&d.proxy, d.drop_reason) {
                (Some(proxy), None) => println!("                    L7 proxy: {proxy}"),
                (Some(proxy), Some(_)) => println!("                    L7 rules (the policy's intent): {proxy}"),
                (None, _) => {}
            }
            if let (Some(reason), Some(detail)) = (d.drop_reason, d.drop_detail) {
                println!("                    datapath: denied, drop reason {reason} ({detail}: never fails open)");
            }
        }
        _ => println!("  {direction}  {verdict:7}  {}", d.rule),
    }
}
