use anyhow::{Result, anyhow};
use palisade_policy::trace::{self, Decision, FlowEnd, FlowPort, HttpRequest, Trace, Verdict};

use super::{EngineArgs, Output};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    engine: EngineArgs,
    /// Source: NAMESPACE/POD, cidr:IP, entity:NAME, or `node` (the local host of the
    /// destination pod: identity host).
    #[arg(long)]
    from: String,
    /// Destination: NAMESPACE/POD, cidr:IP, entity:NAME or `node`.
    #[arg(long)]
    to: String,
    /// N/TCP, N/UDP, N/SCTP or icmp/TYPE.
    #[arg(long)]
    port: String,
    /// An HTTP request to evaluate against L7 rules: "METHOD /path" (the policy's intent: the
    /// datapath denies ports with L7 rules until an L7 proxy exists).
    #[arg(long)]
    http: Option<String>,
    /// A request header, "Name: value" (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
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
        .map(|r| HttpRequest::parse(r, &args.headers))
        .transpose()
        .map_err(|e| anyhow!("--http: {e}"))?;
    let engine = args.engine.engine()?;
    let result = trace::trace(&engine, &from, &to, port, http.as_ref()).map_err(|e| anyhow!(e))?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&result)?),
        Output::Text => print_text(&from, &to, port, &result),
    }
    // The exit code follows what the datapath does, not the L7 rules' intent.
    Ok(if result.verdict == Verdict::Allowed { 0 } else { 1 })
}

fn print_text(from: &FlowEnd, to: &FlowEnd, port: FlowPort, result: &Trace) {
    let verdict = match result.verdict {
        Verdict::Allowed => "ALLOWED",
        Verdict::Denied => "DENIED",
    };
    let end = |end: &FlowEnd, address: Option<std::net::Ipv4Addr>| match (end, address) {
        (FlowEnd::Pod { .. } | FlowEnd::Address(_), _) | (_, None) => end.to_string(),
        (_, Some(address)) => format!("{end} ({address})"),
    };
    let why = match result.drop_reason() {
        Some(reason) => {
            let intent = match result.intent {
                Verdict::Allowed => "allowed",
                Verdict::Denied => "denied",
            };
            format!(" (drop reason {reason}: L7 rules are not enforced yet; the policy's intent: {intent})")
        }
        None => String::new(),
    };
    println!("{} -> {} {port}: {verdict}{why}", end(from, result.from_address), end(to, result.to_address));
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
            if let Some(proxy) = &d.proxy {
                println!("                    L7 rules (the policy's intent): {proxy}");
            }
            if let Some(reason) = d.drop_reason {
                println!(
                    "                    datapath: denied, drop reason {reason} (no L7 proxy yet: never fails open)"
                );
            }
        }
        _ => println!("  {direction}  {verdict:7}  {}", d.rule),
    }
}
